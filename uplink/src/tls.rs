//! QUIC endpoints with TLS 1.3 only. The manager's certificate is self-signed and made at
//! start; the agent accepts any certificate but checks the TLS handshake signature, because
//! who the manager is gets proven inside the session (see the crate docs).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};

use crate::{ALPN, UplinkError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn transport(keep_alive: Duration, idle_timeout: Duration) -> Result<quinn::TransportConfig, UplinkError> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(Some(
        idle_timeout
            .try_into()
            .map_err(|_| UplinkError::Tls("idle timeout too large".into()))?,
    ));
    Ok(transport)
}

/// A manager endpoint listening on `addr` (UDP).
pub fn server_endpoint(addr: SocketAddr, idle_timeout: Duration) -> Result<quinn::Endpoint, UplinkError> {
    let certified = rcgen::generate_simple_self_signed(vec!["murmur-manager".to_owned()])
        .map_err(|e| UplinkError::Tls(format!("making the certificate: {e}")))?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(Duration::from_secs(5), idle_timeout)?));
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// An agent endpoint on an ephemeral local port, ready to connect to managers.
pub fn client_endpoint(idle_timeout: Duration) -> Result<quinn::Endpoint, UplinkError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SessionOnlyVerifier(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(Duration::from_secs(5), idle_timeout)?));
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Accepts the certificate itself (self-signed, not an identity here) but still verifies that
/// the server holds its key, so the session is a proper TLS 1.3 session with that server.
#[derive(Debug)]
struct SessionOnlyVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for SessionOnlyVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

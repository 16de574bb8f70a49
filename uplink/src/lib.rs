//! The agent-to-manager uplink: QUIC (quinn) with TLS 1.3, and inside it a handshake in which
//! each side proves it belongs to the swarm and who it is, bound to that one TLS session.
//!
//! Why not certificates for identity: agents already have an ed25519 key (their author key)
//! and a swarm has a pre-shared key. TLS gives the encrypted session; each side then signs the
//! session's exported keying material with its ed25519 key and, when the swarm has a key, MACs
//! it with the swarm key. A man in the middle terminates two TLS sessions with different
//! exporters, so it can neither replay nor forge either proof. The manager's TLS certificate is
//! therefore self-signed and ephemeral; agents pin the manager by its ed25519 key.
//!
//! One bidirectional stream per connection, opened by the agent, carries [`Frame`]s both ways.

mod frame;
mod handshake;
mod keyfile;
mod tls;

pub use frame::{Frame, FrameKind, FrameReader, MAX_CONTROL_BYTES, read_frame, write_frame};
pub use handshake::{Credentials, Hello, MembershipPolicy, Role};
pub use keyfile::{load_or_create_key, write_atomically};
/// The QUIC implementation underneath, for drivers that hold its connections.
pub use quinn;
pub use tls::{client_endpoint, server_endpoint};

use std::net::SocketAddr;

use ed25519_dalek::SigningKey;
use quinn::{Connection, RecvStream, SendStream};

/// ALPN protocol id: a different protocol on the same port is refused by TLS itself.
pub const ALPN: &[u8] = b"murmur-uplink/1";
/// Label for the TLS exporter (RFC 5705) that binds the handshake proofs to the session.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-murmur-uplink-v1";
/// Largest handshake frame either side accepts.
const MAX_HELLO_BYTES: usize = 4096;

pub type PeerKey = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("the other side did not prove {0}")]
    BadProof(&'static str),
    #[error("timed out during the handshake")]
    Timeout,
}

/// An authenticated uplink: the connection, its one stream, and who is at the other end.
pub struct Session {
    pub connection: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    pub peer: Hello,
}

fn exporter(connection: &Connection) -> Result<[u8; 32], UplinkError> {
    let mut out = [0u8; 32];
    connection
        .export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| UplinkError::Tls("the TLS session exports no keying material".into()))?;
    Ok(out)
}

/// Agent side: connect, open the stream, prove membership, check the manager's proof (and its
/// key when `trusted_managers` pins some: then only those are accepted).
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    credentials: &Credentials,
    trusted_managers: &[PeerKey],
    software: &str,
) -> Result<Session, UplinkError> {
    let connecting = endpoint
        .connect(addr, "murmur-manager")
        .map_err(|source| UplinkError::Connect { addr, source })?;
    let connection = connecting.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let transcript = exporter(&connection)?;
    let hello = credentials.hello(Role::Agent, &transcript, software);
    write_frame(&mut send, &Frame::new(FrameKind::Hello, hello.encode())).await?;
    let reply = read_frame(&mut recv, MAX_HELLO_BYTES).await?;
    let manager = match reply.kind {
        FrameKind::Hello => Hello::decode(&reply.payload)?,
        FrameKind::Refused => {
            return Err(UplinkError::Refused(
                String::from_utf8_lossy(&reply.payload).into_owned(),
            ));
        }
        other => {
            return Err(UplinkError::Malformed(format!(
                "expected the manager's hello, got {other:?}"
            )));
        }
    };
    credentials
        .policy()
        .verify(&manager, Role::Manager, &transcript)?;
    if !trusted_managers.is_empty() && !trusted_managers.contains(&manager.key) {
        return Err(UplinkError::BadProof(
            "to be a manager this agent is configured for",
        ));
    }
    Ok(Session {
        connection,
        send,
        recv,
        peer: manager,
    })
}

/// Manager side: take the agent's stream and hello, check it against `policy`, answer with
/// the manager's own hello or a refusal (then close).
pub async fn accept(
    connection: Connection,
    credentials: &Credentials,
    policy: &MembershipPolicy,
    software: &str,
) -> Result<Session, UplinkError> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let transcript = exporter(&connection)?;
    let first = read_frame(&mut recv, MAX_HELLO_BYTES).await?;
    if first.kind != FrameKind::Hello {
        return Err(UplinkError::Malformed(format!(
            "expected a hello, got {:?}",
            first.kind
        )));
    }
    let agent = Hello::decode(&first.payload)?;
    if let Err(error) = policy.verify(&agent, Role::Agent, &transcript) {
        let reason = error.to_string();
        let _ = write_frame(&mut send, &Frame::new(FrameKind::Refused, reason.into_bytes())).await;
        let _ = send.finish();
        // Give the refusal a moment to leave before the connection closes under it.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), send.stopped()).await;
        connection.close(1u32.into(), b"refused");
        return Err(error);
    }
    let hello = credentials.hello(Role::Manager, &transcript, software);
    write_frame(&mut send, &Frame::new(FrameKind::Hello, hello.encode())).await?;
    Ok(Session {
        connection,
        send,
        recv,
        peer: agent,
    })
}

/// An ed25519 key from 32 secret bytes (helper for drivers that keep keys on disk).
pub fn signing_key(secret: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(secret)
}

//! The agent's uplink to its swarm manager: one QUIC connection (murmur-uplink), over which
//! the agent's replica syncs with the manager's exactly as with any peer, plus a periodic
//! report of how the agent sees its swarm (for the dashboard).
//!
//! The manager is one more peer of the engine. The uplink reconnects with backoff forever, so
//! an agent offline for days catches up when the manager is back; on each connection a sync
//! round starts at once. Nothing is resent by hand: the sync protocol finds what the manager
//! lacks, so an upload cut halfway resumes where it stopped, without duplicates.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use murmur_uplink::{Credentials, Frame, FrameKind, FrameReader, MAX_CONTROL_BYTES, write_frame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{Agent, metrics::SwarmLabels, replica::PeerKey, time::now_ms};

pub const SOFTWARE: &str = concat!("murmur-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkSettings {
    /// `host:port` of the manager's QUIC uplink, or a list of the swarm's managers (on one
    /// bucket) in order of preference; empty: no manager. The agent uses the first that
    /// answers, fails over down the list and comes back up it.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    /// The manager's ed25519 key (hex, from `murmur-manager key`), or a list of the managers'
    /// keys. Required when the swarm has no key; with one, it pins which managers of the swarm
    /// this agent talks to.
    #[serde(deserialize_with = "one_or_many")]
    pub key: Vec<String>,
    pub report_interval_secs: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff_secs: u64,
    /// While on a manager other than the first listed, how often to try the ones before it.
    pub failback_interval_secs: u64,
    /// How long a connection attempt (QUIC and the membership handshake) may take before the
    /// next manager is tried.
    pub connect_timeout_secs: u64,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        Self {
            address: Vec::new(),
            key: Vec::new(),
            report_interval_secs: 5,
            max_backoff_secs: 30,
            failback_interval_secs: 60,
            connect_timeout_secs: 10,
        }
    }
}

/// A string or a list of strings, read as a list: `address = "m:7720"` and
/// `address = ["m1:7720", "m2:7720"]` both work.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(vec![value.to_owned()])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(one) = seq.next_element()? {
                all.push(one);
            }
            Ok(all)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

impl UplinkSettings {
    pub fn validate(&self, swarm_has_key: bool) -> anyhow::Result<()> {
        if self.address.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            swarm_has_key || !self.key.is_empty(),
            "manager.address needs swarm.swarm_key or manager.key: otherwise anything could pose as the manager"
        );
        for address in &self.address {
            anyhow::ensure!(
                address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
                "manager.address {address:?} is not host:port"
            );
        }
        self.pinned_keys()?;
        anyhow::ensure!(
            self.report_interval_secs >= 1,
            "manager.report_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_backoff_secs >= 1,
            "manager.max_backoff_secs must be at least 1"
        );
        anyhow::ensure!(
            self.failback_interval_secs >= 1,
            "manager.failback_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            self.connect_timeout_secs >= 1,
            "manager.connect_timeout_secs must be at least 1"
        );
        Ok(())
    }

    fn pinned_keys(&self) -> anyhow::Result<Vec<[u8; 32]>> {
        self.key
            .iter()
            .map(|key| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(key.trim(), &mut bytes)
                    .map_err(|_| anyhow::anyhow!("manager.key {key:?} must be 64 hex digits"))?;
                Ok(bytes)
            })
            .collect()
    }
}

/// Where the engine's messages for the manager go while an uplink is up.
pub struct UplinkSink {
    pub manager: PeerKey,
    pub outbox: mpsc::UnboundedSender<Vec<u8>>,
}

/// What the agent reports about itself; the manager's `AgentReport` reads it.
#[derive(Debug, Serialize)]
struct Report {
    memories: u64,
    pending_changes: u64,
    listen_addrs: Vec<String>,
    peers: Vec<ReportedPeer>,
}

#[derive(Debug, Serialize)]
struct ReportedPeer {
    key: String,
    relayed: bool,
    rtt_ms: Option<f64>,
    last_in_sync_ms: Option<u64>,
}

fn report(agent: &Agent, manager: &PeerKey) -> Report {
    let status = agent.replica().status();
    let network = agent.network_view();
    let manager_hex = hex::encode(manager);
    let peers = status
        .peers
        .iter()
        .filter(|p| p.author != manager_hex)
        .map(|p| {
            let link = network
                .as_ref()
                .and_then(|n| n.peers.values().find(|l| l.author == p.author));
            ReportedPeer {
                key: p.author.clone(),
                relayed: link.is_some_and(|l| l.relayed),
                rtt_ms: link.and_then(|l| l.rtt_ms),
                last_in_sync_ms: p.last_in_sync_ms,
            }
        })
        .collect();
    Report {
        memories: status.visible as u64,
        pending_changes: status.pending_changes as u64,
        listen_addrs: network.map(|n| n.listen_addresses).unwrap_or_default(),
        peers,
    }
}

async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving manager address {address:?}"))?
        .next()
        .with_context(|| format!("manager address {address:?} resolves to nothing"))
}

/// How the agent reaches its managers: the endpoint, its credentials, the managers in order of
/// preference and the keys it trusts. Cloned into the task that probes for failback.
#[derive(Clone)]
struct Managers {
    endpoint: murmur_uplink::quinn::Endpoint,
    credentials: Credentials,
    connect_timeout: Duration,
    addresses: Arc<[String]>,
    trusted: Arc<[[u8; 32]]>,
}

/// A session with the manager listed at `rank`.
struct Connected {
    rank: usize,
    addr: SocketAddr,
    session: murmur_uplink::Session,
}

impl Managers {
    /// The most preferred of the first `below` managers that answers, trying them in order.
    async fn connect_first(&self, below: usize) -> Option<Connected> {
        for (rank, address) in self.addresses.iter().enumerate().take(below) {
            let attempt = async {
                let addr = resolve(address).await?;
                let session =
                    murmur_uplink::connect(&self.endpoint, addr, &self.credentials, &self.trusted, SOFTWARE)
                        .await?;
                anyhow::Ok((addr, session))
            };
            // A manager that is gone answers nothing (QUIC waits out its idle timeout): bounded,
            // so failing over to the next one takes seconds.
            let attempt = tokio::time::timeout(self.connect_timeout, attempt)
                .instrument(tracing::info_span!("uplink_connect", %address));
            match attempt.await {
                Ok(Ok((addr, session))) => return Some(Connected { rank, addr, session }),
                Ok(Err(error)) => {
                    tracing::warn!(%address, error = format!("{error:#}"), "cannot reach the manager")
                }
                Err(_) => {
                    tracing::warn!(%address, timeout_secs = self.connect_timeout.as_secs(), "the manager did not answer in time")
                }
            }
        }
        None
    }
}

/// Starts the uplink task; it runs until the agent stops.
pub fn start(
    agent: Arc<Agent>,
    settings: &UplinkSettings,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if settings.address.is_empty() {
        return Ok(None);
    }
    let swarm_key = agent.config().swarm.swarm_key_bytes()?;
    let managers = Managers {
        endpoint: murmur_uplink::client_endpoint(Duration::from_secs(30))
            .context("opening the uplink's UDP socket")?,
        credentials: Credentials::new(agent.signing_key().clone(), swarm_key),
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        addresses: settings.address.clone().into(),
        trusted: settings.pinned_keys()?.into(),
    };
    agent.replica().set_networked(true);
    agent.metrics.uplink_manager_rank.set(-1);
    let timing = SessionTiming {
        report_every: Duration::from_secs(settings.report_interval_secs),
        failback_every: Duration::from_secs(settings.failback_interval_secs),
    };
    let max_backoff = Duration::from_secs(settings.max_backoff_secs);
    Ok(Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut next = None;
        loop {
            // Each reconnection walks the list from the top, so an agent that failed over comes
            // back to its preferred manager as soon as that one answers again.
            let connected = match next.take() {
                Some(connected) => Some(connected),
                None => managers.connect_first(managers.addresses.len()).await,
            };
            let Some(Connected { rank, addr, session }) = connected else {
                tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "no manager answers");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            };
            backoff = Duration::from_millis(250);
            let manager_key = hex::encode(session.peer.key);
            tracing::info!(%addr, rank, manager = %manager_key, "connected to the manager");
            agent.metrics.uplink_manager_rank.set(rank as i64);
            match run_session(&agent, session, &managers, rank, &timing).await {
                SessionEnd::Lost(reason) => {
                    tracing::warn!(%addr, %reason, "uplink to the manager lost; reconnecting");
                    agent.metrics.uplink_manager_rank.set(-1);
                    tokio::time::sleep(backoff).await;
                }
                SessionEnd::FailBack(preferred) => {
                    tracing::info!(from = %addr, to = %preferred.addr, "a more preferred manager answers again; moving back to it");
                    next = Some(*preferred);
                }
            }
        }
    })))
}

struct SessionTiming {
    report_every: Duration,
    failback_every: Duration,
}

enum SessionEnd {
    Lost(String),
    /// A manager listed before this session's answered: the session was closed for it.
    FailBack(Box<Connected>),
}

async fn run_session(
    agent: &Arc<Agent>,
    session: murmur_uplink::Session,
    managers: &Managers,
    rank: usize,
    timing: &SessionTiming,
) -> SessionEnd {
    let murmur_uplink::Session {
        connection,
        mut send,
        recv,
        peer,
    } = session;
    let manager = peer.key;
    let (outbox, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    {
        let _guard = agent.write_guard().await;
        agent.attach_uplink(Some(UplinkSink { manager, outbox }));
        let mut engine = agent.replica().lock();
        engine.peer_connected(now_ms(), manager);
        // It may have missed everything since the last connection: compare now.
        engine.start_round(now_ms(), manager);
    }
    agent.flush_network().await;
    let max_message = agent.replica().max_message_bytes();
    // Read by a task of its own: a read_frame inside the select! below would lose a frame's
    // bytes whenever another branch won half-way through it.
    let mut frames = FrameReader::spawn(recv, max_message.max(MAX_CONTROL_BYTES));
    let mut report_tick = tokio::time::interval(timing.report_every);
    // On a fallback manager: now and then, in a task of its own so this session keeps
    // syncing meanwhile, try the managers listed before it.
    let mut failback_tick = tokio::time::interval(timing.failback_every);
    failback_tick.tick().await;
    let mut probe: Option<tokio::task::JoinHandle<Option<Connected>>> = None;
    let notify = agent.uplink_notify();
    let end = loop {
        let timer_owner = !agent.has_swarm();
        let wake_at = agent.replica().lock().poll_timeout();
        let sleep = Duration::from_millis(wake_at.saturating_sub(now_ms()));
        tokio::select! {
            frame = frames.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => break SessionEnd::Lost(error.to_string()),
                    None => break SessionEnd::Lost("the uplink stream ended".to_owned()),
                };
                if frame.kind != FrameKind::Sync {
                    connection.close(4u32.into(), b"unexpected frame");
                    break SessionEnd::Lost(format!("the manager sent an unexpected {:?} frame", frame.kind));
                }
                receive(agent, &manager, &frame.payload).await;
            }
            Some(bytes) = outgoing.recv() => {
                if let Err(error) = write_frame(&mut send, &Frame::new(FrameKind::Sync, bytes)).await {
                    break SessionEnd::Lost(error.to_string());
                }
            }
            _ = report_tick.tick() => {
                // A report that cannot be encoded or is too long is skipped, never sent empty:
                // the next tick sends a fresh one.
                match serde_json::to_vec(&report(agent, &manager)) {
                    Ok(body) if body.len() <= MAX_CONTROL_BYTES => {
                        if let Err(error) = write_frame(&mut send, &Frame::new(FrameKind::Report, body)).await {
                            break SessionEnd::Lost(error.to_string());
                        }
                    }
                    Ok(body) => tracing::warn!(len = body.len(), "status report too long to send"),
                    Err(error) => tracing::warn!(%error, "status report not encoded"),
                }
            }
            _ = tokio::time::sleep(sleep), if timer_owner => {
                let _guard = agent.write_guard().await;
                agent.replica().lock().handle_timeout(now_ms());
                drop(_guard);
                agent.flush_network().await;
            }
            _ = notify.notified(), if timer_owner => {
                agent.flush_network().await;
            }
            _ = failback_tick.tick(), if rank > 0 && probe.is_none() => {
                let managers = managers.clone();
                probe = Some(tokio::spawn(async move { managers.connect_first(rank).await }));
            }
            found = async {
                match probe.as_mut() {
                    Some(running) => running.await,
                    None => std::future::pending().await,
                }
            }, if probe.is_some() => {
                probe = None;
                if let Ok(Some(preferred)) = found {
                    connection.close(0u32.into(), b"moving to a preferred manager");
                    break SessionEnd::FailBack(Box::new(preferred));
                }
            }
        }
    };
    if let Some(probe) = probe {
        probe.abort();
    }
    {
        let _guard = agent.write_guard().await;
        agent.attach_uplink(None);
        agent.replica().lock().peer_disconnected(&manager);
    }
    end
}

/// One message from the manager: engine, store, then whatever the engine answers.
async fn receive(agent: &Arc<Agent>, manager: &PeerKey, bytes: &[u8]) {
    let kind = murmur_sync::MessageKind::of_frame(bytes).map_or("unknown", |k| k.as_str());
    let labels = SwarmLabels {
        direction: "in",
        kind,
    };
    agent.metrics.uplink_messages.get_or_create(&labels).inc();
    agent
        .metrics
        .uplink_bytes
        .get_or_create(&labels)
        .inc_by(bytes.len() as u64);
    {
        let _guard = agent.write_guard().await;
        if let Err(error) = agent.replica().lock().handle_incoming(now_ms(), manager, bytes) {
            tracing::warn!(%error, "refused a message from the manager");
        }
        if let Err(error) = agent.store_received().await {
            tracing::error!(%error, "storing memories from the manager failed; they will come again");
            return;
        }
    }
    agent.flush_network().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<UplinkSettings, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn a_manager_address_is_one_string_or_a_list() {
        assert_eq!(parse(r#"address = "m:7720""#).unwrap().address, ["m:7720"]);
        let both = parse(r#"address = ["m1:7720", "[::1]:7720"]"#).unwrap();
        assert_eq!(both.address, ["m1:7720", "[::1]:7720"]);
        both.validate(true).unwrap();
        let error = parse("address = 7720").unwrap_err().to_string();
        assert!(error.contains("a string or a list of strings"), "{error}");
        let error = parse(r#"address = ["m:7720"]"#)
            .unwrap()
            .validate(false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("swarm.swarm_key or manager.key"), "{error}");
        let error = parse(r#"address = ["m:7720", "no-port"]"#)
            .unwrap()
            .validate(true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"no-port\" is not host:port"), "{error}");
        let error = parse(
            r#"address = "m:7720"
key = ["00", "zz"]"#,
        )
        .unwrap()
        .validate(true)
        .unwrap_err()
        .to_string();
        assert!(error.contains("must be 64 hex digits"), "{error}");
    }
}

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

use crate::{Agent, metrics::SwarmLabels, replica::PeerKey, time::now_ms};

pub const SOFTWARE: &str = concat!("murmur-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkSettings {
    /// `host:port` of the manager's QUIC uplink; unset: no manager.
    pub address: Option<String>,
    /// The manager's ed25519 key (hex, from `murmur-manager key`). Required when the swarm has
    /// no key; with one, it pins which manager of the swarm this agent talks to.
    pub key: Option<String>,
    pub report_interval_secs: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff_secs: u64,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        Self {
            address: None,
            key: None,
            report_interval_secs: 5,
            max_backoff_secs: 30,
        }
    }
}

impl UplinkSettings {
    pub fn validate(&self, swarm_has_key: bool) -> anyhow::Result<()> {
        if self.address.is_none() {
            return Ok(());
        }
        anyhow::ensure!(
            swarm_has_key || self.key.is_some(),
            "manager.address needs swarm.swarm_key or manager.key: otherwise anything could pose as the manager"
        );
        if let Some(key) = &self.key {
            self.pinned_key_of(key)?;
        }
        anyhow::ensure!(
            self.report_interval_secs >= 1,
            "manager.report_interval_secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_backoff_secs >= 1,
            "manager.max_backoff_secs must be at least 1"
        );
        Ok(())
    }

    fn pinned_key_of(&self, key: &str) -> anyhow::Result<[u8; 32]> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(key.trim(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("manager.key must be 64 hex digits"))?;
        Ok(bytes)
    }

    fn pinned_key(&self) -> anyhow::Result<Option<[u8; 32]>> {
        self.key.as_deref().map(|k| self.pinned_key_of(k)).transpose()
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

/// Starts the uplink task; it runs until the agent stops.
pub fn start(
    agent: Arc<Agent>,
    settings: &UplinkSettings,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(address) = settings.address.clone() else {
        return Ok(None);
    };
    let swarm_key = agent.config().swarm.swarm_key_bytes()?;
    let pinned = settings.pinned_key()?;
    let credentials = Credentials::new(agent.signing_key().clone(), swarm_key);
    let endpoint =
        murmur_uplink::client_endpoint(Duration::from_secs(30)).context("opening the uplink's UDP socket")?;
    agent.replica().set_networked(true);
    let report_every = Duration::from_secs(settings.report_interval_secs);
    let max_backoff = Duration::from_secs(settings.max_backoff_secs);
    Ok(Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            let attempt = async {
                let addr = resolve(&address).await?;
                let session = murmur_uplink::connect(&endpoint, addr, &credentials, pinned, SOFTWARE).await?;
                anyhow::Ok((addr, session))
            };
            match attempt.await {
                Ok((addr, session)) => {
                    backoff = Duration::from_millis(250);
                    tracing::info!(%addr, manager = %hex::encode(session.peer.key), "connected to the manager");
                    let reason = run_session(&agent, session, report_every).await;
                    tracing::warn!(%addr, %reason, "uplink to the manager lost; reconnecting");
                }
                Err(error) => {
                    tracing::warn!(%address, %error, retry_in_ms = backoff.as_millis() as u64, "cannot reach the manager");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    })))
}

async fn run_session(agent: &Arc<Agent>, session: murmur_uplink::Session, report_every: Duration) -> String {
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
    let mut report_tick = tokio::time::interval(report_every);
    let notify = agent.uplink_notify();
    let reason = loop {
        let timer_owner = !agent.has_swarm();
        let wake_at = agent.replica().lock().poll_timeout();
        let sleep = Duration::from_millis(wake_at.saturating_sub(now_ms()));
        tokio::select! {
            frame = frames.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => break error.to_string(),
                    None => break "the uplink stream ended".to_owned(),
                };
                if frame.kind != FrameKind::Sync {
                    connection.close(4u32.into(), b"unexpected frame");
                    break format!("the manager sent an unexpected {:?} frame", frame.kind);
                }
                receive(agent, &manager, &frame.payload).await;
            }
            Some(bytes) = outgoing.recv() => {
                if let Err(error) = write_frame(&mut send, &Frame::new(FrameKind::Sync, bytes)).await {
                    break error.to_string();
                }
            }
            _ = report_tick.tick() => {
                // A report that cannot be encoded or is too long is skipped, never sent empty:
                // the next tick sends a fresh one.
                match serde_json::to_vec(&report(agent, &manager)) {
                    Ok(body) if body.len() <= MAX_CONTROL_BYTES => {
                        if let Err(error) = write_frame(&mut send, &Frame::new(FrameKind::Report, body)).await {
                            break error.to_string();
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
        }
    };
    {
        let _guard = agent.write_guard().await;
        agent.attach_uplink(None);
        agent.replica().lock().peer_disconnected(&manager);
    }
    reason
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

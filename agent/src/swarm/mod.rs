//! The agent's network driver: runs the replica's sync engine over libp2p.
//!
//! Pushes go out on gossipsub (one topic per swarm); anti-entropy messages go to one peer at a
//! time over a request-response protocol. Everything that arrives is handed to the engine, and
//! what the engine accepted is stored (with its changes, in one transaction) before anything
//! the engine queued in response is sent.
//!
//! Privacy: with a swarm key, connections are TCP wrapped in libp2p's private-network layer
//! (pnet, a pre-shared key): a node without the key cannot complete a handshake, so it can
//! neither read nor write. pnet does not cover QUIC, so a swarm key and QUIC exclude each
//! other. `allow_peers` additionally limits the swarm to listed peer ids.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
    core::upgrade::Version,
    gossipsub, identify,
    identity::{self, Keypair},
    kad, mdns, noise, ping,
    pnet::{PnetConfig, PreSharedKey},
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};
use murmur_sync::{Destination, MAX_MESSAGE_BYTES};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{metrics::SwarmLabels, replica::PeerKey, service::Agent, time::now_ms};

/// Name of the file in the data dir that lists the addresses peers can dial (with `/p2p/`).
pub const SWARM_ADDR_FILE: &str = "swarm.addr";
/// The request-response protocol anti-entropy messages travel on.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/sync/1");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmSettings {
    /// Off until configured: an agent never joins a network it was not told to.
    pub enabled: bool,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs (with `/p2p/<peer id>`) dialled at start and kept as Kademlia seeds.
    pub bootstrap: Vec<String>,
    /// LAN discovery by multicast DNS.
    pub mdns: bool,
    /// Kademlia for finding peers beyond the LAN.
    pub kademlia: bool,
    /// 64 hex digits: the swarm's pre-shared key (pnet). Recommended for any real swarm.
    pub swarm_key: Option<String>,
    /// Peer ids allowed to connect (empty: any holder of the swarm key).
    pub allow_peers: Vec<String>,
    /// Also listen and dial over QUIC (only without a swarm key).
    pub quic: bool,
    /// Refused messages from one peer before it is disconnected and blocked.
    pub max_refusals: u32,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
            bootstrap: Vec::new(),
            mdns: true,
            kademlia: true,
            swarm_key: None,
            allow_peers: Vec::new(),
            quic: false,
            max_refusals: 5,
        }
    }
}

impl SwarmSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        anyhow::ensure!(!self.listen.is_empty(), "swarm.listen is empty");
        for addr in self.listen.iter().chain(&self.bootstrap) {
            addr.parse::<Multiaddr>()
                .with_context(|| format!("swarm address {addr:?} is not a multiaddr"))?;
        }
        self.psk()?;
        anyhow::ensure!(
            !(self.quic && self.swarm_key.is_some()),
            "swarm.quic cannot be used with a swarm key: libp2p's private networks cover TCP only"
        );
        for peer in &self.allow_peers {
            peer.parse::<PeerId>()
                .with_context(|| format!("swarm.allow_peers: {peer:?} is not a peer id"))?;
        }
        Ok(())
    }

    pub fn psk(&self) -> anyhow::Result<Option<PreSharedKey>> {
        let Some(hex_key) = &self.swarm_key else {
            return Ok(None);
        };
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key)
            .map_err(|_| anyhow::anyhow!("swarm.swarm_key must be 64 hex digits"))?;
        Ok(Some(PreSharedKey::new(key)))
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
}

/// Length-prefixed raw bytes; the engine's own decoder checks everything inside.
#[derive(Clone, Default)]
pub struct SyncCodec;

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res).await
    }
}

/// TCP wrapped in the swarm key's private-network layer, then noise and yamux: what every
/// member of a private swarm speaks (public so tools and tests can join a swarm too).
pub fn private_transport(
    key: &Keypair,
    psk: PreSharedKey,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let noise = noise::Config::new(key)?;
    Ok(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .map(|(peer, muxer), _| (peer, libp2p::core::muxing::StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The engine names peers by their ed25519 key; libp2p by a peer id derived from it.
fn peer_key(peer: &PeerId) -> Option<PeerKey> {
    let multihash = peer.as_ref();
    let public = identity::PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

fn peer_id(key: &PeerKey) -> Option<PeerId> {
    let public = identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(identity::PublicKey::from(public).to_peer_id())
}

/// Handle to a running driver: wakes it when local writes queued messages.
#[derive(Clone)]
pub struct SwarmHandle {
    notify: Arc<Notify>,
}

impl SwarmHandle {
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

struct Driver {
    agent: Arc<Agent>,
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    allow: BTreeSet<PeerId>,
    refusals: BTreeMap<PeerId, u32>,
    blocked: BTreeSet<PeerId>,
    max_refusals: u32,
}

/// Starts the driver on the current tokio runtime; returns once it listens.
pub async fn start(
    agent: Arc<Agent>,
    settings: &SwarmSettings,
) -> anyhow::Result<(SwarmHandle, tokio::task::JoinHandle<()>)> {
    settings.validate()?;
    let secret = agent.signing_key().to_bytes();
    let keypair = Keypair::ed25519_from_bytes(secret).context("agent identity as a libp2p key")?;
    let local = keypair.public().to_peer_id();
    let psk = settings.psk()?;
    let max_bytes = agent.replica().max_message_bytes();
    let config = agent.replica().sync_config();
    // Peers of one swarm share shards and admins; the topic names the swarm by them.
    let topic = gossipsub::IdentTopic::new(format!("murmur/push/v1/{}", config.shards));

    let behaviour = |key: &Keypair| -> anyhow::Result<Behaviour> {
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(max_bytes)
            .heartbeat_interval(Duration::from_millis(700))
            .message_id_fn(|m: &gossipsub::Message| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                m.data.hash(&mut h);
                gossipsub::MessageId::from(h.finish().to_be_bytes().to_vec())
            })
            .build()
            .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
                .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
        let sync = request_response::Behaviour::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        );
        let mdns = if settings.mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                key.public().to_peer_id(),
            )?)
        } else {
            None
        };
        let kad = settings.kademlia.then(|| {
            let id = key.public().to_peer_id();
            kad::Behaviour::new(id, kad::store::MemoryStore::new(id))
        });
        Ok(Behaviour {
            gossipsub,
            sync,
            identify: identify::Behaviour::new(identify::Config::new("/murmur/1".into(), key.public())),
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad: kad.into(),
        })
    };

    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    let mut swarm = match psk {
        Some(psk) => builder
            .with_other_transport(move |key| private_transport(key, psk))?
            .with_behaviour(|key| behaviour(key).map_err(|e| e.into_boxed_dyn_error()))?
            .with_swarm_config(swarm_config)
            .build(),
        None if settings.quic => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_behaviour(|key| behaviour(key).map_err(|e| e.into_boxed_dyn_error()))?
            .with_swarm_config(swarm_config)
            .build(),
        None => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|key| behaviour(key).map_err(|e| e.into_boxed_dyn_error()))?
            .with_swarm_config(swarm_config)
            .build(),
    };
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    for addr in &settings.listen {
        swarm.listen_on(addr.parse()?)?;
    }
    if settings.quic {
        swarm.listen_on("/ip4/0.0.0.0/udp/0/quic-v1".parse()?)?;
    }
    for addr in &settings.bootstrap {
        let addr: Multiaddr = addr.parse()?;
        if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last()
            && let Some(kad) = swarm.behaviour_mut().kad.as_mut()
        {
            kad.add_address(&peer, addr.clone());
        }
        if let Err(error) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
        }
    }
    // Wait for the listeners so the address file is complete.
    let mut addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while addrs.len() < settings.listen.len() + usize::from(settings.quic) {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => addrs.push(address),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lines: Vec<String> = addrs.iter().map(|a| format!("{a}/p2p/{local}")).collect();
    std::fs::write(agent.data_dir().join(SWARM_ADDR_FILE), lines.join("\n")).context("writing swarm.addr")?;
    tracing::info!(peer_id = %local, addrs = ?lines, private = settings.swarm_key.is_some(), "swarm listening");

    agent.replica().set_networked(true);
    let notify = Arc::new(Notify::new());
    let handle = SwarmHandle {
        notify: notify.clone(),
    };
    let driver = Driver {
        agent,
        swarm,
        topic,
        allow: settings
            .allow_peers
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        refusals: BTreeMap::new(),
        blocked: BTreeSet::new(),
        max_refusals: settings.max_refusals,
    };
    let task = tokio::spawn(driver.run(notify));
    Ok((handle, task))
}

impl Driver {
    async fn run(mut self, notify: Arc<Notify>) {
        loop {
            let wake_at = self.agent.replica().lock().poll_timeout();
            let sleep_ms = wake_at.saturating_sub(now_ms());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event).await,
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                    let agent = self.agent.clone();
                    let _guard = agent.write_guard().await;
                    self.agent.replica().lock().handle_timeout(now_ms());
                    self.flush_locked().await;
                }
                _ = notify.notified() => {
                    let agent = self.agent.clone();
                    let _guard = agent.write_guard().await;
                    self.flush_locked().await;
                }
            }
        }
    }

    fn allowed(&self, peer: &PeerId) -> bool {
        !self.blocked.contains(peer) && (self.allow.is_empty() || self.allow.contains(peer))
    }

    async fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if !self.allowed(&peer_id) {
                    tracing::warn!(peer = %peer_id, "peer not allowed in this swarm; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if num_established.get() == 1
                    && let Some(key) = peer_key(&peer_id)
                {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.agent.replica().lock().peer_connected(now_ms(), key);
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        kad.add_address(&peer_id, endpoint.get_remote_address().clone());
                    }
                }
                self.agent
                    .metrics
                    .swarm_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0
                    && let Some(key) = peer_key(&peer_id)
                {
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.agent.replica().lock().peer_disconnected(&key);
                }
                self.agent
                    .metrics
                    .swarm_peers
                    .set(self.swarm.connected_peers().count() as i64);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let accepted = self.receive(propagation_source, &message.data).await;
                let verdict = if accepted {
                    gossipsub::MessageAcceptance::Accept
                } else {
                    gossipsub::MessageAcceptance::Reject
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            })) => {
                let accepted = self.receive(peer, &request).await;
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, vec![u8::from(accepted)]);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                error,
                ..
            })) => tracing::debug!(%peer, %error, "sync request failed"),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if self.allowed(&peer) && !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed (wrong swarm key?)");
            }
            _ => {}
        }
    }

    /// One message from a peer through the engine into the store. Returns whether the engine
    /// accepted it; a peer that keeps sending refused messages is disconnected and blocked.
    async fn receive(&mut self, peer: PeerId, bytes: &[u8]) -> bool {
        let Some(key) = peer_key(&peer) else { return false };
        if !self.allowed(&peer) {
            return false;
        }
        let agent = self.agent.clone();
        let _guard = agent.write_guard().await;
        let result = agent.replica().lock().handle_incoming(now_ms(), &key, bytes);
        let kind = murmur_sync::MessageKind::of_frame(bytes).map_or("unknown", |k| k.as_str());
        let labels = SwarmLabels {
            direction: "in",
            kind,
        };
        self.agent.metrics.swarm_messages.get_or_create(&labels).inc();
        self.agent
            .metrics
            .swarm_bytes
            .get_or_create(&labels)
            .inc_by(bytes.len() as u64);
        let accepted = match result {
            Ok(()) => true,
            Err(error) => {
                self.agent.metrics.swarm_refused.inc();
                let count = self.refusals.entry(peer).or_default();
                *count += 1;
                tracing::warn!(%peer, %error, refusals = *count, "refused a message from a peer");
                if *count >= self.max_refusals {
                    tracing::warn!(%peer, "too many refused messages: disconnecting and blocking the peer");
                    self.blocked.insert(peer);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                false
            }
        };
        self.flush_locked().await;
        accepted
    }

    /// Stores what the engine accepted, then sends what it queued. The caller holds the
    /// agent's write guard.
    async fn flush_locked(&mut self) {
        let (events, persists) = self.agent.replica().take_received();
        if let Err(error) = self.agent.apply_remote(events, persists).await {
            tracing::error!(%error, "storing memories from peers failed; they will come again");
            return;
        }
        let transmits = self.agent.replica().take_transmits();
        for transmit in transmits {
            let labels = SwarmLabels {
                direction: "out",
                kind: transmit.kind.as_str(),
            };
            self.agent.metrics.swarm_messages.get_or_create(&labels).inc();
            self.agent
                .metrics
                .swarm_bytes
                .get_or_create(&labels)
                .inc_by(transmit.bytes.len() as u64);
            match transmit.to {
                Destination::AllPeers => {
                    let topic = self.topic.clone();
                    if let Err(error) = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(topic, transmit.bytes)
                    {
                        // No peers yet: anti-entropy delivers it later.
                        tracing::debug!(%error, "push not published");
                    }
                }
                Destination::Peer(key) => {
                    if let Some(peer) = peer_id(&key) {
                        self.swarm
                            .behaviour_mut()
                            .sync
                            .send_request(&peer, transmit.bytes);
                    }
                }
            }
        }
    }
}

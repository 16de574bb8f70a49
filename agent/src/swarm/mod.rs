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
//!
//! NAT: every agent can reach peers through a relay (circuit relay v2 client) and upgrade such
//! connections to direct ones (DCUtR); `relays` makes it hold reservations so others can reach
//! it; `relay_server` makes it a relay; AutoNAT tells it whether it is publicly reachable.
//! Relayed connections run over the relay's own connections, which are pnet-protected, so a
//! relay never lets an outsider in.

mod codec;
mod settings;
mod view;

pub use codec::SyncCodec;
pub use settings::{GossipSettings, SwarmSettings, relay_peer};
pub use view::{NetworkView, PeerLink};

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, Transport, autonat,
    core::upgrade::Version,
    dcutr, gossipsub, identify,
    identity::{self, Keypair},
    kad, mdns,
    multiaddr::Protocol,
    noise, ping,
    pnet::{PnetConfig, PreSharedKey},
    relay,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
    tcp, yamux,
};
use murmur_sync::Destination;
use tokio::sync::Notify;

use crate::{metrics::SwarmLabels, replica::PeerKey, service::Agent, time::now_ms};

/// Name of the file in the data dir that lists the addresses peers can dial (with `/p2p/`).
pub const SWARM_ADDR_FILE: &str = "swarm.addr";
/// The request-response protocol anti-entropy messages travel on.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/sync/1");

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    relay_client: relay::client::Behaviour,
    relay_server: Toggle<relay::Behaviour>,
    autonat: Toggle<autonat::Behaviour>,
    dcutr: Toggle<dcutr::Behaviour>,
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

/// Handle to a running driver: wakes it when local writes queued messages, and shows what it
/// knows of the network.
#[derive(Clone)]
pub struct SwarmHandle {
    notify: Arc<Notify>,
    view: Arc<Mutex<NetworkView>>,
}

impl SwarmHandle {
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    pub fn view(&self) -> NetworkView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
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
    view: Arc<Mutex<NetworkView>>,
    relays: BTreeMap<PeerId, RelayListener>,
    /// Peers found on the LAN (mDNS) and where, until they expire: redialled while not
    /// connected, because mDNS announces a peer once and a first dial can fail (both sides
    /// dialling at once, a peer still starting).
    discovered: BTreeMap<PeerId, BTreeSet<Multiaddr>>,
    /// Bootstrap peers named with their `/p2p/` id: redialled while not connected, so a peer
    /// that restarts, or comes back after a partition, is reached again.
    bootstrap: BTreeMap<PeerId, Multiaddr>,
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
    let topic = settings.gossip.topic(config.shards);

    let behaviour = |key: &Keypair, relay_client: relay::client::Behaviour| -> anyhow::Result<Behaviour> {
        let gossip_config = settings.gossip.gossipsub_config(max_bytes)?;
        let gossipsub = gossipsub::Behaviour::new(settings.gossip.authenticity(key), gossip_config)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
        let sync = request_response::Behaviour::new(
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
        );
        let mdns = if settings.mdns_on() {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                key.public().to_peer_id(),
            )?)
        } else {
            None
        };
        let kad = settings.kademlia_on().then(|| {
            let id = key.public().to_peer_id();
            kad::Behaviour::new(id, kad::store::MemoryStore::new(id))
        });
        let id = key.public().to_peer_id();
        let relay_server = settings.relay_server.then(|| {
            let config = relay::Config {
                max_circuit_duration: Duration::from_secs(settings.relay_max_circuit_secs),
                max_circuit_bytes: settings.relay_max_circuit_bytes,
                ..relay::Config::default()
            };
            relay::Behaviour::new(id, config)
        });
        let autonat = settings.autonat.then(|| {
            autonat::Behaviour::new(
                id,
                autonat::Config {
                    // Edge devices often sit on private LANs: accept their probes there too.
                    only_global_ips: false,
                    boot_delay: Duration::from_secs(5),
                    retry_interval: Duration::from_secs(30),
                    ..autonat::Config::default()
                },
            )
        });
        Ok(Behaviour {
            gossipsub,
            sync,
            identify: identify::Behaviour::new(
                identify::Config::new("/murmur/1".into(), key.public())
                    .with_agent_version(format!("murmur-agent/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad: kad.into(),
            relay_client,
            relay_server: relay_server.into(),
            autonat: autonat.into(),
            dcutr: settings.hole_punching.then(|| dcutr::Behaviour::new(id)).into(),
        })
    };

    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm_config = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(3600));
    let make =
        |key: &Keypair, relay_client| behaviour(key, relay_client).map_err(|e| e.into_boxed_dyn_error());
    let mut swarm = match psk {
        Some(psk) => builder
            .with_other_transport(move |key| private_transport(key, psk))?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(make)?
            .with_swarm_config(swarm_config)
            .build(),
        None if settings.quic => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(make)?
            .with_swarm_config(swarm_config)
            .build(),
        None => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            .with_behaviour(make)?
            .with_swarm_config(swarm_config)
            .build(),
    };
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    for addr in &settings.listen {
        swarm.listen_on(addr.parse()?)?;
    }
    let quic_default = settings.quic && !settings.listen.iter().any(|a| settings::is_quic(a));
    if quic_default {
        swarm.listen_on("/ip4/0.0.0.0/udp/0/quic-v1".parse()?)?;
    }
    // Wait for the listeners so the address file is complete.
    let mut addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while addrs.len() < settings.listen.len() + usize::from(quic_default) {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => addrs.push(address),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lines: Vec<String> = addrs.iter().map(|a| format!("{a}/p2p/{local}")).collect();
    std::fs::write(agent.data_dir().join(SWARM_ADDR_FILE), lines.join("\n")).context("writing swarm.addr")?;
    tracing::info!(peer_id = %local, addrs = ?lines, private = settings.swarm_key.is_some(), "swarm listening");

    let mut view = NetworkView {
        peer_id: local.to_string(),
        access: if settings.swarm_key.is_some() {
            "private"
        } else {
            "open"
        }
        .into(),
        discovery: [("mdns", settings.mdns_on()), ("kademlia", settings.kademlia_on())]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name.to_string())
            .collect(),
        listen_addresses: addrs.iter().map(ToString::to_string).collect(),
        reachability: "unknown".into(),
        ..NetworkView::default()
    };
    for addr in &settings.external_addresses {
        let addr: Multiaddr = addr.parse()?;
        view.external_addresses.push(addr.to_string());
        swarm.add_external_address(addr);
    }
    // Dial only now: the connections' events belong to the driver's loop.
    let mut bootstrap = BTreeMap::new();
    for addr in &settings.bootstrap {
        let addr: Multiaddr = addr.parse()?;
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            bootstrap.insert(peer, addr.clone());
            if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                kad.add_address(&peer, addr.clone());
            }
        }
        if let Err(error) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
        }
    }
    let mut relays = BTreeMap::new();
    for relay in &settings.relays {
        let (addr, peer) = relay_peer(relay)?;
        relays.insert(peer, RelayListener { addr, listener: None });
    }

    agent.replica().set_networked(true);
    let notify = Arc::new(Notify::new());
    let view = Arc::new(Mutex::new(view));
    let handle = SwarmHandle {
        notify: notify.clone(),
        view: view.clone(),
    };
    let mut driver = Driver {
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
        view,
        relays,
        discovered: BTreeMap::new(),
        bootstrap,
    };
    driver.listen_via_relays();
    let task = tokio::spawn(driver.run(notify));
    Ok((handle, task))
}

/// A relay we want a reservation with, and the listener that holds it while it is open.
struct RelayListener {
    addr: Multiaddr,
    listener: Option<libp2p::core::transport::ListenerId>,
}

impl Driver {
    async fn run(mut self, notify: Arc<Notify>) {
        // On this beat a relay that refused or lost our reservation is asked again, and LAN
        // and bootstrap peers not connected are dialled again.
        let mut retry = tokio::time::interval(Duration::from_secs(5));
        loop {
            let wake_at = self.agent.replica().lock().poll_timeout();
            let sleep_ms = wake_at.saturating_sub(now_ms());
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event).await,
                _ = retry.tick() => {
                    self.listen_via_relays();
                    self.redial_known_peers();
                }
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

    fn listen_via_relays(&mut self) {
        for (peer, relay) in &mut self.relays {
            if relay.listener.is_some() {
                continue;
            }
            let circuit = relay.addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::info!(relay = %peer, "asking the relay for a reservation");
                    relay.listener = Some(id);
                }
                Err(error) => tracing::warn!(relay = %peer, %error, "cannot listen through the relay"),
            }
        }
    }

    fn redial_known_peers(&mut self) {
        let discovered = self
            .discovered
            .iter()
            .map(|(peer, addrs)| (*peer, addrs.iter().cloned().collect::<Vec<_>>()));
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|(peer, addr)| (*peer, vec![addr.clone()]));
        let waiting: Vec<(PeerId, Vec<Multiaddr>)> = discovered
            .chain(bootstrap)
            .filter(|(peer, _)| !self.swarm.is_connected(peer) && self.allowed(peer))
            .collect();
        for (peer, addrs) in waiting {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(error) = self.swarm.dial(opts) {
                tracing::debug!(%peer, %error, "cannot dial a discovered or bootstrap peer");
            }
        }
    }

    fn with_view(&self, change: impl FnOnce(&mut NetworkView)) {
        if let Ok(mut view) = self.view.lock() {
            change(&mut view);
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
                let addr = endpoint.get_remote_address().clone();
                let author = peer_key(&peer_id).map(hex::encode).unwrap_or_default();
                let relayed = endpoint.is_relayed();
                self.with_view(|v| v.connection_opened(&peer_id, author, &addr, relayed));
                if num_established.get() == 1
                    && let Some(key) = peer_key(&peer_id)
                {
                    tracing::info!(peer = %peer_id, %addr, relayed, "peer connected");
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
                endpoint,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                let relayed = endpoint.is_relayed();
                self.with_view(|v| v.connection_closed(&peer_id, &addr, relayed, num_established));
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
                    if self.allowed(&peer) {
                        self.discovered.entry(peer).or_default().insert(addr);
                    }
                }
                self.redial_known_peers();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some(addrs) = self.discovered.get_mut(&peer) {
                        addrs.remove(&addr);
                        if addrs.is_empty() {
                            self.discovered.remove(&peer);
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for addr in &info.listen_addrs {
                        kad.add_address(&peer_id, addr.clone());
                    }
                }
                self.with_view(|v| {
                    if let Some(link) = v.peer_mut(&peer_id) {
                        link.agent_version = Some(info.agent_version.clone());
                    }
                });
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.with_view(|v| {
                if let Some(link) = v.peer_mut(&peer) {
                    link.rtt_ms = Some(rtt.as_secs_f64() * 1e3);
                }
            }),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                if let relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                } = &event
                {
                    if !renewal {
                        tracing::info!(relay = %relay_peer_id, "reservation accepted: reachable through the relay");
                    }
                    let relay = relay_peer_id.to_string();
                    self.with_view(|v| NetworkView::add_unique(&mut v.relay_reservations, relay));
                } else {
                    tracing::debug!(?event, "relay client");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(event)) => {
                tracing::debug!(?event, "relay server");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection to a relayed peer")
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punching failed; staying relayed")
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. })) => {
                tracing::info!(status = ?new, "reachability (AutoNAT)");
                let reachability = match &new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                };
                self.with_view(|v| v.reachability = reachability.into());
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.with_view(|v| NetworkView::add_unique(&mut v.listen_addresses, address.to_string()));
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                self.with_view(|v| NetworkView::add_unique(&mut v.external_addresses, address.to_string()));
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                let address = address.to_string();
                self.with_view(|v| v.external_addresses.retain(|a| *a != address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let mut lost = Vec::new();
                for (peer, relay) in &mut self.relays {
                    if relay.listener == Some(listener_id) {
                        tracing::warn!(relay = %relay.addr, ?reason, "lost the relay reservation; will ask again");
                        relay.listener = None;
                        lost.push(peer.to_string());
                    }
                }
                let gone: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                self.with_view(|v| {
                    v.listen_addresses.retain(|a| !gone.contains(a));
                    v.relay_reservations.retain(|r| !lost.contains(r));
                });
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
        if let Err(error) = self.agent.store_received().await {
            tracing::error!(%error, "storing memories from peers failed; they will come again");
            return;
        }
        let transmits = self.agent.route_transmits(self.agent.replica().take_transmits());
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

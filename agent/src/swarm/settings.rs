//! `[swarm]` settings: transports, discovery, privacy and NAT traversal.

use std::time::Duration;

use anyhow::Context;
use libp2p::{Multiaddr, PeerId, gossipsub, pnet::PreSharedKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmSettings {
    /// Off until configured: an agent never joins a network it was not told to.
    pub enabled: bool,
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs (with `/p2p/<peer id>`) dialled at start and kept as Kademlia seeds.
    pub bootstrap: Vec<String>,
    /// LAN discovery by multicast DNS. Unset: on with a swarm key, off without one, so an
    /// open agent does not announce itself to every host on the LAN.
    pub mdns: Option<bool>,
    /// Kademlia for finding peers beyond the LAN. Unset: on with a swarm key, off without.
    pub kademlia: Option<bool>,
    /// 64 hex digits: the swarm's pre-shared key (pnet). Required unless `open` is set.
    pub swarm_key: Option<String>,
    /// Join a swarm without a key on purpose: anyone who can reach this agent may connect,
    /// read every memory it shares and write to it.
    pub open: bool,
    /// Peer ids allowed to connect (empty: any holder of the swarm key).
    pub allow_peers: Vec<String>,
    /// Also listen and dial over QUIC (only without a swarm key).
    pub quic: bool,
    /// Refused messages from one peer before it is disconnected and blocked.
    pub max_refusals: u32,
    /// Addresses this agent is reachable at that it cannot see itself (a port forward, a
    /// public address in front of a NAT), announced to peers as confirmed.
    pub external_addresses: Vec<String>,
    /// Relays (multiaddrs with `/p2p/<relay's peer id>`) to hold a reservation with, so that
    /// peers can reach this agent through them when it is behind a NAT.
    pub relays: Vec<String>,
    /// Serve as a relay for other members (for an agent with a public address).
    pub relay_server: bool,
    /// Relay server limits: a circuit is closed after this long or this many bytes.
    pub relay_max_circuit_secs: u64,
    pub relay_max_circuit_bytes: u64,
    /// Ask peers to dial back (AutoNAT) to learn whether this agent is publicly reachable,
    /// and answer such probes for them.
    pub autonat: bool,
    /// Upgrade relayed connections to direct ones by simultaneous dialling (DCUtR).
    pub hole_punching: bool,
    /// How pushes spread (gossipsub).
    pub gossip: GossipSettings,
}

/// Gossipsub's knobs for pushes: what each push costs on the wire against how many paths it
/// takes (docs/agent.md, "Gossip cost"). Every member of a swarm may set its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSettings {
    /// Peers an agent forwards each push to (the mesh degree), and the band it keeps the mesh
    /// in: `mesh_outbound_min <= mesh_n_low <= mesh_n <= mesh_n_high`, `2 * outbound <= mesh_n`.
    pub mesh_n: usize,
    pub mesh_n_low: usize,
    pub mesh_n_high: usize,
    pub mesh_outbound_min: usize,
    /// Send this agent's own pushes to every connected member, not only its mesh.
    pub flood_publish: bool,
    /// A receiver of a push larger than this tells its mesh it has it (IDONTWANT), so copies
    /// not yet sent are not.
    pub idontwant_bytes: usize,
    /// Peers outside the mesh told each heartbeat which pushes this agent has (IHAVE).
    pub gossip_lazy: usize,
    /// Wrap every push in a gossipsub signature of the sender as well. A push is already
    /// signed by its author and each link is authenticated (noise), so this only adds ~100
    /// bytes per push per hop; it is here for a rolling upgrade, because agents from before it
    /// signed and the two kinds gossip on different topics (anti-entropy still joins them).
    pub signed: bool,
}

impl Default for GossipSettings {
    fn default() -> Self {
        Self {
            // Degree 3 and IDONTWANT on every push: each peer gets fewer copies of a push
            // than with gossipsub's own 6 and no later (docs/BENCHMARKS.md, "Gossip cost").
            mesh_n: 3,
            mesh_n_low: 2,
            mesh_n_high: 4,
            mesh_outbound_min: 1,
            flood_publish: true,
            idontwant_bytes: 0,
            gossip_lazy: 3,
            signed: false,
        }
    }
}

impl GossipSettings {
    /// The gossipsub configuration, refused with the setting named when it is inconsistent.
    pub fn gossipsub_config(&self, max_message_bytes: usize) -> anyhow::Result<gossipsub::Config> {
        // gossipsub's builder checks these only for topics configured one by one.
        let band = "swarm.gossip needs mesh_outbound_min <= mesh_n_low <= mesh_n <= mesh_n_high \
                    and 2 * mesh_outbound_min <= mesh_n";
        anyhow::ensure!(
            self.mesh_outbound_min <= self.mesh_n_low
                && self.mesh_n_low <= self.mesh_n
                && self.mesh_n <= self.mesh_n_high
                && 2 * self.mesh_outbound_min <= self.mesh_n
                && self.mesh_n_low > 0,
            "{band} (and mesh_n_low >= 1); it has {}, {}, {}, {}",
            self.mesh_outbound_min,
            self.mesh_n_low,
            self.mesh_n,
            self.mesh_n_high
        );
        gossipsub::ConfigBuilder::default()
            .validation_mode(if self.signed {
                gossipsub::ValidationMode::Strict
            } else {
                gossipsub::ValidationMode::Anonymous
            })
            .validate_messages()
            .max_transmit_size(max_message_bytes)
            .heartbeat_interval(Duration::from_millis(700))
            .mesh_n(self.mesh_n)
            .mesh_n_low(self.mesh_n_low)
            .mesh_n_high(self.mesh_n_high)
            .mesh_outbound_min(self.mesh_outbound_min)
            .flood_publish(self.flood_publish)
            .idontwant_message_size_threshold(self.idontwant_bytes)
            .gossip_lazy(self.gossip_lazy)
            .message_id_fn(|m: &gossipsub::Message| gossip_message_id(&m.data))
            .build()
            .map_err(|e| anyhow::anyhow!("swarm.gossip: {e}"))
    }

    /// The pushes' topic: peers of one swarm share shards, so it names the swarm by them, and
    /// signed and unsigned pushes never share a topic (each kind refuses the other).
    pub fn topic(&self, shards: u16) -> gossipsub::IdentTopic {
        let version = if self.signed { 1 } else { 2 };
        gossipsub::IdentTopic::new(format!("murmur/push/v{version}/{shards}"))
    }

    pub fn authenticity(&self, key: &libp2p::identity::Keypair) -> gossipsub::MessageAuthenticity {
        if self.signed {
            gossipsub::MessageAuthenticity::Signed(key.clone())
        } else {
            gossipsub::MessageAuthenticity::Anonymous
        }
    }
}

/// Gossip drops a message whose id it has seen, so every agent must compute the same id for the
/// same bytes whatever toolchain built it: a fixed hash (std's `DefaultHasher` may change
/// between Rust releases).
fn gossip_message_id(data: &[u8]) -> gossipsub::MessageId {
    use sha2::{Digest, Sha256};
    gossipsub::MessageId::from(Sha256::digest(data)[..20].to_vec())
}

impl Default for SwarmSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: vec!["/ip4/0.0.0.0/tcp/0".into()],
            bootstrap: Vec::new(),
            mdns: None,
            kademlia: None,
            swarm_key: None,
            open: false,
            allow_peers: Vec::new(),
            quic: false,
            max_refusals: 5,
            external_addresses: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            relay_max_circuit_secs: 30 * 60,
            relay_max_circuit_bytes: 256 * 1024 * 1024,
            autonat: true,
            hole_punching: true,
            gossip: GossipSettings::default(),
        }
    }
}

impl SwarmSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        anyhow::ensure!(
            self.swarm_key.is_some() || self.open,
            "the swarm is on but has no swarm key, so anyone who can reach this agent could read \
             and write its memories. Give every member the same key: `murmur-agent swarm-key` \
             prints a new one; pass it as --swarm-key, MURMUR_SWARM_KEY or swarm.swarm_key. To \
             run an open swarm on purpose, say so with --open-swarm (swarm.open = true)"
        );
        anyhow::ensure!(!self.listen.is_empty(), "swarm.listen is empty");
        for addr in self
            .listen
            .iter()
            .chain(&self.bootstrap)
            .chain(&self.external_addresses)
        {
            addr.parse::<Multiaddr>()
                .with_context(|| format!("swarm address {addr:?} is not a multiaddr"))?;
        }
        if let Some(addr) = self.listen.iter().find(|a| is_quic(a)) {
            anyhow::ensure!(
                self.quic,
                "swarm.listen has a QUIC address ({addr}) but swarm.quic is off"
            );
        }
        for relay in &self.relays {
            relay_peer(relay)?;
        }
        anyhow::ensure!(
            self.relay_max_circuit_secs > 0 && self.relay_max_circuit_bytes > 0,
            "swarm.relay_max_circuit_secs and swarm.relay_max_circuit_bytes must be positive"
        );
        self.psk()?;
        anyhow::ensure!(
            !(self.quic && self.swarm_key.is_some()),
            "swarm.quic cannot be used with a swarm key: libp2p's private networks cover TCP only"
        );
        for peer in &self.allow_peers {
            peer.parse::<PeerId>()
                .with_context(|| format!("swarm.allow_peers: {peer:?} is not a peer id"))?;
        }
        self.gossip.gossipsub_config(64 * 1024)?;
        Ok(())
    }

    /// Whether mDNS runs: as set, else only in a keyed swarm.
    pub fn mdns_on(&self) -> bool {
        self.mdns.unwrap_or(self.swarm_key.is_some())
    }

    /// Whether Kademlia runs: as set, else only in a keyed swarm.
    pub fn kademlia_on(&self) -> bool {
        self.kademlia.unwrap_or(self.swarm_key.is_some())
    }

    pub fn psk(&self) -> anyhow::Result<Option<PreSharedKey>> {
        Ok(self.swarm_key_bytes()?.map(PreSharedKey::new))
    }

    /// The swarm key's 32 bytes (libp2p's pnet and the manager uplink both prove it).
    pub fn swarm_key_bytes(&self) -> anyhow::Result<Option<[u8; 32]>> {
        let Some(hex_key) = &self.swarm_key else {
            return Ok(None);
        };
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut key)
            .map_err(|_| anyhow::anyhow!("swarm.swarm_key must be 64 hex digits"))?;
        Ok(Some(key))
    }
}

pub fn is_quic(addr: &str) -> bool {
    addr.parse::<Multiaddr>()
        .is_ok_and(|a| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1)))
}

/// A relay's address must name the relay (`/p2p/<peer id>` last) so a reservation can be made.
pub fn relay_peer(addr: &str) -> anyhow::Result<(Multiaddr, PeerId)> {
    let parsed: Multiaddr = addr
        .parse()
        .with_context(|| format!("swarm.relays: {addr:?} is not a multiaddr"))?;
    match parsed.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((parsed, peer)),
        _ => anyhow::bail!("swarm.relays: {addr:?} must end in /p2p/<the relay's peer id>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> SwarmSettings {
        SwarmSettings {
            enabled: true,
            open: true,
            ..SwarmSettings::default()
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_field_named() {
        let cases: Vec<(SwarmSettings, &str)> = vec![
            (
                SwarmSettings {
                    relays: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                    ..enabled()
                },
                "must end in /p2p/",
            ),
            (
                SwarmSettings {
                    relays: vec!["not an address".into()],
                    ..enabled()
                },
                "swarm.relays",
            ),
            (
                SwarmSettings {
                    external_addresses: vec!["nowhere".into()],
                    ..enabled()
                },
                "not a multiaddr",
            ),
            (
                SwarmSettings {
                    swarm_key: Some("abc".into()),
                    ..enabled()
                },
                "64 hex digits",
            ),
            (
                SwarmSettings {
                    swarm_key: Some("00".repeat(32)),
                    quic: true,
                    ..enabled()
                },
                "quic",
            ),
            (
                SwarmSettings {
                    relay_max_circuit_bytes: 0,
                    ..enabled()
                },
                "relay_max_circuit",
            ),
            (
                SwarmSettings {
                    gossip: GossipSettings {
                        mesh_n: 1,
                        ..GossipSettings::default()
                    },
                    ..enabled()
                },
                "swarm.gossip",
            ),
        ];
        for (settings, expected) in cases {
            let error = settings.validate().expect_err("refused").to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
        let relay = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let good = SwarmSettings {
            relays: vec![relay.into()],
            external_addresses: vec!["/ip4/203.0.113.7/tcp/4001".into()],
            ..enabled()
        };
        good.validate().expect("valid");
    }

    #[test]
    fn a_swarm_without_a_key_is_refused_unless_asked_for_by_name_and_then_stays_off_the_lan() {
        let keyless = SwarmSettings {
            enabled: true,
            ..SwarmSettings::default()
        };
        let error = keyless.validate().expect_err("refused").to_string();
        assert!(error.contains("--open-swarm"), "{error}");
        assert!(error.contains("murmur-agent swarm-key"), "{error}");
        let open = SwarmSettings {
            open: true,
            ..keyless.clone()
        };
        open.validate().expect("an open swarm asked for by name");
        assert!(!open.mdns_on() && !open.kademlia_on());
        let asked = SwarmSettings {
            mdns: Some(true),
            kademlia: Some(true),
            ..open
        };
        assert!(asked.mdns_on() && asked.kademlia_on());
        let keyed = SwarmSettings {
            swarm_key: Some("00".repeat(32)),
            ..keyless
        };
        keyed.validate().expect("a keyed swarm");
        assert!(keyed.mdns_on() && keyed.kademlia_on());
        let off = SwarmSettings {
            mdns: Some(false),
            ..keyed
        };
        assert!(!off.mdns_on() && off.kademlia_on());
        let disabled = SwarmSettings::default();
        disabled.validate().expect("no swarm, nothing to check");
    }

    /// Pinned: agents of different builds in one swarm must agree on it.
    #[test]
    fn the_gossip_message_id_is_the_same_for_every_build() {
        assert_eq!(
            gossip_message_id(b"murmur push").0,
            hex::decode("540688eb17f18446e651472d3109c846def31267").unwrap()
        );
        assert_ne!(
            gossip_message_id(b"murmur push"),
            gossip_message_id(b"murmur push!")
        );
    }
}

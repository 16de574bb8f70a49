//! `[swarm]` settings: transports, discovery, privacy and NAT traversal.

use anyhow::Context;
use libp2p::{Multiaddr, PeerId, pnet::PreSharedKey};
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
            external_addresses: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            relay_max_circuit_secs: 30 * 60,
            relay_max_circuit_bytes: 256 * 1024 * 1024,
            autonat: true,
            hole_punching: true,
        }
    }
}

impl SwarmSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
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
        Ok(())
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
}

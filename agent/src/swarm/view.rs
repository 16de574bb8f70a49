//! What the driver knows about the network, for `/v1/stats` and `murmur-agent peers`: our own
//! addresses and reachability, and for each connected peer how we reach it.

use std::collections::BTreeMap;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkView {
    pub peer_id: String,
    /// `private` (a swarm key guards every connection) or `open` (no key, asked for by name).
    pub access: String,
    /// The discovery this agent runs: `mdns`, `kademlia` (bootstrap peers are always dialled).
    pub discovery: Vec<String>,
    pub listen_addresses: Vec<String>,
    /// Addresses peers were told they can reach us at (configured, or confirmed).
    pub external_addresses: Vec<String>,
    /// What AutoNAT concluded: `public`, `private` or `unknown`.
    pub reachability: String,
    /// Relays holding a reservation for us (peer ids).
    pub relay_reservations: Vec<String>,
    pub peers: BTreeMap<String, PeerLink>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerLink {
    /// The peer's ed25519 key, hex: how `sync.peers` names it.
    pub author: String,
    /// Remote address of each open connection.
    pub addresses: Vec<String>,
    /// Whether every open connection goes through a relay (no direct path yet).
    pub relayed: bool,
    #[serde(skip)]
    relayed_connections: usize,
    pub rtt_ms: Option<f64>,
    /// What the peer says it runs (identify).
    pub agent_version: Option<String>,
}

impl NetworkView {
    /// `relayed`: the connection runs through a relay (libp2p's `ConnectedPoint::is_relayed`;
    /// an inbound circuit's address does not show it).
    pub fn connection_opened(&mut self, peer: &PeerId, author: String, addr: &Multiaddr, relayed: bool) {
        let link = self.peers.entry(peer.to_string()).or_default();
        link.author = author;
        link.addresses.push(addr.to_string());
        link.relayed_connections += usize::from(relayed);
        link.relayed = link.relayed_connections == link.addresses.len();
    }

    pub fn connection_closed(&mut self, peer: &PeerId, addr: &Multiaddr, relayed: bool, remaining: u32) {
        let key = peer.to_string();
        if remaining == 0 {
            self.peers.remove(&key);
            return;
        }
        if let Some(link) = self.peers.get_mut(&key) {
            let addr = addr.to_string();
            if let Some(at) = link.addresses.iter().position(|a| *a == addr) {
                link.addresses.remove(at);
                link.relayed_connections -= usize::from(relayed && link.relayed_connections > 0);
            }
            link.relayed = link.relayed_connections == link.addresses.len();
        }
    }

    pub fn peer_mut(&mut self, peer: &PeerId) -> Option<&mut PeerLink> {
        self.peers.get_mut(&peer.to_string())
    }

    pub fn add_unique(list: &mut Vec<String>, item: String) {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_relayed_only_while_every_connection_goes_through_a_relay() {
        let mut view = NetworkView::default();
        let peer = PeerId::random();
        let relayed: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{}/p2p-circuit", PeerId::random())
            .parse()
            .expect("multiaddr");
        let direct: Multiaddr = "/ip4/127.0.0.1/tcp/2".parse().expect("multiaddr");
        view.connection_opened(&peer, "aa".into(), &relayed, true);
        assert!(view.peer_mut(&peer).expect("listed").relayed);
        view.connection_opened(&peer, "aa".into(), &direct, false);
        assert!(!view.peer_mut(&peer).expect("listed").relayed);
        view.connection_closed(&peer, &direct, false, 1);
        assert!(view.peer_mut(&peer).expect("listed").relayed);
        view.connection_closed(&peer, &relayed, true, 0);
        assert!(view.peers.is_empty());
    }
}

//! How agents reach each other, with real agent processes: QUIC on loopback, a relay (circuit
//! relay v2) with AutoNAT and hole punching on loopback, and mDNS discovery on a LAN made of
//! network namespaces that the test creates (multicast never leaves them).

use std::process::Command;

use murmur_tests::{AgentProcess, wait_until};
use serde_json::{Value, json};

const KEY: &str = "6d75726d75722d746573742d737761726d2d6b65792d3030303030303030aa01";

fn addresses(link: &Value) -> Vec<String> {
    link["addresses"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn quic_carries_the_swarm() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |bootstrap: &str| {
        format!(
            "[swarm]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nquic = true\nopen = true\n\
             bootstrap = [{bootstrap}]\n"
        )
    };
    let a = AgentProcess::start_with_config(dirs[0].path(), &config(""));
    let a_addr = a.swarm_addr();
    assert!(a_addr.contains("/quic-v1/"), "{a_addr}");
    let b = AgentProcess::start_with_config(dirs[1].path(), &config(&format!("\"{a_addr}\"")));

    let b_id = b.peer_id();
    wait_until(60, "a QUIC connection between the agents", || {
        a.link_to(&b_id)
            .is_some_and(|link| addresses(&link).iter().any(|addr| addr.contains("/quic-v1")))
    });
    let id = a.add(json!({ "text": "Dock door 4 sticks when it is below freezing." }));
    wait_until(60, "the memory to reach the QUIC peer", || {
        b.search_ids("which door is stuck in the cold?", 3).contains(&id)
    });
}

#[test]
fn a_peer_is_reached_through_a_relay_and_learns_its_reachability() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let base = format!(
        "[swarm]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nswarm_key = \"{KEY}\"\n\
         mdns = false\nkademlia = false\n"
    );
    let relay = AgentProcess::start_with_config(dirs[0].path(), &format!("{base}relay_server = true\n"));
    let relay_addr = relay.swarm_addr();
    let relay_id = relay.peer_id();

    // B sits "behind a NAT": it only tells the relay about itself.
    let behind =
        AgentProcess::start_with_config(dirs[1].path(), &format!("{base}relays = [\"{relay_addr}\"]\n"));
    let behind_id = behind.peer_id();
    wait_until(60, "the relay to accept B's reservation", || {
        behind.stats()["swarm"]["relay_reservations"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r.as_str() == Some(&relay_id)))
    });

    // C knows B only by its address through the relay.
    let circuit = format!("{relay_addr}/p2p-circuit/p2p/{behind_id}");
    let caller =
        AgentProcess::start_with_config(dirs[2].path(), &format!("{base}bootstrap = [\"{circuit}\"]\n"));
    wait_until(60, "C to be connected to B through the relay", || {
        caller
            .link_to(&behind_id)
            .is_some_and(|link| addresses(&link).iter().any(|a| a.contains("/p2p-circuit")))
    });
    let id = behind.add(json!({ "text": "The conveyor in hall B stops every ten minutes." }));
    wait_until(60, "C to find what B wrote", || {
        caller
            .search_ids("which conveyor keeps stopping?", 3)
            .contains(&id)
    });

    // DCUtR: C and B upgrade the relayed connection to a direct one (on loopback there is no
    // NAT in the way, so the simultaneous dial succeeds).
    wait_until(60, "a direct connection from C to B (hole punching)", || {
        caller.link_to(&behind_id).is_some_and(|link| {
            link["relayed"] == false && addresses(&link).iter().any(|a| !a.contains("/p2p-circuit"))
        })
    });
    assert!(
        caller.log().contains("hole punched"),
        "C's log shows no DCUtR upgrade"
    );

    // AutoNAT: the relay dials B back on its listening address and B learns it is reachable.
    wait_until(90, "B's reachability to be known", || {
        behind.stats()["swarm"]["reachability"] == "public"
    });
}

/// A LAN of two hosts: two network namespaces on a bridge, each with an agent that has mDNS on
/// and no bootstrap peer. Needs root (CI runs as root) and iproute2.
#[test]
fn mdns_finds_peers_on_a_lan_with_no_bootstrap() {
    let lan = Lan::create();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let agents: Vec<AgentProcess> = (0..2)
        .map(|i| {
            let wrapper = ["ip", "netns", "exec", lan.namespaces[i].as_str()];
            let api = format!("{}:0", lan.host_ip(i));
            AgentProcess::start_wrapped(
                dirs[i].path(),
                &wrapper,
                &api,
                &["--swarm-listen", "/ip4/0.0.0.0/tcp/0", "--swarm-key", KEY],
            )
        })
        .collect();
    let other = agents[1].peer_id();
    wait_until(90, "mDNS to connect the two hosts", || {
        agents[0]
            .link_to(&other)
            .is_some_and(|link| addresses(&link).iter().any(|a| a.contains(&lan.subnet_prefix())))
    });
    let id = agents[1].add(json!({ "text": "Camera 12 on the loading bay is out of focus." }));
    wait_until(60, "the memory to cross the LAN", || {
        agents[0].search_ids("which camera is blurry?", 3).contains(&id)
    });
    drop(agents);
}

/// Two namespaces joined by a bridge in the test's own namespace (which also reaches the
/// agents' APIs through it). Removed on drop.
struct Lan {
    namespaces: Vec<String>,
    bridge: String,
    octet: u32,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip runs");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn create() -> Self {
        let tag = std::process::id() % 100_000;
        let octet = 100 + std::process::id() % 150;
        let lan = Self {
            namespaces: vec![format!("mm{tag}a"), format!("mm{tag}b")],
            bridge: format!("mm{tag}br"),
            octet,
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.77.{octet}.254/24"),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        for (i, ns) in lan.namespaces.iter().enumerate() {
            let outer = format!("{ns}0");
            let inner = format!("{ns}1");
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["link", "set", &outer, "master", &lan.bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", lan.host_ip(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", &inner]);
        }
        lan
    }

    fn host_ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.octet, i + 1)
    }

    fn subnet_prefix(&self) -> String {
        format!("/ip4/10.77.{}.", self.octet)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

//! SIGKILL at random points of writes, deletes and receives, many times over: an agent in a
//! swarm with a peer that keeps writing is killed and restarted while a client writes to it and
//! deletes from it. After every restart: every acknowledged write is there, whole; every
//! acknowledged delete is still a delete, and its text is gone from the disk; the agent opened
//! at all, which it refuses to do when its replica and its store disagree. At the end it holds
//! everything its peer wrote.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use murmur_tests::{AgentProcess, Lcg, env_or, wait_until};
use serde_json::json;

const SWARM_KEY: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";

fn vector(rng: &mut Lcg) -> Vec<f32> {
    let raw: Vec<f32> = (0..384)
        .map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-3);
    raw.into_iter().map(|x| x / norm).collect()
}

/// What the client was told by the victim, across all its lives.
#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: id -> text.
    written: HashMap<String, String>,
    /// Acknowledged deletes.
    deleted: HashSet<String>,
    /// Deletes sent when the agent died: either outcome is allowed, but it must stick.
    in_doubt: HashSet<String>,
}

#[test]
fn sigkill_during_writes_deletes_and_receives_loses_nothing_and_brings_nothing_back() {
    let seed: u64 = env_or("MURMUR_TEST_SEED", 0x6b11);
    let cycles: usize = env_or("MURMUR_KILL_CYCLES", 50);
    eprintln!("kill cycles: seed {seed}, {cycles} cycles (MURMUR_TEST_SEED, MURMUR_KILL_CYCLES)");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();

    // The peer writes all along, so the victim is often killed while receiving.
    let peer = AgentProcess::start_in_swarm(&dir.path().join("peer"), SWARM_KEY, &[]);
    let bootstrap = peer.swarm_addr();
    let peer_written: Arc<Mutex<Vec<String>>> = Arc::default();
    let peer_stop = Arc::new(AtomicBool::new(false));
    let peer_writer = {
        let client = murmur_agent::client::Client::new(peer.client.base());
        let (written, stop) = (peer_written.clone(), peer_stop.clone());
        let mut rng = Lcg(seed ^ 0xfeed);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let body = json!({ "text": format!("peer note {n}"), "vector": vector(&mut rng) });
                let reply = client.post("/v1/memories", &body).expect("the peer stays up");
                assert_eq!(reply.status, 201, "{:?}", reply.body);
                written
                    .lock()
                    .unwrap()
                    .push(reply.body["id"].as_str().unwrap().to_owned());
                n += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };

    let victim_dir = dir.path().join("victim");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for cycle in 0..cycles {
        let victim = AgentProcess::start_in_swarm(&victim_dir, SWARM_KEY, std::slice::from_ref(&bootstrap));
        check(&victim, &mut ledger.lock().unwrap(), cycle);

        let stop = Arc::new(AtomicBool::new(false));
        let client = murmur_agent::client::Client::new(victim.client.base());
        let worker = {
            let (ledger, stop) = (ledger.clone(), stop.clone());
            let mut rng = Lcg(rng.next_u64() ^ cycle as u64);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let live: Vec<String> = {
                        let ledger = ledger.lock().unwrap();
                        ledger
                            .written
                            .keys()
                            .filter(|id| !ledger.deleted.contains(*id) && !ledger.in_doubt.contains(*id))
                            .cloned()
                            .collect()
                    };
                    if !live.is_empty() && rng.next_u64() % 10 < 3 {
                        let mut sorted = live;
                        sorted.sort();
                        let id = sorted[rng.next_u64() as usize % sorted.len()].clone();
                        ledger.lock().unwrap().in_doubt.insert(id.clone());
                        match client.send("DELETE", &format!("/v1/memories/{id}"), None) {
                            Ok(reply) if reply.status < 300 => {
                                let mut ledger = ledger.lock().unwrap();
                                ledger.in_doubt.remove(&id);
                                ledger.deleted.insert(id);
                            }
                            Ok(reply) => panic!("delete of {id} answered {}: {:?}", reply.status, reply.body),
                            Err(_) => break,
                        }
                    } else {
                        let text = format!(
                            "victim note {cycle}/{n} {:016x}",
                            rng.next_u64() << 20 ^ rng.next_u64()
                        );
                        let body = json!({ "text": text, "vector": vector(&mut rng) });
                        match client.post("/v1/memories", &body) {
                            Ok(reply) if reply.status == 201 => {
                                let id = reply.body["id"].as_str().unwrap().to_owned();
                                ledger.lock().unwrap().written.insert(id, text);
                            }
                            Ok(reply) => panic!("write answered {}: {:?}", reply.status, reply.body),
                            // Died mid-request: not acknowledged, so not promised.
                            Err(_) => break,
                        }
                    }
                    n += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_millis(40 + rng.next_u64() % 400));
        victim.kill();
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
    }

    let victim = AgentProcess::start_in_swarm(&victim_dir, SWARM_KEY, std::slice::from_ref(&bootstrap));
    let mut ledger = ledger.lock().unwrap();
    check(&victim, &mut ledger, cycles);
    assert!(
        ledger.written.len() >= cycles && ledger.deleted.len() >= cycles / 5,
        "the test did too little to mean anything: {} writes, {} deletes",
        ledger.written.len(),
        ledger.deleted.len()
    );
    peer_stop.store(true, Ordering::Relaxed);
    peer_writer.join().unwrap();
    let from_peer = peer_written.lock().unwrap().clone();
    wait_until(120, "the victim holds everything its peer wrote", || {
        from_peer.iter().all(|id| victim.status_of(id) == 200)
    });
    eprintln!(
        "kill cycles: {} acknowledged writes, {} acknowledged deletes, {} received from the peer",
        ledger.written.len(),
        ledger.deleted.len(),
        from_peer.len()
    );
    victim.stop();
    peer.stop();
}

/// The victim, just restarted, against everything it acknowledged.
fn check(agent: &AgentProcess, ledger: &mut Ledger, cycle: usize) {
    let in_doubt: Vec<String> = ledger.in_doubt.drain().collect();
    for id in in_doubt {
        match agent.status_of(&id) {
            410 => {
                ledger.deleted.insert(id);
            }
            200 => {}
            other => panic!("cycle {cycle}: {id}, whose delete was cut short, answers {other}"),
        }
    }
    for (id, text) in &ledger.written {
        let reply = agent.client.get(&format!("/v1/memories/{id}")).unwrap();
        if ledger.deleted.contains(id) {
            assert_eq!(
                reply.status, 410,
                "cycle {cycle}: deleted {id} came back: {:?}",
                reply.body
            );
        } else {
            assert_eq!(
                reply.status, 200,
                "cycle {cycle}: acknowledged {id} is missing: {:?}",
                reply.body
            );
            assert_eq!(reply.body["text"], text.as_str(), "cycle {cycle}");
        }
    }
    let bodies = std::fs::read(agent.data_dir.join("db.bodies")).unwrap_or_default();
    let on_disk = victim_texts_on_disk(&bodies);
    for id in &ledger.deleted {
        let text = &ledger.written[id];
        assert!(
            !on_disk.contains(text.as_bytes()),
            "cycle {cycle}: the text of deleted {id} is still on disk"
        );
    }
}

/// Every victim text in a body file, found in one pass (texts are "victim note C/N HEX16").
fn victim_texts_on_disk(bytes: &[u8]) -> HashSet<&[u8]> {
    const PREFIX: &[u8] = b"victim note ";
    let mut found = HashSet::new();
    let mut at = 0;
    while at + PREFIX.len() <= bytes.len() {
        if bytes[at] == b'v' && bytes[at..].starts_with(PREFIX) {
            let rest = &bytes[at + PREFIX.len()..];
            // "C/N " then 16 hex digits.
            if let Some(space) = rest.iter().take(24).position(|&b| b == b' ') {
                let end = at + PREFIX.len() + space + 1 + 16;
                if end <= bytes.len() {
                    found.insert(&bytes[at..end]);
                }
            }
            at += PREFIX.len();
        } else {
            at += 1;
        }
    }
    found
}

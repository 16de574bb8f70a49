//! An agent that reads its uplink slowly: the manager holds its sync replies back while that
//! agent's outbox is long, and the agent still ends with everything once it has drained.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use murmur_manager::manager::now_ms;
use murmur_sync::{Config, Engine, InMemoryBodies, MemoryDraft, SigningKey};
use murmur_tests::*;
use murmur_uplink::{Credentials, Frame, FrameKind, FrameReader, client_endpoint, connect, write_frame};

type Key = [u8; 32];

fn credentials(seed: u8) -> Credentials {
    let mut swarm_key = [0u8; 32];
    hex::decode_to_slice(SWARM_KEY, &mut swarm_key).unwrap();
    Credentials::new(SigningKey::from_bytes(&[seed; 32]), Some(swarm_key))
}

/// An agent as the test drives it: its engine and the bodies it holds.
struct TestAgent {
    engine: Engine<Key>,
    bodies: InMemoryBodies,
}

fn drain(agent: &mut TestAgent) -> Vec<Vec<u8>> {
    agent.bodies.settle(&mut agent.engine);
    let engine = &mut agent.engine;
    std::iter::from_fn(|| engine.poll_transmit())
        .map(|t| t.bytes)
        .collect()
}

/// Runs `engine` against the manager until it holds `want` memories, sleeping `pause` after
/// every frame it reads (a slow link or a busy device).
async fn sync_until(
    endpoint: &murmur_uplink::quinn::Endpoint,
    manager: std::net::SocketAddr,
    seed: u8,
    agent: &mut TestAgent,
    want: usize,
    pause: Duration,
    held: Arc<AtomicUsize>,
) {
    let session = connect(endpoint, manager, &credentials(seed), &[], "test-agent")
        .await
        .unwrap();
    let manager_key = session.peer.key;
    let murmur_uplink::Session { mut send, recv, .. } = session;
    let mut frames = FrameReader::spawn(recv, 16 << 20);
    agent.engine.peer_connected(now_ms(), manager_key);
    agent.engine.start_round(now_ms(), manager_key);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut pending = drain(agent);
    while agent.engine.visible_count() < want {
        if want != usize::MAX {
            assert!(
                Instant::now() < deadline,
                "held {} of {want}",
                agent.engine.visible_count()
            );
        }
        for bytes in pending.drain(..) {
            write_frame(&mut send, &Frame::new(FrameKind::Sync, bytes))
                .await
                .unwrap();
        }
        let wake = Duration::from_millis(agent.engine.poll_timeout().saturating_sub(now_ms()).min(500));
        tokio::select! {
            frame = frames.next() => {
                let frame = frame.expect("uplink open").expect("frame");
                agent.engine.handle_incoming(now_ms(), &manager_key, &frame.payload).expect("honest manager");
                tokio::time::sleep(pause).await;
            }
            _ = tokio::time::sleep(wake) => agent.engine.handle_timeout(now_ms()),
        }
        pending = drain(agent);
        held.store(agent.engine.visible_count(), Ordering::SeqCst);
    }
}

/// An engine holding `count` memories (6 KB of text each) by the author `seed`.
fn writer(seed: u8, count: usize) -> TestAgent {
    let engine: Engine<Key> = Engine::new(
        Config::default(),
        SigningKey::from_bytes(&[seed; 32]),
        seed.into(),
        now_ms(),
    )
    .unwrap();
    let drafts: Vec<MemoryDraft> = (0..count)
        .map(|i| MemoryDraft {
            namespace: "test".into(),
            text: format!("reading {seed}/{i}: {}", "vibration above threshold ".repeat(230)),
            metadata_json: "{}".into(),
            tags: vec![],
            model_id: "test-model".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
        })
        .collect();
    let mut agent = TestAgent {
        engine,
        bodies: InMemoryBodies::new(),
    };
    for chunk in drafts.chunks(200) {
        agent.engine.write(now_ms(), chunk).unwrap();
    }
    drain(&mut agent);
    agent
}

/// Uploads what `engine` holds until the manager holds `total` memories.
fn upload(
    runtime: &tokio::runtime::Runtime,
    endpoint: &murmur_uplink::quinn::Endpoint,
    manager: &ManagerProcess,
    seed: u8,
    mut agent: TestAgent,
    total: u64,
) {
    let uplink: std::net::SocketAddr = manager.uplink.parse().unwrap();
    let endpoint = endpoint.clone();
    let task = runtime.spawn(async move {
        // Runs until aborted: the writer already holds everything it has.
        let held = Arc::default();
        sync_until(
            &endpoint,
            uplink,
            seed,
            &mut agent,
            usize::MAX,
            Duration::ZERO,
            held,
        )
        .await
    });
    wait_until(120, "the manager to hold the upload", || manager.live() == total);
    task.abort();
}

#[test]
fn a_slow_agent_is_held_back_while_its_outbox_is_long_and_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    let uplink: std::net::SocketAddr = manager.uplink.parse().unwrap();

    // About 12 MB of memories (6 KB of text each), uploaded by one agent.
    let count = 2000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = runtime
        .block_on(async { client_endpoint(Duration::from_secs(30)) })
        .unwrap();
    upload(&runtime, &endpoint, &manager, 1, writer(1, count), count as u64);
    assert_eq!(metric(&manager, "murmur_manager_uplink_backlogs_total"), 0.0);

    // A new agent that reads slowly: its replies fill its outbox past the mark, so the manager
    // holds further replies back until that outbox has drained.
    let held = Arc::new(AtomicUsize::new(0));
    let slow = {
        let (endpoint, held) = (endpoint.clone(), held.clone());
        runtime.spawn(async move {
            let mut slow = TestAgent {
                engine: Engine::new(Config::default(), SigningKey::from_bytes(&[2; 32]), 2, now_ms())
                    .unwrap(),
                bodies: InMemoryBodies::new(),
            };
            let pause = Duration::from_millis(40);
            sync_until(&endpoint, uplink, 2, &mut slow, count + 100, pause, held).await;
            slow.engine.visible_count()
        })
    };
    wait_until(180, "the slow agent to catch up", || {
        held.load(Ordering::SeqCst) >= count
    });
    assert!(
        metric(&manager, "murmur_manager_uplink_backlogs_total") >= 1.0,
        "the slow agent's outbox never counted as backlogged"
    );
    // Written after it caught up: it learns them on the same uplink only if the backlog was
    // cleared when its outbox drained.
    upload(
        &runtime,
        &endpoint,
        &manager,
        3,
        writer(3, 100),
        count as u64 + 100,
    );
    let caught_up = runtime.block_on(slow).unwrap();
    assert_eq!(caught_up, count + 100);
    assert_eq!(
        metric(&manager, "murmur_manager_outbox_dropped_total"),
        0.0,
        "held back, not dropped"
    );
    manager.stop();
}

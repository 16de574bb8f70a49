//! Memories merged and persisted per second by a real `murmur-manager` process (local bucket,
//! the embedded default) while 1, 10 and 100 agents upload at once over QUIC, against a bare
//! `murmur-sync` engine in this process verifying and applying the same signed changes (no
//! network, no sync rounds, no bucket) in the same run. Also the manager's peak RSS. Not a test: run it with
//! `bash scripts/bench-manager.sh` (docs/BENCHMARKS.md).
//!
//! The simulated agents run at nice 19 in this process, so the manager gets the CPU it would
//! have on its own host; the per-manager-CPU-second rate does not depend on that.
//!
//! `MURMUR_BENCH_AGENTS` (default `1,10,100`) and `MURMUR_BENCH_MEMORIES` (total per run,
//! default 20000) size it.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use murmur_manager::manager::now_ms;
use murmur_sync::{
    Config, Engine, InMemoryBodies, MemoryDraft, MemoryRecord, Persist, SignedChange, SigningKey,
};
use murmur_uplink::{Credentials, Frame, FrameKind, FrameReader, write_frame};

const SWARM_KEY: [u8; 32] = [0x5a; 32];
const TOKEN: &str = "operator-token-for-benchmarks";
type Key = [u8; 32];

/// A deterministic pseudo-random unit vector: benchmark input, not test data.
fn vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<f32> = (0..384)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// An agent as the bench drives it: its engine and the bodies it holds.
struct BenchAgent {
    engine: Engine<Key>,
    bodies: InMemoryBodies,
}

/// What an agent wrote, as a manager's bucket would hold it: changes and bodies.
struct Written {
    changes: Vec<Persist>,
    bodies: Vec<Vec<u8>>,
}

/// An agent holding `count` memories of realistic size (text ~120 B, metadata, tags, a
/// 384-dim vector).
fn agent_engine(index: usize, count: usize) -> (BenchAgent, Written) {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
    let mut engine = Engine::new(
        Config::default(),
        SigningKey::from_bytes(&secret),
        index as u64,
        now_ms(),
    )
    .expect("engine");
    let drafts: Vec<MemoryDraft> = (0..count)
        .map(|i| MemoryDraft {
            namespace: "bench".into(),
            text: format!(
                "agent {index} observation {i}: conveyor belt {} vibration above threshold near station {}",
                i % 17,
                i % 5
            ),
            metadata_json: format!(r#"{{"sensor":"vib-{}","value":{}}}"#, i % 31, i % 1000),
            tags: vec!["vibration".into(), format!("line-{}", i % 4)],
            model_id: "all-MiniLM-L6-v2-int8".into(),
            vector: vector((index * 1_000_003 + i) as u64),
        })
        .collect();
    let mut records = Vec::with_capacity(count);
    for chunk in drafts.chunks(100) {
        records.extend(engine.write(now_ms(), chunk).expect("write"));
    }
    let mut bodies = InMemoryBodies::new();
    let (changes, _) = bodies.settle(&mut engine);
    while engine.poll_transmit().is_some() {}
    let written = Written {
        changes,
        bodies: records.iter().map(MemoryRecord::encode).collect(),
    };
    (BenchAgent { engine, bodies }, written)
}

/// The peer: the same signed changes verified and applied by one bare engine in this process,
/// as a manager loading them from its bucket would (no QUIC, no sync rounds, no bucket, no
/// view).
fn in_process_apply(written: &[Written]) -> Duration {
    let mut engine: Engine<Key> = Engine::new(
        Config::default(),
        SigningKey::from_bytes(&[0xee; 32]),
        7,
        now_ms(),
    )
    .expect("engine");
    let shards = engine.config().shards;
    let mut by_shard: BTreeMap<u16, (Vec<SignedChange>, Vec<Vec<u8>>)> = BTreeMap::new();
    for persist in written.iter().flat_map(|w| &w.changes) {
        by_shard
            .entry(persist.shard)
            .or_default()
            .0
            .push(persist.change.clone());
    }
    for body in written.iter().flat_map(|w| &w.bodies) {
        let shard = MemoryRecord::id_in(body).expect("a record").shard(shards);
        by_shard.entry(shard).or_default().1.push(body.clone());
    }
    let started = Instant::now();
    for (shard, (changes, bodies)) in by_shard {
        engine
            .apply_stored(shard, changes, bodies)
            .expect("valid changes");
        while engine.poll_persist().is_some() {}
        while engine.poll_event().is_some() {}
    }
    started.elapsed()
}

struct ManagerProcess {
    child: Child,
    http: String,
    uplink: std::net::SocketAddr,
    client: ureq::Agent,
}

impl ManagerProcess {
    fn start(dir: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_murmur-manager"))
            .args([
                "run",
                "--no-model",
                "--http-listen",
                "127.0.0.1:0",
                "--uplink-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(["--swarm-key", &hex::encode(SWARM_KEY), "--operator-token", TOKEN])
            .args(["--export-interval-secs", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("manager binary");
        let client: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        // Owned at once, so Drop stops it on every path out of here.
        let mut manager = Self {
            child,
            http: String::new(),
            uplink: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let http = std::fs::read_to_string(dir.join("http.addr")).unwrap_or_default();
            let uplink = std::fs::read_to_string(dir.join("uplink.addr")).unwrap_or_default();
            if let (false, Ok(uplink)) = (http.is_empty(), uplink.parse()) {
                manager.http = format!("http://{http}");
                manager.uplink = uplink;
                return manager;
            }
            assert!(Instant::now() < deadline, "manager did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn live(&self) -> u64 {
        let reply = self
            .client
            .get(format!("{}/healthz", self.http))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok());
        reply.and_then(|v| v["memories"].as_u64()).unwrap_or(0)
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.http))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// CPU seconds the manager process has used (user + system), from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name in parentheses: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        ticks / 100.0 // USER_HZ is 100 on Linux
    }

    /// (current RSS, peak RSS) in MiB, from /proc.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// One simulated agent: its engine over one QUIC stream at a time, as the real agent drives
/// it, reconnecting (as the real agent does) whenever the uplink is lost.
async fn agent(
    endpoint: murmur_uplink::quinn::Endpoint,
    manager: std::net::SocketAddr,
    mut agent: BenchAgent,
    index: usize,
) {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
    let credentials = Credentials::new(SigningKey::from_bytes(&secret), Some(SWARM_KEY));
    loop {
        match murmur_uplink::connect(&endpoint, manager, &credentials, &[], "bench-agent").await {
            Ok(session) => {
                let manager_key = session.peer.key;
                if let Err(reason) = run_session(session, &mut agent, manager_key).await {
                    eprintln!("agent {index}: uplink lost ({reason}), reconnecting");
                }
                agent.engine.peer_disconnected(&manager_key);
            }
            Err(error) => eprintln!("agent {index}: connect failed ({error}), retrying"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn drain(agent: &mut BenchAgent) -> Vec<Vec<u8>> {
    agent.bodies.settle(&mut agent.engine);
    let mut out = Vec::new();
    while let Some(t) = agent.engine.poll_transmit() {
        out.push(t.bytes);
    }
    out
}

async fn run_session(
    session: murmur_uplink::Session,
    agent: &mut BenchAgent,
    manager_key: Key,
) -> Result<(), String> {
    let murmur_uplink::Session { mut send, recv, .. } = session;
    let mut frames = FrameReader::spawn(recv, 16 << 20);
    agent.engine.peer_connected(now_ms(), manager_key);
    agent.engine.start_round(now_ms(), manager_key);
    let mut pending = drain(agent);
    loop {
        for bytes in pending.drain(..) {
            write_frame(&mut send, &Frame::new(FrameKind::Sync, bytes))
                .await
                .map_err(|e| e.to_string())?;
        }
        let sleep = Duration::from_millis(agent.engine.poll_timeout().saturating_sub(now_ms()).min(1000));
        tokio::select! {
            frame = frames.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Err("stream closed".into()),
                };
                let _ = agent.engine.handle_incoming(now_ms(), &manager_key, &frame.payload);
            }
            _ = tokio::time::sleep(sleep) => agent.engine.handle_timeout(now_ms()),
        }
        pending = drain(agent);
    }
}

/// The simulated agents share this machine's cores with the manager; at nice 19 they take
/// only what the manager leaves, as if they ran on their own hardware. Linux applies
/// `setpriority(PRIO_PROCESS, 0)` to the calling thread only, so each runtime worker does it.
fn lower_this_threads_priority() {
    // SAFETY: setpriority has no memory-safety preconditions; a failure only leaves the
    // priority as it was.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
}

fn main() {
    let fleets: Vec<usize> = std::env::var("MURMUR_BENCH_AGENTS")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let total: usize = std::env::var("MURMUR_BENCH_MEMORIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    println!(
        "| agents | memories | manager merged+persisted/s (wall) | per manager CPU-second | bare engine verify+apply/s (peer) | wall ratio | CPU ratio | segments | outbox drops | manager RSS now / peak (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for agents in fleets {
        let per_agent = total / agents;
        let expected = (per_agent * agents) as u64;
        eprintln!("preparing {agents} agents x {per_agent} signed memories…");
        let (engines, written): (Vec<BenchAgent>, Vec<Written>) =
            (0..agents).map(|i| agent_engine(i, per_agent)).unzip();
        let baseline = in_process_apply(&written);

        let dir = tempfile::tempdir().expect("tempdir");
        let manager = ManagerProcess::start(dir.path());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_start(lower_this_threads_priority)
            .build()
            .expect("runtime");
        let endpoint = runtime
            .block_on(async { murmur_uplink::client_endpoint(Duration::from_secs(30)) })
            .expect("endpoint");
        let cpu_before = manager.cpu_seconds();
        let started = Instant::now();
        let tasks: Vec<_> = engines
            .into_iter()
            .enumerate()
            .map(|(i, engine)| runtime.spawn(agent(endpoint.clone(), manager.uplink, engine, i)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(1800);
        while manager.live() < expected {
            assert!(Instant::now() < deadline, "the manager did not merge everything");
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        let cpu = manager.cpu_seconds() - cpu_before;
        let (rss, peak) = manager.rss_mib();
        let dropped = manager.metric("murmur_manager_outbox_dropped_total");
        let segments = manager.metric("murmur_manager_segments_written_total");
        for task in tasks {
            task.abort();
        }
        drop(runtime);
        let rate = expected as f64 / elapsed.as_secs_f64();
        let peer = expected as f64 / baseline.as_secs_f64();
        let per_cpu = expected as f64 / cpu.max(0.01);
        println!(
            "| {agents} | {expected} | {rate:.0} | {per_cpu:.0} | {peer:.0} | {:.2} | {:.2} | {segments} | {dropped} | {rss:.0} / {peak:.0} |",
            rate / peer,
            per_cpu / peer
        );
        drop(manager);
    }
}

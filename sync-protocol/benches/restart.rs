//! What a replica's state costs to hold and to rebuild at start, printed as a Markdown table.
//!
//! `cargo bench -p murmur-sync --bench restart` (`MEMORIES=10000,100000` sets the sizes).
//! One author writes the memories in batches of 256 (the agent's HTTP batch), in the format the
//! drivers run (bodies by hash: the documents hold 73-byte entries). Then the replica is
//! rebuilt two ways: replaying every persisted change (with the resident memory that adds), and
//! resuming from a snapshot (with the time to copy and to encode it).

use std::time::Instant;

use murmur_sync::{Config, Engine, MemoryDraft, Signatures, SignedChange, SigningKey};

const BATCH: usize = 256;

fn draft(rng: &mut fastrand::Rng, i: usize) -> MemoryDraft {
    MemoryDraft {
        namespace: format!("ns-{}", i % 4),
        text: format!("reading {i} from sensor {}", rng.u32(..1000)),
        metadata_json: "{}".into(),
        tags: Vec::new(),
        model_id: "bench".into(),
        vector: (0..8).map(|_| rng.f32() - 0.5).collect(),
    }
}

/// Resident set size of this process, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let sizes: Vec<usize> = std::env::var("MEMORIES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("MEMORIES: comma-separated counts"))
        .collect();
    println!(
        "| memories | changes | persisted MB | replay s | replay µs/memory | snapshot copy ms | encode s | snapshot MB | resume s | resume µs/memory | engine RSS B/memory |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let config = Config::default();
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut writer: Engine<u8> = Engine::new(config.clone(), key.clone(), 1, 0).expect("engine");
        let mut rng = fastrand::Rng::with_seed(n as u64);
        let mut persisted: Vec<(u16, SignedChange)> = Vec::new();
        let mut written = 0;
        while written < n {
            let batch: Vec<MemoryDraft> = (written..(written + BATCH).min(n))
                .map(|i| draft(&mut rng, i))
                .collect();
            writer.write(1_000 + written as u64, &batch).expect("write");
            written += batch.len();
            while let Some(p) = writer.poll_persist() {
                persisted.push((p.shard, p.change));
            }
            while writer.poll_event().is_some() {}
            while writer.poll_transmit().is_some() {}
        }
        drop(writer);
        let persisted_bytes: usize = persisted.iter().map(|(_, c)| c.encode().len()).sum();

        let before = rss_bytes();
        let started = Instant::now();
        let replayed: Engine<u8> = Engine::load(
            config.clone(),
            key.clone(),
            2,
            0,
            persisted.iter().cloned(),
            Signatures::Trusted,
            |_| true,
        )
        .expect("load");
        let replay = started.elapsed().as_secs_f64();
        let grown = rss_bytes().saturating_sub(before);
        assert_eq!(replayed.visible_count(), n);

        let started = Instant::now();
        let snapshot = replayed.snapshot();
        let copy = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let encoded = snapshot.encode();
        let encode = started.elapsed().as_secs_f64();
        drop(snapshot);
        let root = replayed.root_digest();
        drop(replayed);

        let started = Instant::now();
        let resumed: Engine<u8> = Engine::resume(
            config,
            key,
            3,
            0,
            &encoded,
            std::iter::empty(),
            Signatures::Trusted,
            |_| true,
        )
        .expect("resume");
        let resume = started.elapsed().as_secs_f64();
        assert_eq!(resumed.visible_count(), n);
        assert_eq!(resumed.root_digest(), root);
        println!(
            "| {n} | {} | {:.1} | {replay:.2} | {:.2} | {:.0} | {encode:.2} | {:.1} | {resume:.2} | {:.2} | {} |",
            persisted.len(),
            persisted_bytes as f64 / 1e6,
            replay * 1e6 / n as f64,
            copy * 1e3,
            encoded.len() as f64 / 1e6,
            resume * 1e6 / n as f64,
            grown / n as u64
        );
    }
}

//! Time and bytes to export a swarm's memories to Parquet (the manager's `Exporter`, into a
//! local bucket), against writing the same rows as JSON Lines with serde_json in the same run,
//! and this process's peak RSS holding them. Not a test: `bash scripts/bench-manager.sh`.
//!
//! `MURMUR_BENCH_EXPORT_MEMORIES` (default 1000000) sizes it; memories are spread over 30 days.

use std::{
    collections::HashMap,
    io::Write,
    sync::RwLock,
    time::{Duration, Instant},
};

use murmur_manager::{bucket::Bucket, export::Exporter, view::View};
use murmur_sync::{MemoryId, MemoryRecord};

const DAY_MS: u64 = 86_400_000;

fn record(i: u64, start_ms: u64) -> MemoryRecord {
    let created = start_ms + (i * 2_591_999) % (30 * DAY_MS);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&i.to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(created, &random).into_uuid();
    let mut author = [0u8; 32];
    author[0] = (i % 100) as u8;
    MemoryRecord {
        id: MemoryId(id.into_bytes()),
        nonce: i,
        author,
        namespace: format!("site-{}", i % 8),
        text: format!(
            "observation {i}: conveyor belt {} vibration above threshold near station {}",
            i % 17,
            i % 5
        ),
        metadata_json: format!(r#"{{"sensor":"vib-{}","value":{}}}"#, i % 31, i % 1000),
        tags: vec!["vibration".into(), format!("line-{}", i % 4)],
        model_id: "all-MiniLM-L6-v2-int8".into(),
        // A 384-dim f16 vector's worth of bytes: the RAM a real memory holds.
        vector_f16: (0..768).map(|b| (b as u64 ^ i) as u8).collect(),
        signature: [0; 64],
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn json_lines(view: &View, path: &std::path::Path) -> (Duration, u64) {
    let started = Instant::now();
    let file = std::fs::File::create(path).expect("json file");
    let mut out = std::io::BufWriter::new(file);
    for r in view.memories.values() {
        let row = serde_json::json!({
            "id": uuid::Uuid::from_bytes(r.id.0),
            "namespace": r.namespace,
            "author": hex::encode(r.author),
            "created_at": r.created_at_ms(),
            "text": r.text,
            "metadata": r.metadata_json,
            "tags": r.tags,
            "model_id": r.model_id,
            "dimension": r.dimension(),
        });
        serde_json::to_writer(&mut out, &row).expect("json");
        out.write_all(b"\n").expect("write");
    }
    out.into_inner().expect("flush").sync_all().expect("fsync");
    (
        started.elapsed(),
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    )
}

fn main() {
    let count: u64 = std::env::var("MURMUR_BENCH_EXPORT_MEMORIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let start_ms = 1_790_000_000_000;
    eprintln!("building a view of {count} memories…");
    let mut view = View::default();
    for i in 0..count {
        view.add(record(i, start_ms));
    }
    let held_rss = peak_rss_mib();
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::open(&format!("file://{}", dir.path().display()), &[]).expect("bucket");
    let view = RwLock::new(view);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut exporter = Exporter::default();
    let started = Instant::now();
    let summary = runtime
        .block_on(exporter.export(&bucket, &view, &HashMap::new()))
        .expect("export");
    let parquet_time = started.elapsed();
    let again = Instant::now();
    let unchanged = runtime
        .block_on(exporter.export(&bucket, &view, &HashMap::new()))
        .expect("second export");
    let unchanged_time = again.elapsed();
    let (json_time, json_bytes) = json_lines(
        &view.read().unwrap_or_else(|p| p.into_inner()),
        &dir.path().join("memories.jsonl"),
    );
    println!(
        "| memories | Parquet export | Parquet bytes | JSON Lines (peer) | JSON bytes | time ratio | size ratio | view locked | unchanged re-export | RSS holding / peak (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {count} | {:.2} s | {} | {:.2} s | {json_bytes} | {:.2} | {:.3} | {:.2} s | {:.2} s ({} partitions written) | {held_rss:.0} / {:.0} |",
        parquet_time.as_secs_f64(),
        summary.bytes,
        json_time.as_secs_f64(),
        parquet_time.as_secs_f64() / json_time.as_secs_f64(),
        summary.bytes as f64 / json_bytes as f64,
        summary.view_locked.as_secs_f64(),
        unchanged_time.as_secs_f64(),
        unchanged.partitions_written,
        peak_rss_mib()
    );
    assert_eq!(summary.memories_written as u64, count);
}

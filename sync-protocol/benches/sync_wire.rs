//! Wire cost and merge speed of the sync protocol, printed as a Markdown table.
//!
//! `cargo bench -p murmur-sync --bench sync_wire` (or `bash scripts/bench-sync.sh`).
//! Memories are realistic: Debian package descriptions as text (models/testdata), ~60 bytes of
//! metadata, a 384-dimension vector (the default model's), stored and sent at f16.
//! `MEMORIES` (default 10000) sets how many each replica holds in the anti-entropy case.

use std::time::Instant;

use murmur_sync::{
    Config, Destination, Engine, MemoryDraft, MemoryRecord, Message, Signatures, SignedChange, SigningKey,
    automerge::{Automerge, Change},
};

const DIMENSION: usize = 384;

fn sentences() -> Vec<String> {
    let text = include_str!("../../models/testdata/bench_sentences.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn draft(rng: &mut fastrand::Rng, sentences: &[String]) -> MemoryDraft {
    let mut vector: Vec<f32> = (0..DIMENSION).map(|_| rng.f32() - 0.5).collect();
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|v| *v /= norm);
    MemoryDraft {
        namespace: "warehouse".into(),
        text: sentences[rng.usize(..sentences.len())].clone(),
        metadata_json: format!(
            r#"{{"device":"cam-{:03}","site":"bay-{}","confidence":0.{:02}}}"#,
            rng.u32(..1000),
            rng.u32(..20),
            rng.u32(..100)
        ),
        tags: vec!["camera".into(), "shift-b".into()],
        model_id: "all-MiniLM-L6-v2-int8".into(),
        vector,
    }
}

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

/// Raw payload as a user counts it: text + metadata JSON + vector at the stored f16 precision.
fn payload(records: &[MemoryRecord]) -> usize {
    records.iter().map(MemoryRecord::payload_bytes).sum()
}

fn drain<P: Clone + Ord + std::fmt::Debug>(engine: &mut Engine<P>) {
    while engine.poll_persist().is_some() {}
    while engine.poll_event().is_some() {}
}

/// Runs one anti-entropy exchange between two engines until both are quiet. Returns bytes each
/// way and the time spent inside `handle_incoming` by each side.
fn exchange(a: &mut Engine<u8>, b: &mut Engine<u8>, now: u64) -> (u64, u64, f64, f64) {
    let (mut a_to_b, mut b_to_a) = (0u64, 0u64);
    let (mut a_secs, mut b_secs) = (0f64, 0f64);
    // Force a round from a to b.
    a.handle_timeout(a.poll_timeout().max(now));
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            if t.to == Destination::Peer(1) {
                a_to_b += t.bytes.len() as u64;
                let start = Instant::now();
                b.handle_incoming(now, &0, &t.bytes).expect("honest message");
                b_secs += start.elapsed().as_secs_f64();
                moved = true;
            }
        }
        while let Some(t) = b.poll_transmit() {
            if t.to == Destination::Peer(0) {
                b_to_a += t.bytes.len() as u64;
                let start = Instant::now();
                a.handle_incoming(now, &1, &t.bytes).expect("honest message");
                a_secs += start.elapsed().as_secs_f64();
                moved = true;
            }
        }
        drain(a);
        drain(b);
        if !moved {
            return (a_to_b, b_to_a, a_secs, b_secs);
        }
    }
}

fn main() {
    let n: usize = std::env::var("MEMORIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let sentences = sentences();
    let mut rng = fastrand::Rng::with_seed(42);
    let config = Config::default();
    println!(
        "# murmur-sync wire and merge benchmark ({n} memories per replica, {} shards)\n",
        config.shards
    );

    // 1. Push: one memory per write, and a batch of 100.
    let mut writer: Engine<u8> = Engine::new(config.clone(), key(1), 1, 0).unwrap();
    writer.peer_connected(0, 1);
    let (mut push_bytes, mut records) = (0usize, Vec::new());
    for i in 0..1000 {
        records.extend(writer.write(i, &[draft(&mut rng, &sentences)]).unwrap());
        while let Some(t) = writer.poll_transmit() {
            push_bytes += t.bytes.len();
        }
    }
    drain(&mut writer);
    let single_payload = payload(&records);
    let drafts: Vec<MemoryDraft> = (0..100).map(|_| draft(&mut rng, &sentences)).collect();
    let batch = writer.write(2000, &drafts).unwrap();
    let mut batch_bytes = 0usize;
    while let Some(t) = writer.poll_transmit() {
        batch_bytes += t.bytes.len();
    }
    let batch_payload = payload(&batch);
    println!("| measure | value | against | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| push, one memory per write (mean of 1000) | {:.0} B | raw payload {:.0} B (text {:.0} + metadata {:.0} + vector {} at f16) | {:.3} |",
        push_bytes as f64 / 1000.0,
        single_payload as f64 / 1000.0,
        records.iter().map(|r| r.text.len()).sum::<usize>() as f64 / 1000.0,
        records.iter().map(|r| r.metadata_json.len()).sum::<usize>() as f64 / 1000.0,
        DIMENSION * 2,
        push_bytes as f64 / single_payload as f64
    );
    println!(
        "| push, batch of 100 (per memory) | {:.0} B | raw payload {:.0} B | {:.3} |",
        batch_bytes as f64 / 100.0,
        batch_payload as f64 / 100.0,
        batch_bytes as f64 / batch_payload as f64
    );
    println!(
        "| push vs f32 vector payload (one per write) | {:.0} B | text + metadata + vector at f32 {:.0} B | {:.3} |",
        push_bytes as f64 / 1000.0,
        (single_payload + 1000 * DIMENSION * 2) as f64 / 1000.0,
        push_bytes as f64 / (single_payload + 1000 * DIMENSION * 2) as f64
    );

    // 2. Two replicas that each hold n memories the other lacks meet.
    let build = |seed: u8, rng: &mut fastrand::Rng| {
        let mut e: Engine<u8> = Engine::new(config.clone(), key(seed), seed as u64, 0).unwrap();
        let mut held = Vec::new();
        for chunk in 0..n.div_ceil(100) {
            let count = (n - chunk * 100).min(100);
            let drafts: Vec<MemoryDraft> = (0..count).map(|_| draft(rng, &sentences)).collect();
            held.extend(e.write(chunk as u64, &drafts).unwrap());
        }
        while e.poll_transmit().is_some() {}
        drain(&mut e);
        (e, held)
    };
    // Written one memory per change, as an agent fed by a sensor would.
    let build_single = |seed: u8, rng: &mut fastrand::Rng| {
        let mut e: Engine<u8> = Engine::new(config.clone(), key(seed), seed as u64, 0).unwrap();
        let mut held = Vec::new();
        for i in 0..n {
            held.extend(e.write(i as u64, &[draft(rng, &sentences)]).unwrap());
        }
        while e.poll_transmit().is_some() {}
        drain(&mut e);
        (e, held)
    };
    for (label, builder) in [
        (
            "one memory per change",
            &build_single as &dyn Fn(u8, &mut fastrand::Rng) -> (Engine<u8>, Vec<MemoryRecord>),
        ),
        ("batches of 100", &build),
    ] {
        let (mut a, a_held) = builder(10, &mut rng);
        let (mut b, b_held) = builder(11, &mut rng);
        a.peer_connected(0, 1);
        b.peer_connected(0, 0);
        let (ab, ba, a_secs, b_secs) = exchange(&mut a, &mut b, 1_000_000);
        assert_eq!(a.root_digest(), b.root_digest(), "one exchange converges");
        assert_eq!(a.visible_count(), 2 * n);
        let missing = payload(&a_held) + payload(&b_held);
        println!(
            "| anti-entropy, 2 x {n} missing, {label} | {:.2} MB ({:.2} + {:.2}) | raw payload of what was missing {:.2} MB | {:.3} |",
            (ab + ba) as f64 / 1e6,
            ab as f64 / 1e6,
            ba as f64 / 1e6,
            missing as f64 / 1e6,
            (ab + ba) as f64 / missing as f64
        );
        println!(
            "| merge, {label}: memories applied per second while receiving | {:.0} /s | - | - |",
            (2 * n) as f64 / (a_secs + b_secs)
        );
        if label == "batches of 100" {
            // 3. Idle round and digest size at this state size.
            let (ab, ba, _, _) = exchange(&mut a, &mut b, 2_000_000);
            println!(
                "| idle anti-entropy round at {} memories | {} B ({} + {}) | 1 KiB aim | {:.3} |",
                a.visible_count(),
                ab + ba,
                ab,
                ba,
                (ab + ba) as f64 / 1024.0
            );
            let reply = Message::DigestReply {
                round: 1,
                root: [0; 16],
                shards: vec![[0; 8]; config.shards as usize],
            };
            println!(
                "| digest: probe (root) / full reply ({} shards) | {} B / {} B | - | - |",
                config.shards,
                Message::DigestProbe {
                    round: 1,
                    shards: config.shards,
                    root: [0; 16]
                }
                .encode(config.format)
                .len(),
                reply.encode(config.format).len()
            );
        }
    }

    // 4. Merge throughput against plain automerge on the same changes: what the gate costs.
    let (mut source, _) = build_single(20, &mut rng);
    let mut changes: Vec<(u16, SignedChange)> = Vec::new();
    let mut persisted = Vec::new();
    // Reload gives every (shard, change) the source persisted.
    {
        let mut again: Engine<u8> = Engine::new(config.clone(), key(20), 20, 0).unwrap();
        let mut r2 = fastrand::Rng::with_seed(7);
        for i in 0..n {
            again.write(i as u64, &[draft(&mut r2, &sentences)]).unwrap();
        }
        while let Some(p) = again.poll_persist() {
            persisted.push((p.shard, p.change));
        }
        changes.extend(persisted.iter().cloned());
    }
    drain(&mut source);
    let start = Instant::now();
    let loaded: Engine<u8> = Engine::load(
        config.clone(),
        key(21),
        21,
        0,
        changes.clone(),
        Signatures::Verify,
        |_| true,
    )
    .unwrap();
    let ours = start.elapsed().as_secs_f64();
    assert_eq!(loaded.visible_count(), n);
    let start = Instant::now();
    let mut docs: Vec<Automerge> = (0..config.shards).map(|_| Automerge::new()).collect();
    let mut per_shard: Vec<Vec<Change>> = vec![Vec::new(); config.shards as usize];
    for (shard, c) in &changes {
        per_shard[*shard as usize].push(Change::from_bytes(c.bytes.clone()).unwrap());
    }
    for (doc, cs) in docs.iter_mut().zip(per_shard) {
        doc.apply_changes(cs).unwrap();
    }
    let plain = start.elapsed().as_secs_f64();
    let heads: usize = docs.iter().map(|d| d.get_heads().len()).sum();
    assert!(heads > 0);
    // What the two ed25519 verifications per memory (record and change) cost on their own.
    let signer = key(30);
    let verifier = signer.verifying_key();
    let message = vec![7u8; 1100];
    let signature = ed25519_dalek::Signer::sign(&signer, &message);
    let start = Instant::now();
    for _ in 0..2 * n.min(5000) {
        ed25519_dalek::Verifier::verify(&verifier, &message, &signature).unwrap();
    }
    let verify_rate = n.min(5000) as f64 / start.elapsed().as_secs_f64();
    println!(
        "| two ed25519 verifications alone (record + change, 1.1 KB) | {verify_rate:.0} memories/s | - | - |"
    );
    println!(
        "| merge {n} single-memory changes (verify + apply) | {:.0} memories/s | plain automerge apply_changes, no verification: {:.0} /s | {:.3} |",
        n as f64 / ours,
        n as f64 / plain,
        plain / ours
    );
}

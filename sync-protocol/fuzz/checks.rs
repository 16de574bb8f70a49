//! What each sync fuzz target checks of one input; shared by the targets and the replay of
//! every committed input (the workspace's `tests/tests/fuzz_regressions.rs`).

use std::sync::OnceLock;

use murmur_sync::{
    Config, Engine, MAX_MESSAGE_BYTES, MemoryDraft, MemoryEntry, MemoryId, MemoryRecord, Message,
    RecordLimits, Signatures, SignedChange, SigningKey, Tombstone,
};

fn config() -> Config {
    Config {
        shards: 2,
        ..Config::default()
    }
}

fn draft(i: u32) -> MemoryDraft {
    MemoryDraft {
        namespace: "default".into(),
        text: format!("memory {i}"),
        metadata_json: "{}".into(),
        tags: vec!["t".into()],
        model_id: "m".into(),
        vector: vec![0.5, -0.5, 0.25, 1.0],
    }
}

/// Real messages a peer would send: the seeds that mutations start from.
fn samples() -> &'static Vec<Vec<u8>> {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let mut a: Engine<u8> = Engine::new(config(), SigningKey::from_bytes(&[1; 32]), 1, 0).unwrap();
        let mut b: Engine<u8> = Engine::new(config(), SigningKey::from_bytes(&[2; 32]), 2, 0).unwrap();
        a.peer_connected(0, 1);
        b.peer_connected(0, 0);
        a.write(1, &[draft(1), draft(2), draft(3)]).unwrap();
        let id = *a.visible_ids().next().unwrap();
        a.delete(2, &id).unwrap();
        let mut out = Vec::new();
        // Let them run anti-entropy so sync messages are captured too.
        for now in (0..20_000).step_by(500) {
            a.handle_timeout(now);
            b.handle_timeout(now);
            for _ in 0..4 {
                while let Some(t) = a.poll_transmit() {
                    out.push(t.bytes.clone());
                    let _ = b.handle_incoming(now, &0, &t.bytes);
                }
                while let Some(t) = b.poll_transmit() {
                    out.push(t.bytes.clone());
                    let _ = a.handle_incoming(now, &1, &t.bytes);
                }
            }
        }
        out
    })
}

/// The engine under test, built once and cloned per input so each input starts the same.
fn target() -> Engine<u8> {
    static TARGET: OnceLock<Engine<u8>> = OnceLock::new();
    TARGET.get_or_init(fresh_target).clone()
}

fn fresh_target() -> Engine<u8> {
    let mut e: Engine<u8> = Engine::new(config(), SigningKey::from_bytes(&[3; 32]), 3, 0).unwrap();
    e.write(1, &[draft(10)]).unwrap();
    while e.poll_transmit().is_some() {}
    while e.poll_event().is_some() {}
    while e.poll_persist().is_some() {}
    e
}

pub fn engine_incoming(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Frames in the format the engine speaks, or it refuses them at the version byte and the
    // fuzzer never reaches automerge and the gate.
    let format = config().format;
    let bytes = match mode % 4 {
        0 => rest.to_vec(),
        1 => Message::Push {
            shard: u16::from(mode >> 7),
            changes: vec![SignedChange {
                bytes: rest.to_vec(),
                signature: [0; 64],
            }],
            bodies: Vec::new(),
        }
        .encode(format),
        2 => Message::Sync {
            shard: u16::from(mode >> 7),
            message: rest.to_vec(),
            signatures: vec![[0; 64]; 2],
        }
        .encode(format),
        _ => {
            // Flip bytes of a real message at positions and values the fuzzer picks.
            let samples = samples();
            if samples.is_empty() || rest.len() < 2 {
                return;
            }
            let mut msg = samples[rest[0] as usize % samples.len()].clone();
            for pair in rest[1..].chunks(3) {
                if let [a, b, v] = pair {
                    let at = (usize::from(*a) << 8 | usize::from(*b)) % msg.len();
                    msg[at] ^= *v;
                }
            }
            msg
        }
    };
    let mut engine = target();
    let before = (
        engine.root_digest(),
        engine.change_count(),
        engine.visible_count(),
    );
    if engine.handle_incoming(5, &9, &bytes).is_err() {
        assert_eq!(
            before,
            (
                engine.root_digest(),
                engine.change_count(),
                engine.visible_count()
            )
        );
        assert!(engine.poll_event().is_none());
        assert!(engine.poll_persist().is_none());
    }
}

/// Any bytes: decoding never panics, and what decodes re-encodes to the same bytes.
pub fn decode_message(data: &[u8]) {
    for format in [
        murmur_sync::Format::InlineBodies,
        murmur_sync::Format::BodiesByHash,
    ] {
        if let Ok(message) = Message::decode(data, MAX_MESSAGE_BYTES, format) {
            assert_eq!(message.encode(format), data);
        }
    }
}

/// Any bytes as a stored or received body, tombstone or entry: decoding never panics, what
/// decodes re-encodes to the same bytes, and the id read without decoding is the decoded one.
pub fn decode_record(data: &[u8]) {
    let limits = RecordLimits::default();
    let claimed = MemoryRecord::id_in(data);
    if let Ok(record) = MemoryRecord::decode_checked(data, &limits, Signatures::Trusted) {
        assert_eq!(record.encode(), data);
        assert_eq!(claimed, Some(record.id));
    }
    if let Ok(record) = MemoryRecord::decode_verified(data, &limits) {
        assert_eq!(record.encode(), data);
    }
    if let Ok(tombstone) = Tombstone::decode_checked(data, &[], Signatures::Trusted) {
        assert_eq!(tombstone.encode(), data);
    }
    if let Some((id, rest)) = data.split_first_chunk::<16>()
        && let Ok(entry) = MemoryEntry::decode(MemoryId(*id), rest)
    {
        assert_eq!(entry.encode(), rest);
    }
}

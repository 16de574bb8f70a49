//! Property: whatever the network does in between (loss, duplication, delay and so reordering,
//! partitions), once it heals and goes quiet every replica holds the same state, shows the same
//! memories, and a memory deleted anywhere is gone everywhere. Also: a replica rebuilt from what
//! it persisted is the replica it was.

mod common;

use std::collections::BTreeSet;

use common::{Faults, Net};
use murmur_sync::{Config, Engine, Format, MemoryId, MessageKind, Signatures};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write {
        at: usize,
        count: usize,
    },
    Delete {
        at: usize,
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Partition {
        groups: Vec<u8>,
    },
    Heal,
    /// The replica's process dies and starts again from what it persisted.
    Restart {
        at: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<usize>(), 1usize..4).prop_map(|(at, count)| Op::Write { at, count }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, pick)| Op::Delete { at, pick }),
        3 => (1u64..5_000).prop_map(|ms| Op::Advance { ms }),
        1 => proptest::collection::vec(0u8..3, 20).prop_map(|groups| Op::Partition { groups }),
        1 => Just(Op::Heal),
        1 => any::<usize>().prop_map(|at| Op::Restart { at }),
    ]
}

fn cases() -> u32 {
    std::env::var("MURMUR_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

fn check_converged(net: &mut Net, written: &BTreeSet<MemoryId>, deleted: &BTreeSet<MemoryId>) {
    let done = net.run_until_converged(net.now + 900_000);
    let states: Vec<String> = net
        .replicas
        .iter()
        .map(|r| {
            format!(
                "{} shown, {} awaiting bodies",
                r.engine.visible_count(),
                r.engine.awaiting_bodies()
            )
        })
        .collect();
    assert!(done, "no convergence after 900 simulated seconds: {states:?}");
    let reference = net.visible(0);
    let expected: Vec<MemoryId> = written.difference(deleted).copied().collect();
    assert_eq!(
        reference, expected,
        "visible memories are exactly those written and not deleted"
    );
    for i in 0..net.replicas.len() {
        let replica = &net.replicas[i];
        assert_eq!(net.visible(i), reference, "replica {i} shows other memories");
        assert_eq!(
            replica.shown.iter().copied().collect::<Vec<_>>(),
            reference,
            "replica {i}'s events disagree with its state"
        );
        for id in deleted {
            assert!(
                replica.engine.is_deleted(id),
                "replica {i} missed the delete of {id}"
            );
            assert!(replica.engine.memory(id).is_none());
            assert!(
                !replica.bodies.contains(id),
                "replica {i} kept the body of deleted {id}"
            );
        }
        assert!(
            replica.bodies.ids().eq(reference.iter()),
            "replica {i} holds bodies of other memories than it shows"
        );
        assert_eq!(
            replica.engine.awaiting_bodies(),
            0,
            "replica {i} still waits for bodies"
        );
    }
}

fn check_reload(net: &Net, config: &Config) {
    for (i, replica) in net.replicas.iter().enumerate() {
        let mut persisted = replica.persisted.clone();
        persisted.reverse(); // order must not matter
        let held = |id: &MemoryId| replica.bodies.contains(id);
        let trusted: Engine<usize> = Engine::load(
            config.clone(),
            replica.key.clone(),
            1,
            net.now,
            persisted.clone(),
            Signatures::Trusted,
            held,
        )
        .expect("own state loads without re-verifying");
        let reloaded: Engine<usize> = Engine::load(
            config.clone(),
            replica.key.clone(),
            1,
            net.now,
            persisted,
            Signatures::Verify,
            held,
        )
        .expect("own state loads");
        // Resumed from a snapshot of the whole state, given every change again (all skipped),
        // and from a snapshot of a prefix of what was persisted plus the rest of it.
        let whole = replica.engine.snapshot().encode();
        let resumed: Engine<usize> = Engine::resume(
            config.clone(),
            replica.key.clone(),
            1,
            net.now,
            &whole,
            replica.persisted.clone(),
            Signatures::Trusted,
            held,
        )
        .expect("resumes from its own snapshot");
        // The first half of what was persisted, grown until it holds every change's
        // dependencies (a batch may persist a change before one it depends on).
        let load_prefix = |k: usize| {
            Engine::<usize>::load(
                config.clone(),
                replica.key.clone(),
                1,
                net.now,
                replica.persisted[..k].to_vec(),
                Signatures::Trusted,
                held,
            )
        };
        let (split, prefix) = (replica.persisted.len() / 2..=replica.persisted.len())
            .find_map(|k| load_prefix(k).ok().map(|engine| (k, engine)))
            .expect("all that was persisted loads");
        let after = &replica.persisted[split..];
        let from_prefix: Engine<usize> = Engine::resume(
            config.clone(),
            replica.key.clone(),
            1,
            net.now,
            &prefix.snapshot().encode(),
            after.to_vec(),
            Signatures::Trusted,
            held,
        )
        .expect("resumes from a prefix's snapshot and the rest");
        for (how, engine) in [
            ("verified", &reloaded),
            ("trusted", &trusted),
            ("resumed", &resumed),
            ("resumed from a prefix", &from_prefix),
        ] {
            assert_eq!(
                engine.root_digest(),
                replica.engine.root_digest(),
                "replica {i} reloaded ({how}) differently"
            );
            assert!(engine.visible_ids().eq(replica.engine.visible_ids()));
            for id in replica.engine.visible_ids() {
                assert_eq!(engine.memory(id), replica.engine.memory(id), "{how}: memory {id}");
                assert_eq!(engine.entry(id), replica.engine.entry(id), "{how}: entry {id}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge_whatever_the_network_did(
        n in 2usize..=20,
        shards in prop_oneof![Just(1u16), Just(4), Just(64)],
        format in prop_oneof![Just(Format::InlineBodies), Just(Format::BodiesByHash)],
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..50),
        drop in 0u32..400,
        duplicate in 0u32..200,
        max_delay in 1u64..3_000,
    ) {
        let config = Config { shards, format, anti_entropy_interval_ms: 1_000, ..Config::default() };
        let faults = Faults { drop_per_mille: drop, duplicate_per_mille: duplicate, min_delay_ms: 1, max_delay_ms: max_delay };
        let mut net = Net::new(n, seed, config.clone(), faults);
        let mut written = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        for op in ops {
            match op {
                Op::Write { at, count } => written.extend(net.write(at % n, count)),
                Op::Delete { at, pick } => deleted.extend(net.delete_some(at % n, pick)),
                Op::Advance { ms } => { let t = net.now + ms; net.run_until(t) }
                Op::Partition { groups } => net.groups = Some(groups[..n].to_vec()),
                Op::Heal => net.groups = None,
                Op::Restart { at } => net.restart(at % n),
            }
        }
        net.groups = None;
        net.faults = Faults { min_delay_ms: 1, max_delay_ms: 50, ..Faults::default() };
        check_converged(&mut net, &written, &deleted);
        prop_assert_eq!(net.refused, 0, "honest replicas never refuse each other");
        check_reload(&net, &config);
    }
}

const FORMATS: [Format; 2] = [Format::InlineBodies, Format::BodiesByHash];

#[test]
fn twenty_replicas_split_in_two_write_on_both_sides_and_heal() {
    FORMATS.into_iter().for_each(twenty_replicas_split_and_heal);
}

fn twenty_replicas_split_and_heal(format: Format) {
    let config = Config {
        format,
        ..Config::default()
    };
    let faults = Faults {
        drop_per_mille: 100,
        duplicate_per_mille: 50,
        min_delay_ms: 5,
        max_delay_ms: 400,
    };
    let mut net = Net::new(20, 7, config.clone(), faults);
    let mut written = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for i in 0..20 {
        written.extend(net.write(i, 5));
    }
    net.run_until(30_000);
    net.groups = Some((0..20).map(|i| (i % 2) as u8).collect());
    for round in 0..10 {
        for i in 0..20 {
            written.extend(net.write(i, 2));
            if round % 3 == 0 {
                deleted.extend(net.delete_some(i, round * 7 + i));
            }
        }
        let t = net.now + 5_000;
        net.run_until(t);
    }
    // While split, each side converges on its own and differs from the other.
    let t = net.now + 120_000;
    net.run_until(t);
    assert_ne!(
        net.replicas[0].engine.root_digest(),
        net.replicas[1].engine.root_digest()
    );
    net.groups = None;
    check_converged(&mut net, &written, &deleted);
    assert_eq!(net.refused, 0);
    check_reload(&net, &config);
}

#[test]
fn a_late_joiner_with_nothing_catches_up() {
    FORMATS.into_iter().for_each(late_joiner_catches_up);
}

fn late_joiner_catches_up(format: Format) {
    let config = Config {
        format,
        ..Config::default()
    };
    let mut net = Net::new(
        5,
        11,
        config.clone(),
        Faults {
            min_delay_ms: 1,
            max_delay_ms: 20,
            ..Faults::default()
        },
    );
    // Replica 4 is cut off from the start and writes nothing.
    net.groups = Some(vec![0, 0, 0, 0, 1]);
    let mut written = BTreeSet::new();
    for i in 0..4 {
        written.extend(net.write(i, 50));
    }
    net.run_until(20_000);
    assert!(net.visible(4).is_empty());
    net.groups = None;
    check_converged(&mut net, &written, &BTreeSet::new());
    assert_eq!(net.visible(4).len(), 200);
}

/// Anti-entropy over a slow link (each message takes longer than a round interval): a new
/// round must not restart a conversation that is still running, or every restart sends the
/// changes in flight again and the traffic multiplies.
#[test]
fn a_slow_conversation_is_not_restarted_by_new_rounds() {
    FORMATS.into_iter().for_each(slow_conversation_is_not_restarted);
}

fn slow_conversation_is_not_restarted(format: Format) {
    let config = Config {
        format,
        ..Config::default()
    };
    let faults = Faults {
        min_delay_ms: 2_500,
        max_delay_ms: 3_000,
        ..Faults::default()
    };
    let mut net = Net::new(2, 5, config.clone(), faults);
    net.groups = Some(vec![0, 1]);
    let mut written = BTreeSet::new();
    written.extend(net.write(0, 400));
    written.extend(net.write(1, 400));
    net.groups = None;
    check_converged(&mut net, &written, &BTreeSet::new());
    // What one replica had to learn from the other, as persisted change bytes.
    let learned: u64 = net.replicas[0]
        .persisted
        .iter()
        .map(|(_, c)| c.bytes.len() as u64 + 64)
        .sum::<u64>()
        / 2;
    for replica in &net.replicas {
        let sync_in = replica.engine.stats().bytes_in(MessageKind::Sync);
        assert!(
            sync_in < learned * 3 / 2,
            "sync traffic in: {sync_in} bytes for about {learned} bytes of changes to learn"
        );
    }
}

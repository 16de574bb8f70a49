//! Where bodies travel by hash: documents hold entries, bodies move beside them, each is
//! checked against the hash its author signed, and a deleted body never travels again.

mod common;

use std::collections::BTreeSet;

use common::{Faults, Net};
use murmur_sync::{
    Config, DecodeError, Engine, Event, Format, MemoryRecord, Message, ProtocolError, RecordLimits,
};

fn config(format: Format) -> Config {
    Config {
        shards: 4,
        format,
        ..Config::default()
    }
}

fn quiet() -> Faults {
    Faults {
        min_delay_ms: 1,
        max_delay_ms: 20,
        ..Faults::default()
    }
}

/// A writes one memory; its push, and B that has not seen it.
fn pushed() -> (Engine<usize>, Engine<usize>, MemoryRecord, Message) {
    let mut a: Engine<usize> =
        Engine::new(config(Format::BodiesByHash), common::key_for(3, 0), 1, 0).unwrap();
    let b: Engine<usize> = Engine::new(config(Format::BodiesByHash), common::key_for(3, 1), 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let record = a.write(10, &[common::draft(&mut rng, 8)]).unwrap().remove(0);
    let push = a.poll_transmit().unwrap();
    let message = Message::decode(&push.bytes, usize::MAX, Format::BodiesByHash).unwrap();
    (a, b, record, message)
}

fn assert_unchanged(b: &mut Engine<usize>, root: [u8; 16], what: &str) {
    assert_eq!(b.root_digest(), root, "{what}: state changed");
    assert_eq!(b.visible_count(), 0, "{what}: something is shown");
    assert_eq!(b.poll_event(), None, "{what}: emitted an event");
    assert_eq!(b.poll_persist(), None, "{what}: asked to persist");
}

#[test]
fn a_push_carries_entry_and_body_and_the_receiver_shows_it() {
    let (_, mut b, record, message) = pushed();
    let Message::Push { changes, bodies, .. } = &message else {
        panic!("expected a push, got {message:?}");
    };
    assert_eq!(bodies, &vec![record.encode()]);
    // The change holds the entry, not the text.
    assert!(
        !changes[0]
            .bytes
            .windows(record.text.len())
            .any(|w| w == record.text.as_bytes())
    );
    b.handle_incoming(11, &0, &message.encode(Format::BodiesByHash))
        .unwrap();
    assert!(matches!(b.poll_event(), Some(Event::MemoryAdded(r)) if *r == record));
    assert_eq!(b.entry(&record.id).map(|e| e.author), Some(record.author));
    assert_eq!(b.memory(&record.id), None, "bodies are the driver's to hold");
}

#[test]
fn a_body_swapped_for_another_signed_by_the_same_author_under_the_same_id_is_refused() {
    let (_, mut b, record, message) = pushed();
    let Message::Push {
        shard,
        changes,
        bodies: _,
    } = message
    else {
        panic!("expected a push");
    };
    // The author's key signs a different text under the same id (same time, same nonce):
    // a valid record, but not the one the signed entry names.
    let mut rng = fastrand::Rng::with_seed(1);
    let mut other = common::draft(&mut rng, 8);
    other.text = "the bay door is open".into();
    let (swapped, swapped_bytes) = MemoryRecord::sign(
        &other,
        &common::key_for(3, 0),
        record.created_at_ms(),
        record.nonce,
        &RecordLimits::default(),
    )
    .unwrap();
    assert_eq!(swapped.id, record.id);
    let root = b.root_digest();
    let forged = Message::Push {
        shard,
        changes: changes.clone(),
        bodies: vec![swapped_bytes.clone()],
    };
    let result = b.handle_incoming(11, &2, &forged.encode(Format::BodiesByHash));
    assert!(
        matches!(result, Err(ProtocolError::RejectedBody(_))),
        "{result:?}"
    );
    assert_unchanged(&mut b, root, "swapped body in a push");

    // The entry alone is accepted; the swapped body sent after it is still refused.
    let entry_only = Message::Push {
        shard,
        changes,
        bodies: Vec::new(),
    };
    b.handle_incoming(12, &0, &entry_only.encode(Format::BodiesByHash))
        .unwrap();
    assert_eq!(b.awaiting_bodies(), 1);
    while b.poll_persist().is_some() {}
    let late = Message::Bodies {
        records: vec![swapped_bytes],
    };
    let result = b.handle_incoming(13, &2, &late.encode(Format::BodiesByHash));
    assert!(
        matches!(result, Err(ProtocolError::RejectedBody(_))),
        "{result:?}"
    );
    assert_eq!(b.visible_count(), 0);
    assert_eq!(b.poll_event(), None);
    // The real one is shown.
    let real = Message::Bodies {
        records: vec![record.encode()],
    };
    b.handle_incoming(14, &0, &real.encode(Format::BodiesByHash))
        .unwrap();
    assert!(matches!(b.poll_event(), Some(Event::MemoryAdded(r)) if *r == record));
    assert_eq!(b.awaiting_bodies(), 0);
}

#[test]
fn a_body_without_an_entry_is_refused() {
    let (_, mut b, record, _) = pushed();
    let root = b.root_digest();
    let unsolicited = Message::Bodies {
        records: vec![record.encode()],
    };
    let result = b.handle_incoming(11, &2, &unsolicited.encode(Format::BodiesByHash));
    assert!(
        matches!(result, Err(ProtocolError::RejectedBody(_))),
        "{result:?}"
    );
    assert_unchanged(&mut b, root, "a body with no entry");
}

#[test]
fn a_peer_of_the_old_wire_version_is_refused_with_a_clear_error() {
    let mut old: Engine<usize> =
        Engine::new(config(Format::InlineBodies), common::key_for(3, 5), 1, 0).unwrap();
    let (_, mut b, _, _) = pushed();
    let mut rng = fastrand::Rng::with_seed(2);
    old.write(5, &[common::draft(&mut rng, 8)]).unwrap();
    let push = old.poll_transmit().unwrap();
    let root = b.root_digest();
    let error = b.handle_incoming(6, &5, &push.bytes).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::Malformed(DecodeError::UnsupportedVersion {
            found: 1,
            supported: 2
        })
    );
    assert!(
        error.to_string().contains("wire version 1 is not supported"),
        "{error}"
    );
    assert_unchanged(&mut b, root, "old version");
}

#[test]
fn a_memory_whose_body_has_not_arrived_can_still_be_deleted() {
    let operator = common::key_for(3, 1);
    let config = Config {
        admins: vec![operator.verifying_key().to_bytes()],
        ..config(Format::BodiesByHash)
    };
    let mut a: Engine<usize> = Engine::new(config.clone(), common::key_for(3, 0), 1, 0).unwrap();
    let mut b: Engine<usize> = Engine::new(config, operator, 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let record = a.write(10, &[common::draft(&mut rng, 8)]).unwrap().remove(0);
    let Message::Push { shard, changes, .. } = Message::decode(
        &a.poll_transmit().unwrap().bytes,
        usize::MAX,
        Format::BodiesByHash,
    )
    .unwrap() else {
        panic!("expected a push");
    };
    let entry_only = Message::Push {
        shard,
        changes,
        bodies: Vec::new(),
    };
    b.handle_incoming(11, &0, &entry_only.encode(Format::BodiesByHash))
        .unwrap();
    assert_eq!((b.visible_count(), b.awaiting_bodies()), (0, 1));
    let tombstone = b.delete(12, &record.id).expect("the entry is enough to delete");
    assert_eq!((tombstone.author, tombstone.nonce), (record.author, record.nonce));
    assert_eq!(b.awaiting_bodies(), 0, "a deleted body is not waited for");
    // The author applies the operator's delete.
    while let Some(t) = b.poll_transmit() {
        if t.kind == murmur_sync::MessageKind::Push {
            a.handle_incoming(13, &1, &t.bytes).unwrap();
        }
    }
    assert!(a.is_deleted(&record.id));
}

/// A memory deleted before a replica joins: the joiner learns that it existed (entry and
/// tombstone) but its text never crosses the network to it, and no replica keeps its body.
#[test]
fn a_late_joiner_never_receives_a_deleted_body() {
    let marker = "marker-7f3a9c-unique";
    let inline = late_join_after_delete(Format::InlineBodies, marker);
    assert!(inline, "inline bodies: the deleted text does reach the joiner");
    let by_hash = late_join_after_delete(Format::BodiesByHash, marker);
    assert!(!by_hash, "by hash: the deleted text reached the joiner");
}

/// Returns whether any message delivered to the joiner held `marker`.
fn late_join_after_delete(format: Format, marker: &str) -> bool {
    let config = config(format);
    let mut net = Net::new(3, 21, config, quiet());
    net.groups = Some(vec![0, 0, 1]);
    let mut written: BTreeSet<_> = net.write(0, 3).into_iter().collect();
    let mut draft = common::draft(&mut net.rng, 8);
    draft.text = format!("the code is {marker}");
    let secret = net.replicas[0].engine.write(net.now, &[draft]).unwrap().remove(0);
    net.flush(0);
    written.extend(net.write(1, 2));
    let t = net.now + 10_000;
    net.run_until(t);
    assert!(
        net.replicas[1].bodies.contains(&secret.id),
        "replica 1 got the secret"
    );
    net.replicas[0].engine.delete(net.now, &secret.id).unwrap();
    net.flush(0);
    let t = net.now + 10_000;
    net.run_until(t);
    net.delivered = Some(Vec::new());
    net.groups = None;
    assert!(net.run_until_converged(net.now + 300_000));
    for (i, replica) in net.replicas.iter().enumerate() {
        assert!(replica.engine.is_deleted(&secret.id), "replica {i}");
        assert!(!replica.bodies.contains(&secret.id), "replica {i} keeps the body");
        assert_eq!(replica.engine.visible_count(), written.len(), "replica {i}");
    }
    assert_eq!(net.refused, 0);
    let log = net.delivered.take().unwrap_or_default();
    log.iter()
        .filter(|(_, to, _)| *to == 2)
        .any(|(_, _, bytes)| bytes.windows(marker.len()).any(|w| w == marker.as_bytes()))
}

#[test]
fn a_request_for_a_deleted_body_is_answered_with_nothing() {
    let (mut a, _, record, _) = pushed();
    a.delete(20, &record.id).unwrap();
    while a.poll_transmit().is_some() {}
    a.peer_connected(21, 7);
    a.answer_bodies(&7, vec![record.encode()]);
    assert_eq!(a.poll_transmit(), None, "a deleted body was sent");
    let want = Message::WantBodies { ids: vec![record.id] };
    a.handle_incoming(22, &7, &want.encode(Format::BodiesByHash))
        .unwrap();
    assert_eq!(
        a.poll_body_request(),
        None,
        "a deleted body was asked of the driver"
    );
}

/// A driver whose disk is full declines bodies: they stop being shown and are not asked for
/// at the next rounds; once it has room again they are asked for and shown.
#[test]
fn declined_bodies_are_not_asked_for_until_the_driver_has_room() {
    let operator = common::key_for(4, 1);
    let config = Config {
        admins: vec![operator.verifying_key().to_bytes()],
        ..config(Format::BodiesByHash)
    };
    let mut a: Engine<usize> = Engine::new(config.clone(), common::key_for(4, 0), 1, 0).unwrap();
    let mut b: Engine<usize> = Engine::new(config, operator, 2, 0).unwrap();
    let (mut a_bodies, mut b_bodies) = (
        murmur_sync::InMemoryBodies::new(),
        murmur_sync::InMemoryBodies::new(),
    );
    a.peer_connected(0, 1);
    b.peer_connected(0, 0);
    let mut rng = fastrand::Rng::with_seed(4);
    let drafts: Vec<_> = (0..3).map(|_| common::draft(&mut rng, 8)).collect();
    let records = a.write(10, &drafts).unwrap();
    a_bodies.settle(&mut a);
    let wanted = |engine: &mut Engine<usize>| -> usize {
        std::iter::from_fn(|| engine.poll_transmit())
            .filter(|t| t.kind == murmur_sync::MessageKind::WantBodies)
            .count()
    };
    while let Some(t) = a.poll_transmit() {
        b.handle_incoming(11, &0, &t.bytes).unwrap();
    }
    b_bodies.settle(&mut b);
    assert_eq!(b.visible_count(), 3);

    b.decline_bodies(&[records[0].id, records[1].id]);
    assert_eq!((b.visible_count(), b.declined_bodies()), (1, 2));
    assert!(!b.visible_ids().any(|id| *id == records[0].id));
    let mut now = 100;
    for _ in 0..5 {
        now += 10_000;
        b.handle_timeout(now);
        assert_eq!(wanted(&mut b), 0, "a declined body was asked for");
    }
    // Deleting what is declined still works: the entry is all a tombstone needs.
    b.delete(now, &records[1].id)
        .expect("an operator deletes a declined memory");
    b_bodies.settle(&mut b);
    assert_eq!(b.declined_bodies(), 1);

    b.want_declined();
    now += 10_000;
    b.handle_timeout(now);
    let asks: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert!(
        asks.iter()
            .any(|t| t.kind == murmur_sync::MessageKind::WantBodies)
    );
    for t in asks {
        a.handle_incoming(now, &1, &t.bytes).unwrap();
    }
    a_bodies.settle(&mut a);
    while let Some(t) = a.poll_transmit() {
        b.handle_incoming(now, &0, &t.bytes).unwrap();
    }
    let (_, events) = b_bodies.settle(&mut b);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MemoryAdded(r) if r.id == records[0].id)),
        "the declined body came back once wanted"
    );
    assert_eq!((b.visible_count(), b.declined_bodies()), (2, 0));
}

/// Retention: bodies a driver evicts stay gone. Anti-entropy rounds do not ask for them, a
/// push that carries them again (gossip repeats) does not show them, a reload from persisted
/// changes with the evicted set given back does not want them, and a tombstone still lands.
#[test]
fn evicted_bodies_are_never_asked_for_nor_shown_again() {
    let config = config(Format::BodiesByHash);
    let mut a: Engine<usize> = Engine::new(config.clone(), common::key_for(5, 0), 1, 0).unwrap();
    let b_key = common::key_for(5, 1);
    let mut b: Engine<usize> = Engine::new(config.clone(), b_key.clone(), 2, 0).unwrap();
    let (mut a_bodies, mut b_bodies) = (
        murmur_sync::InMemoryBodies::new(),
        murmur_sync::InMemoryBodies::new(),
    );
    a.peer_connected(0, 1);
    b.peer_connected(0, 0);
    let mut rng = fastrand::Rng::with_seed(5);
    let drafts: Vec<_> = (0..4).map(|_| common::draft(&mut rng, 8)).collect();
    let records = a.write(10, &drafts).unwrap();
    a_bodies.settle(&mut a);
    let pushes: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
    let mut b_persisted = Vec::new();
    for t in &pushes {
        b.handle_incoming(11, &0, &t.bytes).unwrap();
    }
    b_persisted.extend(b_bodies.settle(&mut b).0);
    assert_eq!(b.visible_count(), 4);

    let evicted = [records[0].id, records[1].id];
    b_bodies.evict(&mut b, &evicted);
    assert_eq!((b.visible_count(), b.evicted_bodies()), (2, 2));

    // The same pushes again, as gossip may repeat them: nothing comes back.
    for t in &pushes {
        b.handle_incoming(20, &0, &t.bytes).unwrap();
    }
    let (_, events) = b_bodies.settle(&mut b);
    assert!(
        events.is_empty(),
        "a repeated push showed an evicted memory: {events:?}"
    );

    // Rounds both ways until in sync: no body is asked for, the replicas agree on what exists.
    let mut now = 100;
    for _ in 0..6 {
        now += 10_000;
        a.handle_timeout(now);
        b.handle_timeout(now);
        for _ in 0..20 {
            let from_a: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
            let from_b: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
            assert!(
                !from_b
                    .iter()
                    .any(|t| t.kind == murmur_sync::MessageKind::WantBodies),
                "an evicted body was asked for"
            );
            for t in from_a {
                b.handle_incoming(now, &0, &t.bytes).unwrap();
            }
            for t in from_b {
                a.handle_incoming(now, &1, &t.bytes).unwrap();
            }
            b_persisted.extend(b_bodies.settle(&mut b).0);
            a_bodies.settle(&mut a);
        }
    }
    assert_eq!(a.root_digest(), b.root_digest(), "eviction changed what exists");
    assert_eq!(b.visible_count(), 2);
    assert!(!b_bodies.contains(&records[0].id));

    // A restart from what B persisted, its evicted set given back: nothing is awaited.
    let persisted: Vec<_> = b_persisted.iter().map(|p| (p.shard, p.change.clone())).collect();
    let mut b = Engine::<usize>::load(
        config,
        b_key,
        3,
        now,
        persisted,
        murmur_sync::Signatures::Trusted,
        |id| b_bodies.contains(id),
    )
    .unwrap();
    assert_eq!(b.awaiting_bodies(), 2, "before the evicted set is given back");
    b.evict(evicted);
    assert_eq!(
        (b.visible_count(), b.awaiting_bodies(), b.evicted_bodies()),
        (2, 0, 2)
    );

    // The author deletes an evicted memory: the tombstone lands and the set shrinks.
    a.delete(now, &records[0].id).unwrap();
    a_bodies.settle(&mut a);
    b.peer_connected(now, 0);
    for t in std::iter::from_fn(|| a.poll_transmit()).collect::<Vec<_>>() {
        b.handle_incoming(now, &0, &t.bytes).unwrap();
    }
    let (_, events) = b_bodies.settle(&mut b);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::MemoryDeleted { id, .. } if *id == records[0].id))
    );
    assert_eq!(b.evicted_bodies(), 1);
    assert!(b.is_deleted(&records[0].id));
}

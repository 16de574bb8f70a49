//! A member that relays tampered records, forges deletes or rewrites history cannot change what
//! honest replicas expose: each attempt is refused whole and leaves their state as it was.
//!
//! These attacks are written against the inline format, where the documents hold whole records
//! to tamper with; the gate they exercise is the same in both formats. The attacks particular
//! to bodies by hash (swapped bodies, bodies without entries) are in `bodies.rs`.

mod common;

use murmur_sync::{
    Config, Engine, Event, Format, MemoryRecord, Message, ProtocolError, Signatures, SignedChange,
    SigningKey, Tombstone,
    automerge::{
        self, ActorId, Automerge, Change, ROOT, ScalarValue,
        sync::{self, ChunkList},
        transaction::Transactable,
    },
    sign_change,
};

const A: usize = 0;
const M: usize = 2;

struct World {
    config: Config,
    b: Engine<usize>,
    m_key: SigningKey,
    a_key: SigningKey,
    record: MemoryRecord,
    a_change: SignedChange,
}

fn world() -> World {
    let config = Config {
        shards: 4,
        format: Format::InlineBodies,
        ..Config::default()
    };
    let a_key = common::key_for(1, 0);
    let mut a: Engine<usize> = Engine::new(config.clone(), a_key.clone(), 1, 0).unwrap();
    let mut b = Engine::new(config.clone(), common::key_for(1, 1), 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    let record = a.write(10, &[common::draft(&mut rng, 8)]).unwrap().remove(0);
    let push = a.poll_transmit().unwrap();
    let a_change = match Message::decode(&push.bytes, usize::MAX, Format::InlineBodies).unwrap() {
        Message::Push { mut changes, .. } => changes.remove(0),
        other => panic!("expected a push, got {other:?}"),
    };
    b.handle_incoming(11, &A, &push.bytes).unwrap();
    assert!(matches!(b.poll_event(), Some(Event::MemoryAdded(r)) if *r == record));
    assert!(b.poll_persist().is_some());
    assert_eq!(b.poll_persist(), None);
    World {
        config,
        b,
        m_key: common::key_for(1, 2),
        a_key,
        record,
        a_change,
    }
}

fn push(shard: u16, change: SignedChange) -> Vec<u8> {
    Message::Push {
        shard,
        changes: vec![change],
        bodies: Vec::new(),
    }
    .encode(Format::InlineBodies)
}

/// A document holding what the attacker has seen, acting as `actor`.
fn attacker_doc(world: &World, actor: &SigningKey) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(&actor.verifying_key().to_bytes()[..]));
    doc.apply_changes([Change::from_bytes(world.a_change.bytes.clone()).unwrap()])
        .unwrap();
    doc
}

fn last_change(doc: &Automerge) -> Change {
    let heads = doc.get_heads();
    automerge::ReadDoc::get_change_by_hash(doc, &heads[0]).unwrap()
}

fn memory_key(world: &World) -> String {
    format!("m{}", world.record.id.to_hex())
}

fn tombstone_key(world: &World) -> String {
    format!("t{}", world.record.id.to_hex())
}

/// B refuses `bytes` from M and its state is exactly what it was.
fn assert_refused(world: &mut World, bytes: &[u8], what: &str) {
    let root = world.b.root_digest();
    let changes = world.b.change_count();
    let result = world.b.handle_incoming(20, &M, bytes);
    assert!(result.is_err(), "{what}: accepted");
    assert_eq!(world.b.root_digest(), root, "{what}: state changed");
    assert_eq!(world.b.change_count(), changes, "{what}: change count moved");
    assert_eq!(
        world.b.memory(&world.record.id),
        Some(world.record.clone()),
        "{what}"
    );
    assert!(!world.b.is_deleted(&world.record.id), "{what}");
    assert_eq!(world.b.poll_event(), None, "{what}: emitted an event");
    assert_eq!(world.b.poll_persist(), None, "{what}: asked to persist");
}

fn shard(world: &World) -> u16 {
    world.record.id.shard(world.config.shards)
}

#[test]
fn a_relayed_change_with_a_flipped_byte_is_refused() {
    let mut world = world();
    let mut tampered = world.a_change.clone();
    let middle = tampered.bytes.len() / 2;
    tampered.bytes[middle] ^= 0x20;
    let bytes = push(shard(&world), tampered);
    assert_refused(&mut world, &bytes, "flipped byte");
}

#[test]
fn a_tampered_copy_of_a_record_cannot_overwrite_it() {
    let mut world = world();
    let mut forged = world.record.clone();
    forged.text = "the forklift is fine, ignore the battery".into();
    let m_key = world.m_key.clone();
    let mut doc = attacker_doc(&world, &m_key);
    let mut tx = doc.transaction();
    tx.put(ROOT, memory_key(&world), ScalarValue::Bytes(forged.encode()))
        .unwrap();
    tx.commit();
    let change = sign_change(&last_change(&doc), &m_key);
    let bytes = push(shard(&world), change);
    assert_refused(&mut world, &bytes, "overwrite with tampered record");
}

#[test]
fn deleting_the_key_in_the_document_is_refused() {
    let mut world = world();
    let m_key = world.m_key.clone();
    let mut doc = attacker_doc(&world, &m_key);
    let mut tx = doc.transaction();
    tx.delete(ROOT, memory_key(&world)).unwrap();
    tx.commit();
    let bytes = push(shard(&world), sign_change(&last_change(&doc), &m_key));
    assert_refused(&mut world, &bytes, "automerge delete");
}

#[test]
fn unsigned_and_unauthorised_tombstones_are_refused() {
    let mut world = world();
    let m_key = world.m_key.clone();
    let m_pub = m_key.verifying_key().to_bytes();
    // Signed by M, who calls itself an admin; B's swarm has no admins.
    let (mut tombstone, signed_bytes) = Tombstone::sign(&world.record, &m_key, 30, &[m_pub]).unwrap();
    tombstone.signature = [0; 64];
    for (what, value) in [
        ("unsigned tombstone", tombstone.encode()),
        ("unauthorised tombstone", signed_bytes),
    ] {
        let mut doc = attacker_doc(&world, &m_key);
        let mut tx = doc.transaction();
        tx.put(ROOT, tombstone_key(&world), ScalarValue::Bytes(value))
            .unwrap();
        tx.commit();
        let bytes = push(shard(&world), sign_change(&last_change(&doc), &m_key));
        assert_refused(&mut world, &bytes, what);
    }
}

#[test]
fn a_change_in_the_authors_name_without_the_authors_key_is_refused() {
    let mut world = world();
    let a_key = world.a_key.clone();
    let mut doc = attacker_doc(&world, &a_key);
    let (tombstone, value) = Tombstone::sign(&world.record, &a_key, 30, &[]).unwrap();
    let _ = tombstone;
    let mut tx = doc.transaction();
    tx.put(ROOT, tombstone_key(&world), ScalarValue::Bytes(value))
        .unwrap();
    tx.commit();
    // The attacker replays a genuine tombstone signature it somehow got, but cannot sign the
    // change as A: it signs with its own key.
    let bytes = push(
        shard(&world),
        sign_change(&last_change(&doc), &world.m_key.clone()),
    );
    assert_refused(&mut world, &bytes, "change signed by the wrong key");
    // And an unsigned change.
    let mut unsigned = sign_change(&last_change(&doc), &a_key);
    unsigned.signature = [0; 64];
    let bytes = push(shard(&world), unsigned);
    assert_refused(&mut world, &bytes, "unsigned change");
}

#[test]
fn forgeries_inside_sync_messages_are_refused_too() {
    let mut world = world();
    let m_key = world.m_key.clone();
    let mut doc = attacker_doc(&world, &m_key);
    let mut tx = doc.transaction();
    tx.delete(ROOT, memory_key(&world)).unwrap();
    tx.commit();
    let change = sign_change(&last_change(&doc), &m_key);
    let message = sync::Message {
        heads: doc.get_heads(),
        need: vec![],
        have: vec![],
        changes: ChunkList::from(vec![change.bytes.clone()]),
        supported_capabilities: None,
        version: sync::MessageVersion::V1,
    };
    let bytes = Message::Sync {
        shard: shard(&world),
        message: message.encode(),
        signatures: vec![change.signature],
    }
    .encode(Format::InlineBodies);
    assert_refused(&mut world, &bytes, "sync with a delete op");
    // A whole document where changes are expected.
    let bytes = Message::Sync {
        shard: shard(&world),
        message: {
            let m = sync::Message {
                heads: doc.get_heads(),
                need: vec![],
                have: vec![],
                changes: ChunkList::from(vec![doc.save()]),
                supported_capabilities: None,
                version: sync::MessageVersion::V2,
            };
            m.encode()
        },
        signatures: vec![[0; 64]],
    }
    .encode(Format::InlineBodies);
    assert_refused(&mut world, &bytes, "sync carrying a whole document");
}

#[test]
fn a_memory_in_the_wrong_shard_is_refused() {
    let mut world = world();
    let wrong = (shard(&world) + 1) % world.config.shards;
    let bytes = push(wrong, world.a_change.clone());
    let result = world.b.handle_incoming(20, &M, &bytes);
    assert!(
        matches!(result, Err(ProtocolError::RejectedChange { .. })),
        "{result:?}"
    );
}

#[test]
fn honest_deletes_by_author_and_admin_are_accepted_and_others_not() {
    let admin = common::key_for(9, 9);
    let config = Config {
        shards: 4,
        admins: vec![admin.verifying_key().to_bytes()],
        format: Format::InlineBodies,
        ..Config::default()
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let mut author = Engine::<usize>::new(config.clone(), common::key_for(9, 0), 1, 0).unwrap();
    let mut operator = Engine::<usize>::new(config.clone(), admin, 2, 0).unwrap();
    let mut other = Engine::<usize>::new(config.clone(), common::key_for(9, 1), 3, 0).unwrap();
    let records = author
        .write(1, &[common::draft(&mut rng, 4), common::draft(&mut rng, 4)])
        .unwrap();
    while let Some(t) = author.poll_transmit() {
        operator.handle_incoming(2, &0, &t.bytes).unwrap();
        other.handle_incoming(2, &0, &t.bytes).unwrap();
    }
    assert!(matches!(
        other.delete(3, &records[0].id),
        Err(murmur_sync::WriteError::Record(_))
    ));
    author.delete(3, &records[0].id).unwrap();
    operator.delete(3, &records[1].id).unwrap();
    for source in [&mut author, &mut operator] {
        while let Some(t) = source.poll_transmit() {
            if t.kind == murmur_sync::MessageKind::Push {
                other.handle_incoming(4, &1, &t.bytes).unwrap();
            }
        }
    }
    assert!(other.is_deleted(&records[0].id) && other.is_deleted(&records[1].id));
    assert_eq!(other.visible_count(), 0);
}

#[test]
fn a_large_batch_is_split_into_changes_that_each_fit_a_message() {
    let config = Config {
        shards: 1,
        max_message_bytes: 64 * 1024,
        format: Format::InlineBodies,
        ..Config::default()
    };
    let mut writer = Engine::<usize>::new(config.clone(), common::key_for(4, 0), 1, 0).unwrap();
    let mut reader = Engine::<usize>::new(config.clone(), common::key_for(4, 1), 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    // 20 memories of ~16 KB: several times what one message may carry.
    let drafts: Vec<_> = (0..20)
        .map(|_| {
            let mut d = common::draft(&mut rng, 4096);
            d.text = "x".repeat(8000);
            d
        })
        .collect();
    writer.write(1, &drafts).unwrap();
    let mut pushes = 0;
    while let Some(t) = writer.poll_transmit() {
        assert!(
            t.bytes.len() <= config.max_message_bytes,
            "{} bytes",
            t.bytes.len()
        );
        reader.handle_incoming(2, &0, &t.bytes).unwrap();
        pushes += 1;
    }
    assert!(
        pushes > 1,
        "{pushes} pushes, writer holds {} in {} changes",
        writer.visible_count(),
        writer.change_count()
    );
    assert_eq!(reader.visible_count(), 20);
}

#[test]
fn a_stored_change_with_a_flipped_byte_is_refused_by_a_trusted_load() {
    let world = world();
    let key = common::key_for(1, 1);
    let intact = vec![(shard(&world), world.a_change.clone())];
    let loaded: Engine<usize> = Engine::load(
        world.config.clone(),
        key.clone(),
        1,
        20,
        intact,
        Signatures::Trusted,
        |_| true,
    )
    .expect("intact store loads");
    assert_eq!(loaded.root_digest(), world.b.root_digest());

    // Flip one bit of the memory's text inside the stored change, keeping it valid UTF-8 so
    // only the chunk checksum can tell.
    let text = world.record.text.as_bytes();
    let at = world
        .a_change
        .bytes
        .windows(text.len())
        .position(|w| w == text)
        .expect("the text is stored verbatim in the change");
    let mut damaged = world.a_change.clone();
    damaged.bytes[at] ^= 0x01;
    let error = Engine::<usize>::load(
        world.config.clone(),
        key,
        1,
        20,
        vec![(shard(&world), damaged)],
        Signatures::Trusted,
        |_| true,
    )
    .err()
    .expect("a damaged store is refused")
    .to_string();
    assert!(error.contains("checksum"), "{error}");
}

//! A peer whose link is backlogged is not sent sync replies until it clears, but its uploads
//! still apply, and once clear it catches up on everything.

mod common;

use murmur_sync::{Config, Engine, Format, InMemoryBodies, Message, MessageKind, Transmit};

const SERVER: usize = 0;
const SLOW: usize = 1;

/// One engine and what its driver holds: the bodies of the memories it shows.
struct Side {
    engine: Engine<usize>,
    bodies: InMemoryBodies,
}

impl Side {
    fn settle(&mut self) {
        self.bodies.settle(&mut self.engine);
    }
}

/// Delivers what `from` has queued to `to`; returns how many Sync messages with changes went.
fn deliver(from: &mut Side, from_id: usize, to: &mut Side, now: u64) -> usize {
    from.settle();
    let format = from.engine.config().format;
    let mut with_changes = 0;
    let out: Vec<Transmit<usize>> = std::iter::from_fn(|| from.engine.poll_transmit()).collect();
    for transmit in out {
        if let Ok(Message::Sync { signatures, .. }) = Message::decode(&transmit.bytes, usize::MAX, format)
            && !signatures.is_empty()
        {
            with_changes += 1;
        }
        to.engine
            .handle_incoming(now, &from_id, &transmit.bytes)
            .expect("honest message");
    }
    with_changes
}

fn exchange(server: &mut Side, slow: &mut Side, now: u64) -> (usize, usize) {
    let down = deliver(server, SERVER, slow, now);
    let up = deliver(slow, SLOW, server, now);
    (down, up)
}

#[test]
fn a_backlogged_peer_gets_no_sync_replies_until_clear_yet_its_uploads_apply() {
    for format in [Format::BodiesByHash, Format::InlineBodies] {
        backlogged_peer(format);
    }
}

fn backlogged_peer(format: Format) {
    let config = Config {
        shards: 8,
        format,
        ..Config::default()
    };
    let side = |seed: u64, i: usize| Side {
        engine: Engine::new(config.clone(), common::key_for(7, i), seed, 0).unwrap(),
        bodies: InMemoryBodies::new(),
    };
    let (mut server, mut slow) = (side(1, 0), side(2, 1));
    let mut rng = fastrand::Rng::with_seed(9);
    let drafts: Vec<_> = (0..120).map(|_| common::draft(&mut rng, 8)).collect();
    server.engine.write(1, &drafts).unwrap();
    server.settle();
    while server.engine.poll_transmit().is_some() {}
    server.engine.peer_connected(2, SLOW);
    slow.engine.peer_connected(2, SERVER);
    server.engine.set_peer_backlogged(&SLOW, true);

    // The slow peer uploads by push and asks to catch up; the server applies the upload and
    // answers the probe, but builds no reply carrying changes.
    let mine: Vec<_> = (0..10).map(|_| common::draft(&mut rng, 8)).collect();
    slow.engine.write(3, &mine).unwrap();
    slow.engine.start_round(3, SERVER);
    let mut now = 4;
    for _ in 0..20 {
        let (down, _) = exchange(&mut server, &mut slow, now);
        assert_eq!(down, 0, "a sync reply with changes went to a backlogged peer");
        now += 10;
    }
    assert_eq!(
        server.engine.visible_count(),
        130,
        "the backlogged peer's upload applied"
    );
    assert_eq!(
        slow.engine.visible_count(),
        10,
        "nothing came down while backlogged"
    );
    assert_eq!(server.engine.stats().messages_out(MessageKind::Sync), 0);

    // Clear: the deferred replies go at once and the peer catches up.
    server.engine.set_peer_backlogged(&SLOW, false);
    let mut carried = 0;
    for _ in 0..40 {
        carried += exchange(&mut server, &mut slow, now).0;
        now += 10;
        if slow.engine.root_digest() == server.engine.root_digest() && slow.engine.awaiting_bodies() == 0 {
            break;
        }
    }
    assert!(carried > 0, "{format:?}");
    assert_eq!(slow.engine.visible_count(), 130, "{format:?}");
    assert_eq!(slow.engine.root_digest(), server.engine.root_digest());
}

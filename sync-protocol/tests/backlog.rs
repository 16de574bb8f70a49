//! A peer whose link is backlogged is not sent sync replies until it clears, but its uploads
//! still apply, and once clear it catches up on everything.

mod common;

use murmur_sync::{Config, Engine, Message, MessageKind, Transmit};

const SERVER: usize = 0;
const SLOW: usize = 1;

/// Delivers what `from` has queued to `to`; returns how many Sync messages with changes went.
fn deliver(from: &mut Engine<usize>, from_id: usize, to: &mut Engine<usize>, now: u64) -> usize {
    let mut with_changes = 0;
    let out: Vec<Transmit<usize>> = std::iter::from_fn(|| from.poll_transmit()).collect();
    for transmit in out {
        if let Ok(Message::Sync { signatures, .. }) =
            Message::decode(&transmit.bytes, usize::MAX, murmur_sync::Format::InlineBodies)
            && !signatures.is_empty()
        {
            with_changes += 1;
        }
        to.handle_incoming(now, &from_id, &transmit.bytes)
            .expect("honest message");
    }
    while from.poll_persist().is_some() {}
    while from.poll_event().is_some() {}
    with_changes
}

fn exchange(server: &mut Engine<usize>, slow: &mut Engine<usize>, now: u64) -> (usize, usize) {
    let down = deliver(server, SERVER, slow, now);
    let up = deliver(slow, SLOW, server, now);
    (down, up)
}

#[test]
fn a_backlogged_peer_gets_no_sync_replies_until_clear_yet_its_uploads_apply() {
    let config = Config {
        shards: 8,
        ..Config::default()
    };
    let mut server: Engine<usize> = Engine::new(config.clone(), common::key_for(7, 0), 1, 0).unwrap();
    let mut slow: Engine<usize> = Engine::new(config, common::key_for(7, 1), 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    let drafts: Vec<_> = (0..120).map(|_| common::draft(&mut rng, 8)).collect();
    server.write(1, &drafts).unwrap();
    while server.poll_transmit().is_some() {}
    server.peer_connected(2, SLOW);
    slow.peer_connected(2, SERVER);
    server.set_peer_backlogged(&SLOW, true);

    // The slow peer uploads by push and asks to catch up; the server applies the upload and
    // answers the probe, but builds no reply carrying changes.
    let mine: Vec<_> = (0..10).map(|_| common::draft(&mut rng, 8)).collect();
    slow.write(3, &mine).unwrap();
    slow.start_round(3, SERVER);
    let mut now = 4;
    for _ in 0..20 {
        let (down, _) = exchange(&mut server, &mut slow, now);
        assert_eq!(down, 0, "a sync reply with changes went to a backlogged peer");
        now += 10;
    }
    assert_eq!(
        server.visible_count(),
        130,
        "the backlogged peer's upload applied"
    );
    assert_eq!(slow.visible_count(), 10, "nothing came down while backlogged");
    assert_eq!(server.stats().messages_out(MessageKind::Sync), 0);

    // Clear: the deferred replies go at once and the peer catches up.
    server.set_peer_backlogged(&SLOW, false);
    let mut carried = 0;
    for _ in 0..40 {
        carried += exchange(&mut server, &mut slow, now).0;
        now += 10;
        if slow.root_digest() == server.root_digest() {
            break;
        }
    }
    assert!(carried > 0);
    assert_eq!(slow.visible_count(), 130);
    assert_eq!(slow.root_digest(), server.root_digest());
}

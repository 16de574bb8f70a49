//! A replica whose state is older than what its key already signed (restored from a backup, or
//! a device that lost its store and kept its key) must not write before it has caught up: a
//! change reusing one of its author's sequence numbers is refused by every replica holding the
//! other change of that number, for good.

mod common;

use murmur_sync::{Config, Destination, Engine, Format, MemoryId, WriteError};

const A: usize = 0;
const B: usize = 1;

fn config() -> Config {
    Config {
        shards: 2,
        format: Format::InlineBodies,
        ..Config::default()
    }
}

/// Delivers every message between `a` (peer `A`) and `b` (peer `B`), rounds included, for
/// `ms` of simulated time.
fn exchange(now: &mut u64, a: &mut Engine<usize>, b: &mut Engine<usize>, ms: u64) {
    let end = *now + ms;
    while *now < end {
        *now += 50;
        a.handle_timeout(*now);
        b.handle_timeout(*now);
        deliver(*now, a, A, b, B);
        deliver(*now, b, B, a, A);
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        while a.poll_persist().is_some() || b.poll_persist().is_some() {}
    }
}

fn deliver(now: u64, from: &mut Engine<usize>, from_id: usize, to: &mut Engine<usize>, to_id: usize) {
    while let Some(transmit) = from.poll_transmit() {
        let delivered = match transmit.to {
            Destination::Peer(p) => p == to_id,
            Destination::AllPeers => true,
        };
        if delivered {
            // A refused message is what a real peer would do with it: nothing.
            let _ = to.handle_incoming(now, &from_id, &transmit.bytes);
        }
    }
}

fn connect(now: u64, a: &mut Engine<usize>, b: &mut Engine<usize>) {
    a.peer_connected(now, B);
    b.peer_connected(now, A);
}

fn visible(engine: &Engine<usize>) -> Vec<MemoryId> {
    engine.visible_ids().copied().collect()
}

#[test]
fn a_replica_behind_its_own_history_writes_only_after_catching_up() {
    let key = common::key_for(11, A);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut now = 0;
    let mut original = Engine::new(config(), key.clone(), 1, now).unwrap();
    let mut peer = Engine::new(config(), common::key_for(11, B), 2, now).unwrap();
    let drafts: Vec<_> = (0..10).map(|_| common::draft(&mut rng, 8)).collect();
    original.write(now, &drafts).unwrap();
    connect(now, &mut original, &mut peer);
    exchange(&mut now, &mut original, &mut peer, 5_000);
    assert_eq!(visible(&peer).len(), 10, "the peer holds the original's writes");

    // The hazard: the same key on an empty replica signs a change the peer can never take.
    let mut forked = Engine::new(config(), key.clone(), 3, now).unwrap();
    let lost = forked.write(now, &[common::draft(&mut rng, 8)]).unwrap()[0].id;
    let mut peer_copy = peer.clone();
    connect(now, &mut forked, &mut peer_copy);
    exchange(&mut now, &mut forked, &mut peer_copy, 10_000);
    assert!(
        !visible(&peer_copy).contains(&lost),
        "a change reusing its author's sequence number was taken: the test shows nothing"
    );

    // Caught up first: writes wait, the replica syncs, then its writes reach the peer.
    let mut restored = Engine::new(config(), key, 4, now).unwrap();
    restored.set_catching_up(true);
    assert!(matches!(
        restored.write(now, &[common::draft(&mut rng, 8)]),
        Err(WriteError::CatchingUp)
    ));
    let some = visible(&peer)[0];
    assert!(matches!(restored.delete(now, &some), Err(WriteError::CatchingUp)));
    connect(now, &mut restored, &mut peer);
    exchange(&mut now, &mut restored, &mut peer, 10_000);
    assert!(!restored.is_catching_up(), "a round in sync ends catching up");
    assert_eq!(
        visible(&restored),
        visible(&peer),
        "it holds its own history again"
    );
    let new = restored.write(now, &[common::draft(&mut rng, 8)]).unwrap()[0].id;
    exchange(&mut now, &mut restored, &mut peer, 5_000);
    assert!(
        visible(&peer).contains(&new),
        "a write after catching up reaches the peer"
    );
}

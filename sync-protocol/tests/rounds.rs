//! Anti-entropy rounds overlap on real links: an answer to an older probe can arrive after a
//! newer round started. Only answers to the current round may act on the conversation.

mod common;

use murmur_sync::{Config, Engine, Message, MessageKind, Transmit};

const A: usize = 0;
const B: usize = 1;

fn drain(engine: &mut Engine<usize>) -> Vec<Transmit<usize>> {
    std::iter::from_fn(|| engine.poll_transmit()).collect()
}

fn kinds(engine: &Engine<usize>, transmits: &[Transmit<usize>]) -> Vec<MessageKind> {
    let config = engine.config();
    transmits
        .iter()
        .map(|t| {
            Message::decode(&t.bytes, usize::MAX, config.format)
                .expect("own message decodes")
                .kind()
        })
        .collect()
}

#[test]
fn a_late_digest_reply_to_an_older_round_does_not_restart_the_current_conversation() {
    let config = Config {
        shards: 4,
        ..Config::default()
    };
    let mut a = Engine::new(config.clone(), common::key_for(3, A), 1, 0).unwrap();
    let mut b = Engine::new(config, common::key_for(3, B), 2, 0).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let drafts: Vec<_> = (0..40).map(|_| common::draft(&mut rng, 8)).collect();
    a.write(1, &drafts).unwrap();
    drain(&mut a);
    a.peer_connected(2, B);
    b.peer_connected(2, A);

    // Two rounds from A before B answers either: B answers both, in order.
    a.start_round(3, B);
    a.start_round(4, B);
    for probe in drain(&mut a) {
        b.handle_incoming(5, &A, &probe.bytes).unwrap();
    }
    let replies = drain(&mut b);
    assert_eq!(
        kinds(&b, &replies),
        [MessageKind::DigestReply, MessageKind::DigestReply]
    );

    // The current round's reply starts the conversation: A sends sync messages.
    a.handle_incoming(6, &B, &replies[1].bytes).unwrap();
    let current = drain(&mut a);
    assert!(
        kinds(&a, &current).contains(&MessageKind::Sync),
        "the current round's reply starts syncing"
    );

    // The older round's reply arrives late: it must not reset the running conversation and
    // send it all again.
    a.handle_incoming(7, &B, &replies[0].bytes).unwrap();
    let late = drain(&mut a);
    assert!(
        late.is_empty(),
        "a late reply to an older round sent {:?}",
        kinds(&a, &late)
    );
}

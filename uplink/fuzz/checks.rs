//! What each uplink fuzz target checks of one input; shared by the targets and the replay of
//! every committed input (the workspace's `tests/tests/fuzz_regressions.rs`).

use std::sync::OnceLock;

use murmur_uplink::{Frame, Hello, MembershipPolicy, Role, read_frame, write_frame};

/// The frame limit the fuzzer works under: small, so a length past it is often drawn.
const MAX: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

/// Any bytes from the other end of an uplink: the first frame's payload as a handshake hello,
/// checked against a membership policy, then the rest as a stream of frames. No panic, no
/// allocation beyond the frame limit, and what decodes re-encodes to the same bytes.
pub fn uplink_frames(data: &[u8]) {
    let policy = MembershipPolicy {
        swarm_key: Some([0x5a; 32]),
        ..MembershipPolicy::default()
    };
    let mut stream = data;
    runtime().block_on(async {
        let mut first = true;
        while let Ok(frame) = read_frame(&mut stream, MAX).await {
            assert!(frame.payload.len() <= MAX);
            let mut encoded = Vec::new();
            write_frame(&mut encoded, &Frame::new(frame.kind, frame.payload.clone()))
                .await
                .expect("writing to a Vec");
            assert_eq!(encoded[0], frame.kind as u8);
            assert_eq!(&encoded[5..], frame.payload.as_slice());
            if std::mem::take(&mut first)
                && let Ok(hello) = Hello::decode(&frame.payload)
            {
                assert_eq!(hello.encode(), frame.payload);
                // Random bytes never prove membership; the check must say so, not panic.
                assert!(policy.verify(&hello, Role::Agent, &[7; 32]).is_err());
            }
        }
    });
}

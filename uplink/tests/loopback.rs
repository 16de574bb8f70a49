//! Real QUIC on loopback: who gets in and who does not.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use murmur_uplink::{
    Credentials, Frame, FrameKind, MembershipPolicy, UplinkError, accept, client_endpoint, connect,
    read_frame, server_endpoint, write_frame,
};

const SWARM: [u8; 32] = [42; 32];

fn manager_credentials() -> Credentials {
    Credentials::new(SigningKey::from_bytes(&[1; 32]), Some(SWARM))
}

/// A manager that accepts connections under `policy`, echoing the first frame back, and
/// reports each handshake's outcome.
async fn serve(
    policy: MembershipPolicy,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<[u8; 32], String>>,
) {
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10)).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let tx = tx.clone();
            let policy = policy.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return drop(tx.send(Err(e.to_string()))),
                };
                match accept(connection, &manager_credentials(), &policy, "manager-test").await {
                    Ok(mut session) => {
                        let _ = tx.send(Ok(session.peer.key));
                        if let Ok(frame) = read_frame(&mut session.recv, 1024).await {
                            let _ = write_frame(&mut session.send, &frame).await;
                        }
                        let _ = session.send.finish();
                        let _ = session.connection.closed().await;
                    }
                    Err(e) => drop(tx.send(Err(e.to_string()))),
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn members_connect_and_outsiders_are_refused() {
    let policy = MembershipPolicy {
        swarm_key: Some(SWARM),
        ..Default::default()
    };
    let (addr, mut outcomes) = serve(policy).await;
    let client = client_endpoint(Duration::from_secs(10)).unwrap();
    let manager_key = manager_credentials().public_key();

    // A member, pinning the right manager: the stream carries frames both ways.
    let agent = Credentials::new(SigningKey::from_bytes(&[2; 32]), Some(SWARM));
    let mut session = connect(&client, addr, &agent, &[manager_key], "agent-test")
        .await
        .unwrap();
    assert_eq!(session.peer.key, manager_key);
    assert_eq!(session.peer.software, "manager-test");
    assert_eq!(outcomes.recv().await.unwrap().unwrap(), agent.public_key());
    let frame = Frame::new(FrameKind::Sync, b"hello".to_vec());
    write_frame(&mut session.send, &frame).await.unwrap();
    assert_eq!(read_frame(&mut session.recv, 1024).await.unwrap(), frame);

    // Wrong swarm key: the manager refuses and says why; the agent learns nothing.
    let outsider = Credentials::new(SigningKey::from_bytes(&[3; 32]), Some([7; 32]));
    let error = connect(&client, addr, &outsider, &[], "agent-test")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&error, UplinkError::Refused(r) if r.contains("swarm key")),
        "{error}"
    );
    assert!(outcomes.recv().await.unwrap().unwrap_err().contains("swarm key"));

    // The right swarm key but a different manager than the one pinned.
    let error = connect(&client, addr, &agent, &[[9; 32]], "agent-test")
        .await
        .err()
        .unwrap();
    assert!(matches!(error, UplinkError::BadProof(_)), "{error}");
}

#[tokio::test]
async fn allow_lists_apply_without_a_swarm_key() {
    let allowed = Credentials::new(SigningKey::from_bytes(&[4; 32]), None);
    let policy = MembershipPolicy {
        swarm_key: None,
        allow: [allowed.public_key()].into(),
    };
    let (addr, _outcomes) = serve(policy).await;
    let client = client_endpoint(Duration::from_secs(10)).unwrap();
    // Without a swarm key the manager's own proof is only its signature: the agent must pin it,
    // and here the manager holds the swarm key, so its MAC is ignored by a keyless agent.
    let manager_key = manager_credentials().public_key();
    connect(&client, addr, &allowed, &[manager_key], "a")
        .await
        .unwrap();
    let stranger = Credentials::new(SigningKey::from_bytes(&[5; 32]), None);
    let error = connect(&client, addr, &stranger, &[manager_key], "a")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&error, UplinkError::Refused(r) if r.contains("allow-list")),
        "{error}"
    );
}

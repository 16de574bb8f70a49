//! The QUIC side of the manager: accepts agents, checks their membership, and moves frames
//! between each connection and the merge loop. A connection that breaks the framing is
//! dropped; nothing it sent before is undone, and no other connection notices.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use murmur_uplink::{
    Credentials, Frame, FrameKind, MAX_CONTROL_BYTES, MembershipPolicy, read_frame, write_frame,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    manager::{Inbound, Link, Manager},
    outbox::{Outbox, PER_AGENT_BYTES},
};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub const SOFTWARE: &str = concat!("murmur-manager/", env!("CARGO_PKG_VERSION"));

pub async fn serve(
    endpoint: murmur_uplink::quinn::Endpoint,
    manager: Arc<Manager>,
    credentials: Credentials,
    policy: MembershipPolicy,
    inbox: mpsc::Sender<Inbound>,
    max_message_bytes: usize,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        let manager = manager.clone();
        let credentials = credentials.clone();
        let policy = policy.clone();
        let inbox = inbox.clone();
        let span = tracing::info_span!("uplink", %remote, agent = tracing::field::Empty);
        tokio::spawn(
            async move {
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::debug!(%error, "QUIC handshake failed");
                        return;
                    }
                };
                let handshake = tokio::time::timeout(
                    Duration::from_secs(10),
                    murmur_uplink::accept(connection.clone(), &credentials, &policy, SOFTWARE),
                )
                .await;
                let session = match handshake {
                    Ok(Ok(session)) => session,
                    Ok(Err(error)) => {
                        manager.metrics.uplinks_refused.inc();
                        tracing::warn!(%error, "uplink refused");
                        connection.close(1u32.into(), b"refused");
                        return;
                    }
                    Err(_) => {
                        manager.metrics.uplinks_refused.inc();
                        tracing::warn!("uplink handshake timed out");
                        connection.close(1u32.into(), b"handshake timeout");
                        return;
                    }
                };
                tracing::Span::current().record("agent", hex::encode(session.peer.key));
                run_session(session, inbox, &manager, max_message_bytes).await;
            }
            .instrument(span),
        );
    }
}

async fn run_session(
    session: murmur_uplink::Session,
    inbox: mpsc::Sender<Inbound>,
    manager: &Manager,
    max_message_bytes: usize,
) {
    let murmur_uplink::Session {
        connection,
        mut send,
        mut recv,
        peer,
    } = session;
    let agent = peer.key;
    let conn_id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut outgoing) = Outbox::new(PER_AGENT_BYTES, manager.outbox_budget.clone());
    let drained = outbox.clone();
    tracing::info!(software = %peer.software, "agent connected");
    let link = Link {
        conn_id,
        outbox,
        connection: connection.clone(),
    };
    if inbox
        .send(Inbound::Connected {
            agent,
            link,
            software: peer.software.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let drained_inbox = inbox.clone();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            let len = bytes.len();
            let written = write_frame(&mut send, &Frame::new(FrameKind::Sync, bytes)).await;
            drained.written(len);
            if written.is_err() {
                break;
            }
            if drained.take_cleared()
                && drained_inbox
                    .send(Inbound::Drained { agent, conn_id })
                    .await
                    .is_err()
            {
                break;
            }
        }
    });
    let limit = max_message_bytes.max(MAX_CONTROL_BYTES);
    let reason = loop {
        let frame = match read_frame(&mut recv, limit).await {
            Ok(frame) => frame,
            Err(murmur_uplink::UplinkError::Malformed(why)) => {
                manager.metrics.uplinks_dropped.inc();
                tracing::warn!(%why, "malformed uplink stream: dropping the connection");
                connection.close(4u32.into(), b"malformed frame");
                break format!("malformed: {why}");
            }
            Err(error) => break error.to_string(),
        };
        let inbound = match frame.kind {
            FrameKind::Sync => Inbound::Message {
                agent,
                conn_id,
                bytes: frame.payload,
            },
            FrameKind::Report if frame.payload.len() <= MAX_CONTROL_BYTES => {
                match serde_json::from_slice(&frame.payload) {
                    Ok(report) => Inbound::Report { agent, report },
                    Err(error) => {
                        manager.metrics.uplinks_dropped.inc();
                        tracing::warn!(%error, "malformed report: dropping the connection");
                        connection.close(4u32.into(), b"malformed report");
                        break format!("malformed report: {error}");
                    }
                }
            }
            other => {
                manager.metrics.uplinks_dropped.inc();
                tracing::warn!(kind = ?other, "unexpected frame: dropping the connection");
                connection.close(4u32.into(), b"unexpected frame");
                break format!("unexpected frame {other:?}");
            }
        };
        if inbox.send(inbound).await.is_err() {
            break "manager stopping".into();
        }
    };
    writer.abort();
    tracing::info!(%reason, "agent disconnected");
    let _ = inbox
        .send(Inbound::Disconnected {
            agent,
            conn_id,
            reason,
        })
        .await;
}

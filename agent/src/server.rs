//! Running the daemon: bind, serve, save the index now and then, shut down cleanly on
//! SIGTERM or Ctrl-C with everything flushed.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{AgentConfig, api, service::Agent};

/// Name of the file in the data dir holding the address the API actually bound (useful with
/// port 0, and for the CLI to find a running agent).
pub const ADDR_FILE: &str = "api.addr";

pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let addr = config.api_addr;
    let save_every = Duration::from_secs(config.index_save_interval_secs);
    let agent = tokio::task::spawn_blocking(move || Agent::open(config))
        .await
        .context("agent start-up task")??;

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the API to {addr}"))?;
    let bound = listener.local_addr()?;
    std::fs::write(data_dir.join(ADDR_FILE), bound.to_string()).context("writing api.addr")?;
    tracing::info!(addr = %bound, data_dir = %data_dir.display(), author = %agent.author(), "agent listening");

    let swarm_settings = agent.config().swarm.clone();
    let swarm_task = if swarm_settings.enabled {
        let (handle, task) = crate::swarm::start(agent.clone(), &swarm_settings)
            .await
            .context("starting the swarm")?;
        agent.attach_swarm(handle);
        Some(task)
    } else {
        None
    };
    let uplink_task = crate::uplink::start(agent.clone(), &agent.config().manager)
        .context("starting the manager uplink")?;
    let saver = tokio::spawn(save_periodically(agent.clone(), save_every));
    let retention = tokio::spawn(enforce_retention_periodically(agent.clone()));
    axum::serve(listener, api::router(agent.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    saver.abort();
    retention.abort();
    if let Some(task) = uplink_task {
        task.abort();
    }
    if let Some(task) = swarm_task {
        task.abort();
        let _ = std::fs::remove_file(data_dir.join(crate::swarm::SWARM_ADDR_FILE));
    }
    tracing::info!("shutting down: saving the index and flushing the database");
    agent.shutdown().await?;
    let _ = std::fs::remove_file(data_dir.join(ADDR_FILE));
    tracing::info!("agent stopped cleanly");
    Ok(())
}

async fn save_periodically(agent: Arc<Agent>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(error) = agent.save_if_dirty().await {
            tracing::warn!(%error, "saving the vector index failed; it will be rebuilt at start if needed");
        }
    }
}

/// Retention at start, then every few seconds where a limit is by age (time alone makes
/// memories due); count and byte limits are also kept after each received batch.
async fn enforce_retention_periodically(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(RETENTION_CHECK_EVERY);
    loop {
        tick.tick().await;
        if let Err(error) = agent.enforce_retention().await {
            tracing::warn!(%error, "applying the retention policy failed; trying again later");
        }
        if !agent.config().retention.has_age_limit() {
            return;
        }
    }
}

const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the agent cleanly");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

//! Running the manager: load the state from the bucket, listen for agents and operators,
//! export now and then, and stop cleanly on SIGTERM or Ctrl-C.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use murmur_uplink::{Credentials, MembershipPolicy};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    ManagerConfig,
    config::parse_key_hex,
    export::Exporter,
    http::{AppState, router},
    manager::Manager,
};

pub const UPLINK_ADDR_FILE: &str = "uplink.addr";
pub const HTTP_ADDR_FILE: &str = "http.addr";
pub const KEY_FILE: &str = "manager.key";
pub const TOKEN_FILE: &str = "operator.token";

/// The operator token from the config, or from `<data_dir>/operator.token` (made on first use).
fn operator_token(config: &ManagerConfig) -> anyhow::Result<String> {
    if let Some(token) = &config.operator_token {
        return Ok(token.clone());
    }
    let path = config.data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if token.trim().len() >= 16 => Ok(token.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} holds a token shorter than 16 characters", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 24];
            getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("generating a token: {e}"))?;
            let token = hex::encode(secret);
            murmur_uplink::write_atomically(&path, token.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated an operator token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn load_key(config: &ManagerConfig) -> anyhow::Result<murmur_sync::SigningKey> {
    let path = config.data_dir.join(KEY_FILE);
    let (key, created) = murmur_uplink::load_or_create_key(&path)
        .with_context(|| format!("manager key {}", path.display()))?;
    if created {
        tracing::info!(path = %path.display(), "generated a new manager key");
    }
    Ok(key)
}

/// Opens the bucket and loads the swarm state from it.
pub async fn open_manager(config: &ManagerConfig) -> anyhow::Result<Arc<Manager>> {
    let bucket = config.open_bucket()?;
    let url = bucket.url().to_owned();
    bucket
        .ensure_layout(config.sync.shards)
        .await
        .with_context(|| format!("checking the bucket {url}"))?;
    let manager = Manager::new(
        config.engine_config()?,
        load_key(config)?,
        bucket,
        config.max_refusals,
        config.max_batch_messages,
    )?;
    manager
        .load()
        .await
        .context("loading the swarm state from the bucket")?;
    Ok(Arc::new(manager))
}

fn load_embedder(config: &ManagerConfig) -> anyhow::Result<Option<Arc<murmur_models::Embedder>>> {
    if config.model.disabled {
        return Ok(None);
    }
    let cache = murmur_models::CacheDir::resolve(config.model.cache_dir.as_deref())?;
    let model = match &config.model.config {
        Some(path) => murmur_models::ModelConfig::from_toml_file(path)?,
        None => {
            murmur_models::ensure_default_model(&cache)
                .with_context(|| format!("fetching the default model into {}", cache.root().display()))?;
            murmur_models::ModelConfig::default_model(&cache)
        }
    };
    let embedder = murmur_models::load_embedder(
        &cache,
        config.model.runtime.as_deref(),
        &model,
        &Default::default(),
    )
    .context("loading the embedding model")?;
    Ok(Some(Arc::new(embedder)))
}

pub async fn run(config: ManagerConfig) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let token = operator_token(&config)?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP to {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    // While the state loads (minutes for a large bucket) the manager is alive but not ready:
    // an orchestrator must neither restart it nor route to it yet.
    let (loading_listener, listener) = split_listener(listener)?;
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let loading = tokio::spawn(async move {
        axum::serve(loading_listener, crate::http::loading_router())
            .with_graceful_shutdown(async move {
                let _ = loaded_rx.await;
            })
            .await
    });
    let manager = open_manager(&config).await?;
    let embedder = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || load_embedder(&config)).await??
    };

    let swarm_key = config
        .swarm_key
        .as_deref()
        .map(|k| parse_key_hex("swarm_key", k))
        .transpose()?;
    let policy = MembershipPolicy {
        swarm_key,
        allow: config
            .allow_agents
            .iter()
            .map(|a| parse_key_hex("allow_agents", a))
            .collect::<anyhow::Result<_>>()?,
    };
    let credentials = Credentials::new(load_key(&config)?, swarm_key);
    let endpoint = murmur_uplink::server_endpoint(config.uplink_addr, Duration::from_secs(30))
        .with_context(|| format!("binding the uplink to {}", config.uplink_addr))?;
    let uplink_addr = endpoint.local_addr()?;
    let _ = loaded_tx.send(());
    loading
        .await
        .context("the HTTP server of the loading phase panicked")?
        .context("the HTTP server of the loading phase")?;

    let (inbox_tx, inbox_rx) = mpsc::channel(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut merge = tokio::spawn(manager.clone().run(
        inbox_rx,
        stop_rx.clone(),
        Duration::from_millis(config.bucket_poll_ms),
        config.compact_after_segments,
    ));
    let uplinks = tokio::spawn(crate::uplink::serve(
        endpoint.clone(),
        manager.clone(),
        credentials,
        policy,
        inbox_tx.clone(),
        manager.engine().config().max_message_bytes,
    ));
    let exporter = tokio::spawn(export_periodically(
        manager.clone(),
        config.export_interval_secs,
        stop_rx.clone(),
    ));
    let state = AppState {
        manager: manager.clone(),
        embedder,
        inbox: inbox_tx,
        token_digest: Sha256::digest(token.as_bytes()).into(),
    };
    std::fs::write(config.data_dir.join(UPLINK_ADDR_FILE), uplink_addr.to_string())?;
    std::fs::write(config.data_dir.join(HTTP_ADDR_FILE), http_addr.to_string())?;
    tracing::info!(
        %uplink_addr,
        %http_addr,
        key = %hex::encode(manager.key),
        bucket = manager.bucket.url(),
        memories = manager.view().memories.len(),
        "manager listening"
    );

    let mut stop_http = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = stop_http.wait_for(|stop| *stop).await;
            })
            .await
    });

    // The merge loop only ends early when the bucket keeps refusing writes: then nothing can
    // be acknowledged any more, so the manager stops (non-zero) rather than look healthy.
    let failure = tokio::select! {
        _ = shutdown_signal() => None,
        ended = &mut merge => Some(match ended {
            Ok(Ok(())) => anyhow::anyhow!("the merge loop stopped"),
            Ok(Err(error)) => error.context("the merge loop failed"),
            Err(error) => anyhow::anyhow!("the merge loop panicked: {error}"),
        }),
    };
    if let Some(error) = &failure {
        tracing::error!(error = format!("{error:#}"), "stopping the manager");
    }
    tracing::info!("shutting down: closing uplinks, committing, exporting");
    endpoint.close(0u32.into(), b"manager shutting down");
    uplinks.abort();
    let _ = stop_tx.send(true);
    if failure.is_none() {
        match merge.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the merge loop failed"),
            Err(error) => tracing::error!(%error, "the merge loop panicked"),
        }
    }
    let _ = exporter.await;
    let _ = http.await;
    endpoint.wait_idle().await;
    for file in [UPLINK_ADDR_FILE, HTTP_ADDR_FILE] {
        let _ = std::fs::remove_file(config.data_dir.join(file));
    }
    if let Some(error) = failure {
        return Err(error);
    }
    tracing::info!("manager stopped cleanly");
    Ok(())
}

/// Two handles on one listening socket: one served while the state loads, then the other, so
/// no connection is refused between the two servers (the kernel queues it).
fn split_listener(
    listener: tokio::net::TcpListener,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let first = listener.into_std().context("taking the HTTP listener")?;
    let second = first.try_clone().context("sharing the HTTP listener")?;
    Ok((
        tokio::net::TcpListener::from_std(first)?,
        tokio::net::TcpListener::from_std(second)?,
    ))
}

/// Exports on a timer, and once more when the manager stops.
async fn export_periodically(manager: Arc<Manager>, every_secs: u64, mut stop: watch::Receiver<bool>) {
    let mut exporter = Exporter::default();
    let period = Duration::from_secs(every_secs.max(1));
    loop {
        let stopping = if every_secs == 0 {
            let _ = stop.wait_for(|s| *s).await;
            true
        } else {
            tokio::select! {
                _ = tokio::time::sleep(period) => false,
                _ = stop.wait_for(|s| *s) => true,
            }
        };
        export_once(&manager, &mut exporter).await;
        if stopping {
            return;
        }
    }
}

pub async fn export_once(manager: &Manager, exporter: &mut Exporter) {
    let started = std::time::Instant::now();
    let lags: HashMap<[u8; 32], Option<u64>> = manager
        .engine()
        .peers()
        .map(|(k, s)| (*k, s.last_in_sync_ms))
        .collect();
    match exporter.export(&manager.bucket, &manager.view, &lags).await {
        Ok(summary) => {
            manager.metrics.exports.inc();
            manager.metrics.export_bytes.inc_by(summary.bytes);
            manager
                .metrics
                .export_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::info!(
                ?summary,
                seconds = started.elapsed().as_secs_f64(),
                "analytics exported"
            );
        }
        Err(error) => {
            manager.metrics.bucket_errors.inc();
            tracing::error!(%error, "analytics export failed; the next one retries");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the manager cleanly");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

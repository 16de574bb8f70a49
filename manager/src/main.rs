//! `murmur-manager`: run the manager, export analytics once, or show its key.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use murmur_manager::{ManagerConfig, export::Exporter, server};

#[derive(Parser)]
#[command(name = "murmur-manager", version, about = "Murmur's swarm manager")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// TOML config file; flags override it.
    #[arg(long, env = "MURMUR_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MURMUR_MANAGER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bucket URL: file:///dir, s3://bucket/prefix, gs://…, az://… (default: <data-dir>/bucket).
    #[arg(long, env = "MURMUR_MANAGER_BUCKET")]
    bucket: Option<String>,
    /// object_store option for the bucket, KEY=VALUE (repeatable), e.g. aws_endpoint=http://…
    #[arg(long = "bucket-option")]
    bucket_options: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve agents and operators until SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        common: Common,
        /// UDP address for agent uplinks (QUIC).
        #[arg(long)]
        uplink_listen: Option<SocketAddr>,
        /// TCP address of the dashboard, API, /healthz and /metrics.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// The swarm's pre-shared key, 64 hex digits.
        #[arg(long, env = "MURMUR_SWARM_KEY", hide_env_values = true)]
        swarm_key: Option<String>,
        /// An agent key allowed to connect (repeatable).
        #[arg(long = "allow-agent")]
        allow_agents: Vec<String>,
        #[arg(long, env = "MURMUR_OPERATOR_TOKEN", hide_env_values = true)]
        operator_token: Option<String>,
        /// Export period in seconds (0: only at shutdown).
        #[arg(long)]
        export_interval_secs: Option<u64>,
        /// Run without the embedding model: no search, no operator memories.
        #[arg(long)]
        no_model: bool,
    },
    /// Load the bucket and write the Parquet analytics once.
    Export {
        #[command(flatten)]
        common: Common,
    },
    /// Print this manager's public key (agents pin it as `manager.key`).
    Key {
        #[command(flatten)]
        common: Common,
    },
}

fn load_config(common: &Common) -> anyhow::Result<ManagerConfig> {
    let mut config = match &common.config {
        Some(path) => ManagerConfig::from_toml_file(path)?,
        None => ManagerConfig::default(),
    };
    if let Some(dir) = &common.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(bucket) = &common.bucket {
        config.bucket = Some(bucket.clone());
    }
    for option in &common.bucket_options {
        let (key, value) = option
            .split_once('=')
            .with_context(|| format!("--bucket-option {option:?} is not KEY=VALUE"))?;
        config.bucket_options.insert(key.to_owned(), value.to_owned());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,object_store=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Run {
            common,
            uplink_listen,
            http_listen,
            swarm_key,
            allow_agents,
            operator_token,
            export_interval_secs,
            no_model,
        } => {
            let mut config = load_config(&common)?;
            if let Some(addr) = uplink_listen {
                config.uplink_addr = addr;
            }
            if let Some(addr) = http_listen {
                config.http_addr = addr;
            }
            if swarm_key.is_some() {
                config.swarm_key = swarm_key;
            }
            config.allow_agents.extend(allow_agents);
            if operator_token.is_some() {
                config.operator_token = operator_token;
            }
            if let Some(secs) = export_interval_secs {
                config.export_interval_secs = secs;
            }
            config.model.disabled |= no_model;
            runtime.block_on(server::run(config))
        }
        Command::Export { common } => {
            let config = load_config(&common)?;
            runtime.block_on(async {
                let manager = server::open_manager(&config).await?;
                let progress = indicatif::ProgressBar::new_spinner();
                progress.set_message(format!("exporting {} memories", manager.view().memories.len()));
                progress.enable_steady_tick(std::time::Duration::from_millis(120));
                let mut exporter = Exporter::default();
                let lags = Default::default();
                let summary = exporter.export(&manager.bucket, &manager.view, &lags).await?;
                progress.finish_and_clear();
                println!(
                    "{} memories in {} partitions, {} bytes, to {}/v1/analytics",
                    summary.memories_written,
                    summary.partitions_written,
                    summary.bytes,
                    manager.bucket.url()
                );
                Ok(())
            })
        }
        Command::Key { common } => {
            let config = load_config(&common)?;
            let key = server::load_key(&config)?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            Ok(())
        }
    }
}

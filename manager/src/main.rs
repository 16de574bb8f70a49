//! `murmur-manager`: run the manager, export analytics once, or show its key.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use murmur_manager::{ManagerConfig, bucket::Bucket, export::Exporter, server};

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
    /// Encrypt the bucket at rest with the key in this file (32 bytes or 64 hex digits, mode
    /// 600); MURMUR_ENCRYPTION_KEY may carry the key itself instead.
    #[arg(long, env = "MURMUR_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
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
    /// Print the key (32 characters, used as they are) the encrypted Parquet exports are
    /// written under: it opens the exports and nothing else.
    ParquetKey {
        #[command(flatten)]
        common: Common,
    },
    /// Copy every segment into another bucket, sealed under that bucket's key or in clear:
    /// how encryption is turned on or off and how its key is rotated (managers stopped).
    CopyBucket {
        #[command(flatten)]
        common: Common,
        /// The target bucket URL: a new one, or one this copy was cut short in (it resumes).
        #[arg(long)]
        to: String,
        /// object_store option for the target bucket, KEY=VALUE (repeatable).
        #[arg(long = "to-bucket-option")]
        to_bucket_options: Vec<String>,
        /// Seal the copy with the key in this file; without it the copy is in clear.
        #[arg(long)]
        to_encryption_key_file: Option<PathBuf>,
    },
}

fn key_values(flag: &str, options: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    options
        .iter()
        .map(|option| {
            let (key, value) = option
                .split_once('=')
                .with_context(|| format!("--{flag} {option:?} is not KEY=VALUE"))?;
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
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
    config
        .bucket_options
        .extend(key_values("bucket-option", &common.bucket_options)?);
    if let Some(path) = &common.encryption_key_file {
        config.encryption.key_file = Some(path.clone());
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
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::ParquetKey { common } => {
            let config = load_config(&common)?;
            let sealer = config.encryption.sealer()?.context(
                "no encryption key: set --encryption-key-file, [encryption] key_file or MURMUR_ENCRYPTION_KEY",
            )?;
            println!("{}", murmur_manager::export::parquet_key(&sealer));
            Ok(())
        }
        Command::CopyBucket {
            common,
            to,
            to_bucket_options,
            to_encryption_key_file,
        } => {
            let config = load_config(&common)?;
            let source = config.open_bucket()?;
            let sealer = to_encryption_key_file
                .as_deref()
                .map(murmur_at_rest::Sealer::from_key_file)
                .transpose()?;
            let target = Bucket::open(&to, &key_values("to-bucket-option", &to_bucket_options)?)
                .context("opening the target bucket")?
                .with_sealer(sealer);
            runtime.block_on(copy_bucket(&source, &target, config.sync.shards))
        }
    }
}

/// Copies segment by segment, so RAM holds one segment at a time; a segment already in the
/// target (a copy run before and cut short) is left as it is, so a rerun resumes.
async fn copy_bucket(source: &Bucket, target: &Bucket, shards: u16) -> anyhow::Result<()> {
    source
        .ensure_layout(shards)
        .await
        .with_context(|| format!("checking the bucket {}", source.url()))?;
    target
        .ensure_layout(shards)
        .await
        .with_context(|| format!("checking the target bucket {}", target.url()))?;
    let segments = source.list_segments().await?;
    let progress = indicatif::ProgressBar::new(segments.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} segments {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut copied, mut present) = (0usize, 0usize);
    for path in &segments {
        let Some(segment) = source.read_segment(path).await? else {
            // Compacted away by a running manager: the copy is of stopped managers only.
            anyhow::bail!("{path} vanished during the copy: stop every manager of the bucket first");
        };
        if target.copy_segment(source, &segment).await? {
            copied += 1;
        } else {
            present += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!(
        "{copied} segments copied to {} ({present} were there already), sealed: {}",
        target.url(),
        if target.sealer().is_some() { "yes" } else { "no" }
    );
    Ok(())
}

//! `murmur-agent`: the daemon (`run`) and the commands that talk to a running one.

use std::{io::BufRead, net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use murmur_agent::{AgentConfig, client::Client, progress::Progress, server};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "murmur-agent",
    version,
    about = "Murmur's edge agent: durable, searchable memories"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent daemon.
    Run(RunArgs),
    /// Store a memory.
    Remember {
        #[command(flatten)]
        api: ApiArgs,
        text: String,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata as a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Search memories by meaning.
    Recall {
        #[command(flatten)]
        api: ApiArgs,
        query: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
        #[arg(long)]
        namespace: Option<String>,
        /// Only memories with this tag (repeatable: any of them).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Delete a memory by id.
    Forget {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Show the agent's counts, sizes and identity.
    Stats {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Bulk-import memories: one text per line, or JSON lines ({"text": .., "tags": ..}).
    Import {
        #[command(flatten)]
        api: ApiArgs,
        file: PathBuf,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
}

#[derive(Args)]
struct RunArgs {
    /// TOML config file; flags and MURMUR_* variables override it.
    #[arg(long, env = "MURMUR_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MURMUR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "MURMUR_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// Refuse writes beyond this many bytes on disk.
    #[arg(long, env = "MURMUR_DISK_QUOTA_BYTES")]
    disk_quota_bytes: Option<u64>,
    /// Model cache directory (see murmur-models fetch).
    #[arg(long, env = "MURMUR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Join a swarm: listen on this multiaddr (repeatable; enables the swarm).
    #[arg(long = "swarm-listen")]
    swarm_listen: Vec<String>,
    /// Dial this peer multiaddr (with /p2p/<peer id>) at start (repeatable).
    #[arg(long = "swarm-bootstrap")]
    swarm_bootstrap: Vec<String>,
    /// The swarm's pre-shared key, 64 hex digits.
    #[arg(long, env = "MURMUR_SWARM_KEY", hide_env_values = true)]
    swarm_key: Option<String>,
    /// No LAN discovery by multicast DNS.
    #[arg(long)]
    no_mdns: bool,
}

#[derive(Args)]
struct ApiArgs {
    /// Base URL of the agent's API.
    #[arg(long, env = "MURMUR_AGENT_URL", default_value = "http://127.0.0.1:7710")]
    url: String,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let mut config = match &args.config {
                Some(path) => AgentConfig::from_toml_file(path)?,
                None => AgentConfig::default(),
            };
            if let Some(dir) = args.data_dir {
                config.data_dir = dir;
            }
            if let Some(addr) = args.api_addr {
                config.api_addr = addr;
            }
            if let Some(quota) = args.disk_quota_bytes {
                config.disk_quota_bytes = quota;
            }
            if !args.swarm_listen.is_empty() {
                config.swarm.enabled = true;
                config.swarm.listen = args.swarm_listen;
            }
            if !args.swarm_bootstrap.is_empty() {
                config.swarm.bootstrap = args.swarm_bootstrap;
            }
            if let Some(key) = args.swarm_key {
                config.swarm.swarm_key = Some(key);
            }
            if args.no_mdns {
                config.swarm.mdns = false;
            }
            if let Some(cache) = args.cache_dir {
                config.model.cache_dir = Some(cache);
            }
            config.validate()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(server::run(config))
        }
        Command::Remember {
            api,
            text,
            namespace,
            tags,
            metadata,
        } => {
            let metadata: Option<Value> = metadata
                .map(|m| serde_json::from_str(&m).context("--metadata is not JSON"))
                .transpose()?;
            let body = json!({ "text": text, "namespace": namespace, "tags": tags, "metadata": metadata });
            let reply = Client::new(&api.url).post("/v1/memories", &body)?.ok()?;
            println!("{}", reply["id"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Recall {
            api,
            query,
            k,
            namespace,
            tags,
        } => {
            let body =
                json!({ "query": query, "k": k, "filter": { "namespace": namespace, "tags_any": tags } });
            let reply = Client::new(&api.url).post("/v1/search", &body)?.ok()?;
            for hit in reply["results"].as_array().into_iter().flatten() {
                println!(
                    "{:.3}  {}  [{}]  {}",
                    hit["score"].as_f64().unwrap_or_default(),
                    hit["id"].as_str().unwrap_or_default(),
                    hit["namespace"].as_str().unwrap_or_default(),
                    hit["text"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Forget { api, id } => {
            Client::new(&api.url)
                .delete(&format!("/v1/memories/{id}"))?
                .ok()?;
            println!("forgot {id}");
            Ok(())
        }
        Command::Stats { api } => {
            let reply = Client::new(&api.url).get("/v1/stats")?.ok()?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
            Ok(())
        }
        Command::Import {
            api,
            file,
            namespace,
            batch,
        } => import(&Client::new(&api.url), &file, namespace, batch.max(1)),
    }
}

fn import(client: &Client, file: &PathBuf, namespace: Option<String>, batch: usize) -> Result<()> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let lines: Vec<String> = reader
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", file.display()))?;
    let memories: Vec<Value> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let mut memory = if line.trim_start().starts_with('{') {
                serde_json::from_str(line).with_context(|| format!("line {} is not a JSON object", n + 1))?
            } else {
                json!({ "text": line })
            };
            if let Some(ns) = &namespace
                && memory.get("namespace").is_none()
            {
                memory["namespace"] = json!(ns);
            }
            Ok(memory)
        })
        .collect::<Result<_>>()?;
    let progress = Progress::new(memories.len() as u64, "importing");
    for chunk in memories.chunks(batch) {
        client
            .post("/v1/memories/batch", &json!({ "memories": chunk }))?
            .ok()
            .context("importing a batch (earlier batches are stored)")?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    println!("imported {} memories", memories.len());
    Ok(())
}

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
    /// Show the swarm: this agent's addresses and reachability, and each connected peer with its
    /// addresses, round-trip time and sync lag.
    Peers {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Take a consistent backup of a running agent into DIR (a file named after the agent and
    /// the time); the agent keeps serving while it runs.
    Backup {
        #[command(flatten)]
        api: ApiArgs,
        dir: PathBuf,
    },
    /// Restore a backup into the data directory of a stopped agent (a new device, or a wiped
    /// one). The restored agent takes writes again once it is in sync with a peer or the manager.
    Restore {
        #[command(flatten)]
        run: RunArgs,
        /// The backup file (`murmur-agent backup`).
        backup: PathBuf,
        /// The device's identity key (a backup holds none); default: identity.key in the data
        /// directory.
        #[arg(long)]
        identity_key: Option<PathBuf>,
        /// Replace a store already in the data directory.
        #[arg(long)]
        replace: bool,
        /// The key an encrypted backup was sealed under, when it is not the store's
        /// (`--encryption-key-file`): to rotate the key, restore the old key's backup under
        /// the new one.
        #[arg(long)]
        backup_key_file: Option<PathBuf>,
    },
    /// Print a new random swarm key (64 hex digits) to give every member of a new swarm.
    SwarmKey,
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
    /// Join the swarm without a swarm key, on purpose: anyone who can reach this agent may
    /// connect, read what it shares and write to it (mDNS and Kademlia stay off unless set).
    #[arg(long, env = "MURMUR_OPEN_SWARM")]
    open_swarm: bool,
    /// Upload to the swarm manager at host:port (QUIC); several, comma-separated or repeated,
    /// in order of preference (managers on one bucket: the agent fails over between them).
    #[arg(long, env = "MURMUR_MANAGER", value_delimiter = ',')]
    manager: Vec<String>,
    /// The manager's key, 64 hex digits (`murmur-manager key`): only the managers named are
    /// trusted (several: comma-separated or repeated).
    #[arg(long, env = "MURMUR_MANAGER_KEY", value_delimiter = ',')]
    manager_key: Vec<String>,
    /// Encrypt the memories' bodies and the index at rest with the key in this file (32 bytes
    /// or 64 hex digits, mode 600); `MURMUR_ENCRYPTION_KEY` may carry the key itself instead.
    #[arg(long, env = "MURMUR_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
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
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run(args) => runtime()?.block_on(server::run(config_from(args)?)),
        Command::Backup { api, dir } => {
            let (path, summary) = Client::new(&api.url).backup_into(&dir)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "path": path, "backup": summary }))?
            );
            Ok(())
        }
        Command::Restore {
            run,
            backup,
            identity_key,
            replace,
            backup_key_file,
        } => {
            let options = murmur_agent::restore::RestoreOptions {
                identity_key,
                replace,
                backup_key_file,
            };
            let restored = murmur_agent::restore::restore(config_from(run)?, &backup, options)?;
            println!("{}", serde_json::to_string_pretty(&restored)?);
            Ok(())
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
        Command::Peers { api } => {
            let reply = Client::new(&api.url).get("/v1/stats")?.ok()?;
            print!("{}", render_peers(&reply));
            Ok(())
        }
        Command::SwarmKey => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| anyhow::anyhow!("no randomness from the OS for a swarm key: {e}"))?;
            println!("{}", hex::encode(key));
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

/// The agent's config: the file, then flags and MURMUR_* variables over it.
fn config_from(args: RunArgs) -> Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::parse_toml_file(path)?,
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
        config.swarm.mdns = Some(false);
    }
    if args.open_swarm {
        config.swarm.open = true;
    }
    if !args.manager.is_empty() {
        config.manager.address = args.manager;
    }
    if !args.manager_key.is_empty() {
        config.manager.key = args.manager_key;
    }
    if let Some(path) = args.encryption_key_file {
        config.encryption.key_file = Some(path);
    }
    if let Some(cache) = args.cache_dir {
        config.model.cache_dir = Some(cache);
    }
    config.validate()?;
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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

/// The `peers` table: one line per connected peer, joined from the driver's view (addresses,
/// rtt) and the replica's (sync lag, refusals) by the peer's key.
fn render_peers(stats: &Value) -> String {
    let mut out = String::new();
    let Some(net) = stats.get("swarm").filter(|s| !s.is_null()) else {
        return "the swarm is off on this agent\n".into();
    };
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    out += &format!("peer id       {}\n", net["peer_id"].as_str().unwrap_or_default());
    out += &format!(
        "access        {}\n",
        match net["access"].as_str() {
            Some("open") => "open: no swarm key, anyone who reaches this agent may join",
            Some(other) => other,
            None => "",
        }
    );
    out += &format!("discovery     {}\n", list(&net["discovery"]));
    out += &format!("listening     {}\n", list(&net["listen_addresses"]));
    out += &format!("external      {}\n", list(&net["external_addresses"]));
    out += &format!(
        "reachability  {}\n",
        net["reachability"].as_str().unwrap_or_default()
    );
    out += &format!("relays        {}\n", list(&net["relay_reservations"]));
    out += &format!(
        "pending       {} changes waiting for their dependencies\n\n",
        stats["sync"]["pending_changes"]
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let sync_peers = stats["sync"]["peers"].as_array().cloned().unwrap_or_default();
    out += "PEER                                                   LINK     RTT      IN SYNC   REFUSED  ADDRESSES\n";
    for (peer, link) in net["peers"].as_object().into_iter().flatten() {
        let author = link["author"].as_str().unwrap_or_default();
        let sync = sync_peers.iter().find(|p| p["author"].as_str() == Some(author));
        let lag = sync
            .and_then(|p| p["last_in_sync_ms"].as_u64())
            .map_or("never".to_string(), |t| {
                format!("{:.1}s ago", now.saturating_sub(t) as f64 / 1e3)
            });
        let rtt = link["rtt_ms"]
            .as_f64()
            .map_or("-".to_string(), |ms| format!("{ms:.1}ms"));
        let refused = sync.and_then(|p| p["refused_messages"].as_u64()).unwrap_or(0);
        let kind = if link["relayed"].as_bool() == Some(true) {
            "relayed"
        } else {
            "direct"
        };
        out += &format!(
            "{peer:<54} {kind:<8} {rtt:<8} {lag:<9} {refused:<8} {}\n",
            list(&link["addresses"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_table_joins_addresses_with_sync_lag() {
        let stats = json!({
            "sync": { "pending_changes": 3, "peers": [
                { "author": "ab", "last_in_sync_ms": null, "refused_messages": 2 }
            ]},
            "swarm": {
                "peer_id": "12D3Self", "access": "open", "discovery": ["mdns"],
                "listen_addresses": ["/ip4/127.0.0.1/tcp/1"],
                "external_addresses": [], "reachability": "private", "relay_reservations": [],
                "peers": { "12D3Other": { "author": "ab", "addresses": ["/ip4/10.0.0.2/tcp/9"],
                    "relayed": true, "rtt_ms": 1.26 } }
            }
        });
        let table = render_peers(&stats);
        assert!(table.contains("reachability  private"), "{table}");
        assert!(table.contains("access        open: no swarm key"), "{table}");
        assert!(table.contains("discovery     mdns\n"), "{table}");
        assert!(table.contains("3 changes waiting"), "{table}");
        let line = table
            .lines()
            .find(|l| l.starts_with("12D3Other"))
            .expect("peer line");
        for part in ["relayed", "1.3ms", "never", "2", "/ip4/10.0.0.2/tcp/9"] {
            assert!(line.contains(part), "{line:?} lacks {part:?}");
        }
        assert!(render_peers(&json!({"sync": {}})).contains("swarm is off"));
    }
}

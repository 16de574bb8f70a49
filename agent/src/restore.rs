//! `murmur-agent restore`: a backup brought back into a data directory, as a new store that
//! then catches up from the swarm.
//!
//! Nothing is trusted before the whole file checks out (structure, counts, digest), and the
//! target directory is untouched until the restored store is complete: it is built in a
//! staging directory beside the target (`DIR.restoring`) through the same engine and store
//! calls that apply what a peer sends, so every change and body is verified again on the way
//! in, and renamed into place only at the end. A restore killed at any instant leaves the old
//! directory as it was (or none), and the next restore starts the staging over.
//!
//! A backup holds no identity key. The device's key comes from `--identity-key` or is already
//! in the target directory (a replaced device that kept it); it must be the backup's author.
//! Since what that key signed after the backup lives only in the swarm, the restored agent
//! takes no writes until a round with a peer or the manager ends in sync (`catching_up`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};
use murmur_sync::{MemoryRecord, SignedChange};
use serde::Serialize;

use crate::{
    AgentConfig,
    backup::{self, Item},
    error::AgentError,
    fsutil::write_atomically,
    identity::Identity,
    progress::Progress,
    service::Agent,
    time::now_ms,
};

/// How many changes or bodies go to the engine and the store in one step: large enough that
/// a step's fsync is shared by many, small enough to bound what one step holds in memory.
const BATCH: usize = 256;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The device's identity key file; by default `identity.key` in the target directory.
    pub identity_key: Option<PathBuf>,
    /// Replace a store already in the target directory.
    pub replace: bool,
    /// The key an encrypted backup was sealed under, when it is not the store's own
    /// (`[encryption]`): a key rotation restores an old key's backup under a new key.
    pub backup_key_file: Option<PathBuf>,
}

/// What a restore brought back.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub author: String,
    pub backup_sha256: String,
    pub changes: u64,
    pub bodies: u64,
    pub memories: usize,
    pub tombstones: usize,
    /// Memories the backup lists without a body (deleted while it was taken): their fate
    /// comes from the swarm.
    pub awaiting_bodies: usize,
    /// Whether writes wait for a round in sync with a peer or the manager.
    pub catching_up: bool,
    pub seconds: f64,
}

pub fn restore(config: AgentConfig, backup_path: &Path, options: RestoreOptions) -> Result<Restored> {
    let started = Instant::now();
    let verified = backup::verify_file(backup_path).context("checking the backup")?;
    let backup_sealer = match &options.backup_key_file {
        Some(path) => Some(murmur_at_rest::Sealer::from_key_file(path)?),
        None => config.encryption.sealer().context("loading the encryption key")?,
    };
    backup::check_key(backup_path, &verified, backup_sealer.as_ref())?;
    let target = config.data_dir.clone();
    ensure!(
        verified.header.shards == config.sync.shards,
        "the backup was taken with sync.shards = {}, this config has {}: restore with the swarm's settings",
        verified.header.shards,
        config.sync.shards
    );
    if target.join("db").exists() && !options.replace {
        bail!(
            "{} already holds a store; restoring over it loses what it holds that the backup does not: \
             stop the agent and pass --replace to do so",
            target.display()
        );
    }
    let key_path = options
        .identity_key
        .clone()
        .unwrap_or_else(|| target.join("identity.key"));
    let key = match std::fs::read(&key_path) {
        Ok(key) => key,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "no identity key at {}: a backup holds none; give the device's key with --identity-key FILE \
             (or put it in the data directory as identity.key)",
            key_path.display()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("reading the identity key {}", key_path.display()));
        }
    };

    let staging = sibling(&target, "restoring")?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing an earlier restore's {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let staged_key = staging.join("identity.key");
    write_atomically(&staged_key, &key, 0o600)?;
    let author = Identity::load_or_create(&staged_key)?.public_hex();
    if author != verified.header.author {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "the identity key {} is author {author}, the backup is of author {}: give this device's own key",
            key_path.display(),
            verified.header.author
        );
    }

    let restored = fill(&config, &staging, backup_path, &verified, backup_sealer.as_ref());
    let restored = match restored {
        Ok(restored) => restored,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    swap_into_place(&staging, &target)?;
    Ok(Restored {
        data_dir: target,
        author,
        backup_sha256: verified.sha256,
        changes: verified.changes,
        bodies: verified.bodies,
        seconds: started.elapsed().as_secs_f64(),
        ..restored
    })
}

/// Opens an agent on the staging directory and feeds it the backup.
fn fill(
    config: &AgentConfig,
    staging: &Path,
    backup_path: &Path,
    verified: &backup::Summary,
    backup_sealer: Option<&murmur_at_rest::Sealer>,
) -> Result<Restored> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut staged = config.clone();
    staged.data_dir = staging.to_path_buf();
    let agent = Agent::open(staged).context("opening the staging store")?;
    let shards = verified.header.shards;
    let progress = Progress::new(verified.changes + verified.bodies, "restoring");
    let mut changes: Option<(u16, Vec<SignedChange>)> = None;
    let mut bodies: HashMap<u16, Vec<Vec<u8>>> = HashMap::new();
    let step = |shard: u16, changes: Vec<SignedChange>, bodies: Vec<Vec<u8>>| -> Result<(), AgentError> {
        let count = (changes.len() + bodies.len()) as u64;
        agent
            .replica()
            .lock()
            .apply_stored(shard, changes, bodies)
            .map_err(|e| AgentError::invalid(format!("the backup's shard {shard} was refused: {e}")))?;
        runtime.block_on(async {
            let _guard = agent.write_guard().await;
            agent.store_received().await
        })?;
        // No peer is connected while restoring: what the engine would send has no taker.
        drop(agent.replica().take_transmits());
        progress.inc(count);
        Ok(())
    };
    let read = backup::read_file::<AgentError>(backup_path, backup_sealer, |item| match item {
        Item::Change { shard, bytes } => {
            let change = SignedChange::decode(&bytes)
                .map_err(|e| AgentError::invalid(format!("a change of shard {shard} in the backup: {e}")))?;
            match &mut changes {
                Some((current, batch)) if *current == shard && batch.len() < BATCH => batch.push(change),
                _ => {
                    if let Some((current, batch)) = changes.replace((shard, vec![change])) {
                        step(current, batch, Vec::new())?;
                    }
                }
            }
            Ok(())
        }
        Item::Body(record) => {
            if let Some((current, batch)) = changes.take() {
                step(current, batch, Vec::new())?;
            }
            let id = MemoryRecord::id_in(&record)
                .ok_or_else(|| AgentError::invalid("a body in the backup is not a memory record"))?;
            let shard = id.shard(shards);
            let batch = bodies.entry(shard).or_default();
            batch.push(record);
            if batch.len() >= BATCH {
                let full = std::mem::take(batch);
                step(shard, Vec::new(), full)?;
            }
            Ok(())
        }
    })
    .context("restoring the backup")?;
    if let Some((current, batch)) = changes.take() {
        step(current, batch, Vec::new())?;
    }
    let mut rest: Vec<_> = bodies.into_iter().filter(|(_, b)| !b.is_empty()).collect();
    rest.sort_by_key(|(shard, _)| *shard);
    for (shard, batch) in rest {
        step(shard, Vec::new(), batch)?;
    }
    progress.finish();
    // The file was checked whole before; this makes sure the bytes applied are those bytes.
    ensure!(
        read.sha256 == verified.sha256,
        "the backup file changed while it was restored (SHA-256 {} then {}): nothing was put in place",
        verified.sha256,
        read.sha256
    );
    let stats = agent.stats()?;
    runtime
        .block_on(agent.shutdown())
        .context("flushing the restored store")?;
    let catching_up = agent.replica().lock().is_catching_up();
    close(agent)?;
    Ok(Restored {
        data_dir: staging.to_path_buf(),
        author: stats.author,
        backup_sha256: read.sha256,
        changes: read.changes,
        bodies: read.bodies,
        memories: stats.memories,
        tombstones: stats.tombstones,
        awaiting_bodies: stats.sync.awaiting_bodies,
        catching_up,
        seconds: 0.0,
    })
}

/// Drops the last handle on the staging agent, so its database is closed before the
/// directory moves.
fn close(agent: Arc<Agent>) -> Result<()> {
    match Arc::try_unwrap(agent) {
        Ok(agent) => {
            drop(agent);
            Ok(())
        }
        Err(_) => bail!("the staging agent is still in use; nothing was put in place"),
    }
}

/// `DIR.<what>` beside `dir`.
fn sibling(dir: &Path, what: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?;
    let mut sibling = name.to_os_string();
    sibling.push(format!(".{what}"));
    Ok(dir.with_file_name(sibling))
}

/// Puts the complete staging directory where the target is: the old directory (if any) is
/// moved aside first and removed only after the new one is in place.
fn swap_into_place(staging: &Path, target: &Path) -> Result<()> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let aside = if target.exists() {
        let aside = sibling(target, &format!("replaced-{}", now_ms()))?;
        std::fs::rename(target, &aside)
            .with_context(|| format!("moving {} aside to {}", target.display(), aside.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(staging, target)
        .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", parent.display()))?;
    if let Some(aside) = aside
        && let Err(error) = std::fs::remove_dir_all(&aside)
    {
        tracing::warn!(%error, path = %aside.display(), "removing the replaced data directory");
    }
    Ok(())
}

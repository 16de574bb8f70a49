//! Manager configuration: defaults for one machine, overridden by a TOML file, then by flags.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ManagerConfig {
    /// Local files: the manager's key, its operator token, the model cache default.
    pub data_dir: PathBuf,
    /// Where the swarm state and the analytics go: `file:///dir`, `s3://bucket/prefix`,
    /// `gs://…`, `az://…`. Default: `<data_dir>/bucket`.
    pub bucket: Option<String>,
    /// object_store options for the bucket (`aws_endpoint`, `aws_region`, …).
    pub bucket_options: BTreeMap<String, String>,
    /// QUIC (UDP) address agents connect to.
    pub uplink_addr: SocketAddr,
    /// HTTP: dashboard, API, `/healthz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// The swarm's pre-shared key (64 hex digits), as the agents have it.
    pub swarm_key: Option<String>,
    /// Hex ed25519 keys of the agents that may connect (empty: any holder of the swarm key).
    pub allow_agents: Vec<String>,
    /// Operator token for the dashboard and API; generated into `<data_dir>/operator.token`
    /// when absent.
    pub operator_token: Option<String>,
    /// Swarm-wide sync settings; the same as every agent's `[sync]`.
    pub sync: SyncSection,
    /// How often other managers' segments are read from the bucket.
    pub bucket_poll_ms: u64,
    /// Parquet export period (0: only at shutdown and on `murmur-manager export`).
    pub export_interval_secs: u64,
    /// Merge at most this many incoming messages into one segment.
    pub max_batch_messages: usize,
    /// Refused messages from one agent before its connection is closed.
    pub max_refusals: u32,
    /// Compact once this many segments exist.
    pub compact_after_segments: usize,
    /// Semantic search and operator memories need the embedding model.
    pub model: ModelSection,
    /// Encryption at rest of the bucket: segments sealed, exports Parquet-encrypted.
    pub encryption: murmur_at_rest::EncryptionSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSection {
    pub shards: u16,
    pub admins: Vec<String>,
    pub anti_entropy_interval_ms: u64,
}

impl Default for SyncSection {
    fn default() -> Self {
        let defaults = murmur_sync::Config::default();
        Self {
            shards: defaults.shards,
            admins: Vec::new(),
            anti_entropy_interval_ms: defaults.anti_entropy_interval_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Turn off to run without the model (no search, no operator memories).
    pub disabled: bool,
    pub config: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub runtime: Option<PathBuf>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("murmur-manager-data"),
            bucket: None,
            bucket_options: BTreeMap::new(),
            uplink_addr: SocketAddr::from(([0, 0, 0, 0], 7720)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7721)),
            swarm_key: None,
            allow_agents: Vec::new(),
            operator_token: None,
            sync: SyncSection::default(),
            bucket_poll_ms: 2_000,
            export_interval_secs: 60,
            max_batch_messages: 256,
            max_refusals: 16,
            compact_after_segments: 512,
            model: ModelSection::default(),
            encryption: murmur_at_rest::EncryptionSettings::default(),
        }
    }
}

pub fn parse_key_hex(what: &str, hex_key: &str) -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut key)
        .map_err(|_| anyhow::anyhow!("{what}: {hex_key:?} is not 64 hex digits"))?;
    Ok(key)
}

impl ManagerConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let config: Self =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.swarm_key.is_some() || !self.allow_agents.is_empty(),
            "set swarm_key or allow_agents: otherwise anyone could upload to this manager"
        );
        if let Some(key) = &self.swarm_key {
            parse_key_hex("swarm_key", key)?;
        }
        for agent in &self.allow_agents {
            parse_key_hex("allow_agents", agent)?;
        }
        if let Some(token) = &self.operator_token {
            anyhow::ensure!(token.len() >= 16, "operator_token must be at least 16 characters");
        }
        anyhow::ensure!(self.bucket_poll_ms >= 100, "bucket_poll_ms must be at least 100");
        anyhow::ensure!(
            self.max_batch_messages >= 1,
            "max_batch_messages must be at least 1"
        );
        anyhow::ensure!(self.max_refusals >= 1, "max_refusals must be at least 1");
        anyhow::ensure!(
            self.compact_after_segments >= 2,
            "compact_after_segments must be at least 2"
        );
        self.engine_config()?;
        Ok(())
    }

    pub fn engine_config(&self) -> anyhow::Result<murmur_sync::Config> {
        let admins = self
            .sync
            .admins
            .iter()
            .map(|a| parse_key_hex("sync.admins", a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = murmur_sync::Config {
            shards: self.sync.shards,
            admins,
            anti_entropy_interval_ms: self.sync.anti_entropy_interval_ms,
            ..murmur_sync::Config::default()
        };
        // The engine validates its own config; building one is the cheapest complete check.
        murmur_sync::Engine::<[u8; 32]>::new(
            config.clone(),
            murmur_sync::SigningKey::from_bytes(&[0; 32]),
            0,
            0,
        )
        .map_err(|e| anyhow::anyhow!("sync: {e}"))?;
        Ok(config)
    }

    /// The bucket this config names, with its encryption key if one is set (not yet checked
    /// against the bucket: `Bucket::ensure_layout` does that).
    pub fn open_bucket(&self) -> anyhow::Result<crate::bucket::Bucket> {
        let url = self.bucket_url()?;
        let options: Vec<(String, String)> = self
            .bucket_options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sealer = self.encryption.sealer().context("the encryption key")?;
        Ok(crate::bucket::Bucket::open(&url, &options)
            .context("opening the bucket")?
            .with_sealer(sealer))
    }

    pub fn bucket_url(&self) -> anyhow::Result<String> {
        match &self.bucket {
            Some(url) => Ok(url.clone()),
            None => {
                let dir = self.data_dir.join("bucket");
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .with_context(|| format!("resolving {}", dir.display()))?;
                Ok(format!("file://{}", dir.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_managers_and_bad_keys_are_refused() {
        let mut config = ManagerConfig::default();
        assert!(config.validate().unwrap_err().to_string().contains("swarm_key"));
        config.swarm_key = Some("zz".into());
        assert!(config.validate().is_err());
        config.swarm_key = Some("ab".repeat(32));
        config.validate().unwrap();
        config.sync.shards = 0;
        assert!(config.validate().unwrap_err().to_string().contains("shards"));
        assert!(toml::from_str::<ManagerConfig>("bukket = \"x\"").is_err());
    }
}

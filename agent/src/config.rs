//! Agent configuration: defaults for a small device, overridden by a TOML file, then by
//! environment variables and flags (see `main.rs`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{index::IndexSettings, memory::Limits};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the database, index and identity live.
    pub data_dir: PathBuf,
    /// Local HTTP API; loopback by default, since the API is not authenticated.
    pub api_addr: SocketAddr,
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// Refuse writes once the database and index use this many bytes on disk (0: no quota).
    pub disk_quota_bytes: u64,
    /// Save the vector index at most this often while writes happen (it is also saved on
    /// shutdown; a stale index is rebuilt from the database at start).
    pub index_save_interval_secs: u64,
    /// Below this many candidate memories a filtered search is answered exactly.
    pub exact_search_threshold: usize,
    pub index: IndexSettings,
    pub limits: Limits,
    pub model: ModelSection,
    /// Swarm-wide sync settings (shards, admins); the same on every agent of a swarm.
    pub sync: crate::replica::SyncSettings,
    /// Peers: transports, discovery, the swarm key (off unless enabled).
    pub swarm: crate::swarm::SwarmSettings,
    /// The swarm manager this agent uploads to over QUIC (off unless `address` is set).
    pub manager: crate::uplink::UplinkSettings,
    /// Encryption at rest of the memories' bodies and the vector index (off without a key).
    pub encryption: murmur_at_rest::EncryptionSettings,
    /// Per-namespace limits past which memories from other devices are evicted here.
    pub retention: crate::retention::RetentionSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A model config TOML (murmur-models format); the default model when absent.
    pub config: Option<PathBuf>,
    /// Cache of fetched model and runtime files; murmur-models' default when absent.
    pub cache_dir: Option<PathBuf>,
    /// ONNX Runtime library; `ORT_DYLIB_PATH` or the fetched one when absent.
    pub runtime: Option<PathBuf>,
    pub embedder: murmur_models::EmbedderOptions,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("murmur-data"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7710)),
            cache_bytes: 64 * 1024 * 1024,
            disk_quota_bytes: 0,
            index_save_interval_secs: 60,
            exact_search_threshold: 4096,
            index: IndexSettings::default(),
            limits: Limits::default(),
            model: ModelSection::default(),
            sync: crate::replica::SyncSettings::default(),
            swarm: crate::swarm::SwarmSettings::default(),
            manager: crate::uplink::UplinkSettings::default(),
            encryption: murmur_at_rest::EncryptionSettings::default(),
            retention: crate::retention::RetentionSettings::default(),
        }
    }
}

impl AgentConfig {
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let config = Self::parse_toml_file(path)?;
        config
            .validate()
            .with_context(|| format!("checking config {}", path.display()))?;
        Ok(config)
    }

    /// The file as written, not yet checked: flags and variables may still complete it (a
    /// swarm key given by flag), so the caller validates after merging them.
    pub fn parse_toml_file(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let config: Self =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.limits.max_batch >= 1, "limits.max_batch must be at least 1");
        anyhow::ensure!(
            self.limits.max_text_bytes >= 1,
            "limits.max_text_bytes must be at least 1"
        );
        anyhow::ensure!(
            self.index.connectivity >= 2,
            "index.connectivity must be at least 2"
        );
        anyhow::ensure!(
            self.index.expansion_search >= 1,
            "index.expansion_search must be at least 1"
        );
        anyhow::ensure!(
            self.index_save_interval_secs >= 1,
            "index_save_interval_secs must be at least 1"
        );
        crate::replica::check_limits(&self.limits)?;
        self.sync.engine_config()?;
        self.swarm.validate()?;
        self.manager.validate(self.swarm.swarm_key.is_some())?;
        self.retention.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_keep_defaults_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "data_dir = \"/x\"\n[index]\nquantization = \"i8\"\n").unwrap();
        let config = AgentConfig::from_toml_file(&path).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        assert_eq!(config.index.quantization, crate::index::Quantization::I8);
        assert_eq!(config.index.connectivity, 16);
        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        assert!(AgentConfig::from_toml_file(&path).is_err());
        std::fs::write(&path, "[limits]\nmax_batch = 0\n").unwrap();
        assert!(AgentConfig::from_toml_file(&path).is_err());
    }

    /// The gossip tunings `scripts/bench-swarm.sh` compares stay configs an agent accepts.
    #[test]
    fn the_benchmarked_gossip_tunings_are_valid_agent_configs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gossip");
        let mut tunings = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let config = AgentConfig::from_toml_file(&path).unwrap();
            config.swarm.gossip.gossipsub_config(64 * 1024).unwrap();
            tunings.push(config.swarm.gossip);
        }
        assert!(tunings.len() >= 2, "{}", dir.display());
        assert!(tunings.contains(&crate::swarm::GossipSettings::default()));
    }
}

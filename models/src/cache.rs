//! Where fetched model and runtime files live on a device.
//!
//! Resolution order: an explicit directory (CLI flag or config), then `MURMUR_CACHE_DIR`, then
//! `$XDG_CACHE_HOME/murmur`, then `$HOME/.cache/murmur`. One per-user directory, so several
//! agents on a device share one copy of the model.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

pub const CACHE_DIR_ENV: &str = "MURMUR_CACHE_DIR";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache directory this user and environment select, `explicit` winning over everything.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit {
            return Ok(Self::new(dir));
        }
        let from_env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(dir) = from_env(CACHE_DIR_ENV) {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = from_env("XDG_CACHE_HOME") {
            return Ok(Self::new(dir.join("murmur")));
        }
        if let Some(home) = from_env("HOME") {
            return Ok(Self::new(home.join(".cache").join("murmur")));
        }
        Err(ModelError::InvalidConfig {
            path: PathBuf::from("$HOME"),
            reason: format!(
                "neither {CACHE_DIR_ENV}, XDG_CACHE_HOME nor HOME is set; pass a cache directory"
            ),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn join(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }
}

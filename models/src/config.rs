//! What a model is: its files and how to turn its output into one vector per text.
//!
//! The default model is described in code; a user's own ONNX sentence-embedding model is
//! described by a small TOML file next to its files (see `docs/models.md`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    artifacts::{DEFAULT_MODEL_ID, DEFAULT_MODEL_ONNX, DEFAULT_MODEL_TOKENIZER},
    cache::CacheDir,
    error::{ModelError, Result},
};

/// How per-token hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Average of the token vectors where the attention mask is 1 (sentence-transformers' default).
    Mean,
    /// The first token's vector (BERT's [CLS]).
    Cls,
    /// The output is already one vector per text (`[batch, dim]`).
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Stable identifier stored with every vector; two models with one id must embed alike.
    pub id: String,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Tokens per text the model sees; longer texts are truncated to it.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Texts longer than this many bytes are refused rather than silently cut.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// Output to read; when absent, `last_hidden_state` if the model has it, else its first output.
    #[serde(default)]
    pub output: Option<String>,
    /// When set, loading fails unless the model produces vectors of exactly this size.
    #[serde(default)]
    pub dimension: Option<usize>,
    /// When set, the files are verified before they are loaded.
    #[serde(default)]
    pub onnx_sha256: Option<String>,
    #[serde(default)]
    pub tokenizer_sha256: Option<String>,
}

fn default_pooling() -> Pooling {
    Pooling::Mean
}
fn yes() -> bool {
    true
}
fn default_max_tokens() -> usize {
    // all-MiniLM-L6-v2 was trained at 256 word pieces (sentence-transformers' max_seq_length).
    256
}
fn default_max_text_bytes() -> usize {
    16 * 1024
}

impl ModelConfig {
    /// The built-in default: all-MiniLM-L6-v2 int8 as laid out by `murmur-models fetch`.
    pub fn default_model(cache: &CacheDir) -> Self {
        Self {
            id: DEFAULT_MODEL_ID.to_string(),
            onnx: cache.join(DEFAULT_MODEL_ONNX.dest),
            tokenizer: cache.join(DEFAULT_MODEL_TOKENIZER.dest),
            pooling: Pooling::Mean,
            normalize: true,
            max_tokens: default_max_tokens(),
            max_text_bytes: default_max_text_bytes(),
            output: Some("last_hidden_state".into()),
            dimension: Some(384),
            onnx_sha256: Some(DEFAULT_MODEL_ONNX.sha256.into()),
            tokenizer_sha256: Some(DEFAULT_MODEL_TOKENIZER.sha256.into()),
        }
    }

    /// Reads a model config; relative file paths in it are taken from the config's directory.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| ModelError::InvalidConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.onnx = base.join(&config.onnx);
        config.tokenizer = base.join(&config.tokenizer);
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |reason: &str| {
            Err(ModelError::InvalidConfig {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            })
        };
        if self.id.trim().is_empty() {
            return invalid("`id` must not be empty");
        }
        if self.max_tokens < 2 {
            return invalid("`max_tokens` must be at least 2");
        }
        if self.max_text_bytes == 0 {
            return invalid("`max_text_bytes` must be positive");
        }
        if self.dimension == Some(0) {
            return invalid("`dimension` must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_resolved_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("murmur-model.toml");
        std::fs::write(
            &path,
            "id = \"tiny\"\nonnx = \"m.onnx\"\ntokenizer = \"t.json\"\npooling = \"cls\"\n",
        )
        .unwrap();
        let config = ModelConfig::from_toml_file(&path).unwrap();
        assert_eq!(config.onnx, dir.path().join("m.onnx"));
        assert_eq!(config.pooling, Pooling::Cls);
        assert!(config.normalize);
        assert_eq!(config.max_tokens, 256);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for bad in [
            "id = \"x\"\nonnx = \"m\"\ntokenizer = \"t\"\npoolin = \"mean\"\n",
            "id = \"x\"\nonnx = \"m\"\ntokenizer = \"t\"\npooling = \"max\"\n",
            "id = \"\"\nonnx = \"m\"\ntokenizer = \"t\"\n",
            "id = \"x\"\nonnx = \"m\"\ntokenizer = \"t\"\nmax_tokens = 1\n",
            "id = \"x\"\ntokenizer = \"t\"\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(
                    ModelConfig::from_toml_file(&path),
                    Err(ModelError::InvalidConfig { .. })
                ),
                "accepted: {bad}"
            );
        }
    }
}

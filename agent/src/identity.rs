//! The agent's persistent ed25519 identity: generated on first start, then reused, so every
//! memory it writes carries the same author across restarts.

use std::{fs, path::Path};

use ed25519_dalek::SigningKey;

use crate::{
    error::{AgentError, Result},
    fsutil::write_atomically,
};

pub struct Identity {
    signing_key: SigningKey,
}

impl Identity {
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match fs::read(path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    AgentError::invalid(format!(
                        "identity key {} is {} bytes, expected 32; restore it from a backup or remove it to start as a new agent",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(Self {
                    signing_key: SigningKey::from_bytes(&secret),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(|e| AgentError::Io {
                    context: "generating an identity key".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                // Owner-only: this key is the agent's identity in the swarm.
                write_atomically(path, &secret, 0o600)?;
                tracing::info!(path = %path.display(), "generated a new agent identity");
                Ok(Self {
                    signing_key: SigningKey::from_bytes(&secret),
                })
            }
            Err(e) => Err(AgentError::io(format!("reading identity key {}", path.display()))(e)),
        }
    }

    /// The author id stored with every memory: the public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.signing_key.verifying_key().as_bytes())
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_across_loads_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = Identity::load_or_create(&path).unwrap().public_hex();
        assert_eq!(first.len(), 64);
        assert_eq!(Identity::load_or_create(&path).unwrap().public_hex(), first);
        fs::write(&path, b"short").unwrap();
        assert!(Identity::load_or_create(&path).is_err());
    }
}

//! Encryption at rest: one 32-byte key per device or manager, and blobs sealed with it.
//!
//! A sealed blob is `MRS1 | 24-byte random nonce | XChaCha20-Poly1305 ciphertext and tag`.
//! The nonce is random, never a counter: a counter kept on disk can repeat after a crash or a
//! restore, and a repeated nonce under one key gives both plaintexts away; 24 random bytes do
//! not repeat. The tag makes every flipped byte, a wrong key and a blob moved from another
//! file with other associated data an error, never wrong bytes.
//!
//! A store remembers which key sealed it by [`Sealer::fingerprint`], a hash of the key that
//! says nothing about it, so a start with a wrong or missing key is refused up front with a
//! clear message instead of failing on the first read.

use std::path::{Path, PathBuf};

use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

const MAGIC: &[u8; 4] = b"MRS1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// What sealing adds to a blob.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_BYTES + TAG_BYTES;
/// The environment variable that may carry the key (64 hex digits) instead of a file.
pub const KEY_ENV: &str = "MURMUR_ENCRYPTION_KEY";

#[derive(Debug, Error)]
pub enum AtRestError {
    #[error("reading the encryption key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the encryption key {from} is not 32 bytes or 64 hex digits ({found})")]
    BadKey { from: String, found: String },
    #[error("the encryption key file {path} can be read by others (mode {mode:o}): chmod 600 it")]
    OpenKeyFile { path: PathBuf, mode: u32 },
    #[error("a sealed blob is {len} bytes, shorter than the {OVERHEAD} sealing adds")]
    Short { len: usize },
    #[error("not a sealed blob (no MRS1 magic): written without encryption?")]
    NotSealed,
    #[error("cannot decrypt: the key is not the one that sealed it, or the bytes are damaged")]
    Unsealable,
    #[error("generating a nonce: {0}")]
    Random(String),
}

/// Where the key comes from: `[encryption]` in a config file, with the key itself in a file
/// of its own (or the environment), never in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// A file holding the key: 32 raw bytes, or 64 hex digits (a trailing newline is fine).
    /// Must not be readable by group or others.
    pub key_file: Option<PathBuf>,
}

impl EncryptionSettings {
    /// The sealer these settings name: the key file if set, else [`KEY_ENV`] if set, else
    /// none (encryption off).
    pub fn sealer(&self) -> Result<Option<Sealer>, AtRestError> {
        if let Some(path) = &self.key_file {
            return Sealer::from_key_file(path).map(Some);
        }
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                Sealer::from_key_text(text.trim().as_bytes(), KEY_ENV).map(Some)
            }
            _ => Ok(None),
        }
    }
}

pub struct Sealer {
    cipher: XChaCha20Poly1305,
    /// Kept only to derive purpose-bound subkeys from (see [`Sealer::subkey`]).
    key: [u8; 32],
    fingerprint: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let fingerprint = Sha256::new()
            .chain_update(b"murmur at-rest key fingerprint v1\0")
            .chain_update(key)
            .finalize();
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            key: *key,
            fingerprint: hex::encode(&fingerprint[..16]),
        }
    }

    /// A key for another cipher, derived from this one and bound to `purpose`: handing it
    /// out (to analysts who read the manager's encrypted Parquet, say) gives nothing of this
    /// key and opens nothing this sealer sealed. SHA-256 over a uniform 32-byte key with the
    /// purpose length-prefixed is a sound KDF for one key per purpose.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        Sha256::new()
            .chain_update(b"murmur at-rest subkey v1\0")
            .chain_update((purpose.len() as u64).to_be_bytes())
            .chain_update(purpose.as_bytes())
            .chain_update(self.key)
            .finalize()
            .into()
    }

    pub fn from_key_file(path: &Path) -> Result<Self, AtRestError> {
        use std::os::unix::fs::PermissionsExt;
        let read_error = |source| AtRestError::ReadKey {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(AtRestError::OpenKeyFile {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        Self::from_key_text(&bytes, &path.display().to_string())
    }

    /// A key as 32 raw bytes or 64 hex digits (surrounding white space ignored for hex).
    pub fn from_key_text(bytes: &[u8], from: &str) -> Result<Self, AtRestError> {
        if let Ok(key) = <[u8; 32]>::try_from(bytes) {
            return Ok(Self::new(&key));
        }
        let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
        let mut key = [0u8; 32];
        match hex::decode_to_slice(text, &mut key) {
            Ok(()) => Ok(Self::new(&key)),
            Err(_) => Err(AtRestError::BadKey {
                from: from.to_string(),
                found: format!("{} bytes", bytes.len()),
            }),
        }
    }

    /// Names the key without saying anything about it: stores keep it to refuse another key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `plain` sealed, bound to `context` (what the blob is, where it lives): a blob opened
    /// under another context fails like a wrong key.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| AtRestError::Random(e.to_string()))?;
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .map_err(|_| AtRestError::Unsealable)?;
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, AtRestError> {
        if sealed.len() < OVERHEAD {
            return Err(AtRestError::Short { len: sealed.len() });
        }
        let (magic, rest) = sealed.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(AtRestError::NotSealed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| AtRestError::Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blobs_open_only_with_their_key_and_context() {
        let sealer = Sealer::new(&[7; 32]);
        let plain = b"the east pump's seal leaks";
        let sealed = sealer.seal(plain, b"body").unwrap();
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(!sealed.windows(8).any(|w| w == b"east pum"));
        assert_eq!(sealer.open(&sealed, b"body").unwrap(), plain);
        assert_ne!(sealer.seal(plain, b"body").unwrap(), sealed, "nonces repeat");
        assert!(matches!(
            sealer.open(&sealed, b"index"),
            Err(AtRestError::Unsealable)
        ));
        let other = Sealer::new(&[8; 32]);
        assert!(matches!(
            other.open(&sealed, b"body"),
            Err(AtRestError::Unsealable)
        ));
        assert_ne!(other.fingerprint(), sealer.fingerprint());
        for i in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 1;
            assert!(
                sealer.open(&damaged, b"body").is_err(),
                "byte {i} flipped and opened"
            );
        }
        assert!(matches!(
            sealer.open(&[b'x'; 64], b"body"),
            Err(AtRestError::NotSealed)
        ));
        assert!(matches!(
            sealer.open(b"MRS1", b"body"),
            Err(AtRestError::Short { .. })
        ));
        assert_ne!(sealer.subkey("parquet"), sealer.subkey("other"));
        assert_ne!(sealer.subkey("parquet"), other.subkey("parquet"));
        assert_ne!(sealer.subkey("parquet"), [7; 32]);
        assert_eq!(sealer.subkey("parquet"), Sealer::new(&[7; 32]).subkey("parquet"));
    }

    #[test]
    fn keys_come_raw_or_hex_from_private_files_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [3u8; 32]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hexed = dir.path().join("hex");
        std::fs::write(&hexed, format!("{}\n", "03".repeat(32))).unwrap();
        std::fs::set_permissions(&hexed, std::fs::Permissions::from_mode(0o400)).unwrap();
        let a = Sealer::from_key_file(&raw).unwrap();
        let b = Sealer::from_key_file(&hexed).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(b.open(&a.seal(b"x", b"c").unwrap(), b"c").unwrap(), b"x");

        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Sealer::from_key_file(&raw).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        let short = dir.path().join("short");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = Sealer::from_key_file(&short).unwrap_err().to_string();
        assert!(error.contains("64 hex digits"), "{error}");
    }
}

//! The agent's saved state: its replica as a murmur-sync snapshot and its search filters'
//! facts, written beside the vector index so a start reads one file instead of replaying
//! every sync change and reading every memory. Derived, like the index: the store stays the
//! truth, and a file that is damaged, sealed under another key or unreadable is reported and
//! passed over (the start replays instead), never trusted.
//!
//! Layout: `"MMSTATE1"`, the CRC-32 of the payload (u32 LE), the payload: change mark,
//! generation and the replica snapshot's length (u64 LE each), the snapshot, the filter facts.
//! With encryption at rest the payload is sealed whole.

use std::{fs, path::Path};

use crate::{
    error::{AgentError, Result},
    fsutil::write_atomically,
};

pub const STATE_FILE: &str = "state.snapshot";
const MAGIC: &[u8; 8] = b"MMSTATE1";
const SEAL_CONTEXT: &[u8] = b"murmur agent state v1";

#[derive(Debug)]
pub struct SavedState {
    /// Every sync change stored after this mark ([`crate::store::Store::change_mark`]) is
    /// newer than the replica snapshot.
    pub change_mark: u64,
    /// The store generation the filter facts are of: at any other they are rebuilt.
    pub generation: u64,
    pub replica: Vec<u8>,
    pub attrs: Vec<u8>,
}

impl SavedState {
    pub fn write(&self, dir: &Path, sealer: Option<&murmur_at_rest::Sealer>) -> Result<()> {
        let mut payload = Vec::with_capacity(24 + self.replica.len() + self.attrs.len());
        payload.extend_from_slice(&self.change_mark.to_le_bytes());
        payload.extend_from_slice(&self.generation.to_le_bytes());
        payload.extend_from_slice(&(self.replica.len() as u64).to_le_bytes());
        payload.extend_from_slice(&self.replica);
        payload.extend_from_slice(&self.attrs);
        if let Some(sealer) = sealer {
            payload = sealer
                .seal(&payload, SEAL_CONTEXT)
                .map_err(|e| AgentError::AtRest(format!("sealing the saved state: {e}")))?;
        }
        let mut file = Vec::with_capacity(12 + payload.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        file.extend_from_slice(&payload);
        write_atomically(&dir.join(STATE_FILE), &file, 0o600)
    }

    /// The saved state, `Ok(None)` where there is none, or why it cannot be used.
    pub fn read(
        dir: &Path,
        sealer: Option<&murmur_at_rest::Sealer>,
    ) -> std::result::Result<Option<Self>, String> {
        let path = dir.join(STATE_FILE);
        let mut file = match fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if file.len() < 12 || &file[..8] != MAGIC {
            return Err(format!("{}: not an agent state file", path.display()));
        }
        if crc32fast::hash(&file[12..]).to_le_bytes() != file[8..12] {
            return Err(format!(
                "{}: does not match its checksum (damaged)",
                path.display()
            ));
        }
        // The snapshot runs to a hundred megabytes at a million memories: it is moved into
        // place, not copied.
        let mut payload = match sealer {
            Some(sealer) => sealer
                .open(&file[12..], SEAL_CONTEXT)
                .map_err(|e| format!("{}: does not open with the key: {e}", path.display()))?,
            None => {
                file.drain(..12);
                file
            }
        };
        let number = |at: usize| -> std::result::Result<u64, String> {
            payload
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| format!("{}: cut short", path.display()))
        };
        let (change_mark, generation, replica_len) = (number(0)?, number(8)?, number(16)?);
        let replica_end = usize::try_from(replica_len)
            .ok()
            .and_then(|len| len.checked_add(24))
            .filter(|end| *end <= payload.len())
            .ok_or_else(|| format!("{}: cut short", path.display()))?;
        let attrs = payload.split_off(replica_end);
        payload.drain(..24);
        Ok(Some(Self {
            change_mark,
            generation,
            replica: payload,
            attrs,
        }))
    }

    pub fn file_bytes(dir: &Path) -> u64 {
        fs::metadata(dir.join(STATE_FILE)).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_and_a_flipped_byte_or_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SavedState::read(dir.path(), None).unwrap().is_none());
        let state = SavedState {
            change_mark: 7,
            generation: 9,
            replica: vec![1, 2, 3],
            attrs: vec![4, 5],
        };
        state.write(dir.path(), None).unwrap();
        let back = SavedState::read(dir.path(), None).unwrap().unwrap();
        assert_eq!(
            (back.change_mark, back.generation, back.replica, back.attrs),
            (7, 9, vec![1, 2, 3], vec![4, 5])
        );
        let path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(
            SavedState::read(dir.path(), None)
                .unwrap_err()
                .contains("checksum")
        );

        let key = murmur_at_rest::Sealer::new(&[1; 32]);
        state.write(dir.path(), Some(&key)).unwrap();
        assert!(!fs::read(&path).unwrap().windows(3).any(|w| w == [1, 2, 3]));
        assert_eq!(
            SavedState::read(dir.path(), Some(&key)).unwrap().unwrap().replica,
            vec![1, 2, 3]
        );
        let other = murmur_at_rest::Sealer::new(&[2; 32]);
        assert!(
            SavedState::read(dir.path(), Some(&other))
                .unwrap_err()
                .contains("key")
        );
    }
}

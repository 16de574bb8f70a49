//! Memory bodies (signed records) in a file of their own, beside the sled database.
//!
//! sled keeps old values in its log until it happens to clean their segment, so a body removed
//! from a sled tree can stay readable on disk for as long as the device lives. Here a delete
//! punches the body's bytes out of the file (the file system frees whole blocks and zeroes the
//! rest) and syncs before it counts as done, so a deleted text or vector is gone from disk.
//!
//! Bodies are appended one after another; a sled row names each one's [`Slot`]. sled also keeps
//! the file's committed length, moved in the transaction that commits the rows pointing into
//! it, so bytes appended by a write that never committed are cut off at open.

use std::{
    fs::File,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use murmur_at_rest::Sealer;

use crate::error::{AgentError, Result};

/// Where one body lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub len: u32,
}

impl Slot {
    pub const ENCODED: usize = 12;

    pub fn encode(self) -> [u8; Self::ENCODED] {
        let mut out = [0u8; Self::ENCODED];
        out[..8].copy_from_slice(&self.offset.to_be_bytes());
        out[8..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let offset = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        (bytes.len() == Self::ENCODED).then_some(Self { offset, len })
    }

    fn end(self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

pub struct BodyFile {
    file: File,
    path: PathBuf,
    /// Where the next body goes; appends are serialised by this lock.
    end: Mutex<u64>,
    /// With encryption at rest, each body is sealed, bound to its offset, so a body copied to
    /// another place in the file does not open there.
    sealer: Option<Arc<Sealer>>,
}

fn seal_context(offset: u64) -> [u8; 25] {
    let mut context = [0u8; 25];
    context[..17].copy_from_slice(b"murmur-agent body");
    context[17..].copy_from_slice(&offset.to_be_bytes());
    context
}

fn io_error(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> AgentError {
    let key = format!("{} ({what})", path.display());
    move |e| AgentError::CorruptRecord {
        key,
        reason: e.to_string(),
    }
}

impl BodyFile {
    /// Opens (or creates) the file whose committed length sled says is `committed_end`. Bytes
    /// past it belong to a write that never committed and are cut off; a file shorter than it
    /// has lost bodies the store points to, which is reported, never papered over.
    pub fn open(path: &Path, committed_end: u64, sealer: Option<Arc<Sealer>>) -> Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_error(path, "opening"))?;
        let len = file.metadata().map_err(io_error(path, "reading its size"))?.len();
        if len < committed_end {
            return Err(AgentError::CorruptRecord {
                key: path.display().to_string(),
                reason: format!(
                    "{len} bytes, but the database points to bodies up to byte {committed_end}: \
                     the file was truncated or replaced"
                ),
            });
        }
        if len > committed_end {
            tracing::warn!(
                path = %path.display(),
                bytes = len - committed_end,
                "cutting off bodies of a write that never committed"
            );
            file.set_len(committed_end)
                .map_err(io_error(path, "truncating"))?;
            file.sync_all().map_err(io_error(path, "syncing"))?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            end: Mutex::new(committed_end),
            sealer,
        })
    }

    fn end(&self) -> std::sync::MutexGuard<'_, u64> {
        self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `bodies` durably (one write, one fsync); returns their slots and the file's new
    /// end, which the caller commits with the rows that point to them.
    pub fn append(&self, bodies: &[&[u8]]) -> Result<(Vec<Slot>, u64)> {
        let mut end = self.end();
        let mut slots = Vec::with_capacity(bodies.len());
        let mut buffer = Vec::with_capacity(bodies.iter().map(|b| b.len()).sum());
        let mut at = *end;
        for body in bodies {
            let sealed;
            let body: &[u8] = match &self.sealer {
                Some(sealer) => {
                    sealed = sealer
                        .seal(body, &seal_context(at))
                        .map_err(|e| AgentError::AtRest(format!("sealing a body: {e}")))?;
                    &sealed
                }
                None => body,
            };
            let len = u32::try_from(body.len()).map_err(|_| AgentError::invalid("a body over 4 GiB"))?;
            slots.push(Slot { offset: at, len });
            buffer.extend_from_slice(body);
            at += u64::from(len);
        }
        if buffer.is_empty() {
            return Ok((slots, *end));
        }
        self.file
            .write_all_at(&buffer, *end)
            .map_err(io_error(&self.path, "appending"))?;
        self.file.sync_data().map_err(io_error(&self.path, "syncing"))?;
        *end = at;
        Ok((slots, at))
    }

    /// Takes back an append whose rows did not commit, so its bytes are not left behind.
    pub fn rewind(&self, to: u64) -> Result<()> {
        let mut end = self.end();
        if to >= *end {
            return Ok(());
        }
        self.file
            .set_len(to)
            .map_err(io_error(&self.path, "truncating"))?;
        *end = to;
        Ok(())
    }

    /// Where the next append starts (the committed end, between writes).
    pub fn len(&self) -> u64 {
        *self.end()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn read(&self, slot: Slot) -> Result<Vec<u8>> {
        if slot.end() > self.len() {
            return Err(AgentError::CorruptRecord {
                key: self.path.display().to_string(),
                reason: format!(
                    "a body at {}..{} lies past the end of the file",
                    slot.offset,
                    slot.end()
                ),
            });
        }
        let mut body = vec![0u8; slot.len as usize];
        self.file
            .read_exact_at(&mut body, slot.offset)
            .map_err(io_error(&self.path, "reading"))?;
        match &self.sealer {
            Some(sealer) => {
                sealer
                    .open(&body, &seal_context(slot.offset))
                    .map_err(|e| AgentError::CorruptRecord {
                        key: format!("{} (the body at byte {})", self.path.display(), slot.offset),
                        reason: e.to_string(),
                    })
            }
            None => Ok(body),
        }
    }

    /// Erases the bodies in `slots` from disk and syncs: the file system frees the blocks they
    /// fill and zeroes the rest. Where it cannot punch holes, zeros are written instead.
    pub fn erase(&self, slots: &[Slot]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let block = self
            .file
            .metadata()
            .map_err(io_error(&self.path, "reading its block size"))?
            .blksize()
            .max(512);
        let mut scratch = vec![0u8; block as usize];
        for slot in slots {
            if self.punch_hole(slot.offset, u64::from(slot.len)) {
                self.free_zeroed_edges(*slot, block, &mut scratch);
            } else {
                self.file
                    .write_all_at(&vec![0u8; slot.len as usize], slot.offset)
                    .map_err(io_error(&self.path, "erasing"))?;
            }
        }
        self.file.sync_data().map_err(io_error(&self.path, "syncing"))
    }

    /// A hole frees only the blocks it covers whole, so a block two erased bodies shared would
    /// stay allocated (zeroed) for good, and a quota could never win back ~one block per body.
    /// Frees the blocks at the slot's ends once they read all zeros: punching zeros loses
    /// nothing, whatever body they belong to. The block an append may still be filling is
    /// left alone, under the lock appends take.
    fn free_zeroed_edges(&self, slot: Slot, block: u64, bytes: &mut [u8]) {
        if slot.len == 0 {
            return;
        }
        let end = self.end();
        let first = slot.offset / block * block;
        let last = (slot.end() - 1) / block * block;
        let edges = if first == last {
            vec![first]
        } else {
            vec![first, last]
        };
        for start in edges {
            if start + block > *end {
                continue;
            }
            let zeroed = self.file.read_exact_at(bytes, start).is_ok() && bytes.iter().all(|b| *b == 0);
            if zeroed {
                self.punch_hole(start, block);
            }
        }
    }

    fn punch_hole(&self, offset: u64, len: u64) -> bool {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return false;
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.file` and open for writing for the whole call.
        let done = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        done == 0
    }

    /// Bytes the file takes on disk (holes punched by deletes are not counted).
    pub fn disk_bytes(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.blocks() * 512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_erase_and_uncommitted_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bodies");
        let file = BodyFile::open(&path, 0, None).unwrap();
        let marker = b"MARKER-one-of-a-kind".repeat(300);
        let (slots, end) = file.append(&[b"first", &marker, b"third"]).unwrap();
        assert_eq!(end, 10 + marker.len() as u64);
        assert_eq!(file.read(slots[1]).unwrap(), marker);
        file.erase(&[slots[1]]).unwrap();
        assert_eq!(file.read(slots[1]).unwrap(), vec![0; marker.len()]);
        assert_eq!(file.read(slots[2]).unwrap(), b"third");
        let raw = std::fs::read(&path).unwrap();
        assert!(
            !raw.windows(6).any(|w| w == b"MARKER"),
            "erased bytes left on disk"
        );

        // An append whose rows never committed: the file is cut back at the next open.
        file.append(&[b"never committed"]).unwrap();
        drop(file);
        let file = BodyFile::open(&path, end, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        assert_eq!(file.read(slots[0]).unwrap(), b"first");

        // A slot past the end, and a file shorter than the store says, are errors.
        assert!(file.read(Slot { offset: end, len: 1 }).is_err());
        drop(file);
        let error = BodyFile::open(&path, end + 1, None).err().unwrap().to_string();
        assert!(error.contains("truncated or replaced"), "{error}");
    }

    /// Bodies that share blocks: once every body in a block is erased the block is freed,
    /// while a block a live body still uses keeps its bytes.
    #[test]
    fn erasing_neighbours_frees_the_blocks_they_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bodies");
        let file = BodyFile::open(&path, 0, None).unwrap();
        let block = std::fs::metadata(&path).unwrap().blksize();
        let body = vec![0xAB; block as usize + block as usize / 4];
        let bodies: Vec<&[u8]> = (0..8).map(|_| body.as_slice()).collect();
        let (slots, _) = file.append(&bodies).unwrap();
        let full = file.disk_bytes();
        file.erase(&slots[..7]).unwrap();
        // Only the blocks under the last body (at most three) stay.
        assert!(
            file.disk_bytes() <= 3 * block,
            "{} bytes allocated after erasing 7 of 8 bodies ({full} before, blocks of {block})",
            file.disk_bytes()
        );
        assert_eq!(file.read(slots[7]).unwrap(), body);
    }

    #[test]
    fn slots_encode_round_trip() {
        let slot = Slot {
            offset: 1 << 40,
            len: 77,
        };
        assert_eq!(Slot::decode(&slot.encode()), Some(slot));
        assert_eq!(Slot::decode(&[0; 11]), None);
    }
}

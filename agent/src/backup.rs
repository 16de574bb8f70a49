//! The backup file: one agent's swarm state and memory bodies at one instant, self-checking.
//!
//! Layout: the magic `MURMURBK`, a format version (u32, big endian), then frames (a tag byte,
//! a u32 big-endian length, the payload) and last the SHA-256 of every byte before it. Frames:
//! one header (who wrote it, how many shards), every sync change (shard then the change's
//! bytes), every live memory's signed record, and an end frame with the counts. The identity
//! key is never in a backup: whoever holds one cannot sign as its device.
//!
//! A reader checks the digest over the whole file before it trusts a byte of it, so a
//! truncated, damaged or foreign file is refused before anything is restored.
//!
//! An agent encrypted at rest writes format 2: the same frames, plus one after the header that
//! names the key's fingerprint, and every change and body payload (the shard included) sealed
//! under the store's key, bound to its position in the file so no frame can be moved or
//! dropped unseen; a sealed copy of the end counts, bound to the position after the last
//! item, closes them, so neither can the tail be cut. Header, end frame and digest stay clear:
//! the structure of a sealed backup can be checked without the key, its contents read only
//! with it.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
    sync::Arc,
};

use murmur_at_rest::Sealer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

const MAGIC: &[u8; 8] = b"MURMURBK";
pub const FORMAT_VERSION: u32 = 1;
/// Format 1 with sealed payloads (module docs).
pub const SEALED_FORMAT_VERSION: u32 = 2;
const DIGEST_BYTES: u64 = 32;
/// No frame of a valid backup comes near this: a change or a record is bounded by the sync
/// limits, far below. A length past it is damage, refused before anything is allocated.
const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

const TAG_HEADER: u8 = 1;
const TAG_CHANGE: u8 = 2;
const TAG_BODY: u8 = 3;
const TAG_END: u8 = 4;
const TAG_SEALED_BY: u8 = 5;
const TAG_SEALED_END: u8 = 6;

/// What a sealed payload is bound to, besides its position among the sealed frames.
const SEAL_CONTEXT: &[u8] = b"murmur backup frame v2 ";

fn frame_context(position: u64) -> Vec<u8> {
    [SEAL_CONTEXT, &position.to_be_bytes()].concat()
}

#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Murmur backup (no MURMURBK magic)")]
    NotABackup { path: String },
    #[error(
        "{path} is a backup of format {found}; this agent reads formats {FORMAT_VERSION} and {SEALED_FORMAT_VERSION}"
    )]
    Version { path: String, found: u32 },
    #[error(
        "{path} is encrypted with key {fingerprint}: give that key (--backup-key-file, or the store's \
         --encryption-key-file when it is the same)"
    )]
    KeyMissing { path: String, fingerprint: String },
    #[error(
        "{path} is encrypted with key {fingerprint}, not with the key given ({given}): give the key it \
         was sealed under with --backup-key-file"
    )]
    WrongKey {
        path: String,
        fingerprint: String,
        given: String,
    },
    #[error("{path} is damaged at byte {offset}: {reason}")]
    Damaged {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("{path} is damaged: its SHA-256 is {actual}, the file says {recorded}")]
    Checksum {
        path: String,
        actual: String,
        recorded: String,
    },
}

type Result<T> = std::result::Result<T, BackupError>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

/// Who wrote a backup and for which sync layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The author key (hex) of the agent backed up: only its identity key restores it.
    pub author: String,
    pub shards: u16,
    pub created_ms: u64,
    pub model_id: String,
}

/// What a complete backup holds, as its end frame and digest say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub header: Header,
    /// The fingerprint of the key the contents are sealed under; none in a clear backup.
    pub sealed_by: Option<String>,
    pub changes: u64,
    pub bodies: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
struct End {
    changes: u64,
    bodies: u64,
}

/// One item of a backup, in file order: every change comes before every body.
#[derive(Debug)]
pub enum Item {
    Change { shard: u16, bytes: Vec<u8> },
    Body(Vec<u8>),
}

/// Writes a backup frame by frame, hashing as it goes.
pub struct Writer<W: Write> {
    out: W,
    hasher: Sha256,
    header: Header,
    sealer: Option<Arc<Sealer>>,
    changes: u64,
    bodies: u64,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    /// A backup whose contents are sealed under `sealer`'s key when one is given.
    pub fn new(out: W, header: Header, sealer: Option<Arc<Sealer>>) -> Result<Self> {
        let version = match sealer {
            Some(_) => SEALED_FORMAT_VERSION,
            None => FORMAT_VERSION,
        };
        let mut writer = Self {
            out,
            hasher: Sha256::new(),
            header: header.clone(),
            sealer,
            changes: 0,
            bodies: 0,
            bytes: 0,
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&version.to_be_bytes());
        writer.raw(&start)?;
        writer.frame(TAG_HEADER, &[&encode(&header)?])?;
        if let Some(fingerprint) = writer.sealer.as_ref().map(|s| s.fingerprint().to_string()) {
            writer.frame(TAG_SEALED_BY, &[fingerprint.as_bytes()])?;
        }
        Ok(writer)
    }

    pub fn change(&mut self, shard: u16, change: &[u8]) -> Result<()> {
        if self.bodies > 0 {
            return Err(BackupError::Damaged {
                path: "(being written)".into(),
                offset: self.bytes,
                reason: "a change after a body".into(),
            });
        }
        self.content(TAG_CHANGE, &[&shard.to_be_bytes(), change])?;
        self.changes += 1;
        Ok(())
    }

    pub fn body(&mut self, record: &[u8]) -> Result<()> {
        self.content(TAG_BODY, &[record])?;
        self.bodies += 1;
        Ok(())
    }

    /// A change or body frame, its payload sealed when the backup is.
    fn content(&mut self, tag: u8, parts: &[&[u8]]) -> Result<()> {
        let Some(sealer) = &self.sealer else {
            return self.frame(tag, parts);
        };
        let position = self.changes + self.bodies;
        let sealed = sealer
            .seal(&parts.concat(), &frame_context(position))
            .map_err(|e| BackupError::Damaged {
                path: "(being written)".into(),
                offset: self.bytes,
                reason: format!("sealing a frame: {e}"),
            })?;
        self.frame(tag, &[&sealed])
    }

    /// Writes the end frame and the digest; returns the writer's output and what it holds.
    pub fn finish(mut self) -> Result<(W, Summary)> {
        let end = encode(&End {
            changes: self.changes,
            bodies: self.bodies,
        })?;
        if self.sealer.is_some() {
            self.content(TAG_SEALED_END, &[&end])?;
        }
        self.frame(TAG_END, &[&end])?;
        let digest = self.hasher.finalize_reset();
        self.out.write_all(&digest).map_err(io("writing the backup"))?;
        self.out.flush().map_err(io("writing the backup"))?;
        let summary = Summary {
            header: self.header,
            sealed_by: self.sealer.as_ref().map(|s| s.fingerprint().to_string()),
            changes: self.changes,
            bodies: self.bodies,
            bytes: self.bytes + DIGEST_BYTES,
            sha256: hex::encode(digest),
        };
        Ok((self.out, summary))
    }

    fn frame(&mut self, tag: u8, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_FRAME_BYTES)
            .ok_or_else(|| BackupError::Damaged {
                path: "(being written)".into(),
                offset: self.bytes,
                reason: format!("a frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
            })?;
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.raw(&head)?;
        for part in parts {
            self.raw(part)?;
        }
        Ok(())
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(io("writing the backup"))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| BackupError::Damaged {
        path: "(being written)".into(),
        offset: 0,
        reason: format!("encoding: {e}"),
    })
}

/// Checks a backup file whole (structure, counts and digest) without applying anything; a
/// sealed backup's contents are not opened, so no key is needed.
pub fn verify_file(path: &Path) -> Result<Summary> {
    read(path, Contents::Skip, |_| Ok(()))
}

/// Refuses `sealer` (or its absence) unless it opens the backup `summary` describes.
pub fn check_key(path: &Path, summary: &Summary, sealer: Option<&Sealer>) -> Result<()> {
    let Some(fingerprint) = &summary.sealed_by else {
        return Ok(());
    };
    let path = path.display().to_string();
    match sealer {
        None => Err(BackupError::KeyMissing {
            path,
            fingerprint: fingerprint.clone(),
        }),
        Some(sealer) if sealer.fingerprint() != fingerprint => Err(BackupError::WrongKey {
            path,
            fingerprint: fingerprint.clone(),
            given: sealer.fingerprint().to_string(),
        }),
        Some(_) => Ok(()),
    }
}

/// Reads a backup and hands each item to `apply`, in order; then checks the end frame and the
/// digest. Callers that must not act on a damaged file run [`verify_file`] first: the digest
/// is known only at the end. A sealed backup needs the key it was sealed under, refused
/// before any item otherwise. `apply`'s errors stop the read and come back as they are.
pub fn read_file<E: From<BackupError>>(
    path: &Path,
    sealer: Option<&Sealer>,
    apply: impl FnMut(Item) -> std::result::Result<(), E>,
) -> std::result::Result<Summary, E> {
    read(path, Contents::Open(sealer), apply)
}

/// What a read does with the change and body frames.
#[derive(Clone, Copy)]
enum Contents<'a> {
    /// Counts them: the structure and digest are all that is checked.
    Skip,
    /// Opens (where sealed) and parses them, for `apply`.
    Open(Option<&'a Sealer>),
}

fn read<E: From<BackupError>>(
    path: &Path,
    contents: Contents<'_>,
    mut apply: impl FnMut(Item) -> std::result::Result<(), E>,
) -> std::result::Result<Summary, E> {
    let shown = path.display().to_string();
    let file = File::open(path).map_err(io(format!("opening {shown}")))?;
    let len = file
        .metadata()
        .map_err(io(format!("reading the size of {shown}")))?
        .len();
    let mut reader = Reader {
        input: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        offset: 0,
        path: shown.clone(),
    };
    let damaged = |offset: u64, reason: String| BackupError::Damaged {
        path: shown.clone(),
        offset,
        reason,
    };
    if len < (MAGIC.len() as u64) + 4 + DIGEST_BYTES {
        return Err(BackupError::NotABackup { path: shown.clone() }.into());
    }
    let body_end = len - DIGEST_BYTES;
    let mut start = [0u8; 12];
    reader.read(&mut start)?;
    if &start[..8] != MAGIC {
        return Err(BackupError::NotABackup { path: shown.clone() }.into());
    }
    let version = u32::from_be_bytes([start[8], start[9], start[10], start[11]]);
    if version != FORMAT_VERSION && version != SEALED_FORMAT_VERSION {
        return Err(BackupError::Version {
            path: shown.clone(),
            found: version,
        }
        .into());
    }
    let (tag, payload) = reader.frame(body_end)?;
    if tag != TAG_HEADER {
        return Err(damaged(12, format!("frame of kind {tag} where the header belongs")).into());
    }
    let header: Header = postcard::from_bytes(&payload).map_err(|e| damaged(12, format!("header: {e}")))?;
    let sealed_by = if version == SEALED_FORMAT_VERSION {
        let at = reader.offset;
        let (tag, payload) = reader.frame(body_end)?;
        if tag != TAG_SEALED_BY {
            return Err(damaged(
                at,
                format!("frame of kind {tag} where the key's fingerprint belongs"),
            )
            .into());
        }
        let fingerprint = String::from_utf8(payload)
            .map_err(|_| damaged(at, "the key's fingerprint is not text".into()))?;
        Some(fingerprint)
    } else {
        None
    };
    let mut summary = Summary {
        header,
        sealed_by,
        changes: 0,
        bodies: 0,
        bytes: len,
        sha256: String::new(),
    };
    // Items go to `apply` only when opening; a sealed payload is opened only then.
    let (deliver, opener) = match contents {
        Contents::Skip => (false, None),
        Contents::Open(sealer) => {
            check_key(path, &summary, sealer)?;
            (true, sealer.filter(|_| summary.sealed_by.is_some()))
        }
    };
    let readable = deliver || summary.sealed_by.is_none();
    let header = &summary.header;
    let (mut changes, mut bodies) = (0u64, 0u64);
    let mut sealed_end: Option<(u64, Vec<u8>)> = None;
    let end = loop {
        if reader.offset >= body_end {
            return Err(damaged(reader.offset, "the file ends before its end frame".into()).into());
        }
        let at = reader.offset;
        let (tag, payload) = reader.frame(body_end)?;
        let payload = match (tag, opener) {
            (TAG_CHANGE | TAG_BODY | TAG_SEALED_END, Some(sealer)) => sealer
                .open(&payload, &frame_context(changes + bodies))
                .map_err(|_| {
                    damaged(
                        at,
                        "a sealed frame does not open: damaged, moved or from another backup".into(),
                    )
                })?,
            _ => payload,
        };
        if sealed_end.is_some() && tag != TAG_END {
            return Err(damaged(at, format!("frame of kind {tag} after the sealed end")).into());
        }
        match tag {
            TAG_CHANGE => {
                if bodies > 0 {
                    return Err(damaged(at, "a change after a body".into()).into());
                }
                if !readable {
                    changes += 1;
                    continue;
                }
                let Some((shard, bytes)) = payload.split_first_chunk::<2>() else {
                    return Err(damaged(at, "a change frame without its shard".into()).into());
                };
                if u16::from_be_bytes(*shard) >= header.shards.max(1) {
                    return Err(damaged(
                        at,
                        format!("shard {} of {}", u16::from_be_bytes(*shard), header.shards),
                    )
                    .into());
                }
                changes += 1;
                if deliver {
                    apply(Item::Change {
                        shard: u16::from_be_bytes(*shard),
                        bytes: bytes.to_vec(),
                    })?;
                }
            }
            TAG_BODY => {
                bodies += 1;
                if deliver {
                    apply(Item::Body(payload))?;
                }
            }
            TAG_SEALED_END if summary.sealed_by.is_some() => {
                sealed_end = Some((at, payload));
            }
            TAG_END => {
                let end: End =
                    postcard::from_bytes(&payload).map_err(|e| damaged(at, format!("end frame: {e}")))?;
                if summary.sealed_by.is_some() {
                    let Some((sealed_at, sealed)) = sealed_end else {
                        return Err(damaged(at, "a sealed backup without its sealed end".into()).into());
                    };
                    // Opened only when reading contents; its counts must be the clear ones.
                    if readable && sealed != payload {
                        return Err(
                            damaged(sealed_at, "the sealed end differs from the end frame".into()).into(),
                        );
                    }
                }
                break end;
            }
            other => return Err(damaged(at, format!("unknown frame kind {other}")).into()),
        }
    };
    if reader.offset != body_end {
        return Err(damaged(reader.offset, "bytes after the end frame".into()).into());
    }
    if end.changes != changes || end.bodies != bodies {
        return Err(damaged(
            reader.offset,
            format!(
                "the end frame counts {} changes and {} bodies, the file holds {changes} and {bodies}",
                end.changes, end.bodies
            ),
        )
        .into());
    }
    let actual = hex::encode(reader.hasher.finalize_reset());
    let mut recorded = [0u8; DIGEST_BYTES as usize];
    reader
        .input
        .read_exact(&mut recorded)
        .map_err(io(format!("reading {}", reader.path)))?;
    let recorded = hex::encode(recorded);
    if actual != recorded {
        return Err(BackupError::Checksum {
            path: reader.path,
            actual,
            recorded,
        }
        .into());
    }
    summary.changes = changes;
    summary.bodies = bodies;
    summary.sha256 = actual;
    Ok(summary)
}

struct Reader {
    input: BufReader<File>,
    hasher: Sha256,
    offset: u64,
    path: String,
}

impl Reader {
    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input
            .read_exact(buf)
            .map_err(io(format!("reading {} at byte {}", self.path, self.offset)))?;
        self.hasher.update(&*buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// The next frame, refused when its length runs past `limit` (the digest's start).
    fn frame(&mut self, limit: u64) -> Result<(u8, Vec<u8>)> {
        let at = self.offset;
        if at + 5 > limit {
            return Err(BackupError::Damaged {
                path: self.path.clone(),
                offset: at,
                reason: "a frame cut short".into(),
            });
        }
        let mut head = [0u8; 5];
        self.read(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME_BYTES || self.offset + u64::from(len) > limit {
            return Err(BackupError::Damaged {
                path: self.path.clone(),
                offset: at,
                reason: format!("a frame of {len} bytes runs past the end of the file"),
            });
        }
        let mut payload = vec![0u8; len as usize];
        self.read(&mut payload)?;
        Ok((head[0], payload))
    }
}

/// Creates `path` (never over an existing file) for a backup, buffered.
pub fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            author: "ab".repeat(32),
            shards: 4,
            created_ms: 1,
            model_id: "m".into(),
        }
    }

    fn write_sample(path: &Path) -> Summary {
        write_sample_sealed(path, None)
    }

    fn write_sample_sealed(path: &Path, sealer: Option<Arc<Sealer>>) -> Summary {
        let mut writer = Writer::new(create(path).expect("create"), header(), sealer).expect("writer");
        writer.change(1, b"change one").expect("change");
        writer.change(3, b"change two").expect("change");
        writer.body(b"a body").expect("body");
        let (out, summary) = writer.finish().expect("finish");
        out.into_inner().expect("flush").sync_all().expect("sync");
        summary
    }

    #[test]
    fn a_backup_reads_back_item_for_item() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b");
        let written = write_sample(&path);
        let mut items = Vec::new();
        let read = read_file::<BackupError>(&path, None, |item| {
            items.push(format!("{item:?}"));
            Ok(())
        })
        .expect("read");
        assert_eq!(read, written);
        assert_eq!((read.changes, read.bodies), (2, 1));
        assert_eq!(read.bytes, std::fs::metadata(&path).expect("meta").len());
        assert_eq!(items.len(), 3);
        assert!(items[0].contains("shard: 1"), "{items:?}");
    }

    #[test]
    fn a_sealed_backup_holds_no_clear_content_and_opens_only_under_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b");
        let sealer = Arc::new(Sealer::new(&[9; 32]));
        let written = write_sample_sealed(&path, Some(Arc::clone(&sealer)));
        let bytes = std::fs::read(&path).expect("read");
        for clear in [&b"change one"[..], b"change two", b"a body"] {
            assert!(
                !bytes.windows(clear.len()).any(|w| w == clear),
                "{clear:?} is in the file"
            );
        }
        // Its structure checks without the key; its contents need it.
        let verified = verify_file(&path).expect("verify");
        assert_eq!(verified, written);
        assert_eq!(verified.sealed_by.as_deref(), Some(sealer.fingerprint()));
        let mut items = Vec::new();
        read_file::<BackupError>(&path, Some(&sealer), |item| {
            items.push(format!("{item:?}"));
            Ok(())
        })
        .expect("read");
        assert_eq!(items.len(), 3);
        assert!(items[0].contains("shard: 1"), "{items:?}");
        let none = read_file::<BackupError>(&path, None, |_| panic!("an item without the key"));
        assert!(matches!(none, Err(BackupError::KeyMissing { .. })), "{none:?}");
        let other = Sealer::new(&[8; 32]);
        let wrong = read_file::<BackupError>(&path, Some(&other), |_| panic!("an item under another key"));
        assert!(matches!(wrong, Err(BackupError::WrongKey { .. })), "{wrong:?}");

        // Two sealed frames swapped (lengths equal, so the structure still holds): refused.
        let first = bytes
            .windows(4)
            .position(|w| w == [TAG_CHANGE, 0, 0, 0])
            .expect("a change frame");
        let len = u32::from_be_bytes(bytes[first + 1..first + 5].try_into().expect("len")) as usize;
        let second = first + 5 + len;
        assert_eq!(bytes[second], TAG_CHANGE);
        let mut swapped = bytes.clone();
        swapped[first..second].copy_from_slice(&bytes[second..second + (second - first)]);
        swapped[second..second + (second - first)].copy_from_slice(&bytes[first..second]);
        let body_end = swapped.len() - DIGEST_BYTES as usize;
        let digest = Sha256::digest(&swapped[..body_end]);
        swapped[body_end..].copy_from_slice(&digest);
        let moved = dir.path().join("moved");
        std::fs::write(&moved, &swapped).expect("write");
        verify_file(&moved).expect("the structure is intact");
        let error = read_file::<BackupError>(&moved, Some(&sealer), |_| Ok(())).expect_err("swapped");
        assert!(error.to_string().contains("does not open"), "{error}");

        // The tail cut (the body dropped, the clear end frame and the digest made to agree):
        // the structure holds, the sealed end does not open where it now stands.
        let mut cut = bytes[..12].to_vec();
        let mut at = 12;
        while at < body_end {
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("len")) as usize;
            match bytes[at] {
                TAG_BODY => {}
                TAG_END => {
                    let end = encode(&End {
                        changes: 2,
                        bodies: 0,
                    })
                    .expect("encode");
                    cut.push(TAG_END);
                    cut.extend_from_slice(&(end.len() as u32).to_be_bytes());
                    cut.extend_from_slice(&end);
                }
                _ => cut.extend_from_slice(&bytes[at..at + 5 + len]),
            }
            at += 5 + len;
        }
        let digest = Sha256::digest(&cut);
        cut.extend_from_slice(&digest);
        let shortened = dir.path().join("shortened");
        std::fs::write(&shortened, &cut).expect("write");
        assert_eq!(
            verify_file(&shortened).expect("the structure is intact").bodies,
            0
        );
        let error = read_file::<BackupError>(&shortened, Some(&sealer), |_| Ok(())).expect_err("cut");
        assert!(error.to_string().contains("does not open"), "{error}");
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b");
        write_sample(&path);
        let good = std::fs::read(&path).expect("read");
        let damaged = dir.path().join("d");
        for i in 0..good.len() {
            let mut bytes = good.clone();
            bytes[i] ^= 0x20;
            std::fs::write(&damaged, &bytes).expect("write");
            let error = verify_file(&damaged).expect_err(&format!("byte {i} flipped"));
            assert!(
                error.to_string().contains(&*damaged.display().to_string()),
                "{error}"
            );
        }
        for cut in 0..good.len() {
            std::fs::write(&damaged, &good[..cut]).expect("write");
            verify_file(&damaged).expect_err(&format!("cut at {cut}"));
        }
        assert!(verify_file(&path).is_ok());
    }
}

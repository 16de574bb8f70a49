//! The manager's object storage: where the swarm state lives, in a layout several managers can
//! write at once without coordinating.
//!
//! Layout (under the bucket URL's path; `docs/manager.md` documents it for users):
//! - `murmur.json`: format marker and the swarm's shard count, created once (conditional put).
//! - `v1/changes/<writer>/<seq>.seg`: immutable segments of signed changes and the memory
//!   bodies (signed records) that became visible with them. `<writer>` is a
//!   UUIDv7 made by each manager process at start, `<seq>` counts up from 1; every put is
//!   conditional on the object not existing, so no object is ever overwritten, by this manager
//!   or any other. State = the union of every segment (CRDT merge commutes).
//! - `v1/compacted/<writer>/<seq>.seg`: a segment holding the changes of the segments it
//!   lists (their keys are in its header) and the bodies of their memories not deleted since;
//!   they are deleted only after it is durable, so a deleted body leaves the bucket then.
//! - `v1/analytics/...`: Parquet exports (see `export.rs`).

use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use murmur_sync::SignedChange;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// 2: documents hold entries and segments carry the bodies beside them (sync wire version 2).
const LAYOUT_VERSION: u32 = 2;
const SEGMENT_MAGIC: &[u8; 8] = b"MMSEG02\n";

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("bucket URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("syncing {path} to disk: {source}")]
    Fsync { path: String, source: std::io::Error },
    #[error("the bucket holds a swarm with {found} shards, this manager is configured for {configured}")]
    ShardMismatch { found: u16, configured: u16 },
    #[error("the bucket's layout is version {0}; this manager reads version {LAYOUT_VERSION}")]
    UnknownLayout(u32),
}

#[derive(Debug, Serialize, Deserialize)]
struct LayoutMarker {
    format: String,
    version: u32,
    shards: u16,
}

/// One segment as read back: where it was and what it holds.
#[derive(Debug)]
pub struct Segment {
    pub path: Path,
    pub changes: Vec<(u16, SignedChange)>,
    /// Signed memory records whose entries are in this or an earlier segment.
    pub bodies: Vec<Vec<u8>>,
    /// For compacted segments: the segments whose changes this one includes.
    pub covers: Vec<String>,
}

pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    writer: String,
    next_seq: std::sync::atomic::AtomicU64,
    /// A `file://` bucket: object_store's local store does not fsync, so segments are synced
    /// here before they count as written (power loss, not only a killed process).
    local: bool,
}

impl Bucket {
    /// Opens `url` (`file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…`) with `options`
    /// (object_store keys such as `aws_endpoint`) and any `AWS_*`, `GOOGLE_*`, `AZURE_*`
    /// variables from the environment.
    pub fn open(url: &str, options: &[(String, String)]) -> Result<Self, BucketError> {
        let bad = |reason: String| BucketError::Url {
            url: url.to_owned(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|_| bad("not an absolute file path".into()))?;
            std::fs::create_dir_all(&dir).map_err(|e| bad(format!("creating {}: {e}", dir.display())))?;
        }
        let mut all: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        all.extend(options.iter().cloned());
        let (store, root) = object_store::parse_url_opts(&parsed, all).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::from(store),
            root,
            url: url.to_owned(),
            writer: uuid::Uuid::now_v7().simple().to_string(),
            next_seq: std::sync::atomic::AtomicU64::new(1),
            local: parsed.scheme() == "file",
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn path(&self, relative: &str) -> Path {
        let mut path = self.root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// Creates the layout marker if the bucket is new, or checks it if not.
    pub async fn ensure_layout(&self, shards: u16) -> Result<(), BucketError> {
        let path = self.path("murmur.json");
        let marker = LayoutMarker {
            format: "murmur-bucket".into(),
            version: LAYOUT_VERSION,
            shards,
        };
        let body = serde_json::to_vec_pretty(&marker).map_err(|e| BucketError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        match self.put_new(&path, body.into()).await {
            Ok(()) => return Ok(()),
            Err(BucketError::Store(object_store::Error::AlreadyExists { .. })) => {}
            Err(e) => return Err(e),
        }
        let existing = self.store.get(&path).await?.bytes().await?;
        let found: LayoutMarker = serde_json::from_slice(&existing).map_err(|e| BucketError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if found.format != "murmur-bucket" {
            return Err(BucketError::Corrupt {
                path: path.to_string(),
                reason: format!("format {:?} is not murmur-bucket", found.format),
            });
        }
        if found.version != LAYOUT_VERSION {
            return Err(BucketError::UnknownLayout(found.version));
        }
        if found.shards != shards {
            return Err(BucketError::ShardMismatch {
                found: found.shards,
                configured: shards,
            });
        }
        Ok(())
    }

    /// A conditional put: fails with `AlreadyExists` rather than replace anything.
    pub async fn put_new(&self, path: &Path, body: Bytes) -> Result<(), BucketError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store.put_opts(path, PutPayload::from(body), options).await?;
        Ok(())
    }

    /// Writes `changes` and `bodies` as this manager's next segment; returns its path once
    /// durable.
    pub async fn write_segment(
        &self,
        changes: &[(u16, SignedChange)],
        bodies: &[Vec<u8>],
    ) -> Result<Path, BucketError> {
        self.write_segment_in("changes", changes, bodies, &[]).await
    }

    /// Writes a segment that holds the changes (and the kept bodies) of `covers` (compaction).
    pub async fn write_compacted(
        &self,
        changes: &[(u16, SignedChange)],
        bodies: &[Vec<u8>],
        covers: &[String],
    ) -> Result<Path, BucketError> {
        self.write_segment_in("compacted", changes, bodies, covers).await
    }

    async fn write_segment_in(
        &self,
        area: &str,
        changes: &[(u16, SignedChange)],
        bodies: &[Vec<u8>],
        covers: &[String],
    ) -> Result<Path, BucketError> {
        let body = encode_segment(changes, bodies, covers);
        loop {
            let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self.path(&format!("v1/{area}/{}/{seq:012}.seg", self.writer));
            match self.put_new(&path, body.clone().into()).await {
                Ok(()) => {
                    self.sync_local(&path).await?;
                    return Ok(path);
                }
                // Only if a clone of this process reused our writer id: never overwrite, move on.
                Err(BucketError::Store(object_store::Error::AlreadyExists { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// For a local bucket: fsync the object's file and its directory.
    async fn sync_local(&self, path: &Path) -> Result<(), BucketError> {
        if !self.local {
            return Ok(());
        }
        let file = std::path::PathBuf::from("/").join(path.as_ref());
        let synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            std::io::Result::Ok(())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        synced.map_err(|source| BucketError::Fsync {
            path: path.to_string(),
            source,
        })
    }

    /// Every segment path in the bucket (both areas), sorted.
    pub async fn list_segments(&self) -> Result<BTreeSet<String>, BucketError> {
        let mut out = BTreeSet::new();
        for area in ["changes", "compacted"] {
            let prefix = self.path(&format!("v1/{area}"));
            let mut listing = self.store.list(Some(&prefix));
            while let Some(meta) = listing.try_next().await? {
                if meta.location.as_ref().ends_with(".seg") {
                    out.insert(meta.location.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Reads one segment; `Ok(None)` when it was deleted meanwhile (compacted by a peer).
    pub async fn read_segment(&self, path: &str) -> Result<Option<Segment>, BucketError> {
        let location = Path::from(path);
        let bytes = match self.store.get(&location).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Decoded {
            changes,
            bodies,
            covers,
        } = decode_segment(&bytes).map_err(|reason| BucketError::Corrupt {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Some(Segment {
            path: location,
            changes,
            bodies,
            covers,
        }))
    }

    pub async fn delete(&self, path: &str) -> Result<(), BucketError> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `magic, u32 covers, (u16 len, key)*, u32 changes, (u16 shard, u32 len, change)*,
/// u32 bodies, (u32 len, record)*, sha256`.
fn encode_segment(changes: &[(u16, SignedChange)], bodies: &[Vec<u8>], covers: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + changes.iter().map(|(_, c)| c.bytes.len() + 70).sum::<usize>()
            + bodies.iter().map(|b| b.len() + 4).sum::<usize>(),
    );
    out.extend_from_slice(SEGMENT_MAGIC);
    out.extend_from_slice(&(covers.len() as u32).to_be_bytes());
    for key in covers {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
    }
    out.extend_from_slice(&(changes.len() as u32).to_be_bytes());
    for (shard, change) in changes {
        let encoded = change.encode();
        out.extend_from_slice(&shard.to_be_bytes());
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
    }
    out.extend_from_slice(&(bodies.len() as u32).to_be_bytes());
    for body in bodies {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

#[derive(Debug)]
struct Decoded {
    changes: Vec<(u16, SignedChange)>,
    bodies: Vec<Vec<u8>>,
    covers: Vec<String>,
}

fn decode_segment(bytes: &[u8]) -> Result<Decoded, String> {
    if bytes.len() < SEGMENT_MAGIC.len() + 8 + 32 || &bytes[..8] != SEGMENT_MAGIC {
        return Err("not a murmur segment".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("checksum mismatch (truncated or altered)".into());
    }
    let mut reader = Reader { bytes: body, at: 8 };
    let cover_count = reader.u32()? as usize;
    let mut covers = Vec::with_capacity(cover_count.min(1 << 16));
    for _ in 0..cover_count {
        let len = reader.u16()? as usize;
        let key = std::str::from_utf8(reader.take(len)?).map_err(|_| "covered key is not UTF-8")?;
        covers.push(key.to_owned());
    }
    let count = reader.u32()? as usize;
    let mut changes = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let shard = reader.u16()?;
        let len = reader.u32()? as usize;
        let change = SignedChange::decode(reader.take(len)?).map_err(|e| e.to_string())?;
        changes.push((shard, change));
    }
    let count = reader.u32()? as usize;
    let mut bodies = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let len = reader.u32()? as usize;
        bodies.push(reader.take(len)?.to_vec());
    }
    if reader.at != body.len() {
        return Err("trailing bytes".into());
    }
    Ok(Decoded {
        changes,
        bodies,
        covers,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8) -> (u16, SignedChange) {
        (
            n as u16,
            SignedChange {
                bytes: vec![n; 10 + n as usize],
                signature: [n; 64],
            },
        )
    }

    #[test]
    fn segments_round_trip_and_damage_is_detected() {
        let changes = vec![change(1), change(2)];
        let covers = vec!["v1/changes/a/000000000001.seg".to_owned()];
        let bodies = vec![vec![7u8; 33], Vec::new(), vec![9u8; 2]];
        let bytes = encode_segment(&changes, &bodies, &covers);
        let back = decode_segment(&bytes).unwrap();
        assert_eq!(back.changes, changes);
        assert_eq!(back.bodies, bodies);
        assert_eq!(back.covers, covers);
        assert!(decode_segment(&bytes[..bytes.len() - 1]).is_err());
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode_segment(&flipped).unwrap_err().contains("checksum"));
        assert!(decode_segment(b"something else entirely, long enough to pass").is_err());
    }

    #[tokio::test]
    async fn writers_never_overwrite_and_the_marker_guards_the_swarm() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let a = Bucket::open(&url, &[]).unwrap();
        let b = Bucket::open(&url, &[]).unwrap();
        a.ensure_layout(64).await.unwrap();
        b.ensure_layout(64).await.unwrap();
        assert!(matches!(
            b.ensure_layout(8).await,
            Err(BucketError::ShardMismatch {
                found: 64,
                configured: 8
            })
        ));
        let pa = a.write_segment(&[change(1)], &[]).await.unwrap();
        let pb = b.write_segment(&[change(2)], &[vec![1, 2, 3]]).await.unwrap();
        assert_ne!(pa, pb);
        let listed = a.list_segments().await.unwrap();
        assert_eq!(listed.len(), 2);
        for path in &listed {
            assert_eq!(a.read_segment(path).await.unwrap().unwrap().changes.len(), 1);
        }
        assert!(matches!(
            a.put_new(&pa, Bytes::from_static(b"x")).await,
            Err(BucketError::Store(object_store::Error::AlreadyExists { .. }))
        ));
        a.delete(pa.as_ref()).await.unwrap();
        assert!(a.read_segment(pa.as_ref()).await.unwrap().is_none());
    }
}

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
//!
//! With encryption at rest on, every segment is sealed whole (murmur-at-rest) and the marker
//! names the key's fingerprint, so a manager with no key or another key is refused before it
//! reads anything; the exports use Parquet's own encryption (see `export.rs`).

use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use murmur_at_rest::Sealer;
use murmur_sync::SignedChange;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path};
use serde::{Deserialize, Serialize};

use crate::segment::{self, SegmentContent};

/// 2: documents hold entries and segments carry the bodies beside them (sync wire version 2).
const LAYOUT_VERSION: u32 = 2;

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
    #[error(transparent)]
    TooLarge(#[from] segment::TooLarge),
    #[error("the bucket's layout is version {0}; this manager reads version {LAYOUT_VERSION}")]
    UnknownLayout(u32),
    #[error(
        "the bucket is encrypted (key {fingerprint}) and this manager has no encryption key: \
         set [encryption] key_file, --encryption-key-file or MURMUR_ENCRYPTION_KEY"
    )]
    KeyMissing { fingerprint: String },
    #[error(
        "the bucket is encrypted with key {expected}, this manager's key is {found}: \
         start it with the key the bucket was written with"
    )]
    WrongKey { expected: String, found: String },
    #[error(
        "the bucket was written without encryption: an encrypted manager does not mix into it; \
         copy it into a new bucket with `murmur-manager copy-bucket` under the key"
    )]
    Cleartext,
    #[error("{path}: {source}")]
    Sealed {
        path: String,
        #[source]
        source: murmur_at_rest::AtRestError,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct LayoutMarker {
    format: String,
    version: u32,
    shards: u16,
    /// Fingerprint of the key the segments are sealed with; absent: cleartext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_rest_key: Option<String>,
}

/// What a sealed segment is bound to: a sealed blob of another kind does not open as one.
const SEGMENT_CONTEXT: &[u8] = b"murmur bucket segment v1";

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
    sealer: Option<Arc<Sealer>>,
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
            sealer: None,
        })
    }

    /// Seals every segment this bucket writes, and opens those it reads, with `sealer`.
    pub fn with_sealer(mut self, sealer: Option<Sealer>) -> Self {
        self.sealer = sealer.map(Arc::new);
        self
    }

    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
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
            at_rest_key: self.sealer().map(|s| s.fingerprint().to_owned()),
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
        match (found.at_rest_key, self.sealer()) {
            (None, None) => Ok(()),
            (Some(expected), Some(sealer)) if expected == sealer.fingerprint() => Ok(()),
            (Some(expected), Some(sealer)) => Err(BucketError::WrongKey {
                expected,
                found: sealer.fingerprint().to_owned(),
            }),
            (Some(fingerprint), None) => Err(BucketError::KeyMissing { fingerprint }),
            (None, Some(_)) => Err(BucketError::Cleartext),
        }
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
        let body = self.encode_segment(changes, bodies, covers)?;
        loop {
            let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = self.path(&format!("v1/{area}/{}/{seq:012}.seg", self.writer));
            match self.put_new(&path, body.clone()).await {
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

    /// A segment's bytes as this bucket stores them: sealed if it has a key.
    fn encode_segment(
        &self,
        changes: &[(u16, SignedChange)],
        bodies: &[Vec<u8>],
        covers: &[String],
    ) -> Result<Bytes, BucketError> {
        let body = segment::encode(changes, bodies, covers)?;
        match self.sealer() {
            Some(sealer) => sealer
                .seal(&body, SEGMENT_CONTEXT)
                .map(Bytes::from)
                .map_err(|source| BucketError::Sealed {
                    path: self.url.clone(),
                    source,
                }),
            None => Ok(Bytes::from(body)),
        }
    }

    /// `path` (a key in this bucket) relative to the bucket's root.
    fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        path.strip_prefix(self.root.as_ref())
            .map(|rest| rest.trim_start_matches('/'))
    }

    /// Writes `segment`, read from `source`, at the same place under this bucket's root and
    /// sealed (or not) as this bucket seals; what it covers is renamed the same way. Returns
    /// false if the target already had it (a copy resumed).
    pub async fn copy_segment(&self, source: &Bucket, segment: &Segment) -> Result<bool, BucketError> {
        let outside = |path: &str| BucketError::Corrupt {
            path: path.to_owned(),
            reason: format!("not under the bucket's root {}", source.root),
        };
        let path = segment.path.as_ref();
        let relative = source.relative(path).ok_or_else(|| outside(path))?;
        let covers = segment
            .covers
            .iter()
            .map(|c| {
                Ok(self
                    .path(source.relative(c).ok_or_else(|| outside(c))?)
                    .to_string())
            })
            .collect::<Result<Vec<_>, BucketError>>()?;
        let body = self.encode_segment(&segment.changes, &segment.bodies, &covers)?;
        let target = self.path(relative);
        match self.put_new(&target, body).await {
            Ok(()) => {
                self.sync_local(&target).await?;
                Ok(true)
            }
            Err(BucketError::Store(
                object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
            )) => Ok(false),
            Err(e) => Err(e),
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
        let opened;
        let bytes = match self.sealer() {
            Some(sealer) => {
                // The marker has vouched for the key, so what does not open is damage.
                opened = sealer
                    .open(&bytes, SEGMENT_CONTEXT)
                    .map_err(|source| BucketError::Corrupt {
                        path: path.to_owned(),
                        reason: source.to_string(),
                    })?;
                &opened[..]
            }
            None => &bytes[..],
        };
        let SegmentContent {
            changes,
            bodies,
            covers,
        } = segment::decode(bytes).map_err(|reason| BucketError::Corrupt {
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

    #[tokio::test]
    async fn an_encrypted_bucket_opens_only_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let key = || Some(Sealer::new(&[5; 32]));
        let sealed = Bucket::open(&url, &[]).unwrap().with_sealer(key());
        sealed.ensure_layout(64).await.unwrap();
        let marker = b"a body no one may read from the disk";
        let path = sealed
            .write_segment(&[change(3)], &[marker.to_vec()])
            .await
            .unwrap();
        let raw = std::fs::read(std::path::PathBuf::from("/").join(path.as_ref())).unwrap();
        assert!(!raw.windows(marker.len()).any(|w| w == marker));
        let back = sealed.read_segment(path.as_ref()).await.unwrap().unwrap();
        assert_eq!(back.bodies, vec![marker.to_vec()]);
        assert_eq!(back.changes, vec![change(3)]);

        let again = Bucket::open(&url, &[]).unwrap().with_sealer(key());
        again.ensure_layout(64).await.unwrap();
        let keyless = Bucket::open(&url, &[]).unwrap();
        assert!(matches!(
            keyless.ensure_layout(64).await,
            Err(BucketError::KeyMissing { .. })
        ));
        let other = Bucket::open(&url, &[])
            .unwrap()
            .with_sealer(Some(Sealer::new(&[6; 32])));
        assert!(matches!(
            other.ensure_layout(64).await,
            Err(BucketError::WrongKey { .. })
        ));
        assert!(matches!(
            other.read_segment(path.as_ref()).await,
            Err(BucketError::Corrupt { .. })
        ));

        let clear_dir = tempfile::tempdir().unwrap();
        let clear_url = format!("file://{}", clear_dir.path().display());
        Bucket::open(&clear_url, &[])
            .unwrap()
            .ensure_layout(64)
            .await
            .unwrap();
        let refused = Bucket::open(&clear_url, &[]).unwrap().with_sealer(key());
        assert!(matches!(
            refused.ensure_layout(64).await,
            Err(BucketError::Cleartext)
        ));
    }
}

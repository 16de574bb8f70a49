//! The ed25519 key each end of an uplink keeps on disk: made on first start, then reused.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use ed25519_dalek::SigningKey;

/// Reads the 32-byte secret at `path`, or makes one (owner-only, written atomically) if there
/// is none. A file of any other size is an error, never silently replaced.
pub fn load_or_create_key(path: &Path) -> std::io::Result<(SigningKey, bool)> {
    match fs::read(path) {
        Ok(bytes) => {
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                std::io::Error::other(format!(
                    "key file {} is {} bytes, expected 32; restore it from a backup or remove it to start with a new identity",
                    path.display(),
                    bytes.len()
                ))
            })?;
            Ok((SigningKey::from_bytes(&secret), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
            write_atomically(path, &secret, 0o600)?;
            Ok((SigningKey::from_bytes(&secret), true))
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("reading key file {}: {e}", path.display()),
        )),
    }
}

/// Temp file beside `path`, fsync, rename, fsync the directory: a crash leaves old or new.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

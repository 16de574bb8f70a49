//! Writing small files so that a crash leaves either the old contents or the new, never a mix.

use std::{fs, io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use crate::error::{AgentError, Result};

/// Writes `bytes` to a temp file beside `path` (created with `mode`), fsyncs it, renames it over
/// `path` and fsyncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let context = || format!("writing {}", path.display());
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(AgentError::io(context()))?;
    file.write_all(bytes).map_err(AgentError::io(context()))?;
    file.sync_all().map_err(AgentError::io(context()))?;
    fs::rename(&tmp, path).map_err(AgentError::io(context()))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = fs::File::open(dir)
    {
        // Makes the rename durable; if this fails the old file is what a crash leaves.
        let _ = dir.sync_all();
    }
    Ok(())
}

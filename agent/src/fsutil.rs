//! Writing small files so that a crash leaves either the old contents or the new, never a mix.

use std::path::Path;

use crate::error::{AgentError, Result};

/// Writes `bytes` to a temp file beside `path` (created with `mode`), fsyncs it, renames it over
/// `path` and fsyncs the directory: the uplink crate's helper (which the manager's key files
/// use too), with the agent's error.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    murmur_uplink::write_atomically(path, bytes, mode)
        .map_err(AgentError::io(format!("writing {}", path.display())))
}

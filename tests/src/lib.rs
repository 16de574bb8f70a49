//! The harness for tests that run real Murmur processes: agents and managers started from the
//! workspace's binaries on loopback ports with their own data directories, a forwarder that
//! delays links, and readers for what they write (Parquet). The crate's own `tests/` are the
//! workspace-wide ones: agents with managers, the simulator against real agents.

pub mod agent;
pub mod binaries;
pub mod chaos_link;
pub mod delay_proxy;
pub mod manager;
pub mod raw_bytes;

pub use agent::*;
pub use manager::*;
pub use raw_bytes::*;

use std::path::PathBuf;

/// The workspace root of the checkout under test. Read at run time (cargo and nextest set
/// `CARGO_MANIFEST_DIR` for every test process): cargo reuses a test binary built from another
/// clone at another path when they share a target directory, and the path compiled into it
/// would then name a checkout that is gone.
pub fn workspace() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

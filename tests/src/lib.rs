//! The harness for tests that run real Murmur processes: agents and managers started from the
//! workspace's binaries on loopback ports with their own data directories, a forwarder that
//! delays links, and readers for what they write (Parquet). The crate's own `tests/` are the
//! workspace-wide ones: agents with managers, the simulator against real agents.

pub mod agent;
pub mod binaries;
pub mod chaos_link;
pub mod delay_proxy;
pub mod manager;

pub use agent::*;
pub use manager::*;

//! Murmur's swarm manager: agents' QUIC uplinks in, the merged swarm state in object storage,
//! Parquet analytics out, and a dashboard for operators. Architecture: `docs/manager.md`.

pub mod bucket;
pub mod config;
pub mod export;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod outbox;
pub mod segment;
pub mod server;
pub mod uplink;
pub mod view;

pub use config::ManagerConfig;

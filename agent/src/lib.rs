//! Murmur's edge agent: memories that survive anything short of a lost disk, searchable by
//! meaning, over a local HTTP API. See docs/ARCHITECTURE.md for the map.

pub mod api;
pub mod attrs;
pub mod backup;
pub mod body_file;
pub mod client;
pub mod config;
pub mod derived;
pub mod error;
pub mod filter;
pub mod fsutil;
pub mod identity;
pub mod index;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod replica;
pub mod restore;
pub mod retention;
pub mod server;
pub mod service;
pub mod state_file;
pub mod store;
pub mod swarm;
pub mod time;
pub mod uplink;
pub mod whole_number;

pub use config::AgentConfig;
pub use error::{AgentError, Result};
pub use service::Agent;

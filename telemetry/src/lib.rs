//! What every Murmur binary serves to its monitoring.
//!
//! `prometheus-client` writes only the OpenMetrics text format. Prometheus asks for it in its
//! `Accept` header, but `curl`, `promtool check metrics` and many other scrapers read the
//! Prometheus text format 0.0.4, where a counter's family is named with its `_total` suffix and
//! there is no `# EOF`. [`exposition`] answers each in its own format.

mod exposition;

pub use exposition::{Exposition, Format, exposition};

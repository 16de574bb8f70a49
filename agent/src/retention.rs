//! Retention on the device: per-namespace limits (age, count, bytes) past which the agent lets
//! the oldest memories from other devices go. An eviction is local: no tombstone, the manager
//! and other devices keep the memory, and the replica never asks for it again. This device's
//! own writes are never evicted, because it may still be their only holder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::Evictable;

/// The namespace key whose limits apply to every namespace without limits of its own.
pub const EVERY_NAMESPACE: &str = "*";

/// At most this many memories are evicted in one transaction; more take more passes.
pub const EVICTIONS_PER_PASS: usize = 4096;

/// One namespace's limits; any left out does not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Keep at most this many memories from other devices.
    pub max_count: Option<u64>,
    /// Keep memories from other devices at most this long after they were written.
    pub max_age_secs: Option<u64>,
    /// Keep at most this many bytes of memories (signed records) from other devices.
    pub max_bytes: Option<u64>,
}

impl Limits {
    fn validate(&self, namespace: &str) -> Result<(), String> {
        let set = [self.max_count, self.max_age_secs, self.max_bytes];
        if set.iter().all(Option::is_none) {
            return Err(format!(
                "retention.\"{namespace}\" sets no limit: give max_count, max_age_secs or max_bytes"
            ));
        }
        if set.contains(&Some(0)) {
            return Err(format!(
                "retention.\"{namespace}\": limits must be positive (leave a limit out for none)"
            ));
        }
        Ok(())
    }

    /// What a walk over `held`, oldest first, takes: memories while the namespace is over its
    /// count or bytes, or older than its age limit at `now_ms`; at most
    /// [`EVICTIONS_PER_PASS`]. Give it (id, body bytes) in order.
    pub fn walker(self, held: Evictable, now_ms: u64) -> impl FnMut(Uuid, u64) -> bool {
        let mut count = held.count;
        let mut bytes = held.bytes;
        let mut taken = 0usize;
        let oldest_kept_ms = self
            .max_age_secs
            .map(|secs| now_ms.saturating_sub(secs.saturating_mul(1000)));
        move |id: Uuid, len: u64| {
            let over_count = self.max_count.is_some_and(|max| count > max);
            let over_bytes = self.max_bytes.is_some_and(|max| bytes > max);
            let too_old = oldest_kept_ms.is_some_and(|oldest| created_at_ms(&id) < oldest);
            let take = taken < EVICTIONS_PER_PASS && (over_count || over_bytes || too_old);
            if take {
                taken += 1;
                count = count.saturating_sub(1);
                bytes = bytes.saturating_sub(len);
            }
            take
        }
    }
}

/// The creation time a memory id carries (its first 48 bits, as in a UUIDv7).
fn created_at_ms(id: &Uuid) -> u64 {
    let bytes = id.as_bytes();
    bytes[..6].iter().fold(0u64, |ms, b| (ms << 8) | u64::from(*b))
}

/// `[retention]`: namespace -> limits, `"*"` for every namespace without its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetentionSettings(pub BTreeMap<String, Limits>);

impl RetentionSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (namespace, limits) in &self.0 {
            if namespace != EVERY_NAMESPACE {
                murmur_sync::validate_namespace(namespace)
                    .map_err(|e| format!("retention.\"{namespace}\": {e}"))?;
            }
            limits.validate(namespace)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The limits that apply to `namespace`: its own, else those of `"*"`.
    pub fn limits_for(&self, namespace: &str) -> Option<Limits> {
        self.0
            .get(namespace)
            .or_else(|| self.0.get(EVERY_NAMESPACE))
            .copied()
    }

    /// Whether any limit is by age, so time alone can make a memory due.
    pub fn has_age_limit(&self) -> bool {
        self.0.values().any(|limits| limits.max_age_secs.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_at(ms: u64, n: u8) -> Uuid {
        let mut bytes = [n; 16];
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        Uuid::from_bytes(bytes)
    }

    fn walk(limits: Limits, held: Evictable, now_ms: u64, memories: &[(Uuid, u64)]) -> usize {
        let mut take = limits.walker(held, now_ms);
        memories.iter().take_while(|(id, len)| take(*id, *len)).count()
    }

    #[test]
    fn the_walk_takes_the_oldest_until_the_namespace_is_within_every_limit() {
        let memories: Vec<(Uuid, u64)> = (0..10)
            .map(|i| (id_at(1_000 + i * 1_000, i as u8), 100))
            .collect();
        let held = Evictable {
            count: 10,
            bytes: 1_000,
        };
        let count = Limits {
            max_count: Some(7),
            ..Limits::default()
        };
        assert_eq!(walk(count, held, 0, &memories), 3);
        let bytes = Limits {
            max_bytes: Some(450),
            ..Limits::default()
        };
        assert_eq!(walk(bytes, held, 0, &memories), 6, "down to 400 bytes");
        // At 10.5 s, a 5 s age limit keeps what was written from 5.5 s on: 6 s to 10 s.
        let age = Limits {
            max_age_secs: Some(5),
            ..Limits::default()
        };
        assert_eq!(walk(age, held, 10_500, &memories), 5);
        let all = Limits {
            max_count: Some(9),
            max_age_secs: Some(5),
            max_bytes: Some(900),
        };
        assert_eq!(walk(all, held, 10_500, &memories), 5, "the strictest limit wins");
        let within = Limits {
            max_count: Some(10),
            ..Limits::default()
        };
        assert_eq!(walk(within, held, 0, &memories), 0);
    }

    #[test]
    fn a_pass_evicts_a_bounded_batch() {
        let memories: Vec<(Uuid, u64)> = (0..EVICTIONS_PER_PASS as u64 + 10)
            .map(|i| (id_at(i, 0), 1))
            .collect();
        let held = Evictable {
            count: memories.len() as u64,
            bytes: memories.len() as u64,
        };
        let limits = Limits {
            max_count: Some(1),
            ..Limits::default()
        };
        assert_eq!(walk(limits, held, 0, &memories), EVICTIONS_PER_PASS);
    }

    #[test]
    fn settings_name_what_is_wrong() {
        let parse = |text: &str| -> Result<(), String> {
            #[derive(Deserialize)]
            struct File {
                retention: RetentionSettings,
            }
            let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
            file.retention.validate()
        };
        parse("[retention.telemetry]\nmax_count = 1000\n[retention.\"*\"]\nmax_age_secs = 60\n").unwrap();
        assert!(
            parse("[retention.telemetry]\n")
                .unwrap_err()
                .contains("sets no limit")
        );
        assert!(
            parse("[retention.telemetry]\nmax_count = 0\n")
                .unwrap_err()
                .contains("positive")
        );
        assert!(
            parse("[retention.telemetry]\nmax_cont = 1\n")
                .unwrap_err()
                .contains("max_cont")
        );
        assert!(parse("[retention.\"bad name!\"]\nmax_count = 1\n").is_err());
        let settings: RetentionSettings =
            toml::from_str::<toml::Table>("telemetry = { max_count = 5 }\n\"*\" = { max_bytes = 9 }\n")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(settings.limits_for("telemetry").unwrap().max_count, Some(5));
        assert_eq!(settings.limits_for("logs").unwrap().max_bytes, Some(9));
        assert!(!settings.has_age_limit());
    }
}

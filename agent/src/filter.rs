//! Search filters: what a request may ask for, and the per-memory facts kept in memory to
//! answer it without reading records.

use std::{collections::HashSet, sync::Arc};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    error::Result,
    memory::{Limits, Memory, validate_namespace, validate_tag},
    time::parse_timestamp_ms,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterRequest {
    pub namespace: Option<String>,
    /// At least one of these tags.
    pub tags_any: Vec<String>,
    /// All of these tags.
    pub tags_all: Vec<String>,
    /// RFC 3339 timestamps; created_after is inclusive, created_before exclusive.
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    /// Top-level metadata fields that must equal these JSON values.
    pub metadata: Map<String, Value>,
}

/// Facts about one memory that filters test, kept for every live memory.
#[derive(Debug, Clone)]
pub struct FilterAttrs {
    pub namespace: Arc<str>,
    pub tags: Box<[Arc<str>]>,
    pub created_at_ms: u64,
}

/// Interns namespaces and tags so a million memories share a handful of strings.
#[derive(Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(existing) = self.strings.get(s) {
            return existing.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(new.clone());
        new
    }

    pub fn attrs(&mut self, memory: &Memory) -> FilterAttrs {
        FilterAttrs {
            namespace: self.intern(&memory.namespace),
            tags: memory.tags.iter().map(|t| self.intern(t)).collect(),
            created_at_ms: memory.created_at_ms,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    namespace: Option<String>,
    tags_any: Vec<String>,
    tags_all: Vec<String>,
    after_ms: Option<u64>,
    before_ms: Option<u64>,
    metadata: Map<String, Value>,
}

impl Filter {
    /// The filter `request` asks for; its tags must be tags a memory could carry.
    pub fn compile(request: FilterRequest, limits: &Limits) -> Result<Self> {
        if let Some(ns) = &request.namespace {
            validate_namespace(ns)?;
        }
        for tag in request.tags_any.iter().chain(&request.tags_all) {
            validate_tag(tag, limits)?;
        }
        let after_ms = request
            .created_after
            .as_deref()
            .map(parse_timestamp_ms)
            .transpose()?;
        let before_ms = request
            .created_before
            .as_deref()
            .map(parse_timestamp_ms)
            .transpose()?;
        // A window with `created_after` not before `created_before` is empty: it matches
        // nothing, as the same bounds would in SQL, rather than being an error a schema
        // cannot describe.
        Ok(Self {
            namespace: request.namespace,
            tags_any: request.tags_any,
            tags_all: request.tags_all,
            after_ms,
            before_ms,
            metadata: request.metadata,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.namespace.is_none()
            && self.tags_any.is_empty()
            && self.tags_all.is_empty()
            && self.after_ms.is_none()
            && self.before_ms.is_none()
            && self.metadata.is_empty()
    }

    pub fn needs_record(&self) -> bool {
        !self.metadata.is_empty()
    }

    pub fn matches_attrs(&self, attrs: &FilterAttrs) -> bool {
        let has = |tag: &String| attrs.tags.iter().any(|t| **t == **tag);
        self.namespace.as_deref().is_none_or(|ns| *attrs.namespace == *ns)
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && self.tags_all.iter().all(has)
            && self.after_ms.is_none_or(|a| attrs.created_at_ms >= a)
            && self.before_ms.is_none_or(|b| attrs.created_at_ms < b)
    }

    pub fn matches_record(&self, memory: &Memory) -> bool {
        self.metadata
            .iter()
            .all(|(key, want)| memory.metadata.get(key) == Some(want))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(ns: &str, tags: &[&str], at: u64) -> FilterAttrs {
        FilterAttrs {
            namespace: ns.into(),
            tags: tags.iter().map(|t| Arc::from(*t)).collect(),
            created_at_ms: at,
        }
    }

    #[test]
    fn attribute_filters() {
        let filter = Filter::compile(
            FilterRequest {
                namespace: Some("a".into()),
                tags_any: vec!["x".into(), "y".into()],
                tags_all: vec!["z".into()],
                created_after: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            },
            &Limits::default(),
        )
        .unwrap();
        let jan2 = 1_767_312_000_000; // 2026-01-02
        assert!(filter.matches_attrs(&attrs("a", &["x", "z"], jan2)));
        assert!(!filter.matches_attrs(&attrs("b", &["x", "z"], jan2)));
        assert!(!filter.matches_attrs(&attrs("a", &["z"], jan2)));
        assert!(!filter.matches_attrs(&attrs("a", &["x"], jan2)));
        assert!(!filter.matches_attrs(&attrs("a", &["x", "z"], 1_000)));
        assert!(
            Filter::compile(FilterRequest::default(), &Limits::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_filters_are_rejected() {
        let bad_ns = FilterRequest {
            namespace: Some("no spaces".into()),
            ..Default::default()
        };
        assert!(Filter::compile(bad_ns, &Limits::default()).is_err());
        let bad_time = FilterRequest {
            created_after: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(Filter::compile(bad_time, &Limits::default()).is_err());
        for bad_tag in ["", "  ", "esc\u{9b}ape", &"x".repeat(65)] {
            let request = FilterRequest {
                tags_all: vec![bad_tag.into()],
                ..Default::default()
            };
            assert!(
                Filter::compile(request, &Limits::default()).is_err(),
                "{bad_tag:?}"
            );
        }
    }

    /// An empty or inverted time window is a valid filter that matches nothing.
    #[test]
    fn an_empty_time_window_matches_nothing() {
        for (after, before) in [
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
            ("2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ] {
            let window = Filter::compile(
                FilterRequest {
                    created_after: Some(after.into()),
                    created_before: Some(before.into()),
                    ..Default::default()
                },
                &Limits::default(),
            )
            .unwrap();
            for at in [1_767_225_599_999, 1_767_225_600_000, 1_769_904_000_000] {
                assert!(
                    !window.matches_attrs(&attrs("default", &[], at)),
                    "{after}..{before} took {at}"
                );
            }
        }
    }
}

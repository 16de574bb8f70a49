//! The Prometheus exposition of a registry, negotiated by the scraper's `Accept` header.

use std::collections::HashSet;

use prometheus_client::{encoding::text::encode, registry::Registry};

/// The two text formats a scraper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, what a scraper that names no format gets.
    Text004,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics only where it is accepted with a
    /// quality at least that of the plain text format (an absent header, `*/*` and anything
    /// unparsable get text 0.0.4, which every scraper reads).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text004;
        };
        let mut open_metrics = 0.0_f32;
        let mut text = 0.0_f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Self::OpenMetrics
        } else {
            Self::Text004
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// A rendered exposition: its body and the content type to serve it with.
#[derive(Debug)]
pub struct Exposition {
    pub content_type: &'static str,
    pub body: String,
}

/// Renders `registry` in the format `accept` prefers.
pub fn exposition(registry: &Registry, accept: Option<&str>) -> Exposition {
    let format = Format::negotiate(accept);
    let mut open_metrics = String::new();
    // `encode` fails only when its writer does, and a String's never does.
    let _ = encode(&mut open_metrics, registry);
    let body = match format {
        Format::OpenMetrics => open_metrics,
        Format::Text004 => to_text_004(&open_metrics),
    };
    Exposition {
        content_type: format.content_type(),
        body,
    }
}

/// Rewrites prometheus-client's OpenMetrics text as text 0.0.4: counter families take their
/// samples' `_total` name, an info family becomes a gauge of its `_info` samples, `unknown` is
/// `untyped`, and `# UNIT`, `# EOF` and exemplars (which 0.0.4 has no syntax for) are left out.
fn to_text_004(open_metrics: &str) -> String {
    let renamed: HashSet<(&str, &str)> = open_metrics
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            Some((words.next()?, words.next()?))
        })
        .filter(|(_, kind)| matches!(*kind, "counter" | "info"))
        .collect();
    let suffix = |family: &str| {
        if renamed.contains(&(family, "counter")) {
            "_total"
        } else if renamed.contains(&(family, "info")) {
            "_info"
        } else {
            ""
        }
    };
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {family}{} {help}\n", suffix(family)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {family}{} {kind}\n", suffix(family)));
        } else {
            out.push_str(without_exemplar(line));
            out.push('\n');
        }
    }
    out
}

/// A sample line without its exemplar (` # {labels} value`), which comes after the last label
/// set's closing brace, so a `#` inside a quoted label value is never taken for one.
fn without_exemplar(line: &str) -> &str {
    // The name ends at its label set's `{` or at the space before the value.
    let name_end = line.find([' ', '{']).unwrap_or(line.len());
    let labels_end = if line[name_end..].starts_with('{') {
        closing_brace(line, name_end).unwrap_or(line.len())
    } else {
        name_end
    };
    match line[labels_end..].find(" # ") {
        Some(at) => &line[..labels_end + at],
        None => line,
    }
}

/// The index just past the `}` closing the label set opened at `open`, skipping quoted values.
fn closing_brace(line: &str, open: usize) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(open + i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
        registry::Unit,
    };

    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::with_prefix("murmur_test");
        let counter = Counter::<u64>::default();
        counter.inc_by(3);
        registry.register("written", "Memories written", counter);
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        requests
            .get_or_create(&vec![("route".into(), "/v1/a # {b}".into())])
            .inc();
        registry.register("requests", "Requests", requests);
        let gauge = Gauge::<i64>::default();
        gauge.set(7);
        registry.register("held", "Memories held", gauge);
        let histogram = Histogram::new([0.5, 1.0]);
        histogram.observe(0.7);
        registry.register_with_unit("wait", "Waits", Unit::Seconds, histogram);
        registry
    }

    #[test]
    fn the_scrapers_accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text004);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text004);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text004);
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.2")),
            Format::Text004
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text004
        );
        assert_eq!(Format::negotiate(Some(";;,q=,garbage")), Format::Text004);
    }

    #[test]
    fn text_004_names_counter_families_by_their_samples() {
        let text = exposition(&registry(), None);
        assert_eq!(text.content_type, "text/plain; version=0.0.4; charset=utf-8");
        let expected = "# HELP murmur_test_written_total Memories written.\n\
             # TYPE murmur_test_written_total counter\n\
             murmur_test_written_total 3\n\
             # HELP murmur_test_requests_total Requests.\n\
             # TYPE murmur_test_requests_total counter\n\
             murmur_test_requests_total{route=\"/v1/a # {b}\"} 1\n\
             # HELP murmur_test_held Memories held.\n\
             # TYPE murmur_test_held gauge\n\
             murmur_test_held 7\n\
             # HELP murmur_test_wait_seconds Waits.\n\
             # TYPE murmur_test_wait_seconds histogram\n\
             murmur_test_wait_seconds_sum 0.7\n\
             murmur_test_wait_seconds_count 1\n\
             murmur_test_wait_seconds_bucket{le=\"0.5\"} 0\n\
             murmur_test_wait_seconds_bucket{le=\"1.0\"} 1\n\
             murmur_test_wait_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(text.body, expected);
    }

    #[test]
    fn open_metrics_is_served_as_written() {
        let open = exposition(&registry(), Some("application/openmetrics-text"));
        assert!(open.content_type.starts_with("application/openmetrics-text"));
        assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
        assert!(open.body.contains("# TYPE murmur_test_written counter\n"));
        assert!(open.body.contains("# UNIT murmur_test_wait_seconds seconds\n"));
    }

    #[test]
    fn exemplars_are_cut_after_the_label_set_only() {
        assert_eq!(
            without_exemplar(r#"a_total{x="q \" # {y}"} 1 # {trace="1"} 1.0"#),
            r#"a_total{x="q \" # {y}"} 1"#
        );
        assert_eq!(without_exemplar("a_total 1 # {trace=\"1\"} 1.0"), "a_total 1");
        assert_eq!(without_exemplar("a_total 1"), "a_total 1");
    }
}

//! What `deploy/` gives an operator's monitoring, checked with Prometheus's own `promtool`
//! against a live agent and manager: both `/metrics` pass `promtool check metrics` (format and
//! lint) in the text format a plain scraper gets, Prometheus itself is served OpenMetrics, the
//! alert rules pass their unit tests, and every metric the rules and the Grafana dashboard name
//! is one the binaries serve (so neither rots when a metric is renamed).

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use murmur_tests::*;
use serde_json::Value;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `MURMUR_PROMTOOL` (set by `scripts/test.sh`, which installs Debian's), else `promtool` on
/// the PATH.
fn promtool() -> PathBuf {
    let path = std::env::var_os("MURMUR_PROMTOOL").map_or_else(|| PathBuf::from("promtool"), PathBuf::from);
    let found = Command::new(&path).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "promtool not found at {}: run scripts/test.sh, which installs it, or set MURMUR_PROMTOOL",
        path.display()
    );
    path
}

/// Runs promtool with `args` in `dir`, `stdin` fed to it; panics with its output on failure.
fn run_promtool(dir: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(stdin.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{text}\ninput:\n{stdin}"
    );
    text
}

/// `/metrics` at `base` with `accept` (none: what curl or promtool's users send), as content
/// type and body.
fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let mut request = ureq::get(format!("{base}/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let mut reply = request.call().expect("scrape /metrics");
    let content_type = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (
        content_type,
        reply.body_mut().read_to_string().expect("metrics text"),
    )
}

/// The value of the first sample of `name` in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Metric names an exposition serves, with a histogram's series names (`_bucket`, `_sum`,
/// `_count`) beside its family's.
fn served_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split([' ', '{']).next())
        .map(str::to_string)
        .chain(
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split(' ').next())
                .map(str::to_string),
        )
        .collect()
}

/// Every `murmur_…` metric name a PromQL expression uses.
fn named_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("murmur_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn metrics_rules_and_dashboard_pass_promtool_against_live_binaries() {
    let deploy = murmur_tests::workspace().join("deploy");
    let dir = tempfile::tempdir().unwrap();
    let manager = ManagerProcess::start(&dir.path().join("manager"), "127.0.0.1:0", &["--no-model"]);
    let swarm = ["--swarm-listen", "/ip4/127.0.0.1/tcp/0", "--open-swarm"];
    let agent = agent_for(&dir.path().join("agent"), &manager.uplink, &swarm);
    let seed = agent.swarm_addr();
    let peer = agent_for(
        &dir.path().join("peer"),
        &manager.uplink,
        &[&swarm[..], &["--swarm-bootstrap", &seed]].concat(),
    );
    // Traffic over the swarm and the uplinks, so labelled families and histograms have samples
    // to check (a family without samples is not served at all).
    wait_until(60, "the agents connect", || {
        agent.stats()["swarm"]["peers"]
            .as_object()
            .is_some_and(|p| !p.is_empty())
    });
    for i in 0..5 {
        agent.add(memory(&format!("monitoring note {i} about a pump")));
    }
    agent.search_ids("pump", 3);
    wait_until(60, "the manager holds the agent's memories", || {
        manager.live() == 5
    });
    wait_until(60, "the peer holds the agent's memories", || {
        peer.stats()["memories"] == 5
    });
    wait_until(60, "the agent reports a round in sync with its manager", || {
        let (_, text) = scrape(agent.client.base(), None);
        sample(&text, "murmur_agent_sync_peers") >= Some(1.0)
            && sample(&text, "murmur_agent_last_in_sync_timestamp_seconds") > Some(0.0)
    });

    let mut served = BTreeSet::new();
    for (what, base) in [("agent", agent.client.base()), ("manager", manager.http.as_str())] {
        let (content_type, text) = scrape(base, None);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "{what}");
        run_promtool(dir.path(), &["check", "metrics"], &text);
        served.extend(served_names(&text));

        let (content_type, open) = scrape(base, Some(PROMETHEUS_ACCEPT));
        assert!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            "{what}: {content_type}"
        );
        assert!(open.ends_with("# EOF\n"), "{what}: {open}");
    }

    let rules = deploy.join("prometheus");
    run_promtool(&rules, &["check", "rules", "alerts.yml"], "");
    run_promtool(&rules, &["test", "rules", "alerts.test.yml"], "");
    run_promtool(&rules, &["check", "config", "prometheus.yml"], "");

    // Every query of the dashboard, as a recording rule so promtool parses its PromQL.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("grafana/murmur.json")).unwrap())
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "murmur");
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("each target has an expr").to_string())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let recording: String = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let expr = q.replace("$agent", ".*").replace("$manager", ".*");
            format!(
                "      - record: dashboard:query{i}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("dashboard-rules.yml"),
        format!("groups:\n  - name: dashboard\n    rules:\n{recording}"),
    )
    .unwrap();
    run_promtool(dir.path(), &["check", "rules", "dashboard-rules.yml"], "");

    let alerts = std::fs::read_to_string(rules.join("alerts.yml")).unwrap();
    let unknown: BTreeSet<String> = queries
        .iter()
        .map(String::as_str)
        .chain([alerts.as_str()])
        .flat_map(named_metrics)
        .filter(|name| !served.contains(name))
        .collect();
    assert!(unknown.is_empty(), "named in deploy/ but not served: {unknown:?}");
}

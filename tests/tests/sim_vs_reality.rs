//! Does the simulator predict reality? Ten real agent processes on loopback, every connection
//! between them through a forwarder that holds each chunk of bytes for 40 ms in each direction
//! (this machine's kernel has no tc netem), against the simulator running the same swarm (full
//! mesh, the same delay, the same writes).
//!
//! The simulator does not know how long a real agent takes from receiving a memory to serving
//! it (verify, store with an fsync, index, and this test's polling); that is measured first, on
//! the same hosts without the delay, and added to the simulator's convergence times. It is not
//! given to the simulator as `agent.processing_ms`: that queues every message (anti-entropy
//! too) behind a fixed cost, while a real agent's serve latency is mostly not a serial
//! per-message cost, so on a loaded machine (a 135 ms calibration) the queue alone made the
//! prediction 43% slow. What the simulator has to get right on its own is everything the delay
//! changes: hops, gossip fan-out, anti-entropy.
//! Tolerances (stated in docs/simulator.md): median time for a memory to reach all agents
//! within 25%, p95 within 50%; bytes of pushes the engines accepted within 10%.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use murmur_sim::Scenario;
use murmur_tests::{AgentProcess, delay_proxy::DelayProxy, wait_until};
use serde_json::json;

const KEY: &str = "6d75726d75722d73696d2d7265616c6974792d636865636b2d6b65792d303031";
const AGENTS: usize = 10;
const DELAY_MS: u32 = 40;
const WRITES: usize = 20;
const INTERVAL_MS: u64 = 500;

fn text(i: usize) -> String {
    format!(
        "Sensor {i:02} on line {} reports a temperature drift of {}.{} degrees",
        i % 4,
        i % 7,
        i % 10
    )
}

/// Writes `count` memories on agent 0, one every `interval`, and returns for each the time
/// from the write's acknowledgement until every agent served it.
fn measure(agents: &[AgentProcess], count: usize, interval: Duration, offset: usize) -> Vec<f64> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..agents.len())
        .map(|_| mpsc::channel::<(String, Instant)>())
        .unzip();
    let (done_tx, done_rx) = mpsc::channel::<(usize, usize, Instant)>();
    std::thread::scope(|scope| {
        for (k, rx) in receivers.into_iter().enumerate() {
            let client = agents[k].client.clone();
            let done = done_tx.clone();
            scope.spawn(move || {
                for (n, (id, _)) in rx.into_iter().enumerate() {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        if client
                            .get(&format!("/v1/memories/{id}"))
                            .is_ok_and(|r| r.status == 200)
                        {
                            let _ = done.send((k, n, Instant::now()));
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            });
        }
        drop(done_tx);
        let mut written_at = Vec::new();
        for i in 0..count {
            let vector: Vec<f32> = (0..384)
                .map(|d| (((i * 13 + d * 5) % 89) as f32 - 44.0) / 45.0)
                .collect();
            let id = agents[0].add(json!({ "text": text(offset + i), "vector": vector }));
            let at = Instant::now();
            written_at.push(at);
            for tx in &senders {
                tx.send((id.clone(), at)).expect("poller alive");
            }
            std::thread::sleep(interval);
        }
        drop(senders);
        let mut last = vec![written_at[0]; count];
        let mut seen = vec![0usize; count];
        for (_, n, at) in done_rx {
            last[n] = last[n].max(at);
            seen[n] += 1;
        }
        assert!(
            seen.iter().all(|&s| s == agents.len()),
            "some agent never served a memory: {seen:?}"
        );
        (0..count)
            .map(|n| (last[n] - written_at[n]).as_secs_f64() * 1e3)
            .collect()
    })
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn push_bytes_in(agent: &AgentProcess) -> f64 {
    let text = agent
        .client
        .get("/metrics")
        .map(|r| r.body.as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("murmur_agent_swarm_bytes_total{"))
        .filter(|l| l.contains("direction=\"in\"") && l.contains("kind=\"push\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_simulator_predicts_a_real_swarm_under_delay() {
    let dirs: Vec<_> = (0..AGENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut agents: Vec<AgentProcess> = Vec::new();
    let mut proxies: Vec<DelayProxy> = Vec::new();
    let mut seeds: Vec<String> = Vec::new();
    for dir in &dirs {
        // Only the dials made here: no discovery, no AutoNAT dial-backs, no hole punching, so
        // every connection goes through a proxy.
        let bootstrap: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let config = format!(
            "[swarm]\nenabled = true\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nswarm_key = \"{KEY}\"\n\
             mdns = false\nkademlia = false\nautonat = false\nhole_punching = false\n\
             bootstrap = [{}]\n",
            bootstrap.join(", ")
        );
        let agent = AgentProcess::start_with_config(dir.path(), &config);
        let addr = agent.swarm_addr();
        let port: u16 = addr
            .split("/tcp/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a TCP port in swarm.addr");
        let proxy = DelayProxy::start(([127, 0, 0, 1], port).into());
        seeds.push(format!(
            "/ip4/127.0.0.1/tcp/{}/p2p/{}",
            proxy.addr.port(),
            agent.peer_id()
        ));
        proxies.push(proxy);
        agents.push(agent);
    }
    for (i, agent) in agents.iter().enumerate() {
        wait_until(60, &format!("agent {i} to connect to all others"), || {
            agent.stats()["sync"]["peers"]
                .as_array()
                .is_some_and(|p| p.len() == AGENTS - 1)
        });
    }
    // A warm-up memory that reaches everyone (gossipsub's mesh is built by then), then the
    // calibration without delay.
    measure(&agents, 1, Duration::from_millis(100), 50);
    let base = measure(&agents, 10, Duration::from_millis(300), 0);
    let (base_p50, base_p95) = (percentile(&base, 0.5), percentile(&base, 0.95));

    for proxy in &proxies {
        proxy.set_delay(Duration::from_millis(u64::from(DELAY_MS)));
    }
    // One memory through the delayed links before measuring, so nothing from before is in flight.
    measure(&agents, 1, Duration::from_millis(100), 60);
    let pushes_before: Vec<f64> = agents.iter().map(push_bytes_in).collect();
    let real = measure(&agents, WRITES, Duration::from_millis(INTERVAL_MS), 100);
    wait_until(30, "the pushes to be counted", || {
        agents.iter().map(push_bytes_in).sum::<f64>() > pushes_before.iter().sum::<f64>()
    });
    let real_push_bytes: f64 = agents
        .iter()
        .zip(&pushes_before)
        .map(|(a, before)| push_bytes_in(a) - before)
        .sum::<f64>()
        / AGENTS as f64;

    let text_bytes = (0..WRITES).map(|i| text(100 + i).len()).sum::<usize>() / WRITES;
    let toml = format!(
        r#"
name = "sim-vs-reality"
seed = 1
agents = {AGENTS}
duration_s = {duration}
settle_s = 20
[sync]
shards = 64
anti_entropy_interval_ms = 2000
[memory]
dimension = 384
text_bytes = {text_bytes}
[topology]
kind = "full-mesh"
[links.default]
latency_ms = {{ kind = "constant", ms = {DELAY_MS} }}
bandwidth_kbps = 1000000
[workload]
sequences = [{{ agent = 0, start_s = 5.0, interval_s = {interval}, count = {WRITES} }}]
"#,
        duration = 5 + WRITES as u64 * INTERVAL_MS / 1000 + 5,
        interval = INTERVAL_MS as f64 / 1000.0,
    );
    let scenario = Scenario::from_toml(&toml, "sim-vs-reality").expect("scenario");
    let (report, _) = murmur_sim::run(scenario, |_| {}).expect("simulation runs");
    let simulated = report
        .convergence_ms
        .clone()
        .expect("memories converged in the simulation");
    let (predicted_p50, predicted_p95) = (simulated.p50 + base_p50, simulated.p95 + base_p95);
    let sim_push_bytes = report
        .traffic_by_kind
        .iter()
        .find(|k| k.kind == "push")
        .map_or(0.0, |k| k.engine_bytes_in_per_agent);

    let (real_p50, real_p95) = (percentile(&real, 0.5), percentile(&real, 0.95));
    let summary = format!(
        "calibration (no delay): p50 {base_p50:.1} p95 {base_p95:.1} ms; with {DELAY_MS} ms: real p50 {real_p50:.1} \
         p95 {real_p95:.1} ms, simulated p50 {:.1} p95 {:.1} ms, predicted (simulated + calibration) p50 \
         {predicted_p50:.1} p95 {predicted_p95:.1} ms; push bytes in per agent: real {real_push_bytes:.0}, \
         simulated {sim_push_bytes:.0}",
        simulated.p50, simulated.p95
    );
    eprintln!("{summary}");
    assert!(report.converged, "{summary}");
    assert!(
        (predicted_p50 - real_p50).abs() <= 0.25 * real_p50,
        "median off by more than 25%: {summary}"
    );
    assert!(
        (predicted_p95 - real_p95).abs() <= 0.5 * real_p95,
        "p95 off by more than 50%: {summary}"
    );
    assert!(
        (sim_push_bytes - real_push_bytes).abs() <= 0.1 * real_push_bytes,
        "push bytes off by more than 10%: {summary}"
    );
}

//! The report of a run: JSON (everything), CSV (per memory, per agent, samples), SVG plots and
//! a short Markdown summary. Only simulated quantities: no wall-clock time, so two runs of one
//! scenario and seed write identical files.

use std::{fmt::Write as _, path::Path};

use murmur_sync::MessageKind;
use serde::Serialize;

use crate::{metrics::Metrics, plot, scenario::Scenario};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no values.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Self {
            count: values.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindTraffic {
    pub kind: &'static str,
    /// Sent on the wire (gossip fan-out and duplicates included).
    pub messages_per_agent: f64,
    pub bytes_per_agent: f64,
    pub bytes_total: u64,
    /// Accepted by the engines once gossip dropped duplicates.
    pub engine_bytes_in_per_agent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealReport {
    pub at_s: f64,
    /// Memories written before the heal that had not reached every live agent at the heal.
    pub memories_behind: usize,
    /// Until the last of those reached every live agent (None: some never did).
    pub caught_up_after_s: Option<f64>,
    /// Until all live agents first sampled the same state (None: not within the run).
    pub identical_after_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub agents: u32,
    pub links: usize,
    pub duration_s: u64,
    pub settle_s: u64,
    /// Every live agent (and the manager) ended with the same state.
    pub converged: bool,
    pub memories: std::collections::BTreeMap<&'static str, u64>,
    pub visible_memories_at_end: usize,
    /// Live agents not in the most common final state (the first 50), and how many in all.
    pub lagging_agents: Vec<u32>,
    pub lagging_agents_count: usize,
    /// From write until every live agent held it, in ms.
    pub convergence_ms: Option<Percentiles>,
    pub delete_convergence_ms: Option<Percentiles>,
    pub manager_lag_ms: Option<Percentiles>,
    pub heals: Vec<HealReport>,
    pub traffic_by_kind: Vec<KindTraffic>,
    /// Bytes each agent sent, all kinds.
    pub bytes_sent_per_agent: Option<Percentiles>,
    pub bytes_sent_per_memory_per_agent: f64,
    pub manager_bytes_in: u64,
    pub events: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    pub messages_unroutable: u64,
    pub messages_refused: u64,
    pub duplicate_pushes_dropped: u64,
    pub writes_skipped_offline: u64,
    pub crashes: u64,
    pub rejoins_empty: u64,
    pub radio_links_made: u64,
    pub radio_links_lost: u64,
}

impl Report {
    pub fn build(scenario: &Scenario, m: &Metrics) -> Self {
        let ms = |us: u64| us as f64 / 1e3;
        let convergence = m
            .tracks
            .iter()
            .filter(|t| t.deleted_us.is_none())
            .filter_map(|t| t.complete_us.map(|c| ms(c - t.written_us)))
            .collect();
        let delete_convergence = m
            .tracks
            .iter()
            .filter_map(|t| Some(ms(t.delete_complete_us? - t.deleted_us?)))
            .collect();
        let manager_lag = m
            .tracks
            .iter()
            .filter_map(|t| t.manager_us.map(|c| ms(c - t.written_us)))
            .collect();
        let heals = m
            .heals
            .iter()
            .map(|&heal| {
                let behind: Vec<_> = m
                    .tracks
                    .iter()
                    .filter(|t| t.written_us < heal && t.deleted_us.is_none())
                    .filter(|t| t.complete_us.is_none_or(|c| c > heal))
                    .collect();
                let caught_up = if behind.iter().all(|t| t.complete_us.is_some()) {
                    let last = behind.iter().filter_map(|t| t.complete_us).max().unwrap_or(heal);
                    Some((last - heal) as f64 / 1e6)
                } else {
                    None
                };
                let identical = m
                    .samples
                    .iter()
                    .find(|s| s.t_s * 1e6 >= heal as f64 && s.distinct_states <= 1)
                    .map(|s| s.t_s - heal as f64 / 1e6);
                HealReport {
                    at_s: heal as f64 / 1e6,
                    memories_behind: behind.len(),
                    caught_up_after_s: caught_up,
                    identical_after_s: identical,
                }
            })
            .collect();
        let traffic = &m.final_state.traffic;
        let agents = traffic.len().max(1) as f64;
        let traffic_by_kind = MessageKind::ALL
            .iter()
            .map(|&kind| {
                let i = kind.index();
                let messages: u64 = traffic.iter().map(|t| t.messages_out[i]).sum();
                let bytes: u64 = traffic.iter().map(|t| t.bytes_out[i]).sum();
                KindTraffic {
                    kind: kind.as_str(),
                    messages_per_agent: messages as f64 / agents,
                    bytes_per_agent: bytes as f64 / agents,
                    bytes_total: bytes,
                    engine_bytes_in_per_agent: m.final_state.engine_bytes_in[i] as f64 / agents,
                }
            })
            .collect();
        let sent: Vec<f64> = traffic
            .iter()
            .map(|t| t.bytes_out.iter().sum::<u64>() as f64)
            .collect();
        let total_sent: f64 = sent.iter().sum();
        let written = m.tracks.len().max(1) as f64;
        Self {
            scenario: scenario.name.clone(),
            seed: scenario.seed,
            agents: scenario.agents,
            links: m.final_state.links,
            duration_s: scenario.duration_s,
            settle_s: scenario.settle_s,
            converged: m.final_state.converged,
            memories: m.memory_counts(),
            visible_memories_at_end: m.final_state.visible_memories,
            lagging_agents: m.final_state.lagging_agents.iter().take(50).copied().collect(),
            lagging_agents_count: m.final_state.lagging_agents.len(),
            convergence_ms: Percentiles::of(convergence),
            delete_convergence_ms: Percentiles::of(delete_convergence),
            manager_lag_ms: Percentiles::of(manager_lag),
            heals,
            traffic_by_kind,
            bytes_sent_per_agent: Percentiles::of(sent),
            bytes_sent_per_memory_per_agent: total_sent / written / agents,
            manager_bytes_in: m
                .final_state
                .manager_traffic
                .as_ref()
                .map_or(0, |t| t.bytes_in.iter().sum()),
            events: m.events,
            messages_delivered: m.messages_delivered,
            messages_lost: m.messages_lost,
            messages_unroutable: m.messages_unroutable,
            messages_refused: m.messages_refused,
            duplicate_pushes_dropped: m.duplicate_pushes,
            writes_skipped_offline: m.writes_skipped_offline,
            crashes: m.crashes,
            rejoins_empty: m.rejoins_empty,
            radio_links_made: m.radio_links_made,
            radio_links_lost: m.radio_links_lost,
        }
    }

    /// Writes report.json, memories.csv, agents.csv, samples.csv, convergence.svg,
    /// timeline.svg, traffic.svg and summary.md into `dir`.
    pub fn write_all(&self, m: &Metrics, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        std::fs::write(dir.join("memories.csv"), memories_csv(m))?;
        std::fs::write(dir.join("agents.csv"), agents_csv(m))?;
        std::fs::write(dir.join("samples.csv"), samples_csv(m))?;
        std::fs::write(dir.join("convergence.svg"), self.convergence_svg(m))?;
        std::fs::write(dir.join("timeline.svg"), timeline_svg(m))?;
        std::fs::write(dir.join("traffic.svg"), self.traffic_svg())?;
        std::fs::write(dir.join("summary.md"), self.summary_markdown())?;
        Ok(())
    }

    fn convergence_svg(&self, m: &Metrics) -> String {
        let mut times: Vec<f64> = m
            .tracks
            .iter()
            .filter(|t| t.deleted_us.is_none())
            .filter_map(|t| t.complete_us.map(|c| (c - t.written_us) as f64 / 1e3))
            .collect();
        times.sort_by(f64::total_cmp);
        let n = times.len().max(1) as f64;
        let points: Vec<(f64, f64)> = times
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, (i + 1) as f64 / n))
            .collect();
        plot::lines(
            &format!("{}: time until a memory reached every live agent", self.scenario),
            "milliseconds after the write",
            "share of memories",
            &[("memories", &points)],
        )
    }

    fn traffic_svg(&self) -> String {
        let bars: Vec<(String, f64)> = self
            .traffic_by_kind
            .iter()
            .map(|k| (k.kind.to_string(), k.bytes_per_agent / 1024.0))
            .collect();
        plot::bars(
            &format!("{}: bytes sent per agent by message kind", self.scenario),
            "KiB per agent",
            &bars,
        )
    }

    pub fn summary_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Simulation: {}\n", self.scenario);
        let _ = writeln!(
            s,
            "{} agents, {} links, {} s of workload then {} s to settle, seed {}.\n",
            self.agents, self.links, self.duration_s, self.settle_s, self.seed
        );
        let _ = writeln!(
            s,
            "**{}** at the end ({} memories visible).\n",
            if self.converged {
                "Converged"
            } else {
                "NOT converged"
            },
            self.visible_memories_at_end
        );
        if self.lagging_agents_count > 0 {
            let _ = writeln!(
                s,
                "{} agents ended in a state other than the most common one: {:?}{}.\n",
                self.lagging_agents_count,
                self.lagging_agents,
                if self.lagging_agents_count > self.lagging_agents.len() {
                    " and more"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(s, "| measure | count | p50 | p95 | p99 | max |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for (name, p) in [
            ("memory reaches every live agent (ms)", &self.convergence_ms),
            (
                "delete reaches every live agent (ms)",
                &self.delete_convergence_ms,
            ),
            ("memory reaches the manager (ms)", &self.manager_lag_ms),
            ("bytes sent per agent", &self.bytes_sent_per_agent),
        ] {
            match p {
                Some(p) => {
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        p.count, p.p50, p.p95, p.p99, p.max
                    );
                }
                None => {
                    let _ = writeln!(s, "| {name} | 0 | | | | |");
                }
            }
        }
        let _ = writeln!(s, "\nMemories: {:?}.", self.memories);
        let _ = writeln!(
            s,
            "Bytes sent per memory per agent: {:.0}.\n",
            self.bytes_sent_per_memory_per_agent
        );
        let _ = writeln!(s, "| kind | messages per agent | KiB per agent |");
        let _ = writeln!(s, "|---|---|---|");
        for k in &self.traffic_by_kind {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} |",
                k.kind,
                k.messages_per_agent,
                k.bytes_per_agent / 1024.0
            );
        }
        for h in &self.heals {
            let _ = writeln!(
                s,
                "\nPartition healed at {:.0} s: {} memories behind, all caught up after {}, identical state after {}.",
                h.at_s,
                h.memories_behind,
                h.caught_up_after_s
                    .map_or("never".into(), |t| format!("{t:.1} s")),
                h.identical_after_s
                    .map_or("not within the run".into(), |t| format!("{t:.1} s")),
            );
        }
        let _ = writeln!(
            s,
            "\nNetwork: {} messages delivered, {} lost, {} unroutable (partition, crash, offline), {} duplicate pushes dropped, {} refused. Churn: {} crashes, {} empty rejoins.",
            self.messages_delivered,
            self.messages_lost,
            self.messages_unroutable,
            self.duplicate_pushes_dropped,
            self.messages_refused,
            self.crashes,
            self.rejoins_empty
        );
        let _ = writeln!(
            s,
            "\nPlots: convergence.svg, timeline.svg, traffic.svg. Data: report.json, memories.csv, agents.csv, samples.csv."
        );
        s
    }
}

fn memories_csv(m: &Metrics) -> String {
    let mut s =
        String::from("id,author,written_s,reached_all_ms,manager_ms,deleted_s,delete_reached_all_ms\n");
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for t in &m.tracks {
        let _ = writeln!(
            s,
            "{},{},{:.6},{},{},{},{}",
            t.id.to_hex(),
            t.author,
            t.written_us as f64 / 1e6,
            opt(t.complete_us.map(|c| (c - t.written_us) as f64 / 1e3)),
            opt(t.manager_us.map(|c| (c - t.written_us) as f64 / 1e3)),
            opt(t.deleted_us.map(|d| d as f64 / 1e6)),
            opt(t
                .delete_complete_us
                .zip(t.deleted_us)
                .map(|(c, d)| (c - d) as f64 / 1e3)),
        );
    }
    s
}

fn agents_csv(m: &Metrics) -> String {
    let mut s = String::from("agent");
    for dir in ["out", "in"] {
        for kind in MessageKind::ALL {
            let _ = write!(
                s,
                ",{}_{dir}_messages,{}_{dir}_bytes",
                kind.as_str(),
                kind.as_str()
            );
        }
    }
    s.push('\n');
    for (i, t) in m.final_state.traffic.iter().enumerate() {
        let _ = write!(s, "{i}");
        for (messages, bytes) in [(&t.messages_out, &t.bytes_out), (&t.messages_in, &t.bytes_in)] {
            for k in 0..messages.len() {
                let _ = write!(s, ",{},{}", messages[k], bytes[k]);
            }
        }
        s.push('\n');
    }
    s
}

fn samples_csv(m: &Metrics) -> String {
    let mut s = String::from("t_s,live_agents,distinct_states,coverage\n");
    for x in &m.samples {
        let _ = writeln!(
            s,
            "{:.3},{},{},{:.6}",
            x.t_s, x.live_agents, x.distinct_states, x.coverage
        );
    }
    s
}

fn timeline_svg(m: &Metrics) -> String {
    let coverage: Vec<(f64, f64)> = m.samples.iter().map(|s| (s.t_s, s.coverage)).collect();
    let live_max = m.samples.iter().map(|s| s.live_agents).max().unwrap_or(1).max(1) as f64;
    let live: Vec<(f64, f64)> = m
        .samples
        .iter()
        .map(|s| (s.t_s, f64::from(s.live_agents) / live_max))
        .collect();
    let same: Vec<(f64, f64)> = m
        .samples
        .iter()
        .map(|s| (s.t_s, if s.distinct_states <= 1 { 1.0 } else { 0.0 }))
        .collect();
    plot::lines(
        "swarm over time",
        "simulated seconds",
        "share",
        &[
            ("coverage: held / most held by one agent", &coverage),
            ("live agents (share of most)", &live),
            ("all live agents identical", &same),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).expect("values");
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        let one = Percentiles::of(vec![7.0]).expect("one value");
        assert_eq!((one.p50, one.max), (7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }
}

//! Scenario files (TOML): the swarm, its network, what it does and what goes wrong.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("reading scenario {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing scenario {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("scenario {name}: {message}")]
    Invalid { name: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub seed: u64,
    pub agents: u32,
    /// Simulated time with the workload, churn and partitions running.
    pub duration_s: u64,
    /// Quiet time after `duration_s` (no writes, no churn, partitions healed, crashed agents
    /// back) in which the swarm should converge.
    #[serde(default = "default_settle")]
    pub settle_s: u64,
    /// How often the report samples the swarm (live agents, distinct digests).
    #[serde(default = "one")]
    pub sample_interval_s: u64,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub memory: MemoryShape,
    pub topology: Topology,
    /// Link profiles by name; which names a topology needs is listed at [`Topology`].
    pub links: BTreeMap<String, LinkProfile>,
    #[serde(default)]
    pub gossip: Gossip,
    #[serde(default)]
    pub agent: AgentModel,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub manager: Option<Manager>,
}

/// False for NaN and infinities, which no rate or size may be.
fn at_least(v: f64, min: f64) -> bool {
    v.is_finite() && v >= min
}

fn one() -> u64 {
    1
}
fn default_settle() -> u64 {
    120
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    pub shards: u16,
    pub anti_entropy_interval_ms: u64,
    /// How the swarm's state holds memory bodies; the engine's default unless set.
    pub format: BodyFormat,
}

/// `murmur_sync::Format` as a scenario names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyFormat {
    InlineBodies,
    BodiesByHash,
}

impl From<murmur_sync::Format> for BodyFormat {
    fn from(format: murmur_sync::Format) -> Self {
        match format {
            murmur_sync::Format::InlineBodies => BodyFormat::InlineBodies,
            murmur_sync::Format::BodiesByHash => BodyFormat::BodiesByHash,
        }
    }
}

impl From<BodyFormat> for murmur_sync::Format {
    fn from(format: BodyFormat) -> Self {
        match format {
            BodyFormat::InlineBodies => murmur_sync::Format::InlineBodies,
            BodyFormat::BodiesByHash => murmur_sync::Format::BodiesByHash,
        }
    }
}

impl Default for SyncSettings {
    fn default() -> Self {
        let engine = murmur_sync::Config::default();
        Self {
            shards: 16,
            anti_entropy_interval_ms: engine.anti_entropy_interval_ms,
            format: engine.format.into(),
        }
    }
}

/// What a simulated memory looks like on the wire: sizes matter, content does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryShape {
    pub dimension: usize,
    pub text_bytes: usize,
}

impl Default for MemoryShape {
    fn default() -> Self {
        Self {
            dimension: 384,
            text_bytes: 200,
        }
    }
}

/// Who can talk to whom, and over which link profile.
///
/// - `full-mesh`: everyone with everyone over `default`.
/// - `random`: each agent linked to about `degree` random others over `default`.
/// - `lan-clusters`: clusters of `cluster_size` in full mesh over `lan`; each cluster has
///   `gateways` agents linked over `wan` to a gateway of each of `wan_degree` other clusters.
/// - `radio`: agents in an `area_m` square, linked over `radio` while within `range_m`; they
///   move (random waypoint) at `speed_mps`, links re-evaluated every `move_interval_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Topology {
    FullMesh,
    Random {
        degree: u32,
    },
    LanClusters {
        cluster_size: u32,
        #[serde(default = "one_u32")]
        gateways: u32,
        #[serde(default = "two_u32")]
        wan_degree: u32,
    },
    Radio {
        area_m: f64,
        range_m: f64,
        #[serde(default)]
        speed_mps: Range,
        #[serde(default = "one")]
        move_interval_s: u64,
    },
}

fn one_u32() -> u32 {
    1
}
fn two_u32() -> u32 {
    2
}

impl Topology {
    pub fn link_names(&self) -> &'static [&'static str] {
        match self {
            Topology::FullMesh | Topology::Random { .. } => &["default"],
            Topology::LanClusters { .. } => &["lan", "wan"],
            Topology::Radio { .. } => &["radio"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

impl Range {
    pub fn sample(&self, rng: &mut fastrand::Rng) -> f64 {
        if self.max <= self.min {
            self.min
        } else {
            self.min + rng.f64() * (self.max - self.min)
        }
    }
}

/// One kind of link. Latency is one-way, drawn per message (so messages reorder); bandwidth
/// queues messages per direction of each link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    pub latency_ms: Latency,
    /// Kilobits per second in each direction.
    pub bandwidth_kbps: f64,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub duplicate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Latency {
    Constant {
        ms: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    /// A long tail: `median` times e^(sigma * N(0,1)).
    LogNormal {
        median: f64,
        sigma: f64,
    },
}

impl Latency {
    pub fn sample_ms(&self, rng: &mut fastrand::Rng) -> f64 {
        match *self {
            Latency::Constant { ms } => ms,
            Latency::Uniform { min, max } => Range { min, max }.sample(rng),
            Latency::LogNormal { median, sigma } => median * (sigma * standard_normal(rng)).exp(),
        }
    }

    fn check(&self) -> Result<(), String> {
        let ok = match *self {
            Latency::Constant { ms } => ms >= 0.0,
            Latency::Uniform { min, max } => min >= 0.0 && max >= min,
            Latency::LogNormal { median, sigma } => median > 0.0 && (0.0..=3.0).contains(&sigma),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("latency {self:?} is out of range"))
        }
    }
}

/// Box-Muller from the seeded generator: the same seed gives the same draws everywhere.
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gossip {
    /// Peers each agent eagerly forwards pushes to (gossipsub's mesh degree D).
    pub mesh_degree: u32,
    /// The writer sends its own pushes to every linked peer, not only its mesh (gossipsub's
    /// `flood_publish`, on in libp2p and so in the agent).
    pub flood_publish: bool,
}

impl Default for Gossip {
    fn default() -> Self {
        Self {
            mesh_degree: 6,
            flood_publish: true,
        }
    }
}

/// How long an agent takes to handle one incoming message (verify, store with an fsync,
/// index). Messages queue behind each other: a slow device falls behind under load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentModel {
    pub processing_ms: Latency,
}

impl Default for AgentModel {
    fn default() -> Self {
        Self {
            processing_ms: Latency::Constant { ms: 0.0 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Mean writes per agent per hour (a Poisson process per agent).
    pub writes_per_agent_per_hour: f64,
    /// Share of written memories their author deletes later.
    pub delete_fraction: f64,
    /// Share of agents that write `hot_multiplier` times as often.
    pub hot_agents: f64,
    pub hot_multiplier: f64,
    pub bursts: Vec<Burst>,
    /// Writes by one agent at a fixed pace (for comparisons with real agents).
    pub sequences: Vec<Sequence>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            writes_per_agent_per_hour: 0.0,
            delete_fraction: 0.0,
            hot_agents: 0.0,
            hot_multiplier: 10.0,
            bursts: Vec::new(),
            sequences: Vec::new(),
        }
    }
}

/// At `at_s`, `agents` agents (spread over the swarm) each write `memories` in one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub at_s: u64,
    pub agents: u32,
    pub memories: u32,
}

/// From `start_s`, agent `agent` writes one memory every `interval_s`, `count` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    pub agent: u32,
    pub start_s: f64,
    pub interval_s: f64,
    pub count: u32,
}

/// A partition from `at_s` until `heal_s`: messages between groups are lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at_s: u64,
    pub heal_s: u64,
    pub split: Split,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Split {
    /// Agents in `groups` contiguous blocks by index.
    Blocks { groups: u32 },
    /// Every LAN cluster on its own (only for `lan-clusters`).
    Clusters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    pub crashes_per_agent_per_hour: f64,
    pub downtime_s: Range,
    /// Share of crashed agents that come back as new, empty devices (new identity).
    #[serde(default)]
    pub rejoin_empty_fraction: f64,
}

/// A manager linked to every agent over `uplink`, reachable only while the uplink is up:
/// `online_s` up, then `offline_s` down, repeating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manager {
    pub uplink: String,
    pub online_s: u64,
    pub offline_s: u64,
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: origin.to_string(),
            source,
        })?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.check().map_err(|message| ScenarioError::Invalid {
            name: self.name.clone(),
            message,
        })
    }

    fn check(&self) -> Result<(), String> {
        if self.agents < 2 || self.agents > 1_000_000 {
            return Err(format!("agents must be 2-1000000, not {}", self.agents));
        }
        if self.duration_s == 0 || self.sample_interval_s == 0 {
            return Err("duration_s and sample_interval_s must be positive".into());
        }
        if self.sync.shards == 0 || self.sync.shards > murmur_sync::MAX_SHARDS {
            return Err(format!("sync.shards must be 1-{}", murmur_sync::MAX_SHARDS));
        }
        if self.sync.anti_entropy_interval_ms == 0 {
            return Err("sync.anti_entropy_interval_ms must be positive".into());
        }
        if self.memory.dimension == 0 || self.memory.dimension > 4096 || self.memory.text_bytes > 8192 {
            return Err("memory.dimension must be 1-4096 and memory.text_bytes at most 8192".into());
        }
        for name in self.topology.link_names() {
            if !self.links.contains_key(*name) {
                return Err(format!(
                    "topology {:?} needs a [links.{name}] profile",
                    self.topology
                ));
            }
        }
        self.agent
            .processing_ms
            .check()
            .map_err(|e| format!("agent.processing_ms: {e}"))?;
        for (name, link) in &self.links {
            link.latency_ms
                .check()
                .map_err(|e| format!("links.{name}: {e}"))?;
            if !(link.bandwidth_kbps.is_finite() && link.bandwidth_kbps > 0.0) {
                return Err(format!("links.{name}.bandwidth_kbps must be positive"));
            }
            if !(0.0..1.0).contains(&link.loss) || !(0.0..1.0).contains(&link.duplicate) {
                return Err(format!("links.{name}: loss and duplicate must be in [0, 1)"));
            }
        }
        match &self.topology {
            Topology::Random { degree } if *degree == 0 || *degree >= self.agents => {
                return Err("topology.degree must be 1 to agents-1".into());
            }
            Topology::LanClusters {
                cluster_size,
                gateways,
                ..
            } if *cluster_size == 0 || *gateways == 0 || gateways > cluster_size => {
                return Err(
                    "topology: cluster_size and gateways must be positive, gateways <= cluster_size".into(),
                );
            }
            Topology::Radio {
                area_m,
                range_m,
                speed_mps,
                move_interval_s,
            } if !(*area_m > 0.0 && *range_m > 0.0)
                || speed_mps.min < 0.0
                || speed_mps.max < speed_mps.min
                || *move_interval_s == 0 =>
            {
                return Err(
                    "topology: area_m, range_m, move_interval_s positive; 0 <= speed min <= max".into(),
                );
            }
            _ => {}
        }
        let w = &self.workload;
        if !at_least(w.writes_per_agent_per_hour, 0.0)
            || !(0.0..=1.0).contains(&w.delete_fraction)
            || !(0.0..=1.0).contains(&w.hot_agents)
            || !at_least(w.hot_multiplier, 1.0)
        {
            return Err("workload: rates non-negative, fractions in [0, 1], hot_multiplier >= 1".into());
        }
        for burst in &w.bursts {
            if burst.at_s > self.duration_s || burst.agents > self.agents || burst.memories > 10_000 {
                return Err(format!("workload burst {burst:?} is outside the scenario"));
            }
        }
        for q in &w.sequences {
            let end = q.start_s + q.interval_s * f64::from(q.count);
            if q.agent >= self.agents
                || !at_least(q.start_s, 0.0)
                || !at_least(q.interval_s, 0.0)
                || end > self.duration_s as f64
            {
                return Err(format!("workload sequence {q:?} is outside the scenario"));
            }
        }
        let mut spans: Vec<(u64, u64)> = self.partitions.iter().map(|p| (p.at_s, p.heal_s)).collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err("partitions overlap: one must heal before the next starts".into());
        }
        for p in &self.partitions {
            if p.heal_s <= p.at_s || p.heal_s > self.duration_s {
                return Err(format!(
                    "partition {p:?}: heal_s must be after at_s and within duration_s"
                ));
            }
            match p.split {
                Split::Blocks { groups } if groups < 2 || groups > self.agents => {
                    return Err("partition: blocks need 2 to agents groups".into());
                }
                Split::Clusters if !matches!(self.topology, Topology::LanClusters { .. }) => {
                    return Err("partition: clusters split needs the lan-clusters topology".into());
                }
                _ => {}
            }
        }
        if let Some(churn) = &self.churn
            && (!at_least(churn.crashes_per_agent_per_hour, 0.0)
                || churn.downtime_s.min < 0.0
                || churn.downtime_s.max < churn.downtime_s.min
                || !(0.0..=1.0).contains(&churn.rejoin_empty_fraction))
        {
            return Err("churn: rates non-negative, 0 <= downtime min <= max, fraction in [0, 1]".into());
        }
        if let Some(manager) = &self.manager {
            if !self.links.contains_key(&manager.uplink) {
                return Err(format!(
                    "manager.uplink names no link profile: {:?}",
                    manager.uplink
                ));
            }
            if manager.online_s == 0 {
                return Err("manager.online_s must be positive".into());
            }
        }
        Ok(())
    }

    /// The same scenario made small enough for a test: at most `max_agents` agents, time
    /// scaled by `time_factor` (events and partitions keep their relative places).
    pub fn scaled_down(&self, max_agents: u32, time_factor: f64) -> Scenario {
        let mut s = self.clone();
        let scale_t = |t: u64| ((t as f64 * time_factor).round() as u64).max(1);
        s.agents = s.agents.min(max_agents);
        s.duration_s = scale_t(s.duration_s);
        s.settle_s = scale_t(s.settle_s).max(60);
        s.sample_interval_s = s.sample_interval_s.min(s.duration_s);
        if let Topology::LanClusters {
            cluster_size,
            gateways,
            ..
        } = &mut s.topology
        {
            *cluster_size = (*cluster_size).min((s.agents / 3).max(2));
            *gateways = (*gateways).min(*cluster_size);
        }
        if let Topology::Random { degree } = &mut s.topology {
            *degree = (*degree).min(s.agents - 1);
        }
        for burst in &mut s.workload.bursts {
            burst.at_s = scale_t(burst.at_s).min(s.duration_s);
            burst.agents = burst.agents.min(s.agents);
            burst.memories = burst.memories.min(50);
        }
        for p in &mut s.partitions {
            p.at_s = scale_t(p.at_s);
            p.heal_s = scale_t(p.heal_s).min(s.duration_s).max(p.at_s + 1);
            if let Split::Blocks { groups } = &mut p.split {
                *groups = (*groups).min(s.agents);
            }
        }
        if let Some(manager) = &mut s.manager {
            manager.online_s = scale_t(manager.online_s);
            manager.offline_s = scale_t(manager.offline_s);
        }
        // Keep the expected number of writes and crashes about the same per agent.
        s.workload.writes_per_agent_per_hour /= time_factor;
        if let Some(churn) = &mut s.churn {
            churn.crashes_per_agent_per_hour /= time_factor;
            churn.downtime_s.min *= time_factor;
            churn.downtime_s.max *= time_factor;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
agents = 4
duration_s = 10
[topology]
kind = "full-mesh"
[links.default]
latency_ms = { kind = "constant", ms = 5 }
bandwidth_kbps = 1000
"#;

    #[test]
    fn a_minimal_scenario_parses_with_defaults() {
        let s = Scenario::from_toml(MINIMAL, "test").expect("valid");
        assert_eq!(s.agents, 4);
        assert_eq!(s.sync.shards, 16);
        assert_eq!(s.gossip.mesh_degree, 6);
        assert!(s.churn.is_none());
    }

    #[test]
    fn broken_scenarios_are_refused_with_a_reason() {
        let cases = [
            (MINIMAL.replace("agents = 4", "agents = 1"), "agents must be"),
            (
                MINIMAL.replace("\"full-mesh\"", "\"lan-clusters\"\ncluster_size = 2"),
                "[links.lan]",
            ),
            (
                MINIMAL.replace("bandwidth_kbps = 1000", "bandwidth_kbps = 0"),
                "bandwidth_kbps",
            ),
            (
                MINIMAL.replace(
                    "kind = \"constant\", ms = 5",
                    "kind = \"uniform\", min = 9, max = 1",
                ),
                "latency",
            ),
            (
                format!(
                    "{MINIMAL}\n[[partitions]]\nat_s = 5\nheal_s = 4\nsplit = {{ kind = \"blocks\", groups = 2 }}\n"
                ),
                "heal_s",
            ),
            (format!("{MINIMAL}\nunknown = 1\n"), "unknown field"),
            (
                format!(
                    "{MINIMAL}\n[[partitions]]\nat_s = 1\nheal_s = 5\nsplit = {{ kind = \"blocks\", groups = 2 }}\n\
                     [[partitions]]\nat_s = 4\nheal_s = 8\nsplit = {{ kind = \"blocks\", groups = 2 }}\n"
                ),
                "overlap",
            ),
            (
                format!("{MINIMAL}\n[manager]\nuplink = \"sat\"\nonline_s = 1\noffline_s = 1\n"),
                "manager.uplink",
            ),
        ];
        for (text, expected) in cases {
            let error = Scenario::from_toml(&text, "test")
                .expect_err("refused")
                .to_string();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    #[test]
    fn scaling_down_keeps_events_inside_the_run() {
        let text = format!(
            "{}\n[[partitions]]\nat_s = 4\nheal_s = 8\nsplit = {{ kind = \"blocks\", groups = 3 }}\n",
            MINIMAL
                .replace("agents = 4", "agents = 400")
                .replace("duration_s = 10", "duration_s = 1000")
        );
        let s = Scenario::from_toml(&text, "test").expect("valid");
        let small = s.scaled_down(12, 0.1);
        assert_eq!(small.agents, 12);
        assert_eq!(small.duration_s, 100);
        small.validate().expect("still valid");
    }
}

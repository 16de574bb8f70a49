//! Who is linked to whom, over which link profile; for radio, where everyone is and where
//! they are heading.

use std::collections::BTreeMap;

use crate::scenario::{Range, Topology};

/// Index of an agent in the simulation.
pub type Node = u32;

/// Links of every agent: neighbour → link profile index. Symmetric.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub adjacency: Vec<BTreeMap<Node, u8>>,
}

impl Graph {
    pub fn new(nodes: u32) -> Self {
        Self {
            adjacency: vec![BTreeMap::new(); nodes as usize],
        }
    }

    pub fn link(&mut self, a: Node, b: Node, profile: u8) {
        if a != b {
            self.adjacency[a as usize].insert(b, profile);
            self.adjacency[b as usize].insert(a, profile);
        }
    }

    pub fn profile(&self, a: Node, b: Node) -> Option<u8> {
        self.adjacency.get(a as usize)?.get(&b).copied()
    }

    pub fn neighbours(&self, a: Node) -> impl Iterator<Item = Node> + '_ {
        self.adjacency[a as usize].keys().copied()
    }

    pub fn edge_count(&self) -> usize {
        self.adjacency.iter().map(BTreeMap::len).sum::<usize>() / 2
    }
}

/// Profile indexes are positions in `Topology::link_names()`.
pub fn build(topology: &Topology, agents: u32, rng: &mut fastrand::Rng, radio: Option<&Radio>) -> Graph {
    let mut graph = Graph::new(agents);
    match topology {
        Topology::FullMesh => {
            for a in 0..agents {
                for b in a + 1..agents {
                    graph.link(a, b, 0);
                }
            }
        }
        Topology::Random { degree } => {
            // A ring keeps the graph connected; random chords bring the mean degree up.
            for a in 0..agents {
                graph.link(a, (a + 1) % agents, 0);
            }
            let chords = (u64::from(agents) * u64::from(degree.saturating_sub(2)) / 2) as usize;
            for _ in 0..chords {
                let a = rng.u32(..agents);
                let b = rng.u32(..agents);
                graph.link(a, b, 0);
            }
        }
        Topology::LanClusters {
            cluster_size,
            gateways,
            wan_degree,
        } => {
            let clusters = agents.div_ceil(*cluster_size);
            let members = |c: u32| c * cluster_size..((c + 1) * cluster_size).min(agents);
            for c in 0..clusters {
                let m: Vec<Node> = members(c).collect();
                for (i, &a) in m.iter().enumerate() {
                    for &b in &m[i + 1..] {
                        graph.link(a, b, 0);
                    }
                }
            }
            let gateway = |c: u32, g: u32| {
                let m = members(c);
                m.start + g % (m.end - m.start)
            };
            for c in 0..clusters {
                for g in 0..*gateways {
                    // A ring of clusters, plus random other clusters.
                    if clusters > 1 {
                        graph.link(gateway(c, g), gateway((c + 1) % clusters, g), 1);
                    }
                    for _ in 1..*wan_degree {
                        let other = rng.u32(..clusters);
                        if other != c {
                            graph.link(gateway(c, g), gateway(other, g), 1);
                        }
                    }
                }
            }
        }
        Topology::Radio { range_m, .. } => {
            if let Some(radio) = radio {
                for (a, b) in radio.pairs_in_range(*range_m) {
                    graph.link(a, b, 0);
                }
            }
        }
    }
    graph
}

/// The cluster of each agent in `lan-clusters` (for partitions that split them).
pub fn cluster_of(topology: &Topology, node: Node) -> u32 {
    match topology {
        Topology::LanClusters { cluster_size, .. } => node / cluster_size,
        _ => 0,
    }
}

/// Positions and random-waypoint motion of agents in a square.
#[derive(Debug, Clone)]
pub struct Radio {
    pub area_m: f64,
    pub positions: Vec<(f64, f64)>,
    targets: Vec<(f64, f64)>,
    speeds: Vec<f64>,
    speed: Range,
}

impl Radio {
    pub fn new(agents: u32, area_m: f64, speed: Range, rng: &mut fastrand::Rng) -> Self {
        let mut point = || (rng.f64() * area_m, rng.f64() * area_m);
        let positions = (0..agents).map(|_| point()).collect();
        let targets = (0..agents).map(|_| point()).collect();
        let speeds = (0..agents).map(|_| speed.sample(rng)).collect();
        Self {
            area_m,
            positions,
            targets,
            speeds,
            speed,
        }
    }

    /// Moves everyone for `seconds`; on reaching its waypoint an agent picks another.
    pub fn advance(&mut self, seconds: f64, rng: &mut fastrand::Rng) {
        for i in 0..self.positions.len() {
            let (x, y) = self.positions[i];
            let (tx, ty) = self.targets[i];
            let (dx, dy) = (tx - x, ty - y);
            let distance = (dx * dx + dy * dy).sqrt();
            let step = self.speeds[i] * seconds;
            if step >= distance {
                self.positions[i] = (tx, ty);
                self.targets[i] = (rng.f64() * self.area_m, rng.f64() * self.area_m);
                self.speeds[i] = self.speed.sample(rng);
            } else if distance > 0.0 {
                self.positions[i] = (x + dx / distance * step, y + dy / distance * step);
            }
        }
    }

    /// Every pair within `range`, found through a grid of range-sized cells.
    pub fn pairs_in_range(&self, range: f64) -> Vec<(Node, Node)> {
        let cell = |v: f64| (v / range).floor() as i64;
        let mut grid: BTreeMap<(i64, i64), Vec<Node>> = BTreeMap::new();
        for (i, &(x, y)) in self.positions.iter().enumerate() {
            grid.entry((cell(x), cell(y))).or_default().push(i as Node);
        }
        let mut pairs = Vec::new();
        for (&(cx, cy), members) in &grid {
            for dx in -1..=1 {
                for dy in -1..=1 {
                    let Some(others) = grid.get(&(cx + dx, cy + dy)) else {
                        continue;
                    };
                    for &a in members {
                        for &b in others {
                            if a < b && self.distance(a, b) <= range {
                                pairs.push((a, b));
                            }
                        }
                    }
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }

    fn distance(&self, a: Node, b: Node) -> f64 {
        let (ax, ay) = self.positions[a as usize];
        let (bx, by) = self.positions[b as usize];
        ((ax - bx).powi(2) + (ay - by).powi(2)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(graph: &Graph) -> bool {
        let n = graph.adjacency.len();
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(a) = stack.pop() {
            for b in graph.neighbours(a) {
                if !seen[b as usize] {
                    seen[b as usize] = true;
                    stack.push(b);
                }
            }
        }
        seen.iter().all(|&s| s)
    }

    #[test]
    fn static_topologies_are_connected_with_the_expected_links() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mesh = build(&Topology::FullMesh, 10, &mut rng, None);
        assert_eq!(mesh.edge_count(), 45);
        let random = build(&Topology::Random { degree: 6 }, 200, &mut rng, None);
        assert!(connected(&random));
        let mean = random.edge_count() as f64 * 2.0 / 200.0;
        assert!((4.5..=6.5).contains(&mean), "mean degree {mean}");
        let lan = Topology::LanClusters {
            cluster_size: 10,
            gateways: 1,
            wan_degree: 2,
        };
        let clusters = build(&lan, 50, &mut rng, None);
        assert!(connected(&clusters));
        assert_eq!(clusters.profile(0, 1), Some(0), "inside a cluster: lan");
        assert_eq!(clusters.profile(0, 10), Some(1), "gateway to gateway: wan");
        assert_eq!(clusters.profile(1, 11), None);
    }

    #[test]
    fn radio_links_follow_distance_and_motion() {
        let mut rng = fastrand::Rng::with_seed(5);
        let speed = Range { min: 10.0, max: 20.0 };
        let mut radio = Radio::new(60, 500.0, speed, &mut rng);
        let pairs = radio.pairs_in_range(100.0);
        let brute: Vec<(Node, Node)> = (0..60)
            .flat_map(|a| (a + 1..60).map(move |b| (a, b)))
            .filter(|&(a, b)| radio.distance(a, b) <= 100.0)
            .collect();
        assert_eq!(pairs, brute);
        let before = radio.positions.clone();
        radio.advance(5.0, &mut rng);
        let moved = before
            .iter()
            .zip(&radio.positions)
            .filter(|(a, b)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() > 1.0)
            .count();
        assert!(moved > 50, "{moved} of 60 moved");
    }
}

//! `murmur-sim`: a deterministic discrete-event simulator that runs the real `murmur-sync`
//! engines, one per simulated agent, over a modelled network (latency, bandwidth, loss,
//! duplication, partitions, churn, radio range), so operators can see how a swarm behaves
//! before they deploy it. See docs/simulator.md.

pub mod bodies;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod topology;

pub use report::Report;

/// Maps and sets hashed the same way in every run (std's `RandomState` is seeded per
/// process), so iteration order, and with it a report, never depends on the process.
pub(crate) type FixedHasher = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;
pub use scenario::Scenario;
pub use sim::Simulation;

/// Runs `scenario` to its end and builds its report (no files written).
pub fn run(
    scenario: Scenario,
    progress: impl FnMut(f64),
) -> Result<(Report, metrics::Metrics), sim::SimError> {
    let mut sim = Simulation::new(scenario.clone())?;
    sim.run(progress)?;
    let report = Report::build(&scenario, &sim.metrics);
    Ok((report, std::mem::take(&mut sim.metrics)))
}

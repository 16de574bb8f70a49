//! `murmur-sim`: run a scenario file and write its report.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use murmur_sim::Scenario;

#[derive(Parser)]
#[command(
    name = "murmur-sim",
    version,
    about = "Simulate a Murmur swarm over a modelled network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario (TOML) and write report.json, CSVs, SVG plots and summary.md.
    Run {
        scenario: PathBuf,
        /// Where the report goes (default: sim-reports/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Shrink the scenario: at most this many agents ...
        #[arg(long)]
        max_agents: Option<u32>,
        /// ... and simulated time multiplied by this factor.
        #[arg(long, default_value_t = 1.0)]
        time_factor: f64,
    },
    /// Check scenario files without running them.
    Check { scenarios: Vec<PathBuf> },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,murmur_sync=error".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run {
            scenario,
            out,
            seed,
            max_agents,
            time_factor,
        } => {
            let mut s = Scenario::from_file(&scenario)?;
            if let Some(seed) = seed {
                s.seed = seed;
            }
            if max_agents.is_some() || time_factor != 1.0 {
                anyhow::ensure!(time_factor > 0.0, "--time-factor must be positive");
                s = s.scaled_down(max_agents.unwrap_or(s.agents), time_factor);
                s.validate()?;
            }
            let out = out.unwrap_or_else(|| PathBuf::from("sim-reports").join(&s.name));
            let bar = ProgressBar::new(s.duration_s + s.settle_s);
            bar.set_style(
                ProgressStyle::with_template("{spinner} simulated {pos}/{len} s [{bar:40}] {elapsed} {msg}")
                    .context("progress style")?,
            );
            bar.set_message(format!("{} agents", s.agents));
            let started = std::time::Instant::now();
            let (report, metrics) = murmur_sim::run(s, |t| bar.set_position(t as u64))
                .map_err(|e| anyhow::anyhow!("simulation failed: {e}"))?;
            bar.finish();
            let wall = started.elapsed().as_secs_f64();
            report
                .write_all(&metrics, &out)
                .with_context(|| format!("writing the report to {}", out.display()))?;
            print!("{}", report.summary_markdown());
            println!(
                "\nWall clock: {wall:.2} s for {} events ({:.0} events/s). Report: {}",
                report.events,
                report.events as f64 / wall.max(1e-9),
                out.display()
            );
            if !report.converged {
                eprintln!("warning: the swarm did not converge within the run");
            }
            Ok(())
        }
        Command::Check { scenarios } => {
            for path in scenarios {
                let s = Scenario::from_file(&path)?;
                println!("{}: ok ({} agents, {} s)", path.display(), s.agents, s.duration_s);
            }
            Ok(())
        }
    }
}

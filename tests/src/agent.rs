//! Real agent processes for the integration tests: spawned from the built binary, on an
//! ephemeral loopback port, with their own data directory.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use murmur_agent::client::Client;
use serde_json::{Value, json};

pub struct AgentProcess {
    child: Child,
    pub data_dir: PathBuf,
    pub client: Client,
}

impl AgentProcess {
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::start_wrapped(data_dir, &[], "127.0.0.1:0", extra_args)
    }

    /// Started under `wrapper` (for example `ip netns exec NS`), its API on `api_addr`.
    pub fn start_wrapped(data_dir: &Path, wrapper: &[&str], api_addr: &str, extra_args: &[&str]) -> Self {
        let addr_file = data_dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file); // a killed agent leaves a stale one
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))
            .expect("log file");
        let binary = crate::binaries::agent();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["run", "--api-addr", api_addr, "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env("RUST_LOG", "info,ort=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent binary starts");
        let mut agent = Self {
            child,
            data_dir: data_dir.to_path_buf(),
            client: Client::new("http://unset"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file)
                && !addr.is_empty()
            {
                agent.client = Client::new(&format!("http://{addr}"));
                if agent.client.get("/healthz").is_ok_and(|r| r.status == 200) {
                    return agent;
                }
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!(
                    "agent exited during start-up with {status}; log:\n{}",
                    agent.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "agent exited with {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn add(&self, memory: Value) -> String {
        let reply = self.client.post("/v1/memories", &memory).expect("request");
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        reply.body["id"].as_str().expect("id").to_string()
    }

    /// Adds memories through the batch endpoint, `chunk` at a time; returns their ids.
    pub fn add_all(&self, memories: &[Value], chunk: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(memories.len());
        for batch in memories.chunks(chunk) {
            let reply = self
                .client
                .post("/v1/memories/batch", &json!({ "memories": batch }))
                .expect("request");
            assert_eq!(reply.status, 201, "{:?}", reply.body);
            ids.extend(
                reply.body["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|id| id.as_str().unwrap_or_default().to_string()),
            );
        }
        ids
    }

    pub fn search(&self, body: Value) -> Vec<Value> {
        let reply = self.client.post("/v1/search", &body).expect("request");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.body["results"].as_array().expect("results").clone()
    }

    pub fn search_ids(&self, query: &str, k: usize) -> Vec<String> {
        self.search(json!({ "query": query, "k": k }))
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn stats(&self) -> Value {
        self.client
            .get("/v1/stats")
            .expect("request")
            .ok()
            .expect("stats")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Real short texts for tests: Debian package descriptions committed with murmur-models.
pub fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(crate::workspace().join("models/testdata/bench_sentences.txt"))
        .expect("corpus");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A test setting from the environment (a seed to replay, a longer run), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator, so a failing run can be replayed from its seed.
#[derive(Clone)]
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Waits until `condition` holds, polling; panics with `what` after `seconds`.
pub fn wait_until(seconds: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl AgentProcess {
    /// An agent in a private swarm on loopback, dialling `bootstrap` at start.
    pub fn start_in_swarm(data_dir: &Path, swarm_key: &str, bootstrap: &[String]) -> Self {
        let mut args = vec![
            "--swarm-listen".to_string(),
            "/ip4/127.0.0.1/tcp/0".to_string(),
            "--swarm-key".to_string(),
            swarm_key.to_string(),
            "--no-mdns".to_string(),
        ];
        for addr in bootstrap {
            args.push("--swarm-bootstrap".into());
            args.push(addr.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(data_dir, &args)
    }

    /// An agent whose `[swarm]` (and anything else) comes from a TOML file written beside its
    /// data.
    pub fn start_with_config(data_dir: &Path, toml: &str) -> Self {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let config = data_dir.join("agent.toml");
        std::fs::write(&config, toml).expect("config file");
        let config = config.to_string_lossy().to_string();
        Self::start(data_dir, &["--config", &config])
    }

    /// Every address in `swarm.addr`.
    pub fn swarm_addrs(&self) -> Vec<String> {
        self.swarm_addr();
        std::fs::read_to_string(self.data_dir.join("swarm.addr"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The agent's libp2p peer id (the last part of its swarm addresses).
    pub fn peer_id(&self) -> String {
        let addr = self.swarm_addr();
        addr.rsplit("/p2p/").next().unwrap_or_default().to_string()
    }

    /// The driver's view of one connected peer (`swarm.peers[peer_id]` of `/v1/stats`).
    pub fn link_to(&self, peer_id: &str) -> Option<Value> {
        let link = self.stats()["swarm"]["peers"][peer_id].clone();
        (!link.is_null()).then_some(link)
    }

    /// The multiaddr (with /p2p/) peers dial to reach this agent.
    pub fn swarm_addr(&self) -> String {
        let path = self.data_dir.join("swarm.addr");
        let mut addr = String::new();
        wait_until(30, "swarm.addr", || {
            addr = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            !addr.is_empty()
        });
        addr
    }

    pub fn status_of(&self, id: &str) -> u16 {
        self.client
            .get(&format!("/v1/memories/{id}"))
            .map(|r| r.status)
            .unwrap_or(0)
    }
}

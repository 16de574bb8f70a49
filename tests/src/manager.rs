//! Real manager processes, agents that upload to them, and readers of what managers write.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::agent::AgentProcess;

pub const SWARM_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
pub const TOKEN: &str = "operator-token-for-tests";

pub struct ManagerProcess {
    child: Child,
    pub data_dir: PathBuf,
    pub http: String,
    pub uplink: String,
    client: ureq::Agent,
}

impl ManagerProcess {
    /// A manager on ephemeral loopback ports (HTTP, and `uplink_addr` for QUIC, which a
    /// restarted manager reuses so agents find it again).
    pub fn start(data_dir: &Path, uplink_addr: &str, extra_args: &[&str]) -> Self {
        std::fs::create_dir_all(data_dir).expect("data dir");
        let mut command = Command::new(crate::binaries::manager());
        command
            .args([
                "run",
                "--http-listen",
                "127.0.0.1:0",
                "--uplink-listen",
                uplink_addr,
                "--data-dir",
            ])
            .arg(data_dir)
            .args([
                "--swarm-key",
                SWARM_KEY,
                "--operator-token",
                TOKEN,
                "--export-interval-secs",
                "1",
            ])
            .args(extra_args)
            .env("RUST_LOG", "info,ort=warn,murmur_manager=debug");
        Self::spawn(command, data_dir)
    }

    /// Starts `command`, a manager that writes its addresses into `data_dir` (as seen from
    /// here), its log going to `manager.log` there; returns once it answers `/healthz`.
    pub fn spawn(mut command: Command, data_dir: &Path) -> Self {
        for file in ["http.addr", "uplink.addr"] {
            let _ = std::fs::remove_file(data_dir.join(file));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("manager.log"))
            .expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("manager binary starts");
        let client: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut manager = Self {
            child,
            data_dir: data_dir.to_path_buf(),
            http: String::new(),
            uplink: String::new(),
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let http = std::fs::read_to_string(data_dir.join("http.addr")).unwrap_or_default();
            let uplink = std::fs::read_to_string(data_dir.join("uplink.addr")).unwrap_or_default();
            if !http.is_empty() && !uplink.is_empty() {
                manager.http = format!("http://{http}");
                manager.uplink = uplink;
                if manager.get("/healthz").0 == 200 {
                    return manager;
                }
            }
            if let Ok(Some(status)) = manager.child.try_wait() {
                panic!(
                    "manager exited during start-up with {status}; log:\n{}",
                    manager.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "manager did not start; log:\n{}",
                manager.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("manager.log")).unwrap_or_default()
    }

    fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        match response {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::reply(
            self.client
                .get(format!("{}{path}", self.http))
                .header("authorization", format!("Bearer {TOKEN}"))
                .call(),
        )
    }

    /// A GET with another token than the operator's, or none.
    pub fn get_with_token(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.http));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Self::reply(request.call())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::reply(
            self.client
                .post(format!("{}{path}", self.http))
                .header("authorization", format!("Bearer {TOKEN}"))
                .send_json(body),
        )
    }

    pub fn overview(&self) -> Value {
        let (status, body) = self.get("/api/overview");
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn live(&self) -> u64 {
        self.overview()["memories"]["live"].as_u64().unwrap_or(0)
    }

    /// The status of `/api/memories/{id}`: 200 held, 410 deleted, 404 unknown.
    pub fn status_of(&self, id: &str) -> u16 {
        self.get(&format!("/api/memories/{id}")).0
    }

    pub fn key(&self) -> String {
        self.overview()["manager"]["key"]
            .as_str()
            .expect("key")
            .to_owned()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "manager exited with {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "manager did not stop on SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ManagerProcess {
    /// A test that fails half-way must not leave its manager running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent that uploads to `manager` (no libp2p swarm unless `extra` adds one).
pub fn agent_for(data_dir: &Path, manager: &str, extra: &[&str]) -> AgentProcess {
    let mut args = vec!["--manager", manager, "--swarm-key", SWARM_KEY];
    args.extend_from_slice(extra);
    AgentProcess::start(data_dir, &args)
}

/// Every row of every Parquet file under `dir` (a local bucket path), as JSON objects.
pub fn parquet_rows(dir: &Path) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                rows.extend(parquet_file_rows(std::fs::read(&path).expect("read parquet")));
            }
        }
    }
    rows
}

/// The rows of one Parquet file's bytes, as JSON objects.
pub fn parquet_file_rows(bytes: Vec<u8>) -> Vec<Value> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("a parquet file");
    reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let row = row.expect("row");
            let object: serde_json::Map<String, Value> = row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), field_json(field)))
                .collect();
            Value::Object(object)
        })
        .collect()
}

pub fn memory(text: &str) -> Value {
    serde_json::json!({ "text": text, "metadata": {"source": "test"}, "tags": ["t1", "t2"] })
}

fn field_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Int(i) => Value::from(*i),
        Field::Long(i) => Value::from(*i),
        Field::TimestampMillis(i) => Value::from(*i),
        Field::Str(s) => Value::String(s.clone()),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        other => Value::String(other.to_string()),
    }
}

/// A UDP port free right now on loopback, for a manager that must come back on the same one.
pub fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").to_string()
}

/// The value of a counter in a `/metrics` text.
pub fn metric(manager: &ManagerProcess, name: &str) -> f64 {
    let (_, body) = manager.get("/metrics");
    body.as_str()
        .unwrap_or_default()
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Memories for `count` texts, in the agent's batch form.
pub fn many(count: usize, prefix: &str) -> Vec<Value> {
    (0..count)
        .map(|i| memory(&format!("{prefix} {i}: reading from sensor {}", i % 97)))
        .collect()
}

/// The Python that has the test tools (moto's S3 server): `MURMUR_TOOLS_PYTHON`, which
/// `scripts/test.sh` sets after installing them.
pub fn tools_python() -> PathBuf {
    let python = std::env::var_os("MURMUR_TOOLS_PYTHON").map(PathBuf::from).expect(
        "MURMUR_TOOLS_PYTHON is not set: run scripts/test.sh, which installs moto and points it there",
    );
    assert!(
        python.is_file(),
        "MURMUR_TOOLS_PYTHON={} does not exist",
        python.display()
    );
    python
}

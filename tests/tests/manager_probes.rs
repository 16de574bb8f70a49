//! The manager's probes, as an orchestrator reads them: alive (`/healthz` 200) but not ready
//! (`/readyz` 503) while it loads the swarm's state from a bucket that is slow to answer, and
//! ready once loaded.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use murmur_tests::*;

fn get(url: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut reply) => (
            reply.status().as_u16(),
            reply.body_mut().read_json().unwrap_or(serde_json::Value::Null),
        ),
        Err(_) => (0, serde_json::Value::Null),
    }
}

#[test]
fn a_loading_manager_is_alive_but_not_ready() {
    // An "S3 endpoint" that accepts connections and never answers: loading the state hangs.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let http = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut manager = Command::new(binaries::manager())
        .args([
            "run",
            "--no-model",
            "--http-listen",
            &http,
            "--uplink-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--bucket", "s3://murmur/swarm"])
        .args(["--bucket-option", &format!("aws_endpoint={endpoint}")])
        .args(["--bucket-option", "aws_allow_http=true"])
        .args(["--bucket-option", "aws_region=us-east-1"])
        .args(["--bucket-option", "aws_access_key_id=test"])
        .args(["--bucket-option", "aws_secret_access_key=test"])
        .args([
            "--swarm-key",
            SWARM_KEY,
            "--operator-token",
            "probe-test-operator-token",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the manager");
    let base = format!("http://{http}");
    wait_until(60, "the loading manager to answer /healthz", || {
        get(&format!("{base}/healthz")).0 == 200
    });
    let (status, body) = get(&format!("{base}/healthz"));
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("loading")),
        "{body}"
    );
    let (status, body) = get(&format!("{base}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "loading");
    // Nothing else is served before the state is there.
    assert_eq!(get(&format!("{base}/api/overview")).0, 503);
    manager.kill().unwrap();
    manager.wait().unwrap();

    // A manager that has loaded its (local) bucket is ready.
    let loaded = ManagerProcess::start(&dir.path().join("loaded"), "127.0.0.1:0", &["--no-model"]);
    let (status, body) = get(&format!("{}/readyz", loaded.http));
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
}

//! A damaged store is found and named at start, never served: one flipped byte in one memory's
//! stored body stops the agent with an error that names that memory.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use murmur_tests::AgentProcess;
use serde_json::json;

#[test]
fn a_flipped_byte_in_a_stored_memory_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(dir.path(), &[]);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            agent.add(json!({ "text": format!("pump {i} pressure reading, target-{i:02} of the audit") }))
        })
        .collect();
    agent.stop();

    let bodies_path = dir.path().join("db.bodies");
    let mut bodies = std::fs::read(&bodies_path).unwrap();
    let needle = b"target-07";
    let at = bodies
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the memory's text is in the body file");
    bodies[at] ^= 0x01;
    std::fs::write(&bodies_path, &bodies).unwrap();

    let _ = std::fs::remove_file(dir.path().join("api.addr"));
    let mut child = Command::new(murmur_tests::binaries::agent())
        .args(["run", "--api-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn,ort=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent started on a damaged store");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("memories/{}", ids[7])) && stderr.contains("damaged"),
        "the error does not name the damaged memory:\n{stderr}"
    );
    assert!(!dir.path().join("api.addr").exists(), "it served");
}

//! The restore drill: a backup taken while the agent takes writes, the device wiped, the
//! backup restored; every memory back, nothing deleted back, and what was written after the
//! backup caught up from the manager. Around it: what a restore must refuse (a damaged file,
//! no identity key, a store already there) and a replaced device that kept only its key.

use std::{path::Path, process::Command};

use murmur_tests::*;
use serde_json::{Value, json};

/// Runs the agent binary with `args`; returns whether it succeeded, stdout and stderr.
fn agent_cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(binaries::agent())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("agent binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn restore(data_dir: &Path, backup: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "restore",
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
        "--swarm-key",
        SWARM_KEY,
        "--manager",
        "127.0.0.1:9",
    ];
    args.extend_from_slice(extra);
    args.push(backup.to_str().expect("utf-8 path"));
    agent_cli(&args)
}

fn write_status(agent: &AgentProcess, text: &str) -> (u16, Value) {
    let reply = agent.client.post("/v1/memories", &memory(text)).expect("request");
    (reply.status, reply.body)
}

#[test]
fn a_wiped_device_restored_from_a_backup_gets_every_memory_back_and_catches_up_from_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let uplink = free_udp_addr();
    let manager_dir = dir.path().join("manager");
    let manager_args = ["--no-model"];
    let manager = ManagerProcess::start(&manager_dir, &uplink, &manager_args);
    let agent_dir = dir.path().join("agent");
    let agent = agent_for(&agent_dir, &uplink, &[]);

    let before = agent.add_all(&many(400, "before the backup"), 100);
    let deleted_before: Vec<String> = before.iter().step_by(20).cloned().collect();
    for id in &deleted_before {
        assert_eq!(
            agent.client.delete(&format!("/v1/memories/{id}")).unwrap().status,
            204
        );
    }

    // The backup runs through the CLI while another client keeps writing.
    let backups = dir.path().join("backups");
    let (backed_up, during) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            (0..8)
                .flat_map(|round| agent.add_all(&many(25, &format!("during the backup {round}")), 25))
                .collect::<Vec<_>>()
        });
        let (ok, stdout, stderr) =
            agent_cli(&["backup", "--url", agent.client.base(), backups.to_str().unwrap()]);
        assert!(ok, "backup failed: {stderr}");
        (stdout, writer.join().expect("writer"))
    });
    let backed_up: Value = serde_json::from_str(&backed_up).expect("backup prints JSON");
    let backup = std::path::PathBuf::from(backed_up["path"].as_str().expect("path"));
    assert!(backup.is_file(), "{backed_up}");
    let bodies = backed_up["backup"]["bodies"].as_u64().expect("bodies");
    assert!(
        bodies >= (before.len() - deleted_before.len()) as u64,
        "the backup holds {bodies} bodies: {backed_up}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&agent_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("backup"))
        .collect();
    assert!(leftovers.is_empty(), "the agent left {leftovers:?} behind");

    // After the backup: more writes and deletes that only the manager will know.
    let after = agent.add_all(&many(50, "after the backup"), 50);
    let deleted_after: Vec<String> = before.iter().skip(1).step_by(25).cloned().collect();
    for id in &deleted_after {
        assert_eq!(
            agent.client.delete(&format!("/v1/memories/{id}")).unwrap().status,
            204
        );
    }
    let live = |ids: &[String], gone: &[String]| -> Vec<String> {
        ids.iter().filter(|id| !gone.contains(id)).cloned().collect()
    };
    let all_deleted: Vec<String> = deleted_before.iter().chain(&deleted_after).cloned().collect();
    let held_at_the_end: Vec<String> = live(&before, &all_deleted)
        .into_iter()
        .chain(during.iter().cloned())
        .chain(after.iter().cloned())
        .collect();
    wait_until(120, "the manager to hold everything the agent holds", || {
        manager.live() == held_at_the_end.len() as u64
    });

    // The device dies: its key survives elsewhere, its disk does not.
    agent.stop();
    let key = dir.path().join("identity.key");
    std::fs::copy(agent_dir.join("identity.key"), &key).unwrap();
    std::fs::remove_dir_all(&agent_dir).unwrap();

    // A damaged backup is refused whole and nothing is created.
    let damaged = dir.path().join("damaged.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&damaged, &bytes).unwrap();
    let (ok, _, stderr) = restore(&agent_dir, &damaged, &["--identity-key", key.to_str().unwrap()]);
    assert!(!ok, "a damaged backup was restored");
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(
        !agent_dir.exists(),
        "a refused restore created the data directory"
    );
    assert!(!dir.path().join("agent.restoring").exists());

    // Without the key nothing can be restored, and the error says how.
    let (ok, _, stderr) = restore(&agent_dir, &backup, &[]);
    assert!(!ok, "restored without an identity key");
    assert!(stderr.contains("--identity-key"), "{stderr}");

    // Restored while the manager is down: what the backup holds is served at once, what was
    // deleted before it stays deleted, and writes wait until the agent has caught up.
    manager.kill();
    let (ok, stdout, stderr) = restore(&agent_dir, &backup, &["--identity-key", key.to_str().unwrap()]);
    assert!(ok, "restore failed: {stderr}");
    let restored: Value = serde_json::from_str(&stdout).expect("restore prints JSON");
    assert_eq!(restored["bodies"].as_u64(), Some(bodies), "{restored}");
    assert_eq!(restored["memories"].as_u64(), Some(bodies), "{restored}");
    assert_eq!(restored["catching_up"], json!(true), "{restored}");
    let agent = agent_for(&agent_dir, &uplink, &[]);
    for id in live(&before, &deleted_before) {
        assert_eq!(agent.status_of(&id), 200, "{id} was backed up and is not back");
    }
    for id in &deleted_before {
        assert_eq!(
            agent.status_of(id),
            410,
            "{id} was deleted before the backup and came back"
        );
    }
    let (status, body) = write_status(&agent, "written while catching up");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!("catching_up"), "{body}");
    assert_eq!(agent.stats()["sync"]["catching_up"], json!(true));

    // The manager back: what was written and deleted after the backup arrives, and writes
    // are taken again.
    let manager = ManagerProcess::start(&manager_dir, &uplink, &manager_args);
    wait_until(120, "the restored agent to catch up from the manager", || {
        agent.stats()["sync"]["catching_up"] == json!(false)
    });
    wait_until(60, "every memory written after the backup to arrive", || {
        agent.stats()["memories"].as_u64() == Some(held_at_the_end.len() as u64)
    });
    for id in &held_at_the_end {
        assert_eq!(agent.status_of(id), 200, "{id} is missing after the restore");
    }
    for id in &all_deleted {
        assert_eq!(agent.status_of(id), 410, "{id} was deleted and came back");
    }
    let (status, body) = write_status(&agent, "written after catching up");
    assert_eq!(status, 201, "{body}");
    agent.stop();

    // A restore over a store that is there is refused unless asked for by name.
    let (ok, _, stderr) = restore(&agent_dir, &backup, &[]);
    assert!(!ok, "a restore replaced a store without --replace");
    assert!(stderr.contains("--replace"), "{stderr}");
    assert!(
        agent_dir.join("db").exists(),
        "the refused restore touched the store"
    );

    // A replaced device that kept only its key gets everything back from the manager.
    let replaced = dir.path().join("replaced");
    std::fs::create_dir_all(&replaced).unwrap();
    std::fs::copy(&key, replaced.join("identity.key")).unwrap();
    let device = agent_for(&replaced, &uplink, &[]);
    wait_until(
        120,
        "the replaced device to get every memory from the manager",
        || device.stats()["memories"].as_u64() == Some(held_at_the_end.len() as u64 + 1),
    );
    for id in held_at_the_end.iter().step_by(7) {
        assert_eq!(
            device.status_of(id),
            200,
            "{id} did not come back to the replaced device"
        );
    }
    for id in &all_deleted {
        assert_eq!(device.status_of(id), 410, "{id} was deleted and came back");
    }
    device.stop();
    drop(manager);
}

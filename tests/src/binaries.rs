//! The workspace's binaries for tests that run them: built by Cargo, located from what Cargo
//! says it built. Never a path guessed beside the test executable, where a stale binary from
//! another build can sit.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Mutex, OnceLock},
};

use serde_json::Value;

/// The `murmur-agent` binary, as the current sources build it.
pub fn agent() -> PathBuf {
    binary("murmur-agent", "murmur-agent")
}

/// The `murmur-manager` binary, as the current sources build it.
pub fn manager() -> PathBuf {
    binary("murmur-manager", "murmur-manager")
}

/// Builds `name` of `package` with the features the test command uses (`--all-features`, so
/// an up-to-date build is a no-op) and returns the executable Cargo reports. Once per process.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    built
        .entry(name.to_string())
        .or_insert_with(|| build(package, name))
        .clone()
}

fn build(package: &str, name: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--locked", "--all-features", "--message-format=json"])
        .args(["-p", package, "--bin", name])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cargo cannot run to build {name}: {e}"));
    assert!(output.status.success(), "cargo build of {name} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built no executable named {name}"))
}

//! The workspace's binaries for tests that run them: built by Cargo, located from what Cargo
//! says it built. Never a path guessed beside the test executable, where a stale binary from
//! another build can sit.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
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

/// The executable `name` of `package`, from the build the test command itself runs
/// (`cargo test --no-run --workspace --all-features`, as nextest does): the same artefacts, so
/// after the test command's own build this builds nothing. Once per process.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(build_all)
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("the workspace builds no binary {name} (package {package})"))
}

fn build_all() -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "test",
            "--no-run",
            "--locked",
            "--workspace",
            "--all-features",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cargo cannot run to build the workspace: {e}"));
    assert!(output.status.success(), "cargo could not build the workspace");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        // The binaries themselves, not their unit-test harnesses (also of kind "bin").
        .filter(|message| message["profile"]["test"] == false)
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
        })
        .filter_map(|message| {
            let name = message["target"]["name"].as_str()?.to_string();
            let executable = message["executable"].as_str()?;
            Some((name, PathBuf::from(executable)))
        })
        .collect()
}

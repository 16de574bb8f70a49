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
    let workspace = crate::workspace();
    let mut command = Command::new(cargo);
    // Cargo gives a test process the variables it gives the crate under test (CARGO_PKG_NAME,
    // OUT_DIR, ...). Some build scripts watch those names (ring's does), so passed on they make
    // this build rerun those scripts and rebuild everything above them, and the test command's
    // next build undo it. This build must see the environment the test command's build saw.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_the_crate) {
            command.env_remove(name);
        }
    }
    let output = command
        .current_dir(&workspace)
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

/// Whether Cargo sets `name` for the crate it builds or runs (The Cargo Book, "Environment
/// variables Cargo sets for crates"), rather than it coming from the user's environment.
fn set_by_cargo_for_the_crate(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"];
    const NAMES: [&str; 5] = [
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || NAMES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_for_the_crate;

    #[test]
    fn the_crate_variables_are_dropped_and_the_users_kept() {
        for crate_variable in [
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_BIN_EXE_murmur-agent",
        ] {
            assert!(set_by_cargo_for_the_crate(crate_variable), "{crate_variable}");
        }
        for user_variable in [
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_INCREMENTAL",
            "PATH",
            "RUSTFLAGS",
        ] {
            assert!(!set_by_cargo_for_the_crate(user_variable), "{user_variable}");
        }
    }
}

//! The agent's Debian package, built by `scripts/package-deb.sh` from the binaries this build
//! made and installed with the real `dpkg` on this machine: the unit passes `systemd-analyze
//! verify`, the agent starts as the unit starts it (its user, command line and config) with no
//! way to fetch anything, remembers and recalls, and removing the package leaves only the state
//! (purging, the state still).
//!
//! It installs into this machine's `/usr`, `/etc` and `/var/lib/murmur`, so it needs root and
//! refuses to run where a `murmur-agent` package is already installed.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use murmur_tests::{binaries, wait_until};

const STATE: &str = "/var/lib/murmur";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn succeed(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// The value of `key=` in the `[Service]` section of a unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// Removes the package (purging it) and the state, whatever a failed run left.
fn clean() {
    let _ = run("dpkg", &["--purge", "murmur-agent"]);
    let _ = std::fs::remove_dir_all(STATE);
}

struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        clean();
    }
}

#[test]
fn the_package_installs_starts_as_its_unit_says_and_leaves_only_state() {
    assert_eq!(
        run("id", &["-u"]).stdout,
        b"0\n",
        "installing a package with dpkg needs root: run the test suite as root (CI does)"
    );
    assert!(
        !run("dpkg", &["-s", "murmur-agent"]).status.success(),
        "a murmur-agent package is installed on this machine; this test would replace it"
    );
    clean();
    let _cleanup = Cleanup;

    let out = tempfile::tempdir().unwrap();
    let agent = binaries::agent();
    let models = binaries::binary("murmur-models", "murmur-models");
    let script = murmur_tests::workspace().join("scripts/package-deb.sh");
    let built = run(
        "bash",
        &[
            script.to_str().unwrap(),
            "--binary",
            agent.to_str().unwrap(),
            "--models-bin",
            models.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(
        built.status.success(),
        "building the package failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The script prints the package's path, alone, on stdout.
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let listing = succeed("dpkg-deb", &["--contents", &deb]);
    for path in [
        "./usr/bin/murmur-agent",
        "./lib/systemd/system/murmur-agent.service",
        "./etc/murmur/agent.toml",
        "./usr/lib/murmur/cache/SHA256SUMS",
        "./usr/lib/murmur/cache/models/all-MiniLM-L6-v2-int8/model.onnx",
    ] {
        assert!(listing.contains(path), "{path} is not in the package:\n{listing}");
    }
    let sections = |path: &str| succeed("readelf", &["--section-headers", "--wide", path]);
    assert!(sections(agent.to_str().unwrap()).contains(".debug_info"));

    succeed("dpkg", &["-i", &deb]);
    let packaged = sections("/usr/bin/murmur-agent");
    assert!(
        !packaged.contains(".debug_info") && !packaged.contains(".symtab"),
        "the packaged binary is not stripped:\n{packaged}"
    );
    assert!(succeed("getent", &["passwd", "murmur"]).contains(STATE));
    succeed(
        "bash",
        &[
            "-c",
            "cd /usr/lib/murmur/cache && sha256sum --check --quiet SHA256SUMS",
        ],
    );
    let unit_path = "/lib/systemd/system/murmur-agent.service";
    if Path::new("/usr/bin/systemd-analyze").exists() {
        succeed("systemd-analyze", &["verify", unit_path]);
    }

    // Start the agent as the unit does: its user, its command line, the packaged config, the
    // unit's environment (none), HOME and the state directory as systemd would give them, and
    // a Python that does not exist, so any attempt to fetch the model fails. Only the API port
    // is moved off 7710, where another agent of this machine may listen.
    let unit = std::fs::read_to_string(unit_path).unwrap();
    let user = unit_value(&unit, "User");
    let exec: Vec<&str> = unit_value(&unit, "ExecStart").split_whitespace().collect();
    let mut daemon = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--",
        ])
        .args(&exec)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", STATE)
        .env("MURMUR_PYTHON", "/nonexistent/python3")
        .env("MURMUR_API_ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the packaged agent");
    let addr_file = Path::new(STATE).join("api.addr");
    wait_until(120, "the packaged agent to serve", || addr_file.is_file());
    let url = format!("http://{}", std::fs::read_to_string(&addr_file).unwrap().trim());
    let bin = "/usr/bin/murmur-agent";
    succeed(
        bin,
        &[
            "remember",
            "--url",
            &url,
            "the east pump's seal leaks after a cold start",
        ],
    );
    succeed(
        bin,
        &["remember", "--url", &url, "the loading bay door sticks in wind"],
    );
    let recalled = succeed(bin, &["recall", "--url", &url, "-k", "1", "pump leaking"]);
    assert!(recalled.contains("east pump"), "{recalled}");
    let owner = succeed("stat", &["-c", "%U", &format!("{STATE}/api.addr")]);
    assert_eq!(owner.trim(), user, "the agent did not run as the unit's user");

    succeed("kill", &["-TERM", &daemon.id().to_string()]);
    let status = wait_for_exit(&mut daemon, Duration::from_secs(60));
    assert!(
        status.success(),
        "the agent did not stop cleanly on SIGTERM: {status}"
    );

    succeed("dpkg", &["-r", "murmur-agent"]);
    for gone in [bin, unit_path, "/usr/lib/murmur"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after removal");
    }
    assert!(
        Path::new("/etc/murmur/agent.toml").exists(),
        "remove took the config (only purge does)"
    );
    let held = std::fs::read_dir(STATE).unwrap().count();
    assert!(held > 0, "removal took the device's memories");
    succeed("dpkg", &["--purge", "murmur-agent"]);
    assert!(!Path::new("/etc/murmur").exists(), "purge left the config");
    assert_eq!(
        std::fs::read_dir(STATE).unwrap().count(),
        held,
        "purge changed the device's memories"
    );
}

fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the agent") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the agent did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

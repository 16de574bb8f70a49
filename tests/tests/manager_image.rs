//! The manager's container image, built by `scripts/build-manager-image.sh` from the binaries
//! this build made, with no daemon: skopeo reads it as an OCI image and converts it to the
//! archive `docker load` takes; umoci unpacks it; and the manager starts from the unpacked root
//! filesystem as the image's own configuration says (its user, entrypoint, command line and
//! environment, under chroot: there is no container runtime here), loads the model the image
//! carries, reports ready, searches and stops cleanly on SIGTERM.
//!
//! Needs root (the build keeps file owners; chroot), and mmdebstrap, umoci and skopeo (the test
//! command installs them).

use std::process::Command;

use murmur_tests::{ManagerProcess, SWARM_KEY, TOKEN, binaries, workspace};
use serde_json::{Value, json};

fn succeed(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn the_image_builds_without_a_daemon_and_its_manager_starts_as_its_config_says() {
    assert_eq!(
        succeed("id", &["-u"]),
        "0\n",
        "building the image and starting it under chroot need root: run the test suite as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    let built = succeed(
        "bash",
        &[
            workspace()
                .join("scripts/build-manager-image.sh")
                .to_str()
                .unwrap(),
            "--binary",
            binaries::manager().to_str().unwrap(),
            "--models-bin",
            binaries::binary("murmur-models", "murmur-models")
                .to_str()
                .unwrap(),
            "--out",
            layout.to_str().unwrap(),
            "--tag",
            "test",
        ],
    );
    // The script prints the image's reference, alone, on stdout.
    let reference = built.trim();
    assert_eq!(reference, format!("oci:{}:test", layout.display()));

    // What a registry and a runtime see.
    let config: Value =
        serde_json::from_str(&succeed("skopeo", &["inspect", "--config", reference])).unwrap();
    let image = &config["config"];
    assert_eq!(config["os"], json!("linux"));
    assert_eq!(image["User"], json!("10001:10001"), "{image}");
    assert!(image["ExposedPorts"]["7720/udp"].is_object(), "{image}");
    assert!(image["ExposedPorts"]["7721/tcp"].is_object(), "{image}");
    assert!(image["Volumes"]["/var/lib/murmur-manager"].is_object(), "{image}");
    let archive = dir.path().join("manager.tar");
    succeed(
        "skopeo",
        &[
            "copy",
            "--quiet",
            reference,
            &format!("docker-archive:{}:murmur/manager:test", archive.display()),
        ],
    );
    assert!(std::fs::metadata(&archive).unwrap().len() > 1_000_000);

    // What is inside: a stripped binary, the verified bundle, the user's own state directory.
    let bundle = dir.path().join("bundle");
    succeed(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:test", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    let binary = rootfs.join("usr/bin/murmur-manager");
    let sections = succeed(
        "readelf",
        &["--section-headers", "--wide", binary.to_str().unwrap()],
    );
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".symtab"),
        "the image's binary is not stripped:\n{sections}"
    );
    let cache = rootfs.join("usr/lib/murmur/cache");
    succeed(
        "bash",
        &[
            "-c",
            &format!("cd '{}' && sha256sum --check --quiet SHA256SUMS", cache.display()),
        ],
    );
    let data = rootfs.join("var/lib/murmur-manager");
    assert_eq!(
        succeed("stat", &["-c", "%u:%g %a", data.to_str().unwrap()]).trim(),
        "10001:10001 750"
    );

    // Started as the image says: its user, entrypoint, command line (listening on loopback
    // ports of this machine instead of 7720 and 7721) and environment, plus the two secrets a
    // deployment gives it.
    let mut command = Command::new("/usr/sbin/chroot");
    command
        .arg(format!("--userspec={}", image["User"].as_str().unwrap()))
        .arg(&rootfs)
        .args(strings(&image["Entrypoint"]))
        .args(strings(&image["Cmd"]).into_iter().map(|arg| match arg.as_str() {
            "0.0.0.0:7720" | "0.0.0.0:7721" => "127.0.0.1:0".to_string(),
            _ => arg,
        }))
        .env_clear()
        .envs(
            strings(&image["Env"])
                .iter()
                .map(|pair| pair.split_once('=').expect("KEY=VALUE")),
        )
        .env("MURMUR_SWARM_KEY", SWARM_KEY)
        .env("MURMUR_OPERATOR_TOKEN", TOKEN);
    let manager = ManagerProcess::spawn(command, &data);
    let (status, ready) = manager.get("/readyz");
    assert_eq!((status, &ready["status"]), (200, &json!("ready")), "{ready}");
    let (status, found) = manager.post("/api/search", &json!({ "query": "pump seal leak", "k": 3 }));
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["model"], json!("all-MiniLM-L6-v2-int8"), "{found}");
    let owner = succeed("stat", &["-c", "%u", data.join("http.addr").to_str().unwrap()]);
    assert_eq!(
        owner.trim(),
        "10001",
        "the manager did not run as the image's user"
    );
    manager.stop();
}

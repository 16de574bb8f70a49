//! `deploy/`'s manifests against real schema validators (installed by `scripts/test.sh` beside
//! the other test tools): the Kubernetes manifests against the Kubernetes API's own schemas,
//! strictly (an unknown field fails), and the compose file against the compose specification.
//! Each validator is also shown a damaged copy, so a validator that passes everything fails the
//! test.

use std::{path::PathBuf, process::Command};

use murmur_tests::tools_python;

/// A console script of the test tools' venv.
fn tool(name: &str) -> PathBuf {
    let path = tools_python().parent().expect("the venv's bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test.sh",
        path.display()
    );
    path
}

fn validate(program: &PathBuf, args: &[&str], file: &str) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `original` passes, and the same text with `from` replaced by `to` fails.
fn passes_and_damage_fails(program: &PathBuf, args: &[&str], original: &str, from: &str, to: &str) {
    let (ok, text) = validate(program, args, original);
    assert!(ok, "{original} does not validate:\n{text}");
    let content = std::fs::read_to_string(original).unwrap();
    assert!(content.contains(from), "{original} has no {from:?}");
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged.yaml");
    std::fs::write(&damaged, content.replacen(from, to, 1)).unwrap();
    let (ok, text) = validate(program, args, damaged.to_str().unwrap());
    assert!(!ok, "a damaged copy of {original} validates:\n{text}");
}

#[test]
fn kubernetes_manifests_pass_the_kubernetes_schemas() {
    let validator = tool("kubernetes-validate");
    let args = ["--strict", "--kubernetes-version", "1.37.0"];
    let manifest = murmur_tests::workspace().join("deploy/kubernetes/manager.yaml");
    passes_and_damage_fails(
        &validator,
        &args,
        manifest.to_str().unwrap(),
        "terminationGracePeriodSeconds:",
        "terminationGracePeriod:",
    );
    // The probes name the manager's own endpoints.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let document =
        std::fs::read_to_string(murmur_tests::workspace().join("docs/manager-openapi.json")).unwrap();
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert!(text.contains(probe), "the manifest does not use {probe}");
        assert!(
            document.contains(&format!("\"{probe}\"")),
            "the manager does not serve {probe}"
        );
    }
}

#[test]
fn the_compose_file_passes_the_compose_specification() {
    let validator = tool("check-jsonschema");
    passes_and_damage_fails(
        &validator,
        &["--builtin-schema", "vendor.compose-spec"],
        murmur_tests::workspace()
            .join("deploy/compose/compose.yaml")
            .to_str()
            .unwrap(),
        "    read_only: true",
        "    read_only: [true]",
    );
}

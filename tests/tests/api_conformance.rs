//! The API documents are the contract users build on: schemathesis (property-based, from the
//! document alone) sends a live agent and a live manager requests the document allows and
//! requests it forbids, single and in stateful sequences, and checks every answer against it.
//! A valid request refused, an invalid one accepted, or an answer the document does not
//! describe (status, content type, body) fails the test.

use std::process::Command;

use murmur_tests::{AgentProcess, ManagerProcess, TOKEN, free_udp_addr, tools_python};

/// Runs schemathesis against `url` with `document`, extra arguments after the common ones;
/// panics with its report when it finds a mismatch.
fn conforms(document: &str, url: &str, extra: &[&str]) {
    let python = tools_python();
    let schemathesis = python.with_file_name("schemathesis");
    let workspace = murmur_tests::workspace();
    let workspace = workspace.as_path();
    // It keeps state in its working directory (`.schemathesis/`): not in the checkout.
    let scratch = tempfile::tempdir().expect("temp dir");
    let output = Command::new(&schemathesis)
        .current_dir(scratch.path())
        .arg("--config-file")
        .arg(workspace.join("tests/api-conformance.toml"))
        .arg("--no-color")
        .arg("run")
        .arg(workspace.join(document))
        .args(["--url", url])
        .args(["--checks", "all"])
        // JSON Schema counts characters; the APIs' text limits are bytes of UTF-8, stated in
        // descriptions. ASCII makes the two the same.
        .args(["--generation-codec", "ascii"])
        .args(["--max-examples", "40", "--seed", "1", "--workers", "1"])
        .args(["--generation-database", "none"])
        .args(extra)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not run (scripts/test.sh installs it): {e}",
                schemathesis.display()
            )
        });
    // Its report (operations, phases, cases generated) stays in the test's captured output.
    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "schemathesis found {document} and the live server disagree:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_agent_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = AgentProcess::start(dir.path(), &[]);
    let addr = std::fs::read_to_string(dir.path().join("api.addr")).expect("the agent wrote its address");
    conforms("docs/agent-openapi.json", &format!("http://{addr}"), &[]);
    agent.stop();
}

#[test]
fn the_manager_answers_as_its_openapi_document_says() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = ManagerProcess::start(dir.path(), &free_udp_addr(), &[]);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    conforms("docs/manager-openapi.json", &manager.http, &["-H", &bearer]);
    manager.stop();
}

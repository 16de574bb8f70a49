//! Loading ONNX Runtime libraries that are wrong: too old, or not ONNX Runtime at all.
//!
//! One test function on purpose: a process holds one runtime, so the order of these steps is
//! part of what is tested, and parallel test threads must not interleave them.

mod common;

use murmur_models::{ModelError, Runtime, artifacts};

#[test]
fn wrong_runtime_libraries_are_refused_and_change_nothing() {
    let cache = common::cache();
    let outdated = cache.join(
        artifacts::outdated_runtime_fixture()
            .expect("an outdated runtime is pinned for this architecture")
            .dest,
    );
    assert!(
        outdated.is_file(),
        "{} is missing: run `cargo run -p murmur-models -- fetch --test-fixtures`",
        outdated.display()
    );

    let err = Runtime::load(&outdated).unwrap_err();
    match &err {
        ModelError::RuntimeVersion { found, min_minor, .. } => {
            assert!(found.starts_with("1.20."), "{err}");
            assert_eq!(*min_minor, 24);
        }
        other => panic!("expected a version error, got {other}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"\x7fELF but not really").unwrap();
    let err = Runtime::load(&not_a_library).unwrap_err();
    assert!(matches!(err, ModelError::RuntimeLoad { .. }), "{err}");

    // A real, shared library that is not ONNX Runtime.
    let libc = std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let libc = if libc.exists() {
        libc
    } else {
        std::path::Path::new("/lib/aarch64-linux-gnu/libc.so.6")
    };
    let err = Runtime::load(libc).unwrap_err();
    assert!(matches!(err, ModelError::RuntimeLoad { .. }), "{err}");

    // The refusals left the process free to load the right one, and then to embed.
    let embedder = murmur_models::load_default_embedder(&cache).expect("the right runtime still loads");
    assert_eq!(embedder.embed("after the refusals").unwrap().len(), 384);

    // Once one runtime is loaded, another is a conflict, not a silent reuse.
    let err = Runtime::load(&outdated).unwrap_err();
    assert!(matches!(err, ModelError::RuntimeConflict { .. }), "{err}");
}

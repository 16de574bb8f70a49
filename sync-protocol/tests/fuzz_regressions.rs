//! Replays every committed input of every fuzz target (seeds and what the fuzzers once found
//! failing) through the checks the targets run.

mod fuzz_checks;

use std::{fs, path::Path};

/// What a fuzz target checks of one input.
type Check = fn(&[u8]);

/// Each target under `fuzz/fuzz_targets/`, with the check it runs.
const CHECKS: &[(&str, Check)] = &[
    ("decode_message", fuzz_checks::decode_message),
    ("decode_record", fuzz_checks::decode_record),
    ("engine_incoming", fuzz_checks::engine_incoming),
];

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.display().to_string(), data)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_fuzz_target_has_a_check_and_a_committed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    targets.sort();
    let checked: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        targets, checked,
        "fuzz targets and the checks replayed here differ"
    );
    for (target, _) in CHECKS {
        assert!(
            !inputs(target).is_empty(),
            "no committed inputs for fuzz target {target}"
        );
    }
}

#[test]
fn every_committed_fuzz_input_passes_its_target_check() {
    for (target, check) in CHECKS {
        for (path, data) in inputs(target) {
            eprintln!("{target}: {path}");
            check(&data);
        }
    }
    // The decoders' inputs also go through a live engine, raw.
    for (_, data) in inputs("decode_message") {
        fuzz_checks::engine_incoming(&[[0].as_slice(), &data].concat());
    }
}

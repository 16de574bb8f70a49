//! Replays every committed input of every fuzz target in the workspace (the seeds and what the
//! fuzzers once found failing, `<crate>/fuzz/regressions/<target>/`) through the check that
//! target runs (`<crate>/fuzz/checks.rs`, included here as the targets include it). A target
//! without a check here, or without committed inputs, fails the run: a replay that reads nothing
//! passes silently.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

// The manager's checks name the segment codec `crate::segment`, as its fuzz target does.
use murmur_manager::segment;
use murmur_tests::workspace;

#[path = "../../manager/fuzz/checks.rs"]
mod manager_checks;
#[path = "../../sync-protocol/fuzz/checks.rs"]
mod sync_checks;
#[path = "../../uplink/fuzz/checks.rs"]
mod uplink_checks;

/// What a fuzz target checks of one input.
type Check = fn(&[u8]);

/// Each fuzz crate's directory, its targets and the check each runs.
const CHECKS: &[(&str, &str, Check)] = &[
    ("manager", "decode_segment", manager_checks::decode_segment),
    ("sync-protocol", "decode_message", sync_checks::decode_message),
    ("sync-protocol", "decode_record", sync_checks::decode_record),
    ("sync-protocol", "engine_incoming", sync_checks::engine_incoming),
    ("uplink", "uplink_frames", uplink_checks::uplink_frames),
];

fn names_in(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    paths.sort();
    paths
}

fn inputs(krate: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = workspace().join(krate).join("fuzz/regressions").join(target);
    names_in(&dir)
        .into_iter()
        .map(|path| {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

#[test]
fn every_fuzz_target_in_the_workspace_has_a_check_and_committed_inputs() {
    let mut targets = BTreeSet::new();
    for krate in names_in(&workspace()) {
        let fuzz_targets = krate.join("fuzz/fuzz_targets");
        if !fuzz_targets.is_dir() {
            continue;
        }
        let name = krate.file_name().expect("a name").to_string_lossy().into_owned();
        for path in names_in(&fuzz_targets) {
            if path.extension().is_some_and(|e| e == "rs") {
                let stem = path.file_stem().expect("a name").to_string_lossy().into_owned();
                targets.insert((name.clone(), stem));
            }
        }
    }
    let checked: BTreeSet<(String, String)> = CHECKS
        .iter()
        .map(|(krate, target, _)| (krate.to_string(), target.to_string()))
        .collect();
    assert_eq!(
        targets, checked,
        "fuzz targets and the checks replayed here differ"
    );
    for (krate, target, _) in CHECKS {
        assert!(
            !inputs(krate, target).is_empty(),
            "no committed inputs for fuzz target {krate}/{target}"
        );
    }
}

#[test]
fn every_committed_fuzz_input_passes_its_target_check() {
    for (krate, target, check) in CHECKS {
        for (path, data) in inputs(krate, target) {
            eprintln!("{krate}/{target}: {}", path.display());
            check(&data);
        }
    }
}

//! Looking for a memory's bytes in raw files: its text, and its vector as the record and the
//! index hold it (f16) and as it was sent (f32). For the tests that say a memory is not on disk
//! (erased, or encrypted at rest) and for their controls that say it is.

use std::path::{Path, PathBuf};

pub const DIMENSION: usize = 384;

/// A unit vector no other memory here has.
pub fn distinctive_vector() -> Vec<f32> {
    let raw: Vec<f32> = (0..DIMENSION)
        .map(|i| ((i as f32 + 0.37) * 7.919).sin() + 0.013 * i as f32)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    raw.into_iter().map(|x| x / norm).collect()
}

/// Byte strings that would betray a memory: its text, and its vector as the record
/// and the index hold it (f16) and as it was sent (f32).
pub fn needles(marker: &str, vector: &[f32]) -> Vec<(String, Vec<u8>)> {
    let f16: Vec<u8> = vector[..16]
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    let f32: Vec<u8> = vector[..8].iter().flat_map(|x| x.to_le_bytes()).collect();
    vec![
        ("the text".into(), marker.as_bytes().to_vec()),
        ("the vector (f16)".into(), f16),
        ("the vector (f32)".into(), f32),
    ]
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every (file, what) where one of `needles` occurs under `dir`.
pub fn find(dir: &Path, needles: &[(String, Vec<u8>)]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for file in files_under(dir) {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        for (what, needle) in needles {
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle.as_slice()) {
                found.push((file.clone(), format!("{what} at byte {at} of {}", bytes.len())));
            }
        }
    }
    found
}

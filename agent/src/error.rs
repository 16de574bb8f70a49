use thiserror::Error;

/// Why an agent operation failed. Each variant maps to one HTTP status and one stable `code`
/// string in the API's JSON errors (see `api.rs`), so clients can branch without parsing text.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0}")]
    InvalidInput(String),

    #[error("memory {0} does not exist")]
    NotFound(String),

    #[error("memory {0} was deleted")]
    Deleted(String),

    #[error("{0}")]
    Forbidden(String),

    #[error("disk quota exceeded: the store uses {used} bytes of {quota} allowed")]
    QuotaExceeded { used: u64, quota: u64 },

    #[error(transparent)]
    Embedding(#[from] murmur_models::ModelError),

    #[error("storage: {0}")]
    Storage(#[from] sled::Error),

    #[error("stored record {key} is corrupt: {reason}")]
    CorruptRecord { key: String, reason: String },

    #[error("vector index: {0}")]
    Index(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Writes wait until this agent holds its own history again: its store was restored or
    /// replaced while its identity key was kept.
    #[error("{0}")]
    CatchingUp(String),

    /// Encryption at rest: a missing or wrong key, or a store that does not match the setting.
    #[error("{0}")]
    AtRest(String),

    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),

    #[error("background task failed: {0}")]
    Join(String),
}

impl AgentError {
    pub fn invalid(message: impl Into<String>) -> Self {
        AgentError::InvalidInput(message.into())
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| AgentError::Io { context, source }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

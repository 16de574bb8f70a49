//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! A process can hold exactly one ONNX Runtime: ort keeps the loaded library in a global. So
//! the first successful load wins, later requests for the same file share it, and a request for
//! a different file is an error instead of a silent use of the wrong library.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use ort::environment::Environment;

use crate::{
    artifacts,
    cache::CacheDir,
    error::{ModelError, Result},
};

/// Environment variable naming the runtime library to use instead of the fetched one.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

#[derive(Debug, Clone)]
pub struct Runtime {
    path: PathBuf,
    environment: Environment,
}

impl Runtime {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The library's own build description (version, commit, flags).
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }

    /// Loads the runtime at `path`, or returns the one already loaded from that same file.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn load(path: &Path) -> Result<Runtime> {
        static LOADED: Mutex<Option<Runtime>> = Mutex::new(None);

        let requested = std::path::absolute(path).map_err(|e| ModelError::io(path, e))?;
        if !requested.is_file() {
            return Err(ModelError::RuntimeNotFound {
                looked_for: requested,
            });
        }
        let requested = requested
            .canonicalize()
            .map_err(|e| ModelError::io(&requested, e))?;

        let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = loaded.as_ref() {
            return if runtime.path == requested {
                Ok(runtime.clone())
            } else {
                Err(ModelError::RuntimeConflict {
                    loaded: runtime.path.clone(),
                    requested,
                })
            };
        }

        let builder = ort::init_from(&requested).map_err(|e| load_error(&requested, e))?;
        let environment = builder
            .with_name("murmur")
            .build()
            .map_err(|e| ModelError::RuntimeLoad {
                path: requested.clone(),
                reason: e.to_string(),
            })?;
        let runtime = Runtime {
            path: requested,
            environment,
        };
        tracing::info!(build = runtime.build_info(), "ONNX Runtime loaded");
        *loaded = Some(runtime.clone());
        Ok(runtime)
    }
}

/// Where the runtime library is expected: `explicit`, else `ORT_DYLIB_PATH`, else the cache.
pub fn locate_runtime(explicit: Option<&Path>, cache: &CacheDir) -> Result<PathBuf> {
    let candidate = explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(ORT_DYLIB_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| artifacts::runtime_library().map(|a| cache.join(a.dest)))
        .ok_or_else(|| ModelError::RuntimeNotFound {
            looked_for: PathBuf::from(format!(
                "${ORT_DYLIB_ENV} (no pinned runtime for {})",
                std::env::consts::ARCH
            )),
        })?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(ModelError::RuntimeNotFound {
            looked_for: candidate,
        })
    }
}

fn load_error(path: &Path, error: ort::LoadDynamicError) -> ModelError {
    match error {
        ort::LoadDynamicError::BadVersion { version_str, .. } => ModelError::RuntimeVersion {
            path: path.to_path_buf(),
            found: version_str,
            min_minor: ort::MINOR_VERSION,
        },
        ort::LoadDynamicError::MissingApi { .. } => ModelError::RuntimeLoad {
            path: path.to_path_buf(),
            reason: "it does not export OrtGetApiBase, so it is not ONNX Runtime".into(),
        },
        other => ModelError::RuntimeLoad {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

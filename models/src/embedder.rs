//! The embedding engine: texts in, unit vectors out.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use ndarray::{ArrayView2, ArrayView3, Ix2, Ix3};
use ort::{
    session::{Session, SessionInputValue, builder::SessionBuilder},
    value::Tensor,
};
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, Tokenizer, TruncationParams, TruncationStrategy};

use crate::{
    batching,
    config::{ModelConfig, Pooling},
    digest::verify_sha256,
    error::{ModelError, Result},
    pooling,
    runtime::Runtime,
};

/// Where inference should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Device {
    #[default]
    Cpu,
    Cuda {
        #[serde(default)]
        device_id: i32,
    },
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderOptions {
    pub device: Device,
    /// With `device = cuda`, run on the CPU (logged at WARN) instead of failing when CUDA
    /// cannot be used. Off by default: a user who asked for a GPU should hear that it is absent.
    pub cuda_fallback_to_cpu: bool,
    /// Threads ONNX Runtime may use inside one inference; `None` lets it pick (all cores).
    pub intra_threads: Option<usize>,
    /// Most texts sent to the model in one inference call; larger inputs are split.
    pub max_batch: usize,
    /// Sort each call's texts by length and cut batches where lengths jump, so short texts are
    /// not padded to a long one's length. Results always come back in the caller's order.
    /// CPU only: on CUDA each extra inference costs more than the padding it saves (measured on
    /// an H200: 0.44x the throughput at batch 128, docs/BENCHMARKS.md), so a GPU session runs
    /// each call's texts as they come, in batches of `max_batch`.
    pub length_bucketing: bool,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            cuda_fallback_to_cpu: false,
            intra_threads: None,
            max_batch: 32,
            length_bucketing: true,
        }
    }
}

/// Vectors for a batch of texts, stored as one contiguous row-major block.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    dimension: usize,
    data: Vec<f32>,
}

impl Embeddings {
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dimension
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, index: usize) -> &[f32] {
        &self.data[index * self.dimension..(index + 1) * self.dimension]
    }

    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f32]> {
        self.data.chunks_exact(self.dimension)
    }

    pub fn as_flat(&self) -> &[f32] {
        &self.data
    }

    pub fn into_vecs(self) -> Vec<Vec<f32>> {
        self.rows().map(<[f32]>::to_vec).collect()
    }
}

/// What an embedder has done since it was loaded, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EmbedderStats {
    /// Texts embedded.
    pub texts: u64,
    /// Inference calls made.
    pub batches: u64,
    /// Tokens of real text fed to the model.
    pub tokens: u64,
    /// Token slots fed to the model including padding (`>= tokens`).
    pub padded_tokens: u64,
    /// Wall time spent inside ONNX Runtime.
    pub inference_seconds: f64,
}

#[derive(Default)]
struct Counters {
    texts: AtomicU64,
    batches: AtomicU64,
    tokens: AtomicU64,
    padded_tokens: AtomicU64,
    inference_nanos: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Padding {
    id: i64,
    type_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenInput {
    Ids,
    AttentionMask,
    TypeIds,
}

/// A loaded model, ready to embed. Cheap to clone; clones share one ONNX session.
///
/// Inference is serialised through one session: ONNX Runtime already spreads a single run
/// over `intra_threads` cores, and on a 2-4 core device concurrent runs would only thrash.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model_id: String,
    dimension: usize,
    pooling: Pooling,
    normalize: bool,
    max_text_bytes: usize,
    max_batch: usize,
    length_bucketing: bool,
    device: Device,
    tokenizer: Tokenizer,
    padding: Padding,
    stats: Counters,
    inputs: Vec<(String, TokenInput)>,
    output: String,
    session: Mutex<Session>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.inner.model_id)
            .field("dimension", &self.inner.dimension)
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads (and, where the config pins checksums, verifies) a model.
    #[tracing::instrument(skip_all, fields(model_id = %config.id, device = %options.device))]
    pub fn load(runtime: &Runtime, config: &ModelConfig, options: &EmbedderOptions) -> Result<Self> {
        let started = Instant::now();
        check_file(&config.onnx, config.onnx_sha256.as_deref())?;
        check_file(&config.tokenizer, config.tokenizer_sha256.as_deref())?;
        if options.max_batch == 0 {
            return Err(ModelError::InvalidConfig {
                path: "embedder options".into(),
                reason: "max_batch must be at least 1".into(),
            });
        }

        let (tokenizer, padding) = load_tokenizer(&config.tokenizer, config.max_tokens)?;
        let (session, device) = build_session(runtime, &config.onnx, options)?;

        let unsupported = |reason: String| ModelError::UnsupportedModel {
            model_id: config.id.clone(),
            reason,
        };
        let inputs = session
            .inputs()
            .iter()
            .map(|input| {
                let kind = match input.name() {
                    "input_ids" => TokenInput::Ids,
                    "attention_mask" => TokenInput::AttentionMask,
                    "token_type_ids" => TokenInput::TypeIds,
                    other => {
                        return Err(unsupported(format!(
                            "input `{other}` is not one a tokenizer provides"
                        )));
                    }
                };
                Ok((input.name().to_string(), kind))
            })
            .collect::<Result<Vec<_>>>()?;
        if !inputs.iter().any(|(_, kind)| *kind == TokenInput::Ids) {
            return Err(unsupported("it has no `input_ids` input".into()));
        }

        let output = match &config.output {
            Some(name) => session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| unsupported(format!("it has no output named `{name}`")))?,
            None => session
                .outputs()
                .iter()
                .find(|o| o.name() == "last_hidden_state")
                .or_else(|| session.outputs().first())
                .ok_or_else(|| unsupported("it has no outputs".into()))?,
        };
        let expected_rank = if config.pooling == Pooling::None { 2 } else { 3 };
        let shape = output
            .dtype()
            .tensor_shape()
            .ok_or_else(|| unsupported(format!("output `{}` is not a tensor", output.name())))?;
        if shape.len() != expected_rank {
            return Err(unsupported(format!(
                "output `{}` has rank {}, but pooling {:?} needs rank {expected_rank}",
                output.name(),
                shape.len(),
                config.pooling
            )));
        }
        let declared_dimension = shape.last().copied().filter(|d| *d > 0).map(|d| d as usize);
        let output = output.name().to_string();

        let mut embedder = Embedder {
            inner: Arc::new(Inner {
                model_id: config.id.clone(),
                dimension: declared_dimension.unwrap_or(0),
                pooling: config.pooling,
                normalize: config.normalize,
                max_text_bytes: config.max_text_bytes,
                max_batch: options.max_batch,
                length_bucketing: options.length_bucketing && device == Device::Cpu,
                device,
                tokenizer,
                padding,
                stats: Counters::default(),
                inputs,
                output,
                session: Mutex::new(session),
            }),
        };
        if declared_dimension.is_none() {
            // The graph leaves the size symbolic; one tiny inference tells us.
            let probe = embedder.tokenize(&["dimension probe"])?;
            let (_, dimension) = embedder.infer(&[&probe[0]])?;
            Arc::get_mut(&mut embedder.inner)
                .expect("embedder not yet shared")
                .dimension = dimension;
        }
        if let Some(expected) = config.dimension
            && expected != embedder.inner.dimension
        {
            return Err(ModelError::DimensionMismatch {
                model_id: config.id.clone(),
                expected,
                actual: embedder.inner.dimension,
            });
        }
        tracing::info!(
            dimension = embedder.inner.dimension,
            device = %embedder.inner.device,
            load_ms = started.elapsed().as_millis() as u64,
            "embedding model loaded"
        );
        Ok(embedder)
    }

    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    pub fn dimension(&self) -> usize {
        self.inner.dimension
    }

    /// Where inference actually runs (CPU after a CUDA fallback).
    pub fn device(&self) -> Device {
        self.inner.device
    }

    pub fn max_text_bytes(&self) -> usize {
        self.inner.max_text_bytes
    }

    /// Embeds one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        Ok(self.embed_batch(&[text])?.data)
    }

    /// Embeds many texts, `max_batch` at a time. All texts are checked before any is embedded,
    /// so one bad text fails the call without wasted work.
    #[tracing::instrument(skip_all, fields(model_id = %self.inner.model_id, texts = texts.len()))]
    pub fn embed_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        for (index, text) in texts.iter().enumerate() {
            let text = text.as_ref();
            if text.len() > self.inner.max_text_bytes {
                return Err(ModelError::TextTooLong {
                    index,
                    bytes: text.len(),
                    limit: self.inner.max_text_bytes,
                });
            }
            if text.trim().is_empty() {
                return Err(ModelError::EmptyText { index });
            }
        }
        let encodings = self.tokenize(texts)?;
        let dimension = self.inner.dimension;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        let ranges = if self.inner.length_bucketing {
            order.sort_by_key(|&i| encodings[i].len());
            let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].len()).collect();
            batching::plan(&lengths, self.inner.max_batch)
        } else {
            batching::chunks(order.len(), self.inner.max_batch)
        };
        let mut data = vec![0f32; encodings.len() * dimension];
        for range in ranges {
            let members = &order[range];
            let batch: Vec<&Encoding> = members.iter().map(|&i| &encodings[i]).collect();
            let (pooled, _) = self.infer(&batch)?;
            for (row, &original) in pooled.chunks_exact(dimension).zip(members) {
                data[original * dimension..(original + 1) * dimension].copy_from_slice(row);
            }
        }
        self.inner
            .stats
            .texts
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        Ok(Embeddings { dimension, data })
    }

    /// Counters since load; cheap enough to read on every metrics scrape.
    pub fn stats(&self) -> EmbedderStats {
        let c = &self.inner.stats;
        EmbedderStats {
            texts: c.texts.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            padded_tokens: c.padded_tokens.load(Ordering::Relaxed),
            inference_seconds: c.inference_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// [`Embedder::embed_batch`] on tokio's blocking pool, so async callers never stall their
    /// runtime on inference.
    pub async fn embed_batch_async(&self, texts: Vec<String>) -> Result<Embeddings> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.embed_batch(&texts))
            .await
            .map_err(|e| ModelError::Join(e.to_string()))?
    }

    /// Tokenises (with truncation, without padding) all texts at once.
    fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoding>> {
        let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        self.inner
            .tokenizer
            .encode_batch_fast(texts, true)
            .map_err(|e| ModelError::Tokenize(e.to_string()))
    }

    /// One inference over `batch`, padded here to its longest member; returns the pooled (and
    /// normalised) rows and their dimension.
    #[tracing::instrument(level = "debug", skip_all, fields(texts = batch.len(), tokens))]
    fn infer(&self, batch: &[&Encoding]) -> Result<(Vec<f32>, usize)> {
        let inner = &*self.inner;
        let rows = batch.len();
        let width = batch.iter().map(|e| e.len()).max().unwrap_or(0);
        tracing::Span::current().record("tokens", rows * width);
        let padded = |field: fn(&Encoding) -> &[u32], pad: i64| -> Vec<i64> {
            let mut out = Vec::with_capacity(rows * width);
            for encoding in batch {
                let values = field(encoding);
                out.extend(values.iter().map(|&v| i64::from(v)));
                out.resize(out.len() + (width - values.len()), pad);
            }
            out
        };
        let mask = padded(Encoding::get_attention_mask, 0);
        let shape = [rows, width];

        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inner.inputs.len());
        for (name, kind) in &inner.inputs {
            let data = match kind {
                TokenInput::Ids => padded(Encoding::get_ids, inner.padding.id),
                TokenInput::AttentionMask => mask.clone(),
                TokenInput::TypeIds => padded(Encoding::get_type_ids, inner.padding.type_id),
            };
            let tensor = Tensor::from_array((shape, data)).map_err(ModelError::inference("input tensor"))?;
            values.push((name.clone(), tensor.into()));
        }

        let started = Instant::now();
        let mut session = inner
            .session
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(values).map_err(ModelError::inference("run"))?;
        let output = outputs
            .get(&inner.output)
            .ok_or_else(|| ModelError::UnsupportedModel {
                model_id: inner.model_id.clone(),
                reason: format!("output `{}` missing from results", inner.output),
            })?;
        let array = output
            .try_extract_array::<f32>()
            .map_err(ModelError::inference("output extraction"))?;
        let bad_shape = |e: ndarray::ShapeError| ModelError::UnsupportedModel {
            model_id: inner.model_id.clone(),
            reason: format!("output `{}` has shape {:?}: {e}", inner.output, array.shape()),
        };
        let mut pooled = match inner.pooling {
            Pooling::Mean => {
                let hidden: ArrayView3<'_, f32> =
                    array.view().into_dimensionality::<Ix3>().map_err(bad_shape)?;
                let mask = ArrayView2::from_shape(shape, &mask).map_err(bad_shape)?;
                pooling::mean_pool(hidden, mask)
            }
            Pooling::Cls => pooling::cls_pool(array.view().into_dimensionality::<Ix3>().map_err(bad_shape)?),
            Pooling::None => {
                let pooled = array.view().into_dimensionality::<Ix2>().map_err(bad_shape)?;
                pooled.iter().copied().collect()
            }
        };
        drop(outputs);
        drop(session);
        let elapsed = started.elapsed();

        let dimension = pooled.len() / rows.max(1);
        if inner.normalize && dimension > 0 {
            pooling::l2_normalize_rows(&mut pooled, dimension);
        }
        let stats = &inner.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .tokens
            .fetch_add(batch.iter().map(|e| e.len() as u64).sum(), Ordering::Relaxed);
        stats
            .padded_tokens
            .fetch_add((rows * width) as u64, Ordering::Relaxed);
        stats
            .inference_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        Ok((pooled, dimension))
    }
}

fn check_file(path: &Path, sha256: Option<&str>) -> Result<()> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    if let Some(expected) = sha256 {
        verify_sha256(path, expected)?;
    }
    Ok(())
}

fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<(Tokenizer, Padding)> {
    let corrupt = |reason: String| ModelError::CorruptTokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| corrupt(e.to_string()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .map_err(|e| corrupt(e.to_string()))?;
    // Padding is done per inference batch (see `Embedder::infer`), after length bucketing;
    // the tokenizer's own (often fixed-length) padding would defeat it.
    let padding = tokenizer
        .get_padding()
        .map_or(Padding { id: 0, type_id: 0 }, |p| Padding {
            id: i64::from(p.pad_id),
            type_id: i64::from(p.pad_type_id),
        });
    tokenizer.with_padding(None);
    Ok((tokenizer, padding))
}

fn build_session(runtime: &Runtime, onnx: &Path, options: &EmbedderOptions) -> Result<(Session, Device)> {
    let ort_error = |e: ort::Error| ModelError::RuntimeLoad {
        path: runtime.path().to_path_buf(),
        reason: e.to_string(),
    };
    let builder_error = |e: ort::Error<SessionBuilder>| ort_error(e.into());
    let mut builder = Session::builder(runtime.environment()).map_err(ort_error)?;
    if let Some(threads) = options.intra_threads {
        builder = builder.with_intra_threads(threads).map_err(builder_error)?;
    }
    let (mut builder, device) = with_device(builder, options)?;
    let session = builder
        .commit_from_file(onnx)
        .map_err(|e| ModelError::CorruptModel {
            path: onnx.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok((session, device))
}

/// Registers the requested execution provider, or falls back to CPU where allowed.
fn with_device(builder: SessionBuilder, options: &EmbedderOptions) -> Result<(SessionBuilder, Device)> {
    let Device::Cuda { device_id } = options.device else {
        return Ok((builder, Device::Cpu));
    };
    match register_cuda(builder, device_id) {
        Registration::Registered(builder) => Ok((builder, options.device)),
        Registration::Unavailable { builder, reason } if options.cuda_fallback_to_cpu => {
            tracing::warn!(%reason, "CUDA unavailable; falling back to CPU as configured");
            Ok((builder, Device::Cpu))
        }
        Registration::Unavailable { reason, .. } => Err(ModelError::CudaUnavailable { reason }),
    }
}

/// The outcome of asking for an execution provider; the builder comes back either way so the
/// caller can still fall back to CPU.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // without the feature, CUDA never registers
enum Registration {
    Registered(SessionBuilder),
    Unavailable { builder: SessionBuilder, reason: String },
}

#[cfg(feature = "cuda")]
fn register_cuda(builder: SessionBuilder, device_id: i32) -> Registration {
    use ort::ep::{CUDA, ExecutionProvider};
    let unavailable = |builder, reason: String| Registration::Unavailable { builder, reason };
    match CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => {
            return unavailable(
                builder,
                "the loaded ONNX Runtime has no CUDA execution provider (it needs the onnxruntime-gpu build)"
                    .into(),
            );
        }
        Err(e) => return unavailable(builder, e.to_string()),
    }
    let cuda = CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    match builder.with_execution_providers([cuda]) {
        Ok(builder) => Registration::Registered(builder),
        Err(e) => {
            let reason = e.to_string();
            unavailable(e.recover(), reason)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(builder: SessionBuilder, _device_id: i32) -> Registration {
    Registration::Unavailable {
        builder,
        reason: "this build of Murmur was compiled without the `cuda` feature".into(),
    }
}

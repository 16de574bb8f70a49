//! The local HTTP API (see docs/agent-api.md). Bodies are parsed here rather than by axum's
//! extractors so every rejection has the same JSON shape and the most precise status.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State},
    http::request::Parts,
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    error::AgentError,
    memory::{Limits, Memory, NewMemory},
    metrics::{RequestLabels, SearchLabels},
    service::{Agent, SearchRequest},
    time::format_ms,
};

/// An API error: status plus a stable machine-readable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        use murmur_models::ModelError;
        let message = error.to_string();
        let (status, code) = match &error {
            AgentError::InvalidInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::Deleted(_) => (StatusCode::GONE, "deleted"),
            AgentError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AgentError::QuotaExceeded { .. } => (StatusCode::INSUFFICIENT_STORAGE, "disk_quota_exceeded"),
            AgentError::CatchingUp(_) => (StatusCode::SERVICE_UNAVAILABLE, "catching_up"),
            AgentError::Embedding(ModelError::EmptyText { .. } | ModelError::TextTooLong { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("body is not valid JSON: {e}"),
            ),
            Category::Data => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string())
            }
        }
    })
}

/// A JSON body parsed by `parse_json`; a body the transport refuses (too large, unreadable)
/// becomes our error shape here, where it is rejected, rather than being rewritten later.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "unreadable_body"
            };
            ApiError::new(status, code, rejection.body_text())
        })?;
        parse_json(&body).map(JsonBody)
    }
}

/// Query-string parameters, with a malformed query string in our error shape.
struct QueryParams<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| QueryParams(params))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

fn parse_id(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{text:?} is not a memory id: {e}"),
        )
    })
}

fn memory_json(memory: &Memory, include_vector: bool) -> Value {
    let mut value = json!({
        "id": memory.id,
        "namespace": memory.namespace,
        "text": memory.text,
        "metadata": memory.metadata,
        "tags": memory.tags,
        "created_at": format_ms(memory.created_at_ms),
        "author": memory.author,
        "model_id": memory.model_id,
    });
    if include_vector {
        value["vector"] = json!(memory.vector);
    }
    value
}

/// Largest request body accepted: a full batch of maximal memories given with vectors, plus
/// JSON overhead.
pub fn body_limit(limits: &Limits) -> usize {
    limits.max_batch * (limits.max_text_bytes + limits.max_metadata_bytes + 16 * 1024) + 64 * 1024
}

pub fn router(agent: Arc<Agent>) -> Router {
    let body_limit = body_limit(&agent.config().limits);
    Router::new()
        .route("/v1/memories", post(add_one).get(list))
        .route("/v1/memories/batch", post(add_batch))
        .route("/v1/memories/{id}", get(get_one).delete(delete_one))
        .route("/v1/search", post(search))
        .route("/v1/stats", get(stats))
        .route("/v1/backup", get(backup))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .route_layer(middleware::from_fn_with_state(agent.clone(), observe))
        .with_state(agent)
}

/// Counts and times every request.
async fn observe(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let span = tracing::info_span!("http", %method, %route);
    let response = {
        let _enter = span.enter();
        next.run(request).await
    };
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    agent.metrics.requests.get_or_create(&labels).inc();
    agent
        .metrics
        .request_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(status = labels.status, route = %labels.route, ms = started.elapsed().as_millis() as u64, "request");
    response
}

async fn add_one(State(agent): State<Arc<Agent>>, JsonBody(new): JsonBody<NewMemory>) -> ApiResult<Response> {
    let stored = agent.add(vec![new]).await?;
    let memory = &stored[0];
    let body = json!({ "id": memory.id, "created_at": format_ms(memory.created_at_ms) });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    memories: Vec<NewMemory>,
}

async fn add_batch(
    State(agent): State<Arc<Agent>>,
    JsonBody(request): JsonBody<BatchRequest>,
) -> ApiResult<Response> {
    let stored = agent.add(request.memories).await?;
    let ids: Vec<Uuid> = stored.iter().map(|m| m.id).collect();
    Ok((StatusCode::CREATED, axum::Json(json!({ "ids": ids }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    #[serde(default)]
    include_vector: bool,
}

async fn get_one(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    QueryParams(params): QueryParams<GetParams>,
) -> ApiResult<axum::Json<Value>> {
    let memory = agent.get(parse_id(&id)?)?;
    Ok(axum::Json(memory_json(&memory, params.include_vector)))
}

async fn delete_one(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    agent.delete(parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    namespace: Option<String>,
    #[serde(default, deserialize_with = "crate::whole_number::deserialize_optional_text")]
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    State(agent): State<Arc<Agent>>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    let cursor = params.cursor.as_deref().map(parse_id).transpose()?;
    let (memories, more) = agent.list(params.namespace.as_deref(), cursor, params.limit.unwrap_or(100))?;
    let next_cursor = if more { memories.last().map(|m| m.id) } else { None };
    let items: Vec<Value> = memories.iter().map(|m| memory_json(m, false)).collect();
    Ok(axum::Json(
        json!({ "memories": items, "next_cursor": next_cursor }),
    ))
}

async fn search(
    State(agent): State<Arc<Agent>>,
    JsonBody(request): JsonBody<SearchRequest>,
) -> ApiResult<axum::Json<Value>> {
    let (hits, path) = agent.search(request).await?;
    agent
        .metrics
        .searches
        .get_or_create(&SearchLabels {
            path: path.as_str().to_string(),
        })
        .inc();
    let results: Vec<Value> = hits
        .iter()
        .map(|hit| {
            let mut value = memory_json(&hit.memory, false);
            value["score"] = json!(hit.score);
            value
        })
        .collect();
    Ok(axum::Json(json!({ "results": results })))
}

async fn stats(State(agent): State<Arc<Agent>>) -> ApiResult<axum::Json<crate::service::Stats>> {
    Ok(axum::Json(agent.stats()?))
}

/// A consistent backup of this agent (see `backup.rs`), streamed. It is written to a file in
/// the data directory first, so the snapshot takes the write lock only as long as reading the
/// store does, never as long as a slow client takes; the file is unlinked as soon as it is
/// open, so nothing is left behind whether the client reads it all or goes away.
async fn backup(State(agent): State<Arc<Agent>>) -> ApiResult<Response> {
    let path = agent.partial_backup_path();
    let written = {
        let (agent, path) = (agent.clone(), path.clone());
        tokio::task::spawn_blocking(move || agent.write_backup(&path))
            .await
            .map_err(|e| AgentError::Join(e.to_string()))
            .and_then(|written| written)
    };
    let opened = match written {
        Ok(summary) => tokio::fs::File::open(&path)
            .await
            .map(|file| (summary, file))
            .map_err(AgentError::io(format!("opening {}", path.display()))),
        Err(error) => Err(error),
    };
    if let Err(error) = tokio::fs::remove_file(&path).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %path.display(), "removing a served backup; it goes at the next start");
    }
    let (summary, file) = opened?;
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 256 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let author = &summary.header.author;
    let name = format!(
        "murmur-{}-{}.backup",
        &author[..author.len().min(16)],
        summary.header.created_ms
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, summary.bytes.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (
                header::HeaderName::from_static(BACKUP_SHA256_HEADER),
                summary.sha256.clone(),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// The header that carries a backup's SHA-256, for the client to check what it received.
pub const BACKUP_SHA256_HEADER: &str = "x-murmur-backup-sha256";

async fn healthz(State(agent): State<Arc<Agent>>) -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok", "model_id": agent.embedder().model_id() }))
}

async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let exposition = agent.render_metrics(accept);
    ([(header::CONTENT_TYPE, exposition.content_type)], exposition.body).into_response()
}

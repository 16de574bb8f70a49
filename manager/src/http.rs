//! The manager's HTTP side: the dashboard page, its JSON API behind the operator token, and
//! `/healthz`, `/readyz` and `/metrics` for whoever runs the manager.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Path, Request, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use murmur_models::Embedder;
use murmur_sync::{MemoryDraft, MemoryId, RecordLimits};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::manager::{Inbound, Manager, PublishError, now_ms};

const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const MAX_K: usize = 100;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub embedder: Option<Arc<Embedder>>,
    pub inbox: mpsc::Sender<Inbound>,
    /// SHA-256 of the operator token: compared digest to digest, so timing says nothing.
    pub token_digest: [u8; 32],
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/healthz", get(healthz))
        .route("/readyz", get(|| async { Json(json!({ "status": "ready" })) }))
        .route("/metrics", get(metrics))
        .route("/api/overview", get(overview))
        .route("/api/search", post(search))
        .route("/api/memories", post(publish))
        .route("/api/memories/{id}", get(memory))
        .with_state(state)
}

/// What the HTTP side answers while the manager loads its state from the bucket: alive
/// (`/healthz`), not ready (`/readyz` and everything else 503).
pub fn loading_router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "loading" })) }))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "loading",
                    "error": "the manager is loading the swarm's state from its bucket",
                })),
            )
        })
}

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A JSON request body whose rejections (not JSON, wrong fields, no content type, too large)
/// answer in the API's error shape with axum's status, as every other error does.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(body)| JsonBody(body))
            .map_err(|rejection: JsonRejection| ApiError(rejection.status(), rejection.body_text()))
    }
}

/// A count from JSON, where `10` and `10.0` are the same number (JSON Schema's `integer`
/// includes both): `None` for fractions, negatives and non-numbers.
fn whole_number(value: &Value) -> Option<usize> {
    let number = value.as_number()?;
    let whole = match number.as_u64() {
        Some(whole) => whole,
        None => {
            let float = number.as_f64()?;
            // Beyond 2^53 floats skip whole numbers; no count gets near it.
            if float.fract() != 0.0 || !(0.0..=9_007_199_254_740_992.0).contains(&float) {
                return None;
            }
            float as u64
        }
    };
    usize::try_from(whole).ok()
}

/// A request that carries the operator token. Taken before the body, so a caller without the
/// token learns nothing from how its body is parsed.
struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers).map(|()| Operator)
    }
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    if presented.is_empty() || digest != state.token_digest {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong operator token (Authorization: Bearer …)".into(),
        ));
    }
    Ok(())
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "uplinks": state.manager.connected_agents(),
        "memories": state.manager.view().memories.len(),
    }))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let exposition = state.manager.metrics.render(accept);
    ([(header::CONTENT_TYPE, exposition.content_type)], exposition.body)
}

async fn overview(State(state): State<AppState>, _: Operator) -> ApiResult {
    let manager = &state.manager;
    let now = now_ms();
    let (root, lags) = {
        let engine = manager.engine();
        let lags: std::collections::HashMap<[u8; 32], Option<u64>> = engine
            .peers()
            .map(|(key, status)| (*key, status.last_in_sync_ms.map(|t| now.saturating_sub(t))))
            .collect();
        (hex::encode(engine.root_digest()), lags)
    };
    let view = manager.view();
    let authored = view.authored_counts();
    let manager_key = hex::encode(manager.key);
    let mut nodes =
        vec![json!({"id": manager_key, "short": &manager_key[..8], "kind": "manager", "connected": true})];
    let mut edges = Vec::new();
    let agents: Vec<Value> = view
        .agents
        .iter()
        .map(|(key, entry)| {
            let id = hex::encode(key);
            nodes.push(json!({"id": id, "short": &id[..8], "kind": "agent", "connected": entry.connected}));
            if entry.connected {
                edges.push(json!({"from": id, "to": manager_key, "kind": "uplink", "relayed": false, "rtt_ms": null}));
            }
            let peers = entry.report.as_ref().map_or(0, |r| r.peers.len());
            if let Some(report) = &entry.report {
                for peer in &report.peers {
                    // Each link is reported by both ends: draw it once.
                    if id < peer.key || !view.agents.keys().any(|k| hex::encode(k) == peer.key) {
                        edges.push(json!({"from": id, "to": peer.key, "kind": "gossip", "relayed": peer.relayed, "rtt_ms": peer.rtt_ms}));
                    }
                }
            }
            json!({
                "key": id,
                "short": &id[..8],
                "connected": entry.connected,
                "address": entry.address,
                "software": entry.software,
                "first_seen_ms": entry.first_seen_ms,
                "last_seen_ms": entry.last_seen_ms,
                "sync_lag_ms": lags.get(key).copied().flatten(),
                "memories_authored": authored.get(key).copied().unwrap_or(0),
                "reported_memories": entry.report.as_ref().and_then(|r| r.memories),
                "peers": peers,
                "refused_messages": entry.refused_messages,
            })
        })
        .collect();
    Ok(Json(json!({
        "now_ms": now,
        "manager": {
            "key": manager_key,
            "writer": manager.bucket.writer(),
            "bucket": manager.bucket.url(),
            "at_rest_key": manager.bucket.sealer().map(|s| s.fingerprint()),
            "started_at_ms": manager.started_at_ms,
            "root_digest": root,
        },
        "memories": {"live": view.memories.len(), "deleted": view.deletions.len()},
        "agents": agents,
        "history": view.history,
        "graph": {"nodes": nodes, "edges": edges},
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    query: String,
    /// A JSON number, checked by `whole_number`.
    #[serde(default = "default_k")]
    k: Value,
}

fn default_k() -> Value {
    Value::from(10)
}

fn embedder(state: &AppState) -> Result<&Arc<Embedder>, ApiError> {
    state.embedder.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this manager runs without the embedding model (model.disabled)".into(),
        )
    })
}

async fn embed(embedder: &Embedder, text: String) -> Result<Vec<f32>, ApiError> {
    let vectors = embedder
        .embed_batch_async(vec![text])
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(vectors.row(0).to_vec())
}

async fn search(
    State(state): State<AppState>,
    _: Operator,
    JsonBody(request): JsonBody<SearchRequest>,
) -> ApiResult {
    let embedder = embedder(&state)?;
    if request.query.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "query is empty".into()));
    }
    let k = whole_number(&request.k)
        .filter(|k| (1..=MAX_K).contains(k))
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("k must be a whole number 1-{MAX_K}"),
            )
        })?;
    let query = embed(embedder, request.query).await?;
    state.manager.metrics.searches.inc();
    let view = state.manager.view();
    let (hits, searched) = view.search(embedder.model_id(), &query, k);
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|(score, record)| {
            json!({
                "id": record.id.as_uuid(),
                "score": score,
                "text": record.text,
                "author": hex::encode(record.author),
                "namespace": record.namespace,
                "created_at_ms": record.created_at_ms(),
            })
        })
        .collect();
    Ok(Json(
        json!({"hits": hits, "model": embedder.model_id(), "searched": searched}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    text: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    tags: Vec<String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// An operator's memory: embedded here, signed by the manager, stored, then sent to agents.
async fn publish(
    State(state): State<AppState>,
    _: Operator,
    JsonBody(request): JsonBody<PublishRequest>,
) -> ApiResult {
    let embedder = embedder(&state)?;
    if request.text.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "text is empty".into()));
    }
    // Counted as sent, as the agent counts them: the record keeps them de-duplicated, but a
    // request over the limit is refused whatever it repeats.
    let max_tags = RecordLimits::default().max_tags;
    if request.tags.len() > max_tags {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("{} tags; the limit is {max_tags}", request.tags.len()),
        ));
    }
    let vector = embed(embedder, request.text.clone()).await?;
    let draft = MemoryDraft {
        namespace: request.namespace,
        text: request.text,
        metadata_json: Value::Object(request.metadata).to_string(),
        tags: request.tags,
        model_id: embedder.model_id().to_owned(),
        vector,
    };
    let (reply, answer) = oneshot::channel();
    state
        .inbox
        .send(Inbound::Publish {
            drafts: vec![draft],
            reply,
        })
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the manager is stopping".into()))?;
    let records = answer
        .await
        .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "the manager is stopping".into()))?
        .map_err(|e| match e {
            PublishError::Invalid(reason) => ApiError(StatusCode::BAD_REQUEST, reason),
            not_stored @ PublishError::NotStored(_) => {
                ApiError(StatusCode::SERVICE_UNAVAILABLE, not_stored.to_string())
            }
        })?;
    let ids: Vec<_> = records.iter().map(|r| r.id.as_uuid()).collect();
    Ok(Json(json!({"ids": ids})))
}

async fn memory(State(state): State<AppState>, _: Operator, Path(id): Path<String>) -> ApiResult {
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("{id:?} is not a memory id")))?;
    let id = MemoryId(uuid.into_bytes());
    let view = state.manager.view();
    if let Some(record) = view.memories.get(&id) {
        return Ok(Json(json!({
            "id": uuid,
            "text": record.text,
            "namespace": record.namespace,
            "author": hex::encode(record.author),
            "metadata": serde_json::from_str::<Value>(&record.metadata_json).unwrap_or(Value::Null),
            "tags": record.tags,
            "model_id": record.model_id,
            "created_at_ms": record.created_at_ms(),
        })));
    }
    if view.deletions.contains_key(&id) {
        return Err(ApiError(StatusCode::GONE, format!("memory {uuid} was deleted")));
    }
    Err(ApiError(StatusCode::NOT_FOUND, format!("no memory {uuid}")))
}

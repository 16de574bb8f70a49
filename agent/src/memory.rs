//! What a memory is, what a valid one looks like, and how it is laid out on disk.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{AgentError, Result};

pub const DEFAULT_NAMESPACE: &str = "default";

/// Bounds on what one memory may hold. Small devices need them; the swarm needs them more
/// (every peer stores what one agent accepts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_text_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    /// Memories per batch request.
    pub max_batch: usize,
}

/// Defaults are what the swarm accepts from any member: an agent never writes what its peers
/// would refuse.
impl Default for Limits {
    fn default() -> Self {
        let swarm = murmur_sync::RecordLimits::default();
        Self {
            max_text_bytes: swarm.max_text_bytes,
            max_metadata_bytes: swarm.max_metadata_bytes,
            max_tags: swarm.max_tags,
            max_tag_bytes: swarm.max_tag_bytes,
            max_batch: 256,
        }
    }
}

/// A memory as a client submits it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMemory {
    pub text: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A vector already made by this agent's model; skips embedding. Must match its dimension.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
}

/// A memory that passed validation, before it has an id or a vector.
#[derive(Debug, Clone)]
pub struct ValidMemory {
    pub text: String,
    pub namespace: String,
    pub metadata: Map<String, Value>,
    pub tags: Vec<String>,
    pub vector: Option<Vec<f32>>,
}

/// A stored memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: Uuid,
    pub namespace: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    pub tags: Vec<String>,
    pub created_at_ms: u64,
    /// Hex ed25519 public key of the agent that wrote it.
    pub author: String,
    pub model_id: String,
    pub vector: Vec<f32>,
    /// Dense local key of this memory in the vector index (not shared with peers).
    pub label: u64,
}

/// Memory texts and query texts obey the same rules: not blank, at most `max_text_bytes`.
pub fn validate_text(what: &str, text: &str, limits: &Limits) -> Result<()> {
    if text.trim().is_empty() {
        return Err(AgentError::invalid(format!("{what} must not be empty")));
    }
    if text.len() > limits.max_text_bytes {
        return Err(AgentError::invalid(format!(
            "{what} is {} bytes; the limit is {}",
            text.len(),
            limits.max_text_bytes
        )));
    }
    Ok(())
}

/// The swarm's namespace rule (murmur-sync's, so what this agent accepts every peer accepts).
pub fn validate_namespace(namespace: &str) -> Result<()> {
    murmur_sync::validate_namespace(namespace).map_err(|e| AgentError::invalid(e.to_string()))
}

impl NewMemory {
    pub fn validate(self, limits: &Limits, dimension: usize) -> Result<ValidMemory> {
        validate_text("text", &self.text, limits)?;
        let namespace = self.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        validate_namespace(&namespace)?;
        let metadata = match self.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map,
            Some(other) => {
                return Err(AgentError::invalid(format!(
                    "metadata must be a JSON object, not {}",
                    json_kind(&other)
                )));
            }
        };
        let metadata_bytes = serde_json::to_vec(&metadata)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if metadata_bytes > limits.max_metadata_bytes {
            return Err(AgentError::invalid(format!(
                "metadata is {metadata_bytes} bytes as JSON; the limit is {}",
                limits.max_metadata_bytes
            )));
        }
        let tags = validate_tags(self.tags, limits)?;
        if let Some(vector) = &self.vector {
            validate_vector(vector, dimension)?;
        }
        Ok(ValidMemory {
            text: self.text,
            namespace,
            metadata,
            tags,
            vector: self.vector,
        })
    }
}

fn validate_tags(tags: Vec<String>, limits: &Limits) -> Result<Vec<String>> {
    if tags.len() > limits.max_tags {
        return Err(AgentError::invalid(format!(
            "{} tags; the limit is {}",
            tags.len(),
            limits.max_tags
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.trim().is_empty() || tag.len() > limits.max_tag_bytes || tag.chars().any(char::is_control) {
            return Err(AgentError::invalid(format!(
                "tag {tag:?} is invalid: 1-{} bytes, not blank, no control characters",
                limits.max_tag_bytes
            )));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// A query or stored vector must have the model's dimension, finite values and a direction.
pub fn validate_vector(vector: &[f32], dimension: usize) -> Result<()> {
    if vector.len() != dimension {
        return Err(AgentError::invalid(format!(
            "vector has {} dimensions; this agent's model has {dimension}",
            vector.len()
        )));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(AgentError::invalid(format!("vector[{i}] is not a finite number")));
    }
    if vector.iter().all(|v| *v == 0.0) {
        return Err(AgentError::invalid(
            "vector is all zeros; cosine similarity is undefined",
        ));
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// On-disk form, postcard-encoded behind a format byte so later versions can migrate.
#[derive(Serialize, Deserialize)]
struct StoredV2<'a> {
    // Borrowed when encoding, so a write does not copy the memory to serialise it.
    namespace: Cow<'a, str>,
    text: Cow<'a, str>,
    metadata_json: String,
    tags: Cow<'a, [String]>,
    created_at_ms: u64,
    /// The ed25519 public key itself, not its hex.
    author: [u8; 32],
    model_id: Cow<'a, str>,
    /// f16 bits, little-endian.
    vector: Vec<u8>,
    label: u64,
}

const FORMAT_V2: u8 = 2;

/// Authors are always this or another agent's 32-byte key in hex; anything else is stored as
/// zeros rather than failing a write that has already been validated.
fn author_bytes(author: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(author, &mut out).is_err() {
        out = [0u8; 32];
    }
    out
}

impl Memory {
    pub fn encode(&self) -> Vec<u8> {
        let stored = StoredV2 {
            namespace: Cow::Borrowed(&self.namespace),
            text: Cow::Borrowed(&self.text),
            metadata_json: serde_json::to_string(&self.metadata).unwrap_or_else(|_| "{}".into()),
            tags: Cow::Borrowed(&self.tags),
            created_at_ms: self.created_at_ms,
            author: author_bytes(&self.author),
            model_id: Cow::Borrowed(&self.model_id),
            vector: self
                .vector
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            label: self.label,
        };
        let mut out = vec![FORMAT_V2];
        // Encoding plain owned data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&stored).unwrap_or_default());
        out
    }

    pub fn decode(id: Uuid, bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| AgentError::CorruptRecord {
            key: id.to_string(),
            reason,
        };
        let (&format, body) = bytes
            .split_first()
            .ok_or_else(|| corrupt("empty record".into()))?;
        if format != FORMAT_V2 {
            return Err(corrupt(format!("unknown record format {format}")));
        }
        let stored: StoredV2 = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        if !stored.vector.len().is_multiple_of(2) {
            return Err(corrupt("vector has an odd number of bytes".into()));
        }
        let metadata = match serde_json::from_str(&stored.metadata_json) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(corrupt("metadata is not an object".into())),
            Err(e) => return Err(corrupt(e.to_string())),
        };
        Ok(Memory {
            id,
            namespace: stored.namespace.into_owned(),
            text: stored.text.into_owned(),
            metadata,
            tags: stored.tags.into_owned(),
            created_at_ms: stored.created_at_ms,
            author: hex::encode(stored.author),
            model_id: stored.model_id.into_owned(),
            vector: stored
                .vector
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            label: stored.label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(text: &str) -> NewMemory {
        NewMemory {
            text: text.into(),
            namespace: None,
            metadata: None,
            tags: vec![],
            vector: None,
        }
    }

    #[test]
    fn namespaces() {
        for ok in ["default", "site-7", "a", "cams.east_gate", "0x"] {
            validate_namespace(ok).unwrap();
        }
        for bad in [
            "",
            "-lead",
            "has space",
            "ümlaut",
            "semi;colon",
            "slash/y",
            &"x".repeat(65),
        ] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits::default();
        assert!(new("").validate(&limits, 4).is_err());
        assert!(
            new(&"x".repeat(limits.max_text_bytes + 1))
                .validate(&limits, 4)
                .is_err()
        );
        new(&"x".repeat(limits.max_text_bytes))
            .validate(&limits, 4)
            .unwrap();
        let mut m = new("t");
        m.metadata = Some(serde_json::json!([1, 2]));
        assert!(m.validate(&limits, 4).is_err());
        let mut m = new("t");
        m.metadata = Some(serde_json::json!({ "big": "y".repeat(limits.max_metadata_bytes) }));
        assert!(m.validate(&limits, 4).is_err());
        let mut m = new("t");
        m.tags = vec!["ok".into(), "bad\u{7}".into()];
        assert!(m.validate(&limits, 4).is_err());
        let mut m = new("t");
        m.tags = vec!["a".into(), "a".into(), "b".into()];
        assert_eq!(m.validate(&limits, 4).unwrap().tags, vec!["a", "b"]);
    }

    #[test]
    fn vectors() {
        validate_vector(&[0.5, 0.5], 2).unwrap();
        assert!(validate_vector(&[0.5], 2).is_err());
        assert!(validate_vector(&[f32::NAN, 1.0], 2).is_err());
        assert!(validate_vector(&[f32::INFINITY, 1.0], 2).is_err());
        assert!(validate_vector(&[0.0, 0.0], 2).is_err());
    }

    #[test]
    fn records_round_trip_and_corruption_is_detected() {
        let memory = Memory {
            id: Uuid::now_v7(),
            namespace: "ns".into(),
            text: "hello".into(),
            metadata: serde_json::json!({"k": [1, "two"]}).as_object().unwrap().clone(),
            tags: vec!["t".into()],
            created_at_ms: 1_700_000_000_000,
            author: "ab".repeat(32),
            model_id: "m".into(),
            vector: vec![0.25, -1.0],
            label: 7,
        };
        let bytes = memory.encode();
        assert_eq!(Memory::decode(memory.id, &bytes).unwrap(), memory);
        assert!(Memory::decode(memory.id, &bytes[..bytes.len() / 2]).is_err());
        assert!(Memory::decode(memory.id, &[]).is_err());
        assert!(Memory::decode(memory.id, &[9, 1, 2]).is_err());
    }
}

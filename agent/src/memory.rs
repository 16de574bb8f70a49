//! What a memory is, what a valid one looks like, and how it is laid out on disk.

use murmur_sync::{MemoryRecord, RecordLimits, Signatures};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    body_file::Slot,
    error::{AgentError, Result},
};

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

/// One tag: 1 to `max_tag_bytes` bytes, not blank, no control characters.
pub fn validate_tag(tag: &str, limits: &Limits) -> Result<()> {
    if tag.trim().is_empty() || tag.len() > limits.max_tag_bytes || tag.chars().any(char::is_control) {
        return Err(AgentError::invalid(format!(
            "tag {tag:?} is invalid: 1-{} bytes, not blank, no control characters",
            limits.max_tag_bytes
        )));
    }
    Ok(())
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
        validate_tag(&tag, limits)?;
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

/// A memory's row in the store (format 4): its local index label, where its body lies in the
/// body file, and a CRC32 over label and body, so a damaged byte is found when the memory is
/// read, never served. The body is the signed record exactly as the swarm holds it, stored
/// once and sent to peers as it is.
///
/// `format u8 = 4 | label u64 BE | body offset u64 BE | body length u32 BE | crc32 u32 BE`
const ROW_FORMAT: u8 = 4;
const ROW_BYTES: usize = 1 + 8 + Slot::ENCODED + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub label: u64,
    pub slot: Slot,
    pub crc: u32,
}

impl Row {
    pub fn encode(&self) -> Vec<u8> {
        let mut row = Vec::with_capacity(ROW_BYTES);
        row.push(ROW_FORMAT);
        row.extend_from_slice(&self.label.to_be_bytes());
        row.extend_from_slice(&self.slot.encode());
        row.extend_from_slice(&self.crc.to_be_bytes());
        row
    }

    pub fn decode(id: Uuid, bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| AgentError::CorruptRecord {
            key: format!("memories/{id}"),
            reason,
        };
        match bytes.first() {
            Some(&ROW_FORMAT) if bytes.len() == ROW_BYTES => {}
            Some(&ROW_FORMAT) => return Err(corrupt(format!("{} bytes, expected {ROW_BYTES}", bytes.len()))),
            Some(format) => return Err(corrupt(format!("unknown row format {format}"))),
            None => return Err(corrupt("empty row".into())),
        }
        let label = u64::from_be_bytes(bytes[1..9].try_into().map_err(|_| corrupt("label".into()))?);
        let slot = Slot::decode(&bytes[9..9 + Slot::ENCODED]).ok_or_else(|| corrupt("body slot".into()))?;
        let crc = u32::from_be_bytes(
            bytes[ROW_BYTES - 4..]
                .try_into()
                .map_err(|_| corrupt("checksum".into()))?,
        );
        Ok(Self { label, slot, crc })
    }

    /// Checks that `body` is the one this row was written with.
    pub fn check(&self, id: Uuid, body: &[u8]) -> Result<()> {
        if body_crc(self.label, body) != self.crc {
            return Err(AgentError::CorruptRecord {
                key: format!("memories/{id}"),
                reason: format!(
                    "checksum mismatch: the body at bytes {}..{} of the body file is damaged",
                    self.slot.offset,
                    self.slot.offset + u64::from(self.slot.len)
                ),
            });
        }
        Ok(())
    }
}

pub fn body_crc(label: u64, record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&label.to_be_bytes());
    hasher.update(record);
    hasher.finalize()
}

/// A memory with the signed record it was made from: what the store writes.
#[derive(Debug, Clone)]
pub struct StoredMemory {
    pub memory: Memory,
    pub record: Vec<u8>,
}

impl StoredMemory {
    pub fn from_record(record: &MemoryRecord, label: u64) -> Self {
        Self {
            memory: Memory::from_record(record, label),
            record: record.encode(),
        }
    }

    /// Its row, once its body is at `slot`.
    pub fn row(&self, slot: Slot) -> Row {
        Row {
            label: self.memory.label,
            slot,
            crc: body_crc(self.memory.label, &self.record),
        }
    }
}

impl Memory {
    /// The memory a signed record holds, with its local index label.
    pub fn from_record(record: &MemoryRecord, label: u64) -> Self {
        let metadata = match serde_json::from_str(&record.metadata_json) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Memory {
            id: record.id.as_uuid(),
            namespace: record.namespace.clone(),
            text: record.text.clone(),
            metadata,
            tags: record.tags.clone(),
            created_at_ms: record.created_at_ms(),
            author: hex::encode(record.author),
            model_id: record.model_id.clone(),
            vector: record.vector(),
            label,
        }
    }

    /// Reads a stored memory from its row and body. The record's signature was verified when
    /// it arrived and the row's CRC guards it since, so only its structure and id are checked
    /// again.
    pub fn decode(id: Uuid, row: &Row, body: &[u8]) -> Result<Self> {
        row.check(id, body)?;
        let record = MemoryRecord::decode_checked(body, &RecordLimits::default(), Signatures::Trusted)
            .map_err(|e| AgentError::CorruptRecord {
                key: format!("memories/{id}"),
                reason: e.to_string(),
            })?;
        if record.id.as_uuid() != id {
            return Err(AgentError::CorruptRecord {
                key: format!("memories/{id}"),
                reason: format!("holds the record of {}", record.id.as_uuid()),
            });
        }
        Ok(Self::from_record(&record, row.label))
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
    fn rows_round_trip_and_a_flipped_byte_is_found() {
        let draft = murmur_sync::MemoryDraft {
            namespace: "ns".into(),
            text: "hello".into(),
            metadata_json: r#"{"k":[1,"two"]}"#.into(),
            tags: vec!["t".into()],
            model_id: "m".into(),
            vector: vec![0.25, -1.0],
        };
        let key = murmur_sync::SigningKey::from_bytes(&[3; 32]);
        let (record, _) =
            MemoryRecord::sign(&draft, &key, 1_700_000_000_000, 9, &RecordLimits::default()).unwrap();
        let stored = StoredMemory::from_record(&record, 7);
        let id = stored.memory.id;
        let row = stored.row(Slot {
            offset: 40,
            len: stored.record.len() as u32,
        });
        let encoded = row.encode();
        assert_eq!(Row::decode(id, &encoded).unwrap(), row);
        assert_eq!(Memory::decode(id, &row, &stored.record).unwrap(), stored.memory);
        for at in [0, 5, 20, stored.record.len() - 1] {
            let mut damaged = stored.record.clone();
            damaged[at] ^= 0x10;
            let error = Memory::decode(id, &row, &damaged).unwrap_err().to_string();
            assert!(
                error.contains(&format!("memories/{id}")) && error.contains("damaged"),
                "{error}"
            );
        }
        assert!(Row::decode(id, &encoded[..encoded.len() - 1]).is_err());
        assert!(Row::decode(id, &[]).is_err());
        assert!(Row::decode(id, &[3; ROW_BYTES]).is_err(), "another row format");
        assert!(
            Memory::decode(uuid::Uuid::nil(), &row, &stored.record).is_err(),
            "filed under another id"
        );
    }
}

//! Signed memories and tombstones: what the swarm replicates, and the rules for accepting them.
//!
//! Both are encoded as `body || signature`, the signature (ed25519) taken over a domain tag and
//! the body, so the bytes a peer received are exactly the bytes that were signed: there is no
//! re-encoding step in which two implementations could disagree.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::Value;

use crate::{
    codec::{Reader, Writer},
    error::{DecodeError, RecordError},
    id::{AuthorKey, MemoryId, short_key},
};

const MEMORY_DOMAIN: &[u8] = b"murmur/memory/v1\0";
const TOMBSTONE_DOMAIN: &[u8] = b"murmur/tombstone/v1\0";
const MEMORY_FORMAT: u8 = 1;
const TOMBSTONE_FORMAT: u8 = 1;

/// Bounds on one memory. Every replica stores what any member writes, so these bind the swarm,
/// not just the writer: a record over them is refused wherever it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    pub max_text_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    pub max_model_id_bytes: usize,
    pub max_dimension: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        Self {
            max_text_bytes: 8 * 1024,
            max_metadata_bytes: 8 * 1024,
            max_tags: 32,
            max_tag_bytes: 64,
            max_model_id_bytes: 128,
            max_dimension: 4096,
        }
    }
}

impl RecordLimits {
    /// The largest encoded memory these limits allow: bounds every buffer that holds one.
    pub fn max_record_bytes(&self) -> usize {
        1 + 16
            + 8
            + 32
            + 10
            + 64
            + 10
            + self.max_text_bytes
            + 10
            + self.max_metadata_bytes
            + 10
            + self.max_tags * (10 + self.max_tag_bytes)
            + 10
            + self.max_model_id_bytes
            + 10
            + 2 * self.max_dimension
            + 64
    }
}

/// A memory as its author submits it, before it has an id or a signature.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryDraft {
    pub namespace: String,
    pub text: String,
    /// A JSON object, as text.
    pub metadata_json: String,
    pub tags: Vec<String>,
    pub model_id: String,
    pub vector: Vec<f32>,
}

/// A memory whose signature and id binding have been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRecord {
    pub id: MemoryId,
    pub nonce: u64,
    pub author: AuthorKey,
    pub namespace: String,
    pub text: String,
    pub metadata_json: String,
    pub tags: Vec<String>,
    pub model_id: String,
    /// IEEE half precision, little-endian: what travels and what the agent stores.
    pub vector_f16: Vec<u8>,
    pub signature: [u8; 64],
}

impl MemoryRecord {
    pub fn created_at_ms(&self) -> u64 {
        self.id.created_at_ms()
    }

    pub fn dimension(&self) -> usize {
        self.vector_f16.len() / 2
    }

    pub fn vector(&self) -> Vec<f32> {
        self.vector_f16
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }

    /// Bytes of text, metadata and vector: the payload a user would count as "the memory".
    pub fn payload_bytes(&self) -> usize {
        self.text.len() + self.metadata_json.len() + self.vector_f16.len()
    }

    pub fn sign(
        draft: &MemoryDraft,
        key: &SigningKey,
        created_at_ms: u64,
        nonce: u64,
        limits: &RecordLimits,
    ) -> Result<(Self, Vec<u8>), RecordError> {
        validate_draft(draft, limits)?;
        let author = key.verifying_key().to_bytes();
        let mut record = Self {
            id: MemoryId::derive(&author, created_at_ms, nonce),
            nonce,
            author,
            namespace: draft.namespace.clone(),
            text: draft.text.clone(),
            metadata_json: draft.metadata_json.clone(),
            tags: dedup(&draft.tags),
            model_id: draft.model_id.clone(),
            vector_f16: draft
                .vector
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            signature: [0; 64],
        };
        validate_vector_f16(&record.vector_f16)?;
        let body = record.encode_body();
        record.signature = key.sign(&signed_message(MEMORY_DOMAIN, &body)).to_bytes();
        let mut bytes = body;
        bytes.extend_from_slice(&record.signature);
        Ok((record, bytes))
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(128 + self.text.len() + self.metadata_json.len() + self.vector_f16.len());
        w.u8(MEMORY_FORMAT);
        w.raw(&self.id.0);
        w.u64(self.nonce);
        w.raw(&self.author);
        w.bytes(self.namespace.as_bytes());
        w.bytes(self.text.as_bytes());
        w.bytes(self.metadata_json.as_bytes());
        w.varint(self.tags.len() as u64);
        for tag in &self.tags {
            w.bytes(tag.as_bytes());
        }
        w.bytes(self.model_id.as_bytes());
        w.bytes(&self.vector_f16);
        w.finish()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.encode_body();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    /// The id an encoded record claims, read without decoding or checking the rest: to skip
    /// a body already held before paying for its checks.
    pub fn id_in(bytes: &[u8]) -> Option<MemoryId> {
        match bytes {
            [MEMORY_FORMAT, rest @ ..] => rest.get(..16)?.try_into().ok().map(MemoryId),
            _ => None,
        }
    }

    /// Decodes, checks limits, the id binding and the signature. Nothing unverified escapes.
    pub fn decode_verified(bytes: &[u8], limits: &RecordLimits) -> Result<Self, RecordError> {
        Self::decode_checked(bytes, limits, Signatures::Verify)
    }

    /// As [`MemoryRecord::decode_verified`], but the signature is checked only when
    /// `signatures` says so: bytes this replica verified before and kept in a checksummed
    /// store need not be verified again.
    pub fn decode_checked(
        bytes: &[u8],
        limits: &RecordLimits,
        signatures: Signatures,
    ) -> Result<Self, RecordError> {
        if bytes.len() > limits.max_record_bytes() {
            return Err(DecodeError::TooLong {
                what: "memory record",
                len: bytes.len() as u64,
                max: limits.max_record_bytes(),
            }
            .into());
        }
        let body_len = bytes.len().checked_sub(64).ok_or(DecodeError::Truncated {
            what: "memory record",
        })?;
        let (body, signature) = bytes.split_at(body_len);
        let mut r = Reader::new(body);
        let format = r.u8("memory format")?;
        if format != MEMORY_FORMAT {
            return Err(invalid(format!("unknown memory format {format}")));
        }
        let id = MemoryId(r.array("memory id")?);
        let nonce = r.u64("nonce")?;
        let author: AuthorKey = r.array("author")?;
        let namespace = r.str(64, "namespace")?.to_owned();
        let text = r.str(limits.max_text_bytes, "text")?.to_owned();
        let metadata_json = r.str(limits.max_metadata_bytes, "metadata")?.to_owned();
        let tag_count = r.count(limits.max_tags, 1, "tags")?;
        let mut tags = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            tags.push(r.str(limits.max_tag_bytes, "tag")?.to_owned());
        }
        let model_id = r.str(limits.max_model_id_bytes, "model id")?.to_owned();
        let vector_f16 = r.bytes(2 * limits.max_dimension, "vector")?.to_vec();
        r.finish("memory record")?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(signature);
        let record = Self {
            id,
            nonce,
            author,
            namespace,
            text,
            metadata_json,
            tags,
            model_id,
            vector_f16,
            signature: sig,
        };
        validate_fields(
            &record.namespace,
            &record.text,
            &record.metadata_json,
            &record.tags,
            &record.model_id,
            limits,
        )?;
        if record.tags != dedup(&record.tags) {
            return Err(invalid("tags repeat".into()));
        }
        validate_vector_f16(&record.vector_f16)?;
        if !id.is_bound_to(&author, nonce) {
            return Err(RecordError::IdNotBoundToAuthor);
        }
        if signatures == Signatures::Verify {
            verify(&author, MEMORY_DOMAIN, body, &sig)?;
        }
        Ok(record)
    }
}

/// A signed delete. It names the memory's author and nonce so that any replica can check, even
/// before the memory itself arrives, that the deleter was allowed to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub id: MemoryId,
    pub author: AuthorKey,
    pub nonce: u64,
    pub deleter: AuthorKey,
    pub deleted_at_ms: u64,
    pub signature: [u8; 64],
}

/// Who may delete what: a memory's own author, and the swarm's admin keys (operators). Nobody
/// else, so one compromised device cannot erase the fleet's memory.
pub fn may_delete(deleter: &AuthorKey, author: &AuthorKey, admins: &[AuthorKey]) -> bool {
    deleter == author || admins.contains(deleter)
}

const TOMBSTONE_BYTES: usize = 1 + 16 + 32 + 8 + 32 + 8 + 64;

impl Tombstone {
    pub fn sign(
        memory: &MemoryRecord,
        key: &SigningKey,
        deleted_at_ms: u64,
        admins: &[AuthorKey],
    ) -> Result<(Self, Vec<u8>), RecordError> {
        Self::sign_for(memory.id, memory.author, memory.nonce, key, deleted_at_ms, admins)
    }

    /// Signs the delete of memory `id` by `author` (bound by `nonce`): all a tombstone needs,
    /// so a memory can be deleted where only its entry is held.
    pub fn sign_for(
        id: MemoryId,
        author: AuthorKey,
        nonce: u64,
        key: &SigningKey,
        deleted_at_ms: u64,
        admins: &[AuthorKey],
    ) -> Result<(Self, Vec<u8>), RecordError> {
        let deleter = key.verifying_key().to_bytes();
        if !may_delete(&deleter, &author, admins) {
            return Err(RecordError::DeleteNotAuthorized {
                deleter: short_key(&deleter),
                author: short_key(&author),
            });
        }
        let mut tombstone = Self {
            id,
            author,
            nonce,
            deleter,
            deleted_at_ms,
            signature: [0; 64],
        };
        let body = tombstone.encode_body();
        tombstone.signature = key.sign(&signed_message(TOMBSTONE_DOMAIN, &body)).to_bytes();
        let mut bytes = body;
        bytes.extend_from_slice(&tombstone.signature);
        Ok((tombstone, bytes))
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(TOMBSTONE_BYTES);
        w.u8(TOMBSTONE_FORMAT);
        w.raw(&self.id.0);
        w.raw(&self.author);
        w.u64(self.nonce);
        w.raw(&self.deleter);
        w.u64(self.deleted_at_ms);
        w.finish()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = self.encode_body();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn decode_verified(bytes: &[u8], admins: &[AuthorKey]) -> Result<Self, RecordError> {
        Self::decode_checked(bytes, admins, Signatures::Verify)
    }

    /// As [`Tombstone::decode_verified`], with the signature checked only when asked.
    pub fn decode_checked(
        bytes: &[u8],
        admins: &[AuthorKey],
        signatures: Signatures,
    ) -> Result<Self, RecordError> {
        if bytes.len() != TOMBSTONE_BYTES {
            return Err(invalid(format!(
                "a tombstone is {TOMBSTONE_BYTES} bytes, not {}",
                bytes.len()
            )));
        }
        let (body, signature) = bytes.split_at(TOMBSTONE_BYTES - 64);
        let mut r = Reader::new(body);
        let format = r.u8("tombstone format")?;
        if format != TOMBSTONE_FORMAT {
            return Err(invalid(format!("unknown tombstone format {format}")));
        }
        let tombstone = Self {
            id: MemoryId(r.array("memory id")?),
            author: r.array("author")?,
            nonce: r.u64("nonce")?,
            deleter: r.array("deleter")?,
            deleted_at_ms: r.u64("deleted at")?,
            signature: signature
                .try_into()
                .map_err(|_| DecodeError::Truncated { what: "signature" })?,
        };
        r.finish("tombstone")?;
        if !tombstone.id.is_bound_to(&tombstone.author, tombstone.nonce) {
            return Err(RecordError::IdNotBoundToAuthor);
        }
        if !may_delete(&tombstone.deleter, &tombstone.author, admins) {
            return Err(RecordError::DeleteNotAuthorized {
                deleter: short_key(&tombstone.deleter),
                author: short_key(&tombstone.author),
            });
        }
        if signatures == Signatures::Verify {
            verify(&tombstone.deleter, TOMBSTONE_DOMAIN, body, &tombstone.signature)?;
        }
        Ok(tombstone)
    }
}

/// Whether decoding checks ed25519 signatures. Everything from a peer is verified; only a
/// driver's own store, holding what this replica verified before behind checksums, is loaded
/// with `Trusted` (structure, limits and id bindings are still checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    Verify,
    Trusted,
}

fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + body.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(body);
    message
}

pub(crate) fn verify(
    key: &AuthorKey,
    domain: &[u8],
    body: &[u8],
    signature: &[u8; 64],
) -> Result<(), RecordError> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| RecordError::BadSignature)?;
    key.verify(&signed_message(domain, body), &Signature::from_bytes(signature))
        .map_err(|_| RecordError::BadSignature)
}

fn invalid(reason: String) -> RecordError {
    RecordError::Invalid(reason)
}

fn dedup(tags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    out
}

/// The namespace rule the agent's API enforces, restated here because a peer's record never
/// passed through that API.
pub fn validate_namespace(namespace: &str) -> Result<(), RecordError> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 64
        && namespace.as_bytes()[0].is_ascii_alphanumeric()
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "namespace {namespace:?} is invalid: 1-64 of A-Z a-z 0-9 _ - ., starting with a letter or digit"
        )))
    }
}

fn validate_draft(draft: &MemoryDraft, limits: &RecordLimits) -> Result<(), RecordError> {
    let tags = dedup(&draft.tags);
    validate_fields(
        &draft.namespace,
        &draft.text,
        &draft.metadata_json,
        &tags,
        &draft.model_id,
        limits,
    )?;
    if draft.vector.len() > limits.max_dimension {
        return Err(invalid(format!(
            "vector has {} dimensions; the limit is {}",
            draft.vector.len(),
            limits.max_dimension
        )));
    }
    if let Some(i) = draft.vector.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!("vector[{i}] is not a finite number")));
    }
    Ok(())
}

fn validate_fields(
    namespace: &str,
    text: &str,
    metadata_json: &str,
    tags: &[String],
    model_id: &str,
    limits: &RecordLimits,
) -> Result<(), RecordError> {
    validate_namespace(namespace)?;
    if text.trim().is_empty() {
        return Err(invalid("text is empty".into()));
    }
    if text.len() > limits.max_text_bytes {
        return Err(invalid(format!(
            "text is {} bytes; the limit is {}",
            text.len(),
            limits.max_text_bytes
        )));
    }
    if metadata_json.len() > limits.max_metadata_bytes {
        return Err(invalid(format!(
            "metadata is {} bytes; the limit is {}",
            metadata_json.len(),
            limits.max_metadata_bytes
        )));
    }
    match serde_json::from_str::<Value>(metadata_json) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return Err(invalid("metadata is not a JSON object".into())),
        Err(e) => return Err(invalid(format!("metadata is not JSON: {e}"))),
    }
    if tags.len() > limits.max_tags {
        return Err(invalid(format!(
            "{} tags; the limit is {}",
            tags.len(),
            limits.max_tags
        )));
    }
    for tag in tags {
        if tag.trim().is_empty() || tag.len() > limits.max_tag_bytes || tag.chars().any(char::is_control) {
            return Err(invalid(format!(
                "tag {tag:?} is invalid: 1-{} bytes, not blank, no control characters",
                limits.max_tag_bytes
            )));
        }
    }
    if model_id.is_empty() || model_id.len() > limits.max_model_id_bytes {
        return Err(invalid(format!(
            "model id must be 1-{} bytes",
            limits.max_model_id_bytes
        )));
    }
    Ok(())
}

fn validate_vector_f16(vector: &[u8]) -> Result<(), RecordError> {
    if vector.is_empty() || !vector.len().is_multiple_of(2) {
        return Err(invalid("vector must hold at least one f16 value".into()));
    }
    let mut any_nonzero = false;
    for (i, b) in vector.chunks_exact(2).enumerate() {
        let v = half::f16::from_le_bytes([b[0], b[1]]);
        if !v.is_finite() {
            return Err(invalid(format!("vector[{i}] is not finite at half precision")));
        }
        any_nonzero |= v.to_f32() != 0.0;
    }
    if !any_nonzero {
        return Err(invalid("vector is all zeros".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn draft(text: &str) -> MemoryDraft {
        MemoryDraft {
            namespace: "default".into(),
            text: text.into(),
            metadata_json: r#"{"site":"bay-7"}"#.into(),
            tags: vec!["forklift".into(), "forklift".into()],
            model_id: "all-MiniLM-L6-v2-int8".into(),
            vector: vec![0.5, -0.25, 0.125],
        }
    }

    #[test]
    fn memories_round_trip_and_any_flipped_byte_is_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let limits = RecordLimits::default();
        let (record, bytes) = MemoryRecord::sign(&draft("battery low"), &key, 1_000, 9, &limits).unwrap();
        assert_eq!(record.tags, vec!["forklift"]);
        assert_eq!(record.vector(), vec![0.5, -0.25, 0.125]);
        assert_eq!(MemoryRecord::decode_verified(&bytes, &limits).unwrap(), record);
        assert_eq!(record.encode(), bytes);
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            assert!(
                MemoryRecord::decode_verified(&tampered, &limits).is_err(),
                "byte {i}"
            );
        }
        for len in 0..bytes.len() {
            assert!(MemoryRecord::decode_verified(&bytes[..len], &limits).is_err());
        }
    }

    #[test]
    fn a_record_re_signed_by_another_key_cannot_keep_the_id() {
        let limits = RecordLimits::default();
        let (mut record, _) =
            MemoryRecord::sign(&draft("x"), &SigningKey::from_bytes(&[3; 32]), 1, 1, &limits).unwrap();
        let thief = SigningKey::from_bytes(&[4; 32]);
        record.author = thief.verifying_key().to_bytes();
        let body = record.encode_body();
        record.signature = thief.sign(&signed_message(MEMORY_DOMAIN, &body)).to_bytes();
        assert_eq!(
            MemoryRecord::decode_verified(&record.encode(), &limits),
            Err(RecordError::IdNotBoundToAuthor)
        );
    }

    #[test]
    fn bad_drafts_are_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let limits = RecordLimits::default();
        let cases: Vec<fn(&mut MemoryDraft)> = vec![
            |d| d.text = " ".into(),
            |d| d.text = "x".repeat(8 * 1024 + 1),
            |d| d.namespace = "no space".into(),
            |d| d.metadata_json = "[1]".into(),
            |d| d.metadata_json = "{".into(),
            |d| d.tags = vec!["\u{7}".into()],
            |d| d.model_id = String::new(),
            |d| d.vector = vec![f32::NAN],
            |d| d.vector = vec![0.0, 0.0],
            |d| d.vector = vec![1e6], // overflows f16
            |d| d.vector = vec![],
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut d = draft("ok");
            mutate(&mut d);
            assert!(MemoryRecord::sign(&d, &key, 1, 1, &limits).is_err(), "case {i}");
        }
    }

    #[test]
    fn only_authors_and_admins_may_delete() {
        let limits = RecordLimits::default();
        let author = SigningKey::from_bytes(&[3; 32]);
        let admin = SigningKey::from_bytes(&[5; 32]);
        let other = SigningKey::from_bytes(&[6; 32]);
        let admins = [admin.verifying_key().to_bytes()];
        let (record, _) = MemoryRecord::sign(&draft("x"), &author, 1, 1, &limits).unwrap();
        for key in [&author, &admin] {
            let (t, bytes) = Tombstone::sign(&record, key, 5, &admins).unwrap();
            assert_eq!(Tombstone::decode_verified(&bytes, &admins).unwrap(), t);
            // Without the admin list the admin's tombstone is not authorized.
            assert_eq!(Tombstone::decode_verified(&bytes, &[]).is_ok(), key == &author);
            let mut tampered = bytes.clone();
            tampered[20] ^= 1;
            assert!(Tombstone::decode_verified(&tampered, &admins).is_err());
        }
        assert!(Tombstone::sign(&record, &other, 5, &admins).is_err());
    }
}

//! One shard of the swarm's state: an automerge document whose root map holds, per memory,
//! its signed record ([`Format::InlineBodies`]) or its entry ([`Format::BodiesByHash`]), and
//! signed tombstones; and the gate every change must pass to get in.
//!
//! The document is insert-only by construction. A change is admitted only if (1) its actor id
//! is an ed25519 key and the change hash carries that key's signature, (2) every operation puts
//! a byte value on a fresh root key (no deletes, no overwrites, no nested objects), and (3) each
//! value is a record (or an entry) by that same key, filed under its own id, in this shard. So
//! a peer can relay other agents' changes but can neither forge nor alter nor remove them; an
//! entry's body hash, signed with the change, binds the body that travels beside it.

use std::collections::{BTreeSet, HashMap};

use automerge::{
    ActorId, Automerge, Change, ChangeHash, ExpandedChange, ReadDoc, ScalarValue, Value,
    legacy::{Key, ObjectId, OpType},
    transaction::{CommitOptions, Transactable},
};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::{
    entry::MemoryEntry,
    id::{AuthorKey, MemoryId},
    message::{Format, ShardDigest, SignedChange},
    record::{self, MemoryRecord, RecordLimits, Signatures, Tombstone},
};

const CHANGE_DOMAIN: &[u8] = b"murmur/change/v1\0";
/// Automerge chunk header: 4 magic bytes, 4 checksum bytes, then the chunk type.
const CHUNK_TYPE_OFFSET: usize = 8;
const CHUNK_TYPE_CHANGE: u8 = 1;
/// Most operations (records) in one change: a local batch is at most this big.
pub const MAX_OPS_PER_CHANGE: usize = 4096;

/// What the gate checks records against; the same on every replica of a swarm.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub limits: RecordLimits,
    pub admins: Vec<AuthorKey>,
    pub shards: u16,
    pub format: Format,
}

#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// A whole record in the document ([`Format::InlineBodies`]).
    Memory(MemoryRecord),
    /// An entry ([`Format::BodiesByHash`]), with its body where one came with the change.
    Entry {
        entry: MemoryEntry,
        body: Option<Box<MemoryRecord>>,
    },
    Tombstone(Tombstone),
}

#[derive(Debug, Clone)]
pub(crate) struct ValidatedChange {
    pub change: Change,
    pub signed: SignedChange,
    pub effects: Vec<Effect>,
}

impl ValidatedChange {
    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }
}

pub(crate) fn memory_key(id: &MemoryId) -> String {
    format!("m{}", id.to_hex())
}

pub(crate) fn tombstone_key(id: &MemoryId) -> String {
    format!("t{}", id.to_hex())
}

fn change_signing_message(hash: &ChangeHash) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHANGE_DOMAIN.len() + 32);
    message.extend_from_slice(CHANGE_DOMAIN);
    message.extend_from_slice(&hash.0);
    message
}

/// Parses a plain change chunk: no whole documents and no compressed chunks, so nothing is
/// ever inflated from a peer's bytes.
pub(crate) fn parse_change(signed: &SignedChange) -> Result<Change, String> {
    match signed.bytes.get(CHUNK_TYPE_OFFSET) {
        Some(&CHUNK_TYPE_CHANGE) => {}
        Some(other) => return Err(format!("chunk type {other} is not a plain change")),
        None => return Err("too short to be a change".into()),
    }
    Change::from_bytes(signed.bytes.clone()).map_err(|e| e.to_string())
}

/// Signs a change as its author: the actor id must be `key`'s public key for anyone to accept it.
pub fn sign_change(change: &Change, key: &SigningKey) -> SignedChange {
    SignedChange {
        bytes: change.raw_bytes().to_vec(),
        signature: key.sign(&change_signing_message(&change.hash())).to_bytes(),
    }
}

#[derive(Clone)]
pub(crate) struct Shard {
    pub index: u16,
    pub doc: Automerge,
    /// The author's signature of every change in `doc`, to hand on with the change.
    signatures: HashMap<ChangeHash, [u8; 64]>,
    /// Change hash by the 4-byte checksum every change chunk carries in its header (`None`
    /// where two changes share one): finds the signature of a chunk this document produced
    /// without parsing and hashing it again, which was a fifth of a busy manager's CPU.
    by_checksum: HashMap<[u8; 4], Option<ChangeHash>>,
    digest: ShardDigest,
}

/// The bytes every automerge chunk starts with, before its checksum.
const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

impl Shard {
    pub fn new(index: u16, actor: &AuthorKey) -> Self {
        Self {
            index,
            doc: Automerge::new().with_actor(ActorId::from(&actor[..])),
            signatures: HashMap::new(),
            by_checksum: HashMap::new(),
            digest: [0; 8],
        }
    }

    /// A copy of this shard's document and signatures, for a snapshot.
    pub(crate) fn image(&self) -> crate::snapshot::ShardImage {
        crate::snapshot::ShardImage {
            doc: self.doc.clone(),
            signatures: self.signatures.iter().map(|(h, s)| (*h, *s)).collect(),
        }
    }

    /// A shard from a snapshot's document and the signatures of its changes.
    pub(crate) fn from_image(index: u16, image: crate::snapshot::ShardImage) -> Self {
        let crate::snapshot::ShardImage { doc, signatures } = image;
        let mut shard = Self {
            index,
            doc,
            signatures: HashMap::with_capacity(signatures.len()),
            by_checksum: HashMap::with_capacity(signatures.len()),
            digest: [0; 8],
        };
        for (hash, signature) in signatures {
            shard.remember(hash, signature);
        }
        shard.refresh_digest();
        shard
    }

    pub fn digest(&self) -> ShardDigest {
        self.digest
    }

    pub fn change_count(&self) -> usize {
        self.signatures.len()
    }

    fn refresh_digest(&mut self) {
        let heads = self.doc.get_heads();
        self.digest = if heads.is_empty() {
            [0; 8]
        } else {
            let mut hasher = Sha256::new();
            for head in &heads {
                hasher.update(head.0);
            }
            let hash = hasher.finalize();
            let mut digest = [0u8; 8];
            digest.copy_from_slice(&hash[..8]);
            digest
        };
    }

    pub fn has_change(&self, hash: &ChangeHash) -> bool {
        self.signatures.contains_key(hash)
    }

    pub fn signature_of(&self, hash: &ChangeHash) -> Option<[u8; 64]> {
        self.signatures.get(hash).copied()
    }

    /// The signature of a change chunk this document produced (in a sync message it built),
    /// found by the chunk's header checksum where that is unambiguous, else by parsing it.
    pub fn signature_of_chunk(&self, chunk: &[u8]) -> Option<[u8; 64]> {
        if chunk.len() >= 8
            && chunk[..4] == CHUNK_MAGIC
            && let Some(Some(hash)) = chunk[4..8]
                .try_into()
                .ok()
                .and_then(|checksum: [u8; 4]| self.by_checksum.get(&checksum))
        {
            return self.signature_of(hash);
        }
        let change = Change::try_from(chunk).ok()?;
        self.signature_of(&change.hash())
    }

    fn remember(&mut self, hash: ChangeHash, signature: [u8; 64]) {
        if self.signatures.insert(hash, signature).is_some() {
            return;
        }
        let mut checksum = [0u8; 4];
        checksum.copy_from_slice(&hash.0[..4]);
        self.by_checksum
            .entry(checksum)
            .and_modify(|known| {
                if *known != Some(hash) {
                    *known = None;
                }
            })
            .or_insert(Some(hash));
    }

    /// Every value ever put under `key` that is still current (several only for concurrent
    /// tombstones by different deleters).
    pub fn values(&self, key: &str) -> Vec<Vec<u8>> {
        self.doc
            .get_all(automerge::ROOT, key)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(value, _)| match value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Bytes(b) => Some(b.clone()),
                    _ => None,
                },
                Value::Object(_) => None,
            })
            .collect()
    }

    /// What this document says of memory `id`: its entry, or in [`Format::InlineBodies`] the
    /// entry of the record it holds.
    pub fn entry(&self, id: &MemoryId, rules: &Rules) -> Option<MemoryEntry> {
        self.values(&memory_key(id))
            .iter()
            .find_map(|bytes| match rules.format {
                Format::BodiesByHash => MemoryEntry::decode(*id, bytes).ok(),
                Format::InlineBodies => {
                    MemoryRecord::decode_checked(bytes, &rules.limits, Signatures::Trusted)
                        .ok()
                        .map(|record| MemoryEntry::of(&record, bytes))
                }
            })
    }

    /// Writes records under fresh keys as one change, signs it, and returns it.
    pub fn commit_local(
        &mut self,
        entries: &[(String, Vec<u8>)],
        now_ms: u64,
        key: &SigningKey,
    ) -> Result<SignedChange, String> {
        let mut tx = self.doc.transaction();
        for (k, v) in entries {
            tx.put(automerge::ROOT, k.as_str(), ScalarValue::Bytes(v.clone()))
                .map_err(|e| e.to_string())?;
        }
        // The change's time is the caller's clock, not the system's: the engine has no clock.
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(now_ms as i64));
        let hash = hash.ok_or("empty local change")?;
        let change = self
            .doc
            .get_change_by_hash(&hash)
            .ok_or("a just-committed change is missing")?;
        let signature = key.sign(&change_signing_message(&hash)).to_bytes();
        self.remember(hash, signature);
        self.refresh_digest();
        Ok(SignedChange {
            bytes: change.raw_bytes().to_vec(),
            signature,
        })
    }

    /// The gate. `Err` explains the refusal; nothing is modified either way.
    pub fn validate(
        &self,
        signed: &SignedChange,
        rules: &Rules,
        signatures: Signatures,
    ) -> Result<ValidatedChange, String> {
        self.validate_parsed(parse_change(signed)?, signed, rules, signatures)
    }

    /// The gate, for a change already parsed by [`parse_change`] from `signed`.
    pub fn validate_parsed(
        &self,
        change: Change,
        signed: &SignedChange,
        rules: &Rules,
        signatures: Signatures,
    ) -> Result<ValidatedChange, String> {
        let actor: AuthorKey = change
            .actor_id()
            .to_bytes()
            .try_into()
            .map_err(|_| "actor id is not an ed25519 key".to_string())?;
        let hash = change.hash();
        match signatures {
            Signatures::Verify => record::verify(&actor, CHANGE_DOMAIN, &hash.0, &signed.signature)
                .map_err(|_| "change signature does not verify".to_string())?,
            // Automerge does not check a change chunk's checksum when parsing one; without the
            // signature check, this is what finds a damaged byte.
            Signatures::Trusted => {
                if signed.bytes.get(4..8) != Some(&hash.0[..4]) {
                    return Err("change checksum does not match its contents".into());
                }
            }
        }
        if change.is_empty() || change.len() > MAX_OPS_PER_CHANGE {
            return Err(format!(
                "{} operations (1-{MAX_OPS_PER_CHANGE} allowed)",
                change.len()
            ));
        }
        if !change.other_actor_ids().is_empty() {
            return Err("operations refer to other actors".into());
        }
        let expanded: ExpandedChange = change.decode();
        let mut effects = Vec::with_capacity(expanded.operations.len());
        let mut keys = BTreeSet::new();
        for op in &expanded.operations {
            let (ObjectId::Root, Key::Map(key), OpType::Put(ScalarValue::Bytes(value)), false) =
                (&op.obj, &op.key, &op.action, op.insert)
            else {
                return Err("only puts of bytes on the root map are allowed".into());
            };
            if !op.pred.is_empty() {
                return Err(format!("operation overwrites {key}"));
            }
            if !keys.insert(key.to_string()) {
                return Err(format!("key {key} written twice"));
            }
            let effect = match key.as_bytes().first() {
                Some(b'm') if rules.format == Format::BodiesByHash => {
                    let id = key
                        .get(1..)
                        .and_then(MemoryId::from_hex)
                        .filter(|id| memory_key(id) == key.as_str())
                        .ok_or_else(|| format!("entry filed under a key that is no memory id: {key}"))?;
                    let entry =
                        MemoryEntry::decode(id, value).map_err(|e| format!("entry under {key}: {e}"))?;
                    if entry.author != actor {
                        return Err(format!("entry under {key} is not by the change's author"));
                    }
                    if id.shard(rules.shards) != self.index {
                        return Err(format!("memory {id} belongs in another shard"));
                    }
                    Effect::Entry { entry, body: None }
                }
                Some(b'm') => {
                    let memory = MemoryRecord::decode_checked(value, &rules.limits, signatures)
                        .map_err(|e| format!("memory under {key}: {e}"))?;
                    if memory.author != actor {
                        return Err(format!("memory under {key} is not by the change's author"));
                    }
                    if memory_key(&memory.id) != key.as_str() {
                        return Err(format!("memory filed under the wrong key {key}"));
                    }
                    if memory.id.shard(rules.shards) != self.index {
                        return Err(format!("memory {} belongs in another shard", memory.id));
                    }
                    Effect::Memory(memory)
                }
                Some(b't') => {
                    let tombstone = Tombstone::decode_checked(value, &rules.admins, signatures)
                        .map_err(|e| format!("tombstone under {key}: {e}"))?;
                    if tombstone.deleter != actor {
                        return Err(format!("tombstone under {key} is not by the change's author"));
                    }
                    if tombstone_key(&tombstone.id) != key.as_str() {
                        return Err(format!("tombstone filed under the wrong key {key}"));
                    }
                    if tombstone.id.shard(rules.shards) != self.index {
                        return Err(format!("tombstone {} belongs in another shard", tombstone.id));
                    }
                    Effect::Tombstone(tombstone)
                }
                _ => return Err(format!("unknown key {key:?}")),
            };
            effects.push(effect);
        }
        Ok(ValidatedChange {
            change,
            signed: signed.clone(),
            effects,
        })
    }

    /// Of `candidates`, the ones whose dependencies are present here or among the others that
    /// qualify, in their given order. The rest would sit in automerge's unbounded queue.
    pub fn applicable(&self, candidates: &[ValidatedChange]) -> (Vec<usize>, Vec<usize>) {
        let mut ready = vec![false; candidates.len()];
        let mut known: BTreeSet<ChangeHash> = BTreeSet::new();
        loop {
            let mut progress = false;
            for (i, c) in candidates.iter().enumerate() {
                if ready[i] {
                    continue;
                }
                let deps_ok = c
                    .change
                    .deps()
                    .iter()
                    .all(|d| known.contains(d) || self.has_change(d));
                if deps_ok {
                    ready[i] = true;
                    known.insert(c.hash());
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        let (yes, no): (Vec<usize>, Vec<usize>) = (0..candidates.len()).partition(|&i| ready[i]);
        (yes, no)
    }

    /// Applies changes that passed the gate and whose dependencies are present.
    pub fn apply(&mut self, changes: &[ValidatedChange]) -> Result<(), String> {
        let fresh: Vec<&ValidatedChange> = changes.iter().filter(|c| !self.has_change(&c.hash())).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.doc
            .apply_changes(fresh.iter().map(|c| c.change.clone()).collect::<Vec<_>>())
            .map_err(|e| e.to_string())?;
        self.record_applied(fresh.into_iter());
        Ok(())
    }

    /// Notes signatures of changes that automerge took in by another path (a sync message).
    pub fn record_applied<'a>(&mut self, changes: impl Iterator<Item = &'a ValidatedChange>) {
        for c in changes {
            self.remember(c.hash(), c.signed.signature);
        }
        self.refresh_digest();
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;
    use ed25519_dalek::SigningKey;

    #[test]
    fn a_chunks_signature_is_found_by_checksum_and_by_parsing_when_ambiguous() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut shard = Shard::new(0, &key.verifying_key().to_bytes());
        let signed: Vec<_> = (0..20)
            .map(|i| {
                shard
                    .commit_local(&[(format!("k{i}"), vec![i as u8; 40])], i, &key)
                    .unwrap()
            })
            .collect();
        for change in &signed {
            assert_eq!(shard.signature_of_chunk(&change.bytes), Some(change.signature));
        }
        // Two changes sharing a checksum: the lookup falls back to parsing, still right.
        for known in shard.by_checksum.values_mut() {
            *known = None;
        }
        for change in &signed {
            assert_eq!(shard.signature_of_chunk(&change.bytes), Some(change.signature));
        }
        // A chunk this shard never held has no signature, whatever its header says.
        let mut other = Shard::new(0, &[9; 32]);
        let stranger = other.commit_local(&[("x".into(), vec![1])], 1, &key).unwrap();
        assert_eq!(shard.signature_of_chunk(&stranger.bytes), None);
        assert_eq!(shard.signature_of_chunk(b"short"), None);
    }
}

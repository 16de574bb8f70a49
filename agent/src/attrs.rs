//! What searches filter on, per index label, and how many live memories each namespace holds
//! (kept as memories come and go, so stats never walk the labels); saved with the agent's
//! state so a start does not read every memory to rebuild it.

use std::{collections::HashMap, sync::Arc};

use crate::{
    filter::{FilterAttrs, Interner},
    memory::Memory,
};

#[derive(Default)]
pub struct Attrs {
    pub by_label: HashMap<u64, FilterAttrs>,
    interner: Interner,
    pub namespace_counts: HashMap<Arc<str>, usize>,
}

impl Attrs {
    pub fn insert(&mut self, memory: &Memory) {
        let entry = self.interner.attrs(memory);
        self.insert_attrs(memory.label, entry);
    }

    fn insert_attrs(&mut self, label: u64, entry: FilterAttrs) {
        let namespace = entry.namespace.clone();
        if self.by_label.insert(label, entry).is_none() {
            *self.namespace_counts.entry(namespace).or_insert(0) += 1;
        }
    }

    pub fn remove(&mut self, label: u64) {
        let Some(entry) = self.by_label.remove(&label) else {
            return;
        };
        if let Some(count) = self.namespace_counts.get_mut(&entry.namespace) {
            *count -= 1;
            if *count == 0 {
                self.namespace_counts.remove(&entry.namespace);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_label.is_empty()
    }

    /// Strings once (namespaces and tags), then per label: label, creation time, namespace
    /// and tags as indexes into the strings. Little-endian fixed-width integers.
    pub fn encode(&self) -> Vec<u8> {
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut strings: Vec<&str> = Vec::new();
        let mut entries = Vec::with_capacity(self.by_label.len() * 24);
        for (label, attrs) in &self.by_label {
            entries.extend_from_slice(&label.to_le_bytes());
            entries.extend_from_slice(&attrs.created_at_ms.to_le_bytes());
            entries.extend_from_slice(&number(&attrs.namespace, &mut index, &mut strings).to_le_bytes());
            entries.extend_from_slice(&(attrs.tags.len() as u32).to_le_bytes());
            for tag in &attrs.tags {
                entries.extend_from_slice(&number(tag, &mut index, &mut strings).to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(entries.len() + 16);
        out.extend_from_slice(&(strings.len() as u64).to_le_bytes());
        for s in &strings {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&(self.by_label.len() as u64).to_le_bytes());
        out.extend_from_slice(&entries);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Cursor { rest: bytes };
        let string_count = r.len(8, "strings")?;
        let mut attrs = Attrs::default();
        let mut strings: Vec<Arc<str>> = Vec::with_capacity(string_count);
        for _ in 0..string_count {
            let len = r.len(1, "string length")?;
            let text = std::str::from_utf8(r.take(len, "string")?).map_err(|_| "a string is not UTF-8")?;
            strings.push(attrs.interner.intern(text));
        }
        let string = |i: u32| -> Result<Arc<str>, String> {
            strings
                .get(i as usize)
                .cloned()
                .ok_or_else(|| format!("string #{i} of {}", strings.len()))
        };
        let count = r.len(24, "entries")?;
        attrs.by_label.reserve(count);
        for _ in 0..count {
            let label = r.u64("label")?;
            let created_at_ms = r.u64("creation time")?;
            let namespace = string(r.u32("namespace")?)?;
            let tag_count = r.u32("tag count")? as usize;
            if tag_count.saturating_mul(4) > r.rest.len() {
                return Err("tags run past the end".into());
            }
            let tags = (0..tag_count)
                .map(|_| string(r.u32("tag")?))
                .collect::<Result<Box<[_]>, String>>()?;
            let entry = FilterAttrs {
                namespace,
                tags,
                created_at_ms,
            };
            if attrs.by_label.contains_key(&label) {
                return Err(format!("label {label} twice"));
            }
            attrs.insert_attrs(label, entry);
        }
        if !r.rest.is_empty() {
            return Err(format!("{} trailing bytes", r.rest.len()));
        }
        Ok(attrs)
    }
}

/// `s`'s place in `strings`, added at the end the first time it is seen.
fn number<'a>(s: &'a str, index: &mut HashMap<&'a str, u32>, strings: &mut Vec<&'a str>) -> u32 {
    *index.entry(s).or_insert_with(|| {
        strings.push(s);
        (strings.len() - 1) as u32
    })
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!("{what}: runs past the end"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let bytes = self.take(8, what)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| what.to_string())?,
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes(
            bytes.try_into().map_err(|_| what.to_string())?,
        ))
    }

    /// A count of items at least `min_item_bytes` each: refused before anything is reserved
    /// when the rest could not hold them.
    fn len(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_item_bytes) <= self.rest.len() => Ok(n),
            _ => Err(format!("{what}: {n} cannot fit in {} bytes", self.rest.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(label: u64, namespace: &str, tags: &[&str]) -> Memory {
        Memory {
            id: uuid::Uuid::from_u64_pair(label, label),
            namespace: namespace.into(),
            text: "t".into(),
            metadata: Default::default(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            created_at_ms: 1_000 + label,
            author: String::new(),
            model_id: String::new(),
            vector: Vec::new(),
            label,
        }
    }

    #[test]
    fn attrs_round_trip_and_damaged_bytes_are_refused() {
        let mut attrs = Attrs::default();
        attrs.insert(&memory(1, "a", &["x", "y"]));
        attrs.insert(&memory(2, "b", &[]));
        attrs.insert(&memory(3, "a", &["y"]));
        attrs.remove(2);
        let bytes = attrs.encode();
        let back = Attrs::decode(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.namespace_counts.get("a"), Some(&2));
        assert_eq!(back.namespace_counts.get("b"), None);
        let one = &back.by_label[&1];
        assert_eq!(
            (&*one.namespace, one.tags.len(), one.created_at_ms),
            ("a", 2, 1_001)
        );
        assert_eq!(&*back.by_label[&3].tags[0], "y");
        for cut in 0..bytes.len() {
            assert!(Attrs::decode(&bytes[..cut]).is_err(), "a cut at {cut} was taken");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Attrs::decode(&longer).is_err());
    }
}

//! The state a start derives from the store: the vector index and the search filters' facts.
//! Each is taken as saved when it matches the store, caught up from the change mark it was
//! saved at when the store moved on (the memories labelled after the mark are added, the
//! deleted ones removed), or rebuilt by reading every memory. (Every body is checked against
//! its row CRC beside this, in `Agent::open`, so a damaged store is named before serving.)

use std::time::Instant;

use murmur_models::Embedder;

use crate::{
    attrs::Attrs,
    index::{IndexSettings, LoadedIndex, StorePoint, VectorIndex},
    memory::Memory,
    progress::Progress,
    state_file::SavedState,
    store::Store,
};

pub struct Derived {
    pub index: VectorIndex,
    pub attrs: Attrs,
    /// Whether what was saved is behind the store (or missing), so the next save is due.
    pub stale: bool,
}

/// What a start derives from, and with.
pub struct Inputs<'a> {
    pub store: &'a Store,
    pub dir: &'a std::path::Path,
    pub embedder: &'a Embedder,
    pub settings: IndexSettings,
    pub sealer: Option<&'a murmur_at_rest::Sealer>,
}

impl Inputs<'_> {
    /// Whether the index takes this memory: one embedded by this agent's model.
    fn searchable(&self, memory: &Memory) -> bool {
        memory.model_id == self.embedder.model_id() && memory.vector.len() == self.embedder.dimension()
    }
}

pub fn open(inputs: &Inputs, saved: Option<SavedState>) -> anyhow::Result<Derived> {
    let Inputs {
        store,
        dir,
        embedder,
        settings,
        sealer,
    } = *inputs;
    let generation = store.generation()?;
    let held = store.counts()?.memories as usize;
    let loaded = VectorIndex::load(
        dir,
        embedder.dimension(),
        settings,
        generation,
        embedder.model_id(),
        sealer,
    );
    // The filter facts count at their own generation, or from their mark.
    let attrs = saved.and_then(|saved| match Attrs::decode(&saved.attrs) {
        Ok(attrs) if saved.generation == generation => Some((attrs, None)),
        Ok(attrs) if saved.generation < generation => Some((attrs, Some(saved.change_mark))),
        Ok(_) => None,
        Err(reason) => {
            tracing::warn!(%reason, "saved filter facts unreadable; rebuilding them");
            None
        }
    });
    let (loaded, attrs) = match (loaded, attrs) {
        (Ok(loaded), Some(attrs)) => (loaded, attrs),
        (loaded, _) => {
            if let Err(reason) = &loaded
                && held > 0
            {
                tracing::warn!(%reason, memories = held, "rebuilding the vector index from the database");
            }
            return rebuild(inputs, loaded.ok(), held);
        }
    };
    let index = loaded.index;
    let (index_since, (mut attrs, attrs_since)) = (loaded.behind_since, attrs);
    if index_since.is_some() || attrs_since.is_some() {
        let started = Instant::now();
        let from = index_since
            .unwrap_or(u64::MAX)
            .min(attrs_since.unwrap_or(u64::MAX));
        let mut added = 0usize;
        for memory in store.memories_labelled_after(from) {
            let memory = memory?;
            if index_since.is_some_and(|mark| memory.label > mark) && inputs.searchable(&memory) {
                index.add(memory.label, &memory.vector)?;
            }
            if attrs_since.is_some_and(|mark| memory.label > mark) {
                attrs.insert(&memory);
            }
            added += 1;
        }
        let deleted = store.tombstoned_labels()?;
        for &label in &deleted {
            if index_since.is_some() && index.contains(label) {
                index.remove(label)?;
            }
            if attrs_since.is_some() {
                attrs.remove(label);
            }
        }
        tracing::info!(
            added,
            deletes = deleted.len(),
            seconds = started.elapsed().as_secs_f64(),
            "caught the saved index and filter facts up with the store"
        );
    }
    if attrs.len() != held || index.len() > held {
        tracing::warn!(
            facts = attrs.len(),
            index = index.len(),
            held,
            "the saved index or filter facts disagree with the store; rebuilding them"
        );
        return rebuild(inputs, None, held);
    }
    Ok(Derived {
        index,
        attrs,
        stale: index_since.is_some() || attrs_since.is_some(),
    })
}

/// Reads every memory: for the filter facts, and into the index unless the saved one is
/// current (a saved one behind the store takes what it lacks and loses what was deleted).
fn rebuild(inputs: &Inputs, saved_index: Option<LoadedIndex>, held: usize) -> anyhow::Result<Derived> {
    let (index, adding, behind) = match saved_index {
        Some(LoadedIndex {
            index,
            behind_since: None,
        }) => (index, false, false),
        Some(LoadedIndex { index, .. }) => (index, true, true),
        None => (
            VectorIndex::new(inputs.embedder.dimension(), inputs.settings)?,
            true,
            false,
        ),
    };
    let rebuilding = adding && !behind;
    if held == 0 {
        tracing::info!("starting with an empty store");
    }
    let progress = Progress::new(if adding { held as u64 } else { 0 }, "rebuilding vector index");
    let started = Instant::now();
    let mut attrs = Attrs::default();
    let mut skipped = 0usize;
    for memory in inputs.store.iter() {
        let memory = memory?;
        if adding {
            if inputs.searchable(&memory) {
                index.add(memory.label, &memory.vector)?;
            } else {
                skipped += 1;
            }
            progress.inc(1);
        }
        attrs.insert(&memory);
    }
    progress.finish();
    if behind {
        for label in inputs.store.tombstoned_labels()? {
            if index.contains(label) {
                index.remove(label)?;
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            skipped,
            model = inputs.embedder.model_id(),
            "memories from another model are not searchable"
        );
    }
    if rebuilding {
        let at = StorePoint {
            generation: inputs.store.generation()?,
            change_mark: inputs.store.change_mark()?,
        };
        index.save(inputs.dir, at, inputs.embedder.model_id(), inputs.sealer)?;
        tracing::info!(
            size = index.len(),
            seconds = started.elapsed().as_secs_f64(),
            "vector index rebuilt and saved"
        );
    }
    Ok(Derived {
        index,
        attrs,
        stale: true,
    })
}

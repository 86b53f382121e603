//! Batch writes: many objects, one durability barrier, then all names published.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use crate::error::Result;
use crate::hash::Hash;
use crate::stage::{Input, Staged};
use crate::{Durability, Store};

/// A batch of objects written with a single durability barrier.
///
/// Each `put_*` stages the object (hashed, written to `tmp/`, not synced, not yet visible) and
/// returns its hash. [`Batch::commit`] then makes all of them durable with one barrier and
/// only then publishes every name, so — as with single puts — no visible name ever holds
/// unsynced bytes (durability `file` or `full`). The barrier depends on the filesystem (see
/// [`Barrier`](crate::Barrier)): one `syncfs(2)` on ext4, xfs, btrfs and f2fs; elsewhere
/// (FUSE, NFS, …, where `syncfs` is not known to reach stable storage) an `fdatasync(2)` of
/// every staged file, many at once. With `full`, each fan-out directory that gained a name is
/// synced once after publishing. Dropping a batch without committing removes its staging
/// files; nothing becomes visible.
///
/// ```
/// # fn main() -> cas::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = cas::Store::init(dir.path(), cas::Options::default())?;
/// let mut batch = store.batch();
/// let a = batch.put_bytes(b"one")?;
/// let b = batch.put_bytes(b"two")?;
/// assert!(!store.contains(&a)); // staged, not visible yet
/// batch.commit()?;
/// assert!(store.contains(&a) && store.contains(&b));
/// # Ok(()) }
/// ```
#[must_use = "a batch publishes nothing until it is committed"]
pub struct Batch {
    store: Store,
    staged: Vec<Staged>,
    seen: HashSet<Hash>,
    durability: Durability,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("staged", &self.staged.len())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts a batch (see [`Batch`]) with the store's durability.
    pub fn batch(&self) -> Batch {
        Batch {
            store: self.clone(),
            staged: Vec::new(),
            seen: HashSet::new(),
            durability: self.durability(),
        }
    }
}

impl Batch {
    /// Overrides the durability of the whole batch.
    pub fn set_durability(&mut self, d: Durability) {
        self.durability = d;
    }

    /// Number of objects staged and not yet published.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True if nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Stages bytes; skips them if the object already exists or is already in the batch.
    ///
    /// # Errors
    /// I/O errors naming the staging file.
    pub fn put_bytes(&mut self, bytes: &[u8]) -> Result<Hash> {
        let hash = Hash::of_parallel(bytes);
        if !self.known(&hash) {
            let s = self.store.stage_hashed(bytes, hash)?;
            self.add(s);
        }
        Ok(hash)
    }

    /// Stages a stream (read once through a fixed buffer).
    ///
    /// # Errors
    /// [`Error::Input`](crate::Error::Input) if the reader fails; I/O errors naming the
    /// staging file.
    pub fn put_reader(&mut self, reader: impl Read) -> Result<Hash> {
        let s = self.store.stage_reader(&mut { reader }, Input::Stream)?;
        let hash = s.hash;
        if !self.known(&hash) {
            self.add(s);
        }
        Ok(hash)
    }

    /// Stages a file's contents.
    ///
    /// # Errors
    /// [`Error::Input`](crate::Error::Input) naming `path` if it cannot be read.
    pub fn put_path(&mut self, path: impl AsRef<Path>) -> Result<Hash> {
        let (hash, staged) = self
            .store
            .stage_path(path.as_ref(), |h| self.seen.contains(h))?;
        if let Some(s) = staged {
            if !self.known(&hash) {
                self.add(s);
            }
        }
        Ok(hash)
    }

    /// True if `hash` is already in the batch or in the store (refreshing its mtime).
    fn known(&self, hash: &Hash) -> bool {
        self.seen.contains(hash) || self.store.refresh_if_present(hash)
    }

    fn add(&mut self, s: Staged) {
        self.seen.insert(s.hash);
        self.staged.push(s);
    }

    /// Makes all staged objects durable with one barrier, then publishes them. Returns how
    /// many were newly published (the rest already existed).
    ///
    /// # Errors
    /// I/O errors; objects published before the error stay published (they are complete and
    /// synced), the others' staging files are removed.
    pub fn commit(mut self) -> Result<usize> {
        let staged = std::mem::take(&mut self.staged);
        self.store.publish(staged, self.durability)
    }
}

//! Batch writes: many objects, one durability barrier, then all names published.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use tempfile::TempPath;

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::layout;
use crate::{Durability, Store};

/// A batch of objects written with a single durability barrier.
///
/// Each `put_*` stages the object (hashed, written to `tmp/`, not synced, not yet visible) and
/// returns its hash. [`Batch::commit`] then makes all of them durable with one `syncfs(2)` on
/// the store's filesystem and only then publishes every name, so — as with single puts — no
/// visible name ever holds unsynced bytes (durability `file` or `full`). With `full`, a second
/// `syncfs` after publishing makes the names durable too. Dropping a batch without committing
/// removes its staging files; nothing becomes visible.
///
/// `syncfs` flushes every dirty page of that filesystem, not only the batch's: on a filesystem
/// busy with other writers the barrier costs more.
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
    staged: Vec<(TempPath, Hash)>,
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
        if self.seen.contains(&hash) || self.store.refresh_if_present(&hash) {
            return Ok(hash);
        }
        let mut staging = self.store.staging_file()?;
        staging
            .write_all(bytes)
            .and_then(|()| fs::set_mode(staging.as_file(), 0o444))
            .map_err(Error::at("write staging file", staging.path()))?;
        self.stage(staging.into_temp_path(), hash);
        Ok(hash)
    }

    /// Stages a stream (read once through a fixed buffer).
    ///
    /// # Errors
    /// I/O errors from the reader or naming the staging file.
    pub fn put_reader(&mut self, reader: impl Read) -> Result<Hash> {
        let mut w = self.store.writer()?;
        let spath = w.staging_path().to_owned();
        std::io::copy(&mut { reader }, &mut w).map_err(Error::at("read input for", &spath))?;
        let (hash, _) = w.finish()?;
        self.stage_unless_known(w.into_staging(), hash)
    }

    /// Stages a file's contents.
    ///
    /// # Errors
    /// [`Error::Io`] naming `path` if it cannot be read.
    pub fn put_path(&mut self, path: impl AsRef<Path>) -> Result<Hash> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(Error::at("open", path))?;
        let md = f.metadata().map_err(Error::at("stat", path))?;
        if md.is_file() && md.len() <= 1 << 20 {
            let bytes = fs::read_len(&f, md.len()).map_err(Error::at("read", path))?;
            return self.put_bytes(&bytes);
        }
        if md.is_file() {
            let (staging, hash) = self.store.stage_copy(&f, path)?;
            return self.stage_unless_known(staging.into_temp_path(), hash);
        }
        self.put_reader(f).map_err(|e| match e {
            Error::Io {
                op: "read input for",
                source,
                ..
            } => Error::io("read", path, source),
            e => e,
        })
    }

    /// Stages a complete staging file, unless its object exists or is already in the batch
    /// (then the staging file is dropped, which removes it).
    fn stage_unless_known(&mut self, staging: TempPath, hash: Hash) -> Result<Hash> {
        if self.seen.contains(&hash) || self.store.refresh_if_present(&hash) {
            return Ok(hash);
        }
        fs::chmod_path(&staging, 0o444).map_err(Error::at("set permissions of", &staging))?;
        self.stage(staging, hash);
        Ok(hash)
    }

    fn stage(&mut self, path: TempPath, hash: Hash) {
        self.seen.insert(hash);
        self.staged.push((path, hash));
    }

    /// Syncs all staged objects with one barrier, then publishes them. Returns how many were
    /// newly published (the rest already existed).
    ///
    /// # Errors
    /// I/O errors; objects published before the error stay published (they are complete and
    /// synced), the others' staging files are removed.
    pub fn commit(mut self) -> Result<usize> {
        if self.staged.is_empty() {
            return Ok(0);
        }
        let tmp = self.store.path(layout::TMP);
        let barrier = || -> Result<()> {
            let dir = fs::open_read(&tmp).map_err(Error::at("open", &tmp))?;
            fs::syncfs(&dir).map_err(Error::at("syncfs", &tmp))
        };
        if self.durability != Durability::None {
            barrier()?;
        }
        let mut created = 0;
        for (p, hash) in std::mem::take(&mut self.staged) {
            if self.store.publish_path(p, &hash)? == fs::Published::Created {
                created += 1;
            }
        }
        if self.durability == Durability::Full {
            barrier()?;
        }
        Ok(created)
    }
}

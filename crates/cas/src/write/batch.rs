//! Batch writes: many objects, one durability barrier, then all names published.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;
use crate::hash::Hash;
use crate::progress::Progress;
use crate::write::stage::{Input, Staged};
use crate::{Durability, Store};

/// Objects staged (files held open) before a batch publishes what it has: half the
/// process's open-file limit, between 64 and 4096 (512 under the usual limit of 1024).
fn max_staged() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1024);
        usize::try_from(soft / 2).unwrap_or(4096).clamp(64, 4096)
    })
}

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
/// files; nothing staged since the last barrier becomes visible.
///
/// A batch holds each staged file open, so it keeps at most half the process's open-file
/// limit staged (between 64 and 4096; 512 under the usual limit of 1024): when it reaches
/// that, it makes them durable and publishes them (in the order they were staged) before
/// staging more. A batch is a way to share barriers, not a transaction.
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
    /// Names published by earlier barriers of this batch.
    published: usize,
    /// Told the input bytes staged so far (see [`Batch::set_progress`]).
    progress: Option<Box<dyn Fn(Progress) -> bool + Send + Sync>>,
    /// Input bytes read so far (including those of objects already in the store).
    bytes_in: AtomicU64,
    /// Fan-out directories (by first hash byte) of objects found already published: at
    /// `full`, synced once at commit, since their names may date from a weaker put
    /// (docs/format.md "The write path (put)", "Re-puts").
    found: std::sync::Mutex<std::collections::BTreeSet<u8>>,
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
            published: 0,
            progress: None,
            bytes_in: AtomicU64::new(0),
            found: std::sync::Mutex::default(),
        }
    }
}

impl Batch {
    /// Reports progress while inputs are read: phase `"put"`, `done` = input bytes read so far
    /// by this batch (total unknown here: the caller knows what it will put). Returning
    /// `false` stops the put in progress with [`Error::Interrupted`](crate::Error::Interrupted)
    /// (its staging file is removed; what was staged before stays staged).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let mut batch = store.batch();
    /// let s = seen.clone();
    /// batch.set_progress(move |p| { s.store(p.done, Ordering::Relaxed); true });
    /// batch.put_bytes(&[7u8; 1000])?;
    /// batch.commit()?;
    /// assert_eq!(seen.load(Ordering::Relaxed), 1000);
    /// # Ok(()) }
    /// ```
    pub fn set_progress(&mut self, f: impl Fn(Progress) -> bool + Send + Sync + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Input bytes read so far.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Counts `n` more input bytes and tells the progress callback; false: stop.
    fn tick(&self, n: u64) -> bool {
        let done = self.bytes_in.fetch_add(n, Ordering::Relaxed) + n;
        self.progress.as_ref().is_none_or(|f| {
            f(Progress {
                phase: "put",
                done,
                total: None,
            })
        })
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
        let hash = self.store.hash_for_put(bytes);
        if !self.tick(bytes.len() as u64) {
            return Err(crate::Error::Interrupted);
        }
        if !self.known(&hash, bytes.len() as u64) {
            let s = self.store.stage_hashed(bytes, hash)?;
            self.add(s)?;
        }
        Ok(hash)
    }

    /// Stages a stream (read once through a fixed buffer).
    ///
    /// # Errors
    /// [`Error::Input`](crate::Error::Input) if the reader fails; I/O errors naming the
    /// staging file.
    pub fn put_reader(&mut self, reader: impl Read) -> Result<Hash> {
        let s = self
            .store
            .stage_reader_ticking(&mut { reader }, Input::Stream, &|n| self.tick(n))?;
        let hash = s.hash;
        if !self.known(&hash, s.len) {
            self.add(s)?;
        }
        Ok(hash)
    }

    /// Stages a file's contents.
    ///
    /// # Errors
    /// [`Error::Input`](crate::Error::Input) naming `path` if it cannot be read.
    pub fn put_path(&mut self, path: impl AsRef<Path>) -> Result<Hash> {
        let (hash, staged) = self.store.stage_path(
            path.as_ref(),
            |h| self.seen.contains(h),
            self.durability.min(Durability::File),
            &|n| self.tick(n),
        )?;
        // stage_path already looked in the store (small files) and in this batch.
        if !self.seen.contains(&hash) {
            match staged {
                Some(s) => self.add(s)?,
                None => self.note_found(&hash),
            }
        }
        Ok(hash)
    }

    /// True if `hash` is already in the batch or in the store (refreshing its mtime).
    fn known(&self, hash: &Hash, len: u64) -> bool {
        if self.seen.contains(hash) {
            return true;
        }
        let data = self.durability.min(Durability::File);
        let found = self.store.refresh_if_present(hash, Some(len), data);
        if found {
            self.note_found(hash);
        }
        found
    }

    /// An object this batch found already published (its data brought up to the batch's
    /// level by the probe): at `full` its fan-out directory is synced at commit.
    pub(crate) fn note_found(&self, hash: &Hash) {
        self.note_found_fanout(hash.as_bytes()[0]);
    }

    /// [`Batch::note_found`] by the fan-out directory's first hash byte.
    pub(crate) fn note_found_fanout(&self, first: u8) {
        if self.durability == Durability::Full {
            self.found
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(first);
        }
    }

    fn add(&mut self, s: Staged) -> Result<()> {
        self.seen.insert(s.hash);
        self.staged.push(s);
        if self.staged.len() >= max_staged() {
            let staged = std::mem::take(&mut self.staged);
            self.published += self.store.publish(staged, self.durability)?;
            // What is published is found in the store by the next put of it (a probe, which
            // refreshes it as any put of existing bytes): remembering only what is staged
            // keeps a batch of millions of objects (`put -r`) in bounded memory (issue 26).
            self.seen.clear();
            self.seen.shrink_to(max_staged());
        }
        Ok(())
    }

    /// Makes all staged objects durable with one barrier, then publishes them. Returns how
    /// many were newly published (the rest already existed).
    ///
    /// # Errors
    /// I/O errors; objects published before the error stay published (they are complete and
    /// synced), the others' staging files are removed.
    pub fn commit(mut self) -> Result<usize> {
        let staged = std::mem::take(&mut self.staged);
        let published = self.published + self.store.publish(staged, self.durability)?;
        let found = std::mem::take(
            &mut *self
                .found
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for first in found {
            let dir = self
                .store
                .path(crate::store::layout::OBJECTS)
                .join(format!("{first:02x}"));
            self.store
                .inner
                .root_dir
                .fsync_dir(&dir)
                .map_err(crate::Error::at("fsync directory", &dir))?;
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Durability, Options, Store};

    /// A batch holds its staged files open: one bigger than its cap (half the file limit)
    /// must still commit, holding at most the cap open at any time.
    #[test]
    fn a_batch_larger_than_the_fd_limit_commits() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), Options::default().durability(Durability::None)).unwrap();
        let cap = super::max_staged();
        assert!((64..=4096).contains(&cap));
        let n = cap + 300;
        let mut b = store.batch();
        let hashes: Vec<_> = (0..n)
            .map(|i| {
                let h = b.put_bytes(format!("object {i}").as_bytes()).unwrap();
                assert!(b.len() < cap, "{} staged files held open", b.len());
                h
            })
            .collect();
        assert_eq!(b.commit().unwrap(), n);
        assert!(hashes.iter().all(|h| store.contains(h)));
    }
}

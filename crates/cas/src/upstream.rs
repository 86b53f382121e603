//! Tiered stores (issue 13): a node-local store in front of an upstream store.
//!
//! A store with an upstream is a cache of it. A get looks here, then in the upstream; an
//! object fetched from the upstream is verified and published here through the normal write
//! path (stage, barrier, publish without replacing), so concurrent fetches on one node
//! converge. A put publishes in the upstream first, then here (write-through), so every
//! object of this store is also in the upstream and this store's gc may evict any of them.
//! Refs and cache entries live in the upstream only. docs/format.md §10 has the protocol and
//! its crash analysis.
//!
//! The upstream sits behind the [`Upstream`] trait; [`DirUpstream`] implements it for a store
//! directory (a shared filesystem). An object-store upstream (S3 API) would implement the
//! same trait without touching these protocols.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::copyout::Sink;
use crate::error::{Error, Result};
use crate::gc::{GcOptions, GcReport};
use crate::hash::Hash;
use crate::index::Entry;
use crate::layout;
use crate::progress::{Progress, ProgressFn};
use crate::refs::RefLogEntry;
use crate::stage::Staged;
use crate::{Expect, Store};

/// Where a tiered store's misses go, and where its writes, refs and cache entries end up.
///
/// Implementations are shared between threads. Every method may fail with
/// [`Error::Upstream`] when the upstream cannot be reached; "not there" answers are
/// `Ok(false)`, `Ok(None)` or the usual not-found errors ([`Error::NotFound`],
/// [`Error::KeyNotFound`], [`Error::RefNotFound`]).
pub trait Upstream: Send + Sync {
    /// The upstream's location, for messages (a directory, a URL).
    fn location(&self) -> &Path;
    /// True if the upstream holds the object.
    fn has(&self, hash: &Hash) -> Result<bool>;
    /// Writes the object's bytes to `into`, verified by the upstream before anything is
    /// written where it can (the receiving store verifies again). Returns the length.
    fn fetch(&self, hash: &Hash, into: &mut dyn Write) -> Result<u64>;
    /// Stores objects whose hashes the caller already knows (the bytes were hashed while they
    /// were staged). Objects already present are skipped. Returns when all are published
    /// with the upstream's durability.
    fn put(&self, objects: &mut [(Hash, &mut dyn Read)]) -> Result<()>;
    /// The upstream as a store on a filesystem this process reaches, if it is one: a range
    /// read through a tier reads the chunk groups it needs (and the outboard) there, in place,
    /// instead of fetching the whole object (docs/format.md, "Outboards"). `None` (the
    /// default): ranges fetch the whole object first.
    fn as_store(&self) -> Option<Store> {
        None
    }
    /// A ref's value.
    fn get_ref(&self, name: &str) -> Result<Option<Hash>>;
    /// Sets a ref with compare-and-swap (as [`Store::set_ref_msg`]).
    fn set_ref(&self, name: &str, new: Hash, expect: Expect, message: &str)
        -> Result<Option<Hash>>;
    /// Removes a ref (as [`Store::remove_ref`]).
    fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash>;
    /// Refs whose names start with `prefix`, sorted.
    fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>>;
    /// Refs whose names start with `prefix`, sorted, and the damaged ones by path (as
    /// [`Store::refs_report`]). The default lists with [`Upstream::list_refs`], which reports
    /// no damage apart (the first damaged ref is its error).
    ///
    /// # Errors
    /// As [`Upstream::list_refs`].
    fn refs_report(&self, prefix: &str) -> Result<crate::RefsReport> {
        Ok((self.list_refs(prefix)?, Vec::new()))
    }
    /// A ref's history.
    fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>>;
    /// A ref's history, line by line (as [`Store::reflog_each`]). The default collects
    /// [`Upstream::reflog`] (which reports no damaged lines), then keeps its last `last`
    /// entries.
    ///
    /// # Errors
    /// As [`Upstream::reflog`]; whatever `f` returns.
    fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(crate::RefLogLine) -> Result<()>,
    ) -> Result<()> {
        let entries = self.reflog(name)?;
        let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
        entries.into_iter().skip(skip).try_for_each(|e| f(Ok(e)))
    }
    /// A cache entry.
    fn entry(&self, key: &[u8]) -> Result<Entry>;
    /// Sets a cache entry with compare-and-swap (as [`Store::set_keyed`]).
    fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>>;
    /// Removes a cache entry.
    fn remove_keyed(&self, key: &[u8]) -> Result<()>;
    /// All cache entries (an undecodable one is an `Err` item).
    fn list_keys(&self) -> Result<Vec<Result<Entry>>>;
    /// The object whose hash starts with `prefix` (8 to 63 lowercase hex digits, already
    /// checked), as [`Store::resolve_prefix`]. The default cannot: it asks for the full hash.
    fn resolve_prefix(&self, prefix: &str) -> Result<Hash> {
        Err(Error::InvalidInput {
            what: "hash prefix",
            reason: format!(
                "{prefix}: the upstream {} cannot resolve prefixes; give the full hash",
                self.location().display()
            ),
        })
    }
    /// For a process about to exit on a signal: removes what this process has in flight in
    /// the upstream (staging files of a write-through). Called by
    /// [`Store::abandon_own_staging`] of the tier. Returns how many files it removed.
    fn abandon_own_staging(&self) -> u64 {
        0
    }
}

/// A store directory as an upstream, typically on a shared filesystem.
///
/// The store is opened on first use, not when the tiered store is opened, so a node whose
/// shared filesystem is gone still serves what it has cached. An open that fails, and any
/// I/O failure of the upstream, is [`Error::Upstream`] naming the directory; the next call
/// tries to open it again.
pub struct DirUpstream {
    path: PathBuf,
    store: Mutex<Option<Store>>,
    /// Writes to the upstream are at least this durable (the tier's level).
    at_least: crate::Durability,
}

impl std::fmt::Debug for DirUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirUpstream")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DirUpstream {
    /// An upstream at the store directory `path` (opened on first use).
    pub fn new(path: impl Into<PathBuf>) -> DirUpstream {
        DirUpstream {
            path: path.into(),
            store: Mutex::new(None),
            at_least: crate::Durability::None,
        }
    }

    /// Writes objects, refs and entries to the upstream at least at `level`, whatever the
    /// upstream's own `config` says (a higher configured level still wins). A tier passes its
    /// own level, so that `--durability full` through a tier means full upstream too, where
    /// its refs and entries live.
    #[must_use]
    pub fn at_least(mut self, level: crate::Durability) -> DirUpstream {
        self.at_least = level;
        self
    }

    /// The upstream store, opened now if it was not yet (its own upstream, if it has one, is
    /// not used: one level of tiering).
    fn store(&self) -> Result<Store> {
        let mut slot = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let s = Store::open(&self.path)
            .map_err(|e| unavailable(&self.path, e))?
            .without_upstream()
            .at_least(self.at_least)
            .map_err(|e| unavailable(&self.path, e))?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Runs `f` on the upstream store; an I/O failure names the upstream and makes the next
    /// call open it again (it may have been unmounted and mounted again).
    fn with<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let s = self.store()?;
        f(&s).map_err(|e| {
            if matches!(e.kind(), crate::ErrorKind::Io | crate::ErrorKind::NotAStore) {
                *self
                    .store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Error::Upstream {
                    upstream: self.path.clone(),
                    what: "failed".into(),
                    source: Some(Box::new(e)),
                }
            } else {
                e
            }
        })
    }
}

fn unavailable(path: &Path, e: Error) -> Error {
    Error::Upstream {
        upstream: path.to_owned(),
        what: "is unavailable (missing, unmounted or unreadable)".into(),
        source: Some(Box::new(e)),
    }
}

impl Upstream for DirUpstream {
    fn as_store(&self) -> Option<Store> {
        self.store().ok()
    }

    fn location(&self) -> &Path {
        &self.path
    }

    fn has(&self, hash: &Hash) -> Result<bool> {
        // Not `contains`, which cannot tell "absent" from "unreachable" (EIO, ENOTCONN).
        self.with(|s| {
            let p = s.object_path(hash);
            match s.inner.root_dir.lstat(&p) {
                Ok(_) => Ok(true),
                Err(e) if crate::fs::is_not_found(&e) => Ok(s.find_in_trash(hash).is_some()),
                Err(e) => Err(Error::io("stat", &p, e)),
            }
        })
    }

    fn fetch(&self, hash: &Hash, into: &mut dyn Write) -> Result<u64> {
        self.with(|s| s.get_to_writer(hash, into))
    }

    fn put(&self, objects: &mut [(Hash, &mut dyn Read)]) -> Result<()> {
        self.with(|s| {
            let mut batch = s.batch();
            let mut wanted = Vec::new();
            for (hash, reader) in objects.iter_mut() {
                // Present already (perhaps put by another node): refresh its age, copy nothing.
                if s.refresh_if_present(hash, None, s.durability()) {
                    continue;
                }
                let got = batch.put_reader(&mut **reader)?;
                wanted.push((*hash, got));
            }
            batch.commit()?;
            for (hash, got) in wanted {
                if got != hash {
                    return Err(Error::Corrupt {
                        expected: hash,
                        actual: got,
                        path: s.object_path(&hash),
                    });
                }
            }
            Ok(())
        })
    }

    fn get_ref(&self, name: &str) -> Result<Option<Hash>> {
        self.with(|s| s.get_ref(name))
    }

    fn set_ref(
        &self,
        name: &str,
        new: Hash,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        self.with(|s| s.set_ref_msg(name, new, expect, message))
    }

    fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash> {
        self.with(|s| s.remove_ref(name, expect))
    }

    fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>> {
        self.with(|s| s.list_refs(prefix))
    }

    fn refs_report(&self, prefix: &str) -> Result<crate::RefsReport> {
        self.with(|s| s.refs_report(prefix))
    }

    fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>> {
        self.with(|s| s.reflog(name))
    }

    fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(crate::RefLogLine) -> Result<()>,
    ) -> Result<()> {
        self.with(|s| s.reflog_each_dyn(name, last, f))
    }

    fn entry(&self, key: &[u8]) -> Result<Entry> {
        self.with(|s| s.entry(key))
    }

    fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        self.with(|s| s.set_keyed(key, hash, metadata, expect))
    }

    fn remove_keyed(&self, key: &[u8]) -> Result<()> {
        self.with(|s| s.remove_keyed(key))
    }

    fn list_keys(&self) -> Result<Vec<Result<Entry>>> {
        self.with(|s| Ok(s.iter_keys()?.collect()))
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<Hash> {
        self.with(|s| s.resolve_prefix(prefix))
    }

    fn abandon_own_staging(&self) -> u64 {
        // Only a store that was opened can hold our staging files; never open one now.
        let opened = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        opened.map_or(0, |s| s.abandon_own_staging())
    }
}

/// A store's upstream and how it may be used.
pub(crate) struct Tier {
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) readonly: bool,
}

/// A writer that remembers its own failure, so an error coming back through the upstream's
/// `fetch` can be told apart from a failure of the upstream itself.
struct Recording<'a> {
    inner: &'a mut dyn Write,
    failed: Option<io::Error>,
}

impl Write for Recording<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// Counts the bytes that went through to `inner`.
struct Counting<'a> {
    inner: &'a mut dyn Sink,
    n: u64,
}

impl Sink for Counting<'_> {
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A failed write may have written part: count it as all (only "nothing" matters).
        self.n += bytes.len() as u64;
        self.inner.write_bytes(bytes)
    }
    fn write_file_range(&mut self, obj: &File, off: u64, bytes: &[u8]) -> io::Result<()> {
        self.n += bytes.len() as u64;
        self.inner.write_file_range(obj, off, bytes)
    }
}

/// Reads a staging file from the start through positioned reads, leaving its offset alone.
struct PosReader<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

impl Store {
    /// This store as a tier in front of the store directory `dir`: misses are fetched from
    /// it, puts are written through to it (unless `readonly`), refs and cache entries live
    /// in it. Nothing is opened yet (see [`DirUpstream`]). The store's `config` is not
    /// changed; `cas init --upstream` (an [`Options::upstream`](crate::Options) given to
    /// [`Store::init`]) makes it permanent.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let shared = cas::Store::init(dir.path().join("shared"), cas::Options::default())?;
    /// let h = shared.put_bytes(b"reference genome")?;
    /// let local = cas::Store::init(dir.path().join("local"), cas::Options::default())?
    ///     .with_upstream(shared.root(), false);
    /// assert_eq!(&*local.get(&h)?, b"reference genome"); // fetched, now cached locally
    /// assert!(local.without_upstream().contains(&h));
    /// let mine = local.put_bytes(b"result")?; // written through
    /// assert!(shared.contains(&mine));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_upstream(&self, dir: impl AsRef<Path>, readonly: bool) -> Store {
        let up = DirUpstream::new(dir.as_ref()).at_least(self.durability());
        self.with_upstream_impl(Arc::new(up), readonly)
    }

    /// As [`Store::with_upstream`], with any [`Upstream`] implementation.
    #[must_use]
    pub fn with_upstream_impl(&self, upstream: Arc<dyn Upstream>, readonly: bool) -> Store {
        Store {
            inner: Arc::clone(&self.inner),
            tier: Some(Arc::new(Tier { upstream, readonly })),
        }
    }

    /// The store as a tier if its options name an upstream (the `upstream` key of its
    /// `config`, or [`Options::upstream`](crate::Options)). The upstream is opened on first
    /// use, not here, so a node whose shared filesystem is gone still serves its cache.
    pub(crate) fn attach_upstream(self) -> Store {
        match self.inner.options.upstream.clone() {
            Some(up) => {
                let readonly = self.inner.options.upstream_readonly;
                self.with_upstream(up, readonly)
            }
            None => self,
        }
    }

    /// This store alone, without its upstream: reads, writes, refs and gc see only the local
    /// directory.
    #[must_use]
    pub fn without_upstream(&self) -> Store {
        Store {
            inner: Arc::clone(&self.inner),
            tier: None,
        }
    }

    /// The upstream of a tiered store.
    pub fn upstream(&self) -> Option<&dyn Upstream> {
        self.tier.as_deref().map(|t| &*t.upstream)
    }

    /// True if the store has an upstream that it must not write to.
    pub fn upstream_readonly(&self) -> bool {
        self.tier.as_ref().is_some_and(|t| t.readonly)
    }

    /// The upstream where refs and cache entries are read.
    pub(crate) fn names_upstream(&self) -> Option<&dyn Upstream> {
        self.upstream()
    }

    /// The upstream where refs and cache entries are written; a read-only one refuses.
    pub(crate) fn names_upstream_mut(&self) -> Result<Option<&dyn Upstream>> {
        match self.tier.as_deref() {
            None => Ok(None),
            Some(t) if t.readonly => Err(Error::Upstream {
                upstream: t.upstream.location().to_owned(),
                what: "is read-only: refs and cache entries live there and cannot be changed \
                       through this store"
                    .into(),
                source: None,
            }),
            Some(t) => Ok(Some(&*t.upstream)),
        }
    }

    /// Fetches an object from the upstream into this store: staged here while hashed,
    /// verified, published without replacing (so racing fetches converge). `Ok(false)`
    /// without an upstream.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the upstream lacks it too; [`Error::Upstream`] if it cannot be
    /// reached; [`Error::Corrupt`] if the bytes received do not match.
    pub(crate) fn fetch_from_upstream(&self, hash: &Hash) -> Result<bool> {
        let Some(tier) = &self.tier else {
            return Ok(false);
        };
        let local = self.without_upstream();
        let mut w = local.writer()?;
        let staging = w.staging_path();
        let mut rec = Recording {
            inner: &mut w,
            failed: None,
        };
        if let Err(e) = tier.upstream.fetch(hash, &mut rec) {
            // A full local disk is this store's failure, not the upstream's.
            return Err(match rec.failed.take() {
                Some(local_err) => Error::io("write staging file", staging, local_err),
                None => e,
            });
        }
        let staged = w.finish()?;
        if staged.hash != *hash {
            return Err(Error::Corrupt {
                expected: *hash,
                actual: staged.hash,
                path: tier.upstream.location().to_owned(),
            });
        }
        local.publish(vec![staged], self.durability())?;
        Ok(true)
    }

    /// Write-through: before staged objects are published here, they are stored in the
    /// upstream (read back from their staging files). Nothing without a writable upstream.
    pub(crate) fn write_through(&self, staged: &[Staged]) -> Result<()> {
        let Some(tier) = self.tier.as_deref().filter(|t| !t.readonly) else {
            return Ok(());
        };
        let mut readers: Vec<PosReader<'_>> = staged
            .iter()
            .map(|s| PosReader {
                file: s.staging.file(),
                offset: 0,
            })
            .collect();
        let mut objects: Vec<(Hash, &mut dyn Read)> = staged
            .iter()
            .zip(readers.iter_mut())
            .map(|(s, r)| (s.hash, r as &mut dyn Read))
            .collect();
        tier.upstream.put(&mut objects)
    }

    /// True if the upstream holds the object (false without one, or when it is unreachable).
    pub(crate) fn upstream_has(&self, hash: &Hash) -> bool {
        self.upstream()
            .is_some_and(|u| u.has(hash).unwrap_or(false))
    }

    /// Runs a local read; if it found the local copy corrupt (and quarantined it), fetches
    /// the object again from the upstream and reads once more.
    pub(crate) fn refetch_if_corrupt<T>(
        &self,
        hash: &Hash,
        read: impl Fn() -> Result<T>,
    ) -> Result<T> {
        match read() {
            Err(e) if self.is_local_corruption(&e) => {
                self.fetch_from_upstream(hash)?;
                read()
            }
            r => r,
        }
    }

    /// [`Store::refetch_if_corrupt`] for a read into `out`: retried only if the failed read
    /// wrote nothing to `out` (a large unmapped read can find the corruption after writing).
    pub(crate) fn refetch_if_corrupt_to(
        &self,
        hash: &Hash,
        out: &mut dyn Sink,
        read: impl Fn(&mut dyn Sink) -> Result<u64>,
    ) -> Result<u64> {
        let mut counted = Counting { inner: out, n: 0 };
        match read(&mut counted) {
            Err(e) if self.is_local_corruption(&e) && counted.n == 0 => {
                self.fetch_from_upstream(hash)?;
                read(&mut counted)
            }
            r => r,
        }
    }

    /// True if `e` says the *local* copy of an object was corrupt (and was quarantined here),
    /// in a tiered store: worth fetching again. A corrupt copy found upstream — on the fetch
    /// of a miss — is quarantined there; fetching again would only report it missing, hiding
    /// the corruption (issue 18, finding 11).
    fn is_local_corruption(&self, e: &Error) -> bool {
        self.tier.is_some()
            && e.is_corrupt()
            && e.path().is_some_and(|p| p.starts_with(&self.inner.root))
    }

    /// Makes sure the upstream holds an object a ref or entry is about to name there: a
    /// store given an upstream after objects were put in it has local-only objects.
    fn ensure_upstream_has(&self, up: &dyn Upstream, hash: &Hash) -> Result<()> {
        if up.has(hash)? {
            return Ok(());
        }
        let local = self.without_upstream();
        let Ok(obj) = local.get(hash) else {
            return Ok(()); // let the upstream report what it lacks
        };
        up.put(&mut [(*hash, &mut &obj[..])])
    }

    /// Sets a ref in the upstream.
    pub(crate) fn upstream_set_ref(
        &self,
        up: &dyn Upstream,
        name: &str,
        new: Hash,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        self.ensure_upstream_has(up, &new)?;
        up.set_ref(name, new, expect, message)
    }

    /// Points a key at an object in the upstream.
    pub(crate) fn upstream_set_keyed(
        &self,
        up: &dyn Upstream,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        self.ensure_upstream_has(up, &hash)?;
        up.set_keyed(key, hash, metadata, expect)
    }

    /// gc of a tiered store: this store is a cache of its upstream, so nothing here is a root
    /// except what local refs, entries and pins reach (a standalone store's, if the upstream
    /// was added later). Unreachable objects are kept while the store is within its budget;
    /// over budget they are evicted least recently used first (deleted at once: the upstream
    /// holds them, and a reader that loses one fetches it again). An object the upstream
    /// does not hold (put through a read-only upstream) is never evicted. Dead writers'
    /// staging files are removed as by the normal gc.
    pub(crate) fn gc_tier(&self, opts: &GcOptions, progress: ProgressFn<'_>) -> Result<GcReport> {
        let local = self.without_upstream();
        let lock = local.acquire_gc_lock(&layout::gc_lock_path(&self.inner.root))?;
        let dry = opts.dry_run;
        // Local roots only (a tier's names live upstream). Damaged local items do not stop
        // eviction: only objects the upstream holds are ever deleted here.
        let mark = local.mark();
        let reachable = mark.reach.reachable;
        let mut r = GcReport {
            dry_run: dry,
            roots: mark.roots,
            reachable: reachable.len() as u64,
            ..GcReport::default()
        };
        let mut cached = Vec::new();
        let beat = self.inner.options.lock_timeout / 3;
        let mut last_beat = std::time::Instant::now();
        for h in local.iter() {
            let h = h?;
            if last_beat.elapsed() > beat {
                lock.refresh()?; // the lease, as the normal gc keeps it
                last_beat = std::time::Instant::now();
            }
            let p = self.object_path(&h);
            let meta = match self.inner.root_dir.lstat(&p) {
                Ok(m) => m,
                Err(e) if crate::fs::is_not_found(&e) => continue,
                Err(e) => return Err(Error::io("stat", &p, e)),
            };
            r.objects += 1;
            r.bytes += meta.len;
            if !reachable.contains(&h) {
                cached.push((meta.mtime, h, meta.len));
            }
        }
        if !progress(Progress {
            phase: "scan",
            done: r.objects,
            total: Some(r.objects),
        }) {
            return Err(Error::Interrupted);
        }
        // The quarantine as in a store without upstream (docs/format.md §GC): kept for the
        // grace period, counted in the size.
        let cutoff = std::time::SystemTime::now()
            .checked_sub(opts.grace)
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        local.purge_quarantine(cutoff, dry, &mut r);
        let mut total = r.bytes + r.quarantine_bytes;
        if let Some(budget) = opts.max_size.or(self.inner.options.max_size) {
            cached.sort_unstable_by_key(|(t, h, _)| (*t, *h));
            for (_, h, len) in cached {
                if total <= budget {
                    break;
                }
                // The copy here may be the only one (a put through a read-only upstream). An
                // unreachable upstream fails the gc: it cannot tell which copies are spare.
                let spare = match self.upstream() {
                    Some(u) => u.has(&h)?,
                    None => false,
                };
                if !spare {
                    continue;
                }
                if !dry {
                    let p = self.object_path(&h);
                    match self.inner.root_dir.unlink(&p) {
                        Ok(()) => {}
                        Err(e) if crate::fs::is_not_found(&e) => continue,
                        Err(e) => return Err(Error::io("evict", &p, e)),
                    }
                }
                r.evicted_objects += 1;
                r.evicted_bytes += len;
                total -= len;
            }
        }
        for s in local.stale_staging().0 {
            r.staging_removed += 1;
            if !dry {
                let _ = self.inner.root_dir.unlink(&s.path);
            }
        }
        r.bytes_after = total;
        lock.release();
        Ok(r)
    }
}

/// Validates an upstream path for the `config` file (one line, not empty).
pub(crate) fn check_upstream_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.trim().is_empty() || s.contains('\n') || s.contains('\r') || s.trim() != s {
        return Err(Error::InvalidInput {
            what: "upstream",
            reason: format!(
                "{s:?}: the path must be non-empty, one line, without surrounding spaces"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An upstream that is not a directory (as an object-store upstream would be): objects
    /// and refs in memory. The tier's protocols work unchanged over it.
    #[derive(Default)]
    struct Memory {
        objects: Mutex<HashMap<Hash, Vec<u8>>>,
        refs: Mutex<HashMap<String, Hash>>,
    }

    impl Upstream for Memory {
        fn location(&self) -> &Path {
            Path::new("mem://test")
        }
        fn has(&self, hash: &Hash) -> Result<bool> {
            Ok(self.objects.lock().unwrap().contains_key(hash))
        }
        fn fetch(&self, hash: &Hash, into: &mut dyn Write) -> Result<u64> {
            let o = self.objects.lock().unwrap().get(hash).cloned();
            let o = o.ok_or(Error::NotFound {
                hash: *hash,
                path: PathBuf::from("mem://test"),
            })?;
            into.write_all(&o)
                .map_err(|e| Error::io("write output", "<output>", e))?;
            Ok(o.len() as u64)
        }
        fn put(&self, objects: &mut [(Hash, &mut dyn Read)]) -> Result<()> {
            for (h, r) in objects.iter_mut() {
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                assert_eq!(Hash::of(&v), *h, "the tier hands over the bytes it hashed");
                self.objects.lock().unwrap().insert(*h, v);
            }
            Ok(())
        }
        fn get_ref(&self, name: &str) -> Result<Option<Hash>> {
            Ok(self.refs.lock().unwrap().get(name).copied())
        }
        fn set_ref(&self, name: &str, new: Hash, _: Expect, _: &str) -> Result<Option<Hash>> {
            Ok(self.refs.lock().unwrap().insert(name.to_owned(), new))
        }
        fn remove_ref(&self, name: &str, _: Expect) -> Result<Hash> {
            self.refs
                .lock()
                .unwrap()
                .remove(name)
                .ok_or(Error::RefNotFound { name: name.into() })
        }
        fn list_refs(&self, _: &str) -> Result<Vec<(String, Hash)>> {
            Ok(self.refs.lock().unwrap().clone().into_iter().collect())
        }
        fn reflog(&self, _: &str) -> Result<Vec<RefLogEntry>> {
            Ok(Vec::new())
        }
        fn entry(&self, key: &[u8]) -> Result<Entry> {
            Err(Error::KeyNotFound {
                key: String::from_utf8_lossy(key).into(),
            })
        }
        fn set_keyed(&self, _: &[u8], _: Hash, _: &[u8], _: Expect) -> Result<Option<Hash>> {
            Ok(None)
        }
        fn remove_keyed(&self, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn list_keys(&self) -> Result<Vec<Result<Entry>>> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_custom_upstream_gets_write_through_fetches_and_names() {
        let d = tempfile::tempdir().unwrap();
        let mem = Arc::new(Memory::default());
        let tier = Store::init(d.path().join("a"), crate::Options::default())
            .unwrap()
            .with_upstream_impl(mem.clone(), false);
        let h = tier.put_bytes(b"written through").unwrap();
        assert!(mem.has(&h).unwrap());
        tier.set_ref("r", h, Expect::Any).unwrap();
        assert_eq!(mem.get_ref("r").unwrap(), Some(h));
        assert!(tier.without_upstream().list_refs("").unwrap().is_empty());

        // Another node's tier fetches it, verified, and keeps a local copy.
        let other = Store::init(d.path().join("b"), crate::Options::default())
            .unwrap()
            .with_upstream_impl(mem.clone(), false);
        assert_eq!(&*other.get(&h).unwrap(), b"written through");
        assert!(other.without_upstream().contains(&h));

        // An upstream that serves wrong bytes is caught before anything is published.
        let bad = Hash::of(b"claimed");
        mem.objects.lock().unwrap().insert(bad, b"not it".to_vec());
        assert!(other.get(&bad).unwrap_err().is_corrupt());
        assert!(!other.without_upstream().contains(&bad));
        assert!(std::fs::read_dir(d.path().join("b/tmp"))
            .unwrap()
            .next()
            .is_none());

        // Budget eviction keeps nothing it cannot get back.
        let r = other
            .gc(&GcOptions::default().max_size(Some(0)), &crate::no_progress)
            .unwrap();
        assert_eq!(r.evicted_objects, 1);
        assert_eq!(&*other.get(&h).unwrap(), b"written through");
    }
}

//! Tiered stores: a node-local store in front of an upstream store.
//!
//! A store with an upstream is a cache of it. A get looks here, then in the upstream; an
//! object fetched from the upstream is verified and published here through the normal write
//! path (stage, barrier, publish without replacing), so concurrent fetches on one node
//! converge. A put publishes in the upstream first, then here (write-through), so every
//! object of this store is also in the upstream and this store's gc may evict any of them.
//! Refs and cache entries live in the upstream only. docs/format.md "Tiered stores" has the
//! protocol and its crash analysis.
//!
//! The upstream sits behind the [`Upstream`] and [`Names`] traits (the seam, in
//! `crate::store::tier`, held by the handle from the moment the store is opened);
//! [`DirUpstream`] implements them for a store directory (a shared filesystem), and
//! `TierNames` holds the tier's rules for names (a read-only upstream refuses; the upstream is
//! made to hold an object before a name points at it). An object-store upstream (S3 API)
//! would implement the same traits without touching these protocols.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::maint::gc::{GcOptions, GcReport};
use crate::names::entries::Entry;
use crate::names::refs::RefLogEntry;
use crate::progress::{Progress, ProgressFn};
use crate::store::layout;
use crate::store::tier::{Maintainer, Names, ObjectChain, Tier, Upstream};
use crate::write::stage::Staged;
use crate::{Expect, Store};

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

impl Names for DirUpstream {
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

/// A tier's names backend: its refs and cache entries live in the upstream. A read-only
/// upstream refuses every change; before a name points at an object there, the upstream is
/// made to hold it (a store given an upstream after objects were put in it has local-only
/// objects).
struct TierNames {
    upstream: Arc<dyn Upstream>,
    readonly: bool,
    /// The tier's own directory, where a local-only object is read from.
    local: Store,
}

impl TierNames {
    /// The upstream, to change a name in; a read-only one refuses.
    fn writable_upstream(&self) -> Result<&dyn Upstream> {
        if self.readonly {
            return Err(Error::Upstream {
                upstream: self.upstream.location().to_owned(),
                what: "is read-only: refs and cache entries live there and cannot be changed \
                       through this store"
                    .into(),
                source: None,
            });
        }
        Ok(&*self.upstream)
    }

    /// Makes sure the upstream holds an object a name is about to point at there.
    fn ensure_upstream_has(&self, up: &dyn Upstream, hash: &Hash) -> Result<()> {
        if up.has(hash)? {
            return Ok(());
        }
        let Ok(obj) = self.local.get(hash) else {
            return Ok(()); // let the upstream report what it lacks
        };
        up.put(&mut [(*hash, &mut &obj[..])])
    }
}

impl Names for TierNames {
    fn get_ref(&self, name: &str) -> Result<Option<Hash>> {
        self.upstream.get_ref(name)
    }
    fn set_ref(
        &self,
        name: &str,
        new: Hash,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        let up = self.writable_upstream()?;
        self.ensure_upstream_has(up, &new)?;
        up.set_ref(name, new, expect, message)
    }
    fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash> {
        self.writable_upstream()?.remove_ref(name, expect)
    }
    fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>> {
        self.upstream.list_refs(prefix)
    }
    fn refs_report(&self, prefix: &str) -> Result<crate::RefsReport> {
        self.upstream.refs_report(prefix)
    }
    fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>> {
        self.upstream.reflog(name)
    }
    fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(crate::RefLogLine) -> Result<()>,
    ) -> Result<()> {
        self.upstream.reflog_each(name, last, f)
    }
    fn entry(&self, key: &[u8]) -> Result<Entry> {
        self.upstream.entry(key)
    }
    fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        let up = self.writable_upstream()?;
        self.ensure_upstream_has(up, &hash)?;
        up.set_keyed(key, hash, metadata, expect)
    }
    fn remove_keyed(&self, key: &[u8]) -> Result<()> {
        self.writable_upstream()?.remove_keyed(key)
    }
    fn list_keys(&self) -> Result<Vec<Result<Entry>>> {
        self.upstream.list_keys()
    }
    fn writable(&self) -> Result<()> {
        self.writable_upstream().map(|_| ())
    }
    fn publish_keyed(
        &self,
        publish: &mut dyn FnMut() -> Result<()>,
        key: &[u8],
        hash: Hash,
        _size: u64,
        metadata: &[u8],
    ) -> Result<()> {
        // Refused before anything is published; the object is written through by the
        // publish, the entry lives upstream.
        self.writable()?;
        publish()?;
        self.set_keyed(key, hash, metadata, Expect::Any).map(|_| ())
    }
}

/// A tier's maintenance: gc evicts (`Store::gc_tier`); verify and doctor look at the tier's
/// own directory only (the upstream is another store, checked on its own).
struct TierMaintainer;

impl Maintainer for TierMaintainer {
    fn gc(&self, store: &Store, opts: &GcOptions, progress: ProgressFn<'_>) -> Result<GcReport> {
        store.gc_tier(opts, progress)
    }
    fn verify(&self, store: &Store, progress: ProgressFn<'_>) -> Result<crate::VerifyReport> {
        store.without_upstream().verify(progress)
    }
    fn doctor(&self, store: &Store, fix: bool) -> Result<crate::DoctorReport> {
        store.without_upstream().doctor(fix)
    }
}

/// A tier's objects after its own directory: misses are fetched from the upstream, puts are
/// written through to it first (unless it is read-only).
struct TierObjects {
    upstream: Arc<dyn Upstream>,
    readonly: bool,
}

impl ObjectChain for TierObjects {
    /// Write-through: before staged objects are published here, they are stored in the
    /// upstream (read back from their staging files). Nothing through a read-only upstream.
    fn write_through(&self, staged: &[Staged]) -> Result<()> {
        if self.readonly {
            return Ok(());
        }
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
        self.upstream.put(&mut objects)
    }

    /// Fetches an object from the upstream into `store`: staged there while hashed,
    /// verified, published without replacing (so racing fetches converge).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the upstream lacks it too; [`Error::Upstream`] if it cannot be
    /// reached; [`Error::Corrupt`] if the bytes received do not match.
    fn fetch(&self, store: &Store, hash: &Hash) -> Result<bool> {
        let local = store.without_upstream();
        let mut w = local.writer()?;
        let staging = w.staging_path();
        let mut rec = Recording {
            inner: &mut w,
            failed: None,
        };
        if let Err(e) = self.upstream.fetch(hash, &mut rec) {
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
                path: self.upstream.location().to_owned(),
            });
        }
        local.publish(vec![staged], store.durability())?;
        Ok(true)
    }

    /// True if the upstream holds the object (false when it is unreachable).
    fn has(&self, hash: &Hash) -> bool {
        self.upstream.has(hash).unwrap_or(false)
    }

    /// A tier holds a subset of its upstream: resolve there, here only if the upstream cannot
    /// be reached.
    fn resolve_prefix(&self, prefix: &str) -> Option<Result<Hash>> {
        match self.upstream.resolve_prefix(prefix) {
            Err(e) if e.kind() == crate::ErrorKind::Upstream => None,
            r => Some(r),
        }
    }
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
            tier: Some(Arc::new(Tier {
                names: Arc::new(TierNames {
                    upstream: Arc::clone(&upstream),
                    readonly,
                    local: self.without_upstream(),
                }),
                maintainer: Arc::new(TierMaintainer),
                objects: Arc::new(TierObjects {
                    upstream: Arc::clone(&upstream),
                    readonly,
                }),
                upstream,
                readonly,
            })),
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
        // The quarantine as in a store without upstream (docs/format.md "GC"): kept for the
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
        if !dry {
            // Outboards of objects evicted here (or gone otherwise): derived data, as in a
            // store without upstream; a failure costs only disk space.
            r.outboards_removed = local.sweep_outboards().unwrap_or(0);
        }
        r.bytes_after = total;
        lock.release();
        Ok(r)
    }
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

    impl Names for Memory {
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

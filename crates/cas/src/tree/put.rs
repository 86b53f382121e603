//! Storing a directory as trees (`put -r`, `Store::put_dir*`), in two steps that overlap:
//!
//! 1. **Scan**, on a few threads (as git preloads its index): every directory is listed
//!    through its descriptor and its entries are `fstatat`-ed relative to it (one name lookup
//!    per file, not a walk of its whole path); with a stat cache, a file whose `lstat`
//!    matches an entry has that entry's object probed in the store. These two lookups per
//!    unchanged file are nearly all of a re-put's time, all of it in the kernel, and most
//!    trees have many small directories, so the threads share out directories, not files.
//!    Subdirectories are opened by path without following a link at their name; each thread
//!    holds one directory descriptor at a time. Directories are scanned depth first in the
//!    order they are stored, and what was found waits until it is stored (at most the whole
//!    tree, about 150 bytes per entry, like git's index).
//! 2. **Store**, in post order on the calling thread, each directory as soon as it is
//!    scanned: files the cache did not answer are read and staged (`Batch::put_path`), then
//!    the directory's tree object. The stat cache is only read meanwhile; the hits and new
//!    entries of the run go into it once the walk is over.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::fs::{self, Kind};
use crate::hash::Hash;
use crate::progress::ProgressHook;
use crate::tree::format::{
    TreeEntry, TreeEntryKind, TreeWriter, Trees, MAX_DEPTH, TREE_MODE_BITS, TREE_VERSION,
};
use crate::tree::links::{join_shown, Models};
use crate::tree::statcache::{StatCache, StatKey};
use crate::write::batch::Batch;
use crate::Store;

/// Special files (FIFOs, sockets, devices) a `put -r --skip-special` left out, and the
/// symlinks stored.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    pub(crate) count: u64,
    /// The first one met, as an example for the warning.
    pub(crate) example: Option<PathBuf>,
    /// Symlinks in the stored tree (0: no need to check where they lead).
    pub(crate) links: u64,
}

/// Stores the directory `root` (a symlink to a directory is followed at the root only);
/// returns its tree's hash and the special files skipped (with
/// [`PutDirOptions::skip_special`]). Trees are encoded entry by entry and never held
/// decoded (a check of symlinks reads them back from the store).
/// `opts.progress` is told the bytes of the files done so far: read, or found unchanged in
/// the stat cache. Files and directories are recorded with their permission bits, and their
/// mtimes with [`PutDirOptions::keep_mtime`].
pub(crate) fn put_dir(
    store: &Store,
    root: &Path,
    cache: Option<&mut StatCache>,
    opts: &PutDirOptions,
) -> Result<(Hash, Skipped)> {
    let progress = opts.progress.as_ref();
    let meta = std::fs::metadata(root).map_err(Error::at("stat", root))?;
    if !meta.is_dir() {
        return Err(Error::Tree {
            path: root.to_owned(),
            reason: "not a directory".into(),
        });
    }
    let fd = fs::open_src_dir(root, true).map_err(Error::at("read directory", root))?;
    // One batch for the whole tree: its barriers are shared by many files, and it publishes
    // in staging order, so an object is never visible before its children.
    let mut batch = store.batch();
    let skipped = Arc::new(AtomicU64::new(0));
    if let Some(p) = progress {
        let (p, skipped) = (p.clone(), Arc::clone(&skipped));
        batch
            .set_progress(move |b| p.report("put", skipped.load(Ordering::Relaxed) + b.done, None));
    }
    let shared = cache.as_deref();
    let mut walk = Walk {
        store,
        batch,
        cache: shared,
        progress: progress.map(|p| (p, skipped)),
        hits: Vec::new(),
        records: Vec::new(),
        keep_mtime: opts.keep_mtime,
        links: 0,
    };
    // The scan threads run ahead; this thread stores each directory as soon as it is scanned
    // (the scan hands out directories in the order they are stored).
    let scan = Scan::new(fd, root, opts.skip_special);
    let hash = std::thread::scope(|s| {
        for _ in 0..scan_threads() {
            s.spawn(|| scan.worker(store, shared));
        }
        let r = walk.dir(&scan, 0, root, 0);
        scan.stop();
        r
    });
    let Walk {
        batch,
        hits,
        records,
        links,
        ..
    } = walk;
    let (hash, ..) = hash?;
    let mut skipped = std::mem::take(
        &mut *scan
            .skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    skipped.links = links;
    // The cache was read by the scan threads while this thread stored; what this run learnt
    // goes into it now.
    if let Some(c) = cache {
        for k in &hits {
            c.note_hit(k);
        }
        for (k, h) in records {
            c.record(&k, h);
        }
        for first in c.found_fanouts() {
            batch.note_found_fanout(first);
        }
    }
    batch.commit()?;
    Ok((hash, skipped))
}

struct Walk<'a> {
    store: &'a Store,
    batch: Batch,
    /// Read by the scan threads at the same time: hits and new entries wait in `hits` and
    /// `records` until the walk is over.
    cache: Option<&'a StatCache>,
    /// The callback, and the bytes of files the stat cache answered for (the batch counts
    /// those it reads).
    progress: Option<(&'a ProgressHook, Arc<AtomicU64>)>,
    hits: Vec<StatKey>,
    records: Vec<(StatKey, Hash)>,
    /// Record mtimes in the trees.
    keep_mtime: bool,
    /// Symlinks stored: none, and no check of their targets is needed.
    links: u64,
}

/// One entry of a scanned directory.
enum Item {
    /// A regular file: its `lstat`, and the stat cache's hash if it has a matching entry
    /// whose object is in the store.
    ///
    /// Kept compact (issue 26: a flat directory holds one per file): size, permission bits
    /// and mtime (ns); the stat cache's key and hash only when the put uses the cache.
    File {
        size: u64,
        mode: u32,
        mtime: i64,
        cache: Option<Box<Cached>>,
    },
    Link(OsString),
    /// A subdirectory: its index among the scanned directories.
    Dir(usize),
}

/// A file's stat-cache key (from the scan's `lstat`) and the cache's hash for it, if it had
/// a matching entry whose object is in the store.
struct Cached {
    key: Option<StatKey>,
    hash: Option<Hash>,
}

impl Cached {
    /// What the stat cache `c` says about a file with this `lstat`.
    fn of(c: &StatCache, store: &Store, st: &fs::SrcStat) -> Cached {
        let key = StatKey::of_src(st);
        let hash = key
            .as_ref()
            .and_then(|k| c.candidate(k))
            .filter(|h| c.object_present(store, h, st.size));
        Cached { key, hash }
    }
}

/// A directory as the scan found it: its own permission bits and mtime (ns, `fstat` of the
/// descriptor it was listed through), and its entries sorted by name bytes.
struct Scanned {
    mode: u32,
    mtime: i64,
    /// Every slot is `Found` (the scan removes `Skipped` ones).
    entries: Vec<(OsString, Slot)>,
}

/// One entry of a directory being scanned: its kind as listed, then what its probe found
/// (or that it is a special file left out).
enum Slot {
    Listed(Option<Kind>),
    Found(Item),
    Skipped,
}

/// Nanoseconds since 1970 of a `(seconds, nanoseconds)` time, saturated to `i64`.
fn nanos((secs, ns): (i64, i64)) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(ns)
}

/// The scan's shared state: directories waiting, how many are being scanned, and what was
/// found, by index (0 is the root), until the walk takes it.
struct ScanState {
    todo: Vec<(usize, PathBuf, Option<OwnedFd>)>,
    active: usize,
    done: Vec<Option<Scanned>>,
    error: Option<Error>,
    /// The walk is over (done or failed): scan threads leave.
    stop: bool,
    /// Entries (and directories) scanned and not yet taken by the walk.
    held: usize,
    /// The directory the walk is waiting for, if it is: scanned next even over the budget.
    wanted: Option<usize>,
}

/// Entries the scan may hold ahead of the walk before it waits (issue 26): at about 150
/// bytes each, some 2.5 MB; a single larger directory is still scanned whole (the walk needs
/// it), so memory is bounded by the largest directory, not the whole tree.
const SCAN_AHEAD: usize = if cfg!(test) { 64 } else { 1 << 14 };

/// The scan of one tree: its threads take directories from `todo`, the walk takes what they
/// found from `done`; both wait on `wake`.
struct Scan {
    state: Mutex<ScanState>,
    wake: Condvar,
    /// Leave FIFOs, sockets and devices out (counted in `skipped`) instead of failing.
    skip_special: bool,
    skipped: Mutex<Skipped>,
}

impl Scan {
    /// A scan starting at `root`, open as `fd`.
    fn new(fd: OwnedFd, root: &Path, skip_special: bool) -> Scan {
        Scan {
            state: Mutex::new(ScanState {
                todo: vec![(0, root.to_owned(), Some(fd))],
                active: 0,
                done: vec![None],
                error: None,
                stop: false,
                held: 0,
                wanted: None,
            }),
            wake: Condvar::new(),
            skip_special,
            skipped: Mutex::new(Skipped::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScanState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the scan: its threads leave at their next directory.
    fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    /// What the scan found in directory `id`, once it is scanned (waiting for it); the scan's
    /// first error instead, if it failed.
    fn take(&self, id: usize, path: &Path) -> Result<Scanned> {
        let mut st = self.lock();
        loop {
            if let Some(found) = st.done.get_mut(id).and_then(Option::take) {
                st.held = st.held.saturating_sub(found.entries.len() + 1);
                st.wanted = None;
                self.wake.notify_all();
                return Ok(found);
            }
            if let Some(e) = st.error.take() {
                st.stop = true;
                self.wake.notify_all();
                return Err(e);
            }
            if id >= st.done.len() || (st.todo.is_empty() && st.active == 0) {
                return Err(Error::Tree {
                    path: path.to_owned(),
                    reason: "was not scanned (internal error)".into(),
                });
            }
            if st.wanted != Some(id) {
                st.wanted = Some(id);
                self.wake.notify_all();
            }
            st = self
                .wake
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Gives directories to scan (`paths`, in the order they will be stored) their indexes,
    /// the first returned, and queues them so the first is taken first.
    fn queue(&self, paths: Vec<PathBuf>) -> usize {
        let mut st = self.lock();
        let first = st.done.len();
        st.done.extend(paths.iter().map(|_| None));
        // Last in, first out: pushed in reverse, the first subdirectory is scanned next, so
        // the scan goes deep first in the order of the walk, and few directories wait.
        for (i, p) in paths.into_iter().enumerate().rev() {
            st.todo.push((first + i, p, None));
        }
        self.wake.notify_all();
        first
    }

    /// One scan thread: scans directories until none is left or the walk is over.
    fn worker(&self, store: &Store, cache: Option<&StatCache>) {
        let mut st = self.lock();
        loop {
            if st.error.is_some() || st.stop {
                break;
            }
            // Over the budget, only the directory the walk waits for is scanned.
            let next = if st.held <= SCAN_AHEAD {
                st.todo.pop()
            } else {
                let wanted = st.wanted;
                st.todo
                    .iter()
                    .rposition(|t| Some(t.0) == wanted)
                    .map(|i| st.todo.remove(i))
            };
            if let Some((id, path, fd)) = next {
                st.active += 1;
                drop(st);
                let found = scan_dir(store, cache, &path, fd, self, &|paths| self.queue(paths));
                st = self.lock();
                st.active -= 1;
                match found {
                    Ok(entries) => {
                        st.held += entries.entries.len() + 1;
                        st.done[id] = Some(entries);
                    }
                    Err(e) => {
                        if st.error.is_none() {
                            st.error = Some(e);
                        }
                    }
                }
                self.wake.notify_all();
            } else if st.active == 0 && st.todo.is_empty() {
                break;
            } else {
                st = self
                    .wake
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        drop(st);
        self.wake.notify_all();
    }
}

/// Entries of one directory probed by each thread when a large directory is split (most
/// directories are small: they are shared out whole).
const PROBE_CHUNK: usize = 256;

/// How many threads scan: the cores, at most 4. Asked once: `available_parallelism` reads
/// the cgroup's files each time.
fn scan_threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, 4)
    })
}

/// Lists and probes one directory (`fd`, or opened at `path` without following a link at its
/// name); `queue` takes its subdirectories' paths, in order, and returns the first one's
/// index (the others follow). A large directory's entries are probed by several threads.
/// Special files are an error naming them, or left out and counted in `scan.skipped`.
fn scan_dir(
    store: &Store,
    cache: Option<&StatCache>,
    path: &Path,
    fd: Option<OwnedFd>,
    scan: &Scan,
    queue: &dyn Fn(Vec<PathBuf>) -> usize,
) -> Result<Scanned> {
    let fd = match fd {
        Some(fd) => fd,
        None => fs::open_src_dir(path, false).map_err(Error::at("read directory", path))?,
    };
    let own = fs::stat_src_fd(fd.as_fd()).map_err(Error::at("stat", path))?;
    let mut names = fs::list_src_dir(&fd).map_err(Error::at("read directory", path))?;
    names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    // Probed in place (issue 26): each slot's listed kind is replaced by what was found, so
    // the directory is one vector from the listing to the walk (it used to be a list of
    // names, a list of results and their zip, all at once at the end of the scan).
    let mut entries: Vec<(OsString, Slot)> = names
        .into_iter()
        .map(|(n, k)| (n, Slot::Listed(k)))
        .collect();
    let one = |(name, slot): &mut (OsString, Slot)| -> Result<()> {
        let Slot::Listed(kind) = *slot else {
            return Ok(());
        };
        let st = match kind {
            Some(Kind::Dir | Kind::Symlink | Kind::Special) => None,
            Some(Kind::File) | None => Some(
                fs::lstat_src_at(fd.as_fd(), name)
                    .map_err(|e| Error::io("stat", path.join(&*name), e))?,
            ),
        };
        *slot = Slot::Found(match st.map_or(kind.unwrap_or(Kind::Special), |s| s.kind) {
            Kind::Dir => Item::Dir(usize::MAX), // numbered below, in order
            Kind::File => {
                let st = st.expect("files are stat-ed above");
                Item::File {
                    size: st.size,
                    mode: st.mode,
                    mtime: nanos(st.mtime),
                    cache: cache.map(|c| Box::new(Cached::of(c, store, &st))),
                }
            }
            Kind::Symlink => Item::Link(
                fs::readlink_src_at(fd.as_fd(), &*name)
                    .map_err(|e| Error::io("read link", path.join(&*name), e))?,
            ),
            Kind::Special if scan.skip_special => {
                let mut s = scan
                    .skipped
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.count += 1;
                s.example.get_or_insert_with(|| path.join(&*name));
                *slot = Slot::Skipped;
                return Ok(());
            }
            Kind::Special => {
                return Err(Error::Tree {
                    path: path.join(&*name),
                    reason: "cannot store this file type (socket, fifo or device); \
                             --skip-special (PutDirOptions::skip_special) leaves such files out"
                        .into(),
                })
            }
        });
        Ok(())
    };
    let threads = scan_threads().min(entries.len() / PROBE_CHUNK);
    if threads <= 1 {
        entries.iter_mut().try_for_each(one)?;
    } else {
        let size = entries.len().div_ceil(threads);
        let mut chunks = entries.chunks_mut(size);
        let first = chunks.next().unwrap_or_default();
        std::thread::scope(|s| {
            let others: Vec<_> = chunks
                .map(|c| s.spawn(|| c.iter_mut().try_for_each(one)))
                .collect();
            // The first error in name order, as a sequential scan would report it.
            let mut res = first.iter_mut().try_for_each(one);
            for t in others {
                let r = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                if res.is_ok() {
                    res = r;
                }
            }
            res
        })?;
    }
    entries.retain(|(_, slot)| !matches!(slot, Slot::Skipped));
    let subdirs: Vec<PathBuf> = entries
        .iter()
        .filter(|(_, slot)| matches!(slot, Slot::Found(Item::Dir(_))))
        .map(|(name, _)| path.join(name))
        .collect();
    if !subdirs.is_empty() {
        let mut next = queue(subdirs);
        for (_, slot) in &mut entries {
            if let Slot::Found(Item::Dir(id)) = slot {
                *id = next;
                next += 1;
            }
        }
    }
    Ok(Scanned {
        mode: own.mode & TREE_MODE_BITS,
        mtime: nanos(own.mtime),
        entries,
    })
}

impl Walk<'_> {
    /// Stores the directory `id` (at `path`, `depth` directories below the root) once it is
    /// scanned and, first, everything below it.
    ///
    /// The depth is checked here, before the scan's result is taken: the scan runs ahead, and
    /// a chain deeper than the limit used to fail on the scan's path growing past `PATH_MAX`
    /// ("File name too long") instead of with the depth message (issue 26).
    /// Returns the tree's hash and the directory's own permission bits and mtime (for its
    /// entry in its parent).
    fn dir(
        &mut self,
        scan: &Scan,
        id: usize,
        path: &Path,
        depth: usize,
    ) -> Result<(Hash, u32, i64)> {
        if depth > MAX_DEPTH {
            return Err(Error::Tree {
                path: path.to_owned(),
                reason: format!("nesting deeper than {MAX_DEPTH} directories"),
            });
        }
        let Scanned {
            mode,
            mtime,
            entries,
        } = scan.take(id, path)?;
        // Files and directories always carry a mode: version 2 unless only symlinks.
        let version = if entries
            .iter()
            .all(|(_, i)| matches!(i, Slot::Found(Item::Link(_))))
        {
            1
        } else {
            TREE_VERSION
        };
        // Each entry is encoded as soon as it is known (issue 26): the tree is never held
        // as entries, only as its bytes.
        let mut tree = TreeWriter::new(entries.len(), version);
        let invalid = |reason| Error::Tree {
            path: path.to_owned(),
            reason,
        };
        for (name, slot) in entries {
            let Slot::Found(item) = slot else {
                return Err(invalid("was not fully scanned (internal error)".into()));
            };
            let (kind, mode, mtime) = match item {
                Item::File {
                    size,
                    mode,
                    mtime,
                    cache,
                } => {
                    let (key, cached) = cache.map_or((None, None), |c| (c.key, c.hash));
                    (
                        TreeEntryKind::File {
                            executable: mode & 0o111 != 0,
                            size,
                            hash: self.file(path, &name, key, size, cached)?,
                        },
                        Some(mode & TREE_MODE_BITS),
                        Some(mtime),
                    )
                }
                Item::Link(t) => {
                    self.links += 1;
                    (
                        TreeEntryKind::Symlink {
                            target: t.into_vec(),
                        },
                        None,
                        None,
                    )
                }
                Item::Dir(sub) => {
                    let (hash, mode, mtime) = self.dir(scan, sub, &path.join(&name), depth + 1)?;
                    (TreeEntryKind::Dir { hash }, Some(mode), Some(mtime))
                }
            };
            tree.push(TreeEntry {
                name: name.into_vec(),
                kind,
                mode,
                mtime: mtime.filter(|_| self.keep_mtime),
            })
            .map_err(invalid)?;
        }
        let bytes = tree.finish().map_err(invalid)?;
        Ok((self.tree(&bytes)?, mode, mtime))
    }

    /// The hash of the regular file `name` in `dir`: the stat cache's (`cached`, found by the
    /// scan) if it had a usable entry, else read and staged (and recorded). `key` is from the
    /// `lstat` taken before the file is read: a write during the read changes what the next
    /// run sees, so it hashes again.
    fn file(
        &mut self,
        dir: &Path,
        name: &std::ffi::OsStr,
        key: Option<StatKey>,
        size: u64,
        cached: Option<Hash>,
    ) -> Result<Hash> {
        match (self.cache, key) {
            (Some(_), Some(key)) => {
                if let Some(h) = cached {
                    self.hits.push(key);
                    if let Some((p, skipped)) = &self.progress {
                        let s = skipped.fetch_add(size, Ordering::Relaxed) + size;
                        if !p.report("put", s + self.batch.bytes_in(), None) {
                            return Err(Error::Interrupted);
                        }
                    }
                    return Ok(h);
                }
                let h = self.batch.put_path(dir.join(name))?;
                self.records.push((key, h));
                Ok(h)
            }
            _ => self.batch.put_path(dir.join(name)),
        }
    }

    /// Stores a directory's tree object: its bytes, as `TreeWriter` checked them (a tree a
    /// reader would refuse to decode is never written: gc would not know its children).
    fn tree(&mut self, bytes: &[u8]) -> Result<Hash> {
        let hash = match self.cache {
            // An unchanged directory's tree is in the store already: one probe through the
            // fan-out directory the cache holds open (not on a first put, where the cache is
            // empty and the tree most likely new).
            Some(c) if !c.is_empty() => {
                let h = Hash::of(bytes);
                if c.object_present(self.store, &h, bytes.len() as u64) {
                    h
                } else {
                    self.batch.put_bytes(bytes)?
                }
            }
            _ => self.batch.put_bytes(bytes)?,
        };
        Ok(hash)
    }
}

/// What [`Store::put_dir_report`] noticed about a stored directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutDirReport {
    /// Symlinks whose target resolves outside the stored directory (absolute, or climbing
    /// out, possibly through other links). They are stored as they are; a restore refuses
    /// them unless [`CheckoutOptions::allow_external_symlinks`] is set.
    pub external_symlinks: u64,
    /// One of them, with its target, as an example.
    pub example: Option<(PathBuf, PathBuf)>,
    /// With the stat cache: files whose hash came from it (not read).
    pub cache_hits: u64,
    /// With the stat cache: files that were read and hashed.
    pub hashed: u64,
    /// With the stat cache: why it was ignored or not written, if it was (a damaged cache
    /// file is ignored, never an error).
    pub cache_warning: Option<String>,
    /// With [`PutDirOptions::skip_special`]: FIFOs, sockets and devices left out.
    pub skipped_special: u64,
    /// One of them, as an example.
    pub skipped_example: Option<PathBuf>,
}

/// Options of [`Store::put_dir_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutDirOptions {
    /// Use and update this user's stat cache of the store (docs/format.md "The stat cache of `put
    /// -r`"): a file whose device, inode, size, mtime and ctime are what they were when it was last
    /// stored, and whose object is still in the store, is not read again. Off by default in the
    /// library; the CLI turns it on (`cas put -r`, off with `--no-cache`).
    pub stat_cache: bool,
    /// Told the input bytes done so far (phase `"put"`): files read, files found unchanged in
    /// the stat cache, and the directory listings (tree objects) stored. The total is `None`:
    /// the tree is not walked twice to count it. Returning `false` stops the put with
    /// [`Error::Interrupted`] (what was staged is removed; objects already published stay, as
    /// after any put).
    pub progress: Option<ProgressHook>,
    /// Record every file's and directory's mtime (nanoseconds) in the tree (`put -r
    /// --keep-mtime`). Off by default: the tree of a directory then depends on its contents
    /// and modes only, so two puts of the same files made at different times give one hash
    /// (as git; tar and restic keep mtimes). Symlinks' mtimes are never recorded.
    pub keep_mtime: bool,
    /// Leave FIFOs, sockets and devices out of the tree, counted in
    /// [`PutDirReport::skipped_special`] (`put -r --skip-special`), instead of failing on
    /// the first one.
    pub skip_special: bool,
}

impl PutDirOptions {
    /// Sets [`PutDirOptions::progress`] (builder style).
    #[must_use]
    pub fn progress(mut self, f: impl Fn(crate::Progress) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(ProgressHook::new(f));
        self
    }

    /// Sets [`PutDirOptions::stat_cache`] (builder style).
    #[must_use]
    pub fn stat_cache(mut self, on: bool) -> Self {
        self.stat_cache = on;
        self
    }

    /// Sets [`PutDirOptions::keep_mtime`] (builder style).
    #[must_use]
    pub fn keep_mtime(mut self, on: bool) -> Self {
        self.keep_mtime = on;
        self
    }

    /// Sets [`PutDirOptions::skip_special`] (builder style).
    #[must_use]
    pub fn skip_special(mut self, on: bool) -> Self {
        self.skip_special = on;
        self
    }
}

impl Store {
    /// Stores a directory: every file as an object, every directory as a tree object; returns
    /// the root tree's hash. Symlinks are stored, not followed. Identical files are stored once.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let src = dir.path().join("src");
    /// std::fs::create_dir_all(src.join("sub")).unwrap();
    /// std::fs::write(src.join("sub/a.txt"), b"hi").unwrap();
    /// let tree = store.put_dir(&src)?;
    /// store.checkout(&tree, dir.path().join("copy"))?;
    /// assert_eq!(std::fs::read(dir.path().join("copy/sub/a.txt")).unwrap(), b"hi");
    /// assert_eq!(store.put_dir(dir.path().join("copy"))?, tree);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] naming the path that could not be read; [`Error::Tree`] for a file type
    /// that cannot be stored (socket, fifo, device).
    pub fn put_dir(&self, path: impl AsRef<Path>) -> Result<Hash> {
        let opts = PutDirOptions::default();
        crate::tree::put::put_dir(self, path.as_ref(), None, &opts).map(|r| r.0)
    }

    /// [`Store::put_dir`], also reporting symlinks in the directory whose targets resolve
    /// outside it (those a default restore will refuse).
    ///
    /// # Errors
    /// As [`Store::put_dir`].
    pub fn put_dir_report(&self, path: impl AsRef<Path>) -> Result<(Hash, PutDirReport)> {
        self.put_dir_with(path, &PutDirOptions::default())
    }

    /// [`Store::put_dir_report`] with options: with [`PutDirOptions::stat_cache`], files
    /// unchanged since they were last stored (by `lstat`, and racy-git safe) are not read
    /// again. The cache is a hint: a damaged one is ignored (see
    /// [`PutDirReport::cache_warning`]) and the stored tree is the same with or without it.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// # let src = dir.path().join("src");
    /// # std::fs::create_dir_all(&src).unwrap();
    /// # std::fs::write(src.join("a"), b"a").unwrap();
    /// let opts = cas::PutDirOptions::default().stat_cache(true);
    /// let (tree, _) = store.put_dir_with(&src, &opts)?;
    /// assert_eq!(store.put_dir_with(&src, &opts)?.0, tree);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::put_dir`].
    pub fn put_dir_with(
        &self,
        path: impl AsRef<Path>,
        opts: &PutDirOptions,
    ) -> Result<(Hash, PutDirReport)> {
        let path = path.as_ref();
        let mut cache = opts
            .stat_cache
            .then(|| crate::tree::statcache::StatCache::load(self));
        let (hash, skipped) = crate::tree::put::put_dir(self, path, cache.as_mut(), opts)?;
        // Only a tree with symlinks needs its model (all its names: memory in proportion to
        // the whole tree, the one place a put holds that).
        let links = if skipped.links == 0 {
            Vec::new()
        } else {
            let model = self.model(&hash, path, 0, &Trees::new(), &mut Models::new())?;
            model.escaping_links()
        };
        let mut report = PutDirReport {
            external_symlinks: links.len() as u64,
            example: links.first().map(|(p, t, _)| {
                (
                    join_shown(path, p),
                    PathBuf::from(std::ffi::OsStr::from_bytes(t)),
                )
            }),
            skipped_special: skipped.count,
            skipped_example: skipped.example,
            ..PutDirReport::default()
        };
        if let Some(mut c) = cache {
            c.save(self);
            report.cache_hits = c.hits;
            report.hashed = c.hashed;
            report.cache_warning = c.warning;
        }
        Ok((hash, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, TreeEntryKind};

    /// A directory large enough to be split among threads (files, links, subdirectories).
    fn big_dir(root: &Path) {
        std::fs::create_dir_all(root).unwrap();
        for i in 0..3 * PROBE_CHUNK {
            std::fs::write(root.join(format!("f{i:04}")), format!("file {i}")).unwrap();
        }
        for i in 0..20 {
            std::os::unix::fs::symlink(format!("f{i:04}"), root.join(format!("l{i:02}"))).unwrap();
            let sub = root.join(format!("d{i:02}"));
            std::fs::create_dir(&sub).unwrap();
            std::fs::write(sub.join("inner"), format!("inner {i}")).unwrap();
        }
    }

    /// A directory scanned by several threads (and many directories shared among them)
    /// stores exactly what is there: restored, every file, link and directory is back.
    /// A 5 000-level chain used to fail with "File name too long (os error 36)": the
    /// scan, running ahead, reached `PATH_MAX` before the walk reached the depth limit. The
    /// limit's message is the error whatever the depth.
    #[test]
    fn a_chain_past_path_max_fails_with_the_depth_message() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // 2 500 levels of "d/" is a path longer than PATH_MAX (4096): made by descriptors.
        let mut fd = fs::open_dir_nofollow(&src).unwrap();
        for _ in 0..2500 {
            fd = fs::mkdir_open_at(fd.as_fd(), std::ffi::OsStr::new("d")).unwrap();
        }
        // The walk recurses once per level: 1 024 unoptimised frames need more than a test
        // thread's 2 MiB (the binary's main thread has 8 MiB).
        let e = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || store.put_dir(&src).unwrap_err().to_string())
            .unwrap()
            .join()
            .unwrap();
        assert!(
            e.contains(&format!("nesting deeper than {MAX_DEPTH} directories")),
            "{e}"
        );
        assert!(!e.contains("too long"), "{e}");
    }

    /// Issue 26: the scan holds at most `SCAN_AHEAD` entries ahead of the store step (64 in
    /// tests) and then scans only what the walk waits for: a tree of many directories, far
    /// more entries than that, is stored whole and restored the same, and the scan never
    /// waits forever.
    #[test]
    fn a_scan_over_its_budget_still_stores_everything() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        for i in 0..40 {
            for j in 0..3 {
                let dir = src.join(format!("a{i:02}/b{j}"));
                std::fs::create_dir_all(&dir).unwrap();
                for k in 0..5 {
                    std::fs::write(dir.join(format!("f{k}")), format!("{i} {j} {k}")).unwrap();
                }
            }
        }
        let t = store.put_dir(&src).unwrap();
        let out = d.path().join("out");
        store.checkout(&t, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("a39/b2/f4")).unwrap(),
            "39 2 4"
        );
        assert_eq!(store.list_tree(&t).unwrap().len(), 40 + 40 * 3 + 40 * 3 * 5);
        assert_eq!(store.put_dir(&out).unwrap(), t);
    }

    #[test]
    fn a_large_directory_scanned_in_parallel_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        big_dir(&src);
        let t = store.put_dir(&src).unwrap();
        let out = d.path().join("out");
        store.checkout(&t, &out).unwrap();
        let tree = store.read_tree(&t).unwrap();
        assert_eq!(tree.entries.len(), 3 * PROBE_CHUNK + 40);
        for i in [0, PROBE_CHUNK, 2 * PROBE_CHUNK + 1, 3 * PROBE_CHUNK - 1] {
            let got = std::fs::read_to_string(out.join(format!("f{i:04}"))).unwrap();
            assert_eq!(got, format!("file {i}"));
        }
        for i in 0..20 {
            let l = std::fs::read_link(out.join(format!("l{i:02}"))).unwrap();
            assert_eq!(l, Path::new(&format!("f{i:04}")));
            let inner = std::fs::read_to_string(out.join(format!("d{i:02}/inner"))).unwrap();
            assert_eq!(inner, format!("inner {i}"));
        }
        assert_eq!(
            store.put_dir(&out).unwrap(),
            t,
            "the restored copy stores the same tree"
        );
    }

    /// Every thread of a split directory consults the stat cache: each file recorded is a
    /// hit, except the one whose object was removed.
    #[test]
    fn every_thread_of_a_split_directory_uses_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        big_dir(&src);
        let mut cache = StatCache::load(&store);
        // The files were just made: count them as settled for this test's cache.
        cache.start_later_for_test(60_000_000_000);
        let opts = PutDirOptions::default();
        let t = put_dir(&store, &src, Some(&mut cache), &opts).unwrap().0;
        let gone = store.put_bytes(b"file 700").unwrap();
        store.remove(&gone).unwrap();
        let fd = fs::open_src_dir(&src, true).unwrap();
        let scan = Scan::new(fd, &src, false);
        let root = std::thread::scope(|s| {
            s.spawn(|| scan.worker(&store, Some(&cache)));
            let root = scan.take(0, &src).unwrap().entries;
            scan.stop();
            root
        });
        let mut hits = 0;
        for (name, item) in &root {
            if let Slot::Found(Item::File { cache, .. }) = item {
                let cached = cache.as_ref().and_then(|c| c.hash);
                let name = name.to_str().unwrap();
                assert_eq!(cached.is_some(), name != "f0700", "{name}");
                hits += usize::from(cached.is_some());
            }
        }
        assert_eq!(hits, 3 * PROBE_CHUNK - 1);
        // A re-put through the cache stores the removed object again and the same tree.
        assert_eq!(put_dir(&store, &src, Some(&mut cache), &opts).unwrap().0, t);
        assert!(store.contains(&gone));
    }

    /// The root may be a symlink (followed); below it links are stored as links, a FIFO is
    /// refused naming its path, and entries come out sorted by name bytes.
    #[test]
    fn links_below_the_root_are_stored_and_special_files_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("b"), b"b").unwrap();
        std::fs::write(src.join("sub/a"), b"a").unwrap();
        std::os::unix::fs::symlink("sub", src.join("a-link")).unwrap();
        std::os::unix::fs::symlink(&src, d.path().join("root-link")).unwrap();
        let t = store.put_dir(d.path().join("root-link")).unwrap();
        assert_eq!(t, store.put_dir(&src).unwrap());
        let tree = store.read_tree(&t).unwrap();
        let names: Vec<&[u8]> = tree.entries.iter().map(|e| &e.name[..]).collect();
        assert_eq!(names, vec![&b"a-link"[..], b"b", b"sub"]);
        assert!(
            matches!(&tree.entries[0].kind, TreeEntryKind::Symlink { target } if target == b"sub")
        );
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("sub/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = store.put_dir(&src).unwrap_err();
        assert!(e.to_string().contains("fifo"), "{e}");
        assert!(e.to_string().contains("sub"), "{e}");
    }
}

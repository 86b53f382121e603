//! Restoring a tree's contents in parallel: one thread walks the tree, creating
//! directories and symlinks relative to the descriptors of directories it created, and hands
//! the files to a small pool (2–4 threads) that creates and fills them concurrently.
//!
//! Every file is created `O_CREAT | O_EXCL | O_NOFOLLOW` relative to its directory's
//! descriptor and filled with verified bytes (`copyout::object_to_new_file`: files up to 1 MiB
//! read, hashed and written; larger ones copied in the kernel with the copy hashed). All of it
//! happens inside the restore's temporary directory (mode 0700, created by
//! [`Store::checkout_with`]), which is renamed to the destination only after every file
//! verified: the first error stops the walk and the workers, and the caller removes the
//! temporary directory.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::progress::{Progress, ProgressHook};
use crate::tree::format::{check_name, Tree, TreeEntryKind, Trees, MAX_DEPTH, TREE_MODE_BITS};
use crate::tree::links::{escapes_by_itself, join_shown, Models};
use crate::tree::walk::TreeLimits;
use crate::Store;
use std::os::unix::fs::PermissionsExt;

/// Files handed to a worker at once (fewer channel operations for trees of small files).
const JOB_FILES: usize = 32;
/// Jobs queued ahead of the workers: bounds the directory descriptors held open by queued
/// jobs (each job holds its directory's), whatever the tree's size.
const QUEUE: usize = 64;

/// A file to create and fill.
struct FileJob {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    shown: PathBuf,
    hash: Hash,
    executable: bool,
    mode: Option<u32>,
    mtime: Option<i64>,
}

/// What a restore does with the modes and mtimes a tree records
/// ([`crate::CheckoutOptions`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attrs {
    /// Give the recorded permission bits exactly (else masked by the umask).
    pub(crate) ignore_umask: bool,
    /// Leave recorded mtimes out.
    pub(crate) skip_mtimes: bool,
    /// The process's umask, read once.
    pub(crate) umask: u32,
}

/// A time in nanoseconds since 1970 as a `SystemTime`.
fn system_time(ns: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// State shared by the walker and the workers.
struct Shared<'a> {
    store: &'a Store,
    /// Whether files may be mapped to hash their copy (a local filesystem; the temporary
    /// directory is private, see `fs::map_private_file`).
    may_map: bool,
    /// Set on the first error: everyone stops.
    failed: AtomicBool,
    first_error: Mutex<Option<Error>>,
    /// Told the bytes restored so far, out of the total.
    progress: Option<(&'a ProgressHook, u64)>,
    restored: AtomicU64,
    attrs: Attrs,
    /// A directory entry with a mode or an mtime was met: [`dir_attrs`] has work to do.
    dir_attrs: AtomicBool,
}

impl Shared<'_> {
    fn fail(&self, e: Error) {
        let mut slot = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// True once the restore failed, or the process is abandoning its work (a signal):
    /// the walker and every worker stop at the next file (a large file at its next chunk),
    /// and the caller removes the temporary directory once they all have.
    fn stopped(&self) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return true;
        }
        if crate::store::abandon::abandoned() {
            self.fail(Error::Interrupted);
            return true;
        }
        false
    }
}

/// How many threads fill files: the cores, at least 2 (a file's system calls leave the core
/// idle while they wait), at most 4 (the disk and the page cache, not the CPU, are the limit
/// beyond that).
fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .clamp(2, 4)
}

/// Restores the contents of `tree` into the (empty, private) directory `dir`; `shown` is the
/// path used in messages (the final destination). `progress`: a callback told the bytes
/// restored so far, and the total. Files get their recorded mode and mtime as they are
/// written; directories once every file is in (a read-only directory must be filled first,
/// and a file created in a directory changes its mtime), by [`dir_attrs`].
pub(crate) fn restore(
    store: &Store,
    tree: &Tree,
    dir: &Arc<OwnedFd>,
    shown: &Path,
    progress: Option<(&ProgressHook, u64)>,
    attrs: Attrs,
) -> Result<()> {
    let shared = Shared {
        store,
        // The destination files are this process's own, just created.
        may_map: fs::may_map(fs::is_local(dir.as_fd()), true),
        failed: AtomicBool::new(false),
        first_error: Mutex::new(None),
        progress,
        restored: AtomicU64::new(0),
        attrs,
        dir_attrs: AtomicBool::new(false),
    };
    if let Some((p, total)) = progress {
        if !p.report("restore", 0, Some(total)) {
            return Err(Error::Interrupted);
        }
    }
    let (tx, rx) = mpsc::sync_channel::<Vec<FileJob>>(QUEUE);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..workers() {
            s.spawn(|| worker(&shared, &rx));
        }
        let mut batch = Vec::with_capacity(JOB_FILES);
        let walked = walk(&shared, tree, dir, shown, 0, &tx, &mut batch)
            .and_then(|()| send(&shared, &tx, &mut batch));
        if let Err(e) = walked {
            shared.fail(e);
        }
        drop(tx); // the workers finish the queue and stop
    });
    if let Some(e) = shared
        .first_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    if shared.dir_attrs.load(Ordering::Relaxed) {
        dir_attrs(store, tree, dir.as_fd(), shown, 0, attrs)?;
    }
    Ok(())
}

/// Gives the directories below `dir` (restored from `tree`) their recorded modes and mtimes,
/// deepest first: a directory whose mode denies search is entered before it gets it. Each is
/// opened relative to its parent's descriptor without following a link (the restore created
/// them, inside its private temporary directory).
fn dir_attrs(
    store: &Store,
    tree: &Tree,
    dir: std::os::fd::BorrowedFd<'_>,
    shown: &Path,
    depth: usize,
    attrs: Attrs,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(()); // the walk above refused this already
    }
    for e in &tree.entries {
        let TreeEntryKind::Dir { hash } = &e.kind else {
            continue;
        };
        if crate::store::abandon::abandoned() {
            return Err(Error::Interrupted);
        }
        let name = OsStr::from_bytes(&e.name);
        let shown_path = shown.join(name);
        let sub = fs::open_dir_nofollow_at(dir, name).map_err(Error::at("open", &shown_path))?;
        dir_attrs(
            store,
            &store.read_tree(hash)?,
            sub.as_fd(),
            &shown_path,
            depth + 1,
            attrs,
        )?;
        let f = std::fs::File::from(sub);
        if let Some(mtime) = e.mtime.filter(|_| !attrs.skip_mtimes) {
            f.set_modified(system_time(mtime))
                .map_err(Error::at("set the mtime of", &shown_path))?;
        }
        if let Some(mode) = e.mode {
            let mode = if attrs.ignore_umask {
                mode
            } else {
                mode & !attrs.umask
            };
            fs::set_mode(&f, mode).map_err(Error::at("set permissions of", &shown_path))?;
        }
    }
    Ok(())
}

fn worker(shared: &Shared<'_>, rx: &Mutex<mpsc::Receiver<Vec<FileJob>>>) {
    loop {
        let jobs = {
            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        for job in jobs {
            if shared.stopped() {
                break; // keep draining the queue so the walker is never blocked
            }
            if let Err(e) = restore_file(shared, &job) {
                shared.fail(e);
            }
        }
    }
}

fn restore_file(shared: &Shared<'_>, job: &FileJob) -> Result<()> {
    let mode = job
        .mode
        .unwrap_or(if job.executable { 0o777 } else { 0o666 });
    let name = OsStr::from_bytes(&job.name);
    let fd = fs::create_excl_at(job.dir.as_fd(), name, mode)
        .map_err(|e| Error::io("create", &job.shown, e.into()))?;
    let f = std::fs::File::from(fd);
    // This file's bytes so far, to add what each report adds to the restore's total.
    let seen = AtomicU64::new(0);
    let tick = |p: Progress| {
        !shared.stopped()
            && shared.progress.is_none_or(|(hook, total)| {
                let new = p.done.saturating_sub(seen.swap(p.done, Ordering::Relaxed));
                let done = shared.restored.fetch_add(new, Ordering::Relaxed) + new;
                hook.report("restore", done, Some(total))
            })
    };
    crate::read::copyout::object_to_new_file(
        shared.store,
        &job.hash,
        &f,
        &job.shown,
        shared.may_map,
        true,
        &tick,
    )?;
    // Created with the mode, which the kernel masked by the umask.
    if let Some(mode) = job.mode.filter(|_| shared.attrs.ignore_umask) {
        fs::set_mode(&f, mode).map_err(Error::at("set permissions of", &job.shown))?;
    }
    if let Some(mtime) = job.mtime.filter(|_| !shared.attrs.skip_mtimes) {
        f.set_modified(system_time(mtime))
            .map_err(Error::at("set the mtime of", &job.shown))?;
    }
    Ok(())
}

fn send(
    shared: &Shared<'_>,
    tx: &mpsc::SyncSender<Vec<FileJob>>,
    batch: &mut Vec<FileJob>,
) -> Result<()> {
    if batch.is_empty() || shared.stopped() {
        batch.clear();
        return Ok(());
    }
    let jobs = std::mem::replace(batch, Vec::with_capacity(JOB_FILES));
    // The workers only stop receiving once this sender is dropped.
    tx.send(jobs).map_err(|_| Error::Interrupted)
}

fn walk(
    shared: &Shared<'_>,
    tree: &Tree,
    dir: &Arc<OwnedFd>,
    shown: &Path,
    depth: usize,
    tx: &mpsc::SyncSender<Vec<FileJob>>,
    batch: &mut Vec<FileJob>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::Tree {
            path: shown.to_owned(),
            reason: format!("nesting deeper than {MAX_DEPTH} directories"),
        });
    }
    for e in &tree.entries {
        if shared.stopped() {
            return Ok(());
        }
        // Decoding validated names; check again here, where it protects the filesystem.
        check_name(&e.name).map_err(|r| Error::Tree {
            path: shown.to_owned(),
            reason: r.into(),
        })?;
        let name = OsStr::from_bytes(&e.name);
        let shown_path = shown.join(name);
        match &e.kind {
            TreeEntryKind::File {
                executable, hash, ..
            } => {
                batch.push(FileJob {
                    dir: Arc::clone(dir),
                    name: e.name.clone(),
                    shown: shown_path,
                    hash: *hash,
                    executable: *executable,
                    mode: e.mode,
                    mtime: e.mtime,
                });
                if batch.len() >= JOB_FILES {
                    send(shared, tx, batch)?;
                }
            }
            TreeEntryKind::Dir { hash } => {
                // The files of this directory go out before we descend, so a job never holds
                // more than one directory open.
                send(shared, tx, batch)?;
                if e.mode.is_some() || e.mtime.is_some() {
                    shared.dir_attrs.store(true, Ordering::Relaxed);
                }
                let sub_dir = fs::mkdir_open_at(dir.as_fd(), name)
                    .map_err(Error::at("create directory", &shown_path))?;
                let sub = shared.store.read_tree(hash)?;
                walk(
                    shared,
                    &sub,
                    &Arc::new(sub_dir),
                    &shown_path,
                    depth + 1,
                    tx,
                    batch,
                )?;
            }
            TreeEntryKind::Symlink { target } => {
                fs::symlink_at(OsStr::from_bytes(target), dir.as_fd(), name)
                    .map_err(Error::at("create symlink", &shown_path))?;
            }
        }
    }
    send(shared, tx, batch)
}

/// Options of [`Store::checkout_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckoutOptions {
    /// Restore symlinks whose target resolves outside the destination verbatim, as `tar`,
    /// `git` and `cp -a` do, instead of refusing the restore. The restore itself still never
    /// writes through any link; but whatever later opens such a link — a build, a shell
    /// following `out/passwd` — reaches outside the destination, wherever the tree's author
    /// pointed it. Only for trees whose author you trust.
    pub allow_external_symlinks: bool,
    /// Told the bytes of files restored so far (phase `"restore"`), out of the tree's total,
    /// known before the first file is written. It is called from the restoring threads.
    /// Returning `false` stops the restore with [`Error::Interrupted`]; nothing is left at
    /// the destination.
    pub progress: Option<ProgressHook>,
    /// Budgets of the restore (entries at every path, depth, file bytes claimed), checked
    /// before anything is created: a tree over them fails with [`Error::TreeBudget`].
    pub limits: TreeLimits,
    /// Give files and directories exactly the permission bits their entries record (`get -r
    /// --no-umask`), as `tar -p` does. By default they are masked by the process's umask, as
    /// every file a process creates is: a tree never makes a file more open than the
    /// restoring user's umask allows.
    pub ignore_umask: bool,
    /// Leave recorded mtimes out (`get -r --no-mtime`): files and directories keep the time
    /// of the restore. By default a recorded mtime is restored (it is recorded only when the
    /// tree's author asked, with [`PutDirOptions::keep_mtime`]).
    pub skip_mtimes: bool,
}

impl CheckoutOptions {
    /// Sets [`CheckoutOptions::limits`] (builder style).
    #[must_use]
    pub fn limits(mut self, limits: TreeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`CheckoutOptions::progress`] (builder style).
    #[must_use]
    pub fn progress(mut self, f: impl Fn(crate::Progress) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(ProgressHook::new(f));
        self
    }

    /// Sets [`CheckoutOptions::allow_external_symlinks`] (builder style).
    #[must_use]
    pub fn allow_external_symlinks(mut self, on: bool) -> Self {
        self.allow_external_symlinks = on;
        self
    }

    /// Sets [`CheckoutOptions::ignore_umask`] (builder style).
    #[must_use]
    pub fn ignore_umask(mut self, on: bool) -> Self {
        self.ignore_umask = on;
        self
    }

    /// Sets [`CheckoutOptions::skip_mtimes`] (builder style).
    #[must_use]
    pub fn skip_mtimes(mut self, on: bool) -> Self {
        self.skip_mtimes = on;
        self
    }
}

impl Store {
    /// True if the directory `dir` holds exactly the tree `tree`: the same names, kinds,
    /// executable bits, symlink targets and file contents (hashed), nothing more, and the
    /// modes and mtimes a restore with `opts` would give. Links are compared, never followed.
    fn dir_holds_tree(
        &self,
        dir: &Path,
        tree: &Hash,
        depth: usize,
        opts: &CheckoutOptions,
    ) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Ok(false);
        }
        let t = self.read_tree(tree)?;
        let count = std::fs::read_dir(dir)
            .map_err(Error::at("read directory", dir))?
            .count();
        if count != t.entries.len() {
            return Ok(false);
        }
        for e in &t.entries {
            let p = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                return Ok(false);
            };
            let umask = if opts.ignore_umask { 0 } else { fs::umask() };
            let attrs_same = e
                .mode
                .is_none_or(|mode| m.permissions().mode() & TREE_MODE_BITS == mode & !umask)
                && e.mtime.filter(|_| !opts.skip_mtimes).is_none_or(|t| {
                    std::os::unix::fs::MetadataExt::mtime(&m)
                        .saturating_mul(1_000_000_000)
                        .saturating_add(std::os::unix::fs::MetadataExt::mtime_nsec(&m))
                        == t
                });
            if !attrs_same {
                return Ok(false);
            }
            let same = match &e.kind {
                TreeEntryKind::File {
                    executable,
                    size,
                    hash,
                } => {
                    m.is_file()
                        && m.len() == *size
                        && (m.permissions().mode() & 0o111 != 0) == *executable
                        && std::fs::File::open(&p)
                            .and_then(|f| crate::copy::hash_file(&f, false))
                            .is_ok_and(|h| h == *hash)
                }
                TreeEntryKind::Dir { hash } => {
                    m.is_dir() && self.dir_holds_tree(&p, hash, depth + 1, opts)?
                }
                TreeEntryKind::Symlink { target } => {
                    m.file_type().is_symlink()
                        && std::fs::read_link(&p)
                            .is_ok_and(|l| l.as_os_str().as_bytes() == target.as_slice())
                }
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Restores a tree into `dest`, which must not exist, refusing symlinks that would
    /// resolve outside it (see [`Store::checkout_with`]).
    ///
    /// # Errors
    /// As [`Store::checkout_with`].
    pub fn checkout(&self, tree: &Hash, dest: impl AsRef<Path>) -> Result<()> {
        self.checkout_with(tree, dest, &CheckoutOptions::default())
    }

    /// Restores a tree into `dest`, which must not exist. Everything is written into a
    /// temporary directory beside `dest` and renamed into place when complete, so a failed
    /// restore leaves no partial `dest`.
    ///
    /// Nothing is ever written outside `dest`: every file and directory is created relative
    /// to the descriptor of a directory this restore created (`O_CREAT | O_EXCL |
    /// O_NOFOLLOW`, `mkdirat`), so no link — restored or planted — is ever followed. Before
    /// anything is created, every symlink in the whole tree is resolved the way the restored
    /// tree will resolve it (links to links, `..` after a link, with a bound on the number of
    /// links); one that would lead outside `dest`, or an absolute one, is refused, unless
    /// `opts` allows external links.
    ///
    /// Before anything else, the tree is checked against [`CheckoutOptions::limits`] in one
    /// pass that reads each distinct tree object once: a tree naming one subtree at millions
    /// of paths fails at once. A signal's clean-up ([`crate::abandon_temporaries`]) stops the
    /// restore's threads, and the restore removes its temporary directory before the
    /// clean-up goes on.
    ///
    /// # Errors
    /// [`Error::TreeBudget`] naming the tree and the budget it exceeds; [`Error::Malformed`]
    /// if `tree` is not a tree; [`Error::Tree`] naming the offending entry for unsafe entries
    /// or if `dest` exists; [`Error::Interrupted`] if the process is abandoning its work;
    /// object errors as for [`Store::get`].
    pub fn checkout_with(
        &self,
        tree: &Hash,
        dest: impl AsRef<Path>,
        opts: &CheckoutOptions,
    ) -> Result<()> {
        let dest = dest.as_ref();
        self.refuse_output_inside(dest)?;
        // Every walk below (the check of an existing destination, the symlink model, the
        // restore) follows the tree's paths: bound them first (a tree bomb fails here).
        let totals = self.tree_totals(tree, &opts.limits, true, &Trees::new())?;
        if let Ok(m) = std::fs::symlink_metadata(dest) {
            // Restoring the same tree twice (a job re-run, a second consumer) is a success.
            if m.is_dir() && self.dir_holds_tree(dest, tree, 0, opts)? {
                return Ok(());
            }
            return Err(Error::Tree {
                path: dest.to_owned(),
                reason: "already exists and does not hold this tree; choose a new destination"
                    .into(),
            });
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !opts.allow_external_symlinks && totals.links > 0 {
            let model = self.model(tree, dest, 0, &Trees::new(), &mut Models::new())?;
            let mut bad = model.escaping_links();
            // Name a link whose own target escapes (`bin/python3 -> /usr/bin/python3`) rather
            // than one that only leads to it (`bin/python -> python3`).
            bad.sort_by_key(|(p, t, _)| !escapes_by_itself(p, t));
            let more = bad.len().saturating_sub(1);
            if let Some((p, t, why)) = bad.into_iter().next() {
                return Err(Error::Tree {
                    path: join_shown(dest, &p),
                    reason: format!(
                        "symlink target {:?} {}{} (refused; --allow-external-symlinks restores \
                         such links as they are)",
                        String::from_utf8_lossy(&t),
                        why.describe(),
                        match more {
                            0 => String::new(),
                            1 => ", and 1 more link".to_owned(),
                            n => format!(", and {n} more links"),
                        }
                    ),
                });
            }
        }
        let root = self.read_tree(tree)?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // Held until the temporary directory is renamed into place or removed (dropped
        // last): a signal's clean-up waits for it instead of moving the directory aside
        // while the restore's threads still fill it (crate::store::abandon::Busy).
        let Some(_busy) = crate::store::abandon::busy() else {
            return Err(Error::Interrupted);
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.cas-checkout."))
            .tempdir_in(parent)
            .map_err(Error::at("create temporary directory in", parent))?;
        // Removed by the process's clean-up if it stops on a signal (crate::store::abandon).
        let _reg = crate::store::abandon::register_temp(tmp.path());
        let dir = fs::open_dir_nofollow(tmp.path()).map_err(Error::at("open", tmp.path()))?;
        // Directories by one thread, files by a small pool, each verified (crate::tree::restore);
        // the temporary directory (mode 0700) becomes visible only once all of it is done.
        let dir = std::sync::Arc::new(dir);
        let progress = opts.progress.as_ref().map(|p| (p, totals.bytes));
        // On any error (a signal's included) `tmp` removes the directory as it drops.
        let attrs = crate::tree::restore::Attrs {
            ignore_umask: opts.ignore_umask,
            skip_mtimes: opts.skip_mtimes,
            umask: fs::umask(),
        };
        crate::tree::restore::restore(self, &root, &dir, dest, progress, attrs)?;
        let mode = 0o777 & !fs::umask();
        fs::set_dir_mode(&dir, mode).map_err(Error::at("set permissions of", tmp.path()))?;
        if crate::store::abandon::abandoned() {
            return Err(Error::Interrupted);
        }
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename_dir_noreplace(&tmp_path, dest) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(Error::io("rename restored tree to", dest, e));
        }
        Ok(())
    }
}

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
use crate::tree::format::{check_name, Tree, TreeEntryKind, MAX_DEPTH};
use crate::Store;

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

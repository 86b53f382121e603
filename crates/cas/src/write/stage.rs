//! The one write path (docs/format.md "The write path (put)"): every object, ref, cache entry, lock
//! and store file is first written to a private staging file in `tmp/`, made durable by one
//! barrier, and only then published under its final name.
//!
//! - [`Staging`] is a staging file, reached through the descriptor of `tmp/` (never by a path
//!   that a symlink could redirect) and removed when dropped unless it was published.
//! - [`Staged`] is a complete object: a staging file, the BLAKE3 of exactly the bytes in it,
//!   and its length. Every way of putting — bytes, a reader, a path, a [`Writer`](crate::Writer),
//!   a batch, a keyed put, a tree — ends in one.
//! - [`Store::publish`] is the only way an object becomes visible: the barrier the filesystem
//!   needs ([`Barrier`]), then a no-replace publish of each name, then (durability `full`) an
//!   `fsync` of each fan-out directory that gained a name.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::fs::{self, Published};
use crate::hash::Hash;
use crate::names::lock::Lock;
use crate::store::layout;
use crate::write::writer::NameHolds;
use crate::{Barrier, Durability, Store};

/// How many staged files are `fdatasync`ed at once in a batch. On a network or FUSE
/// filesystem each sync is a round trip to a server; overlapping them is what makes a batch
/// cheaper than single puts there.
const SYNC_THREADS: usize = 16;

/// A private staging file in the store's `tmp/`, named `HOST.PID.RANDOM`.
///
/// Created with `O_CREAT | O_EXCL | O_NOFOLLOW` relative to the descriptor of `tmp/`; dropped
/// without being published, it removes its own name (and nothing else).
pub(crate) struct Staging {
    file: File,
    dir: Arc<OwnedFd>,
    name: OsString,
    root: PathBuf,
    armed: bool,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Staging {
    /// Where the staging file is (for messages).
    pub(crate) fn path(&self) -> PathBuf {
        let mut p = self.root.join(layout::TMP);
        p.push(&self.name);
        p
    }

    /// The open staging file (read-write).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The open staging file, mutably.
    pub(crate) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Moves the staging file to `dst` without replacing anything there. On success the
    /// staging name is gone and this guard removes nothing.
    fn publish_noreplace(&mut self, store: &Store, dst: &Path) -> io::Result<Published> {
        let r = store.inner.root_dir.publish_from(
            self.dir.as_fd(),
            &self.name,
            dst,
            &store.inner.caps,
        )?;
        if r == Published::Created {
            self.armed = false;
        }
        Ok(r)
    }

    /// Moves the staging file to `name` in the directory `dir` without replacing anything.
    fn publish_into(
        &mut self,
        store: &Store,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::OsStr,
    ) -> io::Result<Published> {
        let r =
            fs::publish_noreplace_at(self.dir.as_fd(), &self.name, dir, name, &store.inner.caps)?;
        if r == Published::Created {
            self.armed = false;
        }
        Ok(r)
    }

    /// `fsync` of `tmp/` (the directory this staging file was created in): a rename out of it
    /// is a change to both directories, and only syncing both makes it durable everywhere.
    fn sync_dir(&self) -> io::Result<()> {
        rustix::fs::fsync(self.dir.as_fd()).map_err(Into::into)
    }

    /// True if the staging name still exists (`fstatat` in `tmp/`, not following).
    fn exists(&self) -> bool {
        fs::lstat_at(self.dir.as_fd(), &self.name).is_ok()
    }

    /// Renames the staging file over `dst` (replacing a file there).
    fn replace(&mut self, store: &Store, dst: &Path) -> io::Result<()> {
        store
            .inner
            .root_dir
            .rename_from(self.dir.as_fd(), &self.name, dst)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            fs::unlink_own(self.dir.as_fd(), &self.name);
        }
    }
}

/// A complete object in a staging file: the hash is of exactly the bytes in the file.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) staging: Staging,
    pub(crate) hash: Hash,
    pub(crate) len: u64,
}

/// What a no-replace publish of an object found (see [`Store::publish_object`]).
enum Found {
    /// Ours was published, or the name holds the object already.
    Done(Published),
    /// The name was taken, then freed: try again.
    Again,
    /// Something that is not the object holds the name: what it is.
    Squatter(String),
}

/// An object's file name inside its fan-out directory: the hash's hex after the first two.
pub(crate) fn fanout_name(hash: &Hash) -> String {
    hash.to_hex()[2..].to_owned()
}

/// Where the bytes of a put come from, for error messages: a read failure names the input,
/// not the staging file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Input<'a> {
    /// A file or device given by path.
    Path(&'a Path),
    /// A stream with no name (a `Read` handed to the library).
    Stream,
}

impl Input<'_> {
    pub(crate) fn error(self, source: io::Error) -> Error {
        Error::Input {
            input: match self {
                Input::Path(p) => p.display().to_string(),
                Input::Stream => "stream".to_owned(),
            },
            source,
        }
    }
}

impl Store {
    /// The descriptor of `tmp/`, opened once per handle (beneath the root, no symlinks) and
    /// opened again if the directory was removed and recreated.
    fn tmp_dir(&self, refresh: bool) -> Result<Arc<OwnedFd>> {
        let mut slot = self
            .inner
            .tmp_dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(fd), false) = (slot.as_ref(), refresh) {
            return Ok(Arc::clone(fd));
        }
        let tmp = self.path(layout::TMP);
        let fd = match self.inner.root_dir.open_dir(&tmp) {
            Ok(fd) => fd,
            Err(e) if fs::is_not_found(&e) => {
                self.ensure_dir(&tmp)?;
                self.inner
                    .root_dir
                    .open_dir(&tmp)
                    .map_err(Error::at("open", &tmp))?
            }
            Err(e) => return Err(Error::io("open", &tmp, e)),
        };
        let fd = Arc::new(fd);
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// A new staging file in `tmp/`, open for reading and writing, with the staging mode.
    pub(crate) fn new_staging(&self) -> Result<Staging> {
        self.new_staging_mode(self.staging_mode())
    }

    /// [`Store::new_staging`] created with `mode` (a file only its owner may ever open).
    fn new_staging_mode(&self, mode: u32) -> Result<Staging> {
        self.new_staging_as(mode, None)
    }

    /// A staging file with a random name, or with `fixed` (a lock holder's commit file, whose
    /// name others must be able to compute).
    fn new_staging_as(&self, mode: u32, fixed: Option<&str>) -> Result<Staging> {
        let mut dir = self.tmp_dir(false)?;
        let mut attempts = 0;
        loop {
            let name = if let Some(f) = fixed {
                f.to_owned()
            } else {
                let mut name = String::with_capacity(self.inner.staging_prefix.len() + 10);
                name.push_str(&self.inner.staging_prefix);
                name.extend(std::iter::repeat_with(fastrand::alphanumeric).take(10));
                name
            };
            match fs::create_excl_at(dir.as_fd(), name.as_ref(), mode) {
                Ok(fd) => {
                    let staging = Staging {
                        file: File::from(fd),
                        dir,
                        name: name.into(),
                        root: self.inner.root.clone(),
                        armed: true,
                    };
                    // Checked after creating: either an abandoning thread's scan of tmp/ sees
                    // this file, or we see its flag (crate::store::abandon); dropping removes it.
                    if crate::store::abandon::abandoned() {
                        return Err(Error::Interrupted);
                    }
                    return Ok(staging);
                }
                Err(Errno::EXIST) if attempts < 16 && fixed.is_none() => attempts += 1,
                // tmp/ was removed (by hand, or it never existed): find or make it again.
                Err(Errno::NOENT | Errno::STALE) if attempts < 4 => {
                    attempts += 1;
                    dir = self.tmp_dir(true)?;
                }
                Err(e) => {
                    return Err(Error::io(
                        "create staging file in",
                        self.path(layout::TMP),
                        e.into(),
                    ))
                }
            }
        }
    }

    /// Stages bytes whose hash is already known.
    pub(crate) fn stage_hashed(&self, bytes: &[u8], hash: Hash) -> Result<Staged> {
        let mut staging = self.new_staging()?;
        staging
            .file_mut()
            .write_all(bytes)
            .map_err(|e| Error::io("write staging file", staging.path(), e))?;
        Ok(Staged {
            staging,
            hash,
            len: bytes.len() as u64,
        })
    }

    /// Makes staged objects durable (per `durability` and the filesystem's [`Barrier`]) and
    /// publishes each under its hash without replacing anything. Returns how many names were
    /// created (the rest already existed: their mtime is refreshed and our copy dropped).
    ///
    /// On error, objects published before it stay (they are complete and synced); the
    /// remaining staging files are removed.
    pub(crate) fn publish(&self, staged: Vec<Staged>, durability: Durability) -> Result<usize> {
        if staged.is_empty() {
            return Ok(0);
        }
        // What comes after this directory first (a tier's upstream holds an object before
        // this store names it), then here.
        self.after_here().write_through(&staged)?;
        // Published without a data sync: marked, so that a later put at a stronger level
        // knows to sync it (docs/format.md "The write path (put)", "Re-puts").
        let mode = match durability {
            Durability::None => self.object_mode() | fs::UNSYNCED,
            _ => self.object_mode(),
        };
        for s in &staged {
            fs::set_mode(s.staging.file(), mode)
                .map_err(|e| Error::io("set permissions of", s.staging.path(), e))?;
        }
        if durability != Durability::None {
            self.barrier(&staged)?;
        }
        let mut created = 0;
        let mut dirs = BTreeSet::new();
        let mut new_fanout = false;
        for s in staged {
            let dst = layout::object_path(&self.inner.root, &s.hash);
            let (published, made_dir) =
                self.publish_object(s.staging, &s.hash, s.len, &dst, durability)?;
            new_fanout |= made_dir;
            if published == Published::Existed && durability == Durability::Full {
                // Found, not made: its name may date from a weaker put (docs/format.md "The write
                // path (put)", "Re-puts"); each directory is synced once below.
                dirs.insert(dst.parent().unwrap_or(&dst).to_owned());
            }
            if published == Published::Created {
                created += 1;
                if durability == Durability::Full {
                    dirs.insert(dst.parent().unwrap_or(&dst).to_owned());
                }
            }
        }
        if new_fanout && durability == Durability::Full {
            dirs.insert(self.path(layout::OBJECTS));
        }
        if created > 0 && durability == Durability::Full {
            // The names moved out of tmp/ (a rename changes both directories).
            dirs.insert(self.path(layout::TMP));
        }
        for dir in dirs {
            self.inner
                .root_dir
                .fsync_dir(&dir)
                .map_err(Error::at("fsync directory", &dir))?;
        }
        Ok(created)
    }

    /// The barrier before names are published: afterwards every staged byte is on stable
    /// storage. One `syncfs(2)` where it is known to flush this filesystem's files (local block
    /// filesystems) and more than one file waits; `fdatasync(2)` of each file otherwise,
    /// overlapped across threads.
    fn barrier(&self, staged: &[Staged]) -> Result<()> {
        if staged.len() > 1 && self.inner.caps.barrier == Barrier::Syncfs {
            let tmp = self.path(layout::TMP);
            return fs::syncfs(staged[0].staging.file()).map_err(Error::at("syncfs", &tmp));
        }
        let sync = |s: &Staged| {
            fs::sync_data(s.staging.file()).map_err(|e| Error::io("fdatasync", s.staging.path(), e))
        };
        if staged.len() == 1 {
            return sync(&staged[0]);
        }
        let next = AtomicUsize::new(0);
        let threads = staged.len().min(SYNC_THREADS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(s) = staged.get(i) else {
                                return Ok(());
                            };
                            if let Err(e) = sync(s) {
                                // Stop the others at their next file.
                                next.store(staged.len(), Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    })
                })
                .collect();
            let mut first = Ok(());
            for w in workers {
                let r = w.join().unwrap_or_else(|_| {
                    Err(Error::io(
                        "fdatasync",
                        self.path(layout::TMP),
                        io::Error::other("a sync thread panicked"),
                    ))
                });
                if first.is_ok() {
                    first = r;
                }
            }
            first
        })
    }

    /// The descriptor of the fan-out directory `objects/ab/` of `hash` (an `O_PATH` handle
    /// resolved beneath the root once per store handle), and the object's name in it.
    /// `refresh` drops a cached handle that turned out stale (the directory was removed and
    /// made again).
    pub(crate) fn fanout_dir(&self, hash: &Hash, refresh: bool) -> io::Result<Arc<OwnedFd>> {
        let i = usize::from(hash.as_bytes()[0]);
        let mut cache = self
            .inner
            .fanouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(fd), false) = (cache[i].as_ref(), refresh) {
            return Ok(Arc::clone(fd));
        }
        let dst = layout::object_path(&self.inner.root, hash);
        let fd = Arc::new(
            self.inner
                .root_dir
                .open_dir_path(dst.parent().unwrap_or(&dst))?,
        );
        cache[i] = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// Publishes one complete staging file at `dst` (an object name) without replacing;
    /// creates the fan-out directory on demand. Returns what happened and whether we created
    /// the fan-out directory.
    ///
    /// EEXIST means the object is there only if the name holds it ([`Store::name_holds`]):
    /// anything else at the name — garbage, a symlink, a FIFO, a file of the wrong size — is
    /// moved to `quarantine/` and ours is published in its place (docs/format.md "The write path
    /// (put)", "Squatters"). A put never reports an object its name does not hold.
    fn publish_object(
        &self,
        mut staging: Staging,
        hash: &Hash,
        len: u64,
        dst: &Path,
        durability: Durability,
    ) -> Result<(Published, bool)> {
        let name = fanout_name(hash);
        let mut made_dir = false;
        let mut refresh = false;
        let mut attempts = 0;
        let mut evicted = 0;
        loop {
            let r = self.fanout_dir(hash, refresh).and_then(|dir| {
                let r = staging.publish_into(self, dir.as_fd(), name.as_ref())?;
                if r == Published::Created {
                    return Ok(Found::Done(r));
                }
                Ok(
                    match self.name_holds(dir.as_fd(), name.as_ref(), hash, Some(len), false) {
                        // Same bytes are already there: refresh the age gc sees, drop ours.
                        NameHolds::Object { mode } => {
                            let _ = fs::touch_at(dir.as_fd(), name.as_ref());
                            // Its data brought up to our level (its directory: by `publish`).
                            let data = durability.min(Durability::File);
                            self.settle_existing(hash, dir.as_fd(), name.as_ref(), mode, data)?;
                            Found::Done(r)
                        }
                        // Gone meanwhile (gc): publish again.
                        NameHolds::Absent => Found::Again,
                        NameHolds::Squatter(what) => Found::Squatter(what),
                    },
                )
            });
            match r {
                Ok(Found::Done(p)) => return Ok((p, made_dir)),
                Ok(Found::Again | Found::Squatter(_)) if evicted >= 4 => {
                    return Err(Error::io(
                        "publish object",
                        dst,
                        io::Error::other("its name keeps being taken by something else"),
                    ));
                }
                Ok(Found::Again) => evicted += 1,
                Ok(Found::Squatter(what)) => {
                    evicted += 1;
                    self.quarantine(hash, dst).map_err(|e| {
                        Error::io(
                            "move to quarantine what holds the name of object",
                            dst,
                            io::Error::other(format!("it {what}, and: {e}")),
                        )
                    })?;
                }
                Err(e) if fs::is_not_found(&e) && attempts < 8 => {
                    // The fan-out directory does not exist (removed by hand; a store made
                    // before init created all 256), or our handle on it is stale.
                    attempts += 1;
                    refresh = true;
                    made_dir |= self.ensure_dir(dst.parent().unwrap_or(dst))?;
                }
                Err(e) => return Err(Error::io("publish object", dst, e)),
            }
        }
    }

    /// Writes a small file (ref, entry, lock, store file) to a staging file with `mode`,
    /// synced unless `durability` is `none`.
    pub(crate) fn stage_small(
        &self,
        bytes: &[u8],
        mode: u32,
        durability: Durability,
    ) -> Result<Staging> {
        self.stage_small_in(self.new_staging()?, bytes, mode, durability)
    }

    fn stage_small_in(
        &self,
        mut s: Staging,
        bytes: &[u8],
        mode: u32,
        durability: Durability,
    ) -> Result<Staging> {
        let r = s
            .file_mut()
            .write_all(bytes)
            .and_then(|()| fs::set_mode(s.file(), mode))
            .and_then(|()| {
                if durability == Durability::None {
                    Ok(())
                } else {
                    fs::sync_data(s.file())
                }
            });
        r.map_err(|e| Error::io("write staging file", s.path(), e))?;
        Ok(s)
    }

    /// Atomically replaces the small file `dst` with `bytes`: staged, synced per
    /// `durability`, renamed over `dst`; with `full` the directory is synced too. Readers see
    /// the old or the new content, never a torn or missing file. The file gets the permission
    /// bits `mode` (the stat cache is
    /// written 0600 even in a shared store: only its owner may trust it). The staging file is
    /// created with no more than `mode` allows (and at least owner read-write), so nobody who
    /// `mode` excludes can open it while it is written and keep writing after the rename.
    pub(crate) fn replace_small_with_mode(
        &self,
        dst: &Path,
        bytes: &[u8],
        mode: u32,
        durability: Durability,
    ) -> Result<()> {
        self.replace_small_inner(dst, bytes, mode, durability, None)
    }

    /// [`Store::replace_small_with_mode`] for a ref or cache entry under `lock`, fenced: the new content is staged under the
    /// lock holder's commit file name (`tmp/HOST.PID.fence-NONCE`), the lock is checked
    /// ([`Lock::check_for_commit`]) and only then is that file renamed over `dst`. Whoever
    /// breaks the lock removes the commit file before reading `dst` (`Store::disarm`), so
    /// the rename of a holder whose lock was broken fails with [`Error::LockLost`] — or it
    /// came first, and the breaker reads its result (docs/format.md, "Locks (leases)").
    pub(crate) fn replace_small_fenced(
        &self,
        dst: &Path,
        bytes: &[u8],
        durability: Durability,
        lock: &Lock,
    ) -> Result<()> {
        self.replace_small_inner(dst, bytes, self.file_mode(), durability, Some(lock))
    }

    fn replace_small_inner(
        &self,
        dst: &Path,
        bytes: &[u8],
        mode: u32,
        durability: Durability,
        fence: Option<&Lock>,
    ) -> Result<()> {
        let fence_name = fence.map(Lock::fence_name);
        let staging =
            self.new_staging_as((self.staging_mode() & mode) | 0o600, fence_name.as_deref())?;
        let mut staging = self.stage_small_in(staging, bytes, mode, durability)?;
        if let Some(lock) = fence {
            // After the commit file exists: a breaker either removes it, or broke the lock
            // after this check and reads what we rename.
            lock.check_for_commit()?;
            crate::names::lock::test_pause("before-commit");
        }
        let dir = dst.parent().unwrap_or(dst);
        let mut attempts = 0;
        loop {
            match staging.replace(self, dst) {
                Ok(()) => break,
                Err(e) if fs::is_not_found(&e) && fence.is_some() && !staging.exists() => {
                    // Our commit file was removed: the lock was broken and disarmed.
                    let lock = fence.map_or(dst, Lock::path);
                    return Err(Error::LockLost {
                        path: lock.to_owned(),
                    });
                }
                Err(e) if fs::is_not_found(&e) && attempts < 8 => {
                    attempts += 1;
                    self.ensure_dir(dir)?;
                }
                Err(e) => return Err(Error::io("replace", dst, e)),
            }
        }
        if durability == Durability::Full {
            // A rename changes both directories: tmp/ lost the name.
            staging
                .sync_dir()
                .map_err(|e| Error::io("fsync directory", self.path(layout::TMP), e))?;
            // The directory holds the new name, and every directory up to the store root
            // holds the next one's: any of them may have been created just now (a ref
            // `team/notes`, an entry's fan-out — perhaps by the lock step before us).
            let mut sync = Some(dir);
            while let Some(d) = sync {
                self.inner
                    .root_dir
                    .fsync_dir(d)
                    .map_err(Error::at("fsync directory", d))?;
                sync = d
                    .parent()
                    .filter(|p| p.starts_with(&self.inner.root) && *p != self.inner.root);
            }
        }
        Ok(())
    }

    /// Creates the 256 fan-out directories of `objects/` (at `init`), so that publishing an
    /// object never creates a directory whose own name would need another `fsync` to survive
    /// a power loss. gc never removes them.
    pub(crate) fn create_fanouts(&self) -> Result<()> {
        let objects = self.path(layout::OBJECTS);
        for b in 0..=255u8 {
            self.ensure_dir(&objects.join(format!("{b:02x}")))?;
        }
        Ok(())
    }

    /// Makes the store's own directory entries durable (at `init`): `objects/` (its fan-outs),
    /// the root (its directories, `config`, `FORMAT`) and the directory holding the root.
    pub(crate) fn sync_layout(&self) -> Result<()> {
        let root = &self.inner.root_dir;
        for dir in [self.path(layout::OBJECTS), self.inner.root.clone()] {
            root.fsync_dir(&dir)
                .map_err(Error::at("fsync directory", &dir))?;
        }
        if let Some(parent) = self
            .inner
            .root
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            // Read-only open of the directory that holds the store, to fsync the store's name.
            fs::fsync_dir_path(parent).map_err(Error::at("fsync directory", parent))?;
        }
        Ok(())
    }

    /// Removes the small file `dst` (a ref) under `lock`: it is moved aside into `tmp/`, and
    /// the removal stands only if the lock is still ours after the move; otherwise the file
    /// is put back (unless a newer one took its name) and the removal fails with
    /// [`Error::LockLost`]. A holder broken while stalled therefore never deletes what the
    /// next holder wrote. `Ok(false)` if `dst` did not exist.
    pub(crate) fn remove_small_fenced(&self, dst: &Path, lock: &Lock) -> Result<bool> {
        lock.check_for_commit()?;
        crate::names::lock::test_pause("before-commit");
        let aside = self.path(layout::TMP).join(lock.removed_name());
        let root = &self.inner.root_dir;
        match root.rename(dst, &aside) {
            Ok(()) => {}
            Err(e) if fs::is_not_found(&e) => return Ok(false),
            Err(e) => return Err(Error::io("remove", dst, e)),
        }
        if lock.verify().is_ok() {
            root.unlink(&aside)
                .map_err(Error::at("remove moved-aside file", &aside))?;
            return Ok(true);
        }
        let _ = root.publish_noreplace(&aside, dst, &self.inner.caps);
        let _ = root.unlink(&aside);
        Err(Error::LockLost {
            path: lock.path().to_owned(),
        })
    }

    /// Publishes a staged small file at `dst` without replacing (locks, `FORMAT`, `config`).
    /// `Existed` leaves the staging file in place for another try; the guard removes it.
    pub(crate) fn publish_small(&self, staging: &mut Staging, dst: &Path) -> io::Result<Published> {
        staging.publish_noreplace(self, dst)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Hash, Options, Store};

    /// The fan-out handle is cached: a directory removed and made again behind it (by hand,
    /// or a store from before init made all 256) must not lose a put.
    #[test]
    fn a_stale_fanout_handle_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), Options::default()).unwrap();
        let first = store.put_bytes(b"first").unwrap();
        let same_dir = (0u32..100_000)
            .map(|i| format!("second {i}").into_bytes())
            .find(|b| Hash::of(b).as_bytes()[0] == first.as_bytes()[0])
            .unwrap();
        let dir = store.object_path(&first).parent().unwrap().to_owned();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let h = store.put_bytes(&same_dir).unwrap();
        assert_eq!(&*store.get(&h).unwrap(), &same_dir[..]);
        // And the first object, gone with the directory, can be put again.
        assert!(!store.contains(&first));
        store.put_bytes(b"first").unwrap();
        assert!(store.contains(&first));
    }
}

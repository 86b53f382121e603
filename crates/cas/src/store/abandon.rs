//! What this process has in flight, so that it can be abandoned cleanly when the process is
//! told to stop (SIGINT, SIGTERM, SIGHUP): temporary output files and directories beside a
//! destination, a store being created, and the locks it holds. Staging files in a store's
//! `tmp/` need no registry: their names say `HOST.PID.`.
//!
//! Abandoning is one-way: once [`abandon_registered`] has run, creating a staging file or a
//! temporary output fails with [`crate::Error::Interrupted`], so nothing created after the
//! clean-up scan can be left behind. The check is made *after* creating (and the flag is set
//! *before* scanning), so either the scan sees the file or its creator sees the flag.
//!
//! Work that fills a registered temporary from other threads (a tree restore) holds a
//! [`Busy`] guard from before it creates the temporary until it has renamed it into place or
//! removed it. The clean-up sets the flag, then waits for every guard to be dropped (bounded,
//! [`BUSY_WAIT`]) before it touches any temporary: the workers see the flag, stop, and their
//! owner removes the temporary itself. Moving a directory aside while threads still create
//! files in it (through their directory descriptors) left partial trees behind, and made the
//! owner's final rename fail.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fs;
use crate::store::layout;

static ABANDONED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static REGISTRY: Mutex<Registry> = Mutex::new(Registry { items: None });
/// How many [`Busy`] guards are alive, and the condition their last drop signals.
static BUSY: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();
/// How long the clean-up waits for busy work to stop before removing its temporaries anyway
/// (a thread stuck in a system call on a hung network filesystem must not keep the process
/// from exiting).
const BUSY_WAIT: Duration = Duration::from_secs(10);

fn busy_count() -> MutexGuard<'static, usize> {
    BUSY.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held by work that fills a registered temporary from several threads; see the module
/// documentation.
#[derive(Debug)]
pub(crate) struct Busy(());

impl Drop for Busy {
    fn drop(&mut self) {
        let mut n = busy_count();
        *n = n.saturating_sub(1);
        if *n == 0 {
            IDLE.notify_all();
        }
    }
}

/// A [`Busy`] guard, or `None` if the process is abandoning its work (the caller stops with
/// [`crate::Error::Interrupted`]). The count is raised *before* the flag is read, and the
/// clean-up sets the flag *before* waiting for the count: either the clean-up waits for this
/// guard or its holder sees the flag.
pub(crate) fn busy() -> Option<Busy> {
    *busy_count() += 1;
    let guard = Busy(());
    if abandoned() {
        return None; // the guard drops here
    }
    Some(guard)
}

/// Waits until no [`Busy`] guard is alive, at most [`BUSY_WAIT`].
fn wait_until_idle() {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut n = busy_count();
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        n = IDLE
            .wait_timeout(n, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

struct Registry {
    items: Option<HashMap<u64, Item>>,
}

#[derive(Debug, Clone)]
enum Item {
    /// A temporary file or directory this process created and will rename or remove.
    Temp(PathBuf),
    /// A lock file held by this process: its path, its nonce, and the store root whose
    /// `locks/` directory receives it while checking it is still ours.
    Lock {
        path: PathBuf,
        nonce: String,
        root: PathBuf,
    },
}

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock poisons it; the map is still consistent.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True once this process has abandoned its work in flight.
pub(crate) fn abandoned() -> bool {
    ABANDONED.load(Ordering::SeqCst)
}

/// A registration; dropping it forgets the item (it was renamed into place, removed, or
/// released by its owner).
#[derive(Debug)]
pub(crate) struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(m) = registry().items.as_mut() {
            m.remove(&self.0);
        }
    }
}

fn register(item: Item) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry()
        .items
        .get_or_insert_with(HashMap::new)
        .insert(id, item);
    Registered(id)
}

/// Registers a temporary file or directory to remove if the process abandons its work.
pub(crate) fn register_temp(path: &Path) -> Registered {
    register(Item::Temp(path.to_owned()))
}

/// Registers a held lock (see [`abandon_registered`]).
pub(crate) fn register_lock(path: &Path, nonce: &str, root: &Path) -> Registered {
    register(Item::Lock {
        path: path.to_owned(),
        nonce: nonce.to_owned(),
        root: root.to_owned(),
    })
}

/// Marks the process as abandoning, waits for busy work to stop ([`Busy`]), then removes
/// every registered temporary and releases every registered lock that is still provably
/// ours. Returns how many items were removed.
/// The items are taken out of the registry, so a second call (a tier abandons its upstream's
/// staging too; push and pull abandon two stores) does not move a lock aside again — each
/// check moves the lock aside for a moment, which is a window for nobody else's benefit.
pub(crate) fn abandon_registered() -> u64 {
    ABANDONED.store(true, Ordering::SeqCst);
    wait_until_idle();
    let items: Vec<Item> = registry()
        .items
        .as_mut()
        .map(|m| m.drain().map(|(_, it)| it).collect())
        .unwrap_or_default();
    let mut n = 0;
    for it in items {
        match it {
            Item::Temp(p) => n += u64::from(remove_temp(&p)),
            Item::Lock { path, nonce, root } => {
                n += u64::from(release_if_ours(&path, &nonce, &root));
            }
        }
    }
    n
}

/// Removes a temporary file or directory by its temporary name. A directory (a checkout, a
/// store being created) is first renamed aside, atomically: if its owner renamed it into
/// place meanwhile, the name is gone and nothing is touched, whereas removing the tree under
/// the old name while it moves would leave a partial tree at the final name.
fn remove_temp(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let mut aside = p.as_os_str().to_owned();
            aside.push(".abandoned");
            let aside = PathBuf::from(aside);
            std::fs::rename(p, &aside).is_ok() && std::fs::remove_dir_all(&aside).is_ok()
        }
        Ok(_) => std::fs::remove_file(p).is_ok(),
        Err(_) => false,
    }
}

/// Removes the lock at `path` only if it still holds `nonce` (`lock::release_nonce_in`).
fn release_if_ours(path: &Path, nonce: &str, root_path: &Path) -> bool {
    // Everything inside the store is reached beneath its root, never through a symlink.
    let Ok(root) = fs::Root::open(root_path) else {
        return false;
    };
    crate::names::lock::release_nonce_in(&root, root_path, path, nonce)
}

/// Removes this process's staging files (`HOST.PID.*`, regular files only) from `tmp`,
/// reached beneath the store's `root`.
pub(crate) fn remove_own_staging(root: &fs::Root, tmp: &Path, prefix: &str) -> u64 {
    let Ok(entries) = root.read_dir(tmp) else {
        return 0;
    };
    let mut n = 0;
    for (name, kind) in entries {
        if kind == fs::Kind::File && fs::name_bytes(&name).starts_with(prefix.as_bytes()) {
            n += u64::from(root.unlink(&tmp.join(&name)).is_ok());
        }
    }
    n
}

/// Abandons this process's work in flight outside any store: removes the temporary output
/// files and directories it was writing ([`crate::Store::get_to_path`], checkouts, a store
/// being created) and releases the locks it holds, if they are still provably its own. From
/// then on, every write in this process fails with [`crate::Error::Interrupted`].
///
/// For a program that stops on a signal and has no [`crate::Store`] handle at hand;
/// [`crate::Store::abandon_own_staging`] does this and also clears the store's `tmp/`.
/// Call it from a normal thread (not inside a signal handler), then exit. A tree restore in
/// flight ([`crate::Store::checkout_with`]) is stopped first and removes its own temporary
/// directory: this waits for that, at most 10 s (so never call it from a restore's progress
/// callback). Returns how many files, directories and locks it removed.
pub fn abandon_temporaries() -> u64 {
    abandon_registered()
}

impl crate::Store {
    /// Abandons everything this process has in flight, for a program about to exit on a
    /// signal: marks the process as abandoning (every later write fails with
    /// [`crate::Error::Interrupted`], so nothing created after the clean-up survives it), then
    /// removes this process's staging files from the store's `tmp/` (named `HOST.PID.*`),
    /// removes the temporary outputs it was writing, and releases the locks it holds — only
    /// those whose recorded nonce is still its own; another process's lock is never removed.
    ///
    /// Nothing partial becomes visible: staging files and temporary outputs only ever reach
    /// their final names complete and verified. Call it from a normal thread (with
    /// `signal-hook`'s iterator, or `ctrlc`), never from inside an async-signal handler, then
    /// exit the process: it is one-way. Returns how many files and locks it removed.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let mut w = store.writer()?;            // a staging file in tmp/
    /// std::io::Write::write_all(&mut w, b"half of it").unwrap();
    /// store.abandon_own_staging();            // as a signal-handling thread would
    /// assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    /// assert!(store.put_bytes(b"more").unwrap_err().to_string().contains("interrupted"));
    /// # drop(w); Ok(()) }
    /// ```
    pub fn abandon_own_staging(&self) -> u64 {
        let n = abandon_registered();
        // A tier's write-through stages in its upstream too (crate::sync::upstream).
        let upstream = self
            .upstream()
            .map_or(0, crate::Upstream::abandon_own_staging);
        n + upstream
            + remove_own_staging(
                &self.inner.root_dir,
                &self.path(layout::TMP),
                &self.inner.staging_prefix,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `abandon_registered` is one-way for the whole process, so unit tests (which share one)
    // exercise its parts; the doc test of `Store::abandon_own_staging` and the end-to-end
    // signal tests run it for real.

    #[test]
    fn only_our_own_lock_is_released() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::Store::init(d.path(), crate::Options::default()).unwrap();
        let path = d.path().join("locks").join("x.lock");
        let lock = store
            .acquire_lock(
                &path,
                None,
                crate::names::lock::Wait::For(std::time::Duration::ZERO),
            )
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ours = crate::names::lock::Holder::parse(&text).unwrap().nonce;
        // Someone else's nonce: never removed, and put back exactly as it was.
        assert!(!release_if_ours(&path, "someone-else", d.path()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert!(release_if_ours(&path, &ours, d.path()));
        assert!(!path.exists());
        // Nothing left aside in locks/.
        assert_eq!(
            std::fs::read_dir(d.path().join("locks")).unwrap().count(),
            0
        );
        drop(lock);
    }

    #[test]
    fn temporaries_are_removed_by_their_own_name_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(".x.cas-checkout.abc");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("f"), "x").unwrap();
        assert!(remove_temp(&dir));
        let file = d.path().join(".out.abc.tmp");
        std::fs::write(&file, "x").unwrap();
        assert!(remove_temp(&file));
        // Already renamed into place by its owner: nothing to remove.
        assert!(!remove_temp(&file));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn own_staging_files_only() {
        let d = tempfile::tempdir().unwrap();
        for n in ["h.1.aaa", "h.1.bbb", "h.12.ccc", "other.1.ddd"] {
            std::fs::write(d.path().join(n), "x").unwrap();
        }
        let root = fs::Root::open(d.path()).unwrap();
        assert_eq!(remove_own_staging(&root, d.path(), "h.1."), 2);
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["h.12.ccc", "other.1.ddd"]);
    }
}

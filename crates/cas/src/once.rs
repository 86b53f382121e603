//! Compute once, across threads, processes and hosts: the first caller that misses a key
//! computes its value under a lease lock while every other caller waits, then all get the
//! same object (docs/format.md §Compute once).
//!
//! The lock is `index/ab/<62 hex>.compute.lock` beside the key's entry, a lease like every
//! lock in the store: its holder refreshes it from a heartbeat thread while the producer
//! runs; a holder that dies is taken over at once on the same host (its pid is gone) and
//! after the lease on another host. The entry itself is written with
//! [`Expect::Absent`](crate::Expect::Absent), so even a holder whose lease was broken while it
//! computed (a stalled host) can never replace a value someone else already published: the
//! first complete value wins, and the lock only saves the duplicate work.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::index::display_key;
use crate::lock::{Lock, Wait};
use crate::read::Object;
use crate::{Expect, Store, Writer};

/// The error a producer returns: anything that can be boxed.
pub type ProducerError = Box<dyn std::error::Error + Send + Sync>;

/// A compute-once request for one key (see [`Store::compute_once`]).
#[derive(Debug, Clone)]
#[must_use = "nothing happens until a producer is given (bytes, with_writer or dir)"]
pub struct ComputeOnce<'a> {
    store: &'a Store,
    key: &'a [u8],
    metadata: &'a [u8],
    timeout: Duration,
}

impl Store {
    /// Starts a compute-once request for `key`: give it a producer with
    /// [`ComputeOnce::bytes`], [`ComputeOnce::with_writer`] or [`ComputeOnce::dir`].
    ///
    /// Of all the threads, processes and hosts asking for the same missing key at once,
    /// exactly one runs its producer; the others wait (up to the timeout, 1 hour by default)
    /// and then return the same object. A producer that fails or panics publishes nothing;
    /// the next waiter computes. A computing process that dies is taken over (at once on the
    /// same host, after the lock timeout on another).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let obj = store
    ///     .compute_once(b"report:2026-12")
    ///     .bytes(|| Ok(b"expensive result".to_vec()))?;
    /// assert_eq!(&*obj, b"expensive result");
    /// // A second call finds it: the producer is not called.
    /// let again = store.compute_once(b"report:2026-12").bytes(|| unreachable!())?;
    /// assert_eq!(&*again, b"expensive result");
    /// # Ok(()) }
    /// ```
    pub fn compute_once<'a>(&'a self, key: &'a [u8]) -> ComputeOnce<'a> {
        ComputeOnce {
            store: self,
            key,
            metadata: b"",
            timeout: Duration::from_hours(1),
        }
    }

    /// The value of `key`, computed by `produce` (writing into a [`Writer`]) in exactly one of
    /// all concurrent callers if it is missing. Shorthand for
    /// [`compute_once(key)`](Store::compute_once)`.with_writer(produce)`.
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`].
    pub fn get_or_insert_with<F>(&self, key: &[u8], produce: F) -> Result<Object>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        self.compute_once(key).with_writer(produce)
    }

    fn compute_lock_path(&self, key: &[u8]) -> PathBuf {
        let mut p = self.entry_path(key).into_os_string();
        p.push(".compute");
        p.push(crate::layout::LOCK_SUFFIX);
        p.into()
    }
}

impl<'a> ComputeOnce<'a> {
    /// Metadata stored with the entry when this caller computes it.
    pub fn metadata(mut self, metadata: &'a [u8]) -> Self {
        self.metadata = metadata;
        self
    }

    /// How long to wait for another caller's computation (default: 1 hour).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Computes the value as bytes in memory if the key is missing.
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`].
    pub fn bytes<F>(self, produce: F) -> Result<Object>
    where
        F: FnOnce() -> std::result::Result<Vec<u8>, ProducerError>,
    {
        self.with_writer(|w| {
            let bytes = produce()?;
            w.write_all(&bytes)?;
            Ok(())
        })
    }

    /// Computes the value by writing it into a [`Writer`] (streamed into the store, never
    /// held whole in memory) if the key is missing; returns the verified object.
    ///
    /// # Errors
    /// [`Error::Producer`] if this caller's producer failed or panicked (nothing stored);
    /// [`Error::Locked`] if another caller's computation outlasted the timeout; store errors.
    pub fn with_writer<F>(self, produce: F) -> Result<Object>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        let hash = self.hash_with_writer(produce)?;
        store.get(&hash)
    }

    /// As [`ComputeOnce::with_writer`], but returns only the hash the key maps to (nothing
    /// is read back: stream it with [`Store::get_to_writer`] or [`Store::reader`]).
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`].
    pub fn hash_with_writer<F>(self, produce: F) -> Result<Hash>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        let found = self.run(|| {
            let mut w = store.writer()?;
            produce(&mut w).map_err(|source| self.producer_error(source))?;
            w.commit()
        })?;
        match found {
            Found::Entry => Ok(store.entry(self.key)?.hash),
            Found::Computed(h) => Ok(h),
        }
    }

    /// Computes a directory (a tree) if the key is missing: `produce` fills a fresh empty
    /// directory, which is stored as a tree. Returns the tree's hash (restore it with
    /// [`Store::checkout`]).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path().join("store"), cas::Options::default())?;
    /// // The format version is part of the key: a new layout is a new entry.
    /// let tree = store.compute_once(b"dataset:v3").dir(|out| {
    ///     std::fs::write(out.join("index.bin"), b"...")?;
    ///     Ok(())
    /// })?;
    /// store.checkout(&tree, dir.path().join("work"))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`]; [`Error::Io`] if the scratch directory cannot be made.
    pub fn dir<F>(self, produce: F) -> Result<Hash>
    where
        F: FnOnce(&Path) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        let found = self.run(|| {
            // The producer's scratch directory: the user's output, not staging, so the system
            // temporary directory is fine (put_dir copies it into the store).
            let scratch = tempfile::Builder::new()
                .prefix("cas-compute-")
                .tempdir()
                .map_err(|e| Error::io("create a scratch directory in", std::env::temp_dir(), e))?;
            produce(scratch.path()).map_err(|source| self.producer_error(source))?;
            store.put_dir(scratch.path())
        })?;
        match found {
            Found::Entry => Ok(store.entry(self.key)?.hash),
            Found::Computed(h) => Ok(h),
        }
    }

    fn producer_error(&self, source: ProducerError) -> Error {
        Error::Producer {
            key: display_key(self.key),
            source,
        }
    }

    /// The protocol: look; else take the compute lock (waiting while a live holder computes);
    /// look again; else compute under a heartbeat and publish with `Expect::Absent`.
    fn run(&self, compute: impl FnOnce() -> Result<Hash>) -> Result<Found> {
        let store = self.store;
        if self.lookup()? {
            return Ok(Found::Entry);
        }
        let lock_path = store.compute_lock_path(self.key);
        let lock = store.acquire_lock(&lock_path, None, Wait::For(self.timeout))?;
        // Whoever held the lock before us may have finished the work.
        if self.lookup()? {
            return Ok(Found::Entry);
        }
        let hash = with_heartbeat(&lock, store.options().lock_timeout, || {
            // A panic in the producer unwinds through here: the writer's staging file and the
            // lock are dropped (removed), so the next waiter computes.
            compute()
        })?;
        match store.set_keyed(self.key, hash, self.metadata, Expect::Absent) {
            Ok(_) => {}
            // Someone else's value was published first (our lease was broken while we
            // computed): theirs wins, ours becomes garbage for gc.
            Err(e) if e.is_already_exists() => {
                lock.release();
                return Ok(Found::Entry);
            }
            Err(e) => return Err(e),
        }
        lock.release();
        Ok(Found::Computed(hash))
    }

    /// True if the key has a usable entry. A damaged entry is a miss: it is recomputed and
    /// replaced (`set_keyed` treats an undecodable entry as absent).
    fn lookup(&self) -> Result<bool> {
        match self.store.entry(self.key) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() || e.is_malformed() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

enum Found {
    /// The entry exists (computed by someone, maybe us earlier).
    Entry,
    /// We computed and published this.
    Computed(Hash),
}

/// Runs `f` while a thread renews `lock`'s lease every third of `lease`.
fn with_heartbeat<T>(lock: &Lock, lease: Duration, f: impl FnOnce() -> T) -> T {
    let (stop, stopped) = mpsc::channel::<()>();
    let beat = (lease / 3).max(Duration::from_millis(50));
    std::thread::scope(|s| {
        s.spawn(move || {
            // Ends when `stop` is dropped — also while a panic unwinds out of `f`.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(beat) {
                let _ = lock.refresh();
            }
        });
        let _stop = stop;
        f()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use crate::{Options, Store};

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path().join("s"), Options::default()).unwrap();
        (d, s)
    }

    #[test]
    fn eight_threads_compute_once_and_all_get_the_value() {
        let (_d, store) = store();
        let calls = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, calls, start) = (store.clone(), calls.clone(), start.clone());
                let entered = entered.clone();
                std::thread::spawn(move || {
                    start.wait();
                    entered.fetch_add(1, Ordering::SeqCst);
                    store
                        .compute_once(b"k")
                        .bytes(|| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Hold the computation until every thread has asked (the entry
                            // cannot exist before this returns, so each of them either waits
                            // on the lock or, were it broken, calls this producer too).
                            while entered.load(Ordering::SeqCst) < 8 {
                                std::thread::yield_now();
                            }
                            for _ in 0..10_000 {
                                std::thread::yield_now();
                            }
                            Ok(b"value".to_vec())
                        })
                        .unwrap()
                        .into_vec()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), b"value");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(&*store.get_keyed(b"k").unwrap(), b"value");
    }

    #[test]
    fn a_failing_or_panicking_producer_stores_nothing_and_the_next_caller_computes() {
        let (_d, store) = store();
        let e = store
            .compute_once(b"k")
            .bytes(|| Err("no network".into()))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Producer, "{e}");
        assert!(std::error::Error::source(&e)
            .unwrap()
            .to_string()
            .contains("no network"));
        assert!(store.entry(b"k").unwrap_err().is_not_found());

        let s2 = store.clone();
        let panicked = std::thread::spawn(move || {
            s2.compute_once(b"k").bytes(|| panic!("producer bug")).ok();
        })
        .join();
        assert!(panicked.is_err());
        assert!(store.entry(b"k").unwrap_err().is_not_found());
        let tmp = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
        assert_eq!(tmp, 0, "a staging file survived the panic");

        let obj = store
            .compute_once(b"k")
            .bytes(|| Ok(b"ok".to_vec()))
            .unwrap();
        assert_eq!(&*obj, b"ok");
    }

    #[test]
    fn a_damaged_entry_is_a_miss_and_is_replaced() {
        let (_d, store) = store();
        store.put_keyed_bytes(b"k", b"old", b"").unwrap();
        let p = store.entry_path(b"k");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"garbage").unwrap();
        assert!(store.get_keyed(b"k").unwrap_err().is_malformed());
        let obj = store
            .compute_once(b"k")
            .bytes(|| Ok(b"new".to_vec()))
            .unwrap();
        assert_eq!(&*obj, b"new");
        assert_eq!(&*store.get_keyed(b"k").unwrap(), b"new");
    }

    #[test]
    fn a_directory_is_computed_once_as_a_tree() {
        let (d, store) = store();
        let tree = store
            .compute_once(b"t")
            .dir(|out| {
                std::fs::create_dir(out.join("sub"))?;
                std::fs::write(out.join("sub/f"), b"x")?;
                Ok(())
            })
            .unwrap();
        let again = store.compute_once(b"t").dir(|_| unreachable!()).unwrap();
        assert_eq!(tree, again);
        store.checkout(&tree, d.path().join("o")).unwrap();
        assert_eq!(std::fs::read(d.path().join("o/sub/f")).unwrap(), b"x");
    }
}

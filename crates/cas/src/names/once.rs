//! Compute once, across threads, processes and hosts: the first caller that misses a key
//! computes its value under a lease lock while every other caller waits, then all get the
//! same object (docs/format.md, "Compute once").
//!
//! The lock is `index/ab/<62 hex>.compute.lock` beside the key's entry, a lease like every
//! lock in the store: its holder refreshes it from a heartbeat thread while the producer
//! runs; a holder that dies is taken over at once on the same host (its pid is gone) and
//! after the lease on another host. The entry itself is written with
//! [`Expect::Absent`](crate::Expect::Absent) (or, replacing a damaged entry, with
//! [`Expect::Value`](crate::Expect::Value) of the damaged value), so even a holder whose lease
//! was broken while it computed (a stalled host) can never replace a value someone else
//! already published: the first complete value wins, and the lock only saves the duplicate
//! work.
//!
//! Caches heal: resolving a key checks what the entry leads to (the object verified, a
//! tree's whole closure verified) and treats a damaged or missing value as a miss. The damage
//! is quarantined where it is an object, told to the caller ([`OnceEvent::Damaged`],
//! [`Resolved::damaged`]) and computed again under the same lock.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::names::entries::display_key;
use crate::names::lock::{Lock, Wait};
use crate::read::get::Object;
use crate::tree::format::TreeEntryKind;
use crate::{Expect, Store, Writer};

/// The error a producer returns: anything that can be boxed.
pub type ProducerError = Box<dyn std::error::Error + Send + Sync>;

/// The callback of [`ComputeOnce::on_event`].
pub type OnceEventFn<'a> = &'a (dyn Fn(OnceEvent<'_>) + Sync);

/// How often a waiting caller looks at who holds the compute lock and tells its
/// [`OnceEvent::Waiting`] callback (the lock itself is polled far more often).
const WAIT_REPORT: Duration = Duration::from_secs(1);

/// How many times a caller goes round look → lock → look → compute → publish before giving
/// up: more than one only if a value published by someone else is itself found damaged.
const ROUNDS: u32 = 3;

/// A compute-once request for one key (see [`Store::compute_once`]).
#[derive(Clone)]
#[must_use = "nothing happens until a producer is given (bytes, with_writer, dir or a resolve_*)"]
pub struct ComputeOnce<'a> {
    store: &'a Store,
    key: &'a [u8],
    metadata: &'a [u8],
    timeout: Duration,
    on_event: Option<OnceEventFn<'a>>,
}

impl std::fmt::Debug for ComputeOnce<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputeOnce")
            .field("store", &self.store.root())
            .field("key", &display_key(self.key))
            .field("timeout", &self.timeout)
            .field("on_event", &self.on_event.is_some())
            .finish_non_exhaustive()
    }
}

/// Something a compute-once request meets on its way, told as it happens to the callback
/// given with [`ComputeOnce::on_event`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum OnceEvent<'e> {
    /// The key's entry, or what it leads to, is damaged or missing: a miss. The value is
    /// computed again (by this caller, or by another that this one then waits for). Told once
    /// per damage found.
    Damaged(&'e Damage),
    /// Another caller is computing the key and this one waits: told when the wait starts and
    /// about once a second while it lasts.
    Waiting(&'e Waiting),
    /// This caller computes, and renewing its compute lock's lease failed (the error names
    /// the lock file): once the lease runs out another caller may take the lock and compute
    /// too. Told from the heartbeat thread as it happens, once per computation (the heartbeat
    /// keeps trying). The computation goes on and its value is still published with
    /// [`Expect::Absent`](crate::Expect::Absent) semantics: if another caller published
    /// first, theirs wins and is returned, as after any broken lease.
    LeaseNotRenewed(&'e Error),
}

/// A damaged cache entry found while resolving a key for computing (see
/// [`OnceEvent::Damaged`]). Its `Display` is one line naming the key, the object or file and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The key, shown as text (UTF-8 quoted, else hex; truncated).
    pub key: String,
    /// The entry file.
    pub entry: PathBuf,
    /// The value the entry held; `None` if the entry itself could not be read.
    pub hash: Option<Hash>,
    /// The object found damaged or missing (the entry's value, or an object of its tree), if
    /// the damage is an object's.
    pub object: Option<Hash>,
    /// Where the damaged object was moved (`quarantine/…`), if it was.
    pub quarantined: Option<PathBuf>,
    /// What is wrong, naming the object or file.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cache entry {} is damaged, treated as a miss and computed again: {}",
            self.key, self.reason
        )
    }
}

/// A caller waiting for another's computation of the same key (see [`OnceEvent::Waiting`]).
/// Its `Display` is one line: "waiting for KEY: computed by host H pid P for 12 s (timeout
/// 1 h)".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiting {
    /// The key, shown as text.
    pub key: String,
    /// The computing holder's host, if its lock could be read.
    pub host: Option<String>,
    /// The computing holder's process id, if its lock could be read.
    pub pid: Option<u32>,
    /// How long the holder has held the compute lock, if its lock could be read.
    pub computing_for: Option<Duration>,
    /// How long this caller has waited so far.
    pub waited: Duration,
    /// How long this caller waits at most ([`ComputeOnce::timeout`]).
    pub timeout: Duration,
}

impl Waiting {
    /// Who computes, in words: "host H pid P for 12 s", or "an unknown holder".
    fn holder(&self) -> String {
        match (&self.host, self.pid) {
            (Some(h), Some(p)) => {
                let mut s = format!("host {h} pid {p}");
                if let Some(d) = self.computing_for {
                    s.push_str(" for ");
                    s.push_str(&human_duration(d));
                }
                s
            }
            _ => "an unknown holder (its lock is being written or is damaged)".to_owned(),
        }
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waiting for {}: computed by {} (timeout {})",
            self.key,
            self.holder(),
            human_duration(self.timeout)
        )
    }
}

/// What resolving a key came to: its value, and how (see [`ComputeOnce::resolve_writer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// The object the key maps to (verified; for a tree, its whole closure verified).
    pub hash: Hash,
    /// True if this caller ran the producer and published the value.
    pub computed: bool,
    /// How long this caller waited for another's computation (zero if it did not).
    pub waited: Duration,
    /// Damage found on the way (each also told to [`OnceEvent::Damaged`]), healed.
    pub damaged: Vec<Damage>,
}

/// A duration in the units a person reads: "850 ms", "12 s", "3 min 5 s", "1 h", "2 d 3 h".
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let two = |a: u64, ua: &str, b: u64, ub: &str| {
        if b == 0 {
            format!("{a} {ua}")
        } else {
            format!("{a} {ua} {b} {ub}")
        }
    };
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..60 => format!("{s} s"),
        60..3600 => two(s / 60, "min", s % 60, "s"),
        3600..86400 => two(s / 3600, "h", s % 3600 / 60, "min"),
        _ => two(s / 86400, "d", s % 86400 / 3600, "h"),
    }
}

impl Store {
    /// Starts a compute-once request for `key`: give it a producer with
    /// [`ComputeOnce::bytes`], [`ComputeOnce::with_writer`], [`ComputeOnce::dir`] or one of
    /// the `resolve_*` forms, which also say how the key was resolved.
    ///
    /// Of all the threads, processes and hosts asking for the same missing key at once,
    /// exactly one runs its producer; the others wait (up to the timeout, 1 hour by default)
    /// and then return the same object. A producer that fails or panics publishes nothing;
    /// the next waiter computes. A computing process that dies is taken over (at once on the
    /// same host, after the lock timeout on another).
    ///
    /// A damaged entry is a miss: an entry file that cannot be decoded, an object that is
    /// missing or does not hash to its name, or (for [`ComputeOnce::dir`]) any object of the
    /// tree's closure that is. Corrupt objects are quarantined, the damage is told to the
    /// [`ComputeOnce::on_event`] callback, and the value is computed again under the same
    /// protocol, replacing the damaged entry.
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
            on_event: None,
        }
    }

    /// The value of `key`, computed by `produce` (writing into a [`Writer`]) in exactly one of
    /// all concurrent callers if it is missing or damaged. Shorthand for
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
        p.push(crate::store::layout::LOCK_SUFFIX);
        p.into()
    }

    /// Verifies an object without keeping its bytes (streamed through the hasher, memory
    /// bounded); a corrupt object is quarantined.
    fn verify_object(&self, hash: &Hash) -> Result<()> {
        self.get_to_writer(hash, &mut std::io::sink()).map(|_| ())
    }

    /// Verifies a tree and everything it reaches: every tree object decodes, every object is
    /// present and hashes to its name (corrupt ones are quarantined). Stops at the first
    /// damage, and says where in the tree it was met.
    ///
    /// Kept apart from gc's traversal on purpose: that one must never move or quarantine
    /// anything and never stops at the first problem; this one reads every byte.
    fn verify_closure(&self, root: &Hash) -> std::result::Result<(), Bad> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut seen = HashSet::new();
        let mut stack = vec![(*root, PathBuf::new())];
        while let Some((tree, at)) = stack.pop() {
            if !seen.insert(tree) {
                continue;
            }
            let t = self.read_tree(&tree).map_err(|e| Bad::at(e, root, &at))?;
            for e in t.entries {
                let p = at.join(std::ffi::OsStr::from_bytes(&e.name));
                match e.kind {
                    TreeEntryKind::Dir { hash } => stack.push((hash, p)),
                    TreeEntryKind::File { hash, .. } => {
                        if seen.insert(hash) {
                            self.verify_object(&hash)
                                .map_err(|e| Bad::at(e, root, &p))?;
                        }
                    }
                    TreeEntryKind::Symlink { .. } => {}
                }
            }
        }
        Ok(())
    }
}

/// Why a value failed its check: the error, and where inside a tree it was met.
struct Bad {
    error: Box<Error>,
    /// `(tree, path inside it)`, for an object met inside a tree below its root.
    at: Option<Box<(Hash, PathBuf)>>,
}

impl From<Error> for Bad {
    fn from(error: Error) -> Self {
        Bad {
            error: Box::new(error),
            at: None,
        }
    }
}

impl Bad {
    fn at(error: Error, root: &Hash, at: &Path) -> Self {
        let at = (!at.as_os_str().is_empty()).then(|| Box::new((*root, at.to_owned())));
        Bad {
            error: Box::new(error),
            at,
        }
    }
}

/// Damage, as opposed to a failure to look: what a rebuild replaces.
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::NotFound { .. } | Error::Corrupt { .. } | Error::Malformed { .. }
    )
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

    /// Tells `on_event` what happens as it happens: damage found ([`OnceEvent::Damaged`]),
    /// and while another caller computes, who and for how long ([`OnceEvent::Waiting`]).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let log = |ev: cas::OnceEvent<'_>| match ev {
    ///     cas::OnceEvent::Damaged(d) => eprintln!("{d}"),
    ///     cas::OnceEvent::Waiting(w) => eprintln!("{w}"),
    ///     _ => {}
    /// };
    /// let obj = store.compute_once(b"k").on_event(&log).bytes(|| Ok(b"v".to_vec()))?;
    /// assert_eq!(&*obj, b"v");
    /// # Ok(()) }
    /// ```
    pub fn on_event(mut self, on_event: OnceEventFn<'a>) -> Self {
        self.on_event = Some(on_event);
        self
    }

    /// Computes the value as bytes in memory if the key is missing or damaged.
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
    /// held whole in memory) if the key is missing or damaged; returns the verified object.
    ///
    /// # Errors
    /// [`Error::Producer`] if this caller's producer failed or panicked (nothing stored);
    /// [`Error::Io`] naming the staging file if the store failed while the producer wrote
    /// into it (whatever the producer then returned); [`Error::Locked`] if another caller's
    /// computation outlasted the timeout; store errors.
    pub fn with_writer<F>(self, produce: F) -> Result<Object>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        let (r, obj) = self.run(
            |h| store.get(h).map_err(Bad::from),
            || self.compute_writer(produce),
        )?;
        match obj {
            Some(obj) => Ok(obj),
            None => store.get(&r.hash),
        }
    }

    /// As [`ComputeOnce::with_writer`], but returns only the hash the key maps to (the object
    /// is verified but not kept: stream it with [`Store::get_to_writer`] or
    /// [`Store::reader`]).
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`].
    pub fn hash_with_writer<F>(self, produce: F) -> Result<Hash>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        self.resolve_writer(produce).map(|r| r.hash)
    }

    /// As [`ComputeOnce::hash_with_writer`], and says how the key was resolved: whether this
    /// caller computed it, how long it waited, what damage it healed.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let r = store.compute_once(b"k").resolve_writer(|w| Ok(w.write_all(b"v")?))?;
    /// assert!(r.computed);
    /// let r = store.compute_once(b"k").resolve_writer(|_| unreachable!())?;
    /// assert!(!r.computed);
    /// # use std::io::Write;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`].
    pub fn resolve_writer<F>(self, produce: F) -> Result<Resolved>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        self.run(
            |h| store.verify_object(h).map_err(Bad::from),
            || self.compute_writer(produce),
        )
        .map(|(r, _)| r)
    }

    /// As [`ComputeOnce::resolve_writer`], for a producer that may instead write the value to
    /// a file: it is given a [`Writer`] and the path of an empty file in the store's `tmp/`
    /// (on the store's filesystem, removed afterwards). If the producer leaves that file
    /// non-empty, its bytes are the value and whatever went into the writer is dropped;
    /// otherwise the writer's bytes are the value (so an empty value is an empty value,
    /// whichever way it was written). This is `cas key ensure`'s `$CAS_OUT`.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let r = store.compute_once(b"dl").resolve_output(|_w, out| {
    ///     std::fs::write(out, b"downloaded")?; // as `curl -o "$CAS_OUT" URL` would
    ///     Ok(())
    /// })?;
    /// assert_eq!(&*store.get(&r.hash)?, b"downloaded");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ComputeOnce::with_writer`]; [`Error::Producer`] if the producer left something
    /// other than a regular file at the path.
    pub fn resolve_output<F>(self, produce: F) -> Result<Resolved>
    where
        F: FnOnce(&mut Writer, &Path) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        self.run(
            |h| store.verify_object(h).map_err(Bad::from),
            || {
                let mut w = store.writer()?;
                // A staging file: gc knows it as this process's, and it is removed on drop.
                let out = store.new_staging()?;
                let out_path = out.path();
                produce(&mut w, &out_path).map_err(|e| self.producer_failure(&w, e))?;
                let meta = std::fs::symlink_metadata(&out_path);
                match meta {
                    Ok(m) if m.is_file() && m.len() > 0 => store.put_path(&out_path),
                    Ok(m) if m.is_file() => w.commit(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => w.commit(),
                    Ok(m) => {
                        // Ours to clean (the staging guard only unlinks a file): never followed.
                        if m.is_dir() {
                            let _ = std::fs::remove_dir_all(&out_path);
                        }
                        Err(self.producer_error(
                            format!(
                                "{} is not a regular file: the output file must be a file",
                                out_path.display()
                            )
                            .into(),
                        ))
                    }
                    Err(e) => Err(Error::io("stat", &out_path, e)),
                }
            },
        )
        .map(|(r, _)| r)
    }

    /// Computes a directory (a tree) if the key is missing or damaged (any object of the
    /// tree missing or corrupt): `produce` fills a fresh empty directory, which is stored as
    /// a tree. Returns the tree's hash (restore it with [`Store::checkout`]).
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
        self.resolve_dir(produce).map(|r| r.hash)
    }

    /// As [`ComputeOnce::dir`], and says how the key was resolved (see
    /// [`ComputeOnce::resolve_writer`]). A hit has had its whole tree verified: every object
    /// it reaches is present and hashes to its name.
    ///
    /// # Errors
    /// As [`ComputeOnce::dir`].
    pub fn resolve_dir<F>(self, produce: F) -> Result<Resolved>
    where
        F: FnOnce(&Path) -> std::result::Result<(), ProducerError>,
    {
        let store = self.store;
        self.run(
            |h| store.verify_closure(h),
            || {
                // The producer's scratch directory: the user's output, not staging, so the
                // system temporary directory is fine (put_dir copies it into the store).
                let scratch = tempfile::Builder::new()
                    .prefix("cas-compute-")
                    .tempdir()
                    .map_err(|e| {
                        Error::io("create a scratch directory in", std::env::temp_dir(), e)
                    })?;
                produce(scratch.path()).map_err(|source| self.producer_error(source))?;
                store.put_dir(scratch.path())
            },
        )
        .map(|(r, _)| r)
    }

    fn compute_writer<F>(&self, produce: F) -> Result<Hash>
    where
        F: FnOnce(&mut Writer) -> std::result::Result<(), ProducerError>,
    {
        let mut w = self.store.writer()?;
        produce(&mut w).map_err(|e| self.producer_failure(&w, e))?;
        w.commit()
    }

    fn producer_error(&self, source: ProducerError) -> Error {
        Error::Producer {
            key: display_key(self.key),
            source,
        }
    }

    /// The error of a producer that failed while writing into `w`: the store's own, naming
    /// the staging file, if a write into it failed (a full disk is not the producer's fault,
    /// whatever it then said: a pipe closed under it, an exit status); else the producer's.
    fn producer_failure(&self, w: &Writer, source: ProducerError) -> Error {
        if !w.write_failed() {
            return self.producer_error(source);
        }
        let io = match source.downcast::<std::io::Error>() {
            Ok(e) => *e,
            Err(other) => std::io::Error::other(other),
        };
        Error::io("write staging file", w.staging_path(), io)
    }

    fn emit(&self, ev: OnceEvent<'_>) {
        if let Some(f) = self.on_event {
            f(ev);
        }
    }

    /// The protocol: look; else take the compute lock (waiting while a live holder computes);
    /// look again; else compute under a heartbeat and publish, expecting what the second look
    /// saw (absent, or the damaged value). `check` verifies a value found (and may return it
    /// read); a value that fails it is damage, a miss.
    fn run<T>(
        &self,
        check: impl Fn(&Hash) -> std::result::Result<T, Bad>,
        compute: impl FnOnce() -> Result<Hash>,
    ) -> Result<(Resolved, Option<T>)> {
        let store = self.store;
        let mut r = Resolved {
            hash: Hash::from_bytes([0; 32]),
            computed: false,
            waited: Duration::ZERO,
            damaged: Vec::new(),
        };
        let mut compute = Some(compute);
        // Our value, once computed: published again (not recomputed) if a value someone else
        // published meanwhile turns out damaged too.
        let mut ours: Option<Hash> = None;
        let mut conflict = None;
        for _ in 0..ROUNDS {
            if let Look::Hit(h, t) = self.lookup(&check, &mut r)? {
                r.hash = h;
                return Ok((r, Some(t)));
            }
            let lock = self.take_lock(&mut r)?;
            // Whoever held the lock before us may have finished the work.
            let expect = match self.lookup(&check, &mut r)? {
                Look::Hit(h, t) => {
                    lock.release();
                    r.hash = h;
                    return Ok((r, Some(t)));
                }
                // An entry that does not decode holds no value: `Absent` replaces it too.
                Look::Miss | Look::Damaged(None) => Expect::Absent,
                Look::Damaged(Some(old)) => Expect::Value(old),
            };
            let hash = match (ours, compute.take()) {
                (Some(h), _) => h,
                (None, Some(compute)) => {
                    let lost = |e: &Error| self.emit(OnceEvent::LeaseNotRenewed(e));
                    let h = with_heartbeat(&lock, store.options().lock_timeout, &lost, || {
                        // A panic in the producer unwinds through here: the writer's staging
                        // file and the lock are dropped (removed), so the next waiter computes.
                        compute()
                    })?;
                    ours = Some(h);
                    h
                }
                (None, None) => break, // not reached: `ours` is set when `compute` is taken
            };
            match store.set_keyed(self.key, hash, self.metadata, expect) {
                Ok(_) => {
                    lock.release();
                    r.hash = hash;
                    r.computed = true;
                    return Ok((r, None));
                }
                // Someone else's value was published first (our lease was broken while we
                // computed): theirs wins, ours becomes garbage for gc. Look at theirs.
                Err(e) if e.is_conflict() => {
                    lock.release();
                    conflict = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(conflict.unwrap_or_else(|| Error::InvalidInput {
            what: "cache entry",
            reason: format!("{}: no value could be published", display_key(self.key)),
        }))
    }

    /// Reads the entry and checks its value. A missing entry is a miss; an undecodable one,
    /// or a value that fails `check` with damage, is damage (recorded and told once).
    fn lookup<T>(
        &self,
        check: &impl Fn(&Hash) -> std::result::Result<T, Bad>,
        r: &mut Resolved,
    ) -> Result<Look<T>> {
        let store = self.store;
        let entry = match store.entry(self.key) {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(Look::Miss),
            Err(e) if e.is_malformed() => {
                self.damaged(r, None, &Bad::from(e));
                return Ok(Look::Damaged(None));
            }
            Err(e) => return Err(e),
        };
        match check(&entry.hash) {
            Ok(t) => Ok(Look::Hit(entry.hash, t)),
            Err(bad) if is_damage(&bad.error) => {
                self.damaged(r, Some(entry.hash), &bad);
                Ok(Look::Damaged(Some(entry.hash)))
            }
            Err(bad) => Err(*bad.error),
        }
    }

    fn damaged(&self, r: &mut Resolved, hash: Option<Hash>, bad: &Bad) {
        let store = self.store;
        let quarantine = store.root().join(crate::store::layout::QUARANTINE);
        let (object, quarantined) = match &*bad.error {
            Error::Corrupt { expected, path, .. } => (
                Some(*expected),
                path.starts_with(&quarantine).then(|| path.clone()),
            ),
            Error::NotFound { hash, .. } => (Some(*hash), None),
            _ => (None, None),
        };
        let mut reason = bad.error.to_string();
        if let Some(at) = &bad.at {
            let (tree, at) = &**at;
            let _ = write!(reason, " (at {} in tree {tree})", at.display());
        }
        let d = Damage {
            key: display_key(self.key),
            entry: store.entry_path(self.key),
            hash,
            object,
            quarantined,
            reason,
        };
        // The second look under the lock finds what the first reported (minus the
        // quarantine, which already happened): say it once.
        let seen = r
            .damaged
            .iter()
            .any(|o| o.hash == d.hash && o.object == d.object);
        if !seen {
            self.emit(OnceEvent::Damaged(&d));
            r.damaged.push(d);
        }
    }

    /// Takes the compute lock, telling the callback who computes while it waits. On timeout,
    /// the error names the key, the holder and the times in words.
    fn take_lock(&self, r: &mut Resolved) -> Result<Lock> {
        let store = self.store;
        let path = store.compute_lock_path(self.key);
        let started = Instant::now();
        let mut slice = Duration::ZERO;
        loop {
            match store.acquire_lock(&path, None, Wait::For(slice)) {
                Ok(lock) => {
                    if !slice.is_zero() {
                        r.waited += started.elapsed();
                    }
                    return Ok(lock);
                }
                Err(e) if e.is_locked() => {
                    let waited = started.elapsed();
                    // Released between the try and this look (`gone`): nobody is told about
                    // a holder that no longer exists; the next try takes the free lock.
                    let (holder, gone) = match store.read_lock(&path) {
                        Ok((h, _)) => (h, false),
                        Err(e) => (None, crate::fs::is_not_found(&e)),
                    };
                    let now_ms = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let w = Waiting {
                        key: display_key(self.key),
                        host: holder.as_ref().map(|h| h.host.clone()),
                        pid: holder.as_ref().map(|h| h.pid),
                        computing_for: holder
                            .as_ref()
                            .map(|h| Duration::from_millis(now_ms.saturating_sub(h.start_ms))),
                        waited,
                        timeout: self.timeout,
                    };
                    if waited >= self.timeout {
                        r.waited += waited;
                        return Err(Error::ComputeTimeout {
                            key: w.key.clone(),
                            holder: w.holder(),
                            waited: human_duration(waited),
                            timeout: human_duration(self.timeout),
                        });
                    }
                    if !gone {
                        self.emit(OnceEvent::Waiting(&w));
                    }
                    slice = WAIT_REPORT.min(self.timeout.saturating_sub(waited));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

enum Look<T> {
    /// A usable value, checked (and what the check read).
    Hit(Hash, T),
    /// No entry.
    Miss,
    /// A damaged entry (its value, if it could be read): a miss, replaced by the rebuild.
    Damaged(Option<Hash>),
}

/// Runs `f` while a thread renews `lock`'s lease every third of `lease`. The first renewal
/// that fails is told to `failed` at once (from the heartbeat thread); later beats keep
/// trying, since a transient error may pass before the lease runs out.
fn with_heartbeat<T>(
    lock: &Lock,
    lease: Duration,
    failed: &(dyn Fn(&Error) + Sync),
    f: impl FnOnce() -> T,
) -> T {
    let (stop, stopped) = mpsc::channel::<()>();
    let beat = (lease / 3).max(Duration::from_millis(50));
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut told = false;
            // Ends when `stop` is dropped — also while a panic unwinds out of `f`.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(beat) {
                if let Err(e) = lock.refresh() {
                    if !std::mem::replace(&mut told, true) {
                        failed(&e);
                    }
                }
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

    /// Flips the first byte of an object in place (objects are read-only: made writable).
    fn flip(store: &Store, h: &crate::Hash) {
        use std::os::unix::fs::PermissionsExt;
        let p = store.object_path(h);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        b[0] ^= 1;
        std::fs::write(&p, b).unwrap();
    }

    /// Resolves `key` with a producer that counts its calls, collecting the damage told.
    fn resolve(store: &Store, key: &[u8], calls: &AtomicUsize) -> (crate::Resolved, Vec<String>) {
        let told = std::sync::Mutex::new(Vec::new());
        let on = |ev: crate::OnceEvent<'_>| {
            if let crate::OnceEvent::Damaged(d) = ev {
                told.lock().unwrap().push(d.to_string());
            }
        };
        let r = store
            .compute_once(key)
            .on_event(&on)
            .resolve_writer(|w| {
                calls.fetch_add(1, Ordering::SeqCst);
                w.write_all(b"fresh")?;
                Ok(())
            })
            .unwrap();
        (r, told.into_inner().unwrap())
    }

    use std::io::Write as _;

    #[test]
    fn a_flipped_byte_is_quarantined_reported_and_recomputed_once() {
        let (_d, store) = store();
        let old = store.put_keyed_bytes(b"k", b"stale", b"").unwrap();
        flip(&store, &old);
        let calls = AtomicUsize::new(0);
        let (r, told) = resolve(&store, b"k", &calls);
        assert!(r.computed);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(&*store.get(&r.hash).unwrap(), b"fresh");
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].contains("\"k\"") && told[0].contains(&old.to_string()),
            "{told:?}"
        );
        assert!(
            told[0].contains("corrupt") && told[0].contains("quarantine"),
            "{told:?}"
        );
        assert_eq!(r.damaged[0].hash, Some(old));
        assert!(r.damaged[0].quarantined.as_ref().unwrap().exists());
        // Healed: the next caller hits, nothing is told.
        let (again, told) = resolve(&store, b"k", &calls);
        assert!(!again.computed && told.is_empty() && again.hash == r.hash);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_deleted_object_is_a_miss_for_every_form() {
        let (_d, store) = store();
        let old = store.put_keyed_bytes(b"k", b"gone", b"").unwrap();
        store.remove(&old).unwrap();
        let calls = AtomicUsize::new(0);
        let (r, told) = resolve(&store, b"k", &calls);
        assert!(r.computed && told.len() == 1, "{told:?}");
        assert!(told[0].contains("not found"), "{told:?}");
        // bytes / get_or_insert_with: the same.
        let old = store.put_keyed_bytes(b"k2", b"gone", b"").unwrap();
        store.remove(&old).unwrap();
        let obj = store
            .get_or_insert_with(b"k2", |w| Ok(w.write_all(b"again")?))
            .unwrap();
        assert_eq!(&*obj, b"again");
        assert_eq!(&*store.get_keyed(b"k2").unwrap(), b"again");
    }

    #[test]
    fn a_corrupt_or_missing_child_of_a_tree_entry_is_a_miss() {
        let (d, store) = store();
        let build = |out: &std::path::Path| -> Result<(), crate::ProducerError> {
            std::fs::create_dir(out.join("sub"))?;
            std::fs::write(out.join("sub/f"), b"deep file")?;
            std::fs::write(out.join("g"), b"top file")?;
            Ok(())
        };
        let tree = store.compute_once(b"t").dir(build).unwrap();
        let child = crate::Hash::of(b"deep file");
        flip(&store, &child);
        let told = std::sync::Mutex::new(Vec::new());
        let on = |ev: crate::OnceEvent<'_>| {
            if let crate::OnceEvent::Damaged(d) = ev {
                told.lock().unwrap().push(d.to_string());
            }
        };
        let r = store
            .compute_once(b"t")
            .on_event(&on)
            .resolve_dir(build)
            .unwrap();
        assert!(r.computed, "a tree with a corrupt child was used");
        assert_eq!(r.hash, tree, "the same build gives the same tree");
        let told = told.into_inner().unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0].contains("sub/f") && told[0].contains(&child.to_string()),
            "{told:?}"
        );
        store.checkout(&tree, d.path().join("o")).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("o/sub/f")).unwrap(),
            b"deep file"
        );
        // Missing instead of corrupt: the same.
        store.remove(&crate::Hash::of(b"top file")).unwrap();
        let r = store.compute_once(b"t").resolve_dir(build).unwrap();
        assert!(
            r.computed && r.damaged[0].reason.contains("at g in tree"),
            "{r:?}"
        );
        assert!(store.contains(&crate::Hash::of(b"top file")));
    }

    #[test]
    fn four_threads_heal_a_damaged_entry_with_one_computation() {
        let (_d, store) = store();
        let old = store.put_keyed_bytes(b"k", b"stale", b"").unwrap();
        flip(&store, &old);
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (store, calls, start) = (store.clone(), calls.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    store
                        .compute_once(b"k")
                        .bytes(|| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Ok(b"fresh".to_vec())
                        })
                        .unwrap()
                        .into_vec()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), b"fresh");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_rebuild_stores_nothing_and_the_next_caller_heals() {
        let (_d, store) = store();
        let old = store.put_keyed_bytes(b"k", b"stale", b"").unwrap();
        store.remove(&old).unwrap();
        let e = store
            .compute_once(b"k")
            .bytes(|| Err("offline".into()))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Producer, "{e}");
        assert_eq!(
            store.entry(b"k").unwrap().hash,
            old,
            "the failed rebuild wrote the entry"
        );
        let obj = store
            .compute_once(b"k")
            .bytes(|| Ok(b"ok".to_vec()))
            .unwrap();
        assert_eq!(&*obj, b"ok");
    }

    #[test]
    fn a_waiter_is_told_who_computes_and_times_out_in_words() {
        let (_d, store) = store();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
        let s2 = store.clone();
        let holder = std::thread::spawn(move || {
            s2.compute_once(b"slow")
                .bytes(|| {
                    started_tx.send(()).unwrap();
                    finish_rx.recv().unwrap();
                    Ok(b"done".to_vec())
                })
                .unwrap();
        });
        started_rx.recv().unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let on = |ev: crate::OnceEvent<'_>| {
            if let crate::OnceEvent::Waiting(w) = ev {
                seen.lock().unwrap().push(w.clone());
            }
        };
        let e = store
            .compute_once(b"slow")
            .timeout(std::time::Duration::from_millis(300))
            .on_event(&on)
            .bytes(|| unreachable!())
            .unwrap_err();
        assert!(e.is_locked(), "{e}");
        let msg = e.to_string();
        let pid = std::process::id().to_string();
        assert!(
            msg.contains("\"slow\"") && msg.contains(&format!("pid {pid}")),
            "{msg}"
        );
        assert!(
            msg.contains("timeout 300 ms") && !msg.contains(".lock"),
            "{msg}"
        );
        let seen = seen.into_inner().unwrap();
        assert!(!seen.is_empty());
        assert_eq!(seen[0].pid, Some(std::process::id()));
        assert!(seen[0]
            .to_string()
            .starts_with("waiting for \"slow\": computed by host "));
        finish_tx.send(()).unwrap();
        holder.join().unwrap();
        // Once computed, a waiter reports that it did not compute.
        let r = store
            .compute_once(b"slow")
            .resolve_writer(|_| unreachable!())
            .unwrap();
        assert!(!r.computed && r.waited.is_zero());
    }

    #[test]
    fn durations_in_words() {
        use std::time::Duration as D;
        let h = super::human_duration;
        assert_eq!(h(D::from_millis(850)), "850 ms");
        assert_eq!(h(D::from_secs(12)), "12 s");
        assert_eq!(h(D::from_secs(185)), "3 min 5 s");
        assert_eq!(h(D::from_hours(1)), "1 h");
        assert_eq!(h(D::from_secs(2 * 86400 + 3 * 3600 + 5)), "2 d 3 h");
    }
}

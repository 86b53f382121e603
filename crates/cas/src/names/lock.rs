//! Lock files that work across hosts: created exclusively, content and all, by publishing a
//! staged file without replacing (never flock/fcntl, which are unreliable across cluster
//! nodes), holding "host pid start nonce [pin]", broken safely when their holder is dead or
//! has stopped refreshing them (a lease).
//!
//! A lock's optional *pin* is the hash its holder is about to make reachable (the new value of
//! a ref or cache entry). gc reads pins as roots, so an object is never collected between the
//! moment a writer checks it exists and the moment the new pointer is visible
//! (docs/format.md "GC").

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::store::layout;
use crate::write::stage::Staging;
use crate::{Durability, Store};

/// Who holds a lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) start_ms: u64,
    pub(crate) nonce: String,
    pub(crate) pin: Option<Hash>,
}

impl Holder {
    pub(crate) fn render(&self) -> String {
        let mut s = format!(
            "{} {} {} {}",
            self.host, self.pid, self.start_ms, self.nonce
        );
        if let Some(p) = &self.pin {
            s.push(' ');
            s.push_str(&p.to_string());
        }
        s.push('\n');
        s
    }

    /// Parses a lock file's content; `None` if it is not (yet) a complete lock line.
    pub(crate) fn parse(text: &str) -> Option<Holder> {
        let line = text.strip_suffix('\n')?;
        let mut it = line.split(' ');
        let host = it.next()?.to_owned();
        let pid = it.next()?.parse().ok()?;
        let start_ms = it.next()?.parse().ok()?;
        let nonce = it.next()?.to_owned();
        let pin = match it.next() {
            Some(h) => Some(Hash::parse(h).ok()?),
            None => None,
        };
        if it.next().is_some() || host.is_empty() || nonce.is_empty() {
            return None;
        }
        Some(Holder {
            host,
            pid,
            start_ms,
            nonce,
            pin,
        })
    }

    /// The name of this holder's commit file in `tmp/` (see [`Store::replace_small_fenced`]).
    pub(crate) fn fence_name(&self) -> String {
        layout::fence_name(&self.host, self.pid, &self.nonce)
    }

    fn describe(&self) -> String {
        format!(
            "host {} pid {} since {} ms",
            self.host, self.pid, self.start_ms
        )
    }
}

/// A held lock. Released (its file removed, if it is still ours) on drop.
#[derive(Debug)]
pub(crate) struct Lock {
    store: Store,
    path: PathBuf,
    ident: Ident,
    /// Our holder line (its host, pid and nonce name our commit file).
    me: Holder,
    /// No later than the lock file's mtime was last set (acquired or refreshed), on the
    /// monotonic clock: where our lease started, as far as we can know.
    lease_from: std::sync::Mutex<Instant>,
    released: bool,
    /// Known to the process's clean-up on signals (`crate::store::abandon`) while held.
    registered: Option<crate::store::abandon::Registered>,
}

/// How a holder recognises its own lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    /// By the nonce in its holder line (every lock written whole).
    Nonce(String),
    /// By the file's device and inode: a gc lock created empty on a full filesystem, where
    /// not even a holder line fits (docs/format.md "Locks (leases)").
    Inode(u64, u64),
}

/// The pins found in lock files, and lock files that are not what they should be.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    pub(crate) pins: Vec<(PathBuf, Hash)>,
    pub(crate) damaged: Vec<crate::maint::verify::Problem>,
}

/// True if the error says the filesystem (or the user's quota) is full.
pub(crate) fn is_no_space(e: &Error) -> bool {
    e.io_error().is_some_and(|io| {
        io.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || io.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nonce() -> String {
    // Unique enough for telling two holders apart: time, pid and a per-process counter hashed.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{}.{}.{}.{:?}", now_ms(), fs::pid(), c, Instant::now());
    Hash::of(seed.as_bytes()).to_hex()[..16].to_owned()
}

/// What [`Store::acquire_lock`] does when the lock is held by a live holder.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Retry with backoff for up to this long, then fail with [`Error::Locked`].
    For(Duration),
}

impl Store {
    /// Takes the lock file at `path`, pinning `pin` for gc. Waits (with backoff) while a live
    /// holder has it; breaks it when its holder is dead or its lease expired.
    pub(crate) fn acquire_lock(&self, path: &Path, pin: Option<Hash>, wait: Wait) -> Result<Lock> {
        self.acquire_lock_inner(path, pin, wait, false)
    }

    /// The gc lease. gc is what frees space, so it must be able to start on a full
    /// filesystem: when the lock cannot be staged for lack of space, it is created in place
    /// with `O_CREAT | O_EXCL` (no data block needed) and its holder line written if it fits;
    /// a lock left empty is known to its holder by inode, and to everyone else as an
    /// incomplete lock, broken once its lease is not refreshed.
    pub(crate) fn acquire_gc_lock(&self, path: &Path) -> Result<Lock> {
        self.acquire_lock_inner(path, None, Wait::For(Duration::ZERO), true)
    }

    fn acquire_lock_inner(
        &self,
        path: &Path,
        pin: Option<Hash>,
        wait: Wait,
        in_place_when_full: bool,
    ) -> Result<Lock> {
        let Wait::For(max_wait) = wait;
        let started = Instant::now();
        // Taken before the staging file is written: its mtime, which becomes the lock's, is
        // no earlier than this instant.
        let mut staged_fresh = Instant::now();
        let me = Holder {
            host: self.inner.host.clone(),
            pid: self.inner.pid,
            start_ms: now_ms(),
            nonce: nonce(),
            pin,
        };
        // The lock appears with its whole content or not at all: it is written to a staging
        // file first and published under the lock name without replacing. A holder killed
        // between an O_EXCL create and its write would otherwise leave an empty lock that
        // nobody can attribute, blocking everyone for a whole lease.
        let mut staged = self.stage_lock_unless_full(&me, in_place_when_full)?;
        let held = |ident: Ident, lease_from: Instant| {
            if !in_place_when_full {
                test_pause("lock-acquired");
            }
            self.held_lock(path, ident, &me, lease_from)
        };
        let mut backoff = Duration::from_micros(200);
        // A lock's age is its file's mtime, and publishing links the staging file as it is: one
        // written before a long wait would appear already old, and the next waiter would judge
        // it stale at once and break it. Its mtime is renewed while we wait (`staged_fresh`).
        // Answers a network filesystem gives for a moment while other clients rename and
        // remove the name (EEXIST for a name that is not there, ENOENT, ESTALE): retried, within
        // a bound.
        let mut spurious = 0;
        let mut retry_spurious = |e: io::Error| {
            spurious += 1;
            if spurious > 1000 {
                Err(Error::io("create lock", path, e))
            } else {
                Ok(())
            }
        };
        loop {
            let published = match staged.as_mut() {
                Some(s) => {
                    let every = STAGED_LOCK_REFRESH.min(self.inner.options.lock_timeout / 4);
                    if staged_fresh.elapsed() >= every {
                        // Best effort: a lock published old is broken at worst, and its holder
                        // then fails at `Lock::verify`, before its update.
                        let before = Instant::now();
                        if fs::touch(s.file()).is_ok() {
                            staged_fresh = before;
                        }
                    }
                    self.publish_small(s, path)
                }
                None => match self.create_lock_in_place(path, &me) {
                    Ok(Some(ident)) => return Ok(held(ident, staged_fresh)),
                    Ok(None) => Ok(fs::Published::Existed),
                    Err(e) => Err(e),
                },
            };
            match published {
                Ok(fs::Published::Created) => {
                    return Ok(held(Ident::Nonce(me.nonce.clone()), staged_fresh))
                }
                Ok(fs::Published::Existed) => {}
                Err(e) if fs::is_not_found(&e) => {
                    self.ensure_dir(path.parent().unwrap_or(path))?;
                    retry_spurious(e)?;
                    continue;
                }
                Err(e) if fs::is_stale(&e) => {
                    retry_spurious(e)?;
                    continue;
                }
                Err(e) => return Err(Error::io("create lock", path, e)),
            }
            // Someone has it (or a network filesystem said EEXIST for a name that isn't there).
            let (holder, age) = match self.read_lock(path) {
                Ok(x) => x,
                Err(e) if fs::is_not_found(&e) || fs::is_stale(&e) => {
                    retry_spurious(e)?;
                    continue;
                }
                Err(e) => return Err(Error::io("read lock", path, e)),
            };
            if holder.as_ref().is_some_and(|h| h.nonce == me.nonce) {
                // Our own lock: a publish reported as failed (ESTALE) had in fact succeeded.
                return Ok(held(Ident::Nonce(me.nonce.clone()), staged_fresh));
            }
            if self.is_stale(holder.as_ref(), age) {
                // Judging took time (a /proc read or two): the holder we judged dead may have
                // released its lock just before it exited, and someone else taken the name.
                // Break only the lock we judged, read again right before breaking it;
                // whatever else is displaced in the instant left fails cleanly (LockLost).
                let nonce_of = |h: Option<&Holder>| h.map(|h| h.nonce.clone());
                match self.read_lock(path) {
                    Ok((again, _)) if nonce_of(again.as_ref()) == nonce_of(holder.as_ref()) => {}
                    _ => continue,
                }
                // Where the filesystem can swap two names atomically, our own lock takes the
                // stale one's place in one step: the name is never free, so nobody else can
                // take it before the broken holder's commit is disarmed.
                if let Some(s) = staged.as_ref() {
                    if self.take_over(s, path, &me.nonce)? {
                        return Ok(held(Ident::Nonce(me.nonce.clone()), staged_fresh));
                    }
                }
                self.break_lock(path, holder.as_ref())?;
                continue;
            }
            let waited = started.elapsed();
            if waited >= max_wait {
                return Err(Error::Locked {
                    path: path.to_owned(),
                    holder: holder.map_or_else(|| "an unknown holder".to_owned(), |h| h.describe()),
                    waited_ms: waited.as_millis() as u64,
                });
            }
            // Backoff with jitter so contending processes spread out.
            let jitter = u64::from(fs::pid() % 7) * 50;
            std::thread::sleep(backoff + Duration::from_micros(jitter));
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    /// Our lock, staged; `None` (create it in place) if `in_place_when_full` and there is no
    /// room in `tmp/` — also when `tmp/` itself is not a directory we may use (a symlink
    /// planted there): gc still runs, and reports it.
    fn stage_lock_unless_full(
        &self,
        me: &Holder,
        in_place_when_full: bool,
    ) -> Result<Option<Staging>> {
        match self.stage_lock(&me.render()) {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if in_place_when_full
                    && (is_no_space(&e) || e.io_error().is_some_and(fs::is_hostile)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The handle of a lock we just took.
    fn held_lock(&self, path: &Path, ident: Ident, me: &Holder, lease_from: Instant) -> Lock {
        Lock {
            store: self.clone(),
            path: path.to_owned(),
            ident,
            me: me.clone(),
            lease_from: std::sync::Mutex::new(lease_from),
            released: false,
            registered: Some(crate::store::abandon::register_lock(
                path,
                &me.nonce,
                &self.inner.root,
            )),
        }
    }

    /// Creates the lock file in place with `O_EXCL` and writes the holder line if the
    /// filesystem has room for it. `None` if the lock exists.
    fn create_lock_in_place(&self, path: &Path, me: &Holder) -> io::Result<Option<Ident>> {
        use std::io::Write;
        let mut f = match self.inner.root_dir.create_excl(path, self.file_mode()) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e),
        };
        let _ = self.fix_shared_mode(&f);
        if f.write_all(me.render().as_bytes()).is_ok() {
            return Ok(Some(Ident::Nonce(me.nonce.clone())));
        }
        // No room for even a line: an empty lock, ours by inode. Never a partial line.
        f.set_len(0)?;
        let m = fs::Root::fmeta(&f)?;
        Ok(Some(Ident::Inode(m.dev, m.ino)))
    }

    /// Writes a lock's content to a staging file in `tmp/`, with the lock file's mode. Locks
    /// are not synced: after a power loss every holder is gone, and a lock that lost its bytes
    /// is an incomplete lock, broken once its lease is over.
    fn stage_lock(&self, content: &str) -> Result<Staging> {
        self.stage_small(content.as_bytes(), self.file_mode(), Durability::None)
    }

    /// A lock is stale when its holder is on this host and dead (its pid is gone, or now
    /// belongs to a process that started after the lock was taken), or, for a holder on
    /// another host (or an incomplete lock), when it has not been refreshed for longer than
    /// the lease timeout. A holder alive on this host is never broken by age: however long it
    /// is stalled, it may still commit, and only its death frees the lock.
    ///
    /// On a local filesystem every holder is on this host, so a lock last written before this
    /// machine booted cannot have a live holder: it is stale at once, whatever it holds — the
    /// empty lock a power loss leaves (lock files are never synced) included.
    pub(crate) fn is_stale(&self, holder: Option<&Holder>, age: Duration) -> bool {
        if let Some(h) = holder {
            if h.host == self.inner.host {
                return !holder_alive(h);
            }
        }
        if !self.inner.caps.network && fs::uptime().is_some_and(|up| age > up) {
            return true;
        }
        age > self.inner.options.lock_timeout
    }

    /// Swaps our staged lock `s` with the stale lock at `path` (`renameat2(RENAME_EXCHANGE)`):
    /// from that instant the lock is ours. Then the displaced lock, now at our staging name,
    /// has its holder's commit disarmed and is removed when `s` is dropped. `false` if the
    /// filesystem cannot swap (then the caller breaks the lock by moving it aside).
    fn take_over(&self, s: &Staging, path: &Path, ours: &str) -> Result<bool> {
        let staged = s.path();
        match self
            .inner
            .root_dir
            .exchange(&staged, path, &self.inner.caps)
        {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            // Gone meanwhile (released, or broken by another): try again from the start.
            Err(e) if fs::is_not_found(&e) || fs::is_stale(&e) => return Ok(false),
            Err(e) => return Err(Error::io("take over stale lock", path, e)),
        }
        // Whatever we displaced — the lock we judged, or one taken in the instant since — is
        // broken now: its holder must not commit.
        let displaced = self.read_lock(&staged).ok().and_then(|(h, _)| h);
        if let Some(d) = &displaced {
            if let Err(e) = self.disarm(d) {
                // We cannot stop its commit: give the lock back up rather than proceed.
                let _ = release_nonce_in(&self.inner.root_dir, &self.inner.root, path, ours);
                return Err(e);
            }
        }
        Ok(true)
    }

    /// Disarms the commit of a broken holder: removes its commit file from `tmp/`, so that
    /// its rename onto the protected name fails (docs/format.md, "Locks (leases)").
    pub(crate) fn disarm(&self, broken: &Holder) -> Result<()> {
        disarm_in(&self.inner.root_dir, &self.inner.root, broken)
    }

    /// Breaks a stale lock where names cannot be swapped atomically: disarm the judged
    /// holder's commit, rename the lock aside (of two breakers only one wins), then disarm
    /// the commit of whoever's lock was moved (a fresh one taken in between is broken too:
    /// it cannot be put back safely, and its holder fails cleanly with `LockLost`).
    pub(crate) fn break_lock(&self, path: &Path, judged: Option<&Holder>) -> Result<()> {
        if let Some(j) = judged {
            self.disarm(j)?;
        }
        let aside_dir = self.path(layout::LOCKS);
        self.ensure_dir(&aside_dir)?;
        let aside = aside_dir.join(layout::broken_lock_name(
            &self.inner.host,
            self.inner.pid,
            &nonce(),
        ));
        match self.inner.root_dir.rename(path, &aside) {
            Ok(()) => {}
            Err(e) if fs::is_not_found(&e) => return Ok(()), // someone else broke or released it
            Err(e) => return Err(Error::io("break stale lock", path, e)),
        }
        let moved = self.read_lock(&aside).ok().and_then(|(h, _)| h);
        let r = match &moved {
            Some(m) if judged.is_none_or(|j| j.nonce != m.nonce) => self.disarm(m),
            _ => Ok(()),
        };
        let _ = self.inner.root_dir.unlink(&aside);
        r
    }

    /// In a shared store, sets a file we created to the shared mode: `open(2)` applied the
    /// umask, and other users of the group must be able to read (locks) or append (reflogs).
    pub(crate) fn fix_shared_mode(&self, f: &std::fs::File) -> io::Result<()> {
        if self.inner.options.shared_group {
            fs::set_mode(f, self.file_mode())?;
        }
        Ok(())
    }

    /// Mode of small files the store writes (locks, refs, entries).
    pub(crate) fn file_mode(&self) -> u32 {
        if self.inner.options.shared_group {
            0o664
        } else {
            0o644
        }
    }

    /// The pins of all lock files under `dir` (recursively, never through a symlink) — roots
    /// gc must keep. A lock name that is not a regular file cannot hold a pin (no writer could
    /// take such a lock): it is reported, not followed.
    pub(crate) fn lock_pins(&self, dir: &Path) -> Pins {
        let mut out = Pins::default();
        let walk = self.inner.root_dir.walk_tree(dir);
        for (p, e) in walk.errors {
            out.damaged.push(crate::maint::verify::Problem {
                path: p,
                reason: format!("cannot list: {e}"),
            });
        }
        for (p, kind) in walk.entries {
            if !p.to_string_lossy().ends_with(layout::LOCK_SUFFIX) || kind == fs::Kind::Dir {
                continue;
            }
            if kind != fs::Kind::File {
                out.damaged.push(crate::maint::verify::Problem {
                    path: p,
                    reason: format!("a lock name that is {}", kind.describe()),
                });
                continue;
            }
            match self.read_lock(&p) {
                Ok((Some(h), _)) => {
                    if let Some(pin) = h.pin {
                        out.pins.push((p, pin));
                    }
                }
                Ok((None, _)) => {}
                Err(e) if fs::is_not_found(&e) => {}
                Err(e) => out.damaged.push(crate::maint::verify::Problem {
                    path: p,
                    reason: format!("cannot read lock: {e}"),
                }),
            }
        }
        out
    }

    /// Removes what lock breakers and releasers that died between their rename and unlink left
    /// in `locks/` (`broken.*`, `released.*`, `abandoned.*`, once older than the lock timeout).
    /// Only regular files; returns how many.
    pub(crate) fn clean_broken_locks(&self, dry: bool) -> u64 {
        let root = &self.inner.root_dir;
        let dir = self.path(layout::LOCKS);
        let Ok(ents) = root.read_dir(&dir) else {
            return 0;
        };
        let mut n = 0;
        for (name, kind) in ents {
            let bytes = fs::name_bytes(&name);
            // `broken.*` from breakers, `released.*` from releases, `abandoned.*` from the
            // clean-up on signals: each is left only by a death between a rename and an unlink.
            let aside = [&b"broken."[..], b"released.", b"abandoned."]
                .iter()
                .any(|p| bytes.starts_with(p));
            if kind != fs::Kind::File || !aside {
                continue;
            }
            let p = dir.join(&name);
            let old = root
                .lstat(&p)
                .ok()
                .and_then(|m| m.mtime.elapsed().ok())
                .is_some_and(|age| age > self.inner.options.lock_timeout);
            if old && (dry || root.unlink(&p).is_ok()) {
                n += 1;
            }
        }
        n
    }
}

impl Store {
    /// Reads a lock file: its holder (None if incomplete, garbage or foreign) and its age by
    /// mtime. Bytes that are not UTF-8 are an unparsable lock like any other, never an error.
    pub(crate) fn read_lock(&self, path: &Path) -> io::Result<(Option<Holder>, Duration)> {
        // GlusterFS returns ESTALE on open, fstat or read while a lock name is being replaced
        // or removed by another client: `fs::Root::read_small` reads again from the name
        // (bounded). Once it is gone for good the error is NotFound, which callers handle.
        read_lock_in(&self.inner.root_dir, path)
    }
}

/// Reads the lock file at `path` beneath `root` (see [`Store::read_lock`]; transient errors
/// are retried by [`fs::Root::read_small`]).
pub(crate) fn read_lock_in(root: &fs::Root, path: &Path) -> io::Result<(Option<Holder>, Duration)> {
    let (bytes, _, meta) = root.read_small(path, 4096)?;
    let age = meta.mtime.elapsed().unwrap_or_default();
    Ok((Holder::parse(&String::from_utf8_lossy(&bytes)), age))
}

/// How long a staged lock may wait to be published before its mtime is renewed (or a quarter
/// of the lease, if that is shorter).
const STAGED_LOCK_REFRESH: Duration = Duration::from_millis(500);

impl Lock {
    /// Fails with [`Error::LockLost`] if the lock file is no longer ours (it was judged stale
    /// and broken). Call right before applying the protected update.
    pub(crate) fn verify(&self) -> Result<()> {
        if let Ident::Inode(dev, ino) = self.ident {
            return match self.store.inner.root_dir.lstat(&self.path) {
                Ok(m) if m.kind == fs::Kind::File && (m.dev, m.ino) == (dev, ino) => Ok(()),
                Ok(_) => Err(Error::LockLost {
                    path: self.path.clone(),
                }),
                Err(e) if fs::is_not_found(&e) => Err(Error::LockLost {
                    path: self.path.clone(),
                }),
                Err(e) => Err(Error::io("read lock", &self.path, e)),
            };
        }
        // A network filesystem may answer "no such file" or an empty read for a moment while
        // other clients create and remove names in the same directory (GlusterFS with its
        // caches off, ../shared/clusterfs): there, absence is believed only once it lasts.
        // Another holder's content is believed at once.
        let patience = if self.store.inner.caps.network { 8 } else { 0 };
        let mut pause = Duration::from_millis(2);
        for attempt in 0..=patience {
            match self.store.read_lock(&self.path) {
                Ok((Some(h), _)) if Ident::Nonce(h.nonce.clone()) == self.ident => return Ok(()),
                Ok((Some(_), _)) => break,
                Ok((None, _)) => {}
                Err(e) if fs::is_not_found(&e) => {}
                Err(e) => return Err(Error::io("read lock", &self.path, e)),
            }
            if attempt < patience {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
        Err(Error::LockLost {
            path: self.path.clone(),
        })
    }

    /// Renews the lease (mtime = now); long holders call this periodically. The lease is
    /// counted from before the touch, and only once the lock is seen to be still ours.
    pub(crate) fn refresh(&self) -> Result<()> {
        let before = Instant::now();
        self.store
            .inner
            .root_dir
            .touch_now(&self.path)
            .map_err(Error::at("refresh lock", &self.path))?;
        if self.verify().is_ok() {
            *self
                .lease_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = before;
        }
        Ok(())
    }

    /// The last check before a commit. Where this store breaks locks by moving them aside (no
    /// atomic swap: NFS, FUSE), a holder whose lease has less than a quarter of the lock
    /// timeout left refuses to commit (`LockLost`), so that its commit lands well before anyone
    /// may judge it stale (docs/format.md, "Locks (leases)"); with a swap the fence alone is
    /// exact and no clock is consulted. Then the lock must still hold our nonce
    /// ([`Lock::verify`]). A zero timeout has no margin to keep.
    pub(crate) fn check_for_commit(&self) -> Result<()> {
        let timeout = self.store.inner.options.lock_timeout;
        let swapping = self
            .store
            .inner
            .caps
            .rename_exchange
            .load(std::sync::atomic::Ordering::Relaxed);
        if !swapping && !timeout.is_zero() {
            let from = *self
                .lease_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if from.elapsed() + timeout / 4 >= timeout {
                return Err(Error::LockLost {
                    path: self.path.clone(),
                });
            }
        }
        self.verify()
    }

    /// The lock file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The name of our commit file in `tmp/`.
    pub(crate) fn fence_name(&self) -> String {
        self.me.fence_name()
    }

    /// The name in `tmp/` a removal under this lock moves the old file to.
    pub(crate) fn removed_name(&self) -> String {
        layout::removed_name(&self.me.host, self.me.pid, &self.me.nonce)
    }

    /// Removes the lock file if it is still ours.
    pub(crate) fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        match &self.ident {
            Ident::Inode(..) => {
                if self.verify().is_ok() {
                    let _ = self.store.inner.root_dir.unlink(&self.path);
                }
            }
            Ident::Nonce(n) => {
                release_nonce_in(
                    &self.store.inner.root_dir,
                    &self.store.inner.root,
                    &self.path,
                    n,
                );
            }
        }
        self.registered = None;
    }
}

/// Removes the lock at `path` if it holds `nonce`: checked first (someone else's lock is never
/// touched), then moved aside and checked again; if what was moved is not ours after all (our
/// lock was broken and retaken in between), that holder's commit is disarmed — the lock cannot
/// be put back safely. True if our lock was removed.
pub(crate) fn release_nonce_in(
    root: &fs::Root,
    root_path: &Path,
    path: &Path,
    nonce: &str,
) -> bool {
    let is_ours = |p: &Path| {
        read_lock_in(root, p)
            .ok()
            .and_then(|(h, _)| h)
            .is_some_and(|h| h.nonce == nonce)
    };
    if !is_ours(path) {
        return false;
    }
    let aside = root_path.join(layout::LOCKS).join(format!(
        "released.{}.{}.{nonce}",
        fs::hostname(),
        fs::pid()
    ));
    if root.rename(path, &aside).is_err() {
        return false;
    }
    let ours = is_ours(&aside);
    if !ours {
        if let Ok((Some(h), _)) = read_lock_in(root, &aside) {
            let _ = disarm_in(root, root_path, &h);
        }
    }
    let _ = root.unlink(&aside);
    ours
}

/// Removes the commit file of the holder `broken` from `tmp/` (absent is fine: it has not
/// staged one, or it committed already — before we looked, so we read its result).
pub(crate) fn disarm_in(root: &fs::Root, root_path: &Path, broken: &Holder) -> Result<()> {
    let fence = root_path.join(layout::TMP).join(broken.fence_name());
    match root.unlink(&fence) {
        Ok(()) => Ok(()),
        Err(e) if fs::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::io("disarm the commit of a broken lock", &fence, e)),
    }
}

/// True if the holder, on this host, is still the process that took the lock: its pid exists
/// and that process started no later than the lock (with 2 s of slack for the precision of
/// `/proc`'s boot time). A pid reused by a younger process is a dead holder.
fn holder_alive(h: &Holder) -> bool {
    if !fs::pid_alive(h.pid) {
        return false;
    }
    match fs::process_start_ms(h.pid) {
        Some(started) => started <= h.start_ms.saturating_add(2000),
        None => true,
    }
}

/// Where the test hook `CAS_TEST_PAUSE=POINT` stops a process: it says so on stderr
/// (`cas-test: paused at POINT`) and stops itself with `SIGSTOP`, as a stalled holder would be,
/// until the test sends `SIGCONT`. Points: `lock-acquired`, `before-commit`.
pub(crate) fn test_pause(point: &str) {
    if std::env::var_os("CAS_TEST_PAUSE").is_some_and(|v| v == point) {
        eprintln!("cas-test: paused at {point}");
        fs::stop_self();
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.release_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn holder_round_trip() {
        let h = Holder {
            host: "node.a".into(),
            pid: 42,
            start_ms: 7,
            nonce: "abc".into(),
            pin: Some(Hash::of(b"x")),
        };
        assert_eq!(Holder::parse(&h.render()), Some(h.clone()));
        let h2 = Holder { pin: None, ..h };
        assert_eq!(Holder::parse(&h2.render()), Some(h2));
        assert_eq!(Holder::parse(""), None);
        assert_eq!(Holder::parse("node 1 2"), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = Holder::parse(&s);
        }
    }

    /// A lock published after a wait longer than the lease is young: the next waiter must not
    /// judge it stale and break it (its staging file was written before the wait).
    #[test]
    fn a_lock_won_after_a_long_wait_is_not_born_stale() {
        let d = tempfile::tempdir().unwrap();
        let lease = Duration::from_secs(1);
        let store = Store::init(d.path(), crate::Options::default().lock_timeout(lease)).unwrap();
        let path = d.path().join("locks").join("x.lock");
        // A live holder (this process, another nonce) that renews its lease, then releases.
        let other = Holder {
            host: store.inner.host.clone(),
            pid: store.inner.pid,
            start_ms: now_ms(),
            nonce: "other".into(),
            pin: None,
        };
        std::fs::write(&path, other.render()).unwrap();
        let held_for = lease * 5 / 2;
        let holder = {
            let path = path.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < held_for {
                    let f = std::fs::File::open(&path).unwrap();
                    fs::touch(&f).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::fs::remove_file(&path).unwrap();
            })
        };
        let started = Instant::now();
        let l = store
            .acquire_lock(&path, None, Wait::For(lease * 10))
            .unwrap();
        assert!(started.elapsed() >= held_for, "acquired a held lock");
        let (h, age) = store.read_lock(&path).unwrap();
        assert!(
            age < lease,
            "published {age:?} old, past the {lease:?} lease"
        );
        assert!(!store.is_stale(h.as_ref(), age));
        l.verify().unwrap();
        holder.join().unwrap();
        l.release();
    }

    /// A stale lock of another host: breaking it, by a swap or (where names cannot be
    /// swapped) by moving it aside, removes its holder's commit file first — the fence.
    #[test]
    fn breaking_a_lock_disarms_its_holders_commit() {
        for swap in [true, false] {
            let d = tempfile::tempdir().unwrap();
            let store = Store::init(
                d.path(),
                crate::Options::default().lock_timeout(Duration::ZERO),
            )
            .unwrap();
            store
                .inner
                .caps
                .rename_exchange
                .store(swap, std::sync::atomic::Ordering::Relaxed);
            let path = d.path().join("refs").join("r.lock");
            let other = Holder {
                host: "elsewhere".into(),
                pid: 42,
                start_ms: now_ms(),
                nonce: "0123456789abcdef".into(),
                pin: None,
            };
            std::fs::write(&path, other.render()).unwrap();
            let fence = d.path().join("tmp").join(other.fence_name());
            std::fs::write(&fence, b"their new value\n").unwrap();
            let l = store
                .acquire_lock(&path, None, Wait::For(Duration::ZERO))
                .unwrap();
            assert!(
                !fence.exists(),
                "swap {swap}: the broken holder's commit is armed"
            );
            l.verify().unwrap();
            l.release();
            assert!(!path.exists());
        }
    }

    /// Where locks are broken by moving them aside, a holder refuses to commit in the last
    /// quarter of its lease; with an atomic swap the fence alone decides.
    #[test]
    fn a_holder_near_the_end_of_its_lease_refuses_to_commit_without_swaps() {
        let d = tempfile::tempdir().unwrap();
        let lease = Duration::from_mins(1);
        let store = Store::init(d.path(), crate::Options::default().lock_timeout(lease)).unwrap();
        let path = d.path().join("locks").join("x.lock");
        let l = store
            .acquire_lock(&path, None, Wait::For(Duration::ZERO))
            .unwrap();
        l.check_for_commit().unwrap();
        *l.lease_from.lock().unwrap() = Instant::now().checked_sub(lease * 4 / 5).unwrap();
        l.check_for_commit().unwrap(); // swapping: no clock consulted
        store
            .inner
            .caps
            .rename_exchange
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let e = l.check_for_commit().unwrap_err();
        assert!(matches!(e, Error::LockLost { .. }), "{e}");
        *l.lease_from.lock().unwrap() = Instant::now();
        l.check_for_commit().unwrap();
        l.release();
    }

    /// What a breaker or releaser killed between its rename and its unlink leaves in `locks/`
    /// is removed by gc once older than the lock timeout; nothing else there is.
    #[test]
    fn leftovers_of_breaks_and_releases_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), crate::Options::default()).unwrap();
        let locks = d.path().join("locks");
        let old = SystemTime::now() - Duration::from_hours(1);
        for name in [
            "broken.h.1.n",
            "released.h.2.n",
            "abandoned.h.3.n",
            "gc.lock",
            "other",
        ] {
            let f = std::fs::File::create(locks.join(name)).unwrap();
            f.set_modified(old).unwrap();
        }
        assert_eq!(store.clean_broken_locks(false), 3);
        let mut left: Vec<_> = std::fs::read_dir(&locks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["gc.lock", "other"]);
    }

    #[test]
    fn dead_holder_is_broken_and_live_one_waits() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(
            d.path(),
            crate::Options::default().lock_timeout(Duration::from_hours(1)),
        )
        .unwrap();
        let path = d.path().join("locks").join("x.lock");
        // A lock left by a dead process on this host.
        let dead = Holder {
            host: store.inner.host.clone(),
            pid: u32::MAX - 1,
            start_ms: 1,
            nonce: "dead".into(),
            pin: None,
        };
        std::fs::write(&path, dead.render()).unwrap();
        let l = store
            .acquire_lock(&path, None, Wait::For(Duration::ZERO))
            .unwrap();
        l.verify().unwrap();
        // Held by us (alive): a second acquirer times out with Locked naming the holder.
        let e = store
            .acquire_lock(&path, None, Wait::For(Duration::from_millis(30)))
            .unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&store.inner.host), "{e}");
        l.release();
        assert!(!path.exists());
    }
}

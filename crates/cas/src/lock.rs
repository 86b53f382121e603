//! Lock files that work across hosts: created exclusively, content and all, by publishing a
//! staged file without replacing (never flock/fcntl, which are unreliable across cluster
//! nodes), holding "host pid start nonce [pin]", broken safely when their holder is dead or
//! has stopped refreshing them (a lease).
//!
//! A lock's optional *pin* is the hash its holder is about to make reachable (the new value of
//! a ref or cache entry). gc reads pins as roots, so an object is never collected between the
//! moment a writer checks it exists and the moment the new pointer is visible
//! (docs/format.md §GC).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::layout;
use crate::stage::Staging;
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
    released: bool,
    /// Known to the process's clean-up on signals (`crate::cleanup`) while held.
    registered: Option<crate::cleanup::Registered>,
}

/// How a holder recognises its own lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ident {
    /// By the nonce in its holder line (every lock written whole).
    Nonce(String),
    /// By the file's device and inode: a gc lock created empty on a full filesystem, where
    /// not even a holder line fits (docs/format.md §4).
    Inode(u64, u64),
}

/// The pins found in lock files, and lock files that are not what they should be.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    pub(crate) pins: Vec<(PathBuf, Hash)>,
    pub(crate) damaged: Vec<crate::verify::Problem>,
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
        let mut staged = match self.stage_lock(&me.render()) {
            Ok(s) => Some(s),
            // Also when tmp/ itself is not a directory we may use (a symlink planted there):
            // gc still runs, and reports it.
            Err(e)
                if in_place_when_full
                    && (is_no_space(&e) || e.io_error().is_some_and(fs::is_hostile)) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let held = |ident: Ident| Lock {
            store: self.clone(),
            path: path.to_owned(),
            ident,
            released: false,
            registered: Some(crate::cleanup::register_lock(
                path,
                &me.nonce,
                &self.inner.root,
            )),
        };
        let mut backoff = Duration::from_micros(200);
        // A lock's age is its file's mtime, and publishing links the staging file as it is: one
        // written before a long wait would appear already old, and the next waiter would judge
        // it stale at once and break it. Its mtime is renewed while we wait.
        let mut staged_fresh = Instant::now();
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
                        let _ = fs::touch(s.file());
                        staged_fresh = Instant::now();
                    }
                    self.publish_small(s, path)
                }
                None => match self.create_lock_in_place(path, &me) {
                    Ok(Some(ident)) => return Ok(held(ident)),
                    Ok(None) => Ok(fs::Published::Existed),
                    Err(e) => Err(e),
                },
            };
            match published {
                Ok(fs::Published::Created) => return Ok(held(Ident::Nonce(me.nonce.clone()))),
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
                return Ok(held(Ident::Nonce(me.nonce.clone())));
            }
            if self.is_stale(holder.as_ref(), age) {
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

    /// A lock is stale when its holder is on this host and dead, or when it has not been
    /// refreshed for longer than the lease timeout.
    pub(crate) fn is_stale(&self, holder: Option<&Holder>, age: Duration) -> bool {
        if let Some(h) = holder {
            if h.host == self.inner.host && !fs::pid_alive(h.pid) {
                return true;
            }
        }
        age > self.inner.options.lock_timeout
    }

    /// Breaks a stale lock: rename it aside first, so of two breakers only one wins, then check
    /// that what we moved is the lock we judged (not a fresh one taken meanwhile).
    pub(crate) fn break_lock(&self, path: &Path, judged: Option<&Holder>) -> Result<()> {
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
        let ours_to_break = match (judged, &moved) {
            (Some(j), Some(m)) => j.nonce == m.nonce,
            // We judged an incomplete lock stale by age; accept only another incomplete one.
            (None, None) => true,
            _ => false,
        };
        if !ours_to_break {
            // We moved a live lock taken after our judgement: put it back if its name is free.
            // If it is not, its holder notices at commit time (`Lock::verify`) and fails.
            let _ = self
                .inner
                .root_dir
                .publish_noreplace(&aside, path, &self.inner.caps);
        }
        let _ = self.inner.root_dir.unlink(&aside);
        Ok(())
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
            out.damaged.push(crate::verify::Problem {
                path: p,
                reason: format!("cannot list: {e}"),
            });
        }
        for (p, kind) in walk.entries {
            if !p.to_string_lossy().ends_with(layout::LOCK_SUFFIX) || kind == fs::Kind::Dir {
                continue;
            }
            if kind != fs::Kind::File {
                out.damaged.push(crate::verify::Problem {
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
                Err(e) => out.damaged.push(crate::verify::Problem {
                    path: p,
                    reason: format!("cannot read lock: {e}"),
                }),
            }
        }
        out
    }

    /// Removes what lock breakers that died between their rename and unlink left in `locks/`
    /// (`broken.*`, once older than the lock timeout). Only regular files; returns how many.
    pub(crate) fn clean_broken_locks(&self, dry: bool) -> u64 {
        let root = &self.inner.root_dir;
        let dir = self.path(layout::LOCKS);
        let Ok(ents) = root.read_dir(&dir) else {
            return 0;
        };
        let mut n = 0;
        for (name, kind) in ents {
            if kind != fs::Kind::File || !fs::name_bytes(&name).starts_with(b"broken.") {
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
        // or removed by another client: read again from the name (bounded). Once it is gone
        // for good the error is NotFound, which callers handle.
        let mut attempt = 0;
        loop {
            match self.read_lock_once(path) {
                Err(e) if fs::is_stale(&e) && attempt < 100 => {
                    attempt += 1;
                    std::thread::yield_now();
                }
                r => return r,
            }
        }
    }

    fn read_lock_once(&self, path: &Path) -> io::Result<(Option<Holder>, Duration)> {
        read_lock_in(&self.inner.root_dir, path)
    }
}

/// Reads the lock file at `path` beneath `root` once (see [`Store::read_lock`]).
pub(crate) fn read_lock_in(root: &fs::Root, path: &Path) -> io::Result<(Option<Holder>, Duration)> {
    {
        let f = root.open_read(path)?;
        let age = f
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut bytes)?;
        Ok((Holder::parse(&String::from_utf8_lossy(&bytes)), age))
    }
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

    /// Renews the lease (mtime = now); long holders call this periodically.
    pub(crate) fn refresh(&self) -> Result<()> {
        self.store
            .inner
            .root_dir
            .touch_now(&self.path)
            .map_err(Error::at("refresh lock", &self.path))
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
        if self.verify().is_ok() {
            let _ = self.store.inner.root_dir.unlink(&self.path);
        }
        self.registered = None;
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
            start_ms: 1,
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

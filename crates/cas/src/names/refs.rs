//! Named refs: `refs/NAME` holds `"<64-hex>\n"`, replaced atomically under a `NAME.lock`
//! (compare-and-swap), with an append-only history in `logs/refs/NAME`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::{Hash, HEX_LEN};
use crate::names::lock::Wait;
use crate::store::handle::read_small;
use crate::store::layout;
use crate::Store;

/// Longest ref name, in bytes.
pub const MAX_REF_NAME: usize = 1024;
/// Longest segment of a ref name, in bytes (leaves room for `.lock` within `NAME_MAX`).
pub const MAX_REF_SEGMENT: usize = 200;

/// What a ref must hold for an update to go ahead (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever it holds, or nothing.
    Any,
    /// The ref must not exist.
    Absent,
    /// The ref must hold exactly this hash.
    Value(Hash),
}

/// One line of a ref's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RefLogEntry {
    /// Value before the change (`None`: did not exist).
    pub old: Option<Hash>,
    /// Value after the change (`None`: removed).
    pub new: Option<Hash>,
    /// Unix time of the change, in seconds.
    pub time: u64,
    /// Host that made it.
    pub host: String,
    /// User that made it.
    pub user: String,
    /// Free-form message.
    pub message: String,
}

impl RefLogEntry {
    /// The entry as one line of `logs/refs/NAME`, without its newline (docs/format.md
    /// "Refs"): `OLD NEW TIME HOST USER<TAB>MESSAGE`, an absent value as 64 zeros. The one
    /// encoder: the log's writer and the round-trip tests use it, [`parse_log_line`] reads it.
    pub(crate) fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}\t{}",
            log_field(self.old.as_ref()),
            log_field(self.new.as_ref()),
            self.time,
            self.host,
            self.user,
            self.message
        )
    }
}

/// Checks a ref name against the rules: `/`-separated segments of `[A-Za-z0-9._-]`; no empty,
/// `.`, `..` or dot-leading segment; no segment ending in `.lock`; at most
/// [`MAX_REF_SEGMENT`] bytes a segment and [`MAX_REF_NAME`] in all. Nothing else is needed to
/// make the name safe as a path below `refs/`.
///
/// ```
/// assert!(cas::validate_ref_name("builds/x86_64/v1.2").is_ok());
/// assert!(cas::validate_ref_name("../escape").is_err());
/// assert!(cas::validate_ref_name("main.lock").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidRefName`] naming the rule broken.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidRefName {
            name: crate::hash::truncate_for_display(name),
            reason,
        })
    };
    if name.is_empty() {
        return bad("a ref name cannot be empty");
    }
    if name.len() > MAX_REF_NAME {
        return bad("a ref name is at most 1024 bytes");
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return bad("empty segment (leading, trailing or double '/')");
        }
        if seg.len() > MAX_REF_SEGMENT {
            return bad("a segment is at most 200 bytes");
        }
        if seg.starts_with('.') {
            return bad("a segment cannot start with '.' (this also rules out '.' and '..')");
        }
        if seg.ends_with(layout::LOCK_SUFFIX) {
            return bad("a segment cannot end in '.lock'");
        }
        if !seg
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return bad(
                "only the characters A-Z a-z 0-9 . _ - and '/' between segments are allowed",
            );
        }
    }
    Ok(())
}

/// Parses a ref file's content: exactly 64 lowercase hex characters and a newline.
pub(crate) fn parse_ref_content(text: &str) -> Option<Hash> {
    let h = text.strip_suffix('\n')?;
    if h.len() != HEX_LEN {
        return None;
    }
    Hash::parse(h).ok()
}

const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub(crate) fn log_field(h: Option<&Hash>) -> String {
    h.map_or_else(|| ZERO.to_owned(), ToString::to_string)
}

fn clean_message(m: &str) -> String {
    m.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One line of a ref's history as [`Store::reflog_each`] reads it: an entry, or a line that
/// cannot be parsed (named by path and position), which was skipped.
pub type RefLogLine = std::result::Result<RefLogEntry, crate::Problem>;

/// A failure while reading a reflog forwards: of the read itself, or the caller's.
enum ReadOrStop {
    Read(std::io::Error),
    Stop(Error),
}

impl From<std::io::Error> for ReadOrStop {
    fn from(e: std::io::Error) -> Self {
        ReadOrStop::Read(e)
    }
}

/// Parses one reflog line: `OLD NEW TIME HOST USER\tMESSAGE`.
pub(crate) fn parse_log_line(line: &str) -> Option<RefLogEntry> {
    let (head, message) = line.split_once('\t')?;
    let mut it = head.split(' ');
    let hash = |s: &str| -> Option<Option<Hash>> {
        if s == ZERO {
            Some(None)
        } else {
            Hash::parse(s).ok().map(Some)
        }
    };
    let old = hash(it.next()?)?;
    let new = hash(it.next()?)?;
    let time = it.next()?.parse().ok()?;
    let host = it.next()?.to_owned();
    let user = it.next()?.to_owned();
    if it.next().is_some() {
        return None;
    }
    Some(RefLogEntry {
        old,
        new,
        time,
        host,
        user,
        message: message.to_owned(),
    })
}

impl Store {
    fn ref_path(&self, name: &str) -> PathBuf {
        layout::ref_paths(&self.inner.root, name).0
    }

    fn ref_lock_path(&self, name: &str) -> PathBuf {
        layout::ref_paths(&self.inner.root, name).1
    }

    fn ref_log_path(&self, name: &str) -> PathBuf {
        layout::ref_paths(&self.inner.root, name).2
    }

    /// Reads a ref. `Ok(None)` if it does not exist.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"v1")?;
    /// store.set_ref("release/latest", h, cas::Expect::Absent)?;
    /// assert_eq!(store.get_ref("release/latest")?, Some(h));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidRefName`]; [`Error::Malformed`] if the file does not hold a hash.
    pub fn get_ref(&self, name: &str) -> Result<Option<Hash>> {
        validate_ref_name(name)?;
        self.names().get_ref(name)
    }

    /// Reads a ref file beneath the root. A directory at the name (a prefix of other refs) or
    /// a file at a prefix of it is "no such ref"; a symlink, FIFO, socket or device, or bytes
    /// that are not a ref, are [`Error::Malformed`] naming the file — never followed, never
    /// waited on.
    pub(crate) fn read_ref_file(&self, name: &str) -> Result<Option<Hash>> {
        let path = self.ref_path(name);
        let malformed = |reason: String| Error::Malformed {
            what: "ref",
            path: path.clone(),
            reason,
        };
        match read_small(&self.inner.root_dir, &path) {
            Ok(text) => parse_ref_content(&text).map(Some).ok_or_else(|| {
                malformed("expected 64 lowercase hex characters and a newline".into())
            }),
            Err(e) if fs::is_not_found(&e) => Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                Err(malformed(
                    "its path goes through a symbolic link (never followed in a store)".into(),
                ))
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidData
                    || e.kind() == std::io::ErrorKind::IsADirectory =>
            {
                match self.inner.root_dir.lstat(&path) {
                    Ok(m) if m.kind == fs::Kind::Dir => Ok(None),
                    Ok(m) => Err(malformed(format!("is {}", m.kind.describe()))),
                    Err(_) => Err(malformed(e.to_string())),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Err(malformed(e.to_string())),
            Err(e) => Err(Error::io("read ref", &path, e)),
        }
    }

    /// Sets a ref to `new` if its current value matches `expect`, atomically: readers see the
    /// old or the new value, never a torn or missing ref. The object must exist (if gc had
    /// condemned it to trash, it is moved back first). Returns the previous value.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let a = store.put_bytes(b"a")?;
    /// let b = store.put_bytes(b"b")?;
    /// store.set_ref("r", a, cas::Expect::Absent)?;
    /// let e = store.set_ref("r", b, cas::Expect::Value(b)).unwrap_err();
    /// assert!(e.is_conflict());
    /// assert_eq!(store.set_ref("r", b, cas::Expect::Value(a))?, Some(a));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidRefName`]; [`Error::Conflict`] if the expectation fails;
    /// [`Error::NotFound`] if the object is not in the store; [`Error::Locked`] if another
    /// process holds the ref's lock for longer than the lock timeout.
    pub fn set_ref(&self, name: &str, new: Hash, expect: Expect) -> Result<Option<Hash>> {
        self.set_ref_msg(name, new, expect, "set")
    }

    /// [`Store::set_ref`] with a message for the reflog.
    ///
    /// # Errors
    /// As [`Store::set_ref`].
    pub fn set_ref_msg(
        &self,
        name: &str,
        new: Hash,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        validate_ref_name(name)?;
        self.names().set_ref(name, new, expect, message)
    }

    /// Points `name` at an object that was just put, for "put then name it" in one step. A gc
    /// with a zero grace period may collect the object between the put and this update (the
    /// update then fails with [`Error::NotFound`], never leaving a dangling ref): with
    /// `reput`, the object is put again and the update retried (at most 5 times). Returns the
    /// hash the ref points to.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let put = || store.put_bytes(b"release notes");
    /// let h = store.set_ref_after_put("notes", put()?, "put", Some(&mut || put()))?;
    /// assert_eq!(store.get_ref("notes")?, Some(h));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::set_ref`]; the error of `reput`.
    pub fn set_ref_after_put(
        &self,
        name: &str,
        mut hash: Hash,
        message: &str,
        mut reput: Option<&mut dyn FnMut() -> Result<Hash>>,
    ) -> Result<Hash> {
        let mut attempts = 0;
        loop {
            match self.set_ref_msg(name, hash, Expect::Any, message) {
                Err(e) if e.is_not_found() && attempts < 5 => {
                    let Some(again) = reput.as_mut() else {
                        return Err(e);
                    };
                    attempts += 1;
                    hash = again()?;
                }
                r => return r.map(|_| hash),
            }
        }
    }

    /// Removes a ref if its current value matches `expect`. Returns the removed value.
    ///
    /// # Errors
    /// [`Error::RefNotFound`] if it does not exist; otherwise as [`Store::set_ref`].
    pub fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash> {
        validate_ref_name(name)?;
        self.names().remove_ref(name, expect)
    }

    /// [`Store::remove_ref`] in this store's own `refs/` (the local names backend).
    pub(crate) fn remove_ref_here(&self, name: &str, expect: Expect) -> Result<Hash> {
        match self.update_ref(name, None, expect, "remove")? {
            Some(old) => Ok(old),
            None => Err(Error::RefNotFound {
                name: name.to_owned(),
            }),
        }
    }

    pub(crate) fn update_ref(
        &self,
        name: &str,
        new: Option<Hash>,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        let lock_path = self.ref_lock_path(name);
        let wait = Wait::For(self.inner.options.lock_timeout + Duration::from_secs(1));
        // The lock pins `new` for gc from here until the ref is visible.
        let lock = self
            .acquire_lock(&lock_path, new, wait)
            .map_err(|e| conflict_with_prefix(e, name))?;
        // A ref that cannot be read (garbage, a FIFO, a symlink) is replaced by a plain set;
        // a compare-and-swap against it, or a removal, fails naming the file (set it first).
        let current = match (self.read_ref_file(name), expect, new) {
            (Ok(c), _, _) => c,
            (Err(Error::Malformed { .. }), Expect::Any, Some(_)) => None,
            (Err(e), _, _) => return Err(e),
        };
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Value(v) => current == Some(v),
        };
        if !ok {
            return Err(Error::Conflict {
                what: "ref",
                name: name.to_owned(),
                expected: match expect {
                    Expect::Value(v) => Some(v),
                    _ => None,
                },
                actual: current,
            });
        }
        let path = self.ref_path(name);
        if new.is_none() && current.is_none() {
            return Ok(None);
        }
        if let Some(h) = new {
            self.ensure_closure(&h)?;
        }
        // The log is opened before the ref changes: a log that cannot be opened (a symlink
        // planted at it, a FIFO) fails the update before anything happened.
        let mut log = self.open_reflog(name)?;
        // Fenced: the commit itself proves the lock is still ours (docs/format.md "Locks
        // (leases)").
        if let Some(h) = new {
            self.replace_small_fenced(&path, format!("{h}\n").as_bytes(), self.durability(), &lock)
                .map_err(|e| conflict_with_prefix(e, name))?;
        } else {
            self.remove_small_fenced(&path, &lock)?;
        }
        let line = self.reflog_line(current.as_ref(), new.as_ref(), message);
        // One write of one line, under the ref's lock: lines never interleave.
        log.write_all(line.as_bytes())
            .map_err(Error::at("append to reflog", &self.ref_log_path(name)))?;
        lock.release();
        Ok(current)
    }

    fn reflog_line(&self, old: Option<&Hash>, new: Option<&Hash>, message: &str) -> String {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = RefLogEntry {
            old: old.copied(),
            new: new.copied(),
            time: secs,
            host: self.inner.host.clone(),
            user: fs::username(),
            message: clean_message(message),
        };
        entry.to_line() + "\n"
    }

    /// Opens a ref's log for appending (`O_APPEND | O_CREAT`, beneath the root, never through
    /// a symlink, refused unless a regular file).
    fn open_reflog(&self, name: &str) -> Result<std::fs::File> {
        let path = self.ref_log_path(name);
        let root = &self.inner.root_dir;
        let f = match root.open_append(&path, self.file_mode()) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => {
                self.ensure_dir(path.parent().unwrap_or(&path))?;
                root.open_append(&path, self.file_mode())
                    .map_err(Error::at("open reflog", &path))?
            }
            Err(e) => return Err(Error::io("open reflog", &path, e)),
        };
        if f.metadata().is_ok_and(|m| m.len() == 0) {
            // Just created (by us, or by another user who could not fix it: best effort).
            let _ = self.fix_shared_mode(&f);
        }
        Ok(f)
    }

    /// The history of a ref, oldest first. Lines that cannot be parsed are skipped (see
    /// [`Store::reflog_report`] to hear about them).
    ///
    /// # Errors
    /// [`Error::InvalidRefName`]; I/O errors reading the log.
    pub fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>> {
        Ok(self.reflog_report(name)?.0)
    }

    /// The history of a ref, oldest first, and each line that cannot be parsed, by path and
    /// line number (the log is read beneath the store's root, never through a symlink).
    /// Collects the whole log: [`Store::reflog_each`] streams it.
    ///
    /// # Errors
    /// [`Error::InvalidRefName`]; I/O errors reading the log.
    pub fn reflog_report(&self, name: &str) -> Result<(Vec<RefLogEntry>, Vec<crate::Problem>)> {
        let mut entries = Vec::new();
        let mut damaged = Vec::new();
        self.reflog_each(name, None, |line| {
            match line {
                Ok(e) => entries.push(e),
                Err(p) => damaged.push(p),
            }
            Ok(())
        })?;
        Ok((entries, damaged))
    }

    /// Calls `f` with each line of a ref's history, oldest first, as it is read: an entry, or
    /// a line that cannot be parsed (by path and position; skipped, never fatal). Memory is
    /// one line (at most 1 MiB, longer lines are reported as damaged), whatever the log's
    /// size. With `last = Some(n)`, only the last `n` lines, read backwards from the end of
    /// the log in blocks: the work is that of those lines, not of the log. Lines appended
    /// while reading are not read. Through a tier, the upstream's log.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// for v in [b"1", b"2", b"3"] {
    ///     let h = store.put_bytes(v)?;
    ///     store.set_ref("r", h, cas::Expect::Any)?;
    /// }
    /// let mut news = Vec::new();
    /// store.reflog_each("r", Some(2), |line| {
    ///     news.push(line.expect("an undamaged log").new);
    ///     Ok(())
    /// })?;
    /// assert_eq!(news, [Some(cas::Hash::of(b"2")), Some(cas::Hash::of(b"3"))]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidRefName`]; I/O errors reading the log; whatever `f` returns (which
    /// stops the reading).
    pub fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        mut f: impl FnMut(RefLogLine) -> Result<()>,
    ) -> Result<()> {
        self.reflog_each_dyn(name, last, &mut f)
    }

    pub(crate) fn reflog_each_dyn(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(RefLogLine) -> Result<()>,
    ) -> Result<()> {
        validate_ref_name(name)?;
        self.names().reflog_each(name, last, f)
    }

    /// [`Store::reflog_each`] of this store's own `logs/refs/` (the local names backend).
    pub(crate) fn reflog_each_here(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(RefLogLine) -> Result<()>,
    ) -> Result<()> {
        let path = self.ref_log_path(name);
        let file = match self.inner.root_dir.open_read(&path) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io("read reflog", &path, e)),
        };
        let read_err = |e| Error::io("read reflog", &path, e);
        let len = file.metadata().map_err(read_err)?.len();
        let mut one = |raw: crate::names::reflog::RawLine| -> Result<()> {
            let at = match raw.number {
                Some(n) => format!("line {n}"),
                None => format!("the line at byte {}", raw.offset),
            };
            let parsed = match raw.bytes {
                None => Err(format!(
                    "{at} is longer than {} bytes (skipped)",
                    crate::names::reflog::MAX_LINE
                )),
                Some(b) => parse_log_line(&String::from_utf8_lossy(&b))
                    .ok_or_else(|| format!("{at} is not a reflog line (skipped)")),
            };
            f(parsed.map_err(|reason| crate::Problem {
                path: path.clone(),
                reason,
            }))
        };
        match last {
            None => crate::names::reflog::for_each_line(&file, len, |raw| {
                one(raw).map_err(ReadOrStop::Stop)
            })
            .map_err(|e| match e {
                ReadOrStop::Read(e) => read_err(e),
                ReadOrStop::Stop(e) => e,
            }),
            Some(n) => {
                for raw in crate::names::reflog::last_lines(&file, len, n).map_err(read_err)? {
                    one(raw)?;
                }
                Ok(())
            }
        }
    }

    /// All refs whose name starts with `prefix` (`""` for all), sorted by name.
    ///
    /// # Errors
    /// The first damaged ref or unlistable directory under `refs/` (see
    /// [`Store::refs_report`] to list past them).
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>> {
        self.names().list_refs(prefix)
    }

    /// [`Store::list_refs`] of this store's own `refs/` (the local names backend).
    pub(crate) fn list_refs_here(&self, prefix: &str) -> Result<Vec<(String, Hash)>> {
        let scan = self.scan_refs(prefix);
        if let Some((path, reason)) = scan.damaged.into_iter().next() {
            return Err(Error::Malformed {
                what: "ref",
                path,
                reason,
            });
        }
        Ok(scan.refs)
    }

    /// All refs whose name starts with `prefix`, sorted by name, and every damaged ref (a
    /// symlink, FIFO or garbage at a ref name, a directory that cannot be listed), by path.
    /// A tiered store lists its upstream's refs, where its refs live (as
    /// [`Store::get_ref`] reads them).
    ///
    /// # Errors
    /// Only for a tiered store: [`Error::Upstream`] if the upstream cannot be reached.
    pub fn refs_report(&self, prefix: &str) -> Result<RefsReport> {
        self.names().refs_report(prefix)
    }

    /// [`Store::refs_report`] of this store's own `refs/` (the local names backend).
    pub(crate) fn refs_report_here(&self, prefix: &str) -> RefsReport {
        let scan = self.scan_refs(prefix);
        let damaged = scan
            .damaged
            .into_iter()
            .map(|(path, reason)| crate::Problem { path, reason })
            .collect();
        (scan.refs, damaged)
    }

    /// Walks `refs/` beneath the root, never through a symlink.
    pub(crate) fn scan_refs(&self, prefix: &str) -> RefScan {
        let root = self.path(layout::REFS);
        let walk = self.inner.root_dir.walk_tree(&root);
        let mut out = RefScan::default();
        for (p, e) in walk.errors {
            out.damaged.push((p, format!("cannot list: {e}")));
        }
        for (p, kind) in walk.entries {
            if kind == fs::Kind::Dir {
                continue;
            }
            let Some(name) = p.strip_prefix(&root).ok().and_then(|r| r.to_str()) else {
                continue;
            };
            if !name.starts_with(prefix) || validate_ref_name(name).is_err() {
                continue; // locks, foreign files
            }
            match self.read_ref_file(name) {
                Ok(Some(h)) => out.refs.push((name.to_owned(), h)),
                Ok(None) => {}
                Err(e) => out.damaged.push((p, crate::maint::mark::error_reason(&e))),
            }
        }
        out.refs.sort();
        out
    }
}

/// What [`Store::refs_report`] returns: the refs found (name, hash), sorted by name, and the
/// damaged ones by path.
pub type RefsReport = (Vec<(String, Hash)>, Vec<crate::Problem>);

/// What [`Store::scan_refs`] found.
#[derive(Debug, Default)]
pub(crate) struct RefScan {
    pub(crate) refs: Vec<(String, Hash)>,
    pub(crate) damaged: Vec<(PathBuf, String)>,
}

/// `refs/a/b` cannot exist beside a ref `refs/a` (and vice versa): say so instead of ENOTDIR.
fn conflict_with_prefix(e: Error, name: &str) -> Error {
    let notdir = rustix::io::Errno::NOTDIR.raw_os_error();
    match e {
        Error::Io { ref source, .. }
            if source.raw_os_error() == Some(notdir)
                || source.kind() == std::io::ErrorKind::IsADirectory
                || source.kind() == std::io::ErrorKind::DirectoryNotEmpty =>
        {
            Error::InvalidRefName {
                name: name.to_owned(),
                reason: "a ref cannot be both a name and a prefix of other refs (like a and a/b)",
            }
        }
        e => e,
    }
}

#[cfg(test)]
#[allow(clippy::case_sensitive_file_extension_comparisons)] // ref names are case-sensitive
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn name_rules() {
        for ok in ["a", "a/b", "A-z_0.9", "v1.2.3", "x.locked"] {
            validate_ref_name(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", ".hidden", "a/.b", "a.lock", "a.lock/b",
            "a b", "a\\b", "a\0b", "é",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_ref_name(&"a".repeat(201)).is_err());
        assert!(validate_ref_name(&"a/".repeat(600)).is_err());
    }

    #[test]
    fn log_lines_round_trip() {
        let e = RefLogEntry {
            old: None,
            new: Some(Hash::of(b"x")),
            time: 5,
            host: "h".into(),
            user: "u".into(),
            message: "set by test".into(),
        };
        let line = e.to_line();
        assert_eq!(parse_log_line(&line), Some(e));
    }

    proptest! {
        #[test]
        fn validation_never_panics_and_accepted_names_stay_inside(name in "[a-z./\\\\-]{0,12}|.{0,40}") {
            if validate_ref_name(&name).is_ok() {
                let base = std::path::Path::new("/store/refs");
                let p = base.join(&name);
                // Lexically: no component may climb or be absolute, so the path stays below.
                for c in std::path::Path::new(&name).components() {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)), "{name:?}");
                }
                prop_assert!(p.starts_with(base));
                prop_assert!(!name.ends_with(".lock"));
            }
        }

        #[test]
        fn ref_content_parse_never_panics(s in ".*") {
            let _ = parse_ref_content(&s);
            let _ = parse_log_line(&s);
        }
    }
}

//! The stat cache of `put -r` (docs/format.md has a section of that name): which hash a
//! file had when it was last stored, keyed by what `lstat` says about it, so an unchanged
//! tree is re-put without reading its files — as git's index does for `git add`.
//!
//! It is a hint, never trusted beyond that:
//! - an entry is used only if the file's device, inode, size, mtime and ctime (nanoseconds)
//!   are all equal to what was recorded — any write changes the ctime, which no user can set;
//! - only if the object it names is in the store (its mtime is refreshed, as a put of
//!   existing bytes does);
//! - never for a file whose mtime or ctime is not older than the run that hashed it, minus a
//!   margin of 2 s (the racy-git rule): such a file could have been rewritten in the same
//!   clock tick after it was hashed, keeping its timestamps. Those entries are not written;
//!   the next run hashes the file again and records it then;
//! - a cache file that is missing, damaged, of another version, not a regular file, not owned
//!   by this user or writable by anyone else is an empty cache (reported as a warning, except
//!   when missing).
//!
//! One file per user and host (`cache/statcache.UID.HOST`): device and inode numbers mean
//! something only on one host, and a file another member of a shared store could write would
//! let them choose what `put -r` stores for your files.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::SystemTime;

use crate::fs;
use crate::hash::{Hash, HASH_LEN};
use crate::store::layout;
use crate::{Durability, Store};

/// First bytes of a stat cache file.
pub(crate) const MAGIC: &[u8; 8] = b"CASSTAT\0";
/// The encoding version written and read.
pub(crate) const VERSION: u32 = 1;
/// Magic, version, reserved, written-at, count.
const HEADER: usize = 8 + 4 + 4 + 8 + 8;
/// dev, ino, size, mtime, ctime, hash.
const ENTRY: usize = 5 * 8 + HASH_LEN;
/// The trailing BLAKE3 of everything before it.
const TRAILER: usize = HASH_LEN;
/// Most entries kept (72 MiB of cache file): beyond, only the last run's entries are kept.
const MAX_ENTRIES: usize = 1 << 20;
/// Timestamps within this much of the hashing run's start are "racy" (covers coarse kernel
/// clocks and filesystems with 1 s or 2 s timestamp granularity).
const MARGIN_NS: i64 = 2_000_000_000;

/// An object whose mtime is younger than this is not refreshed again when the stat cache
/// finds it (docs/format.md, "The stat cache of `put -r`"): it is young for gc already,
/// within this much of the grace period.
const FRESH: std::time::Duration = std::time::Duration::from_mins(1);

/// What `lstat` says about a file, as the cache keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) ctime_ns: i64,
}

impl StatKey {
    /// From `fstatat` of a file being stored; `None` for timestamps that do not fit in
    /// nanoseconds since 1970 as i64 (before 1678 or after 2262): such files are always hashed.
    pub(crate) fn of_src(st: &fs::SrcStat) -> Option<StatKey> {
        let ns = |(s, n): (i64, i64)| s.checked_mul(1_000_000_000)?.checked_add(n);
        Some(StatKey {
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mtime_ns: ns(st.mtime)?,
            ctime_ns: ns(st.ctime)?,
        })
    }

    /// True if both timestamps are older than `limit_ns` minus the margin.
    fn settled_before(&self, limit_ns: i64) -> bool {
        let limit = limit_ns.saturating_sub(MARGIN_NS);
        self.mtime_ns < limit && self.ctime_ns < limit
    }
}

/// Encodes a cache file (docs/format.md, "The stat cache of `put -r`").
#[cfg(test)]
pub(crate) fn encode(written_ns: i64, entries: &[(StatKey, Hash)]) -> Vec<u8> {
    encode_iter(written_ns, entries.len(), entries.iter().copied())
}

/// Encodes a cache file of `count` entries, as `entries` yields them.
fn encode_iter(
    written_ns: i64,
    count: usize,
    entries: impl Iterator<Item = (StatKey, Hash)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + count * ENTRY + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&written_ns.to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    for (k, h) in entries {
        out.extend_from_slice(&k.dev.to_le_bytes());
        out.extend_from_slice(&k.ino.to_le_bytes());
        out.extend_from_slice(&k.size.to_le_bytes());
        out.extend_from_slice(&k.mtime_ns.to_le_bytes());
        out.extend_from_slice(&k.ctime_ns.to_le_bytes());
        out.extend_from_slice(h.as_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decodes a cache file: (written-at, entries). Anything but exactly the encoding — other
/// magic or version, a length that does not match the count, a checksum that does not match —
/// is refused with a reason. Never panics.
#[cfg(test)]
pub(crate) fn decode(bytes: &[u8]) -> Result<(i64, Vec<(StatKey, Hash)>), String> {
    let (written_ns, count) = check(bytes)?;
    Ok((
        written_ns,
        (0..count).map(|i| record_at(bytes, i)).collect(),
    ))
}

/// The entry `i` of a checked cache file.
fn record_at(bytes: &[u8], i: usize) -> (StatKey, Hash) {
    let e = &bytes[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
    let at = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or([0; 8]));
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(&e[40..40 + HASH_LEN]);
    (
        StatKey {
            dev: at(0),
            ino: at(8),
            size: at(16),
            mtime_ns: at(24) as i64,
            ctime_ns: at(32) as i64,
        },
        Hash::from_bytes(h),
    )
}

/// The (device, inode) of entry `i` of a checked cache file.
fn slot_at(bytes: &[u8], i: usize) -> (u64, u64) {
    let o = HEADER + i * ENTRY;
    let at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    (at(o), at(o + 8))
}

/// Checks a cache file as [`decode`] does, without decoding it: (written-at, count).
fn check(bytes: &[u8]) -> Result<(i64, usize), String> {
    if bytes.len() < HEADER + TRAILER {
        return Err(format!("{} bytes, shorter than a header", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a stat cache (bad magic)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let version = u32_at(8);
    if version != VERSION {
        return Err(format!("stat cache version {version} is not supported"));
    }
    let written_ns = u64_at(16) as i64;
    let count = u64_at(24);
    let want = usize::try_from(count)
        .ok()
        .filter(|&c| c <= MAX_ENTRIES)
        .map(|c| HEADER + c * ENTRY + TRAILER);
    if want != Some(bytes.len()) {
        return Err(format!(
            "{} bytes do not hold the {count} entries the header announces",
            bytes.len()
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (truncated or damaged)".into());
    }
    // `want` matched: the count fits in usize.
    Ok((written_ns, usize::try_from(count).unwrap_or(0)))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The stat cache of one `put -r` run.
///
/// In memory it is the cache file itself (72 bytes per entry, sorted by device and inode,
/// found by binary search) with two bits per entry (used by this run; superseded), and what
/// this run learnt beside it (72 bytes per file hashed): a re-put of an unchanged tree costs
/// the file's size and nothing more. A hash map of entries cost 150–300 bytes per file, more
/// than the walk it saved (issue 26).
pub(crate) struct StatCache {
    path: PathBuf,
    /// The cache file read (its entries sorted by (device, inode), checked at load), or empty.
    loaded: Vec<u8>,
    /// Its number of entries.
    count: usize,
    /// Per loaded entry: looked up or confirmed by this run (kept when trimming).
    touched: Vec<u64>,
    /// Per loaded entry: superseded (re-recorded, or racy): never used, not written back.
    dead: Vec<u64>,
    /// Recorded by this run and not in `loaded` as it is (80 bytes each).
    added: Added,
    /// When this run started, before any file was looked at.
    run_start_ns: i64,
    dirty: bool,
    /// `objects/xx` held open once used (`None` inside: could not be opened), so the
    /// existence probe of a hit is one `fstatat`; shared by the probing threads of a walk.
    fanouts: Vec<std::sync::OnceLock<Option<OwnedFd>>>,
    /// Fan-out directories (first hash byte) of the objects it found present, for a `full`
    /// put to sync once ([`crate::write::batch::Batch::note_found`]).
    found: Vec<std::sync::atomic::AtomicBool>,
    /// Files whose hash came from the cache.
    pub(crate) hits: u64,
    /// Files that were read and hashed.
    pub(crate) hashed: u64,
    /// Why the cache file was not used or not written, if it was not.
    pub(crate) warning: Option<String>,
}

impl StatCache {
    /// Reads this user's cache file of `store`. Never fails: a bad cache is an empty one,
    /// with a warning.
    pub(crate) fn load(store: &Store) -> StatCache {
        let run_start_ns = now_ns();
        let name = format!("statcache.{}.{}", fs::uid(), store.inner.host);
        let path = store.path(layout::CACHE).join(name);
        let mut c = StatCache {
            path,
            loaded: Vec::new(),
            count: 0,
            touched: Vec::new(),
            dead: Vec::new(),
            added: Added::default(),
            run_start_ns,
            dirty: false,
            fanouts: (0..256).map(|_| std::sync::OnceLock::new()).collect(),
            found: (0..256)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
            hits: 0,
            hashed: 0,
            warning: None,
        };
        // A missing cache (`Err(None)`) is simply empty.
        if let Err(Some(why)) = c.read(store) {
            {
                c.warning = Some(format!(
                    "ignoring the stat cache {}: {why}; every file is hashed",
                    c.path.display()
                ));
                c.loaded = Vec::new();
                c.count = 0;
                c.touched.clear();
                c.dead.clear();
                c.dirty = true; // replace it with a good one
            }
        }
        c
    }

    fn read(&mut self, store: &Store) -> Result<(), Option<String>> {
        let root = &store.inner.root_dir;
        let file = match root.open_read(&self.path) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => return Err(None),
            Err(e) => return Err(Some(e.to_string())),
        };
        let meta = fs::Root::fmeta(&file).map_err(|e| Some(e.to_string()))?;
        if meta.uid != fs::uid() || meta.mode & 0o022 != 0 {
            return Err(Some(
                "it is not owned by this user, or others may write it".into(),
            ));
        }
        let max = (HEADER + MAX_ENTRIES * ENTRY + TRAILER) as u64;
        if meta.len > max {
            return Err(Some(format!("{} bytes, larger than any cache", meta.len)));
        }
        let bytes = fs::read_len(&file, meta.len).map_err(|e| Some(e.to_string()))?;
        let (written_ns, count) = check(&bytes).map_err(Some)?;
        // Sorted, each slot once (as `save` writes it): binary search relies on it.
        if (1..count).any(|i| slot_at(&bytes, i - 1) >= slot_at(&bytes, i)) {
            return Err(Some("entries out of order".into()));
        }
        // The racy-git rule: entries are trusted only if older than the run that wrote them
        // (which is also no later than the file's own mtime).
        let file_ns = meta
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let limit = written_ns.min(file_ns);
        self.touched = vec![0; count.div_ceil(64)];
        self.dead = vec![0; count.div_ceil(64)];
        for i in 0..count {
            if !record_at(&bytes, i).0.settled_before(limit) {
                set_bit(&mut self.dead, i);
                self.dirty = true;
            }
        }
        self.loaded = bytes;
        self.count = count;
        Ok(())
    }

    /// True if the cache holds no entry (none loaded, none recorded yet).
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0 && self.added.runs.is_empty()
    }

    /// The index of the loaded entry for this (device, inode), dead or alive.
    fn find(&self, slot: (u64, u64)) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match slot_at(&self.loaded, mid).cmp(&slot) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The live loaded entry for this (device, inode).
    fn live(&self, slot: (u64, u64)) -> Option<(usize, StatKey, Hash)> {
        let i = self.find(slot)?;
        if bit(&self.dead, i) {
            return None;
        }
        let (k, h) = record_at(&self.loaded, i);
        Some((i, k, h))
    }

    /// The hash recorded for a file with this `lstat`, if every field matches and its object
    /// is in the store (refreshing the object's mtime, as a put of existing bytes does).
    #[cfg(test)]
    pub(crate) fn lookup(&mut self, store: &Store, key: &StatKey) -> Option<Hash> {
        let hash = self.candidate(key)?;
        if !self.object_present(store, &hash, key.size) {
            return None;
        }
        self.note_hit(key);
        Some(hash)
    }

    /// Moves this run's start `ns` later, so files made by a test count as settled.
    #[cfg(test)]
    pub(crate) fn start_later_for_test(&mut self, ns: i64) {
        self.run_start_ns += ns;
    }

    /// The hash recorded for a file with this `lstat`, if every field matches — before its
    /// object is known to be in the store ([`StatCache::object_present`]). Read-only, for the
    /// probing threads of a walk.
    pub(crate) fn candidate(&self, key: &StatKey) -> Option<Hash> {
        if let Some((k, h)) = self.added.get((key.dev, key.ino)) {
            return h.filter(|_| k == *key);
        }
        self.live((key.dev, key.ino))
            .filter(|(_, k, _)| k == key)
            .map(|(_, _, h)| h)
    }

    /// Counts a hit: the file with this `lstat` was answered by [`StatCache::candidate`] and
    /// its object is present. Keeps the entry when the cache is trimmed.
    pub(crate) fn note_hit(&mut self, key: &StatKey) {
        if let Some((i, _, _)) = self.live((key.dev, key.ino)) {
            set_bit(&mut self.touched, i);
        }
        self.hits += 1;
    }

    /// Records that the file with this `lstat` (taken before it was read) hashed to `hash`.
    /// A file whose timestamps are too recent is not recorded (see the module docs).
    pub(crate) fn record(&mut self, key: &StatKey, hash: Hash) {
        self.hashed += 1;
        let slot = (key.dev, key.ino);
        let old = self.live(slot);
        if !key.settled_before(self.run_start_ns) {
            if let Some((i, _, _)) = old {
                set_bit(&mut self.dead, i);
                self.dirty = true;
            }
            if self.added.get(slot).is_some() {
                // A slot recorded earlier in this run (a hard link) goes too.
                self.added.push(*key, None);
            }
            return;
        }
        match old {
            Some((i, k, h)) if k == *key && h == hash => set_bit(&mut self.touched, i),
            _ => {
                if let Some((i, _, _)) = old {
                    set_bit(&mut self.dead, i);
                }
                self.added.push(*key, Some(hash));
                self.dirty = true;
            }
        }
    }

    /// True if the name of `hash` holds our object of `len` bytes, its mtime refreshed as a
    /// put of existing bytes does — unless it was refreshed less than [`FRESH`] ago: `fstatat`
    /// relative to its fan-out directory (held open after first use), then `utimensat` only for
    /// an older object. Refreshing dirties the inode: for a tree re-put every few seconds it
    /// was half the time, for an object that is young anyway. Anything but a regular file of
    /// ours of that size is checked in full ([`Store::refresh_if_holds`]: rehashed, and a
    /// squatter is left for the publish to move away).
    /// Records that `hash` was found present (when `present`), and says so.
    fn found_present(&self, hash: &Hash, present: bool) -> bool {
        if present {
            if let Some(f) = self.found.get(usize::from(hash.as_bytes()[0])) {
                f.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        present
    }

    /// The first hash bytes of the objects found present so far.
    pub(crate) fn found_fanouts(&self) -> impl Iterator<Item = u8> + '_ {
        self.found.iter().enumerate().filter_map(|(i, f)| {
            f.load(std::sync::atomic::Ordering::Relaxed)
                .then(|| u8::try_from(i).ok())
                .flatten()
        })
    }

    pub(crate) fn object_present(&self, store: &Store, hash: &Hash, len: u64) -> bool {
        // The full check (and refresh), with the object's data brought up to the store's
        // level; its directory is synced by the batch at `full` (docs/format.md, "Re-puts").
        let full_check = || {
            let data = store.durability().min(crate::Durability::File);
            self.found_present(hash, store.refresh_if_holds(hash, Some(len), true, data))
        };
        let b = usize::from(hash.as_bytes()[0]);
        let mut buf = [0u8; crate::hash::HEX_LEN];
        let hex = hash.to_hex_buf(&mut buf);
        let Some(slot) = self.fanouts.get(b) else {
            return full_check();
        };
        let opened = slot.get_or_init(|| {
            let dir = store.path(layout::OBJECTS).join(&hex[..2]);
            store.inner.root_dir.open_dir(&dir).ok()
        });
        let Some(dir) = opened.as_ref() else {
            return full_check();
        };
        let name = OsStr::new(&hex[2..]);
        match fs::lstat_at(dir.as_fd(), name) {
            Ok(m)
                if m.kind == fs::Kind::File
                    && m.len == len
                    && m.uid == fs::uid()
                    && m.mode & fs::UNSYNCED == 0
                    && SystemTime::now()
                        .duration_since(m.mtime)
                        .is_ok_and(|age| age < FRESH) =>
            {
                return self.found_present(hash, true);
            }
            Err(e) if fs::is_not_found(&e) => return false,
            // Older, someone else's, or not statable: the full check, then the refresh.
            Ok(_) | Err(_) => {}
        }
        full_check()
    }

    /// Writes the cache back if this run changed it (staged, renamed over the old one; a hint,
    /// so never synced). A failure only sets the warning.
    pub(crate) fn save(&mut self, store: &Store) {
        self.fanouts.clear();
        if !self.dirty {
            return;
        }
        // What this run learnt, sorted, the last record of a slot winning.
        let added = std::mem::take(&mut self.added).into_sorted();
        let (loaded, touched, dead) = (&self.loaded, &self.touched, &self.dead);
        let added = &added;
        let live = (0..self.count)
            .filter(move |&i| !bit(dead, i))
            .filter(move |&i| {
                added
                    .binary_search_by_key(&slot_at(loaded, i), |a| (a.0.dev, a.0.ino))
                    .is_err()
            });
        let total = live.clone().count() + added.iter().filter(|a| a.1.is_some()).count();
        // Past the limit, only this run's entries (looked up or recorded) are kept.
        let trim = total > MAX_ENTRIES;
        let merged = || {
            let old = live
                .clone()
                .filter(move |&i| !trim || bit(touched, i))
                .map(move |i| record_at(loaded, i));
            let new = added.iter().filter_map(|(k, h)| Some((*k, (*h)?)));
            merge_sorted(old, new).take(MAX_ENTRIES)
        };
        let count = merged().count();
        let bytes = encode_iter(self.run_start_ns, count, merged());
        let r = store.ensure_dir(&store.path(layout::CACHE)).and_then(|_| {
            store.replace_small_with_mode(&self.path, &bytes, 0o600, Durability::None)
        });
        if let Err(e) = r {
            self.warning = Some(format!("could not write the stat cache: {e}"));
        } else {
            self.dirty = false;
        }
    }
}

/// A record of this run: the file's `lstat`, and its hash (`None`: forget the slot).
type Record = (StatKey, Option<Hash>);

/// The records of a run, as sorted runs of sizes decreasing from the oldest (a binary
/// counter: amortised `O(log n)` moves per record, `O(log² n)` per lookup), a later record
/// of a slot replacing earlier ones as runs merge.
#[derive(Default)]
struct Added {
    runs: Vec<Vec<Record>>,
}

fn slot_of(r: &Record) -> (u64, u64) {
    (r.0.dev, r.0.ino)
}

impl Added {
    fn push(&mut self, key: StatKey, hash: Option<Hash>) {
        self.runs.push(vec![(key, hash)]);
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 2].len() > self.runs[n - 1].len() {
                break;
            }
            let newer = self.runs.pop().unwrap_or_default();
            let older = self.runs.pop().unwrap_or_default();
            self.runs.push(merge_records(older, newer));
        }
    }

    /// The latest record of a slot.
    fn get(&self, slot: (u64, u64)) -> Option<Record> {
        self.runs.iter().rev().find_map(|run| {
            run.binary_search_by_key(&slot, slot_of)
                .ok()
                .map(|i| run[i])
        })
    }

    fn into_sorted(mut self) -> Vec<Record> {
        while self.runs.len() >= 2 {
            let newer = self.runs.pop().unwrap_or_default();
            let older = self.runs.pop().unwrap_or_default();
            self.runs.push(merge_records(older, newer));
        }
        self.runs.pop().unwrap_or_default()
    }
}

/// Two sorted runs merged; on a slot in both, the newer record wins.
fn merge_records(older: Vec<Record>, newer: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut a, mut b) = (older.into_iter().peekable(), newer.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match slot_of(x).cmp(&slot_of(y)) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

/// Two iterators of entries sorted by (device, inode), with no slot in both, merged.
fn merge_sorted(
    a: impl Iterator<Item = (StatKey, Hash)>,
    b: impl Iterator<Item = (StatKey, Hash)>,
) -> impl Iterator<Item = (StatKey, Hash)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if (x.0.dev, x.0.ino) <= (y.0.dev, y.0.ino) => a.next(),
        (Some(_), Some(_)) | (None, _) => b.next(),
        (Some(_), None) => a.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u64, t: i64) -> StatKey {
        StatKey {
            dev: 1,
            ino: i,
            // The size of the objects the tests store (`lookup` checks it).
            size: 20,
            mtime_ns: t,
            ctime_ns: t,
        }
    }

    #[test]
    fn round_trip_and_damage_is_refused() {
        let entries: Vec<_> = (0..5).map(|i| (key(i, 7), Hash::of(&[i as u8]))).collect();
        let bytes = encode(42, &entries);
        assert_eq!(decode(&bytes).unwrap(), (42, entries.clone()));
        // Truncated, extended, one bit flipped, other magic or version: refused.
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        for i in [0, 9, 20, 30, HEADER + 3, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
        assert!(decode(b"").is_err());
    }

    #[test]
    fn racy_entries_are_neither_recorded_nor_trusted() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), crate::Options::default()).unwrap();
        let h = store.put_bytes(&[b'x'; 20]).unwrap();
        let mut c = StatCache::load(&store);
        let now = c.run_start_ns;
        // Written in this very tick: not recorded.
        c.record(&key(1, now), h);
        assert!(c.lookup(&store, &key(1, now)).is_none());
        // Old enough: recorded, and found only with every field equal.
        let old = now - 10 * MARGIN_NS;
        c.record(&key(2, old), h);
        assert_eq!(c.lookup(&store, &key(2, old)), Some(h));
        let mut changed = key(2, old);
        changed.ctime_ns += 1;
        assert!(c.lookup(&store, &changed).is_none());
        c.save(&store);
        // A cache file claiming a later write than its entries' timestamps allows is
        // trusted only for entries older than the claim.
        let mut again = StatCache::load(&store);
        assert!(again.warning.is_none());
        assert_eq!(again.lookup(&store, &key(2, old)), Some(h));
        let racy = encode(old, &[(key(3, old), h)]);
        store
            .replace_small_with_mode(&again.path, &racy, 0o600, Durability::None)
            .unwrap();
        let mut c3 = StatCache::load(&store);
        assert!(c3.lookup(&store, &key(3, old)).is_none());
    }

    /// Issue 26: the compact form (the file's sorted entries, this run's records in sorted
    /// runs) answers as the map did: the last record of a file wins, across saves.
    #[test]
    fn records_replace_loaded_entries_and_the_last_record_wins() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), crate::Options::default()).unwrap();
        let (h1, h2) = (
            store.put_bytes(&[b'1'; 20]).unwrap(),
            store.put_bytes(&[b'2'; 20]).unwrap(),
        );
        let mut c = StatCache::load(&store);
        let old = c.run_start_ns - 10 * MARGIN_NS;
        for i in 0..1000 {
            c.record(&key(i, old), h1);
        }
        c.record(&key(7, old), h2); // re-recorded in the same run: the later one wins
        assert_eq!(c.lookup(&store, &key(7, old)), Some(h2));
        c.save(&store);
        let mut c = StatCache::load(&store);
        assert!(c.warning.is_none(), "{:?}", c.warning);
        assert_eq!(c.count, 1000);
        assert_eq!(c.lookup(&store, &key(7, old)), Some(h2));
        assert_eq!(c.lookup(&store, &key(999, old)), Some(h1));
        // A changed file replaces its loaded entry; an unchanged one is kept as it was.
        let changed = key(5, old + 1);
        c.record(&changed, h2);
        c.record(&key(6, old), h1);
        assert_eq!(c.lookup(&store, &changed), Some(h2));
        assert!(c.lookup(&store, &key(5, old)).is_none());
        c.save(&store);
        let mut c = StatCache::load(&store);
        assert_eq!(c.count, 1000);
        assert_eq!(c.lookup(&store, &changed), Some(h2));
        assert_eq!(c.lookup(&store, &key(6, old)), Some(h1));
        assert!(c.lookup(&store, &key(1000, old)).is_none());
    }

    #[test]
    fn a_hash_whose_object_is_gone_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), crate::Options::default()).unwrap();
        let h = store.put_bytes(&[b'g'; 20]).unwrap();
        let mut c = StatCache::load(&store);
        let old = c.run_start_ns - 10 * MARGIN_NS;
        c.record(&key(1, old), h);
        store.remove(&h).unwrap();
        assert!(c.lookup(&store, &key(1, old)).is_none());
    }

    #[test]
    fn garbage_and_foreign_caches_are_empty_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), crate::Options::default()).unwrap();
        let c = StatCache::load(&store);
        assert!(c.warning.is_none(), "a missing cache is no warning");
        store.ensure_dir(&store.path(layout::CACHE)).unwrap();
        store
            .replace_small_with_mode(&c.path, b"garbage", 0o600, Durability::None)
            .unwrap();
        let c = StatCache::load(&store);
        assert!(c.is_empty());
        assert!(c.warning.as_deref().unwrap().contains("ignoring"));
        // Writable by the group: not trusted, however well formed.
        let good = encode(now_ns(), &[]);
        store
            .replace_small_with_mode(&c.path, &good, 0o660, Durability::None)
            .unwrap();
        let c = StatCache::load(&store);
        assert!(c.warning.as_deref().unwrap().contains("others may write"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&body);
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&VERSION.to_le_bytes());
            b.extend_from_slice(&body);
            let _ = decode(&b);
        }
    }
}

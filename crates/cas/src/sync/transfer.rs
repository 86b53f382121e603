//! Push and pull between stores: copy the closure of named refs and cache entries
//! that the destination lacks, verified, in parallel, then set the names on the destination
//! with compare-and-swap against the values it had when the transfer started.
//!
//! Resumable by construction: objects are idempotent, so a transfer killed at any point and
//! run again copies only what is still missing. Objects are published children first (leaf
//! objects, then trees deepest first), so a tree present at the destination never lacks a
//! child because of a killed transfer; names are set last, so a destination never names an
//! object it does not hold.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::names::entries::display_key;
use crate::{Expect, Store, Tree};

/// What to transfer, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Refs to transfer (their values in the source, and everything they reach).
    pub refs: Vec<String>,
    /// Cache keys to transfer.
    pub keys: Vec<Vec<u8>>,
    /// Transfer every ref and every cache entry of the source.
    pub all: bool,
    /// Set the names on the destination whatever they hold (no compare-and-swap).
    pub force: bool,
    /// Objects copied at once (default 4).
    pub jobs: usize,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            refs: Vec::new(),
            keys: Vec::new(),
            all: false,
            force: false,
            jobs: 4,
        }
    }
}

impl TransferOptions {
    /// Adds refs (builder style).
    #[must_use]
    pub fn refs<S: Into<String>>(mut self, refs: impl IntoIterator<Item = S>) -> Self {
        self.refs.extend(refs.into_iter().map(Into::into));
        self
    }
    /// Adds cache keys (builder style).
    #[must_use]
    pub fn keys<K: Into<Vec<u8>>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }
    /// Transfers every ref and entry (builder style).
    #[must_use]
    pub fn all(mut self, on: bool) -> Self {
        self.all = on;
        self
    }
    /// Overwrites the destination's names (builder style).
    #[must_use]
    pub fn force(mut self, on: bool) -> Self {
        self.force = on;
        self
    }
    /// Sets the number of parallel copies (builder style; at least 1).
    #[must_use]
    pub fn jobs(mut self, n: usize) -> Self {
        self.jobs = n.max(1);
        self
    }
}

/// A name the destination changed while the transfer ran (or that held another value than
/// expected): it was not set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TransferConflict {
    /// `ref NAME` or `key KEY`.
    pub name: String,
    /// What the destination held when the transfer started (`None`: absent).
    pub expected: Option<Hash>,
    /// What it held when the transfer tried to set it.
    pub actual: Option<Hash>,
}

/// What a transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TransferReport {
    /// Objects in the closure of the names transferred.
    pub objects: u64,
    /// Objects copied to the destination.
    pub objects_copied: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Objects the destination already had.
    pub objects_skipped: u64,
    /// Refs set (or moved) on the destination.
    pub refs_set: Vec<String>,
    /// Refs the destination already held with the same value.
    pub refs_unchanged: Vec<String>,
    /// Cache keys set on the destination (as text).
    pub keys_set: Vec<String>,
    /// Cache keys the destination already held with the same value.
    pub keys_unchanged: Vec<String>,
    /// Names not set because the destination moved them (see [`TransferOptions::force`]).
    pub conflicts: Vec<TransferConflict>,
}

impl TransferReport {
    /// True if every name was set (no conflict).
    pub fn is_complete(&self) -> bool {
        self.conflicts.is_empty()
    }
}

/// A name to set on the destination: its value in the source, and in the destination at the
/// start.
struct Name {
    kind: NameKind,
    value: Hash,
    before: Option<Hash>,
}

enum NameKind {
    Ref(String),
    Key { key: Vec<u8>, metadata: Vec<u8> },
}

impl Store {
    /// Copies the named refs and cache entries of this store, with everything they reach
    /// through trees, to `dest`; see [`TransferOptions`]. Objects `dest` has are skipped, so
    /// running it again after an interruption finishes the job. Each name is then set on
    /// `dest` with compare-and-swap against the value `dest` had when the transfer started
    /// (unless `force`): a name moved meanwhile is reported in
    /// [`TransferReport::conflicts`] and left as it is.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let a = cas::Store::init(dir.path().join("a"), cas::Options::default())?;
    /// let b = cas::Store::init(dir.path().join("b"), cas::Options::default())?;
    /// let h = a.put_bytes(b"v1")?;
    /// a.set_ref("release", h, cas::Expect::Any)?;
    /// let r = a.push_to(&b, &cas::TransferOptions::default().refs(["release"]))?;
    /// assert_eq!((r.objects_copied, r.refs_set.len()), (1, 1));
    /// assert_eq!(b.get_ref("release")?, Some(h));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::RefNotFound`] / [`Error::KeyNotFound`] for a name the source lacks;
    /// [`Error::NotFound`] if the source lacks an object its names reach; I/O errors of
    /// either store. Conflicts are not errors: they are in the report.
    pub fn push_to(&self, dest: &Store, opts: &TransferOptions) -> Result<TransferReport> {
        // What this handle promises covers the destination it writes.
        transfer(self, &dest.at_least(self.durability())?, opts)
    }

    /// Copies named refs and cache entries of `src` into this store: [`Store::push_to`]
    /// the other way round.
    ///
    /// # Errors
    /// As [`Store::push_to`].
    pub fn pull_from(&self, src: &Store, opts: &TransferOptions) -> Result<TransferReport> {
        transfer(src, self, opts)
    }
}

fn transfer(src: &Store, dst: &Store, opts: &TransferOptions) -> Result<TransferReport> {
    let names = resolve_names(src, dst, opts)?;
    let mut report = TransferReport::default();

    // The closure, through trees, read in the source. Trees in discovery order (a parent
    // before its children); everything else is a leaf.
    let mut seen = HashSet::new();
    let (mut leaves, mut trees) = (Vec::new(), Vec::new());
    let mut stack: Vec<(Hash, bool)> = names.iter().map(|n| (n.value, true)).collect();
    while let Some((h, maybe_tree)) = stack.pop() {
        if !seen.insert(h) {
            continue;
        }
        match maybe_tree
            .then(|| tree_children(src, &h))
            .transpose()?
            .flatten()
        {
            Some(children) => {
                trees.push(h);
                stack.extend(children);
            }
            None => leaves.push(h),
        }
    }
    report.objects = seen.len() as u64;

    let copied = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let pause_at = test_hook_pause_at();
    let copy_all = |list: &[Hash], jobs: usize| {
        parallel(list, jobs, |h| {
            if present_in(dst, h) {
                skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let n = copy_object(src, dst, h)?;
            let done = copied.fetch_add(1, Ordering::Relaxed) + 1;
            bytes.fetch_add(n, Ordering::Relaxed);
            if let Some(at) = &pause_at {
                test_hook_pause(at, done);
            }
            Ok(())
        })
    };
    // Children before parents: every leaf, then trees deepest first.
    trees.reverse();
    let copy_closure = || -> Result<()> {
        copy_all(&leaves, opts.jobs.max(1))?;
        copy_all(&trees, 1)
    };
    copy_closure()?;
    let message = format!("transfer from {}", src.root().display());
    for n in names {
        let shown = match &n.kind {
            NameKind::Ref(name) => name.clone(),
            NameKind::Key { key, .. } => String::from_utf8_lossy(key).into_owned(),
        };
        let is_ref = matches!(n.kind, NameKind::Ref(_));
        if n.before == Some(n.value) && !opts.force {
            if is_ref {
                report.refs_unchanged.push(shown);
            } else {
                report.keys_unchanged.push(shown);
            }
            continue;
        }
        let expect = if opts.force {
            Expect::Any
        } else {
            n.before.map_or(Expect::Absent, Expect::Value)
        };
        let set = || match &n.kind {
            NameKind::Ref(name) => dst.set_ref_msg(name, n.value, expect, &message),
            NameKind::Key { key, metadata } => dst.set_keyed(key, n.value, metadata, expect),
        };
        // Setting the name checks its whole closure at the destination under the name's
        // pin (docs/format.md "Publishing a name"). A gc there may have collected what was
        // copied before the pin existed: copy what is missing again, a bounded number of
        // times.
        let mut r = set();
        for _ in 0..3 {
            if !matches!(&r, Err(e) if e.is_not_found()) {
                break;
            }
            copy_closure()?;
            r = set();
        }
        match r {
            Ok(_) if is_ref => report.refs_set.push(shown),
            Ok(_) => report.keys_set.push(shown),
            Err(Error::Conflict { actual, .. }) => report.conflicts.push(TransferConflict {
                name: if is_ref {
                    format!("ref {shown}")
                } else {
                    format!("key {}", display_key(shown.as_bytes()))
                },
                expected: n.before,
                actual,
            }),
            Err(e) => return Err(e),
        }
    }
    report.objects_copied = copied.into_inner();
    report.bytes_copied = bytes.into_inner();
    report.objects_skipped = skipped.into_inner();
    Ok(report)
}

/// True if the destination holds the object in `objects/` (refreshed, so a gc that has not
/// judged it yet keeps it), moving it back from its trash if gc condemned it there. An object
/// in trash is not simply "present": a gc may delete it before the name is set.
fn present_in(dst: &Store, h: &Hash) -> bool {
    if dst.upstream().is_some() {
        return dst.contains(h); // a tier: the upstream holds what the names reach
    }
    dst.ensure_present(h).is_ok()
}

/// The names to set, with their source values and the destination's values now.
fn resolve_names(src: &Store, dst: &Store, opts: &TransferOptions) -> Result<Vec<Name>> {
    let mut names = Vec::new();
    let mut refs: Vec<(String, Hash)> = Vec::new();
    if opts.all {
        refs = src.list_refs("")?;
    }
    for name in &opts.refs {
        if refs.iter().any(|(n, _)| n == name) {
            continue;
        }
        let h = src
            .get_ref(name)?
            .ok_or_else(|| Error::RefNotFound { name: name.clone() })?;
        refs.push((name.clone(), h));
    }
    for (name, value) in refs {
        let before = dst.get_ref(&name)?;
        names.push(Name {
            kind: NameKind::Ref(name),
            value,
            before,
        });
    }
    let mut entries = Vec::new();
    if opts.all {
        for e in src.iter_keys()? {
            entries.push(e?);
        }
    }
    for key in &opts.keys {
        if !entries.iter().any(|e| &e.key == key) {
            entries.push(src.entry(key)?);
        }
    }
    for e in entries {
        let before = match dst.entry(&e.key) {
            Ok(d) => Some(d.hash),
            // Absent, or damaged (which holds no value: set_keyed replaces it for Absent).
            Err(err) if err.is_not_found() || err.is_malformed() => None,
            Err(err) => return Err(err),
        };
        names.push(Name {
            kind: NameKind::Key {
                key: e.key,
                metadata: e.metadata,
            },
            value: e.hash,
            before,
        });
    }
    Ok(names)
}

/// If the object is a tree, its direct children `(hash, is_tree)`. Only the first bytes are
/// read to tell (a root may be a huge file); a tree is then read whole, verified, decoded.
fn tree_children(src: &Store, hash: &Hash) -> Result<Option<Vec<(Hash, bool)>>> {
    let is_tree =
        Tree::sniff(src.reader(hash)?).map_err(|e| Error::io("read", src.object_path(hash), e))?;
    if !is_tree {
        return Ok(None);
    }
    let obj = src.get(hash)?;
    Tree::decode(&obj)
        .map(|t| Some(t.children().collect()))
        .map_err(|reason| Error::Malformed {
            what: "tree object",
            path: src.object_path(hash),
            reason,
        })
}

/// A test hook (undocumented, for crates/cas-cli/tests/e2e/tiers.rs): `CAS_TEST_TRANSFER_PAUSE_AFTER=N` makes a
/// transfer stop copying once N objects were copied: the first copier to get there prints
/// `cas-test: transfer paused` on stderr, and every copier that gets there waits (at most
/// 60 s, then goes on), so that a test can kill a transfer halfway without sleeping or
/// racing its end.
fn test_hook_pause_at() -> Option<(u64, AtomicBool)> {
    let at = std::env::var("CAS_TEST_TRANSFER_PAUSE_AFTER").ok()?;
    Some((at.parse().ok()?, AtomicBool::new(false)))
}

fn test_hook_pause((at, told): &(u64, AtomicBool), done: u64) {
    if done < *at {
        return;
    }
    if !told.swap(true, Ordering::SeqCst) {
        eprintln!("cas-test: transfer paused");
    }
    let until = std::time::Instant::now() + std::time::Duration::from_mins(1);
    while std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10)); // held for the test's kill
    }
}

/// Copies one object: verified while read from the source, hashed again while staged in the
/// destination, published there through its write path.
fn copy_object(src: &Store, dst: &Store, hash: &Hash) -> Result<u64> {
    let mut w = dst.writer()?;
    let n = src.get_to_writer(hash, &mut w)?;
    let got = w.commit()?;
    if got != *hash {
        return Err(Error::Corrupt {
            expected: *hash,
            actual: got,
            path: dst.object_path(hash),
        });
    }
    Ok(n)
}

/// Runs `f` on every item with `jobs` threads; the first error stops the others at their next
/// item and is returned.
fn parallel(items: &[Hash], jobs: usize, f: impl Fn(&Hash) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(items.len()) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(h) = items.get(i) else { break };
                    if let Err(e) = f(h) {
                        failed.store(true, Ordering::Relaxed);
                        first_err
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_err
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

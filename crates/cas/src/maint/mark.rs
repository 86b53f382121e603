//! Marking: the roots of a store and everything reachable from them (docs/format.md "GC").
//!
//! One traversal serves gc's two marks, eviction's closures, verify and doctor. It changes
//! nothing: objects are found with [`Store::locate`] and read where they are, in `objects/` or
//! in trash, without moving them back.
//!
//! Marking never stops at a damaged item. Everything that could not be read is reported with
//! its path; what could hide reachable objects (a ref or cache entry that cannot be parsed, a
//! directory of roots that cannot be listed, a tree-magic object that cannot be decoded or
//! read) is also recorded as a reason not to sweep: gc deletes nothing it cannot prove
//! unreachable.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::maint::hashes::{Hashes, Layers};
use crate::maint::verify::Problem;
use crate::store::layout;
use crate::tree::format::{read_head, Tree};
use crate::Store;

/// Why an object is reached.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A pin in a ref or entry lock: an update in progress.
    Pin(PathBuf),
    /// A ref, by name.
    Ref(String),
    /// A cache entry, by key (shown).
    Entry(String),
    /// An entry of a tree object.
    Tree(Hash),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pin(p) => write!(f, "an update in progress ({})", p.display()),
            Source::Ref(n) => write!(f, "ref {n:?}"),
            Source::Entry(k) => write!(f, "cache entry {k}"),
            Source::Tree(h) => write!(f, "tree {h}"),
        }
    }
}

/// An object to visit: where it was found, and how to treat it.
#[derive(Debug)]
struct Visit {
    from: Source,
    hash: Hash,
    /// A `File` entry of a tree is a leaf; anything else may be a tree.
    may_be_tree: bool,
    /// A pin's object may not exist yet: its absence is not worth reporting.
    report_missing: bool,
}

/// A pointer to a missing object.
#[derive(Debug, Clone)]
pub(crate) struct Missing {
    pub(crate) from: Source,
    pub(crate) hash: Hash,
}

/// A cache entry found while listing roots: eviction's candidates.
#[derive(Debug, Clone)]
pub(crate) struct EntryRoot {
    pub(crate) path: PathBuf,
    /// The entry's key: its lock's name derives from it.
    pub(crate) key: Vec<u8>,
    pub(crate) hash: Hash,
    pub(crate) mtime: SystemTime,
}

/// What a tree-magic object yields.
pub(crate) enum Children {
    /// Not a tree: a leaf.
    None,
    /// A tree's direct children, `(hash, is_tree)`.
    Some(Vec<(Hash, bool)>),
    /// Starts with the tree magic and verifies, but does not decode (a later format version,
    /// or crafted bytes): its children cannot be known. The error says why.
    Opaque(Error),
}

/// The result of one traversal.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    /// Layer 0: what refs reach; then what only pins reach (if any pin); then what only
    /// cache entries reach. About 36 bytes per object (`crate::maint::hashes`).
    pub(crate) reachable: Layers,
    pub(crate) missing: Vec<Missing>,
    /// Items that could not be read, by path.
    pub(crate) damaged: Vec<Problem>,
    /// Reasons why what is unreachable cannot be told from what is not (subset of the above,
    /// in words): gc must not sweep.
    pub(crate) unsafe_to_sweep: Vec<String>,
    /// If recorded ([`Store::mark_recording`]): for each object reached, where it was first
    /// reached from. Following it upwards leads from any object to a root.
    pub(crate) via: Option<HashMap<Hash, Source>>,
}

impl Reach {
    fn damaged(&mut self, path: PathBuf, reason: String, hides_roots: bool) {
        if hides_roots {
            self.unsafe_to_sweep
                .push(format!("{}: {reason}", path.display()));
        }
        self.damaged.push(Problem { path, reason });
    }
}

/// Roots and everything reachable from them.
#[derive(Debug, Default)]
pub(crate) struct Mark {
    pub(crate) reach: Reach,
    /// Refs, cache entries and pins found.
    pub(crate) roots: u64,
    /// The cache entries among the roots.
    pub(crate) entries: Vec<EntryRoot>,
    /// The layer of `reach.reachable` of what only pins reach, if any pin was found.
    pins_layer: Option<usize>,
    /// The layer of `reach.reachable` of what only cache entries reach.
    entries_layer: usize,
}

impl Mark {
    /// Reachable from refs and pins alone (not only from cache entries): never evicted.
    pub(crate) fn pinned_by_refs(&self, h: &Hash) -> bool {
        self.reach.reachable.contains_in(0..self.entries_layer, h)
    }

    /// Reachable only from pins (updates in progress), not from refs.
    pub(crate) fn pinned_only(&self, h: &Hash) -> bool {
        self.pins_layer
            .is_some_and(|l| self.reach.reachable.contains_in(l..l + 1, h))
    }
}

impl Store {
    /// Finds all roots and everything reachable from them. Pins first, then the pointers: a pin
    /// removed while we list pins belongs to an update that completed before we list the
    /// pointers, so we see its result there.
    pub(crate) fn mark(&self) -> Mark {
        self.mark_with(false)
    }

    /// [`Store::mark`], also recording for each object where it was first reached from
    /// (`Reach::via`): what `cas rm` names when it refuses.
    pub(crate) fn mark_recording(&self) -> Mark {
        self.mark_with(true)
    }

    fn mark_with(&self, record: bool) -> Mark {
        let mut m = Mark::default();
        if record {
            m.reach.via = Some(HashMap::new());
        }
        let mut pin_visits = Vec::new();
        for dir in [layout::REFS, layout::INDEX] {
            let pins = self.lock_pins(&self.path(dir));
            for p in pins.damaged {
                m.reach.damaged.push(p);
            }
            for (path, hash) in pins.pins {
                pin_visits.push(Visit {
                    from: Source::Pin(path),
                    hash,
                    may_be_tree: true,
                    report_missing: false,
                });
            }
        }
        let mut visits = Vec::new();
        let refs = self.scan_refs("");
        for (path, reason) in refs.damaged {
            m.reach.damaged(path, reason, true);
        }
        for (name, hash) in refs.refs {
            visits.push(Visit {
                from: Source::Ref(name),
                hash,
                may_be_tree: true,
                report_missing: true,
            });
        }
        // Everything but cache entries first: what eviction may never release. Refs before
        // pins (the order of traversal does not change what is reached): what only pins
        // reach is told apart for a budget's report, and refs are what `rm` names first.
        m.roots = (visits.len() + pin_visits.len()) as u64;
        self.traverse(visits, &mut m.reach);
        if !pin_visits.is_empty() {
            m.pins_layer = Some(m.reach.reachable.push_layer());
            self.traverse(pin_visits, &mut m.reach);
        }
        m.entries_layer = m.reach.reachable.push_layer();
        let mut visits = Vec::new();

        let (files, errors) = self.entry_files();
        for e in errors {
            let p = e
                .path()
                .map_or_else(|| self.path(layout::INDEX), Into::into);
            m.reach.damaged(p, error_reason(&e), true);
        }
        for p in files {
            match self.read_entry_file(&p) {
                Ok(Some((e, f))) => {
                    let mtime = f
                        .metadata()
                        .and_then(|md| md.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    m.entries.push(EntryRoot {
                        path: p,
                        key: e.key.clone(),
                        hash: e.hash,
                        mtime,
                    });
                    visits.push(Visit {
                        from: Source::Entry(crate::names::entries::display_key(&e.key)),
                        hash: e.hash,
                        may_be_tree: true,
                        report_missing: true,
                    });
                }
                Ok(None) => {}
                Err(e) => m.reach.damaged(p, error_reason(&e), true),
            }
        }
        m.roots += visits.len() as u64;
        self.traverse(visits, &mut m.reach);
        m
    }

    /// Everything reachable from `roots` through trees that `skip` does not cover and `seen`
    /// does not hold yet; each is added to `seen` and returned in the order reached. Damage is
    /// ignored here: the mark that precedes every use has reported it. Sharing `seen` across
    /// calls gives each object to the first root that reaches it (eviction's owners).
    pub(crate) fn reach_new(
        &self,
        roots: impl IntoIterator<Item = (Hash, bool)>,
        skip: &dyn Fn(&Hash) -> bool,
        seen: &mut Hashes,
    ) -> Vec<Hash> {
        let mut out = Vec::new();
        let mut stack: Vec<(Hash, bool)> = roots.into_iter().collect();
        while let Some((hash, may_be_tree)) = stack.pop() {
            if skip(&hash) || !seen.insert(hash) {
                continue;
            }
            out.push(hash);
            if !may_be_tree {
                continue;
            }
            if let Ok(Children::Some(children)) = self.tree_children(&hash) {
                stack.extend(children);
            }
        }
        out
    }

    /// Everything reachable from `roots` (themselves included) that is not in `exclude`.
    pub(crate) fn closure_of(&self, roots: &[Hash], exclude: &dyn Fn(&Hash) -> bool) -> Hashes {
        let mut seen = Hashes::new();
        self.reach_new(roots.iter().map(|h| (*h, true)), exclude, &mut seen);
        seen
    }

    /// The one traversal: depth first through tree objects, each object visited once.
    fn traverse(&self, mut stack: Vec<Visit>, r: &mut Reach) {
        while let Some(v) = stack.pop() {
            if !r.reachable.insert(v.hash) {
                continue;
            }
            if let Some(via) = &mut r.via {
                via.insert(v.hash, v.from.clone());
            }
            if !v.may_be_tree {
                if v.report_missing && self.locate(&v.hash).is_none() {
                    r.missing.push(Missing {
                        from: v.from,
                        hash: v.hash,
                    });
                }
                continue;
            }
            match self.tree_children(&v.hash) {
                Ok(Children::Some(children)) => {
                    for (hash, is_tree) in children {
                        stack.push(Visit {
                            from: Source::Tree(v.hash),
                            hash,
                            may_be_tree: is_tree,
                            report_missing: true,
                        });
                    }
                }
                Ok(Children::None) => {}
                Err(e) if e.is_not_found() => {
                    if v.report_missing {
                        r.missing.push(Missing {
                            from: v.from,
                            hash: v.hash,
                        });
                    }
                }
                Ok(Children::Opaque(e)) | Err(e) => {
                    let path = e
                        .path()
                        .map_or_else(|| self.object_path(&v.hash), Into::into);
                    r.damaged(
                        path,
                        format!("{} (reached from {})", error_reason(&e), v.from),
                        true,
                    );
                }
            }
        }
    }

    /// If the object is a tree, its direct children. Reads the object where it is (`objects/`
    /// or trash) without moving or quarantining anything. An object that starts with the
    /// tree magic but does not verify or decode (damaged, or written by a later format) is an
    /// error: its children cannot be known, so they must not be collected.
    pub(crate) fn tree_children(&self, hash: &Hash) -> Result<Children> {
        let (f, path) = self.open_located(hash)?;
        let mut head = [0u8; 8];
        let n = read_head(&f, &mut head).map_err(Error::at("read", &path))?;
        if !Tree::is_tree(&head[..n]) {
            return Ok(Children::None);
        }
        let len = f.metadata().map_err(Error::at("stat", &path))?.len();
        let mut bytes = head[..n].to_vec();
        (&f).take(len.saturating_sub(n as u64))
            .read_to_end(&mut bytes)
            .map_err(Error::at("read", &path))?;
        let actual = Hash::of_parallel(&bytes);
        if actual != *hash {
            return Err(Error::Malformed {
                what: "tree object",
                path,
                reason: format!(
                    "its bytes hash to {actual} (damaged; `cas verify` quarantines it)"
                ),
            });
        }
        match Tree::decode(&bytes) {
            Ok(t) => Ok(Children::Some(t.children().collect())),
            Err(reason) => Ok(Children::Opaque(Error::Malformed {
                what: "tree object",
                path,
                reason: format!("{reason}; its children cannot be known"),
            })),
        }
    }
}

/// An error as a reason in a report: without the path, which the report names already.
pub(crate) fn error_reason(e: &Error) -> String {
    match e {
        Error::Io { op, source, .. } => format!("cannot {op}: {source}"),
        Error::Malformed { what, reason, .. } => format!("not a valid {what}: {reason}"),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::format::{TreeEntry, TreeEntryKind};
    use crate::{Expect, Options};

    fn tree(entries: Vec<(&str, TreeEntryKind)>) -> Vec<u8> {
        Tree {
            entries: entries
                .into_iter()
                .map(|(n, kind)| TreeEntry {
                    mode: None,
                    mtime: None,
                    name: n.as_bytes().to_vec(),
                    kind,
                })
                .collect(),
        }
        .encode()
    }

    #[test]
    fn mark_reaches_through_trees_and_reads_trash_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = Store::init(d, Options::default()).unwrap();
        let s = &store;
        let (leaf, deep, keyed) = (
            s.put_bytes(b"a").unwrap(),
            s.put_bytes(b"b").unwrap(),
            s.put_bytes(b"c").unwrap(),
        );
        let file = |h| TreeEntryKind::File {
            executable: false,
            size: 1,
            hash: h,
        };
        let sub = s.put_bytes(&tree(vec![("b", file(deep))])).unwrap();
        let top = s
            .put_bytes(&tree(vec![
                ("a", file(leaf)),
                ("s", TreeEntryKind::Dir { hash: sub }),
            ]))
            .unwrap();
        s.set_ref("r", top, Expect::Any).unwrap();
        s.put_keyed_bytes(b"k", b"c", b"").unwrap();
        let lost = Hash::of(b"never stored");
        std::fs::write(d.join("refs/lost"), format!("{lost}\n")).unwrap();

        // The subtree sits in trash: it is read there, and left there.
        let run = d.join("trash/1000.h.1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::rename(s.object_path(&sub), run.join(sub.to_string())).unwrap();

        let m = s.mark();
        for h in [top, leaf, sub, deep, keyed] {
            assert!(m.reach.reachable.contains(&h), "{h} not reached");
        }
        assert!(m.pinned_by_refs(&deep) && !m.pinned_by_refs(&keyed));
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.reach.missing.len(), 1);
        assert!(matches!(&m.reach.missing[0].from, Source::Ref(n) if n == "lost"));
        assert!(
            m.reach.unsafe_to_sweep.is_empty(),
            "{:?}",
            m.reach.unsafe_to_sweep
        );
        assert!(
            run.join(sub.to_string()).exists(),
            "marking moved an object"
        );
        assert!(!s.object_path(&sub).exists());
        assert_eq!(s.closure_of(&[top], &|_| false).len(), 4);
        assert_eq!(s.closure_of(&[top], &|h| *h == sub).len(), 2);
    }

    #[test]
    fn what_could_hide_roots_makes_the_sweep_unsafe() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path(), Options::default()).unwrap();
        std::fs::write(d.path().join("refs/garbage"), b"hello\n").unwrap();
        let mut future = crate::tree::format::TREE_MAGIC.to_vec();
        future.extend_from_slice(&7u32.to_le_bytes());
        let t = s.put_bytes(&future).unwrap();
        s.set_ref("t", t, Expect::Any).unwrap();
        // A FIFO at a lock name holds no pin: reported, but no reason to stop.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("refs/x.lock"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let m = s.mark();
        let why = m.reach.unsafe_to_sweep.join("\n");
        assert_eq!(m.reach.unsafe_to_sweep.len(), 2, "{why}");
        assert!(
            why.contains("refs/garbage") && why.contains("version 7"),
            "{why}"
        );
        assert_eq!(m.reach.damaged.len(), 3, "{:?}", m.reach.damaged);
        assert!(m.reach.reachable.contains(&t));
    }
}

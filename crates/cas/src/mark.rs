//! Marking: the roots of a store and everything reachable from them (docs/format.md §7.1).
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

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::layout;
use crate::tree::Tree;
use crate::verify::Problem;
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
    pub(crate) hash: Hash,
    pub(crate) mtime: SystemTime,
}

/// What a tree-magic object yields.
enum Children {
    /// Not a tree: a leaf.
    None,
    /// A tree's direct children, `(hash, is_tree)`.
    Some(Vec<(Hash, bool)>),
}

/// The result of one traversal.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    pub(crate) reachable: HashSet<Hash>,
    pub(crate) missing: Vec<Missing>,
    /// Items that could not be read, by path.
    pub(crate) damaged: Vec<Problem>,
    /// Reasons why what is unreachable cannot be told from what is not (subset of the above,
    /// in words): gc must not sweep.
    pub(crate) unsafe_to_sweep: Vec<String>,
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
    /// Objects reachable from refs and pins alone (not from cache entries): never evicted.
    pub(crate) pinned_by_refs: HashSet<Hash>,
}

impl Store {
    /// Finds all roots and everything reachable from them. Pins first, then the pointers: a pin
    /// removed while we list pins belongs to an update that completed before we list the
    /// pointers, so we see its result there.
    pub(crate) fn mark(&self) -> Mark {
        let mut m = Mark::default();
        let mut visits = Vec::new();
        for dir in [layout::REFS, layout::INDEX] {
            let pins = self.lock_pins(&self.path(dir));
            for p in pins.damaged {
                m.reach.damaged.push(p);
            }
            for (path, hash) in pins.pins {
                visits.push(Visit {
                    from: Source::Pin(path),
                    hash,
                    may_be_tree: true,
                    report_missing: false,
                });
            }
        }
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
        // Everything but cache entries first: what eviction may never release.
        m.roots = visits.len() as u64;
        self.traverse(visits, &mut m.reach);
        m.pinned_by_refs.clone_from(&m.reach.reachable);
        let mut visits = Vec::new();

        match self.entry_files() {
            Ok(files) => {
                for p in files {
                    match self.read_entry_file(&p) {
                        Ok(Some((e, f))) => {
                            let mtime = f
                                .metadata()
                                .and_then(|md| md.modified())
                                .unwrap_or(SystemTime::UNIX_EPOCH);
                            m.entries.push(EntryRoot {
                                path: p,
                                hash: e.hash,
                                mtime,
                            });
                            visits.push(Visit {
                                from: Source::Entry(crate::index::display_key(&e.key)),
                                hash: e.hash,
                                may_be_tree: true,
                                report_missing: true,
                            });
                        }
                        Ok(None) => {}
                        Err(e) => m.reach.damaged(p, error_reason(&e), true),
                    }
                }
            }
            Err(e) => {
                let p = e
                    .path()
                    .map_or_else(|| self.path(layout::INDEX), Into::into);
                m.reach.damaged(p, error_reason(&e), true);
            }
        }
        m.roots += visits.len() as u64;
        self.traverse(visits, &mut m.reach);
        m
    }

    /// The object and everything reachable from it through trees (damage is ignored here: the
    /// mark that precedes any use of a closure has reported it).
    pub(crate) fn closure(&self, root: &Hash) -> HashSet<Hash> {
        let mut r = Reach::default();
        self.traverse(
            vec![Visit {
                from: Source::Tree(*root),
                hash: *root,
                may_be_tree: true,
                report_missing: false,
            }],
            &mut r,
        );
        r.reachable
    }

    /// The one traversal: depth first through tree objects, each object visited once.
    fn traverse(&self, mut stack: Vec<Visit>, r: &mut Reach) {
        while let Some(v) = stack.pop() {
            if !r.reachable.insert(v.hash) {
                continue;
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
                Err(e) => {
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
    fn tree_children(&self, hash: &Hash) -> Result<Children> {
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
            Err(reason) => Err(Error::Malformed {
                what: "tree object",
                path,
                reason: format!("{reason}; its children cannot be known"),
            }),
        }
    }
}

fn read_head(mut f: &std::fs::File, head: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An error as a reason in a report: without the path, which the report names already.
pub(crate) fn error_reason(e: &Error) -> String {
    match e {
        Error::Io { op, source, .. } => format!("cannot {op}: {source}"),
        Error::Malformed { what, reason, .. } => format!("not a valid {what}: {reason}"),
        e => e.to_string(),
    }
}

//! Walks that follow a tree's paths: the budgets checked before any of them starts
//! (a memoised pass over the distinct trees), listing, and reading a tree back.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::tree::format::{Tree, TreeEntry, TreeEntryKind, Trees, MAX_DEPTH};
use crate::Store;

/// Budgets of every walk that follows a tree's paths (restore, listing, the check that a
/// destination already holds a tree), checked before the walk starts: one pass reads each
/// distinct tree object once (memoised by hash) and adds up what the walk would meet along
/// every path. A tree over budget fails with [`Error::TreeBudget`] naming it and the budget,
/// before anything is listed or created. See docs/format.md, "Tree object", and
/// docs/decisions.md for why these defaults.
///
/// ```
/// let tight = cas::TreeLimits::default().max_entries(1_000).max_depth(16);
/// assert_eq!(tight.max_entries, 1_000);
/// assert_eq!(cas::TreeLimits::default().max_depth, 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeLimits {
    /// Entries counted at every path they appear at: a subtree named twice counts twice,
    /// since a restore creates it twice and a listing prints it twice. Default 2^24
    /// (16 777 216).
    pub max_entries: u64,
    /// Directories nested below the tree's root. Default and most honoured: 1024, the depth
    /// `put -r` accepts, so every tree the store builds can be restored and listed.
    pub max_depth: usize,
    /// File bytes the entries claim, counted at every path (what a restore would write).
    /// Checked by restores only. Default 2^46 (64 TiB).
    pub max_bytes: u64,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_entries: 1 << 24,
            max_depth: MAX_DEPTH,
            max_bytes: 1 << 46,
        }
    }
}

impl TreeLimits {
    /// Sets [`TreeLimits::max_entries`] (builder style).
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Sets [`TreeLimits::max_depth`] (builder style).
    #[must_use]
    pub fn max_depth(mut self, n: usize) -> Self {
        self.max_depth = n;
        self
    }

    /// Sets [`TreeLimits::max_bytes`] (builder style).
    #[must_use]
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }
}

/// What a walk of a tree meets along every path below it (saturating: the sizes are input).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Entries at every path (a subtree met at two paths counts twice).
    pub(crate) entries: u64,
    /// File sizes those entries claim.
    pub(crate) bytes: u64,
    /// Deepest nesting of directories below the tree (0: it has no subdirectory).
    pub(crate) depth: usize,
    /// Symlinks among the entries.
    pub(crate) links: u64,
}

/// One pass over the distinct trees below a root, each read once (memoised by hash).
struct Tally<'a> {
    store: &'a Store,
    root: Hash,
    limits: TreeLimits,
    known: &'a Trees,
    check_bytes: bool,
    memo: std::collections::HashMap<Hash, Totals>,
    /// Entries of the distinct trees read so far. Every distinct tree is met at one path at
    /// least, so this is a lower bound of the root's total: checking it against the budget
    /// bounds the work of the pass itself, whatever the tree's shape.
    distinct: u64,
}

impl Tally<'_> {
    fn over(&self, budget: &'static str, limit: u64, reason: String) -> Error {
        Error::TreeBudget {
            tree: self.root,
            budget,
            limit,
            reason,
        }
    }

    fn max_depth(&self) -> usize {
        self.limits.max_depth.min(MAX_DEPTH)
    }

    fn entries_over(&self, what: &str) -> Error {
        self.over(
            "max_entries",
            self.limits.max_entries,
            format!(
                "{what} more entries than that, counted at every path they appear at (a \
                 crafted tree can name one subtree many times)"
            ),
        )
    }

    fn totals(&mut self, hash: &Hash, depth: usize) -> Result<Totals> {
        if let Some(t) = self.memo.get(hash) {
            return Ok(*t);
        }
        let read;
        let tree = if let Some(t) = self.known.get(hash) {
            t
        } else {
            read = self.store.read_tree(hash)?;
            &read
        };
        self.distinct = self.distinct.saturating_add(tree.entries.len() as u64);
        if self.distinct > self.limits.max_entries {
            return Err(self.entries_over("its distinct subtrees alone hold"));
        }
        let mut t = Totals {
            entries: tree.entries.len() as u64,
            ..Totals::default()
        };
        for e in &tree.entries {
            match &e.kind {
                TreeEntryKind::File { size, .. } => t.bytes = t.bytes.saturating_add(*size),
                TreeEntryKind::Symlink { .. } => t.links = t.links.saturating_add(1),
                TreeEntryKind::Dir { hash: sub } => {
                    if depth + 1 > self.max_depth() {
                        return Err(self.over(
                            "max_depth",
                            self.max_depth() as u64,
                            format!("directories nested deeper than that (subtree {sub})"),
                        ));
                    }
                    let s = self.totals(sub, depth + 1)?;
                    if depth + 1 + s.depth > self.max_depth() {
                        return Err(self.over(
                            "max_depth",
                            self.max_depth() as u64,
                            format!("directories nested deeper than that (subtree {sub})"),
                        ));
                    }
                    t.entries = t.entries.saturating_add(s.entries);
                    t.bytes = t.bytes.saturating_add(s.bytes);
                    t.links = t.links.saturating_add(s.links);
                    t.depth = t.depth.max(s.depth + 1);
                }
            }
        }
        if t.entries > self.limits.max_entries {
            let what = if *hash == self.root {
                "it holds".to_owned()
            } else {
                format!("its subtree {hash} holds")
            };
            return Err(self.entries_over(&what));
        }
        if self.check_bytes && t.bytes > self.limits.max_bytes {
            return Err(self.over(
                "max_bytes",
                self.limits.max_bytes,
                format!(
                    "its files claim more bytes than that, counted at every path (subtree \
                     {hash})"
                ),
            ));
        }
        self.memo.insert(*hash, t);
        Ok(t)
    }
}

impl Store {
    /// Every entry of the tree `hash`, recursively, with its path from the tree's root
    /// (directories before their contents, sorted): what `cas show` lists, like
    /// `git ls-tree -r -t`. Every tree object read is verified. Within the default
    /// [`TreeLimits`]; [`Store::walk_tree`] streams instead of collecting.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// std::fs::create_dir_all(dir.path().join("src/sub")).unwrap();
    /// std::fs::write(dir.path().join("src/sub/f"), b"x").unwrap();
    /// let tree = store.put_dir(dir.path().join("src"))?;
    /// let paths: Vec<_> = store.list_tree(&tree)?.into_iter().map(|(p, _)| p).collect();
    /// assert_eq!(paths, [std::path::PathBuf::from("sub"), "sub/f".into()]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::walk_tree`].
    pub fn list_tree(&self, hash: &Hash) -> Result<Vec<(PathBuf, TreeEntryKind)>> {
        let mut out = Vec::new();
        self.walk_tree(hash, &TreeLimits::default(), |p, k| {
            out.push((p.to_owned(), k.clone()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every entry of the tree `hash`, recursively, with its path from the
    /// tree's root, in the order [`Store::list_tree`] returns them, as the walk meets them:
    /// memory is the trees on the current path and one number per distinct tree, whatever
    /// the tree's size. Before the first call, one pass reads every distinct tree once and
    /// checks the tree against `limits` (entries counted at every path, and depth), so a
    /// tree bomb fails before anything is listed. An error returned by `f` stops the walk and
    /// is returned.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// # std::fs::create_dir_all(dir.path().join("src/sub")).unwrap();
    /// # std::fs::write(dir.path().join("src/sub/f"), b"x").unwrap();
    /// let tree = store.put_dir(dir.path().join("src"))?;
    /// let mut n = 0;
    /// store.walk_tree(&tree, &cas::TreeLimits::default(), |_path, _kind| {
    ///     n += 1;
    ///     Ok(())
    /// })?;
    /// assert_eq!(n, 2);
    /// let tiny = cas::TreeLimits::default().max_entries(1);
    /// let err = store.walk_tree(&tree, &tiny, |_, _| Ok(())).unwrap_err();
    /// assert!(matches!(err, cas::Error::TreeBudget { budget: "max_entries", .. }));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::TreeBudget`] naming the tree and the budget it exceeds; as
    /// [`Store::read_tree`] for the tree and every subtree; whatever `f` returns.
    pub fn walk_tree(
        &self,
        hash: &Hash,
        limits: &TreeLimits,
        mut f: impl FnMut(&Path, &TreeEntryKind) -> Result<()>,
    ) -> Result<()> {
        self.walk_tree_entries(hash, limits, |p, e| f(p, &e.kind))
    }

    /// [`Store::walk_tree`], with each whole entry (its mode and mtime too, if recorded).
    ///
    /// # Errors
    /// As [`Store::walk_tree`].
    pub fn walk_tree_entries(
        &self,
        hash: &Hash,
        limits: &TreeLimits,
        mut f: impl FnMut(&Path, &TreeEntry) -> Result<()>,
    ) -> Result<()> {
        self.tree_totals(hash, limits, false, &Trees::new())?;
        self.walk_into(hash, Path::new(""), 0, &mut f)
    }

    fn walk_into(
        &self,
        hash: &Hash,
        at: &Path,
        depth: usize,
        f: &mut dyn FnMut(&Path, &TreeEntry) -> Result<()>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::Tree {
                path: at.to_owned(),
                reason: format!("trees nested deeper than {MAX_DEPTH}"),
            });
        }
        for e in self.read_tree(hash)?.entries {
            let p = at.join(std::ffi::OsStr::from_bytes(&e.name));
            f(&p, &e)?;
            if let TreeEntryKind::Dir { hash } = &e.kind {
                self.walk_into(hash, &p, depth + 1, f)?;
            }
        }
        Ok(())
    }

    /// Checks the tree `tree` against `limits` (the bytes too if `check_bytes`) in one pass
    /// reading each distinct tree object once, and returns what a walk of it meets. Trees
    /// found in `known` are not read again.
    pub(crate) fn tree_totals(
        &self,
        tree: &Hash,
        limits: &TreeLimits,
        check_bytes: bool,
        known: &Trees,
    ) -> Result<Totals> {
        Tally {
            store: self,
            root: *tree,
            limits: *limits,
            known,
            check_bytes,
            memo: std::collections::HashMap::new(),
            distinct: 0,
        }
        .totals(tree, 0)
    }

    /// Reads and decodes a tree object.
    ///
    /// # Errors
    /// As [`Store::get`]; [`Error::Malformed`] if the object is not a valid tree.
    pub fn read_tree(&self, hash: &Hash) -> Result<Tree> {
        let obj = self.get(hash)?;
        Tree::decode(&obj).map_err(|reason| Error::Malformed {
            what: "tree object",
            path: self.object_path(hash),
            // The path splits the hash at the fan-out; name it whole, as the user typed it.
            reason: format!("{reason} (object {hash})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::restore::CheckoutOptions;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path().join("s"), crate::Options::default()).unwrap();
        (d, s)
    }

    fn dir(name: &str, hash: Hash) -> TreeEntry {
        TreeEntry {
            mode: None,
            mtime: None,
            name: name.as_bytes().to_vec(),
            kind: TreeEntryKind::Dir { hash },
        }
    }

    /// A tree bomb: `levels` trees, each with entries `a` and `b` both naming
    /// the level below, over an empty tree: 2^(levels+1) - 2 paths from `levels` + 1 objects.
    fn bomb(s: &Store, levels: usize) -> Hash {
        let mut h = s.put_bytes(&Tree::default().encode()).unwrap();
        for _ in 0..levels {
            let t = Tree {
                entries: vec![dir("a", h), dir("b", h)],
            };
            h = s.put_bytes(&t.encode()).unwrap();
        }
        h
    }

    /// Names in `d` other than the store.
    fn debris(d: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "s")
            .collect()
    }

    fn budget_of(e: &Error, tree: &Hash) -> &'static str {
        match e {
            Error::TreeBudget {
                tree: t, budget, ..
            } if t == tree => budget,
            other => panic!("expected a budget error naming {tree}, got {other}"),
        }
    }

    /// A 40-level bomb (2^41 paths) fails at once, naming the tree and the
    /// budget, for every walk: listing, restoring, restoring onto an existing directory;
    /// nothing is created. Before, each walk recursed through every path.
    #[test]
    fn a_tree_bomb_fails_fast_naming_tree_and_budget() {
        let (d, s) = store();
        let t = bomb(&s, 40);
        let e = s.list_tree(&t).unwrap_err();
        assert_eq!(budget_of(&e, &t), "max_entries");
        assert!(e.to_string().contains(&t.to_string()), "{e}");
        let mut seen = 0;
        let e = s
            .walk_tree(&t, &TreeLimits::default(), |_, _| {
                seen += 1;
                Ok(())
            })
            .unwrap_err();
        assert_eq!(budget_of(&e, &t), "max_entries");
        assert_eq!(seen, 0, "entries were listed before the budget check");
        let e = s.checkout(&t, d.path().join("out")).unwrap_err();
        assert_eq!(budget_of(&e, &t), "max_entries");
        assert!(debris(d.path()).is_empty(), "{:?}", debris(d.path()));
        // An existing destination is compared with the tree: bounded the same way.
        std::fs::create_dir_all(d.path().join("there/a/a")).unwrap();
        std::fs::create_dir_all(d.path().join("there/b")).unwrap();
        let e = s.checkout(&t, d.path().join("there")).unwrap_err();
        assert_eq!(budget_of(&e, &t), "max_entries");
    }

    /// Entries are counted at every path (a shared subtree counts once per path), so the
    /// budget means "paths to list or create": a bomb exactly at the budget passes, one entry
    /// more fails; depth and claimed bytes likewise.
    #[test]
    fn budgets_count_every_path_and_are_exact() {
        let (d, s) = store();
        let small = bomb(&s, 4); // 2 + 4 + 8 + 16 = 30 paths, 4 deep
        let at = |n: u64| TreeLimits::default().max_entries(n);
        let mut count = 0;
        s.walk_tree(&small, &at(30), |_, _| {
            count += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(count, 30);
        let err = s.walk_tree(&small, &at(29), |_, _| Ok(())).unwrap_err();
        assert_eq!(budget_of(&err, &small), "max_entries");
        let err = s
            .walk_tree(&small, &TreeLimits::default().max_depth(3), |_, _| Ok(()))
            .unwrap_err();
        assert_eq!(budget_of(&err, &small), "max_depth");
        s.walk_tree(&small, &TreeLimits::default().max_depth(4), |_, _| Ok(()))
            .unwrap();
        let opts = CheckoutOptions::default().limits(at(29));
        let err = s
            .checkout_with(&small, d.path().join("o"), &opts)
            .unwrap_err();
        assert_eq!(budget_of(&err, &small), "max_entries");
        assert!(debris(d.path()).is_empty(), "{:?}", debris(d.path()));
        s.checkout_with(&small, d.path().join("o"), &opts.limits(at(30)))
            .unwrap();
        assert!(d.path().join("o/b/a/b/a").is_dir());

        // Claimed bytes: a file of 10 bytes named at 2^3 paths claims 80.
        let file_obj = s.put_bytes(b"0123456789").unwrap();
        let mut wide = s
            .put_bytes(
                &Tree {
                    entries: vec![TreeEntry {
                        mode: None,
                        mtime: None,
                        name: b"f".to_vec(),
                        kind: TreeEntryKind::File {
                            executable: false,
                            size: 10,
                            hash: file_obj,
                        },
                    }],
                }
                .encode(),
            )
            .unwrap();
        for _ in 0..3 {
            wide = s
                .put_bytes(
                    &Tree {
                        entries: vec![dir("a", wide), dir("b", wide)],
                    }
                    .encode(),
                )
                .unwrap();
        }
        let bytes = |n| CheckoutOptions::default().limits(TreeLimits::default().max_bytes(n));
        let err = s
            .checkout_with(&wide, d.path().join("p"), &bytes(79))
            .unwrap_err();
        assert_eq!(budget_of(&err, &wide), "max_bytes");
        assert!(!d.path().join("p").exists());
        s.checkout_with(&wide, d.path().join("p"), &bytes(80))
            .unwrap();
        assert_eq!(
            std::fs::read(d.path().join("p/b/a/b/f")).unwrap(),
            b"0123456789"
        );
    }

    /// A legitimate tree that holds the same directory twice (one subtree object at two
    /// paths, with a relative link inside) is restored whole: the memoised passes count and
    /// model each path, not each object once.
    #[test]
    fn shared_subtrees_restore_at_every_path() {
        let (d, s) = store();
        let src = d.path().join("src");
        for sub in ["x", "y"] {
            std::fs::create_dir_all(src.join(sub).join("in")).unwrap();
            std::fs::write(src.join(sub).join("in/f"), b"same").unwrap();
            std::os::unix::fs::symlink("in/f", src.join(sub).join("link")).unwrap();
        }
        let t = s.put_dir(&src).unwrap();
        let root = s.read_tree(&t).unwrap();
        assert_eq!(
            root.entries[0].kind, root.entries[1].kind,
            "x and y share a tree"
        );
        s.checkout(&t, d.path().join("out")).unwrap();
        for sub in ["x", "y"] {
            let p = d.path().join("out").join(sub);
            assert_eq!(std::fs::read(p.join("in/f")).unwrap(), b"same");
            assert_eq!(std::fs::read(p.join("link")).unwrap(), b"same");
        }
        let paths: Vec<PathBuf> = s.list_tree(&t).unwrap().into_iter().map(|x| x.0).collect();
        assert_eq!(paths.len(), 8, "{paths:?}");
        // A link that escapes only from one of the paths' point of view is still found.
        let up = s
            .put_bytes(
                &Tree {
                    entries: vec![TreeEntry {
                        mode: None,
                        mtime: None,
                        name: b"l".to_vec(),
                        kind: TreeEntryKind::Symlink {
                            target: b"../../../x".to_vec(),
                        },
                    }],
                }
                .encode(),
            )
            .unwrap();
        let shallow_and_deep = s
            .put_bytes(
                &Tree {
                    entries: vec![dir("a", up)],
                }
                .encode(),
            )
            .unwrap();
        let top = s
            .put_bytes(
                &Tree {
                    entries: vec![dir("d", shallow_and_deep), dir("e", up)],
                }
                .encode(),
            )
            .unwrap();
        let e = s.checkout(&top, d.path().join("esc")).unwrap_err();
        assert!(e.to_string().contains("resolves outside"), "{e}");
    }
}

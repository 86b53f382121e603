//! The symlink model of a tree: every link resolved as the restored (or stored) tree will
//! resolve it, to tell links that stay inside from links that reach outside.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs::MAX_LINKS;
use crate::hash::Hash;
use crate::tree::format::{TreeEntryKind, Trees, MAX_DEPTH};
use crate::Store;

/// A whole tree, names and kinds only (no file contents): what a restore will create, so
/// that every symlink can be resolved as the restored tree will resolve it.
#[derive(Debug, Default)]
pub(crate) struct Model {
    entries: std::collections::BTreeMap<Vec<u8>, Node>,
}

#[derive(Debug)]
pub(crate) enum Node {
    /// A file, with the size its tree entry claims.
    File,
    /// Shared by every path where the same tree appears (built once per hash).
    Dir(std::rc::Rc<Model>),
    Link(Vec<u8>),
}

/// Why a symlink is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Absolute target.
    Absolute,
    /// Climbs above the destination (through `..`, possibly after following other links).
    Outside,
    /// More than [`MAX_LINKS`] links in one resolution.
    TooManyLinks,
}

impl Escape {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Escape::Absolute => "is absolute",
            Escape::Outside => "resolves outside the destination",
            Escape::TooManyLinks => "goes through too many symlinks to check",
        }
    }
}

/// True if the link at `path` (components from the destination) escapes by its own target,
/// without following any other link: absolute, or climbing above the root with `..`.
pub(crate) fn escapes_by_itself(path: &[Vec<u8>], target: &[u8]) -> bool {
    let dir = &path[..path.len().saturating_sub(1)];
    Model::default().resolve(dir, target, &mut 0).is_err()
}

impl Model {
    fn node(&self, path: &[Vec<u8>]) -> Option<&Node> {
        let (first, rest) = path.split_first()?;
        let n = self.entries.get(first)?;
        if rest.is_empty() {
            return Some(n);
        }
        match n {
            Node::Dir(m) => m.node(rest),
            _ => None,
        }
    }

    /// Resolves `target`, a link's content, from the directory `dir` (components from the
    /// destination's root), the way the kernel will once the tree is restored: every link met
    /// on the way — links to links, `..` after a link — is followed within the tree. Names
    /// the tree does not have are taken lexically (the kernel fails on a missing component,
    /// so that is never less strict). Returns where it ends, or why it is refused.
    fn resolve(
        &self,
        dir: &[Vec<u8>],
        target: &[u8],
        links: &mut usize,
    ) -> Result<Vec<Vec<u8>>, Escape> {
        if target.first() == Some(&b'/') {
            return Err(Escape::Absolute);
        }
        let mut cur: Vec<Vec<u8>> = dir.to_vec();
        for comp in target.split(|&c| c == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if cur.pop().is_none() {
                        return Err(Escape::Outside);
                    }
                }
                name => {
                    cur.push(name.to_vec());
                    if let Some(Node::Link(t)) = self.node(&cur) {
                        *links += 1;
                        if *links > MAX_LINKS {
                            return Err(Escape::TooManyLinks);
                        }
                        cur.pop();
                        cur = self.resolve(&cur, t, links)?;
                    }
                }
            }
        }
        Ok(cur)
    }

    /// Every symlink in the tree whose target would resolve outside it: (path, target, why).
    /// Walks every path (a shared subtree's links resolve differently at each): callers
    /// bound the paths first ([`TreeLimits`]).
    pub(crate) fn escaping_links(&self) -> Vec<(Vec<Vec<u8>>, Vec<u8>, Escape)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<Vec<u8>>, &Model)> = vec![(Vec::new(), self)];
        while let Some((dir, m)) = stack.pop() {
            for (name, node) in &m.entries {
                match node {
                    Node::Dir(sub) => {
                        let mut p = dir.clone();
                        p.push(name.clone());
                        stack.push((p, &**sub));
                    }
                    Node::Link(t) => {
                        if let Err(e) = self.resolve(&dir, t, &mut 0) {
                            let mut p = dir.clone();
                            p.push(name.clone());
                            out.push((p, t.clone(), e));
                        }
                    }
                    Node::File => {}
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

pub(crate) fn join_shown(base: &Path, comps: &[Vec<u8>]) -> PathBuf {
    let mut p = base.to_owned();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

impl Store {
    /// Reads a whole tree's names and kinds (not file contents) into a [`Model`], each
    /// distinct tree once: a subtree met at several paths is one shared [`Model`] (`memo`).
    /// Trees found in `known` (those a put just stored, decoded) are not read again.
    pub(crate) fn model(
        &self,
        hash: &Hash,
        shown: &Path,
        depth: usize,
        known: &Trees,
        memo: &mut Models,
    ) -> Result<std::rc::Rc<Model>> {
        if let Some(m) = memo.get(hash) {
            return Ok(std::rc::Rc::clone(m));
        }
        if depth > MAX_DEPTH {
            return Err(Error::Tree {
                path: shown.to_owned(),
                reason: format!("nesting deeper than {MAX_DEPTH} directories"),
            });
        }
        let read;
        let tree = if let Some(t) = known.get(hash) {
            t
        } else {
            read = self.read_tree(hash)?;
            &read
        };
        let mut m = Model::default();
        for e in &tree.entries {
            let node = match &e.kind {
                TreeEntryKind::File { .. } => Node::File,
                TreeEntryKind::Symlink { target } => Node::Link(target.clone()),
                TreeEntryKind::Dir { hash } => {
                    let sub = shown.join(std::ffi::OsStr::from_bytes(&e.name));
                    Node::Dir(self.model(hash, &sub, depth + 1, known, memo)?)
                }
            };
            m.entries.insert(e.name.clone(), node);
        }
        let m = std::rc::Rc::new(m);
        memo.insert(*hash, std::rc::Rc::clone(&m));
        Ok(m)
    }
}

/// Models already built, by tree hash.
pub(crate) type Models = std::collections::HashMap<Hash, std::rc::Rc<Model>>;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn model(entries: Vec<(&str, Node)>) -> Model {
        Model {
            entries: entries
                .into_iter()
                .map(|(n, k)| (n.as_bytes().to_vec(), k))
                .collect(),
        }
    }

    fn link(t: &str) -> Node {
        Node::Link(t.as_bytes().to_vec())
    }

    fn escapes(m: &Model, dir: &[&str], target: &str) -> bool {
        let dir: Vec<Vec<u8>> = dir.iter().map(|d| d.as_bytes().to_vec()).collect();
        m.resolve(&dir, target.as_bytes(), &mut 0).is_err()
    }

    #[test]
    fn lexical_escapes() {
        let m = model(vec![("d", Node::Dir(std::rc::Rc::default()))]);
        assert!(escapes(&m, &["d"], "/etc/passwd"));
        assert!(escapes(&m, &[], ".."));
        assert!(escapes(&m, &[], "a/../../x"));
        assert!(!escapes(&m, &["d"], "../x"));
        assert!(!escapes(&m, &[], "a/b/../c"));
        assert!(escapes(&m, &["d"], "../../x"));
    }

    #[test]
    fn escapes_through_links_in_the_tree() {
        // x -> . makes x/x/x the root: three `..` after it leave the tree.
        let m = model(vec![
            ("x", link(".")),
            ("passwd", link("x/x/x/../../../etc/passwd")),
        ]);
        let bad = m.escaping_links();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, vec![b"passwd".to_vec()]);
        // A link to a link that climbs; a link created later in name order than its user.
        let m = model(vec![
            ("a", link("b/x/../..")),
            ("b", link(".")),
            (
                "d",
                Node::Dir(std::rc::Rc::new(model(vec![("up", link(".."))]))),
            ),
            ("e", link("d/up/..")),
            ("f", link("e")),
            ("ok", link("d/up/b")),
        ]);
        let names: Vec<Vec<u8>> = m
            .escaping_links()
            .into_iter()
            .map(|x| x.0.concat())
            .collect();
        assert_eq!(names, vec![b"a".to_vec(), b"e".to_vec(), b"f".to_vec()]);
        // Loops are bounded, and refused.
        let m = model(vec![("l1", link("l2")), ("l2", link("l1"))]);
        assert_eq!(m.escaping_links().len(), 2);
        assert!(m
            .escaping_links()
            .iter()
            .all(|x| x.2 == Escape::TooManyLinks));
    }
}

//! Directory snapshots. A tree object is an ordinary object whose bytes are `CASTREE\0`, a
//! version (u32 LE), then the serde + bincode (standard config) encoding of its entries sorted
//! by name. The same directory always yields the same bytes, hence the same hash.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::progress::ProgressHook;
use crate::Store;

/// First bytes of every tree object.
pub const TREE_MAGIC: &[u8; 8] = b"CASTREE\0";
/// The tree encoding version this library writes and reads.
pub const TREE_VERSION: u32 = 1;
/// Deepest directory nesting restored (a crafted tree cannot exhaust the stack).
pub(crate) const MAX_DEPTH: usize = 512;

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeEntry {
    /// File name bytes: not empty, not `.` or `..`, no `/` and no NUL.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
}

/// The kind of a tree entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File {
        /// Whether any execute bit was set.
        executable: bool,
        /// Size in bytes.
        size: u64,
        /// The file's object.
        hash: Hash,
    },
    /// A subdirectory.
    Dir {
        /// Its tree object.
        hash: Hash,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as stored (bytes).
        target: Vec<u8>,
    },
}

/// A decoded tree object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Entries, strictly sorted by name.
    pub entries: Vec<TreeEntry>,
}

/// Largest tree object decoded.
const MAX_TREE: usize = 256 << 20;

pub(crate) fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty entry name");
    }
    if name == b"." || name == b".." {
        return Err("entry name is . or ..");
    }
    if name.contains(&b'/') {
        return Err("entry name contains a path separator");
    }
    if name.contains(&0) {
        return Err("entry name contains a NUL byte");
    }
    Ok(())
}

/// What a tree's entries must be beyond their encoding: valid names, strictly sorted (so
/// unique), symlink targets non-empty without NUL.
fn check_entries(entries: &[TreeEntry]) -> std::result::Result<(), String> {
    for (i, e) in entries.iter().enumerate() {
        check_name(&e.name).map_err(|r| format!("{r}: {:?}", String::from_utf8_lossy(&e.name)))?;
        if i > 0 && entries[i - 1].name >= e.name {
            return Err("entries are not strictly sorted (duplicate or out of order)".into());
        }
        if let EntryKind::Symlink { target } = &e.kind {
            if target.is_empty() || target.contains(&0) {
                return Err("symlink target is empty or contains NUL".into());
            }
        }
    }
    Ok(())
}

impl Tree {
    /// Encodes the tree (entries are sorted first, so the result is canonical).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &entries)
    }

    /// Encodes the tree, refusing one larger than any reader decodes (256 MiB).
    ///
    /// # Errors
    /// A message giving the size and the limit.
    pub fn try_encode(&self) -> std::result::Result<Vec<u8>, String> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        codec::try_encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &entries, "tree object")
    }

    /// Sorts the entries, checks them as [`Tree::decode`] does, and encodes them once: the
    /// bytes and the tree (for a writer that must never store a tree a reader would refuse,
    /// without decoding what it just encoded).
    ///
    /// # Errors
    /// What [`Tree::decode`] would say of the bytes, or that they exceed the size limit.
    pub(crate) fn into_checked_encoding(mut self) -> std::result::Result<(Vec<u8>, Tree), String> {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        check_entries(&self.entries)?;
        let bytes = codec::try_encode::<_, MAX_TREE>(
            *TREE_MAGIC,
            TREE_VERSION,
            &self.entries,
            "tree object",
        )?;
        Ok((bytes, self))
    }

    /// True if `bytes` start like a tree object.
    pub fn is_tree(bytes: &[u8]) -> bool {
        bytes.starts_with(TREE_MAGIC)
    }

    /// Decodes and validates a tree: known version, names valid, strictly sorted (so unique),
    /// symlink targets non-empty without NUL, bytes exactly the canonical encoding (as
    /// [`Tree::encode`] writes it). Never panics, whatever the bytes.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Tree, String> {
        let entries: Vec<TreeEntry> =
            codec::decode::<_, MAX_TREE>(bytes, *TREE_MAGIC, TREE_VERSION, "tree object")?;
        check_entries(&entries)?;
        // bincode also reads integers and lengths written in more bytes than needed; such a
        // tree would be a second object (another hash) for the same directory.
        if codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &entries) != bytes {
            return Err("not the canonical encoding of its entries".into());
        }
        Ok(Tree { entries })
    }

    /// Hashes of the objects this tree points to directly (files and subtrees).
    pub fn children(&self) -> impl Iterator<Item = (Hash, bool)> + '_ {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File { hash, .. } => Some((*hash, false)),
            EntryKind::Dir { hash } => Some((*hash, true)),
            EntryKind::Symlink { .. } => None,
        })
    }
}

/// Decoded trees by hash: those a `put_dir` just stored.
pub(crate) type Trees = std::collections::HashMap<Hash, Tree>;

/// How many symlinks one resolution may follow (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// A whole tree, names and kinds only (no file contents): what a restore will create, so
/// that every symlink can be resolved as the restored tree will resolve it.
#[derive(Debug, Default)]
struct Model {
    entries: std::collections::BTreeMap<Vec<u8>, Node>,
}

#[derive(Debug)]
enum Node {
    /// A file, with the size its tree entry claims.
    File(u64),
    Dir(Model),
    Link(Vec<u8>),
}

/// Why a symlink is refused.
#[derive(Debug, PartialEq, Eq)]
enum Escape {
    /// Absolute target.
    Absolute,
    /// Climbs above the destination (through `..`, possibly after following other links).
    Outside,
    /// More than [`MAX_LINKS`] links in one resolution.
    TooManyLinks,
}

impl Escape {
    fn describe(&self) -> &'static str {
        match self {
            Escape::Absolute => "is absolute",
            Escape::Outside => "resolves outside the destination",
            Escape::TooManyLinks => "goes through too many symlinks to check",
        }
    }
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
    /// The sum of the file sizes the tree's entries claim (saturating: they are input).
    fn file_bytes(&self) -> u64 {
        self.entries.values().fold(0u64, |t, n| match n {
            Node::File(size) => t.saturating_add(*size),
            Node::Dir(m) => t.saturating_add(m.file_bytes()),
            Node::Link(_) => t,
        })
    }

    fn escaping_links(&self) -> Vec<(Vec<Vec<u8>>, Vec<u8>, Escape)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<Vec<u8>>, &Model)> = vec![(Vec::new(), self)];
        while let Some((dir, m)) = stack.pop() {
            for (name, node) in &m.entries {
                match node {
                    Node::Dir(sub) => {
                        let mut p = dir.clone();
                        p.push(name.clone());
                        stack.push((p, sub));
                    }
                    Node::Link(t) => {
                        if let Err(e) = self.resolve(&dir, t, &mut 0) {
                            let mut p = dir.clone();
                            p.push(name.clone());
                            out.push((p, t.clone(), e));
                        }
                    }
                    Node::File(_) => {}
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

fn join_shown(base: &Path, comps: &[Vec<u8>]) -> PathBuf {
    let mut p = base.to_owned();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

/// What [`Store::put_dir_report`] noticed about a stored directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutDirReport {
    /// Symlinks whose target resolves outside the stored directory (absolute, or climbing
    /// out, possibly through other links). They are stored as they are; a restore refuses
    /// them unless [`CheckoutOptions::allow_external_symlinks`] is set.
    pub external_symlinks: u64,
    /// One of them, with its target, as an example.
    pub example: Option<(PathBuf, PathBuf)>,
    /// With the stat cache: files whose hash came from it (not read).
    pub cache_hits: u64,
    /// With the stat cache: files that were read and hashed.
    pub hashed: u64,
    /// With the stat cache: why it was ignored or not written, if it was (a damaged cache
    /// file is ignored, never an error).
    pub cache_warning: Option<String>,
}

/// Options of [`Store::put_dir_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutDirOptions {
    /// Use and update this user's stat cache of the store (docs/format.md §10): a file whose
    /// device, inode, size, mtime and ctime are what they were when it was last stored, and
    /// whose object is still in the store, is not read again. Off by default in the library;
    /// the CLI turns it on (`cas put -r`, off with `--no-cache`).
    pub stat_cache: bool,
    /// Told the input bytes done so far (phase `"put"`): files read, files found unchanged in
    /// the stat cache, and the directory listings (tree objects) stored. The total is `None`:
    /// the tree is not walked twice to count it. Returning `false` stops the put with
    /// [`Error::Interrupted`] (what was staged is removed; objects already published stay, as
    /// after any put).
    pub progress: Option<ProgressHook>,
}

impl PutDirOptions {
    /// Sets [`PutDirOptions::progress`] (builder style).
    #[must_use]
    pub fn progress(mut self, f: impl Fn(crate::Progress) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(ProgressHook::new(f));
        self
    }

    /// Sets [`PutDirOptions::stat_cache`] (builder style).
    #[must_use]
    pub fn stat_cache(mut self, on: bool) -> Self {
        self.stat_cache = on;
        self
    }
}

/// Options of [`Store::checkout_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckoutOptions {
    /// Restore symlinks whose target resolves outside the destination verbatim, as `tar`,
    /// `git` and `cp -a` do, instead of refusing the restore. The restore itself still never
    /// writes through any link; but whatever later opens such a link — a build, a shell
    /// following `out/passwd` — reaches outside the destination, wherever the tree's author
    /// pointed it. Only for trees whose author you trust.
    pub allow_external_symlinks: bool,
    /// Told the bytes of files restored so far (phase `"restore"`), out of the tree's total,
    /// known before the first file is written. It is called from the restoring threads.
    /// Returning `false` stops the restore with [`Error::Interrupted`]; nothing is left at
    /// the destination.
    pub progress: Option<ProgressHook>,
}

impl CheckoutOptions {
    /// Sets [`CheckoutOptions::progress`] (builder style).
    #[must_use]
    pub fn progress(mut self, f: impl Fn(crate::Progress) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(ProgressHook::new(f));
        self
    }

    /// Sets [`CheckoutOptions::allow_external_symlinks`] (builder style).
    #[must_use]
    pub fn allow_external_symlinks(mut self, on: bool) -> Self {
        self.allow_external_symlinks = on;
        self
    }
}

impl Store {
    /// Stores a directory: every file as an object, every directory as a tree object; returns
    /// the root tree's hash. Symlinks are stored, not followed. Identical files are stored once.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let src = dir.path().join("src");
    /// std::fs::create_dir_all(src.join("sub")).unwrap();
    /// std::fs::write(src.join("sub/a.txt"), b"hi").unwrap();
    /// let tree = store.put_dir(&src)?;
    /// store.checkout(&tree, dir.path().join("copy"))?;
    /// assert_eq!(std::fs::read(dir.path().join("copy/sub/a.txt")).unwrap(), b"hi");
    /// assert_eq!(store.put_dir(dir.path().join("copy"))?, tree);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] naming the path that could not be read; [`Error::Tree`] for a file type
    /// that cannot be stored (socket, fifo, device).
    pub fn put_dir(&self, path: impl AsRef<Path>) -> Result<Hash> {
        crate::putdir::put_dir(self, path.as_ref(), None, &mut Trees::new(), None)
    }

    /// [`Store::put_dir`], also reporting symlinks in the directory whose targets resolve
    /// outside it (those a default restore will refuse).
    ///
    /// # Errors
    /// As [`Store::put_dir`].
    pub fn put_dir_report(&self, path: impl AsRef<Path>) -> Result<(Hash, PutDirReport)> {
        self.put_dir_with(path, &PutDirOptions::default())
    }

    /// [`Store::put_dir_report`] with options: with [`PutDirOptions::stat_cache`], files
    /// unchanged since they were last stored (by `lstat`, and racy-git safe) are not read
    /// again. The cache is a hint: a damaged one is ignored (see
    /// [`PutDirReport::cache_warning`]) and the stored tree is the same with or without it.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// # let src = dir.path().join("src");
    /// # std::fs::create_dir_all(&src).unwrap();
    /// # std::fs::write(src.join("a"), b"a").unwrap();
    /// let opts = cas::PutDirOptions::default().stat_cache(true);
    /// let (tree, _) = store.put_dir_with(&src, &opts)?;
    /// assert_eq!(store.put_dir_with(&src, &opts)?.0, tree);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::put_dir`].
    pub fn put_dir_with(
        &self,
        path: impl AsRef<Path>,
        opts: &PutDirOptions,
    ) -> Result<(Hash, PutDirReport)> {
        let path = path.as_ref();
        let mut cache = opts
            .stat_cache
            .then(|| crate::statcache::StatCache::load(self));
        let mut trees = Trees::new();
        let hash = crate::putdir::put_dir(
            self,
            path,
            cache.as_mut(),
            &mut trees,
            opts.progress.as_ref(),
        )?;
        let model = self.model(&hash, path, 0, &trees)?;
        drop(trees);
        let links = model.escaping_links();
        let mut report = PutDirReport {
            external_symlinks: links.len() as u64,
            example: links.first().map(|(p, t, _)| {
                (
                    join_shown(path, p),
                    PathBuf::from(std::ffi::OsStr::from_bytes(t)),
                )
            }),
            ..PutDirReport::default()
        };
        if let Some(mut c) = cache {
            c.save(self);
            report.cache_hits = c.hits;
            report.hashed = c.hashed;
            report.cache_warning = c.warning;
        }
        Ok((hash, report))
    }

    /// True if the directory `dir` holds exactly the tree `tree`: the same names, kinds,
    /// executable bits, symlink targets and file contents (hashed), nothing more. Links are
    /// compared, never followed.
    fn dir_holds_tree(&self, dir: &Path, tree: &Hash, depth: usize) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Ok(false);
        }
        let t = self.read_tree(tree)?;
        let count = std::fs::read_dir(dir)
            .map_err(Error::at("read directory", dir))?
            .count();
        if count != t.entries.len() {
            return Ok(false);
        }
        for e in &t.entries {
            let p = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                return Ok(false);
            };
            let same = match &e.kind {
                EntryKind::File {
                    executable,
                    size,
                    hash,
                } => {
                    m.is_file()
                        && m.len() == *size
                        && (m.permissions().mode() & 0o111 != 0) == *executable
                        && std::fs::File::open(&p)
                            .and_then(|f| crate::read::hash_file(&f, false))
                            .is_ok_and(|h| h == *hash)
                }
                EntryKind::Dir { hash } => {
                    m.is_dir() && self.dir_holds_tree(&p, hash, depth + 1)?
                }
                EntryKind::Symlink { target } => {
                    m.file_type().is_symlink()
                        && std::fs::read_link(&p)
                            .is_ok_and(|l| l.as_os_str().as_bytes() == target.as_slice())
                }
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every entry of the tree `hash`, recursively, with its path from the tree's root
    /// (directories before their contents, sorted): what `cas show` lists, like
    /// `git ls-tree -r -t`. Every tree object read is verified.
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
    /// As [`Store::read_tree`], for the tree and every subtree.
    pub fn list_tree(&self, hash: &Hash) -> Result<Vec<(PathBuf, EntryKind)>> {
        let mut out = Vec::new();
        self.list_tree_into(hash, Path::new(""), 0, &mut out)?;
        Ok(out)
    }

    fn list_tree_into(
        &self,
        hash: &Hash,
        at: &Path,
        depth: usize,
        out: &mut Vec<(PathBuf, EntryKind)>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::Tree {
                path: at.to_owned(),
                reason: format!("trees nested deeper than {MAX_DEPTH}"),
            });
        }
        for e in self.read_tree(hash)?.entries {
            let p = at.join(std::ffi::OsStr::from_bytes(&e.name));
            let sub = match &e.kind {
                EntryKind::Dir { hash } => Some(*hash),
                _ => None,
            };
            out.push((p.clone(), e.kind));
            if let Some(h) = sub {
                self.list_tree_into(&h, &p, depth + 1, out)?;
            }
        }
        Ok(())
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

    /// Restores a tree into `dest`, which must not exist, refusing symlinks that would
    /// resolve outside it (see [`Store::checkout_with`]).
    ///
    /// # Errors
    /// As [`Store::checkout_with`].
    pub fn checkout(&self, tree: &Hash, dest: impl AsRef<Path>) -> Result<()> {
        self.checkout_with(tree, dest, &CheckoutOptions::default())
    }

    /// Restores a tree into `dest`, which must not exist. Everything is written into a
    /// temporary directory beside `dest` and renamed into place when complete, so a failed
    /// restore leaves no partial `dest`.
    ///
    /// Nothing is ever written outside `dest`: every file and directory is created relative
    /// to the descriptor of a directory this restore created (`O_CREAT | O_EXCL |
    /// O_NOFOLLOW`, `mkdirat`), so no link — restored or planted — is ever followed. Before
    /// anything is created, every symlink in the whole tree is resolved the way the restored
    /// tree will resolve it (links to links, `..` after a link, with a bound on the number of
    /// links); one that would lead outside `dest`, or an absolute one, is refused, unless
    /// `opts` allows external links.
    ///
    /// # Errors
    /// [`Error::Malformed`] if `tree` is not a tree; [`Error::Tree`] naming the offending entry
    /// for unsafe entries or if `dest` exists; object errors as for [`Store::get`].
    pub fn checkout_with(
        &self,
        tree: &Hash,
        dest: impl AsRef<Path>,
        opts: &CheckoutOptions,
    ) -> Result<()> {
        let dest = dest.as_ref();
        self.refuse_output_inside(dest)?;
        if let Ok(m) = std::fs::symlink_metadata(dest) {
            // Restoring the same tree twice (a job re-run, a second consumer) is a success.
            if m.is_dir() && self.dir_holds_tree(dest, tree, 0)? {
                return Ok(());
            }
            return Err(Error::Tree {
                path: dest.to_owned(),
                reason: "already exists and does not hold this tree; choose a new destination"
                    .into(),
            });
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let model = self.model(tree, dest, 0, &Trees::new())?;
        if !opts.allow_external_symlinks {
            if let Some((p, t, why)) = model.escaping_links().into_iter().next() {
                return Err(Error::Tree {
                    path: join_shown(dest, &p),
                    reason: format!(
                        "symlink target {:?} {} (refused; --allow-external-symlinks restores \
                         such links as they are)",
                        String::from_utf8_lossy(&t),
                        why.describe()
                    ),
                });
            }
        }
        let root = self.read_tree(tree)?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.cas-checkout."))
            .tempdir_in(parent)
            .map_err(Error::at("create temporary directory in", parent))?;
        // Removed by the process's clean-up if it stops on a signal (crate::cleanup).
        let _reg = crate::cleanup::register_temp(tmp.path());
        if crate::cleanup::abandoned() {
            return Err(Error::Interrupted);
        }
        let dir = fs::open_dir_nofollow(tmp.path()).map_err(Error::at("open", tmp.path()))?;
        // Directories by one thread, files by a small pool, each verified (crate::restore);
        // the temporary directory (mode 0700) becomes visible only once all of it is done.
        let dir = std::sync::Arc::new(dir);
        let progress = opts.progress.as_ref().map(|p| (p, model.file_bytes()));
        drop(model);
        crate::restore::restore(self, &root, &dir, dest, progress)?;
        let mode = 0o777 & !fs::umask();
        fs::set_dir_mode(&dir, mode).map_err(Error::at("set permissions of", tmp.path()))?;
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename_dir_noreplace(&tmp_path, dest) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(Error::io("rename restored tree to", dest, e));
        }
        Ok(())
    }

    /// Reads a whole tree's names and kinds (not file contents) into a [`Model`].
    /// Trees found in `known` (those a put just stored, decoded) are not read again.
    fn model(&self, hash: &Hash, shown: &Path, depth: usize, known: &Trees) -> Result<Model> {
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
                EntryKind::File { size, .. } => Node::File(*size),
                EntryKind::Symlink { target } => Node::Link(target.clone()),
                EntryKind::Dir { hash } => {
                    let sub = shown.join(std::ffi::OsStr::from_bytes(&e.name));
                    Node::Dir(self.model(hash, &sub, depth + 1, known)?)
                }
            };
            m.entries.insert(e.name.clone(), node);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = TreeEntry> {
        let name = proptest::collection::vec(any::<u8>(), 1..12);
        let kind = prop_oneof![
            (any::<bool>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(x, s, h)| {
                EntryKind::File {
                    executable: x,
                    size: s,
                    hash: Hash::from_bytes(h),
                }
            }),
            any::<[u8; 32]>().prop_map(|h| EntryKind::Dir {
                hash: Hash::from_bytes(h)
            }),
            proptest::collection::vec(1u8..=255, 1..20)
                .prop_map(|t| EntryKind::Symlink { target: t }),
        ];
        (name, kind).prop_map(|(name, kind)| TreeEntry { name, kind })
    }

    fn model(entries: Vec<(&str, Node)>) -> Model {
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
    fn longer_than_needed_integers_are_rejected() {
        // Found by fuzzing (fuzz/corpus/tree/crash-noncanonical-*): the empty list with its
        // length as a 2-byte varint decoded, a second object for the empty directory.
        let mut bytes = Tree::default().encode();
        assert_eq!(bytes.pop(), Some(0));
        bytes.extend_from_slice(&[251, 0, 0]);
        let err = Tree::decode(&bytes).unwrap_err();
        assert!(err.contains("canonical"), "{err}");
    }

    #[test]
    fn lexical_escapes() {
        let m = model(vec![("d", Node::Dir(Model::default()))]);
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
            ("d", Node::Dir(model(vec![("up", link(".."))]))),
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

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_canonical(entries in proptest::collection::vec(arb_entry(), 0..8)) {
            let mut valid: Vec<TreeEntry> = entries.into_iter().filter(|e| check_name(&e.name).is_ok()).collect();
            valid.sort_by(|a, b| a.name.cmp(&b.name));
            valid.dedup_by(|a, b| a.name == b.name);
            let t = Tree { entries: valid.clone() };
            let bytes = t.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), t.clone());
            // Order of construction does not matter.
            let mut rev = valid;
            rev.reverse();
            prop_assert_eq!(Tree { entries: rev }.encode(), bytes);
        }

        /// The writer's check agrees with the reader's: whatever entries (bad names,
        /// duplicates, empty link targets included), `into_checked_encoding` succeeds exactly
        /// when `decode` accepts the canonical encoding, and gives back what decode reads.
        #[test]
        fn the_checked_encoding_is_what_decode_accepts(
            entries in proptest::collection::vec(arb_entry(), 0..8),
            names in proptest::collection::vec(prop_oneof![
                Just(b"".to_vec()), Just(b".".to_vec()), Just(b"a/b".to_vec()),
                Just(b"dup".to_vec()), Just(b"ok".to_vec())], 0..3),
        ) {
            let mut entries = entries;
            for n in names {
                entries.push(TreeEntry { name: n, kind: EntryKind::Symlink { target: Vec::new() } });
                entries.push(TreeEntry {
                    name: b"dup".to_vec(),
                    kind: EntryKind::Dir { hash: Hash::from_bytes([1; 32]) },
                });
            }
            let t = Tree { entries };
            let mut sorted = t.entries.clone();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let canonical = codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &sorted);
            match (t.into_checked_encoding(), Tree::decode(&canonical)) {
                (Ok((bytes, tree)), Ok(decoded)) => {
                    prop_assert_eq!(&bytes, &canonical);
                    prop_assert_eq!(tree, decoded);
                }
                (Err(_), Err(_)) => {}
                (w, r) => prop_assert!(false, "writer {:?} but reader {:?}", w.map(|_| ()), r.map(|_| ())),
            }
        }

        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = TREE_MAGIC.to_vec();
            bytes.extend_from_slice(&TREE_VERSION.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = Tree::decode(&bytes);
            let _ = Tree::decode(&body);
        }
    }
}

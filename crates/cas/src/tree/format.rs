//! Directory snapshots. A tree object is an ordinary object whose bytes are `CASTREE\0`, a
//! version (u32 LE), then the serde + bincode (standard config) encoding of its entries sorted
//! by name. The same directory always yields the same bytes, hence the same hash. Version 1
//! entries carry names, kinds, sizes, hashes, the executable bit and link targets; version 2
//! entries also the permission bits and, when asked, the mtime (docs/format.md, "Tree
//! object").

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs;
use crate::fs::MAX_LINKS;
use crate::hash::Hash;
use crate::progress::ProgressHook;
use crate::Store;

/// First bytes of every tree object.
pub const TREE_MAGIC: &[u8; 8] = b"CASTREE\0";
/// The newest tree encoding version this library writes and reads. A tree whose entries carry
/// no mode and no mtime is written as version 1 (the bytes every earlier cas wrote); any other
/// as version 2. Both are read.
pub const TREE_VERSION: u32 = 2;
/// The first tree encoding version: no modes, no mtimes.
const TREE_V1: u32 = 1;
/// Permission bits a tree keeps: user, group and other rwx, never setuid, setgid or sticky.
pub const TREE_MODE_BITS: u32 = 0o777;
/// Deepest directory nesting any walk descends, whatever [`TreeLimits::max_depth`] says: the
/// walks recurse, and a crafted tree must not exhaust the stack.
pub(crate) const MAX_DEPTH: usize = 1024;

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

/// One entry of a tree. Its serde encoding is the version 2 entry; version 1 entries are
/// [`EntryV1`] (no mode, no mtime).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeEntry {
    /// File name bytes: not empty, not `.` or `..`, no `/` and no NUL.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: TreeEntryKind,
    /// Permission bits of a file or directory (at most [`TREE_MODE_BITS`]; a file's
    /// `executable` says whether any of its 0o111 bits is set). `None`: not recorded (every
    /// entry of a version 1 tree, and every symlink): a restore uses 0o777 for directories and
    /// executable files, 0o666 for other files, masked by the umask.
    pub mode: Option<u32>,
    /// Modification time, nanoseconds since 1970 (UTC), if recorded (`put -r --keep-mtime`,
    /// [`PutDirOptions::keep_mtime`]).
    pub mtime: Option<i64>,
}

impl TreeEntry {
    /// An entry with no mode and no mtime recorded (what a version 1 tree holds).
    ///
    /// ```
    /// let e = cas::TreeEntry::new(b"sub".to_vec(), cas::TreeEntryKind::Dir { hash: cas::Hash::of(b"") });
    /// assert_eq!((e.mode, e.mtime), (None, None));
    /// ```
    #[must_use]
    pub fn new(name: Vec<u8>, kind: TreeEntryKind) -> TreeEntry {
        TreeEntry {
            name,
            kind,
            mode: None,
            mtime: None,
        }
    }
}

/// A version 1 entry on the wire: a name and a kind.
#[derive(serde::Serialize, serde::Deserialize)]
struct EntryV1 {
    name: Vec<u8>,
    kind: TreeEntryKind,
}

/// The version a tree of these entries is written in: 1 unless an entry carries a mode or an
/// mtime. One directory has one encoding: a version 2 tree that could be version 1 is not
/// canonical.
fn version_of(entries: &[TreeEntry]) -> u32 {
    if entries
        .iter()
        .any(|e| e.mode.is_some() || e.mtime.is_some())
    {
        TREE_VERSION
    } else {
        TREE_V1
    }
}

/// A version 1 entry, borrowed: serialised exactly as [`EntryV1`] (serde's `&T` is `T`).
#[derive(serde::Serialize)]
struct EntryV1Ref<'a> {
    name: &'a Vec<u8>,
    kind: &'a TreeEntryKind,
}

/// A writer that compares what is written with `rest`, consuming it: whether an encoding
/// equals given bytes, without making a second copy of them (a decoded tree's canonical check
/// used to re-encode the whole tree beside its bytes: issue 26).
struct Compare<'a> {
    rest: &'a [u8],
    same: bool,
}

impl std::io::Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(r) if self.same => self.rest = r,
            _ => self.same = false,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// True if `bytes` are exactly the canonical encoding of `entries` (sorted) in their version.
fn is_canonical(entries: &[TreeEntry], bytes: &[u8]) -> bool {
    let version = version_of(entries);
    let mut header = TREE_MAGIC.to_vec();
    header.extend_from_slice(&version.to_le_bytes());
    let Some(body) = bytes.strip_prefix(header.as_slice()) else {
        return false;
    };
    let mut w = Compare {
        rest: body,
        same: true,
    };
    let config = bincode::config::standard();
    let written = if version == TREE_V1 {
        let _ = bincode::serde::encode_into_std_write(entries.len() as u64, &mut w, config);
        entries.iter().try_for_each(|e| {
            let v1 = EntryV1Ref {
                name: &e.name,
                kind: &e.kind,
            };
            bincode::serde::encode_into_std_write(&v1, &mut w, config).map(|_| ())
        })
    } else {
        bincode::serde::encode_into_std_write(entries, &mut w, config).map(|_| ())
    };
    written.is_ok() && w.same && w.rest.is_empty()
}

/// Encodes sorted entries in their version (see [`version_of`]).
fn encode_entries(entries: &[TreeEntry]) -> std::result::Result<Vec<u8>, String> {
    if version_of(entries) == TREE_V1 {
        let v1: Vec<EntryV1> = entries
            .iter()
            .map(|e| EntryV1 {
                name: e.name.clone(),
                kind: e.kind.clone(),
            })
            .collect();
        codec::try_encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_V1, &v1, "tree object")
    } else {
        codec::try_encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, entries, "tree object")
    }
}

/// The kind of a tree entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TreeEntryKind {
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
        let shown = || String::from_utf8_lossy(&e.name).into_owned();
        if let Some(mode) = e.mode {
            if mode & !TREE_MODE_BITS != 0 {
                return Err(format!(
                    "mode {mode:o} of {:?} has bits beyond rwxrwxrwx (setuid, setgid and \
                     sticky are never kept)",
                    shown()
                ));
            }
        }
        match &e.kind {
            TreeEntryKind::Symlink { target } => {
                if target.is_empty() || target.contains(&0) {
                    return Err("symlink target is empty or contains NUL".into());
                }
                if e.mode.is_some() {
                    return Err(format!("symlink {:?} carries a mode", shown()));
                }
            }
            TreeEntryKind::File { executable, .. } => {
                if e.mode.is_some_and(|m| (m & 0o111 != 0) != *executable) {
                    return Err(format!(
                        "file {:?}: its executable flag disagrees with its mode",
                        shown()
                    ));
                }
            }
            TreeEntryKind::Dir { .. } => {}
        }
    }
    Ok(())
}

impl Tree {
    /// Encodes the tree (entries are sorted first, so the result is canonical): version 1 if
    /// no entry carries a mode or an mtime, else version 2. A tree over the size limit is
    /// encoded whole, and every reader refuses it ([`Tree::try_encode`] refuses to).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        if version_of(&entries) == TREE_V1 {
            let v1: Vec<EntryV1> = entries
                .into_iter()
                .map(|e| EntryV1 {
                    name: e.name,
                    kind: e.kind,
                })
                .collect();
            codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_V1, &v1)
        } else {
            codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &entries)
        }
    }

    /// The encoding version of this tree: 1 if no entry carries a mode or an mtime, else 2.
    ///
    /// ```
    /// assert_eq!(cas::Tree::default().version(), 1);
    /// ```
    pub fn version(&self) -> u32 {
        version_of(&self.entries)
    }

    /// Encodes the tree, refusing one larger than any reader decodes (256 MiB).
    ///
    /// # Errors
    /// A message giving the size and the limit.
    pub fn try_encode(&self) -> std::result::Result<Vec<u8>, String> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        encode_entries(&entries)
    }

    /// Sorts the entries, checks them as [`Tree::decode`] does, and encodes them once: the
    /// bytes and the tree (for a writer that must never store a tree a reader would refuse,
    /// without decoding what it just encoded).
    ///
    /// # Errors
    /// What [`Tree::decode`] would say of the bytes, or that they exceed the size limit.
    #[cfg(test)]
    pub(crate) fn into_checked_encoding(mut self) -> std::result::Result<(Vec<u8>, Tree), String> {
        self.entries.sort_by(|a, b| a.name.cmp(&b.name));
        check_entries(&self.entries)?;
        let bytes = encode_entries(&self.entries)?;
        Ok((bytes, self))
    }

    /// True if `bytes` start like a tree object.
    pub fn is_tree(bytes: &[u8]) -> bool {
        bytes.starts_with(TREE_MAGIC)
    }

    /// The one way to tell a tree from a blob by its head: reads the first
    /// [`TREE_MAGIC`]`.len()` bytes of `object` (fewer if it is shorter) and says whether they
    /// are the tree magic. Nothing is verified: a blob may start with the magic too, so a
    /// tree is only known to be one once [`Tree::decode`] accepts it.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let blob = store.put_bytes(b"just bytes")?;
    /// assert!(!cas::Tree::sniff(store.reader(&blob)?).unwrap());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The reader's error (an interrupted read is retried).
    pub fn sniff(object: impl std::io::Read) -> std::io::Result<bool> {
        let mut head = [0u8; TREE_MAGIC.len()];
        let n = read_head(object, &mut head)?;
        Ok(Tree::is_tree(&head[..n]))
    }

    /// Decodes and validates a tree: known version, names valid, strictly sorted (so unique),
    /// symlink targets non-empty without NUL, bytes exactly the canonical encoding (as
    /// [`Tree::encode`] writes it). Never panics, whatever the bytes.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Tree, String> {
        let version = bytes
            .strip_prefix(TREE_MAGIC.as_slice())
            .and_then(<[u8]>::first_chunk::<4>)
            .map(|v| u32::from_le_bytes(*v));
        let entries: Vec<TreeEntry> = match version {
            Some(TREE_VERSION) => {
                codec::decode::<_, MAX_TREE>(bytes, *TREE_MAGIC, TREE_VERSION, "tree object")?
            }
            Some(TREE_V1) | None => {
                let v1: Vec<EntryV1> =
                    codec::decode::<_, MAX_TREE>(bytes, *TREE_MAGIC, TREE_V1, "tree object")?;
                v1.into_iter()
                    .map(|e| TreeEntry::new(e.name, e.kind))
                    .collect()
            }
            Some(v) => {
                return Err(format!(
                    "tree object format version {v} is not supported (this cas reads versions \
                     {TREE_V1} and {TREE_VERSION})"
                ))
            }
        };
        check_entries(&entries)?;
        // bincode also reads integers and lengths written in more bytes than needed, and a
        // version 2 tree could hold what version 1 says; either would be a second object
        // (another hash) for the same directory.
        if !is_canonical(&entries, bytes) {
            return Err("not the canonical encoding of its entries".into());
        }
        Ok(Tree { entries })
    }

    /// Hashes of the objects this tree points to directly (files and subtrees).
    pub fn children(&self) -> impl Iterator<Item = (Hash, bool)> + '_ {
        self.entries.iter().filter_map(|e| match &e.kind {
            TreeEntryKind::File { hash, .. } => Some((*hash, false)),
            TreeEntryKind::Dir { hash } => Some((*hash, true)),
            TreeEntryKind::Symlink { .. } => None,
        })
    }
}

/// A tree's encoding written entry by entry, for `put -r` (issue 26): the bytes
/// [`Tree::into_checked_encoding`] gives for the same entries, with the same checks, without
/// holding the entries. The count and the version are given first (a bincode sequence is its
/// length, then each element encoded on its own).
pub(crate) struct TreeWriter {
    bytes: Vec<u8>,
    version: u32,
    left: usize,
    prev: Option<Vec<u8>>,
}

impl TreeWriter {
    /// A writer of `count` entries, in `version` (1: none may carry a mode or an mtime; 2:
    /// at least one must).
    pub(crate) fn new(count: usize, version: u32) -> TreeWriter {
        let mut bytes = TREE_MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        let _ = bincode::serde::encode_into_std_write(
            count as u64,
            &mut bytes,
            bincode::config::standard(),
        );
        TreeWriter {
            bytes,
            version,
            left: count,
            prev: None,
        }
    }

    /// Appends the next entry (names must come strictly sorted).
    ///
    /// # Errors
    /// What [`Tree::decode`] would say of such an entry.
    pub(crate) fn push(&mut self, e: TreeEntry) -> std::result::Result<(), String> {
        check_entries(std::slice::from_ref(&e))?;
        if self.prev.as_ref().is_some_and(|p| *p >= e.name) {
            return Err("entries are not strictly sorted (duplicate or out of order)".into());
        }
        if self.left == 0 {
            return Err("more entries than announced".into());
        }
        self.left -= 1;
        let config = bincode::config::standard();
        let written = if self.version == TREE_V1 {
            if e.mode.is_some() || e.mtime.is_some() {
                return Err("a version 1 tree entry with a mode or an mtime".into());
            }
            let v1 = EntryV1 {
                name: e.name,
                kind: e.kind,
            };
            let w = bincode::serde::encode_into_std_write(&v1, &mut self.bytes, config);
            self.prev = Some(v1.name);
            w
        } else {
            let w = bincode::serde::encode_into_std_write(&e, &mut self.bytes, config);
            self.prev = Some(e.name);
            w
        };
        written
            .map(|_| ())
            .map_err(|e| format!("cannot encode a tree entry: {e}"))
    }

    /// The tree object's bytes.
    ///
    /// # Errors
    /// If fewer entries came than announced, a version 2 tree that version 1 could hold, or
    /// the size limit every reader enforces.
    pub(crate) fn finish(self) -> std::result::Result<Vec<u8>, String> {
        if self.left != 0 {
            return Err("fewer entries than announced".into());
        }
        let body = self.bytes.len() - 12;
        if body > MAX_TREE {
            return Err(format!(
                "the tree object would be {body} bytes, over the {MAX_TREE}-byte limit every \
                 reader enforces"
            ));
        }
        Ok(self.bytes)
    }
}

/// Decoded trees by hash: those a `put_dir` just stored.
pub(crate) type Trees = std::collections::HashMap<Hash, Tree>;

/// How many symlinks one resolution may follow (the kernel's own limit is 40).
/// Reads up to `head.len()` bytes from the start of `r` (fewer at its end), retrying an
/// interrupted read: the head [`Tree::sniff`] looks at, for callers that keep the bytes.
pub(crate) fn read_head(mut r: impl std::io::Read, head: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A whole tree, names and kinds only (no file contents): what a restore will create, so
/// that every symlink can be resolved as the restored tree will resolve it.
#[derive(Debug, Default)]
struct Model {
    entries: std::collections::BTreeMap<Vec<u8>, Node>,
}

#[derive(Debug)]
enum Node {
    /// A file, with the size its tree entry claims.
    File,
    /// Shared by every path where the same tree appears (built once per hash).
    Dir(std::rc::Rc<Model>),
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

/// True if the link at `path` (components from the destination) escapes by its own target,
/// without following any other link: absolute, or climbing above the root with `..`.
fn escapes_by_itself(path: &[Vec<u8>], target: &[u8]) -> bool {
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
    fn escaping_links(&self) -> Vec<(Vec<Vec<u8>>, Vec<u8>, Escape)> {
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
    /// With [`PutDirOptions::skip_special`]: FIFOs, sockets and devices left out.
    pub skipped_special: u64,
    /// One of them, as an example.
    pub skipped_example: Option<PathBuf>,
}

/// Options of [`Store::put_dir_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutDirOptions {
    /// Use and update this user's stat cache of the store (docs/format.md "The stat cache of `put
    /// -r`"): a file whose device, inode, size, mtime and ctime are what they were when it was last
    /// stored, and whose object is still in the store, is not read again. Off by default in the
    /// library; the CLI turns it on (`cas put -r`, off with `--no-cache`).
    pub stat_cache: bool,
    /// Told the input bytes done so far (phase `"put"`): files read, files found unchanged in
    /// the stat cache, and the directory listings (tree objects) stored. The total is `None`:
    /// the tree is not walked twice to count it. Returning `false` stops the put with
    /// [`Error::Interrupted`] (what was staged is removed; objects already published stay, as
    /// after any put).
    pub progress: Option<ProgressHook>,
    /// Record every file's and directory's mtime (nanoseconds) in the tree (`put -r
    /// --keep-mtime`). Off by default: the tree of a directory then depends on its contents
    /// and modes only, so two puts of the same files made at different times give one hash
    /// (as git; tar and restic keep mtimes). Symlinks' mtimes are never recorded.
    pub keep_mtime: bool,
    /// Leave FIFOs, sockets and devices out of the tree, counted in
    /// [`PutDirReport::skipped_special`] (`put -r --skip-special`), instead of failing on
    /// the first one.
    pub skip_special: bool,
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

    /// Sets [`PutDirOptions::keep_mtime`] (builder style).
    #[must_use]
    pub fn keep_mtime(mut self, on: bool) -> Self {
        self.keep_mtime = on;
        self
    }

    /// Sets [`PutDirOptions::skip_special`] (builder style).
    #[must_use]
    pub fn skip_special(mut self, on: bool) -> Self {
        self.skip_special = on;
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
    /// Budgets of the restore (entries at every path, depth, file bytes claimed), checked
    /// before anything is created: a tree over them fails with [`Error::TreeBudget`].
    pub limits: TreeLimits,
    /// Give files and directories exactly the permission bits their entries record (`get -r
    /// --no-umask`), as `tar -p` does. By default they are masked by the process's umask, as
    /// every file a process creates is: a tree never makes a file more open than the
    /// restoring user's umask allows.
    pub ignore_umask: bool,
    /// Leave recorded mtimes out (`get -r --no-mtime`): files and directories keep the time
    /// of the restore. By default a recorded mtime is restored (it is recorded only when the
    /// tree's author asked, with [`PutDirOptions::keep_mtime`]).
    pub skip_mtimes: bool,
}

impl CheckoutOptions {
    /// Sets [`CheckoutOptions::limits`] (builder style).
    #[must_use]
    pub fn limits(mut self, limits: TreeLimits) -> Self {
        self.limits = limits;
        self
    }

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

    /// Sets [`CheckoutOptions::ignore_umask`] (builder style).
    #[must_use]
    pub fn ignore_umask(mut self, on: bool) -> Self {
        self.ignore_umask = on;
        self
    }

    /// Sets [`CheckoutOptions::skip_mtimes`] (builder style).
    #[must_use]
    pub fn skip_mtimes(mut self, on: bool) -> Self {
        self.skip_mtimes = on;
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
        let opts = PutDirOptions::default();
        crate::tree::put::put_dir(self, path.as_ref(), None, &opts).map(|r| r.0)
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
            .then(|| crate::tree::statcache::StatCache::load(self));
        let (hash, skipped) = crate::tree::put::put_dir(self, path, cache.as_mut(), opts)?;
        // Only a tree with symlinks needs its model (all its names: memory in proportion to
        // the whole tree, the one place a put holds that).
        let links = if skipped.links == 0 {
            Vec::new()
        } else {
            let model = self.model(&hash, path, 0, &Trees::new(), &mut Models::new())?;
            model.escaping_links()
        };
        let mut report = PutDirReport {
            external_symlinks: links.len() as u64,
            example: links.first().map(|(p, t, _)| {
                (
                    join_shown(path, p),
                    PathBuf::from(std::ffi::OsStr::from_bytes(t)),
                )
            }),
            skipped_special: skipped.count,
            skipped_example: skipped.example,
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
    /// executable bits, symlink targets and file contents (hashed), nothing more, and the
    /// modes and mtimes a restore with `opts` would give. Links are compared, never followed.
    fn dir_holds_tree(
        &self,
        dir: &Path,
        tree: &Hash,
        depth: usize,
        opts: &CheckoutOptions,
    ) -> Result<bool> {
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
            let umask = if opts.ignore_umask { 0 } else { fs::umask() };
            let attrs_same = e
                .mode
                .is_none_or(|mode| m.permissions().mode() & TREE_MODE_BITS == mode & !umask)
                && e.mtime.filter(|_| !opts.skip_mtimes).is_none_or(|t| {
                    std::os::unix::fs::MetadataExt::mtime(&m)
                        .saturating_mul(1_000_000_000)
                        .saturating_add(std::os::unix::fs::MetadataExt::mtime_nsec(&m))
                        == t
                });
            if !attrs_same {
                return Ok(false);
            }
            let same = match &e.kind {
                TreeEntryKind::File {
                    executable,
                    size,
                    hash,
                } => {
                    m.is_file()
                        && m.len() == *size
                        && (m.permissions().mode() & 0o111 != 0) == *executable
                        && std::fs::File::open(&p)
                            .and_then(|f| crate::copy::hash_file(&f, false))
                            .is_ok_and(|h| h == *hash)
                }
                TreeEntryKind::Dir { hash } => {
                    m.is_dir() && self.dir_holds_tree(&p, hash, depth + 1, opts)?
                }
                TreeEntryKind::Symlink { target } => {
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
    /// Before anything else, the tree is checked against [`CheckoutOptions::limits`] in one
    /// pass that reads each distinct tree object once: a tree naming one subtree at millions
    /// of paths fails at once. A signal's clean-up ([`crate::abandon_temporaries`]) stops the
    /// restore's threads, and the restore removes its temporary directory before the
    /// clean-up goes on.
    ///
    /// # Errors
    /// [`Error::TreeBudget`] naming the tree and the budget it exceeds; [`Error::Malformed`]
    /// if `tree` is not a tree; [`Error::Tree`] naming the offending entry for unsafe entries
    /// or if `dest` exists; [`Error::Interrupted`] if the process is abandoning its work;
    /// object errors as for [`Store::get`].
    pub fn checkout_with(
        &self,
        tree: &Hash,
        dest: impl AsRef<Path>,
        opts: &CheckoutOptions,
    ) -> Result<()> {
        let dest = dest.as_ref();
        self.refuse_output_inside(dest)?;
        // Every walk below (the check of an existing destination, the symlink model, the
        // restore) follows the tree's paths: bound them first (a tree bomb fails here).
        let totals = self.tree_totals(tree, &opts.limits, true, &Trees::new())?;
        if let Ok(m) = std::fs::symlink_metadata(dest) {
            // Restoring the same tree twice (a job re-run, a second consumer) is a success.
            if m.is_dir() && self.dir_holds_tree(dest, tree, 0, opts)? {
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
        if !opts.allow_external_symlinks && totals.links > 0 {
            let model = self.model(tree, dest, 0, &Trees::new(), &mut Models::new())?;
            let mut bad = model.escaping_links();
            // Name a link whose own target escapes (`bin/python3 -> /usr/bin/python3`) rather
            // than one that only leads to it (`bin/python -> python3`).
            bad.sort_by_key(|(p, t, _)| !escapes_by_itself(p, t));
            let more = bad.len().saturating_sub(1);
            if let Some((p, t, why)) = bad.into_iter().next() {
                return Err(Error::Tree {
                    path: join_shown(dest, &p),
                    reason: format!(
                        "symlink target {:?} {}{} (refused; --allow-external-symlinks restores \
                         such links as they are)",
                        String::from_utf8_lossy(&t),
                        why.describe(),
                        match more {
                            0 => String::new(),
                            1 => ", and 1 more link".to_owned(),
                            n => format!(", and {n} more links"),
                        }
                    ),
                });
            }
        }
        let root = self.read_tree(tree)?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        // Held until the temporary directory is renamed into place or removed (dropped
        // last): a signal's clean-up waits for it instead of moving the directory aside
        // while the restore's threads still fill it (crate::store::abandon::Busy).
        let Some(_busy) = crate::store::abandon::busy() else {
            return Err(Error::Interrupted);
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.cas-checkout."))
            .tempdir_in(parent)
            .map_err(Error::at("create temporary directory in", parent))?;
        // Removed by the process's clean-up if it stops on a signal (crate::store::abandon).
        let _reg = crate::store::abandon::register_temp(tmp.path());
        let dir = fs::open_dir_nofollow(tmp.path()).map_err(Error::at("open", tmp.path()))?;
        // Directories by one thread, files by a small pool, each verified (crate::tree::restore);
        // the temporary directory (mode 0700) becomes visible only once all of it is done.
        let dir = std::sync::Arc::new(dir);
        let progress = opts.progress.as_ref().map(|p| (p, totals.bytes));
        // On any error (a signal's included) `tmp` removes the directory as it drops.
        let attrs = crate::tree::restore::Attrs {
            ignore_umask: opts.ignore_umask,
            skip_mtimes: opts.skip_mtimes,
            umask: fs::umask(),
        };
        crate::tree::restore::restore(self, &root, &dir, dest, progress, attrs)?;
        let mode = 0o777 & !fs::umask();
        fs::set_dir_mode(&dir, mode).map_err(Error::at("set permissions of", tmp.path()))?;
        if crate::store::abandon::abandoned() {
            return Err(Error::Interrupted);
        }
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename_dir_noreplace(&tmp_path, dest) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(Error::io("rename restored tree to", dest, e));
        }
        Ok(())
    }

    /// Reads a whole tree's names and kinds (not file contents) into a [`Model`], each
    /// distinct tree once: a subtree met at several paths is one shared [`Model`] (`memo`).
    /// Trees found in `known` (those a put just stored, decoded) are not read again.
    fn model(
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
type Models = std::collections::HashMap<Hash, std::rc::Rc<Model>>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = TreeEntry> {
        let name = proptest::collection::vec(any::<u8>(), 1..12);
        let kind = prop_oneof![
            (any::<bool>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(x, s, h)| {
                TreeEntryKind::File {
                    executable: x,
                    size: s,
                    hash: Hash::from_bytes(h),
                }
            }),
            any::<[u8; 32]>().prop_map(|h| TreeEntryKind::Dir {
                hash: Hash::from_bytes(h)
            }),
            proptest::collection::vec(1u8..=255, 1..20)
                .prop_map(|t| TreeEntryKind::Symlink { target: t }),
        ];
        (name, kind).prop_map(|(name, kind)| TreeEntry {
            mode: None,
            mtime: None,
            name,
            kind,
        })
    }

    /// Entries of either version: files and directories with or without a mode (a file's
    /// executable flag agreeing with it), anything with or without an mtime.
    fn arb_entry_v2() -> impl Strategy<Value = TreeEntry> {
        (
            arb_entry(),
            proptest::option::of(0u32..=0o777),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(mut e, mode, mtime)| {
                e.mtime = mtime;
                match &mut e.kind {
                    TreeEntryKind::Symlink { .. } => {}
                    TreeEntryKind::Dir { .. } => e.mode = mode,
                    TreeEntryKind::File { executable, .. } => {
                        if let Some(m) = mode {
                            *executable = m & 0o111 != 0;
                        }
                        e.mode = mode;
                    }
                }
                e
            })
    }

    /// The version 1 encoding is the bytes every earlier cas wrote (spelled out here by hand),
    /// and still decodes: a tree without modes or mtimes keeps its hash.
    #[test]
    fn version_1_bytes_are_unchanged_and_still_read() {
        let mut v1 = b"CASTREE\0".to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        // one entry; name "a"; variant File; not executable; size 2; 32 hash bytes
        v1.extend_from_slice(&[1, 1, b'a', 0, 0, 2, 32]);
        v1.extend_from_slice(&[0x11; 32]);
        let t = Tree::decode(&v1).unwrap();
        assert_eq!(
            t.entries,
            vec![TreeEntry::new(
                b"a".to_vec(),
                TreeEntryKind::File {
                    executable: false,
                    size: 2,
                    hash: Hash::from_bytes([0x11; 32]),
                },
            )]
        );
        assert_eq!(t.version(), 1);
        assert_eq!(t.encode(), v1);
        // The same entry with a mode is version 2; with the mode taken out again, a version 2
        // encoding of it is not canonical (a second hash for the same directory).
        let mut with_mode = t.clone();
        with_mode.entries[0].mode = Some(0o600);
        let v2 = with_mode.encode();
        assert_eq!(v2[8..12], 2u32.to_le_bytes());
        assert_eq!(Tree::decode(&v2).unwrap(), with_mode);
        let mut forged = v2.clone();
        // The mode Some(0o600): tag 1, then 251 and a u16; the mtime None: 0. Both None.
        let at = forged.len() - 5;
        assert_eq!(forged[at..], [1, 251, 0x80, 0x01, 0]);
        forged.truncate(at);
        forged.extend_from_slice(&[0, 0]);
        let e = Tree::decode(&forged).unwrap_err();
        assert!(e.contains("canonical"), "{e}");
    }

    /// What a version 2 decoder refuses: setuid/setgid/sticky, a mode on a symlink, an
    /// executable flag that disagrees with the mode, an unknown version.
    #[test]
    fn version_2_rules() {
        let f = |mode, executable| Tree {
            entries: vec![TreeEntry {
                name: b"f".to_vec(),
                kind: TreeEntryKind::File {
                    executable,
                    size: 0,
                    hash: Hash::of(b""),
                },
                mode: Some(mode),
                mtime: None,
            }],
        };
        for (t, why) in [
            (f(0o4755, true), "beyond rwxrwxrwx"),
            (f(0o644, true), "disagrees"),
            (
                Tree {
                    entries: vec![TreeEntry {
                        name: b"l".to_vec(),
                        kind: TreeEntryKind::Symlink {
                            target: b"x".to_vec(),
                        },
                        mode: Some(0o777),
                        mtime: None,
                    }],
                },
                "carries a mode",
            ),
        ] {
            let e = Tree::decode(&t.encode()).unwrap_err();
            assert!(e.contains(why), "{e}");
            let e = t.into_checked_encoding().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut v3 = f(0o644, false).encode();
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = Tree::decode(&v3).unwrap_err();
        assert!(e.contains("version 3 is not supported"), "{e}");
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

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_canonical(entries in proptest::collection::vec(arb_entry_v2(), 0..8)) {
            let mut valid: Vec<TreeEntry> = entries.into_iter().filter(|e| check_name(&e.name).is_ok()).collect();
            valid.sort_by(|a, b| a.name.cmp(&b.name));
            valid.dedup_by(|a, b| a.name == b.name);
            let t = Tree { entries: valid.clone() };
            let bytes = t.encode();
            prop_assert_eq!(Tree::decode(&bytes).unwrap(), t.clone());
            prop_assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), t.version());
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
            entries in proptest::collection::vec(arb_entry_v2(), 0..8),
            names in proptest::collection::vec(prop_oneof![
                Just(b"".to_vec()), Just(b".".to_vec()), Just(b"a/b".to_vec()),
                Just(b"dup".to_vec()), Just(b"ok".to_vec())], 0..3),
        ) {
            let mut entries = entries;
            for n in names {
                entries.push(TreeEntry { mode: None, mtime: None, name: n, kind: TreeEntryKind::Symlink { target: Vec::new() } });
                entries.push(TreeEntry { mode: None, mtime: None,
                    name: b"dup".to_vec(),
                    kind: TreeEntryKind::Dir { hash: Hash::from_bytes([1; 32]) },
                });
            }
            let t = Tree { entries };
            let mut sorted = t.entries.clone();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let canonical = Tree { entries: sorted }.encode();
            match (t.into_checked_encoding(), Tree::decode(&canonical)) {
                (Ok((bytes, tree)), Ok(decoded)) => {
                    prop_assert_eq!(&bytes, &canonical);
                    prop_assert_eq!(tree, decoded);
                }
                (Err(_), Err(_)) => {}
                (w, r) => prop_assert!(false, "writer {:?} but reader {:?}", w.map(|_| ()), r.map(|_| ())),
            }
        }

        /// The streaming writer of `put -r` gives exactly the checked encoding's bytes, and
        /// refuses what it refuses.
        #[test]
        fn the_tree_writer_writes_the_checked_encoding(
            entries in proptest::collection::vec(arb_entry_v2(), 0..8),
        ) {
            let t = Tree { entries: entries.clone() };
            let mut sorted = entries;
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let mut w = TreeWriter::new(sorted.len(), t.version());
            let streamed = sorted
                .into_iter()
                .try_for_each(|e| w.push(e))
                .and_then(|()| w.finish());
            match (t.into_checked_encoding(), streamed) {
                (Ok((bytes, _)), Ok(s)) => prop_assert_eq!(bytes, s),
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "checked {:?} but streamed {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }

        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            for version in [TREE_V1, TREE_VERSION] {
                let mut bytes = TREE_MAGIC.to_vec();
                bytes.extend_from_slice(&version.to_le_bytes());
                bytes.extend_from_slice(&body);
                let _ = Tree::decode(&bytes);
            }
            let _ = Tree::decode(&body);
        }

        /// A version 2 body built from valid entries, then damaged at one byte: decoding never
        /// panics, and whatever it accepts re-encodes to exactly those bytes.
        #[test]
        fn damaged_version_2_never_panics(
            entries in proptest::collection::vec(arb_entry_v2(), 1..6),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = Tree { entries }.encode();
            let i = 12 + at % (bytes.len() - 12);
            bytes[i] = byte;
            if let Ok(t) = Tree::decode(&bytes) {
                prop_assert_eq!(t.encode(), bytes);
            }
        }
    }
}

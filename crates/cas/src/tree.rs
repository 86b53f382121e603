//! Directory snapshots. A tree object is an ordinary object whose bytes are `CASTREE\0`, a
//! version (u32 LE), then the serde + bincode (standard config) encoding of its entries sorted
//! by name. The same directory always yields the same bytes, hence the same hash.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::Store;

/// First bytes of every tree object.
pub const TREE_MAGIC: &[u8; 8] = b"CASTREE\0";
/// The tree encoding version this library writes and reads.
pub const TREE_VERSION: u32 = 1;
/// Deepest directory nesting restored (a crafted tree cannot exhaust the stack).
const MAX_DEPTH: usize = 512;

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

fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
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

impl Tree {
    /// Encodes the tree (entries are sorted first, so the result is canonical).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        codec::encode::<_, MAX_TREE>(*TREE_MAGIC, TREE_VERSION, &entries)
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
        for (i, e) in entries.iter().enumerate() {
            check_name(&e.name)
                .map_err(|r| format!("{r}: {:?}", String::from_utf8_lossy(&e.name)))?;
            if i > 0 && entries[i - 1].name >= e.name {
                return Err("entries are not strictly sorted (duplicate or out of order)".into());
            }
            if let EntryKind::Symlink { target } = &e.kind {
                if target.is_empty() || target.contains(&0) {
                    return Err("symlink target is empty or contains NUL".into());
                }
            }
        }
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

/// Would a symlink at `depth` directories below the restore root, with this target, resolve
/// (lexically) to somewhere outside the root?
fn symlink_escapes(target: &[u8], depth: usize) -> bool {
    let p = Path::new(std::ffi::OsStr::from_bytes(target));
    let mut d = depth as i64;
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::CurDir => {}
            Component::ParentDir => {
                d -= 1;
                if d < 0 {
                    return true;
                }
            }
            Component::Normal(_) => d += 1,
        }
    }
    false
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
        self.put_dir_inner(path.as_ref())
    }

    fn put_dir_inner(&self, root: &Path) -> Result<Hash> {
        let meta = std::fs::metadata(root).map_err(Error::at("stat", root))?;
        if !meta.is_dir() {
            return Err(Error::Tree {
                path: root.to_owned(),
                reason: "not a directory".into(),
            });
        }
        // One batch for the whole tree: its barriers are shared by many files, and it
        // publishes in staging order, so an object is never visible before its children.
        let mut batch = self.batch();
        // Post-order walk: a directory comes after its contents, whose entries were collected
        // at depth + 1.
        let mut levels: Vec<Vec<TreeEntry>> = vec![Vec::new()];
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .contents_first(true)
            .sort_by_file_name();
        for ent in walk {
            let ent = ent.map_err(|e| {
                let p = e.path().unwrap_or(root).to_owned();
                Error::io("read directory", p, e.into())
            })?;
            let depth = ent.depth();
            while levels.len() <= depth + 1 {
                levels.push(Vec::new());
            }
            let ft = ent.file_type();
            let kind = if ft.is_dir() {
                let children = std::mem::take(&mut levels[depth + 1]);
                let hash = batch.put_bytes(&Tree { entries: children }.encode())?;
                if depth == 0 {
                    batch.commit()?;
                    return Ok(hash);
                }
                EntryKind::Dir { hash }
            } else if ft.is_file() {
                let m = ent
                    .metadata()
                    .map_err(|e| Error::io("stat", ent.path(), e.into()))?;
                let hash = batch.put_path(ent.path())?;
                EntryKind::File {
                    executable: m.permissions().mode() & 0o111 != 0,
                    size: m.len(),
                    hash,
                }
            } else if ft.is_symlink() {
                let t =
                    std::fs::read_link(ent.path()).map_err(Error::at("read link", ent.path()))?;
                EntryKind::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                }
            } else {
                return Err(Error::Tree {
                    path: ent.path().to_owned(),
                    reason: "cannot store this file type (socket, fifo or device)".into(),
                });
            };
            levels[depth].push(TreeEntry {
                name: ent.file_name().as_bytes().to_vec(),
                kind,
            });
        }
        Err(Error::Tree {
            path: root.to_owned(),
            reason: "directory vanished during the walk".into(),
        })
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

    /// Restores a tree into `dest`, which must not exist. Everything is written into a
    /// temporary directory beside `dest` and renamed into place when complete, so a failed
    /// restore leaves no partial `dest`. Entries that would write outside `dest` (names with
    /// separators, `..`, symlinks that point outside) are rejected.
    ///
    /// # Errors
    /// [`Error::Malformed`] if `tree` is not a tree; [`Error::Tree`] naming the offending entry
    /// for unsafe entries or if `dest` exists; object errors as for [`Store::get`].
    pub fn checkout(&self, tree: &Hash, dest: impl AsRef<Path>) -> Result<()> {
        let dest = dest.as_ref();
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::Tree {
                path: dest.to_owned(),
                reason: "already exists; choose a new destination".into(),
            });
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
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
        self.restore_tree(&root, tmp.path(), dest, 0)?;
        let mode = 0o777 & !fs::umask();
        fs::chmod_path(tmp.path(), mode).map_err(Error::at("set permissions of", tmp.path()))?;
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename_dir_noreplace(&tmp_path, dest) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            return Err(Error::io("rename restored tree to", dest, e));
        }
        Ok(())
    }

    fn restore_tree(&self, tree: &Tree, dir: &Path, shown: &Path, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::Tree {
                path: shown.to_owned(),
                reason: format!("nesting deeper than {MAX_DEPTH} directories"),
            });
        }
        for e in &tree.entries {
            // Decoding validated names; check again here, where it protects the filesystem.
            check_name(&e.name).map_err(|r| Error::Tree {
                path: shown.to_owned(),
                reason: r.into(),
            })?;
            let name = std::ffi::OsStr::from_bytes(&e.name);
            let path = dir.join(name);
            let shown_path: PathBuf = shown.join(name);
            match &e.kind {
                EntryKind::File {
                    executable, hash, ..
                } => {
                    let mode = if *executable { 0o777 } else { 0o666 };
                    let mut f =
                        fs::create_excl(&path, mode).map_err(Error::at("create", &shown_path))?;
                    self.get_to_writer(hash, &mut f)?;
                    f.flush().map_err(Error::at("write", &shown_path))?;
                }
                EntryKind::Dir { hash } => {
                    std::fs::create_dir(&path)
                        .map_err(Error::at("create directory", &shown_path))?;
                    let sub = self.read_tree(hash)?;
                    self.restore_tree(&sub, &path, &shown_path, depth + 1)?;
                }
                EntryKind::Symlink { target } => {
                    if symlink_escapes(target, depth) {
                        return Err(Error::Tree {
                            path: shown_path,
                            reason: format!(
                                "symlink target {:?} points outside the destination",
                                String::from_utf8_lossy(target)
                            ),
                        });
                    }
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path)
                        .map_err(Error::at("create symlink", &shown_path))?;
                }
            }
        }
        Ok(())
    }

    /// If the object is a tree, its direct children; `None` for other objects (and for
    /// objects that start like a tree but do not decode).
    pub(crate) fn tree_children(&self, hash: &Hash) -> Result<Option<Vec<(Hash, bool)>>> {
        let (mut f, path) = self.open_file(hash)?;
        let mut head = [0u8; 8];
        let n = std::io::Read::read(&mut f, &mut head).map_err(Error::at("read", &path))?;
        if !Tree::is_tree(&head[..n]) {
            return Ok(None);
        }
        let obj = self.get(hash)?;
        Ok(Tree::decode(&obj).ok().map(|t| t.children().collect()))
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
    fn escapes() {
        assert!(symlink_escapes(b"/etc/passwd", 3));
        assert!(symlink_escapes(b"..", 0));
        assert!(symlink_escapes(b"a/../../x", 0));
        assert!(!symlink_escapes(b"../x", 1));
        assert!(!symlink_escapes(b"a/b/../c", 0));
        assert!(symlink_escapes(b"../../x", 1));
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

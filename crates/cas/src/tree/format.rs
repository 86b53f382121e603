//! The tree object: a directory snapshot. A tree object is an ordinary object whose bytes are `CASTREE\0`, a
//! version (u32 LE), then the serde + bincode (standard config) encoding of its entries sorted
//! by name. The same directory always yields the same bytes, hence the same hash. Version 1
//! entries carry names, kinds, sizes, hashes, the executable bit and link targets; version 2
//! entries also the permission bits and, when asked, the mtime (docs/format.md, "Tree
//! object").

use crate::codec;
use crate::hash::Hash;

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

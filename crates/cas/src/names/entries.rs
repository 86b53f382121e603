//! Keyed cache entries: `index/ab/<blake3(key)>` maps an application's key to an object, with
//! size, time and the application's own metadata. Entries are replaced atomically under a lock
//! that pins the new object for gc, exactly like refs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::codec;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::names::backend::NamesRef;
use crate::names::lock::Wait;
use crate::read::get::{Object, READ_REFRESH};
use crate::store::layout;
use crate::write::stage::Input;
use crate::{Expect, Store};

/// First bytes of every entry file.
pub(crate) const ENTRY_MAGIC: &[u8; 8] = b"CASENTRY";
/// The entry encoding version this library writes and reads.
pub(crate) const ENTRY_VERSION: u32 = 1;
/// Largest entry file accepted (key + metadata).
const MAX_ENTRY: usize = 16 << 20;

/// A cache entry: what a key maps to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// The key, as given.
    pub key: Vec<u8>,
    /// The object it maps to.
    pub hash: Hash,
    /// The object's size in bytes.
    pub size: u64,
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The application's metadata, opaque to the store.
    pub metadata: Vec<u8>,
}

impl Entry {
    /// Encodes the entry: magic, version (u32 LE), then serde + bincode (standard config).
    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::encode::<_, MAX_ENTRY>(*ENTRY_MAGIC, ENTRY_VERSION, self)
    }

    /// Decodes an entry file; the error says what is wrong (foreign magic, newer version,
    /// damaged body). Never panics, whatever the bytes.
    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Entry, String> {
        codec::decode::<_, MAX_ENTRY>(bytes, *ENTRY_MAGIC, ENTRY_VERSION, "cache entry")
    }
}

fn check_entry_size(key: &[u8], metadata: &[u8]) -> Result<()> {
    if key.len() + metadata.len() > MAX_ENTRY - 1024 {
        return Err(Error::InvalidInput {
            what: "cache entry",
            reason: "key and metadata together must be under 16 MiB".into(),
        });
    }
    Ok(())
}

/// Shows a key in messages: UTF-8 as text, else hex; truncated.
pub(crate) fn display_key(key: &[u8]) -> String {
    use std::fmt::Write as _;
    if let Ok(s) = std::str::from_utf8(key) {
        return format!("{:?}", crate::hash::truncate_for_display(s));
    }
    let mut hex = String::from("0x");
    for b in key.iter().take(40) {
        let _ = write!(hex, "{b:02x}");
    }
    if key.len() > 40 {
        hex.push('…');
    }
    hex
}

impl Store {
    pub(crate) fn entry_path(&self, key: &[u8]) -> PathBuf {
        layout::entry_paths(&self.inner.root, &Hash::of(key)).0
    }

    fn entry_lock_path(&self, key: &[u8]) -> PathBuf {
        layout::entry_paths(&self.inner.root, &Hash::of(key)).1
    }

    /// Streams `reader` into the store and points `key` at it, with `metadata`, replacing any
    /// previous entry atomically. Returns the object's hash.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// store.put_keyed(b"build:abc", &b"artifact"[..], b"{\"target\":\"x86\"}")?;
    /// assert_eq!(&*store.get_keyed(b"build:abc")?, b"artifact");
    /// assert_eq!(store.entry(b"build:abc")?.metadata, b"{\"target\":\"x86\"}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// I/O errors from the reader or the store; [`Error::Locked`] if another process keeps
    /// the key's lock past the lock timeout.
    pub fn put_keyed(&self, key: &[u8], reader: impl Read, metadata: &[u8]) -> Result<Hash> {
        self.put_keyed_inner(key, &mut { reader }, metadata)
    }

    fn put_keyed_inner(&self, key: &[u8], reader: &mut dyn Read, metadata: &[u8]) -> Result<Hash> {
        check_entry_size(key, metadata)?;
        self.names().writable()?; // a read-only upstream refuses before anything is read
        let staged = self.stage_reader(reader, Input::Stream)?;
        self.commit_keyed(staged, self.durability(), key, metadata)
    }

    /// Points `key` at an object already in the store (a tree from
    /// [`Store::put_dir`], a hash you kept), with `metadata`, if the entry's current value
    /// matches `expect`. Returns the previous value. [`Expect::Absent`] gives "first writer
    /// wins": exactly one of many concurrent callers succeeds, the others get
    /// [`Error::Conflict`] ([`Error::is_already_exists`]).
    ///
    /// An entry that cannot be decoded holds no value: it is replaced for [`Expect::Any`] and
    /// [`Expect::Absent`], and fails [`Expect::Value`] with [`Error::Malformed`].
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"built once")?;
    /// assert_eq!(store.set_keyed(b"artifact:v1", h, b"", cas::Expect::Absent)?, None);
    /// let e = store.set_keyed(b"artifact:v1", h, b"", cas::Expect::Absent).unwrap_err();
    /// assert!(e.is_already_exists());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] if the object is not in the store; [`Error::Conflict`] if the
    /// entry does not match `expect`; [`Error::Locked`] if the key's lock stays held.
    pub fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        check_entry_size(key, metadata)?;
        self.names().set_keyed(key, hash, metadata, expect)
    }

    /// [`Store::set_keyed`] in this store's own `index/` (the local names backend).
    pub(crate) fn set_keyed_here(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        let lock = self.lock_entry(key, hash)?;
        self.ensure_closure(&hash)?;
        let size = self.pinned_object_len(&hash)?;
        let prev = self.write_entry(key, hash, size, metadata, expect, &lock)?;
        lock.release();
        Ok(prev)
    }

    /// The size of an object this process pins (its entry lock names it). A concurrent gc may
    /// have condemned it to trash after the closure check and not yet moved it back (its
    /// rescue mark sees the pin, docs/format.md "Publishing a name"): the object is brought
    /// back here instead of failing the update with "cannot stat". Found nowhere, it is
    /// [`Error::NotFound`].
    fn pinned_object_len(&self, hash: &Hash) -> Result<u64> {
        let obj = self.object_path(hash);
        for _ in 0..8 {
            match self.inner.root_dir.lstat(&obj) {
                Ok(m) => return Ok(m.len),
                Err(e) if crate::fs::is_not_found(&e) => self.ensure_present(hash)?,
                Err(e) => return Err(Error::io("stat", &obj, e)),
            }
        }
        // Moved away as often as it was brought back: a gc loop racing this update. The
        // last look decides.
        self.inner
            .root_dir
            .lstat(&obj)
            .map(|m| m.len)
            .map_err(Error::at("stat", &obj))
    }

    /// Publishes a [`Writer`](crate::Writer)'s object and points `key` at it with
    /// `metadata`, replacing any previous entry: the keyed put for producers that push bytes.
    pub(crate) fn commit_keyed(
        &self,
        staged: crate::write::stage::Staged,
        durability: crate::Durability,
        key: &[u8],
        metadata: &[u8],
    ) -> Result<Hash> {
        check_entry_size(key, metadata)?;
        let (hash, size) = (staged.hash, staged.len);
        let mut staged = Some(staged);
        let mut publish = || match staged.take() {
            Some(s) => self.publish(vec![s], durability).map(|_| ()),
            None => Ok(()),
        };
        self.names()
            .publish_keyed(&mut publish, key, hash, size, metadata)?;
        Ok(hash)
    }

    /// Publishes an object and points `key` at it in this store's own `index/` (the local
    /// names backend's [`Names::publish_keyed`](crate::Names::publish_keyed)).
    pub(crate) fn publish_keyed_here(
        &self,
        publish: &mut dyn FnMut() -> Result<()>,
        key: &[u8],
        hash: Hash,
        size: u64,
        metadata: &[u8],
    ) -> Result<()> {
        // Pin the object before it is published or deduplicated, so gc keeps it until the
        // entry that makes it reachable is visible.
        let lock = self.lock_entry(key, hash)?;
        publish()?;
        // Bytes that happen to be a tree name their children too.
        self.ensure_closure(&hash)?;
        self.write_entry(key, hash, size, metadata, Expect::Any, &lock)?;
        lock.release();
        Ok(())
    }

    /// Takes the key's lock, pinning `hash` for gc until the entry is written.
    fn lock_entry(&self, key: &[u8], hash: Hash) -> Result<crate::names::lock::Lock> {
        self.acquire_lock(
            &self.entry_lock_path(key),
            Some(hash),
            Wait::For(self.inner.options.lock_timeout + Duration::from_secs(1)),
        )
    }

    /// Writes the entry `key -> hash` under its lock, if the current value matches `expect`.
    fn write_entry(
        &self,
        key: &[u8],
        hash: Hash,
        size: u64,
        metadata: &[u8],
        expect: Expect,
        lock: &crate::names::lock::Lock,
    ) -> Result<Option<Hash>> {
        let path = self.entry_path(key);
        let current = match self.read_entry_file(&path) {
            Ok(Some((e, _))) if e.key == key => Some(e.hash),
            Ok(_) => None,
            // A damaged entry holds no value: "absent" for Any and Absent, never a match for a
            // value.
            Err(e) if e.is_malformed() && !matches!(expect, Expect::Value(_)) => None,
            Err(e) => return Err(e),
        };
        let matches = match expect {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Value(v) => current == Some(v),
        };
        if !matches {
            return Err(Error::Conflict {
                what: "cache entry",
                name: String::from_utf8_lossy(key).into_owned(),
                expected: match expect {
                    Expect::Value(v) => Some(v),
                    _ => None,
                },
                actual: current,
            });
        }
        let entry = Entry {
            key: key.to_vec(),
            hash,
            size,
            time_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            metadata: metadata.to_vec(),
        };
        self.replace_small_fenced(&path, &entry.encode(), self.durability(), lock)?;
        Ok(current)
    }

    /// [`Store::put_keyed`] for bytes in memory.
    ///
    /// # Errors
    /// As [`Store::put_keyed`].
    pub fn put_keyed_bytes(&self, key: &[u8], bytes: &[u8], metadata: &[u8]) -> Result<Hash> {
        self.put_keyed_inner(key, &mut { bytes }, metadata)
    }

    /// The entry for `key`.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; [`Error::Malformed`] for an unreadable or foreign-version entry
    /// (naming the file and what is wrong).
    pub fn entry(&self, key: &[u8]) -> Result<Entry> {
        self.names().entry(key)
    }

    /// [`Store::entry`] from this store's own `index/` (the local names backend).
    pub(crate) fn entry_here(&self, key: &[u8]) -> Result<Entry> {
        let path = self.entry_path(key);
        let (e, _) = self
            .read_entry_file(&path)?
            .ok_or_else(|| Error::KeyNotFound {
                key: display_key(key),
            })?;
        if e.key != key {
            return Err(Error::Malformed {
                what: "cache entry",
                path,
                reason: "it holds another key".into(),
            });
        }
        Ok(e)
    }

    /// Reads and decodes an entry file; `None` if absent. Also returns the file's age.
    pub(crate) fn read_entry_file(&self, path: &Path) -> Result<Option<(Entry, std::fs::File)>> {
        // Beneath the root, never through a symlink, non-blocking: a FIFO or a directory at
        // an entry's name is an error naming it, not a hang.
        let (bytes, f, _) = match self.inner.root_dir.read_small(path, MAX_ENTRY as u64 + 1) {
            Ok(r) => r,
            Err(e) if fs::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Error::io("read cache entry", path, e)),
        };
        let e = Entry::decode(&bytes).map_err(|reason| Error::Malformed {
            what: "cache entry",
            path: path.to_owned(),
            reason,
        })?;
        Ok(Some((e, f)))
    }

    /// The object `key` maps to, verified. Refreshes the entry's LRU age (at most hourly).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; as [`Store::get`] for the object.
    pub fn get_keyed(&self, key: &[u8]) -> Result<Object> {
        self.get_keyed_entry(key).map(|(_, obj)| obj)
    }

    /// The entry for `key` and its object, verified, read together: the entry is the one the
    /// object came from even if another process replaces it meanwhile (a separate
    /// [`Store::entry`] call could see the replacement).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// store.put_keyed_bytes(b"page:/", b"<html>", b"etag=abc")?;
    /// let (entry, body) = store.get_keyed_entry(b"page:/")?;
    /// assert_eq!((&entry.metadata[..], &body[..]), (&b"etag=abc"[..], &b"<html>"[..]));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get_keyed`].
    pub fn get_keyed_entry(&self, key: &[u8]) -> Result<(Entry, Object)> {
        let mut obj = None;
        let e = self.names().entry_used(key, &mut |e| {
            obj = Some(self.get(&e.hash)?);
            Ok(())
        })?;
        match obj {
            Some(obj) => Ok((e, obj)),
            None => self.get(&e.hash).map(|obj| (e, obj)),
        }
    }

    /// The entry for `key` in this store's own `index/`, read to be used: `used` reads its
    /// object, then the entry's age is refreshed (the local names backend's
    /// [`Names::entry_used`](crate::Names::entry_used)).
    pub(crate) fn entry_used_here(
        &self,
        key: &[u8],
        used: &mut dyn FnMut(&Entry) -> Result<()>,
    ) -> Result<Entry> {
        let path = self.entry_path(key);
        let (e, f) = self
            .read_entry_file(&path)?
            .ok_or_else(|| Error::KeyNotFound {
                key: display_key(key),
            })?;
        if e.key != key {
            return Err(Error::KeyNotFound {
                key: display_key(key),
            });
        }
        used(&e)?;
        let old = f
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > READ_REFRESH);
        if old {
            let _ = fs::touch(&f);
        }
        Ok(e)
    }

    /// Removes the entry for `key` (the object stays until gc finds it unreachable).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; I/O errors naming the entry file.
    pub fn remove_keyed(&self, key: &[u8]) -> Result<()> {
        self.names().remove_keyed(key)
    }

    /// [`Store::remove_keyed`] in this store's own `index/` (the local names backend).
    pub(crate) fn remove_keyed_here(&self, key: &[u8]) -> Result<()> {
        let path = self.entry_path(key);
        match self.inner.root_dir.unlink(&path) {
            Ok(()) => Ok(()),
            Err(e) if fs::is_not_found(&e) => Err(Error::KeyNotFound {
                key: display_key(key),
            }),
            Err(e) => Err(Error::io("remove cache entry", &path, e)),
        }
    }

    /// Paths of all entry files (not locks, not foreign files), listed beneath the root, and
    /// the errors met: `index/` or a fan-out directory that cannot be listed, or a fan-out
    /// name that is not a directory (never followed). Entry names that are not regular files
    /// are listed (reading them reports what they are).
    pub(crate) fn entry_files(&self) -> (Vec<PathBuf>, Vec<Error>) {
        let root = &self.inner.root_dir;
        let index = self.path(layout::INDEX);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let outer = match root.read_dir(&index) {
            Ok(v) => v,
            Err(e) if fs::is_not_found(&e) => return (out, errors),
            Err(e) => return (out, vec![Error::io("list", &index, e)]),
        };
        for (dname, kind) in outer {
            let dpath = index.join(&dname);
            let fanout = fs::name_bytes(&dname);
            if fanout.len() != 2 || !fanout.iter().all(u8::is_ascii_hexdigit) {
                continue; // foreign
            }
            if kind != fs::Kind::Dir {
                // A fan-out name that is not a directory may hide entries: say so.
                errors.push(Error::io(
                    "list",
                    &dpath,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("is {}, not a directory", kind.describe()),
                    ),
                ));
                continue;
            }
            let inner = match root.read_dir(&dpath) {
                Ok(v) => v,
                Err(e) if fs::is_not_found(&e) => continue,
                Err(e) => {
                    errors.push(Error::io("list", &dpath, e));
                    continue;
                }
            };
            for (fname, _) in inner {
                if layout::parse_object_name(fanout, fs::name_bytes(&fname)).is_some() {
                    out.push(dpath.join(fname));
                }
            }
        }
        (out, errors)
    }

    /// All cache entries. An entry that cannot be decoded, or a directory of entries that
    /// cannot be listed, is an `Err` item naming its path; iteration goes on past it.
    ///
    /// # Errors
    /// None today (listing errors are items); kept fallible for compatibility.
    pub fn iter_keys(&self) -> Result<impl Iterator<Item = Result<Entry>> + '_> {
        // The local backend is listed lazily, one fan-out directory at a time; another
        // backend (a tier's upstream) at once, through its trait.
        let (listed, (files, errors)) = match self.names() {
            NamesRef::Here(_) => (Vec::new(), self.entry_files()),
            NamesRef::Other(names) => (names.list_keys()?, (Vec::new(), Vec::new())),
        };
        Ok(listed.into_iter().chain(errors.into_iter().map(Err)).chain(
            files.into_iter().filter_map(move |p| {
                self.read_entry_file(&p)
                    .map(|o| o.map(|(e, _)| e))
                    .transpose()
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn foreign_versions_and_garbage_are_reported() {
        let e = Entry {
            key: b"k".to_vec(),
            hash: Hash::of(b"v"),
            size: 1,
            time_ms: 2,
            metadata: vec![1, 2, 3],
        };
        let mut bytes = e.encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
        bytes[8] = 9;
        let err = Entry::decode(&bytes).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
        assert!(Entry::decode(b"hello").unwrap_err().contains("magic"));
    }

    proptest! {
        #[test]
        fn entry_round_trip(key in proptest::collection::vec(any::<u8>(), 0..300),
                            meta in proptest::collection::vec(any::<u8>(), 0..300),
                            h in any::<[u8; 32]>(), size in any::<u64>(), t in any::<u64>()) {
            let e = Entry { key, hash: Hash::from_bytes(h), size, time_ms: t, metadata: meta };
            prop_assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn decode_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = ENTRY_MAGIC.to_vec();
            bytes.extend_from_slice(&ENTRY_VERSION.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = Entry::decode(&bytes);
            let _ = Entry::decode(&body);
        }
    }
}

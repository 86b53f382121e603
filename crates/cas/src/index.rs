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
use crate::layout;
use crate::lock::Wait;
use crate::read::{Object, READ_REFRESH};
use crate::stage::Input;
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
        let kh = Hash::of(key).to_hex();
        self.path(layout::INDEX).join(&kh[..2]).join(&kh[2..])
    }

    fn entry_lock_path(&self, key: &[u8]) -> PathBuf {
        let mut p = self.entry_path(key).into_os_string();
        p.push(layout::LOCK_SUFFIX);
        p.into()
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
        if let Some(up) = self.names_upstream_mut()? {
            // Tiered: the object is written through, the entry lives upstream.
            let hash = self.put_reader(reader)?;
            return self
                .upstream_set_keyed(up, key, hash, metadata, Expect::Any)
                .map(|_| hash);
        }
        let staged = self.stage_reader(reader, Input::Stream)?;
        let (hash, size) = (staged.hash, staged.len);
        // Pin the object before it is published or deduplicated, so gc keeps it until the
        // entry that makes it reachable is visible.
        let lock = self.lock_entry(key, hash)?;
        self.publish(vec![staged], self.durability())?;
        self.write_entry(key, hash, size, metadata, Expect::Any, &lock)?;
        lock.release();
        Ok(hash)
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
        if let Some(up) = self.names_upstream_mut()? {
            return self.upstream_set_keyed(up, key, hash, metadata, expect);
        }
        let lock = self.lock_entry(key, hash)?;
        self.ensure_present(&hash)?;
        let obj = self.object_path(&hash);
        let size = self
            .inner
            .root_dir
            .lstat(&obj)
            .map_err(Error::at("stat", &obj))?
            .len;
        let prev = self.write_entry(key, hash, size, metadata, expect, &lock)?;
        lock.release();
        Ok(prev)
    }

    /// Takes the key's lock, pinning `hash` for gc until the entry is written.
    fn lock_entry(&self, key: &[u8], hash: Hash) -> Result<crate::lock::Lock> {
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
        lock: &crate::lock::Lock,
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
                name: format!("cache entry {}", display_key(key)),
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
        lock.verify()?;
        self.replace_small(&path, &entry.encode(), self.durability())?;
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
        if let Some(up) = self.names_upstream() {
            return up.entry(key);
        }
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
        let mut f = match fs::open_read(path) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Error::io("open cache entry", path, e)),
        };
        let mut bytes = Vec::new();
        (&mut f)
            .take(MAX_ENTRY as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::at("read cache entry", path))?;
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
        if let Some(up) = self.names_upstream() {
            return self.get(&up.entry(key)?.hash);
        }
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
        let obj = self.get(&e.hash)?;
        let old = f
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > READ_REFRESH);
        if old {
            let _ = fs::touch(&f);
        }
        Ok(obj)
    }

    /// Removes the entry for `key` (the object stays until gc finds it unreachable).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; I/O errors naming the entry file.
    pub fn remove_keyed(&self, key: &[u8]) -> Result<()> {
        if let Some(up) = self.names_upstream_mut()? {
            return up.remove_keyed(key);
        }
        let path = self.entry_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if fs::is_not_found(&e) => Err(Error::KeyNotFound {
                key: display_key(key),
            }),
            Err(e) => Err(Error::io("remove cache entry", &path, e)),
        }
    }

    /// Paths of all entry files (not locks, not foreign files).
    pub(crate) fn entry_files(&self) -> Result<Vec<PathBuf>> {
        let root = self.path(layout::INDEX);
        let mut out = Vec::new();
        let outer = match std::fs::read_dir(&root) {
            Ok(rd) => rd,
            Err(e) if fs::is_not_found(&e) => return Ok(out),
            Err(e) => return Err(Error::io("list", &root, e)),
        };
        for d in outer {
            let d = d.map_err(Error::at("list", &root))?;
            let dname = d.file_name();
            let dpath = d.path();
            let inner = match std::fs::read_dir(&dpath) {
                Ok(rd) => rd,
                Err(e) if fs::is_not_found(&e) || e.raw_os_error() == Some(20) => continue,
                Err(e) => return Err(Error::io("list", &dpath, e)),
            };
            for f in inner {
                let f = f.map_err(Error::at("list", &dpath))?;
                let fname = f.file_name();
                if layout::parse_object_name(fs::name_bytes(&dname), fs::name_bytes(&fname))
                    .is_some()
                {
                    out.push(f.path());
                }
            }
        }
        Ok(out)
    }

    /// All cache entries. An entry that cannot be decoded is an `Err` item naming its file;
    /// iteration goes on past it.
    ///
    /// # Errors
    /// The outer error: `index/` cannot be listed.
    pub fn iter_keys(&self) -> Result<impl Iterator<Item = Result<Entry>> + '_> {
        // A tiered store's entries live upstream (listed at once); its own index is empty.
        let (upstream, files) = match self.names_upstream() {
            Some(up) => (up.list_keys()?, Vec::new()),
            None => (Vec::new(), self.entry_files()?),
        };
        Ok(upstream
            .into_iter()
            .chain(files.into_iter().filter_map(move |p| {
                self.read_entry_file(&p)
                    .map(|o| o.map(|(e, _)| e))
                    .transpose()
            })))
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

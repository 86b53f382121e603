//! The read side: get, stream with verification, presence, removal, iteration, statistics.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::{Hash, Hasher, PARALLEL_MIN};
use crate::layout;
use crate::Store;

/// Objects at least this large are memory-mapped (on local filesystems); smaller ones are read,
/// which is faster below ~64 KiB (docs/performance.md).
const MMAP_MIN: u64 = 64 * 1024;
/// Reads refresh an object's mtime (its LRU age) at most this often.
pub(crate) const READ_REFRESH: Duration = Duration::from_hours(1);
/// Chunk size for hashing a file without mapping it.
const HASH_CHUNK: usize = 4 << 20;

/// An object's bytes, verified: in memory for small objects, memory-mapped for large ones.
/// Dereferences to `[u8]`.
pub struct Object(Repr);

enum Repr {
    Vec(Vec<u8>),
    Map(memmap2::Mmap),
}

impl Deref for Object {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Vec(v) => v,
            Repr::Map(m) => m,
        }
    }
}

impl AsRef<[u8]> for Object {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Object {
    /// The bytes as an owned vector (copies a mapped object).
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Vec(v) => v,
            Repr::Map(m) => m.to_vec(),
        }
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object").field("len", &self.len()).finish()
    }
}

/// Counts returned by [`Store::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Number of objects.
    pub objects: u64,
    /// Total size of their bytes.
    pub bytes: u64,
}

impl Store {
    /// The path an object has (or would have) in the store.
    pub fn object_path(&self, hash: &Hash) -> PathBuf {
        layout::object_path(&self.inner.root, hash)
    }

    /// Opens an object's file for reading. Falls back to an object gc moved to `trash/` (and
    /// moves it back, best effort), so a reader never fails because gc is running.
    pub(crate) fn open_file(&self, hash: &Hash) -> Result<(File, PathBuf)> {
        let path = self.object_path(hash);
        match fs::open_read(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if fs::is_not_found(&e) => {
                if let Some(p) = self.restore_from_trash(hash)? {
                    let f = fs::open_read(&p).map_err(Error::at("open", &p))?;
                    return Ok((f, p));
                }
                // A tiered store fetches a miss from its upstream (crate::upstream).
                if self.fetch_from_upstream(hash)? {
                    let f = fs::open_read(&path).map_err(Error::at("open", &path))?;
                    return Ok((f, path));
                }
                Err(Error::NotFound { hash: *hash, path })
            }
            Err(e) => Err(Error::io("open object", &path, e)),
        }
    }

    /// Returns an object's bytes after checking they hash to `hash`.
    ///
    /// Small objects are read into memory; large ones are mapped on local filesystems (read on
    /// network ones) and hashed on all cores.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the hash; [`Error::Corrupt`] if the bytes do not match (the
    /// object is moved to `quarantine/`); I/O errors naming the path.
    pub fn get(&self, hash: &Hash) -> Result<Object> {
        self.refetch_if_corrupt(hash, || self.get_once(hash))
    }

    fn get_once(&self, hash: &Hash) -> Result<Object> {
        let (file, path) = self.open_file(hash)?;
        let meta = file.metadata().map_err(Error::at("stat", &path))?;
        let obj = self.load(&file, &path, meta.len())?;
        let actual = Hash::of_parallel(&obj);
        if actual != *hash {
            return Err(self.corrupt(hash, actual, &path));
        }
        self.refresh_on_read(&file, &meta);
        Ok(obj)
    }

    fn load(&self, file: &File, path: &Path, len: u64) -> Result<Object> {
        if len >= MMAP_MIN && !self.inner.caps.network {
            let m = fs::map_readonly(file).map_err(Error::at("map", path))?;
            return Ok(Object(Repr::Map(m)));
        }
        let v = fs::read_len(file, len).map_err(Error::at("read", path))?;
        Ok(Object(Repr::Vec(v)))
    }

    /// Writes an object's bytes to `out`, having verified all of them first: nothing is written
    /// if the object is corrupt. Returns the number of bytes written.
    ///
    /// # Errors
    /// As [`Store::get`]; a failure to write to `out` is [`Error::Io`] with op "write output".
    pub fn get_to_writer(&self, hash: &Hash, out: &mut dyn Write) -> Result<u64> {
        // Nothing is written to `out` before verification, so a retry writes it once.
        let out = std::cell::RefCell::new(out);
        self.refetch_if_corrupt(hash, || {
            self.get_to_writer_once(hash, &mut **out.borrow_mut())
        })
    }

    fn get_to_writer_once(&self, hash: &Hash, out: &mut dyn Write) -> Result<u64> {
        let (mut file, path) = self.open_file(hash)?;
        let meta = file.metadata().map_err(Error::at("stat", &path))?;
        let len = meta.len();
        let out_err = |e| Error::io("write output", "<output>", e);
        if len < 8 * MMAP_MIN || !self.inner.caps.network {
            let obj = self.load(&file, &path, len)?;
            let actual = Hash::of_parallel(&obj);
            if actual != *hash {
                return Err(self.corrupt(hash, actual, &path));
            }
            out.write_all(&obj).map_err(out_err)?;
        } else {
            // Not mapped (network filesystem): hash in one pass, then copy in a second pass
            // through the same open file, which cannot change under an open descriptor.
            let actual = hash_file(&file, false).map_err(Error::at("read", &path))?;
            if actual != *hash {
                return Err(self.corrupt(hash, actual, &path));
            }
            file.rewind().map_err(Error::at("rewind", &path))?;
            io::copy(&mut file, out).map_err(out_err)?;
        }
        self.refresh_on_read(&file, &meta);
        Ok(len)
    }

    /// Opens an object as a stream that verifies the hash as it reads: the read that reaches
    /// the end fails with `io::ErrorKind::InvalidData` (wrapping [`Error::Corrupt`]) if the
    /// bytes do not match, and the object is quarantined. Bytes handed out before the end are
    /// not yet verified: callers that must not act on bad bytes should buffer, or use
    /// [`Store::get`] / [`Store::get_to_writer`].
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the hash; I/O errors naming the path.
    pub fn reader(&self, hash: &Hash) -> Result<ObjectReader> {
        let (file, path) = self.open_file(hash)?;
        Ok(ObjectReader {
            store: self.clone(),
            file,
            path,
            expected: *hash,
            hasher: Hasher::new(),
            done: false,
        })
    }

    /// True if the object is in the store (or in `trash/`, from where a read restores it; or,
    /// for a tiered store, in its upstream).
    pub fn contains(&self, hash: &Hash) -> bool {
        std::fs::symlink_metadata(self.object_path(hash)).is_ok()
            || self.find_in_trash(hash).is_some()
            || self.upstream_has(hash)
    }

    /// Removes an object. Refs or cache entries pointing to it will dangle: gc and eviction are
    /// the safe ways to remove objects from a store in use.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it is not there; I/O errors naming the path.
    pub fn remove(&self, hash: &Hash) -> Result<()> {
        let path = self.object_path(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if fs::is_not_found(&e) => Err(Error::NotFound { hash: *hash, path }),
            Err(e) => Err(Error::io("remove", &path, e)),
        }
    }

    /// Iterates over the hashes of all objects (in no particular order). Files under
    /// `objects/` whose names are not object names are skipped.
    ///
    /// # Errors
    /// Each item is an error if a directory cannot be read.
    #[allow(clippy::iter_without_into_iter)] // a store is not an in-memory collection
    pub fn iter(&self) -> ObjectIter {
        ObjectIter {
            root: self.path(layout::OBJECTS),
            outer: None,
            inner: None,
            started: false,
        }
    }

    /// Number of objects and their total size.
    ///
    /// # Errors
    /// I/O errors naming the directory or file that could not be read.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        for h in self.iter() {
            let h = h?;
            let p = self.object_path(&h);
            match std::fs::symlink_metadata(&p) {
                Ok(m) => {
                    s.objects += 1;
                    s.bytes += m.len();
                }
                Err(e) if fs::is_not_found(&e) => {} // removed meanwhile
                Err(e) => return Err(Error::io("stat", &p, e)),
            }
        }
        Ok(s)
    }

    /// Refreshes the LRU age of an object that was read, at most once per [`READ_REFRESH`].
    fn refresh_on_read(&self, file: &File, meta: &std::fs::Metadata) {
        let old = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > READ_REFRESH);
        if old {
            // Best effort: in a shared store the object may belong to another user.
            let _ = fs::touch(file);
        }
    }

    /// Moves a corrupt object to `quarantine/` and builds the error naming it.
    pub(crate) fn corrupt(&self, expected: &Hash, actual: Hash, path: &Path) -> Error {
        let path = self
            .quarantine(expected, path)
            .unwrap_or_else(|_| path.to_owned());
        Error::Corrupt {
            expected: *expected,
            actual,
            path,
        }
    }

    /// Moves the file at `path` (the object `hash`) into `quarantine/`; returns its new path.
    pub(crate) fn quarantine(&self, hash: &Hash, path: &Path) -> Result<PathBuf> {
        let qdir = self.path(layout::QUARANTINE);
        self.ensure_dir(&qdir)?;
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Never overwrite an earlier quarantined copy (same hash, same second, same process).
        for n in 0u32.. {
            let dst = qdir.join(format!("{hash}.{secs}.{}.{n}", self.inner.pid));
            match self
                .inner
                .root_dir
                .publish_noreplace(path, &dst, &self.inner.caps)
            {
                Ok(fs::Published::Created) => return Ok(dst),
                Ok(fs::Published::Existed) if n < 1000 => {}
                Ok(fs::Published::Existed) => break,
                Err(e) => return Err(Error::io("quarantine", path, e)),
            }
        }
        Err(Error::io(
            "quarantine",
            path,
            io::Error::other("too many quarantined copies"),
        ))
    }
}

/// A verifying stream over an object (see [`Store::reader`]).
pub struct ObjectReader {
    store: Store,
    file: File,
    path: PathBuf,
    expected: Hash,
    hasher: Hasher,
    done: bool,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("hash", &self.expected)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// The object's size in bytes.
    ///
    /// # Errors
    /// I/O errors from `fstat`.
    pub fn len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(Error::at("stat", &self.path))?
            .len())
    }

    /// True for the empty object.
    ///
    /// # Errors
    /// I/O errors from `fstat`.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|l| l == 0)
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.done = true;
        let actual = self.hasher.finalize();
        if actual != self.expected {
            let e = self.store.corrupt(&self.expected, actual, &self.path);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(0)
    }
}

/// Iterator over all object hashes (see [`Store::iter`]).
#[derive(Debug)]
pub struct ObjectIter {
    root: PathBuf,
    outer: Option<std::fs::ReadDir>,
    inner: Option<(std::fs::ReadDir, Vec<u8>, PathBuf)>,
    started: bool,
}

impl Iterator for ObjectIter {
    type Item = Result<Hash>;

    fn next(&mut self) -> Option<Result<Hash>> {
        if !self.started {
            self.started = true;
            match std::fs::read_dir(&self.root) {
                Ok(rd) => self.outer = Some(rd),
                Err(e) if fs::is_not_found(&e) => return None,
                Err(e) => return Some(Err(Error::io("list", &self.root, e))),
            }
        }
        loop {
            if let Some((rd, dir, dpath)) = &mut self.inner {
                match rd.next() {
                    Some(Ok(ent)) => {
                        if let Some(h) =
                            layout::parse_object_name(dir, fs::name_bytes(&ent.file_name()))
                        {
                            return Some(Ok(h));
                        }
                        continue;
                    }
                    Some(Err(e)) => return Some(Err(Error::io("list", dpath.clone(), e))),
                    None => self.inner = None,
                }
            }
            let ent = match self.outer.as_mut()?.next()? {
                Ok(ent) => ent,
                Err(e) => return Some(Err(Error::io("list", &self.root, e))),
            };
            let name = ent.file_name();
            let nb = fs::name_bytes(&name);
            if nb.len() != 2 || !nb.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                continue;
            }
            let dpath = ent.path();
            match std::fs::read_dir(&dpath) {
                Ok(rd) => self.inner = Some((rd, nb.to_vec(), dpath)),
                Err(e) if fs::is_not_found(&e) => {} // removed by gc meanwhile
                Err(e) => return Some(Err(Error::io("list", dpath, e))),
            }
        }
    }
}

/// Hashes a whole file from its current position: mapped and on all cores where allowed,
/// else in large chunks.
pub(crate) fn hash_file(file: &File, may_map: bool) -> io::Result<Hash> {
    let len = file.metadata()?.len();
    if may_map && len >= MMAP_MIN {
        let m = fs::map_readonly(file)?;
        return Ok(Hash::of_parallel(&m));
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK.min(len as usize + 1).max(8192)];
    let mut f = file;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n >= PARALLEL_MIN {
            h.update_rayon(&buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().into())
}

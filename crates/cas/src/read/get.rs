//! The read side: get, stream with verification, presence, removal, iteration, statistics.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::copy::MMAP_MIN;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::{Hash, Hasher};
use crate::progress::ProgressFn;
use crate::read::copyout::{FdSink, Sink, WriterSink};
use crate::store::layout;
use crate::Store;

/// Reads refresh an object's mtime (its LRU age) at most this often.
pub(crate) const READ_REFRESH: Duration = Duration::from_hours(1);

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

/// Where [`Store::locate`] found an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// At its name under `objects/`.
    Objects(PathBuf),
    /// In a trash run, condemned by gc.
    Trash(PathBuf),
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

/// What [`Store::object_info`] tells about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// Size in bytes.
    pub len: u64,
    /// Last use: when it was last put or read (refreshed at most hourly on reads).
    pub mtime: std::time::SystemTime,
    /// The object starts with the tree magic.
    pub is_tree: bool,
}

impl Store {
    /// An object's size, last use (its mtime: set when it is put or read, the age gc and LRU
    /// eviction go by) and whether it is a tree. Reads the first bytes, not the whole object;
    /// nothing is verified.
    ///
    /// # Errors
    /// [`Error::NotFound`]; I/O errors naming the object's path.
    pub fn object_info(&self, hash: &Hash) -> Result<ObjectInfo> {
        let (file, path) = self.open_located(hash)?;
        let m = fs::Root::fmeta(&file).map_err(Error::at("stat", &path))?;
        let is_tree = crate::Tree::sniff(&file).map_err(Error::at("read", &path))?;
        Ok(ObjectInfo {
            len: m.len,
            mtime: m.mtime,
            is_tree,
        })
    }

    /// The object whose hash starts with `prefix` (at least 8 lowercase hex digits; a full
    /// 64-digit hash is parsed without looking at the store).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"abc")?;
    /// assert_eq!(store.resolve_prefix(&h.to_string()[..10])?, h);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidHash`] for anything but 8–64 lowercase hex digits;
    /// [`Error::InvalidInput`] if no object, or more than one, starts with `prefix`.
    pub fn resolve_prefix(&self, prefix: &str) -> Result<Hash> {
        if prefix.len() == crate::HEX_LEN {
            return Hash::parse(prefix);
        }
        if prefix.len() < 8
            || prefix.len() > crate::HEX_LEN
            || !prefix
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Error::InvalidHash {
                input: prefix.chars().take(80).collect(),
                reason: "a hash prefix is 8 to 64 lowercase hex digits",
            });
        }
        // A tier holds a subset of its upstream: resolved there unless it cannot be reached.
        if let Some(r) = self.after_here().resolve_prefix(prefix) {
            return r;
        }
        let dir = self.path(layout::OBJECTS).join(&prefix[..2]);
        let names = match self.inner.root_dir.read_dir(&dir) {
            Ok(n) => n,
            Err(e) if fs::is_not_found(&e) => Vec::new(),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut found: Vec<Hash> = names
            .iter()
            .filter(|(_, kind)| *kind == fs::Kind::File)
            .filter_map(|(n, _)| {
                layout::parse_object_name(&prefix.as_bytes()[..2], fs::name_bytes(n))
            })
            .filter(|h| h.to_hex().starts_with(prefix))
            .collect();
        found.sort_unstable_by_key(Hash::to_hex);
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(no_object_starts_with(prefix)),
            [a, b] => Err(Error::InvalidInput {
                what: "hash prefix",
                reason: format!(
                    "{prefix} is ambiguous: 2 objects start with it ({a} and {b}); give more \
                     digits"
                ),
            }),
            [a, b, rest @ ..] => Err(Error::InvalidInput {
                what: "hash prefix",
                reason: format!(
                    "{prefix} is ambiguous: {} objects start with it ({a}, {b} and {} more); \
                     give more digits",
                    found.len(),
                    rest.len()
                ),
            }),
        }
    }

    /// The object `prefix` names, or `None` if no object starts with it: [`Store::resolve_prefix`]
    /// for a caller to whom a prefix that matches nothing is an answer (`cas has`: missing),
    /// not an error.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"hello")?;
    /// assert_eq!(store.find_prefix(&h.to_hex()[..12])?, Some(h));
    /// let other = if h.to_hex().starts_with('0') { "11111111" } else { "00000000" };
    /// assert_eq!(store.find_prefix(other)?, None);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::resolve_prefix`], except that no match is `Ok(None)`: [`Error::InvalidHash`]
    /// for a malformed prefix, [`Error::InvalidInput`] if more than one object starts with
    /// it, I/O errors listing the store.
    pub fn find_prefix(&self, prefix: &str) -> Result<Option<Hash>> {
        match self.resolve_prefix(prefix) {
            Ok(h) => Ok(Some(h)),
            // The tier's upstream is a store too: its "no match" is this same error.
            Err(Error::InvalidInput { what, reason })
                if what == NO_MATCH.0 && reason == format!("{}{prefix}", NO_MATCH.1) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The path an object has (or would have) in the store.
    pub fn object_path(&self, hash: &Hash) -> PathBuf {
        layout::object_path(&self.inner.root, hash)
    }

    /// Where an object is, without changing anything: `objects/`, or a trash run gc moved it
    /// to. Anything at the object's name counts (a damaged one is found, and reported, when
    /// it is read). `None` if it is in neither place.
    ///
    /// This is the side-effect-free twin of [`Store::open_file`]: marking (gc, verify, doctor)
    /// uses it, so inspecting a store never moves objects back from trash behind the user's
    /// back (docs/format.md "Verify").
    pub(crate) fn locate(&self, hash: &Hash) -> Option<Location> {
        let path = self.object_path(hash);
        match self.inner.root_dir.lstat(&path) {
            Ok(_) => Some(Location::Objects(path)),
            Err(_) => self.find_in_trash(hash).map(Location::Trash),
        }
    }

    /// Opens an object for reading where it is (`objects/` or trash), changing nothing.
    pub(crate) fn open_located(&self, hash: &Hash) -> Result<(File, PathBuf)> {
        let path = self.object_path(hash);
        match self.inner.root_dir.open_read(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if fs::is_not_found(&e) => match self.find_in_trash(hash) {
                Some(p) => match self.inner.root_dir.open_read(&p) {
                    Ok(f) => Ok((f, p)),
                    Err(e) if fs::is_not_found(&e) => Err(Error::NotFound { hash: *hash, path }),
                    Err(e) => Err(Error::io("open object", &p, e)),
                },
                None => Err(Error::NotFound { hash: *hash, path }),
            },
            Err(e) => Err(Error::io("open object", &path, e)),
        }
    }

    /// Opens an object's file for reading: beneath the root, never through a symlink, refused
    /// unless it is a regular file (a FIFO planted at an object name cannot hang a reader).
    /// Falls back to an object gc moved to `trash/` (and moves it back, best effort), so a
    /// reader never fails because gc is running.
    pub(crate) fn open_file(&self, hash: &Hash) -> Result<(File, PathBuf)> {
        let path = self.object_path(hash);
        match self.inner.root_dir.open_read(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if fs::is_not_found(&e) => {
                if let Some(p) = self.restore_from_trash(hash)? {
                    let f = self
                        .inner
                        .root_dir
                        .open_read(&p)
                        .map_err(Error::at("open", &p))?;
                    return Ok((f, p));
                }
                // A miss here: what comes after this directory (a tier's upstream).
                if self.after_here().fetch(self, hash)? {
                    let f = self
                        .inner
                        .root_dir
                        .open_read(&path)
                        .map_err(Error::at("open", &path))?;
                    return Ok((f, path));
                }
                Err(Error::NotFound { hash: *hash, path })
            }
            Err(e) => Err(Error::io("open object", &path, e)),
        }
    }

    /// May this open object be memory-mapped? Only on a local filesystem, in a private store,
    /// and only a file this user owns: anyone else who owns the file (or, in a shared store,
    /// could own it) can truncate it while it is mapped, and touching a mapped page past the
    /// new end raises SIGBUS. Everything else is read into memory, where a truncation only
    /// shortens what is read, which verification reports as corruption.
    pub(crate) fn may_map(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.may_map_own() && meta.uid() == fs::uid()
    }

    /// May a file this process created in the store (a staging file) be memory-mapped? On a
    /// local filesystem, in a private store (in a shared one, the group can truncate it).
    pub(crate) fn may_map_own(&self) -> bool {
        fs::may_map(!self.inner.caps.network, !self.inner.options.shared_group)
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
        let obj = self.load(&file, &path, &meta)?;
        let actual = Hash::of_parallel(&obj);
        if actual != *hash {
            return Err(self.corrupt(hash, actual, &path));
        }
        self.refresh_on_read(&file, &meta);
        Ok(obj)
    }

    fn load(&self, file: &File, path: &Path, meta: &std::fs::Metadata) -> Result<Object> {
        let len = meta.len();
        if len >= MMAP_MIN && self.may_map(meta) {
            let m = fs::map_readonly(file).map_err(Error::at("map", path))?;
            return Ok(Object(Repr::Map(m)));
        }
        let v = fs::read_len(file, len).map_err(Error::at("read", path))?;
        Ok(Object(Repr::Vec(v)))
    }

    /// Writes an object's bytes to `out`, having verified all of them first: nothing is written
    /// if the object is corrupt. Returns the number of bytes written. Objects over 1 MiB are
    /// hashed and written a window at a time (see `copyout`): memory stays bounded, whatever
    /// the object's size.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let h = store.put_bytes(b"log line")?;
    /// let mut out = Vec::new();
    /// assert_eq!(store.get_to_writer(&h, &mut out)?, 8);
    /// assert_eq!(out, b"log line");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get`]; a failure to write to `out` is [`Error::Io`] with op "write output".
    pub fn get_to_writer(&self, hash: &Hash, out: &mut dyn Write) -> Result<u64> {
        self.get_to_writer_progress(hash, out, &crate::no_progress)
    }

    /// [`Store::get_to_writer`], telling `progress` the bytes verified (phase `"verify"`), then
    /// written (phase `"get"`), each out of the object's size. Returning `false` stops the get
    /// with [`Error::Interrupted`] (a stop during `"verify"` has written nothing).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let h = store.put_bytes(&vec![1u8; 3 << 20])?;
    /// let last = std::sync::Mutex::new(None);
    /// store.get_to_writer_progress(&h, &mut std::io::sink(), &|p| {
    ///     *last.lock().unwrap() = Some((p.phase, p.done, p.total));
    ///     true
    /// })?;
    /// assert_eq!(*last.lock().unwrap(), Some(("get", 3 << 20, Some(3 << 20))));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get_to_writer`]; [`Error::Interrupted`] if `progress` asked to stop.
    pub fn get_to_writer_progress(
        &self,
        hash: &Hash,
        out: &mut dyn Write,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        self.get_to_sink(hash, &mut WriterSink(out), progress)
    }

    /// [`Store::get_to_writer_progress`] into an open descriptor (stdout, a device, a FIFO, a file
    /// at its current offset), verified before any byte is written. Into a pipe, a verified
    /// object that may be mapped (a local store; see [`Store::get`]) is moved by `splice(2)`,
    /// from the page cache into the pipe without a copy through this process, and the pipe's
    /// buffer is grown to 1 MiB where the system allows: this is what `cas get H | …` runs.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// use std::os::fd::AsFd;
    /// let h = store.put_bytes(b"to a file")?;
    /// let f = std::fs::File::create(dir.path().join("out")).unwrap();
    /// store.get_to_fd(&h, f.as_fd(), &cas::no_progress)?;
    /// assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"to a file");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get_to_writer_progress`].
    pub fn get_to_fd(
        &self,
        hash: &Hash,
        out: std::os::fd::BorrowedFd<'_>,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        self.get_to_sink(hash, &mut FdSink::new(out), progress)
    }

    /// Writes the object into `out` ([`Store::get_to_writer_progress`]), fetched again from the
    /// upstream tier if the local copy is corrupt and nothing was written yet.
    pub(crate) fn get_to_sink(
        &self,
        hash: &Hash,
        out: &mut dyn Sink,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        self.refetch_if_corrupt_to(hash, out, |o| self.get_to_sink_once(hash, o, progress))
    }

    fn get_to_sink_once(
        &self,
        hash: &Hash,
        out: &mut dyn Sink,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        let (file, path) = self.open_file(hash)?;
        let meta = file.metadata().map_err(Error::at("stat", &path))?;
        let len = meta.len();
        if len > crate::copy::SMALL_FILE {
            crate::read::copyout::write_verified(self, hash, &file, &path, &meta, out, progress)?;
        } else {
            let obj = self.load(&file, &path, &meta)?;
            let actual = Hash::of_parallel(&obj);
            if actual != *hash {
                return Err(self.corrupt(hash, actual, &path));
            }
            out.write_bytes(&obj)
                .map_err(|e| Error::io("write output", "<output>", e))?;
            if !progress(crate::Progress {
                phase: "get",
                done: len,
                total: Some(len),
            }) {
                return Err(Error::Interrupted);
            }
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
    /// The reader also seeks ([`std::io::Seek`]): the first seek that moves the position
    /// verifies the whole object first (reading it once, memory bounded), so random access
    /// never hands out bytes of an object that does not match its name.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::io::{Read, Seek, SeekFrom};
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"0123456789")?;
    /// let mut r = store.reader(&h)?;
    /// r.seek(SeekFrom::End(-3))?;                   // verifies the object, then seeks
    /// let mut tail = String::new();
    /// r.read_to_string(&mut tail)?;
    /// assert_eq!(tail, "789");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the hash; I/O errors naming the path.
    pub fn reader(&self, hash: &Hash) -> Result<ObjectReader> {
        let (file, path) = self.open_file(hash)?;
        Ok(ObjectReader::new(self, hash, file, path, None))
    }

    /// Opens an object for random access that never hands out an unverified byte: each chunk
    /// group (16 KiB) is checked against the object's name through its outboard the first
    /// time a read touches it, before any of its bytes is returned (see
    /// [`Store::read_range`]; objects under 4 MiB are verified whole when opened). A damaged
    /// group fails the read with [`Error::CorruptRange`] (as `io::ErrorKind::InvalidData`)
    /// naming the object and the group's byte range.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use std::io::{Read, Seek, SeekFrom};
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    /// let h = store.put_bytes(&data)?;
    /// let mut r = store.verified_reader(&h)?;
    /// r.seek(SeekFrom::Start(5_000_000))?;         // reads nothing yet
    /// let mut buf = [0u8; 100];
    /// r.read_exact(&mut buf)?;                      // checks one 16 KiB group
    /// assert_eq!(buf[..], data[5_000_000..5_000_100]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] if a small object (or one whose outboard had
    /// to be computed) does not match; I/O errors naming the path.
    pub fn verified_reader(&self, hash: &Hash) -> Result<ObjectReader> {
        let ranged = self.open_ranged(hash)?;
        let (file, path) = ranged.file_and_path()?;
        Ok(ObjectReader::new(self, hash, file, path, Some(ranged)))
    }

    /// True if the object is in the store (or in `trash/`, from where a read restores it; or,
    /// for a tiered store, in its upstream).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.locate(hash).is_some() || self.after_here().has(hash)
    }

    /// The size of what is at an object's name, without following it (`lstat` beneath the
    /// store's root).
    ///
    /// # Errors
    /// [`Error::NotFound`] if nothing is there; I/O errors naming the path.
    pub fn object_len(&self, hash: &Hash) -> Result<u64> {
        let path = self.object_path(hash);
        match self.inner.root_dir.lstat(&path) {
            Ok(m) => Ok(m.len),
            Err(e) if fs::is_not_found(&e) => Err(Error::NotFound { hash: *hash, path }),
            Err(e) => Err(Error::io("stat", &path, e)),
        }
    }

    /// Removes an object. Refs or cache entries pointing to it will dangle: gc and eviction are
    /// the safe ways to remove objects from a store in use.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it is not there; I/O errors naming the path.
    pub fn remove(&self, hash: &Hash) -> Result<()> {
        let path = self.object_path(hash);
        match self.inner.root_dir.unlink(&path) {
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
            store: self.clone(),
            outer: None,
            inner: Vec::new().into_iter(),
        }
    }

    /// Number of objects and their total size.
    ///
    /// # Errors
    /// I/O errors naming the directory or file that could not be read.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        // One `fstatat` per object relative to its fan-out directory, one directory listed
        // at a time.
        for m in self.iter_ordered_meta() {
            let m = m?;
            s.objects += 1;
            s.bytes += m.len;
        }
        Ok(s)
    }

    /// Refreshes the LRU age of an object that was read, at most once per [`READ_REFRESH`].
    pub(crate) fn refresh_on_read(&self, file: &File, meta: &std::fs::Metadata) {
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
            let dst = qdir.join(layout::quarantine_name(hash, secs, self.inner.pid, n));
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
    /// The whole object was checked (read to its end): reads need not hash any more.
    verified: bool,
    /// Random access (after a seek, or [`Store::verified_reader`]): reads go through the
    /// verified view of `crate::outboard::range`, at this position.
    ranged: Option<(Box<crate::outboard::range::Ranged>, u64)>,
}

impl ObjectReader {
    /// A reader at the start of the object; `ranged` when it reads through the verified
    /// view by chunk group from the first byte.
    fn new(
        store: &Store,
        hash: &Hash,
        file: std::fs::File,
        path: std::path::PathBuf,
        ranged: Option<crate::outboard::range::Ranged>,
    ) -> ObjectReader {
        ObjectReader {
            store: store.clone(),
            file,
            path,
            expected: *hash,
            hasher: Hasher::new(),
            done: false,
            verified: false,
            ranged: ranged.map(|r| (Box::new(r), 0)),
        }
    }
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
        if let Some((r, _)) = &self.ranged {
            return Ok(r.len());
        }
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

/// A seek that moves the position turns the reader into a verified random-access one (see
/// [`Store::verified_reader`]): every later read is checked a chunk group at a time (a small
/// object is verified whole at the seek). A seek that does not move the position
/// (`SeekFrom::Current(0)`, "tell") reads nothing.
impl io::Seek for ObjectReader {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        if let Some((r, at)) = &mut self.ranged {
            let target = match pos {
                io::SeekFrom::Start(n) => Some(n),
                io::SeekFrom::Current(d) => at.checked_add_signed(d),
                io::SeekFrom::End(d) => r.len().checked_add_signed(d),
            };
            let Some(target) = target else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "seek to a negative or overflowing position in object {}",
                        self.expected
                    ),
                ));
            };
            *at = target;
            return Ok(target);
        }
        let cur = self.file.stream_position()?;
        let target = match pos {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(d) => cur.checked_add_signed(d),
            io::SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "seek to a negative or overflowing position in object {}",
                    self.expected
                ),
            ));
        };
        if target == cur {
            return Ok(cur);
        }
        if !self.verified {
            let file = self.file.try_clone()?;
            let r = crate::outboard::range::Ranged::open(
                &self.store,
                &self.expected,
                file,
                self.path.clone(),
            )?;
            self.ranged = Some((Box::new(r), target));
            return Ok(target);
        }
        self.file.seek(io::SeekFrom::Start(target))
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((r, at)) = &mut self.ranged {
            let n = r.read_at(buf, *at)?;
            *at += n as u64;
            return Ok(n);
        }
        if self.verified {
            return self.file.read(buf);
        }
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
        self.verified = true;
        Ok(0)
    }
}

/// Iterator over all object hashes (see [`Store::iter`]). Directories are listed beneath the
/// store's root descriptor: a symlink or a file at a fan-out name is an `Err` item naming it,
/// and iteration goes on past it.
#[derive(Debug)]
pub struct ObjectIter {
    store: Store,
    outer: Option<std::vec::IntoIter<(std::ffi::OsString, fs::Kind)>>,
    inner: std::vec::IntoIter<Hash>,
}

impl Iterator for ObjectIter {
    type Item = Result<Hash>;

    fn next(&mut self) -> Option<Result<Hash>> {
        let root = &self.store.inner.root_dir;
        let objects = self.store.path(layout::OBJECTS);
        if self.outer.is_none() {
            match root.read_dir(&objects) {
                Ok(v) => self.outer = Some(v.into_iter()),
                Err(e) if fs::is_not_found(&e) => {
                    self.outer = Some(Vec::new().into_iter());
                }
                Err(e) => {
                    self.outer = Some(Vec::new().into_iter());
                    return Some(Err(Error::io("list", objects, e)));
                }
            }
        }
        loop {
            if let Some(h) = self.inner.next() {
                return Some(Ok(h));
            }
            let (name, kind) = self.outer.as_mut()?.next()?;
            let nb = fs::name_bytes(&name);
            if !layout::is_fanout_name(nb) {
                continue;
            }
            let dpath = objects.join(&name);
            if kind != fs::Kind::Dir {
                return Some(Err(crate::maint::list::not_a_fanout_dir(dpath, kind)));
            }
            match root.read_dir(&dpath) {
                Ok(v) => {
                    let hashes: Vec<Hash> = v
                        .iter()
                        .filter_map(|(f, _)| layout::parse_object_name(nb, fs::name_bytes(f)))
                        .collect();
                    self.inner = hashes.into_iter();
                }
                Err(e) if fs::is_not_found(&e) => {} // removed by gc meanwhile
                Err(e) => return Some(Err(Error::io("list", dpath, e))),
            }
        }
    }
}

impl Store {
    /// Runs a local read; if it found the local copy corrupt (and quarantined it), fetches
    /// the object again from what comes after this directory and reads once more.
    pub(crate) fn refetch_if_corrupt<T>(
        &self,
        hash: &Hash,
        read: impl Fn() -> Result<T>,
    ) -> Result<T> {
        match read() {
            Err(e) if self.is_local_corruption(&e) => {
                if self.after_here().fetch(self, hash)? {
                    read()
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// [`Store::refetch_if_corrupt`] for a read into `out`: retried only if the failed read
    /// wrote nothing to `out` (a large unmapped read can find the corruption after writing).
    pub(crate) fn refetch_if_corrupt_to(
        &self,
        hash: &Hash,
        out: &mut dyn Sink,
        read: impl Fn(&mut dyn Sink) -> Result<u64>,
    ) -> Result<u64> {
        let mut counted = Counting { inner: out, n: 0 };
        match read(&mut counted) {
            Err(e) if self.is_local_corruption(&e) && counted.n == 0 => {
                if self.after_here().fetch(self, hash)? {
                    read(&mut counted)
                } else {
                    Err(e)
                }
            }
            r => r,
        }
    }

    /// True if `e` says the *local* copy of an object was corrupt (and was quarantined here):
    /// worth fetching again where there is somewhere to fetch from. A corrupt copy found
    /// upstream — on the fetch of a miss — is quarantined there; fetching again would only
    /// report it missing, hiding the corruption.
    fn is_local_corruption(&self, e: &Error) -> bool {
        e.is_corrupt() && e.path().is_some_and(|p| p.starts_with(&self.inner.root))
    }
}

/// Counts the bytes that went through to `inner`.
struct Counting<'a> {
    inner: &'a mut dyn Sink,
    n: u64,
}

impl Sink for Counting<'_> {
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A failed write may have written part: count it as all (only "nothing" matters).
        self.n += bytes.len() as u64;
        self.inner.write_bytes(bytes)
    }
    fn write_file_range(&mut self, obj: &File, off: u64, bytes: &[u8]) -> io::Result<()> {
        self.n += bytes.len() as u64;
        self.inner.write_file_range(obj, off, bytes)
    }
}

/// What [`Store::resolve_prefix`] says when no object starts with a prefix: the thing, and
/// the reason before the prefix.
const NO_MATCH: (&str, &str) = ("hash prefix", "no object in the store starts with ");

fn no_object_starts_with(prefix: &str) -> Error {
    Error::InvalidInput {
        what: NO_MATCH.0,
        reason: format!("{}{prefix}", NO_MATCH.1),
    }
}

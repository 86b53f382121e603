//! The write protocol: stream into a staging file in `tmp/` while hashing, then publish the
//! name without ever replacing an existing object (docs/format.md "The write path (put)").

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::copy::{copy_and_hash, hash_file, CopyError, SMALL_FILE};
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::outboard::range::TreeWriter;
use crate::write::stage::{Input, Staged, Staging};
use crate::{Durability, Store};

use crate::copy::Tick;

/// Bytes buffered by a [`Writer`] before they are hashed and written.
const WRITE_BUF: usize = 128 * 1024;
/// Chunks at least this large are hashed on a second thread while they are written.
const PIPELINE_MIN: usize = 512 * 1024;
/// Read size for streaming puts.
const STREAM_BUF: usize = 1 << 20;

/// An object being written. Bytes go to a private staging file in the store's `tmp/` and into
/// the hasher; [`Writer::commit`] publishes them under their hash. Dropping a `Writer` without
/// committing removes the staging file and touches nothing else.
///
/// Memory use is bounded (one buffer of 128 KiB) whatever the object's size.
///
/// ```
/// use std::io::Write;
/// # fn main() -> cas::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store = cas::Store::init(dir.path(), cas::Options::default())?;
/// let mut w = store.writer()?;
/// w.write_all(b"hello ").unwrap();
/// w.write_all(b"world").unwrap();
/// let hash = w.commit()?;
/// assert_eq!(hash, cas::Hash::of(b"hello world"));
/// # Ok(()) }
/// ```
#[must_use = "an uncommitted Writer discards its bytes when dropped"]
pub struct Writer {
    store: Store,
    staging: Staging,
    buf: Vec<u8>,
    /// BLAKE3 by chunk groups, writing the outboard as it goes (`crate::outboard::range`).
    hasher: TreeWriter,
    len: u64,
    durability: Durability,
    /// Set when a write to the staging file failed: the bytes hashed no longer match the file.
    poisoned: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("staging", &self.staging.path())
            .field("len", &(self.len + self.buf.len() as u64))
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Bytes accepted so far.
    pub fn len(&self) -> u64 {
        self.len + self.buf.len() as u64
    }

    /// True if nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The staging file's path (for diagnostics; it moves on commit).
    pub fn staging_path(&self) -> PathBuf {
        self.staging.path()
    }

    /// True once a write into the staging file failed (the store's error, not the input's).
    pub(crate) fn write_failed(&self) -> bool {
        self.poisoned
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let r = self.write_chunk(&buf);
            self.buf = buf;
            self.buf.clear();
            r?;
        }
        Ok(())
    }

    /// Writes a chunk to the staging file and hashes it; hashing happens only for bytes the
    /// file accepted, and large chunks are hashed on another thread while they are written.
    fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier write to the staging file failed",
            ));
        }
        let file = self.staging.file_mut();
        let r = if chunk.len() >= PIPELINE_MIN {
            let mut h = std::mem::take(&mut self.hasher);
            let r = std::thread::scope(|s| {
                let t = s.spawn(move || {
                    h.update(chunk);
                    h
                });
                let r = file.write_all(chunk);
                (r, t.join())
            });
            match r {
                (Ok(()), Ok(h)) => {
                    self.hasher = h;
                    Ok(())
                }
                (Err(e), _) => Err(e),
                (Ok(()), Err(_)) => Err(io::Error::other("hashing thread panicked")),
            }
        } else {
            file.write_all(chunk).map(|()| self.hasher.update(chunk))
        };
        match r {
            Ok(()) => {
                self.len += chunk.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Flushes and gives up the complete staging file with its hash, unpublished.
    pub(crate) fn finish(mut self) -> Result<Staged> {
        self.flush_buf()
            .map_err(|e| Error::io("write staging file", self.staging.path(), e))?;
        if self.poisoned {
            return Err(Error::io(
                "write staging file",
                self.staging.path(),
                io::Error::other("an earlier write failed"),
            ));
        }
        Ok(Staged {
            hash: self.hasher.finish(),
            len: self.len,
            staging: self.staging,
        })
    }

    /// Publishes the object and returns its hash. If the object already exists (another writer
    /// won, or it was stored before), its mtime is refreshed and the staging file is dropped:
    /// that is success too.
    ///
    /// # Errors
    /// I/O errors (naming the staging file or the object path). The staging file is removed on
    /// error; no existing object is ever touched.
    pub fn commit(self) -> Result<Hash> {
        let (store, durability) = (self.store.clone(), self.durability);
        let staged = self.finish()?;
        let hash = staged.hash;
        store.publish(vec![staged], durability)?;
        Ok(hash)
    }
}

impl Writer {
    /// Publishes the object and points `key` at it (with `metadata`), replacing any previous
    /// entry — [`Store::put_keyed`] for producers that push bytes into a writer.
    ///
    /// ```
    /// use std::io::Write;
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let mut w = store.writer()?;
    /// write!(w, "line 1\nline 2\n").unwrap();
    /// let h = w.commit_keyed(b"log:today", b"")?;
    /// assert_eq!(store.entry(b"log:today")?.hash, h);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Writer::commit`]; [`Error::Locked`] if the key's lock stays held.
    pub fn commit_keyed(self, key: &[u8], metadata: &[u8]) -> Result<Hash> {
        let (store, durability) = (self.store.clone(), self.durability);
        let staged = self.finish()?;
        store.commit_keyed(staged, durability, key, metadata)
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() <= WRITE_BUF {
            self.buf.extend_from_slice(data);
            return Ok(data.len());
        }
        self.flush_buf()?;
        if data.len() >= WRITE_BUF {
            self.write_chunk(data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

impl Store {
    /// Starts writing a new object (see [`Writer`]).
    ///
    /// # Errors
    /// I/O errors creating the staging file in the store's `tmp/`.
    pub fn writer(&self) -> Result<Writer> {
        Ok(Writer {
            store: self.clone(),
            staging: self.new_staging()?,
            buf: Vec::with_capacity(WRITE_BUF),
            hasher: TreeWriter::new(Some(self.clone())),
            len: 0,
            durability: self.durability(),
            poisoned: false,
        })
    }

    /// Stores a byte slice and returns its hash. The hash is computed first, so a put of bytes
    /// already in the store writes nothing (it refreshes the object's mtime).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"same")?;
    /// assert_eq!(store.put_bytes(b"same")?, h);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// I/O errors naming the staging file or object path.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Hash> {
        let durability = self.durability();
        let hash = self.hash_for_put(bytes);
        if !self.refresh_if_present(&hash, Some(bytes.len() as u64), durability) {
            self.publish(vec![self.stage_hashed(bytes, hash)?], durability)?;
        }
        Ok(hash)
    }

    /// Streams a reader into the store and returns the hash. The input is read once, through a
    /// fixed 1 MiB buffer, whatever its size.
    ///
    /// # Errors
    /// [`Error::Input`] if the reader fails; I/O errors of the store otherwise.
    pub fn put_reader(&self, reader: impl Read) -> Result<Hash> {
        let staged = self.stage_reader(&mut { reader }, Input::Stream)?;
        let hash = staged.hash;
        self.publish(vec![staged], self.durability())?;
        Ok(hash)
    }

    /// Streams `reader` into a staging file while hashing it.
    pub(crate) fn stage_reader(&self, reader: &mut dyn Read, input: Input<'_>) -> Result<Staged> {
        self.stage_reader_ticking(reader, input, &|_| true)
    }

    /// [`Store::stage_reader`], reporting each chunk's length to `tick` (false: stop).
    pub(crate) fn stage_reader_ticking(
        &self,
        reader: &mut dyn Read,
        input: Input<'_>,
        tick: Tick<'_>,
    ) -> Result<Staged> {
        let mut w = self.writer()?;
        let mut buf = vec![0u8; STREAM_BUF];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(input.error(e)),
            };
            w.write_all(&buf[..n])
                .map_err(|e| Error::io("write staging file", w.staging_path(), e))?;
            if !tick(n as u64) {
                return Err(Error::Interrupted);
            }
        }
        w.finish()
    }

    /// Stores the contents of a file. Small files are read once and skipped if present; large
    /// ones are copied in the kernel (`copy_file_range`, a reflink where the filesystem can)
    /// into a staging file by one thread while another hashes each copied chunk. Non-regular
    /// files (pipes, devices) are streamed.
    ///
    /// # Errors
    /// [`Error::Input`] naming `path` if it cannot be opened or read; store errors otherwise.
    pub fn put_path(&self, path: impl AsRef<Path>) -> Result<Hash> {
        let durability = self.durability();
        let (hash, staged) = self.stage_path(path.as_ref(), |_| false, durability, &|_| true)?;
        if let Some(s) = staged {
            self.publish(vec![s], durability)?;
        }
        Ok(hash)
    }

    /// Stages a file's contents. Returns the hash and the staged object, or `None` when the
    /// object is already in the store or `known` says it is already staged (small files are
    /// hashed before anything is written, so those cost no write).
    pub(crate) fn stage_path(
        &self,
        path: &Path,
        known: impl Fn(&Hash) -> bool,
        durability: Durability,
        tick: Tick<'_>,
    ) -> Result<(Hash, Option<Staged>)> {
        let input = Input::Path(path);
        let mut src = File::open(path).map_err(|e| input.error(e))?;
        let meta = src.metadata().map_err(|e| input.error(e))?;
        if meta.is_dir() {
            return Err(input.error(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory (store it as a tree)",
            )));
        }
        if !meta.is_file() {
            let s = self.stage_reader_ticking(&mut src, input, tick)?;
            return Ok((s.hash, Some(s)));
        }
        if meta.len() <= SMALL_FILE {
            let bytes = fs::read_len(&src, meta.len()).map_err(|e| input.error(e))?;
            let hash = Hash::of_parallel(&bytes);
            if !tick(bytes.len() as u64) {
                return Err(Error::Interrupted);
            }
            if known(&hash) || self.refresh_if_present(&hash, Some(bytes.len() as u64), durability)
            {
                return Ok((hash, None));
            }
            return Ok((hash, Some(self.stage_hashed(&bytes, hash)?)));
        }
        let mut staging = self.new_staging()?;
        let may_map = self.may_map_own();
        let mut hasher = TreeWriter::new(Some(self.clone()));
        let (hash, len) = copy_and_hash(&src, staging.file_mut(), may_map, &mut hasher, tick)
            .map_err(|e| match e {
                CopyError::Source(e) => input.error(e),
                CopyError::Dest(e) => Error::io("copy into staging file", staging.path(), e),
                CopyError::Stopped => Error::Interrupted,
            })?;
        Ok((hash, Some(Staged { staging, hash, len })))
    }

    /// True if the name of `hash` holds it ([`Store::name_holds`]; `len` the object's size if
    /// known), its mtime then refreshed (best effort: another user's object may refuse, and
    /// is present all the same). False if the name is free — or held by something else,
    /// which the publish that follows moves to `quarantine/` (docs/format.md "The write path
    /// (put)", "Squatters").
    pub(crate) fn refresh_if_present(
        &self,
        hash: &Hash,
        len: Option<u64>,
        durability: Durability,
    ) -> bool {
        self.refresh_if_holds(hash, len, false, durability)
    }

    /// [`Store::refresh_if_present`]; with `own_is_enough`, a regular file of ours of the
    /// right size counts without a rehash even in a shared store (see [`Store::name_holds`]).
    pub(crate) fn refresh_if_holds(
        &self,
        hash: &Hash,
        len: Option<u64>,
        own_is_enough: bool,
        durability: Durability,
    ) -> bool {
        // Through the cached fan-out handle. A stale handle (the directory made again)
        // answers "absent"; the publish that follows finds the truth.
        let Ok(dir) = self.fanout_dir(hash, false) else {
            return false;
        };
        let name = crate::write::stage::fanout_name(hash);
        let NameHolds::Object { mode } =
            self.name_holds(dir.as_fd(), name.as_ref(), hash, len, own_is_enough)
        else {
            return false;
        };
        let _ = fs::touch_at(dir.as_fd(), name.as_ref());
        // A put that finds its object says yes only once the object is as durable as asked;
        // if that fails the object counts as absent, and the put writes it again.
        self.settle_existing(hash, dir.as_fd(), name.as_ref(), mode, durability)
            .is_ok()
    }

    /// An object a put (or a name update) found already published, brought up to
    /// `durability`: its data synced once if it was published without (`none`, marked
    /// [`fs::UNSYNCED`]), and at `full` its fan-out directory synced, so its name survives.
    pub(crate) fn settle_existing(
        &self,
        hash: &Hash,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        mode: u32,
        durability: Durability,
    ) -> io::Result<()> {
        if durability == Durability::None {
            return Ok(());
        }
        if mode & fs::UNSYNCED != 0 {
            fs::sync_published_at(dir, name, mode)?;
        }
        if durability == Durability::Full {
            // `dir` may be a path-only handle: the directory is opened to be synced.
            let path = self.object_path(hash);
            self.inner
                .root_dir
                .fsync_dir(path.parent().unwrap_or(&path))?;
        }
        Ok(())
    }

    /// What is at the name of `hash` (`name` in the fan-out directory `dir`): the object only
    /// if it is a regular file (never a symlink, FIFO, device or directory), of `len` bytes if
    /// that is known, and — unless it is our own file in a private store, where nobody else
    /// can have written it — its bytes hash to its name. Anything else is a squatter: another
    /// member of a shared store can plant garbage or a link at the name of content someone
    /// else will store, and a put that believed it would acknowledge bytes it never stored.
    ///
    /// `own_is_enough` trusts our own file in a shared store too: for the stat cache of
    /// `put -r`, which only vouches for content we stored ourselves (the one way to plant a
    /// file of ours there is a hard link to another of our objects of the same size, which
    /// Linux refuses to other users under `fs.protected_hardlinks`).
    pub(crate) fn name_holds(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        hash: &Hash,
        len: Option<u64>,
        own_is_enough: bool,
    ) -> NameHolds {
        let m = match fs::lstat_at(dir, name) {
            Ok(m) => m,
            Err(e) if fs::is_not_found(&e) => return NameHolds::Absent,
            Err(e) => return NameHolds::Squatter(format!("cannot be examined: {e}")),
        };
        if m.kind != fs::Kind::File {
            return NameHolds::Squatter(format!("is {}, not a regular file", m.kind.describe()));
        }
        if let Some(want) = len.filter(|&l| l != m.len) {
            return NameHolds::Squatter(format!("holds {} bytes, not {want}", m.len));
        }
        if m.uid == fs::uid() && (own_is_enough || !self.inner.options.shared_group) {
            return NameHolds::Object { mode: m.mode };
        }
        let path = self.object_path(hash);
        let may_map = self.may_map_own();
        match self
            .inner
            .root_dir
            .open_read(&path)
            .and_then(|f| hash_file(&f, may_map))
        {
            Ok(h) if h == *hash => NameHolds::Object { mode: m.mode },
            Ok(h) => NameHolds::Squatter(format!("holds bytes that hash to {h}")),
            Err(e) if fs::is_not_found(&e) => NameHolds::Absent,
            Err(e) => NameHolds::Squatter(format!("cannot be read to check it: {e}")),
        }
    }
}

/// What an object's name holds (see [`Store::name_holds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NameHolds {
    /// The object's bytes, with the mode of the file (it may carry
    /// [`fs::UNSYNCED`](crate::fs::UNSYNCED)).
    Object { mode: u32 },
    /// Nothing.
    Absent,
    /// Something else, and what.
    Squatter(String),
}

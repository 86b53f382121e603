//! Verified range reads (docs/format.md, "Outboards"): read any byte range of an object,
//! checked against the object's name, by reading that range's chunk groups and O(log n)
//! hashes of its outboard. The outboard is written by the put path while it hashes
//! ([`TreeWriter`]), or computed on the first range read of an object without one (an older
//! store, another writer) and published then. An outboard is never trusted: every pair used
//! is checked against the name; a wrong or missing one is rebuilt from the object.

use std::fs::File;
use std::io::{self, Write as _};
use std::ops::{Bound, Range, RangeBounds};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::outboard::{self, Mismatch, TreeHasher, Verifier, GROUP, HEADER_LEN, PAIR, THRESHOLD};
use crate::read::copyout::{Sink, WriterSink};
use crate::store::layout;
use crate::write::stage::Staging;
use crate::Store;

/// Whether puts write outboards (always, except in the benchmark that measures their cost).
static WRITE_OUTBOARDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// For benchmarks only: puts in this process stop (`false`) or resume writing outboards,
/// which is what the put path did before outboards, to measure what they cost. Range reads
/// still compute a missing outboard on first use. Not part of the API.
#[doc(hidden)]
pub fn bench_write_outboards(on: bool) {
    WRITE_OUTBOARDS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a put writes an outboard (see [`bench_write_outboards`]).
pub(crate) fn write_outboards() -> bool {
    WRITE_OUTBOARDS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Pairs kept in memory by a put before they are appended to the outboard's staging file.
const SPILL: usize = 1 << 20;
/// Read size when an outboard is computed from an object that may not be mapped.
const BUILD_CHUNK: usize = 4 << 20;

/// The put path's hasher: BLAKE3 a chunk group at a time ([`TreeHasher`]); with a store, it
/// also writes the outboard into a staging file of that store as the pairs come, and
/// [`TreeWriter::finish`] publishes it for an object of at least [`THRESHOLD`] bytes.
/// Memory stays bounded (the pairs are spilled every MiB). Failing to write the outboard never
/// fails the put: the outboard is derived data, computed again on first use.
#[derive(Default)]
pub(crate) struct TreeWriter {
    hasher: TreeHasher,
    /// Without a store, plain BLAKE3 (no pairs to compute).
    plain: Option<blake3::Hasher>,
    store: Option<Store>,
    spill: Option<Staging>,
    failed: bool,
}

impl crate::copy::CopyHasher for TreeWriter {
    fn update(&mut self, bytes: &[u8]) {
        TreeWriter::update(self, bytes);
    }
    fn finish(&mut self) -> Hash {
        TreeWriter::finish(self)
    }
}

impl TreeWriter {
    /// A hasher that writes an outboard into `store` (`None`: only the hash).
    pub(crate) fn new(store: Option<Store>) -> Self {
        let store = store.filter(|_| write_outboards());
        TreeWriter {
            hasher: TreeHasher::new(),
            plain: store.is_none().then(blake3::Hasher::new),
            store,
            spill: None,
            failed: false,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        if let Some(p) = &mut self.plain {
            p.update(data);
            return;
        }
        self.hasher.update(data);
        if self.hasher.pending() >= SPILL {
            self.spill_pairs();
        }
    }

    fn spill_pairs(&mut self) {
        let pairs = self.hasher.take_pairs();
        if self.failed {
            return;
        }
        let Some(store) = &self.store else { return };
        if self.spill.is_none() {
            // Room for the header, written last.
            let Ok(mut s) = store.new_staging() else {
                self.failed = true;
                return;
            };
            if s.file_mut().write_all(&[0u8; HEADER_LEN as usize]).is_err() {
                self.failed = true;
                return;
            }
            self.spill = Some(s);
        }
        if let Some(s) = self.spill.as_mut() {
            if s.file_mut().write_all(&pairs).is_err() {
                self.failed = true;
                self.spill = None;
            }
        }
    }

    /// The hash of everything given. With a store and an object of at least [`THRESHOLD`]
    /// bytes, the outboard is published (best effort) before the caller publishes the object.
    pub(crate) fn finish(&mut self) -> Hash {
        if let Some(p) = &self.plain {
            return Hash::from_bytes(*p.finalize().as_bytes());
        }
        let hash = self.hasher.finalize();
        let len = self.hasher.len();
        if self.store.is_none() || len < THRESHOLD {
            self.spill = None;
            return hash;
        }
        self.spill_pairs();
        if let (Some(store), Some(s), false) = (&self.store, self.spill.take(), self.failed) {
            if s.file().write_at(&outboard::header(len), 0).is_ok() {
                let _ = store.publish_outboard(&hash, s, false);
            }
        }
        hash
    }
}

/// Where the pairs of an outboard are read from.
enum Pairs {
    /// The published outboard.
    File(File),
    /// The published outboard, mapped (where objects may be: `crate::read`, `may_map`).
    Map(memmap2::Mmap),
    /// One computed by this reader (header included).
    Mem(Vec<u8>),
}

impl Pairs {
    fn read(&self, node: u64) -> io::Result<[u8; PAIR as usize]> {
        let mut p = [0u8; PAIR as usize];
        let at = HEADER_LEN + node * PAIR;
        let mem: &[u8] = match self {
            Pairs::File(f) => {
                f.read_exact_at(&mut p, at)?;
                return Ok(p);
            }
            Pairs::Mem(v) => v,
            Pairs::Map(m) => m,
        };
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let src = mem
            .get(at..at.saturating_add(PAIR as usize))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        p.copy_from_slice(src);
        Ok(p)
    }
}

/// A verified view of one open object: every byte it returns was checked against the
/// object's name (small objects whole, large ones a chunk group at a time). A group checked
/// once is remembered: later reads of it read the (immutable) object file without hashing it
/// again.
pub(crate) struct Ranged {
    store: Store,
    hash: Hash,
    file: File,
    path: PathBuf,
    len: u64,
    body: Body,
}

enum Body {
    /// A small object, read and verified whole.
    Whole(Vec<u8>),
    Tree(Box<TreeState>),
}

struct TreeState {
    pairs: Pairs,
    verifier: Verifier,
    /// One bit per group: checked.
    checked: Vec<u64>,
    /// The last group read, verified: (group, bytes).
    cur: Option<(u64, Vec<u8>)>,
    /// The outboard was rebuilt by this reader (a second mismatch cannot be the outboard's).
    rebuilt: bool,
}

impl std::fmt::Debug for Ranged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranged")
            .field("hash", &self.hash)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Ranged {
    /// A verified view of the object `hash`, open as `file` (found at `path`). A small object
    /// is verified whole now; a large one's outboard is opened (or computed and published).
    pub(crate) fn open(store: &Store, hash: &Hash, file: File, path: PathBuf) -> Result<Ranged> {
        let meta = file.metadata().map_err(Error::at("stat", &path))?;
        let len = meta.len();
        let body = if len < THRESHOLD || len <= GROUP {
            // Positioned: `file` may share its offset with a reader that already read some.
            let mut bytes = vec![0u8; len as usize];
            let got = read_at_most(&file, &mut bytes, 0).map_err(Error::at("read", &path))?;
            bytes.truncate(got);
            let actual = Hash::of_parallel(&bytes);
            if actual != *hash {
                return Err(store.corrupt(hash, actual, &path));
            }
            Body::Whole(bytes)
        } else {
            let pairs = store.outboard_for(hash, &file, &path, &meta, false)?;
            Body::Tree(Box::new(TreeState {
                pairs,
                verifier: Verifier::new(*hash, len),
                checked: vec![0; outboard::groups(len).div_ceil(64) as usize],
                cur: None,
                rebuilt: false,
            }))
        };
        store.refresh_on_read(&file, &meta);
        Ok(Ranged {
            store: store.clone(),
            hash: *hash,
            file,
            path,
            len,
            body,
        })
    }

    /// Another descriptor of the open object, and where it was found.
    pub(crate) fn file_and_path(&self) -> Result<(File, PathBuf)> {
        let f = self
            .file
            .try_clone()
            .map_err(Error::at("open", &self.path))?;
        Ok((f, self.path.clone()))
    }

    /// The object's size.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Reads verified bytes at `pos` into `buf`: at most to the end of one chunk group, 0 at
    /// or past the end of the object.
    pub(crate) fn read_at(&mut self, buf: &mut [u8], pos: u64) -> Result<usize> {
        if pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let st = match &mut self.body {
            Body::Whole(v) => {
                let v = &v[pos as usize..];
                let n = v.len().min(buf.len());
                buf[..n].copy_from_slice(&v[..n]);
                return Ok(n);
            }
            Body::Tree(st) => st,
        };
        let g = pos / GROUP;
        let off = (pos - g * GROUP) as usize;
        let group_end = ((g + 1) * GROUP).min(self.len);
        let want = buf.len().min((group_end - pos) as usize);
        if let Some((cg, bytes)) = &st.cur {
            if *cg == g {
                buf[..want].copy_from_slice(&bytes[off..off + want]);
                return Ok(want);
            }
        }
        if st.checked[(g / 64) as usize] & (1 << (g % 64)) != 0 {
            // Checked before: the object file is immutable (docs/format.md, "Outboards").
            self.file
                .read_exact_at(&mut buf[..want], pos)
                .map_err(Error::at("read", &self.path))?;
            return Ok(want);
        }
        self.load_group(g)?;
        let Body::Tree(st) = &mut self.body else {
            return Ok(0);
        };
        let Some((_, bytes)) = &st.cur else {
            return Ok(0);
        };
        buf[..want].copy_from_slice(&bytes[off..off + want]);
        Ok(want)
    }

    /// Reads group `g` whole, checks it, and makes it the current one.
    fn load_group(&mut self, g: u64) -> Result<()> {
        let start = g * GROUP;
        let end = ((g + 1) * GROUP).min(self.len);
        let Body::Tree(st) = &mut self.body else {
            return Ok(());
        };
        let mut bytes = match st.cur.take() {
            Some((_, mut b)) => {
                b.resize((end - start) as usize, 0);
                b
            }
            None => vec![0u8; (end - start) as usize],
        };
        // A short read (the file shrank) leaves the group the wrong length: a mismatch.
        let got =
            read_at_most(&self.file, &mut bytes, start).map_err(Error::at("read", &self.path))?;
        bytes.truncate(got);
        loop {
            let Body::Tree(st) = &mut self.body else {
                return Ok(());
            };
            let pairs = &st.pairs;
            let r = st
                .verifier
                .check(g, &bytes, &mut |node| pairs.read(node))
                .unwrap_or(Err(Mismatch::Outboard));
            match r {
                Ok(()) => {
                    st.checked[(g / 64) as usize] |= 1 << (g % 64);
                    st.cur = Some((g, bytes));
                    return Ok(());
                }
                Err(Mismatch::Outboard) if !st.rebuilt => {
                    // Wrong, short or unreadable outboard: computed again from the object
                    // (which checks the whole object) and replaced.
                    let meta = self
                        .file
                        .metadata()
                        .map_err(Error::at("stat", &self.path))?;
                    let pairs = self
                        .store
                        .outboard_for(&self.hash, &self.file, &self.path, &meta, true)?;
                    st.pairs = pairs;
                    st.verifier = Verifier::new(self.hash, st.verifier.len());
                    st.rebuilt = true;
                }
                Err(_) => {
                    let path = self
                        .store
                        .quarantine(&self.hash, &self.path)
                        .unwrap_or_else(|_| self.path.clone());
                    return Err(Error::CorruptRange {
                        hash: self.hash,
                        start,
                        end,
                        path,
                    });
                }
            }
        }
    }
}

/// `pread` until `buf` is full or the end of the file; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The byte offsets `range` stands for in an object of `len` bytes.
fn resolve_range(hash: &Hash, range: (Bound<u64>, Bound<u64>), len: u64) -> Result<Range<u64>> {
    let start = match range.0 {
        Bound::Included(s) => Some(s),
        Bound::Excluded(s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    };
    let end = match range.1 {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(e),
        Bound::Unbounded => Some(len),
    };
    match (start, end) {
        (Some(s), Some(e)) if s <= e && e <= len => Ok(s..e),
        _ => Err(Error::InvalidInput {
            what: "byte range",
            reason: format!(
                "{} is not inside object {hash}, which has {len} bytes",
                show_range(range)
            ),
        }),
    }
}

/// A range as the user wrote it, for messages (`10..=19`, `5..`).
fn show_range(r: (Bound<u64>, Bound<u64>)) -> String {
    let s = match r.0 {
        Bound::Included(s) => s.to_string(),
        Bound::Excluded(s) => format!("{s}+1"),
        Bound::Unbounded => String::new(),
    };
    match r.1 {
        Bound::Included(e) => format!("{s}..={e}"),
        Bound::Excluded(e) => format!("{s}..{e}"),
        Bound::Unbounded => format!("{s}.."),
    }
}

/// Bytes written per step by [`copy_range`].
const COPY_BUF: usize = 1 << 20;

/// Writes the verified bytes `range` of `r` into `out`; returns how many.
fn copy_range(
    r: &mut Ranged,
    hash: &Hash,
    range: (Bound<u64>, Bound<u64>),
    out: &mut dyn Sink,
) -> Result<u64> {
    let range = resolve_range(hash, range, r.len())?;
    let mut buf = vec![0u8; COPY_BUF.min((range.end - range.start) as usize)];
    let mut pos = range.start;
    while pos < range.end {
        let want = buf.len().min((range.end - pos) as usize);
        let mut n = 0;
        while n < want {
            let k = r.read_at(&mut buf[n..want], pos + n as u64)?;
            if k == 0 {
                // The file shrank since it was opened.
                return Err(Error::CorruptRange {
                    hash: *hash,
                    start: pos + n as u64,
                    end: range.end,
                    path: r.path.clone(),
                });
            }
            n += k;
        }
        out.write_bytes(&buf[..n])
            .map_err(|e| Error::io("write output", "<output>", e))?;
        pos += n as u64;
    }
    Ok(range.end - range.start)
}

impl Store {
    /// The path of an object's outboard (which may not exist).
    pub(crate) fn outboard_path(&self, hash: &Hash) -> PathBuf {
        layout::outboard_path(&self.inner.root, hash)
    }

    /// Reads the bytes `range` of an object (byte offsets: `10..20`, `10..=19`, `10..`,
    /// `..`), verified against its name without reading the rest of it: only the chunk
    /// groups of 16 KiB the range touches, and O(log n) hashes of the object's outboard. An
    /// object without an outboard is hashed whole once, and its outboard published for the
    /// next read; objects under 4 MiB are verified whole. Nothing unverified is ever returned.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let data: Vec<u8> = (0..5_000_000u32).map(|i| i as u8).collect();
    /// let h = store.put_bytes(&data)?;
    /// assert_eq!(store.read_range(&h, 4_000_000..4_000_016)?, &data[4_000_000..4_000_016]);
    /// assert_eq!(store.read_range(&h, 4_999_990..)?, &data[4_999_990..]);
    /// assert!(store.read_range(&h, 0..=5_000_000).is_err()); // past the end
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the object and its size for a range not inside it;
    /// [`Error::NotFound`]; [`Error::CorruptRange`] naming the object and the chunk group
    /// that does not match (the object is quarantined; none of that group's bytes are
    /// returned), or [`Error::Corrupt`] if the whole object was hashed and does not match;
    /// I/O errors naming the path.
    pub fn read_range(&self, hash: &Hash, range: impl RangeBounds<u64>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.range_to_sink(
            hash,
            (range.start_bound().cloned(), range.end_bound().cloned()),
            &mut WriterSink(&mut out),
        )?;
        Ok(out)
    }

    /// [`Store::read_range`] into `out`, a chunk group at a time (memory stays bounded
    /// whatever the range's size). Each group is verified before any of its bytes is
    /// written: after an error, `out` holds a verified prefix of the range. Returns the
    /// number of bytes written.
    ///
    /// # Errors
    /// As [`Store::read_range`]; a failure to write to `out` is [`Error::Io`] with op
    /// "write output".
    pub fn read_range_to_writer(
        &self,
        hash: &Hash,
        range: impl RangeBounds<u64>,
        out: &mut dyn io::Write,
    ) -> Result<u64> {
        self.range_to_sink(
            hash,
            (range.start_bound().cloned(), range.end_bound().cloned()),
            &mut WriterSink(out),
        )
    }

    /// [`Store::read_range`] into the file `dest`, written the way [`Store::get_to_path`]
    /// writes (a regular file replaced atomically once the whole range is verified, a device
    /// or FIFO written in place a verified group at a time).
    ///
    /// # Errors
    /// As [`Store::read_range`] and [`Store::get_to_path`].
    pub fn read_range_to_path(
        &self,
        hash: &Hash,
        range: impl RangeBounds<u64>,
        dest: impl AsRef<Path>,
    ) -> Result<u64> {
        let b = (range.start_bound().cloned(), range.end_bound().cloned());
        // The range is checked before anything is created at `dest`.
        let r = std::cell::RefCell::new(self.open_ranged(hash)?);
        resolve_range(hash, b, r.borrow().len())?;
        self.to_path(
            dest.as_ref(),
            &mut |w| copy_range(&mut r.borrow_mut(), hash, b, w),
            &mut |tmp, _| copy_range(&mut r.borrow_mut(), hash, b, &mut WriterSink(&mut &*tmp)),
        )
    }

    fn range_to_sink(
        &self,
        hash: &Hash,
        range: (Bound<u64>, Bound<u64>),
        out: &mut dyn Sink,
    ) -> Result<u64> {
        let mut r = self.open_ranged(hash)?;
        copy_range(&mut r, hash, range, out)
    }

    /// Opens an object for verified reads at any position (see [`Store::read_range`]).
    pub(crate) fn open_ranged(&self, hash: &Hash) -> Result<Ranged> {
        // A tier reads an object it does not hold where it is, in the upstream: only the
        // groups a range touches and its outboard, never the whole object.
        if self.locate(hash).is_none() {
            if let Some(up) = self.upstream().and_then(crate::Upstream::as_store) {
                match up.open_ranged(hash) {
                    Err(e) if e.is_not_found() => {}
                    r => return r,
                }
            }
        }
        let (file, path) = self.open_file(hash)?;
        Ranged::open(self, hash, file, path)
    }

    /// The outboard of the open object `file` (`len` ≥ [`THRESHOLD`]): the published one if
    /// its header fits the object (its pairs are checked as they are used), else — or with
    /// `rebuild` — computed from the object (which verifies the whole object: a mismatch is
    /// [`Error::Corrupt`] and quarantines it) and published in place of what was there.
    fn outboard_for(
        &self,
        hash: &Hash,
        file: &File,
        path: &Path,
        meta: &std::fs::Metadata,
        rebuild: bool,
    ) -> Result<Pairs> {
        let len = meta.len();
        let obp = self.outboard_path(hash);
        let mut replace = rebuild;
        if !rebuild {
            match self.inner.root_dir.open_read(&obp) {
                Ok(f) => {
                    let mut head = [0u8; HEADER_LEN as usize];
                    let ok = fs::Root::fmeta(&f).ok().is_some_and(|m| {
                        read_at_most(&f, &mut head, 0).is_ok()
                            && outboard::check_header(&head, m.len, len).is_ok()
                    });
                    if ok {
                        // Mapped where objects may be: the pairs of a path are then memory
                        // reads, not one `pread` each.
                        let mappable = f.metadata().is_ok_and(|m| self.may_map(&m));
                        if let (true, Ok(m)) = (mappable, fs::map_readonly(&f)) {
                            return Ok(Pairs::Map(m));
                        }
                        return Ok(Pairs::File(f));
                    }
                    replace = true;
                }
                Err(e) if fs::is_not_found(&e) => {}
                // A symlink, FIFO, directory or unreadable file at the name: replaced.
                Err(_) => replace = true,
            }
        }
        let bytes = self.compute_outboard(hash, file, path, meta)?;
        self.publish_outboard_bytes(hash, &bytes, replace);
        Ok(Pairs::Mem(bytes))
    }

    /// Hashes the whole object into its outboard; the root must be the name.
    fn compute_outboard(
        &self,
        hash: &Hash,
        file: &File,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<Vec<u8>> {
        let len = meta.len();
        let (actual, bytes) = if self.may_map(meta) {
            let m = fs::map_readonly(file).map_err(Error::at("map", path))?;
            outboard::build(&m, crate::hash::rayon_usable())
        } else {
            let mut t = TreeHasher::new();
            let mut out = Vec::with_capacity(outboard::outboard_len(len) as usize);
            out.extend_from_slice(&outboard::header(len));
            let mut buf = vec![0u8; BUILD_CHUNK];
            let mut at = 0u64;
            loop {
                let n = read_at_most(file, &mut buf, at).map_err(Error::at("read", path))?;
                if n == 0 {
                    break;
                }
                t.update(&buf[..n]);
                out.extend(t.take_pairs());
                at += n as u64;
            }
            let h = t.finalize();
            out.extend(t.take_pairs());
            // The file changed size under us: the header must say what was hashed.
            out[..HEADER_LEN as usize].copy_from_slice(&outboard::header(at));
            (h, out)
        };
        if actual != *hash || bytes.len() as u64 != outboard::outboard_len(len) {
            return Err(self.corrupt(hash, actual, path));
        }
        Ok(bytes)
    }

    /// Publishes a complete outboard staged in `staging` at the name of `hash`'s outboard.
    /// Without `replace` an existing one is kept (outboards are deterministic: it is the same
    /// or it is wrong, which its next use finds); with it, what is there is removed first.
    pub(crate) fn publish_outboard(
        &self,
        hash: &Hash,
        mut staging: Staging,
        replace: bool,
    ) -> Result<()> {
        let dst = self.outboard_path(hash);
        fs::set_mode(staging.file(), self.object_mode())
            .map_err(|e| Error::io("set permissions of", staging.path(), e))?;
        for attempt in 0..3 {
            match self.publish_small(&mut staging, &dst) {
                Ok(fs::Published::Existed) if replace && attempt == 0 => {
                    let _ = self.inner.root_dir.unlink(&dst);
                }
                Ok(fs::Published::Created | fs::Published::Existed) => return Ok(()),
                Err(e) if fs::is_not_found(&e) && attempt < 2 => {
                    self.ensure_dir(dst.parent().unwrap_or(&dst))?;
                }
                Err(e) => return Err(Error::io("publish outboard", &dst, e)),
            }
        }
        Ok(())
    }

    /// The hash of bytes about to be put (on all cores for large inputs); for at least
    /// [`THRESHOLD`] bytes their outboard is built in the same pass and published, best
    /// effort (the caller publishes the object).
    pub(crate) fn hash_for_put(&self, bytes: &[u8]) -> Hash {
        if (bytes.len() as u64) < THRESHOLD || !write_outboards() {
            return Hash::of_parallel(bytes);
        }
        let (hash, ob) = outboard::build(bytes, crate::hash::rayon_usable());
        self.publish_outboard_bytes(&hash, &ob, false);
        hash
    }

    /// Stages a complete outboard held in memory and publishes it ([`Store::publish_outboard`]),
    /// best effort: an outboard is derived data, computed again on its next use if this fails.
    fn publish_outboard_bytes(&self, hash: &Hash, bytes: &[u8], replace: bool) {
        if let Ok(mut s) = self.new_staging() {
            if s.file_mut().write_all(bytes).is_ok() {
                let _ = self.publish_outboard(hash, s, replace);
            }
        }
    }

    /// Removes outboards whose object is gone (neither under `objects/` nor in a trash run),
    /// and anything at an outboard name that is not a regular file. Returns how many were
    /// removed. An outboard removed while its object is being put again is only lost work:
    /// the next range read computes it.
    pub(crate) fn sweep_outboards(&self) -> Result<u64> {
        let mut removed = 0;
        self.each_outboard(&mut |hash, path, kind| {
            let orphan = kind != fs::Kind::File || self.locate(&hash).is_none();
            if orphan && kind != fs::Kind::Dir && self.inner.root_dir.unlink(path).is_ok() {
                removed += 1;
            }
        })?;
        Ok(removed)
    }

    /// Checks every outboard of an object present under `objects/` against the object's name
    /// and size (all its pairs; the object's bytes are verify's business). A wrong one is
    /// removed (the next range read rebuilds it); orphans too, as [`Store::sweep_outboards`].
    /// Returns (checked, removed).
    pub(crate) fn verify_outboards(&self) -> Result<(u64, u64)> {
        let (mut checked, mut removed) = (0, 0);
        self.each_outboard(&mut |hash, path, kind| {
            checked += 1;
            if kind == fs::Kind::File && self.object_len(&hash).is_err() {
                // Its object is in a trash run (kept: a read may restore it) or gone.
                if self.locate(&hash).is_some() {
                    return;
                }
            }
            let ok = kind == fs::Kind::File
                && self.object_len(&hash).is_ok_and(|len| {
                    self.inner
                        .root_dir
                        .read_small(path, outboard::outboard_len(len) + 1)
                        .is_ok_and(|(b, _, m)| {
                            outboard::check_header(&b, m.len, len).is_ok()
                                && outboard::pairs_consistent(&b[HEADER_LEN as usize..], len, &hash)
                        })
                });
            if !ok && kind != fs::Kind::Dir && self.inner.root_dir.unlink(path).is_ok() {
                removed += 1;
            }
        })?;
        Ok((checked, removed))
    }

    /// Calls `f(hash, path, kind)` for each outboard name under `outboards/`; other names
    /// are left alone.
    fn each_outboard(&self, f: &mut dyn FnMut(Hash, &Path, fs::Kind)) -> Result<()> {
        let top = self.path(layout::OUTBOARDS);
        let root = &self.inner.root_dir;
        let fans = match root.read_dir(&top) {
            Ok(v) => v,
            Err(e) if fs::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(Error::io("list", &top, e)),
        };
        for (fan, kind) in fans {
            let fb = fs::name_bytes(&fan);
            if kind != fs::Kind::Dir || !layout::is_fanout_name(fb) {
                continue;
            }
            let dir = top.join(&fan);
            let names = match root.read_dir(&dir) {
                Ok(v) => v,
                Err(e) if fs::is_not_found(&e) => continue,
                Err(e) => return Err(Error::io("list", &dir, e)),
            };
            for (name, kind) in names {
                if let Some(h) = layout::parse_object_name(fb, fs::name_bytes(&name)) {
                    f(h, &dir.join(&name), kind);
                }
            }
        }
        Ok(())
    }
}

//! Copying a large object out of the store, verified, in bounded memory.
//!
//! Two destinations, two methods:
//!
//! - **A file we create** (the temporary file of `get -o`, a file of a tree restore):
//!   the object is copied in the kernel (`copy_file_range(2)`, a reflink where the filesystem
//!   offers one) 2 MiB at a time while a second thread hashes *the copy*, read back from the
//!   new file. What the caller then makes visible (rename of the temporary file or of the
//!   restore's directory) is exactly the bytes that hashed to the object's name: checking
//!   the copy is stronger than checking the object and then copying it, and it reads the
//!   bytes once instead of twice. A mismatch is told apart from a corrupt object by hashing
//!   the object itself before it is quarantined.
//! - **A file of a tree restore, from an object that may be mapped**: the kernel copies while
//!   a second thread hashes *the object* from a mapping, side by side from the first byte (no
//!   step waits for the copy to be read back, and the copy's pages are never mapped). The
//!   object is one only its owner could change, as when a verified mapping is written to a
//!   pipe; the restore's directory becomes visible only once every file verified (figures:
//!   docs/performance.md, "Restoring a tree (`get -r`)").
//! - **A writer** (stdout, a pipe, a device): nothing may be written before the whole object
//!   is verified, so the object is hashed first on all cores, a window at a time (mapped where
//!   `Store::may_map` allows, else read into one reused buffer), then written a window at a
//!   time. Where the object is not mapped (a shared store, a network filesystem, a file
//!   another user owns) the second pass hashes again, so a rewrite by the object's owner in
//!   between fails the get instead of ending quietly with other bytes.
//!
//! Memory is bounded by the window (8 MiB), never by the object's size.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::copy::{copy_and_hash, copy_chunks, CopyError};
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::{Hash, Hasher, PARALLEL_MIN};
use crate::progress::{Progress, ProgressFn};
use crate::Store;

/// Bytes hashed or written per step: large enough for `update_rayon` to use both cores and to
/// amortise the system calls, small enough to keep memory bounded.
const WINDOW: usize = 8 << 20;

/// Copies the open object `obj` (at `obj_path`, `len` bytes by `fstat`) into `dst`, a file
/// this process created and nobody else writes, verifying the copy: returns the number of
/// bytes copied once they hash to `hash`. `dst` is the file, the path that names it in
/// messages, and whether it may be mapped to hash it (see [`fs::map_private_file`]).
/// `progress` hears phase `"get"`: bytes copied and hashed, out of the object's size.
///
/// # Errors
/// [`Error::Corrupt`] (the object quarantined) if the object does not hash to `hash`; an
/// [`Error::Io`] naming `dst_shown` if writing fails or the copy does not match an object that
/// does (changed while copied).
pub(crate) fn copy_verified(
    store: &Store,
    hash: &Hash,
    obj: &File,
    obj_path: &Path,
    (dst, dst_shown, dst_may_map): (&File, &Path, bool),
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let total = obj.metadata().ok().map(|m| m.len());
    let done = std::sync::atomic::AtomicU64::new(0);
    let tick = |n: u64| {
        let d = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        progress(Progress {
            phase: "get",
            done: d,
            total,
        })
    };
    let (actual, copied) = copy_and_hash(
        obj,
        dst,
        dst_may_map,
        &mut crate::hash::Hasher::new(),
        &tick,
    )
    .map_err(|e| copy_error(e, obj_path, dst_shown))?;
    if actual == *hash {
        return Ok(copied);
    }
    // Either the object is corrupt, or it changed while it was copied (its owner rewrote
    // it, in a shared store). Only the first is quarantined.
    let again = hash_from_start(store, obj).map_err(Error::at("read", obj_path))?;
    if again == *hash {
        return Err(Error::io(
            "write output",
            dst_shown,
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the copy does not match the object (was it rewritten while copied?); \
                 nothing was written",
            ),
        ));
    }
    Err(store.corrupt(hash, again, obj_path))
}

/// A failed copy of the object at `obj_path` into the output `dst_shown`, as an [`Error`]
/// naming the side that failed.
fn copy_error(e: CopyError, obj_path: &Path, dst_shown: &Path) -> Error {
    match e {
        CopyError::Source(e) => Error::io("read", obj_path, e),
        CopyError::Dest(e) => Error::io("write output", dst_shown, e),
        CopyError::Stopped => Error::Interrupted,
    }
}

/// Hashes the whole of `obj` from its start, on all cores, in windows.
fn hash_from_start(store: &Store, obj: &File) -> io::Result<Hash> {
    let meta = obj.metadata()?;
    match hash_windows(
        obj,
        meta.len(),
        store.may_map(&meta),
        &mut Vec::new(),
        &|_| true,
    ) {
        Ok(h) => Ok(h),
        Err(WindowError::Io(e)) => Err(e),
        Err(WindowError::Stopped) => Err(io::ErrorKind::Interrupted.into()),
    }
}

/// Why [`hash_windows`] did not finish.
enum WindowError {
    Io(io::Error),
    /// The tick asked to stop.
    Stopped,
}

impl From<io::Error> for WindowError {
    fn from(e: io::Error) -> Self {
        WindowError::Io(e)
    }
}

/// Hashes `len` bytes of `file` from offset 0 a window at a time: mapped where `may_map`,
/// else read into `buf` (grown to one window). Reads past a shortened end stop early: the
/// hash is then of what was there. `tick` is told the bytes hashed so far after each window;
/// `false` stops.
fn hash_windows(
    file: &File,
    len: u64,
    may_map: bool,
    buf: &mut Vec<u8>,
    tick: &dyn Fn(u64) -> bool,
) -> Result<Hash, WindowError> {
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    if may_map {
        while off < len {
            let n = (len - off).min(WINDOW as u64) as usize;
            let m = fs::map_object_window(file, off, n)?;
            update(&mut h, &m);
            off += n as u64;
            if !tick(off) {
                return Err(WindowError::Stopped);
            }
        }
        return Ok(h.finalize().into());
    }
    buf.resize(WINDOW, 0);
    loop {
        let n = read_at_full(file, buf, off)?;
        if n == 0 {
            break;
        }
        update(&mut h, &buf[..n]);
        off += n as u64;
        if !tick(off) {
            return Err(WindowError::Stopped);
        }
    }
    Ok(h.finalize().into())
}

fn update(h: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_MIN {
        crate::hash::update_parallel(h, bytes);
    } else {
        h.update(bytes);
    }
}

/// Reads from `off` until `buf` is full or the file ends; returns how much was read.
fn read_at_full(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], off + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Where [`write_verified`] sends an object's bytes once they are verified.
pub(crate) trait Sink {
    /// Writes `bytes`.
    ///
    /// # Errors
    /// The write's.
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Writes `bytes`, which are `obj`'s from offset `off`, verified and mapped: a sink that
    /// can move them in the kernel (a pipe: `splice(2)`) does so.
    ///
    /// # Errors
    /// The write's.
    fn write_file_range(&mut self, _obj: &File, _off: u64, bytes: &[u8]) -> io::Result<()> {
        self.write_bytes(bytes)
    }
}

/// Any writer.
pub(crate) struct WriterSink<'a>(pub(crate) &'a mut dyn Write);

impl Sink for WriterSink<'_> {
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }
}

/// A descriptor (stdout, a device, a FIFO; borrowed, or a `File` the sink holds): written
/// with `write(2)`, or, from a verified mapped object, spliced into a pipe or copied in the
/// kernel into a regular file (`cas get H > file`). What it is, is asked once.
pub(crate) struct FdSink<F: AsFd> {
    fd: F,
    kernel: Kernel,
}

/// How an [`FdSink`] can move a file's bytes without copying them through memory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Splice,
    CopyRange,
    /// Neither (or refused once): `write(2)`.
    No,
}

impl<F: AsFd> FdSink<F> {
    pub(crate) fn new(fd: F) -> Self {
        let kernel = match fs::fd_kind(fd.as_fd()) {
            fs::FdKind::Pipe => {
                fs::grow_pipe(fd.as_fd());
                Kernel::Splice
            }
            fs::FdKind::Regular => Kernel::CopyRange,
            fs::FdKind::Other => Kernel::No,
        };
        FdSink { fd, kernel }
    }
}

impl<F: AsFd> Sink for FdSink<F> {
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        fs::write_all_fd(self.fd.as_fd(), bytes)
    }

    fn write_file_range(&mut self, obj: &File, off: u64, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while self.kernel != Kernel::No && done < bytes.len() {
            let (at, left) = (off + done as u64, bytes.len() - done);
            let moved = if self.kernel == Kernel::Splice {
                fs::splice_to_pipe(obj, at, self.fd.as_fd(), left)
            } else {
                fs::copy_range_from(obj, at, self.fd.as_fd(), left)
            };
            match moved {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the object is shorter than when it was verified",
                    ))
                }
                Ok(n) => done += n,
                // Nothing was moved by the refused call: write the rest.
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.kernel = Kernel::No,
                Err(e) => return Err(e),
            }
        }
        self.write_bytes(&bytes[done..])
    }
}

/// Writes the open object `obj` (`meta` from its `fstat`) to `out`, having verified all of it
/// first: nothing is written if it is corrupt. Memory stays bounded by one window.
/// `progress` hears phase `"verify"` (bytes hashed), then `"get"` (bytes written), each out
/// of the object's size.
///
/// # Errors
/// [`Error::Corrupt`] (quarantined) if the object does not hash to `hash`, before anything is
/// written, or — unmapped objects — if it changed before the second pass ended; "write
/// output" naming `<output>` if `out` fails; [`Error::Interrupted`] if `progress` said stop.
pub(crate) fn write_verified(
    store: &Store,
    hash: &Hash,
    obj: &File,
    obj_path: &Path,
    meta: &std::fs::Metadata,
    out: &mut dyn Sink,
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let len = meta.len();
    let may_map = store.may_map(meta);
    let mut buf = Vec::new();
    let tell = |phase, done| {
        if progress(Progress {
            phase,
            done,
            total: Some(len),
        }) {
            Ok(())
        } else {
            Err(Error::Interrupted)
        }
    };
    let actual = hash_windows(obj, len, may_map, &mut buf, &|done| {
        tell("verify", done).is_ok()
    })
    .map_err(|e| match e {
        WindowError::Io(e) => Error::io("read", obj_path, e),
        WindowError::Stopped => Error::Interrupted,
    })?;
    if actual != *hash {
        return Err(store.corrupt(hash, actual, obj_path));
    }
    let out_err = |e| Error::io("write output", "<output>", e);
    if may_map {
        // Only this user (or root) can change a file that may be mapped, and the bytes were
        // verified a moment ago: write the windows as they are (as `Store::get` hands out a
        // verified mapping), or splice them from the file into a pipe.
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(WINDOW as u64) as usize;
            let m = fs::map_object_window(obj, off, n).map_err(Error::at("map", obj_path))?;
            out.write_file_range(obj, off, &m).map_err(out_err)?;
            off += n as u64;
            tell("get", off)?;
        }
        return Ok(len);
    }
    // Not mapped (network filesystem, shared store, another user's file): copy in a second
    // pass, hashing again; if the file changed after the first pass (truncated, rewritten by
    // its owner), the copy fails as corrupt instead of ending quietly with other bytes.
    let mut f = obj;
    f.rewind().map_err(Error::at("rewind", obj_path))?;
    let mut hasher = Hasher::new();
    let mut copied = 0u64;
    let mut src = f.take(len);
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", obj_path, e)),
        };
        hasher.update(&buf[..n]);
        out.write_bytes(&buf[..n]).map_err(out_err)?;
        copied += n as u64;
        tell("get", copied)?;
    }
    let again = hasher.finalize();
    if copied != len || again != *hash {
        return Err(store.corrupt(hash, again, obj_path));
    }
    Ok(len)
}

/// Copies the open object `obj` (`len` bytes, which may be mapped: see `Store::may_map`) into
/// `dst` in the kernel while another thread hashes *the object* from a mapping: the two run
/// side by side from the first byte, and the copy is never read back. For a restore, whose
/// files become visible only once all of them are done: `Err` if the object does not hash to
/// `hash` (it is quarantined), and the restore is abandoned.
fn copy_hashing_object(
    store: &Store,
    hash: &Hash,
    (obj, obj_path, len): (&File, &Path, u64),
    (dst, dst_shown): (&File, &Path),
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let mut stopped = false;
    let (actual, copied) = std::thread::scope(|s| {
        let hasher = s.spawn(|| -> io::Result<Hash> {
            let mut h = blake3::Hasher::new();
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(WINDOW as u64) as usize;
                h.update(&fs::map_object_window(obj, off, n)?);
                off += n as u64;
            }
            Ok(h.finalize().into())
        });
        let copied = copy_chunks(obj, dst, &mut |total| {
            stopped = !progress(Progress {
                phase: "get",
                done: total,
                total: Some(len),
            });
            !stopped
        });
        let actual = hasher
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (actual, copied)
    });
    let actual = actual.map_err(Error::at("read", obj_path))?;
    copied.map_err(|e| copy_error(e, obj_path, dst_shown))?;
    if stopped {
        return Err(Error::Interrupted);
    }
    if actual != *hash {
        return Err(store.corrupt(hash, actual, obj_path));
    }
    let written = dst.metadata().map_err(Error::at("stat", dst_shown))?.len();
    if written != len {
        return Err(Error::io(
            "write output",
            dst_shown,
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("copied {written} of the object's {len} bytes"),
            ),
        ));
    }
    Ok(len)
}

/// Writes the object `hash` into `dst`, a new, empty file this process created and nobody
/// else writes (a get's temporary output, a file of a restore), verified: objects up to 1 MiB
/// are read (never mapped), hashed and written; larger ones are copied in the kernel with
/// the copy hashed ([`copy_verified`]). `dst_private`: no other user can open `dst` (mode
/// 0600, or below a directory of mode 0700 this process created), so it may be mapped to
/// hash the copy if it is on a local filesystem. Returns the object's size. `progress` hears
/// phase `"get"`: the bytes written so far, out of the object's size.
///
/// `restoring`: `dst` becomes visible only if this and every other file of a restore
/// succeed (a private temporary directory renamed at the end). A large object that may be
/// mapped is then hashed from the store while the kernel copies it
/// ([`copy_hashing_object`]), rather than read back from the copy: only its owner could
/// change it, as for a verified mapped object written to a pipe.
///
/// # Errors
/// As [`Store::get`](crate::Store::get) (the object quarantined if corrupt); "write output"
/// naming `dst_shown`.
pub(crate) fn object_to_new_file(
    store: &Store,
    hash: &Hash,
    dst: &File,
    dst_shown: &Path,
    dst_private: bool,
    restoring: bool,
    progress: ProgressFn<'_>,
) -> Result<u64> {
    let (obj, obj_path) = store.open_file(hash)?;
    let meta = obj.metadata().map_err(Error::at("stat", &obj_path))?;
    let len = meta.len();
    let n = if len > crate::copy::SMALL_FILE && restoring && store.may_map(&meta) {
        copy_hashing_object(
            store,
            hash,
            (&obj, &obj_path, len),
            (dst, dst_shown),
            progress,
        )?
    } else if len > crate::copy::SMALL_FILE {
        let may_map = fs::may_map(fs::is_local(dst), dst_private);
        copy_verified(
            store,
            hash,
            &obj,
            &obj_path,
            (dst, dst_shown, may_map),
            progress,
        )?
    } else {
        let bytes = fs::read_len(&obj, len).map_err(Error::at("read", &obj_path))?;
        let actual = Hash::of(&bytes);
        if actual != *hash {
            return Err(store.corrupt(hash, actual, &obj_path));
        }
        let mut w = dst;
        w.write_all(&bytes)
            .map_err(|e| Error::io("write output", dst_shown, e))?;
        if !progress(Progress {
            phase: "get",
            done: len,
            total: Some(len),
        }) {
            return Err(Error::Interrupted);
        }
        bytes.len() as u64
    };
    store.refresh_on_read(&obj, &meta);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Options};

    fn big(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn windows_hash_like_the_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data = big(WINDOW * 2 + 12345);
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let want = Hash::of(&data);
        for may_map in [false, true] {
            let Ok(got) = hash_windows(&f, data.len() as u64, may_map, &mut Vec::new(), &|_| true)
            else {
                panic!("hash_windows failed");
            };
            assert_eq!(got, want, "may_map {may_map}");
        }
    }

    #[test]
    fn copy_verified_refuses_a_corrupt_object_and_quarantines_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(
            d.path().join("s"),
            Options::default().durability(Durability::None),
        )
        .unwrap();
        let data = big(9 << 20);
        let h = store.put_bytes(&data).unwrap();
        let path = store.object_path(&h);
        // Flip one byte of the published object (its owner may; the mode is 0444).
        let mut perm = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&path, perm).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_at(b"X", 5 << 20).unwrap();
        drop(f);
        let obj = File::open(&path).unwrap();
        let out_path = d.path().join("out");
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&out_path)
            .unwrap();
        let e = copy_verified(
            &store,
            &h,
            &obj,
            &path,
            (&out, &out_path, true),
            &crate::no_progress,
        )
        .unwrap_err();
        assert!(e.is_corrupt(), "{e}");
        assert!(!path.exists(), "the corrupt object is quarantined");
    }
}

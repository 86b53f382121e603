//! The hashing copy shared by both directions: putting a file by path (into a staging file)
//! and copying a large object out (into a temporary output file). Neither side's names:
//! a source, a destination, and the hash of exactly the bytes written to the destination.

use std::fs::File;
use std::io::{self, Read, Write};

use crate::fs;
use crate::hash::{Hash, Hasher, PARALLEL_MIN};

/// A progress tick: bytes just copied; returning false asks the copy to stop
/// ([`crate::Error::Interrupted`]).
pub(crate) type Tick<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// Bytes copied per step: large enough to amortise the system call, small enough that
/// hashing starts early and overlaps the rest of the copy (docs/decisions.md has the
/// measurement behind 2 MiB).
pub(crate) const COPY_CHUNK: usize = 2 << 20;

/// Objects at least this large are memory-mapped (on local filesystems); smaller ones are read,
/// which is faster below ~64 KiB (docs/performance.md).
pub(crate) const MMAP_MIN: u64 = 64 * 1024;
/// Chunk size for hashing a file without mapping it.
pub(crate) const HASH_CHUNK: usize = 4 << 20;
/// Files up to this size are read into memory by `put_path` (hash once, skip if present).
pub(crate) const SMALL_FILE: u64 = 1 << 20;

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
            crate::hash::update_parallel(&mut h, &buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().into())
}

/// The copying side of [`copy_and_hash`]: copies `src` to `dst` chunk by chunk (in the kernel
/// where it can, else through memory) and tells `copied` the running total after each chunk;
/// `false` stops the copy (the caller knows why).
pub(crate) fn copy_chunks(
    src: &File,
    dst: &File,
    copied: &mut dyn FnMut(u64) -> bool,
) -> Result<(), CopyError> {
    let mut total = 0u64;
    let mut through_memory: Vec<u8> = Vec::new();
    loop {
        let n = if through_memory.is_empty() {
            match fs::copy_range(src, dst, COPY_CHUNK) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    through_memory = vec![0; COPY_CHUNK];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The kernel copy fails for either side; the destination's side (ENOSPC,
                // EDQUOT, EIO) is what can fail here in practice, since the source was
                // opened and stat'ed already.
                Err(e) => return Err(CopyError::Dest(e)),
            }
        } else {
            let n = match (&*src).read(&mut through_memory) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Source(e)),
            };
            (&*dst)
                .write_all(&through_memory[..n])
                .map_err(CopyError::Dest)?;
            n
        };
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if !copied(total) {
            return Ok(()); // the other side failed or stopped, and reports why
        }
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading the source.
    Source(io::Error),
    /// Writing, or reading back, the destination.
    Dest(io::Error),
    /// The progress callback asked to stop.
    Stopped,
}

/// Copies `src` (from its current position to its end) into `dst` while hashing the copy.
///
/// Another thread copies chunk by chunk — in the kernel (`copy_file_range`, a reflink where the
/// filesystem can) or, where that is refused, through memory — while this one hashes each chunk
/// as soon as it is copied, reading it back from `dst`. `dst` is a file only we write (a
/// staging file when putting, a temporary output file when copying out), so the hash is of
/// exactly the bytes that were written, even if `src` changes meanwhile.
/// `dst` must be open for reading and writing.
/// With `may_map` (`dst` private and on a local filesystem, [`fs::may_map`]) each copied
/// chunk is hashed through a mapping instead of being read back into a buffer: one memory
/// copy less per byte. `hasher` is BLAKE3 alone ([`Hasher`]) or BLAKE3 writing the object's
/// outboard as it goes (the put path's `TreeWriter`).
pub(crate) fn copy_and_hash(
    src: &File,
    dst: &File,
    may_map: bool,
    hasher: &mut dyn CopyHasher,
    tick: Tick<'_>,
) -> Result<(Hash, u64), CopyError> {
    use std::os::unix::fs::FileExt;
    let (copied_tx, copied_rx) = std::sync::mpsc::channel::<u64>();
    std::thread::scope(|s| {
        let copier = s.spawn(move || copy_chunks(src, dst, &mut |t| copied_tx.send(t).is_ok()));
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut done = 0u64;
        let mut hash_result = Ok(());
        let mut stopped = false;
        // Ends when the copier is done (it drops the sender); dropping the receiver on an
        // error stops the copier at its next chunk.
        for copied in copied_rx {
            if may_map && done < copied {
                match fs::map_private_file(dst, done, (copied - done) as usize) {
                    Ok(m) => {
                        hasher.update(&m);
                        let n = copied - done;
                        done = copied;
                        if !tick(n) {
                            stopped = true;
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        hash_result = Err(e);
                        break;
                    }
                }
            }
            while done < copied {
                let want = usize::try_from(copied - done).map_or(buf.len(), |w| w.min(buf.len()));
                match dst.read_at(&mut buf[..want], done) {
                    Ok(0) => {
                        hash_result = Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the destination is shorter than what was copied into it",
                        ));
                        break;
                    }
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        done += n as u64;
                        if !tick(n as u64) {
                            stopped = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        hash_result = Err(e);
                        break;
                    }
                }
            }
            if hash_result.is_err() || stopped {
                break;
            }
        }
        let copy_result = copier.join().unwrap_or_else(|_| {
            Err(CopyError::Dest(io::Error::other(
                "the copying thread panicked",
            )))
        });
        copy_result?;
        hash_result.map_err(CopyError::Dest)?;
        if stopped {
            return Err(CopyError::Stopped);
        }
        Ok((hasher.finish(), done))
    })
}

/// What hashes a copy while it is made (see [`copy_and_hash`]).
pub(crate) trait CopyHasher {
    /// Hashes the next bytes of the copy.
    fn update(&mut self, bytes: &[u8]);
    /// The hash of everything given.
    fn finish(&mut self) -> Hash;
}

impl CopyHasher for Hasher {
    fn update(&mut self, bytes: &[u8]) {
        Hasher::update(self, bytes);
    }
    fn finish(&mut self) -> Hash {
        self.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A new file open for reading and writing, as staging files are.
    fn rw(p: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn copy_and_hash_hashes_exactly_the_copy() {
        let d = tempfile::tempdir().unwrap();
        let src_path = d.path().join("src");
        // Several chunks and an odd tail.
        let data: Vec<u8> = (0..2 * COPY_CHUNK + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&src_path, &data).unwrap();
        let dst_path = d.path().join("dst");
        let dst = rw(&dst_path);
        for may_map in [false, true] {
            let dst = rw(&d.path().join(format!("dst-{may_map}")));
            let (h, len) = copy_and_hash(
                &File::open(&src_path).unwrap(),
                &dst,
                may_map,
                &mut Hasher::new(),
                &|_| true,
            )
            .unwrap();
            assert_eq!(h, Hash::of(&data));
            assert_eq!(len, data.len() as u64);
        }
        let (h, _) = copy_and_hash(
            &File::open(&src_path).unwrap(),
            &dst,
            false,
            &mut Hasher::new(),
            &|_| true,
        )
        .unwrap();
        assert_eq!(h, Hash::of(&data));
        assert!(std::fs::read(&dst_path).unwrap() == data, "copy differs");

        // The kernel refuses copy_file_range from procfs: the copy goes through memory.
        if let Ok(f) = File::open("/proc/self/mountinfo") {
            let dst_path = d.path().join("dst2");
            let dst = rw(&dst_path);
            let (h, _) = copy_and_hash(&f, &dst, true, &mut Hasher::new(), &|_| true).unwrap();
            let copy = std::fs::read(&dst_path).unwrap();
            assert!(!copy.is_empty(), "nothing copied from procfs");
            assert_eq!(h, Hash::of(&copy));
        }
    }
}

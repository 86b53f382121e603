//! Writing an object to a destination path outside the store (`cas get -o`), the right way for
//! what the path is: a regular file is replaced atomically, a device or FIFO is written in
//! place, a symlink keeps being a symlink.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::progress::ProgressFn;
use crate::read::copyout::{FdSink, Sink};
use crate::store::abandon;
use crate::Store;

/// Symlinks followed at most, as the kernel's `MAXSYMLINKS`.
use crate::fs::MAX_LINKS;

/// What a destination path turned out to be, symlinks followed.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Nothing there (or a dangling link's target): a new regular file at this path.
    New(PathBuf),
    /// An existing regular file at this path (with its permission bits).
    Regular(PathBuf, u32),
    /// A character or block device, FIFO or socket: written in place, never replaced.
    Special(PathBuf),
}

fn is_special(t: std::fs::FileType) -> bool {
    t.is_char_device() || t.is_block_device() || t.is_fifo() || t.is_socket()
}

/// What `dest` is, symlinks followed: asked of the kernel first (`stat`), which also follows
/// the "magic" links of `/proc/self/fd` behind `/dev/stdout`; then, for a regular file or
/// nothing, the links are followed by hand to find the path to replace.
fn resolve(dest: &Path) -> Result<Target> {
    match std::fs::metadata(dest) {
        Ok(m) if is_special(m.file_type()) => return Ok(Target::Special(dest.to_owned())),
        Ok(m) if m.is_dir() => {
            return Err(Error::io(
                "write output to",
                dest,
                io::Error::from(io::ErrorKind::IsADirectory),
            ))
        }
        Ok(_) if through_fd_link(dest) => {
            // `/dev/stdout` redirected to a file: an open descriptor, written in place (the
            // file behind it is the caller's, already opened and truncated by the shell).
            return Ok(Target::Special(dest.to_owned()));
        }
        _ => {}
    }
    resolve_links(dest)
}

/// True if following `dest`'s symlinks passes through a file-descriptor link
/// (`/proc/*/fd/N`, `/dev/fd/N`), whose text is not a path to replace.
fn through_fd_link(dest: &Path) -> bool {
    let mut p = dest.to_owned();
    for _ in 0..=MAX_LINKS {
        let Ok(link) = std::fs::read_link(&p) else {
            return false;
        };
        let next = match p.parent() {
            Some(dir) if link.is_relative() => dir.join(link),
            _ => link,
        };
        let s = next.to_string_lossy();
        if s.starts_with("/proc/") || s.starts_with("/dev/fd/") {
            return true;
        }
        p = next;
    }
    false
}

/// Follows symlinks from `dest` by hand to the path they finally name.
fn resolve_links(dest: &Path) -> Result<Target> {
    let mut p = dest.to_owned();
    for _ in 0..=MAX_LINKS {
        let m = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if fs::is_not_found(&e) => return Ok(Target::New(p)),
            Err(e) => return Err(Error::io("stat", &p, e)),
        };
        let t = m.file_type();
        if t.is_symlink() {
            let link = std::fs::read_link(&p).map_err(Error::at("read symlink", &p))?;
            p = match p.parent() {
                Some(dir) if link.is_relative() => dir.join(link),
                _ => link,
            };
        } else if t.is_file() {
            return Ok(Target::Regular(p, m.permissions().mode() & 0o7777));
        } else if t.is_dir() {
            return Err(Error::io(
                "write output to",
                dest,
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        } else if is_special(t) {
            return Ok(Target::Special(p));
        } else {
            return Err(Error::io(
                "write output to",
                dest,
                io::Error::other("not a file, directory, device, FIFO or socket"),
            ));
        }
    }
    Err(Error::io(
        "resolve",
        dest,
        io::Error::other("too many levels of symbolic links"),
    ))
}

/// Opens `path` for writing when the first byte (or the final flush) comes, so a FIFO's reader
/// sees nothing, and a device is not even opened, before the object is verified.
struct OpenOnWrite<'a> {
    path: &'a Path,
    sink: Option<FdSink<File>>,
}

impl OpenOnWrite<'_> {
    fn sink(&mut self) -> io::Result<&mut FdSink<File>> {
        if self.sink.is_none() {
            // No O_CREAT, no O_TRUNC: the node is written in place, never replaced.
            let f = std::fs::OpenOptions::new().write(true).open(self.path)?;
            self.sink = Some(FdSink::new(f));
        }
        Ok(self.sink.as_mut().expect("just opened"))
    }
}

impl Sink for OpenOnWrite<'_> {
    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sink()?.write_bytes(bytes)
    }
    fn write_file_range(&mut self, obj: &File, off: u64, bytes: &[u8]) -> io::Result<()> {
        self.sink()?.write_file_range(obj, off, bytes)
    }
}

impl Store {
    /// Writes an object's bytes to the path `dest`, verified before any byte reaches it, in the
    /// way that fits what `dest` is (symlinks followed):
    ///
    /// - nothing there, or a **regular file**: the bytes go to a temporary file beside it
    ///   (`.NAME.RANDOM.tmp`), renamed over it once complete: `dest` holds the old content or
    ///   the new, never a part. A new file gets mode `0666 & !umask`, a replaced one keeps its
    ///   permission bits. Not fsynced: call `sync` if the output must survive a power loss.
    /// - a **symlink** to a regular file (or to nothing): the *target* is replaced that way,
    ///   beside the target, and the link stays a link.
    /// - a **character or block device, FIFO** (or a link to one, like `/dev/stdout`): opened
    ///   without creating or truncating and written in place, only after verification. It is
    ///   never replaced: `get_to_path(h, "/dev/null")` does not turn `/dev/null` into a file.
    ///   A socket cannot be opened this way and fails. A path that leads through a
    ///   descriptor link (`/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`) is written in place
    ///   whatever is behind it: `cas get H -o /dev/stdout > file` fills `file`.
    ///
    /// Returns the number of bytes written. If the process abandons its work on a signal
    /// ([`Store::abandon_own_staging`]), the temporary file is removed.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let h = store.put_bytes(b"report")?;
    /// let out = dir.path().join("report.txt");
    /// store.get_to_path(&h, &out)?;                 // atomic: temp file beside, renamed
    /// assert_eq!(std::fs::read(&out).unwrap(), b"report");
    /// store.get_to_path(&h, "/dev/null")?;          // written in place, still a device
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get`] (nothing is written if the object is missing or corrupt); I/O errors
    /// naming the destination, among them `IsADirectory` for a directory.
    pub fn get_to_path(&self, hash: &Hash, dest: impl AsRef<Path>) -> Result<u64> {
        self.get_to_path_progress(hash, dest.as_ref(), &crate::no_progress)
    }

    /// [`Store::get_to_path`], telling `progress` the bytes written so far (phase `"get"`, out
    /// of the object's size; a device or FIFO is verified first, phase `"verify"`). Returning
    /// `false` stops the get with [`Error::Interrupted`]: a replaced file keeps its old
    /// content, a new one is not created.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let h = store.put_bytes(&vec![9u8; 5 << 20])?;
    /// let out = dir.path().join("out");
    /// let stop_early = |p: cas::Progress| p.done < (1 << 20);
    /// let e = store.get_to_path_progress(&h, &out, &stop_early).unwrap_err();
    /// assert!(matches!(e, cas::Error::Interrupted));
    /// assert!(!out.exists());
    /// assert_eq!(store.get_to_path_progress(&h, &out, &cas::no_progress)?, 5 << 20);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::get_to_path`]; [`Error::Interrupted`] if `progress` asked to stop.
    pub fn get_to_path_progress(
        &self,
        hash: &Hash,
        dest: impl AsRef<Path>,
        progress: ProgressFn<'_>,
    ) -> Result<u64> {
        // Large objects are copied in the kernel and the copy itself is verified
        // (crate::read::copyout).
        self.to_path(
            dest.as_ref(),
            &mut |w| self.get_to_sink(hash, w, progress),
            &mut |tmp, path| {
                crate::read::copyout::object_to_new_file(
                    self, hash, tmp, path, true, false, progress,
                )
            },
        )
    }

    /// Writes to `dest` as [`Store::get_to_path`] describes: `special` fills a device or
    /// FIFO in place, `regular` fills a new temporary file (open, mode 0600) renamed over
    /// the regular file at the path it is given once it returns.
    pub(crate) fn to_path(
        &self,
        dest: &Path,
        special: &mut dyn FnMut(&mut dyn Sink) -> Result<u64>,
        regular: &mut dyn FnMut(&File, &Path) -> Result<u64>,
    ) -> Result<u64> {
        self.refuse_output_inside(dest)?;
        let (path, mode) = match resolve(dest)? {
            Target::Special(p) => {
                let mut w = OpenOnWrite {
                    path: &p,
                    sink: None,
                };
                let n = special(&mut w).map_err(|e| output_error(e, &p))?;
                // An empty object still opens the node (a FIFO's reader sees its end).
                w.sink().map_err(Error::at("write", &p))?;
                return Ok(n);
            }
            Target::New(p) => (p, 0o666 & !fs::umask()),
            Target::Regular(p, mode) => (p, mode),
        };
        // Where the symlinks at `dest` lead is where the file is replaced.
        self.refuse_output_inside(&path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| {
            Error::io(
                "write output to",
                dest,
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| Error::io("create the output in", dir, fs::without_path(e, dir)))?;
        let _reg = abandon::register_temp(tmp.path());
        if abandon::abandoned() {
            return Err(Error::Interrupted);
        }
        // Created O_EXCL with mode 0600: nobody else can open it until it is renamed.
        let n = regular(tmp.as_file(), &path)?;
        fs::set_mode(tmp.as_file(), mode).map_err(Error::at("set permissions of", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("rename the output into place at", &path, e.error))?;
        Ok(n)
    }
}

/// `get_to_writer` names a failed write "<output>": name the real destination.
fn output_error(e: Error, path: &Path) -> Error {
    match e {
        Error::Io {
            op: "write output",
            source,
            ..
        } => Error::io("write output", path, source),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_follows_links_to_what_they_name() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l1")).unwrap();
        std::os::unix::fs::symlink(d.path().join("l1"), d.path().join("l2")).unwrap();
        std::os::unix::fs::symlink("nothing", d.path().join("dangling")).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.path().join("null")).unwrap();
        std::os::unix::fs::symlink("loop", d.path().join("loop")).unwrap();
        assert!(matches!(resolve(&d.path().join("l2")).unwrap(), Target::Regular(p, _) if p == f));
        assert_eq!(
            resolve(&d.path().join("dangling")).unwrap(),
            Target::New(d.path().join("nothing"))
        );
        // A device is opened through the link (the kernel follows it).
        assert_eq!(
            resolve(&d.path().join("null")).unwrap(),
            Target::Special(d.path().join("null"))
        );
        assert!(resolve(&d.path().join("loop")).is_err());
        assert!(resolve(d.path()).is_err());
    }
}

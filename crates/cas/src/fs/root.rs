//! Every path inside a store, reached from the store's root directory descriptor without
//! following a symlink anywhere (docs/format.md "Path resolution").
//!
//! A store is a directory that every member of a group may write, so anything in it can be
//! replaced by a symlink, a FIFO or a directory at any moment. [`Root`] is the only way the
//! library touches a path inside a store: it takes the absolute paths the rest of the code
//! builds (kept for error messages), checks they lie under the root, and resolves them
//! *beneath* the root's descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` — or,
//! on kernels without `openat2`, one `openat(O_NOFOLLOW | O_DIRECTORY)` per component. A
//! symlink anywhere on the way, including at the last component, fails with `ELOOP`; nothing
//! outside the store is ever opened, created, renamed, linked or removed.
//!
//! Files are opened non-blocking (a FIFO planted at an object name cannot hang a reader) and
//! their type is checked before anything is read: a non-regular file is reported as
//! [`NotRegular`](io::ErrorKind::InvalidData) naming what it is.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

use super::{Caps, Published};

/// How often a resolution that the kernel asks us to retry (`EAGAIN` from `openat2` while a
/// rename ran, `ESTALE` on a network filesystem) is tried again.
const RETRIES: usize = 8;

/// Cleared once `openat2` turns out to be missing (kernels before 5.6, some sandboxes).
static HAVE_OPENAT2: AtomicBool = AtomicBool::new(true);

/// The store's root directory, held open; the base of every path inside the store.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What [`Root::lstat`] tells about a name, without following it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(crate) kind: Kind,
    pub(crate) len: u64,
    pub(crate) mtime: std::time::SystemTime,
    pub(crate) uid: u32,
    pub(crate) mode: u32,
    /// Device and inode: the identity of the file (a lock held without content is known by it).
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// What [`Root::walk_tree`] found below a directory: every entry (never descending through a
/// symlink), and the directories that could not be listed, with why.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub(crate) entries: Vec<(PathBuf, Kind)>,
    pub(crate) errors: Vec<(PathBuf, io::Error)>,
}

/// The type of a directory entry, as far as the store cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket, device: never read, never written.
    Special,
}

impl Kind {
    pub(crate) fn of(t: FileType) -> Kind {
        match t {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    /// A word for messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Special => "a FIFO, socket or device",
        }
    }
}

/// The error for "something other than a regular file is at this name".
pub(crate) fn not_regular(kind: Kind) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("is {}, not a regular file", kind.describe()),
    )
}

/// True if the error says a path component was a symlink (`ELOOP` from `O_NOFOLLOW` or
/// `RESOLVE_NO_SYMLINKS`) or that an entry is not of the expected type.
pub(crate) fn is_hostile(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
        || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error())
        || e.raw_os_error() == Some(Errno::XDEV.raw_os_error())
        || e.kind() == io::ErrorKind::InvalidData
}

fn retryable(e: Errno) -> bool {
    e == Errno::AGAIN || e == Errno::STALE || e == Errno::INTR
}

impl Root {
    /// Opens the store's root directory. The root path itself is the caller's choice and may
    /// go through symlinks; everything below it may not.
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// Another handle on the same directory (`dup`): no path is resolved again.
    pub(crate) fn try_clone(&self) -> io::Result<Root> {
        Ok(Root {
            fd: rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)?,
            path: self.path.clone(),
        })
    }

    /// The root's path (as given when opened).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the root. Refuses paths outside the root and any `..`, `.` or root
    /// component below it: the rest of the library only builds clean paths, so anything else
    /// is a bug that must not turn into an access outside the store.
    pub(crate) fn rel<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let rel = path.strip_prefix(&self.path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "path is not inside the store (refused)",
            )
        })?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path has `..` or `.` components (refused)",
            ));
        }
        Ok(rel)
    }

    /// Opens `rel` (relative, clean) beneath the root with `flags`, following no symlink.
    fn openat_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(
                &self.fd,
                ".",
                flags - OFlags::NOFOLLOW,
                mode,
            )?);
        }
        let mut attempt = 0;
        loop {
            let r = if HAVE_OPENAT2.load(Ordering::Relaxed) {
                match rustix::fs::openat2(
                    &self.fd,
                    rel,
                    flags,
                    mode,
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
                ) {
                    Err(Errno::NOSYS | Errno::PERM) if attempt == 0 => {
                        // No openat2 here (or a seccomp filter refuses it): walk by hand.
                        HAVE_OPENAT2.store(false, Ordering::Relaxed);
                        continue;
                    }
                    r => r,
                }
            } else {
                self.walk(rel, flags, mode)
            };
            match r {
                Err(e) if retryable(e) && attempt < RETRIES => attempt += 1,
                r => return r.map_err(Into::into),
            }
        }
    }

    /// The fallback of `openat_beneath`: one `openat(O_NOFOLLOW)` per component.
    fn walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let mut comps = rel.components().peekable();
        let mut dir: Option<OwnedFd> = None;
        while let Some(c) = comps.next() {
            let Component::Normal(name) = c else {
                return Err(Errno::INVAL);
            };
            let base = self.base(dir.as_ref());
            if comps.peek().is_none() {
                return rustix::fs::openat(base, name, flags, mode);
            }
            dir = Some(rustix::fs::openat(
                base,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        Err(Errno::INVAL)
    }

    /// The parent directory of `path` (opened `O_PATH`, beneath the root) and the last
    /// component's name, for the `*at` calls. `None` means the root itself.
    fn parent<'a>(&self, path: &'a Path) -> io::Result<(Option<OwnedFd>, &'a OsStr)> {
        let rel = self.rel(path)?;
        let name = rel.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the store root has no name")
        })?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() {
            return Ok((None, name));
        }
        let fd = self.openat_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok((Some(fd), name))
    }

    /// Resolves the parents of `from` and `to` beneath the root and calls `f` with both
    /// directories and names (for rename and link).
    fn with_parents<T>(
        &self,
        from: &Path,
        to: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr, BorrowedFd<'_>, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let (fdir, fname) = self.parent(from)?;
        let (tdir, tname) = self.parent(to)?;
        f(
            self.base(fdir.as_ref()),
            fname,
            self.base(tdir.as_ref()),
            tname,
        )
    }

    /// A resolved parent, or the root itself for a name at the top.
    fn base<'a>(&'a self, dir: Option<&'a OwnedFd>) -> BorrowedFd<'a> {
        dir.map_or(self.fd.as_fd(), AsFd::as_fd)
    }

    fn with_parent<T>(
        &self,
        path: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> Result<T, Errno>,
    ) -> io::Result<T> {
        let (dir, name) = self.parent(path)?;
        f(self.base(dir.as_ref()), name).map_err(Into::into)
    }

    /// Opens a regular file for reading: non-blocking (a FIFO cannot hang us), no symlink
    /// anywhere, and checked with `fstat` to be a regular file before anyone reads it.
    pub(crate) fn open_read(&self, path: &Path) -> io::Result<File> {
        let fd = self.openat_beneath(
            self.rel(path)?,
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let kind = Kind::of(FileType::from_raw_mode(st.st_mode));
        if kind != Kind::File {
            return Err(not_regular(kind));
        }
        // Regular files ignore O_NONBLOCK, but clear it so the descriptor behaves as usual.
        rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY)?;
        Ok(File::from(fd))
    }

    /// Reads a small file (ref, cache entry, lock, `FORMAT`, `config`) whole: at most `limit`
    /// bytes, opened as [`Root::open_read`] does, with its `fstat`. The whole open-stat-read
    /// is redone while it fails with a transient network-filesystem error
    /// ([`super::retry_transient`]): a handle that went stale never recovers, the name must be
    /// looked up again. Returns the bytes, the open file and its metadata.
    pub(crate) fn read_small(&self, path: &Path, limit: u64) -> io::Result<(Vec<u8>, File, Meta)> {
        super::retry_transient(super::SMALL_READ_ATTEMPTS, || {
            let mut f = self.open_read(path)?;
            let meta = Self::fmeta(&f)?;
            let mut bytes = Vec::new();
            io::Read::read_to_end(&mut io::Read::take(&mut f, limit), &mut bytes)?;
            Ok((bytes, f, meta))
        })
    }

    /// Opens a regular file for appending, creating it with `mode` if missing (`O_APPEND |
    /// O_CREAT`, never through a symlink, non-blocking so a FIFO cannot hang us), and checks
    /// with `fstat` that it is a regular file.
    pub(crate) fn open_append(&self, path: &Path, mode: u32) -> io::Result<File> {
        let fd = self.openat_beneath(
            self.rel(path)?,
            OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK,
            Mode::from_raw_mode(mode),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let kind = Kind::of(FileType::from_raw_mode(st.st_mode));
        if kind != Kind::File {
            return Err(not_regular(kind));
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::WRONLY | OFlags::APPEND)?;
        Ok(File::from(fd))
    }

    /// `fstat` of an open file as [`Meta`].
    pub(crate) fn fmeta(file: &File) -> io::Result<Meta> {
        Ok(meta_of(&rustix::fs::fstat(file)?))
    }

    /// Every entry below `dir`, recursively, descending only into real directories (a
    /// symlink is listed as one, never followed). A missing `dir` is empty; a directory that
    /// vanishes during the walk is skipped; one that cannot be listed is in `errors`.
    pub(crate) fn walk_tree(&self, dir: &Path) -> Walk {
        let mut w = Walk::default();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            match self.read_dir(&d) {
                Ok(ents) => {
                    for (name, kind) in ents {
                        let p = d.join(name);
                        if kind == Kind::Dir {
                            stack.push(p.clone());
                        }
                        w.entries.push((p, kind));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => w.errors.push((d, e)),
            }
        }
        w.entries.sort_by(|a, b| a.0.cmp(&b.0));
        w
    }

    /// Opens a directory beneath the root as an `O_PATH` handle, a base for `*at` calls.
    pub(crate) fn open_dir_path(&self, path: &Path) -> io::Result<OwnedFd> {
        self.openat_beneath(
            self.rel(path)?,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
    }

    /// Opens a directory beneath the root (for listing or `fsync`).
    pub(crate) fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        self.openat_beneath(
            self.rel(path)?,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
    }

    /// Creates `path` exclusively (`O_CREAT | O_EXCL`), open for reading and writing.
    pub(crate) fn create_excl(&self, path: &Path, mode: u32) -> io::Result<File> {
        self.with_parent(path, |dir, name| {
            create_excl_at(dir, name, mode).map(File::from)
        })
    }

    /// Creates a directory; returns false if something already had the name.
    pub(crate) fn mkdir(&self, path: &Path, mode: u32) -> io::Result<bool> {
        self.with_parent(path, |dir, name| {
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) => Ok(true),
                Err(Errno::EXIST) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// `lstat` of a name inside the store (never follows it).
    pub(crate) fn lstat(&self, path: &Path) -> io::Result<Meta> {
        self.with_parent(path, |dir, name| {
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map(|st| meta_of(&st))
        })
    }

    /// Renames `from` over `to` (replacing a file there).
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with_parents(from, to, |fd, fname, td, tname| {
            rustix::fs::renameat(fd, fname, td, tname).map_err(Into::into)
        })
    }

    /// Moves `from` to `to` without ever replacing an existing `to` (see
    /// [`publish_noreplace_at`]).
    pub(crate) fn publish_noreplace(
        &self,
        from: &Path,
        to: &Path,
        caps: &Caps,
    ) -> io::Result<Published> {
        self.with_parents(from, to, |fd, fname, td, tname| {
            publish_noreplace_at(fd, fname, td, tname, caps)
        })
    }

    /// Moves the name `fname` in the directory `fdir` (a staging file) to `to` without
    /// replacing anything there (see [`publish_noreplace_at`]).
    pub(crate) fn publish_from(
        &self,
        fdir: BorrowedFd<'_>,
        fname: &OsStr,
        to: &Path,
        caps: &Caps,
    ) -> io::Result<Published> {
        let (tdir, tname) = self.parent(to)?;
        publish_noreplace_at(fdir, fname, self.base(tdir.as_ref()), tname, caps)
    }

    /// Renames the name `fname` in the directory `fdir` over `to`.
    pub(crate) fn rename_from(
        &self,
        fdir: BorrowedFd<'_>,
        fname: &OsStr,
        to: &Path,
    ) -> io::Result<()> {
        let (tdir, tname) = self.parent(to)?;
        rustix::fs::renameat(fdir, fname, self.base(tdir.as_ref()), tname).map_err(Into::into)
    }

    /// Swaps the files at `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`): both must
    /// exist. `Ok(false)` when the filesystem refuses the flag (NFS, most FUSE filesystems,
    /// old kernels); nothing was changed then, and `caps` remembers it.
    pub(crate) fn exchange(&self, a: &Path, b: &Path, caps: &Caps) -> io::Result<bool> {
        if !caps.rename_exchange.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let r = self.with_parents(a, b, |fd, fname, td, tname| {
            rustix::fs::renameat_with(fd, fname, td, tname, RenameFlags::EXCHANGE)
                .map_err(Into::into)
        });
        match r {
            Ok(()) => Ok(true),
            Err(e)
                if [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
            {
                caps.rename_exchange.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `renameat2(RENAME_NOREPLACE)` alone, with no fallback (for probing the filesystem).
    pub(crate) fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with_parents(from, to, |fd, fname, td, tname| {
            rustix::fs::renameat_with(fd, fname, td, tname, RenameFlags::NOREPLACE)
                .map_err(Into::into)
        })
    }

    /// Hard-links `from`, a name inside the store, as `to`, a path outside it chosen by the
    /// caller (EEXIST if `to` exists): only `from` is resolved beneath the root.
    pub(crate) fn link_out(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fdir, fname) = self.parent(from)?;
        rustix::fs::linkat(
            self.base(fdir.as_ref()),
            fname,
            rustix::fs::CWD,
            to,
            AtFlags::empty(),
        )
        .map_err(Into::into)
    }

    /// Hard-links `from` as `to` (EEXIST if `to` exists).
    pub(crate) fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with_parents(from, to, |fd, fname, td, tname| {
            rustix::fs::linkat(fd, fname, td, tname, AtFlags::empty()).map_err(Into::into)
        })
    }

    /// Removes a name that is not a directory (a symlink is removed, never followed).
    pub(crate) fn unlink(&self, path: &Path) -> io::Result<()> {
        self.with_parent(path, |dir, name| {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
        })
    }

    /// Removes an empty directory.
    pub(crate) fn rmdir(&self, path: &Path) -> io::Result<()> {
        self.with_parent(path, |dir, name| {
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        })
    }

    /// Sets the mtime of a name to now (`utimensat`, no symlink following).
    pub(crate) fn touch_now(&self, path: &Path) -> io::Result<()> {
        self.with_parent(path, |dir, name| {
            rustix::fs::utimensat(dir, name, &now_mtime(), AtFlags::SYMLINK_NOFOLLOW)
        })
    }

    /// Sets the permission bits of a regular file or directory inside the store. The name is
    /// opened without following it and checked before `fchmod`: a symlink or special file
    /// planted there is refused, never chmodded through.
    pub(crate) fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        let fd = self.openat_beneath(
            self.rel(path)?,
            OFlags::RDONLY | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let kind = Kind::of(FileType::from_raw_mode(st.st_mode));
        if !matches!(kind, Kind::File | Kind::Dir) {
            return Err(not_regular(kind));
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(Into::into)
    }

    /// The store's root directory's own metadata (`fstat` of the descriptor opened at
    /// open time).
    pub(crate) fn root_meta(&self) -> io::Result<Meta> {
        rustix::fs::fstat(&self.fd)
            .map(|st| meta_of(&st))
            .map_err(Into::into)
    }

    /// True if this process may create and remove names in the directory `path`
    /// (`faccessat(W_OK)` relative to its parent, the last component not followed).
    pub(crate) fn writable(&self, path: &Path) -> bool {
        if self.rel(path).is_ok_and(|r| r.as_os_str().is_empty()) {
            return rustix::fs::accessat(
                &self.fd,
                ".",
                rustix::fs::Access::WRITE_OK,
                AtFlags::empty(),
            )
            .is_ok();
        }
        self.with_parent(path, |dir, name| {
            rustix::fs::accessat(
                dir,
                name,
                rustix::fs::Access::WRITE_OK,
                AtFlags::SYMLINK_NOFOLLOW,
            )
        })
        .is_ok()
    }

    /// `fsync` of a directory, so names created or removed in it survive a power loss.
    pub(crate) fn fsync_dir(&self, path: &Path) -> io::Result<()> {
        let fd = self.open_dir(path)?;
        rustix::fs::fsync(&fd).map_err(Into::into)
    }

    /// The entries of a directory (without `.` and `..`), with their types as `readdir`
    /// reports them (an `lstat` fills in where the filesystem does not say).
    pub(crate) fn read_dir(&self, path: &Path) -> io::Result<Vec<(OsString, Kind)>> {
        let fd = self.open_dir(path)?;
        list_dir_at(fd.as_fd())
    }

    /// Counts the regular files below `dir` and their bytes, recursively, never following a
    /// symlink: one directory listing in memory at a time and one `fstatat` per file relative
    /// to its directory's descriptor (no path resolution per file). A missing `dir` counts
    /// nothing; a directory that vanishes during the walk is skipped; one that cannot be
    /// listed is in `errors`.
    pub(crate) fn du(&self, dir: &Path) -> Du {
        let mut du = Du::default();
        // Pending directories only: their number, not the number of files, bounds it.
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let listed = self
                .open_dir(&d)
                .and_then(|fd| Ok((list_dir_at(fd.as_fd())?, fd)));
            match listed {
                Ok((ents, fd)) => {
                    for (name, kind) in ents {
                        match kind {
                            Kind::Dir => stack.push(d.join(name)),
                            Kind::File => {
                                if let Ok(m) = lstat_name_at(fd.as_fd(), &name) {
                                    du.files += 1;
                                    du.bytes += m.len;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => du.errors.push((d, e)),
            }
        }
        du
    }
}

/// What [`Root::du`] counted below a directory.
#[derive(Debug, Default)]
pub(crate) struct Du {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// Directories that could not be listed, with why.
    pub(crate) errors: Vec<(PathBuf, io::Error)>,
}

/// The entries of the open directory `fd` (without `.` and `..`), each with its kind; an
/// entry whose type the filesystem does not report is `lstat`ed relative to `fd`.
pub(crate) fn list_dir_at(fd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, Kind)>> {
    let mut out = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let kind = match ent.file_type() {
            FileType::Unknown => match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Kind::of(FileType::from_raw_mode(st.st_mode)),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            t => Kind::of(t),
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

/// `O_CREAT | O_EXCL | O_NOFOLLOW` of `name` in `dir`, read-write.
pub(crate) fn create_excl_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
}

/// Moves `from` to `to` without ever replacing an existing `to`.
///
/// Uses `renameat2(RENAME_NOREPLACE)` where the filesystem supports it (one call, and `from`
/// is gone afterwards), else `linkat` + `unlinkat` of `from`, the portable no-clobber move
/// that is also safe on NFS. Returns [`Published::Existed`] when `to` already exists; `from`
/// is then left in place for the caller to remove.
pub(crate) fn publish_noreplace_at(
    fdir: BorrowedFd<'_>,
    from: &OsStr,
    tdir: BorrowedFd<'_>,
    to: &OsStr,
    caps: &Caps,
) -> io::Result<Published> {
    if caps.rename_noreplace.load(Ordering::Relaxed) {
        match rustix::fs::renameat_with(fdir, from, tdir, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(Published::Created),
            Err(Errno::EXIST) => return Ok(Published::Existed),
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
                caps.rename_noreplace.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match rustix::fs::linkat(fdir, from, tdir, to, AtFlags::empty()) {
        Ok(()) => {
            // The name is published; the staging name is ours alone to remove.
            unlink_own(fdir, from);
            Ok(Published::Created)
        }
        Err(Errno::EXIST) => Ok(Published::Existed),
        Err(e) => Err(e.into()),
    }
}

/// Removes a name of our own (a staging file), best effort: retried once, since a network
/// filesystem may fail one call transiently and a leftover costs a gc pass to clean.
pub(crate) fn unlink_own(dir: BorrowedFd<'_>, name: &OsStr) {
    for _ in 0..2 {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return,
            Err(_) => {}
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` as [`Meta`].
pub(crate) fn lstat_name_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Meta> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| meta_of(&st))
        .map_err(Into::into)
}

/// Sets the mtime of `name` in `dir` to now (`utimensat`, no symlink following).
pub(crate) fn touch_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::utimensat(dir, name, &now_mtime(), AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
}

fn now_mtime() -> rustix::fs::Timestamps {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW, UTIME_OMIT};
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
    }
}

fn meta_of(st: &rustix::fs::Stat) -> Meta {
    let secs = st.st_mtime;
    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
    let mtime = if secs >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos)
    } else {
        std::time::UNIX_EPOCH
    };
    Meta {
        kind: Kind::of(FileType::from_raw_mode(st.st_mode)),
        len: st.st_size as u64,
        mtime,
        uid: st.st_uid,
        mode: st.st_mode & 0o7777,
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        let r = Root::open(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn symlinks_are_never_followed_anywhere() {
        let (d, r) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("tmp")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("f")).unwrap();
        let p = |s: &str| d.path().join(s);
        for e in [
            r.open_read(&p("tmp/secret")).unwrap_err(),
            r.open_read(&p("f")).unwrap_err(),
            r.create_excl(&p("tmp/new"), 0o600).unwrap_err(),
            r.unlink(&p("tmp/secret")).unwrap_err(),
            r.mkdir(&p("tmp/d"), 0o755).unwrap_err(),
            r.chmod(&p("f"), 0o777).unwrap_err(),
            r.touch_now(&p("tmp/secret")).unwrap_err(),
            r.read_dir(&p("tmp")).unwrap_err(),
        ] {
            assert!(is_hostile(&e), "{e}");
        }
        // The symlink itself can be removed (it is a name inside the store).
        r.unlink(&p("f")).unwrap();
        assert!(outside.path().join("secret").exists());
        assert!(!outside.path().join("new").exists() && !outside.path().join("d").exists());
        // Paths outside the root or with `..` are refused before any system call.
        assert!(r.open_read(Path::new("/etc/passwd")).is_err());
        assert!(r.open_read(&p("a/../../etc/passwd")).is_err());
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let (d, r) = root();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = r.open_read(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("FIFO"), "{e}");
        let ents = r.read_dir(d.path()).unwrap();
        assert_eq!(ents, vec![(OsString::from("fifo"), Kind::Special)]);
    }

    #[test]
    fn files_round_trip_beneath_the_root() {
        let (d, r) = root();
        let p = |s: &str| d.path().join(s);
        assert!(r.mkdir(&p("a"), 0o755).unwrap());
        assert!(!r.mkdir(&p("a"), 0o755).unwrap());
        {
            use std::io::Write;
            let mut f = r.create_excl(&p("a/x"), 0o600).unwrap();
            f.write_all(b"hello").unwrap();
        }
        assert!(r.create_excl(&p("a/x"), 0o600).is_err());
        let caps = Caps::probe(d.path()).unwrap();
        r.link(&p("a/x"), &p("a/y")).unwrap();
        assert_eq!(
            r.publish_noreplace(&p("a/x"), &p("a/y"), &caps).unwrap(),
            Published::Existed
        );
        assert_eq!(
            r.publish_noreplace(&p("a/x"), &p("z"), &caps).unwrap(),
            Published::Created
        );
        let meta = r.lstat(&p("z")).unwrap();
        assert_eq!((meta.kind, meta.len), (Kind::File, 5));
        let s = std::io::read_to_string(r.open_read(&p("z")).unwrap()).unwrap();
        assert_eq!(s, "hello");
        r.chmod(&p("z"), 0o444).unwrap();
        assert_eq!(r.lstat(&p("z")).unwrap().mode, 0o444);
        r.unlink(&p("a/y")).unwrap();
        r.rmdir(&p("a")).unwrap();
        r.fsync_dir(d.path()).unwrap();
    }
}

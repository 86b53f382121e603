//! Platform calls, and nothing else: every system call the store needs beyond what `std` offers
//! portably lives here, so the protocols elsewhere read as protocols.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use rustix::fs::{OFlags, RenameFlags, CWD};
use rustix::io::Errno;

mod root;
mod src_dir;
pub(crate) use root::{
    create_excl_at, is_hostile, list_dir_at, publish_noreplace_at, touch_at, unlink_own, Kind, Root,
};
pub(crate) use src_dir::{
    list_src_dir, lstat_src_at, open_src_dir, readlink_src_at, stat_src_fd, SrcStat,
};

/// What a no-replace publish found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// The name was created and holds our file.
    Created,
    /// The name already existed; nothing was replaced and the source is still in place.
    Existed,
}

/// What the store learned about its filesystem, at open time and as it went.
#[derive(Debug)]
pub(crate) struct Caps {
    /// `statfs` magic number of the filesystem holding the store.
    pub(crate) magic: i64,
    /// Human name of the filesystem type.
    pub(crate) name: &'static str,
    /// A network or FUSE filesystem: no mmap, expect ESTALE and spurious EEXIST.
    pub(crate) network: bool,
    /// Cleared the first time `renameat2(RENAME_NOREPLACE)` is refused; then link+unlink is used.
    pub(crate) rename_noreplace: AtomicBool,
    /// Cleared the first time `renameat2(RENAME_EXCHANGE)` is refused; lock breaking then
    /// falls back to rename-aside (docs/format.md, "Locks (leases)").
    pub(crate) rename_exchange: AtomicBool,
    /// How many staged files are made durable at once (see [`barrier_for`]).
    pub(crate) barrier: Barrier,
}

impl Caps {
    /// A copy of what was learned so far (for another handle on the same store).
    pub(crate) fn snapshot(&self) -> Caps {
        Caps {
            magic: self.magic,
            name: self.name,
            network: self.network,
            rename_noreplace: AtomicBool::new(
                self.rename_noreplace
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            rename_exchange: AtomicBool::new(
                self.rename_exchange
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            barrier: self.barrier,
        }
    }

    /// Probes the filesystem that holds `path` with `statfs(2)`.
    pub(crate) fn probe(path: &Path) -> io::Result<Caps> {
        let st = rustix::fs::statfs(path)?;
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let magic = i64::from(st.f_type as i64);
        let (name, network) = fs_kind(magic);
        Ok(Caps {
            magic,
            name,
            network,
            // FUSE and NFS refuse it (measured: GlusterFS, MooseFS give EINVAL); don't even try.
            rename_noreplace: AtomicBool::new(!network),
            rename_exchange: AtomicBool::new(!network),
            barrier: barrier_for(magic),
        })
    }
}

/// Maps a `statfs` magic number to a name and whether the filesystem is shared over a network
/// (or through FUSE, where we cannot know and must assume the worst).
pub(crate) fn fs_kind(magic: i64) -> (&'static str, bool) {
    match magic {
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x0102_1994 => ("tmpfs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0x794C_7630 => ("overlayfs", false),
        0xF2F5_2010 => ("f2fs", false),
        0x6969 => ("nfs", true),
        0x6573_5546 => ("fuse", true),
        0xFF53_4D42 => ("cifs", true),
        0xFE53_4D42 => ("smb2", true),
        0x0BD0_0BD0 => ("lustre", true),
        0x4750_4653 => ("gpfs", true),
        0x00C3_6400 => ("cephfs", true),
        0x0102_1997 => ("9p", true),
        0x5346_414F => ("afs", true),
        0x1373 => ("devfs", false),
        _ => ("unknown", false),
    }
}

/// The durability barrier for a filesystem. `syncfs(2)` only where it is known to write every
/// dirty file of that filesystem to stable storage: the local block-device filesystems ext4,
/// xfs, btrfs and f2fs. Everywhere else — FUSE (the kernel never forwards `syncfs` to a FUSE
/// daemon), NFS, CIFS, Lustre, `CephFS`, tmpfs, anything unknown — each file is `fdatasync`ed,
/// which every filesystem must honour.
pub(crate) fn barrier_for(magic: i64) -> Barrier {
    match magic {
        0xEF53 | 0x5846_5342 | 0x9123_683E | 0xF2F5_2010 => Barrier::Syncfs,
        _ => Barrier::Fdatasync,
    }
}

fn is_errno(e: &io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

/// True for ESTALE: a network filesystem's handle went stale under us (retry the open).
pub(crate) fn is_stale(e: &io::Error) -> bool {
    is_errno(e, Errno::STALE)
}

/// True when the error says "the parent directory is missing".
pub(crate) fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Opens a directory (the caller's own, outside any store) without following a symlink at
/// its last component, as a base for `*at` calls.
pub(crate) fn open_dir_nofollow(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// `openat(dir, name, O_DIRECTORY | O_NOFOLLOW)`: a directory below `dir`, never through a
/// link at its name.
pub(crate) fn open_dir_nofollow_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// `mkdirat(dir, name, 0777)` then opens the new directory with `O_NOFOLLOW`: the result is
/// the directory just created, never something a link points to.
pub(crate) fn mkdir_open_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, rustix::fs::Mode::from_raw_mode(0o777))?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(Into::into)
}

/// `symlinkat(target, dir, name)`: creates the link itself (fails if the name exists).
pub(crate) fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(Into::into)
}

/// Sets a directory's permission bits through its descriptor (`fchmod(2)`).
pub(crate) fn set_dir_mode(dir: &OwnedFd, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(dir, rustix::fs::Mode::from_raw_mode(mode)).map_err(Into::into)
}

/// Reads up to `len` bytes from the current position: the length `fstat` gave. Unlike
/// `read_to_end` it does not stat and seek again nor make one more read to see the end. A
/// file shorter than `len` yields fewer bytes (callers verify what they read). A length of 0
/// is read to the end: files in `/proc` and the like report 0 yet have content.
pub(crate) fn read_len(mut file: &File, len: u64) -> io::Result<Vec<u8>> {
    if len == 0 {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut file, &mut v)?;
        return Ok(v);
    }
    let mut v = vec![0u8; usize::try_from(len).map_err(|_| io::ErrorKind::OutOfMemory)?];
    let filled = read_full(file, &mut v)?;
    v.truncate(filled);
    Ok(v)
}

/// Reads into `buf` from the current position until it is full or the file ends; returns
/// how many bytes were read.
pub(crate) fn read_full(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match io::Read::read(&mut file, &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copies up to `len` bytes from `src`'s file position to `dst`'s in the kernel
/// (`copy_file_range(2)`: a reflink or a server-side copy where the filesystem offers one).
/// Returns 0 at the end of `src`; an error of kind `Unsupported` when the kernel or the
/// filesystem cannot copy between these files (the caller then copies through memory).
pub(crate) fn copy_range(src: &File, dst: &File, len: usize) -> io::Result<usize> {
    match rustix::fs::copy_file_range(src, None, dst, None, len) {
        Ok(n) => Ok(n),
        Err(e) if copy_refused(e) => Err(io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

/// The answers of `copy_file_range(2)` that mean "not between these files" (another
/// filesystem, a kernel or filesystem without it), not a failure of the copy.
fn copy_refused(e: Errno) -> bool {
    matches!(
        e,
        Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM
    )
}

/// What an open descriptor is, as far as writing an object into it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    /// A pipe or FIFO (`splice(2)` can fill it).
    Pipe,
    /// A regular file (`copy_file_range(2)` can fill it).
    Regular,
    /// Anything else, or a descriptor `fstat` refuses.
    Other,
}

/// What `fd` is (one `fstat(2)`).
pub(crate) fn fd_kind(fd: BorrowedFd<'_>) -> FdKind {
    use rustix::fs::FileType;
    match rustix::fs::fstat(fd).map(|st| FileType::from_raw_mode(st.st_mode)) {
        Ok(FileType::Fifo) => FdKind::Pipe,
        Ok(FileType::RegularFile) => FdKind::Regular,
        _ => FdKind::Other,
    }
}

/// Asks for a 1 MiB pipe buffer (`F_SETPIPE_SZ`; the unprivileged maximum by default) so that
/// fewer, larger transfers move a big object; a refusal is ignored (the pipe keeps its size).
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>) {
    const WANT: usize = 1 << 20;
    if rustix::pipe::fcntl_getpipe_size(fd).is_ok_and(|n| n < WANT) {
        let _ = rustix::pipe::fcntl_setpipe_size(fd, WANT);
    }
}

/// Moves up to `len` bytes of `src` from offset `off` into the pipe `pipe` without copying
/// them through user memory (`splice(2)`: the page cache's pages are referenced by the pipe).
/// Returns the bytes moved (0 at the end of `src`); an error of kind `Unsupported` when this
/// pair of files cannot be spliced (the caller then writes).
pub(crate) fn splice_to_pipe(
    src: &File,
    off: u64,
    pipe: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut off = off;
    loop {
        match rustix::pipe::splice(
            src,
            Some(&mut off),
            pipe,
            None,
            len,
            rustix::pipe::SpliceFlags::MORE,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                return Err(io::ErrorKind::Unsupported.into())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `bytes` to `fd` (retrying short writes and `EINTR`).
pub(crate) fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies up to `len` bytes of `src` from offset `off` to `dst` at its file position, in the
/// kernel (`copy_file_range(2)`); `Unsupported` as [`copy_range`].
pub(crate) fn copy_range_from(
    src: &File,
    off: u64,
    dst: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut off = off;
    match rustix::fs::copy_file_range(src, Some(&mut off), dst, None, len) {
        Ok(n) => Ok(n),
        // EBADF also for a destination opened for appending (`>>`), which it refuses.
        Err(e) if copy_refused(e) || e == Errno::BADF => Err(io::ErrorKind::Unsupported.into()),
        Err(e) => Err(e.into()),
    }
}

/// `fsync(2)` of a directory given by path, opened read-only (for the directory that holds a
/// store, which is outside the store and so not reached through its root).
pub(crate) fn fsync_dir_path(path: &Path) -> io::Result<()> {
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::fs::fsync(&dir).map_err(Into::into)
}

/// `fdatasync(2)`: the file's bytes (and size) are durable.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// `syncfs(2)` on the filesystem holding `file`: one barrier for many files.
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    rustix::fs::syncfs(file).map_err(Into::into)
}

/// Sets a file's permission bits (`fchmod(2)`).
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Sets a file's mtime to now (`futimens(2)`). Needs ownership; callers treat failure as benign.
pub(crate) fn touch(file: &File) -> io::Result<()> {
    file.set_modified(SystemTime::now())
}

/// True if a process with this pid exists on this host (`kill(pid, 0)`; EPERM means it exists).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) | Err(Errno::PERM) => true,
        Err(_) => false,
    }
}

/// When the process `pid` of this host started, in milliseconds since the Unix epoch, to the
/// precision of `/proc` (a clock tick, and the boot time's second): field 22 of
/// `/proc/PID/stat` (clock ticks since boot) plus `btime` of `/proc/stat`. `None` where there
/// is no such process or no `/proc` to ask.
pub(crate) fn process_start_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')': fields are
    // counted after the last ')'. Field 3 is the first one after it; field 22 is the 20th.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some(btime * 1000 + ticks * 1000 / hz)
}

/// How long ago this machine booted (`/proc/uptime`); `None` where there is no `/proc`.
pub(crate) fn uptime() -> Option<std::time::Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

/// True if `path` (which need not exist) lies inside the directory `dir`, judged by identity
/// rather than by name: the deepest existing ancestor of `path` is resolved (`realpath`), and
/// it and each of its parents are compared by device and inode (`stat(2)`) with `dir`. So a
/// path reaching `dir` through a symlink, `..`, a bind mount or another spelling counts too.
/// The components after the existing ancestor do not exist yet; they cannot leave it.
pub(crate) fn is_inside(path: &Path, dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(dir)?;
    let id = (target.dev(), target.ino());
    let abs = std::path::absolute(path)?;
    let mut existing = abs.as_path();
    let canon = loop {
        match std::fs::canonicalize(existing) {
            Ok(c) => break c,
            Err(e)
                if is_not_found(&e) || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
            {
                match existing.parent() {
                    Some(p) => existing = p,
                    None => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    };
    for a in canon.ancestors() {
        if let Ok(m) = std::fs::metadata(a) {
            if (m.dev(), m.ino()) == id {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Stops this process with `SIGSTOP` (`kill(2)` on our own pid), as an operator's `kill
/// -STOP` would: only for the test hook that stalls a lock holder at a defined point.
pub(crate) fn stop_self() {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
}

/// How many times a small-file read is tried in all (see [`retry_transient`]).
pub(crate) const SMALL_READ_ATTEMPTS: u32 = 100;

/// Runs `op` again while it fails with a transient error of a network filesystem: `ESTALE`
/// (Gluster, NFS: the file handle went stale because another client replaced or removed the
/// name) and `EIO` (Gluster, while the file is being replaced), at most `attempts` times in
/// all: the first ten right after yielding, the rest after a millisecond's pause (about 0.1 s
/// in all for 100). The one place small-file reads (refs, entries, locks, config) retry, in
/// [`Root::read_small`]: `op` redoes the whole open-and-read, since a stale handle never
/// recovers.
pub(crate) fn retry_transient<T>(
    attempts: u32,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut tried = 1;
    loop {
        match op() {
            Err(e) if is_transient(&e) && tried < attempts => {
                if tried < 10 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                tried += 1;
            }
            r => return r,
        }
    }
}

/// True for the errors [`retry_transient`] retries.
pub(crate) fn is_transient(e: &io::Error) -> bool {
    is_errno(e, Errno::STALE) || is_errno(e, Errno::IO)
}

/// This host's name (`uname(2)` nodename), with characters unsafe in a file name replaced.
///
/// `CAS_TEST_HOST`, when set, stands in for the node name: a hidden hook with which the
/// end-to-end tests run processes that look to each other as if on different hosts (whose
/// locks can only be judged by age).
pub(crate) fn hostname() -> String {
    let uts = rustix::system::uname();
    let raw = match std::env::var("CAS_TEST_HOST") {
        Ok(h) if !h.is_empty() => h,
        _ => uts.nodename().to_string_lossy().into_owned(),
    };
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_owned()
    } else {
        clean
    }
}

/// The current user's name (`$USER`, `$LOGNAME`) or numeric uid.
pub(crate) fn username() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let s = v.to_string_lossy();
            if s.chars().all(|c| c.is_ascii_graphic()) {
                return s.into_owned();
            }
        }
    }
    // Without the variables (cron, containers, `sudo -i` shells), the name /etc/passwd gives
    // the effective uid; the number only if it has none.
    let uid = rustix::process::geteuid().as_raw();
    user_name(uid)
        .filter(|n| n.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// The effective user id of this process (who owns the files it creates).
pub(crate) fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The name of the user `uid` in `/etc/passwd`, if it is listed there (users known only
/// through NSS services have none here; callers show the uid).
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

/// The system error alone, without the temporary file's name the `tempfile` crate appends
/// ("at path …/.f.5QapIt.tmp"): a file the user never named and that does not exist (issue
/// 23: `-o` into a missing directory must name the directory).
/// `dir` is where the file was to be created: if it cannot be reached, that is the error.
pub(crate) fn without_path(e: io::Error, dir: &Path) -> io::Error {
    if let Err(m) = std::fs::metadata(dir) {
        return m;
    }
    if e.raw_os_error().is_some() || e.get_ref().is_none() {
        return e;
    }
    // tempfile's own error keeps the system's only in its text: "MESSAGE at path P".
    let text = e.to_string();
    match text.rsplit_once(" at path ") {
        Some((msg, _)) => io::Error::new(e.kind(), msg.to_owned()),
        None => e,
    }
}

/// The current process id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// The process umask, read without changing it for good.
pub(crate) fn umask() -> u32 {
    // Linux 4.7+ shows it in /proc/self/status: read there, nothing changes. Setting it,
    // even for an instant, is seen by every thread of the process: a file another thread
    // creates meanwhile gets 0o077's mode (a restore's files came out 0600 in parallel
    // tests).
    if let Some(m) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
    {
        return m & 0o777;
    }
    // Elsewhere there is no way to read the umask without setting it: set and restore.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    rustix::process::umask(old);
    old.bits()
}

/// Sets the permission bits of the directory or file at `path` (`chmod(2)`).
pub(crate) fn chmod_path(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Renames `src` to `dst` (a directory) only if `dst` does not exist.
pub(crate) fn rename_dir_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(CWD, src, CWD, dst, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            // No atomic no-replace here: check, then rename (rename(2) of a directory onto a
            // non-empty directory fails anyway, so only an empty destination could be lost).
            if std::fs::symlink_metadata(dst).is_ok() {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            std::fs::rename(src, dst)
        }
        Err(e) => Err(e.into()),
    }
}

/// Symbolic links followed in one path resolution before giving up (as Linux's `ELOOP`
/// limit): tree checkouts and destination paths share it.
pub(crate) const MAX_LINKS: usize = 40;

/// How staged objects are made durable before their names are published (durability `file`
/// and `full`), chosen from the filesystem type (docs/guarantees.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Barrier {
    /// One `syncfs(2)` for a batch (local block filesystems: ext4, xfs, btrfs, f2fs); a single
    /// object is still `fdatasync`ed, which is cheaper for one file.
    Syncfs,
    /// `fdatasync(2)` of every staged file, overlapped across threads for a batch (FUSE, NFS,
    /// CIFS, Lustre, `CephFS`, tmpfs and anything unknown: where `syncfs` is not known to reach
    /// stable storage).
    Fdatasync,
}

impl std::fmt::Display for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Barrier::Syncfs => "syncfs",
            Barrier::Fdatasync => "fdatasync",
        })
    }
}

/// The one rule for memory-mapping a file: only on a local filesystem (a network
/// filesystem's pages can vanish under a mapping), and only a file no one else can truncate
/// while it is mapped: touching a mapped page past a new end raises SIGBUS, where a
/// truncation under a `read` only shortens what is read (which verification then reports).
/// Callers say what they know: `Store::may_map` for objects,
/// `Store::may_map_own` for this process's own files in the store, and the
/// destination's filesystem and privacy for output files.
pub(crate) fn may_map(local: bool, only_we_can_truncate: bool) -> bool {
    local && only_we_can_truncate
}

/// Maps `len` bytes of our own private file from `offset`, read-only, to hash what was just
/// copied into it without copying it again.
///
/// The caller must pass a file that only this process writes, on a local filesystem
/// ([`is_local`]): a staging file created by us with mode 0600 in a private store (so no group
/// member may open it), the temporary output file of a get (created `O_EXCL`, mode 0600, beside
/// the destination), or a file a restore created inside its temporary directory (created by us
/// with mode 0700, so no other user can reach anything below it).
#[allow(unsafe_code)]
pub(crate) fn map_private_file(file: &File, offset: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: the bytes of a mapping change (or vanish, raising SIGBUS) if the file is
    // modified or truncated while mapped. This file is one this process created with O_EXCL
    // on a local filesystem, where no other user may open it: a staging file of mode 0600 in
    // a private store, a get's temporary output of mode 0600, or a file inside a restore's
    // temporary directory of mode 0700 (nobody else can look up a name below it). This
    // process only appends to it (the copying thread writes *after* the range mapped here,
    // which it has finished) and neither truncates nor removes it before the mapping is
    // dropped. Only root could truncate it; the hash would then be of what was read, and the
    // output is refused (a get) or the object verified again on every read (a put).
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)
    }
}

/// Maps a whole file read-only.
#[allow(unsafe_code)]
pub(crate) fn map_readonly(file: &File) -> io::Result<memmap2::Mmap> {
    // SAFETY: `Mmap::map` is unsafe because the mapping's bytes change (or vanish, raising
    // SIGBUS) if another process modifies or truncates the file while it is mapped. We only map
    // files the store treats as immutable: published objects and outboards (mode 0444, only ever replaced by
    // renaming a new file over the name or unlinked, which leave this inode's bytes intact) and
    // our own private staging files after writing them. A writer that ignored the read-only bit
    // and rewrote an object in place could still change the bytes under us; the bytes we hand
    // out are verified against the hash after mapping (an outboard's pairs each against the
    // object's name as they are used), so wrong bytes are detected, not returned. Network filesystems, where another node's truncation can SIGBUS a mapping, are
    // never mapped: callers check `Caps::network` first.
    unsafe { memmap2::Mmap::map(file) }
}

/// Maps `len` bytes of a published object from `offset`, read-only and populated, so a large
/// object can be hashed or written out a window at a time (memory stays bounded by the window,
/// not the object).
///
/// The caller must have checked that the object may be mapped at all (`Store::may_map`:
/// local filesystem, private store, owned by this user).
#[allow(unsafe_code)]
pub(crate) fn map_object_window(file: &File, offset: u64, len: usize) -> io::Result<memmap2::Mmap> {
    // SAFETY: as for `map_readonly`: a published object is treated as immutable (mode 0444,
    // only ever replaced by a rename or unlinked, which leave this inode's bytes intact), and
    // the caller maps only objects this user owns in a private store on a local filesystem,
    // so nobody but this user (or root) can truncate the file under the mapping. Bytes handed
    // out from a window were verified against the hash before (or are verified after) they
    // are used; a rewrite in place by the owner is detected, not returned as the object.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .populate()
            .map(file)
    }
}

/// True if the file is on a local filesystem (`fstatfs(2)`): not NFS, FUSE, CIFS or another
/// network filesystem, where another node's truncation could raise SIGBUS in a mapping.
pub(crate) fn is_local(fd: impl std::os::fd::AsFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|st| {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        let magic = i64::from(st.f_type as i64);
        !fs_kind(magic).1
    })
}

/// The mode bit set on an object published without a data sync (durability `none`):
/// `S_ISVTX`, which Linux ignores on regular files. A later put or name update at `file` or
/// `full` that finds the object syncs its data once and clears the bit (docs/format.md "The write
/// path (put)", "Re-puts").
pub(crate) const UNSYNCED: u32 = 0o1000;

/// Makes the bytes of `name` in `dir` durable: opens it (`openat`, no symlink following,
/// non-blocking), `fdatasync`, then clears [`UNSYNCED`] from `mode` (`fchmod`, best effort:
/// another user's object refuses, and is synced again by the next such put).
pub(crate) fn sync_published_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fdatasync(&fd)?;
    let _ = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & !UNSYNCED));
    Ok(())
}

/// Opens the regular file `name` in the directory `dir` for reading, as
/// [`Root::open_read`] does a path: `openat` without following a symlink (`ELOOP`),
/// non-blocking (a FIFO does not hang), and anything that is not a regular file refused with
/// an [`io::ErrorKind::InvalidData`] error naming what it is.
pub(crate) fn open_read_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    use rustix::fs::{FileType, Mode};
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let kind = Kind::of(FileType::from_raw_mode(st.st_mode));
    if kind != Kind::File {
        return Err(root::not_regular(kind));
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY)?;
    Ok(File::from(fd))
}

/// `lstat` of the name `name` in the directory `dir` (`fstatat(AT_SYMLINK_NOFOLLOW)`).
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<root::Meta> {
    root::lstat_name_at(dir, name)
}

/// The file name as bytes.
pub(crate) fn name_bytes(name: &OsStr) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cannot read ref …: Stale file handle` on Gluster. The retry
    /// of small-file reads, driven by an injected sequence of errors: ESTALE and EIO are tried
    /// again (the whole operation), anything else is returned at once, and the bound holds.
    #[test]
    fn small_reads_retry_transient_errors_only() {
        fn run(seq: &[Option<Errno>], attempts: u32) -> (io::Result<u32>, usize) {
            let mut calls = 0;
            let r = retry_transient(attempts, || {
                let step = seq.get(calls).copied().flatten();
                calls += 1;
                match step {
                    Some(e) => Err(e.into()),
                    None => Ok(7),
                }
            });
            (r, calls)
        }
        let (stale, eio) = (Some(Errno::STALE), Some(Errno::IO));
        // Transient errors, then success: the value, after one call per step.
        let (r, calls) = run(&[stale, eio, stale, None], 100);
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 4);
        // A real error is not retried.
        let (r, calls) = run(&[stale, Some(Errno::NOENT), None], 100);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(calls, 2);
        let (r, calls) = run(&[Some(Errno::ACCESS), None], 100);
        assert!(r.is_err());
        assert_eq!(calls, 1);
        // Bounded: the last transient error is returned after `attempts` calls.
        let (r, calls) = run(&[stale; 20], 12);
        assert!(is_stale(&r.unwrap_err()));
        assert_eq!(calls, 12);
    }

    /// The small-file read of the store redoes open, fstat and read, and reports a file that
    /// is not regular without retrying.
    #[test]
    fn read_small_reads_whole_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"0123456789").unwrap();
        let root = Root::open(d.path()).unwrap();
        let (bytes, _, meta) = root.read_small(&d.path().join("f"), 4).unwrap();
        assert_eq!(bytes, b"0123");
        assert_eq!(meta.len, 10);
        let e = root.read_small(&d.path().join("missing"), 4).unwrap_err();
        assert!(is_not_found(&e));
    }

    #[test]
    fn network_kinds() {
        assert!(fs_kind(0x6969).1);
        assert!(fs_kind(0x6573_5546).1);
        assert!(!fs_kind(0xEF53).1);
    }

    #[test]
    fn syncfs_only_on_local_block_filesystems() {
        // ext4, xfs, btrfs, f2fs
        for m in [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010] {
            assert_eq!(barrier_for(m), Barrier::Syncfs, "{m:#x}");
        }
        // FUSE, NFS, CIFS, Lustre, `CephFS`, tmpfs, unknown
        for m in [
            0x6573_5546,
            0x6969,
            0xFF53_4D42,
            0x0BD0_0BD0,
            0x00C3_6400,
            0x0102_1994,
            0,
        ] {
            assert_eq!(barrier_for(m), Barrier::Fdatasync, "{m:#x}");
        }
    }

    #[test]
    fn own_pid_alive_and_absurd_pid_dead() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}

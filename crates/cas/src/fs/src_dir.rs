//! Reading a directory being stored (`put -r`): listed through its descriptor, each entry
//! `fstatat`-ed and read relative to it, so a tree of many files costs one name lookup per
//! file instead of a walk of its whole path.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Kind;

/// What `lstat` says about an entry of a directory being stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SrcStat {
    pub(crate) kind: Kind,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    /// Permission bits.
    pub(crate) mode: u32,
    /// Seconds and nanoseconds since 1970.
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// Opens a directory to store (`O_DIRECTORY`); `follow`: whether a symlink at the last
/// component is followed (the root given by the user is, as `put -r link/` always did; its
/// subdirectories never are).
pub(crate) fn open_src_dir(path: &Path, follow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::open(path, flags, Mode::empty()).map_err(Into::into)
}

/// The names in a directory (`getdents`), without `.` and `..`, with their type when the
/// filesystem reports it (`None`: ask `lstat`).
pub(crate) fn list_src_dir(dir: &OwnedFd) -> io::Result<Vec<(OsString, Option<Kind>)>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match ent.file_type() {
            FileType::Unknown => None,
            t => Some(Kind::of(t)),
        };
        out.push((OsStr::from_bytes(name).to_owned(), kind));
    }
    Ok(out)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub(crate) fn lstat_src_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<SrcStat> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(src_stat(&st))
}

/// `readlinkat(dir, name)`: a symlink's target, as bytes.
pub(crate) fn readlink_src_at(dir: impl AsFd, name: &OsStr) -> io::Result<OsString> {
    let t = rustix::fs::readlinkat(dir, name, Vec::new())?;
    Ok(OsString::from_vec(t.into_bytes()))
}

/// `fstat(fd)` of a directory being stored (its own permission bits and mtime).
pub(crate) fn stat_src_fd(fd: BorrowedFd<'_>) -> io::Result<SrcStat> {
    let st = rustix::fs::fstat(fd)?;
    Ok(src_stat(&st))
}

/// What a stat of a source entry says, as the put path keeps it.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn src_stat(st: &rustix::fs::Stat) -> SrcStat {
    SrcStat {
        kind: Kind::of(FileType::from_raw_mode(st.st_mode)),
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

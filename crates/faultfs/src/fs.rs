//! The FUSE side: a pass-through filesystem over BACKING that keeps unsynced data in memory.
//!
//! Every operation takes the one [`State`] lock for its whole duration, so a power loss (taken
//! under the same lock by the control thread) falls between two operations.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::model::{Entry, FaultKind, Faults, Op, Pending, Undo};

/// Attribute and entry cache time: none, so the kernel always asks.
const TTL: Duration = Duration::ZERO;

type R<T> = Result<T, Errno>;

fn rx(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

/// One file or directory of BACKING, by the names it is known under (relative to BACKING).
#[derive(Debug, Default)]
struct Node {
    /// Empty once every name was unlinked (the file may still be open).
    paths: Vec<PathBuf>,
    /// Unsynced data, if any.
    pending: Option<Pending>,
}

#[derive(Debug)]
enum Handle {
    File {
        ino: u64,
        file: File,
    },
    Dir {
        file: File,
        entries: Vec<(u64, FileType, OsString)>,
    },
}

/// Mount-time settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The backing directory (absolute).
    pub backing: PathBuf,
    /// Directory-entry changes need an fsync of their directory to survive a power loss.
    pub strict: bool,
    /// Where strict mode keeps unlinked files until their directory is fsynced; must be on
    /// BACKING's filesystem.
    pub graveyard: PathBuf,
}

/// Everything the filesystem and the control thread share.
#[derive(Debug)]
pub struct State {
    opts: Options,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    journal: Vec<Entry>,
    grave_seq: u64,
    /// Armed faults and call counters.
    pub faults: Faults,
    dead: bool,
}

/// Shared handle to the state.
pub type Shared = Arc<Mutex<State>>;

/// Lock the state even if a panicking operation poisoned it.
pub fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn attr(ino: u64, meta: &Metadata, pending: Option<&Pending>) -> FileAttr {
    let mut size = meta.size();
    let mut mtime = time(meta.mtime(), meta.mtime_nsec());
    if let Some(p) = pending {
        size = p.size;
        mtime = p.mtime.unwrap_or(mtime);
    }
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512).max(meta.blocks()),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime,
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: meta.created().unwrap_or(UNIX_EPOCH),
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: meta.blksize() as u32,
        flags: 0,
    }
}

fn key(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// `old` renamed to `new`: the path of everything at or under `old`.
fn moved(p: &Path, old: &Path, new: &Path) -> Option<PathBuf> {
    let rest = p.strip_prefix(old).ok()?;
    Some(if rest.as_os_str().is_empty() {
        new.to_path_buf()
    } else {
        new.join(rest)
    })
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| File::open(path))
}

impl State {
    /// A fresh state over `opts.backing`, which must exist.
    pub fn new(opts: Options) -> io::Result<State> {
        let meta = fs::metadata(&opts.backing)?;
        if !meta.is_dir() {
            return Err(io::Error::other("backing is not a directory"));
        }
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                paths: vec![PathBuf::new()],
                pending: None,
            },
        );
        Ok(State {
            opts,
            nodes,
            by_key: HashMap::from([(key(&meta), 1)]),
            next_ino: 2,
            handles: HashMap::new(),
            next_fh: 1,
            journal: Vec::new(),
            grave_seq: 0,
            faults: Faults::default(),
            dead: false,
        })
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.opts.backing.clone()
        } else {
            self.opts.backing.join(rel)
        }
    }

    /// Count the call; fail it if dead or a fault fires. `Some(Short)` is left to the caller.
    fn enter(&mut self, op: Op, paths: &[&Path]) -> R<Option<FaultKind>> {
        if self.dead {
            return Err(Errno::EIO);
        }
        match self.faults.hit(op, paths) {
            Some(FaultKind::Errno(e)) => Err(Errno::from_i32(e)),
            other => Ok(other),
        }
    }

    fn node(&mut self, ino: u64) -> R<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// The node's first name, if it has one.
    fn path_opt(&self, ino: u64) -> Option<PathBuf> {
        self.nodes.get(&ino).and_then(|n| n.paths.first().cloned())
    }

    /// Every name of the node (a hard-linked file has several; an unlinked one none).
    fn paths(&self, ino: u64) -> Vec<PathBuf> {
        self.nodes
            .get(&ino)
            .map(|n| n.paths.clone())
            .unwrap_or_default()
    }

    fn path(&self, ino: u64) -> R<PathBuf> {
        self.path_opt(ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> R<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// The node for the backing object `meta` found at `rel`, made if new.
    fn node_for(&mut self, rel: &Path, meta: &Metadata) -> u64 {
        self.node_for_key(rel, key(meta))
    }

    fn node_for_key(&mut self, rel: &Path, key: (u64, u64)) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            let node = self.nodes.entry(ino).or_default();
            if !node.paths.iter().any(|p| p == rel) {
                node.paths.push(rel.to_path_buf());
            }
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_key.insert(key, ino);
        self.nodes.insert(
            ino,
            Node {
                paths: vec![rel.to_path_buf()],
                pending: None,
            },
        );
        ino
    }

    /// `rel` (which named `meta`) no longer exists.
    fn forget_path(&mut self, rel: &Path, meta: &Metadata) {
        if let Some(&ino) = self.by_key.get(&key(meta)) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.paths.retain(|p| p != rel);
                if meta.is_dir() || meta.nlink() <= 1 {
                    node.paths.clear();
                    // The backing inode number may be reused for a new file.
                    self.by_key.remove(&key(meta));
                }
            }
        }
    }

    /// `old` was renamed to `new`.
    fn rename_paths(&mut self, old: &Path, new: &Path, ino: Option<u64>, is_dir: bool) {
        let fix = |node: &mut Node| {
            for p in &mut node.paths {
                if let Some(m) = moved(p, old, new) {
                    *p = m;
                }
            }
        };
        if is_dir {
            self.nodes.values_mut().for_each(fix);
        } else if let Some(node) = ino.and_then(|ino| self.nodes.get_mut(&ino)) {
            fix(node);
        }
    }

    fn grave(&mut self) -> PathBuf {
        self.grave_seq += 1;
        self.opts.graveyard.join(self.grave_seq.to_string())
    }

    fn journal(&mut self, undo: Undo, dirs: &[u64]) {
        if !self.opts.strict {
            return;
        }
        let mut d: Vec<(u64, bool)> = Vec::new();
        for &dir in dirs {
            if !d.iter().any(|&(x, _)| x == dir) {
                d.push((dir, false));
            }
        }
        self.journal.push(Entry { undo, dirs: d });
    }

    fn meta_of(&self, ino: u64, fh: Option<u64>) -> R<Metadata> {
        if let Some(Handle::File { file, .. } | Handle::Dir { file, .. }) =
            fh.and_then(|fh| self.handles.get(&fh))
        {
            return Ok(file.metadata()?);
        }
        if let Some(path) = self.path_opt(ino) {
            return Ok(fs::symlink_metadata(self.abs(&path))?);
        }
        // Unlinked but still open: any handle on it will do.
        for h in self.handles.values() {
            if let Handle::File { ino: i, file } = h {
                if *i == ino {
                    return Ok(file.metadata()?);
                }
            }
        }
        Err(Errno::ENOENT)
    }

    fn attr_of(&self, ino: u64, fh: Option<u64>) -> R<FileAttr> {
        let meta = self.meta_of(ino, fh)?;
        Ok(attr(
            ino,
            &meta,
            self.nodes.get(&ino).and_then(|n| n.pending.as_ref()),
        ))
    }

    fn entry_at(&mut self, rel: &Path) -> R<FileAttr> {
        let meta = fs::symlink_metadata(self.abs(rel))?;
        let ino = self.node_for(rel, &meta);
        Ok(attr(
            ino,
            &meta,
            self.nodes.get(&ino).and_then(|n| n.pending.as_ref()),
        ))
    }

    fn file(&self, fh: u64) -> R<&File> {
        match self.handles.get(&fh) {
            Some(Handle::File { file, .. } | Handle::Dir { file, .. }) => Ok(file),
            None => Err(Errno::EBADF),
        }
    }

    /// Forget the unsynced data of a file that has no name left and is no longer open: nothing
    /// can read or sync it any more.
    fn drop_if_unreachable(&mut self, ino: u64) {
        let open = self
            .handles
            .values()
            .any(|h| matches!(h, Handle::File { ino: i, .. } if *i == ino));
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.paths.is_empty() && !open {
                node.pending = None;
            }
        }
    }

    fn add_handle(&mut self, h: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, h);
        fh
    }

    // ---- operations ----

    fn lookup(&mut self, parent: u64, name: &OsStr) -> R<FileAttr> {
        let rel = self.child(parent, name)?;
        self.enter(Op::Lookup, &[&rel])?;
        self.entry_at(&rel)
    }

    fn getattr(&mut self, ino: u64, fh: Option<u64>) -> R<FileAttr> {
        let path = self.path_opt(ino).unwrap_or_default();
        self.enter(Op::Getattr, &[&path])?;
        self.attr_of(ino, fh)
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<u64>,
    ) -> R<FileAttr> {
        let paths = self.paths(ino);
        self.enter(Op::Setattr, &refs(&paths))?;
        let path = paths.into_iter().next();
        let fh = fh.filter(|fh| self.handles.contains_key(fh));
        let abs = path.as_deref().map(|p| self.abs(p));
        // A file to act on: the open handle, else the path.
        let opened;
        let file: Option<&File> = if let Some(fh) = fh {
            Some(self.file(fh)?)
        } else if size.is_some() {
            opened = open_rw(abs.as_deref().ok_or(Errno::ENOENT)?)?;
            Some(&opened)
        } else {
            None
        };
        if let Some(mode) = mode {
            let perm = fs::Permissions::from_mode(mode & 0o7777);
            match file {
                Some(f) => f.set_permissions(perm)?,
                None => fs::set_permissions(abs.as_deref().ok_or(Errno::ENOENT)?, perm)?,
            }
        }
        if uid.is_some() || gid.is_some() {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, uid, gid)?,
                None => std::os::unix::fs::lchown(abs.as_deref().ok_or(Errno::ENOENT)?, uid, gid)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<TimeOrNow>| match t {
                None => rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                Some(TimeOrNow::Now) => rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_NOW,
                },
                Some(TimeOrNow::SpecificTime(t)) => {
                    let (sec, nsec) = match t.duration_since(UNIX_EPOCH) {
                        Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                        Err(e) => {
                            let d = e.duration();
                            let mut sec = -(d.as_secs() as i64);
                            let mut nsec = i64::from(d.subsec_nanos());
                            if nsec > 0 {
                                sec -= 1;
                                nsec = 1_000_000_000 - nsec;
                            }
                            (sec, nsec)
                        }
                    };
                    rustix::fs::Timespec {
                        tv_sec: sec,
                        tv_nsec: nsec as _,
                    }
                }
            };
            let times = rustix::fs::Timestamps {
                last_access: ts(atime),
                last_modification: ts(mtime),
            };
            match file {
                Some(f) => rustix::fs::futimens(f, &times).map_err(rx)?,
                None => rustix::fs::utimensat(
                    rustix::fs::CWD,
                    abs.as_deref().ok_or(Errno::ENOENT)?,
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(rx)?,
            }
        }
        let backing_len = match (size, file) {
            (Some(_), Some(f)) => Some(f.metadata()?.len()),
            _ => None,
        };
        let node = self.node(ino)?;
        if let (Some(size), Some(len)) = (size, backing_len) {
            node.pending
                .get_or_insert_with(|| Pending::new(len))
                .truncate(size);
        }
        if mtime.is_some() {
            if let Some(p) = &mut node.pending {
                p.mtime = None;
            }
        }
        self.attr_of(ino, fh)
    }

    fn readlink(&mut self, ino: u64) -> R<Vec<u8>> {
        let path = self.path(ino)?;
        self.enter(Op::Readlink, &[&path])?;
        Ok(fs::read_link(self.abs(&path))?.into_os_string().into_vec())
    }

    fn own(&self, rel: &Path, uid: u32, gid: u32) -> R<()> {
        std::os::unix::fs::lchown(self.abs(rel), Some(uid), Some(gid))?;
        Ok(())
    }

    fn mknod(&mut self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> R<FileAttr> {
        let rel = self.child(parent, name)?;
        self.enter(Op::Mknod, &[&rel])?;
        let abs = self.abs(&rel);
        let perm = mode & 0o7777;
        match mode & S_IFMT {
            S_IFIFO => rustix::fs::mknodat(
                rustix::fs::CWD,
                &abs,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(perm),
                0,
            )
            .map_err(rx)?,
            S_IFREG => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm)
                    .open(&abs)?;
            }
            _ => return Err(Errno::EPERM),
        }
        self.own(&rel, uid, gid)?;
        self.journal(
            Undo::Remove {
                dir: parent,
                name: name.to_owned(),
            },
            &[parent],
        );
        self.entry_at(&rel)
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> R<FileAttr> {
        let rel = self.child(parent, name)?;
        self.enter(Op::Mkdir, &[&rel])?;
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(self.abs(&rel))?;
        self.own(&rel, uid, gid)?;
        self.journal(
            Undo::RemoveDir {
                dir: parent,
                name: name.to_owned(),
            },
            &[parent],
        );
        self.entry_at(&rel)
    }

    fn symlink(
        &mut self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> R<FileAttr> {
        let rel = self.child(parent, name)?;
        self.enter(Op::Symlink, &[&rel])?;
        std::os::unix::fs::symlink(target, self.abs(&rel))?;
        self.own(&rel, uid, gid)?;
        self.journal(
            Undo::Remove {
                dir: parent,
                name: name.to_owned(),
            },
            &[parent],
        );
        self.entry_at(&rel)
    }

    /// unlink or rmdir.
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> R<()> {
        let rel = self.child(parent, name)?;
        self.enter(if dir { Op::Rmdir } else { Op::Unlink }, &[&rel])?;
        let abs = self.abs(&rel);
        let meta = fs::symlink_metadata(&abs)?;
        if dir && !meta.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !dir && meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        if self.opts.strict {
            if dir && fs::read_dir(&abs)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
            let grave = self.grave();
            fs::rename(&abs, &grave)?;
            let node = self.by_key.get(&key(&meta)).copied();
            self.journal(
                Undo::Restore {
                    dir: parent,
                    name: name.to_owned(),
                    grave,
                    node,
                },
                &[parent],
            );
        } else if dir {
            fs::remove_dir(&abs)?;
        } else {
            fs::remove_file(&abs)?;
        }
        self.forget_path(&rel, &meta);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> R<()> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        self.enter(Op::Rename, &[&from, &to])?;
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let (afrom, ato) = (self.abs(&from), self.abs(&to));
        let src = fs::symlink_metadata(&afrom)?;
        let dst = match fs::symlink_metadata(&ato) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(dst) = &dst {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if key(dst) == key(&src) {
                return Ok(()); // two names of one file: rename(2) does nothing
            }
            if src.is_dir() && !dst.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if !src.is_dir() && dst.is_dir() {
                return Err(Errno::EISDIR);
            }
            if dst.is_dir() && fs::read_dir(&ato)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
        }
        if self.opts.strict {
            let replaced = match &dst {
                Some(dst) => {
                    let grave = self.grave();
                    fs::rename(&ato, &grave)?;
                    Some((grave, self.by_key.get(&key(dst)).copied()))
                }
                None => None,
            };
            if let Err(e) = fs::rename(&afrom, &ato) {
                if let Some((grave, _)) = &replaced {
                    let _ = fs::rename(grave, &ato);
                }
                return Err(e.into());
            }
            self.journal(
                Undo::Rename {
                    from_dir: parent,
                    from_name: name.to_owned(),
                    to_dir: newparent,
                    to_name: newname.to_owned(),
                    replaced,
                },
                &[parent, newparent],
            );
        } else {
            let mut rflags = rustix::fs::RenameFlags::empty();
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                rflags |= rustix::fs::RenameFlags::NOREPLACE;
            }
            rustix::fs::renameat_with(rustix::fs::CWD, &afrom, rustix::fs::CWD, &ato, rflags)
                .map_err(rx)?;
        }
        if let Some(dst) = &dst {
            self.forget_path(&to, dst);
        }
        let ino = self.by_key.get(&key(&src)).copied();
        self.rename_paths(&from, &to, ino, src.is_dir());
        Ok(())
    }

    fn link(&mut self, ino: u64, newparent: u64, newname: &OsStr) -> R<FileAttr> {
        let src = self.path(ino)?;
        let rel = self.child(newparent, newname)?;
        self.enter(Op::Link, &[&src, &rel])?;
        fs::hard_link(self.abs(&src), self.abs(&rel))?;
        self.journal(
            Undo::Remove {
                dir: newparent,
                name: newname.to_owned(),
            },
            &[newparent],
        );
        self.entry_at(&rel)
    }

    fn open(&mut self, ino: u64) -> R<u64> {
        let paths = self.paths(ino);
        self.enter(Op::Open, &refs(&paths))?;
        let path = paths.into_iter().next().ok_or(Errno::ENOENT)?;
        let file = open_rw(&self.abs(&path))?;
        Ok(self.add_handle(Handle::File { ino, file }))
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> R<(FileAttr, u64)> {
        let rel = self.child(parent, name)?;
        self.enter(Op::Create, &[&rel])?;
        let abs = self.abs(&rel);
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(&abs);
        let (file, new) = match created {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && flags & O_EXCL == 0 => {
                (open_rw(&abs)?, false)
            }
            Err(e) => return Err(e.into()),
        };
        if new {
            self.own(&rel, uid, gid)?;
            self.journal(
                Undo::Remove {
                    dir: parent,
                    name: name.to_owned(),
                },
                &[parent],
            );
        }
        let meta = file.metadata()?;
        let ino = self.node_for(&rel, &meta);
        if !new && flags & O_TRUNC != 0 {
            let len = meta.len();
            self.node(ino)?
                .pending
                .get_or_insert_with(|| Pending::new(len))
                .truncate(0);
        }
        let fh = self.add_handle(Handle::File { ino, file });
        Ok((self.attr_of(ino, Some(fh))?, fh))
    }

    fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> R<Vec<u8>> {
        let paths = self.paths(ino);
        self.enter(Op::Read, &refs(&paths))?;
        let file = self.file(fh)?;
        if let Some(p) = self.nodes.get(&ino).and_then(|n| n.pending.as_ref()) {
            return Ok(p.read(file, offset, u64::from(size))?);
        }
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> R<u32> {
        let paths = self.paths(ino);
        let fault = self.enter(Op::Write, &refs(&paths))?;
        let n = if fault == Some(FaultKind::Short) && data.len() >= 2 {
            data.len() / 2
        } else {
            data.len()
        };
        let Some(Handle::File { file, .. }) = self.handles.get(&fh) else {
            return Err(Errno::EBADF);
        };
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if node.pending.is_none() {
            node.pending = Some(Pending::new(file.metadata()?.len()));
        }
        node.pending
            .as_mut()
            .expect("set above")
            .write(file, offset, &data[..n])?;
        Ok(n as u32)
    }

    fn fsync(&mut self, ino: u64, fh: u64, datasync: bool) -> R<()> {
        let paths = self.paths(ino);
        self.enter(Op::Fsync, &refs(&paths))?;
        let Some(Handle::File { file, .. }) = self.handles.get(&fh) else {
            return Err(Errno::EBADF);
        };
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        if let Some(p) = node.pending.take() {
            if let Err(e) = p.sync_to(file, datasync) {
                node.pending = Some(p);
                return Err(e.into());
            }
        } else if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        Ok(())
    }

    fn opendir(&mut self, ino: u64) -> R<u64> {
        let path = self.path(ino)?;
        self.enter(Op::Opendir, &[&path])?;
        let abs = self.abs(&path);
        let file = File::open(&abs)?;
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            // Only a hint; the kernel answers `..` lookups itself.
            (1, FileType::Directory, OsString::from("..")),
        ];
        let dev = file.metadata()?.dev();
        for e in fs::read_dir(&abs)? {
            let e = e?;
            let kind = FileType::from_std(e.file_type()?).unwrap_or(FileType::RegularFile);
            // The inode numbers lookup gives (one device, unless a mount is inside BACKING).
            let child = self.node_for_key(&path.join(e.file_name()), (dev, e.ino()));
            entries.push((child, kind, e.file_name()));
        }
        Ok(self.add_handle(Handle::Dir { file, entries }))
    }

    fn fsyncdir(&mut self, ino: u64, fh: u64) -> R<()> {
        let path = self.path_opt(ino).unwrap_or_default();
        self.enter(Op::Fsyncdir, &[&path])?;
        self.file(fh)?.sync_all()?;
        crate::model::fsync_dir(&mut self.journal, ino);
        Ok(())
    }

    fn statfs(&mut self) -> R<rustix::fs::StatVfs> {
        self.enter(Op::Statfs, &[Path::new("")])?;
        rustix::fs::statvfs(&self.opts.backing).map_err(rx)
    }

    /// Pull the plug: drop unsynced data, undo unsynced entries (strict), die.
    pub fn powerloss(&mut self) -> String {
        if self.dead {
            return "already dead".into();
        }
        let mut dropped = 0;
        for node in self.nodes.values_mut() {
            if node.pending.take().is_some() {
                dropped += 1;
            }
        }
        let (mut undone, mut failed) = (0, 0);
        let journal = std::mem::take(&mut self.journal);
        for entry in journal.iter().rev() {
            match self.undo(&entry.undo) {
                Ok(()) => undone += 1,
                Err(_) => failed += 1,
            }
        }
        self.dead = true;
        format!("dropped={dropped} undone={undone} undo_failed={failed}")
    }

    fn undo(&mut self, undo: &Undo) -> io::Result<()> {
        let at = |s: &State, dir: u64, name: &OsStr| -> io::Result<PathBuf> {
            s.path(dir)
                .map(|p| p.join(name))
                .map_err(|_| io::Error::from(io::ErrorKind::NotFound))
        };
        match undo {
            Undo::Remove { dir, name } => {
                let rel = at(self, *dir, name)?;
                fs::remove_file(self.abs(&rel))
            }
            Undo::RemoveDir { dir, name } => {
                let rel = at(self, *dir, name)?;
                let grave = self.grave();
                fs::rename(self.abs(&rel), grave)
            }
            Undo::Restore {
                dir,
                name,
                grave,
                node,
            } => {
                let rel = at(self, *dir, name)?;
                fs::rename(grave, self.abs(&rel))?;
                if let Some(n) = node.and_then(|n| self.nodes.get_mut(&n)) {
                    n.paths.push(rel);
                }
                Ok(())
            }
            Undo::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                replaced,
            } => {
                let from = at(self, *from_dir, from_name)?;
                let to = at(self, *to_dir, to_name)?;
                let meta = fs::symlink_metadata(self.abs(&to))?;
                fs::rename(self.abs(&to), self.abs(&from))?;
                let ino = self.by_key.get(&key(&meta)).copied();
                self.rename_paths(&to, &from, ino, meta.is_dir());
                if let Some((grave, node)) = replaced {
                    fs::rename(grave, self.abs(&to))?;
                    if let Some(n) = node.and_then(|n| self.nodes.get_mut(&n)) {
                        n.paths.push(to);
                    }
                }
                Ok(())
            }
        }
    }
}

// Linux values, as the kernel sends them (no libc dependency for four constants).
const S_IFMT: u32 = 0o170_000;
const S_IFIFO: u32 = 0o010_000;
const S_IFREG: u32 = 0o100_000;
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;

/// The [`fuser::Filesystem`] over a [`Shared`] state.
#[derive(Debug)]
pub struct FaultFs {
    state: Shared,
}

impl FaultFs {
    /// A filesystem serving `state`.
    pub fn new(state: Shared) -> Self {
        FaultFs { state }
    }

    fn s(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn entry(reply: ReplyEntry, r: R<FileAttr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: R<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Shared mmap of direct-io files (through the page cache); harmless if refused.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.s().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.s().getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self
            .s()
            .setattr(ino.0, mode, uid, gid, size, atime, mtime, fh.map(|f| f.0));
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.s().readlink(ino.0) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.s().mknod(parent.0, name, mode, req.uid(), req.gid()),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.s().mkdir(parent.0, name, mode, req.uid(), req.gid()),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.s().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.s().remove(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.s()
                .symlink(parent.0, link_name, target, req.uid(), req.gid()),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.s().rename(parent.0, name, newparent.0, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(reply, self.s().link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.s().open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.s().read(ino.0, fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.s().write(ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Close does not make anything durable.
        let r = self.s().enter(Op::Flush, &[]).map(|_| ());
        empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.s();
        s.handles.remove(&fh.0);
        s.drop_if_unreachable(ino.0);
        let r = s.enter(Op::Release, &[]).map(|_| ());
        empty(reply, r);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.s().fsync(ino.0, fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.s().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.s();
        if let Err(e) = s.enter(Op::Readdir, &[]) {
            return reply.error(e);
        }
        let Some(Handle::Dir { entries, .. }) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.s();
        s.handles.remove(&fh.0);
        empty(reply, if s.dead { Err(Errno::EIO) } else { Ok(()) });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.s().fsyncdir(ino.0, fh.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.s().statfs() {
            Ok(v) => reply.statfs(
                v.f_blocks,
                v.f_bfree,
                v.f_bavail,
                v.f_files,
                v.f_ffree,
                v.f_bsize as u32,
                v.f_namemax as u32,
                v.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks; only refuse when dead.
        let dead = self.s().dead;
        empty(reply, if dead { Err(Errno::EIO) } else { Ok(()) });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .s()
            .create(parent.0, name, mode, flags, req.uid(), req.gid())
        {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}

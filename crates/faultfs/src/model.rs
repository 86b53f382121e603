//! The durability model: unsynced file data, the strict-mode undo journal, faults and counters.
//!
//! Nothing here touches FUSE; [`crate::fs`] drives it under one lock.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Granularity of the in-memory copy of unsynced data.
pub const PAGE: u64 = 4096;

/// The unsynced state of one file: what a reader sees now, while BACKING still holds the
/// content as of the last fsync.
///
/// Invariants: `keep <= size`; bytes of a page past `size` are zero; backing bytes at or past
/// `keep` are treated as zeros (a truncate hid them).
#[derive(Debug)]
pub struct Pending {
    /// Current (logical) size.
    pub size: u64,
    /// Backing bytes below this offset are still visible where no page overrides them.
    pub keep: u64,
    /// Dirty pages, by page index; each holds the full current content of its page.
    pub pages: BTreeMap<u64, Box<[u8]>>,
    /// Modification time of the last unsynced write.
    pub mtime: Option<SystemTime>,
}

fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break, // past the backing EOF: leave zeros
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Pending {
    /// A clean overlay over a backing file of `size` bytes.
    pub fn new(size: u64) -> Self {
        Pending {
            size,
            keep: size,
            pages: BTreeMap::new(),
            mtime: None,
        }
    }

    /// Bytes `[offset, offset + len)` as a reader sees them (short at EOF).
    pub fn read(&self, backing: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        if offset < self.keep {
            let n = (end.min(self.keep) - offset) as usize;
            read_at_full(backing, &mut buf[..n], offset)?;
        }
        for (&idx, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let start = idx * PAGE;
            let lo = start.max(offset);
            let hi = (start + PAGE).min(end);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&page[(lo - start) as usize..(hi - start) as usize]);
        }
        Ok(buf)
    }

    fn page_mut(&mut self, backing: &File, idx: u64) -> io::Result<&mut Box<[u8]>> {
        if !self.pages.contains_key(&idx) {
            let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
            let start = idx * PAGE;
            if start < self.keep {
                let n = ((self.keep - start).min(PAGE)) as usize;
                read_at_full(backing, &mut page[..n], start)?;
            }
            // Bytes past the current size must read as zeros (a truncate may have hidden them
            // only through `size`, with `keep` already at or below it).
            if self.size < start + PAGE {
                let from = self.size.saturating_sub(start) as usize;
                page[from..].fill(0);
            }
            self.pages.insert(idx, page);
        }
        Ok(self.pages.get_mut(&idx).expect("just inserted"))
    }

    /// Record a write of `data` at `offset`.
    pub fn write(&mut self, backing: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let start = idx * PAGE;
            let hi = (start + PAGE).min(end);
            let page = self.page_mut(backing, idx)?;
            page[(pos - start) as usize..(hi - start) as usize]
                .copy_from_slice(&data[(pos - offset) as usize..(hi - offset) as usize]);
            pos = hi;
        }
        self.size = self.size.max(end);
        self.mtime = Some(SystemTime::now());
        Ok(())
    }

    /// Record a truncate (or extension) to `size`.
    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.keep = self.keep.min(size);
            let first_gone = size.div_ceil(PAGE);
            self.pages.retain(|&idx, _| idx < first_gone);
            if !size.is_multiple_of(PAGE) {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[(size % PAGE) as usize..].fill(0);
                }
            }
        }
        self.size = size;
        self.mtime = Some(SystemTime::now());
    }

    /// Write everything to `backing` and make it durable there (`fdatasync` or `fsync`).
    pub fn sync_to(&self, backing: &File, datasync: bool) -> io::Result<()> {
        let mut len = backing.metadata()?.len();
        if self.keep < len {
            backing.set_len(self.keep)?;
            len = self.keep;
        }
        if len != self.size {
            backing.set_len(self.size)?;
        }
        for (&idx, page) in &self.pages {
            let start = idx * PAGE;
            if start >= self.size {
                continue;
            }
            let n = (self.size - start).min(PAGE) as usize;
            backing.write_all_at(&page[..n], start)?;
        }
        if let Some(mtime) = self.mtime {
            // Best effort: a backing filesystem without settable times still keeps the data.
            let _ = backing.set_modified(mtime);
        }
        if datasync {
            backing.sync_data()
        } else {
            backing.sync_all()
        }
    }
}

/// Operations that are counted and can be made to fail; each is the FUSE request of that name.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Fsyncdir,
    Statfs,
    Create,
}

impl Op {
    /// Every op, in the order `stats` prints them.
    pub const ALL: [Op; 22] = [
        Op::Lookup,
        Op::Getattr,
        Op::Setattr,
        Op::Readlink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Opendir,
        Op::Readdir,
        Op::Fsyncdir,
        Op::Statfs,
        Op::Create,
    ];

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Readlink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Fsyncdir => "fsyncdir",
            Op::Statfs => "statfs",
            Op::Create => "create",
        }
    }

    /// Ops that `fault` accepts: those that act on a named file or directory.
    pub fn parse_faultable(s: &str) -> Option<Op> {
        let op = Op::ALL.into_iter().find(|op| op.name() == s)?;
        matches!(
            op,
            Op::Setattr
                | Op::Mknod
                | Op::Mkdir
                | Op::Unlink
                | Op::Rmdir
                | Op::Symlink
                | Op::Rename
                | Op::Link
                | Op::Open
                | Op::Read
                | Op::Write
                | Op::Fsync
                | Op::Fsyncdir
                | Op::Create
        )
        .then_some(op)
    }
}

/// What a fault does to the call it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Fail with this errno, doing nothing.
    Errno(i32),
    /// `write` only: write the first half of the bytes and report that short count.
    Short,
}

impl FaultKind {
    /// Parse `ENOSPC`, `EIO`, `EDQUOT`, `EROFS`, `EPERM`, `EACCES`, `ESTALE` or `short`.
    pub fn parse(s: &str) -> Option<FaultKind> {
        Some(match s {
            "ENOSPC" => FaultKind::Errno(rustix::io::Errno::NOSPC.raw_os_error()),
            "EIO" => FaultKind::Errno(rustix::io::Errno::IO.raw_os_error()),
            "EDQUOT" => FaultKind::Errno(rustix::io::Errno::DQUOT.raw_os_error()),
            "EROFS" => FaultKind::Errno(rustix::io::Errno::ROFS.raw_os_error()),
            "EPERM" => FaultKind::Errno(rustix::io::Errno::PERM.raw_os_error()),
            "EACCES" => FaultKind::Errno(rustix::io::Errno::ACCESS.raw_os_error()),
            "ESTALE" => FaultKind::Errno(rustix::io::Errno::STALE.raw_os_error()),
            "short" => FaultKind::Short,
            _ => return None,
        })
    }
}

/// One armed fault: the `n`-th matching call of `op` (and every later one if `sticky`).
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation.
    pub op: Op,
    /// Which matching call (1-based) fails.
    pub n: u64,
    /// How it fails.
    pub kind: FaultKind,
    /// Also every later matching call.
    pub sticky: bool,
    /// Only calls on paths under this prefix (relative to the mount root) count.
    pub under: Option<PathBuf>,
    /// Matching calls seen so far.
    pub seen: u64,
}

impl Fault {
    /// Parse the arguments of `fault OP N ERR [sticky] [under PREFIX]`.
    pub fn parse(args: &[&str]) -> Result<Fault, String> {
        let [op, n, kind, rest @ ..] = args else {
            return Err("usage: fault OP N ERR [sticky] [under PREFIX]".into());
        };
        let op = Op::parse_faultable(op).ok_or_else(|| format!("unknown op {op}"))?;
        let n: u64 = n
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("bad N {n} (1-based)"))?;
        let kind = FaultKind::parse(kind).ok_or_else(|| format!("unknown error {kind}"))?;
        if kind == FaultKind::Short && op != Op::Write {
            return Err("short is only for write".into());
        }
        let mut fault = Fault {
            op,
            n,
            kind,
            sticky: false,
            under: None,
            seen: 0,
        };
        let mut rest = rest.iter();
        while let Some(word) = rest.next() {
            match *word {
                "sticky" => fault.sticky = true,
                "under" => {
                    let prefix = rest.next().ok_or("under needs a PREFIX")?;
                    fault.under = Some(normalize_rel(prefix));
                }
                other => return Err(format!("unexpected {other}")),
            }
        }
        Ok(fault)
    }

    fn matches(&self, op: Op, paths: &[&Path]) -> bool {
        op == self.op
            && match &self.under {
                None => true,
                Some(prefix) => paths.iter().any(|p| p.starts_with(prefix)),
            }
    }
}

/// A path relative to the mount root, without leading or trailing slashes or `.`.
pub fn normalize_rel(s: &str) -> PathBuf {
    Path::new(s)
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect()
}

/// Armed faults and per-op call counters.
#[derive(Debug, Default)]
pub struct Faults {
    /// Faults still to fire.
    pub armed: Vec<Fault>,
    /// Calls per op since mount.
    pub counts: BTreeMap<Op, u64>,
}

impl Faults {
    /// Count a call of `op` on `paths` (relative); the fault to inject, if any.
    pub fn hit(&mut self, op: Op, paths: &[&Path]) -> Option<FaultKind> {
        *self.counts.entry(op).or_default() += 1;
        let mut fired = None;
        for fault in &mut self.armed {
            if fault.matches(op, paths) {
                fault.seen += 1;
                if fault.seen == fault.n || (fault.sticky && fault.seen > fault.n) {
                    fired.get_or_insert(fault.kind);
                }
            }
        }
        // A one-shot fault that fired is spent.
        self.armed.retain(|f| f.sticky || f.seen < f.n);
        fired
    }

    /// `stats` reply data: `op=count` for every op, space separated.
    pub fn stats(&self) -> String {
        let mut out = String::new();
        for op in Op::ALL {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(
                out,
                "{}={}",
                op.name(),
                self.counts.get(&op).copied().unwrap_or(0)
            );
        }
        out
    }
}

/// How to undo one directory-entry change (strict mode).
#[derive(Debug)]
pub enum Undo {
    /// Undo a create/link/symlink/mknod: remove `dir/name`.
    Remove {
        /// Parent directory's node.
        dir: u64,
        /// Entry name.
        name: OsString,
    },
    /// Undo a mkdir: move `dir/name` (with whatever it holds now) to the graveyard.
    RemoveDir {
        /// Parent directory's node.
        dir: u64,
        /// Entry name.
        name: OsString,
    },
    /// Undo an unlink/rmdir: move `grave` back to `dir/name` (and give `node` that name again).
    Restore {
        /// Parent directory's node.
        dir: u64,
        /// Entry name.
        name: OsString,
        /// Where the removed object waits.
        grave: PathBuf,
        /// Its node, if known.
        node: Option<u64>,
    },
    /// Undo a rename: move `to` back to `from`, then restore what `to` replaced.
    Rename {
        /// Old parent's node.
        from_dir: u64,
        /// Old name.
        from_name: OsString,
        /// New parent's node.
        to_dir: u64,
        /// New name.
        to_name: OsString,
        /// Where the replaced target waits, and its node.
        replaced: Option<(PathBuf, Option<u64>)>,
    },
}

/// One journaled change: durable once every directory in `dirs` was fsynced after it.
#[derive(Debug)]
pub struct Entry {
    /// How to undo it.
    pub undo: Undo,
    /// (directory inode, fsynced since this change)
    pub dirs: Vec<(u64, bool)>,
}

impl Entry {
    /// Whether the change survives a power loss.
    pub fn durable(&self) -> bool {
        self.dirs.iter().all(|&(_, synced)| synced)
    }

    /// The directory entries (parent node, name) the change touched.
    pub fn names(&self) -> Vec<(u64, &OsStr)> {
        match &self.undo {
            Undo::Remove { dir, name }
            | Undo::RemoveDir { dir, name }
            | Undo::Restore { dir, name, .. } => vec![(*dir, name.as_os_str())],
            Undo::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                ..
            } => vec![
                (*from_dir, from_name.as_os_str()),
                (*to_dir, to_name.as_os_str()),
            ],
        }
    }
}

/// Record an fsync of directory `dir`, then drop every change that is durable from the journal.
///
/// A change is durable once all its directories were fsynced after it, and also (as in a
/// journal that commits in order) when a later durable change touched one of the same names:
/// otherwise a power loss would have to undo a change beneath one that stays, which no real
/// filesystem does (say `rename(x/a, y/b)` with only `y` fsynced, then `unlink(y/b)` and an
/// fsync of `y`). Only cross-directory renames can bring this about; within one directory the
/// fsync rule is already in order.
pub fn fsync_dir(journal: &mut Vec<Entry>, dir: u64) {
    for entry in journal.iter_mut() {
        for (d, synced) in &mut entry.dirs {
            if *d == dir {
                *synced = true;
            }
        }
    }
    let mut pinned: HashSet<(u64, OsString)> = HashSet::new();
    for entry in journal.iter_mut().rev() {
        let forced = !entry.durable()
            && entry
                .names()
                .iter()
                .any(|&(d, n)| pinned.contains(&(d, n.to_owned())));
        if forced {
            for (_, synced) in &mut entry.dirs {
                *synced = true;
            }
        }
        if entry.durable() {
            pinned.extend(entry.names().into_iter().map(|(d, n)| (d, n.to_owned())));
        }
    }
    journal.retain(|e| !e.durable());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(content: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, content).unwrap();
        f
    }

    #[test]
    fn overlay_reads_writes_and_truncates() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file = backing(&content);
        let mut model = content.clone();
        let mut p = Pending::new(content.len() as u64);
        p.write(&file, 4090, b"hello world").unwrap();
        model[4090..4101].copy_from_slice(b"hello world");
        assert_eq!(p.read(&file, 0, 20_000).unwrap(), model);
        p.truncate(5000);
        model.truncate(5000);
        assert_eq!(p.read(&file, 0, 20_000).unwrap(), model);
        p.truncate(9000);
        model.resize(9000, 0);
        assert_eq!(p.read(&file, 0, 20_000).unwrap(), model);
        p.write(&file, 12_000, b"x").unwrap();
        model.resize(12_000, 0);
        model.push(b'x');
        assert_eq!(p.read(&file, 0, 20_000).unwrap(), model);
        assert_eq!(p.read(&file, 4095, 3).unwrap(), &model[4095..4098]);
        // The backing file is untouched until sync.
        let mut now = vec![0; 20_000];
        let n = file.read_at(&mut now, 0).unwrap();
        assert_eq!(&now[..n], &content[..]);
        p.sync_to(&file, true).unwrap();
        let mut now = vec![0; 20_000];
        let n = file.read_at(&mut now, 0).unwrap();
        assert_eq!(&now[..n], &model[..]);
    }

    #[test]
    fn overlay_matches_a_plain_buffer_under_random_operations() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _round in 0..20 {
            let initial: Vec<u8> = (0..rnd(20_000)).map(|i| (i * 7 % 256) as u8).collect();
            let file = backing(&initial);
            let mut synced = initial.clone();
            let mut model = initial.clone();
            let mut p = Pending::new(initial.len() as u64);
            for step in 0..200u64 {
                match rnd(10) {
                    0..=4 => {
                        let off = rnd(24_000);
                        let data: Vec<u8> = (0..rnd(9000)).map(|i| (i + step) as u8).collect();
                        p.write(&file, off, &data).unwrap();
                        let end = off as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    5 | 6 => {
                        let size = rnd(24_000);
                        p.truncate(size);
                        model.resize(size as usize, 0);
                    }
                    7 => {
                        p.sync_to(&file, step % 2 == 0).unwrap();
                        p = Pending::new(model.len() as u64);
                        synced.clone_from(&model);
                    }
                    _ => {
                        let off = rnd(25_000);
                        let len = rnd(10_000);
                        let lo = (off as usize).min(model.len());
                        let hi = ((off + len) as usize).min(model.len());
                        let got = p.read(&file, off, len).unwrap();
                        assert!(got == model[lo..hi], "read {off}+{len} differs");
                    }
                }
                assert_eq!(p.size, model.len() as u64);
                // The backing file always holds the last-synced content.
                std::io::Seek::rewind(&mut &file).unwrap();
                let mut now = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut now).unwrap();
                assert!(now == synced, "backing differs from the synced content");
            }
            assert!(p.read(&file, 0, u64::MAX / 2).unwrap() == model);
        }
    }

    #[test]
    fn faults_count_and_filter() {
        let mut f = Faults::default();
        f.armed
            .push(Fault::parse(&["write", "2", "ENOSPC", "under", "/objects/"]).unwrap());
        let obj = Path::new("objects/ab");
        let tmp = Path::new("tmp/x");
        assert_eq!(f.hit(Op::Write, &[tmp]), None);
        assert_eq!(f.hit(Op::Write, &[obj]), None);
        assert_eq!(f.hit(Op::Write, &[tmp]), None);
        assert!(f.hit(Op::Write, &[obj]).is_some());
        assert_eq!(f.hit(Op::Write, &[obj]), None);
        assert!(f.armed.is_empty());
        f.armed
            .push(Fault::parse(&["fsync", "1", "EIO", "sticky"]).unwrap());
        assert!(f.hit(Op::Fsync, &[obj]).is_some());
        assert!(f.hit(Op::Fsync, &[tmp]).is_some());
        assert!(f.stats().contains("write=5"));
        assert!(Fault::parse(&["fsync", "1", "short"]).is_err());
        assert!(Fault::parse(&["write", "0", "EIO"]).is_err());
    }
}

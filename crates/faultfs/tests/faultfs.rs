//! End-to-end tests: mount faultfs, work through the mount, pull the plug, inspect BACKING.
//!
//! They need root and `/dev/fuse`; without them they skip, or fail when
//! `CAS_REQUIRE_FAULTFS=1`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use faultfs::harness::{available, is_mount_point, Mounted, Settings};
use rustix::io::Errno;

/// A mounted faultfs over a fresh temporary backing directory. Field order matters: the mount
/// goes before the directory holding it.
struct Fx {
    fs: Option<Mounted>,
    dir: tempfile::TempDir,
}

impl Fx {
    fn start(strict: bool) -> Option<Fx> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::new(
            env!("CARGO_BIN_EXE_faultfs"),
            dir.path().join("backing"),
            dir.path().join("mnt"),
        );
        s.strict = strict;
        s.state = Some(dir.path().join("state"));
        let fs = Mounted::start(&s).unwrap();
        Some(Fx { fs: Some(fs), dir })
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.dir.path().join("mnt").join(rel)
    }

    fn b(&self, rel: &str) -> PathBuf {
        self.dir.path().join("backing").join(rel)
    }

    fn ctl(&self, cmd: &str) -> String {
        self.fs.as_ref().unwrap().ctl(cmd).unwrap()
    }

    /// Power loss, then unmount: BACKING is what survived.
    fn crash(&mut self) {
        let reply = self.ctl("powerloss");
        assert!(reply.contains("undo_failed=0"), "{reply}");
        self.fs.take().unwrap().unmount().unwrap();
        assert!(!is_mount_point(&self.m("")), "still mounted");
    }

    fn crash_keep_mounted(&self) {
        self.ctl("powerloss");
    }
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn is(e: &io::Error, want: Errno) -> bool {
    errno(e) == Some(want.raw_os_error())
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn pass_through_round_trip() {
    let Some(fx) = Fx::start(false) else { return };
    fs::write(fx.m("a"), b"hello").unwrap();
    assert_eq!(fs::read(fx.m("a")).unwrap(), b"hello");
    // Appends, overwrites in the middle, reads at offsets.
    let mut f = OpenOptions::new().append(true).open(fx.m("a")).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(fx.m("a")).unwrap(), "hello world");
    assert_eq!(fs::metadata(fx.m("a")).unwrap().len(), 11);

    fs::create_dir(fx.m("d")).unwrap();
    fs::rename(fx.m("a"), fx.m("d/b")).unwrap();
    assert!(!fx.m("a").exists());
    assert_eq!(fs::read(fx.m("d/b")).unwrap(), b"hello world");
    assert!(fx.b("d/b").exists());

    fs::hard_link(fx.m("d/b"), fx.m("c")).unwrap();
    let (mb, mc) = (
        fs::metadata(fx.m("d/b")).unwrap(),
        fs::metadata(fx.m("c")).unwrap(),
    );
    assert_eq!(mb.ino(), mc.ino());
    assert_eq!(mb.nlink(), 2);
    // Unsynced data is visible through every name.
    assert_eq!(fs::read(fx.m("c")).unwrap(), b"hello world");

    let mut names: Vec<String> = fs::read_dir(fx.m(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["c", "d"]);
    for e in fs::read_dir(fx.m("")).unwrap() {
        let e = e.unwrap();
        let ino = std::os::unix::fs::DirEntryExt::ino(&e);
        assert_eq!(ino, fs::symlink_metadata(e.path()).unwrap().ino());
    }

    fs::set_permissions(fx.m("c"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(fx.m("d/b")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(fs::metadata(fx.b("c")).unwrap().mode() & 0o7777, 0o600);

    fs::remove_file(fx.m("d/b")).unwrap();
    assert!(!fx.m("d/b").exists());
    assert_eq!(fs::read(fx.m("c")).unwrap(), b"hello world");
    fs::remove_dir(fx.m("d")).unwrap();
    assert!(!fx.b("d").exists());

    // Truncate, and an extension reads zeros.
    let f = OpenOptions::new().write(true).open(fx.m("c")).unwrap();
    f.set_len(4).unwrap();
    f.set_len(6).unwrap();
    drop(f);
    assert_eq!(fs::read(fx.m("c")).unwrap(), b"hell\0\0");

    // O_EXCL and RENAME_NOREPLACE.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(fx.m("c"))
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    fs::write(fx.m("e"), b"e").unwrap();
    let e = rustix::fs::renameat_with(
        rustix::fs::CWD,
        fx.m("e"),
        rustix::fs::CWD,
        fx.m("c"),
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(e, Errno::EXIST);
    // Plain rename replaces.
    fs::rename(fx.m("e"), fx.m("c")).unwrap();
    assert_eq!(fs::read(fx.m("c")).unwrap(), b"e");

    std::os::unix::fs::symlink("c", fx.m("s")).unwrap();
    assert_eq!(fs::read_link(fx.m("s")).unwrap(), Path::new("c"));
    assert_eq!(fs::read(fx.m("s")).unwrap(), b"e");

    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    File::options()
        .write(true)
        .open(fx.m("c"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(fx.m("c")).unwrap().modified().unwrap(), t);

    rustix::fs::mknodat(
        rustix::fs::CWD,
        fx.m("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert!(rustix::fs::lstat(fx.b("fifo")).is_ok());

    let st = rustix::fs::statfs(fx.m("")).unwrap();
    assert_eq!(st.f_type as u32, 0x6573_5546, "FUSE_SUPER_MAGIC");
}

#[test]
fn fsync_survives_power_loss_and_unsynced_data_does_not() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    write_synced(&fx.m("synced"), b"durable");
    // Overwritten without a sync: the old content comes back.
    write_synced(&fx.m("old"), b"old content");
    fs::write(fx.m("old"), b"new").unwrap();
    assert_eq!(fs::read(fx.m("old")).unwrap(), b"new");
    // Never synced: exists, empty.
    fs::write(fx.m("never"), b"lost").unwrap();
    // Renamed without a sync: the new name exists but is empty.
    fs::write(fx.m("tmp"), b"lost too").unwrap();
    fs::rename(fx.m("tmp"), fx.m("renamed")).unwrap();
    // Synced after the rename, through the new name.
    fs::write(fx.m("tmp2"), b"kept").unwrap();
    fs::rename(fx.m("tmp2"), fx.m("renamed2")).unwrap();
    File::open(fx.m("renamed2")).unwrap().sync_all().unwrap();
    // Synced, then extended without a sync.
    write_synced(&fx.m("grown"), b"base");
    let mut f = OpenOptions::new().append(true).open(fx.m("grown")).unwrap();
    f.write_all(b"+tail").unwrap();
    drop(f);

    fx.crash();
    assert_eq!(fs::read(fx.b("synced")).unwrap(), b"durable");
    assert_eq!(fs::read(fx.b("old")).unwrap(), b"old content");
    assert_eq!(fs::read(fx.b("never")).unwrap(), b"");
    assert!(!fx.b("tmp").exists());
    assert_eq!(fs::read(fx.b("renamed")).unwrap(), b"");
    assert_eq!(fs::read(fx.b("renamed2")).unwrap(), b"kept");
    assert_eq!(fs::read(fx.b("grown")).unwrap(), b"base");
}

#[test]
fn syncfs_does_not_save_data_but_fdatasync_does() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    let mut f = File::create(fx.m("syncfs")).unwrap();
    f.write_all(b"syncfs is no barrier here").unwrap();
    rustix::fs::syncfs(&f).unwrap();
    drop(f);
    let mut g = File::create(fx.m("datasync")).unwrap();
    g.write_all(b"fdatasync is").unwrap();
    g.sync_data().unwrap();
    drop(g);
    fx.crash();
    assert_eq!(fs::read(fx.b("syncfs")).unwrap(), b"");
    assert_eq!(fs::read(fx.b("datasync")).unwrap(), b"fdatasync is");
}

#[test]
fn truncate_is_pending_until_fsync() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    write_synced(&fx.m("t"), b"0123456789");
    // O_TRUNC and a rewrite, unsynced.
    fs::write(fx.m("t"), b"ab").unwrap();
    write_synced(&fx.m("u"), b"0123456789");
    let f = OpenOptions::new().write(true).open(fx.m("u")).unwrap();
    f.set_len(3).unwrap();
    f.sync_all().unwrap();
    fx.crash();
    assert_eq!(fs::read(fx.b("t")).unwrap(), b"0123456789");
    assert_eq!(fs::read(fx.b("u")).unwrap(), b"012");
}

#[test]
fn every_operation_fails_with_eio_after_power_loss() {
    let Some(fx) = Fx::start(false) else { return };
    write_synced(&fx.m("f"), b"x");
    let open = File::open(fx.m("f")).unwrap();
    fx.crash_keep_mounted();
    let eio = |r: io::Result<()>| {
        let e = r.unwrap_err();
        assert!(is(&e, Errno::IO), "{e}");
    };
    eio(fs::read(fx.m("f")).map(drop));
    eio(fs::metadata(fx.m("f")).map(drop));
    eio(fs::write(fx.m("g"), b"y"));
    eio(fs::create_dir(fx.m("d")));
    eio(fs::remove_file(fx.m("f")));
    eio(fs::read_dir(fx.m("")).map(drop));
    eio((&open).read(&mut [0u8; 4]).map(drop));
    eio(open.sync_all());
    eio(rustix::fs::statfs(fx.m("")).map(drop).map_err(Into::into));
}

#[test]
fn strict_created_file_needs_its_directory_fsynced() {
    let Some(mut fx) = Fx::start(true) else {
        return;
    };
    fs::create_dir(fx.m("lost")).unwrap();
    fs::create_dir(fx.m("kept")).unwrap();
    fsync_dir(&fx.m(""));
    write_synced(&fx.m("lost/f"), b"synced data, unsynced name");
    write_synced(&fx.m("kept/f"), b"synced data and name");
    fsync_dir(&fx.m("kept"));
    // A directory never fsynced into its parent goes, with what it holds.
    fs::create_dir(fx.m("newdir")).unwrap();
    write_synced(&fx.m("newdir/f"), b"x");
    fsync_dir(&fx.m("newdir"));
    fx.crash();
    assert!(fx.b("lost").is_dir());
    assert!(!fx.b("lost/f").exists());
    assert_eq!(fs::read(fx.b("kept/f")).unwrap(), b"synced data and name");
    assert!(!fx.b("newdir").exists());
}

#[test]
fn strict_rename_needs_both_parents_fsynced_and_unlink_its_parent() {
    let Some(mut fx) = Fx::start(true) else {
        return;
    };
    for d in ["a", "b", "c", "d"] {
        fs::create_dir(fx.m(d)).unwrap();
    }
    for f in ["a/one", "c/both", "d/gone", "d/back"] {
        write_synced(&fx.m(f), f.as_bytes());
    }
    for d in ["", "a", "b", "c", "d"] {
        fsync_dir(&fx.m(d));
    }
    // Only the new parent fsynced: undone.
    fs::rename(fx.m("a/one"), fx.m("b/one")).unwrap();
    fsync_dir(&fx.m("b"));
    // Both parents fsynced: durable.
    fs::rename(fx.m("c/both"), fx.m("b/both")).unwrap();
    fsync_dir(&fx.m("b"));
    fsync_dir(&fx.m("c"));
    // An unlink is durable once its directory is fsynced ...
    fs::remove_file(fx.m("d/gone")).unwrap();
    fsync_dir(&fx.m("d"));
    // ... and undone otherwise.
    fs::remove_file(fx.m("d/back")).unwrap();
    // A rename after the last fsync is undone even though earlier ones in the same
    // directories were made durable.
    fs::rename(fx.m("b/both"), fx.m("b/both2")).unwrap();
    fx.crash();

    assert_eq!(fs::read(fx.b("a/one")).unwrap(), b"a/one");
    assert!(!fx.b("b/one").exists());
    assert_eq!(fs::read(fx.b("b/both")).unwrap(), b"c/both");
    assert!(!fx.b("c/both").exists());
    assert!(!fx.b("b/both2").exists());
    assert!(!fx.b("d/gone").exists());
    assert_eq!(fs::read(fx.b("d/back")).unwrap(), b"d/back");
}

#[test]
fn other_users_can_use_the_mount_and_own_what_they_create() {
    let Some(fx) = Fx::start(false) else { return };
    fs::create_dir(fx.m("shared")).unwrap();
    fs::set_permissions(fx.m("shared"), fs::Permissions::from_mode(0o777)).unwrap();
    let status = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .arg("-c")
            .arg("echo hi > \"$1\" && mkdir \"$2\" && cat \"$1\" >/dev/null")
            .arg("sh")
            .arg(fx.m("shared/f"))
            .arg(fx.m("shared/d"))
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap()
    };
    assert!(status.success());
    for name in ["shared/f", "shared/d"] {
        let meta = fs::metadata(fx.b(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{name}");
    }
    // The kernel checks permissions (default_permissions): root's 0600 file is closed to them.
    fs::write(fx.m("shared/private"), b"x").unwrap();
    fs::set_permissions(fx.m("shared/private"), fs::Permissions::from_mode(0o600)).unwrap();
    let status = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("cat")
            .arg(fx.m("shared/private"))
            .stderr(std::process::Stdio::null())
            .uid(65534)
            .gid(65534)
            .status()
            .unwrap()
    };
    assert!(!status.success());
}

#[test]
fn strict_unsynced_rename_unlink_and_replace_come_back() {
    let Some(mut fx) = Fx::start(true) else {
        return;
    };
    write_synced(&fx.m("x"), b"x");
    write_synced(&fx.m("y"), b"y");
    write_synced(&fx.m("z"), b"z");
    fsync_dir(&fx.m(""));
    fs::rename(fx.m("x"), fx.m("x2")).unwrap();
    fs::remove_file(fx.m("y")).unwrap();
    fs::rename(fx.m("z"), fx.m("x2")).unwrap(); // replaces x2 (was x)
    fs::write(fx.m("new"), b"new").unwrap();
    fx.crash();
    assert_eq!(fs::read(fx.b("x")).unwrap(), b"x");
    assert_eq!(fs::read(fx.b("y")).unwrap(), b"y");
    assert_eq!(fs::read(fx.b("z")).unwrap(), b"z");
    assert!(!fx.b("x2").exists());
    assert!(!fx.b("new").exists());
}

#[test]
fn nth_write_fails_with_enospc_and_short_writes_are_short() {
    let Some(fx) = Fx::start(false) else { return };
    let mut f = File::create(fx.m("f")).unwrap();
    fx.ctl("fault write 2 ENOSPC");
    f.write_all(b"one").unwrap();
    let e = f.write_all(b"two").unwrap_err();
    assert!(is(&e, Errno::NOSPC), "{e}");
    f.write_all(b"three").unwrap();
    fx.ctl("fault write 1 short");
    assert_eq!(f.write(b"0123456789").unwrap(), 5);
    drop(f);
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"onethree01234");
}

#[test]
fn fsync_rename_and_filtered_faults() {
    let Some(fx) = Fx::start(false) else { return };
    fs::create_dir(fx.m("tmp")).unwrap();
    fs::create_dir(fx.m("objects")).unwrap();
    let f = File::create(fx.m("tmp/a")).unwrap();
    fx.ctl("fault fsync 1 EIO");
    assert!(is(&f.sync_all().unwrap_err(), Errno::IO));
    f.sync_all().unwrap();

    fx.ctl("fault rename 1 EIO");
    assert!(is(
        &fs::rename(fx.m("tmp/a"), fx.m("tmp/b")).unwrap_err(),
        Errno::IO
    ));
    assert!(fx.m("tmp/a").exists());

    // Only creates under objects/ count.
    fx.ctl("fault create 2 EDQUOT under objects/");
    File::create(fx.m("objects/1")).unwrap();
    File::create(fx.m("tmp/2")).unwrap();
    File::create(fx.m("tmp/3")).unwrap();
    let e = File::create(fx.m("objects/4")).unwrap_err();
    assert!(is(&e, Errno::DQUOT), "{e}");
    File::create(fx.m("objects/5")).unwrap();

    // A rename counts when either name is under the prefix; sticky until clear.
    fx.ctl("fault rename 1 ENOSPC sticky under objects");
    fs::rename(fx.m("tmp/2"), fx.m("tmp/22")).unwrap();
    assert!(is(
        &fs::rename(fx.m("tmp/a"), fx.m("objects/a")).unwrap_err(),
        Errno::NOSPC
    ));
    assert!(is(
        &fs::rename(fx.m("tmp/a"), fx.m("objects/a")).unwrap_err(),
        Errno::NOSPC
    ));
    fx.ctl("clear");
    fs::rename(fx.m("tmp/a"), fx.m("objects/a")).unwrap();

    fx.ctl("fault unlink 1 EIO");
    assert!(is(&fs::remove_file(fx.m("tmp/3")).unwrap_err(), Errno::IO));
    fx.ctl("fault mkdir 1 ENOSPC");
    assert!(is(&fs::create_dir(fx.m("d")).unwrap_err(), Errno::NOSPC));
    // A file counts as under the prefix through any of its names.
    fx.ctl("fault write 1 EIO under objects");
    let mut w = OpenOptions::new().write(true).open(fx.m("tmp/3")).unwrap();
    w.write_all(b"fine").unwrap();
    fs::hard_link(fx.m("tmp/3"), fx.m("objects/3")).unwrap();
    assert!(is(&w.write_all(b"not").unwrap_err(), Errno::IO));
    drop(w);
    // The other faultable calls.
    fx.ctl("fault open 1 EACCES");
    assert!(is(&File::open(fx.m("tmp/3")).unwrap_err(), Errno::ACCESS));
    let mut r = File::open(fx.m("tmp/3")).unwrap();
    fx.ctl("fault read 1 EIO");
    assert!(is(&r.read(&mut [0u8; 4]).unwrap_err(), Errno::IO));
    fx.ctl("fault setattr 1 EPERM");
    assert!(is(
        &fs::set_permissions(fx.m("tmp/3"), fs::Permissions::from_mode(0o600)).unwrap_err(),
        Errno::PERM
    ));
    fx.ctl("fault fsyncdir 1 EIO");
    assert!(is(
        &File::open(fx.m("tmp")).unwrap().sync_all().unwrap_err(),
        Errno::IO
    ));
    fx.ctl("fault rmdir 1 EROFS");
    assert!(is(
        &fs::remove_dir(fx.m("objects")).unwrap_err(),
        Errno::ROFS
    ));
    fx.ctl("fault symlink 1 ENOSPC");
    assert!(is(
        &std::os::unix::fs::symlink("x", fx.m("sym")).unwrap_err(),
        Errno::NOSPC
    ));

    fx.ctl("fault link 1 EIO");
    assert!(is(
        &fs::hard_link(fx.m("tmp/3"), fx.m("l")).unwrap_err(),
        Errno::IO
    ));
}

#[test]
fn stats_and_protocol_errors() {
    let Some(fx) = Fx::start(false) else { return };
    let writes = |s: &str| -> u64 {
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix("write="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = writes(&fx.ctl("stats"));
    let mut f = File::create(fx.m("f")).unwrap();
    f.write_all(b"a").unwrap();
    f.write_all(b"b").unwrap();
    drop(f);
    assert_eq!(writes(&fx.ctl("stats")) - before, 2);
    let m = fx.fs.as_ref().unwrap();
    assert!(m.ctl("fault nosuchop 1 EIO").is_err());
    assert!(m.ctl("fault fsync 1 short").is_err());
    assert!(m.ctl("bogus").is_err());
    assert_eq!(fx.ctl("ping"), "ok");
    // The command-line client.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .arg("ctl")
        .arg(m.socket())
        .arg("ping")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"ok\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .arg("ctl")
        .arg(m.socket())
        .args(["fault", "write", "x", "EIO"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn dropping_the_guard_unmounts_even_with_files_open() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    fs::write(fx.m("f"), b"x").unwrap();
    let open = File::open(fx.m("f")).unwrap();
    assert!(is_mount_point(&fx.m("")));
    drop(fx.fs.take());
    assert!(!is_mount_point(&fx.m("")), "still mounted");
    let e = (&open).read(&mut [0u8; 1]).unwrap_err();
    assert!(is(&e, Errno::NOTCONN), "{e}");
}

/// Random writes, truncates, fsyncs, renames and reads through the mount agree with a plain
/// model; after the power loss each name holds exactly its file's last-synced content.
#[test]
fn random_operations_match_a_model_and_only_synced_data_survives() {
    struct Inode {
        now: Vec<u8>,
        synced: Vec<u8>,
    }
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    let mut seed = std::env::var("FAULTFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2545_f491_4f6c_dd1d_u64)
        | 1;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let names = ["a", "b", "c", "d"];
    let mut inodes: Vec<Inode> = Vec::new();
    // name -> index into inodes
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for step in 0..400u64 {
        let name = names[rnd(4) as usize];
        let path = fx.m(name);
        let Some(&i) = at.get(name) else {
            File::create(&path).unwrap();
            inodes.push(Inode {
                now: Vec::new(),
                synced: Vec::new(),
            });
            at.insert(name, inodes.len() - 1);
            continue;
        };
        match rnd(8) {
            0..=2 => {
                let off = rnd(20_000);
                let data: Vec<u8> = (0..=rnd(9000)).map(|x| (x ^ step) as u8).collect();
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, &data, off).unwrap();
                let m = &mut inodes[i].now;
                let end = off as usize + data.len();
                if m.len() < end {
                    m.resize(end, 0);
                }
                m[off as usize..end].copy_from_slice(&data);
            }
            3 => {
                let size = rnd(20_000);
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(size)
                    .unwrap();
                inodes[i].now.resize(size as usize, 0);
            }
            4 => {
                let f = File::open(&path).unwrap();
                if step % 2 == 0 {
                    f.sync_all().unwrap();
                } else {
                    f.sync_data().unwrap();
                }
                let inode = &mut inodes[i];
                inode.synced.clone_from(&inode.now);
            }
            5 => {
                let to = names[rnd(4) as usize];
                fs::rename(&path, fx.m(to)).unwrap();
                at.remove(name);
                at.insert(to, i);
            }
            _ => {
                let got = fs::read(&path).unwrap();
                assert!(got == inodes[i].now, "step {step}: {name} differs");
                assert_eq!(
                    fs::metadata(&path).unwrap().len(),
                    inodes[i].now.len() as u64
                );
            }
        }
    }
    fx.crash();
    let mut left: Vec<String> = fs::read_dir(fx.b(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected: Vec<String> = at.keys().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(left, expected);
    for (name, &i) in &at {
        let got = fs::read(fx.b(name)).unwrap();
        assert!(
            got == inodes[i].synced,
            "{name}: not its last-synced content"
        );
    }
}

#[test]
fn strict_undoes_link_symlink_mkdir_and_rmdir_but_keeps_fsynced_ones() {
    let Some(mut fx) = Fx::start(true) else {
        return;
    };
    write_synced(&fx.m("f"), b"f");
    fs::create_dir(fx.m("empty")).unwrap();
    fs::create_dir(fx.m("kept")).unwrap();
    fsync_dir(&fx.m(""));
    // Durable: in kept/, fsynced afterwards.
    fs::hard_link(fx.m("f"), fx.m("kept/link")).unwrap();
    std::os::unix::fs::symlink("../f", fx.m("kept/sym")).unwrap();
    fsync_dir(&fx.m("kept"));
    // Not durable: the root is not fsynced again.
    fs::hard_link(fx.m("f"), fx.m("link")).unwrap();
    std::os::unix::fs::symlink("f", fx.m("sym")).unwrap();
    fs::create_dir(fx.m("newdir")).unwrap();
    fs::remove_dir(fx.m("empty")).unwrap();
    assert_eq!(fs::metadata(fx.m("f")).unwrap().nlink(), 3);
    fx.crash();
    assert_eq!(fs::read(fx.b("kept/link")).unwrap(), b"f");
    assert_eq!(fs::read_link(fx.b("kept/sym")).unwrap(), Path::new("../f"));
    assert!(!fx.b("link").exists());
    assert!(fs::symlink_metadata(fx.b("sym")).is_err());
    assert!(!fx.b("newdir").exists());
    assert!(fx.b("empty").is_dir());
    assert_eq!(fs::metadata(fx.b("f")).unwrap().nlink(), 2);
}

#[test]
fn utimens_now_and_omit() {
    let Some(fx) = Fx::start(false) else { return };
    fs::write(fx.m("f"), b"x").unwrap();
    let ts = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let set = |atime, mtime| {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            fx.m("f"),
            &rustix::fs::Timestamps {
                last_access: atime,
                last_modification: mtime,
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    };
    set(ts(1_000, 0), ts(2_000, 5));
    let m = fs::metadata(fx.m("f")).unwrap();
    assert_eq!((m.atime(), m.mtime(), m.mtime_nsec()), (1_000, 2_000, 5));
    // OMIT leaves atime; NOW moves mtime to the present.
    set(ts(0, rustix::fs::UTIME_OMIT), ts(0, rustix::fs::UTIME_NOW));
    let m = fs::metadata(fx.m("f")).unwrap();
    assert_eq!(m.atime(), 1_000);
    assert!(m.mtime() > 1_600_000_000);
    assert_eq!(fs::metadata(fx.b("f")).unwrap().atime(), 1_000);
}

/// Power loss while several writers run: it falls between two operations, so each file holds
/// exactly the content of the last fsync its writer saw succeed.
#[test]
fn power_loss_during_concurrent_writers_keeps_exactly_the_acknowledged_syncs() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    let started = std::sync::Barrier::new(5);
    let acked: Vec<(PathBuf, Vec<u8>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u8)
            .map(|w| {
                let path = fx.m(&format!("w{w}"));
                let started = &started;
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut f = File::create(&path).unwrap();
                    let mut content = Vec::new();
                    for round in 0u32.. {
                        if round == 20 {
                            started.wait();
                        }
                        let chunk = format!("{w}:{round};").into_bytes();
                        if f.write_all(&chunk).is_err() {
                            break;
                        }
                        content.extend_from_slice(&chunk);
                        if round % 3 == 0 {
                            match f.sync_data() {
                                Ok(()) => acked.clone_from(&content),
                                Err(e) => {
                                    assert!(is(&e, Errno::IO), "{e}");
                                    break;
                                }
                            }
                        }
                        assert!(round < 1_000_000, "power loss never came");
                    }
                    (path, acked)
                })
            })
            .collect();
        started.wait();
        fx.ctl("powerloss");
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    fx.fs.take().unwrap().unmount().unwrap();
    for (path, acked) in acked {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(!acked.is_empty());
        let got = fs::read(fx.b(name)).unwrap();
        assert!(
            got == acked,
            "{name}: {} bytes, acknowledged {}",
            got.len(),
            acked.len()
        );
    }
}

#[test]
fn unmount_command_replies_ok_then_the_process_exits() {
    let Some(mut fx) = Fx::start(false) else {
        return;
    };
    fs::write(fx.m("f"), b"x").unwrap();
    let socket = fx.fs.as_ref().unwrap().socket().to_path_buf();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_faultfs"))
        .arg("ctl")
        .arg(&socket)
        .arg("unmount")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert!(out.status.success());
    assert!(!is_mount_point(&fx.m("")));
    // The guard finds the process gone and the mount already removed.
    fx.fs.take().unwrap().unmount().unwrap();
    assert!(!socket.exists());
}

/// Strict mode under random creates, unlinks, renames (within and across directories,
/// replacing or not) and directory fsyncs: after the power loss BACKING holds exactly the
/// namespace that the rule "a change survives once all its directories were fsynced after
/// it, or a later surviving change touched the same name" gives, undoing the others newest
/// first.
#[test]
#[allow(clippy::too_many_lines)] // one workload, its model and the check read best together
fn strict_random_namespace_changes_match_the_durability_rule() {
    use std::collections::BTreeMap;
    enum Undo {
        Remove(usize, String),
        Restore(usize, String, u64),
        Rename(usize, String, usize, String, Option<u64>),
    }
    let Some(mut fx) = Fx::start(true) else {
        return;
    };
    let dirs = ["", "x", "y"];
    for d in &dirs[1..] {
        fs::create_dir(fx.m(d)).unwrap();
    }
    fsync_dir(&fx.m(""));
    // FAULTFS_SEED=N replays another sequence.
    let mut seed = std::env::var("FAULTFS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1234_5678_9abc_def1_u64)
        | 1;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let path = |d: usize, n: &str| fx.m(dirs[d]).join(n);
    let mut names: BTreeMap<(usize, String), u64> = BTreeMap::new();
    let mut journal: Vec<(Undo, Vec<(usize, bool)>)> = Vec::new();
    let mut next_id = 0u64;
    for _ in 0..300 {
        let d = rnd(3) as usize;
        let n = format!("n{}", rnd(4));
        match rnd(6) {
            0 | 1 => {
                if names.contains_key(&(d, n.clone())) {
                    continue;
                }
                next_id += 1;
                write_synced(&path(d, &n), format!("file {next_id}").as_bytes());
                names.insert((d, n.clone()), next_id);
                journal.push((Undo::Remove(d, n), vec![(d, false)]));
            }
            2 => {
                let Some(id) = names.remove(&(d, n.clone())) else {
                    continue;
                };
                fs::remove_file(path(d, &n)).unwrap();
                journal.push((Undo::Restore(d, n, id), vec![(d, false)]));
            }
            3 | 4 => {
                let (d2, n2) = (rnd(3) as usize, format!("n{}", rnd(4)));
                if (d, &n) == (d2, &n2) {
                    continue;
                }
                let Some(id) = names.remove(&(d, n.clone())) else {
                    continue;
                };
                fs::rename(path(d, &n), path(d2, &n2)).unwrap();
                let replaced = names.insert((d2, n2.clone()), id);
                let mut ds = vec![(d, false)];
                if d2 != d {
                    ds.push((d2, false));
                }
                journal.push((Undo::Rename(d, n, d2, n2, replaced), ds));
            }
            _ => {
                fsync_dir(&fx.m(dirs[d]));
                for (_, ds) in &mut journal {
                    for (dd, synced) in ds.iter_mut() {
                        if *dd == d {
                            *synced = true;
                        }
                    }
                }
                // A change beneath a later durable change to the same name is durable too.
                let mut pinned: Vec<(usize, String)> = Vec::new();
                for (undo, ds) in journal.iter_mut().rev() {
                    let keys = match undo {
                        Undo::Remove(d, n) | Undo::Restore(d, n, _) => vec![(*d, n.clone())],
                        Undo::Rename(d, n, d2, n2, _) => {
                            vec![(*d, n.clone()), (*d2, n2.clone())]
                        }
                    };
                    if keys.iter().any(|k| pinned.contains(k)) {
                        for (_, s) in ds.iter_mut() {
                            *s = true;
                        }
                    }
                    if ds.iter().all(|&(_, s)| s) {
                        pinned.extend(keys);
                    }
                }
                journal.retain(|(_, ds)| !ds.iter().all(|&(_, s)| s));
            }
        }
    }
    fx.crash();
    for (undo, _) in journal.into_iter().rev() {
        match undo {
            Undo::Remove(d, n) => {
                names.remove(&(d, n));
            }
            Undo::Restore(d, n, id) => {
                names.insert((d, n), id);
            }
            Undo::Rename(d, n, d2, n2, replaced) => {
                let id = names.remove(&(d2, n2.clone())).unwrap();
                names.insert((d, n), id);
                if let Some(r) = replaced {
                    names.insert((d2, n2), r);
                }
            }
        }
    }
    let mut got: BTreeMap<(usize, String), u64> = BTreeMap::new();
    for (i, d) in dirs.iter().enumerate() {
        for e in fs::read_dir(fx.b(d)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                continue;
            }
            let content = fs::read_to_string(e.path()).unwrap();
            let id = content.strip_prefix("file ").unwrap().parse().unwrap();
            got.insert((i, e.file_name().into_string().unwrap()), id);
        }
    }
    assert_eq!(got, names);
}

//! A store that cannot be turned against its users (issue 10): each test plants what another
//! user of a shared store could plant — symlinks, FIFOs, garbage, truncations, a full disk —
//! and runs the real `cas` binary against it. Every test fails on the code before the issue
//! (cases 1–11 of the issue, named in each test's doc).
//!
//! Commands that could hang (a FIFO read by a blocking open) run with a bound: killed after
//! 30 s, which fails the test. Tests that need root (a second user, a tmpfs mount) skip with a
//! message when not root, and fail instead when `CAS_REQUIRE_ROOT_TESTS=1` (as in CI; the older
//! `CAS_REQUIRE_CLUSTER=1` also still counts).

use crate::common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use cas::{Hash, Tree, TreeEntry, TreeEntryKind, TREE_MAGIC};
use common::{
    blake3_hex, cas, cas_at, data, files_under, json_out, names_in, run, run_ok, set_mtime, text,
    Store,
};

/// How long any single `cas` command may take before it counts as hung.
const BOUND: Duration = Duration::from_secs(30);

/// Runs `cmd` with a bound: a command still running after [`BOUND`] is killed and the test
/// fails naming `what`.
fn run_bounded(cmd: &mut Command, what: &str) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(BOUND) {
        return out.expect("wait for cas");
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    let _ = rx.recv();
    panic!("{what}: cas hung (killed after {} s)", BOUND.as_secs());
}

/// Asserts a clean failure: exit status 1, a message (on stderr, or a report on stdout), no
/// panic. Returns both, stderr first.
fn fails(out: &Output, what: &str) -> String {
    let err = format!("{}{}", text(&out.stderr), text(&out.stdout));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, got {} (stderr: {err}, stdout: {})",
        out.status,
        text(&out.stdout)
    );
    assert!(
        !err.contains("panicked") && !err.trim().is_empty(),
        "{what}: {err}"
    );
    err
}

fn ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
}

/// Replaces whatever is at `p` (file or directory) with a symlink to `target`.
fn replace_with_symlink(p: &Path, target: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(target, p).unwrap();
}

/// True if the test may go on (see `common::root_prerequisite`: skipped with a message, or a
/// failure under `CAS_REQUIRE_ROOT_TESTS=1` as in CI).
fn prerequisite(ok: bool, what: &str) -> bool {
    common::root_prerequisite(ok, what)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Two unprivileged users whose primary group is one shared group.
#[derive(Debug, Clone, Copy)]
struct Users {
    a: (u32, u32),
    b: (u32, u32),
    gid: u32,
}

const GROUP: &str = "cas-hostile";

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    out.status
        .success()
        .then(|| text(&out.stdout).trim().parse().ok())
        .flatten()
}

fn getent_gid(group: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .ok()?;
    text(&out.stdout).split(':').nth(2)?.trim().parse().ok()
}

/// Creates (once) the group and the users `cas-hostile-a`, `cas-hostile-b`. `None` when that
/// is impossible (not root, no `useradd`).
fn users() -> Option<Users> {
    static USERS: std::sync::OnceLock<Option<Users>> = std::sync::OnceLock::new();
    *USERS.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let _users = common::user_db();
        if getent_gid(GROUP).is_none() {
            let _ = Command::new("groupadd").arg(GROUP).status();
        }
        let gid = getent_gid(GROUP)?;
        let mut ids = Vec::new();
        for name in ["cas-hostile-a", "cas-hostile-b"] {
            if id_of(&["-u", name]).is_none() {
                let _ = Command::new("useradd")
                    .args(["-M", "-N", "-g", GROUP, "-s", "/bin/false", name])
                    .status();
            }
            ids.push(id_of(&["-u", name])?);
        }
        Some(Users {
            a: (ids[0], gid),
            b: (ids[1], gid),
            gid,
        })
    })
}

/// A `cas` command run as `user` (uid, gid), with no supplementary groups.
fn cas_as(store: &Path, user: (u32, u32)) -> Command {
    let mut c = cas_at(store);
    c.env("USER", format!("uid{}", user.0))
        .uid(user.0)
        .gid(user.1);
    c
}

/// Lets other users traverse the fixture's temporary directory (tempfile makes it 0700).
fn open_up(s: &Store) {
    fs::set_permissions(s.base(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&s.scratch, fs::Permissions::from_mode(0o777)).unwrap();
}

fn hash(hex: &str) -> Hash {
    Hash::parse(hex).unwrap()
}

fn put_tree(s: &Store, entries: Vec<TreeEntry>) -> String {
    s.put(&Tree { entries }.encode())
}

fn link(name: &str, target: &str) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.as_bytes().to_vec(),
        kind: TreeEntryKind::Symlink {
            target: target.as_bytes().to_vec(),
        },
    }
}

fn dir(name: &str, hex: &str) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.as_bytes().to_vec(),
        kind: TreeEntryKind::Dir { hash: hash(hex) },
    }
}

fn file(name: &str, hex: &str, size: u64) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.as_bytes().to_vec(),
        kind: TreeEntryKind::File {
            executable: false,
            size,
            hash: hash(hex),
        },
    }
}

/// Case 1: with `tmp/` replaced by a symlink to another user's directory, gc deleted old files
/// there. Now nothing outside the store is touched; and in a real `tmp/`, only regular files
/// with staging names are removed — never a foreign file, never through a link.
#[test]
fn gc_never_deletes_through_a_symlinked_tmp_or_foreign_files() {
    let s = Store::new();
    let victim = s.scratch.join("victim");
    fs::create_dir(&victim).unwrap();
    let files = [victim.join("old.txt"), victim.join("otherhost.1.abc")];
    for f in &files {
        fs::write(f, b"precious").unwrap();
        set_mtime(f, ago(3 * 86_400));
    }
    replace_with_symlink(&s.tmp(), &victim);
    let out = run_bounded(
        cas(&s).args(["gc", "--grace", "0s"]),
        "gc with tmp -> victim",
    );
    for f in &files {
        assert_eq!(
            fs::read(f).ok().as_deref(),
            Some(&b"precious"[..]),
            "gc deleted or changed {} outside the store (exit {}, stderr {})",
            f.display(),
            out.status,
            text(&out.stderr)
        );
    }
    let left: Vec<_> = fs::read_dir(&victim).unwrap().collect();
    assert_eq!(
        left.len(),
        2,
        "gc created files outside the store: {left:?}"
    );

    // A real tmp/ with things cas never made, all old.
    fs::remove_file(s.tmp()).unwrap();
    fs::create_dir(s.tmp()).unwrap();
    let foreign = s.tmp().join("notes.txt");
    fs::write(&foreign, b"not a staging file").unwrap();
    set_mtime(&foreign, ago(3 * 86_400));
    let outside = s.scratch.join("outside-old");
    fs::write(&outside, b"x").unwrap();
    set_mtime(&outside, ago(3 * 86_400));
    std::os::unix::fs::symlink(&outside, s.tmp().join("otherhost.2.link")).unwrap();
    fs::create_dir(s.tmp().join("otherhost.3.dir")).unwrap();
    let old_staging = s.tmp().join("otherhost.4.abcdef");
    fs::write(&old_staging, b"abandoned upload").unwrap();
    set_mtime(&old_staging, ago(3 * 86_400));
    run_bounded(
        cas(&s).args(["gc", "--grace", "0s"]),
        "gc with a planted tmp/",
    );
    assert!(
        foreign.exists(),
        "gc removed a file whose name is not a staging name"
    );
    assert!(
        outside.exists(),
        "gc removed the target of a symlink in tmp/"
    );
    assert!(s.tmp().join("otherhost.3.dir").is_dir());
    assert!(!old_staging.exists(), "a stale staging file was kept");
}

/// Case 2a: `ref set` appended its reflog line to the target of a symlink planted at
/// `logs/refs/main` (think `~/.bashrc`). Now the update is refused before anything changes.
#[test]
fn ref_set_never_appends_through_a_symlinked_reflog() {
    let s = Store::new();
    let h1 = s.put(b"one");
    let h2 = s.put(b"two");
    run_ok(cas(&s).args(["ref", "set", "main", &h1]));
    let bashrc = s.scratch.join("bashrc");
    fs::write(&bashrc, b"# my shell setup\n").unwrap();
    replace_with_symlink(&s.root.join("logs/refs/main"), &bashrc);
    let out = run_bounded(cas(&s).args(["ref", "set", "main", &h2]), "ref set");
    let err = fails(&out, "ref set through a symlinked reflog");
    assert!(err.contains("reflog"), "{err}");
    assert_eq!(fs::read(&bashrc).unwrap(), b"# my shell setup\n");
    assert_eq!(run_ok(cas(&s).args(["ref", "get", "main"])).trim(), h1);
}

/// Case 2b: a symlinked `refs/team` made `ref set team/notes` create its lock and ref in the
/// link's target.
#[test]
fn ref_set_never_writes_through_a_symlinked_ref_directory() {
    let s = Store::new();
    let h = s.put(b"notes");
    let elsewhere = s.scratch.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.root.join("refs/team")).unwrap();
    let out = run_bounded(cas(&s).args(["ref", "set", "team/notes", &h]), "ref set");
    fails(&out, "ref set under a symlinked directory");
    assert!(
        files_under(&elsewhere).is_empty(),
        "cas wrote outside the store: {:?}",
        files_under(&elsewhere)
    );
    // Listing refs reports the link (by path, exit 1) instead of following it, and still
    // lists the refs beside it.
    run_ok(cas(&s).args(["ref", "set", "other", &h]));
    let out = run_bounded(cas(&s).args(["ref", "ls"]), "ref ls");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "ref ls passed over a symlinked ref directory:\n{stdout}{stderr}"
    );
    assert!(
        stderr.contains(&*s.root.join("refs/team").to_string_lossy()),
        "the symlink is not named by path: {stderr}"
    );
    assert_eq!(stdout, format!("other {h}\n"), "ref ls listed: {stdout}");
}

/// Case 2c: a symlinked `quarantine/` made verify move a corrupt object out of the store.
#[test]
fn verify_never_quarantines_outside_the_store() {
    let s = Store::new();
    let h = s.put(&data(5000, 1));
    let p = s.object_path(&h);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, b"damaged").unwrap();
    let away = s.scratch.join("away");
    fs::create_dir(&away).unwrap();
    replace_with_symlink(&s.quarantine(), &away);
    let out = run_bounded(cas(&s).args(["verify", "--json"]), "verify");
    fails(&out, "verify of a corrupt object");
    let r = json_out(&out, "verify");
    assert_eq!(r["corrupt"][0]["hash"], h, "{r}");
    assert!(
        files_under(&away).is_empty(),
        "verify moved an object out of the store"
    );
}

/// Case 3: the "points outside" check was lexical, so `x -> .` and
/// `passwd -> x/x/x/../../../etc/passwd` restored with exit 0 and `out/passwd` resolved to
/// /etc/passwd. Now links are resolved through the tree's own links: chains, `..` after a
/// link, links to links and links named before the link they go through are refused; the
/// opt-in restores them verbatim; `put -r` warns about such links.
#[test]
fn restore_resolves_symlinks_through_the_tree_it_restores() {
    let s = Store::new();
    let up = put_tree(&s, vec![link("up", "..")]);
    let cases: Vec<(&str, Vec<TreeEntry>)> = vec![
        (
            "x -> . chain",
            vec![link("passwd", "x/x/x/../../../etc/passwd"), link("x", ".")],
        ),
        (
            "link named before the link it goes through",
            vec![link("a", "b/x/../../etc"), link("b", ".")],
        ),
        (
            "links to links",
            vec![dir("d", &up), link("e", "d/up/.."), link("f", "e")],
        ),
        ("loop", vec![link("l1", "l2"), link("l2", "l1")]),
    ];
    let base = s.scratch.join("restores");
    fs::create_dir(&base).unwrap();
    for (what, entries) in cases {
        let t = put_tree(&s, entries);
        let dest = base.join("out");
        let out = run_bounded(
            cas(&s).args(["get", "-r", &t, "-o", dest.to_str().unwrap()]),
            what,
        );
        fails(&out, what);
        assert!(!dest.exists(), "{what}: a destination was left");
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0, "{what}: leftovers");
    }

    // The opt-in restores links verbatim, as tar does.
    let t = put_tree(
        &s,
        vec![link("passwd", "x/x/x/../../../etc/passwd"), link("x", ".")],
    );
    let dest = base.join("trusted");
    run_ok(cas(&s).args([
        "get",
        "-r",
        &t,
        "-o",
        dest.to_str().unwrap(),
        "--allow-external-symlinks",
    ]));
    assert_eq!(
        fs::read_link(dest.join("passwd")).unwrap(),
        Path::new("x/x/x/../../../etc/passwd")
    );

    // Links inside the tree, through other links, restore fine.
    let inner = put_tree(&s, vec![link("sib", "../x/f")]);
    let f = s.put(b"f");
    let x = put_tree(&s, vec![file("f", &f, 1)]);
    let t = put_tree(&s, vec![dir("d", &inner), link("l", "d/sib"), dir("x", &x)]);
    let dest = base.join("ok");
    run_ok(cas(&s).args(["get", "-r", &t, "-o", dest.to_str().unwrap()]));
    assert_eq!(fs::read(dest.join("l")).unwrap(), b"f");

    // put -r says how many links point outside, with an example.
    let src = s.scratch.join("src");
    fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("../..", src.join("up")).unwrap();
    std::os::unix::fs::symlink("abs", src.join("via")).unwrap();
    let out = run(cas(&s).args(["put", "-r", src.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("3 symlink") && err.contains("abs"),
        "no warning about external symlinks: {err}"
    );
}

/// Case 4: a FIFO anywhere cas reads hung it forever: at an object name (get, verify, gc,
/// doctor), a ref, a lock, a cache entry, FORMAT. Now each is refused at once, naming it.
#[test]
fn fifos_never_hang_cas() {
    let s = Store::new();
    let h = s.put(b"soon a fifo");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    let p = s.object_path(&h);
    fs::remove_file(&p).unwrap();
    mkfifo(&p);
    // verify last: it moves the FIFO to quarantine.
    for args in [
        vec!["get", h.as_str()],
        vec!["gc", "--grace", "0s"],
        vec!["doctor"],
        vec!["verify"],
    ] {
        let what = format!("cas {} with a FIFO at an object name", args.join(" "));
        let out = run_bounded(cas(&s).args(&args), &what);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{what}: exit 0\n{all}");
        assert!(all.contains("FIFO"), "{what}: the FIFO is not named\n{all}");
    }

    let s = Store::new();
    let h = s.put(b"x");
    mkfifo(&s.root.join("refs/fifo"));
    let out = run_bounded(cas(&s).args(["ref", "get", "fifo"]), "ref get of a FIFO");
    assert!(fails(&out, "ref get").contains("FIFO"));
    let out = run_bounded(cas(&s).args(["ref", "ls"]), "ref ls with a FIFO");
    assert!(fails(&out, "ref ls").contains("FIFO"));
    mkfifo(&s.root.join("refs/main.lock"));
    let out = run_bounded(cas(&s).args(["ref", "set", "main", &h]), "FIFO lock");
    fails(&out, "ref set with a FIFO lock");

    let e = s.entry_file("k");
    fs::create_dir_all(e.parent().unwrap()).unwrap();
    mkfifo(&e);
    let out = run_bounded(cas(&s).args(["key", "get", "k"]), "FIFO entry");
    assert!(fails(&out, "key get").contains("FIFO"));

    fs::remove_file(s.root.join("FORMAT")).unwrap();
    mkfifo(&s.root.join("FORMAT"));
    let out = run_bounded(cas(&s).arg("stats"), "FIFO FORMAT");
    assert!(fails(&out, "stats").contains("FIFO"));
}

/// Case 5: a lock file holding bytes that are not UTF-8 made ref set, gc, verify and
/// doctor --fix fail for good. It is an incomplete lock: broken once older than the lease.
#[test]
fn a_lock_of_non_utf8_bytes_is_an_incomplete_lock() {
    let s = Store::new();
    let h = s.put(b"v");
    let garbage: &[u8] = b"\xff\xfe\x00garbage\xc3\n";
    for l in ["refs/main.lock", "refs/other.lock", "locks/gc.lock"] {
        let p = s.root.join(l);
        fs::write(&p, garbage).unwrap();
        set_mtime(&p, ago(7200));
    }
    run_bounded(cas(&s).args(["ref", "set", "main", &h]), "ref set");
    assert_eq!(run_ok(cas(&s).args(["ref", "get", "main"])).trim(), h);
    let out = run_bounded(cas(&s).args(["gc", "--grace", "0s"]), "gc");
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    let out = run_bounded(cas(&s).arg("verify"), "verify");
    assert!(out.status.success(), "verify: {}", text(&out.stdout));
    let out = run_bounded(cas(&s).args(["doctor", "--fix"]), "doctor --fix");
    assert!(out.status.success(), "doctor --fix: {}", text(&out.stdout));
    assert!(text(&out.stdout).contains("broke expired lock"));
    assert!(!s.root.join("refs/other.lock").exists());
}

/// Case 6: one damaged item stopped everything: a ref holding garbage (or a symlink at an
/// object name) made verify, gc and doctor abort, and `ref set` could not replace the garbage.
/// Now each reports every damaged item and goes on; gc condemns nothing it cannot prove
/// unreachable.
#[test]
fn one_damaged_item_does_not_stop_verify_gc_or_doctor() {
    let s = Store::new();
    let good = s.put(b"good");
    let garbage_obj = s.put(b"unreferenced");
    set_mtime(&s.object_path(&garbage_obj), ago(7200));
    run_ok(cas(&s).args(["ref", "set", "keep", &good]));
    fs::write(s.root.join("refs/bad"), b"hello\n").unwrap();
    let bad = s.put(&data(3000, 5));
    let bp = s.object_path(&bad);
    fs::set_permissions(&bp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&bp, b"flipped").unwrap();
    let linked = blake3_hex(b"a link at an object name");
    let lp = s.object_path(&linked);
    fs::create_dir_all(lp.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &lp).unwrap();

    // A directory at the name of an object a ref points to.
    let dir_obj = blake3_hex(b"a directory at an object name");
    let dp = s.object_path(&dir_obj);
    fs::create_dir_all(&dp).unwrap();
    fs::write(s.root.join("refs/dir"), format!("{dir_obj}\n")).unwrap();

    let out = run_bounded(cas(&s).args(["gc", "--grace", "0s", "--json"]), "gc");
    fails(&out, "gc with a garbage ref");
    let r = json_out(&out, "gc");
    let why = r["sweep_skipped"].to_string();
    assert!(
        why.contains("refs/bad") && why.contains(&dir_obj[2..]),
        "{r}"
    );
    assert!(
        s.object_path(&garbage_obj).exists(),
        "gc condemned an object while a root was unreadable"
    );

    let out = run_bounded(cas(&s).args(["doctor", "--json"]), "doctor");
    fails(&out, "doctor");
    let damaged = json_out(&out, "doctor")["damaged"].to_string();
    assert!(
        damaged.contains("refs/bad") && damaged.contains(&dir_obj[2..]),
        "{damaged}"
    );

    let out = run_bounded(cas(&s).args(["verify", "--json"]), "verify");
    fails(&out, "verify");
    let r = json_out(&out, "verify");
    let corrupt: Vec<&str> = r["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hash"].as_str().unwrap())
        .collect();
    assert!(corrupt.contains(&bad.as_str()), "{r}");
    assert!(corrupt.contains(&linked.as_str()), "{r}");
    assert!(corrupt.contains(&dir_obj.as_str()), "{r}");
    assert!(
        !bp.exists() && fs::symlink_metadata(&lp).is_err(),
        "not quarantined"
    );
    assert!(r["bad_files"].to_string().contains("refs/bad"), "{r}");
    assert!(
        Path::new("/etc/passwd").is_file(),
        "the link target was moved"
    );

    // A reflog line that cannot be parsed is reported by path and line, the rest shown.
    let log = s.root.join("logs/refs/keep");
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"\xff garbage\n").unwrap();
    let out = run_bounded(cas(&s).args(["ref", "log", "keep"]), "ref log");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&good));
    let err = text(&out.stderr);
    assert!(
        err.contains("logs/refs/keep") && err.contains("line 2"),
        "{err}"
    );

    // A compare-and-swap against the garbage fails cleanly; a plain set replaces it.
    let out = run_bounded(
        cas(&s).args(["ref", "set", "bad", &good, "--expect", &garbage_obj]),
        "ref set --expect",
    );
    assert!(fails(&out, "cas against garbage").contains("refs/bad"));
    let out = run_bounded(cas(&s).args(["ref", "rm", "bad"]), "ref rm");
    assert!(fails(&out, "removing garbage").contains("refs/bad"));
    run_ok(cas(&s).args(["ref", "set", "bad", &good]));
    assert_eq!(run_ok(cas(&s).args(["ref", "get", "bad"])).trim(), good);
    let out = run_bounded(cas(&s).args(["gc", "--grace", "0s", "--json"]), "gc");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!s.object_path(&garbage_obj).exists());
}

/// Unmounts (lazily) a test mount when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Case 7: gc could not run on a full filesystem (it staged its lock in tmp/ and got
/// ENOSPC), so a full store could only be rescued by hand. Here on a 1 MiB tmpfs filled up.
#[test]
fn gc_frees_a_full_filesystem() {
    if !prerequisite(is_root(), "mounting a small tmpfs needs root") {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !prerequisite(
        st.is_ok_and(|s| s.success()),
        "cannot mount a tmpfs (mount -t tmpfs)",
    ) {
        return;
    }
    let _guard = Mount(mnt.clone());
    let root = mnt.join("store");
    let c = || common::cas_at(&root);
    run_ok(c().arg("init"));
    for i in 0..8 {
        let out = common::run_with_stdin(c().args(["put", "-"]), &data(64 * 1024, 100 + i));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Fill the filesystem to the last byte.
    let filler = mnt.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    while std::io::Write::write_all(&mut f, &chunk[..1]).is_ok() {}
    drop(f);
    let out = common::run_with_stdin(c().args(["put", "-"]), b"does not fit");
    assert!(!out.status.success(), "the filesystem is not full");

    let out = run_bounded(c().args(["gc", "--grace", "0s"]), "gc on a full filesystem");
    assert!(
        out.status.success(),
        "gc on a full filesystem: {}",
        text(&out.stderr)
    );
    let out = run_bounded(c().args(["gc", "--grace", "0s"]), "second gc");
    assert!(out.status.success(), "second gc: {}", text(&out.stderr));
    assert!(files_under(&root.join("objects")).is_empty());
    assert!(!root.join("locks/gc.lock").exists(), "gc left its lock");
    let out = common::run_with_stdin(c().args(["put", "-"]), b"fits now");
    assert!(out.status.success(), "put after gc: {}", text(&out.stderr));
}

/// Case 8: objects of 64 KiB and more were mapped, so a user who owns an object could
/// truncate it while another user's `cas get` read it: SIGBUS (exit 135). Now a file another
/// user owns is read, never mapped; the get below completes with the verified bytes.
#[test]
fn truncating_an_object_never_kills_another_users_reader() {
    let Some(u) = users() else {
        prerequisite(false, "a second user needs root and useradd");
        return;
    };
    let s = Store::new();
    open_up(&s);
    let bytes = data(8 << 20, 8);
    let h = s.put(&bytes);
    let p = s.object_path(&h);
    let mut child = cas_as(&s.root, u.a)
        .args(["get", &h])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Once the first bytes arrive, the object was opened, verified and is being written.
    let mut got = vec![0u8; 4096];
    stdout.read_exact(&mut got).unwrap();
    // The owner truncates it while the reader is blocked on the pipe.
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    stdout.read_to_end(&mut got).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    // Killed by a signal has no exit code (SIGBUS would be exit 135 from a shell).
    assert!(
        out.status.code().is_some(),
        "cas get died with {} (SIGBUS is 7): {err}",
        out.status,
    );
    // Either all the verified bytes, or a failure that says the object changed: never exit 0
    // with other bytes.
    if out.status.success() {
        assert!(got == bytes, "exit 0 with other bytes than were verified");
    } else {
        assert!(err.contains("corrupt"), "{err}");
    }
    // A reader that opens the truncated object reports it as corrupt.
    let out = run_bounded(cas_as(&s.root, u.a).args(["get", &h]), "get truncated");
    assert!(fails(&out, "get of a truncated object").contains("corrupt"));
}

/// Case 9: gc turned a tree it could not decode into "no children", so the children of a
/// tree written by a later format (or damaged) became garbage. Now such a tree stops the
/// sweep, with the reason.
#[test]
fn gc_never_collects_children_of_a_tree_it_cannot_decode() {
    let s = Store::new();
    let child = s.put(b"precious child");
    set_mtime(&s.object_path(&child), ago(7200));
    let mut future = TREE_MAGIC.to_vec();
    // Version 3: a later format than this cas reads (2 is read since issue 23).
    future.extend_from_slice(&3u32.to_le_bytes());
    future.extend_from_slice(&hash(&child).as_bytes()[..]);
    let t = s.put(&future);
    run_ok(cas(&s).args(["ref", "set", "future", &t]));
    let out = run_bounded(cas(&s).args(["gc", "--grace", "0s", "--json"]), "gc");
    fails(&out, "gc with an undecodable tree");
    let r = json_out(&out, "gc");
    let why = r["sweep_skipped"].to_string();
    assert!(why.contains("version 3"), "{r}");
    assert!(
        s.object_path(&child).exists(),
        "gc collected a child of the tree"
    );
}

/// Case 10: the documented shared-store setup failed (`cas init --shared group` by a member on
/// the admin's directory: "Operation not permitted"), and a plain `cas put` there made a
/// private store. Both work now, and two members share the store.
#[test]
fn the_documented_shared_store_setup_works_for_two_members() {
    let Some(u) = users() else {
        prerequisite(false, "two users need root and useradd");
        return;
    };
    let s = Store::uninit();
    open_up(&s);
    // The administrator's part.
    for d in ["shared", "prepared", "unprepared", "init-prepared"] {
        let p = s.base().join(d);
        fs::create_dir(&p).unwrap();
        rustix::fs::chown(&p, None, Some(rustix::fs::Gid::from_raw(u.gid))).unwrap();
        let mode = if d == "unprepared" { 0o755 } else { 0o2775 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    // Only chgrp'd (what the old docs said): the member is told what the owner must do.
    let unprepared = s.base().join("unprepared");
    let out = run_bounded(
        cas_as(&unprepared, u.a)
            .args(["init", "--shared", "group"])
            .arg(&unprepared),
        "init in an unprepared directory",
    );
    assert!(fails(&out, "init, unprepared").contains("chmod 2775"));
    let shared = s.base().join("shared");
    let out = run_bounded(
        cas_as(&shared, u.a)
            .args(["init", "--shared", "group"])
            .arg(&shared),
        "init by a member",
    );
    assert!(out.status.success(), "member init: {}", text(&out.stderr));
    let config = fs::read_to_string(shared.join("config")).unwrap();
    assert!(config.contains("shared = group"), "{config}");

    let bytes = b"from a";
    let out = common::run_with_stdin(cas_as(&shared, u.a).args(["put", "-"]), bytes);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let h = text(&out.stdout).trim().to_owned();
    let got = run(cas_as(&shared, u.b).args(["get", &h]));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(got.stdout, bytes);
    run_ok(cas_as(&shared, u.b).args(["ref", "set", "b/latest", &h]));
    let out = common::run_with_stdin(cas_as(&shared, u.b).args(["put", "-"]), b"from b");
    assert!(out.status.success(), "{}", text(&out.stderr));
    run_ok(cas_as(&shared, u.a).args(["ref", "set", "b/latest", &blake3_hex(b"from b")]));

    // Staging files: gc by A removes A's own stale ones, never B's (B may be alive on
    // another host), and removes anyone's whose writer is provably dead.
    let tmp = shared.join("tmp");
    let mine = tmp.join("otherhost.11.aaaaaa");
    let theirs = tmp.join("otherhost.12.bbbbbb");
    for (p, who) in [(&mine, u.a), (&theirs, u.b)] {
        fs::write(p, b"upload").unwrap();
        rustix::fs::chown(
            p,
            Some(rustix::fs::Uid::from_raw(who.0)),
            Some(rustix::fs::Gid::from_raw(who.1)),
        )
        .unwrap();
        set_mtime(p, ago(3 * 86_400));
    }
    run_ok(cas_as(&shared, u.a).args(["gc", "--grace", "0s"]));
    assert!(!mine.exists(), "A's own stale staging file was kept");
    assert!(theirs.exists(), "gc removed another user's staging file");

    // A plain put into a prepared directory makes a shared store, not a private one.
    let prepared = s.base().join("prepared");
    let out = common::run_with_stdin(cas_as(&prepared, u.a).args(["put", "-"]), b"first");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = fs::read_to_string(prepared.join("config")).unwrap();
    assert!(config.contains("shared = group"), "{config}");
    let out = common::run_with_stdin(cas_as(&prepared, u.b).args(["put", "-"]), b"second");
    assert!(
        out.status.success(),
        "B cannot write: {}",
        text(&out.stderr)
    );
}

/// Case 11: verify and doctor (without --fix) silently moved objects back from trash. Now
/// doctor changes nothing and reports them; verify names each object it restores; doctor
/// --fix restores and says so.
#[test]
fn verify_and_doctor_say_what_they_restore_or_change_nothing() {
    let s = Store::new();
    let f = s.put(b"leaf");
    let t = put_tree(&s, vec![file("leaf", &f, 4)]);
    run_ok(cas(&s).args(["ref", "set", "t", &t]));
    let run_dir = s.root.join("trash/1000.otherhost.1");
    fs::create_dir_all(&run_dir).unwrap();
    let in_trash = run_dir.join(&t);
    fs::rename(s.object_path(&t), &in_trash).unwrap();

    let out = run_bounded(cas(&s).args(["doctor", "--json"]), "doctor");
    let r = json_out(&out, "doctor");
    assert!(
        in_trash.exists(),
        "doctor without --fix moved an object back from trash"
    );
    assert!(!s.object_path(&t).exists());
    assert!(r["reachable_in_trash"].to_string().contains(&t), "{r}");

    let out = run_bounded(cas(&s).arg("verify"), "verify");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("restored {t}")),
        "verify did not say what it restored: {stdout}"
    );
    assert!(s.object_path(&t).exists());

    fs::rename(s.object_path(&t), &in_trash).unwrap();
    let out = run_bounded(cas(&s).args(["doctor", "--fix"]), "doctor --fix");
    assert!(text(&out.stdout).contains(&t), "{}", text(&out.stdout));
    assert!(s.object_path(&t).exists());
}

// ---------------------------------------------------------------------------------------------
// Issue 18: tree bombs (5), interrupted restores (7), reflogs read whole (9).

/// A tree bomb: 40 levels, entries `a` and `b` both naming the level below (2^41 - 2 paths
/// from 41 objects).
fn tree_bomb(s: &Store) -> String {
    let mut h = put_tree(s, vec![]);
    for _ in 0..40 {
        h = put_tree(s, vec![dir("a", &h), dir("b", &h)]);
    }
    h
}

/// Issue 18, 5: `cas show` of a tree bomb reached 9 GB without printing, `get -r` 1.2 GB
/// before creating anything (also through a tier, and `key ensure --tree` with the bomb
/// planted behind the key). Now each fails at once, naming the tree and the budget, prints
/// nothing and creates nothing; verify (a visited set) stays bounded.
#[test]
fn a_tree_bomb_fails_fast_in_every_command_that_walks_trees() {
    let s = Store::new();
    let bomb = tree_bomb(&s);
    let over_budget = |out: &Output, what: &str| {
        let err = fails(out, what);
        assert!(
            err.contains(&bomb) && err.contains("max_entries"),
            "{what}: the error does not name the tree and the budget: {err}"
        );
    };
    for json in [false, true] {
        let mut c = cas(&s);
        if json {
            c.arg("--json");
        }
        let out = run_bounded(c.args(["show", &bomb]), "show of a tree bomb");
        over_budget(&out, "show");
        assert!(out.stdout.is_empty(), "show printed {}", text(&out.stdout));
    }
    let dest = s.scratch.join("out");
    let out = run_bounded(
        cas(&s).args(["get", "-r", &bomb, "-o"]).arg(&dest),
        "get -r of a tree bomb",
    );
    over_budget(&out, "get -r");
    run_ok(cas(&s).args(["key", "set", "planted", &bomb]));
    let out = run_bounded(
        cas(&s)
            .args(["key", "ensure", "--tree", "planted", "-o"])
            .arg(&dest)
            .args(["--", "false"]),
        "key ensure --tree of a planted tree bomb",
    );
    over_budget(&out, "key ensure --tree");
    // Through a tier: the bomb is fetched from the upstream, then refused the same way.
    let tier = Store::uninit();
    run_ok(cas(&tier).arg("init").arg("--upstream").arg(&s.root));
    let out = run_bounded(
        cas(&tier).args(["get", "-r", &bomb, "-o"]).arg(&dest),
        "get -r of a tree bomb through a tier",
    );
    over_budget(&out, "get -r through a tier");
    assert!(
        names_in(&s.scratch).is_empty(),
        "something was created: {:?}",
        names_in(&s.scratch)
    );
    // Onto an existing directory, which a restore compares with the tree first.
    let existing = s.base().join("existing");
    fs::create_dir_all(existing.join("a/a")).unwrap();
    fs::create_dir_all(existing.join("b")).unwrap();
    let out = run_bounded(
        cas(&s).args(["get", "-r", &bomb, "-o"]).arg(&existing),
        "get -r of a tree bomb onto an existing directory",
    );
    over_budget(&out, "get -r onto an existing directory");
    // Walks by object (a visited set) were already bounded; they stay so.
    let out = run_bounded(cas(&s).arg("verify"), "verify of a store holding a bomb");
    assert!(out.status.success(), "verify: {}", text(&out.stdout));
    let out = run_bounded(cas(&s).arg("gc"), "gc of a store holding a bomb");
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
}

/// Issue 18, 5: the budgets count paths, so they must not refuse or mangle a legitimate tree
/// that holds one directory twice (one subtree object at two paths, with a relative link in
/// it): `get -r` restores both copies, `show` lists both.
#[test]
fn a_tree_holding_one_directory_twice_restores_whole() {
    let s = Store::new();
    let src = s.scratch.join("src");
    for sub in ["x", "y"] {
        s.input(&format!("src/{sub}/in/f"), b"same bytes");
        s.input(&format!("src/{sub}/g"), &data(3 << 20, 7));
        std::os::unix::fs::symlink("in/f", src.join(sub).join("link")).unwrap();
    }
    let t = run_ok(cas(&s).args(["put", "-r"]).arg(&src))
        .trim()
        .to_owned();
    let shown = run_ok(cas(&s).args(["show", &t]));
    for p in [
        "x/in/f",
        "y/in/f",
        "x/link -> in/f",
        "y/link -> in/f",
        "x/g",
        "y/g",
    ] {
        assert!(shown.contains(p), "show lacks {p}: {shown}");
    }
    let dest = s.scratch.join("out");
    run_ok(cas(&s).args(["get", "-r", &t, "-o"]).arg(&dest));
    for sub in ["x", "y"] {
        let d = dest.join(sub);
        assert_eq!(fs::read(d.join("in/f")).unwrap(), b"same bytes");
        assert_eq!(fs::read(d.join("link")).unwrap(), b"same bytes");
        assert_eq!(fs::read(d.join("g")).unwrap(), data(3 << 20, 7));
    }
    // Restoring again onto the same content is a success (the comparison walks both paths).
    run_ok(cas(&s).args(["get", "-r", &t, "-o"]).arg(&dest));
}

/// Issue 18, 7: SIGINT/SIGTERM during `get -r` left `.DEST.cas-checkout.XXXX.abandoned`
/// directories (8 of ~110 runs), and some runs exited 1 ("cannot rename restored tree")
/// instead of 130/143: the signal thread moved the temporary directory aside while restore
/// threads still filled it. Each run here is paused by a test hook at a different point of
/// the restore (`CAS_TEST_RESTORE_PAUSE_AT=BYTES`: the thread reporting that progress prints
/// a line and waits for the signal, while the walker and the other workers go on), then
/// signalled: every run must exit 128 + the signal and leave nothing beside DEST.
#[test]
fn a_signal_during_get_r_exits_128_plus_signal_and_leaves_no_debris() {
    use std::io::BufRead;
    let s = Store::new();
    let src = s.scratch.join("src");
    let mut total = 0u64;
    for i in 0..400u64 {
        let len = 512 + (i as usize * 37) % 4096;
        s.input(&format!("src/d{}/f{i}", i % 7), &data(len, i));
        total += len as u64;
    }
    for i in 0..2u64 {
        s.input(&format!("src/big{i}"), &data(2 << 20, 1000 + i));
        total += 2 << 20;
    }
    let t = run_ok(cas(&s).args(["put", "-r"]).arg(&src))
        .trim()
        .to_owned();
    let out_dir = s.base().join("restores");
    fs::create_dir(&out_dir).unwrap();
    let runs = 30u64;
    for i in 0..runs {
        let (sig, code) = if i % 2 == 0 {
            (rustix::process::Signal::INT, 130)
        } else {
            (rustix::process::Signal::TERM, 143)
        };
        let at = total * i / runs;
        let dest = out_dir.join(format!("dest{i}"));
        let mut child = cas(&s)
            .args(["get", "-r", &t, "-o"])
            .arg(&dest)
            .env("CAS_TEST_RESTORE_PAUSE_AT", at.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).unwrap();
            seen.push_str(&line);
            assert!(n > 0, "run {i}: the restore never paused: {seen}");
            if line.trim() == "cas-test: restore paused" {
                break;
            }
        }
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(p, sig).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            let _ = tx.send((child.wait(), rest));
        });
        let Ok((status, rest)) = rx.recv_timeout(BOUND) else {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            panic!("run {i}: cas did not exit after the signal");
        };
        let status = status.unwrap();
        assert_eq!(
            status.code(),
            Some(code),
            "run {i} (paused at {at} of {total} bytes): {status}, stderr: {seen}{rest}"
        );
        assert!(
            names_in(&out_dir).is_empty(),
            "run {i} (paused at {at} of {total} bytes) left {:?}; stderr: {seen}{rest}",
            names_in(&out_dir)
        );
    }
    s.assert_tmp_empty();
}

/// Issue 18, 9: `ref log` read the whole reflog into memory, and had no `-n`. Now `-n N`
/// prints the last N lines of the log (read from its end), oldest first; a damaged line
/// among them (garbage, a cut-short last append) is named on stderr and skipped, never fatal.
#[test]
fn ref_log_n_prints_the_last_lines_and_names_damaged_ones() {
    let s = Store::new();
    let mut hashes = Vec::new();
    for i in 0..5 {
        let h = s.put(format!("v{i}").as_bytes());
        run_ok(cas(&s).args(["ref", "set", "r", &h, "-m", &format!("set {i}")]));
        hashes.push(h);
    }
    let log = s.root.join("logs/refs/r");
    let append = |b: &[u8]| {
        let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut f, b).unwrap();
    };
    append(b"\xff garbage\r\n");
    let h = s.put(b"v5");
    run_ok(cas(&s).args(["ref", "set", "r", &h, "-m", "set 5"]));
    hashes.push(h);
    append(b"0000 cut short");
    // Lines: 1-5 and 7 are entries, 6 garbage, 8 a partial last line.
    let news = |out: &Output| -> Vec<String> {
        text(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["new"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let out = run_bounded(
        cas(&s).args(["--json", "ref", "log", "-n", "3", "r"]),
        "ref log -n 3",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(news(&out), [hashes[5].clone()]);
    let err = text(&out.stderr);
    assert_eq!(err.matches("not a reflog line").count(), 2, "{err}");
    assert!(err.contains("logs/refs/r"), "{err}");
    let out = run_bounded(
        cas(&s).args(["--json", "ref", "log", "-n", "4", "r"]),
        "ref log -n 4",
    );
    assert_eq!(news(&out), [hashes[4].clone(), hashes[5].clone()]);
    let out = run_bounded(cas(&s).args(["--json", "ref", "log", "r"]), "ref log");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(news(&out), hashes);
    let err = text(&out.stderr);
    assert!(err.contains("line 6") && err.contains("line 8"), "{err}");
    // The human form prints the messages, oldest first.
    let shown = run_ok(cas(&s).args(["ref", "log", "-n", "2", "r"]));
    assert!(
        shown.contains("set 5") && !shown.contains("set 4"),
        "{shown}"
    );
}

/// What a squatter plants at the name of content someone else will store.
#[derive(Debug, Clone, Copy)]
enum Squat {
    /// Garbage of another size.
    WrongSize,
    /// Garbage of the right size, owned by another user (whose bytes cannot be trusted).
    ForeignSameSize,
    /// A symlink to a file with other bytes.
    Symlink,
    /// A dangling symlink.
    DanglingSymlink,
    /// A FIFO.
    Fifo,
    /// A directory.
    Dir,
}

fn plant(s: &Store, squat: Squat, path: &Path, len: usize) {
    match squat {
        Squat::WrongSize => fs::write(path, b"garbage").unwrap(),
        Squat::ForeignSameSize => {
            fs::write(path, vec![b'x'; len]).unwrap();
            rustix::fs::chown(path, Some(rustix::fs::Uid::from_raw(54_321)), None).unwrap();
        }
        Squat::Symlink => {
            let decoy = s.input("decoy", &vec![b'y'; len]);
            std::os::unix::fs::symlink(decoy, path).unwrap();
        }
        Squat::DanglingSymlink => std::os::unix::fs::symlink("/nonexistent", path).unwrap(),
        Squat::Fifo => mkfifo(path),
        Squat::Dir => fs::create_dir(path).unwrap(),
    }
}

/// Issue 18, finding 4: something planted at the name of content another user will store made
/// that user's `put` exit 0 and print the hash though their bytes were never stored (`get`
/// then said corrupt, or ELOOP). EEXIST, or a name found present, counts as "stored" only if
/// it is a regular file of the right size whose bytes (unless they are our own in a private
/// store) hash to its name; anything else goes to quarantine/ and ours is published.
#[test]
fn a_squatter_at_an_object_name_never_makes_a_put_say_yes() {
    let squats = [
        Squat::WrongSize,
        Squat::ForeignSameSize,
        Squat::Symlink,
        Squat::DanglingSymlink,
        Squat::Fifo,
        Squat::Dir,
    ];
    for (i, squat) in squats.into_iter().enumerate() {
        if matches!(squat, Squat::ForeignSameSize) && !is_root() {
            prerequisite(false, "a file of another owner needs root");
            continue;
        }
        // Three ways in: a small file by path, a stream, a large file by path.
        for (way, len) in [("path", 100), ("stdin", 100), ("path", 3 << 20)] {
            let s = Store::new();
            let mut content = data(len, i as u64 + len as u64);
            content[..way.len()].copy_from_slice(way.as_bytes());
            let h = blake3_hex(&content);
            let name = s.object_path(&h);
            plant(&s, squat, &name, len);
            let what = format!("{squat:?} at the name, put by {way} of {len} bytes");
            let out = if way == "stdin" {
                common::run_with_stdin(cas(&s).args(["put", "-"]), &content)
            } else {
                run_bounded(cas(&s).arg("put").arg(s.input("in", &content)), &what)
            };
            assert!(
                out.status.success(),
                "{what}: put failed: {}",
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout).trim(), h, "{what}");
            let got = run_bounded(cas(&s).args(["get", &h]), &what);
            assert!(
                got.status.success(),
                "{what}: put said yes, get fails: {}",
                text(&got.stderr)
            );
            assert!(got.stdout == content, "{what}: get returns other bytes");
            let m = fs::symlink_metadata(&name).unwrap();
            assert!(m.is_file(), "{what}: the name is not a regular file");
            assert!(
                fs::read_dir(s.quarantine()).unwrap().count() == 1,
                "{what}: the squatter was not moved to quarantine/"
            );
        }
        // And inside a tree: `put -r` stores the file whose name was taken.
        let s = Store::new();
        let content = data(4000, 1000 + i as u64);
        let dir = s.input("tree/f", &content).parent().unwrap().to_owned();
        plant(
            &s,
            squat,
            &s.object_path(&blake3_hex(&content)),
            content.len(),
        );
        let what = format!("{squat:?} at the name of a file of a tree");
        let out = run_bounded(cas(&s).args(["put", "-r"]).arg(&dir), &what);
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        let tree = text(&out.stdout).trim().to_owned();
        let restored = s.scratch.join("restored");
        let out = run_bounded(
            cas(&s).args(["get", "-r", &tree, "-o"]).arg(&restored),
            &what,
        );
        assert!(
            out.status.success(),
            "{what}: put -r said yes, get -r fails: {}",
            text(&out.stderr)
        );
        assert!(fs::read(restored.join("f")).unwrap() == content, "{what}");
    }
}

/// Issue 18, finding 4, as it happens in a shared store: member A plants garbage of the right
/// size (and, for another object, a symlink) at the names of content member B will store.
/// B's put must store B's bytes.
#[test]
fn a_group_member_cannot_squat_another_members_object() {
    let Some(u) = users() else {
        prerequisite(false, "two users need root and useradd");
        return;
    };
    let s = Store::uninit();
    open_up(&s);
    let shared = s.base().join("shared");
    fs::create_dir(&shared).unwrap();
    rustix::fs::chown(&shared, None, Some(rustix::fs::Gid::from_raw(u.gid))).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o2775)).unwrap();
    let out = run(cas_as(&shared, u.a)
        .args(["init", "--shared", "group"])
        .arg(&shared));
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    for (i, symlink) in [false, true].into_iter().enumerate() {
        let content = data(5000, 77 + i as u64);
        let h = blake3_hex(&content);
        let name = shared.join("objects").join(&h[..2]).join(&h[2..]);
        // As A: a file of the right size, or a symlink, at the name.
        let planted = if symlink {
            Command::new("ln")
                .args(["-s", "/etc/hostname"])
                .arg(&name)
                .uid(u.a.0)
                .gid(u.a.1)
                .status()
        } else {
            Command::new("sh")
                .arg("-c")
                .arg(format!("head -c 5000 /dev/zero > {}", name.display()))
                .uid(u.a.0)
                .gid(u.a.1)
                .status()
        };
        assert!(planted.unwrap().success(), "A could not plant at the name");
        let out = common::run_with_stdin(cas_as(&shared, u.b).args(["put", "-"]), &content);
        assert!(out.status.success(), "B's put: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), h);
        let got = run(cas_as(&shared, u.b).args(["get", &h]));
        assert!(
            got.status.success() && got.stdout == content,
            "B's put said yes but the name does not hold B's bytes: {}",
            text(&got.stderr)
        );
    }
}

/// Issue 18, finding 6: `cas get B -o s/objects/xx/<A>` exited 0 and A's name held B's bytes;
/// `-o s/refs/keep` turned the ref into garbage. A destination inside the store — however it
/// is spelled: directly, through `..`, through a symlink — is refused naming it and the store,
/// for `get -o` and `get -r` alike; nothing in the store changes.
#[test]
fn output_into_the_store_is_refused() {
    let s = Store::new();
    let a = s.put(b"object a");
    let b = s.put(b"object b");
    run_ok(cas(&s).args(["ref", "set", "keep", &a]));
    let tree = text(
        &run(cas(&s)
            .args(["put", "-r"])
            .arg(s.input("dir/f", b"in a tree").parent().unwrap()))
        .stdout,
    )
    .trim()
    .to_owned();
    let link = s.scratch.join("innocent-looking");
    std::os::unix::fs::symlink(s.root.join("refs/keep"), &link).unwrap();
    let dotdot = s
        .scratch
        .join("..")
        .join(s.root.file_name().unwrap())
        .join("refs/keep");
    let into_object = s.object_path(&a);
    let store = s.root.display().to_string();
    for dest in [
        &into_object,
        &s.root.join("refs/keep"),
        &link,
        &dotdot,
        &s.root.join("new"),
    ] {
        let what = format!("get -o {}", dest.display());
        let err = fails(
            &run_bounded(cas(&s).args(["get", &b, "-o"]).arg(dest), &what),
            &what,
        );
        assert!(
            err.contains("inside the store") && err.contains(&store),
            "{what}: {err}"
        );
    }
    for dest in [s.root.join("restored"), s.root.join("objects/restored")] {
        let what = format!("get -r -o {}", dest.display());
        let err = fails(
            &run_bounded(cas(&s).args(["get", "-r", &tree, "-o"]).arg(&dest), &what),
            &what,
        );
        assert!(
            err.contains("inside the store") && err.contains(&store),
            "{what}: {err}"
        );
        assert!(!dest.exists(), "{what}: created {}", dest.display());
    }
    // Nothing changed: A's name holds A, the ref holds A, nothing new in the store.
    assert_eq!(run(cas(&s).args(["get", &a])).stdout, b"object a");
    assert_eq!(run_ok(cas(&s).args(["ref", "get", "keep"])).trim(), a);
    assert!(!s.root.join("new").exists());
    run_ok(cas(&s).arg("verify"));
    // Outside the store, the same commands work.
    run_ok(cas(&s).args(["get", &b, "-o"]).arg(s.scratch.join("out")));
    run_ok(
        cas(&s)
            .args(["get", "-r", &tree, "-o"])
            .arg(s.scratch.join("restored")),
    );
}

/// Issue 19: `doctor` run by someone who does not own the store printed ~260 lines of
/// "permissions …/objects/00: directory mode 755; want 755" and suggested `--fix`; that the
/// store is another user's was never said. Now it says so first, in one line, and lists each
/// kind of problem once with a count.
#[test]
fn doctor_on_another_users_store_says_whose_it_is_and_counts() {
    let Some(u) = users() else {
        prerequisite(false, "a second user needs root and useradd");
        return;
    };
    let s = Store::new(); // root's private store
    open_up(&s);
    s.put(b"something");
    let out = run_bounded(cas_as(&s.root, u.a).arg("doctor"), "doctor as another user");
    let report = text(&out.stdout);
    fails(&out, "doctor as another user");
    let lines: Vec<&str> = report.lines().collect();
    assert!(
        lines[0].starts_with("owner:")
            && lines[0].contains("belongs to root (uid 0), not to you (cas-hostile-a (uid"),
        "{report}"
    );
    let perms: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("permissions"))
        .collect();
    assert_eq!(perms.len(), 1, "one line for one kind of problem: {report}");
    assert!(
        perms[0].contains(" × directory mode 755, owned by root (uid 0): not writable by you"),
        "{report}"
    );
    assert!(lines.len() < 20, "{} lines: {report}", lines.len());
    assert!(
        lines
            .last()
            .unwrap()
            .contains("only its owner (or root) can repair them"),
        "{report}"
    );
    let j = json_out(
        &run_bounded(
            cas_as(&s.root, u.a).args(["doctor", "--json"]),
            "doctor --json",
        ),
        "doctor --json",
    );
    assert_eq!(j["foreign_owner"]["uid"], 0, "{j}");
    assert_eq!(j["foreign_owner"]["you"], u.a.0, "{j}");
    // objects/ and its 256 fan-out directories at least, in one group.
    assert!(j["summary"][0]["count"].as_u64() > Some(256), "{j}");
    // The owner's own doctor says nothing of the kind.
    let own = run_bounded(cas(&s).arg("doctor"), "doctor as the owner");
    assert!(own.status.success(), "{}", text(&own.stdout));
    assert!(
        !text(&own.stdout).contains("owner:"),
        "{}",
        text(&own.stdout)
    );
}

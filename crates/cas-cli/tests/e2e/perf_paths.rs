//! The fast paths of issue 14 keep every guarantee of the slow ones: big gets (copied in the
//! kernel, or written to a pipe a window at a time) and parallel tree restores are verified
//! before anything is visible at the destination; the stat cache of `put -r` never makes it
//! store stale content (racy-git case, rewritten files, damaged or foreign cache files,
//! `--no-cache`, a cached hash whose object was removed).

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::{blake3_hex, cas, data, files_under, names_in, run, run_ok, text, Store};

/// More than the 8 MiB copy and hash window, so a big object takes several.
const BIG: usize = (8 << 20) * 2 + 12_345;

/// Flips one byte of a published object in place (its owner may, after a chmod).
fn corrupt(s: &Store, hex: &str, at: usize) {
    let p = s.object_path(hex);
    let mut b = fs::read(&p).unwrap();
    b[at] ^= 0x20;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &b).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
}

fn put_file(s: &Store, name: &str, bytes: &[u8]) -> String {
    let p = s.input(name, bytes);
    let h = run_ok(cas(s).arg("put").arg(&p)).trim().to_owned();
    assert_eq!(h, blake3_hex(bytes));
    h
}

#[test]
fn big_get_to_a_file_and_to_a_pipe_round_trips() {
    let s = Store::new();
    let bytes = data(BIG, 1);
    let h = put_file(&s, "big", &bytes);
    let out = s.scratch.join("out.bin");
    run_ok(cas(&s).args(["get", &h, "-o"]).arg(&out));
    assert!(
        fs::read(&out).unwrap() == bytes,
        "get -o copied other bytes"
    );
    // Replacing an existing file keeps its permission bits.
    fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).unwrap();
    run_ok(cas(&s).args(["get", &h, "-o"]).arg(&out));
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // To a pipe read by another process.
    let mut child = cas(&s)
        .args(["get", &h])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut got).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(got == bytes, "get to a pipe wrote other bytes");
    // stdout redirected to a file (copied in the kernel at the file's offset), and appended
    // to one (`>>`: the kernel copy is refused, written instead).
    let redirected = s.scratch.join("redirected");
    let f = fs::File::create(&redirected).unwrap();
    run_ok(cas(&s).args(["get", &h]).stdout(f));
    assert!(fs::read(&redirected).unwrap() == bytes, "get > file");
    let f = fs::OpenOptions::new()
        .append(true)
        .open(&redirected)
        .unwrap();
    run_ok(cas(&s).args(["get", &h]).stdout(f));
    let twice = fs::read(&redirected).unwrap();
    assert!(
        twice.len() == 2 * BIG && twice[BIG..] == bytes[..],
        "get >> file"
    );
    assert_eq!(names_in(&s.scratch), vec!["big", "out.bin", "redirected"]);
}

/// A corrupt object, large or small: `get -o` fails, leaves nothing at a new destination and
/// the old content at an existing one, no temporary file beside it; `get` to a pipe writes
/// nothing. The object is quarantined.
#[test]
fn a_corrupt_object_is_never_written_by_get() {
    for (len, at) in [(BIG, BIG - 10), (BIG, 5), (300_000, 1234)] {
        let s = Store::new();
        let bytes = data(len, 2);
        let h = put_file(&s, "in", &bytes);
        corrupt(&s, &h, at);
        let out = s.scratch.join("new");
        let r = run(cas(&s).args(["get", &h, "-o"]).arg(&out));
        assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
        assert!(text(&r.stderr).contains("corrupt"), "{}", text(&r.stderr));
        assert_eq!(
            names_in(&s.scratch),
            vec!["in"],
            "len {len}: left something"
        );
        assert!(!s.object_path(&h).exists(), "not quarantined");
        assert_eq!(files_under(&s.quarantine()).len(), 1);

        // Put it back, corrupt it again, and get it over an existing file and to a pipe.
        put_file(&s, "in", &bytes);
        corrupt(&s, &h, at);
        let old = s.input("old", b"old content");
        let r = run(cas(&s).args(["get", &h, "-o"]).arg(&old));
        assert_eq!(r.status.code(), Some(1));
        assert_eq!(fs::read(&old).unwrap(), b"old content");
        assert_eq!(names_in(&s.scratch), vec!["in", "old"]);
        put_file(&s, "in", &bytes);
        corrupt(&s, &h, at);
        let r = run(cas(&s).args(["get", &h]).stdout(Stdio::piped()));
        assert_eq!(r.status.code(), Some(1));
        assert!(
            r.stdout.is_empty(),
            "{} bytes written to the pipe",
            r.stdout.len()
        );
    }
}

/// A tree of many small files in several directories, two large files, symlinks and an
/// executable: what the parallel restore writes.
fn make_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for d in 0..6 {
        let dir = root.join(format!("d{d}")).join("sub");
        fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            let p = dir.join(format!("f{f}"));
            let b = data(100 + f * 37 + d * 1000, (d * 100 + f) as u64);
            fs::write(&p, &b).unwrap();
            files.push((p, b));
        }
    }
    for (i, name) in ["big1", "d3/big2"].iter().enumerate() {
        let p = root.join(name);
        let b = data(BIG + i, 50 + i as u64);
        fs::write(&p, &b).unwrap();
        files.push((p, b));
    }
    let exe = root.join("run.sh");
    fs::write(&exe, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    files.push((exe, b"#!/bin/sh\n".to_vec()));
    std::os::unix::fs::symlink("d0/sub/f1", root.join("link")).unwrap();
    files
}

#[test]
fn a_parallel_restore_restores_everything() {
    let s = Store::new();
    let src = s.scratch.join("src");
    let files = make_tree(&src);
    let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&src))
        .trim()
        .to_owned();
    let dst = s.scratch.join("dst");
    run_ok(cas(&s).args(["get", "-r", &tree, "-o"]).arg(&dst));
    for (p, b) in &files {
        let q = dst.join(p.strip_prefix(&src).unwrap());
        assert!(&fs::read(&q).unwrap() == b, "{} differs", q.display());
    }
    let mode = fs::metadata(dst.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "the executable bit was lost");
    assert_eq!(
        fs::read_link(dst.join("link")).unwrap(),
        Path::new("d0/sub/f1")
    );
    assert_eq!(files_under(&dst).len(), files.len() + 1);
    assert_eq!(names_in(&s.scratch), vec!["dst", "src"]);
}

/// One corrupt file — large, or small and deep in the tree — and the whole restore fails:
/// no destination, no temporary directory beside it.
#[test]
fn a_corrupt_file_fails_the_whole_parallel_restore() {
    for victim in ["big1", "d5/sub/f39", "d0/sub/f0"] {
        let s = Store::new();
        let src = s.scratch.join("src");
        make_tree(&src);
        let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&src))
            .trim()
            .to_owned();
        let bytes = fs::read(src.join(victim)).unwrap();
        corrupt(&s, &blake3_hex(&bytes), bytes.len() / 2);
        let dst = s.scratch.join("dst");
        let r = run(cas(&s).args(["get", "-r", &tree, "-o"]).arg(&dst));
        assert_eq!(r.status.code(), Some(1), "{victim}: {}", text(&r.stderr));
        assert!(text(&r.stderr).contains("corrupt"), "{}", text(&r.stderr));
        assert_eq!(
            names_in(&s.scratch),
            vec!["src"],
            "{victim}: left something"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The stat cache

/// The cache file `cas` uses for this user on this host (docs/format.md, "The stat cache of
/// `put -r`").
fn cache_file(s: &Store) -> PathBuf {
    let uts = rustix::system::uname();
    let host: String = uts
        .nodename()
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    s.root.join("cache").join(format!(
        "statcache.{}.{host}",
        rustix::process::geteuid().as_raw()
    ))
}

fn ns(s: i64, n: i64) -> i64 {
    s * 1_000_000_000 + n
}

/// Writes a cache file by the documented encoding: one entry per (file, hash), written "now
/// plus an hour" (so the entries count as settled) and with the file's mtime set to match.
fn forge_cache(s: &Store, entries: &[(&Path, &str)], mode: u32) {
    use std::os::unix::fs::MetadataExt;
    let written = SystemTime::now() + Duration::from_hours(1);
    let wns = written
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut b = Vec::new();
    b.extend_from_slice(b"CASSTAT\0");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&wns.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (p, hex) in entries {
        let m = fs::symlink_metadata(p).unwrap();
        for v in [
            m.dev(),
            m.ino(),
            m.size(),
            ns(m.mtime(), m.mtime_nsec()) as u64,
            ns(m.ctime(), m.ctime_nsec()) as u64,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let h: cas::Hash = hex.parse().unwrap();
        b.extend_from_slice(h.as_bytes());
    }
    let sum = blake3::hash(&b);
    b.extend_from_slice(sum.as_bytes());
    let path = cache_file(s);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&path);
    fs::write(&path, &b).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    fs::File::open(&path)
        .unwrap()
        .set_modified(written)
        .unwrap();
}

fn put_r(s: &Store, dir: &Path, extra: &[&str]) -> (String, String) {
    let out = run(cas(s).args(["put", "-r"]).args(extra).arg(dir));
    assert!(out.status.success(), "put -r: {}", text(&out.stderr));
    (text(&out.stdout).trim().to_owned(), text(&out.stderr))
}

fn restored_file(s: &Store, tree: &str, name: &str) -> Vec<u8> {
    let dst = s.scratch.join(format!("restore-{}", &tree[..12]));
    if !dst.exists() {
        run_ok(cas(s).args(["get", "-r", tree, "-o"]).arg(&dst));
    }
    fs::read(dst.join(name)).unwrap()
}

/// A cache file owned by this user is believed (it is this user's own hint): an entry that
/// says `f` holds other bytes is used — which `--no-cache` bypasses, and which a change of
/// the file (its ctime) or a group-writable cache file defeats.
#[test]
fn the_cache_is_used_and_no_cache_bypasses_it() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, b"real content").unwrap();
    let other = s.put(b"other bytes!");
    let (truth, _) = put_r(&s, &src, &["--no-cache"]);
    forge_cache(&s, &[(&f, &other)], 0o600);
    let (cached, _) = put_r(&s, &src, &[]);
    assert_ne!(cached, truth, "the cache file was not consulted");
    assert_eq!(restored_file(&s, &cached, "f"), b"other bytes!");
    let (bypassed, _) = put_r(&s, &src, &["--no-cache"]);
    assert_eq!(bypassed, truth);

    // Others may write the cache file: ignored, with a warning.
    forge_cache(&s, &[(&f, &other)], 0o660);
    let (h, err) = put_r(&s, &src, &[]);
    assert_eq!(h, truth);
    assert!(err.contains("ignoring the stat cache"), "{err}");

    // Any write to the file changes its ctime: rehashed, even with size and mtime kept.
    forge_cache(&s, &[(&f, &other)], 0o600);
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, b"REAL CONTENT").unwrap();
    fs::File::open(&f).unwrap().set_modified(mtime).unwrap();
    let (h, _) = put_r(&s, &src, &[]);
    assert_eq!(restored_file(&s, &h, "f"), b"REAL CONTENT");
}

/// The racy-git case: a file rewritten within the same second, same size, right after a put
/// is stored with its new content.
#[test]
fn a_file_rewritten_in_the_same_second_is_rehashed() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, b"version 1").unwrap();
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    let (h1, _) = put_r(&s, &src, &[]);
    fs::write(&f, b"version 2").unwrap();
    // Same size, and the same mtime, as a write within one clock tick would leave it.
    fs::File::open(&f).unwrap().set_modified(mtime).unwrap();
    let (h2, _) = put_r(&s, &src, &[]);
    assert_ne!(h1, h2);
    assert_eq!(restored_file(&s, &h2, "f"), b"version 2");
}

/// Garbage or a truncated cache file: a warning, and the right tree.
#[test]
fn a_garbage_or_truncated_cache_is_ignored() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, b"content").unwrap();
    let (truth, _) = put_r(&s, &src, &["--no-cache"]);
    let other = s.put(b"nope");
    forge_cache(&s, &[(&f, &other)], 0o600);
    let path = cache_file(&s);
    let good = fs::read(&path).unwrap();
    for bad in [&good[..good.len() - 7], &b"garbage"[..], &[][..]] {
        fs::write(&path, bad).unwrap();
        let (h, err) = put_r(&s, &src, &[]);
        assert_eq!(h, truth);
        assert!(err.contains("ignoring the stat cache"), "{err}");
    }
    // A directory or a symlink where the cache file belongs: ignored too.
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
    let (h, err) = put_r(&s, &src, &[]);
    assert_eq!(h, truth);
    assert!(err.contains("ignoring the stat cache"), "{err}");
}

/// A cached hash whose object is gone (gc, rm) is not used: the file is stored again.
#[test]
fn a_file_whose_object_was_removed_is_stored_again() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir(&src).unwrap();
    let f = src.join("f");
    fs::write(&f, b"keep me").unwrap();
    let (truth, _) = put_r(&s, &src, &[]);
    let h = blake3_hex(b"keep me");
    forge_cache(&s, &[(&f, &h)], 0o600);
    run_ok(cas(&s).args(["rm", &h]));
    assert!(!s.object_path(&h).exists());
    let (again, _) = put_r(&s, &src, &[]);
    assert_eq!(again, truth);
    assert!(
        s.object_path(&h).is_file(),
        "the object was not stored again"
    );
    s.assert_objects_verify();
}

/// Through the library, on files old enough to be cached (the repository's own sources
/// and docs, unless just edited): the second put reads only the files that are too recent,
/// and a removed object is stored again.
#[test]
fn the_library_reuses_settled_files_and_stores_the_same_tree() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let store = cas::Store::init(
        d.path().join("s"),
        cas::Options::default().durability(cas::Durability::None),
    )
    .unwrap();
    let src = common::repo().join("docs");
    let on = cas::PutDirOptions::default().stat_cache(true);
    let start = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let (t1, r1) = store.put_dir_with(&src, &on).unwrap();
    assert_eq!(r1.cache_hits, 0);
    assert!(r1.cache_warning.is_none(), "{:?}", r1.cache_warning);
    let files = files_under(&src);
    let settled = files
        .iter()
        .filter(|p| {
            let m = fs::symlink_metadata(p).unwrap();
            m.is_file()
                && ns(m.mtime(), m.mtime_nsec()) < start - 2_000_000_000
                && ns(m.ctime(), m.ctime_nsec()) < start - 2_000_000_000
        })
        .count() as u64;
    // The checkout of docs/ is older than the build of this test, so files settle; without
    // any, the equality below would hold with no cache hit at all.
    assert!(
        settled > 0,
        "no file under {} is older than the racy-git margin: nothing to prove",
        src.display()
    );
    let (t2, r2) = store.put_dir_with(&src, &on).unwrap();
    assert_eq!(t2, t1);
    assert_eq!(r2.cache_hits, settled);
    assert_eq!(r2.hashed + r2.cache_hits, r1.hashed);
    assert_eq!(
        t1,
        store.put_dir(&src).unwrap(),
        "the cache changed the tree"
    );
    // Remove every object; the cached hashes must not be believed.
    for h in store.iter().collect::<Vec<_>>() {
        store.remove(&h.unwrap()).unwrap();
    }
    let (t3, r3) = store.put_dir_with(&src, &on).unwrap();
    assert_eq!(t3, t1);
    assert_eq!(r3.cache_hits, 0);
    let dst = d.path().join("restored");
    store.checkout(&t3, &dst).unwrap();
    for p in &files {
        let q = dst.join(p.strip_prefix(&src).unwrap());
        assert_eq!(
            fs::read(p).unwrap(),
            fs::read(&q).unwrap(),
            "{}",
            q.display()
        );
    }
}

/// Collects every progress report a callback receives.
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<cas::Progress>>>);

impl Seen {
    fn push(&self, p: cas::Progress) -> bool {
        self.0.lock().unwrap().push(p);
        true
    }
    fn take(&self) -> Vec<cas::Progress> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Progress of tree puts, restores and gets (issue 12): reports rise to the total, which a
/// restore and a get announce before their first byte; a callback that says stop interrupts
/// each, leaving nothing at the destination and nothing staged in the store.
#[test]
fn progress_reaches_the_total_and_a_stop_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    let store = cas::Store::init(
        &root,
        cas::Options::default().durability(cas::Durability::None),
    )
    .unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut file_bytes = 0u64;
    for i in 0..4u64 {
        let b = data((3 << 20) + i as usize, 40 + i);
        file_bytes += b.len() as u64;
        fs::write(src.join(format!("sub/big{i}")), b).unwrap();
    }
    for i in 0..20u64 {
        let b = data(1000, 60 + i);
        file_bytes += b.len() as u64;
        fs::write(src.join(format!("small{i}")), b).unwrap();
    }

    // put -r: phase "put", never decreasing, at least every file's bytes.
    let seen = Seen::default();
    let s2 = seen.clone();
    let opts = cas::PutDirOptions::default().progress(move |p| s2.push(p));
    let (tree, _) = store.put_dir_with(&src, &opts).unwrap();
    let r = seen.take();
    assert!(r.iter().all(|p| p.phase == "put" && p.total.is_none()));
    assert!(r.windows(2).all(|w| w[0].done <= w[1].done), "went back");
    assert!(r.last().unwrap().done >= file_bytes, "{:?}", r.last());

    // get -r: the tree's total from the first report; the bytes restored reach it.
    let s2 = seen.clone();
    let dst = d.path().join("dst");
    let opts = cas::CheckoutOptions::default().progress(move |p| s2.push(p));
    store.checkout_with(&tree, &dst, &opts).unwrap();
    let r = seen.take();
    assert_eq!(r[0].done, 0);
    assert!(r
        .iter()
        .all(|p| p.phase == "restore" && p.total == Some(file_bytes)));
    assert_eq!(r.iter().map(|p| p.done).max(), Some(file_bytes));

    // get to a file, and to a writer (verified whole, then written).
    let h = store.put_bytes(&data(BIG, 3)).unwrap();
    let len = BIG as u64;
    let out = d.path().join("out");
    store
        .get_to_path_progress(&h, &out, &|p| seen.push(p))
        .unwrap();
    let r = seen.take();
    assert!(r.iter().all(|p| p.phase == "get" && p.total == Some(len)));
    assert_eq!(r.last().unwrap().done, len);
    store
        .get_to_writer_progress(&h, &mut std::io::sink(), &|p| seen.push(p))
        .unwrap();
    let r = seen.take();
    let first_get = r.iter().position(|p| p.phase == "get").unwrap();
    assert!(r[..first_get].iter().all(|p| p.phase == "verify"));
    assert_eq!(
        r[first_get - 1].done,
        len,
        "written before all was verified"
    );
    assert_eq!(r.last().unwrap().done, len);

    // Stops: an error, nothing at the destination, nothing staged.
    let stop = |p: cas::Progress| p.done < (1 << 20);
    let opts = cas::PutDirOptions::default().progress(stop);
    let src2 = d.path().join("src2");
    fs::create_dir(&src2).unwrap();
    fs::write(src2.join("f"), data(BIG, 70)).unwrap();
    let e = store.put_dir_with(&src2, &opts).unwrap_err();
    assert!(matches!(e, cas::Error::Interrupted), "{e}");
    assert!(files_under(&root.join("tmp")).is_empty(), "staging left");
    assert!(!store.contains(&cas::Hash::of(&data(BIG, 70))));

    let dst2 = d.path().join("dst2");
    let opts = cas::CheckoutOptions::default().progress(stop);
    let e = store.checkout_with(&tree, &dst2, &opts).unwrap_err();
    assert!(matches!(e, cas::Error::Interrupted), "{e}");
    assert!(!dst2.exists());
    let out2 = d.path().join("out2");
    let e = store.get_to_path_progress(&h, &out2, &stop).unwrap_err();
    assert!(matches!(e, cas::Error::Interrupted), "{e}");
    let mut written = Vec::new();
    let e = store
        .get_to_writer_progress(&h, &mut written, &|p| p.phase == "verify" || p.done == 0)
        .unwrap_err();
    assert!(matches!(e, cas::Error::Interrupted), "{e}");
    assert!(written.len() <= 8 << 20, "wrote past the stop");
    let mut left = names_in(d.path());
    left.sort();
    assert_eq!(
        left,
        ["dst", "out", "s", "src", "src2"],
        "temporary files left"
    );
}

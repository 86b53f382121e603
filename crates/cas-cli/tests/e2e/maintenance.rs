//! End-to-end tests of trees, gc, eviction and verify through the real `cas` binary (issue 4):
//! round trips and malicious trees, what gc keeps and removes, gc racing writers, cleaning up
//! after killed writers, LRU eviction to a size budget, quarantine of corrupt objects.

use crate::common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use cas::{Hash, Tree, TreeEntry, TreeEntryKind};
use common::{
    blake3_hex, cas, contents, data, files_under, json, run, run_ok, run_with_stdin, set_mtime,
    staging_files_of, text, tree, wait_until, Store,
};

/// Runs a command that prints binary data; asserts success and returns the bytes.
fn bytes_ok(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        text(&out.stderr)
    );
    out.stdout
}

fn gc(s: &Store, args: &[&str]) -> serde_json::Value {
    json(&run_ok(cas(s).arg("gc").args(args).arg("--json")))
}

fn assert_clean_failure(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, got {} (stderr: {err})",
        out.status
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

/// The hashes (file names) of everything under `trash/`.
fn trashed(s: &Store) -> Vec<String> {
    files_under(&s.root.join("trash"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Issue test 1: Tree round trip: nested dirs, an empty dir, an executable, a symlink, duplicate files.
#[test]
fn tree_round_trip_is_exact_and_deterministic() {
    let s = Store::new();
    let src = s.scratch.join("src");
    let dup = data(5000, 7);
    let files: [(&str, Vec<u8>); 5] = [
        ("a/b/c/deep.txt", b"deep".to_vec()),
        ("a/dup2", dup.clone()),
        ("dup1", dup.clone()),
        ("run.sh", b"#!/bin/sh\necho hi\n".to_vec()),
        ("big.bin", data(3 << 20, 8)),
    ];
    tree(&src, &files);
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("a/b/c/deep.txt", src.join("link")).unwrap();

    let tree = run_ok(cas(&s).args(["put", "-r", src.to_str().unwrap()]))
        .trim()
        .to_owned();
    assert_eq!(tree.len(), 64, "put -r printed {tree:?}");
    // Same directory, same hash; a copy elsewhere (other inodes, mtimes) too.
    let again = run_ok(cas(&s).args(["put", "-r", src.to_str().unwrap()]));
    assert_eq!(again.trim(), tree);
    let copy = s.scratch.join("copy");
    let status = std::process::Command::new("cp")
        .args(["-a", src.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let other = run_ok(cas(&s).args(["put", "-r", copy.to_str().unwrap()]));
    assert_eq!(other.trim(), tree, "tree hash depends on more than content");

    // Identical files are stored once: 4 distinct file contents + 5 distinct trees (root, a,
    // a/b, a/b/c, empty).
    let objects = s.object_hashes();
    assert_eq!(objects.len(), 4 + 5, "objects: {objects:?}");
    assert!(objects.contains(&blake3_hex(&dup)));
    s.assert_objects_verify();
    s.assert_tmp_empty();

    let dest = s.scratch.join("restored");
    run_ok(cas(&s).args(["get", "-r", &tree, "-o", dest.to_str().unwrap()]));
    assert_eq!(
        contents(&dest),
        contents(&src),
        "restore differs from source"
    );
    assert!(dest.join("empty").is_dir());
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("a/b/c/deep.txt")
    );

    // A restore never replaces an existing destination: one that already holds exactly this
    // tree is a success that changes nothing; anything else is refused, untouched. A non-tree
    // is refused.
    let out = run(cas(&s).args(["get", "-r", &tree, "-o", dest.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(contents(&dest), contents(&src));
    fs::write(dest.join("extra"), "x").unwrap();
    let out = run(cas(&s).args(["get", "-r", &tree, "-o", dest.to_str().unwrap()]));
    assert_clean_failure(&out, "restore over a directory holding something else");
    assert_eq!(fs::read(dest.join("extra")).unwrap(), b"x");
    fs::remove_file(dest.join("extra")).unwrap();
    let blob = blake3_hex(b"deep");
    let not_tree = s.scratch.join("not-a-tree");
    let out = run(cas(&s).args(["get", "-r", &blob, "-o", not_tree.to_str().unwrap()]));
    let err = assert_clean_failure(&out, "get -r of a blob");
    assert!(err.contains(&blob), "error does not name the object: {err}");
    assert!(!not_tree.exists());
}

fn hash(hex: &str) -> Hash {
    hex.parse().unwrap()
}

fn file_entry(name: &[u8], hex: &str, size: u64) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.to_vec(),
        kind: TreeEntryKind::File {
            executable: false,
            size,
            hash: hash(hex),
        },
    }
}

fn link_entry(name: &[u8], target: &[u8]) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.to_vec(),
        kind: TreeEntryKind::Symlink {
            target: target.to_vec(),
        },
    }
}

fn dir_entry(name: &[u8], hex: &str) -> TreeEntry {
    TreeEntry {
        mode: None,
        mtime: None,
        name: name.to_vec(),
        kind: TreeEntryKind::Dir { hash: hash(hex) },
    }
}

fn put_tree(s: &Store, entries: Vec<TreeEntry>) -> String {
    s.put(&Tree { entries }.encode())
}

/// Issue test 1b: Crafted tree objects cannot make a restore write outside its destination: every one is
/// refused with a clear error, leaving no destination, no temporary directory, no stray file.
#[test]
fn malicious_trees_cannot_escape_the_destination() {
    let s = Store::new();
    let payload = s.put(b"pwned");
    let good = file_entry(b"fine.txt", &payload, 5);
    let inner = put_tree(&s, vec![file_entry(b"pwned", &payload, 5)]);
    let escaping_inner = put_tree(&s, vec![link_entry(b"up", b"../../outside")]);
    let deep_ok_then_escape = put_tree(&s, vec![link_entry(b"up", b"../x/../../outside")]);

    let cases: Vec<(&str, Vec<TreeEntry>)> = vec![
        ("dot-dot dir", vec![good.clone(), dir_entry(b"..", &inner)]),
        ("dot dir", vec![dir_entry(b".", &inner)]),
        ("separator", vec![file_entry(b"../pwned", &payload, 5)]),
        ("absolute", vec![file_entry(b"/tmp/pwned", &payload, 5)]),
        ("nul", vec![file_entry(b"a\0b", &payload, 5)]),
        ("empty name", vec![file_entry(b"", &payload, 5)]),
        (
            "symlink up",
            vec![good.clone(), link_entry(b"l", b"../outside")],
        ),
        ("symlink absolute", vec![link_entry(b"l", b"/etc/passwd")]),
        ("symlink in subdir", vec![dir_entry(b"d", &escaping_inner)]),
        (
            "symlink dotdot games",
            vec![dir_entry(b"d", &deep_ok_then_escape)],
        ),
        (
            // A symlink and a directory of the same name: a restore that followed the link
            // would write through it.
            "duplicate names",
            vec![link_entry(b"x", b"/tmp"), dir_entry(b"x", &inner)],
        ),
    ];
    let base = s.scratch.join("restores");
    fs::create_dir(&base).unwrap();
    for (what, entries) in cases {
        let t = put_tree(&s, entries);
        let dest = base.join("dest");
        let out = run(cas(&s).args(["get", "-r", &t, "-o", dest.to_str().unwrap()]));
        assert_clean_failure(&out, what);
        assert!(!dest.exists(), "{what}: a partial destination was left");
        let left: Vec<_> = fs::read_dir(&base).unwrap().collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
    // Nothing named like the payloads appeared anywhere around the store.
    for p in files_under(s.base()) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name != "pwned" && name != "outside",
            "a restore wrote {}",
            p.display()
        );
    }
    // A benign symlink pointing inside, at depth, is restored.
    let ok_inner = put_tree(&s, vec![link_entry(b"sibling", b"../fine.txt")]);
    let ok = put_tree(&s, vec![good, dir_entry(b"d", &ok_inner)]);
    let dest = base.join("ok");
    run_ok(cas(&s).args(["get", "-r", &ok, "-o", dest.to_str().unwrap()]));
    assert_eq!(fs::read(dest.join("d/sibling")).unwrap(), b"pwned");
}

/// Issue test 2: gc keeps what refs, cache entries and trees reach, and young objects; with a grace of 0
/// it trashes, then deletes, the rest. A dry run changes nothing; a ref set to a trashed object
/// brings it back.
#[test]
fn gc_keeps_reachable_and_young_objects() {
    let s = Store::new();
    let reffed = s.put(b"reffed");
    run_ok(cas(&s).args(["ref", "set", "keep", &reffed]));
    let out = run_with_stdin(cas(&s).args(["key", "put", "k", "-"]), b"keyed");
    assert!(out.status.success());
    assert!(s.object_path(&blake3_hex(b"keyed")).is_file());
    let dir = s.scratch.join("d");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/in-tree"), b"in tree").unwrap();
    let tree = run_ok(cas(&s).args(["put", "-r", dir.to_str().unwrap()]))
        .trim()
        .to_owned();
    run_ok(cas(&s).args(["ref", "set", "trees/t", &tree]));
    let in_tree = blake3_hex(b"in tree");
    let old = s.put(b"old garbage");
    let old2 = s.put(b"old garbage 2");
    let young = s.put(b"young garbage");
    let reachable: Vec<String> = s
        .object_hashes()
        .into_iter()
        .filter(|h| *h != old && *h != old2 && *h != young)
        .collect();
    assert_eq!(reachable.len(), 5, "reffed, keyed, tree, subtree, file");
    assert!(reachable.contains(&in_tree));
    // Everything but `young` is two hours old: only reachability may keep it.
    for h in s.object_hashes() {
        if h != young {
            set_mtime(&s.object_path(&h), ago(7200));
        }
    }

    let before = files_under(&s.root);
    let r = gc(&s, &["--dry-run", "--grace", "0s"]);
    assert_eq!(r["dry_run"], true);
    let mut condemned: Vec<String> = r["condemned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    condemned.sort();
    let mut expect = vec![old.clone(), old2.clone(), young.clone()];
    expect.sort();
    assert_eq!(condemned, expect);
    assert_eq!(files_under(&s.root), before, "a dry run changed the store");

    // Default grace (1 h): the old garbage goes to trash, the young stays.
    let r = gc(&s, &[]);
    assert_eq!(r["trashed"], 2);
    assert_eq!(r["kept_young"], 1);
    assert!(!s.object_path(&old).exists() && !s.object_path(&old2).exists());
    let mut t = trashed(&s);
    t.sort();
    let mut both = vec![old.clone(), old2.clone()];
    both.sort();
    assert_eq!(t, both);
    for h in reachable.iter().chain([&young]) {
        assert!(s.object_path(h).is_file(), "gc removed {h}");
    }

    // Pointing a ref at a trashed object restores it.
    run_ok(cas(&s).args(["ref", "set", "rescued", &old2]));
    assert!(s.object_path(&old2).is_file(), "ref set did not restore");
    assert_eq!(trashed(&s), vec![old.clone()]);

    // Grace 0: the trash of the earlier run is deleted, and the young object is condemned
    // and deleted in the same run (issue 12: the space is freed at once); a second run has
    // nothing left to do.
    let r = gc(&s, &["--grace", "0s"]);
    assert_eq!(r["trashed"], 1);
    assert_eq!(r["deleted"], 2);
    assert!(trashed(&s).is_empty());
    let r = gc(&s, &["--grace", "0s"]);
    assert_eq!(r["deleted"], 0);
    assert_eq!(r["trashed"], 0);
    let mut left = s.object_hashes();
    left.sort();
    let mut want: Vec<String> = reachable.clone();
    want.push(old2.clone());
    want.sort();
    assert_eq!(left, want);
    let out = run(cas(&s).args(["get", &old]));
    assert_clean_failure(&out, "get of a collected object");
    run_ok(cas(&s).arg("verify"));
}

/// Issue test 3: gc beside writers: writers put objects and set refs and keys in a loop while gc
/// runs with `--grace 0s` in a loop. The content comes from a small shared pool, so bytes that
/// sit unreachable (a name moved off them) are put again while gc condemns and removes them —
/// the classic race: a put that finds the object "already there" just before gc deletes it.
/// Every value a ref or key acknowledged must be readable right after it was set, and at the
/// end every ref points to an object that exists and verifies. The writers go on until gc has
/// condemned pool bytes that a writer then put again, several times.
#[test]
fn gc_beside_writers_never_leaves_a_dangling_ref() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    const WRITERS: usize = 3;
    const NAMES: usize = 2; // per writer: 6 refs over 12 pool contents, so half sit unreachable
    const POOL: usize = 12;
    const MIN_ROUNDS: usize = 15;
    const MAX_ROUNDS: usize = 2000;
    const REPUTS: usize = 20;
    let pool: Vec<Vec<u8>> = (0..POOL).map(|v| data(2000 + v, 7000 + v as u64)).collect();
    let s = Store::new();
    let gc_runs = AtomicUsize::new(0);
    let writers_done = AtomicUsize::new(0);
    let retries = AtomicUsize::new(0);
    // Pool hashes some gc run condemned, and how often a writer put such bytes again after.
    let condemned: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let reputs = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for w in 0..WRITERS {
            let (s, gc_runs, done, retries) = (&s, &gc_runs, &writers_done, &retries);
            let (pool, condemned, reputs) = (&pool, &condemned, &reputs);
            sc.spawn(move || {
                // Counted done even when the writer panics, so the gc loop ends.
                struct Done<'a>(&'a AtomicUsize);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _done = Done(done);
                let mut i = 0;
                // Keep writing until gc has run a few times during the writes and condemned
                // bytes were put again.
                while i < MIN_ROUNDS
                    || gc_runs.load(Ordering::SeqCst) < 3
                    || reputs.load(Ordering::SeqCst) < REPUTS
                {
                    assert!(
                        i < MAX_ROUNDS,
                        "gc never condemned bytes that were put again"
                    );
                    let bytes = &pool[(i * 5 + w * 7) % POOL];
                    let name = format!("w{w}/{}", i % NAMES);
                    let h = loop {
                        let was_condemned = condemned.lock().unwrap().contains(&blake3_hex(bytes));
                        let h = s.put(bytes);
                        if was_condemned {
                            reputs.fetch_add(1, Ordering::SeqCst);
                        }
                        let out = run(cas(s).args(["ref", "set", &name, &h]));
                        if out.status.success() {
                            break h;
                        }
                        // gc may collect an object between its put and the ref set (grace 0
                        // gives no protection; docs/format.md, "GC"): the set must then fail
                        // cleanly, naming the missing object, and the writer puts it again.
                        let err = assert_clean_failure(&out, "ref set beside gc");
                        assert!(err.contains(&h) && err.contains("not found"), "{err}");
                        retries.fetch_add(1, Ordering::SeqCst);
                    };
                    // What the ref acknowledged is there now (gc may not take it any more).
                    let got = run(cas(s).args(["get", &h]));
                    assert!(
                        got.status.success() && got.stdout == *bytes,
                        "ref {name} was set to {h}, which then could not be read: {}",
                        text(&got.stderr)
                    );
                    let key = format!("k{w}");
                    let out = run_with_stdin(cas(s).args(["key", "put", &key, "-"]), &bytes[..100]);
                    assert!(
                        out.status.success(),
                        "key put beside gc: {}",
                        text(&out.stderr)
                    );
                    let got = run(cas(s).args(["key", "get", &key]));
                    assert!(
                        got.status.success() && got.stdout == bytes[..100],
                        "key {key} was put, then could not be read: {}",
                        text(&got.stderr)
                    );
                    i += 1;
                }
            });
        }
        sc.spawn(|| {
            while writers_done.load(Ordering::SeqCst) < WRITERS {
                let r = gc(&s, &["--grace", "0s"]);
                let mut c = condemned.lock().unwrap();
                for h in r["condemned"].as_array().expect("condemned in gc --json") {
                    c.insert(h.as_str().unwrap().to_owned());
                }
                drop(c);
                gc_runs.fetch_add(1, Ordering::SeqCst);
            }
        });
    });
    assert!(gc_runs.load(Ordering::SeqCst) >= 3);
    eprintln!(
        "gc ran {} times; writers put condemned bytes again {} times; {} ref sets retried",
        gc_runs.load(Ordering::SeqCst),
        reputs.load(Ordering::SeqCst),
        retries.load(Ordering::SeqCst)
    );

    assert_names_sound_after_gc(&s, WRITERS * NAMES, WRITERS);
}

/// After two more gc runs: `refs` refs, each pointing to an object that exists and verifies,
/// keys `k0`… readable, verify clean, nothing staged.
fn assert_names_sound_after_gc(s: &Store, refs: usize, keys: usize) {
    run_ok(cas(s).args(["gc", "--grace", "0s"]));
    run_ok(cas(s).args(["gc", "--grace", "0s"]));
    let listed = run_ok(cas(s).args(["ref", "ls"]));
    assert_eq!(listed.lines().count(), refs);
    for line in listed.lines() {
        let (name, h) = line.split_once(' ').unwrap();
        let p = s.object_path(h);
        let bytes =
            fs::read(&p).unwrap_or_else(|e| panic!("ref {name} points to {h}, which is gone: {e}"));
        assert_eq!(blake3_hex(&bytes), h, "ref {name}: object does not verify");
    }
    for w in 0..keys {
        bytes_ok(cas(s).args(["key", "get", &format!("k{w}")]));
    }
    run_ok(cas(s).arg("verify"));
    s.assert_tmp_empty();
}

/// Issue test 4: After writers are killed with SIGKILL mid-stream, verify flags their staging files, gc
/// removes them at once (same host, dead pids), and verify is clean again.
#[test]
fn gc_cleans_up_after_killed_writers() {
    let s = Store::new();
    let keep = s.put(b"keep");
    run_ok(cas(&s).args(["ref", "set", "keep", &keep]));
    let mut children = Vec::new();
    for i in 0..6 {
        let mut child = cas(&s)
            .args(["put", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(&data(600_000, 100 + i))
            .unwrap();
        let pid = child.id();
        wait_until("the writer's staging file to hold bytes", || {
            staging_files_of(&s.tmp(), pid).iter().any(|(_, n)| *n > 0)
        });
        children.push(child);
    }
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert_eq!(s.object_hashes(), vec![keep.clone()]);
    assert_eq!(files_under(&s.tmp()).len(), 6);

    let out = run(cas(&s).args(["verify", "--json"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify passed with dead staging"
    );
    let r = json(&text(&out.stdout));
    assert_eq!(r["stale_staging"].as_array().unwrap().len(), 6);

    let r = gc(&s, &[]);
    assert_eq!(r["staging_removed"], 6);
    s.assert_tmp_empty();
    run_ok(cas(&s).arg("verify"));
    assert_eq!(s.object_hashes(), vec![keep]);
}

/// Issue test 5: Eviction to a size budget removes cache entries least recently used first (a read
/// counts as a use), and never a ref's object.
#[test]
fn eviction_removes_least_recently_used_entries_first() {
    const SIZE: usize = 100_000;
    let s = Store::new();
    let pinned = s.put(&data(3 * SIZE, 999));
    run_ok(cas(&s).args(["ref", "set", "pinned", &pinned]));
    set_mtime(&s.object_path(&pinned), ago(10 * 86_400));
    let mut keyed = Vec::new();
    for i in 0..10u64 {
        let bytes = data(SIZE, i);
        let out = run_with_stdin(cas(&s).args(["key", "put", &format!("k{i}"), "-"]), &bytes);
        assert!(out.status.success());
        let h = blake3_hex(&bytes);
        // k0 is the least recently used, k9 the most.
        let t = ago((20 - i) * 3600);
        set_mtime(&s.object_path(&h), t);
        set_mtime(&s.entry_file(&format!("k{i}")), t);
        keyed.push(h);
    }
    // Reading k2 (last used 18 h ago) makes it the most recently used.
    bytes_ok(cas(&s).args(["key", "get", "k2"]));

    // Room for the pinned object and five entries.
    let budget = (3 * SIZE + 5 * SIZE + SIZE / 2).to_string();
    let before = files_under(&s.root);
    let r = gc(&s, &["--dry-run", "--max-size", &budget]);
    assert_eq!(r["evicted_entries"], 5);
    assert_eq!(files_under(&s.root), before, "a dry run changed the store");

    let r = gc(&s, &["--max-size", &budget]);
    assert_eq!(r["evicted_entries"], 5, "{r}");
    let present: Vec<u64> = (0..10)
        .filter(|i| {
            run(cas(&s).args(["key", "get", &format!("k{i}")]))
                .status
                .success()
        })
        .collect();
    assert_eq!(present, vec![2, 6, 7, 8, 9], "wrong entries evicted");
    for (i, h) in keyed.iter().enumerate() {
        assert_eq!(
            s.object_path(h).exists(),
            present.contains(&(i as u64)),
            "object of k{i}"
        );
    }
    assert!(r["bytes_after"].as_u64().unwrap() <= budget.parse::<u64>().unwrap());

    // Reading the survivors above used them: within the grace period they are never evicted,
    // whatever the budget (issue 18).
    let r = gc(&s, &["--max-size", "1"]);
    assert_eq!(r["evicted_entries"], 0, "{r}");
    // A budget nothing can meet, with no grace, still never removes a ref's object.
    gc(&s, &["--grace", "0s", "--max-size", "1"]);
    assert!(
        s.object_path(&pinned).is_file(),
        "eviction removed a ref's object"
    );
    assert_eq!(run_ok(cas(&s).args(["key", "ls"])), "");
    run_ok(cas(&s).arg("verify"));
}

/// A standing budget set at `cas init --max-size` applies to every plain `cas gc`.
#[test]
fn standing_budget_from_init_applies_to_gc() {
    let s = Store::uninit();
    run_ok(cas(&s).args(["init", "--max-size", "250k"]));
    for i in 0..5u64 {
        let bytes = data(100_000, i);
        let out = run_with_stdin(cas(&s).args(["key", "put", &format!("k{i}"), "-"]), &bytes);
        assert!(out.status.success(), "{}", text(&out.stderr));
        set_mtime(&s.object_path(&blake3_hex(&bytes)), ago((10 - i) * 3600));
        set_mtime(&s.entry_file(&format!("k{i}")), ago((10 - i) * 3600));
    }
    let r = gc(&s, &[]);
    assert_eq!(r["evicted_entries"], 3, "{r}");
    let ls = run_ok(cas(&s).args(["key", "ls"]));
    let mut keys: Vec<&str> = ls.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["k3", "k4"]);
}

/// Issue test 6: verify finds a corrupted object, quarantines it and exits non-zero; a second verify is
/// clean; the object can be stored again. A ref to a lost object is reported too.
#[test]
fn verify_quarantines_corrupt_objects() {
    let s = Store::new();
    let good = s.put(&data(70_000, 1));
    let bytes = data(300_000, 2);
    let bad = s.put(&bytes);
    let p = s.object_path(&bad);
    let mut flipped = fs::read(&p).unwrap();
    flipped[123_456] ^= 0x40;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&p, &flipped).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();

    let out = run(cas(&s).args(["verify", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let r = json(&text(&out.stdout));
    let corrupt = r["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0]["hash"], bad);
    let q = PathBuf::from(corrupt[0]["quarantined"].as_str().unwrap());
    assert!(q.starts_with(s.quarantine()), "{}", q.display());
    assert_eq!(
        fs::read(&q).unwrap(),
        flipped,
        "quarantine lost the evidence"
    );
    assert!(!p.exists(), "the corrupt object is still served");
    // The human summary names the object too.
    let out = run(cas(&s).arg("verify"));
    assert!(out.status.success(), "second verify: {}", text(&out.stdout));
    assert!(s.object_path(&good).is_file());

    // Storing the bytes again heals the store.
    assert_eq!(s.put(&bytes), bad);
    assert_eq!(fs::read(&p).unwrap(), bytes);

    // A ref whose object is lost is dangling: reported by name, exit 1.
    run_ok(cas(&s).args(["ref", "set", "lost", &good]));
    let gp = s.object_path(&good);
    fs::remove_file(&gp).unwrap();
    let out = run(cas(&s).arg("verify"));
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("lost") && all.contains(&good), "{all}");
}

/// Issue 18, finding 1: eviction ignored the grace period. A cache entry's object put again
/// seconds ago, and the children of a fresh `put -r`, were evicted by `gc --max-size` under
/// the default one-hour grace; the tree could then be named (`ref set` exited 0) but not
/// restored. Now nothing used within the grace period is evicted, and what is older still is.
#[test]
fn eviction_never_takes_what_was_used_within_the_grace_period() {
    let s = Store::new();
    let dir = s.scratch.join("d");
    fs::create_dir_all(&dir).unwrap();
    let big = data(100_000, 18);
    fs::write(dir.join("big"), &big).unwrap();
    run_ok(cas(&s).args(["key", "put", "build:1"]).arg(dir.join("big")));
    let h = run_ok(cas(&s).arg("put").arg(dir.join("big")));
    let h = h.trim();
    let t = run_ok(cas(&s).args(["put", "-r"]).arg(&dir));
    let t = t.trim();
    let r = gc(&s, &["--max-size", "1"]);
    assert_eq!(r["evicted_entries"], 0, "{r}");
    assert_eq!(r["evicted_objects"], 0, "{r}");
    run_ok(cas(&s).args(["has", h]));
    run_ok(cas(&s).args(["ref", "set", "release", t]));
    let out = s.scratch.join("out");
    run_ok(cas(&s).args(["get", "-r", t, "-o"]).arg(&out));
    assert_eq!(fs::read(out.join("big")).unwrap(), big);
    bytes_ok(cas(&s).args(["key", "get", "build:1"]));

    // An hour later (everything aged): the entry is evicted; its object stays, the ref
    // reaches it. A second entry whose object nothing else reaches goes with its object.
    let other = data(50_000, 19);
    let other_path = s.input("other", &other);
    run_ok(cas(&s).args(["key", "put", "build:2"]).arg(&other_path));
    for dir in [s.objects(), s.root.join("index")] {
        for f in files_under(&dir) {
            set_mtime(&f, ago(7200));
        }
    }
    let r = gc(&s, &["--max-size", "1"]);
    assert_eq!(r["evicted_entries"], 2, "{r}");
    assert_eq!(r["evicted_objects"], 1, "{r}");
    let gone = run(cas(&s).args(["key", "get", "build:2"]));
    assert!(!gone.status.success());
    run_ok(cas(&s).args(["has", h]));
    run_ok(cas(&s).arg("verify"));
}

/// Issue 18: a tree just put names children its put did not refresh (the stat cache skips
/// objects refreshed within the last minute, and a grace period can be shorter): the sweep
/// must not condemn the children of a young tree, whatever their own age.
#[test]
fn the_children_of_a_young_tree_are_as_protected_as_the_tree() {
    let s = Store::new();
    let dir = s.scratch.join("d");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a"), data(5000, 1)).unwrap();
    fs::write(dir.join("sub/b"), data(5000, 2)).unwrap();
    let t = run_ok(cas(&s).args(["put", "-r"]).arg(&dir));
    let t = t.trim();
    let children: Vec<String> = s.object_hashes().into_iter().filter(|h| h != t).collect();
    assert_eq!(children.len(), 3, "two files and a subtree");
    for h in &children {
        set_mtime(&s.object_path(h), ago(7200));
    }
    let r = gc(&s, &[]);
    assert_eq!(r["trashed"], 0, "{r}");
    assert_eq!(r["kept_young"], 4, "{r}");
    for h in &children {
        assert!(s.object_path(h).is_file(), "{h} left objects/");
    }
    // Once the tree itself is old and unnamed, the whole closure goes.
    set_mtime(&s.object_path(t), ago(7200));
    let r = gc(&s, &[]);
    assert_eq!(r["trashed"], 4, "{r}");
}

/// Issue 19: `cas rm` of an object a ref or cache entry reaches (directly or through trees)
/// left the name dangling, silently. It is refused, naming one name (and the tree), unless
/// `--force`; an unreferenced object is removed as before.
#[test]
fn rm_refuses_an_object_a_name_reaches_unless_forced() {
    let s = Store::new();
    let dir = s.scratch.join("src");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/deep.txt"), b"deep bytes").unwrap();
    let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&dir))
        .trim()
        .to_owned();
    run_ok(cas(&s).args(["ref", "set", "release", &tree]));
    let deep = blake3_hex(b"deep bytes");
    let cached = s.input("cached", b"cached bytes");
    let keyed = run_ok(cas(&s).args(["key", "put", "build:1"]).arg(&cached))
        .trim()
        .to_owned();
    let free = s.put(b"nobody names me");

    let out = run(cas(&s).args(["rm", &deep]));
    let err = assert_clean_failure(&out, "rm of an object a ref reaches through trees");
    assert!(
        err.contains(&format!(
            "object {deep} is reached by ref \"release\" (through tree "
        )) && err.contains("--force"),
        "{err}"
    );
    assert!(
        s.object_path(&deep).exists(),
        "a refused rm removed the object"
    );
    let out = run(cas(&s).args(["rm", &keyed]));
    let err = assert_clean_failure(&out, "rm of an object a cache entry reaches");
    assert!(err.contains("cache entry \"build:1\""), "{err}");
    let out = run(cas(&s).args(["rm", &tree]));
    let err = assert_clean_failure(&out, "rm of the tree a ref names");
    assert!(err.contains("reached by ref \"release\";"), "{err}");

    // Several at once (one mark for all): the free ones go, the named one stays, exit 1.
    let free2 = s.put(b"nobody names me either");
    let out = run(cas(&s).args(["rm", &free, &deep, &free2]));
    let err = assert_clean_failure(&out, "rm of free, named, free");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!s.object_path(&free).exists() && !s.object_path(&free2).exists());
    assert!(s.object_path(&deep).exists());
    run_ok(cas(&s).args(["rm", "--force", &deep]));
    assert!(!s.object_path(&deep).exists(), "--force did not remove it");
    // What --force leaves: a dangling name, which verify reports.
    let out = run(cas(&s).arg("verify"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// Flips the first byte of an object (as root or as its owner) and runs `verify`, which must
/// quarantine it. Returns the quarantined file.
fn quarantine_one(s: &Store, bytes: &[u8]) -> PathBuf {
    let h = s.put(bytes);
    let p = s.object_path(&h);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = fs::read(&p).unwrap();
    b[0] ^= 1;
    fs::write(&p, &b).unwrap();
    let before = files_under(&s.quarantine());
    let out = run(cas(s).arg("verify"));
    assert_eq!(out.status.code(), Some(1), "verify: {}", text(&out.stderr));
    let after = files_under(&s.quarantine());
    let new: Vec<_> = after.into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1, "verify quarantined {new:?}");
    new[0].clone()
}

/// Issue 19: the quarantine was never counted or cleaned — gc said "28.6 MiB in the store
/// after" while `stats` totalled 57.2 MiB. gc and `stats` count the same areas (objects,
/// trash, quarantine); gc keeps quarantined files for the grace period, then deletes them.
#[test]
fn gc_counts_the_quarantine_and_purges_it_after_the_grace_period() {
    let s = Store::new();
    let kept = s.put(&data(30_000, 1));
    run_ok(cas(&s).args(["ref", "set", "kept", &kept]));
    let q = quarantine_one(&s, &data(50_000, 2));

    let r = gc(&s, &[]);
    assert_eq!(r["quarantine_files"], 1, "{r}");
    assert_eq!(r["quarantine_bytes"], 50_000, "{r}");
    assert_eq!(r["quarantine_purged"], 0, "{r}");
    assert!(q.exists(), "a young quarantined file was deleted");
    assert_eq!(r["bytes_after"], 80_000, "{r}");
    let st = json(&run_ok(cas(&s).args(["--json", "stats"])));
    assert_eq!(
        st["counted_bytes"], r["bytes_after"],
        "stats and gc disagree: {st}"
    );
    let human = run_ok(cas(&s).arg("gc"));
    assert!(human.contains("1 quarantined files of 48.8 KiB"), "{human}");

    // Quarantined more than the grace period ago (the name holds the time): a dry run says so
    // and keeps it, a real run deletes it.
    let name = q.file_name().unwrap().to_str().unwrap().to_owned();
    let mut parts: Vec<String> = name.split('.').map(str::to_owned).collect();
    let secs: u64 = parts[1].parse().unwrap();
    parts[1] = (secs - 7200).to_string();
    let old = q.with_file_name(parts.join("."));
    fs::rename(&q, &old).unwrap();
    let r = gc(&s, &["--dry-run"]);
    assert_eq!(r["quarantine_purged"], 1, "{r}");
    assert!(old.exists(), "a dry run deleted a quarantined file");
    let r = gc(&s, &[]);
    assert_eq!(r["quarantine_purged"], 1, "{r}");
    assert_eq!(r["quarantine_purged_bytes"], 50_000, "{r}");
    assert_eq!(r["quarantine_files"], 0, "{r}");
    assert!(!old.exists(), "an old quarantined file was kept");
    assert_eq!(r["bytes_after"], 30_000, "{r}");

    // `--grace 0s` keeps nothing for inspection.
    let q2 = quarantine_one(&s, &data(1000, 3));
    let r = gc(&s, &["--grace", "0s"]);
    assert_eq!(r["quarantine_purged"], 1, "{r}");
    assert!(!q2.exists());
}

/// Issue 19: `gc --max-size 10M` with 84.5 MiB held by a ref exited 0 without a word. The
/// report says the budget is not met and what holds the bytes; exit 0 (gc did all it may).
#[test]
fn a_budget_gc_cannot_meet_is_reported_with_what_holds_it() {
    let s = Store::new();
    let by_ref = s.put(&data(200_000, 4));
    run_ok(cas(&s).args(["ref", "set", "release", &by_ref]));
    s.put(&data(100_000, 5)); // unnamed and young: kept for the grace period
    quarantine_one(&s, &data(20_000, 6));

    let r = gc(&s, &["--max-size", "10K"]);
    let b = &r["budget_unmet"];
    assert_eq!(b["budget"], 10_240, "{r}");
    assert_eq!(b["bytes_after"], 320_000, "{r}");
    assert_eq!(b["held_by_refs"], 200_000, "{r}");
    assert_eq!(b["held_by_pins"], 0, "{r}");
    assert_eq!(b["held_young"], 100_000, "{r}");
    assert_eq!(b["held_quarantine"], 20_000, "{r}");

    let out = run(cas(&s).args(["gc", "--max-size", "10K"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: the size budget of 10.0 KiB is not met: 312.5 KiB in the store")
            && err.contains("195.3 KiB by objects refs reach")
            && err.contains(
                "97.7 KiB by objects and cache entries used within the grace period of 1h"
            )
            && err.contains("19.5 KiB by quarantined files"),
        "{err}"
    );
    // A budget that is met says nothing.
    let r = gc(&s, &["--max-size", "1M"]);
    assert!(r["budget_unmet"].is_null(), "{r}");
    let out = run(cas(&s).args(["gc", "--max-size", "1M"]));
    assert!(
        !text(&out.stderr).contains("budget"),
        "{}",
        text(&out.stderr)
    );
}

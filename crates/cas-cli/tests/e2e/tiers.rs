//! Tiered stores and push/pull (issue 13), through the real `cas` binary.
//!
//! Two "hosts" each have a node-local store (`cas init --upstream`) in front of one shared
//! upstream store; all three are directories on the local disk. Processes race on both hosts;
//! nothing sleeps to synchronise (bounded polling only).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{
    blake3_hex, cas_at, data, files_under, json_out, kill, run, run_ok, text, wait_until,
};

/// An upstream store and two node-local tiers in front of it.
struct Tiers {
    dir: tempfile::TempDir,
    up: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl Tiers {
    fn new() -> Tiers {
        let dir = tempfile::tempdir().unwrap();
        let (up, a, b) = (
            dir.path().join("shared"),
            dir.path().join("nodeA"),
            dir.path().join("nodeB"),
        );
        run_ok(cas_at(&up).arg("init"));
        for local in [&a, &b] {
            run_ok(cas_at(local).arg("init").arg("--upstream").arg(&up));
        }
        Tiers { dir, up, a, b }
    }

    fn scratch(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn object_path(store: &Path, hex: &str) -> PathBuf {
    store.join("objects").join(&hex[..2]).join(&hex[2..])
}

fn objects_in(store: &Path) -> usize {
    files_under(&store.join("objects")).len()
}

fn put_file(store: &Path, file: &Path) -> String {
    run_ok(cas_at(store).arg("put").arg(file)).trim().to_owned()
}

fn get(store: &Path, hex: &str) -> Output {
    run(cas_at(store).args(["get", hex]))
}

fn assert_clean(store: &Path) {
    let out = run(cas_at(store).arg("verify"));
    assert!(
        out.status.success(),
        "verify {} is not clean: {}{}",
        store.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let left = files_under(&store.join("tmp"));
    assert!(left.is_empty(), "staging files left: {left:?}");
}

/// Racing writers of the same and different objects on both hosts, then racing readers that
/// fetch each other's objects: every process succeeds, both tiers and the upstream hold
/// exactly the right bytes, and a ref created from both hosts at once has one winner.
#[test]
fn racing_writers_on_two_hosts_converge_in_both_tiers() {
    let t = Tiers::new();
    let shared: Vec<Vec<u8>> = (0..5).map(|i| data(1000 + i * 90_000, i as u64)).collect();
    let mut all = Vec::new();
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let mut files = Vec::new();
        let mut want = Vec::new();
        for (i, d) in shared.iter().enumerate() {
            files.push(t.scratch(&format!("w{w}/s{i}"), d));
            want.push(blake3_hex(d));
        }
        let own = data(70_000, 1000 + w);
        files.push(t.scratch(&format!("w{w}/own"), &own));
        want.push(blake3_hex(&own));
        all.push((blake3_hex(&own), own));
        let node = if w % 2 == 0 { &t.a } else { &t.b };
        writers.push((spawn(cas_at(node).arg("put").args(&files)), want));
    }
    for d in &shared {
        all.push((blake3_hex(d), d.clone()));
    }
    for (child, want) in writers {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "writer: {}", text(&out.stderr));
        let got: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(got, want);
    }
    // Write-through: the upstream has every object once, before any reader asks.
    assert_eq!(objects_in(&t.up), 5 + 8);
    // Racing readers on both hosts fetch what the other host wrote.
    let mut readers = Vec::new();
    for r in 0..8 {
        let node = if r % 2 == 0 { &t.a } else { &t.b };
        for (h, _) in &all {
            readers.push((spawn(cas_at(node).args(["get", h])), h.clone()));
        }
    }
    for (child, h) in readers {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "get {h}: {}", text(&out.stderr));
        let want = &all.iter().find(|(x, _)| *x == h).unwrap().1;
        assert!(&out.stdout == want, "wrong bytes for {h}");
    }
    for store in [&t.a, &t.b, &t.up] {
        assert_eq!(objects_in(store), 5 + 8, "{}", store.display());
        assert_clean(store);
    }
    // Refs live upstream: one ref created from both hosts at once has exactly one winner.
    // A barrier (test hook) holds every setter just before its update until all 6 are there:
    // the sets overlap, every run.
    let barrier = t.dir.path().join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let mut setters = Vec::new();
    for (i, (h, _)) in all.iter().take(6).enumerate() {
        let node = if i % 2 == 0 { &t.a } else { &t.b };
        setters.push(spawn(
            cas_at(node)
                .env("CAS_TEST_BARRIER", format!("6:{}", barrier.display()))
                .args(["ref", "set", "first", h, "--expect-none"]),
        ));
    }
    let mut wins = 0;
    for c in setters {
        let out = c.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(
            err.contains("cas-test: barrier passed"),
            "a setter did not overlap the others: {err}"
        );
        if out.status.success() {
            wins += 1;
        } else {
            assert!(err.contains("expected absent"), "{err}");
        }
    }
    assert_eq!(wins, 1, "exactly one --expect-none set wins");
    let on_a = run_ok(cas_at(&t.a).args(["ref", "get", "first"]));
    let on_b = run_ok(cas_at(&t.b).args(["ref", "get", "first"]));
    let upstream = run_ok(cas_at(&t.up).args(["ref", "get", "first"]));
    assert_eq!(on_a, upstream);
    assert_eq!(on_b, upstream);
    assert!(
        files_under(&t.a.join("refs")).is_empty(),
        "refs are not local"
    );
}

/// Keys and trees cross hosts through the tiers: put on A, read on B.
#[test]
fn keys_and_trees_cross_hosts() {
    let t = Tiers::new();
    let out = common::run_with_stdin(
        cas_at(&t.a).args(["key", "put", "build:42", "-", "--meta", "x"]),
        b"built on A",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        run_ok(cas_at(&t.b).args(["key", "get", "build:42"])),
        "built on A"
    );
    assert!(
        files_under(&t.a.join("index")).is_empty(),
        "keys are not local"
    );
    let tree_src = t.dir.path().join("scratch/tree");
    for i in 0..20u64 {
        let d = tree_src.join(format!("sub{}", i % 3));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), data(3000 + i as usize, 500 + i)).unwrap();
    }
    let tree = run_ok(cas_at(&t.a).args(["put", "-r"]).arg(&tree_src))
        .trim()
        .to_owned();
    // A hash prefix resolves against the upstream (B has not cached the tree yet).
    assert!(!object_path(&t.b, &tree).exists());
    let shown = run_ok(cas_at(&t.b).args(["show", &tree[..12]]));
    assert!(shown.contains("sub0"), "{shown}");
    let restored = t.dir.path().join("restored-on-b");
    run_ok(cas_at(&t.b).args(["get", "-r", &tree, "-o"]).arg(&restored));
    for p in files_under(&tree_src) {
        let rel = p.strip_prefix(&tree_src).unwrap();
        assert_eq!(
            std::fs::read(restored.join(rel)).unwrap(),
            std::fs::read(&p).unwrap()
        );
    }
    assert_clean(&t.b);
}

/// Issue 19: `ref ls` on a node-local tier printed nothing (exit 0) while `ref get` read
/// the upstream. It lists what `ref get` reads — the upstream's refs — as text and JSON.
#[test]
fn ref_ls_on_a_tier_lists_the_upstreams_refs() {
    let t = Tiers::new();
    let h1 = put_file(&t.a, &t.scratch("one", b"one"));
    let h2 = put_file(&t.a, &t.scratch("two", b"two"));
    run_ok(cas_at(&t.a).args(["ref", "set", "release/v1", &h1]));
    run_ok(cas_at(&t.up).args(["ref", "set", "latest", &h2]));
    assert!(
        files_under(&t.b.join("refs")).is_empty(),
        "refs are not local"
    );
    // B never saw either: what it lists is what `ref get` there reads.
    assert_eq!(
        run_ok(cas_at(&t.b).args(["ref", "get", "latest"])).trim(),
        h2
    );
    assert_eq!(
        run_ok(cas_at(&t.b).args(["ref", "ls"])),
        format!("latest {h2}\nrelease/v1 {h1}\n")
    );
    assert_eq!(
        run_ok(cas_at(&t.b).args(["ref", "ls", "release/"])),
        format!("release/v1 {h1}\n")
    );
    let out = run(cas_at(&t.a).args(["--json", "ref", "ls"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({ "name": "latest", "hash": h2 }),
            serde_json::json!({ "name": "release/v1", "hash": h1 }),
        ]
    );
}

/// A corrupt local copy is quarantined by the get that finds it, fetched again from the
/// upstream, and the output is right.
#[test]
fn corrupt_local_copy_is_quarantined_and_fetched_again() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tiers::new();
    let bytes = data(200_000, 7);
    let h = put_file(&t.a, &t.scratch("x", &bytes));
    // Host B fetches it into its tier.
    assert!(get(&t.b, &h).stdout == bytes);
    let local = object_path(&t.b, &h);
    assert!(local.is_file(), "fetched object published in B's tier");
    // Flip a byte of B's copy.
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut damaged = std::fs::read(&local).unwrap();
    damaged[12_345] ^= 0x40;
    std::fs::write(&local, &damaged).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o444)).unwrap();

    let out = get(&t.b, &h);
    assert!(out.status.success(), "get: {}", text(&out.stderr));
    assert!(out.stdout == bytes, "get returned the right bytes");
    assert_eq!(files_under(&t.b.join("quarantine")).len(), 1, "quarantined");
    assert_eq!(std::fs::read(&local).unwrap(), bytes, "fetched again");
    // The same through -o and through a keyed get.
    let dst = t.dir.path().join("out");
    run_ok(cas_at(&t.b).args(["get", &h, "-o"]).arg(&dst));
    assert_eq!(std::fs::read(&dst).unwrap(), bytes);
    assert_clean(&t.b);
    assert_clean(&t.up);
    // The tier's gc counts the quarantined copy, keeps it for the grace period, then not.
    let r = json_out(&run(cas_at(&t.b).args(["gc", "--json"])), "cas --json");
    assert_eq!(r["quarantine_files"], 1, "{r}");
    assert_eq!(r["bytes_after"], 400_000, "{r}");
    let r = json_out(
        &run(cas_at(&t.b).args(["gc", "--grace", "0s", "--json"])),
        "cas --json",
    );
    assert_eq!(r["quarantine_purged"], 1, "{r}");
    assert!(files_under(&t.b.join("quarantine")).is_empty());
}

/// Issue 18, finding 11: a tier `get` of an object whose upstream copy is corrupt
/// quarantined it upstream, then reported "not found in the store (UPSTREAM)" — the refetch
/// meant for a corrupt *local* copy ran again and found nothing. It must say corrupt, naming
/// the object, and nothing wrong lands in the tier.
#[test]
fn corrupt_upstream_copy_is_reported_corrupt() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tiers::new();
    let bytes = data(200_000, 11);
    let h = put_file(&t.a, &t.scratch("y", &bytes));
    let upstream_copy = object_path(&t.up, &h);
    let mut damaged = bytes.clone();
    damaged[99_999] ^= 0x01;
    for args in [vec!["get", &h], vec!["get", &h, "-o", "-"]] {
        // (Again for each: the get before quarantined the damaged copy.)
        if upstream_copy.exists() {
            std::fs::set_permissions(&upstream_copy, std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        std::fs::write(&upstream_copy, &damaged).unwrap();
        let out = cas_at(&t.b).args(&args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("corrupt") && err.contains(&h) && !err.contains("not found"),
            "{args:?}: a corrupt upstream copy must be reported as corrupt: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: wrote bytes");
    }
    assert_eq!(
        files_under(&t.up.join("quarantine")).len(),
        2,
        "quarantined upstream"
    );
    assert!(
        !object_path(&t.b, &h).exists(),
        "nothing published in the tier"
    );
}

/// With the upstream unreachable, cached objects are served; uncached reads, writes, refs and
/// keys fail naming the upstream; once it is back, everything works again.
#[test]
fn unreachable_upstream_serves_cache_and_fails_clearly() {
    let t = Tiers::new();
    let cached = data(50_000, 1);
    let hc = put_file(&t.a, &t.scratch("cached", &cached));
    let other = data(60_000, 2);
    let ho = put_file(&t.b, &t.scratch("other", &other)); // only upstream and B have it
    run_ok(cas_at(&t.a).args(["ref", "set", "r", &hc]));

    let away = t.dir.path().join("shared.away");
    std::fs::rename(&t.up, &away).unwrap();
    let shown = t.up.display().to_string();

    let out = get(&t.a, &hc);
    assert!(out.status.success(), "cached read: {}", text(&out.stderr));
    assert!(out.stdout == cached);

    let expect_fail = |out: Output, what: &str| {
        assert_eq!(out.status.code(), Some(1), "{what} should fail");
        let err = text(&out.stderr);
        assert!(
            err.contains("upstream") && err.contains(&shown),
            "{what}: the error names the upstream: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    };
    expect_fail(get(&t.a, &ho), "uncached get");
    expect_fail(
        run(cas_at(&t.a).arg("put").arg(t.scratch("new", b"new bytes"))),
        "put",
    );
    expect_fail(run(cas_at(&t.a).args(["ref", "get", "r"])), "ref get");
    expect_fail(run(cas_at(&t.a).args(["ref", "ls"])), "ref ls");
    expect_fail(
        run(cas_at(&t.a).args(["key", "get", "some-key"])),
        "key get",
    );
    // gc without a budget needs nothing from the upstream; eviction does, and says so.
    run_ok(cas_at(&t.a).arg("gc"));
    expect_fail(
        run(cas_at(&t.a).args(["gc", "--max-size", "0"])),
        "gc eviction",
    );
    assert!(object_path(&t.a, &hc).is_file(), "nothing evicted blindly");
    // The failed put published nothing locally (the upstream gets an object first).
    assert!(!object_path(&t.a, &blake3_hex(b"new bytes")).exists());
    assert_clean(&t.a);

    // A per-command upstream that does not exist at all.
    let missing = t.dir.path().join("never-mounted");
    let out = run(cas_at(&t.b)
        .arg("--upstream")
        .arg(&missing)
        .args(["get", &hc]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&missing.display().to_string()));
    let out = run(cas_at(&t.b)
        .arg("--upstream")
        .arg(&missing)
        .args(["get", &ho]));
    assert!(
        out.status.success() && out.stdout == other,
        "B's cache serves"
    );

    std::fs::rename(&away, &t.up).unwrap();
    assert!(get(&t.a, &ho).stdout == other, "fetched once back");
    assert_eq!(run_ok(cas_at(&t.a).args(["ref", "get", "r"])).trim(), hc);
    assert_clean(&t.a);
}

/// gc of a tier evicts cached objects least recently used first down to its budget and
/// never a ref'd object's only copy; the evicted ones are fetched again on demand.
#[test]
fn tier_gc_evicts_to_budget_and_refetches() {
    let t = Tiers::new();
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| data(100_000, 50 + i)).collect();
    let hashes: Vec<String> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| put_file(&t.a, &t.scratch(&format!("g{i}"), b)))
        .collect();
    // Without a budget nothing is collected: the tier is a cache, not garbage.
    run_ok(cas_at(&t.a).args(["gc", "--now"]));
    assert_eq!(objects_in(&t.a), 6);
    let out = run(cas_at(&t.a).args(["gc", "--max-size", "250K", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = json_out(&out, "cas --json");
    assert_eq!(r["evicted_objects"], 4, "{r}");
    assert_eq!(objects_in(&t.a), 2);
    assert_eq!(objects_in(&t.up), 6, "the upstream keeps everything");
    for (h, b) in hashes.iter().zip(&blobs) {
        assert!(get(&t.a, h).stdout == *b);
    }
    assert_eq!(objects_in(&t.a), 6);
    assert_clean(&t.a);
}

/// A tree of many files in `store` under `ref`; returns the source directory and tree hash.
fn tree_with_ref(
    store: &Path,
    base: &Path,
    name: &str,
    files: usize,
    seed: u64,
) -> (PathBuf, String) {
    let dir = base.join(name);
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join(format!("f{i}")),
            data(8_000 + i * 13, seed + i as u64),
        )
        .unwrap();
    }
    let h = run_ok(cas_at(store).args(["put", "-r"]).arg(&dir))
        .trim()
        .to_owned();
    run_ok(cas_at(store).args(["ref", "set", name, &h]));
    (dir, h)
}

fn assert_same_tree(store: &Path, tree: &str, original: &Path, out: &Path) {
    run_ok(cas_at(store).args(["get", "-r", tree, "-o"]).arg(out));
    let rel = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        files_under(root)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    assert!(rel(original) == rel(out), "restored tree differs");
}

/// A push killed with SIGKILL once some objects arrived, resumed by a pull from the other side: the
/// destination verifies clean, the ref is set, the tree restores identical, and the resumed
/// transfer skipped what had arrived.
#[test]
fn push_killed_halfway_then_pull_resumes() {
    let base = tempfile::tempdir().unwrap();
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    run_ok(cas_at(&src).arg("init"));
    // Every object synced with its directory at the destination: a slower copy to kill.
    run_ok(cas_at(&dst).args(["--durability", "full", "init"]));
    let (dir, tree) = tree_with_ref(&src, base.path(), "dataset", 600, 10);
    let total = files_under(&src.join("objects")).len();

    // The push pauses (a test hook) once a quarter of the objects were copied, and says so:
    // the kill then lands halfway, every run.
    let mut push = spawn(
        cas_at(&src)
            .env("CAS_TEST_TRANSFER_PAUSE_AFTER", (total / 4).to_string())
            .args(["push", "--jobs", "2"])
            .arg(&dst)
            .arg("dataset"),
    );
    let mut stderr = std::io::BufReader::new(push.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "the push ended without pausing: {:?}", push.wait());
        if line.trim() == "cas-test: transfer paused" {
            break;
        }
    }
    let pid = push.id();
    kill(pid, "KILL");
    let status = push.wait().unwrap();
    assert!(!status.success(), "the killed push exited {status}");
    let arrived = objects_in(&dst);
    // SIGKILL cannot be caught: at most the killed writer's own staging files are left.
    for p in files_under(&dst.join("tmp")) {
        assert_eq!(common::staging_pid(&p), Some(pid), "{}", p.display());
    }
    assert!(
        arrived >= total / 4 && arrived < total,
        "{arrived} of {total} objects arrived before the kill"
    );
    let refs = run(cas_at(&dst).args(["ref", "get", "dataset"]));
    assert_eq!(
        refs.status.code(),
        Some(1),
        "no ref before all objects arrived"
    );
    // Resume from the other side.
    let out = run(cas_at(&dst)
        .args(["pull", "--json"])
        .arg(&src)
        .arg("dataset"));
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    let r = json_out(&out, "cas --json");
    assert_eq!(r["objects"], total as u64, "{r}");
    assert_eq!(r["objects_skipped"], arrived as u64, "{r}");
    assert_eq!(
        r["objects_copied"].as_u64().unwrap() + r["objects_skipped"].as_u64().unwrap(),
        total as u64
    );
    assert_eq!(r["refs_set"], serde_json::json!(["dataset"]), "{r}");
    // gc removes the killed writer's staging files (same host, dead pid) and nothing else.
    run_ok(cas_at(&dst).arg("gc"));
    assert_eq!(objects_in(&dst), total);
    assert_clean(&dst);
    assert_eq!(
        run_ok(cas_at(&dst).args(["ref", "get", "dataset"])).trim(),
        tree
    );
    assert_same_tree(&dst, &tree, &dir, &base.path().join("restored"));
    // Nothing left to do.
    let r = json_out(
        &run(cas_at(&src)
            .args(["push", "--json"])
            .arg(&dst)
            .arg("dataset")),
        "cas --json",
    );
    assert_eq!(r["objects_copied"], 0);
    assert_eq!(r["refs_unchanged"], serde_json::json!(["dataset"]));
}

/// A ref the destination moved while a push ran is not overwritten: the push exits 1 naming
/// it; `--force` overwrites. Keys transfer too.
#[test]
fn push_conflicts_when_destination_moved_meanwhile() {
    let base = tempfile::tempdir().unwrap();
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    run_ok(cas_at(&src).arg("init"));
    run_ok(cas_at(&dst).args(["--durability", "full", "init"]));
    let old = blake3_hex(b"old");
    let mine = blake3_hex(b"theirs");
    for (store, bytes) in [(&dst, &b"old"[..]), (&dst, b"theirs")] {
        let out = common::run_with_stdin(cas_at(store).args(["put", "-"]), bytes);
        assert!(out.status.success());
    }
    run_ok(cas_at(&dst).args(["ref", "set", "dataset", &old]));

    // Stop the push once it is copying (it read the destination's value before), move the
    // ref on the destination, let the push go on. Bounded retries with a larger tree in the
    // unlikely case the push got past the copy before it was stopped.
    let mut concluded = false;
    for attempt in 0..3u64 {
        let (_, tree) = tree_with_ref(
            &src,
            base.path(),
            &format!("t{attempt}"),
            400 << attempt,
            1000 * (attempt + 1),
        );
        run_ok(cas_at(&src).args(["ref", "set", "dataset", &tree]));
        run_ok(cas_at(&dst).args(["ref", "set", "dataset", &old]));
        let before = objects_in(&dst);
        let mut push = spawn(cas_at(&src).arg("push").arg(&dst).arg("dataset"));
        wait_until("the push to copy", || {
            objects_in(&dst) > before || push.try_wait().unwrap().is_some()
        });
        kill(push.id(), "STOP");
        let still_old = run_ok(cas_at(&dst).args(["ref", "get", "dataset"])).trim() == old
            && !dst.join("refs/dataset.lock").exists();
        if still_old {
            run_ok(cas_at(&dst).args(["ref", "set", "dataset", &mine]));
        }
        kill(push.id(), "CONT");
        let out = push.wait_with_output().unwrap();
        if !still_old {
            eprintln!("note: attempt {attempt}: the push was past its copy when stopped");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains("ref dataset") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(
            run_ok(cas_at(&dst).args(["ref", "get", "dataset"])).trim(),
            mine,
            "the destination's move is kept"
        );
        let out = run(cas_at(&src)
            .args(["push", "--force", "--json"])
            .arg(&dst)
            .arg("dataset"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            json_out(&out, "cas --json")["refs_set"],
            serde_json::json!(["dataset"])
        );
        assert_eq!(
            run_ok(cas_at(&dst).args(["ref", "get", "dataset"])).trim(),
            tree
        );
        concluded = true;
        break;
    }
    assert!(concluded, "never caught a push before it set its ref");
    // A compare-and-swap against the value at the start is also what a plain re-push does:
    // the destination's current value is the expectation, so it succeeds.
    assert_clean(&dst);

    // Keys: pushed with their metadata.
    let out = common::run_with_stdin(
        cas_at(&src).args(["key", "put", "build:1", "-", "--meta", "m=1"]),
        b"artifact",
    );
    assert!(out.status.success());
    run_ok(
        cas_at(&src)
            .arg("push")
            .arg(&dst)
            .args(["--key", "build:1"]),
    );
    let info = json_out(
        &run(cas_at(&dst).args(["key", "info", "build:1", "--json"])),
        "cas --json",
    );
    assert_eq!(info["metadata"], "m=1");
    assert_eq!(
        run_ok(cas_at(&dst).args(["key", "get", "build:1"])),
        "artifact"
    );
    // Nothing named: a usage error, not a silent no-op.
    let out = run(cas_at(&src).arg("push").arg(&dst));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// A read-only upstream: misses are fetched, puts stay local, refs are read upstream and
/// cannot be set through the tier.
#[test]
fn readonly_upstream_is_never_written() {
    let t = Tiers::new();
    let published = data(30_000, 3);
    let h = put_file(&t.up, &t.scratch("pub", &published));
    run_ok(cas_at(&t.up).args(["ref", "set", "dataset", &h]));
    let before = files_under(&t.up);
    let ro = |store: &Path| {
        let mut c = cas_at(store);
        c.arg("--upstream-readonly");
        c
    };
    assert!(run(ro(&t.a).args(["get", &h])).stdout == published);
    assert_eq!(run_ok(ro(&t.a).args(["ref", "get", "dataset"])).trim(), h);
    let mine = run_ok(ro(&t.a).arg("put").arg(t.scratch("mine", b"local only")))
        .trim()
        .to_owned();
    assert!(object_path(&t.a, &mine).is_file());
    let out = run(ro(&t.a).args(["ref", "set", "x", &mine]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("read-only"),
        "{}",
        text(&out.stderr)
    );
    // gc never evicts the only copy of a local put.
    run_ok(ro(&t.a).args(["gc", "--max-size", "0"]));
    assert!(object_path(&t.a, &mine).is_file());
    assert!(
        !object_path(&t.a, &h).exists(),
        "the cached copy was evicted"
    );
    assert_eq!(files_under(&t.up), before, "upstream untouched");
    // `cas init --upstream` refuses an upstream that is not a store, and creates nothing.
    let typo = t.dir.path().join("nodeC");
    let out = run(cas_at(&typo)
        .arg("init")
        .arg("--upstream")
        .arg(t.dir.path().join("sahred")));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sahred"),
        "{}",
        text(&out.stderr)
    );
    assert!(!typo.exists());
}

/// SIGTERM while a put is writing through to the upstream removes this process's staging
/// files in both stores (the tier's and the upstream's) and exits 143; nothing is published.
#[test]
fn signal_during_write_through_cleans_both_stores() {
    let t = Tiers::new();
    let big = t.scratch("big", &data(192 << 20, 99));
    let h = blake3_hex(&std::fs::read(&big).unwrap());
    let mut concluded = false;
    for _ in 0..3 {
        let mut put = spawn(cas_at(&t.a).arg("put").arg(&big));
        let pid = put.id();
        wait_until("a staging file of the put in the upstream", || {
            !common::staging_files_of(&t.up.join("tmp"), pid).is_empty()
                || put.try_wait().unwrap().is_some()
        });
        if put.try_wait().unwrap().is_some() {
            eprintln!("note: the put finished before it was seen writing through");
            let _ = put.wait();
            run_ok(cas_at(&t.a).args(["rm", &h]));
            run_ok(cas_at(&t.up).args(["rm", &h]));
            continue;
        }
        kill(pid, "TERM");
        let status = put.wait().unwrap();
        assert_eq!(status.code(), Some(143));
        for store in [&t.a, &t.up] {
            let left = files_under(&store.join("tmp"));
            assert!(
                left.is_empty(),
                "{}: staging left: {left:?}",
                store.display()
            );
            assert!(!object_path(store, &h).exists(), "nothing published");
        }
        concluded = true;
        break;
    }
    assert!(concluded, "never caught the put writing through");
}

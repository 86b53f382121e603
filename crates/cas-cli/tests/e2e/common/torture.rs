//! The acknowledged-names torture test (issue 18; docs/format.md "Publishing a name").
//!
//! Several writer threads each drive the real `cas` binary through a seeded random mix of
//! operations — put, put -r, put --ref, ref set with and without --expect, key put, key set,
//! key ensure, push to a second store, pull back from it, rm — while one thread per store runs
//! gc in a loop at grace 0, a short grace, the default grace and with a size budget. Content
//! comes from a small pool, so the same bytes are put again after gc found them unreachable:
//! the classic dedup-against-condemned race. Every name a command acknowledged (exit 0) is
//! recorded with the content it must hold; writers re-check earlier names while gc runs, and
//! afterwards every acknowledged name must restore byte for byte and `verify` must be clean.
//!
//! The seed is printed; `CAS_TEST_SEED=N` replays it, `CAS_TORTURE_SECS` sets the duration.
//! The stores may be seen through several "hosts" (mount points of one shared store, commands
//! run under another hostname): writer `w` runs on host `w % hosts`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{blake3_hex, data, files_under, text};

/// A small deterministic generator (splitmix64): the whole run follows from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What an acknowledged name must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// A blob of the pool.
    Blob(usize),
    /// A directory of the pool, stored as a tree.
    Dir(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    Ref(String),
    Key(String),
}

/// The content pool: blobs, and directories built from them (shared files, a shared
/// subdirectory), written once under `scratch`.
struct Pool {
    blobs: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

const BLOBS: usize = 24;
/// Directories: a few bases, each in several variants (one file differs), so far more trees
/// exist than names can hold at once: trees and their children keep falling out of reach
/// and being put again.
const DIR_BASES: usize = 4;
const DIR_VARIANTS: usize = 5;
const DIRS: usize = DIR_BASES * DIR_VARIANTS;
/// Writer threads, each running one `cas` at a time.
const WRITERS: usize = 3;

impl Pool {
    fn new(scratch: &Path, seed: u64) -> Pool {
        let mut rng = Rng(seed ^ 0x5eed);
        let blobs: Vec<PathBuf> = (0..BLOBS)
            .map(|i| {
                let p = scratch.join(format!("blob{i}"));
                let len = 1 + rng.below(24_000);
                fs::write(&p, data(len, seed.wrapping_add(i as u64))).unwrap();
                p
            })
            .collect();
        let dirs = (0..DIRS)
            .map(|d| {
                let (base, variant) = (d / DIR_VARIANTS, d % DIR_VARIANTS);
                let root = scratch.join(format!("dir{d}"));
                fs::create_dir_all(root.join("sub/deeper")).unwrap();
                for f in 0..3 {
                    let b = (base + f * 3) % BLOBS;
                    fs::copy(&blobs[b], root.join(format!("f{f}"))).unwrap();
                }
                // The same deeper content in every dir: a subtree shared between trees.
                fs::copy(&blobs[0], root.join("sub/deeper/shared")).unwrap();
                // Per variant: a subtree shared by one base's variants, and a file of its own.
                fs::copy(&blobs[base % BLOBS], root.join("sub/own")).unwrap();
                let v = data(300 + variant, seed.wrapping_mul(7).wrapping_add(d as u64));
                fs::write(root.join("variant"), v).unwrap();
                root
            })
            .collect();
        Pool { blobs, dirs }
    }
}

/// `cas --store STORE` on this host.
pub fn cas_here(_host: usize, store: &Path) -> Command {
    super::cas_at(store)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

/// A command that must succeed; its trimmed stdout.
fn must(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what}: {cmd:?} exited {}: {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// The one failure a name update may have beside gc: the object was collected between its
/// put and the update (grace 0), reported cleanly as not found. Anything else fails the test.
fn allowed_not_found(out: &Output, what: &str) -> bool {
    if out.status.success() {
        return false;
    }
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: not a clean failure: {err}"
    );
    assert!(
        err.contains("not found"),
        "{what}: failed other than by a collected object: {err}"
    );
    true
}

/// Checks that `name` in `store` holds `want` now: the pointer, then the content restored.
fn check(
    cas_at: &dyn Fn(&Path) -> Command,
    store: &Path,
    name: &Name,
    want: &Want,
    pool: &Pool,
    out_dir: &Path,
) -> Result<(), String> {
    let (label, bytes_cmd): (String, Vec<String>) = match name {
        Name::Ref(r) => (
            format!("ref {r}"),
            vec!["ref".into(), "get".into(), r.clone()],
        ),
        Name::Key(k) => (
            format!("key {k}"),
            vec!["key".into(), "info".into(), k.clone()],
        ),
    };
    let out = run(cas_at(store).args(&bytes_cmd));
    if !out.status.success() {
        return Err(format!("{label}: {}", text(&out.stderr)));
    }
    let info = text(&out.stdout);
    let hash = match name {
        Name::Ref(_) => info.trim().to_owned(),
        Name::Key(_) => info
            .split_whitespace()
            .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("{label}: no hash in `key info`: {info}"))?
            .to_owned(),
    };
    match want {
        Want::Blob(i) => {
            let expected = fs::read(&pool.blobs[*i]).unwrap();
            if hash != blake3_hex(&expected) {
                return Err(format!("{label} points to {hash}, want blob {i}"));
            }
            let out = run(cas_at(store).args(["get", &hash]));
            if !out.status.success() || out.stdout != expected {
                return Err(format!("{label}: get {hash}: {}", text(&out.stderr)));
            }
        }
        Want::Dir(d) => {
            let dest = out_dir.join(format!("check-{}", blake3_hex(label.as_bytes())));
            let _ = fs::remove_dir_all(&dest);
            let out = run(cas_at(store).args(["get", "-r", &hash, "-o"]).arg(&dest));
            if !out.status.success() {
                return Err(format!("{label}: get -r {hash}: {}", text(&out.stderr)));
            }
            let src = &pool.dirs[*d];
            let want_files = files_under(src);
            let got_files = files_under(&dest);
            if want_files.len() != got_files.len() {
                return Err(format!(
                    "{label}: restored {} files, want {}",
                    got_files.len(),
                    want_files.len()
                ));
            }
            for f in want_files {
                let rel = f.strip_prefix(src).unwrap();
                if fs::read(&f).unwrap() != fs::read(dest.join(rel)).unwrap_or_default() {
                    return Err(format!("{label}: {} differs after restore", rel.display()));
                }
            }
            let _ = fs::remove_dir_all(&dest);
        }
    }
    Ok(())
}

/// The acknowledged names of both stores, and counters for the report.
#[derive(Default)]
struct Acks {
    a: Mutex<BTreeMap<Name, Want>>,
    b: Mutex<BTreeMap<Name, Want>>,
    count: AtomicU64,
    collected: AtomicU64,
    rechecked: AtomicU64,
}

impl Acks {
    fn ack(&self, in_b: bool, name: Name, want: Want) {
        let map = if in_b { &self.b } else { &self.a };
        map.lock().unwrap().insert(name, want);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

// `a` and `b` are the two stores, as in the module docs.
#[allow(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    clippy::too_many_arguments
)]
fn writer(
    w: usize,
    seed: u64,
    env: &Env<'_>,
    pool: &Pool,
    acks: &Acks,
    until: Instant,
    work: &Path,
) {
    let host = w % env.a.len();
    let (a, b) = (env.a[host].as_path(), env.b[host].as_path());
    let cas_at = |store: &Path| (env.cmd)(host, store);
    let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(w as u64));
    let mut n = 0u64;
    // This writer's names and their last acknowledged values (for --expect).
    let mut mine: Vec<(String, String)> = Vec::new();
    while Instant::now() < until {
        n += 1;
        let blob = rng.below(BLOBS);
        let dir = rng.below(DIRS);
        let blob_path = &pool.blobs[blob];
        let op = rng.below(12);
        match op {
            // A bare put: acknowledged, but named by nothing (gc may take it at grace 0).
            0 => {
                must(cas_at(a).arg("put").arg(blob_path), "put");
            }
            // put -r, then name the tree.
            1 => {
                let t = must(cas_at(a).args(["put", "-r"]).arg(&pool.dirs[dir]), "put -r");
                let name = format!("w{w}/t{}", n % 5);
                let out = run(cas_at(a).args(["ref", "set", &name, &t]));
                if allowed_not_found(&out, "ref set of a tree") {
                    acks.collected.fetch_add(1, Ordering::Relaxed);
                } else {
                    acks.ack(false, Name::Ref(name.clone()), Want::Dir(dir));
                    mine.retain(|(m, _)| *m != name);
                    mine.push((name, t));
                }
            }
            // put --ref: one command, retried inside cas when gc collects in between.
            2 => {
                let name = format!("w{w}/f{}", n % 5);
                let h = must(
                    cas_at(a).args(["put", "--ref", &name]).arg(blob_path),
                    "put --ref",
                );
                acks.ack(false, Name::Ref(name.clone()), Want::Blob(blob));
                mine.retain(|(m, _)| *m != name);
                mine.push((name, h));
            }
            // Compare-and-swap of one of this writer's refs to a tree.
            3 => {
                let Some((name, old)) = mine.get(rng.below(mine.len().max(1))).cloned() else {
                    continue;
                };
                let t = must(cas_at(a).args(["put", "-r"]).arg(&pool.dirs[dir]), "put -r");
                let out = run(cas_at(a).args(["ref", "set", &name, &t, "--expect", &old]));
                if allowed_not_found(&out, "ref set --expect") {
                    acks.collected.fetch_add(1, Ordering::Relaxed);
                } else {
                    acks.ack(false, Name::Ref(name.clone()), Want::Dir(dir));
                    mine.retain(|(m, _)| *m != name);
                    mine.push((name, t));
                }
            }
            4 => {
                let key = format!("w{w}:p{}", n % 4);
                must(
                    cas_at(a).args(["key", "put", &key]).arg(blob_path),
                    "key put",
                );
                acks.ack(false, Name::Key(key), Want::Blob(blob));
            }
            // key set to a tree just put (may be collected in between at grace 0).
            5 => {
                let key = format!("w{w}:s{}", n % 4);
                let t = must(cas_at(a).args(["put", "-r"]).arg(&pool.dirs[dir]), "put -r");
                let out = run(cas_at(a).args(["key", "set", &key, &t]));
                if allowed_not_found(&out, "key set") {
                    acks.collected.fetch_add(1, Ordering::Relaxed);
                } else {
                    acks.ack(false, Name::Key(key), Want::Dir(dir));
                }
            }
            // key ensure: the value is a function of the key, so every writer agrees on it.
            6 => {
                let key = format!("ensure:{blob}");
                let out = must(
                    cas_at(a)
                        .args(["key", "ensure", &key, "--", "cat"])
                        .arg(blob_path),
                    "key ensure",
                );
                let _ = out;
                acks.ack(false, Name::Key(key), Want::Blob(blob));
            }
            // push one of this writer's refs to B.
            7 => {
                let Some((name, _)) = mine.get(rng.below(mine.len().max(1))).cloned() else {
                    continue;
                };
                let want = acks
                    .a
                    .lock()
                    .unwrap()
                    .get(&Name::Ref(name.clone()))
                    .cloned();
                must(
                    cas_at(a).args(["push", "--force"]).arg(b).arg(&name),
                    "push",
                );
                acks.ack(
                    true,
                    Name::Ref(name),
                    want.expect("a name of mine is acknowledged"),
                );
            }
            // A name made in B, pulled into A.
            8 => {
                let name = format!("b/w{w}/{}", n % 3);
                must(
                    cas_at(b).args(["put", "--ref", &name]).arg(blob_path),
                    "put --ref in B",
                );
                acks.ack(true, Name::Ref(name.clone()), Want::Blob(blob));
                must(cas_at(a).arg("pull").arg(b).arg(&name), "pull");
                acks.ack(false, Name::Ref(name), Want::Blob(blob));
            }
            // rm of content no name can reach (unique bytes).
            9 => {
                let unique = work.join(format!("unique{w}"));
                fs::write(&unique, data(100, seed ^ (n << 8) ^ w as u64)).unwrap();
                let h = must(cas_at(a).arg("put").arg(&unique), "put unique");
                // gc at grace 0 may have collected it first: a clean "not found".
                let out = run(cas_at(a).args(["rm", &h]));
                allowed_not_found(&out, "rm");
            }
            // Remove one of this writer's refs or keys: its closure may fall out of reach.
            10 => {
                if rng.below(2) == 0 {
                    let Some((name, _)) = mine.get(rng.below(mine.len().max(1))).cloned() else {
                        continue;
                    };
                    must(cas_at(a).args(["ref", "rm", &name]), "ref rm");
                    acks.a.lock().unwrap().remove(&Name::Ref(name.clone()));
                    mine.retain(|(m, _)| *m != name);
                } else {
                    let key = format!("w{w}:{}{}", ["p", "s"][rng.below(2)], rng.below(4));
                    let out = run(cas_at(a).args(["key", "rm", &key]));
                    if out.status.success() {
                        acks.a.lock().unwrap().remove(&Name::Key(key));
                    }
                }
            }
            // Re-check an earlier acknowledged name while gc runs.
            _ => {
                // Only names no other writer moves: this writer's own, and ensure keys (set
                // once, never moved).
                let own = |n: &Name| {
                    let s = match n {
                        Name::Ref(s) | Name::Key(s) => s,
                    };
                    s.starts_with("ensure:")
                        || s.starts_with(&format!("w{w}/"))
                        || s.starts_with(&format!("w{w}:"))
                        || s.starts_with(&format!("b/w{w}/"))
                };
                let pick = {
                    let map = acks.a.lock().unwrap();
                    let mine: Vec<_> = map.iter().filter(|(k, _)| own(k)).collect();
                    (!mine.is_empty()).then(|| {
                        let (k, v) = mine[rng.below(mine.len())];
                        (k.clone(), v.clone())
                    })
                };
                if let Some((name, want)) = pick {
                    if let Err(e) = check(&cas_at, a, &name, &want, pool, work) {
                        panic!("seed {seed}: an acknowledged name was lost during the run: {e}");
                    }
                    acks.rechecked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn gc_loop(
    cas_at: &dyn Fn(&Path) -> Command,
    store: &Path,
    seed: u64,
    stop: &AtomicBool,
    runs: &AtomicU64,
    with_budget: bool,
) {
    let mut rng = Rng(seed ^ 0x6c);
    while !stop.load(Ordering::Relaxed) {
        let mut c = cas_at(store);
        c.arg("gc");
        match rng.below(if with_budget { 4 } else { 2 }) {
            0 => c.args(["--grace", "0s"]),
            1 => c.args(["--grace", "1s"]),
            2 => c.args(["--max-size", "64K"]),
            _ => &mut c,
        };
        let out = run(&mut c);
        assert!(
            out.status.success(),
            "seed {seed}: {c:?}: {}",
            text(&out.stderr)
        );
        runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// The seed: `CAS_TEST_SEED`, else the clock.
pub fn seed() -> u64 {
    match std::env::var("CAS_TEST_SEED") {
        Ok(s) => s.parse().expect("CAS_TEST_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Where the torture runs: store A and store B as each host sees them, and how a host runs
/// `cas --store STORE`.
pub struct Env<'a> {
    pub cmd: &'a (dyn Fn(usize, &Path) -> Command + Sync),
    pub a: Vec<PathBuf>,
    pub b: Vec<PathBuf>,
}

/// The duration: `CAS_TORTURE_SECS`, else `default`.
pub fn secs(default: u64) -> u64 {
    std::env::var("CAS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs the torture on stores A and B (created here) for `secs`, then checks every
/// acknowledged name from host 0.
pub fn torture(env: &Env<'_>, scratch: &Path, seed: u64, secs: u64) {
    eprintln!("torture: seed {seed} (replay with CAS_TEST_SEED={seed}), {secs} s");
    let here = |store: &Path| (env.cmd)(0, store);
    let cas_at = &here;
    let (a, b) = (env.a[0].as_path(), env.b[0].as_path());
    must(cas_at(a).arg("init"), "init A");
    must(cas_at(b).arg("init"), "init B");
    let pool = Pool::new(scratch, seed);
    let acks = Acks::default();
    let stop = AtomicBool::new(false);
    let (gc_a, gc_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|sc| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (pool, acks) = (&pool, &acks);
            let work = scratch.join(format!("w{w}"));
            fs::create_dir_all(&work).unwrap();
            writers.push(sc.spawn(move || writer(w, seed, env, pool, acks, until, &work)));
        }
        let (stop, gc_a, gc_b) = (&stop, &gc_a, &gc_b);
        let last = env.a.len() - 1;
        let ga = sc.spawn(move || {
            let on = |store: &Path| (env.cmd)(0, store);
            gc_loop(&on, a, seed, stop, gc_a, true);
        });
        let gb = sc.spawn(move || {
            let on = |store: &Path| (env.cmd)(last, store);
            gc_loop(&on, &env.b[last], seed ^ 1, stop, gc_b, false);
        });
        let mut failed = None;
        for h in writers {
            if let Err(e) = h.join() {
                failed = Some(e);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in [ga, gb] {
            if let Err(e) = h.join() {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            std::panic::resume_unwind(e);
        }
    });
    // A last gc at grace 0 on each store: whatever is still named must survive it too.
    must(cas_at(a).args(["gc", "--grace", "0s"]), "final gc A");
    must(cas_at(b).args(["gc", "--grace", "0s"]), "final gc B");
    let mut lost = Vec::new();
    let mut checked = 0;
    for (store, map) in [(a, &acks.a), (b, &acks.b)] {
        for (name, want) in map.lock().unwrap().iter() {
            checked += 1;
            if let Err(e) = check(cas_at, store, name, want, &pool, scratch) {
                lost.push(e);
            }
        }
        let v = run(cas_at(store).arg("verify"));
        assert!(
            v.status.success(),
            "seed {seed}: verify of {} after the run: {}{}",
            store.display(),
            text(&v.stdout),
            text(&v.stderr)
        );
    }
    eprintln!(
        "torture: seed {seed}: {} acknowledgements, {checked} names checked at the end, {} \
         re-checked during the run, {} updates refused because gc collected the object first, \
         gc ran {} times on A and {} on B",
        acks.count.load(Ordering::Relaxed),
        acks.rechecked.load(Ordering::Relaxed),
        acks.collected.load(Ordering::Relaxed),
        gc_a.load(Ordering::Relaxed),
        gc_b.load(Ordering::Relaxed),
    );
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged names lost:\n{}",
        lost.join("\n")
    );
    assert!(
        checked > 0 && gc_a.load(Ordering::Relaxed) > 0,
        "seed {seed}: nothing ran"
    );
}

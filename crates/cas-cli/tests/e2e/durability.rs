//! Power loss at a random moment under a concurrent workload, on the fault filesystem
//! (`crates/faultfs`, see crates/cas-cli/tests/e2e/common/faultfs.rs), which keeps every byte not yet `fsync`ed in
//! memory and drops it at the power loss — as a real page cache does.
//!
//! Several `cas` processes and a thread using the library put small and large objects from
//! stdin and from paths, singly and in batches, store trees, move refs by compare-and-swap,
//! put keyed entries and run gc. A crash point is an operation kind (each of the CLI's and the
//! library's) and a number of filesystem calls into one operation of that kind: once that
//! operation has made that many calls while still running, the power goes, every running `cas`
//! is killed with SIGKILL, and the backing directory — what the disk holds — is checked. The
//! `file` and `full` tests crash every operation kind once per run (a fresh filesystem each):
//! - durability `file`: every name under `objects/` holds bytes whose BLAKE3 is its name; then
//!   `cas gc` and `cas verify` are clean (no dangling ref or entry, nothing left in `tmp/`);
//! - durability `full`, strict mode (directory entries not `fsync`ed are lost too): also every
//!   operation that reported success before the power loss is there after it, trees restored
//!   byte for byte;
//! - durability `none`, the control: something is corrupt (so this test can fail).
//!
//! The seed that picks the crash points is printed; `CAS_TEST_SEED=N` replays them.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faultfs::{self, FaultFs};
use common::{blake3_hex, cas_at, data, text};

/// The kinds of operation a crash point can land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    PutSmall,
    PutBatch,
    PutBig,
    PutTree,
    RefCas,
    KeyPut,
    Gc,
    LibPut,
    LibBatch,
    LibWriter,
    LibKey,
    LibRef,
}

const KINDS: [Kind; 12] = [
    Kind::PutSmall,
    Kind::PutBatch,
    Kind::PutBig,
    Kind::PutTree,
    Kind::RefCas,
    Kind::KeyPut,
    Kind::Gc,
    Kind::LibPut,
    Kind::LibBatch,
    Kind::LibWriter,
    Kind::LibKey,
    Kind::LibRef,
];

/// Where the power goes: `calls` filesystem calls after an operation of `kind` started (if it
/// still runs then; else at the next one, with half the calls).
#[derive(Debug, Clone, Copy)]
struct CrashPoint {
    kind: Kind,
    /// Successful operations of any kind before the crash point is armed.
    warm_up: usize,
    calls: u64,
}

/// What one operation of the workload did, when it reported success.
#[derive(Debug, Clone)]
enum Done {
    /// Objects (by hex hash) that must exist, with the bytes' length.
    Objects(Vec<String>),
    /// A tree that must restore to these files (path relative to the tree, bytes).
    Tree(String, Vec<(PathBuf, Vec<u8>)>),
    /// A ref set to a value (later values the same writer tried are in `ref_attempts`: they
    /// may have reached the disk before failing).
    Ref { name: String, value: String },
    /// A keyed entry holding these bytes.
    Key { key: String, bytes: Vec<u8> },
}

struct Workload {
    mnt_store: PathBuf,
    scratch: PathBuf,
    stop: AtomicBool,
    successes: AtomicUsize,
    /// Pids of running `cas` children, to SIGKILL at the power loss.
    running: Mutex<HashSet<u32>>,
    done: Mutex<Vec<Done>>,
    /// Every value each ref was ever asked to hold, in order.
    ref_attempts: Mutex<HashMap<String, Vec<String>>>,
    /// Operations of each kind started, and running now.
    started: Vec<AtomicUsize>,
    in_flight: Vec<AtomicUsize>,
    /// Kinds that had an operation running at the power loss which did not succeed.
    crashed: Mutex<HashSet<Kind>>,
    /// The kind the crash point waits for (its index + 1; 0: none). An operation of that kind
    /// holds at its start until the crash thread has seen it start (`seen` reaches its
    /// number): the crash thread polls, and a fast in-process operation (a library put of a
    /// few KiB) used to finish before it looked, so no run could cut one under load.
    watched: AtomicUsize,
    seen: AtomicUsize,
}

impl Workload {
    fn cas(&self) -> Command {
        let mut c = cas_at(&self.mnt_store);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Runs one operation of `kind`, counted as started and in flight meanwhile; a failure
    /// (only after the power loss) marks the kind crashed.
    fn op<T>(&self, kind: Kind, f: impl FnOnce() -> Option<T>) -> Option<T> {
        self.in_flight[kind as usize].fetch_add(1, Ordering::SeqCst);
        let n = self.started[kind as usize].fetch_add(1, Ordering::SeqCst) + 1;
        if self.watched.load(Ordering::SeqCst) == kind as usize + 1 {
            // Bounded: the crash thread acknowledges within its polling interval, or has
            // stopped watching (then this operation is not the one it waits for).
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while self.seen.load(Ordering::SeqCst) < n
                && self.watched.load(Ordering::SeqCst) == kind as usize + 1
                && !self.stop.load(Ordering::SeqCst)
                && std::time::Instant::now() < until
            {
                std::thread::yield_now();
            }
        }
        let r = f();
        self.in_flight[kind as usize].fetch_sub(1, Ordering::SeqCst);
        if r.is_none() {
            self.crashed.lock().unwrap().insert(kind);
        }
        r
    }

    /// Runs a `cas` command (feeding `stdin`), registered for the kill at the power loss.
    /// Returns stdout if it exited 0.
    fn run(&self, kind: Kind, cmd: &mut Command, stdin: Option<&[u8]>) -> Option<String> {
        self.op(kind, || self.run_cas(cmd, stdin))
    }

    fn run_cas(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> Option<String> {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn cas");
        let pid = child.id();
        self.running.lock().unwrap().insert(pid);
        let input = child.stdin.take();
        let out = std::thread::scope(|s| {
            if let (Some(mut w), Some(bytes)) = (input, stdin) {
                s.spawn(move || {
                    let _ = std::io::Write::write_all(&mut w, bytes);
                });
            }
            child.wait_with_output().expect("wait for cas")
        });
        self.running.lock().unwrap().remove(&pid);
        if !out.status.success() {
            // Before the power loss every operation must succeed.
            assert!(
                self.stop.load(Ordering::SeqCst),
                "{cmd:?} failed before the power loss: {}\n{}",
                out.status,
                text(&out.stderr)
            );
            return None;
        }
        Some(text(&out.stdout))
    }

    fn record(&self, d: Done) {
        self.done.lock().unwrap().push(d);
        self.successes.fetch_add(1, Ordering::SeqCst);
    }

    /// One worker: a deterministic mix of every kind of write, until the power goes.
    fn cli_worker(&self, w: usize) {
        let mut last: Option<String> = None;
        for i in 0usize.. {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let seed = (w * 1_000_000 + i) as u64;
            let r = match i % 8 {
                // put from stdin, small
                0 | 4 => {
                    let bytes = data(1 + (seed as usize * 7919) % 40_000, seed);
                    self.run(Kind::PutSmall, self.cas().arg("put"), Some(&bytes))
                        .map(|o| Done::Objects(vec![o.trim().to_owned()]))
                }
                // put several paths: one batch, one barrier
                1 => {
                    let paths: Vec<PathBuf> = (0..3)
                        .map(|k| {
                            let p = self.scratch.join(format!("b{w}-{i}-{k}"));
                            std::fs::write(&p, data(100 + k * 3000, seed * 3 + k as u64)).unwrap();
                            p
                        })
                        .collect();
                    self.run(Kind::PutBatch, self.cas().arg("put").args(&paths), None)
                        .map(|o| Done::Objects(o.lines().map(str::to_owned).collect()))
                }
                // big put, from a path (> 8 MiB: the copy path) or stdin (streamed)
                2 => {
                    let bytes = data(9 << 20, seed);
                    if w.is_multiple_of(2) {
                        let p = self.scratch.join(format!("big{w}-{i}"));
                        std::fs::write(&p, &bytes).unwrap();
                        self.run(Kind::PutBig, self.cas().arg("put").arg(&p), None)
                    } else {
                        self.run(Kind::PutBig, self.cas().arg("put"), Some(&bytes))
                    }
                    .map(|o| Done::Objects(vec![o.trim().to_owned()]))
                }
                // a tree
                3 => {
                    let d = self.scratch.join(format!("tree{w}-{i}"));
                    let mut files: Vec<(PathBuf, Vec<u8>)> = (0..4u64)
                        .map(|k| (PathBuf::from(format!("f{k}")), data(500, seed * 5 + k)))
                        .collect();
                    files.push((PathBuf::from("sub/x"), data(2000, seed)));
                    common::tree(&d, &files);
                    self.run(Kind::PutTree, self.cas().args(["put", "-r"]).arg(&d), None)
                        .map(|o| Done::Tree(o.trim().to_owned(), files))
                }
                // compare-and-swap a ref to the last object this worker stored
                5 => {
                    let Some(h) = last.clone() else { continue };
                    let name = format!("w{w}");
                    let prev = self.ref_attempts.lock().unwrap().get(&name).cloned();
                    let mut cmd = self.cas();
                    cmd.args(["ref", "set", &name, &h]);
                    match prev.as_ref().and_then(|v| v.last()) {
                        Some(p) => cmd.args(["--expect", p]),
                        None => cmd.arg("--expect-none"),
                    };
                    self.ref_attempts
                        .lock()
                        .unwrap()
                        .entry(name.clone())
                        .or_default()
                        .push(h.clone());
                    self.run(Kind::RefCas, &mut cmd, None)
                        .map(|_| Done::Ref { name, value: h })
                }
                // a keyed entry
                6 => {
                    let key = format!("k{w}-{i}");
                    let bytes = data(3000, seed);
                    let p = self.scratch.join(format!("key{w}-{i}"));
                    std::fs::write(&p, &bytes).unwrap();
                    self.run(
                        Kind::KeyPut,
                        self.cas().args(["key", "put", &key]).arg(&p),
                        None,
                    )
                    .map(|_| Done::Key { key, bytes })
                }
                // gc beside the writers, by one worker: a second gc at the same time fails at
                // once by design (one gc lease), which would be no power-loss finding.
                _ if w == 0 => self
                    .run(Kind::Gc, self.cas().arg("gc"), None)
                    .map(|_| Done::Objects(Vec::new())),
                _ => continue,
            };
            if let Some(d) = r {
                if let Done::Objects(hs) = &d {
                    if let Some(h) = hs.last() {
                        last = Some(h.clone());
                    }
                }
                self.record(d);
            }
        }
    }

    /// The library in this process: single puts, a batch, a streaming writer, keyed puts
    /// and refs.
    fn lib_worker(&self) {
        let store = cas::Store::open(&self.mnt_store).expect("open the store");
        let mut prev: Option<cas::Hash> = None;
        for i in 0u64.. {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let seed = 9_000_000 + i;
            // Errors only count after the power loss (`op` then marks the kind crashed).
            let fail = |what: &str, e: &dyn std::fmt::Display| {
                assert!(
                    self.stop.load(Ordering::SeqCst),
                    "library {what} failed before the power loss: {e}"
                );
            };
            let r: Option<Done> = match i % 4 {
                0 => self.op(Kind::LibPut, || {
                    store
                        .put_bytes(&data(5000, seed))
                        .map_err(|e| fail("put", &e))
                        .ok()
                        .map(|h| Done::Objects(vec![h.to_string()]))
                }),
                1 => self.op(Kind::LibBatch, || {
                    let mut b = store.batch();
                    let hs: cas::Result<Vec<_>> = (0..4)
                        .map(|k| b.put_bytes(&data(700, seed * 4 + k)))
                        .collect();
                    hs.and_then(|hs| {
                        b.commit()?;
                        Ok(Done::Objects(hs.iter().map(ToString::to_string).collect()))
                    })
                    .map_err(|e| fail("batch", &e))
                    .ok()
                }),
                2 => self.op(Kind::LibWriter, || {
                    let mut w = store.writer().map_err(|e| fail("writer", &e)).ok()?;
                    // A write that fails is a failed put: never committed, never recorded.
                    std::io::Write::write_all(&mut w, &data(2 << 20, seed))
                        .map_err(|e| fail("write to a writer", &e))
                        .ok()?;
                    w.commit()
                        .map_err(|e| fail("writer commit", &e))
                        .ok()
                        .map(|h| Done::Objects(vec![h.to_string()]))
                }),
                _ => self.op(Kind::LibKey, || {
                    let bytes = data(900, seed);
                    let key = format!("lib{i}");
                    store
                        .put_keyed_bytes(key.as_bytes(), &bytes, b"")
                        .map_err(|e| fail("keyed put", &e))
                        .ok()
                        .map(|h| {
                            assert_eq!(h.to_string(), blake3_hex(&bytes), "keyed put's hash");
                            Done::Key { key, bytes }
                        })
                }),
            };
            let Some(d) = r else { continue };
            if let Done::Objects(hs) = &d {
                if let Some(h) = hs.last() {
                    let h: cas::Hash = h.parse().unwrap();
                    let expect = prev.map_or(cas::Expect::Absent, cas::Expect::Value);
                    self.ref_attempts
                        .lock()
                        .unwrap()
                        .entry("lib".into())
                        .or_default()
                        .push(h.to_string());
                    let set = self.op(Kind::LibRef, || {
                        store
                            .set_ref("lib", h, expect)
                            .map_err(|e| fail("ref set", &e))
                            .ok()
                    });
                    if set.is_some() {
                        prev = Some(h);
                        self.record(Done::Ref {
                            name: "lib".into(),
                            value: h.to_string(),
                        });
                    }
                }
            }
            self.record(d);
        }
    }
}

/// Every object file under `store/objects`: (hex name, whether its bytes hash to it).
fn object_files(store: &Path) -> Vec<(String, bool)> {
    common::files_under(&store.join("objects"))
        .into_iter()
        .map(|p| {
            let dir = p.parent().unwrap().file_name().unwrap().to_string_lossy();
            let name = format!("{dir}{}", p.file_name().unwrap().to_string_lossy());
            let ok = std::fs::read(&p).is_ok_and(|b| blake3_hex(&b) == name);
            (name, ok)
        })
        .collect()
}

/// `CAS_TEST_SEED`, else one from the clock, the same for every test of this run.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("CAS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos()
                    .into()
            })
    })
}

/// A small deterministic generator (splitmix64) for the crash points of one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One crash point per operation kind, from `seed`.
fn crash_points(seed: u64) -> Vec<CrashPoint> {
    let mut rng = Rng(seed);
    KINDS
        .iter()
        .map(|&kind| CrashPoint {
            kind,
            warm_up: 2 + rng.below(6) as usize,
            calls: 1 + rng.below(24),
        })
        .collect()
}

/// When the power goes.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// After this many successful operations, whatever is running.
    AfterSuccesses(usize),
    /// At a crash point.
    At(CrashPoint),
}

/// The faultfs call counters, summed.
fn fs_calls(fs: &FaultFs) -> u64 {
    fs.ctl("stats")
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Runs the workload on a fresh fault filesystem until `trigger`, cuts the power, kills every
/// `cas`, and returns the backing store's path and what succeeded.
fn crash(durability: &str, strict: bool, trigger: Trigger) -> (FaultFs, PathBuf, Arc<Workload>) {
    let mut fs = FaultFs::mount(strict);
    let mnt_store = fs.mnt.join("store");
    common::run_ok(cas_at(&mnt_store).args(["init", "--durability", durability]));
    let scratch = tempfile::tempdir().unwrap().keep();
    let wl = Arc::new(Workload {
        mnt_store,
        scratch: scratch.clone(),
        stop: AtomicBool::new(false),
        successes: AtomicUsize::new(0),
        running: Mutex::new(HashSet::new()),
        done: Mutex::new(Vec::new()),
        ref_attempts: Mutex::new(HashMap::new()),
        started: KINDS.iter().map(|_| AtomicUsize::new(0)).collect(),
        in_flight: KINDS.iter().map(|_| AtomicUsize::new(0)).collect(),
        watched: AtomicUsize::new(0),
        seen: AtomicUsize::new(0),
        crashed: Mutex::new(HashSet::new()),
    });
    let mut workers: Vec<_> = (0..3)
        .map(|w| {
            let wl = Arc::clone(&wl);
            std::thread::spawn(move || wl.cli_worker(w))
        })
        .collect();
    {
        let wl = Arc::clone(&wl);
        workers.push(std::thread::spawn(move || wl.lib_worker()));
    }
    let start = Instant::now();
    let alive = |what: &str| {
        assert!(
            start.elapsed() < Duration::from_mins(2),
            "the workload made no progress towards {what}: {} successes",
            wl.successes.load(Ordering::SeqCst)
        );
        assert!(
            workers.iter().all(|w| !w.is_finished()),
            "a worker died before the power loss"
        );
        std::thread::sleep(Duration::from_millis(1)); // polling counters, bounded
    };
    let warm_up = match trigger {
        Trigger::AfterSuccesses(k) => k,
        Trigger::At(p) => p.warm_up,
    };
    while wl.successes.load(Ordering::SeqCst) < warm_up {
        alive("the warm-up");
    }
    if let Trigger::At(p) = trigger {
        let k = p.kind as usize;
        let mut calls = p.calls;
        // Each round: the next operation of the kind to start; the power goes once the
        // filesystem has seen `calls` more calls while it still runs, else the next one with
        // half the calls (at last, at its start).
        wl.watched.store(k + 1, Ordering::SeqCst);
        loop {
            let seen = wl.started[k].load(Ordering::SeqCst);
            wl.seen.store(seen, Ordering::SeqCst);
            while wl.started[k].load(Ordering::SeqCst) == seen {
                alive(&format!("an operation {:?}", p.kind));
            }
            let base = fs_calls(&fs);
            // Let the operation that started (held at its start) go on, counted from `base`.
            wl.seen
                .store(wl.started[k].load(Ordering::SeqCst), Ordering::SeqCst);
            while wl.in_flight[k].load(Ordering::SeqCst) > 0 && fs_calls(&fs) < base + calls {}
            if wl.in_flight[k].load(Ordering::SeqCst) > 0 {
                break;
            }
            calls /= 2;
        }
    }
    // From here on, failures are expected: set before the power goes so no worker panics.
    wl.stop.store(true, Ordering::SeqCst);
    fs.power_loss();
    for pid in wl.running.lock().unwrap().iter() {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status(); // it may have exited meanwhile
    }
    for w in workers {
        w.join().expect("a worker panicked");
    }
    fs.unmount();
    let _ = std::fs::remove_dir_all(&scratch);
    let backing_store = fs.backing.join("store");
    (fs, backing_store, wl)
}

/// The checks every durability level except `none` must pass after the crash.
fn assert_consistent(store: &Path, what: &str) {
    let bad: Vec<_> = object_files(store)
        .into_iter()
        .filter(|(_, ok)| !ok)
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: objects whose bytes are not their hash: {bad:?}"
    );
    // After the power loss nobody holds a lock, but a lock whose content was not synced is
    // an empty, "incomplete" lock, which blocks for a whole lease (docs/format.md, lock
    // file): as after a reboot that outlasted the lease, break it at once.
    common::run_ok(cas_at(store).args(["--lock-timeout", "1ms", "gc"]));
    let out = common::run(cas_at(store).args(["verify", "--json"]));
    assert!(
        out.status.success(),
        "{what}: verify after gc is not clean: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Crashes at `p` on a fresh filesystem, again (at most twice more, with half the calls) if
/// the operation chosen finished in the instant before the power went.
fn crash_at(durability: &str, strict: bool, p: CrashPoint) -> (FaultFs, PathBuf, Arc<Workload>) {
    let mut p = p;
    for _ in 0..3 {
        let (fs, store, wl) = crash(durability, strict, Trigger::At(p));
        if wl.crashed.lock().unwrap().contains(&p.kind) {
            return (fs, store, wl);
        }
        eprintln!("{p:?}: the operation finished just before the power loss; again");
        p.calls /= 2;
    }
    panic!("{p:?}: no operation of the kind was cut by the power loss in 3 tries");
}

/// Every crash point of the seed (one per operation kind), each on a fresh filesystem, with
/// `check` after each; prints the seed and each point so that a failure can be replayed.
fn at_every_crash_point(
    what: &str,
    durability: &str,
    strict: bool,
    kinds: &[Kind],
    check: impl Fn(&Path, &Workload, &str),
) {
    if !faultfs::available() {
        return;
    }
    let seed = seed();
    eprintln!("{what}: seed {seed} (CAS_TEST_SEED={seed} replays these crash points)");
    let start = Instant::now();
    for p in crash_points(seed)
        .into_iter()
        .filter(|p| kinds.contains(&p.kind))
    {
        let case = format!("{what}, seed {seed}, {p:?}");
        eprintln!("{case}");
        let (_fs, store, wl) = crash_at(durability, strict, p);
        check(&store, &wl, &case);
    }
    eprintln!(
        "{what}: {} crash points in {:?}",
        kinds.len(),
        start.elapsed()
    );
}

/// `dest` holds exactly `files` (relative path, bytes), byte for byte.
fn assert_tree(dest: &Path, files: &[(PathBuf, Vec<u8>)], what: &str) {
    let mut got: Vec<PathBuf> = common::files_under(dest)
        .into_iter()
        .map(|p| p.strip_prefix(dest).unwrap().to_owned())
        .collect();
    got.sort();
    let mut want: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    want.sort();
    assert_eq!(got, want, "{what}: the restored tree has other files");
    for (p, bytes) in files {
        assert!(
            std::fs::read(dest.join(p)).unwrap() == *bytes,
            "{what}: {} restored with other bytes",
            p.display()
        );
    }
}

/// A successful tree put restores byte for byte; a successful key put holds its bytes.
fn assert_restores(store: &Path, d: &Done, scratch: &Path, what: &str) {
    match d {
        Done::Tree(h, files) => {
            let dest = scratch.join(&h[..16]);
            let _ = std::fs::remove_dir_all(&dest);
            let out = common::run(cas_at(store).args(["get", "-r", h, "-o"]).arg(&dest));
            assert!(
                out.status.success(),
                "{what}: tree {h} does not restore: {}",
                text(&out.stderr)
            );
            assert_tree(&dest, files, &format!("{what}: tree {h}"));
        }
        Done::Key { key, bytes } => {
            let got = common::run(cas_at(store).args(["key", "get", key]));
            assert!(
                got.status.success(),
                "{what}: entry {key} lost: {}",
                text(&got.stderr)
            );
            assert!(
                got.stdout == *bytes,
                "{what}: entry {key} holds other bytes"
            );
        }
        Done::Objects(_) | Done::Ref { .. } => {}
    }
}

#[test]
fn power_loss_with_durability_file_leaves_only_correct_objects() {
    at_every_crash_point(
        "durability file",
        "file",
        false,
        &KINDS,
        |store, wl, what| {
            let objects = object_files(store);
            assert_consistent(store, what);
            // Names are not lost in this mode: every object a successful put printed is there,
            // every tree and key a successful put made restores.
            let scratch = tempfile::tempdir().unwrap();
            for d in wl.done.lock().unwrap().iter() {
                if let Done::Objects(hs) = d {
                    for h in hs {
                        assert!(
                            objects.iter().any(|(n, _)| n == h),
                            "{what}: object {h} of a successful put is missing"
                        );
                    }
                }
                assert_restores(store, d, scratch.path(), what);
            }
        },
    );
}

#[test]
fn power_loss_with_durability_full_keeps_every_success_even_in_strict_mode() {
    at_every_crash_point(
        "durability full (strict)",
        "full",
        true,
        &KINDS,
        |store, wl, what| {
            assert_consistent(store, what);
            let objects: HashMap<String, bool> = object_files(store).into_iter().collect();
            let refs = wl.ref_attempts.lock().unwrap().clone();
            let scratch = tempfile::tempdir().unwrap();
            for d in wl.done.lock().unwrap().iter() {
                match d {
                    Done::Objects(hs) => {
                        for h in hs {
                            assert_eq!(
                                objects.get(h),
                                Some(&true),
                                "{what}: object {h} lost or wrong"
                            );
                        }
                    }
                    Done::Ref { name, value } => {
                        let now = common::run_ok(cas_at(store).args(["ref", "get", name]));
                        let tried = &refs[name];
                        let pos = tried.iter().position(|v| v == value).unwrap();
                        let later = &tried[pos + 1..];
                        assert!(
                            tried[pos..].contains(&now.trim().to_owned()),
                            "{what}: ref {name} is {now:?}, set to {value} (then tried {later:?})"
                        );
                    }
                    Done::Tree(..) | Done::Key { .. } => {
                        assert_restores(store, d, scratch.path(), what);
                    }
                }
            }
        },
    );
}

#[test]
fn power_loss_with_durability_file_in_strict_mode_loses_names_not_integrity() {
    // A third of the kinds per run (which third rotates with the seed): this mode promises
    // least, and every kind is still crashed in the two tests above.
    let third = (seed() % 3) as usize;
    let kinds: Vec<Kind> = KINDS.iter().copied().skip(third).step_by(3).collect();
    at_every_crash_point(
        "durability file (strict)",
        "file",
        true,
        &kinds,
        |store, _, what| {
            assert_consistent(store, what);
        },
    );
}

/// The control: without any sync the same crash must corrupt objects, or the tests above
/// prove nothing.
#[test]
fn power_loss_with_durability_none_corrupts_the_control() {
    if !faultfs::available() {
        return;
    }
    let (_fs, store, _wl) = crash("none", false, Trigger::AfterSuccesses(8));
    let objects = object_files(&store);
    let bad = objects.iter().filter(|(_, ok)| !ok).count();
    assert!(
        bad > 0,
        "durability none survived a power loss intact ({} objects): the fault filesystem \
         does not drop unsynced data, so the other tests prove nothing",
        objects.len()
    );
    let out = common::run(cas_at(&store).arg("verify"));
    assert!(
        !out.status.success(),
        "verify found nothing wrong after the control crash"
    );
}

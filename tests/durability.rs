//! Power loss at a random moment under a concurrent workload, on the fault filesystem
//! (`crates/faultfs`, see tests/common/faultfs.rs), which keeps every byte not yet `fsync`ed in
//! memory and drops it at the power loss — as a real page cache does.
//!
//! Several `cas` processes and a thread using the library put small and large objects from
//! stdin and from paths, singly and in batches, store trees, move refs by compare-and-swap,
//! put keyed entries and run gc; after a random number of successful operations the power
//! goes, every running `cas` is killed with SIGKILL, and the backing directory — what the disk holds —
//! is checked:
//! - durability `file`: every name under `objects/` holds bytes whose BLAKE3 is its name; then
//!   `cas gc` and `cas verify` are clean (no dangling ref or entry, nothing left in `tmp/`);
//! - durability `full`, strict mode (directory entries not `fsync`ed are lost too): also every
//!   operation that reported success before the power loss is there after it;
//! - durability `none`, the control: something is corrupt (so this test can fail).
//!
//! The seed of the random moment is printed; `CAS_TEST_SEED=N` replays one.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faultfs::{self, FaultFs};
use common::{blake3_hex, cas_bin, data, text};

/// What one operation of the workload did, when it reported success.
#[derive(Debug, Clone)]
enum Done {
    /// Objects (by hex hash) that must exist, with the bytes' length.
    Objects(Vec<String>),
    /// A tree that must restore.
    Tree(String),
    /// A ref set to a value (later values the same writer tried are in `ref_attempts`: they
    /// may have reached the disk before failing).
    Ref { name: String, value: String },
    /// A keyed entry holding an object.
    Key { key: String, hash: String },
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
    key_attempts: Mutex<HashMap<String, Vec<String>>>,
}

impl Workload {
    fn cas(&self) -> Command {
        let mut c = Command::new(cas_bin());
        c.arg("--store")
            .arg(&self.mnt_store)
            .env_remove("CAS_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a `cas` command (feeding `stdin`), registered for the kill at the power loss.
    /// Returns stdout if it exited 0.
    fn run(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> Option<String> {
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
                    self.run(self.cas().arg("put"), Some(&bytes))
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
                    self.run(self.cas().arg("put").args(&paths), None)
                        .map(|o| Done::Objects(o.lines().map(str::to_owned).collect()))
                }
                // big put, from a path (> 8 MiB: the copy path) or stdin (streamed)
                2 => {
                    let bytes = data(9 << 20, seed);
                    if w.is_multiple_of(2) {
                        let p = self.scratch.join(format!("big{w}-{i}"));
                        std::fs::write(&p, &bytes).unwrap();
                        self.run(self.cas().arg("put").arg(&p), None)
                    } else {
                        self.run(self.cas().arg("put"), Some(&bytes))
                    }
                    .map(|o| Done::Objects(vec![o.trim().to_owned()]))
                }
                // a tree
                3 => {
                    let d = self.scratch.join(format!("tree{w}-{i}"));
                    std::fs::create_dir_all(d.join("sub")).unwrap();
                    for k in 0..4u64 {
                        std::fs::write(d.join(format!("f{k}")), data(500, seed * 5 + k)).unwrap();
                    }
                    std::fs::write(d.join("sub/x"), data(2000, seed)).unwrap();
                    self.run(self.cas().args(["put", "-r"]).arg(&d), None)
                        .map(|o| Done::Tree(o.trim().to_owned()))
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
                    self.run(&mut cmd, None)
                        .map(|_| Done::Ref { name, value: h })
                }
                // a keyed entry
                6 => {
                    let key = format!("k{w}-{i}");
                    let bytes = data(3000, seed);
                    let p = self.scratch.join(format!("key{w}-{i}"));
                    std::fs::write(&p, &bytes).unwrap();
                    let hash = blake3_hex(&bytes);
                    self.key_attempts
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(hash.clone());
                    self.run(self.cas().args(["key", "put", &key]).arg(&p), None)
                        .map(|_| Done::Key { key, hash })
                }
                // gc beside the writers, by one worker: a second gc at the same time fails at
                // once by design (one gc lease), which would be no power-loss finding.
                _ if w == 0 => self
                    .run(self.cas().arg("gc"), None)
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
            let r: cas::Result<Done> = match i % 4 {
                0 => store
                    .put_bytes(&data(5000, seed))
                    .map(|h| Done::Objects(vec![h.to_string()])),
                1 => {
                    let mut b = store.batch();
                    let hs: cas::Result<Vec<_>> = (0..4)
                        .map(|k| b.put_bytes(&data(700, seed * 4 + k)))
                        .collect();
                    hs.and_then(|hs| {
                        b.commit()?;
                        Ok(Done::Objects(hs.iter().map(ToString::to_string).collect()))
                    })
                }
                2 => store.writer().and_then(|mut w| {
                    std::io::Write::write_all(&mut w, &data(2 << 20, seed)).ok();
                    w.commit().map(|h| Done::Objects(vec![h.to_string()]))
                }),
                _ => {
                    let bytes = data(900, seed);
                    let key = format!("lib{i}");
                    self.key_attempts
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(blake3_hex(&bytes));
                    store
                        .put_keyed_bytes(key.as_bytes(), &bytes, b"")
                        .map(|h| Done::Key {
                            key,
                            hash: h.to_string(),
                        })
                }
            };
            match r {
                Ok(d) => {
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
                            if store.set_ref("lib", h, expect).is_ok() {
                                prev = Some(h);
                                self.record(Done::Ref {
                                    name: "lib".into(),
                                    value: h.to_string(),
                                });
                            } else {
                                assert!(
                                    self.stop.load(Ordering::SeqCst),
                                    "ref set failed before the power loss"
                                );
                            }
                        }
                    }
                    self.record(d);
                }
                Err(e) => assert!(
                    self.stop.load(Ordering::SeqCst),
                    "library put failed before the power loss: {e}"
                ),
            }
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

fn seed() -> u64 {
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
}

/// Runs the workload on a fresh fault filesystem until `k` operations succeeded, cuts the
/// power, kills every `cas`, and returns the backing store's path and what succeeded.
fn crash(durability: &str, strict: bool, k: usize) -> (FaultFs, PathBuf, Arc<Workload>) {
    let mut fs = FaultFs::mount(strict);
    let mnt_store = fs.mnt.join("store");
    common::run_ok(
        Command::new(cas_bin())
            .args(["--store"])
            .arg(&mnt_store)
            .args(["init", "--durability", durability]),
    );
    let scratch = tempfile::tempdir().unwrap().keep();
    let wl = Arc::new(Workload {
        mnt_store,
        scratch: scratch.clone(),
        stop: AtomicBool::new(false),
        successes: AtomicUsize::new(0),
        running: Mutex::new(HashSet::new()),
        done: Mutex::new(Vec::new()),
        ref_attempts: Mutex::new(HashMap::new()),
        key_attempts: Mutex::new(HashMap::new()),
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
    while wl.successes.load(Ordering::SeqCst) < k {
        assert!(
            start.elapsed() < Duration::from_mins(3),
            "the workload made no progress: {} successes",
            wl.successes.load(Ordering::SeqCst)
        );
        assert!(
            workers.iter().all(|w| !w.is_finished()),
            "a worker died before the power loss"
        );
        std::thread::sleep(Duration::from_millis(1)); // polling a counter, bounded
    }
    // From here on, failures are expected: set before the power goes so no worker panics.
    wl.stop.store(true, Ordering::SeqCst);
    fs.power_loss();
    for pid in wl.running.lock().unwrap().iter() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    for w in workers {
        w.join().expect("a worker panicked");
    }
    fs.unmount();
    let _ = std::fs::remove_dir_all(&scratch);
    let backing_store = fs.backing.join("store");
    (fs, backing_store, wl)
}

fn cas_on(store: &Path) -> Command {
    let mut c = Command::new(cas_bin());
    c.arg("--store").arg(store).env_remove("CAS_STORE");
    c
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
    common::run_ok(cas_on(store).arg("gc"));
    let out = common::run(cas_on(store).args(["verify", "--json"]));
    assert!(
        out.status.success(),
        "{what}: verify after gc is not clean: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn power_loss_with_durability_file_leaves_only_correct_objects() {
    if !faultfs::available() {
        return;
    }
    let seed = seed();
    let k = 8 + (seed % 25) as usize;
    eprintln!("seed {seed}: power loss after {k} successful operations");
    let (_fs, store, wl) = crash("file", false, k);
    let objects = object_files(&store);
    assert!(
        objects.len() >= k / 2,
        "too few objects reached the disk to prove anything: {}",
        objects.len()
    );
    assert_consistent(&store, "durability file");
    // Names are not lost in this mode: every object a successful put printed is there.
    for d in wl.done.lock().unwrap().iter() {
        if let Done::Objects(hs) = d {
            for h in hs {
                assert!(
                    objects.iter().any(|(n, _)| n == h),
                    "object {h} of a successful put is missing"
                );
            }
        }
    }
}

#[test]
fn power_loss_with_durability_full_keeps_every_success_even_in_strict_mode() {
    if !faultfs::available() {
        return;
    }
    let seed = seed();
    let k = 8 + (seed % 25) as usize;
    eprintln!("seed {seed}: power loss after {k} successful operations (strict)");
    let (fs, store, wl) = crash("full", true, k);
    assert_consistent(&store, "durability full (strict)");
    let objects: HashMap<String, bool> = object_files(&store).into_iter().collect();
    let refs = wl.ref_attempts.lock().unwrap().clone();
    let keys = wl.key_attempts.lock().unwrap().clone();
    let out = tempfile::tempdir().unwrap();
    for (i, d) in wl.done.lock().unwrap().iter().enumerate() {
        match d {
            Done::Objects(hs) => {
                for h in hs {
                    assert_eq!(objects.get(h), Some(&true), "object {h} lost or wrong");
                }
            }
            Done::Tree(h) => {
                let dest = out.path().join(format!("t{i}"));
                common::run_ok(cas_on(&store).args(["get", "-r", h, "-o"]).arg(&dest));
            }
            Done::Ref { name, value } => {
                let now = common::run_ok(cas_on(&store).args(["ref", "get", name]));
                let tried = &refs[name];
                let pos = tried.iter().position(|v| v == value).unwrap();
                assert!(
                    tried[pos..].contains(&now.trim().to_owned()),
                    "ref {name} is {now:?}, but it was set to {value} (then tried {:?})",
                    &tried[pos + 1..]
                );
            }
            Done::Key { key, hash } => {
                let got = std::process::Command::new(cas_bin())
                    .arg("--store")
                    .arg(&store)
                    .args(["key", "get", key])
                    .output()
                    .unwrap();
                assert!(
                    got.status.success(),
                    "entry {key} lost: {}",
                    text(&got.stderr)
                );
                // Every key is written once, so it holds exactly what was put.
                assert_eq!(keys[key], vec![hash.clone()]);
                assert_eq!(
                    blake3_hex(&got.stdout),
                    *hash,
                    "entry {key} holds other bytes"
                );
            }
        }
    }
    drop(fs);
}

#[test]
fn power_loss_with_durability_file_in_strict_mode_loses_names_not_integrity() {
    if !faultfs::available() {
        return;
    }
    let seed = seed();
    let k = 8 + (seed % 17) as usize;
    eprintln!("seed {seed}: power loss after {k} successful operations (strict, file)");
    let (_fs, store, _wl) = crash("file", true, k);
    assert_consistent(&store, "durability file (strict)");
}

/// The control: without any sync the same crash must corrupt objects, or the tests above
/// prove nothing.
#[test]
fn power_loss_with_durability_none_corrupts_the_control() {
    if !faultfs::available() {
        return;
    }
    let (_fs, store, _wl) = crash("none", false, 8);
    let objects = object_files(&store);
    let bad = objects.iter().filter(|(_, ok)| !ok).count();
    assert!(
        bad > 0,
        "durability none survived a power loss intact ({} objects): the fault filesystem \
         does not drop unsynced data, so the other tests prove nothing",
        objects.len()
    );
    let out = common::run(cas_on(&store).arg("verify"));
    assert!(
        !out.status.success(),
        "verify found nothing wrong after the control crash"
    );
}

//! cas against its peers and the syscall floor (issue 5).
//!
//! ```text
//! cargo bench -p cas-bench --bench compare                  # full run
//! CAS_BENCH_QUICK=1 cargo bench -p cas-bench --bench compare  # quick run, smaller counts
//! ```
//!
//! Every scenario benchmarks cas and its peers on the same data, side by side in one run:
//! - **floor**: a plain loop of what any correct store must at least do, without hashing:
//!   create a temporary file in the same directory, write, (`fdatasync` for durable
//!   scenarios,) rename to the final name; for reads, open + read.
//! - **cacache** 13 (`write_hash_sync` / `read_hash_sync`, SHA-256, never syncs).
//! - **git** (`hash-object -w --stdin-paths`, `cat-file --batch`), skipped if `git` is missing.
//!
//! Each repetition writes into a fresh directory, created before the timer starts. Nothing
//! small is deleted until the whole run is over (a mass delete slows later creates on ext4
//! without a journal, see `docs/performance.md`); big files are deleted right after their
//! repetition. Stores live under `$CAS_BENCH_DIR`, else `<target>/bench-stores/`; the
//! million-object store of the scale scenario is built once and kept there.
//!
//! After all groups the run writes `<target>/bench-report.md`: each contender's rate (median
//! over criterion's samples of the time per repetition, measured here), ratios against the
//! floor and cacache, and the targets of issue 5.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use cas::{Durability, GcOptions, Hash, Options, Store};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};

/// Size of a small object.
const OBJ: usize = 4096;
/// Criterion samples per benchmark (its minimum).
const SAMPLES: usize = 10;
/// Objects per batch commit in the batch scenario.
const BATCH: usize = 1000;
/// Seed of the scale store's contents (object `i` is `gen(BIG_SEED, i)`).
const BIG_SEED: u64 = 0x5ca1_e000;

// ---------------------------------------------------------------------------------------------
// Configuration and directories

struct Cfg {
    quick: bool,
    /// Small objects per repetition.
    n: usize,
    /// Size of the big object.
    big: usize,
    /// Objects already in the scale store.
    scale_n: usize,
    /// Objects in the verify/gc store.
    scan_n: usize,
    /// Where stores live (persistent).
    root: PathBuf,
    /// This run's scratch directory under `root`.
    run: PathBuf,
    /// Whether `git` runs.
    git: bool,
    target: PathBuf,
}

impl Cfg {
    fn new() -> Cfg {
        let quick = std::env::var("CAS_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let target = target_dir();
        let root = std::env::var_os("CAS_BENCH_DIR")
            .map_or_else(|| target.join("bench-stores"), PathBuf::from);
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let run = root.join(format!("run-{stamp}-{}", std::process::id()));
        fs::create_dir_all(&run).expect("create the bench directory");
        let git = Command::new("git")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !git {
            println!("note: `git` not found: the git rows are skipped");
        }
        let (n, big, scale_n, scan_n) = if quick {
            (2_000, 64 << 20, 100_000, 20_000)
        } else {
            (10_000, 256 << 20, 1_000_000, 100_000)
        };
        Cfg {
            quick,
            n,
            big,
            scale_n,
            scan_n,
            root,
            run,
            git,
            target,
        }
    }

    /// A new, empty directory in this run's scratch space.
    fn fresh(&self, tag: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let d = self
            .run
            .join(format!("{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir_all(&d).expect("create a fresh directory");
        d
    }
}

/// `<target>` of this build: the bench executable is `<target>/release/deps/compare-…`.
fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

/// `syncfs(2)` on the bench filesystem, so a repetition starts without others' dirty pages.
fn sync_fs(dir: &Path) {
    let f = File::open(dir).expect("open the bench directory");
    rustix::fs::syncfs(&f).expect("syncfs");
}

/// Deletes the files over 1 MiB below `dir` (big objects), leaving the small files and
/// directories for the end of the run.
fn remove_big_files(dir: &Path) {
    for ent in fs::read_dir(dir).expect("list").flatten() {
        let md = ent.metadata().expect("stat");
        if md.is_dir() {
            remove_big_files(&ent.path());
        } else if md.len() > 1 << 20 {
            fs::remove_file(ent.path()).expect("remove a big file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// `n` distinct pseudo-random objects of `OBJ` bytes in one buffer.
struct Objects {
    bytes: Vec<u8>,
}

impl Objects {
    fn new(n: usize, seed: u64) -> Objects {
        let mut bytes = vec![0u8; n * OBJ];
        for (i, o) in bytes.chunks_mut(OBJ).enumerate() {
            fill(o, seed, i as u64);
        }
        Objects { bytes }
    }

    fn iter(&self) -> std::slice::Chunks<'_, u8> {
        self.bytes.chunks(OBJ)
    }

    /// Makes every object new (first 8 bytes), keeping them distinct from each other.
    fn stamp(&mut self, stamp: u64) {
        for o in self.bytes.chunks_mut(OBJ) {
            o[..8].copy_from_slice(&stamp.to_le_bytes());
        }
    }

    fn hex_names(&self) -> Vec<String> {
        self.iter()
            .map(|o| blake3::hash(o).to_hex().to_string())
            .collect()
    }
}

/// Fills `buf` with bytes determined by (`seed`, `index`) (splitmix64).
fn fill(buf: &mut [u8], seed: u64, index: u64) {
    let mut x = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in buf.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// A stamp no earlier repetition or run used.
fn unique_stamp() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 48)
}

// ---------------------------------------------------------------------------------------------
// Recording

#[derive(Clone, Copy)]
enum Unit {
    /// Operations per repetition.
    Ops(u64),
    /// Bytes per repetition.
    Bytes(u64),
}

impl Unit {
    fn throughput(self) -> Throughput {
        match self {
            Unit::Ops(n) => Throughput::Elements(n),
            Unit::Bytes(n) => Throughput::Bytes(n),
        }
    }
}

/// A target of issue 5 for one row.
#[derive(Clone)]
enum Target {
    /// At least this multiple of the scenario's floor.
    Floor(f64),
    /// At least this multiple of the scenario's cacache row.
    Cacache(f64),
    /// At least this multiple of another row (scenario, contender).
    Row(&'static str, String, f64),
    /// At least this many bytes per second.
    BytesPerSec(f64),
}

struct Rec {
    scenario: &'static str,
    contender: String,
    unit: Unit,
    /// Nanoseconds per repetition, one entry per call from criterion (warm-up first).
    per_rep_ns: Vec<f64>,
    targets: Vec<Target>,
}

static RECORDS: Mutex<Vec<Rec>> = Mutex::new(Vec::new());

fn record(scenario: &'static str, contender: &str, unit: Unit, per_rep: f64) {
    let mut recs = RECORDS.lock().unwrap();
    if let Some(r) = recs
        .iter_mut()
        .find(|r| r.scenario == scenario && r.contender == contender)
    {
        r.per_rep_ns.push(per_rep);
        return;
    }
    recs.push(Rec {
        scenario,
        contender: contender.to_owned(),
        unit,
        per_rep_ns: vec![per_rep],
        targets: Vec::new(),
    });
}

fn set_targets(scenario: &'static str, contender: &str, targets: Vec<Target>) {
    let mut recs = RECORDS.lock().unwrap();
    if let Some(r) = recs
        .iter_mut()
        .find(|r| r.scenario == scenario && r.contender == contender)
    {
        r.targets = targets;
    }
}

/// A criterion group with the settings every scenario uses.
/// Quick-mode groups get their own names, so criterion never compares them with full runs.
fn group<'a>(c: &'a mut Criterion, name: &str, cfg: &Cfg) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(if cfg.quick {
        format!("{name}-quick")
    } else {
        name.to_owned()
    });
    g.sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(if cfg.quick { 1 } else { 3 }));
    g
}

/// Benchmarks one contender: `rep` runs one repetition (its setup untimed) and returns the
/// time of the measured part.
fn bench(
    g: &mut BenchmarkGroup<'_, WallTime>,
    scenario: &'static str,
    contender: &str,
    unit: Unit,
    mut rep: impl FnMut() -> Duration,
) {
    g.throughput(unit.throughput());
    g.bench_function(contender, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rep();
            }
            record(
                scenario,
                contender,
                unit,
                total.as_nanos() as f64 / iters as f64,
            );
            total
        });
    });
}

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Contenders

fn cas_store(dir: &Path, d: Durability) -> Store {
    Store::init(dir, Options::default().durability(d)).expect("init a store")
}

/// Floor put: tmp file + write (+ fdatasync) + rename, all in `dir`.
fn floor_put(dir: &Path, objs: &Objects, names: &[String], sync: bool) {
    let mut tmp = dir.to_path_buf();
    for (i, (o, name)) in objs.iter().zip(names).enumerate() {
        tmp.push(format!("tmp.{i}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .expect("create");
        f.write_all(o).expect("write");
        if sync {
            f.sync_data().expect("fdatasync");
        }
        drop(f);
        fs::rename(&tmp, dir.join(name)).expect("rename");
        tmp.pop();
    }
}

/// Floor of a batch: write every staging file of a batch, one `syncfs`, rename them all.
fn floor_put_batch(dir: &Path, objs: &Objects, names: &[String]) {
    let all: Vec<(usize, (&[u8], &String))> = objs.iter().zip(names).enumerate().collect();
    for batch in all.chunks(BATCH) {
        for (i, (o, _)) in batch {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("tmp.{i}")))
                .expect("create");
            f.write_all(o).expect("write");
        }
        sync_fs(dir);
        for (i, (_, name)) in batch {
            fs::rename(dir.join(format!("tmp.{i}")), dir.join(name)).expect("rename");
        }
    }
}

/// Floor read: open + read into a reused buffer.
fn floor_get(dir: &Path, names: &[String], buf: &mut Vec<u8>) -> usize {
    let mut total = 0;
    for name in names {
        let mut f = File::open(dir.join(name)).expect("open");
        buf.clear();
        total += f.read_to_end(buf).expect("read");
    }
    total
}

fn git(git_dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.env("GIT_DIR", git_dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stderr(Stdio::inherit());
    c
}

fn git_init(dir: &Path) {
    let ok = Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .expect("git init");
    assert!(ok.success(), "git init failed");
}

/// Runs a git command with `input` on stdin (written from another thread) and hands its
/// stdout to `read`; the timer starts once the process is spawned. Returns (time, `read`'s
/// result).
fn git_pipe<T>(
    mut cmd: Command,
    input: &[u8],
    read: impl FnOnce(&mut BufReader<std::process::ChildStdout>) -> T,
) -> (Duration, T) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn git");
    let t = Instant::now();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::with_capacity(1 << 16, child.stdout.take().expect("stdout"));
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            stdin.write_all(input).expect("write to git");
        });
        read(&mut out)
    });
    let status = child.wait().expect("wait for git");
    let elapsed = t.elapsed();
    assert!(status.success(), "git failed");
    (elapsed, r)
}

/// `git hash-object -w --stdin-paths`; returns (time, object ids).
fn git_put(git_dir: &Path, paths: &[u8]) -> (Duration, Vec<String>) {
    let mut cmd = git(git_dir);
    cmd.args(["hash-object", "-w", "--stdin-paths"]);
    git_pipe(cmd, paths, |out| {
        out.lines().map(|l| l.expect("read git output")).collect()
    })
}

/// `git cat-file --batch` of `ids` (newline-terminated); returns (time, bytes read).
fn git_get(git_dir: &Path, ids: &[u8], n: usize) -> (Duration, usize) {
    let mut cmd = git(git_dir);
    cmd.args(["cat-file", "--batch"]);
    git_pipe(cmd, ids, |out| {
        let mut line = String::new();
        let mut buf = Vec::new();
        let mut total = 0;
        for _ in 0..n {
            line.clear();
            out.read_line(&mut line).expect("read a git header");
            let size: usize = line
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad git header {line:?}"));
            buf.resize(size + 1, 0);
            out.read_exact(&mut buf).expect("read a git object");
            total += size;
        }
        total
    })
}

/// Writes each object to `dir/<i>` and returns the newline-separated list of paths.
fn write_sources(dir: &Path, objs: &Objects) -> Vec<u8> {
    let mut list = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        let p = dir.join(i.to_string());
        fs::write(&p, o).expect("write a source file");
        list.extend_from_slice(p.to_str().expect("utf-8 path").as_bytes());
        list.push(b'\n');
    }
    list
}

// ---------------------------------------------------------------------------------------------
// Scenarios

const PUT_NONE: &str = "put 4 KiB, durability none";
const PUT_FILE: &str = "put 4 KiB, durability file (fdatasync)";
const PUT_BATCH: &str = "put 4 KiB, batches of 1000, one sync each";
const GET_SMALL: &str = "get 4 KiB verified, warm";
const PUT_BIG: &str = "put big object, durability none";
const CLUSTER_SINGLE: &str = "cluster fs: put 4 KiB, durability file, one at a time";
const CLUSTER_GET: &str = "cluster fs: get 4 KiB verified";
const CLUSTER_PUT_BIG: &str = "cluster fs: put big object, durability file";
const CLUSTER_GET_BIG: &str = "cluster fs: get big object verified";
const CLUSTER_BATCH: &str = "cluster fs: put 4 KiB, durability file, one batch of 200";
const GET_BIG: &str = "get big object verified, warm";
const SCALE_PUT: &str = "scale: put 4 KiB, durability none";
const SCALE_GET: &str = "scale: get 4 KiB verified, warm";
const VERIFY: &str = "verify (rehash every object), warm";
const GC: &str = "gc scan (nothing to delete), warm";
const TIER_MOUNTS: &str = "tier: 4 mounts each get one big object 3 times";
const TIER_GET_SMALL: &str = "tier: get 4 KiB verified, warm";
const TIER_GET_BIG: &str = "tier: get big object verified, warm";
const TIER_FETCH: &str = "tier: get 4 KiB, cold local tier (fetch + publish)";
const GET_FILE: &str = "get big object to a file (-o), warm";
const GET_PIPE: &str = "get big object to a pipe (read by cat), warm";
const RESTORE_SMALL: &str = "restore a tree of small files, warm";
const RESTORE_LARGE: &str = "restore a tree of large files, warm";
const FIRST_PUT: &str = "first put -r of a tree (fresh store)";
const REPUT: &str = "re-put -r of an unchanged tree";

fn put_small(c: &mut Criterion, cfg: &Cfg) {
    let objs = Objects::new(cfg.n, 1);
    let names = objs.hex_names();
    let unit = Unit::Ops(cfg.n as u64);

    let mut g = group(c, "put-4KiB-none", cfg);
    bench(&mut g, PUT_NONE, "cas", unit, || {
        let store = cas_store(&cfg.fresh("put-none-cas"), Durability::None);
        sync_fs(&cfg.run);
        timed(|| {
            for o in objs.iter() {
                store.put_bytes(o).expect("put");
            }
        })
    });
    bench(&mut g, PUT_NONE, "floor", unit, || {
        let dir = cfg.fresh("put-none-floor");
        sync_fs(&cfg.run);
        timed(|| floor_put(&dir, &objs, &names, false))
    });
    bench(&mut g, PUT_NONE, "cacache", unit, || {
        let dir = cfg.fresh("put-none-cacache");
        sync_fs(&cfg.run);
        timed(|| {
            for o in objs.iter() {
                cacache::write_hash_sync(&dir, o).expect("cacache write");
            }
        })
    });
    if cfg.git {
        let paths = write_sources(&cfg.fresh("git-src"), &objs);
        bench(&mut g, PUT_NONE, "git", unit, || {
            let dir = cfg.fresh("put-none-git");
            git_init(&dir);
            sync_fs(&cfg.run);
            let (t, ids) = git_put(&dir, &paths);
            assert_eq!(ids.len(), cfg.n);
            t
        });
    }
    g.finish();
    set_targets(
        PUT_NONE,
        "cas",
        vec![Target::Floor(0.85), Target::Cacache(2.5)],
    );

    let mut g = group(c, "put-4KiB-file", cfg);
    bench(&mut g, PUT_FILE, "cas", unit, || {
        let store = cas_store(&cfg.fresh("put-file-cas"), Durability::File);
        sync_fs(&cfg.run);
        timed(|| {
            for o in objs.iter() {
                store.put_bytes(o).expect("put");
            }
        })
    });
    bench(&mut g, PUT_FILE, "floor", unit, || {
        let dir = cfg.fresh("put-file-floor");
        sync_fs(&cfg.run);
        timed(|| floor_put(&dir, &objs, &names, true))
    });
    g.finish();
    set_targets(PUT_FILE, "cas", vec![Target::Floor(0.9)]);

    let mut g = group(c, "put-4KiB-batch1000", cfg);
    bench(&mut g, PUT_BATCH, "cas", unit, || {
        let store = cas_store(&cfg.fresh("put-batch-cas"), Durability::File);
        sync_fs(&cfg.run);
        timed(|| {
            let all: Vec<&[u8]> = objs.iter().collect();
            for chunk in all.chunks(BATCH) {
                let mut b = store.batch();
                for o in chunk {
                    b.put_bytes(o).expect("stage");
                }
                b.commit().expect("commit");
            }
        })
    });
    bench(&mut g, PUT_BATCH, "floor", unit, || {
        let dir = cfg.fresh("put-batch-floor");
        sync_fs(&cfg.run);
        timed(|| floor_put_batch(&dir, &objs, &names))
    });
    g.finish();
    set_targets(
        PUT_BATCH,
        "cas",
        vec![Target::Row(PUT_FILE, "cas".to_owned(), 4.0)],
    );
}

fn get_small(c: &mut Criterion, cfg: &Cfg) {
    let objs = Objects::new(cfg.n, 2);
    let names = objs.hex_names();
    let unit = Unit::Ops(cfg.n as u64);

    let store = cas_store(&cfg.fresh("get-cas"), Durability::None);
    let hashes: Vec<Hash> = objs
        .iter()
        .map(|o| store.put_bytes(o).expect("put"))
        .collect();
    let cdir = cfg.fresh("get-cacache");
    let sris: Vec<_> = objs
        .iter()
        .map(|o| cacache::write_hash_sync(&cdir, o).expect("cacache write"))
        .collect();
    let fdir = cfg.fresh("get-floor");
    floor_put(&fdir, &objs, &names, false);
    let git_ids = cfg.git.then(|| {
        let gdir = cfg.fresh("get-git");
        git_init(&gdir);
        let paths = write_sources(&cfg.fresh("get-git-src"), &objs);
        let (_, ids) = git_put(&gdir, &paths);
        let mut list = ids.join("\n").into_bytes();
        list.push(b'\n');
        (gdir, list)
    });
    sync_fs(&cfg.run);

    let mut g = group(c, "get-4KiB", cfg);
    bench(&mut g, GET_SMALL, "cas", unit, || {
        timed(|| {
            for h in &hashes {
                black_box(store.get(h).expect("get").len());
            }
        })
    });
    bench(&mut g, GET_SMALL, "floor", unit, || {
        let mut buf = Vec::with_capacity(2 * OBJ);
        timed(|| {
            black_box(floor_get(&fdir, &names, &mut buf));
        })
    });
    bench(&mut g, GET_SMALL, "cacache", unit, || {
        timed(|| {
            for sri in &sris {
                black_box(
                    cacache::read_hash_sync(&cdir, sri)
                        .expect("cacache read")
                        .len(),
                );
            }
        })
    });
    if let Some((gdir, list)) = &git_ids {
        bench(&mut g, GET_SMALL, "git", unit, || {
            let (t, total) = git_get(gdir, list, cfg.n);
            assert_eq!(total, cfg.n * OBJ);
            t
        });
    }
    g.finish();
    set_targets(GET_SMALL, "cas", vec![Target::Cacache(1.2)]);
}

fn big(c: &mut Criterion, cfg: &Cfg) {
    let mut data_buf = vec![0u8; cfg.big];
    for (i, chunk) in data_buf.chunks_mut(1 << 20).enumerate() {
        fill(chunk, 3, i as u64);
    }
    let data: &[u8] = &data_buf;
    let src_path = cfg.fresh("big-src").join("src");
    let src = &src_path;
    fs::write(src, data).expect("write the source file");
    sync_fs(&cfg.run);
    let unit = Unit::Bytes(cfg.big as u64);
    let name_hex = blake3::hash(data).to_hex().to_string();
    let name = &name_hex;

    put_big(c, cfg, data, src, name, unit);

    // Get: one copy of the object in each store, written once and synced (clean, cached).
    let store = cas_store(&cfg.fresh("get-big-cas"), Durability::None);
    let h = store.put_bytes(data).expect("put");
    let cdir = cfg.fresh("get-big-cacache");
    let sri = cacache::write_hash_sync(&cdir, data).expect("cacache write");
    let fdir = cfg.fresh("get-big-floor");
    fs::write(fdir.join(name), data).expect("write");
    sync_fs(&cfg.run);
    let mut g = group(c, "get-big", cfg);
    bench(&mut g, GET_BIG, "cas", unit, || {
        timed(|| {
            let o = store.get(&h).expect("get");
            black_box(o.len());
        })
    });
    let mut buf = Vec::with_capacity(cfg.big + OBJ);
    bench(&mut g, GET_BIG, "floor", unit, || {
        timed(|| {
            let n = floor_get(&fdir, std::slice::from_ref(name), &mut buf);
            black_box(n);
        })
    });
    bench(&mut g, GET_BIG, "cacache", unit, || {
        timed(|| {
            black_box(cacache::read_hash_sync(&cdir, &sri).expect("read").len());
        })
    });
    g.finish();
    set_targets(GET_BIG, "cas", vec![Target::BytesPerSec(3e9)]);
    drop(data_buf);
    for d in [src.parent().unwrap(), store.root(), &cdir, &fdir] {
        remove_big_files(d);
    }
}

/// Small objects put into a store on a cluster (FUSE) filesystem: single puts, each with its
/// own `fdatasync`, against one batch whose barrier `fdatasync`s every staged file in parallel
/// (`syncfs` does not reach a FUSE daemon), and the floor (tmp + write + `fdatasync` + rename,
/// one object after another) on the same filesystem.
fn cluster(c: &mut Criterion, cfg: &Cfg, dir: &Path) {
    const N: usize = 200;
    let objs = Objects::new(N, 7);
    let names = objs.hex_names();
    let unit = Unit::Ops(N as u64);
    let fresh = |tag: &str| {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let d = dir.join(format!(
            "bench-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&d).expect("create a directory on the cluster filesystem");
        d
    };
    let mut g = group(c, "cluster-put-4KiB-file", cfg);
    bench(&mut g, CLUSTER_SINGLE, "cas", unit, || {
        let store = cas_store(&fresh("single"), Durability::File);
        timed(|| {
            for o in objs.iter() {
                store.put_bytes(o).expect("put");
            }
        })
    });
    bench(&mut g, CLUSTER_SINGLE, "floor", unit, || {
        let d = fresh("floor");
        timed(|| floor_put(&d, &objs, &names, true))
    });
    g.finish();
    let mut g = group(c, "cluster-put-4KiB-file-batch", cfg);
    bench(&mut g, CLUSTER_BATCH, "cas", unit, || {
        let store = cas_store(&fresh("batch"), Durability::File);
        timed(|| {
            let mut b = store.batch();
            for o in objs.iter() {
                b.put_bytes(o).expect("stage");
            }
            b.commit().expect("commit");
        })
    });
    g.finish();
    set_targets(
        CLUSTER_BATCH,
        "cas",
        vec![Target::Row(CLUSTER_SINGLE, "cas".to_owned(), 1.0)],
    );
    set_targets(CLUSTER_SINGLE, "cas", vec![Target::Floor(0.8)]);

    cluster_reads_and_big(c, cfg, &fresh, &objs, &names);
    for ent in fs::read_dir(dir).expect("list").flatten() {
        if ent.file_name().to_string_lossy().starts_with("bench-") {
            let _ = fs::remove_dir_all(ent.path());
        }
    }
}

/// The put-big group: cas (stream and path), cacache, the floor and `cp` on one object.
fn put_big(c: &mut Criterion, cfg: &Cfg, data: &[u8], src: &Path, name: &str, unit: Unit) {
    let mut g = group(c, "put-big", cfg);
    // Each repetition: a fresh directory (and store), synced filesystem, the timed put, then
    // the big file is deleted at once (its dirty pages never reach the disk).
    let none = || Options::default().durability(Durability::None);
    bench(&mut g, PUT_BIG, "cas put_reader (stream)", unit, || {
        big_rep(cfg, |dir| {
            let store = Store::init(dir, none()).expect("init");
            Box::new(move || {
                store.put_reader(Cursor::new(data)).expect("put");
            })
        })
    });
    bench(&mut g, PUT_BIG, "cas put_path", unit, || {
        big_rep(cfg, |dir| {
            let store = Store::init(dir, none()).expect("init");
            Box::new(move || {
                store.put_path(src).expect("put");
            })
        })
    });
    bench(&mut g, PUT_BIG, "cacache", unit, || {
        big_rep(cfg, |dir| {
            let dir = dir.to_path_buf();
            Box::new(move || {
                cacache::write_hash_sync(&dir, data).expect("cacache write");
            })
        })
    });
    bench(&mut g, PUT_BIG, "floor", unit, || {
        big_rep(cfg, |dir| {
            let (tmp, dst) = (dir.join("tmp"), dir.join(name));
            Box::new(move || {
                let mut f = File::create(&tmp).expect("create");
                f.write_all(data).expect("write");
                drop(f);
                fs::rename(&tmp, &dst).expect("rename");
            })
        })
    });
    // The floor of a put *from a path*: the bytes must be copied, not written from memory.
    bench(&mut g, PUT_BIG, "floor (copy)", unit, || {
        big_rep(cfg, |dir| {
            let (tmp, dst) = (dir.join("tmp"), dir.join(name));
            Box::new(move || {
                fs::copy(src, &tmp).expect("copy"); // copy_file_range where it can
                fs::rename(&tmp, &dst).expect("rename");
            })
        })
    });
    bench(&mut g, PUT_BIG, "cp", unit, || {
        big_rep(cfg, |dir| {
            let dst = dir.join("copy");
            Box::new(move || {
                let ok = Command::new("cp")
                    .arg(src)
                    .arg(&dst)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "cp failed");
            })
        })
    });
    g.finish();
    set_targets(
        PUT_BIG,
        "cas put_reader (stream)",
        vec![Target::Cacache(5.0)],
    );
    set_targets(
        PUT_BIG,
        "cas put_path",
        vec![
            Target::Row(PUT_BIG, "floor (copy)".to_owned(), 0.85),
            Target::Row(PUT_BIG, "cp".to_owned(), 0.8),
        ],
    );
}

/// The rest of [`cluster`]: small gets, and a big object put and got, against the floor.
fn cluster_reads_and_big(
    c: &mut Criterion,
    cfg: &Cfg,
    fresh: &dyn Fn(&str) -> PathBuf,
    objs: &Objects,
    names: &[String],
) {
    let unit = Unit::Ops(names.len() as u64);
    // Gets of the same small objects (warm as that filesystem's client allows), and a big
    // object put and got, against the floor there.
    let store = cas_store(&fresh("get"), Durability::File);
    let hashes: Vec<Hash> = objs
        .iter()
        .map(|o| store.put_bytes(o).expect("put"))
        .collect();
    let fdir = fresh("get-floor");
    floor_put(&fdir, objs, names, false);
    let mut buf = Vec::new();
    let mut g = group(c, "cluster-get-4KiB", cfg);
    bench(&mut g, CLUSTER_GET, "cas", unit, || {
        timed(|| {
            for h in &hashes {
                black_box(store.get(h).expect("get").len());
            }
        })
    });
    bench(&mut g, CLUSTER_GET, "floor", unit, || {
        timed(|| {
            black_box(floor_get(&fdir, names, &mut buf));
        })
    });
    g.finish();

    let len = cfg.big.min(64 << 20);
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        fill(chunk, 14, i as u64);
    }
    let data = &data[..];
    let big_name = blake3::hash(data).to_hex().to_string();
    let unit = Unit::Bytes(len as u64);
    let mut g = group(c, "cluster-put-big", cfg);
    bench(&mut g, CLUSTER_PUT_BIG, "cas", unit, || {
        let store = cas_store(&fresh("put-big"), Durability::File);
        timed(|| {
            store.put_reader(Cursor::new(data)).expect("put");
        })
    });
    bench(&mut g, CLUSTER_PUT_BIG, "floor", unit, || {
        let d = fresh("put-big-floor");
        timed(|| {
            let tmp = d.join("tmp");
            let mut f = File::create(&tmp).expect("create");
            f.write_all(data).expect("write");
            f.sync_data().expect("fdatasync");
            drop(f);
            fs::rename(&tmp, d.join(&big_name)).expect("rename");
        })
    });
    g.finish();
    set_targets(CLUSTER_PUT_BIG, "cas", vec![Target::Floor(0.8)]);
    let store = cas_store(&fresh("get-big"), Durability::File);
    let h = store.put_bytes(data).expect("put");
    let fdir = fresh("get-big-floor");
    fs::write(fdir.join(&big_name), data).expect("write");
    let mut g = group(c, "cluster-get-big", cfg);
    bench(&mut g, CLUSTER_GET_BIG, "cas", unit, || {
        timed(|| {
            black_box(store.get(&h).expect("get").len());
        })
    });
    bench(&mut g, CLUSTER_GET_BIG, "floor", unit, || {
        timed(|| {
            black_box(floor_get(&fdir, std::slice::from_ref(&big_name), &mut buf));
        })
    });
    g.finish();
}

/// Reads per mount in [`tier_mounts`].
const MOUNT_READS: usize = 3;

/// Four "nodes" (mounts of one cluster filesystem) each read the same big object
/// [`MOUNT_READS`] times: straight from the shared store, and through a fresh local tier of
/// their own (on the local disk) over the shared store. Prints the bytes read from the shared
/// store: every read for the direct case; for the tiers, what they fetched (measured: the
/// objects their local stores hold afterwards, each started empty).
fn tier_mounts(c: &mut Criterion, cfg: &Cfg, mounts: &[PathBuf]) {
    let name = format!("bench-tier4-{}", std::process::id());
    let shared = cas_store(&mounts[0].join(&name), Durability::None);
    let len = cfg.big.min(64 << 20);
    let mut data = vec![0u8; len];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        fill(chunk, 13, i as u64);
    }
    let h = shared.put_bytes(&data).expect("put on the shared store");
    drop(data);
    let views: Vec<Store> = mounts
        .iter()
        .map(|m| Store::open(m.join(&name)).expect("open the shared store through a mount"))
        .collect();
    let reads = mounts.len() * MOUNT_READS;
    let unit = Unit::Bytes((reads * len) as u64);
    let read_all = |stores: &[Store]| {
        std::thread::scope(|s| {
            for st in stores {
                s.spawn(|| {
                    for _ in 0..MOUNT_READS {
                        black_box(st.get(&h).expect("get").len());
                    }
                });
            }
        });
    };
    let mut g = group(c, "tier-4-mounts", cfg);
    bench(&mut g, TIER_MOUNTS, "shared store, direct", unit, || {
        timed(|| read_all(&views))
    });
    let fetched = AtomicU64::new(0);
    bench(&mut g, TIER_MOUNTS, "a local tier per mount", unit, || {
        let tiers: Vec<Store> = mounts
            .iter()
            .map(|m| {
                cas_store(&cfg.fresh("tier4-local"), Durability::None)
                    .with_upstream(m.join(&name), false)
            })
            .collect();
        let t = timed(|| read_all(&tiers));
        let bytes: u64 = tiers
            .iter()
            .filter_map(|t| t.usage().ok())
            .filter_map(|u| u.area("objects").map(|a| a.bytes))
            .sum();
        fetched.store(bytes, Ordering::Relaxed);
        t
    });
    g.finish();
    println!(
        "tier-4-mounts: bytes read from the shared store per repetition: direct {} \
         ({reads} reads of {len}), through local tiers {}",
        reads * len,
        fetched.load(Ordering::Relaxed)
    );
    let _ = fs::remove_dir_all(mounts[0].join(&name));
}

/// One repetition of a big put: a fresh directory, `setup` (a store…) untimed, a synced
/// filesystem, the timed put, then the big file is deleted at once (its dirty pages never
/// reach the disk).
fn big_rep<'a>(cfg: &Cfg, setup: impl FnOnce(&Path) -> Box<dyn FnOnce() + 'a>) -> Duration {
    let dir = cfg.fresh("put-big");
    let put = setup(&dir);
    sync_fs(&cfg.run);
    let t = timed(put);
    remove_big_files(&dir);
    t
}

/// The persistent store holding `scale_n` objects (built on first use); returns its path.
fn scale_store(cfg: &Cfg) -> PathBuf {
    let dir = cfg.root.join(format!("scale-{}", cfg.scale_n));
    let marker = dir.join("READY");
    // Every run adds its scale puts; past N + 25 % the store is set aside and built again.
    let grown = fs::read_to_string(dir.join(COUNT_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&n| n > cfg.scale_n + cfg.scale_n / 4);
    if let Some(n) = grown {
        println!("the scale store has grown to {n} objects: building it again");
        fs::rename(&dir, cfg.run.join("scale-retired")).expect("set aside the scale store");
    } else if marker.exists() {
        return dir;
    }
    if dir.exists() {
        // An interrupted build: set it aside (deleted at the end of the run, not now).
        fs::rename(&dir, cfg.run.join("scale-partial")).expect("set aside a partial store");
    }
    println!(
        "building the scale store: {} objects of 4 KiB in {} (kept for later runs)",
        cfg.scale_n,
        dir.display()
    );
    let t = Instant::now();
    let store = cas_store(&dir, Durability::None);
    let mut buf = vec![0u8; OBJ];
    let mut i = 0;
    while i < cfg.scale_n {
        let mut b = store.batch();
        for _ in 0..10_000.min(cfg.scale_n - i) {
            fill(&mut buf, BIG_SEED, i as u64);
            b.put_bytes(&buf).expect("stage");
            i += 1;
        }
        b.commit().expect("commit");
    }
    sync_fs(&dir);
    fs::write(&marker, format!("{}\n", cfg.scale_n)).expect("write the marker");
    println!("built in {:.1} s", t.elapsed().as_secs_f64());
    dir
}

fn scale(c: &mut Criterion, cfg: &Cfg) {
    let big_dir = scale_store(cfg);
    let big = Store::open_with(&big_dir, Options::default().durability(Durability::None))
        .expect("open the scale store");
    let unit = Unit::Ops(cfg.n as u64);
    let big_name = format!("cas, store of ≥ {} objects", cfg.scale_n);
    let empty_name = "cas, empty store";

    let mut objs = Objects::new(cfg.n, 4);
    let mut g = group(c, "scale-put", cfg);
    let mut put = |contender: &str, store: &dyn Fn() -> Store| {
        bench(&mut g, SCALE_PUT, contender, unit, || {
            let s = store();
            objs.stamp(unique_stamp());
            sync_fs(&cfg.run);
            timed(|| {
                for o in objs.iter() {
                    s.put_bytes(o).expect("put");
                }
            })
        });
    };
    put(empty_name, &|| {
        cas_store(&cfg.fresh("scale-empty"), Durability::None)
    });
    put(&big_name, &|| big.clone());
    // The same, after reading every directory of the store (untimed): this VM pages out what
    // was not touched for about a minute, so the big store's directory blocks are mostly on
    // disk before a repetition, while an empty store's are all in memory.
    let warm_name = format!("{big_name}, directories pre-read");
    let objects = big_dir.join("objects");
    put(&warm_name, &|| {
        black_box(list_objects(&objects).len());
        big.clone()
    });
    g.finish();
    for name in [&big_name, &warm_name] {
        set_targets(
            SCALE_PUT,
            name,
            vec![Target::Row(SCALE_PUT, empty_name.to_owned(), 0.75)],
        );
    }

    // Get: n objects spread over the big store, and the same n objects alone in a store.
    let small = cas_store(&cfg.fresh("scale-get-empty"), Durability::None);
    let mut buf = vec![0u8; OBJ];
    let hashes: Vec<Hash> = (0..cfg.n)
        .map(|k| {
            fill(&mut buf, BIG_SEED, (k * (cfg.scale_n / cfg.n)) as u64);
            let h = small.put_bytes(&buf).expect("put");
            assert!(big.contains(&h), "the scale store lacks object {h}");
            h
        })
        .collect();
    sync_fs(&cfg.run);
    for h in &hashes {
        black_box(big.get(h).expect("get"));
    }
    let mut g = group(c, "scale-get", cfg);
    for (contender, store) in [(empty_name, &small), (big_name.as_str(), &big)] {
        bench(&mut g, SCALE_GET, contender, unit, || {
            timed(|| {
                for h in &hashes {
                    black_box(store.get(h).expect("get").len());
                }
            })
        });
    }
    g.finish();
    set_targets(
        SCALE_GET,
        &big_name,
        vec![Target::Row(SCALE_GET, empty_name.to_owned(), 0.75)],
    );
    let count = list_objects(&objects).len();
    SCALE_OBJECTS.store(count as u64, Ordering::Relaxed);
    fs::write(big_dir.join(COUNT_FILE), format!("{count}\n")).expect("write the count");
}

/// File in the scale store holding its object count at the end of the last run.
const COUNT_FILE: &str = "COUNT";

/// Objects in the scale store at the end of the run (it grows by what the scale puts add).
static SCALE_OBJECTS: AtomicU64 = AtomicU64::new(0);

/// Lists every file two levels below `objects/`.
fn list_objects(objects: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(objects).expect("list").flatten() {
        for f in fs::read_dir(d.path()).expect("list").flatten() {
            out.push(f.path());
        }
    }
    out
}

fn scan(c: &mut Criterion, cfg: &Cfg) {
    let store = cas_store(&cfg.fresh("scan"), Durability::None);
    let mut buf = vec![0u8; OBJ];
    let mut done = 0;
    while done < cfg.scan_n {
        let mut batch = store.batch();
        for _ in 0..10_000.min(cfg.scan_n - done) {
            fill(&mut buf, 5, done as u64);
            batch.put_bytes(&buf).expect("stage");
            done += 1;
        }
        batch.commit().expect("commit");
    }
    sync_fs(&cfg.run);
    let unit = Unit::Ops(cfg.scan_n as u64);
    let objects = store.root().join("objects");
    let count = cfg.scan_n as u64;

    let mut g = group(c, "verify", cfg);
    bench(&mut g, VERIFY, "cas", unit, || {
        timed(|| {
            let report = store.verify(&cas::no_progress).expect("verify");
            assert!(report.is_clean() && report.objects == count);
        })
    });
    bench(&mut g, VERIFY, "floor", unit, || {
        // readdir, then open + read + BLAKE3 of every file on all cores.
        timed(|| {
            let files = list_objects(&objects);
            let threads = std::thread::available_parallelism().map_or(2, usize::from);
            std::thread::scope(|s| {
                for part in files.chunks(files.len().div_ceil(threads)) {
                    s.spawn(move || {
                        let mut buf = Vec::with_capacity(2 * OBJ);
                        for p in part {
                            buf.clear();
                            File::open(p)
                                .expect("open")
                                .read_to_end(&mut buf)
                                .expect("read");
                            black_box(blake3::hash(&buf));
                        }
                    });
                }
            });
        })
    });
    g.finish();

    let mut g = group(c, "gc", cfg);
    bench(&mut g, GC, "cas", unit, || {
        timed(|| {
            let report = store
                .gc(&GcOptions::default(), &cas::no_progress)
                .expect("gc");
            assert!(report.objects == count && report.trashed == 0 && report.deleted == 0);
        })
    });
    bench(&mut g, GC, "floor", unit, || {
        // readdir + lstat of every object: the least a mark-and-sweep must look at.
        timed(|| {
            let files = list_objects(&objects);
            for p in &files {
                black_box(fs::symlink_metadata(p).expect("stat").len());
            }
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Issue 14: big gets to a file and a pipe, tree restores, re-putting an unchanged tree

/// Big gets to a file (`Store::get_to_path`, what `cas get -o` runs; peer `cp`) and to a pipe
/// read by `cat` (`Store::get_to_fd`, what `cas get | …` runs; peer `cat FILE | cat`).
fn get_out(c: &mut Criterion, cfg: &Cfg) {
    let mut data = vec![0u8; cfg.big];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        fill(chunk, 14, i as u64);
    }
    let src = cfg.fresh("get-out-src").join("plain");
    fs::write(&src, &data).expect("write the plain copy");
    let store = cas_store(&cfg.fresh("get-out-cas"), Durability::None);
    let h = store.put_bytes(&data).expect("put");
    drop(data);
    sync_fs(&cfg.run);
    let unit = Unit::Bytes(cfg.big as u64);
    let mut g = group(c, "get-to-file", cfg);
    bench(&mut g, GET_FILE, "cas get_to_path", unit, || {
        big_rep(cfg, |dir| {
            let out = dir.join("out");
            let store = &store;
            Box::new(move || {
                store.get_to_path(&h, &out).expect("get -o");
            })
        })
    });
    bench(&mut g, GET_FILE, "cp", unit, || {
        big_rep(cfg, |dir| {
            let out = dir.join("out");
            let src = &src;
            Box::new(move || {
                let ok = Command::new("cp")
                    .arg(src)
                    .arg(&out)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "cp failed");
            })
        })
    });
    g.finish();
    set_targets(
        GET_FILE,
        "cas get_to_path",
        vec![Target::Row(GET_FILE, "cp".to_owned(), 0.8)],
    );

    let mut g = group(c, "get-to-pipe", cfg);
    let cat_sink = || {
        Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn cat")
    };
    // `Store::get_to_fd` is what `cas get H | …` runs (spliced into the pipe).
    bench(&mut g, GET_PIPE, "cas get_to_fd", unit, || {
        let mut sink = cat_sink();
        let pipe = sink.stdin.take().expect("stdin");
        timed(|| {
            store
                .get_to_fd(&h, std::os::fd::AsFd::as_fd(&pipe), &cas::no_progress)
                .expect("get to a pipe");
            drop(pipe);
            assert!(sink.wait().expect("wait").success());
        })
    });
    bench(&mut g, GET_PIPE, "cat", unit, || {
        let mut sink = cat_sink();
        let pipe = sink.stdin.take().expect("stdin");
        timed(|| {
            let ok = Command::new("cat")
                .arg(&src)
                .stdout(Stdio::from(pipe))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cat failed");
            assert!(sink.wait().expect("wait").success());
        })
    });
    g.finish();
    set_targets(GET_PIPE, "cas get_to_fd", vec![Target::BytesPerSec(2e9)]);
    remove_big_files(store.root());
    remove_big_files(src.parent().expect("parent"));
}

/// A generated tree: `files` files of 64 B to 32 KiB (sizes spread log-uniformly), 40 to a
/// directory, two levels deep.
fn small_tree(dir: &Path, files: usize) {
    let mut buf = vec![0u8; 32 << 10];
    for i in 0..files {
        let d = dir
            .join(format!("d{}", i / 400))
            .join(format!("e{}", i / 40));
        if i % 40 == 0 {
            fs::create_dir_all(&d).expect("mkdir");
        }
        // 64 B · 2^(0..9): 64 B to 32 KiB.
        let len = 64usize << ((i * 7919) % 10);
        fill(&mut buf[..len], 1414, i as u64);
        fs::write(d.join(format!("f{i}")), &buf[..len]).expect("write");
    }
}

/// `cp -a SRC DST`.
fn cp_a(src: &Path, dst: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp -a failed");
}

fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    for ent in fs::read_dir(dir).expect("list").flatten() {
        let t = ent.file_type().expect("type");
        if t.is_dir() {
            n += count_files(&ent.path());
        } else {
            n += 1;
        }
    }
    n
}

/// Tree restores (`Store::checkout`, what `cas get -r` runs) against `cp -a` of the same
/// tree: many small files, and a few large ones.
fn restore(c: &mut Criterion, cfg: &Cfg) {
    let small = cfg.fresh("restore-small-src").join("tree");
    small_tree(&small, if cfg.quick { 1_000 } else { 4_000 });
    let large = cfg.fresh("restore-large-src").join("tree");
    fs::create_dir_all(&large).expect("mkdir");
    let each = cfg.big / 8;
    let mut buf = vec![0u8; each];
    for i in 0..8 {
        fill(&mut buf, 1415, i);
        fs::write(large.join(format!("large{i}")), &buf).expect("write");
    }
    drop(buf);
    let store = cas_store(&cfg.fresh("restore-cas"), Durability::None);
    for (scenario, src, unit, tag) in [
        (
            RESTORE_SMALL,
            &small,
            Unit::Ops(count_files(&small)),
            "restore-small",
        ),
        (
            RESTORE_LARGE,
            &large,
            Unit::Bytes(cfg.big as u64),
            "restore-large",
        ),
    ] {
        let tree = store.put_dir(src).expect("put -r");
        sync_fs(&cfg.run);
        let mut g = group(c, tag, cfg);
        bench(&mut g, scenario, "cas checkout", unit, || {
            let dir = cfg.fresh(tag);
            sync_fs(&cfg.run);
            let t = timed(|| store.checkout(&tree, dir.join("out")).expect("get -r"));
            remove_big_files(&dir);
            t
        });
        bench(&mut g, scenario, "cp -a", unit, || {
            let dir = cfg.fresh(tag);
            sync_fs(&cfg.run);
            let t = timed(|| cp_a(src, &dir.join("out")));
            remove_big_files(&dir);
            t
        });
        g.finish();
        set_targets(
            scenario,
            "cas checkout",
            vec![Target::Row(scenario, "cp -a".to_owned(), 0.8)],
        );
    }
    remove_big_files(&large);
    remove_big_files(store.root());
}

/// The tree of the put -r scenarios: a copy of /usr/share/doc (a few thousand real files),
/// else 4 000 generated ones.
fn doc_tree(cfg: &Cfg) -> PathBuf {
    let dst = cfg.fresh("reput-src").join("doc");
    let sys = Path::new("/usr/share/doc");
    if sys.is_dir() && count_files(sys) >= 1_000 {
        // Not -a: the copy must be readable and writable by us, whoever owns the system's.
        let ok = Command::new("cp")
            .args(["-r", "--no-preserve=all"])
            .arg(sys)
            .arg(&dst)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return dst;
        }
        let _ = fs::remove_dir_all(&dst);
    }
    small_tree(&dst, 4_000);
    dst
}

/// `git add -A` of `work` with the repository `git_dir` (its index up to date).
fn git_add(git_dir: &Path, work: &Path) {
    let ok = git(git_dir)
        .env("GIT_WORK_TREE", work)
        .args(["add", "-A", "."])
        .current_dir(work)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "git add failed");
}

/// Put -r of a tree with and without the stat cache: the first put into a fresh store (the
/// cache must not slow it down), and the re-put of the unchanged tree (the cache against
/// `git add` with its index, and against rehashing everything).
fn reput(c: &mut Criterion, cfg: &Cfg) {
    let src = doc_tree(cfg);
    let unit = Unit::Ops(count_files(&src));
    // The stat cache records only files whose timestamps are 2 s older than the put
    // (racy-git rule): let the fresh copy settle.
    std::thread::sleep(Duration::from_secs(3));
    sync_fs(&cfg.run);
    let on = cas::PutDirOptions::default().stat_cache(true);
    let off = cas::PutDirOptions::default();

    let mut g = group(c, "first-put-tree", cfg);
    for (name, opts) in [("cas, stat cache", &on), ("cas, no cache", &off)] {
        bench(&mut g, FIRST_PUT, name, unit, || {
            let store = cas_store(&cfg.fresh("first-put"), Durability::None);
            sync_fs(&cfg.run);
            timed(|| {
                store.put_dir_with(&src, opts).expect("put -r");
            })
        });
    }
    g.finish();
    set_targets(
        FIRST_PUT,
        "cas, stat cache",
        vec![Target::Row(FIRST_PUT, "cas, no cache".to_owned(), 0.9)],
    );

    let store = cas_store(&cfg.fresh("reput-cas"), Durability::None);
    let (tree, report) = store.put_dir_with(&src, &on).expect("put -r");
    assert!(report.cache_warning.is_none(), "{:?}", report.cache_warning);
    let mut g = group(c, "reput-tree", cfg);
    bench(&mut g, REPUT, "cas, stat cache", unit, || {
        timed(|| {
            let (t, r) = store.put_dir_with(&src, &on).expect("put -r");
            assert_eq!(t, tree);
            black_box(r);
        })
    });
    bench(&mut g, REPUT, "cas, no cache (rehash)", unit, || {
        timed(|| {
            let (t, _) = store.put_dir_with(&src, &off).expect("put -r");
            assert_eq!(t, tree);
        })
    });
    if cfg.git {
        let gdir = cfg.fresh("reput-git").join("repo.git");
        git_init(&gdir);
        git_add(&gdir, &src);
        bench(&mut g, REPUT, "git add (index)", unit, || {
            timed(|| git_add(&gdir, &src))
        });
    }
    g.finish();
    set_targets(
        REPUT,
        "cas, stat cache",
        vec![Target::Row(REPUT, "git add (index)".to_owned(), 0.5)],
    );
}

// ---------------------------------------------------------------------------------------------
// Report

/// Median of the per-repetition times of criterion's samples (the warm-up call excluded).
fn median_ns(r: &Rec) -> f64 {
    let skip = r.per_rep_ns.len().saturating_sub(SAMPLES);
    let mut v: Vec<f64> = r.per_rep_ns[skip..].to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        f64::midpoint(v[m - 1], v[m])
    }
}

/// Rate in units per second (operations or bytes).
fn rate(r: &Rec) -> f64 {
    let per = match r.unit {
        Unit::Ops(n) | Unit::Bytes(n) => n as f64,
    };
    per / (median_ns(r) / 1e9)
}

fn fmt_rate(r: &Rec) -> String {
    match r.unit {
        Unit::Ops(_) => format!("{:.0} ops/s", rate(r)),
        Unit::Bytes(_) => format!("{:.0} MB/s", rate(r) / 1e6),
    }
}

fn report(cfg: &Cfg, started: Instant) -> String {
    let recs = RECORDS.lock().unwrap();
    let rates: HashMap<(&str, &str), f64> = recs
        .iter()
        .map(|r| ((r.scenario, r.contender.as_str()), rate(r)))
        .collect();
    let find = |s: &str, c: &str| rates.get(&(s, c)).copied();
    let mut out = String::new();
    let mode = if cfg.quick { "quick" } else { "full" };
    let _ = writeln!(out, "# cas benchmark report ({mode} mode, {})\n", now_utc());
    let _ = writeln!(
        out,
        "Small objects: {} × 4 KiB per repetition; big object: {} MiB; scale store: {} \
         objects ({} at the end of this run: every run adds its scale puts); verify/gc store: {} \
         objects. Stores in `{}` ({}). Rates are medians over {} criterion samples; run took \
         {:.0} s.\n",
        cfg.n,
        cfg.big >> 20,
        cfg.scale_n,
        SCALE_OBJECTS.load(Ordering::Relaxed),
        cfg.scan_n,
        cfg.root.display(),
        fs_type(&cfg.run),
        SAMPLES,
        started.elapsed().as_secs_f64()
    );
    out.push_str(
        "| scenario | contender | rate | vs floor | vs cacache | target | result |\n\
         |---|---|---:|---:|---:|---|---|\n",
    );
    let ratio = |a: f64, b: Option<f64>| b.map_or_else(String::new, |b| format!("{:.2}×", a / b));
    for r in recs.iter() {
        let me = rate(r);
        let mut target = Vec::new();
        let mut pass = true;
        for t in &r.targets {
            let (text, ok) = match t {
                Target::Floor(x) => {
                    let got = find(r.scenario, "floor").map_or(0.0, |f| me / f);
                    (format!("≥ {x}× floor ({got:.2}×)"), got >= *x)
                }
                Target::Cacache(x) => {
                    let got = find(r.scenario, "cacache").map_or(0.0, |f| me / f);
                    (format!("≥ {x}× cacache ({got:.2}×)"), got >= *x)
                }
                Target::Row(s, c, x) => {
                    let got = find(s, c).map_or(0.0, |f| me / f);
                    (format!("≥ {x}× {c} of “{s}” ({got:.2}×)"), got >= *x)
                }
                Target::BytesPerSec(x) => (format!("≥ {:.0} MB/s", x / 1e6), me >= *x),
            };
            pass &= ok;
            target.push(text);
        }
        let result = match (r.targets.is_empty(), pass) {
            (true, _) => "",
            (false, true) => "PASS",
            (false, false) => "**MISS**",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.contender,
            fmt_rate(r),
            ratio(me, find(r.scenario, "floor")),
            ratio(me, find(r.scenario, "cacache")),
            target.join("; "),
            result
        );
    }
    out
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "date unknown".to_owned(), |s| s.trim().to_owned())
}

fn fs_type(dir: &Path) -> String {
    Store::open_or_init(dir.join("probe"), Options::default()).map_or_else(
        |e| format!("filesystem unknown: {e}"),
        |s| s.fs_info().fs_type,
    )
}

/// A node-local tier in front of an upstream store (issue 13): warm gets through the tier
/// against gets straight from the upstream, and cold gets that fetch into the tier. The
/// upstream is on `CAS_BENCH_CLUSTER_DIR` when set (the case a tier exists for), else on the
/// bench disk beside the tier.
fn tier(c: &mut Criterion, cfg: &Cfg) {
    let up_dir = match std::env::var_os("CAS_BENCH_CLUSTER_DIR") {
        Some(d) => {
            let d = Path::new(&d).join(format!("bench-tier-{}", std::process::id()));
            fs::create_dir_all(&d).expect("create a directory on the cluster filesystem");
            d
        }
        None => cfg.fresh("tier-upstream"),
    };
    let upstream = cas_store(&up_dir, Durability::File);
    let objs = Objects::new(cfg.n, 11);
    let mut batch = upstream.batch();
    let hashes: Vec<Hash> = objs
        .iter()
        .map(|o| batch.put_bytes(o).expect("put"))
        .collect();
    batch.commit().expect("commit");
    let big_len = cfg.big.min(64 << 20);
    let mut big = vec![0u8; big_len];
    for (i, chunk) in big.chunks_mut(1 << 20).enumerate() {
        fill(chunk, 12, i as u64);
    }
    let big_hash = upstream.put_bytes(&big).expect("put big");
    drop(big);
    let local = cas_store(&cfg.fresh("tier-local"), Durability::File).with_upstream(&up_dir, false);
    for h in hashes.iter().chain([&big_hash]) {
        black_box(local.get(h).expect("warm the tier").len());
    }
    sync_fs(&cfg.run);

    let unit = Unit::Ops(cfg.n as u64);
    let mut g = group(c, "tier-get-4KiB", cfg);
    bench(&mut g, TIER_GET_SMALL, "local tier", unit, || {
        timed(|| {
            for h in &hashes {
                black_box(local.get(h).expect("get").len());
            }
        })
    });
    bench(&mut g, TIER_GET_SMALL, "upstream direct", unit, || {
        timed(|| {
            for h in &hashes {
                black_box(upstream.get(h).expect("get").len());
            }
        })
    });
    g.finish();

    let unit = Unit::Bytes(big_len as u64);
    let mut g = group(c, "tier-get-big", cfg);
    bench(&mut g, TIER_GET_BIG, "local tier", unit, || {
        timed(|| {
            black_box(local.get(&big_hash).expect("get").len());
        })
    });
    bench(&mut g, TIER_GET_BIG, "upstream direct", unit, || {
        timed(|| {
            black_box(upstream.get(&big_hash).expect("get").len());
        })
    });
    g.finish();

    // Cold: each repetition a fresh, empty tier (created untimed) fetches every object.
    let unit = Unit::Ops(cfg.n as u64);
    let mut g = group(c, "tier-fetch-4KiB", cfg);
    bench(
        &mut g,
        TIER_FETCH,
        "cold tier, durability file",
        unit,
        || {
            let cold =
                cas_store(&cfg.fresh("tier-cold"), Durability::File).with_upstream(&up_dir, false);
            timed(|| {
                for h in &hashes {
                    black_box(cold.get(h).expect("fetch").len());
                }
            })
        },
    );
    bench(
        &mut g,
        TIER_FETCH,
        "cold tier, durability none",
        unit,
        || {
            let cold =
                cas_store(&cfg.fresh("tier-cold"), Durability::None).with_upstream(&up_dir, false);
            timed(|| {
                for h in &hashes {
                    black_box(cold.get(h).expect("fetch").len());
                }
            })
        },
    );
    g.finish();
    remove_big_files(&up_dir);
    remove_big_files(local.root());
    if std::env::var_os("CAS_BENCH_CLUSTER_DIR").is_some() {
        let _ = fs::remove_dir_all(&up_dir);
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let cfg = Cfg::new();
    let fs = fs_type(&cfg.run);
    println!(
        "cas-bench: {} mode, stores in {} ({fs})",
        if cfg.quick { "quick" } else { "full" },
        cfg.root.display()
    );
    if fs == "tmpfs" {
        println!("warning: the bench directory is on tmpfs; set CAS_BENCH_DIR to a real disk");
    }
    wait_after_cleanup(&cfg);
    let started = Instant::now();
    let mut c = Criterion::default().configure_from_args();
    // `CAS_BENCH_ONLY=big,cluster` runs only those groups (default: all but cluster and tier4,
    // which need `CAS_BENCH_CLUSTER_DIR` / `CAS_BENCH_CLUSTER_MOUNTS`). Groups: small, big,
    // scale, scan, getout, restore, reput, tier, cluster, tier4.
    let only = std::env::var("CAS_BENCH_ONLY").unwrap_or_default();
    let want = |g: &str| only.is_empty() || only.split(',').any(|o| o.trim() == g);
    if want("small") {
        put_small(&mut c, &cfg);
        get_small(&mut c, &cfg);
    }
    if want("big") {
        big(&mut c, &cfg);
    }
    if want("scale") {
        scale(&mut c, &cfg);
    }
    if want("scan") {
        scan(&mut c, &cfg);
    }
    if want("tier") {
        tier(&mut c, &cfg);
    }
    // Issue 14.
    if want("getout") {
        get_out(&mut c, &cfg);
    }
    if want("restore") {
        restore(&mut c, &cfg);
    }
    if want("reput") {
        reput(&mut c, &cfg);
    }
    if let Some(dir) = std::env::var_os("CAS_BENCH_CLUSTER_DIR").filter(|_| want("cluster")) {
        cluster(&mut c, &cfg, Path::new(&dir));
    }
    // `CAS_BENCH_CLUSTER_MOUNTS=/mnt/a:/mnt/b:/mnt/c:/mnt/d`: mounts of one cluster filesystem.
    if let Some(m) = std::env::var("CAS_BENCH_CLUSTER_MOUNTS")
        .ok()
        .filter(|_| want("tier4"))
    {
        let mounts: Vec<PathBuf> = m.split(':').map(PathBuf::from).collect();
        tier_mounts(&mut c, &cfg, &mounts);
    }
    c.final_summary();

    let text = report(&cfg, started);
    let path = cfg.target.join("bench-report.md");
    fs::write(&path, &text).expect("write the report");
    println!("\n{text}\n(written to {})", path.display());

    // Only now delete the scratch stores of this and any earlier interrupted run.
    println!("removing scratch directories…");
    for ent in fs::read_dir(&cfg.root).expect("list").flatten() {
        if ent.file_name().to_string_lossy().starts_with("run-") {
            let _ = fs::remove_dir_all(ent.path());
        }
    }
    let _ = fs::write(cfg.root.join(CLEANUP_MARK), "");
}

/// Touched after each run's mass delete (see [`wait_after_cleanup`]).
const CLEANUP_MARK: &str = "last-cleanup";
/// How long creates stay slow after a mass delete on ext4 without a journal (at most).
const INODE_REUSE_WINDOW: Duration = Duration::from_mins(6);

/// Waits until the last run's mass delete is `INODE_REUSE_WINDOW` old: until then, ext4
/// without a journal probes the freed inodes on every create and small puts run several times
/// slower (measured: 5 k/s instead of 25 k/s when a full run started a minute after a quick
/// one). `CAS_BENCH_NO_WAIT=1` skips the wait.
fn wait_after_cleanup(cfg: &Cfg) {
    let age = fs::metadata(cfg.root.join(CLEANUP_MARK))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    let Some(age) = age else { return };
    let Some(wait) = INODE_REUSE_WINDOW.checked_sub(age) else {
        return;
    };
    if std::env::var_os("CAS_BENCH_NO_WAIT").is_some() {
        return;
    }
    println!(
        "waiting {} s: the previous run deleted its scratch stores {} s ago, and creates stay \
         slow for minutes after a mass delete (CAS_BENCH_NO_WAIT=1 skips this)",
        wait.as_secs(),
        age.as_secs()
    );
    std::thread::sleep(wait);
}

//! Verified range reads (issue 21), side by side in one run:
//!
//! - `mid4k`: a 4 KiB verified range from the middle of a 1 GiB object, against a whole
//!   verified get of it — through the library (`Store::read_range` / `Store::get`) and through
//!   the command line (`cas get H --range …` / `cas get H`, stdout to `/dev/null`).
//! - `random4k`: random 4 KiB reads through `Store::verified_reader` (every chunk group checked
//!   on first touch: a fresh reader per batch, so nearly every read is a first touch; and a
//!   warm reader that has seen every group) against raw `pread` of the object file.
//! - `put256`: a 256 MiB put (`put_path`, and `put_reader` streaming from memory) with its
//!   outboard against the same put without (`cas::bench_write_outboards(false)`).
//!
//! ```text
//! cargo build --release -p cas-cli      # the CLI rows run target/release/cas (or $CAS_BIN)
//! cargo bench -p cas-bench --bench range
//! ```
//!
//! The 1 GiB object lives in `$CAS_BENCH_DIR` (else `<target>/bench-stores/`)`/range-1g/`,
//! built once. The run prints a Markdown table (medians, ratios) at the end.

// b, c, d, g, h, t: criterion's bencher and group, durations, the object's hash, timers.
#![allow(clippy::many_single_char_names)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cas::{Durability, Hash, Options, Store};
use criterion::Criterion;

const GIB: u64 = 1 << 30;
const PUT: usize = 256 << 20;
const READ: u64 = 4096;
/// Random reads per timed batch.
const BATCH: usize = 256;

static TIMES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(name: &str, per_op: Duration) {
    TIMES
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .push(per_op.as_secs_f64());
}

/// The mean of the samples recorded under `name`.
fn mean(name: &str) -> Option<f64> {
    let t = TIMES.lock().unwrap();
    let v = t.get(name)?;
    Some(v.iter().sum::<f64>() / v.len() as f64)
}

fn median(name: &str) -> Option<f64> {
    let t = TIMES.lock().unwrap();
    let mut v = t.get(name)?.clone();
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn target_dir() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

fn bench_root() -> PathBuf {
    std::env::var_os("CAS_BENCH_DIR")
        .map_or_else(|| target_dir().join("bench-stores"), PathBuf::from)
}

fn cas_bin() -> Option<PathBuf> {
    let p =
        std::env::var_os("CAS_BIN").map_or_else(|| target_dir().join("release/cas"), PathBuf::from);
    p.is_file().then_some(p)
}

/// Deterministic pseudo-random bytes.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// The 1 GiB object, put once (with its outboard) and kept.
fn big_object() -> (Store, Hash) {
    let dir = bench_root().join("range-1g");
    let ready = dir.join("READY");
    if let Ok(hex) = std::fs::read_to_string(&ready) {
        let store = Store::open(dir.join("store")).expect("open the range store");
        let h = Hash::parse(hex.trim()).expect("READY holds the hash");
        if store.contains(&h) {
            return (store, h);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::init(dir.join("store"), Options::default()).unwrap();
    let mut w = store.writer().unwrap();
    let mut buf = vec![0u8; 8 << 20];
    for i in 0..(GIB / buf.len() as u64) {
        fill(&mut buf, 0x1234_5678 + i);
        std::io::Write::write_all(&mut w, &buf).unwrap();
    }
    let h = w.commit().unwrap();
    std::fs::write(&ready, h.to_hex()).unwrap();
    (store, h)
}

fn offsets(n: usize, seed: u64, len: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (len - READ)
        })
        .collect()
}

fn mid4k(c: &mut Criterion, store: &Store, h: &Hash) {
    let mid = GIB / 2 + 12_345;
    let mut g = c.benchmark_group("mid4k");
    g.sample_size(10);
    g.bench_function("lib: read_range 4 KiB", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(store.read_range(h, mid..mid + READ).unwrap());
            }
            let d = t.elapsed();
            record("lib range", d / iters as u32);
            d
        });
    });
    g.bench_function("lib: get whole (verified)", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(store.get(h).unwrap().len());
            }
            let d = t.elapsed();
            record("lib whole", d / iters as u32);
            d
        });
    });
    if let Some(bin) = cas_bin() {
        let run = |args: &[String]| {
            let st = Command::new(&bin)
                .arg("--store")
                .arg(store.root())
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success());
        };
        let hex = h.to_hex();
        let range = format!("{mid}-{}", mid + READ - 1);
        g.bench_function("cli: get --range 4 KiB", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    run(&["get".into(), hex.clone(), "--range".into(), range.clone()]);
                }
                let d = t.elapsed();
                record("cli range", d / iters as u32);
                d
            });
        });
        g.bench_function("cli: get whole (verified)", |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    run(&["get".into(), hex.clone()]);
                }
                let d = t.elapsed();
                record("cli whole", d / iters as u32);
                d
            });
        });
    } else {
        eprintln!("no release cas binary (cargo build --release -p cas-cli): CLI rows skipped");
    }
    g.finish();
}

fn random4k(c: &mut Criterion, store: &Store, h: &Hash) {
    let len = GIB;
    let mut g = c.benchmark_group("random4k");
    g.sample_size(10);
    let mut seed = 1u64;
    g.bench_function("raw pread", |b| {
        let f = File::open(store.object_path(h)).unwrap();
        let mut buf = vec![0u8; READ as usize];
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                seed += 1;
                let offs = offsets(BATCH, seed, len);
                let t = Instant::now();
                for &o in &offs {
                    f.read_exact_at(&mut buf, o).unwrap();
                    black_box(&buf);
                }
                d += t.elapsed();
            }
            record("pread", d / (iters as u32 * BATCH as u32));
            d
        });
    });
    g.bench_function("verified reader, first touch", |b| {
        let mut buf = vec![0u8; READ as usize];
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                seed += 1;
                let offs = offsets(BATCH, seed, len);
                // A fresh reader: nearly every read touches a group it has not checked.
                let t = Instant::now();
                let mut r = store.verified_reader(h).unwrap();
                for &o in &offs {
                    r.seek(SeekFrom::Start(o)).unwrap();
                    r.read_exact(&mut buf).unwrap();
                    black_box(&buf);
                }
                d += t.elapsed();
            }
            record("reader cold", d / (iters as u32 * BATCH as u32));
            d
        });
    });
    g.bench_function("verified reader, warm", |b| {
        let mut r = store.verified_reader(h).unwrap();
        let mut buf = vec![0u8; READ as usize];
        // Touch every group once, outside the timing.
        let mut at = 0;
        while at < len {
            r.seek(SeekFrom::Start(at)).unwrap();
            r.read_exact(&mut buf[..1]).unwrap();
            at += 16 * 1024;
        }
        b.iter_custom(|iters| {
            let mut d = Duration::ZERO;
            for _ in 0..iters {
                seed += 1;
                let offs = offsets(BATCH, seed, len);
                let t = Instant::now();
                for &o in &offs {
                    r.seek(SeekFrom::Start(o)).unwrap();
                    r.read_exact(&mut buf).unwrap();
                    black_box(&buf);
                }
                d += t.elapsed();
            }
            record("reader warm", d / (iters as u32 * BATCH as u32));
            d
        });
    });
    g.finish();
}

/// Process CPU time (user + system, all threads) from `/proc/self/stat`, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    f.iter().sum::<u64>() as f64 / ticks
}

/// 256 MiB puts with and without the outboard, alternated put by put (the machine is shared:
/// alternating keeps both sides under the same load), `PUT_ROUNDS` of each; medians of wall
/// time, and the mean of process CPU time, per put. Timed by hand, not by criterion: one put is one
/// sample, and the two sides must interleave.
fn put256() {
    const PUT_ROUNDS: usize = 20;
    let dir = bench_root().join(format!("range-put-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut data = vec![0u8; PUT];
    fill(&mut data, 99);
    let input = dir.join("input");
    std::fs::write(&input, &data).unwrap();
    let mut n = 0u64;
    for durability in [Durability::None, Durability::File] {
        for (how, path) in [("put_path", true), ("put_reader", false)] {
            for round in 0..PUT_ROUNDS {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for outboard in order {
                    n += 1;
                    let s = dir.join(format!("s{n}"));
                    let store = Store::init(&s, Options::default().durability(durability)).unwrap();
                    cas::bench_write_outboards(outboard);
                    let (t, c) = (Instant::now(), cpu_seconds());
                    let h = if path {
                        store.put_path(&input).unwrap()
                    } else {
                        store.put_reader(&data[..]).unwrap()
                    };
                    let (wall, cpu) = (t.elapsed(), cpu_seconds() - c);
                    cas::bench_write_outboards(true);
                    black_box(h);
                    let side = if outboard {
                        "with outboard"
                    } else {
                        "no outboard"
                    };
                    let name = format!("{how} {durability:?} {side}");
                    record(&name, wall);
                    record(&format!("{name} cpu"), Duration::from_secs_f64(cpu));
                    drop(store);
                    std::fs::remove_dir_all(&s).unwrap();
                }
            }
            println!("put256/{how} {durability:?}: {PUT_ROUNDS} rounds done");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn report() {
    let f = |n: &str| median(n);
    let mut out = String::from("\n| what | median | ratio |\n|---|---|---|\n");
    let row = |out: &mut String, what: &str, a: &str, b: Option<&str>, inv: bool| {
        let Some(x) = f(a) else { return };
        let ratio = b.and_then(f).map_or(String::new(), |y| {
            if inv {
                format!("{:.1} % of {b:?}", 100.0 * y / x, b = b.unwrap())
            } else {
                format!("{:.0}x faster than {}", y / x, b.unwrap())
            }
        });
        let _ = writeln!(out, "| {what} | {:.1} µs | {ratio} |", x * 1e6);
    };
    row(
        &mut out,
        "lib: 4 KiB range of 1 GiB",
        "lib range",
        Some("lib whole"),
        false,
    );
    row(
        &mut out,
        "lib: whole verified get",
        "lib whole",
        None,
        false,
    );
    row(
        &mut out,
        "cli: 4 KiB range of 1 GiB",
        "cli range",
        Some("cli whole"),
        false,
    );
    row(
        &mut out,
        "cli: whole verified get",
        "cli whole",
        None,
        false,
    );
    row(&mut out, "raw pread 4 KiB", "pread", None, false);
    row(
        &mut out,
        "reader 4 KiB, first touch",
        "reader cold",
        Some("pread"),
        true,
    );
    row(
        &mut out,
        "reader 4 KiB, warm",
        "reader warm",
        Some("pread"),
        true,
    );
    for d in ["None", "File"] {
        for how in ["put_path", "put_reader"] {
            let a = format!("{how} {d} no outboard");
            let b = format!("{how} {d} with outboard");
            if let (Some(x), Some(y)) = (f(&a), f(&b)) {
                let _ = writeln!(
                    out,
                    "| {how} 256 MiB, durability {d}, wall | {:.0} ms without, {:.0} ms with | outboard costs {:+.1} % ({:.0} vs {:.0} MiB/s) |",
                    x * 1e3,
                    y * 1e3,
                    100.0 * (y - x) / x,
                    256.0 / x,
                    256.0 / y
                );
            }
            // CPU in 10 ms ticks: the mean over all rounds, not the median of coarse samples.
            if let (Some(x), Some(y)) = (mean(&format!("{a} cpu")), mean(&format!("{b} cpu"))) {
                let _ = writeln!(
                    out,
                    "| {how} 256 MiB, durability {d}, CPU (mean) | {:.0} ms without, {:.0} ms with | {:+.1} % |",
                    x * 1e3,
                    y * 1e3,
                    100.0 * (y - x) / x
                );
            }
        }
    }
    println!("{out}");
}

fn main() {
    let only = std::env::var("CAS_BENCH_ONLY").unwrap_or_default();
    let on = |g: &str| only.is_empty() || only.split(',').any(|x| x == g);
    let mut c = Criterion::default().configure_from_args();
    if on("mid4k") || on("random4k") {
        let (store, h) = big_object();
        if on("mid4k") {
            mid4k(&mut c, &store, &h);
        }
        if on("random4k") {
            random4k(&mut c, &store, &h);
        }
    }
    if on("put256") {
        put256();
    }
    report();
}

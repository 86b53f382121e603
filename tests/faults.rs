//! Every filesystem call a command makes, failed in turn, on the fault filesystem
//! (`crates/faultfs`, see tests/common/faultfs.rs).
//!
//! For each command (put from stdin, small and large; a batch of paths; `put -r`; `ref set`;
//! `key put`; `get -o`; gc), the command first runs fault-free on a twin store to count its
//! calls per operation (write, fsync, create, rename, link, unlink, mkdir). Then, on a fresh
//! store each time, the N-th call of each operation fails with ENOSPC, EIO or EDQUOT (a write
//! may also come back short), for every N the command makes (up to a bound). Each time:
//! - a failing command exits non-zero with a message naming the cause and a path;
//! - nothing partial is visible: every object's bytes are its hash, every ref, entry and tree
//!   points to complete objects, an output file is absent or whole;
//! - the process left no staging file and no temporary output behind;
//! - once the fault is cleared, `cas verify` is clean and the store takes new writes.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::faultfs::{self, FaultFs};
use common::{blake3_hex, cas_bin, data, text};

/// The operations the fault filesystem can fail.
const OPS: &[&str] = &[
    "write", "fsync", "create", "rename", "link", "unlink", "mkdir",
];
/// At most this many calls of one operation are failed in turn per command.
const MAX_N: usize = 4;

/// One command under test: how to prepare a store for it and run it.
struct Scenario {
    name: &'static str,
    /// Prepares a freshly initialised store (fault-free); returns what `run` needs.
    prepare: fn(&Ctx) -> Vec<String>,
    /// Runs the command (with faults armed).
    run: fn(&Ctx, &[String]) -> Output,
}

/// A store on the fault filesystem, with an input directory beside the mount.
struct Ctx {
    store: PathBuf,
    out: PathBuf,
    inputs: PathBuf,
}

impl Ctx {
    fn cas(&self) -> Command {
        let mut c = Command::new(cas_bin());
        c.arg("--store")
            .arg(&self.store)
            .env_remove("CAS_STORE")
            .stdin(Stdio::null());
        c
    }

    fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.inputs.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

fn with_stdin(cmd: &mut Command, bytes: &[u8]) -> Output {
    common::run_with_stdin(cmd, bytes)
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "put stdin small",
            prepare: |_| vec![],
            run: |c, _| with_stdin(c.cas().arg("put"), &data(20_000, 1)),
        },
        Scenario {
            name: "put stdin large",
            prepare: |_| vec![],
            run: |c, _| with_stdin(c.cas().arg("put"), &data(3 << 20, 2)),
        },
        Scenario {
            name: "put paths (batch)",
            prepare: |c| {
                (0..3)
                    .map(|k| {
                        c.input(&format!("f{k}"), &data(1000 + k * 700, 10 + k as u64))
                            .display()
                            .to_string()
                    })
                    .chain(std::iter::once(
                        c.input("big", &data(9 << 20, 19)).display().to_string(),
                    ))
                    .collect()
            },
            run: |c, args| common::run(c.cas().arg("put").args(args)),
        },
        Scenario {
            name: "put -r",
            prepare: |c| {
                let d = c.inputs.join("tree");
                std::fs::create_dir_all(d.join("sub")).unwrap();
                for k in 0..3u64 {
                    std::fs::write(d.join(format!("f{k}")), data(800, 30 + k)).unwrap();
                }
                std::fs::write(d.join("sub/g"), data(300, 40)).unwrap();
                vec![d.display().to_string()]
            },
            run: |c, args| common::run(c.cas().args(["put", "-r"]).arg(&args[0])),
        },
        Scenario {
            name: "ref set",
            prepare: |c| {
                let a = common::run_ok(c.cas().arg("put").arg(c.input("a", b"ref a")));
                let b = common::run_ok(c.cas().arg("put").arg(c.input("b", b"ref b")));
                let a = a.trim().to_owned();
                common::run_ok(c.cas().args(["ref", "set", "team/r", &a]));
                vec![a, b.trim().to_owned()]
            },
            run: |c, h| {
                common::run(
                    c.cas()
                        .args(["ref", "set", "team/r", &h[1], "--expect", &h[0]]),
                )
            },
        },
        Scenario {
            name: "key put",
            prepare: |c| vec![c.input("k", &data(5000, 50)).display().to_string()],
            run: |c, a| common::run(c.cas().args(["key", "put", "build:1"]).arg(&a[0])),
        },
        Scenario {
            name: "get -o",
            prepare: |c| {
                let h = common::run_ok(c.cas().arg("put").arg(c.input("g", &data(200_000, 60))));
                std::fs::create_dir_all(&c.out).unwrap();
                vec![h.trim().to_owned()]
            },
            run: |c, h| common::run(c.cas().args(["get", &h[0], "-o"]).arg(c.out.join("file"))),
        },
        Scenario {
            name: "gc",
            prepare: |c| {
                // Two garbage objects and one kept by a ref.
                for k in 0..2u64 {
                    common::run_ok(
                        c.cas()
                            .arg("put")
                            .arg(c.input(&format!("x{k}"), &data(900, 70 + k))),
                    );
                }
                let keep = common::run_ok(c.cas().arg("put").arg(c.input("keep", b"keep me")));
                common::run_ok(c.cas().args(["ref", "set", "keep", keep.trim()]));
                vec![]
            },
            run: |c, _| common::run(c.cas().args(["gc", "--grace", "0s"])),
        },
    ]
}

/// `stats` of the fault filesystem as counts per operation.
fn counts(fs: &FaultFs) -> BTreeMap<String, usize> {
    let r = fs.ctl("stats");
    r.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// Messages of the errors the fault filesystem injects, as the OS words them.
const CAUSES: &[&str] = &[
    "No space left on device",
    "Input/output error",
    "Disk quota exceeded",
    "failed to write whole buffer",
    "short write",
];

/// Checks a store after a (possibly failed) command, fault cleared: nothing partial, nothing
/// left behind, verify clean, new writes work.
fn assert_sound(c: &Ctx, case: &str) {
    for p in common::files_under(&c.store.join("objects")) {
        let name = format!(
            "{}{}",
            p.parent().unwrap().file_name().unwrap().to_string_lossy(),
            p.file_name().unwrap().to_string_lossy()
        );
        let bytes =
            std::fs::read(&p).unwrap_or_else(|e| panic!("{case}: read {}: {e}", p.display()));
        assert_eq!(
            blake3_hex(&bytes),
            name,
            "{case}: object {name} holds other bytes"
        );
    }
    let left = common::files_under(&c.store.join("tmp"));
    assert!(
        left.is_empty(),
        "{case}: staging files left behind: {left:?}"
    );
    if c.out.exists() {
        let outs = common::files_under(&c.out);
        assert!(
            outs.iter().all(|p| p.file_name().unwrap() == "file"),
            "{case}: temporary outputs left behind: {outs:?}"
        );
        if let Some(f) = outs.first() {
            assert_eq!(
                std::fs::read(f).unwrap(),
                data(200_000, 60),
                "{case}: partial output"
            );
        }
    }
    let v = common::run(c.cas().arg("verify"));
    assert!(
        v.status.success(),
        "{case}: verify is not clean once the fault is gone:\n{}{}",
        text(&v.stdout),
        text(&v.stderr)
    );
    common::run_ok(c.cas().args(["ref", "get", "keep"]));
    let h = with_stdin(c.cas().arg("put"), b"after the fault");
    assert!(
        h.status.success(),
        "{case}: a put after the fault failed: {}",
        text(&h.stderr)
    );
}

fn run_scenario(s: &Scenario) {
    if !faultfs::available() {
        return;
    }
    let fs = FaultFs::mount(false);
    let inputs = tempfile::tempdir().unwrap();
    let mut n_case = 0;
    let mut fresh = |tag: &str| {
        n_case += 1;
        let dir = fs.mnt.join(format!("{tag}{n_case}"));
        let c = Ctx {
            store: dir.join("store"),
            out: dir.join("out"),
            inputs: inputs.path().to_owned(),
        };
        common::run_ok(c.cas().arg("init"));
        // Every store has a ref `keep` so that assert_sound can check a ref survives.
        let keep = common::run_ok(c.cas().arg("put").arg(c.input("keep0", b"kept")));
        common::run_ok(c.cas().args(["ref", "set", "keep", keep.trim()]));
        let args = (s.prepare)(&c);
        (c, args)
    };

    // Count the calls the command makes, fault-free.
    let (c, args) = fresh("count");
    let before = counts(&fs);
    let out = (s.run)(&c, &args);
    assert!(
        out.status.success(),
        "{}: fails without faults: {}",
        s.name,
        text(&out.stderr)
    );
    let after = counts(&fs);
    assert_sound(&c, s.name);

    let mut cases = 0;
    for op in OPS {
        let made = after.get(*op).copied().unwrap_or(0) - before.get(*op).copied().unwrap_or(0);
        for n in 1..=made.min(MAX_N) {
            let errs: &[&str] = if *op == "write" {
                &["ENOSPC", "short", "EIO"]
            } else {
                &["EIO", "ENOSPC", "EDQUOT"]
            };
            let err = errs[(n - 1) % errs.len()];
            let case = format!("{}: call {n} of {op} fails with {err}", s.name);
            let (c, args) = fresh("f");
            fs.ctl(&format!("fault {op} {n} {err}"));
            let out = (s.run)(&c, &args);
            fs.ctl("clear");
            cases += 1;
            if !out.status.success() {
                let msg = text(&out.stderr);
                assert!(
                    CAUSES.iter().any(|k| msg.contains(k)),
                    "{case}: the error does not name the cause: {msg}"
                );
                assert!(
                    msg.contains(&*fs.mnt.to_string_lossy()),
                    "{case}: the error names no path: {msg}"
                );
                assert_ne!(out.status.code(), Some(0));
            }
            assert_sound(&c, &case);
        }
    }
    assert!(cases > 0, "{}: no filesystem call was counted", s.name);
    eprintln!("{}: {cases} fault cases", s.name);
}

fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

#[test]
fn faults_in_put_from_stdin() {
    run_scenario(&scenario("put stdin small"));
    run_scenario(&scenario("put stdin large"));
}

#[test]
fn faults_in_batch_put_of_paths() {
    run_scenario(&scenario("put paths (batch)"));
}

#[test]
fn faults_in_put_r() {
    run_scenario(&scenario("put -r"));
}

#[test]
fn faults_in_ref_set() {
    run_scenario(&scenario("ref set"));
}

#[test]
fn faults_in_key_put() {
    run_scenario(&scenario("key put"));
}

#[test]
fn faults_in_get_o() {
    run_scenario(&scenario("get -o"));
}

#[test]
fn faults_in_gc() {
    run_scenario(&scenario("gc"));
}

/// Issue 18, finding 10: `cannot read ref …: Stale file handle (os error 116)` on Gluster —
/// an ESTALE during the read of a ref, not at its open. The read of every small file (refs,
/// cache entries, locks, config) is retried in one place: a transient ESTALE or EIO in the
/// middle of a read is not an error; one that lasts is, naming the file.
#[test]
fn transient_errors_reading_small_files_are_retried() {
    if !faultfs::available() {
        return;
    }
    let fs = FaultFs::mount(false);
    let inputs = tempfile::tempdir().unwrap();
    let c = Ctx {
        store: fs.mnt.join("store"),
        out: fs.mnt.join("out"),
        inputs: inputs.path().to_owned(),
    };
    common::run_ok(c.cas().arg("init"));
    let h = common::run_ok(c.cas().arg("put").arg(c.input("v", b"value")));
    let h = h.trim();
    common::run_ok(c.cas().args(["ref", "set", "r", h]));
    common::run_ok(
        c.cas()
            .args(["key", "put", "k"])
            .arg(c.input("k", b"keyed")),
    );
    for err in ["ESTALE", "EIO"] {
        for (what, under, args) in [
            ("ref get", "store/refs", &["ref", "get", "r"][..]),
            ("key get", "store/index", &["key", "get", "k"][..]),
            ("config", "store/config", &["ref", "get", "r"][..]),
        ] {
            fs.ctl(&format!("fault read 1 {err} under {under}"));
            let out = c.cas().args(args).output().unwrap();
            fs.ctl("clear");
            assert!(
                out.status.success(),
                "{what}: one {err} while reading failed the command: {}",
                text(&out.stderr)
            );
        }
    }
    // An error that does not go away is reported, naming the ref.
    fs.ctl("fault read 1 ESTALE sticky under store/refs");
    let out = c.cas().args(["ref", "get", "r"]).output().unwrap();
    fs.ctl("clear");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("refs/r") && err.contains("tale"), "{err}");
}

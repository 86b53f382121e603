//! Every filesystem call a command makes, failed in turn, on the fault filesystem
//! (`crates/faultfs`, see crates/cas-cli/tests/e2e/common/faultfs.rs).
//!
//! For each command (put from stdin, small and large; a batch of paths; `put -r`; `ref set`;
//! `key put`; `get -o`; gc), the command first runs fault-free on a twin store to count its
//! calls per operation (write, fsync, create, rename, link, unlink, mkdir). Then, on a fresh
//! store each time, the N-th call of each operation fails with ENOSPC, EIO or EDQUOT (a write
//! may also come back short), for every N the command makes (up to a bound). Each time:
//! - a failing command exits non-zero with a message naming the cause and a path, and leaves
//!   its target in the old state (a ref at its old value, no output file, no key or a whole
//!   one);
//! - a command that exits 0 despite the fault did what it printed: the hash is there with the
//!   input's bytes, a tree restores byte for byte, the ref moved, the key is set, the output
//!   file is whole, gc removed the garbage;
//! - nothing partial is visible: every object's bytes are its hash, every ref, entry and tree
//!   points to complete objects, an output file is absent or whole;
//! - the process left no staging file and no temporary output behind;
//! - once the fault is cleared, `cas verify` is clean and the store takes new writes.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::faultfs::{self, FaultFs};
use common::{blake3_hex, cas_at, data, text};

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
    /// After the command exited 0 (fault cleared): it did what it printed. Panics otherwise.
    done: fn(&Ctx, &[String], &str, &str),
    /// After the command failed (fault cleared): its target is in the old state or the new,
    /// never between (e.g. a ref holds its old or new value).
    undone: fn(&Ctx, &[String], &str),
}

/// A store on the fault filesystem, with an input directory beside the mount.
struct Ctx {
    store: PathBuf,
    out: PathBuf,
    inputs: PathBuf,
}

impl Ctx {
    fn cas(&self) -> Command {
        cas_at(&self.store)
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

#[allow(clippy::too_many_lines)] // one table: each scenario with its checks
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "put stdin small",
            prepare: |_| vec![],
            run: |c, _| with_stdin(c.cas().arg("put"), &data(20_000, 1)),
            done: |c, _, out, case| object_holds(c, out.trim(), &data(20_000, 1), case),
            undone: |_, _, _| {},
        },
        Scenario {
            name: "put stdin large",
            prepare: |_| vec![],
            run: |c, _| with_stdin(c.cas().arg("put"), &data(3 << 20, 2)),
            done: |c, _, out, case| object_holds(c, out.trim(), &data(3 << 20, 2), case),
            undone: |_, _, _| {},
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
            done: |c, args, out, case| {
                let printed: Vec<&str> = out.lines().collect();
                assert_eq!(printed.len(), args.len(), "{case}: printed {out:?}");
                for (h, p) in printed.iter().zip(args) {
                    object_holds(c, h, &std::fs::read(p).unwrap(), case);
                }
            },
            undone: |_, _, _| {},
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
            done: |c, args, out, case| {
                let dest = c.inputs.join(format!("restored-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dest);
                common::run_ok(c.cas().args(["get", "-r", out.trim(), "-o"]).arg(&dest));
                assert_same_tree(std::path::Path::new(&args[0]), &dest, case);
                std::fs::remove_dir_all(&dest).unwrap();
            },
            undone: |_, _, _| {},
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
            done: |c, h, _, case| {
                let now = common::run_ok(c.cas().args(["ref", "get", "team/r"]));
                assert_eq!(
                    now.trim(),
                    h[1],
                    "{case}: ref set exited 0, the ref did not move"
                );
            },
            undone: |c, h, case| {
                let now = common::run_ok(c.cas().args(["ref", "get", "team/r"]));
                assert!(
                    now.trim() == h[0] || now.trim() == h[1],
                    "{case}: the ref holds neither its old nor its new value: {now}"
                );
            },
        },
        Scenario {
            name: "key put",
            prepare: |c| vec![c.input("k", &data(5000, 50)).display().to_string()],
            run: |c, a| common::run(c.cas().args(["key", "put", "build:1"]).arg(&a[0])),
            done: |c, a, out, case| {
                let want = std::fs::read(&a[0]).unwrap();
                let got = common::run(c.cas().args(["key", "get", "build:1"]));
                assert!(
                    got.status.success(),
                    "{case}: key put exited 0, the key is not set: {}",
                    text(&got.stderr)
                );
                assert_eq!(got.stdout, want, "{case}: the key holds other bytes");
                if !out.trim().is_empty() {
                    assert_eq!(
                        out.trim(),
                        blake3_hex(&want),
                        "{case}: printed another hash"
                    );
                }
            },
            undone: |c, _, case| {
                // Absent, or whole: never a key naming missing or partial bytes.
                let got = common::run(c.cas().args(["key", "get", "build:1"]));
                if got.status.success() {
                    assert_eq!(
                        got.stdout,
                        data(5000, 50),
                        "{case}: the key holds other bytes"
                    );
                } else {
                    assert!(
                        text(&got.stderr).contains("no cache entry for key"),
                        "{case}: key get after a failed key put: {}",
                        text(&got.stderr)
                    );
                }
            },
        },
        Scenario {
            name: "get -o",
            prepare: |c| {
                let h = common::run_ok(c.cas().arg("put").arg(c.input("g", &data(200_000, 60))));
                std::fs::create_dir_all(&c.out).unwrap();
                vec![h.trim().to_owned()]
            },
            run: |c, h| common::run(c.cas().args(["get", &h[0], "-o"]).arg(c.out.join("file"))),
            done: |c, _, _, case| {
                let f = c.out.join("file");
                let got = std::fs::read(&f)
                    .unwrap_or_else(|e| panic!("{case}: get -o exited 0, no output file: {e}"));
                assert_eq!(
                    got,
                    data(200_000, 60),
                    "{case}: get -o exited 0, output differs"
                );
            },
            undone: |c, _, case| {
                assert!(
                    !c.out.join("file").exists(),
                    "{case}: a failed get -o left its output"
                );
            },
        },
        Scenario {
            name: "gc",
            prepare: |c| {
                // Two garbage objects and one kept by a ref.
                let garbage = (0..2u64)
                    .map(|k| {
                        common::run_ok(
                            c.cas()
                                .arg("put")
                                .arg(c.input(&format!("x{k}"), &data(900, 70 + k))),
                        )
                        .trim()
                        .to_owned()
                    })
                    .collect();
                let keep = common::run_ok(c.cas().arg("put").arg(c.input("keep", b"keep me")));
                common::run_ok(c.cas().args(["ref", "set", "keep", keep.trim()]));
                garbage
            },
            run: |c, _| common::run(c.cas().args(["gc", "--grace", "0s"])),
            done: |c, garbage, _, case| {
                for h in garbage {
                    let has = common::run(c.cas().args(["has", h]));
                    assert!(
                        !has.status.success(),
                        "{case}: gc exited 0, garbage {h} is kept"
                    );
                }
                let keep = common::run_ok(c.cas().args(["ref", "get", "keep"]));
                object_holds(c, keep.trim(), b"keep me", case);
            },
            undone: |c, _, case| {
                let keep = common::run_ok(c.cas().args(["ref", "get", "keep"]));
                object_holds(c, keep.trim(), b"keep me", case);
            },
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
        // Whether the output must be there is the scenario's `done`/`undone` check; here,
        // whatever is at its name is whole.
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

/// Object `hex` is in the store (`cas get` verifies it) and holds `want`.
fn object_holds(c: &Ctx, hex: &str, want: &[u8], case: &str) {
    assert_eq!(
        hex,
        blake3_hex(want),
        "{case}: printed {hex:?}, not the input's hash"
    );
    let got = common::run(c.cas().args(["get", hex]));
    assert!(
        got.status.success(),
        "{case}: {hex} was printed but cannot be read: {}",
        text(&got.stderr)
    );
    assert!(got.stdout == want, "{case}: {hex} holds other bytes");
}

/// `got` holds the same files with the same bytes as `want`, and nothing else.
fn assert_same_tree(want: &std::path::Path, got: &std::path::Path, case: &str) {
    let rel = |root: &std::path::Path| -> Vec<PathBuf> {
        common::files_under(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).unwrap().to_owned())
            .collect()
    };
    let (w, g) = (rel(want), rel(got));
    assert_eq!(w, g, "{case}: the restored tree has other files");
    for p in &w {
        assert!(
            std::fs::read(want.join(p)).unwrap() == std::fs::read(got.join(p)).unwrap(),
            "{case}: {} restored with other bytes",
            p.display()
        );
    }
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
    (s.done)(&c, &args, &text(&out.stdout), s.name);
    assert_sound(&c, s.name);

    let (mut cases, mut failed) = (0, 0);
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
            if out.status.success() {
                // A fault the command may get past (a failed unlink of a temporary, a retried
                // short write): then it must have done what it printed.
                (s.done)(&c, &args, &text(&out.stdout), &case);
            } else {
                failed += 1;
                let msg = text(&out.stderr);
                assert!(
                    CAUSES.iter().any(|k| msg.contains(k)),
                    "{case}: the error does not name the cause: {msg}"
                );
                assert!(
                    msg.contains(&*fs.mnt.to_string_lossy()),
                    "{case}: the error names no path: {msg}"
                );
                (s.undone)(&c, &args, &case);
            }
            assert_sound(&c, &case);
        }
    }
    assert!(cases > 0, "{}: no filesystem call was counted", s.name);
    assert!(
        failed > 0,
        "{}: no injected fault made the command fail",
        s.name
    );
    eprintln!("{}: {cases} fault cases, {failed} failed", s.name);
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

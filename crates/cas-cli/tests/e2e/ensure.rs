//! Compute once across processes (`cas key ensure`), first-writer-wins keys (`cas key set
//! --expect-none`) and keys to trees (`cas key put -r`), through the real binary.
//!
//! The commands that `ensure` runs hold their computation until the test creates a gate file
//! (they poll for it: that is the command's own waiting, not the test's synchronisation), so
//! every caller is started while the value is still being computed.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::os::unix::fs::PermissionsExt;

use common::{blake3_hex, cas, run, run_ok, text, wait_until, Store};

/// A shell command that records its run in `runs`, waits for `gate`, then prints `value`.
fn gated(dir: &Path, value: &str) -> Vec<String> {
    let runs = dir.join("runs");
    let gate = dir.join("gate");
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo $$ >> '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; printf '{value}'",
            runs.display(),
            gate.display()
        ),
    ]
}

/// Opens the gate of [`gated`] commands when dropped: a test that fails while they wait does
/// not leave them polling for ever.
struct Gate(std::path::PathBuf);

impl Gate {
    fn of(dir: &Path) -> Gate {
        Gate(dir.join("gate"))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "");
    }
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs")).map_or(0, |s| s.lines().count())
}

fn spawn_ensure(s: &Store, key: &str, extra: &[&str], cmd: &[String]) -> Child {
    cas(s)
        .args(["key", "ensure", key])
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn cas key ensure")
}

/// Reads `child`'s stderr until a line containing `what` (panics if it ends first or after
/// 30 s), then goes on reading in a thread, which returns all of it.
fn read_stderr_until(child: &mut Child, what: &str) -> std::thread::JoinHandle<String> {
    use std::io::BufRead;
    let r = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in r.lines() {
            let line = line.unwrap_or_default();
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return reader,
            Ok(_) => {}
            Err(e) => panic!("no {what:?} on stderr ({e})"),
        }
    }
}

/// The compute lock file of the only key being computed in `s`.
fn compute_lock(s: &Store) -> std::path::PathBuf {
    let mut found = None;
    wait_until("the compute lock", || {
        found = common::files_under(&s.root.join("index"))
            .into_iter()
            .find(|p| p.to_string_lossy().ends_with(".compute.lock"));
        found.is_some()
    });
    found.unwrap()
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The heartbeat: with a 1 s lease, a command that runs until the holder has renewed its lock
/// 11 times while another caller waits runs once — the waiter never takes a lock whose holder
/// is alive and renewing, whatever the clock says. 11 renewals seen after the waiter started
/// waiting span at least 10 heartbeats of a third of the lease each: more than 3 leases (9
/// renewals, the earlier count, span only 8 heartbeats, 2.67 s, and `waited_ms >= 3000`
/// failed under load).
#[test]
fn a_compute_outlasting_several_leases_runs_once_while_another_waits() {
    let s = Store::new();
    let cmd = gated(&s.scratch, "long value");
    let _gate = Gate::of(&s.scratch);
    let spawn = |extra: &[&str]| {
        cas(&s)
            .args(["--lock-timeout", "1s", "key", "ensure", "k"])
            .args(extra)
            .arg("--")
            .args(&cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let holder = spawn(&[]);
    wait_until("the holder to start the command", || runs(&s.scratch) == 1);
    let lock = compute_lock(&s);
    let mut waiter = spawn(&["--json"]);
    let waiter_err = read_stderr_until(&mut waiter, "cas: waiting for \"k\"");
    let (mut last, mut renewals) = (mtime(&lock), 0);
    wait_until("11 renewals of the compute lock", || {
        assert_eq!(
            runs(&s.scratch),
            1,
            "the command ran again while it still ran"
        );
        let now = mtime(&lock);
        assert!(now.is_some(), "the compute lock went away while computing");
        if now != last {
            renewals += 1;
            last = now;
        }
        renewals >= 11
    });
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    let h = holder.wait_with_output().unwrap();
    assert!(h.status.success(), "holder: {}", text(&h.stderr));
    assert_eq!(text(&h.stdout), "long value");
    assert!(!text(&h.stderr).contains("warning"), "{}", text(&h.stderr));
    let w = waiter.wait_with_output().unwrap();
    let werr = waiter_err.join().unwrap();
    assert!(w.status.success(), "waiter: {werr}");
    let r: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(r["computed"], false, "the waiter computed: {r}");
    assert!(r["waited_ms"].as_u64().unwrap() >= 3000, "{r}");
    assert_eq!(runs(&s.scratch), 1, "the command ran more than once");
}

/// A heartbeat that fails is told at once (naming the lock), and the computation's value is
/// still published: nobody else published one, so `Expect::Absent` lets it in.
#[test]
fn a_failing_heartbeat_is_reported_and_the_value_still_published() {
    let s = Store::new();
    let cmd = gated(&s.scratch, "the value");
    let _gate = Gate::of(&s.scratch);
    let mut holder = cas(&s)
        .args(["--lock-timeout", "1s", "key", "ensure", "k", "--"])
        .args(&cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the holder to start the command", || runs(&s.scratch) == 1);
    let lock = compute_lock(&s);
    // The lock file vanishes under the holder (an operator, a cleaner): renewing it fails.
    std::fs::remove_file(&lock).unwrap();
    let err = read_stderr_until(&mut holder, "lease could not be renewed");
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    let out = holder.wait_with_output().unwrap();
    let err = err.join().unwrap();
    assert!(out.status.success(), "holder: {err}");
    assert!(
        err.contains(&*lock.to_string_lossy()),
        "the warning does not name the lock: {err}"
    );
    assert_eq!(
        err.matches("lease could not be renewed").count(),
        1,
        "{err}"
    );
    assert_eq!(text(&out.stdout), "the value");
    assert_eq!(run_ok(cas(&s).args(["key", "get", "k"])), "the value");
    assert_eq!(runs(&s.scratch), 1);
    s.assert_tmp_empty();
}

#[test]
fn eight_processes_run_the_command_once_and_print_the_same_bytes() {
    let s = Store::new();
    let cmd = gated(&s.scratch, "the value");
    let children: Vec<Child> = (0..8).map(|_| spawn_ensure(&s, "k", &[], &cmd)).collect();
    wait_until("one caller to start the command", || runs(&s.scratch) >= 1);
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "the value");
    }
    assert_eq!(runs(&s.scratch), 1, "the command ran more than once");
    assert_eq!(run_ok(cas(&s).args(["key", "get", "k"])), "the value");
    s.assert_tmp_empty();
}

#[test]
fn a_sigkilled_computing_process_is_taken_over_by_a_waiter() {
    let s = Store::new();
    // The first run never finishes; the second prints at once.
    let runs_file = s.scratch.join("runs");
    let first = s.scratch.join("first");
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "echo $$ >> '{}'; if mkdir '{}' 2>/dev/null; then while :; do sleep 0.01; done; fi; \
             printf taken-over",
            runs_file.display(),
            first.display()
        ),
    ];
    let mut holder = spawn_ensure(&s, "k", &[], &cmd);
    // Wait for its mkdir, not only its echo: killed in between, the waiter's command would
    // take the first branch and loop for ever.
    wait_until("the holder to start the command", || first.exists());
    let mut waiter = spawn_ensure(&s, "k", &["--json"], &cmd);
    // The waiter says when it starts waiting for the holder's lock: only then does the holder
    // die, so what is tested is a waiting process waking, not a newcomer finding a dead lock.
    let waiting = read_stderr_until(&mut waiter, "cas: waiting for \"k\"");
    // The holder and its command die together, as on a crash of the job.
    let pgid = holder.id();
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{pgid}")])
        .status();
    let st = holder.wait().unwrap();
    assert!(!st.success());
    let out = waiter.wait_with_output().unwrap();
    let rest = waiting.join().unwrap();
    assert!(out.status.success(), "waiter: {rest}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["computed"], true, "{r}");
    assert!(r["waited_ms"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(run_ok(cas(&s).args(["key", "get", "k"])), "taken-over");
    assert_eq!(runs(&s.scratch), 2);
    // The dead holder's staging file is cleaned by gc; then all is clean.
    run_ok(cas(&s).arg("gc"));
    run_ok(cas(&s).arg("verify"));
}

#[test]
fn a_failing_command_stores_nothing_and_its_status_is_returned() {
    let s = Store::new();
    let out = run(cas(&s).args([
        "key",
        "ensure",
        "k",
        "--",
        "sh",
        "-c",
        "printf partial; exit 7",
    ]));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing was stored"));
    assert!(out.stdout.is_empty(), "partial output was written");
    let get = run(cas(&s).args(["key", "get", "k"]));
    assert_eq!(get.status.code(), Some(1));
    s.assert_tmp_empty();
    // The next caller computes.
    let ok = run_ok(cas(&s).args(["key", "ensure", "k", "--", "printf", "ok"]));
    assert_eq!(ok, "ok");
}

#[test]
fn the_tree_form_restores_one_build_into_four_directories() {
    let s = Store::new();
    let runs_file = s.scratch.join("runs");
    let gate = s.scratch.join("gate");
    let cmd = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "echo $$ >> '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; \
             mkdir \"$CAS_OUT/sub\" && printf a > \"$CAS_OUT/sub/f\" && printf b > \"$CAS_OUT/g\" \
             && echo built",
            runs_file.display(),
            gate.display()
        ),
    ];
    let outs: Vec<_> = (0..4).map(|i| s.scratch.join(format!("out{i}"))).collect();
    let children: Vec<Child> = outs
        .iter()
        .map(|o| {
            let o = o.to_string_lossy().into_owned();
            spawn_ensure(&s, "t", &["--tree", "-o", &o], &cmd)
        })
        .collect();
    wait_until("one caller to start the build", || runs(&s.scratch) >= 1);
    std::fs::write(&gate, "").unwrap();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "the build's stdout went to stdout");
    }
    assert_eq!(runs(&s.scratch), 1, "the build ran more than once");
    for o in &outs {
        assert_eq!(std::fs::read(o.join("sub/f")).unwrap(), b"a");
        assert_eq!(std::fs::read(o.join("g")).unwrap(), b"b");
    }
    // Again into a directory that already holds the tree: success, nothing runs. Into one
    // that holds something else: refused, untouched.
    let again = run(cas(&s)
        .args(["key", "ensure", "t", "--tree", "-o"])
        .arg(&outs[0])
        .args(["--", "false"]));
    assert!(again.status.success(), "{}", text(&again.stderr));
    std::fs::write(outs[1].join("g"), "changed").unwrap();
    let clash = run(cas(&s)
        .args(["key", "ensure", "t", "--tree", "-o"])
        .arg(&outs[1])
        .args(["--", "false"]));
    assert_eq!(clash.status.code(), Some(1), "{}", text(&clash.stderr));
    assert!(text(&clash.stderr).contains("does not hold this tree"));
    assert_eq!(std::fs::read(outs[1].join("g")).unwrap(), b"changed");
    // The entry points at the tree, as `put -r` of the same directory gives it.
    let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&outs[0]));
    let info = run_ok(cas(&s).args(["--json", "key", "info", "t"]));
    assert!(info.contains(tree.trim()), "{info} vs {tree}");
}

#[test]
fn key_set_expect_none_has_exactly_one_winner() {
    let s = Store::new();
    let hashes: Vec<String> = (0..6).map(|i| s.put(format!("v{i}").as_bytes())).collect();
    // A barrier (test hook) holds every setter just before its update until all 6 are there:
    // the sets overlap, every run.
    let barrier = s.scratch.join("barrier");
    std::fs::create_dir(&barrier).unwrap();
    let children: Vec<Child> = hashes
        .iter()
        .map(|h| {
            cas(&s)
                .env("CAS_TEST_BARRIER", format!("6:{}", barrier.display()))
                .args(["key", "set", "k", h, "--expect-none"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut winners = Vec::new();
    for (c, h) in children.into_iter().zip(&hashes) {
        let out = c.wait_with_output().unwrap();
        assert!(
            text(&out.stderr).contains("cas-test: barrier passed"),
            "a setter did not overlap the others: {}",
            text(&out.stderr)
        );
        match out.status.code() {
            Some(0) => winners.push(h.clone()),
            Some(1) => assert!(
                text(&out.stderr).contains("expected absent"),
                "{}",
                text(&out.stderr)
            ),
            other => panic!("exit {other:?}: {}", text(&out.stderr)),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let got = run_ok(cas(&s).args(["key", "get", "k"]));
    let i = hashes.iter().position(|h| *h == winners[0]).unwrap();
    assert_eq!(got, format!("v{i}"));
    // A hash that is not in the store is refused.
    let missing = "0".repeat(64);
    let out = run(cas(&s).args(["key", "set", "k2", &missing]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&missing));
}

#[test]
fn key_put_r_points_a_key_at_a_tree() {
    let s = Store::new();
    let d = s.scratch.join("d");
    common::tree(&d, &[("x/y", "z")]);
    let h = run_ok(cas(&s).args(["key", "put", "-r", "k"]).arg(&d));
    assert_eq!(h, run_ok(cas(&s).args(["put", "-r"]).arg(&d)));
    let restored = s.scratch.join("r");
    run_ok(cas(&s).args(["get", "-r", h.trim(), "-o"]).arg(&restored));
    assert_eq!(std::fs::read(restored.join("x/y")).unwrap(), b"z");
}

// ---------------------------------------------------------------------------------------------
// A damaged or missing entry is a miss (issue 19): quarantined, said in one line, computed
// again once, whatever the number of callers.

/// Flips one byte of the object `hex` in place (objects are read-only: made writable).
fn flip_object(s: &Store, hex: &str) {
    let p = s.object_path(hex);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x20;
    std::fs::write(&p, b).unwrap();
}

/// Four concurrent `key ensure KEY` callers of a gated command after damage: all succeed with
/// `want` on stdout (or in their `-o` directory for a tree), the command runs exactly once,
/// and the damage is said on stderr by at least one of them, naming `named`.
fn four_callers_heal(s: &Store, key: &str, tree: bool, want: &str, named: &str) {
    let cmd = if tree {
        let runs = s.scratch.join("runs");
        let gate = s.scratch.join("gate");
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!(
                "echo $$ >> '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; \
                 mkdir \"$CAS_OUT/sub\" && printf '{want}' > \"$CAS_OUT/sub/f\"",
                runs.display(),
                gate.display()
            ),
        ]
    } else {
        gated(&s.scratch, want)
    };
    let _gate = Gate::of(&s.scratch);
    let outs: Vec<_> = (0..4).map(|i| s.scratch.join(format!("heal{i}"))).collect();
    let children: Vec<Child> = outs
        .iter()
        .map(|o| {
            let o = o.to_string_lossy().into_owned();
            if tree {
                spawn_ensure(s, key, &["--tree", "-o", &o], &cmd)
            } else {
                spawn_ensure(s, key, &[], &cmd)
            }
        })
        .collect();
    wait_until("one caller to start the rebuild", || runs(&s.scratch) >= 1);
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    let mut said = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        if tree {
            assert!(out.stdout.is_empty());
        } else {
            assert_eq!(text(&out.stdout), want);
        }
        for l in err.lines() {
            if l.starts_with(&format!("cas: waiting for {key:?}: computed by host ")) {
                continue; // a waiter says so (once: stderr is not a terminal)
            }
            assert!(
                l.contains("is damaged") && l.contains(named),
                "unexpected stderr: {err}"
            );
            said.push(l.to_owned());
        }
    }
    assert!(!said.is_empty(), "nobody said the entry was damaged");
    assert_eq!(runs(&s.scratch), 1, "the command ran more than once");
    if tree {
        for o in &outs {
            assert_eq!(std::fs::read_to_string(o.join("sub/f")).unwrap(), want);
        }
    } else {
        assert_eq!(run_ok(cas(s).args(["key", "get", key])), want);
    }
    // Healed: `verify` is clean, and one more caller neither runs the command nor complains.
    run_ok(cas(s).arg("verify"));
    let again = run(cas(s)
        .args(["key", "ensure", key])
        .args(if tree { vec!["--tree"] } else { vec![] })
        .args(["--", "false"]));
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(again.stderr.is_empty(), "{}", text(&again.stderr));
    s.assert_tmp_empty();
}

#[test]
fn a_flipped_byte_in_the_value_heals_with_one_run() {
    let s = Store::new();
    let old = run_ok(cas(&s).args(["key", "ensure", "k", "--", "printf", "the old value"]));
    assert_eq!(old, "the old value");
    let h = blake3_hex(b"the old value");
    flip_object(&s, &h);
    // `key get` has nothing to rebuild with: it fails cleanly and names the remedies.
    let get = run(cas(&s).args(["key", "get", "k"]));
    assert_eq!(get.status.code(), Some(1));
    let err = text(&get.stderr);
    assert!(
        err.contains("cas key ensure k") && err.contains("cas key rm k"),
        "{err}"
    );
    assert!(err.contains("corrupt") && err.contains(&h), "{err}");
    four_callers_heal(&s, "k", false, "the new value", &h);
    assert_eq!(std::fs::read_dir(s.quarantine()).unwrap().count(), 1);
}

#[test]
fn a_deleted_object_heals_with_one_run() {
    let s = Store::new();
    run_ok(
        cas(&s)
            .args(["key", "put", "k"])
            .arg(s.input("v", b"the old value")),
    );
    let h = blake3_hex(b"the old value");
    std::fs::remove_file(s.object_path(&h)).unwrap();
    let get = run(cas(&s).args(["key", "get", "k"]));
    let err = text(&get.stderr);
    assert_eq!(get.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not found") && err.contains("cas key rm k"),
        "{err}"
    );
    four_callers_heal(&s, "k", false, "the new value", &h);
}

#[test]
fn a_garbage_entry_file_heals_with_one_run() {
    let s = Store::new();
    run_ok(
        cas(&s)
            .args(["key", "put", "k"])
            .arg(s.input("v", b"the old value")),
    );
    let entry = s.entry_file("k");
    std::fs::remove_file(&entry).unwrap();
    std::fs::write(&entry, b"not an entry at all").unwrap();
    let get = run(cas(&s).args(["key", "get", "k"]));
    let err = text(&get.stderr);
    assert_eq!(get.status.code(), Some(1), "{err}");
    assert!(err.contains("cas key ensure k -- CMD"), "{err}");
    four_callers_heal(
        &s,
        "k",
        false,
        "the new value",
        &entry.display().to_string(),
    );
}

#[test]
fn a_corrupt_child_of_a_tree_entry_heals_with_one_run() {
    let s = Store::new();
    let build = |v: &str| {
        vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("mkdir \"$CAS_OUT/sub\" && printf '{v}' > \"$CAS_OUT/sub/f\""),
        ]
    };
    let first = s.scratch.join("first");
    let out = run(cas(&s)
        .args(["key", "ensure", "t", "--tree", "-o"])
        .arg(&first)
        .arg("--")
        .args(build("deep old")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let child = blake3_hex(b"deep old");
    flip_object(&s, &child);
    four_callers_heal(&s, "t", true, "deep new", &child);
    // A missing child, too.
    std::fs::remove_file(s.object_path(&blake3_hex(b"deep new"))).unwrap();
    let _ = std::fs::remove_file(s.scratch.join("runs"));
    for i in 0..4 {
        let _ = std::fs::remove_dir_all(s.scratch.join(format!("heal{i}")));
    }
    four_callers_heal(&s, "t", true, "deep new", "sub/f");
}

// ---------------------------------------------------------------------------------------------
// $CAS_OUT in file mode (issue 19)

#[test]
fn cas_out_in_file_mode_is_the_value_when_written_else_stdout_is() {
    let s = Store::new();
    // Written: the file is the value, stdout is not. The path is in the store's tmp/.
    let seen = s.scratch.join("seen");
    let cmd = format!(
        "printf '%s' \"$CAS_OUT\" > '{}'; printf 'from the file' > \"$CAS_OUT\"; echo noise",
        seen.display()
    );
    let out = run_ok(cas(&s).args(["key", "ensure", "f", "--", "sh", "-c", &cmd]));
    assert_eq!(out, "from the file");
    assert_eq!(run_ok(cas(&s).args(["key", "get", "f"])), "from the file");
    let path = std::fs::read_to_string(&seen).unwrap();
    assert!(
        Path::new(&path).starts_with(s.tmp()),
        "$CAS_OUT={path} is not in the store's tmp/"
    );
    // Not written: stdout is the value.
    let out = run_ok(cas(&s).args(["key", "ensure", "o", "--", "sh", "-c", "printf stdout"]));
    assert_eq!(out, "stdout");
    // Large, written with -o by a tool, to a file: the same bytes come back.
    let big = common::data(3 << 20, 7);
    let src = s.input("big", &big);
    let cmd = format!("cp '{}' \"$CAS_OUT\"", src.display());
    let dst = s.scratch.join("big.out");
    run_ok(
        cas(&s)
            .args(["key", "ensure", "big", "-o"])
            .arg(&dst)
            .args(["--", "sh", "-c", &cmd]),
    );
    assert_eq!(std::fs::read(&dst).unwrap(), big);
    // Something else than a file there: refused, nothing stored.
    let out = run(cas(&s).args([
        "key",
        "ensure",
        "d",
        "--",
        "sh",
        "-c",
        "rm \"$CAS_OUT\"; mkdir \"$CAS_OUT\"",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a regular file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        run(cas(&s).args(["key", "get", "d"])).status.code(),
        Some(1)
    );
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// Errors put where they belong (issue 19)

#[test]
fn a_command_that_cannot_run_exits_127_or_126_like_a_shell() {
    let s = Store::new();
    let missing = s.scratch.join("no-such-command");
    let out = run(cas(&s).args(["key", "ensure", "k", "--"]).arg(&missing));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(
        err.contains("cannot run") && err.contains("not found"),
        "{err}"
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let plain = s.input("not-executable", b"#!/bin/sh\necho hi\n");
    let out = run(cas(&s).args(["key", "ensure", "k", "--"]).arg(&plain));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(
        err.contains("cannot run") && err.contains("permission denied"),
        "{err}"
    );
    assert!(err.contains("nothing was stored"), "{err}");
    // The same with --tree.
    let out = run(cas(&s)
        .args(["key", "ensure", "t", "--tree", "--"])
        .arg(&missing));
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert_eq!(
        run(cas(&s).args(["key", "get", "k"])).status.code(),
        Some(1)
    );
    s.assert_tmp_empty();
}

/// Unmounts (lazily) a test mount when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// True if the test may go on (see `common::root_prerequisite`: skipped with a message, or a
/// failure under `CAS_REQUIRE_ROOT_TESTS=1` as in CI).
fn prerequisite(ok: bool, what: &str) -> bool {
    common::root_prerequisite(ok, what)
}

/// A full disk used to be blamed on the command: "curl exited with exit status: 23", or
/// SIGPIPE (141) from `head`. The store's error, naming its path, is what is reported now,
/// whatever the command then does, and nothing is stored. On a 1 MiB tmpfs (needs root).
#[test]
fn a_full_disk_while_the_command_writes_is_the_stores_error() {
    if !prerequisite(
        rustix::process::geteuid().is_root(),
        "mounting a small tmpfs needs root",
    ) {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !prerequisite(st.is_ok_and(|s| s.success()), "cannot mount a tmpfs") {
        return;
    }
    let _guard = Mount(mnt.clone());
    let root = mnt.join("store");
    let c = || common::cas_at(&root);
    run_ok(c().arg("init"));
    let cases: [(&str, &[&str]); 3] = [
        // Killed by SIGPIPE once its pipe is closed.
        ("head", &["head", "-c", "4000000", "/dev/zero"]),
        // Sees the write error and exits 23, as curl does.
        (
            "curl-like",
            &["sh", "-c", "head -c 4000000 /dev/zero || exit 23"],
        ),
        // Ignores it and succeeds.
        (
            "stubborn",
            &["sh", "-c", "head -c 4000000 /dev/zero; exit 0"],
        ),
    ];
    for (name, cmd) in cases {
        let out = run(c().args(["key", "ensure", name, "--"]).args(cmd));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("No space left on device"), "{name}: {err}");
        assert!(
            err.contains(&root.join("tmp").display().to_string()),
            "{name}: {err}"
        );
        assert!(
            !err.contains("exited with"),
            "{name}: blamed on the command: {err}"
        );
        assert!(out.stdout.is_empty(), "{name}");
        assert_eq!(run(c().args(["key", "get", name])).status.code(), Some(1));
        let left: Vec<_> = std::fs::read_dir(root.join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting said in words (issue 19)

/// While another caller computes, a waiter on a terminal shows who computes and for how long
/// on one line, redrawn in place, and clears it when done. Before: nothing, for up to an hour.
#[test]
fn a_waiter_on_a_terminal_says_who_computes_and_clears_the_line() {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let s = Store::new();
    let cmd = gated(&s.scratch, "v");
    let _gate = Gate::of(&s.scratch);
    let holder = spawn_ensure(&s, "k", &[], &cmd);
    wait_until("the holder to start the command", || runs(&s.scratch) >= 1);

    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let mut master = std::fs::File::from(master);
    let term = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let term = term.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match master.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => term.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        })
    };
    let waiter = cas(&s)
        .args(["key", "ensure", "k", "--"])
        .args(&cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let want = format!(
        "cas: waiting for \"k\": computed by host {} pid {} for ",
        rustix::system::uname().nodename().to_string_lossy(),
        holder.id()
    );
    let draws = || text(&term.lock().unwrap()).matches(&want).count();
    // Kept current: drawn again while the wait lasts (about once a second).
    wait_until("the waiting line to be drawn twice", || draws() >= 2);
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    let out = waiter.wait_with_output().unwrap();
    reader.join().unwrap();
    let term = text(&term.lock().unwrap());
    assert!(out.status.success(), "{term}");
    assert_eq!(text(&out.stdout), "v");
    assert!(term.contains("(timeout 1 h)"), "{term:?}");
    assert!(term.starts_with(&format!("\r\x1b[K{want}")), "{term:?}");
    // Cleared before anything else is drawn (here `get`'s progress bar).
    let last = term.rfind("(timeout 1 h)").unwrap() + "(timeout 1 h)".len();
    assert!(
        term[last..].starts_with("\r\x1b[K"),
        "the line was not cleared: {term:?}"
    );
    assert!(holder.wait_with_output().unwrap().status.success());
    assert_eq!(runs(&s.scratch), 1);
}

/// A timeout names the key, the holder and the times in words. Before: "…/index/b4/53ac….
/// compute.lock is locked by host vm pid 19374 since 1796427175125 ms (waited 1013 ms)".
/// And `--json` says who computed and how long each waited.
#[test]
fn a_timeout_is_said_in_words_and_json_tells_a_hit_from_a_computation() {
    let s = Store::new();
    let cmd = gated(&s.scratch, "v");
    let _gate = Gate::of(&s.scratch);
    let dst = s.scratch.join("holder.out");
    let holder = cas(&s)
        .args(["--json", "key", "ensure", "k", "-o"])
        .arg(&dst)
        .arg("--")
        .args(&cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the holder to start the command", || runs(&s.scratch) >= 1);
    let out = run(cas(&s).args(["key", "ensure", "k", "--timeout", "1s", "--", "false"]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("cas: error: gave up waiting for cache entry \"k\" after 1 s (timeout 1 s): it is being computed by host "),
        "{err}"
    );
    assert!(line.contains(&format!("pid {} for ", holder.id())), "{err}");
    assert!(!line.contains(".lock") && !line.contains(" ms"), "{err}");
    // A waiter with --json: not computed by it, and it waited.
    let mut waiter = cas(&s)
        .args(["--json", "key", "ensure", "k", "--", "false"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its stderr (not a terminal) says once that it waits: then the gate opens.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr_reader = {
        let (said, mut err) = (said.clone(), waiter.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = std::io::Read::read(&mut err, &mut buf) {
                if n == 0 {
                    break;
                }
                said.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_until("the waiter to say it waits", || {
        said.lock().unwrap().contains("cas: waiting for \"k\"")
    });
    std::fs::write(s.scratch.join("gate"), "").unwrap();
    let h = holder.wait_with_output().unwrap();
    assert!(h.status.success(), "{}", text(&h.stderr));
    let h: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!(h["computed"], true);
    assert_eq!(h["key"], "k");
    assert_eq!(h["hash"], blake3_hex(b"v"));
    assert_eq!(std::fs::read(&dst).unwrap(), b"v");
    let w = waiter.wait_with_output().unwrap();
    stderr_reader.join().unwrap();
    assert!(w.status.success(), "{}", said.lock().unwrap());
    let w: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert_eq!(w["computed"], false);
    assert_eq!(w["hash"], blake3_hex(b"v"));
    assert!(w["waited_ms"].as_u64().unwrap() > 0, "{w}");
}

// ---------------------------------------------------------------------------------------------
// Outputs that are not relocatable (issue 19)

/// A venv-like tree: `bin/python -> python3 -> /usr/bin/python3`. The refusal used to name
/// `bin/python` with target "python3" as "absolute"; it names the absolute link now, and
/// `--allow-external-symlinks` restores it. The stored entry is fine (only the restore
/// refuses), so the second call does not run the command again.
#[test]
fn an_external_link_is_named_and_allow_external_symlinks_restores_it() {
    let s = Store::new();
    let cmd = [
        "sh",
        "-c",
        &format!(
            "echo $$ >> '{}'; mkdir \"$CAS_OUT/bin\" && ln -s /usr/bin/python3 \"$CAS_OUT/bin/python3\" \
             && ln -s python3 \"$CAS_OUT/bin/python\"",
            s.scratch.join("runs").display()
        ),
    ];
    let dst = s.scratch.join("venv");
    let out = run(cas(&s)
        .args(["key", "ensure", "env", "--tree", "-o"])
        .arg(&dst)
        .arg("--")
        .args(cmd));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bin/python3: symlink target \"/usr/bin/python3\" is absolute"),
        "{err}"
    );
    assert!(
        err.contains("and 1 more link") && err.contains("--allow-external-symlinks"),
        "{err}"
    );
    assert!(!dst.exists());
    let out = run(cas(&s)
        .args([
            "key",
            "ensure",
            "env",
            "--tree",
            "--allow-external-symlinks",
            "-o",
        ])
        .arg(&dst)
        .arg("--")
        .args(cmd));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_link(dst.join("bin/python3")).unwrap(),
        Path::new("/usr/bin/python3")
    );
    assert_eq!(
        std::fs::read_link(dst.join("bin/python")).unwrap(),
        Path::new("python3")
    );
    assert_eq!(runs(&s.scratch), 1, "the command ran again");
}

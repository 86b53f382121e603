//! Issue 12 end to end, through the real `cas` binary: stores are created only on purpose,
//! `-o` treats devices, FIFOs and symlinks right, signals leave nothing behind, and partial
//! failures and usage errors follow one rule.

use crate::common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const H: &str = "d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

/// The inputs of [`every_subcommand`], in `base/outside` (outside the directories being
/// watched): the directory, a file in it and a one-file directory in it.
fn inputs_outside(base: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let outside = base.join("outside");
    fs::create_dir(&outside).unwrap();
    let input = outside.join("in");
    fs::write(&input, "input bytes").unwrap();
    let dir_input = outside.join("dir");
    fs::create_dir(&dir_input).unwrap();
    fs::write(dir_input.join("x"), "x").unwrap();
    (outside, input, dir_input)
}

/// Every subcommand, with arguments, and whether it may create a store (`true`: it stores
/// something). Output paths point into `out`, outside the directories being watched.
fn every_subcommand(input: &Path, dir_input: &Path, out: &Path) -> Vec<(Vec<String>, bool)> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let p = |x: &Path| x.display().to_string();
    vec![
        (s(&["get", H]), false),
        (s(&["get", H, "-o", &p(&out.join("o1"))]), false),
        (s(&["get", "-r", H, "-o", &p(&out.join("o2"))]), false),
        (s(&["has", H]), false),
        (s(&["rm", H]), false),
        (s(&["ls"]), false),
        (s(&["ls", "-l"]), false),
        (s(&["stats"]), false),
        (s(&["stats", "--json"]), false),
        (s(&["verify"]), false),
        (s(&["doctor"]), false),
        (s(&["doctor", "--fix"]), false),
        (s(&["ref", "get", "r"]), false),
        (s(&["ref", "ls"]), false),
        (s(&["ref", "log", "r"]), false),
        (s(&["ref", "rm", "r"]), false),
        (s(&["key", "get", "k"]), false),
        (s(&["key", "get", "k", "-o", &p(&out.join("o3"))]), false),
        (s(&["key", "info", "k"]), false),
        (s(&["key", "ls"]), false),
        (s(&["key", "rm", "k"]), false),
        // Issue 23: gc never creates a store (a mistyped --store in a cron job failed
        // silently by collecting the empty store it made).
        (s(&["gc"]), false),
        (s(&["gc", "--now"]), false),
        (s(&["put", &p(input)]), true),
        (s(&["put", "-r", &p(dir_input)]), true),
        (s(&["put", "--ref", "r", &p(input)]), true),
        (s(&["key", "put", "k", &p(input)]), true),
        (s(&["ref", "set", "r", H]), true),
    ]
}

/// Issue 12, 1: `--store` at an existing directory that is not a store, for every
/// subcommand: nothing is written there (nor beside it), the command fails and says to run
/// `cas init`.
#[test]
fn no_subcommand_writes_into_a_directory_that_is_not_a_store() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let watched = base.join("watched");
    let foreign = watched.join("etc");
    fs::create_dir_all(foreign.join("sub")).unwrap();
    fs::write(foreign.join("passwd"), "root:x:0:0\n").unwrap();
    fs::write(foreign.join("sub").join("f"), "data").unwrap();
    let (outside, input, dir_input) = inputs_outside(base);

    let before = snapshot(&watched);
    for (args, _) in every_subcommand(&input, &dir_input, &outside) {
        let out = run(cas_home(&foreign, base).args(&args));
        let stderr = text(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(0),
            "cas {args:?} succeeded: {stderr}"
        );
        assert!(
            stderr.contains("cas init"),
            "cas {args:?}: the error does not say what to run: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "cas {args:?}: {stderr}");
        assert_eq!(
            snapshot(&watched),
            before,
            "cas {args:?} changed a directory that is not a store"
        );
    }
    // The same through $CAS_STORE.
    let out = run(Command::new(cas_bin())
        .env("CAS_STORE", &foreign)
        .env("HOME", base)
        .arg("put")
        .arg(&input));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(snapshot(&watched), before);

    // cas init refuses it without --force, and says how.
    let out = run(cas_home(&foreign, base).arg("init"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = run(Command::new(cas_bin()).arg("init").arg(&foreign));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(snapshot(&watched), before, "cas init without --force wrote");
    // With --force: a store beside the files, which are kept.
    run_ok(
        Command::new(cas_bin())
            .args(["init", "--force"])
            .arg(&foreign),
    );
    assert!(foreign.join("FORMAT").is_file());
    assert_eq!(fs::read(foreign.join("passwd")).unwrap(), b"root:x:0:0\n");
    assert_eq!(fs::read(foreign.join("sub").join("f")).unwrap(), b"data");
    run_ok(cas_home(&foreign, base).arg("put").arg(&input));
}

/// Issue 12, 1: `--store` at a path that does not exist: commands that only read, check or
/// remove create nothing (not even the parent); commands that store something create it.
#[test]
fn only_writing_subcommands_create_a_missing_store() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let watched = base.join("watched");
    fs::create_dir(&watched).unwrap();
    let missing = watched.join("not").join("yet");
    let (outside, input, dir_input) = inputs_outside(base);

    let before = snapshot(&watched);
    for (args, writes) in every_subcommand(&input, &dir_input, &outside) {
        let out = run(cas_home(&missing, base).args(&args));
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "cas {args:?}: {stderr}");
        if writes {
            assert!(
                missing.join("FORMAT").is_file(),
                "cas {args:?} did not create the missing store: {stderr}"
            );
            assert_no_init_leftovers(&watched);
            fs::remove_dir_all(watched.join("not")).unwrap();
        } else {
            assert_ne!(
                out.status.code(),
                Some(0),
                "cas {args:?} succeeded: {stderr}"
            );
            assert!(
                stderr.contains(&format!("cas init {}", missing.display())),
                "cas {args:?}: the error does not say what to run: {stderr}"
            );
            assert_eq!(snapshot(&watched), before, "cas {args:?} created something");
        }
    }

    // The default store (no --store, no CAS_STORE) is not created by a reader either.
    let home = base.join("home");
    let out = run(Command::new(cas_bin())
        .env_remove("CAS_STORE")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", &home)
        .arg("stats"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cas init"),
        "{}",
        text(&out.stderr)
    );
    assert!(!home.exists(), "cas stats created the default store");
}

/// Asserts that creating a store left no hidden staging directory beside it.
fn assert_no_init_leftovers(dir: &Path) {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".cas-init."),
                "left behind: {}",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() && name != "objects" {
                stack.push(e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Outputs

fn mknod_char(path: &Path, major: u32, minor: u32) {
    let st = Command::new("mknod")
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .expect("run mknod");
    assert!(
        st.success(),
        "mknod {} failed (the tests run as root)",
        path.display()
    );
}

/// Issue 12, 2 (regression: `cas get H -o /dev/null` as root replaced /dev/null with a
/// regular file): a character device stays a device, directly or behind a symlink.
#[test]
fn output_onto_a_character_device_writes_in_place() {
    let s = Store::new();
    let bytes = data(200_000, 7);
    let h = s.put(&bytes);
    let null = s.scratch.join("null");
    mknod_char(&null, 1, 3);
    let rdev = fs::metadata(&null).unwrap().rdev();
    let link = s.scratch.join("to-null");
    std::os::unix::fs::symlink(&null, &link).unwrap();
    for dest in [&null, &link] {
        run_ok(cas(&s).args(["get", &h, "-o"]).arg(dest));
        let m = fs::metadata(&null).unwrap();
        assert!(
            m.file_type().is_char_device(),
            "{} is no longer a device",
            null.display()
        );
        assert_eq!(m.rdev(), rdev);
    }
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // key get -o too.
    run_with_stdin(cas(&s).args(["key", "put", "k", "-"]), &bytes);
    run_ok(cas(&s).args(["key", "get", "k", "-o"]).arg(&link));
    assert!(fs::metadata(&null).unwrap().file_type().is_char_device());
    // No temporary file was left beside it.
    let names: Vec<_> = fs::read_dir(&s.scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// Issue 12, 2: a FIFO behind a symlink gets the verified bytes written into it, and stays a
/// FIFO; the symlink stays a symlink.
#[test]
fn output_onto_a_fifo_behind_a_symlink_writes_the_bytes_into_it() {
    let s = Store::new();
    let bytes = data(300_000, 8);
    let h = s.put(&bytes);
    let fifo = s.scratch.join("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let link = s.scratch.join("link");
    std::os::unix::fs::symlink("fifo", &link).unwrap();
    let reader = {
        let fifo = fifo.clone();
        // Opening blocks until cas opens the FIFO for writing; reads to its close.
        std::thread::spawn(move || fs::read(&fifo).unwrap())
    };
    let out = run(cas(&s).args(["get", &h, "-o"]).arg(&link));
    if !out.status.success() {
        // Release the reader (blocked opening the FIFO) before failing, rather than hang.
        drop(fs::OpenOptions::new().write(true).open(&fifo));
        panic!("cas get -o FIFO failed: {}", text(&out.stderr));
    }
    let got = reader.join().unwrap();
    assert!(
        got == bytes,
        "the FIFO's reader got {} bytes, not the object",
        got.len()
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Issue 12, 2: `-o -` is stdout; `-o` onto a symlink to a regular file replaces the target's
/// content and keeps the link.
#[test]
fn output_dash_is_stdout_and_symlinked_files_keep_their_link() {
    let s = Store::new();
    let bytes = data(70_000, 9);
    let h = s.put(&bytes);
    let out = run(cas(&s).args(["get", &h, "-o", "-"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == bytes,
        "-o - did not write the object to stdout"
    );
    assert!(!Path::new("-").exists(), "-o - created a file named -");
    // /dev/stdout (a link through /proc/self/fd to a pipe here) is written in place too.
    let out = run(cas(&s).args(["get", &h, "-o", "/dev/stdout"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == bytes,
        "-o /dev/stdout did not write to stdout"
    );
    // ... and when stdout is redirected to a file, that file gets the bytes.
    let redirected = s.scratch.join("redirected");
    let f = fs::File::create(&redirected).unwrap();
    let out = run(cas(&s).args(["get", &h, "-o", "/dev/stdout"]).stdout(f));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read(&redirected).unwrap() == bytes);
    fs::remove_file(&redirected).unwrap();

    let target_dir = s.scratch.join("real");
    fs::create_dir(&target_dir).unwrap();
    let target = target_dir.join("file");
    fs::write(&target, "old content").unwrap();
    let link = s.scratch.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let link2 = s.scratch.join("link2");
    std::os::unix::fs::symlink("link", &link2).unwrap();
    run_ok(cas(&s).args(["get", &h, "-o"]).arg(&link2));
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(&link2)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), target);
    assert!(
        fs::read(&target).unwrap() == bytes,
        "the link's target was not replaced"
    );
    // The temporary file was beside the target and is gone.
    assert_eq!(fs::read_dir(&target_dir).unwrap().count(), 1);
    assert_eq!(fs::read_dir(&s.scratch).unwrap().count(), 3);
}

// ---------------------------------------------------------------------------------------------
// 3. Signals

/// Issue 12, 3: SIGINT, SIGTERM and SIGHUP during a put streaming from a pipe remove its
/// staging file and exit 128 + the signal; nothing is published and verify is clean.
#[test]
fn signals_mid_put_remove_staging_and_exit_128_plus_signal() {
    let s = Store::new();
    for (sig, code) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let mut child = cas(&s)
            .args(["put", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data(3 << 20, 10)).unwrap();
        wait_until("the put's staging file", || {
            !staging_files_of(&s.tmp(), pid).is_empty()
        });
        assert_running(&mut child, "cas put with its input still open");
        kill(pid, sig);
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(
            out.status.code(),
            Some(code),
            "SIG{sig}: {} stderr: {}",
            out.status,
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "a hash was printed");
        s.assert_tmp_empty();
        assert!(s.object_hashes().is_empty(), "something was published");
        run_ok(cas(&s).arg("verify"));
    }
}

/// Issue 12, 3: a process stopped by a signal while waiting for a lock held by another
/// process removes its own staging files and leaves the other process's lock alone.
#[test]
fn a_signal_never_removes_another_process_lock() {
    let s = Store::new();
    let key = "busy";
    let lock = {
        let mut p = s.entry_file(key).into_os_string();
        p.push(".lock");
        PathBuf::from(p)
    };
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    // A live holder on another host: only its lease could expire, in 60 s.
    let content = format!("otherhost 1 {now_ms} othernonce\n");
    fs::write(&lock, &content).unwrap();
    let mut child = cas(&s)
        .args(["key", "put", key, "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    child.stdin.take().unwrap().write_all(b"value").unwrap();
    // The object's staging file and the staged lock: it is waiting for the lock.
    wait_until("cas key put to wait for the lock", || {
        staging_files_of(&s.tmp(), pid).len() >= 2
    });
    kill(pid, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        content,
        "the other holder's lock was touched"
    );
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 4. Consistency

/// Issue 12, 4: one rule for a multi-input put that partly fails: the good inputs are stored
/// and printed in order, each bad one is named on stderr, exit 1 — whether the bad input is a
/// directory without -r or a missing file.
#[test]
fn multi_input_put_stores_the_good_inputs_and_names_the_bad() {
    let s = Store::new();
    let a = s.input("a", b"aaa");
    let b = s.input("b", b"bbb");
    let c = s.input("c", b"ccc");
    let dir = s.scratch.join("adir");
    fs::create_dir(&dir).unwrap();
    let missing = s.scratch.join("missing");
    let want = vec![blake3_hex(b"aaa"), blake3_hex(b"bbb"), blake3_hex(b"ccc")];
    for bad in [&dir, &missing] {
        let out = run(cas(&s).arg("put").arg(&a).arg(&b).arg(bad).arg(&c));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(lines, want, "with bad input {}", bad.display());
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
        for h in &want {
            assert!(s.object_path(h).is_file());
        }
        for p in s.object_hashes() {
            fs::remove_file(s.object_path(&p)).unwrap();
        }
    }
    // -r: same rule.
    let d1 = s.scratch.join("d1");
    fs::create_dir(&d1).unwrap();
    fs::write(d1.join("f"), "f").unwrap();
    let out = run(cas(&s).args(["put", "-r"]).arg(&d1).arg(&missing).arg(&a));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains(&missing.display().to_string()));
    // A ref is not moved when an input failed.
    let out = run(cas(&s).args(["put", "--ref", "r"]).arg(&a).arg(&missing));
    assert_eq!(out.status.code(), Some(1));
    let out = run(cas(&s).args(["ref", "get", "r"]));
    assert_eq!(out.status.code(), Some(1), "the ref was set");
}

/// Issue 12, 4: an invalid ref name on the command line is a usage error (exit 2) for every
/// command that takes one, and nothing is stored.
#[test]
fn invalid_ref_names_are_usage_errors() {
    let s = Store::new();
    let h = s.put(b"x");
    let a = s.input("a", b"not stored");
    for bad in ["../x", "a//b", ".hidden", "x.lock", ""] {
        let cmds: Vec<Vec<String>> = vec![
            vec!["ref".into(), "set".into(), bad.into(), h.clone()],
            vec!["ref".into(), "get".into(), bad.into()],
            vec!["ref".into(), "rm".into(), bad.into()],
            vec!["ref".into(), "log".into(), bad.into()],
            vec![
                "put".into(),
                "--ref".into(),
                bad.into(),
                a.display().to_string(),
            ],
        ];
        for args in cmds {
            let out = run(cas(&s).args(&args));
            assert_eq!(
                out.status.code(),
                Some(2),
                "cas {args:?}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains("invalid"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    assert!(!s.object_path(&blake3_hex(b"not stored")).exists());
}

/// Issue 12, 4: `gc --grace 0s` (and `gc --now`) free unreachable space in that same run.
#[test]
fn gc_with_zero_grace_frees_space_in_one_run() {
    let s = Store::new();
    let keep = s.put(&data(10_000, 1));
    run_ok(cas(&s).args(["ref", "set", "keep", &keep]));
    for flag in [&["--grace", "0s"][..], &["--now"][..]] {
        let garbage = s.put(&data(500_000, 2));
        let out = run_ok(cas(&s).arg("gc").args(flag).arg("--json"));
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["trashed"], 1, "{r}");
        assert_eq!(r["deleted"], 1, "{r}");
        assert_eq!(r["deleted_bytes"], 500_000, "{r}");
        assert_eq!(r["bytes_after"], 10_000, "{r}");
        assert!(!s.object_path(&garbage).exists());
        let in_trash = files_under(&s.root.join("trash"));
        assert!(in_trash.is_empty(), "{flag:?} left {in_trash:?}");
        let stored: u64 = files_under(&s.objects())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(stored, 10_000);
        assert!(s.object_path(&keep).is_file());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Output and arguments people can use

/// Issue 12, 5: every command that prints has --json, and a fact has one name everywhere:
/// the filesystem (`fs`) in stats and doctor, `hash`, `size`, `name`, `key`, `store`; verify
/// says `clean` and doctor `healthy`.
#[test]
fn json_everywhere_with_the_same_field_names() {
    let s = Store::uninit();
    let init = json(&run_ok(cas(&s).args(["init", "--json"])));
    assert_eq!(init["created"], true, "{init}");
    assert_eq!(init["store"].as_str(), s.root.to_str(), "{init}");
    let init = json(&run_ok(cas(&s).args(["init", "--json"])));
    assert_eq!(init["created"], false, "{init}");

    let input = s.input("a", b"aaa");
    let lines = json_lines(&run_ok(cas(&s).args(["put", "--json"]).arg(&input)));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["input"].as_str(), input.to_str());
    let h = lines[0]["hash"].as_str().unwrap().to_owned();
    assert_eq!(h, blake3_hex(b"aaa"));

    let stats = json(&run_ok(cas(&s).args(["stats", "--json"])));
    let doctor = json(&run_ok(cas(&s).args(["doctor", "--json"])));
    for field in [
        "fs_type",
        "network",
        "rename_noreplace",
        "magic",
        "mmap_reads",
    ] {
        assert!(
            !stats["fs"][field].is_null(),
            "stats lacks fs.{field}: {stats}"
        );
        assert_eq!(stats["fs"][field], doctor["fs"][field], "fs.{field}");
    }
    assert_eq!(stats["objects"], 1);
    assert_eq!(doctor["healthy"], true, "{doctor}");
    assert_eq!(doctor["store"], stats["store"]);
    let verify = json(&run_ok(cas(&s).args(["verify", "--json"])));
    assert_eq!(verify["clean"], true, "{verify}");
    assert_eq!(verify["store"], stats["store"]);
    let gc = json(&run_ok(cas(&s).args(["gc", "--json"])));
    assert_eq!(gc["store"], stats["store"]);

    let out = run(cas(&s).args(["has", "--json", &h, H]));
    assert_eq!(out.status.code(), Some(1), "one is missing");
    let has = json_lines(&text(&out.stdout));
    assert_eq!(has.len(), 2);
    assert_eq!(
        (has[0]["hash"].as_str(), &has[0]["present"]),
        (Some(h.as_str()), &true.into())
    );
    assert_eq!(has[1]["present"], false);
    let ls = json_lines(&run_ok(cas(&s).args(["ls", "--json"])));
    assert_eq!(
        (ls[0]["hash"].as_str(), &ls[0]["size"]),
        (Some(h.as_str()), &3.into())
    );

    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    let rget = json(&run_ok(cas(&s).args(["ref", "get", "r", "--json"])));
    assert_eq!(
        (rget["name"].as_str(), rget["hash"].as_str()),
        (Some("r"), Some(h.as_str()))
    );
    let rl = json_lines(&run_ok(cas(&s).args(["ref", "ls", "--json"])));
    assert_eq!(rl, vec![rget]);
    let log = json_lines(&run_ok(cas(&s).args(["ref", "log", "r", "--json"])));
    assert_eq!(log[0]["new"].as_str(), Some(h.as_str()));
    assert!(log[0]["time"].as_u64().unwrap() > 1_700_000_000);

    let out = run_with_stdin(cas(&s).args(["key", "put", "k", "--json"]), b"aaa");
    let kp = json(&text(&out.stdout));
    assert_eq!(
        (kp["key"].as_str(), kp["hash"].as_str()),
        (Some("k"), Some(h.as_str()))
    );
    let info = json(&run_ok(cas(&s).args(["key", "info", "k", "--json"])));
    assert_eq!(
        (info["key"].as_str(), info["hash"].as_str()),
        (Some("k"), Some(h.as_str()))
    );
    assert_eq!(info["size"], 3);
    assert!(info["time"].as_u64().unwrap() > 1_700_000_000);
    let kl = json_lines(&run_ok(cas(&s).args(["key", "ls", "--json"])));
    assert_eq!(kl, vec![info]);
}

/// Issue 23, JSON: the top-level fields of each command's `--json` lines, mirroring the table
/// in docs/json.md (row name, fields). The test checks both that the table is the document's
/// and that every command prints exactly these keys.
const JSON_FIELDS: &[(&str, &[&str])] = &[
    ("init", &["store", "created"]),
    ("put", &["input", "hash"]),
    ("put (failed input)", &["input", "error"]),
    ("put -r", &["input", "hash"]),
    ("has", &["hash", "present"]),
    ("rm", &["input", "hash", "removed"]),
    ("rm (failed input)", &["input", "error"]),
    ("ls", &["hash", "size", "time"]),
    ("ls -l", &["hash", "size", "time", "kind"]),
    ("show (blob)", &["hash", "kind", "size"]),
    (
        "show (tree file)",
        &[
            "path",
            "kind",
            "hash",
            "size",
            "executable",
            "mode",
            "mtime_ns",
        ],
    ),
    (
        "show (tree dir)",
        &["path", "kind", "hash", "mode", "mtime_ns"],
    ),
    ("show (tree symlink)", &["path", "kind", "target"]),
    (
        "verify",
        &[
            "store",
            "clean",
            "objects",
            "bytes",
            "corrupt",
            "dangling",
            "bad_files",
            "restored",
            "stale_staging",
            "outboards",
            "outboards_removed",
        ],
    ),
    (
        "gc",
        &[
            "store",
            "dry_run",
            "roots",
            "reachable",
            "objects",
            "bytes",
            "condemned",
            "trashed",
            "trashed_bytes",
            "deleted",
            "deleted_bytes",
            "kept_young",
            "restored",
            "evicted_entries",
            "evicted_objects",
            "evicted_bytes",
            "staging_removed",
            "outboards_removed",
            "quarantine_purged",
            "quarantine_purged_bytes",
            "quarantine_files",
            "quarantine_bytes",
            "bytes_after",
            "problems",
            "sweep_skipped",
            "budget_unmet",
        ],
    ),
    (
        "doctor",
        &[
            "store",
            "healthy",
            "fs",
            "fix",
            "fixed",
            "probes",
            "summary",
            "foreign_owner",
            "damaged",
            "dangling",
            "expired_locks",
            "permission_problems",
            "reachable_in_trash",
            "stale_staging",
        ],
    ),
    (
        "stats",
        &[
            "store",
            "objects",
            "bytes",
            "total_files",
            "total_bytes",
            "counted_bytes",
            "areas",
            "durability",
            "shared_group",
            "max_size",
            "fs",
            "unreadable",
            "upstream",
            "upstream_readonly",
        ],
    ),
    ("ref set", &["name", "hash", "old"]),
    ("ref get", &["name", "hash"]),
    ("ref rm", &["name", "old", "removed"]),
    ("ref ls", &["name", "hash"]),
    (
        "ref log",
        &["old", "new", "time", "host", "user", "message"],
    ),
    ("key put", &["key", "hash"]),
    ("key set", &["key", "hash", "old"]),
    (
        "key ensure",
        &["store", "key", "hash", "computed", "waited_ms", "damaged"],
    ),
    (
        "key ensure --tree",
        &["store", "key", "hash", "computed", "waited_ms", "damaged"],
    ),
    (
        "key info",
        &["key", "hash", "size", "time", "time_ms", "metadata"],
    ),
    ("key rm", &["key", "removed"]),
    (
        "key ls",
        &["key", "hash", "size", "time", "time_ms", "metadata"],
    ),
    (
        "push",
        &[
            "source",
            "dest",
            "complete",
            "objects",
            "objects_copied",
            "objects_skipped",
            "bytes_copied",
            "refs_set",
            "refs_unchanged",
            "keys_set",
            "keys_unchanged",
            "conflicts",
        ],
    ),
    (
        "pull",
        &[
            "source",
            "dest",
            "complete",
            "objects",
            "objects_copied",
            "objects_skipped",
            "bytes_copied",
            "refs_set",
            "refs_unchanged",
            "keys_set",
            "keys_unchanged",
            "conflicts",
        ],
    ),
];

/// The "Fields per command" table of docs/json.md: row name (backticks removed) and the
/// backticked fields of its last column.
fn json_md_table() -> Vec<(String, Vec<String>)> {
    let doc = fs::read_to_string(common::repo().join("docs/json.md")).expect("docs/json.md");
    let section = doc
        .split("## Fields per command")
        .nth(1)
        .expect("docs/json.md has a \"Fields per command\" section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let fields = cells[cells.len() - 1]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (cells[0].replace('`', ""), fields)
        })
        .collect()
}

/// The sorted keys of one JSON line.
fn keys(line: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = line
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// Issue 23, JSON everywhere: every command that changes something reports what it did
/// (`ref set`/`rm`, `key set`/`rm`, `rm` printed nothing), a multi-input command prints one
/// line per input with failures as `{input, error}` (`put --json a /missing b` printed two
/// lines), `ls` says `time` as everywhere else (it said `mtime`), `key ensure --tree --json`
/// prints the report, not a bare hash; and every command's keys are docs/json.md's.
#[test]
#[allow(clippy::too_many_lines)] // one walk through every row of the table, in order
fn json_fields_match_docs_json_md() {
    let doc = json_md_table();
    let ours: Vec<(String, Vec<String>)> = JSON_FIELDS
        .iter()
        .map(|(c, f)| ((*c).to_owned(), f.iter().map(|x| (*x).to_owned()).collect()))
        .collect();
    assert_eq!(doc, ours, "docs/json.md and this test's table differ");

    let s = Store::uninit();
    let dest = Store::new();
    let p = |x: &Path| x.display().to_string();
    let in_a = s.input("a", b"aaa");
    let in_b = s.input("b", b"bbb");
    let missing = s.scratch.join("missing");
    let tree_dir = s.scratch.join("tree");
    fs::create_dir_all(tree_dir.join("d")).unwrap();
    fs::write(tree_dir.join("d/f"), b"f").unwrap();
    std::os::unix::fs::symlink("d/f", tree_dir.join("l")).unwrap();
    let ha = blake3_hex(b"aaa");
    let hb = blake3_hex(b"bbb");

    // (table row, arguments, expected exit code, expected number of lines and which row
    // each line is).
    let mut seen = std::collections::BTreeSet::new();
    let mut check = |args: Vec<String>, code: i32, rows: &[&str]| -> Vec<serde_json::Value> {
        let out = run(cas(&s).arg("--json").args(&args));
        assert_eq!(
            out.status.code(),
            Some(code),
            "cas {args:?}: {}",
            text(&out.stderr)
        );
        let lines = json_lines(&text(&out.stdout));
        assert_eq!(lines.len(), rows.len(), "cas {args:?}: {lines:?}");
        for (line, row) in lines.iter().zip(rows) {
            let want = JSON_FIELDS
                .iter()
                .find(|(r, _)| r == row)
                .unwrap_or_else(|| panic!("no row {row}"))
                .1;
            let mut want: Vec<String> = want.iter().map(|x| (*x).to_owned()).collect();
            want.sort();
            assert_eq!(keys(line), want, "cas {args:?} ({row}): {line}");
            seen.insert((*row).to_owned());
        }
        lines
    };
    let v = |x: &[&str]| x.iter().map(|a| (*a).to_owned()).collect::<Vec<String>>();

    check(v(&["init"]), 0, &["init"]);
    let put = check(
        vec!["put".into(), p(&in_a), p(&missing), p(&in_b)],
        1,
        &["put", "put (failed input)", "put"],
    );
    assert_eq!(put[1]["input"].as_str(), missing.to_str());
    assert!(put[1]["error"].as_str().unwrap().contains("missing"));
    assert_eq!(
        (put[0]["hash"].as_str(), put[2]["hash"].as_str()),
        (Some(ha.as_str()), Some(hb.as_str()))
    );
    let t = check(
        vec!["put".into(), "-r".into(), p(&tree_dir), p(&missing)],
        1,
        &["put -r", "put (failed input)"],
    );
    let tree = t[0]["hash"].as_str().unwrap().to_owned();
    check(v(&["has", &ha]), 0, &["has"]);
    let ls = check(v(&["ls", "--prefix", &ha[..8]]), 0, &["ls"]);
    assert!(ls[0]["time"].as_u64().unwrap() > 1_700_000_000, "{}", ls[0]);
    // Issue 26: the kind costs a read of every object, so only `-l` asks for it.
    let ll = check(v(&["ls", "-l", "--prefix", &ha[..8]]), 0, &["ls -l"]);
    assert_eq!(
        (&ll[0]["kind"], &ll[0]["size"]),
        (&"blob".into(), &ls[0]["size"])
    );
    check(v(&["show", &ha]), 0, &["show (blob)"]);
    check(
        v(&["show", &tree]),
        0,
        &["show (tree dir)", "show (tree file)", "show (tree symlink)"],
    );
    check(v(&["verify"]), 0, &["verify"]);
    check(v(&["gc"]), 0, &["gc"]);
    check(v(&["doctor"]), 0, &["doctor"]);
    check(v(&["stats"]), 0, &["stats"]);

    let set = check(v(&["ref", "set", "r", &ha]), 0, &["ref set"]);
    assert_eq!(set[0]["old"], serde_json::Value::Null);
    let set = check(v(&["ref", "set", "r", &hb]), 0, &["ref set"]);
    assert_eq!(
        (
            set[0]["name"].as_str(),
            set[0]["hash"].as_str(),
            set[0]["old"].as_str()
        ),
        (Some("r"), Some(hb.as_str()), Some(ha.as_str()))
    );
    check(v(&["ref", "get", "r"]), 0, &["ref get"]);
    check(v(&["ref", "ls"]), 0, &["ref ls"]);
    check(v(&["ref", "log", "r"]), 0, &["ref log", "ref log"]);
    check(vec!["push".into(), p(&dest.root), "r".into()], 0, &["push"]);
    check(vec!["pull".into(), p(&dest.root), "r".into()], 0, &["pull"]);
    let rm = check(v(&["ref", "rm", "r"]), 0, &["ref rm"]);
    assert_eq!(
        (rm[0]["old"].as_str(), &rm[0]["removed"]),
        (Some(hb.as_str()), &true.into())
    );
    assert_eq!(
        run(cas(&s).args(["ref", "get", "r"])).status.code(),
        Some(1)
    );

    check(
        vec!["key".into(), "put".into(), "k".into(), p(&in_a)],
        0,
        &["key put"],
    );
    let ks = check(v(&["key", "set", "k", &hb]), 0, &["key set"]);
    assert_eq!(
        (ks[0]["hash"].as_str(), ks[0]["old"].as_str()),
        (Some(hb.as_str()), Some(ha.as_str()))
    );
    check(v(&["key", "info", "k"]), 0, &["key info"]);
    check(v(&["key", "ls"]), 0, &["key ls"]);
    let kr = check(v(&["key", "rm", "k"]), 0, &["key rm"]);
    assert_eq!(kr[0]["removed"], true);
    assert_eq!(
        run(cas(&s).args(["key", "info", "k"])).status.code(),
        Some(1)
    );
    let ke = check(
        v(&["key", "ensure", "ke", "--", "sh", "-c", "echo ensured"]),
        0,
        &["key ensure"],
    );
    assert_eq!(ke[0]["computed"], true);
    let kt = check(
        v(&[
            "key",
            "ensure",
            "--tree",
            "kt",
            "--",
            "sh",
            "-c",
            "echo x > \"$CAS_OUT/f\"",
        ]),
        0,
        &["key ensure --tree"],
    );
    assert_eq!(kt[0]["key"], "kt", "not the report but {}", kt[0]);

    let rm = check(v(&["rm", &hb, &hb]), 1, &["rm", "rm (failed input)"]);
    assert_eq!(rm[0]["removed"], true);
    assert_eq!(rm[1]["input"].as_str(), Some(hb.as_str()));
    assert!(
        rm[1]["error"].as_str().unwrap().contains("not found"),
        "{}",
        rm[1]
    );

    let all: std::collections::BTreeSet<String> =
        JSON_FIELDS.iter().map(|(r, _)| (*r).to_owned()).collect();
    assert_eq!(seen, all, "rows of docs/json.md never checked");
}

/// Issue 12, 5: `ls` is sorted and `--prefix` selects; a bad prefix is a usage error.
#[test]
fn ls_is_sorted_and_takes_a_prefix() {
    let s = Store::new();
    let mut all: Vec<String> = (0..40).map(|i| s.put(&data(100, i))).collect();
    all.sort();
    let ls: Vec<String> = run_ok(cas(&s).arg("ls"))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ls, all);
    let p = &all[7][..1];
    let want: Vec<&String> = all.iter().filter(|h| h.starts_with(p)).collect();
    let got = run_ok(cas(&s).args(["ls", "--prefix", p]));
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    let out = run(cas(&s).args(["ls", "--prefix", "XY"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Issue 12, 5: sizes like 1.5G and durations like 1h30m or 1w are accepted; a malformed one
/// is a usage error. Human output shows times as dates.
#[test]
fn sizes_durations_and_times_as_people_write_them() {
    let s = Store::uninit();
    run_ok(cas(&s).args(["init", "--max-size", "1.5G"]));
    let v = json(&run_ok(cas(&s).args(["stats", "--json"])));
    assert_eq!(v["max_size"], 1_610_612_736u64, "{v}");
    for args in [
        &["gc", "--grace", "1h30m", "--max-size", "0.5T"][..],
        &["gc", "--grace", "1w", "--lock-timeout", "1.5m"][..],
        &["gc", "--grace", "2d12h", "--stale-age", "1w"][..],
    ] {
        run_ok(cas(&s).args(args));
    }
    for args in [
        &["gc", "--grace", "1h30"][..],
        &["gc", "--max-size", "1.5"][..],
    ] {
        let out = run(cas(&s).args(args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "cas {args:?}: {}",
            text(&out.stderr)
        );
    }
    let h = s.put(b"x");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    let log = run_ok(cas(&s).args(["ref", "log", "r"]));
    assert!(
        log.contains(" UTC "),
        "ref log time is not human-readable: {log}"
    );
    run_with_stdin(cas(&s).args(["key", "put", "k"]), b"x");
    let info = run_ok(cas(&s).args(["key", "info", "k"]));
    assert!(
        info.contains(" UTC"),
        "key info time is not human-readable: {info}"
    );
}

/// Issue 12, 5: every subcommand's help has an example and lists the global options under
/// their own heading; `cas completions SHELL` prints a completion script.
#[test]
fn help_has_examples_and_completions_work() {
    let s = Store::uninit();
    let subcommands: &[&[&str]] = &[
        &["init"],
        &["put"],
        &["get"],
        &["verify"],
        &["gc"],
        &["doctor"],
        &["has"],
        &["rm"],
        &["ls"],
        &["stats"],
        &["completions"],
        &["ref"],
        &["ref", "set"],
        &["ref", "get"],
        &["ref", "rm"],
        &["ref", "ls"],
        &["ref", "log"],
        &["key"],
        &["key", "put"],
        &["key", "get"],
        &["key", "info"],
        &["key", "rm"],
        &["key", "ls"],
    ];
    for sub in subcommands {
        let out = run_ok(cas(&s).args(*sub).arg("--help"));
        assert!(
            out.contains("Examples:\n  cas "),
            "cas {sub:?} --help has no example:\n{out}"
        );
        if sub.len() == 2 || !["ref", "key"].contains(&sub[0]) {
            assert!(
                out.contains("Global options:"),
                "cas {sub:?} --help:\n{out}"
            );
        }
    }
    for (shell, marker) in [
        ("bash", "_cas()"),
        ("zsh", "#compdef cas"),
        ("fish", "complete -c cas"),
    ] {
        let out = run_ok(cas(&s).args(["completions", shell]));
        assert!(out.contains(marker), "{shell} completions lack {marker:?}");
        assert!(
            out.contains("completions"),
            "{shell} completions do not know the subcommands"
        );
    }
    assert!(!s.root.exists(), "help or completions created the store");
}

/// Issue 12, 1: racing `cas init` on an existing empty directory all succeed on one store
/// (each tolerates the layout the others are making), and racing creators of a missing path
/// leave no staging directory beside it.
#[test]
fn racing_inits_agree_on_one_store() {
    let base = tempfile::tempdir().unwrap();
    let empty = base.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let missing = base.path().join("missing");
    for dir in [&empty, &missing] {
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new(cas_bin())
                    .arg("init")
                    .arg(dir)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                dir.display(),
                text(&out.stderr)
            );
        }
        assert!(dir.join("FORMAT").is_file());
        run_ok(cas_at(dir).arg("verify"));
    }
    let mut names: Vec<_> = fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["empty", "missing"], "left beside the stores");
}

// ---------------------------------------------------------------------------------------------
// 6. Progress on a terminal, never in a pipe

/// Runs `cmd` with stderr on a new pseudo-terminal and stdout on a pipe (or on the terminal
/// too, `stdout_too`); returns what the terminal received, stdout, and the exit code.
fn run_on_pty(cmd: &mut Command, stdout_too: bool) -> (String, Vec<u8>, Option<i32>) {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let mut master = fs::File::from(master);
    // Drain the terminal while the command runs (its buffer is small); ends with EIO once the
    // last descriptor of the slave side is closed.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let stdout = if stdout_too {
        Stdio::from(slave.try_clone().unwrap())
    } else {
        Stdio::piped()
    };
    let child = cmd
        .stderr(Stdio::from(slave))
        .stdout(stdout)
        .spawn()
        .expect("spawn cas");
    // `cmd` still holds the slave until it is dropped; the spawned child has its own copy.
    let out = child.wait_with_output().unwrap();
    let mut cmd_slot = Command::new("true");
    std::mem::swap(cmd, &mut cmd_slot);
    drop(cmd_slot);
    let term = reader.join().unwrap();
    (text(&term), out.stdout, out.status.code())
}

/// `cas get H` with the object's bytes going to the terminal itself draws no bar across
/// them (while the same get into a pipe does: the test above).
#[test]
fn no_bar_across_an_object_printed_on_the_terminal() {
    let s = Store::new();
    let big = data(8 << 20, 6);
    let h = run_ok(cas(&s).arg("put").arg(s.input("big", &big)))
        .trim()
        .to_owned();
    let (term, _, code) = run_on_pty(cas(&s).args(["get", &h]), true);
    assert_eq!(code, Some(0));
    assert!(!term.contains("get ["), "a bar was drawn over the output");
    assert!(
        term.len() >= big.len(),
        "the object did not reach the terminal"
    );
}

/// A progress case: arguments, what the bar is called, a total the bar must show, stdout.
type Case<'a> = (Vec<String>, &'a str, Option<&'a str>, Option<Vec<u8>>);

/// A directory `src` of three 3 MiB files (`sub/f0`…`sub/f2`, seeds 10–12), stored: its path
/// and tree hash.
fn three_file_tree(s: &Store) -> (PathBuf, String) {
    let src = s.base().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..3u8 {
        let bytes = data(3 << 20, u64::from(i) + 10);
        fs::write(src.join(format!("sub/f{i}")), bytes).unwrap();
    }
    let tree = run_ok(cas(s).args(["put", "-r"]).arg(&src));
    (src, tree.trim().to_owned())
}

/// Issue 12, progress: on a terminal, `put`, `put -r`, `get` (to a file and to a pipe),
/// `get -r`, `verify` and `gc` draw a bar on stderr (bytes with the object's or tree's total
/// where the command knows it); with stderr not a terminal they print nothing there; stdout
/// carries only the results either way.
#[test]
fn progress_bars_on_a_terminal_and_never_in_a_pipe() {
    let s = Store::new();
    let big = data(24 << 20, 5);
    let big_in = s.input("big", &big);
    let h = run_ok(cas(&s).arg("put").arg(&big_in)).trim().to_owned();
    let (src, tree) = three_file_tree(&s);
    let out = s.base().join("out");
    fs::create_dir(&out).unwrap();
    let p = |x: &Path| x.display().to_string();
    // (arguments, what the bar is called, a total the bar must show, expected stdout)
    let cases: Vec<Case> = vec![
        (
            vec!["put".into(), p(&big_in)],
            "put [",
            Some("24.00 MiB"),
            Some(format!("{h}\n").into_bytes()),
        ),
        (
            vec!["put".into(), "-r".into(), "--no-cache".into(), p(&src)],
            "put -r",
            None,
            Some(format!("{tree}\n").into_bytes()),
        ),
        (
            vec!["get".into(), h.clone(), "-o".into(), p(&out.join("o"))],
            "get [",
            Some("24.00 MiB"),
            Some(Vec::new()),
        ),
        (
            vec!["get".into(), h.clone()],
            "get",
            Some("24.00 MiB"),
            Some(big.clone()),
        ),
        (
            vec![
                "get".into(),
                "-r".into(),
                tree.clone(),
                "-o".into(),
                p(&out.join("t")),
            ],
            "get -r [",
            Some("9.00 MiB"),
            Some(Vec::new()),
        ),
        (vec!["verify".into()], "verify", None, None),
        (vec!["gc".into()], "gc", None, None),
    ];
    for (args, bar, total, stdout) in &cases {
        let _ = fs::remove_file(out.join("o"));
        let _ = fs::remove_dir_all(out.join("t"));
        let (term, got, code) = run_on_pty(cas(&s).args(args), false);
        assert_eq!(code, Some(0), "cas {args:?}: {term}");
        assert!(
            term.contains(bar),
            "cas {args:?} drew no {bar:?} bar: {term:?}"
        );
        if let Some(t) = total {
            assert!(term.contains(t), "cas {args:?}: no total {t}: {term:?}");
        }
        if let Some(want) = stdout {
            assert!(
                got == *want,
                "cas {args:?}: stdout differs ({} bytes)",
                got.len()
            );
        }
        // The same command with stderr on a pipe: not one byte of progress.
        let _ = fs::remove_file(out.join("o"));
        let _ = fs::remove_dir_all(out.join("t"));
        let piped = run(cas(&s).args(args).stderr(Stdio::piped()));
        assert_eq!(piped.status.code(), Some(0), "cas {args:?}");
        assert!(
            piped.stderr.is_empty(),
            "cas {args:?} wrote to a piped stderr: {:?}",
            text(&piped.stderr)
        );
        if args[0] == "get" && args.len() > 2 {
            let (file, want) = if args[1] == "-r" {
                (out.join("t/sub/f1"), data(3 << 20, 11))
            } else {
                (out.join("o"), big.clone())
            };
            assert!(
                fs::read(&file).unwrap() == want,
                "cas {args:?}: wrong bytes"
            );
        }
    }
}

/// A reader that went away (`cas doctor | head -1`) is not an error: every report ends
/// quietly with status 0 instead of panicking ("failed printing to stdout: Broken pipe").
/// The pipe's read end is closed before `cas` starts, so every write fails with EPIPE.
#[test]
fn a_closed_stdout_pipe_ends_reports_quietly() {
    let s = Store::new();
    let h = s.put(b"broken pipe");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    run_ok(cas(&s).args(["key", "put", "k"]).arg(s.input("k", b"v")));
    for args in [
        &["doctor"][..],
        &["stats"],
        &["ls"],
        &["ref", "ls"],
        &["key", "ls"],
        &["gc", "--dry-run"],
        &["verify"],
        &["show", &h],
        &["--json", "stats"],
    ] {
        let (r, w) = rustix::pipe::pipe().unwrap();
        drop(r);
        let out = cas(&s)
            .args(args)
            .stdout(std::process::Stdio::from(w))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "cas {args:?} into a closed pipe: {} {err}",
            out.status
        );
    }
}

/// Issue 26: `cas X | head -1` for every listing command, many times. The reader closes the
/// pipe after the first line, while `cas` is usually still writing (the outputs are larger
/// than a pipe's buffer): `cas key info KEY | head -1` panicked with "failed printing to
/// stdout: Broken pipe" in 1 of 6 runs. No run may panic or fail.
#[test]
fn every_listing_command_into_head_1_never_panics() {
    use std::io::BufRead;
    let s = Store::new();
    let dir = s.base().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..2000 {
        fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&dir))
        .trim()
        .to_owned();
    run_ok(cas(&s).args(["ref", "set", "r", &tree]));
    let h = s.put(b"other");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    run_ok(cas(&s).args(["key", "put", "k"]).arg(s.input("k", b"v")));
    // A reflog of 4000 updates: its two lines, repeated.
    let log = s.objects().parent().unwrap().join("logs/refs/r");
    let two = fs::read(&log).unwrap();
    assert!(!two.is_empty(), "no reflog at {}", log.display());
    fs::write(&log, two.repeat(2000)).unwrap();
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["ls", "-l"],
        &["stats"],
        &["--json", "stats"],
        &["ref", "ls"],
        &["--json", "ref", "ls"],
        &["ref", "log", "r"],
        &["ref", "log", "-n", "3000", "r"],
        &["--json", "ref", "log", "r"],
        &["key", "ls"],
        &["key", "info", "k"],
        &["--json", "key", "info", "k"],
        &["show", &tree],
        &["--json", "show", &tree],
        &["verify"],
        &["doctor"],
        &["gc", "--dry-run", "--grace", "0s"],
    ] {
        for run in 0..8 {
            let mut child = cas(&s)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut first = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            // The reader (and with it the pipe's read end) is gone: `head -1` exited.
            let out = child.wait_with_output().unwrap();
            let err = text(&out.stderr);
            assert!(
                out.status.success() && !err.contains("panicked"),
                "cas {args:?} | head -1 (run {run}): {} {err}",
                out.status
            );
            assert!(!first.is_empty(), "cas {args:?} printed nothing");
        }
    }
}

/// Issue 23, progress: verify's bar is called `verify` once (it drew `verify verify`), and
/// gc's sweep counts objects without a total (it drew `gc sweep [=====] 4096/1`: the mark's
/// total of one root, the bar full from the start). 1500 objects: the sweep reports at 1024.
#[test]
fn verify_and_gc_bars_have_right_labels_and_totals() {
    let s = Store::new();
    let mut put = cas(&s);
    put.arg("put");
    for i in 0..1500u32 {
        put.arg(s.input(&format!("f{i}"), i.to_string().as_bytes()));
    }
    run_ok(&mut put);
    let h = s.put(b"rooted");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));

    let (term, _, code) = run_on_pty(cas(&s).arg("verify"), false);
    assert_eq!(code, Some(0), "{term}");
    assert!(!term.contains("verify verify"), "label twice: {term:?}");
    assert!(
        term.contains("verify [") && term.contains("1,501/1,501"),
        "no verify bar with the object count as total: {term:?}"
    );

    let (term, _, code) = run_on_pty(cas(&s).arg("gc"), false);
    assert_eq!(code, Some(0), "{term}");
    let sweep: Vec<&str> = term
        .split(['\r', '\n'])
        .filter(|l| l.contains("gc sweep"))
        .collect();
    assert!(!sweep.is_empty(), "no sweep progress: {term:?}");
    for line in &sweep {
        assert!(
            !line.contains('/') || line.trim_end().ends_with("/s"),
            "the sweep shows a total it does not know: {line:?}"
        );
        assert!(!line.contains("[="), "the sweep drew a bar: {line:?}");
    }
    assert!(
        sweep.iter().any(|l| l.contains(" 1,024 ")),
        "the sweep's count: {sweep:?}"
    );
}

/// Issue 23, progress: Ctrl-C clears the bar (it stayed on the terminal after the shell's
/// prompt came back). A restore is held by the test hook with its bar drawn; after SIGINT the
/// last thing the terminal received after the bar is the sequence erasing its line.
#[test]
fn ctrl_c_clears_the_progress_bar() {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    use std::io::Read;
    use std::sync::mpsc;
    let s = Store::new();
    // One file: its restore is one stream of reports, so the held report holds it all and
    // the restore cannot finish (and clear its bar itself) before the signal.
    let src = s.base().join("one");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), data(9 << 20, 3)).unwrap();
    let tree = run_ok(cas(&s).args(["put", "-r"]).arg(&src))
        .trim()
        .to_owned();
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let mut master = fs::File::from(master);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut child = cas(&s)
        .args(["get", "-r", &tree, "-o"])
        .arg(s.base().join("out"))
        .env("CAS_TEST_RESTORE_PAUSE_AT", (4u64 << 20).to_string())
        .stderr(Stdio::from(slave))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut term = Vec::new();
    while !text(&term).contains("cas-test: restore paused") {
        let chunk = rx
            .recv_timeout(std::time::Duration::from_mins(1))
            .unwrap_or_else(|_| panic!("the restore never paused: {:?}", text(&term)));
        term.extend(chunk);
    }
    kill(child.id(), "INT");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    drop(child);
    reader.join().unwrap();
    term.extend(rx.try_iter().flatten());
    let term = text(&term);
    let after_pause = &term[term.find("cas-test: restore paused").unwrap()..];
    let drawn = after_pause
        .rfind("get -r [")
        .unwrap_or_else(|| panic!("no bar drawn around the pause: {term:?}"));
    assert!(
        after_pause[drawn..].contains("\x1b[2K"),
        "the bar was left on the terminal: {:?}",
        &after_pause[drawn..]
    );
}

/// The subcommand pages a man page lists in its SUBCOMMANDS section (`cas\-ref\-set(1)` →
/// `["ref", "set"]`), clap's `help` aside.
fn man_subpages(page: &str) -> Vec<Vec<String>> {
    let Some(subs) = page.split(".SH SUBCOMMANDS").nth(1) else {
        return Vec::new();
    };
    let subs = subs.split("\n.SH ").next().unwrap();
    subs.lines()
        .filter_map(|l| l.strip_suffix("(1)"))
        .map(|n| {
            n.split("\\-")
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|w| w.last().is_some_and(|x| x != "help"))
        .collect()
}

/// Issue 23, man pages: `cas man` has a real NAME line (it said "cas - The `cas` command
/// line"), and every subcommand it lists has its own page (`cas man put` was a usage error)
/// with NAME, SYNOPSIS (the full command), OPTIONS, EXIT STATUS, ENVIRONMENT (`CAS_STORE`,
/// `XDG_CACHE_HOME`, `CAS_UPSTREAM`), FILES (the store layout) and EXAMPLES of that command.
#[test]
fn man_pages_for_every_subcommand_have_the_sections() {
    let s = Store::uninit();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = Vec::new();
    while let Some(path) = todo.pop() {
        let page = run_ok(cas(&s).arg("man").args(&path));
        let name = std::iter::once("cas")
            .chain(path.iter().map(String::as_str))
            .collect::<Vec<_>>();
        let what = name.join(" ");
        let name_line = page
            .split(".SH NAME\n")
            .nth(1)
            .and_then(|r| r.lines().next())
            .unwrap_or_else(|| panic!("{what}: no NAME section"));
        assert!(
            name_line.starts_with(&format!("{} \\- ", name.join("\\-")))
                && !name_line.contains("command line"),
            "{what}: NAME line {name_line:?}"
        );
        if path.is_empty() {
            assert!(name_line.contains("content\\-addressed"), "{name_line}");
        }
        for heading in [
            ".SH SYNOPSIS",
            ".SH DESCRIPTION",
            ".SH OPTIONS",
            ".SH \"EXIT STATUS\"",
            ".SH \"ENVIRONMENT\"",
            ".SH \"FILES\"",
            ".SH EXAMPLES",
        ] {
            assert!(page.contains(heading), "{what}: no {heading}");
        }
        assert!(
            page.contains(&format!("\\fB{what}\\fR")),
            "{what}: the synopsis does not name the command"
        );
        let section = |h: &str| {
            page.split(h)
                .nth(1)
                .unwrap()
                .split("\n.SH ")
                .next()
                .unwrap()
        };
        let env = section(".SH \"ENVIRONMENT\"");
        for var in ["CAS_STORE", "XDG_CACHE_HOME", "CAS_UPSTREAM"] {
            assert!(env.contains(var), "{what}: ENVIRONMENT lacks {var}");
        }
        assert!(
            section(".SH \"FILES\"").contains("objects/ab/cdef"),
            "{what}: FILES lacks the store layout"
        );
        assert!(
            section(".SH \"EXIT STATUS\"").contains("\\fB2\\fR"),
            "{what}: EXIT STATUS lacks the usage error"
        );
        let examples = section(".SH EXAMPLES");
        assert!(
            examples
                .lines()
                .any(|l| l == what || l.starts_with(&format!("{what} "))),
            "{what}: no example of it: {examples}"
        );
        todo.extend(man_subpages(&page));
        seen.push(what);
    }
    for must in [
        "cas put",
        "cas push",
        "cas ref set",
        "cas key ensure",
        "cas man",
    ] {
        assert!(
            seen.iter().any(|w| w == must),
            "no page for {must}: {seen:?}"
        );
    }
    assert!(seen.len() > 25, "{seen:?}");
    let out = run(cas(&s).args(["man", "nosuch"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nosuch"));
    assert!(!s.root.exists(), "cas man created the store");
}

/// Issue 23: `push --help` and `pull --help` said `<REFS|--key <KEY>|--all> <DEST>`, the names
/// before the store, while the command takes the store first (`cas push DEST NAME…`). Every
/// usage line — in the help, and under a usage error — now names the store first, and the
/// order it shows works.
#[test]
fn push_and_pull_usage_put_the_store_first() {
    let s = Store::new();
    let other = Store::new();
    let h = s.put(b"usage order");
    run_ok(cas(&s).args(["ref", "set", "r", &h]));
    for (cmd, store) in [("push", "<DEST>"), ("pull", "<SRC>")] {
        let help = run_ok(cas(&s).args([cmd, "--help"]));
        let error = text(&run(cas(&s).arg(cmd).arg(&other.root)).stderr);
        for (what, out) in [("--help", &help), ("usage error", &error)] {
            let usage: Vec<&str> = out
                .split("Usage: ")
                .nth(1)
                .unwrap_or_else(|| panic!("{cmd} {what}: no usage: {out}"))
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            assert_eq!(usage.len(), 3, "{cmd} {what}: {usage:?}");
            for (line, names) in usage.iter().zip(["<REF>...", "--key <KEY>...", "--all"]) {
                let want = format!("cas {cmd} [OPTIONS] {store} {names}");
                assert_eq!(*line, want, "{cmd} {what}");
            }
        }
    }
    // The order the usage shows is the order that works.
    let out = run_ok(cas(&s).arg("push").arg(&other.root).arg("r"));
    assert!(out.contains("refs set: 1"), "{out}");
    run_ok(cas(&other).args(["ref", "rm", "r"]));
    run_ok(cas(&other).arg("pull").arg(&s.root).arg("r"));
    assert_eq!(run_ok(cas(&other).args(["ref", "get", "r"])).trim(), h);
}

// Issue 23: trees keep permission bits and, when asked, mtimes.

/// `cas ARGS` run by `sh` under `umask`, with `--store`, output captured.
fn cas_umask(s: &Store, umask: &str, args: &[&str]) -> std::process::Output {
    let script = format!("umask {umask}; exec \"$@\"");
    run(cas_through(&["sh", "-c", &script, "sh"], &cas_bin(), &s.root).args(args))
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn out_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {}\nstderr: {}",
        o.status,
        text(&o.stderr)
    );
    text(&o.stdout).trim().to_owned()
}

/// Before: a 0600 file came back 0644 and a 0700 directory 0755 (only the executable bit was
/// kept). Now the bits are in the tree: restored masked by the umask, exactly with
/// `--no-umask`; setuid, setgid and sticky never kept; `show` prints them.
#[test]
fn modes_round_trip_masked_by_the_umask() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir_all(src.join("private/open")).unwrap();
    for (p, mode) in [
        ("key", 0o600),
        ("run", 0o750),
        ("private/notes", 0o640),
        ("setuid", 0o4755),
    ] {
        fs::write(src.join(p), p).unwrap();
        chmod(&src.join(p), mode);
    }
    chmod(&src.join("private/open"), 0o777);
    chmod(&src.join("private"), 0o700);
    let t = out_ok(&cas_umask(&s, "022", &["put", "-r", src.to_str().unwrap()]));
    let shown = out_ok(&cas_umask(&s, "022", &["show", &t]));
    assert!(shown.contains("100600 blob"), "{shown}");
    assert!(shown.contains("040700 tree"), "{shown}");
    assert!(shown.contains("100755 blob"), "setuid dropped: {shown}");

    let out = s.scratch.join("out022");
    out_ok(&cas_umask(
        &s,
        "022",
        &["get", "-r", &t, "-o", out.to_str().unwrap()],
    ));
    for (p, mode) in [
        ("key", 0o600),
        ("run", 0o750),
        ("private", 0o700),
        ("private/notes", 0o640),
        ("private/open", 0o755), // 0777 masked by 022
        ("setuid", 0o755),
    ] {
        assert_eq!(mode_of(&out.join(p)), mode, "{p} under umask 022");
    }
    let out = s.scratch.join("out077");
    out_ok(&cas_umask(
        &s,
        "077",
        &["get", "-r", &t, "-o", out.to_str().unwrap()],
    ));
    assert_eq!(mode_of(&out.join("run")), 0o700);
    assert_eq!(mode_of(&out.join("private/notes")), 0o600);
    let out = s.scratch.join("exact");
    let args = ["get", "-r", &t, "-o", out.to_str().unwrap(), "--no-umask"];
    out_ok(&cas_umask(&s, "077", &args));
    assert_eq!(mode_of(&out.join("run")), 0o750);
    assert_eq!(mode_of(&out.join("private/open")), 0o777);
    assert_eq!(mode_of(&out.join("setuid")), 0o755, "never setuid");
    // Restoring onto a copy that holds the tree is a success; one whose mode differs is not.
    out_ok(&cas_umask(&s, "077", &args));
    chmod(&out.join("key"), 0o644);
    let o = cas_umask(&s, "077", &args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
}

/// A chmod alone changes the tree, with the stat cache as without it.
#[test]
fn a_chmod_changes_the_tree_through_the_stat_cache() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"f").unwrap();
    chmod(&src.join("f"), 0o644);
    let put = |extra: &[&str]| {
        let mut a = vec!["put", "-r", src.to_str().unwrap()];
        a.extend_from_slice(extra);
        out_ok(&cas_umask(&s, "022", &a))
    };
    let before = put(&[]);
    assert_eq!(put(&[]), before);
    chmod(&src.join("f"), 0o600);
    let after = put(&[]);
    assert_ne!(after, before, "a chmod must change the tree");
    assert_eq!(put(&["--no-cache"]), after);
    chmod(&src, 0o700);
    assert_eq!(put(&[]), after, "the root's own mode is not in its tree");
}

/// Mtimes are kept only with `put -r --keep-mtime` (then they are part of the tree's hash),
/// restored to the nanosecond by default, and left out with `get -r --no-mtime`.
#[test]
fn mtimes_round_trip_with_keep_mtime() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"f").unwrap();
    fs::write(src.join("g"), b"g").unwrap();
    let t1 = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
    let t2 = std::time::UNIX_EPOCH + std::time::Duration::new(1_100_000_000, 5);
    let put = |extra: &[&str]| {
        let mut a = vec!["put", "-r", src.to_str().unwrap()];
        a.extend_from_slice(extra);
        out_ok(&cas_umask(&s, "022", &a))
    };
    set_mtime(&src.join("d/f"), t1);
    set_mtime(&src.join("d"), t2);
    let plain = put(&[]);
    let kept = put(&["--keep-mtime"]);
    assert_ne!(plain, kept);
    set_mtime(&src.join("g"), t2);
    assert_eq!(
        put(&[]),
        plain,
        "without --keep-mtime a touch changes nothing"
    );
    let kept = put(&["--keep-mtime"]);

    let out = s.scratch.join("out");
    out_ok(&cas_umask(
        &s,
        "022",
        &["get", "-r", &kept, "-o", out.to_str().unwrap()],
    ));
    let m = |p: &str| fs::metadata(out.join(p)).unwrap().modified().unwrap();
    assert_eq!(m("d/f"), t1);
    assert_eq!(m("d"), t2);
    assert_eq!(m("g"), t2);
    let json = out_ok(&cas_umask(&s, "022", &["show", "--json", &kept]));
    assert!(json.contains("\"mtime_ns\":1000000000123456789"), "{json}");

    let out = s.scratch.join("touched");
    let args = [
        "get",
        "-r",
        &kept,
        "-o",
        out.to_str().unwrap(),
        "--no-mtime",
    ];
    out_ok(&cas_umask(&s, "022", &args));
    let age = fs::metadata(out.join("d/f")).unwrap().modified().unwrap();
    assert!(age > t2, "--no-mtime restored the recorded mtime");
    // The plain tree has no mtimes: its restore has the time of the restore.
    let out = s.scratch.join("plain");
    out_ok(&cas_umask(
        &s,
        "022",
        &["get", "-r", &plain, "-o", out.to_str().unwrap()],
    ));
    assert!(fs::metadata(out.join("d/f")).unwrap().modified().unwrap() > t2);
}

/// Before: one FIFO failed the whole `put -r` ("cannot store this file type"). It still
/// does, naming it and the flag; with `--skip-special` it is left out with one warning
/// line and a count.
#[test]
fn special_files_are_skipped_with_skip_special() {
    let s = Store::new();
    let src = s.scratch.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), b"f").unwrap();
    for p in ["fifo", "sub/fifo2"] {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join(p),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }
    let o = cas_umask(&s, "022", &["put", "-r", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("fifo") && err.contains("--skip-special"),
        "{err}"
    );
    assert!(err.contains(&src.display().to_string()), "{err}");

    let args = ["put", "-r", src.to_str().unwrap(), "--skip-special"];
    let o = cas_umask(&s, "022", &args);
    let t = out_ok(&o);
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("skipped 2 special file"), "{err}");
    let shown = out_ok(&cas_umask(&s, "022", &["show", &t]));
    assert!(!shown.contains("fifo"), "{shown}");
    assert!(shown.contains("sub/f"), "{shown}");
}

/// A version 1 tree (written as every cas before issue 23 wrote it) still restores, with the
/// old rule: 0777 for executables and directories, 0666 for files, masked by the umask.
#[test]
fn a_version_1_tree_still_restores() {
    let s = Store::new();
    let f = s.put(b"plain");
    let x = s.put(b"#!/bin/sh\n");
    let file = |name: &str, hex: &str, size, executable| {
        cas::TreeEntry::new(
            name.as_bytes().to_vec(),
            cas::TreeEntryKind::File {
                executable,
                size,
                hash: hex.parse().unwrap(),
            },
        )
    };
    let sub = cas::Tree {
        entries: vec![file("x", &x, 10, true)],
    }
    .encode();
    assert_eq!(sub[8..12], 1u32.to_le_bytes(), "not version 1");
    let sub = s.put(&sub);
    let root = cas::Tree {
        entries: vec![
            file("f", &f, 5, false),
            cas::TreeEntry::new(
                b"d".to_vec(),
                cas::TreeEntryKind::Dir {
                    hash: sub.parse().unwrap(),
                },
            ),
        ],
    }
    .encode();
    assert_eq!(root[8..12], 1u32.to_le_bytes());
    let root = s.put(&root);
    let out = s.scratch.join("out");
    out_ok(&cas_umask(
        &s,
        "027",
        &["get", "-r", &root, "-o", out.to_str().unwrap()],
    ));
    assert_eq!(fs::read(out.join("f")).unwrap(), b"plain");
    assert_eq!(mode_of(&out.join("f")), 0o640);
    assert_eq!(mode_of(&out.join("d")), 0o750);
    assert_eq!(mode_of(&out.join("d/x")), 0o750);
    let shown = out_ok(&cas_umask(&s, "022", &["show", &root]));
    assert!(
        shown.contains("100755 blob") && shown.contains("040000 tree"),
        "{shown}"
    );
}

/// Issue 23's small things, each as the issue found it (before → now).
#[test]
fn the_small_things_of_issue_23() {
    let s = Store::new();
    let h = s.put(b"small things");
    let err_of = |o: &std::process::Output| text(&o.stderr);

    // has and rm took only full hashes (get and show took prefixes); uppercase was refused.
    run_ok(cas(&s).args(["has", &h[..10]]));
    run_ok(cas(&s).args(["has", &h.to_uppercase()]));
    run_ok(cas(&s).args(["get", &h[..12].to_uppercase()]));
    let o = run(cas(&s).args(["has", &h[..10], "ffffffff00"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(err_of(&o).contains("missing ffffffff00"), "{}", err_of(&o));
    let doomed = s.put(b"doomed");
    let json = run_ok(cas(&s).args(["rm", "--json", &doomed[..9].to_uppercase()]));
    let line = json_lines(&json);
    assert_eq!(line[0]["hash"], doomed.as_str(), "{json}");
    assert_eq!(line[0]["removed"], true, "{json}");
    assert!(!s.object_path(&doomed).exists());

    // Ambiguous with two matches said "(a, b, …)".
    let fan = s.objects().join("ab");
    fs::create_dir_all(&fan).unwrap();
    for tail in ["cdef01234", "cdef01235"] {
        fs::write(
            fan.join(format!("{tail}{}", "0".repeat(62 - tail.len()))),
            b"x",
        )
        .unwrap();
    }
    let o = run(cas(&s).args(["get", "abcdef0123"]));
    let msg = err_of(&o);
    assert!(msg.contains("2 objects") && msg.contains(" and "), "{msg}");
    assert!(!msg.contains('…'), "{msg}");

    // `key ensure k echo hi`: a bare clap error; now the corrected line.
    let o = run(cas(&s).args(["key", "ensure", "k", "echo", "hi"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err_of(&o).contains(" key ensure k -- echo hi"),
        "{}",
        err_of(&o)
    );

    // `ref log` said `uid0` without $USER: the name /etc/passwd gives the uid.
    run_ok(
        cas(&s)
            .args(["ref", "set", "who", &h])
            .env_remove("USER")
            .env_remove("LOGNAME"),
    );
    let uid = rustix::process::geteuid().as_raw();
    let name = fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
        })
        .unwrap_or(format!("uid{uid}"));
    let log = run_ok(cas(&s).args(["ref", "log", "who", "--json"]));
    assert_eq!(json_lines(&log)[0]["user"], name.as_str(), "{log}");

    // `--store afile`: "afile is not a directory: afile is not a cas store … cas init".
    let afile = s.input("afile", b"");
    let o = run(Command::new(cas_bin()).arg("--store").arg(&afile).arg("ls"));
    let msg = err_of(&o);
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("is a file, not a store"), "{msg}");
    assert!(!msg.contains("not a directory:"), "{msg}");

    // `-o` into a missing directory named a temporary file.
    let missing = s.scratch.join("no-such-dir");
    let out = missing.join("f");
    let o = run(cas(&s).args(["get", &h, "-o"]).arg(&out));
    let msg = err_of(&o);
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(!msg.contains("/.f.") && !msg.contains("at path"), "{msg}");

    // `show` printed a newline inside a name raw (`key ls` escapes it).
    let src = s.scratch.join("nl");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a\nb"), b"x").unwrap();
    let t = run_ok(cas(&s).arg("put").arg("-r").arg(&src));
    let shown = run_ok(cas(&s).args(["show", t.trim()]));
    assert_eq!(shown.lines().count(), 1, "{shown}");
    assert!(shown.contains("a\\nb"), "{shown}");
}

/// Issue 23: completions covered no ref or key names. `COMPLETE=SHELL cas -- WORDS` (what the
/// script `COMPLETE=bash cas` registers runs) offers those of the store the line names, and
/// never creates a store.
#[test]
fn dynamic_completions_offer_ref_names_and_keys() {
    let s = Store::new();
    let h = s.put(b"x");
    run_ok(cas(&s).args(["ref", "set", "release/v1", &h]));
    run_ok(cas(&s).args(["ref", "set", "release/v2", &h]));
    run_ok(cas(&s).args(["key", "set", "build:abc", &h]));
    let complete = |store: &Path, words: &[&str]| {
        let out = run_ok(
            Command::new(cas_bin())
                .env("COMPLETE", "fish")
                .env_remove("CAS_STORE")
                .args(["--", "cas", "--store"])
                .arg(store)
                .args(words),
        );
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .filter(|w| !w.starts_with('-'))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        complete(&s.root, &["ref", "get", "rel"]),
        ["release/v1", "release/v2"]
    );
    assert_eq!(complete(&s.root, &["key", "rm", "b"]), ["build:abc"]);
    assert_eq!(
        complete(&s.root, &["push", "/elsewhere", "release/v"]),
        ["release/v1", "release/v2"]
    );
    let missing = s.scratch.join("typo");
    assert!(complete(&missing, &["ref", "get", ""]).is_empty());
    assert!(!missing.exists(), "completion created a store");
    let script = run_ok(Command::new(cas_bin()).env("COMPLETE", "bash"));
    assert!(script.contains("complete"), "{script}");
}

//! End-to-end tests of the core store through the real `cas` binary: round trips, staging,
//! many concurrent processes, killed writers, corruption, malformed input, store resolution.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use common::{
    assert_running, blake3_hex, cas, cas_bin, data, files_under, run, run_ok, run_with_stdin,
    snapshot, staging_files_of, staging_pid, text, wait_until, Store,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Compares byte strings without printing megabytes on failure.
fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: got {} bytes, expected {} bytes; first difference at offset {first_diff}",
        actual.len(),
        expected.len()
    );
}

/// The object for `bytes` is stored under its BLAKE3 name, complete, read-only, a regular file.
fn assert_object(s: &Store, hex: &str, bytes: &[u8]) {
    let p = s.object_path(hex);
    let meta = fs::symlink_metadata(&p)
        .unwrap_or_else(|e| panic!("object {hex} missing at {}: {e}", p.display()));
    assert!(meta.is_file(), "{} is not a regular file", p.display());
    assert_eq!(
        meta.permissions().mode() & 0o222,
        0,
        "object {} is writable (mode {:o})",
        p.display(),
        meta.permissions().mode()
    );
    let on_disk = fs::read(&p).unwrap();
    assert_eq!(
        blake3_hex(&on_disk),
        hex,
        "{} does not hash to its name",
        p.display()
    );
    assert_bytes_eq(&on_disk, bytes, &format!("object file {}", p.display()));
}

/// The inode number of a file (not following symlinks).
fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(path).unwrap())
}

/// `cas put` output: one hash per line.
fn lines(stdout: &str) -> Vec<String> {
    stdout.lines().map(str::to_owned).collect()
}

fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}: stderr: {}",
        out.status,
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips

#[test]
fn round_trip_files_and_stdin() {
    let s = Store::new();
    let cases: [(&str, usize); 7] = [
        ("empty", 0),
        ("small", 11),
        ("below-mmap", 64 * KIB - 1),
        ("one-mib", MIB),
        ("one-mib-plus-one", MIB + 1),
        ("eight-mib-plus-one", 8 * MIB + 1),
        ("nine-mib-plus-123", 9 * MIB + 123),
    ];
    for (i, &(name, len)) in cases.iter().enumerate() {
        let bytes = data(len, i as u64);
        let hex = blake3_hex(&bytes);
        let file = s.input(name, &bytes);

        // put FILE
        let out = run_ok(cas(&s).arg("put").arg(&file));
        assert_eq!(out, format!("{hex}\n"), "cas put {name}");
        assert_object(&s, &hex, &bytes);
        s.assert_tmp_empty();

        // Remove it so that the stdin put really writes the object again.
        run_ok(cas(&s).arg("rm").arg(&hex));
        assert!(!s.object_path(&hex).exists(), "cas rm left {name}");

        // put - (a pipe)
        let out = run_with_stdin(cas(&s).args(["put", "-"]), &bytes);
        assert_success(&out, &format!("cas put - of {name}"));
        assert_eq!(text(&out.stdout), format!("{hex}\n"), "cas put - {name}");
        assert_object(&s, &hex, &bytes);
        s.assert_tmp_empty();

        // put with no argument reads stdin too; putting present bytes again is fine, and the
        // existing object file is never replaced (same inode).
        let ino = inode(&s.object_path(&hex));
        let out = run_with_stdin(cas(&s).arg("put"), &bytes);
        assert_success(&out, &format!("cas put (stdin) of {name} again"));
        assert_eq!(text(&out.stdout), format!("{hex}\n"));
        let out = run_ok(cas(&s).arg("put").arg(&file));
        assert_eq!(out, format!("{hex}\n"));
        assert_eq!(
            inode(&s.object_path(&hex)),
            ino,
            "putting {name} again replaced the existing object file"
        );

        // get HASH
        let out = run(cas(&s).args(["get", &hex]));
        assert_success(&out, &format!("cas get {name}"));
        assert_bytes_eq(&out.stdout, &bytes, &format!("cas get {name} stdout"));

        // get HASH -o FILE
        let dst = s.scratch.join(format!("{name}.out"));
        let stdout = run_ok(cas(&s).args(["get", &hex, "-o"]).arg(&dst));
        assert!(stdout.is_empty(), "get -o wrote to stdout: {stdout:?}");
        assert_bytes_eq(&fs::read(&dst).unwrap(), &bytes, &format!("get -o {name}"));

        // get -o over an existing file replaces it.
        fs::write(&dst, b"old").unwrap();
        run_ok(cas(&s).args(["get", &hex, "-o"]).arg(&dst));
        assert_bytes_eq(
            &fs::read(&dst).unwrap(),
            &bytes,
            &format!("get -o {name} again"),
        );
        s.assert_tmp_empty();
    }
    // Exactly one object per case, each where its hash says.
    let want: BTreeSet<String> = (0..cases.len())
        .map(|i| blake3_hex(&data(cases[i].1, i as u64)))
        .collect();
    let have: BTreeSet<String> = s.object_hashes().into_iter().collect();
    assert_eq!(have, want);
    s.assert_objects_verify();
    // get -o left no temporary files beside its outputs.
    let mut expect_scratch: Vec<PathBuf> = cases
        .iter()
        .flat_map(|(n, _)| [s.scratch.join(n), s.scratch.join(format!("{n}.out"))])
        .collect();
    expect_scratch.sort();
    assert_eq!(files_under(&s.scratch), expect_scratch);
}

#[test]
fn put_many_prints_hashes_in_input_order() {
    let s = Store::new();
    let a = data(1000, 1);
    let b = Vec::new();
    let c = data(2 * MIB + 5, 3);
    let from_stdin = data(300 * KIB, 4);
    let pa = s.input("a", &a);
    let pb = s.input("b", &b);
    let pc = s.input("c", &c);
    let out = run_ok(cas(&s).arg("put").args([&pa, &pb, &pc, &pa]));
    let want: Vec<String> = [&a, &b, &c, &a].iter().map(|x| blake3_hex(x)).collect();
    assert_eq!(lines(&out), want);

    // `-` among files reads stdin at its place in the order.
    let out = run_with_stdin(cas(&s).arg("put").arg(&pc).arg("-").arg(&pa), &from_stdin);
    assert_success(&out, "cas put c - a");
    assert_eq!(
        lines(&text(&out.stdout)),
        vec![blake3_hex(&c), blake3_hex(&from_stdin), blake3_hex(&a)]
    );
    assert_eq!(s.object_hashes().len(), 4);
    s.assert_objects_verify();
    s.assert_tmp_empty();

    // A missing input file fails, naming it, after the earlier inputs were stored and printed.
    let missing = s.scratch.join("does-not-exist");
    let out = run(cas(&s).arg("put").arg(&pa).arg(&missing));
    assert!(!out.status.success());
    assert_eq!(lines(&text(&out.stdout)), vec![blake3_hex(&a)]);
    let err = text(&out.stderr);
    assert!(err.contains("does-not-exist"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 2. Nothing is published before the input ends

#[test]
fn stdin_put_publishes_nothing_before_eof() {
    let s = Store::new();
    let full = data(2 * MIB + 7, 42);
    let hex = blake3_hex(&full);
    let mut child = spawn_piped(cas(&s).args(["put", "-"]));
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&full[..MIB]).unwrap();
    stdin.flush().unwrap();
    let tmp = s.tmp();
    let objects = s.objects();
    wait_until("a non-empty staging file of the writer in tmp/", || {
        assert_running(&mut child, "cas put - with stdin still open");
        let published = files_under(&objects);
        assert!(
            published.is_empty(),
            "files under objects/ before the input ended: {published:?}"
        );
        staging_files_of(&tmp, pid).iter().any(|(_, len)| *len > 0)
    });
    // The writer is mid-stream: bytes are staged, nothing is published.
    let staged = staging_files_of(&tmp, pid);
    assert_eq!(staged.len(), 1, "one staging file expected: {staged:?}");
    assert!(
        staged[0].1 <= MIB as u64,
        "staged more than was sent: {staged:?}"
    );
    assert!(
        !s.object_path(&hex).exists(),
        "the object exists before its input ended"
    );
    let published = files_under(&s.objects());
    assert!(
        published.is_empty(),
        "files under objects/ mid-stream: {published:?}"
    );
    assert_running(&mut child, "cas put - with stdin still open");

    stdin.write_all(&full[MIB..]).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "cas put -");
    assert_eq!(text(&out.stdout), format!("{hex}\n"));
    assert_object(&s, &hex, &full);
    assert_eq!(s.object_hashes(), vec![hex]);
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 3. Many writers and readers at once

/// One file to store: its path and expected hash.
type Input = (PathBuf, String);

/// The inputs of the concurrency test: every content by hash, and each writer's file list.
fn concurrency_inputs(s: &Store, writers: usize) -> (HashMap<String, Vec<u8>>, Vec<Vec<Input>>) {
    let mut contents: HashMap<String, Vec<u8>> = HashMap::new();
    let mut add = |name: &str, bytes: Vec<u8>| -> Input {
        let hex = blake3_hex(&bytes);
        let path = s.input(name, &bytes);
        contents.insert(hex.clone(), bytes);
        (path, hex)
    };
    // The same files, passed to every writer.
    let shared_sizes = [
        0,
        1,
        100,
        4096,
        64 * KIB,
        128 * KIB + 5,
        MIB,
        MIB + 1,
        1_500_000,
        2 * MIB,
    ];
    let shared: Vec<Input> = shared_sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| add(&format!("shared/{i}"), data(len, 1000 + i as u64)))
        .collect();
    // Per-writer files: writers 2k and 2k+1 have the same bytes in different files, distinct
    // from every other pair's (the empty one is the same object as the shared empty file).
    let own_sizes = [
        0,
        7,
        1000,
        30_000,
        70_000,
        200_000,
        500_000,
        MIB + 3,
        12,
        64 * KIB - 1,
    ];
    let mut plans: Vec<Vec<Input>> = Vec::new();
    for w in 0..writers {
        let pair = (w / 2) as u64;
        let own: Vec<Input> = own_sizes
            .iter()
            .enumerate()
            .map(|(j, &len)| {
                add(
                    &format!("w{w}/{j}"),
                    data(len, 5000 + pair * 100 + j as u64),
                )
            })
            .collect();
        let mut list: Vec<Input> = shared
            .iter()
            .cloned()
            .zip(own)
            .flat_map(|(a, b)| [a, b])
            .collect();
        // Different writers start at different places of the list.
        let n = list.len();
        list.rotate_left(w * 3 % n);
        plans.push(list);
    }
    (contents, plans)
}

/// Reader processes looping `cas get` while the writers run, and what they saw.
#[derive(Default)]
struct Readers {
    done: AtomicBool,
    problems: Mutex<Vec<String>>,
    good_reads: AtomicUsize,
    /// Set while writers run (from before the first is spawned until the last has exited).
    writing: AtomicBool,
    /// An object that existed before the writers: reads of it prove nothing about them.
    preexisting: std::sync::OnceLock<String>,
    /// Verified reads of objects the writers stored that began and ended while they ran.
    reads_during_writes: AtomicUsize,
}

impl Readers {
    /// Gets the objects round-robin from `start` until `done`: a get may fail with "not
    /// found" (not written yet); any other failure and any wrong byte is a problem.
    fn read_until_done(&self, s: &Store, contents: &HashMap<String, Vec<u8>>, start: usize) {
        let hashes: Vec<&String> = contents.keys().collect();
        let mut i = start;
        while !self.done.load(Ordering::SeqCst) {
            let hex = hashes[i % hashes.len()];
            i += 1;
            let began_writing = self.writing.load(Ordering::SeqCst);
            let out = run(cas(s).args(["get", hex]));
            let problem = if out.status.success() {
                if out.stdout == contents[hex] {
                    self.good_reads.fetch_add(1, Ordering::Relaxed);
                    if began_writing
                        && self.writing.load(Ordering::SeqCst)
                        && self.preexisting.get() != Some(hex)
                    {
                        self.reads_during_writes.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                format!("cas get {hex} returned {} wrong bytes", out.stdout.len())
            } else {
                let err = text(&out.stderr);
                if err.contains("not found") && out.stdout.is_empty() {
                    continue;
                }
                format!(
                    "cas get {hex} failed unexpectedly ({} bytes on stdout): {err}",
                    out.stdout.len()
                )
            };
            self.problems.lock().unwrap().push(problem);
        }
    }
}

#[test]
fn concurrent_writers_and_readers_converge() {
    const WRITERS: usize = 12;
    const READERS: usize = 4;
    let s = Store::new();
    let (contents, plans) = concurrency_inputs(&s, WRITERS);
    let hashes: Vec<String> = contents.keys().cloned().collect();
    // One large object exists before the race: the racing writers must leave that very file
    // alone (an existing object is never replaced).
    let pre = s.scratch.join("shared").join("9");
    let pre_hex = run_ok(cas(&s).arg("put").arg(&pre)).trim().to_owned();
    let pre_ino = inode(&s.object_path(&pre_hex));

    let readers = Readers::default();
    readers.preexisting.set(pre_hex.clone()).unwrap();
    // One more writer streams from stdin and is held open until the readers have verified
    // reads of the other writers' objects while it still writes: "during the writes" is then
    // a fact, not a matter of timing.
    let held = data(300 * KIB, 900);
    let held_hex = blake3_hex(&held);
    readers.writing.store(true, Ordering::SeqCst);
    let mut held_writer = cas(&s)
        .arg("put")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the held writer");
    let mut held_stdin = held_writer.stdin.take().unwrap();
    held_stdin.write_all(&held[..held.len() / 2]).unwrap();
    let outputs: Vec<Output> = std::thread::scope(|sc| {
        for r in 0..READERS {
            let (s, contents, readers) = (&s, &contents, &readers);
            sc.spawn(move || readers.read_until_done(s, contents, r * 7));
        }
        // Start every writer before waiting on any.
        let children: Vec<Child> = plans
            .iter()
            .map(|list| {
                cas(&s)
                    .arg("put")
                    .args(list.iter().map(|(p, _)| p))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn a writer")
            })
            .collect();
        wait_until("readers to verify reads while the writers run", || {
            readers.reads_during_writes.load(Ordering::SeqCst) >= READERS
        });
        held_stdin.write_all(&held[held.len() / 2..]).unwrap();
        drop(held_stdin);
        let outputs = children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait for a writer"))
            .collect();
        let held_out = held_writer
            .wait_with_output()
            .expect("wait for the held writer");
        readers.writing.store(false, Ordering::SeqCst);
        readers.done.store(true, Ordering::SeqCst);
        assert_success(&held_out, "the held writer");
        assert_eq!(text(&held_out.stdout).trim(), held_hex);
        outputs
    });

    for (w, (out, list)) in outputs.iter().zip(&plans).enumerate() {
        assert_success(out, &format!("writer {w}"));
        let want: Vec<String> = list.iter().map(|(_, h)| h.clone()).collect();
        assert_eq!(
            lines(&text(&out.stdout)),
            want,
            "writer {w} printed other hashes"
        );
    }
    let problems = readers.problems.into_inner().unwrap();
    assert!(
        problems.is_empty(),
        "readers saw problems:\n{}",
        problems.join("\n")
    );
    assert_eq!(
        inode(&s.object_path(&pre_hex)),
        pre_ino,
        "an existing object was replaced by a racing writer"
    );
    // Each object exists exactly once, complete, and nothing else was left anywhere.
    let mut want: BTreeSet<String> = contents.keys().cloned().collect();
    want.insert(held_hex);
    let have = s.object_hashes();
    assert_eq!(have.len(), want.len(), "duplicate or missing objects");
    assert_eq!(have.into_iter().collect::<BTreeSet<_>>(), want);
    s.assert_objects_verify();
    s.assert_tmp_empty();
    let quarantined = files_under(&s.quarantine());
    assert!(quarantined.is_empty(), "quarantined: {quarantined:?}");
    run_ok(cas(&s).arg("has").args(&hashes));
    let listed: BTreeSet<String> = lines(&run_ok(cas(&s).arg("ls"))).into_iter().collect();
    assert_eq!(listed, want);
    eprintln!(
        "concurrency: {} objects, {} verified reads, {} of the writers' objects while they ran",
        want.len(),
        readers.good_reads.load(Ordering::Relaxed),
        readers.reads_during_writes.load(Ordering::SeqCst)
    );
}

#[test]
fn racing_first_use_creates_one_store() {
    let s = Store::uninit();
    let shared = data(200 * KIB, 300);
    let shared_path = s.input("shared", &shared);
    let mut want = BTreeSet::from([blake3_hex(&shared)]);
    let children: Vec<(Child, Vec<String>)> = (0..8u64)
        .map(|w| {
            let own = data(1000 + w as usize, 301 + w);
            let own_path = s.input(&format!("own{w}"), &own);
            want.insert(blake3_hex(&own));
            let expect = vec![blake3_hex(&own), blake3_hex(&shared)];
            let child = cas(&s)
                .arg("put")
                .arg(&own_path)
                .arg(&shared_path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (child, expect)
        })
        .collect();
    for (child, expect) in children {
        let out = child.wait_with_output().unwrap();
        assert_success(&out, "a writer racing to create the store");
        assert_eq!(lines(&text(&out.stdout)), expect);
    }
    let format = fs::read_to_string(s.root.join("FORMAT")).unwrap();
    assert!(format.starts_with("cas-store 1\n"), "{format:?}");
    assert!(s.root.join("config").is_file());
    assert_eq!(s.object_hashes().into_iter().collect::<BTreeSet<_>>(), want);
    s.assert_objects_verify();
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 4. Writers killed at any point

#[derive(Clone, Copy, Debug, PartialEq)]
enum KillAt {
    /// Right after spawning, before any input.
    Start,
    /// Once the writer has staged some bytes, stdin still open.
    MidStream,
    /// Right after closing stdin: racing the hash and the publish.
    AfterEof,
    /// After closing stdin, once the staging file holds everything (or the writer is done).
    StagedAll,
    /// After closing stdin, once the object is published (or the writer is done): killed
    /// between the publish and the cleanup or the output.
    Published,
}

/// Feeds `input[..sent]` to a `cas put -` writer, waits for its kill point, and SIGKILLs it.
fn kill_writer(s: &Store, child: &mut Child, kill_at: KillAt, input: &[u8], sent: usize) {
    let tmp = s.tmp();
    let mut stdin = child.stdin.take().unwrap();
    let pid = child.id();
    // A writer that was killed earlier cannot be written to: that is fine.
    let _ = stdin.write_all(&input[..sent]);
    let path = s.object_path(&blake3_hex(input));
    match kill_at {
        KillAt::Start => {}
        KillAt::MidStream => {
            wait_until("a non-empty staging file of a writer", || {
                assert_running(child, "cas put - with stdin open");
                // Fails at once on anything but object files under objects/.
                let _ = s.object_hashes();
                staging_files_of(&tmp, pid).iter().any(|(_, n)| *n > 0)
            });
        }
        KillAt::AfterEof => drop(stdin),
        KillAt::StagedAll => {
            drop(stdin);
            wait_until("the writer to stage all its input", || {
                child.try_wait().unwrap().is_some()
                    || path.exists()
                    || staging_files_of(&tmp, pid)
                        .iter()
                        .any(|(_, n)| *n == input.len() as u64)
            });
        }
        KillAt::Published => {
            drop(stdin);
            wait_until("the writer to publish its object", || {
                path.exists() || child.try_wait().unwrap().is_some()
            });
        }
    }
    // SIGKILL; an error only means the process already exited.
    let _ = child.kill();
}

#[test]
fn killed_writers_leave_only_verified_objects() {
    let s = Store::new();
    // (kill point, total input size, bytes sent before the kill)
    let plans: [(KillAt, usize, usize); 11] = [
        (KillAt::Start, 2 * MIB, 0),
        (KillAt::MidStream, 2 * MIB, MIB + 256 * KIB),
        (KillAt::MidStream, 5 * MIB, 3 * MIB),
        (KillAt::AfterEof, 4 * MIB, 4 * MIB),
        (KillAt::AfterEof, 100 * KIB, 100 * KIB),
        (KillAt::AfterEof, 0, 0),
        (KillAt::AfterEof, 9 * MIB, 9 * MIB),
        (KillAt::StagedAll, 3 * MIB + 5, 3 * MIB + 5),
        (KillAt::StagedAll, MIB, MIB),
        (KillAt::Published, 2 * MIB + 1, 2 * MIB + 1),
        (KillAt::Published, 10, 10),
    ];
    let inputs: Vec<Vec<u8>> = plans
        .iter()
        .enumerate()
        .map(|(i, &(_, len, _))| data(len, 7000 + i as u64))
        .collect();
    let control = data(MIB + 9, 7999);

    let mut children: Vec<Child> = plans
        .iter()
        .map(|_| spawn_piped(cas(&s).args(["put", "-"])))
        .collect();
    let killed: BTreeSet<u32> = children.iter().map(Child::id).collect();
    for (((kill_at, _, sent), child), input) in plans.iter().zip(&mut children).zip(&inputs) {
        kill_writer(&s, child, *kill_at, input, *sent);
    }
    for child in &mut children {
        child.wait().unwrap();
    }

    // A control writer that is not killed, run after the carnage.
    let out = run_with_stdin(cas(&s).args(["put", "-"]), &control);
    assert_success(&out, "control writer");
    let control_hex = blake3_hex(&control);
    assert_eq!(text(&out.stdout), format!("{control_hex}\n"));

    // Every published name holds exactly the bytes it names, and only whole inputs that
    // reached EOF can have been published.
    s.assert_objects_verify();
    let mut allowed: BTreeMap<String, &[u8]> = BTreeMap::new();
    allowed.insert(control_hex.clone(), &control);
    for (i, (kill_at, _, _)) in plans.iter().enumerate() {
        let hex = blake3_hex(&inputs[i]);
        if matches!(
            kill_at,
            KillAt::AfterEof | KillAt::StagedAll | KillAt::Published
        ) {
            if *kill_at == KillAt::Published {
                assert!(
                    s.object_path(&hex).exists(),
                    "writer {i} published its object (or exited), yet the object is gone"
                );
            }
            allowed.insert(hex, &inputs[i]);
        } else {
            assert!(
                !s.object_path(&hex).exists(),
                "writer {i} ({kill_at:?}) never saw EOF, yet its object exists"
            );
        }
    }
    let present = s.object_hashes();
    for hex in &present {
        let bytes = allowed
            .get(hex)
            .unwrap_or_else(|| panic!("object {hex} is not the full input of any writer"));
        let out = run(cas(&s).args(["get", hex]));
        assert_success(&out, &format!("cas get {hex} after the kills"));
        assert_bytes_eq(
            &out.stdout,
            bytes,
            &format!("cas get {hex} after the kills"),
        );
    }
    // Staging files may be left behind, but only by the killed writers.
    for p in files_under(&s.tmp()) {
        let pid = staging_pid(&p);
        assert!(
            pid.is_some_and(|pid| killed.contains(&pid)),
            "{} in tmp/ is not a staging file of a killed writer",
            p.display()
        );
    }
    // The store still works for every input.
    for (i, input) in inputs.iter().enumerate() {
        let out = run_with_stdin(cas(&s).args(["put", "-"]), input);
        assert_success(&out, &format!("re-put of input {i}"));
        assert_eq!(text(&out.stdout), format!("{}\n", blake3_hex(input)));
    }
    assert_eq!(s.object_hashes().len(), inputs.len() + 1);
    s.assert_objects_verify();
    eprintln!(
        "crash: {} objects survived the kills, {} staging files left",
        present.len() - 1,
        files_under(&s.tmp()).len()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Staging does not use the system temp directory

#[test]
fn works_with_tmpdir_missing() {
    let s = Store::uninit();
    let bad = s.base().join("no").join("such").join("dir");
    let tmpdir_cas = |s: &Store| {
        let mut c = cas(s);
        c.env("TMPDIR", &bad);
        c
    };
    let small = data(1000, 51);
    let big = data(3 * MIB + 1, 52);
    let piped = data(2 * MIB, 53);
    let ps = s.input("small", &small);
    let pb = s.input("big", &big);
    // The first command also creates the store.
    let out = run_ok(tmpdir_cas(&s).arg("put").arg(&ps).arg(&pb));
    assert_eq!(lines(&out), vec![blake3_hex(&small), blake3_hex(&big)]);
    let out = run_with_stdin(tmpdir_cas(&s).args(["put", "-"]), &piped);
    assert_success(&out, "cas put - with TMPDIR missing");
    assert_eq!(text(&out.stdout), format!("{}\n", blake3_hex(&piped)));
    for bytes in [&small, &big, &piped] {
        let hex = blake3_hex(bytes);
        let out = run(tmpdir_cas(&s).args(["get", &hex]));
        assert_success(&out, "cas get with TMPDIR missing");
        assert_bytes_eq(&out.stdout, bytes, "cas get with TMPDIR missing");
        let dst = s.scratch.join(format!("{hex}.out"));
        run_ok(tmpdir_cas(&s).args(["get", &hex, "-o"]).arg(&dst));
        assert_bytes_eq(
            &fs::read(&dst).unwrap(),
            bytes,
            "cas get -o with TMPDIR missing",
        );
        assert_object(&s, &hex, bytes);
    }
    assert!(!bad.exists(), "TMPDIR was created");
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 6. Corruption is detected, reported, quarantined, and never output

/// Flips one byte in the middle of an object file (made writable first).
fn flip_byte(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    assert!(len > 0);
    let at = len / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum GetTo {
    Stdout,
    NewFile,
    ExistingFile,
}

#[test]
fn corrupt_objects_are_reported_quarantined_and_never_output() {
    let s = Store::new();
    // Below and above the size where reads are memory-mapped.
    for (k, len) in [1000, 300 * KIB].into_iter().enumerate() {
        let bytes = data(len, 60 + k as u64);
        let hex = blake3_hex(&bytes);
        let input = s.input(&format!("in{k}"), &bytes);
        for (round, to) in [GetTo::Stdout, GetTo::NewFile, GetTo::ExistingFile]
            .into_iter()
            .enumerate()
        {
            let what = format!("{len}-byte object, get to {to:?}");
            assert_eq!(run_ok(cas(&s).arg("put").arg(&input)), format!("{hex}\n"));
            let obj = s.object_path(&hex);
            flip_byte(&obj);
            let corrupt_bytes = fs::read(&obj).unwrap();
            let dst = s.scratch.join(format!("out-{k}-{round}"));
            let mut cmd = cas(&s);
            cmd.args(["get", &hex]);
            match to {
                GetTo::Stdout => {}
                GetTo::NewFile => {
                    cmd.arg("-o").arg(&dst);
                }
                GetTo::ExistingFile => {
                    fs::write(&dst, b"previous content").unwrap();
                    cmd.arg("-o").arg(&dst);
                }
            }
            let out = run(&mut cmd);
            let err = text(&out.stderr);
            assert!(
                !out.status.success(),
                "{what}: get of a corrupt object succeeded"
            );
            assert!(
                err.contains(&hex),
                "{what}: stderr does not name the hash: {err}"
            );
            assert!(
                err.contains("corrupt"),
                "{what}: stderr does not say corrupt: {err}"
            );
            assert!(!err.contains("panicked"), "{what}: {err}");
            assert!(
                out.stdout.is_empty(),
                "{what}: {} bytes written to stdout",
                out.stdout.len()
            );
            match to {
                GetTo::Stdout => {}
                GetTo::NewFile => assert!(!dst.exists(), "{what}: output file created"),
                GetTo::ExistingFile => {
                    assert_eq!(fs::read(&dst).unwrap(), b"previous content", "{what}");
                }
            }
            // No temporary output file left in the scratch directory.
            for p in files_under(&s.scratch) {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    name.starts_with("in") || name.starts_with("out-"),
                    "{what}: left {}",
                    p.display()
                );
            }
            // The corrupt file moved from objects/ to quarantine/, bytes intact.
            assert!(
                !obj.exists(),
                "{what}: the corrupt object is still in objects/"
            );
            let q: Vec<PathBuf> = files_under(&s.quarantine())
                .into_iter()
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&hex))
                .collect();
            assert_eq!(q.len(), round + 1, "{what}: quarantine holds {q:?}");
            assert!(
                q.iter().any(|p| fs::read(p).unwrap() == corrupt_bytes),
                "{what}: the corrupt bytes are not in quarantine/"
            );
            // The object is now simply missing.
            let out = run(cas(&s).args(["has", &hex]));
            assert_eq!(out.status.code(), Some(1), "{what}: has after quarantine");
            let out = run(cas(&s).args(["get", &hex]));
            assert!(!out.status.success());
            assert!(
                text(&out.stderr).contains("not found"),
                "{}",
                text(&out.stderr)
            );
            assert!(out.stdout.is_empty());
        }
        // A new put restores a good object.
        assert_eq!(run_ok(cas(&s).arg("put").arg(&input)), format!("{hex}\n"));
        assert_object(&s, &hex, &bytes);
        let out = run(cas(&s).args(["get", &hex]));
        assert_success(&out, "get after re-put");
        assert_bytes_eq(&out.stdout, &bytes, "get after re-put");
    }
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// 7. Malformed hashes

#[test]
fn malformed_hashes_are_rejected_without_touching_the_store() {
    let s = Store::new();
    let a = data(500, 70);
    let good = run_ok(cas(&s).arg("put").arg(s.input("a", &a)))
        .trim()
        .to_owned();
    let before = snapshot(&s.root);
    let dirs_before = fs::read_dir(s.objects()).unwrap().count();
    let bad_forms = [
        // 8+ hex digits are a unique prefix for `get`: 7 is malformed everywhere.
        ("short", good[..7].to_owned()),
        ("long", format!("{good}0")),
        ("non-hex", format!("{}g", &good[..63])),
        // Uppercase is accepted and lowered on the command line since issue 23
        // (crates/cas-cli/tests/e2e/cli_rules.rs); the library still refuses it.
        ("parent dirs", "../..".to_owned()),
        ("dotdot prefix", format!("../{}", &good[3..])),
        ("slash", format!("{}/{}", &good[..2], &good[3..])),
        ("absolute", format!("/{}", &good[1..])),
    ];
    for sub in ["get", "has", "rm"] {
        for (what, bad) in &bad_forms {
            for args in [
                vec![sub, bad.as_str()],
                vec![sub, good.as_str(), bad.as_str()],
            ] {
                if sub == "get" && args.len() > 2 {
                    continue;
                }
                let out = run(cas(&s).args(&args));
                let err = text(&out.stderr);
                assert!(
                    matches!(out.status.code(), Some(1 | 2)),
                    "cas {args:?} ({what}) exited with {}: {err}",
                    out.status
                );
                assert!(err.contains(bad.as_str()), "cas {args:?} ({what}): {err}");
                assert!(!err.contains("panicked"), "cas {args:?} ({what}): {err}");
                assert!(
                    out.stdout.is_empty(),
                    "cas {args:?} ({what}) wrote to stdout"
                );
            }
        }
    }
    assert_eq!(
        snapshot(&s.root),
        before,
        "a malformed hash changed the store"
    );
    assert_eq!(fs::read_dir(s.objects()).unwrap().count(), dirs_before);
    assert!(s.object_path(&good).exists());
}

// ---------------------------------------------------------------------------------------------
// has, rm, ls, stats

#[test]
fn has_rm_ls_and_stats() {
    let s = Store::new();
    let contents = [
        data(0, 80),
        data(10, 81),
        data(70_000, 82),
        data(MIB + 5, 83),
    ];
    let paths: Vec<PathBuf> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| s.input(&format!("f{i}"), c))
        .collect();
    let hashes = lines(&run_ok(cas(&s).arg("put").args(&paths).arg(&paths[1])));
    assert_eq!(hashes.len(), 5);
    let hashes = &hashes[..4];
    let missing = blake3_hex(b"never stored");

    // ls: exactly the stored hashes; ls -l with sizes.
    let listed: BTreeSet<String> = lines(&run_ok(cas(&s).arg("ls"))).into_iter().collect();
    assert_eq!(listed, hashes.iter().cloned().collect());
    // HASH SIZE DATE TIME UTC KIND: the first two fields and the kind are checked.
    let long: BTreeSet<String> = lines(&run_ok(cas(&s).args(["ls", "--long"])))
        .into_iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.last(), Some(&"blob"), "{l}");
            format!("{} {}", f[0], f[1])
        })
        .collect();
    let want_long: BTreeSet<String> = hashes
        .iter()
        .zip(&contents)
        .map(|(h, c)| format!("{h} {}", c.len()))
        .collect();
    assert_eq!(long, want_long);

    // stats --json
    let stats = |s: &Store| -> serde_json::Value {
        let out = run_ok(cas(s).args(["stats", "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats --json: {e}: {out}"))
    };
    let v = stats(&s);
    assert_eq!(v["objects"], 4, "{v}");
    let total: usize = contents.iter().map(Vec::len).sum();
    assert_eq!(v["bytes"], total as u64, "{v}");
    assert_eq!(v["store"].as_str(), s.root.to_str(), "{v}");
    let human = run_ok(cas(&s).arg("stats"));
    let objects_line = human
        .lines()
        .find(|l| l.starts_with("objects:"))
        .unwrap_or("");
    assert_eq!(objects_line.split_whitespace().nth(1), Some("4"), "{human}");

    // has: 0 when all are present, 1 naming the missing one otherwise.
    run_ok(cas(&s).arg("has").args(hashes));
    let out = run(cas(&s)
        .arg("has")
        .arg(&hashes[0])
        .arg(&missing)
        .arg(&hashes[2]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&missing), "{err}");
    assert!(
        !err.contains(&hashes[0]) && !err.contains(&hashes[2]),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // rm removes exactly what it is given.
    run_ok(cas(&s).arg("rm").arg(&hashes[1]).arg(&hashes[3]));
    assert!(!s.object_path(&hashes[1]).exists());
    assert!(!s.object_path(&hashes[3]).exists());
    assert_eq!(
        run(cas(&s).arg("has").arg(&hashes[1])).status.code(),
        Some(1)
    );
    let left: BTreeSet<String> = lines(&run_ok(cas(&s).arg("ls"))).into_iter().collect();
    assert_eq!(left, [hashes[0].clone(), hashes[2].clone()].into());
    let v = stats(&s);
    assert_eq!(v["objects"], 2, "{v}");
    assert_eq!(v["bytes"], 70_000, "{v}");
    let out = run(cas(&s).args(["get", &hashes[3]]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&hashes[3]),
        "{}",
        text(&out.stderr)
    );

    // rm of an absent object fails naming it, and still removes the present ones.
    let out = run(cas(&s).arg("rm").arg(&missing).arg(&hashes[0]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");
    assert!(!s.object_path(&hashes[0]).exists());
    assert_eq!(s.object_hashes(), vec![hashes[2].clone()]);
    s.assert_tmp_empty();
}

// ---------------------------------------------------------------------------------------------
// Store resolution

/// `cas` with no `--store`, and the store-selecting variables removed.
fn cas_no_store() -> Command {
    let mut c = Command::new(cas_bin());
    c.env_remove("CAS_STORE")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HOME")
        .stdin(Stdio::null());
    c
}

/// Puts `bytes` with `cmd` and checks that the object landed in the store at `expect_root`.
fn put_lands_in(mut cmd: Command, input: &Path, bytes: &[u8], expect_root: &Path) {
    let hex = blake3_hex(bytes);
    assert_eq!(run_ok(cmd.arg("put").arg(input)), format!("{hex}\n"));
    assert!(
        expect_root.join("FORMAT").is_file(),
        "no store at {}",
        expect_root.display()
    );
    let obj = expect_root.join("objects").join(&hex[..2]).join(&hex[2..]);
    assert_eq!(fs::read(&obj).unwrap(), bytes, "{}", obj.display());
}

#[test]
fn default_store_location_and_cas_store_variable() {
    let s = Store::uninit();
    let base = s.base();
    let bytes = data(123, 90);
    let input = s.input("x", &bytes);
    let hex = blake3_hex(&bytes);

    // $XDG_CACHE_HOME/cas, and HOME is not used.
    let xdg = base.join("xdg");
    let home = base.join("home");
    let mut c = cas_no_store();
    c.env("XDG_CACHE_HOME", &xdg).env("HOME", &home);
    put_lands_in(c, &input, &bytes, &xdg.join("cas"));
    assert!(
        !home.exists(),
        "HOME was used although XDG_CACHE_HOME is set"
    );
    let mut c = cas_no_store();
    c.env("XDG_CACHE_HOME", &xdg).env("HOME", &home);
    let v: serde_json::Value = serde_json::from_str(&run_ok(c.args(["stats", "--json"]))).unwrap();
    assert_eq!(v["store"].as_str(), xdg.join("cas").to_str(), "{v}");

    // No XDG_CACHE_HOME: ~/.cache/cas.
    let home2 = base.join("home2");
    let mut c = cas_no_store();
    c.env("HOME", &home2);
    put_lands_in(c, &input, &bytes, &home2.join(".cache").join("cas"));
    let mut c = cas_no_store();
    c.env("HOME", &home2);
    let out = run(c.args(["get", &hex]));
    assert_success(&out, "get from ~/.cache/cas");
    assert_eq!(out.stdout, bytes);

    // An empty XDG_CACHE_HOME counts as unset.
    let home3 = base.join("home3");
    let mut c = cas_no_store();
    c.env("XDG_CACHE_HOME", "").env("HOME", &home3);
    put_lands_in(c, &input, &bytes, &home3.join(".cache").join("cas"));

    // CAS_STORE beats the defaults.
    let env_store = base.join("env-store");
    let xdg4 = base.join("xdg4");
    let mut c = cas_no_store();
    c.env("CAS_STORE", &env_store)
        .env("XDG_CACHE_HOME", &xdg4)
        .env("HOME", &home3);
    put_lands_in(c, &input, &bytes, &env_store);
    assert!(
        !xdg4.exists(),
        "XDG_CACHE_HOME was used although CAS_STORE is set"
    );

    // --store beats CAS_STORE.
    let flag_store = base.join("flag-store");
    let other_bytes = data(77, 91);
    let other = s.input("y", &other_bytes);
    let mut c = cas_no_store();
    c.env("CAS_STORE", &env_store)
        .arg("--store")
        .arg(&flag_store);
    put_lands_in(c, &other, &other_bytes, &flag_store);
    let other_hex = blake3_hex(&other_bytes);
    assert!(!env_store
        .join("objects")
        .join(&other_hex[..2])
        .join(&other_hex[2..])
        .exists());

    // Nothing to go on at all: a clear error, not a store in the working directory.
    let cwd = base.join("cwd");
    fs::create_dir(&cwd).unwrap();
    let out = run(cas_no_store().current_dir(&cwd).arg("put").arg(&input));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--store"),
        "{}",
        text(&out.stderr)
    );
    assert!(files_under(&cwd).is_empty());
}

/// Files that report a size of 0 yet have content (`/proc`) are stored whole, not empty.
#[test]
fn put_reads_files_whose_reported_size_is_wrong() {
    let proc_file = Path::new("/proc/version");
    if !proc_file.exists() {
        eprintln!("SKIPPED: no /proc/version on this system");
        return;
    }
    assert_eq!(
        fs::metadata(proc_file).unwrap().len(),
        0,
        "premise: /proc reports 0"
    );
    let s = Store::new();
    let expected = fs::read(proc_file).unwrap();
    assert!(!expected.is_empty());
    let out = run_ok(cas(&s).arg("put").arg(proc_file));
    assert_eq!(out.trim(), blake3_hex(&expected));
    let got = run(cas(&s).args(["get", out.trim()]));
    assert!(got.status.success());
    assert_bytes_eq(&got.stdout, &expected, "stored /proc/version");
}

/// Regression: `put -r` accepted a 300-level tree (its limit is 1024) that `get -r` and `show`
/// then refused with the walk budget's old default depth of 256. A stored tree comes back.
#[test]
fn a_tree_put_accepts_is_a_tree_get_restores() {
    let s = Store::new();
    let src = s.scratch.join("deep");
    let mut p = src.clone();
    for _ in 0..300 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("f"), b"bottom").unwrap();
    let put = cas(&s).args(["put", "-r"]).arg(&src).output().unwrap();
    assert_success(&put, "put -r of a 300-level chain");
    let hash = String::from_utf8(put.stdout).unwrap().trim().to_string();
    let out = s.scratch.join("out");
    let get = cas(&s)
        .args(["get", "-r", &hash, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_success(&get, "get -r of the 300-level tree");
    let mut q = out.clone();
    for _ in 0..300 {
        q.push("d");
    }
    assert_eq!(fs::read(q.join("f")).unwrap(), b"bottom");
    let show = cas(&s).args(["show", &hash]).output().unwrap();
    assert_success(&show, "show of the 300-level tree");
}

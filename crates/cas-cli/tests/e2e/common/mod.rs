//! Shared fixtures of the end-to-end tests: the real `cas` binary, a store fixture,
//! running commands, listing files, deterministic test data, bounded polling.

#![allow(dead_code)]

pub mod faultfs;
pub mod torture;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `cas` binary under test: `$CAS_BIN` if set (to run the suite against another build,
/// say a release one), else the one Cargo built for this test binary.
pub fn cas_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAS_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CAS_BIN={} is not a file", p.display());
        return p;
    }
    PathBuf::from(env!("CARGO_BIN_EXE_cas"))
}

/// The workspace root (README.md, docs/, crates/): two levels above this package.
pub fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A store in a fresh temporary directory, plus a scratch directory beside it for inputs and
/// outputs. The store is created (`cas init`) by [`Store::new`].
pub struct Store {
    dir: tempfile::TempDir,
    /// The store root.
    pub root: PathBuf,
    /// A directory outside the store for test inputs and outputs.
    pub scratch: PathBuf,
}

impl Store {
    pub fn new() -> Store {
        let s = Store::uninit();
        run_ok(cas(&s).arg("init"));
        assert!(
            s.root.join("FORMAT").is_file(),
            "cas init made no FORMAT file"
        );
        s
    }

    /// The fixture without running `cas init`: the store directory does not exist yet.
    pub fn uninit() -> Store {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let root = dir.path().join("store");
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        Store { dir, root, scratch }
    }

    /// The temporary directory holding the store and the scratch directory.
    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `objects/ab/cdef…` for a hex hash.
    pub fn object_path(&self, hex: &str) -> PathBuf {
        assert_eq!(hex.len(), 64, "not a hash: {hex:?}");
        self.objects().join(&hex[..2]).join(&hex[2..])
    }

    /// Writes `bytes` to `scratch/name` and returns the path.
    pub fn input(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.scratch.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, bytes).unwrap();
        p
    }

    /// The hex hashes of all object files under `objects/` (from their paths), sorted.
    pub fn object_hashes(&self) -> Vec<String> {
        let objects = self.objects();
        let mut v: Vec<String> = files_under(&objects)
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(&objects).unwrap();
                let parts: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
                assert_eq!(
                    parts.len(),
                    2,
                    "unexpected file under objects/: {}",
                    p.display()
                );
                format!("{}{}", parts[0], parts[1])
            })
            .collect();
        v.sort();
        v
    }

    /// Asserts that every file under `objects/` is at the path its own BLAKE3 names and is
    /// read-only.
    pub fn assert_objects_verify(&self) {
        for h in self.object_hashes() {
            let p = self.object_path(&h);
            let bytes = fs::read(&p).unwrap();
            assert_eq!(
                blake3_hex(&bytes),
                h,
                "object file {} does not hold the bytes its name says",
                p.display()
            );
            let mode = fs::symlink_metadata(&p).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o222,
                0,
                "object {} is writable: mode {mode:o}",
                p.display()
            );
        }
    }

    /// `index/ab/cdef…`, the file of the cache entry for `key` (named by BLAKE3 of the key).
    pub fn entry_file(&self, key: &str) -> PathBuf {
        let kh = blake3_hex(key.as_bytes());
        self.root.join("index").join(&kh[..2]).join(&kh[2..])
    }

    /// Puts `bytes` through `cas put -`, asserts it printed their BLAKE3, returns the hash.
    pub fn put(&self, bytes: &[u8]) -> String {
        let out = run_with_stdin(cas(self).args(["put", "-"]), bytes);
        assert!(out.status.success(), "put failed: {}", text(&out.stderr));
        let h = text(&out.stdout).trim().to_owned();
        assert_eq!(h, blake3_hex(bytes), "cas put printed the wrong hash");
        h
    }

    pub fn assert_tmp_empty(&self) {
        let left = files_under(&self.tmp());
        assert!(left.is_empty(), "staging files left in tmp/: {left:?}");
    }
}

/// A `cas` command on the store at `store`: `--store` given explicitly, no store or upstream
/// from the environment (`CAS_STORE` and `CAS_UPSTREAM` removed), stdin null. The one command
/// builder of the suite: the others add to it (a user, a umask, a home).
pub fn cas_at(store: &Path) -> Command {
    cas_through(&[], &cas_bin(), store)
}

/// [`cas_at`] running `bin`, started through `wrapper`: a command line that ends by running
/// its remaining arguments (`sh -c 'umask 077; exec "$0" "$@"'`, `unshare --uts …`); an empty
/// `wrapper` runs `bin` itself.
pub fn cas_through(wrapper: &[&str], bin: &Path, store: &Path) -> Command {
    let mut c = match wrapper {
        [] => Command::new(bin),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
    };
    c.arg("--store")
        .arg(store)
        .env_remove("CAS_STORE")
        .env_remove("CAS_UPSTREAM")
        .stdin(Stdio::null());
    c
}

/// [`cas_at`] with `HOME` and `XDG_CACHE_HOME` inside `home`, so not even the default store of
/// whoever runs the tests is reachable.
pub fn cas_home(store: &Path, home: &Path) -> Command {
    let mut c = cas_at(store);
    c.env("HOME", home).env("XDG_CACHE_HOME", home.join("xdg"));
    c
}

/// [`cas_at`] on the fixture's store.
pub fn cas(store: &Store) -> Command {
    cas_at(&store.root)
}

/// `out` parsed as one JSON value; panics showing it when it is not.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not one JSON value ({e}): {out}"))
}

/// One JSON value a line.
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(json).collect()
}

/// A command's stdout parsed as one JSON value; panics naming `what`, with stdout and stderr,
/// when it is not.
pub fn json_out(out: &Output, what: &str) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Sends signal `sig` (a name: `INT`, `KILL`, `STOP`…) to process `pid` with kill(1).
pub fn kill(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Makes a source tree: each `(relative path, bytes)` a file under `root`, parent directories
/// created. Returns `root`.
pub fn tree<P: AsRef<Path>, B: AsRef<[u8]>>(root: &Path, files: &[(P, B)]) -> PathBuf {
    fs::create_dir_all(root).unwrap();
    for (rel, bytes) in files {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }
    root.to_owned()
}

/// Everything under `dir` (itself included): type, size, mode, mtime, owner and file content,
/// by relative path. Any change a command makes shows up here.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let content = if m.is_file() {
            blake3_hex(&fs::read(&p).unwrap())
        } else if m.is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else {
            String::new()
        };
        out.insert(
            p.strip_prefix(dir).unwrap().to_owned(),
            format!(
                "{:?} len={} mode={:o} mtime={}.{} uid={} {content}",
                m.file_type(),
                m.len(),
                m.mode(),
                m.mtime(),
                m.mtime_nsec(),
                m.uid()
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// What a directory holds, for comparing a restore with its source: relative path → kind,
/// bytes or link target, executable bit (not times, owners or other mode bits).
pub fn contents(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let desc = if m.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_owned()
            } else {
                format!(
                    "file exec={} {}",
                    m.permissions().mode() & 0o111 != 0,
                    blake3_hex(&fs::read(&p).unwrap())
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Runs `cmd` to completion and returns its output (stdout and stderr captured).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"))
}

/// Runs `cmd`, asserts it exits 0, and returns its stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstderr: {}\nstdout: {}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("stdout is not UTF-8")
}

/// Runs `cmd` with `input` fed to its stdin through a pipe (from another thread, so a child
/// writing lots of output cannot deadlock with us).
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            // The child may legitimately exit early (an error): a broken pipe is not ours.
            let _ = stdin.write_all(input);
        });
        child.wait_with_output().expect("wait for cas")
    })
}

/// Sets a file's mtime (an object's LRU age, a lock's lease age). `futimens` through a
/// read-only descriptor is enough for the owner, so read-only objects need no chmod.
pub fn set_mtime(path: &Path, t: std::time::SystemTime) {
    fs::File::open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .set_modified(t)
        .unwrap();
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The names in `dir` (one level), sorted: what a command left beside its destination.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// All non-directory entries under `dir`, recursively, sorted. A missing `dir` is empty.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot list {}: {e}", d.display()),
        };
        for ent in rd {
            let ent = ent.unwrap();
            if ent.file_type().unwrap().is_dir() {
                stack.push(ent.path());
            } else {
                out.push(ent.path());
            }
        }
    }
    out.sort();
    out
}

/// Lowercase hex BLAKE3 of `bytes`, computed independently of the store.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// `len` deterministic pseudo-random bytes; different seeds give different contents.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// True if tests that need root (second users, tmpfs mounts) must run: a missing prerequisite
/// then fails instead of skipping. `CAS_REQUIRE_ROOT_TESTS=1` says so (CI sets it);
/// `CAS_REQUIRE_CLUSTER=1`, the older gate that also covered them, still does.
pub fn root_tests_required() -> bool {
    ["CAS_REQUIRE_ROOT_TESTS", "CAS_REQUIRE_CLUSTER"]
        .iter()
        .any(|v| std::env::var(v).as_deref() == Ok("1"))
}

/// True if a root-only test may go on: the prerequisite holds, or it does not and the test is
/// skipped with a message — unless [`root_tests_required`], where a missing prerequisite fails.
pub fn root_prerequisite(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            !root_tests_required(),
            "CAS_REQUIRE_ROOT_TESTS=1 (or CAS_REQUIRE_CLUSTER=1) but {what}"
        );
        eprintln!("skipped: {what}");
    }
    ok
}

/// Held while a test adds users or groups: `useradd` and `groupadd` fail, rather than wait,
/// while another holds the lock of `/etc/passwd`, and the modules that add test users (hostile,
/// cluster) run at the same time in this one process. (As separate test binaries they never
/// overlapped.)
pub fn user_db() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Polls `cond` until it holds; panics naming `what` after 30 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The staging files in `tmp` that belong to process `pid` (named `HOST.PID.RANDOM`), with
/// their sizes.
pub fn staging_files_of(tmp: &Path, pid: u32) -> Vec<(PathBuf, u64)> {
    files_under(tmp)
        .into_iter()
        .filter(|p| staging_pid(p) == Some(pid))
        .filter_map(|p| fs::metadata(&p).ok().map(|m| (p, m.len())))
        .collect()
}

/// The pid field of a staging file name `HOST.PID.RANDOM` (hosts may contain dots).
pub fn staging_pid(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let (rest, _random) = name.rsplit_once('.')?;
    let (_host, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Panics if `child` has already exited (it was expected to be still running).
pub fn assert_running(child: &mut Child, what: &str) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!("{what}: cas exited early with {status}");
    }
}

//! The power-loss and fault-injection filesystem (`crates/faultfs`) as a test fixture: mount a
//! fresh backing directory, send control commands, simulate a power loss, unmount on drop.
//!
//! Needs root and `/dev/fuse`. Without them a test skips with a message, unless
//! `CAS_REQUIRE_FAULTFS=1` (set by CI), where a missing prerequisite fails the test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `faultfs` binary, built beside `cas` by `cargo test --workspace`.
pub fn faultfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FAULTFS_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    // Cargo names only this package's binaries; faultfs is built into the same directory.
    Path::new(env!("CARGO_BIN_EXE_cas"))
        .with_file_name(format!("faultfs{}", std::env::consts::EXE_SUFFIX))
}

/// Why the fault filesystem cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let bin = faultfs_bin();
    if !bin.is_file() {
        return Some(format!(
            "{} is missing (run `cargo build -p faultfs` or `cargo test --workspace`)",
            bin.display()
        ));
    }
    None
}

/// True if the test can run; false (after saying why) if it should skip. Panics instead of
/// skipping when `CAS_REQUIRE_FAULTFS=1`.
pub fn available() -> bool {
    let Some(why) = missing_prerequisite() else {
        return true;
    };
    assert!(
        std::env::var("CAS_REQUIRE_FAULTFS").as_deref() != Ok("1"),
        "CAS_REQUIRE_FAULTFS=1 but the fault filesystem cannot run: {why}"
    );
    eprintln!("skipping: the fault filesystem cannot run here: {why}");
    false
}

/// A mounted fault filesystem over a fresh backing directory.
pub struct FaultFs {
    _dir: tempfile::TempDir,
    /// The backing directory: what a disk holds (after a power loss, what survived).
    pub backing: PathBuf,
    /// The mount point: where the store under test lives.
    pub mnt: PathBuf,
    control: PathBuf,
    child: Option<Child>,
    mounted: bool,
}

impl FaultFs {
    /// Mounts a fault filesystem; `strict` also loses directory entries not made durable by
    /// an `fsync` of their directory.
    pub fn mount(strict: bool) -> FaultFs {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        let state = dir.path().join("state");
        for d in [&backing, &mnt, &state] {
            std::fs::create_dir(d).unwrap();
        }
        let control = dir.path().join("control.sock");
        let mut cmd = Command::new(faultfs_bin());
        cmd.arg(&backing)
            .arg(&mnt)
            .arg("--control")
            .arg(&control)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if strict {
            cmd.arg("--strict");
        }
        let child = cmd.spawn().expect("start faultfs");
        let mut fs = FaultFs {
            _dir: dir,
            backing,
            mnt,
            control,
            child: Some(child),
            mounted: true,
        };
        let start = Instant::now();
        loop {
            if fs.try_ctl("ping").is_some_and(|r| r.starts_with("ok")) && fs.is_fuse() {
                break;
            }
            if let Some(st) = fs.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("faultfs exited before it was ready: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "faultfs not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(2)); // polling a condition, bounded
        }
        fs
    }

    fn is_fuse(&self) -> bool {
        rustix::fs::statfs(&self.mnt).is_ok_and(|s| s.f_type == 0x6573_5546)
    }

    fn try_ctl(&self, command: &str) -> Option<String> {
        let mut s = UnixStream::connect(&self.control).ok()?;
        s.set_read_timeout(Some(Duration::from_mins(1))).ok()?;
        writeln!(s, "{command}").ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// Sends a control command and returns the reply (which must start with `ok`).
    pub fn ctl(&self, command: &str) -> String {
        let r = self
            .try_ctl(command)
            .unwrap_or_else(|| panic!("faultfs control {command:?}: no answer"));
        assert!(r.starts_with("ok"), "faultfs control {command:?}: {r}");
        r
    }

    /// Simulates a power loss: every byte not synced is gone (and, strict, every directory
    /// entry not synced); from now on every operation fails with EIO. Returns when the backing
    /// directory holds the post-crash state.
    pub fn power_loss(&self) {
        self.ctl("powerloss");
    }

    /// Unmounts and waits for the filesystem process to exit.
    pub fn unmount(&mut self) {
        if !self.mounted {
            return;
        }
        self.mounted = false;
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still has it open (a killed process's cwd, say): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(2)); // polling, bounded
            }
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

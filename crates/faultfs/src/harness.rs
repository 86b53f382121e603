//! Start and stop a `faultfs` process from a Rust test.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use faultfs::harness::{Mounted, Settings};
//! let dir = std::path::Path::new("/tmp/t");
//! let fs = Mounted::start(&Settings::new(
//!     "target/debug/faultfs",
//!     dir.join("backing"),
//!     dir.join("mnt"),
//! ))?;
//! std::fs::write(fs.mountpoint().join("f"), b"data")?;
//! fs.ctl("powerloss")?;
//! fs.unmount()?; // or drop it; BACKING now holds the post-crash state
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control;

/// Env var that turns a missing prerequisite into a failure instead of a skip.
pub const REQUIRE_ENV: &str = "CAS_REQUIRE_FAULTFS";

/// `Ok` if this process can mount FUSE (root and `/dev/fuse`), else why not.
pub fn prerequisites() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("faultfs needs root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("faultfs needs /dev/fuse".into());
    }
    Ok(())
}

/// For tests: true if they can run; false (after printing why) if they should skip.
///
/// # Panics
/// If a prerequisite is missing and [`REQUIRE_ENV`] is `1`.
pub fn available() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
                "{why} and {REQUIRE_ENV}=1"
            );
            eprintln!("skipped: {why} (set {REQUIRE_ENV}=1 to fail instead)");
            false
        }
    }
}

/// Where the `faultfs` binary is: `$FAULTFS_BIN` if set, else `faultfs` in the target
/// directory of the running test (`target/debug/faultfs` for `target/debug/deps/TEST`), which
/// `cargo build -p faultfs` puts there.
pub fn default_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FAULTFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("faultfs")
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(parent)) = (rustix::fs::lstat(path), path.parent()) else {
        return false;
    };
    rustix::fs::lstat(parent).is_ok_and(|p| p.st_dev != me.st_dev)
}

/// How to mount.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `faultfs` binary.
    pub binary: PathBuf,
    /// Backing directory (created if missing).
    pub backing: PathBuf,
    /// Mount point (created if missing).
    pub mountpoint: PathBuf,
    /// Control socket; default `MOUNTPOINT.sock` beside the mount point.
    pub socket: Option<PathBuf>,
    /// `--strict`.
    pub strict: bool,
    /// `--state DIR`.
    pub state: Option<PathBuf>,
    /// How long to wait for readiness and for exit.
    pub timeout: Duration,
}

impl Settings {
    /// Default settings: non-strict, socket beside the mount point, 20 s timeout.
    pub fn new(
        binary: impl Into<PathBuf>,
        backing: impl Into<PathBuf>,
        mountpoint: impl Into<PathBuf>,
    ) -> Self {
        Settings {
            binary: binary.into(),
            backing: backing.into(),
            mountpoint: mountpoint.into(),
            socket: None,
            strict: false,
            state: None,
            timeout: Duration::from_secs(20),
        }
    }
}

/// A running, mounted `faultfs`; unmounted and stopped on drop.
#[derive(Debug)]
pub struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    socket: PathBuf,
    timeout: Duration,
}

impl Mounted {
    /// Spawn `faultfs` and wait (bounded) until it answers `ping`.
    pub fn start(s: &Settings) -> io::Result<Mounted> {
        std::fs::create_dir_all(&s.backing)?;
        std::fs::create_dir_all(&s.mountpoint)?;
        let socket = s.socket.clone().unwrap_or_else(|| {
            let mut p = s.mountpoint.clone().into_os_string();
            p.push(".sock");
            PathBuf::from(p)
        });
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new(&s.binary);
        cmd.arg(&s.backing)
            .arg(&s.mountpoint)
            .arg("--control")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if s.strict {
            cmd.arg("--strict");
        }
        if let Some(state) = &s.state {
            cmd.arg("--state").arg(state);
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e} (build it with `cargo build -p faultfs`)",
                    s.binary.display()
                ),
            )
        })?;
        let deadline = Instant::now() + s.timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("faultfs exited early: {status}")));
            }
            if matches!(control::request(&socket, "ping").as_deref(), Ok("ok")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = rustix::mount::unmount(&s.mountpoint, rustix::mount::UnmountFlags::DETACH);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "faultfs did not become ready",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Mounted {
            child: Some(child),
            mountpoint: s.mountpoint.clone(),
            socket,
            timeout: s.timeout,
        })
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send a control command; the reply line (`ok ...`), or an error for `err ...`.
    pub fn ctl(&self, command: &str) -> io::Result<String> {
        let reply = control::request(&self.socket, command)?;
        if reply == "ok" || reply.starts_with("ok ") {
            Ok(reply)
        } else {
            Err(io::Error::other(format!("{command}: {reply}")))
        }
    }

    /// Unmount and wait for the process to exit (bounded; killed after the timeout).
    pub fn unmount(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = control::request(&self.socket, "unmount");
        let deadline = Instant::now() + self.timeout;
        let mut result = Ok(());
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                result = Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "faultfs did not exit after unmount; killed",
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever happened, leave no mount behind (EINVAL: not mounted any more).
        let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

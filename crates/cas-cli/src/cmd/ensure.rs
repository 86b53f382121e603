//! `cas key ensure`: compute a key's value once across all callers, by running a command.
//! The protocol, the healing of damaged entries and the facts printed are the library's
//! ([`cas::Store::compute_once`]); this runs the command and says what happened.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use cas::{OnceEvent, ProducerError, Store};

use super::get;
use crate::render::{self, JsonOnly};

/// What `cas key ensure` was asked.
pub struct Ensure<'a> {
    pub key: &'a str,
    pub output: Option<&'a Path>,
    pub timeout: Option<Duration>,
    pub tree: bool,
    pub allow_external_symlinks: bool,
    pub meta: &'a str,
    pub cmd: &'a [OsString],
    pub json: bool,
}

/// Runs `cas key ensure`. Returns CMD's exit status if this caller ran it and it failed, 127
/// or 126 if CMD could not be run (not found, not executable), as a shell does.
pub fn run(store: &Store, a: &Ensure<'_>) -> Result<ExitCode> {
    let failed: Cell<Option<ExitStatus>> = Cell::new(None);
    let unrunnable: Cell<Option<u8>> = Cell::new(None);
    let (program, args) = a.cmd.split_first().expect("clap requires CMD");
    let name = program.to_string_lossy();
    let command = || {
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    let spawn = |c: &mut Command| -> std::result::Result<Child, ProducerError> {
        c.spawn().map_err(|e| {
            // As a shell: 127 for a command that is not there, 126 for one that cannot run.
            let (code, what) = match e.kind() {
                io::ErrorKind::NotFound => (127, "command not found".to_owned()),
                io::ErrorKind::PermissionDenied => (126, "permission denied".to_owned()),
                _ => (126, e.to_string()),
            };
            unrunnable.set(Some(code));
            format!("cannot run {name}: {what}").into()
        })
    };
    let check = |st: ExitStatus| -> std::result::Result<(), ProducerError> {
        if st.success() {
            return Ok(());
        }
        failed.set(Some(st));
        Err(format!("{name} exited with {st}").into())
    };
    let line = WaitLine::new();
    let on_event = |ev: OnceEvent<'_>| match ev {
        OnceEvent::Damaged(d) => {
            line.clear();
            eprintln!("cas: {d}");
        }
        OnceEvent::Waiting(w) => line.show(&format!("cas: {w}")),
        OnceEvent::LeaseNotRenewed(e) => {
            line.clear();
            eprintln!(
                "cas: warning: {}: the compute lock's lease could not be renewed; once it \
                 runs out another caller may compute {} too (the first value published wins)",
                crate::output::chain(e),
                a.key
            );
        }
        _ => {}
    };
    let mut once = store
        .compute_once(a.key.as_bytes())
        .metadata(a.meta.as_bytes())
        .on_event(&on_event);
    if let Some(t) = a.timeout {
        once = once.timeout(t);
    }
    let resolved = if a.tree {
        once.resolve_dir(|out| {
            // The command's stdout is not the value here: keep cas's own stdout clean.
            let mut c = command();
            c.env("CAS_OUT", out)
                .stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?));
            let st = spawn(&mut c)?.wait()?;
            check(st)
        })
    } else {
        once.resolve_output(|w, out| {
            let mut c = command();
            c.env("CAS_OUT", out).stdout(Stdio::piped());
            let mut child = spawn(&mut c)?;
            pump(&mut child, w, &name)?;
            check(child.wait()?)
        })
    };
    line.clear();
    let r = match (resolved, failed.get(), unrunnable.get()) {
        (Ok(r), _, _) => r,
        (Err(e), Some(st), _) if e.kind() == cas::ErrorKind::Producer => {
            eprintln!("cas: {}: nothing was stored", crate::output::chain(&e));
            return Ok(exit_status(st));
        }
        (Err(e), _, Some(code)) if e.kind() == cas::ErrorKind::Producer => {
            eprintln!("cas: {}: nothing was stored", crate::output::chain(&e));
            return Ok(ExitCode::from(code));
        }
        (Err(e), _, _) => return Err(e.into()),
    };
    let to_stdout = a.output.is_none_or(|o| o == Path::new("-"));
    if a.json {
        // stdout carries the report: the content is written only to -o.
        if let Some(dir) = a.output.filter(|_| !to_stdout) {
            deliver(store, &r.hash, a, Some(dir))?;
        }
        let damaged: Vec<_> = r.damaged.iter().map(ToString::to_string).collect();
        let v = serde_json::json!({
            "key": a.key,
            "hash": r.hash,
            "computed": r.computed,
            "waited_ms": r.waited.as_millis() as u64,
            "damaged": damaged,
        });
        render::print(true, &JsonOnly(render::json_with(v, store, &[])));
    } else {
        deliver(store, &r.hash, a, a.output)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies CMD's stdout into the store. A failed write into the store is returned as the
/// `io::Error` it is (the library reports it as the store's, naming the staging file); a
/// failed read of the pipe is CMD's side. Either way the pipe is closed and CMD waited for.
fn pump(
    child: &mut Child,
    w: &mut cas::Writer,
    name: &str,
) -> std::result::Result<(), ProducerError> {
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                drop(pipe);
                let _ = child.wait();
                return Err(format!("cannot read the output of {name}: {e}").into());
            }
        };
        if let Err(e) = w.write_all(&buf[..n]) {
            // The store failed (a full disk): that is the error, whatever CMD does once its
            // pipe is closed (SIGPIPE, "write error", exit 23…).
            drop(pipe);
            let _ = child.wait();
            return Err(Box::new(e));
        }
    }
}

fn deliver(store: &Store, hash: &cas::Hash, a: &Ensure<'_>, output: Option<&Path>) -> Result<()> {
    match output {
        Some(dir) if a.tree && dir != Path::new("-") => {
            let opts =
                cas::CheckoutOptions::default().allow_external_symlinks(a.allow_external_symlinks);
            get::restore_tree(store, hash, dir, opts)?;
        }
        _ if a.tree => crate::outln!("{hash}"),
        _ => get::write_object(store, hash, output)?,
    }
    Ok(())
}

/// The "waiting for …" line: redrawn in place on a terminal, printed once elsewhere (a job's
/// log gets one line, not one a second).
struct WaitLine {
    tty: bool,
    shown: Mutex<bool>,
}

impl WaitLine {
    fn new() -> Self {
        WaitLine {
            tty: io::stderr().is_terminal(),
            shown: Mutex::new(false),
        }
    }

    fn show(&self, text: &str) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{text}");
            let _ = err.flush();
        } else if !*shown {
            let _ = writeln!(err, "{text}");
        }
        *shown = true;
    }

    fn clear(&self) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.tty && *shown {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
        }
        *shown = false;
    }
}

/// CMD's exit status as ours: its code, or 128 + the signal that killed it.
fn exit_status(st: ExitStatus) -> ExitCode {
    let code = st
        .code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

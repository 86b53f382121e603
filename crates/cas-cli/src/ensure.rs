//! `cas key ensure`: compute a key's value once across all callers, by running a command.
//! The protocol is the library's ([`cas::Store::compute_once`]); this only runs the command.

use std::cell::Cell;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Result;
use cas::{ProducerError, Store};

/// Runs `cas key ensure`. Returns CMD's exit status if this caller ran it and it failed.
pub fn run(
    store: &Store,
    key: &str,
    output: Option<&Path>,
    timeout: Option<Duration>,
    tree: bool,
    meta: &str,
    cmd: &[OsString],
) -> Result<ExitCode> {
    let failed: Cell<Option<ExitStatus>> = Cell::new(None);
    let (program, args) = cmd.split_first().expect("clap requires CMD");
    let command = || {
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    let check = |st: ExitStatus| -> std::result::Result<(), ProducerError> {
        if st.success() {
            return Ok(());
        }
        failed.set(Some(st));
        Err(format!("{} exited with {st}", program.to_string_lossy()).into())
    };
    let mut once = store.compute_once(key.as_bytes()).metadata(meta.as_bytes());
    if let Some(t) = timeout {
        once = once.timeout(t);
    }
    let computed = if tree {
        once.dir(|out| {
            // The command's stdout is not the value here: keep cas's own stdout clean.
            let st = command()
                .env("CAS_OUT", out)
                .stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
                .status()
                .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
            check(st)
        })
    } else {
        once.hash_with_writer(|w| {
            let mut child = command()
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
            let mut out = child.stdout.take().expect("stdout is piped");
            let copied = io::copy(&mut out, w);
            drop(out);
            check(child.wait()?)?;
            copied?;
            Ok(())
        })
    };
    let hash = match (computed, failed.get()) {
        (Ok(h), _) => h,
        (Err(e), Some(st)) => {
            eprintln!("cas: {}: nothing was stored", crate::output::chain(&e));
            return Ok(exit_status(st));
        }
        (Err(e), None) => return Err(e.into()),
    };
    match output {
        Some(dir) if tree && dir != Path::new("-") => {
            crate::restore_tree(store, &hash, dir, cas::CheckoutOptions::default())?;
        }
        _ if tree => println!("{hash}"),
        _ => crate::write_object(store, &hash, output)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// CMD's exit status as ours: its code, or 128 + the signal that killed it.
fn exit_status(st: ExitStatus) -> ExitCode {
    let code = st
        .code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

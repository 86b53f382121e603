//! `cas`: the command line of the cas object store. A dispatcher: arguments are defined in
//! `args.rs`, stores opened in `open.rs`, each command family is a module of `cmd/`, and
//! every report is drawn by `render.rs`; every fact printed comes from the `cas` library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use args::{Cli, Cmd, KeyCmd, RefCmd};
use cmd::{get, inspect, keys, maint, man, put, refs, sync};
use open::{open_store, Access};

mod args;
mod cmd;
mod complete;
mod hooks;
mod open;
mod output;
mod render;
mod signals;

fn main() -> ExitCode {
    // `COMPLETE=bash cas` prints the shell's registration script; the shell then runs
    // `COMPLETE=bash cas -- WORDS…` for candidates (ref names and keys from the store).
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let tip = args::forgotten_dashes(&e, &std::env::args_os().collect::<Vec<_>>());
            let _ = e.print();
            if let Some(tip) = tip {
                eprintln!("{tip}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    raise_fd_limit();
    if let Err(e) = signals::install() {
        eprintln!("cas: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        // A signal that arrived decides the exit status even if the work finished meanwhile
        // (signals.rs): the signal thread is cleaning up and exits 128 + the signal.
        Ok(code) => {
            signals::exit_if_signalled();
            code
        }
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            // Interrupted by a signal: the signal thread exits 128 + the signal.
            signals::exit_if_signalled();
            eprintln!("cas: error: {}", output::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-file limit to the hard one, as build tools do: a batch put holds its
/// staged files open until one barrier covers them (`cas::Batch`), and more files per barrier
/// is fewer barriers.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let mut raised = lim;
        raised.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    use Access::{Existing, Write};
    let g = &cli.global;
    match cli.cmd {
        Cmd::Init {
            dir,
            force,
            shared,
            max_size,
        } => sync::init(g, dir, force, shared.as_deref(), max_size),
        Cmd::Put {
            files,
            recursive,
            r#ref,
            no_cache,
            keep_mtime,
            skip_special,
        } => put::run(
            &open_store(g, Write)?,
            &files,
            recursive
                .then(|| put::put_dir_options(no_cache, keep_mtime, skip_special))
                .as_ref(),
            r#ref.as_deref(),
            g.json,
        ),
        Cmd::Doctor { fix } => maint::doctor(&open_store(g, Existing)?, fix, g.json),
        Cmd::Verify => maint::verify(&open_store(g, Existing)?, g.json),
        Cmd::Gc {
            grace,
            now,
            dry_run,
            max_size,
        } => {
            let opts = cas::GcOptions::default()
                .grace(if now { Duration::ZERO } else { grace })
                .dry_run(dry_run)
                .max_size(max_size);
            // Never creates a store: a mistyped --store must fail, not collect a new one.
            maint::gc(&open_store(g, Existing)?, &opts, g.json)
        }
        Cmd::Get(a) => get::run(g, &a),
        Cmd::Has { hashes } => inspect::has(&open_store(g, Existing)?, &hashes, g.json),
        Cmd::Rm { hashes, force } => maint::rm(&open_store(g, Existing)?, &hashes, force, g.json),
        Cmd::Ls {
            long,
            prefix,
            older_than,
            newer_than,
        } => inspect::ls(
            &open_store(g, Existing)?,
            &inspect::LsFilter {
                long,
                prefix: prefix.unwrap_or_default(),
                older_than,
                newer_than,
            },
            g.json,
        ),
        Cmd::Ref(c) => {
            let access = if matches!(c, RefCmd::Set { .. }) {
                Write
            } else {
                Existing
            };
            refs::run(&open_store(g, access)?, c, g.json)
        }
        Cmd::Key(c) => {
            let access = if matches!(
                c,
                KeyCmd::Put { .. } | KeyCmd::Set { .. } | KeyCmd::Ensure { .. }
            ) {
                Write
            } else {
                Existing
            };
            keys::run(&open_store(g, access)?, c, g.json)
        }
        Cmd::Stats => inspect::stats(&open_store(g, Existing)?, g.json),
        Cmd::Push { dest, what } => {
            sync::transfer(&open_store(g, Existing)?, &dest, true, &what, g)
        }
        Cmd::Pull { src, what } => sync::transfer(&open_store(g, Write)?, &src, false, &what, g),
        Cmd::Show { hash } => inspect::show(&open_store(g, Existing)?, &hash, g.json),
        Cmd::Completions { shell } => man::completions(shell),
        Cmd::Man { subcommand } => man::run(&subcommand),
    }
}

/// Exit 0 for success, 1 for a negative answer or a failure already reported.
pub(crate) fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

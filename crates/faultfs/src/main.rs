//! `faultfs` command line: mount, or send one control command. See the library docs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use faultfs::control;
use faultfs::fs::{FaultFs, Options, State};
use fuser::{Config, MountOption, Session, SessionACL};

const USAGE: &str = "usage: faultfs BACKING MOUNTPOINT --control SOCKET [--strict] [--state DIR]\n       faultfs ctl SOCKET COMMAND...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ctl") => return ctl(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => mount(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("faultfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(args: &[String]) -> ExitCode {
    let [socket, command @ ..] = args else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if command.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match control::request(socket.as_ref(), &command.join(" ")) {
        Ok(reply) => {
            println!("{reply}");
            if reply == "ok" || reply.starts_with("ok ") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("faultfs ctl: {socket}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mount(args: &[String]) -> Result<(), String> {
    let mut positional = Vec::new();
    let mut socket = None;
    let mut state_dir = None;
    let mut strict = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--control" => socket = Some(PathBuf::from(it.next().ok_or(USAGE)?)),
            "--state" => state_dir = Some(PathBuf::from(it.next().ok_or(USAGE)?)),
            "--strict" => strict = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => positional.push(PathBuf::from(s)),
        }
    }
    let ([backing, mountpoint], Some(socket)) = (positional.as_slice(), socket) else {
        return Err(USAGE.into());
    };
    let backing = backing
        .canonicalize()
        .map_err(|e| format!("{}: {e}", backing.display()))?;
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| format!("{}: {e}", mountpoint.display()))?;

    let state_dir = state_dir.unwrap_or_else(|| {
        let name = backing.file_name().unwrap_or_default().to_string_lossy();
        backing
            .parent()
            .unwrap_or(&backing)
            .join(format!(".{name}.faultfs"))
    });
    let graveyard = state_dir.join("graveyard");
    if strict {
        let _ = std::fs::remove_dir_all(&graveyard);
        std::fs::create_dir_all(&graveyard).map_err(|e| format!("{}: {e}", graveyard.display()))?;
    }

    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;

    // Modes from the kernel already have the caller's umask applied. (After the socket is
    // made: only root may send it commands.)
    rustix::process::umask(rustix::fs::Mode::empty());

    let state = State::new(Options {
        backing: backing.clone(),
        strict,
        graveyard,
    })
    .map_err(|e| format!("{}: {e}", backing.display()))?;
    let shared = Arc::new(Mutex::new(state));

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("faultfs:{}", backing.display())),
        MountOption::Subtype("faultfs".into()),
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(2);
    let session = Session::new(FaultFs::new(shared.clone()), &mountpoint, &config)
        .map_err(|e| format!("mount {}: {e}", mountpoint.display()))?;

    control::spawn(shared.clone(), mountpoint.clone(), listener);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();

    let result = session.run();
    // An `unmount` command holds the lock until it has replied and exited the process.
    drop(faultfs::fs::lock(&shared));
    let _ = std::fs::remove_file(&socket);
    result.map_err(|e| format!("session: {e}"))
}

//! The control channel: a line-based text protocol on a Unix domain socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;

use crate::fs::{lock, Shared};
use crate::model::Fault;

/// Answer one command line: `ok`, `ok DATA` or `err MESSAGE`.
pub fn handle(state: &Shared, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["ping"] => Ok(String::new()),
        ["powerloss"] => Ok(lock(state).powerloss()),
        ["fault", args @ ..] => Fault::parse(args).map(|f| {
            lock(state).faults.armed.push(f);
            String::new()
        }),
        ["clear"] => {
            lock(state).faults.armed.clear();
            Ok(String::new())
        }
        ["stats"] => Ok(lock(state).faults.stats()),
        [] => Err("empty command".to_string()),
        [cmd, ..] => Err(format!("unknown command {cmd}")),
    };
    match reply {
        Ok(data) if data.is_empty() => "ok".into(),
        Ok(data) => format!("ok {data}"),
        Err(msg) => format!("err {msg}"),
    }
}

fn serve_conn(
    state: &Shared,
    mountpoint: &Path,
    socket: Option<&Path>,
    conn: UnixStream,
) -> io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line.trim() == "unmount" {
            // Detach the mount, reply, and exit: closing /dev/fuse ends the connection even
            // if files on it are still open (they then fail with ENOTCONN). The lock is held
            // to the end: no operation runs meanwhile, and the main thread, which takes it
            // once the unmount ends its session, cannot exit before the reply is out.
            let _guard = lock(state);
            let reply: &[u8] =
                match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH) {
                    Ok(()) => b"ok\n",
                    Err(e) => {
                        eprintln!("faultfs: unmount {}: {e}", mountpoint.display());
                        b"err unmount failed\n"
                    }
                };
            let _ = out.write_all(reply);
            let _ = out.flush();
            if let Some(socket) = socket {
                let _ = std::fs::remove_file(socket);
            }
            std::process::exit(0);
        }
        let reply = handle(state, &line);
        out.write_all(reply.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Serve `listener` on a background thread, one thread per connection.
pub fn spawn(state: Shared, mountpoint: PathBuf, listener: UnixListener) {
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = state.clone();
            let mountpoint = mountpoint.clone();
            let socket = socket.clone();
            thread::spawn(move || {
                let _ = serve_conn(&state, &mountpoint, socket.as_deref(), conn);
            });
        }
    });
}

/// Send one command to the control socket and return the reply line (without newline).
pub fn request(socket: &Path, command: &str) -> io::Result<String> {
    let mut conn = UnixStream::connect(socket)?;
    conn.write_all(command.as_bytes())?;
    conn.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "control socket closed without a reply",
        ));
    }
    Ok(line.trim_end().to_string())
}

//! `cas`: the command line of the cas object store. Argument parsing and output only: every
//! operation is one call into the `cas` library.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cas::{Durability, Hash, Options, Store};
use clap::{Args, Parser, Subcommand};

mod output;

/// A content-addressed object store: put bytes, get them back by hash.
///
/// The store is --store DIR, else $CAS_STORE, else $XDG_CACHE_HOME/cas, else ~/.cache/cas;
/// it is created on first use.
#[derive(Parser, Debug)]
#[command(name = "cas", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug)]
struct Global {
    /// Store directory.
    #[arg(long, global = true, value_name = "DIR", env = "CAS_STORE")]
    store: Option<PathBuf>,
    /// Durability of writes: none, file (fsync objects) or full (also their directories).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Lock lease timeout: a lock older than this whose holder is not provably alive is broken.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    lock_timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a store (default: the default store). Idempotent.
    Init {
        /// Where to create it (overrides --store).
        dir: Option<PathBuf>,
        /// Multi-user store: `group` makes directories setgid and group-writable.
        #[arg(long, value_name = "MODE", value_parser = ["group", "none"])]
        shared: Option<String>,
        /// Standing size budget for gc (e.g. 10G).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Store files (or stdin) and print one hash per line, in input order.
    Put {
        /// Files to store; none or `-` reads stdin.
        files: Vec<PathBuf>,
    },
    /// Write an object's bytes to stdout (or -o FILE), verified before anything is written.
    Get {
        /// The object's hash.
        #[arg(value_parser = parse_hash)]
        hash: Hash,
        /// Write to FILE (atomically: a temp file beside it, renamed after verification).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Exit 0 if every object is present, 1 otherwise (missing ones are named on stderr).
    Has {
        /// Hashes to look for.
        #[arg(required = true, value_parser = parse_hash)]
        hashes: Vec<Hash>,
    },
    /// Remove objects (refs to them will dangle; prefer gc).
    Rm {
        /// Hashes to remove.
        #[arg(required = true, value_parser = parse_hash)]
        hashes: Vec<Hash>,
    },
    /// List the hashes of all objects.
    Ls {
        /// Also print each object's size.
        #[arg(short, long)]
        long: bool,
    },
    /// Show the store's location, filesystem, object count and size.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    Hash::parse(s).map_err(|e| e.to_string())
}
fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse().map_err(|e: cas::Error| e.to_string())
}
fn parse_duration(s: &str) -> Result<Duration, String> {
    cas::parse_duration(s)
}
fn parse_size(s: &str) -> Result<u64, String> {
    cas::parse_size(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            let mut msg = format!("cas: error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                // thiserror variants already include their source's text.
                if !msg.contains(&c) {
                    msg += &format!(": {c}");
                }
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// The default store directory: $XDG_CACHE_HOME/cas, else ~/.cache/cas.
fn default_store() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("cas"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("no store given: use --store DIR or set CAS_STORE or HOME"))?;
    Ok(PathBuf::from(home).join(".cache").join("cas"))
}

fn store_dir(g: &Global) -> Result<PathBuf> {
    match &g.store {
        Some(s) => Ok(s.clone()),
        None => default_store(),
    }
}

/// Opens (creating on first use) the store, with the global overrides applied.
fn open_store(g: &Global) -> Result<Store> {
    let dir = store_dir(g)?;
    let store = Store::open_or_init(&dir, Options::default())?;
    apply_overrides(store, g)
}

fn apply_overrides(store: Store, g: &Global) -> Result<Store> {
    if g.durability.is_none() && g.lock_timeout.is_none() {
        return Ok(store);
    }
    let mut o = store.options().clone();
    if let Some(d) = g.durability {
        o = o.durability(d);
    }
    if let Some(t) = g.lock_timeout {
        o = o.lock_timeout(t);
    }
    Ok(Store::open_with(store.root(), o)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Init {
            dir,
            shared,
            max_size,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => store_dir(g)?,
            };
            let mut o = Options::default()
                .shared_group(shared.as_deref() == Some("group"))
                .max_size(max_size);
            if let Some(d) = g.durability {
                o = o.durability(d);
            }
            if let Some(t) = g.lock_timeout {
                o = o.lock_timeout(t);
            }
            let existed = Store::open(&dir).is_ok();
            let store = Store::init(&dir, o)?;
            if existed {
                eprintln!("cas: {} is already a store; left as it is", dir.display());
            }
            println!("{}", store.root().display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Put { files } => cmd_put(&open_store(g)?, &files),
        Cmd::Get { hash, output } => {
            let store = open_store(g)?;
            match output {
                Some(path) => {
                    output::write_atomically(&path, |w| store.get_to_writer(&hash, w).map(|_| ()))?
                }
                None => {
                    let stdout = io::stdout();
                    let mut lock = stdout.lock();
                    store.get_to_writer(&hash, &mut lock)?;
                    lock.flush().context("write output")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Has { hashes } => {
            let store = open_store(g)?;
            let mut all = true;
            for h in &hashes {
                if !store.contains(h) {
                    eprintln!("cas: missing {h}");
                    all = false;
                }
            }
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Rm { hashes } => {
            let store = open_store(g)?;
            let mut ok = true;
            for h in &hashes {
                if let Err(e) = store.remove(h) {
                    eprintln!("cas: error: {e}");
                    ok = false;
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Ls { long } => {
            let store = open_store(g)?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            for h in store.iter() {
                let h = h?;
                if long {
                    let len =
                        std::fs::symlink_metadata(store.object_path(&h)).map_or(0, |m| m.len());
                    writeln!(out, "{h} {len}")?;
                } else {
                    writeln!(out, "{h}")?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { json } => {
            let store = open_store(g)?;
            let s = store.stats()?;
            let fs = store.fs_info();
            if json {
                let v = serde_json::json!({
                    "store": store.root(),
                    "objects": s.objects,
                    "bytes": s.bytes,
                    "durability": store.durability().to_string(),
                    "shared_group": store.options().shared_group,
                    "filesystem": fs.fs_type,
                    "network_filesystem": fs.network,
                    "rename_noreplace": fs.rename_noreplace,
                });
                println!("{v}");
            } else {
                println!("store:       {}", store.root().display());
                println!("objects:     {}", s.objects);
                println!(
                    "bytes:       {} ({})",
                    s.bytes,
                    output::human_bytes(s.bytes)
                );
                println!("durability:  {}", store.durability());
                println!(
                    "filesystem:  {}{}",
                    fs.fs_type,
                    if fs.network {
                        " (network/FUSE: no mmap, link+unlink publish)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_put(store: &Store, files: &[PathBuf]) -> Result<ExitCode> {
    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    let stdout = io::stdout();
    for f in files {
        let hash = if f == Path::new("-") {
            store.put_reader(io::stdin().lock())?
        } else {
            store.put_path(f)?
        };
        // One line per input as soon as it is stored, so a pipeline sees progress.
        let mut lock = stdout.lock();
        writeln!(lock, "{hash}")?;
        lock.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

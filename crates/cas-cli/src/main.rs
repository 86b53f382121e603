//! `cas`: the command line of the cas object store. Argument parsing and output only: every
//! operation is one call into the `cas` library.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use cas::{Durability, Expect, Hash, Options, Store};
use clap::{Args, Parser, Subcommand};

mod output;

/// A content-addressed object store: put bytes, get them back by hash.
///
/// The store is `--store DIR`, else `$CAS_STORE`, else `$XDG_CACHE_HOME/cas`, else
/// `~/.cache/cas`;
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
    /// Staging files of writers on other hosts are judged dead after this long (gc, doctor).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    stale_age: Option<Duration>,
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
        /// Store directories as trees (prints the tree hash).
        #[arg(short, long)]
        recursive: bool,
        /// Also point this ref at the (last) stored object, retrying if a concurrent gc
        /// collected it in between.
        #[arg(long, value_name = "NAME")]
        r#ref: Option<String>,
    },
    /// Write an object's bytes to stdout (or -o FILE), verified before anything is written.
    Get {
        /// The object's hash.
        #[arg(value_parser = parse_hash)]
        hash: Hash,
        /// Write to FILE (atomically: a temp file beside it, renamed after verification).
        /// With -r: the directory to create.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Restore a tree into the directory given with -o (which must not exist).
        #[arg(short, long, requires = "output")]
        recursive: bool,
        /// With -r: restore symlinks that point outside the destination as they are (like
        /// tar, git and cp -a) instead of refusing the tree. Whatever follows such a link later
        /// reaches wherever the tree's author pointed it: only for trees you trust.
        #[arg(long, requires = "recursive")]
        allow_external_symlinks: bool,
    },
    /// Rehash every object (quarantining mismatches), check refs, entries and trees point to
    /// existing objects, list dead writers' staging files. Exit 0 only if all is clean.
    Verify {
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Collect unreachable objects (via trash/), clean dead writers' staging files, and with
    /// a size budget evict least recently used cache entries.
    Gc {
        /// Keep unreachable objects younger than this, and trash younger than this.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        grace: Duration,
        /// Say what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evict least recently used cache entries until the store is under SIZE.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Report the filesystem's capabilities and problems: permissions, dead writers' staging
    /// files, expired locks, dangling refs. Exit 0 if healthy.
    Doctor {
        /// Repair what is safe to repair.
        #[arg(long)]
        fix: bool,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
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
    /// Named refs: names for objects that survive gc.
    #[command(subcommand)]
    Ref(RefCmd),
    /// Keyed cache entries: map your own keys to content.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Show the store's location, filesystem, object count and size.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RefCmd {
    /// Point NAME at HASH (compare-and-swap with --expect / --expect-none).
    Set {
        /// Ref name: segments of [A-Za-z0-9._-] separated by '/'.
        name: String,
        /// The object (must be in the store).
        #[arg(value_parser = parse_hash)]
        hash: Hash,
        /// Only if the ref currently holds OLD (exit 1 otherwise).
        #[arg(long, value_name = "OLD", value_parser = parse_hash, conflicts_with = "expect_none")]
        expect: Option<Hash>,
        /// Only if the ref does not exist yet (exit 1 otherwise).
        #[arg(long)]
        expect_none: bool,
        /// Message for the ref's log.
        #[arg(short, long, default_value = "set")]
        message: String,
    },
    /// Print the hash NAME points to (exit 1 if it does not exist).
    Get {
        /// Ref name.
        name: String,
    },
    /// Remove NAME (with --expect: only if it holds OLD).
    Rm {
        /// Ref name.
        name: String,
        /// Only if the ref currently holds OLD.
        #[arg(long, value_name = "OLD", value_parser = parse_hash)]
        expect: Option<Hash>,
    },
    /// List refs (NAME HASH), optionally only those starting with PREFIX.
    Ls {
        /// Name prefix.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Show a ref's history: OLD NEW TIME HOST USER MESSAGE, oldest first.
    Log {
        /// Ref name.
        name: String,
        /// Machine-readable output (one JSON object per line).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Store FILE (or stdin) under KEY; prints the object's hash.
    Put {
        /// The key (any text).
        key: String,
        /// The content; none or `-` reads stdin.
        file: Option<PathBuf>,
        /// Metadata stored with the entry.
        #[arg(long, value_name = "TEXT", default_value = "")]
        meta: String,
    },
    /// Write KEY's content to stdout (or -o FILE), verified.
    Get {
        /// The key.
        key: String,
        /// Write to FILE atomically.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show KEY's entry: hash, size, time, metadata.
    Info {
        /// The key.
        key: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove KEY's entry.
    Rm {
        /// The key.
        key: String,
    },
    /// List entries: HASH SIZE KEY.
    Ls,
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
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// The default store directory: `$XDG_CACHE_HOME/cas`, else `~/.cache/cas`.
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
    if g.durability.is_none() && g.lock_timeout.is_none() && g.stale_age.is_none() {
        return Ok(store);
    }
    let o = with_globals(store.options().clone(), g);
    Ok(Store::open_with(store.root(), o)?)
}

/// The global --durability, --lock-timeout and --stale-age applied to `o`.
fn with_globals(mut o: Options, g: &Global) -> Options {
    if let Some(d) = g.durability {
        o = o.durability(d);
    }
    if let Some(t) = g.lock_timeout {
        o = o.lock_timeout(t);
    }
    if let Some(t) = g.stale_age {
        o = o.stale_age(t);
    }
    o
}

fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Init {
            dir,
            shared,
            max_size,
        } => cmd_init(g, dir, shared.as_deref(), max_size),
        Cmd::Put {
            files,
            recursive,
            r#ref,
        } => cmd_put(&open_store(g)?, &files, recursive, r#ref.as_deref()),
        Cmd::Doctor { fix, json } => cmd_doctor(&open_store(g)?, fix, json),
        Cmd::Verify { json } => cmd_verify(&open_store(g)?, json),
        Cmd::Gc {
            grace,
            dry_run,
            max_size,
            json,
        } => {
            let opts = cas::GcOptions::default()
                .grace(grace)
                .dry_run(dry_run)
                .max_size(max_size);
            cmd_gc(&open_store(g)?, &opts, json)
        }
        Cmd::Get {
            hash,
            output,
            recursive: true,
            allow_external_symlinks,
        } => {
            let dest = output.context("-r needs -o DIR")?;
            let opts =
                cas::CheckoutOptions::default().allow_external_symlinks(allow_external_symlinks);
            open_store(g)?.checkout_with(&hash, &dest, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { hash, output, .. } => {
            write_object(&open_store(g)?, &hash, output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Has { hashes } => {
            let store = open_store(g)?;
            let missing: Vec<&Hash> = hashes.iter().filter(|h| !store.contains(h)).collect();
            for h in &missing {
                eprintln!("cas: missing {h}");
            }
            Ok(exit(missing.is_empty()))
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
            Ok(exit(ok))
        }
        Cmd::Ls { long } => cmd_ls(&open_store(g)?, long),
        Cmd::Ref(c) => cmd_ref(&open_store(g)?, c),
        Cmd::Key(c) => cmd_key(&open_store(g)?, c),
        Cmd::Stats { json } => cmd_stats(&open_store(g)?, json),
    }
}

fn exit(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cmd_init(
    g: &Global,
    dir: Option<PathBuf>,
    shared: Option<&str>,
    max_size: Option<u64>,
) -> Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => store_dir(g)?,
    };
    let o = with_globals(
        Options::default()
            .shared_group(shared == Some("group"))
            .max_size(max_size),
        g,
    );
    let existed = Store::open(&dir).is_ok();
    // Without --shared, a directory prepared for a shared store (setgid, group-writable)
    // gets one: its shared mode is never silently dropped. `--shared none` is the way out.
    let store = if shared.is_none() {
        Store::open_or_init(&dir, o)?
    } else {
        Store::init(&dir, o)?
    };
    if existed {
        eprintln!("cas: {} is already a store; left as it is", dir.display());
    } else if shared.is_none() && store.options().shared_group {
        eprintln!(
            "cas: {} was prepared for a shared store (setgid, group-writable): made a \
             shared (group) store; use --shared none for a private one",
            dir.display()
        );
    }
    println!("{}", store.root().display());
    Ok(ExitCode::SUCCESS)
}

/// Writes an object to `output` (atomically) or stdout, verified before any byte is written.
fn write_object(store: &Store, hash: &Hash, output: Option<&Path>) -> Result<()> {
    if let Some(path) = output {
        output::write_atomically(path, |w| store.get_to_writer(hash, w).map(|_| ()))?;
    } else {
        let stdout = io::stdout();
        let mut lock = stdout.lock();
        store.get_to_writer(hash, &mut lock)?;
        lock.flush().context("write output")?;
    }
    Ok(())
}

fn cmd_doctor(store: &Store, fix: bool, json: bool) -> Result<ExitCode> {
    let r = store.doctor(fix)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        output::print_doctor(store.root(), &r);
    }
    // After --fix, what was repaired no longer counts against health.
    let repaired_ok =
        fix && r.dangling.is_empty() && r.permission_problems.is_empty() && r.damaged.is_empty();
    Ok(exit(r.is_healthy() || repaired_ok))
}

fn cmd_gc(store: &Store, opts: &cas::GcOptions, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("gc");
    let r = store.gc(opts, &|p| bar.update(p))?;
    bar.finish();
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        output::print_gc(&r);
    }
    for p in &r.problems {
        eprintln!("cas: damaged: {}: {}", p.path.display(), p.reason);
    }
    if let Some(why) = &r.sweep_skipped {
        eprintln!("cas: gc condemned and deleted nothing: {why}");
    }
    Ok(exit(r.is_clean()))
}

fn cmd_ls(store: &Store, long: bool) -> Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut ok = true;
    for h in store.iter() {
        // A fan-out name that is not a directory is reported; the listing goes on.
        let h = match h {
            Ok(h) => h,
            Err(e) => {
                eprintln!("cas: error: {e}");
                ok = false;
                continue;
            }
        };
        if long {
            let len = store.object_len(&h).unwrap_or(0);
            writeln!(out, "{h} {len}")?;
        } else {
            writeln!(out, "{h}")?;
        }
    }
    out.flush()?;
    Ok(exit(ok))
}

fn cmd_stats(store: &Store, json: bool) -> Result<ExitCode> {
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
        let note = if fs.network {
            " (network/FUSE: no mmap, link+unlink publish)"
        } else {
            ""
        };
        println!("filesystem:  {}{note}", fs.fs_type);
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_put(
    store: &Store,
    files: &[PathBuf],
    recursive: bool,
    ref_name: Option<&str>,
) -> Result<ExitCode> {
    if let Some(name) = ref_name {
        cas::validate_ref_name(name)?;
    }
    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    let stdout = io::stdout();
    let put_one = |f: &Path| -> Result<Hash> {
        Ok(if f == Path::new("-") {
            store.put_reader(io::stdin().lock())?
        } else if recursive && f.is_dir() {
            let (hash, report) = store.put_dir_report(f)?;
            if let Some((link, target)) = &report.example {
                eprintln!(
                    "cas: warning: {} symlink(s) in {} point outside it (e.g. {} -> {}); \
                     `cas get -r` refuses to restore them unless --allow-external-symlinks",
                    report.external_symlinks,
                    f.display(),
                    link.display(),
                    target.display()
                );
            }
            hash
        } else if f.is_dir() {
            anyhow::bail!(
                "{} is a directory (use -r to store it as a tree)",
                f.display()
            )
        } else {
            store.put_path(f)?
        })
    };
    let mut last = None;
    if recursive {
        for f in files {
            let hash = put_one(f)?;
            last = Some((f, hash));
            // One line per input as soon as it is stored, so a pipeline sees progress.
            let mut lock = stdout.lock();
            writeln!(lock, "{hash}")?;
            lock.flush()?;
        }
    } else {
        // Plain files: one durability barrier for all of them (docs/performance.md).
        let mut batch = store.batch();
        let mut hashes = Vec::new();
        let mut failure = None;
        for f in files {
            let r = if f == Path::new("-") {
                batch.put_reader(io::stdin().lock())
            } else if f.is_dir() {
                Err(anyhow::anyhow!(
                    "{} is a directory (use -r to store it as a tree)",
                    f.display()
                ))?
            } else {
                batch.put_path(f)
            };
            match r {
                Ok(h) => {
                    hashes.push(h);
                    last = Some((f, h));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // What was staged before a failure is still stored and printed, in input order.
        batch.commit()?;
        let mut out = io::BufWriter::new(stdout.lock());
        for h in &hashes {
            writeln!(out, "{h}")?;
        }
        out.flush()?;
        if let Some(e) = failure {
            return Err(e.into());
        }
    }
    if let (Some(name), Some((f, mut hash))) = (ref_name, last) {
        // A gc with a tiny grace period may collect the object between the put and the ref
        // update; the update then fails cleanly with NotFound, and putting again fixes it.
        let mut attempts = 0;
        loop {
            match store.set_ref_msg(name, hash, Expect::Any, "put") {
                Err(e) if e.is_not_found() && attempts < 5 && f != Path::new("-") => {
                    attempts += 1;
                    hash = put_one(f)?;
                }
                r => {
                    r?;
                    break;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_verify(store: &Store, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("verify");
    let r = store.verify(&|p| bar.update(p))?;
    bar.finish();
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        output::print_verify(&r);
    }
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_ref(store: &Store, c: RefCmd) -> Result<ExitCode> {
    match c {
        RefCmd::Set {
            name,
            hash,
            expect,
            expect_none,
            message,
        } => {
            let exp = match (expect, expect_none) {
                (Some(h), _) => Expect::Value(h),
                (None, true) => Expect::Absent,
                (None, false) => Expect::Any,
            };
            store.set_ref_msg(&name, hash, exp, &message)?;
        }
        RefCmd::Get { name } => match store.get_ref(&name)? {
            Some(h) => println!("{h}"),
            None => return Err(cas::Error::RefNotFound { name }.into()),
        },
        RefCmd::Rm { name, expect } => {
            let exp = expect.map_or(Expect::Any, Expect::Value);
            store.remove_ref(&name, exp)?;
        }
        RefCmd::Ls { prefix } => {
            let (refs, damaged) = store.refs_report(&prefix);
            let mut out = io::BufWriter::new(io::stdout().lock());
            for (name, h) in refs {
                writeln!(out, "{name} {h}")?;
            }
            out.flush()?;
            for p in &damaged {
                eprintln!("cas: error: {}: {}", p.path.display(), p.reason);
            }
            if !damaged.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        RefCmd::Log { name, json } => {
            let (entries, damaged) = store.reflog_report(&name)?;
            for p in &damaged {
                eprintln!("cas: warning: {}: {}", p.path.display(), p.reason);
            }
            let mut out = io::BufWriter::new(io::stdout().lock());
            for e in entries {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    let f = |h: Option<Hash>| h.map_or_else(|| "-".to_owned(), |h| h.to_string());
                    writeln!(
                        out,
                        "{} {} {} {} {} {}",
                        f(e.old),
                        f(e.new),
                        e.time,
                        e.host,
                        e.user,
                        e.message
                    )?;
                }
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_key(store: &Store, c: KeyCmd) -> Result<ExitCode> {
    match c {
        KeyCmd::Put { key, file, meta } => {
            let hash = match file {
                Some(f) if f != Path::new("-") => {
                    let src = std::fs::File::open(&f)
                        .with_context(|| format!("cannot open {}", f.display()))?;
                    store.put_keyed(key.as_bytes(), src, meta.as_bytes())?
                }
                _ => store.put_keyed(key.as_bytes(), io::stdin().lock(), meta.as_bytes())?,
            };
            println!("{hash}");
        }
        KeyCmd::Get { key, output } => {
            let entry = store.entry(key.as_bytes())?;
            write_object(store, &entry.hash, output.as_deref())?;
        }
        KeyCmd::Info { key, json } => {
            let e = store.entry(key.as_bytes())?;
            if json {
                let v = serde_json::json!({
                    "key": String::from_utf8_lossy(&e.key),
                    "hash": e.hash.to_string(),
                    "size": e.size,
                    "time_ms": e.time_ms,
                    "metadata": String::from_utf8_lossy(&e.metadata),
                });
                println!("{v}");
            } else {
                println!("hash:     {}", e.hash);
                println!("size:     {}", e.size);
                println!("time_ms:  {}", e.time_ms);
                println!("metadata: {}", String::from_utf8_lossy(&e.metadata));
            }
        }
        KeyCmd::Rm { key } => store.remove_keyed(key.as_bytes())?,
        KeyCmd::Ls => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            let mut ok = true;
            for e in store.iter_keys()? {
                match e {
                    Ok(e) => writeln!(
                        out,
                        "{} {} {}",
                        e.hash,
                        e.size,
                        String::from_utf8_lossy(&e.key)
                    )?,
                    Err(e) => {
                        eprintln!("cas: error: {e}");
                        ok = false;
                    }
                }
            }
            out.flush()?;
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

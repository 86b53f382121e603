//! `cas`: the command line of the cas object store. Argument parsing and output only: every
//! operation is one call into the `cas` library.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use cas::{Create, Durability, Expect, Hash, Options, Store};
use clap::{Args, Parser, Subcommand};

mod ensure;
mod man;

mod output;
mod signals;

/// A content-addressed object store: put bytes, get them back by hash.
///
/// The store is `--store DIR`, else `$CAS_STORE`, else `$XDG_CACHE_HOME/cas`, else
/// `~/.cache/cas`. Only `cas init` and the commands that store something (put, key put, ref
/// set, gc) create it, and only where nothing exists yet (or, for the default store, an empty
/// directory); commands that only read never create anything.
#[derive(Parser, Debug)]
#[command(
    name = "cas",
    version,
    about = "A content-addressed object store: put bytes, get them back by hash",
    long_about,
    after_help = "Examples:\n  cas init\n  h=$(cas put README.md) && cas get \"$h\" -o copy.md\n  cas ref set release/v1 \"$h\"\n  cas gc --max-size 10G"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

const GLOBAL: &str = "Global options";

#[derive(Args, Debug)]
struct Global {
    /// Store directory.
    #[arg(long, global = true, value_name = "DIR", env = "CAS_STORE", help_heading = GLOBAL)]
    store: Option<PathBuf>,
    /// Durability of writes: none, file (fsync objects) or full (also their directories).
    /// It covers every store the command writes: a tier's upstream and a push destination
    /// are written at least at this level (or their own configured level, if higher).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_durability, help_heading = GLOBAL)]
    durability: Option<Durability>,
    /// Lock lease timeout: a lock older than this whose holder is not provably alive is broken.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    lock_timeout: Option<Duration>,
    /// Machine-readable output: one JSON object, or one per line for lists and multi-input
    /// commands (put, has, rm, ls, show, ref ls, ref log, key ls; a failed input as
    /// `{"input", "error"}`). The same fact has the same field name in every command; the
    /// fields are listed in docs/json.md.
    #[arg(long, global = true, help_heading = GLOBAL)]
    json: bool,
    /// Staging files of writers on other hosts are judged dead after this long (gc, doctor).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    stale_age: Option<Duration>,
    /// Use the store as a local tier in front of the upstream store DIR: misses are fetched
    /// from it, puts written through to it, refs and keys live in it. With `cas init`,
    /// recorded in the store's config.
    #[arg(long, global = true, value_name = "DIR", env = "CAS_UPSTREAM", help_heading = GLOBAL)]
    upstream: Option<PathBuf>,
    /// The upstream is read-only (a published dataset): puts stay local; refs and keys can
    /// be read, not set.
    #[arg(long, global = true, help_heading = GLOBAL)]
    upstream_readonly: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a store (default: the default store). Idempotent on a store; refuses a
    /// non-empty directory that is not one unless --force.
    #[command(
        after_help = "Examples:\n  cas init                          # the default store\n  cas init /srv/cache --shared group --max-size 50G\n  cas init --force ./dir-with-files # a store beside its files"
    )]
    Init {
        /// Where to create it (overrides --store).
        dir: Option<PathBuf>,
        /// Create the store even in a non-empty directory that is not a store (its files are
        /// left as they are).
        #[arg(long)]
        force: bool,
        /// Multi-user store: `group` makes directories setgid and group-writable.
        #[arg(long, value_name = "MODE", value_parser = ["group", "none"])]
        shared: Option<String>,
        /// Standing size budget for gc (e.g. 10G).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Store files (or stdin) and print one hash per line, in input order. An input that
    /// fails is named on stderr and the others are still stored and printed (exit 1).
    #[command(
        after_help = "Examples:\n  cas put report.pdf\n  tar c src | cas put\n  cas put -r src/ --ref release/v1\n  cas put --json a b c"
    )]
    Put {
        /// Files to store; none or `-` reads stdin.
        files: Vec<PathBuf>,
        /// Store directories as trees (prints the tree hash).
        #[arg(short, long)]
        recursive: bool,
        /// Also point this ref at the (last) stored object, retrying if a concurrent gc
        /// collected it in between. Not moved if any input failed.
        #[arg(long, value_name = "NAME", value_parser = parse_ref_name)]
        r#ref: Option<String>,
        /// With -r: read and hash every file, neither using nor updating the stat cache
        /// (by default a file whose device, inode, size, mtime and ctime are unchanged since
        /// it was last stored, and whose object is still in the store, is not read again).
        #[arg(long, requires = "recursive")]
        no_cache: bool,
    },
    /// Write an object's bytes to stdout (or -o FILE), verified before anything is written.
    #[command(
        after_help = "Examples:\n  cas get HASH > copy\n  cas get HASH -o copy   # atomic; a device or FIFO is written in place\n  cas get HASH --range 4096-8191 -o part   # 4 KiB, verified without reading the rest\n  cas get -r TREE -o restored/"
    )]
    Get {
        /// The object's hash, or a unique prefix of it (8 or more hex digits).
        #[arg(value_parser = parse_hash_arg)]
        hash: HashArg,
        /// Write to FILE, verified first: a regular file (or a symlink's target) is replaced
        /// atomically (a temp file beside it, renamed); a device or FIFO is written in place;
        /// `-` is stdout. With -r: the directory to create.
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
        /// Only bytes START to END (inclusive offsets, as HTTP ranges; `START-` to the end,
        /// `-N` the last N bytes),
        /// verified a 16 KiB chunk group at a time through the object's outboard, without
        /// reading the rest of the object. On stdout, bytes of groups verified before a
        /// damaged one may have been written; -o FILE is replaced only if all verified.
        #[arg(long, value_name = "START-END", value_parser = parse_byte_range,
              conflicts_with = "recursive", allow_hyphen_values = true)]
        range: Option<ByteRange>,
    },
    /// Rehash every object (quarantining mismatches), check refs, entries and trees point to
    /// existing objects, list dead writers' staging files. Exit 0 only if all is clean.
    #[command(after_help = "Examples:\n  cas verify && echo clean\n  cas verify --json")]
    Verify,
    /// Collect unreachable objects (via trash/), clean dead writers' staging files, and with
    /// a size budget evict least recently used cache entries.
    #[command(
        after_help = "Examples:\n  cas gc                  # unreachable objects older than 1h go\n  cas gc --max-size 10G\n  cas gc --now --dry-run"
    )]
    Gc {
        /// Keep unreachable objects younger than this, and trash younger than this. 0s
        /// collects every unreachable object and frees its space in this run.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        grace: Duration,
        /// Same as --grace 0s.
        #[arg(long, conflicts_with = "grace")]
        now: bool,
        /// Say what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evict least recently used cache entries until the store is under SIZE.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Report the filesystem's capabilities and problems: permissions, dead writers' staging
    /// files, expired locks, dangling refs. Exit 0 if healthy.
    #[command(after_help = "Examples:\n  cas doctor\n  cas doctor --fix --json")]
    Doctor {
        /// Repair what is safe to repair.
        #[arg(long)]
        fix: bool,
    },
    /// Exit 0 if every object is present, 1 otherwise (missing ones are named on stderr).
    #[command(after_help = "Examples:\n  cas has HASH1 HASH2 && echo all present")]
    Has {
        /// Hashes to look for.
        #[arg(required = true, value_parser = parse_hash)]
        hashes: Vec<Hash>,
    },
    /// Remove objects now. Refused (exit 1, naming it) for an object that a ref, a cache
    /// entry or an update in progress reaches, directly or through trees; unreferenced
    /// objects are better left to gc, which keeps them for the grace period.
    #[command(
        after_help = "Examples:\n  cas rm HASH\n  cas rm --force HASH   # even if a ref reaches it (the ref dangles)"
    )]
    Rm {
        /// Hashes to remove.
        #[arg(required = true, value_parser = parse_hash)]
        hashes: Vec<Hash>,
        /// Remove even objects that names reach, leaving those names dangling.
        #[arg(long)]
        force: bool,
    },
    /// List the hashes of all objects, sorted.
    #[command(after_help = "Examples:\n  cas ls\n  cas ls -l --prefix ab\n  cas ls --json")]
    Ls {
        /// Also print each object's size, last use (mtime) and kind (blob or tree): the kind
        /// costs a read of each object's first bytes. With --json, adds `kind`.
        #[arg(short, long)]
        long: bool,
        /// Only hashes starting with these hex digits.
        #[arg(long, value_name = "HEX", value_parser = parse_hex_prefix)]
        prefix: Option<String>,
        /// Only objects not used (put or read) for this long (e.g. 30d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Only objects used (put or read) within this long (e.g. 1h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        newer_than: Option<Duration>,
    },
    /// Named refs: names for objects that survive gc.
    #[command(
        subcommand,
        after_help = "Examples:\n  cas ref set release/v1 HASH\n  cas ref ls"
    )]
    Ref(RefCmd),
    /// Keyed cache entries: map your own keys to content.
    #[command(
        subcommand,
        after_help = "Examples:\n  cas key put build:abc123 out.tar\n  cas key get build:abc123 -o out.tar"
    )]
    Key(KeyCmd),
    /// Print a shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  cas completions bash > /etc/bash_completion.d/cas\n  cas completions zsh > ~/.zfunc/_cas"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Copy refs and keys, with every object they reach, to the store DEST; then set them
    /// there with compare-and-swap (exit 1 naming a ref DEST moved meanwhile). Re-running
    /// after an interruption copies only what is missing.
    #[command(
        // clap puts the required group (refs, --key or --all) before DEST; DEST is first.
        override_usage = "cas push [OPTIONS] <DEST> <REF>...\n       cas push [OPTIONS] <DEST> --key <KEY>...\n       cas push [OPTIONS] <DEST> --all",
        after_help = "Examples:\n  cas push /shared/cas release/v1\n  cas push /shared/cas --all --json\n  cas push /shared/cas release/v1 --force"
    )]
    Push {
        /// The destination store.
        dest: PathBuf,
        #[command(flatten)]
        what: TransferArgs,
    },
    /// Copy refs and keys, with every object they reach, from the store SRC into this one;
    /// then set them here with compare-and-swap (as push, the other way).
    #[command(
        override_usage = "cas pull [OPTIONS] <SRC> <REF>...\n       cas pull [OPTIONS] <SRC> --key <KEY>...\n       cas pull [OPTIONS] <SRC> --all",
        after_help = "Examples:\n  cas pull /shared/cas release/v1\n  cas pull /shared/cas --key build:abc123"
    )]
    Pull {
        /// The source store.
        src: PathBuf,
        #[command(flatten)]
        what: TransferArgs,
    },
    /// Print the manual page (roff) of cas, or of one subcommand (`cas man put`, `cas man ref
    /// set`), generated from these very definitions.
    #[command(
        after_help = "Examples:\n  cas man | man -l -\n  cas man put | man -l -\n  cas man > /usr/local/share/man/man1/cas.1\n  for c in put get gc; do cas man $c > cas-$c.1; done"
    )]
    Man {
        /// The subcommand (and its subcommand, for ref and key); none: the page of cas.
        #[arg(value_name = "SUBCOMMAND")]
        subcommand: Vec<String>,
    },
    /// Show the store's location, filesystem, object count and size.
    #[command(after_help = "Examples:\n  cas stats\n  cas --store /srv/cache stats --json")]
    Stats,
    /// Describe an object: a tree is listed recursively (MODE KIND HASH SIZE PATH, like
    /// `git ls-tree -r -t`); a blob gets its kind and size.
    #[command(
        after_help = "Examples:\n  cas show 4f2a91c0\n  cas --json show \"$(cas put -r src/)\""
    )]
    Show {
        /// The object's hash, or a unique prefix of it (8 or more hex digits).
        #[arg(value_parser = parse_hash_arg)]
        hash: HashArg,
    },
}

/// What push and pull transfer: at least one ref, key or `--all` (else a usage error, exit 2,
/// before any store is opened).
#[derive(Args, Debug)]
#[group(id = "transfer", skip)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["refs", "keys", "all"])))]
struct TransferArgs {
    /// Refs to transfer (after DEST or SRC).
    #[arg(value_name = "REF", value_parser = parse_ref_name)]
    refs: Vec<String>,
    /// Cache keys to transfer (repeatable).
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// Every ref and every key.
    #[arg(long)]
    all: bool,
    /// Set the names whatever the destination holds now.
    #[arg(long)]
    force: bool,
    /// Objects copied at once.
    #[arg(long, short, value_name = "N", default_value_t = 4)]
    jobs: usize,
}

#[derive(Subcommand, Debug)]
enum RefCmd {
    /// Point NAME at HASH (compare-and-swap with --expect / --expect-none).
    #[command(
        after_help = "Examples:\n  cas ref set release/v1 HASH\n  cas ref set release/v1 NEW --expect OLD   # compare-and-swap"
    )]
    Set {
        /// Ref name: segments of [A-Za-z0-9._-] separated by '/'.
        #[arg(value_parser = parse_ref_name)]
        name: String,
        /// The object (must be in the store): its hash or a unique prefix (8+ hex digits).
        #[arg(value_parser = parse_hash_arg)]
        hash: HashArg,
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
    #[command(after_help = "Examples:\n  cas ref get release/v1")]
    Get {
        /// Ref name.
        #[arg(value_parser = parse_ref_name)]
        name: String,
    },
    /// Remove NAME (with --expect: only if it holds OLD).
    #[command(after_help = "Examples:\n  cas ref rm release/v1 --expect HASH")]
    Rm {
        /// Ref name.
        #[arg(value_parser = parse_ref_name)]
        name: String,
        /// Only if the ref currently holds OLD.
        #[arg(long, value_name = "OLD", value_parser = parse_hash)]
        expect: Option<Hash>,
    },
    /// List refs (NAME HASH), optionally only those starting with PREFIX.
    #[command(after_help = "Examples:\n  cas ref ls release/")]
    Ls {
        /// Name prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// End each line with NUL instead of a newline (for `xargs -0`).
        #[arg(short = 'z')]
        nul: bool,
    },
    /// Show a ref's history: OLD NEW TIME HOST USER MESSAGE, oldest first, printed as it is
    /// read. A line that cannot be parsed is named on stderr and skipped.
    #[command(
        after_help = "Examples:\n  cas ref log release/v1\n  cas ref log -n 5 release/v1\n  cas ref log release/v1 --json"
    )]
    Log {
        /// Ref name.
        #[arg(value_parser = parse_ref_name)]
        name: String,
        /// Only the last N lines of the log (read backwards from its end; a damaged line
        /// among them is named on stderr).
        #[arg(short = 'n', value_name = "N")]
        lines: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Store FILE (or stdin, or with -r a directory as a tree) under KEY; prints the hash.
    #[command(
        after_help = "Examples:\n  cas key put build:abc123 out.tar --meta target=x86_64\n  cas key put -r dataset:v3 prepared/"
    )]
    Put {
        /// The key (any text).
        key: String,
        /// The content; none or `-` reads stdin.
        file: Option<PathBuf>,
        /// Store FILE, a directory, as a tree.
        #[arg(short, long)]
        recursive: bool,
        /// Metadata stored with the entry.
        #[arg(long, value_name = "TEXT", default_value = "")]
        meta: String,
    },
    /// Point KEY at an object already in the store (compare-and-swap with --expect /
    /// --expect-none: exit 1 if the entry holds something else).
    #[command(
        after_help = "Examples:\n  cas key set artifact:v1 \"$(cas put -r out/)\" --expect-none"
    )]
    Set {
        /// The key.
        key: String,
        /// The object (must be in the store): its hash or a unique prefix (8+ hex digits).
        #[arg(value_parser = parse_hash_arg)]
        hash: HashArg,
        /// Metadata stored with the entry.
        #[arg(long, value_name = "TEXT", default_value = "")]
        meta: String,
        /// Only if the entry currently holds OLD.
        #[arg(long, value_name = "OLD", value_parser = parse_hash, conflicts_with = "expect_none")]
        expect: Option<Hash>,
        /// Only if there is no entry yet (first writer wins).
        #[arg(long)]
        expect_none: bool,
    },
    /// Write KEY's content to stdout (or -o FILE); if KEY is missing or damaged, run CMD — in
    /// exactly one of all concurrent callers, on every host sharing the store — and store its
    /// value. The others wait for it.
    ///
    /// CMD's value is its stdout, or the file `$CAS_OUT`: an empty file in the store's tmp/
    /// (the store's filesystem); if CMD writes anything into it, that is the value and CMD's
    /// stdout is discarded. With --tree, CMD fills the directory `$CAS_OUT` instead. CMD is
    /// run without a shell: write `sh -c '… "$CAS_OUT" …'` so that the variable is CMD's, not
    /// your shell's.
    ///
    /// A damaged entry (its object corrupt or missing, any object of its tree, or the entry
    /// file itself) is a miss: the damage is quarantined and said in one line on stderr, and
    /// the value is computed again. If CMD fails, nothing is stored and its exit status is
    /// cas's; if it cannot be run, cas exits 127 (not found) or 126 (not executable). If the
    /// store fails while CMD's output goes into it (a full disk), the store's error is
    /// reported, whatever CMD exits with. While another caller computes, a terminal shows who
    /// and for how long. --json prints the key, the hash, whether this call computed it and
    /// how long it waited (the content then goes only to -o).
    #[command(after_help = "Examples:\n  \
  cas key ensure ref-genome:v2 -o ref.fa -- ./download-and-index.sh\n  \
  cas key ensure url:pkg-1.2 -o pkg.tar.gz -- sh -c 'curl -sfL -o \"$CAS_OUT\" https://example.org/pkg-1.2.tar.gz'\n  \
  cas key ensure data:v3 --tree -o data/ -- sh -c 'make-dataset --out \"$CAS_OUT\"'")]
    Ensure {
        /// The key.
        key: String,
        /// Write the content to FILE (with --tree: restore the tree into the new directory
        /// DIR); `-` is stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Give up waiting for another caller's computation after this long (e.g. 30m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// CMD fills the empty directory `$CAS_OUT`, stored as a tree (its stdout goes to
        /// stderr). The tree must not record where it was built: a Python venv or a conda
        /// env does, and breaks when restored elsewhere.
        #[arg(long)]
        tree: bool,
        /// With --tree -o DIR: restore symlinks that point outside DIR as they are (like tar,
        /// git and cp -a) instead of refusing the tree. Only for trees you trust.
        #[arg(long, requires = "tree")]
        allow_external_symlinks: bool,
        /// Metadata stored with the entry when this caller computes it.
        #[arg(long, value_name = "TEXT", default_value = "")]
        meta: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Write KEY's content to stdout (or -o FILE), verified.
    #[command(after_help = "Examples:\n  cas key get build:abc123 -o out.tar")]
    Get {
        /// The key.
        key: String,
        /// Write to FILE as `cas get -o` does (`-` is stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show KEY's entry: hash, size, time, metadata.
    #[command(after_help = "Examples:\n  cas key info build:abc123 --json")]
    Info {
        /// The key.
        key: String,
    },
    /// Remove KEY's entry.
    #[command(after_help = "Examples:\n  cas key rm build:abc123")]
    Rm {
        /// The key.
        key: String,
    },
    /// List entries sorted by key: HASH SIZE KEY (the key last, so any text parses; control
    /// characters in a key are escaped unless -z).
    #[command(
        after_help = "Examples:\n  cas key ls\n  cas key ls --json\n  cas key ls -z | xargs -0 …"
    )]
    Ls {
        /// End each line with NUL instead of a newline and print keys verbatim.
        #[arg(short = 'z')]
        nul: bool,
    },
}

/// A hash given on the command line: the full 64 hex digits, or a unique prefix of 8 or more,
/// resolved against the store once it is open.
#[derive(Debug, Clone)]
struct HashArg(String);

impl HashArg {
    fn resolve(&self, store: &Store) -> Result<Hash> {
        Ok(store.resolve_prefix(&self.0)?)
    }
}

/// `--range START-END` (inclusive), `START-` (to the end) or `-N` (the last N bytes), as
/// HTTP's byte ranges.
#[derive(Debug, Clone, Copy)]
enum ByteRange {
    From { start: u64, end: Option<u64> },
    Last(u64),
}

fn parse_byte_range(s: &str) -> Result<ByteRange, String> {
    let bad = |why: &str| format!("{s:?} is not a byte range START-END, START- or -N: {why}");
    let (a, b) = s.split_once('-').ok_or_else(|| bad("no '-'"))?;
    let num = |t: &str| {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("offsets are decimal numbers"));
        }
        t.parse::<u64>().map_err(|_| bad("offset too large"))
    };
    if a.is_empty() {
        return Ok(ByteRange::Last(num(b)?));
    }
    let start = num(a)?;
    let end = if b.is_empty() { None } else { Some(num(b)?) };
    if end.is_some_and(|e| e < start) {
        return Err(bad("END is before START"));
    }
    Ok(ByteRange::From { start, end })
}

/// `cas get HASH [--range R] [-o FILE]`.
fn cmd_get(store: &Store, hash: &Hash, out: Option<&Path>, range: Option<ByteRange>) -> Result<()> {
    match range {
        Some(r) => write_range(store, hash, r, out),
        None => write_object(store, hash, out),
    }
}

/// `cas get --range`: the verified bytes of the range to stdout or `-o FILE`.
fn write_range(store: &Store, hash: &Hash, r: ByteRange, output: Option<&Path>) -> Result<()> {
    use std::ops::Bound;
    let range = match r {
        ByteRange::From { start, end } => (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Included),
        ),
        ByteRange::Last(n) => {
            // As HTTP: more than the object has is all of it.
            let len = store.object_info(hash)?.len;
            (Bound::Included(len.saturating_sub(n)), Bound::Unbounded)
        }
    };
    match output {
        Some(path) if path != Path::new("-") => {
            store.read_range_to_path(hash, range, path)?;
        }
        _ => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            store.read_range_to_writer(hash, range, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn parse_hash_arg(s: &str) -> Result<HashArg, String> {
    if s.len() == cas::HEX_LEN {
        return Hash::parse(s)
            .map(|_| HashArg(s.to_owned()))
            .map_err(|e| e.to_string());
    }
    if (8..cas::HEX_LEN).contains(&s.len())
        && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Ok(HashArg(s.to_owned()));
    }
    Hash::parse(s)
        .map(|_| HashArg(s.to_owned()))
        .map_err(|e| format!("{e} (a unique prefix of 8 or more lowercase hex digits also works)"))
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    Hash::parse(s).map_err(|e| e.to_string())
}
fn parse_hex_prefix(s: &str) -> Result<String, String> {
    if s.len() > cas::HEX_LEN || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{s:?} is not a hash prefix (up to 64 lowercase hex digits)"
        ));
    }
    Ok(s.to_owned())
}

/// Ref names are checked while parsing arguments, so an invalid one is a usage error (exit 2).
fn parse_ref_name(s: &str) -> Result<String, String> {
    cas::validate_ref_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
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
    raise_fd_limit();
    if let Err(e) = signals::install() {
        eprintln!("cas: error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
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

/// The default store directory: `$XDG_CACHE_HOME/cas`, else `~/.cache/cas` (the library's
/// rule, shared with every program using the default store; `$CAS_STORE` is clap's).
fn default_store() -> Result<PathBuf> {
    cas::DefaultStore::per_user()
        .map_err(|_| anyhow!("no store given: use --store DIR or set CAS_STORE or HOME"))
}

fn store_dir(g: &Global) -> Result<PathBuf> {
    match &g.store {
        Some(s) => Ok(s.clone()),
        None => default_store(),
    }
}

/// Whether a command may create the store it works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads, checks or removes: the store must exist; nothing is ever created.
    Existing,
    /// Stores something: creates the store where nothing exists yet (the default store also
    /// in an empty directory), never in an existing directory that is not a store.
    Write,
}

/// Opens the store, with the global overrides applied; creates it only as `access` allows.
fn open_store(g: &Global, access: Access) -> Result<Store> {
    let dir = store_dir(g)?;
    let create = match access {
        Access::Existing => Create::Never,
        // An explicit --store / $CAS_STORE is created only where nothing is: an existing
        // directory there, even an empty one, is more likely a typo than a wish.
        Access::Write if g.store.is_some() => Create::IfMissing,
        Access::Write => Create::IfMissingOrEmpty,
    };
    let store = match Store::open_or_create(&dir, Options::default(), create) {
        Ok(s) => s,
        Err(e @ (cas::Error::NotAStore { .. } | cas::Error::NotEmpty { .. })) => {
            return Err(not_a_store_hint(&dir, &e));
        }
        Err(e) => return Err(e.into()),
    };
    let store = apply_overrides(store, g)?;
    signals::set_store(&store);
    Ok(store)
}

/// The error for a path that holds no store, saying what to run.
fn not_a_store_hint(dir: &Path, e: &cas::Error) -> anyhow::Error {
    let d = dir.display();
    let msg = match std::fs::symlink_metadata(dir) {
        Err(_) => format!("there is no store at {d}; create one with `cas init {d}`"),
        Ok(m) if m.is_dir() && std::fs::read_dir(dir).is_ok_and(|mut r| r.next().is_some()) => {
            format!(
                "{d} is not a cas store (nothing was written there); to make it one, run \
                 `cas init --force {d}` (its files are kept), or choose another --store"
            )
        }
        Ok(m) if m.is_dir() => {
            format!("{d} is not a cas store; create one there with `cas init {d}`")
        }
        Ok(_) => format!("{d} is not a directory: {e}"),
    };
    anyhow!(msg)
}

fn apply_overrides(store: Store, g: &Global) -> Result<Store> {
    if g.durability.is_none()
        && g.lock_timeout.is_none()
        && g.stale_age.is_none()
        && g.upstream.is_none()
        && !g.upstream_readonly
    {
        return Ok(store);
    }
    let o = with_globals(store.options().clone(), g);
    Ok(store.with_options(o)?)
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
    if let Some(u) = &g.upstream {
        o = o.upstream(Some(std::path::absolute(u).unwrap_or_else(|_| u.clone())));
    }
    if g.upstream_readonly {
        o = o.upstream_readonly(true);
    }
    o
}

#[allow(clippy::too_many_lines)] // one arm per command, until the commands get modules of their own
fn run(cli: Cli) -> Result<ExitCode> {
    use Access::{Existing, Write};
    let g = &cli.global;
    match cli.cmd {
        Cmd::Init {
            dir,
            force,
            shared,
            max_size,
        } => cmd_init(g, dir, force, shared.as_deref(), max_size),
        Cmd::Put {
            files,
            recursive,
            r#ref,
            no_cache,
        } => cmd_put(
            &open_store(g, Write)?,
            &files,
            recursive
                .then(|| cas::PutDirOptions::default().stat_cache(!no_cache))
                .as_ref(),
            r#ref.as_deref(),
            g.json,
        ),
        Cmd::Doctor { fix } => cmd_doctor(&open_store(g, Existing)?, fix, g.json),
        Cmd::Verify => cmd_verify(&open_store(g, Existing)?, g.json),
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
            cmd_gc(&open_store(g, Write)?, &opts, g.json)
        }
        Cmd::Get {
            hash,
            output,
            recursive: true,
            allow_external_symlinks,
            ..
        } => {
            let dest = output.context("-r needs -o DIR")?;
            let opts =
                cas::CheckoutOptions::default().allow_external_symlinks(allow_external_symlinks);
            let store = open_store(g, Existing)?;
            restore_tree(&store, &hash.resolve(&store)?, &dest, opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get {
            hash,
            output,
            range,
            ..
        } => {
            let store = open_store(g, Existing)?;
            cmd_get(&store, &hash.resolve(&store)?, output.as_deref(), range)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Has { hashes } => cmd_has(&open_store(g, Existing)?, &hashes, g.json),
        Cmd::Rm { hashes, force } => cmd_rm(&open_store(g, Existing)?, &hashes, force, g.json),
        Cmd::Ls {
            long,
            prefix,
            older_than,
            newer_than,
        } => cmd_ls(
            &open_store(g, Existing)?,
            &LsFilter {
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
            cmd_ref(&open_store(g, access)?, c, g.json)
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
            cmd_key(&open_store(g, access)?, c, g.json)
        }
        Cmd::Stats => cmd_stats(&open_store(g, Existing)?, g.json),
        Cmd::Push { dest, what } => cmd_transfer(&open_store(g, Existing)?, &dest, true, &what, g),
        Cmd::Pull { src, what } => cmd_transfer(&open_store(g, Write)?, &src, false, &what, g),
        Cmd::Show { hash } => cmd_show(&open_store(g, Existing)?, &hash, g.json),
        Cmd::Completions { shell } => cmd_completions(shell),
        Cmd::Man { subcommand } => man::run(&subcommand),
    }
}

/// The other store of a push or pull: it must exist; its own config (and upstream) apply.
fn open_other(dir: &Path) -> Result<Store> {
    match Store::open(dir) {
        Ok(s) => {
            signals::set_store(&s);
            Ok(s)
        }
        Err(e @ cas::Error::NotAStore { .. }) => Err(not_a_store_hint(dir, &e)),
        Err(e) => Err(e.into()),
    }
}

/// `cas push OTHER` (`push`: this store to OTHER) or `cas pull OTHER`.
fn cmd_transfer(
    this: &Store,
    other: &Path,
    push: bool,
    what: &TransferArgs,
    g: &Global,
) -> Result<ExitCode> {
    let other = open_other(other)?;
    let (src, dst) = if push { (this, &other) } else { (&other, this) };
    let json = g.json;
    let opts = cas::TransferOptions::default()
        .refs(what.refs.iter().cloned())
        .keys(what.keys.iter().map(|k| k.as_bytes().to_vec()))
        .all(what.all)
        .force(what.force)
        .jobs(what.jobs);
    let r = src.push_to(dst, &opts)?;
    for c in &r.conflicts {
        let f = |h: Option<Hash>| h.map_or_else(|| "absent".to_owned(), |h| h.to_string());
        eprintln!(
            "cas: error: {} moved on {} while transferring (was {}, now {}); not set \
             (--force overwrites)",
            c.name,
            dst.root().display(),
            f(c.expected),
            f(c.actual)
        );
    }
    if json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(m) = v.as_object_mut() {
            m.insert("source".into(), serde_json::json!(src.root()));
            m.insert("dest".into(), serde_json::json!(dst.root()));
            m.insert("complete".into(), r.is_complete().into());
        }
        outln!("{v}");
    } else {
        outln!(
            "{} objects: {} copied ({}), {} already there; refs set: {}; keys set: {}",
            r.objects,
            r.objects_copied,
            output::human_bytes(r.bytes_copied),
            r.objects_skipped,
            r.refs_set.len(),
            r.keys_set.len()
        );
    }
    Ok(exit(r.is_complete()))
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
    force: bool,
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
    if let Some(up) = &o.upstream {
        // A typo would otherwise surface only at the first miss.
        Store::open(up).with_context(|| {
            format!(
                "the upstream {} is not a store (create it first with `cas init {}`)",
                up.display(),
                up.display()
            )
        })?;
    }
    let existed = Store::open(&dir).is_ok();
    let create = if force {
        Create::Force
    } else {
        Create::IfMissingOrEmpty
    };
    // Without --shared, a directory prepared for a shared store (setgid, group-writable)
    // gets one: its shared mode is never silently dropped. `--shared none` is the way out.
    let made = if shared.is_none() || force {
        Store::open_or_create(&dir, o, create)
    } else {
        Store::init(&dir, o)
    };
    let store = match made {
        Ok(s) => s,
        Err(cas::Error::NotEmpty { path }) => anyhow::bail!(
            "{} exists and is not an empty directory or a store; nothing was written. \
             `cas init --force {}` adds a store beside what is there",
            path.display(),
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if g.json {
        let v = serde_json::json!({ "store": store.root(), "created": !existed });
        outln!("{v}");
    } else {
        if existed {
            eprintln!("cas: {} is already a store; left as it is", dir.display());
        } else if shared.is_none() && store.options().shared_group {
            eprintln!(
                "cas: {} was prepared for a shared store (setgid, group-writable): made a \
                 shared (group) store; use --shared none for a private one",
                dir.display()
            );
        }
        outln!("{}", store.root().display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `get -r`: restores a tree, with a bar of the bytes restored out of the tree's total.
pub(crate) fn restore_tree(
    store: &Store,
    hash: &Hash,
    dest: &Path,
    opts: cas::CheckoutOptions,
) -> cas::Result<()> {
    let bar = std::sync::Arc::new(output::BytesBar::new("get -r"));
    let b = std::sync::Arc::clone(&bar);
    let pause = test_hook_pause_at();
    let done = store.checkout_with(
        hash,
        dest,
        &opts.progress(move |p| {
            if let Some(at) = &pause {
                test_hook_pause(at, p.done);
            }
            b.update(p)
        }),
    );
    bar.finish();
    done
}

/// A test hook (undocumented, for tests/ensure.rs and tests/tiers.rs): `CAS_TEST_BARRIER=N:DIR`
/// makes `ref set` and `key set` create `DIR/PID` just before they update the name, then wait
/// until `DIR` holds N files (at most 60 s) and print `cas-test: barrier passed` on stderr
/// (or `cas-test: barrier timed out`). A test that sees every setter pass knows they
/// overlapped: none updated the name before all were about to.
fn test_hook_barrier() {
    let Ok(v) = std::env::var("CAS_TEST_BARRIER") else {
        return;
    };
    let Some((n, dir)) = v.split_once(':') else {
        return;
    };
    let Ok(n) = n.parse::<usize>() else { return };
    let dir = Path::new(dir);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), "");
    let until = std::time::Instant::now() + Duration::from_mins(1);
    loop {
        if std::fs::read_dir(dir).map_or(0, Iterator::count) >= n {
            eprintln!("cas-test: barrier passed");
            return;
        }
        if std::time::Instant::now() > until {
            eprintln!("cas-test: barrier timed out");
            return;
        }
        std::thread::sleep(Duration::from_millis(1)); // polling the other setters' arrival
    }
}

/// A test hook (undocumented, for tests/hostile.rs): `CAS_TEST_RESTORE_PAUSE_AT=BYTES` makes
/// the first restore progress report at or past BYTES print `cas-test: restore paused` on
/// stderr and wait (at most 60 s) until a signal has arrived, so that a test can signal a
/// restore at a chosen point without sleeping — while the restore's other threads go on.
fn test_hook_pause_at() -> Option<(u64, std::sync::atomic::AtomicBool)> {
    let at = std::env::var("CAS_TEST_RESTORE_PAUSE_AT").ok()?;
    Some((at.parse().ok()?, std::sync::atomic::AtomicBool::new(false)))
}

fn test_hook_pause((at, fired): &(u64, std::sync::atomic::AtomicBool), done: u64) {
    use std::sync::atomic::Ordering;
    if done < *at || fired.swap(true, Ordering::SeqCst) {
        return;
    }
    output::above_bars(|| eprintln!("cas-test: restore paused"));
    signals::wait_for_signal(Duration::from_mins(1));
}

/// `put -r` of one directory, with a bar of bytes and rate (no total: counting first would
/// walk the tree twice).
fn put_tree(
    store: &Store,
    dir: &Path,
    opts: &cas::PutDirOptions,
) -> cas::Result<(Hash, cas::PutDirReport)> {
    let bar = output::Bar::bytes("put -r", None);
    let with_bar = bar.handle().map(|b| {
        opts.clone().progress(move |p| {
            b.set_position(p.done);
            true
        })
    });
    let put = store.put_dir_with(dir, with_bar.as_ref().unwrap_or(opts));
    bar.finish();
    put
}

/// Writes an object to `output` (see `Store::get_to_path`) or stdout (none, or `-`),
/// verified before any byte is written.
fn write_object(store: &Store, hash: &Hash, output: Option<&Path>) -> Result<()> {
    let bar = output::BytesBar::new("get");
    let progress = |p| bar.update(p);
    let done = match output {
        Some(path) if path != Path::new("-") => store.get_to_path_with(hash, path, &progress),
        _ => {
            // Straight to the descriptor (spliced into a pipe), past Rust's buffer, which
            // holds nothing yet: nothing is printed before the object. No bar when the bytes
            // themselves go to the terminal: it would be drawn across them.
            let stdout = io::stdout();
            let lock = stdout.lock();
            let progress: cas::ProgressFn = if std::io::IsTerminal::is_terminal(&lock) {
                &cas::no_progress
            } else {
                &progress
            };
            store.get_to_fd(hash, lock.as_fd(), progress)
        }
    };
    bar.finish();
    done?;
    Ok(())
}

fn cmd_doctor(store: &Store, fix: bool, json: bool) -> Result<ExitCode> {
    let r = store.doctor(fix)?;
    let healthy = r.is_healthy();
    if json {
        outln!(
            "{}",
            output::json_with(
                serde_json::to_value(&r)?,
                store,
                &[("healthy", healthy.into())]
            )
        );
    } else {
        output::print_doctor(store.root(), &r);
    }
    Ok(exit(healthy))
}

fn cmd_gc(store: &Store, opts: &cas::GcOptions, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("gc");
    let r = store.gc(opts, &|p| bar.update(p))?;
    bar.finish();
    if json {
        outln!(
            "{}",
            output::json_with(serde_json::to_value(&r)?, store, &[])
        );
    } else {
        output::print_gc(&r);
    }
    for p in &r.problems {
        eprintln!("cas: damaged: {}: {}", p.path.display(), p.reason);
    }
    if let Some(why) = &r.sweep_skipped {
        eprintln!("cas: gc condemned and deleted nothing: {why}");
    }
    // A budget gc could not meet is a warning, not a failure: gc did all it may (what holds
    // the bytes is not its to remove); docs/decisions.md.
    if let Some(b) = &r.budget_unmet {
        eprintln!("cas: warning: {}", output::budget_unmet(b, opts.grace));
    }
    Ok(exit(r.is_clean()))
}

/// What `cas ls` lists and how.
struct LsFilter {
    long: bool,
    prefix: String,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
}

/// An object `ls` lists, with its size and last use when they are wanted.
type LsItem = cas::Result<(Hash, Option<(u64, SystemTime)>)>;

fn cmd_ls(store: &Store, f: &LsFilter, json: bool) -> Result<ExitCode> {
    // In hash order (listings compare and diff), streamed one fan-out directory at a time by
    // the library. Size and time come from one `fstatat` each; only `-l` opens an object,
    // to read whether it is a tree.
    let now = std::time::SystemTime::now();
    let by_age = f.older_than.is_some() || f.newer_than.is_some();
    let mut ok = true;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let listed: Box<dyn Iterator<Item = LsItem>> = if json || by_age || f.long {
        Box::new(
            store
                .iter_ordered_meta()
                .map(|m| m.map(|m| (m.hash, Some((m.len, m.mtime))))),
        )
    } else {
        Box::new(store.iter_ordered().map(|h| h.map(|h| (h, None))))
    };
    for item in listed {
        // A fan-out name that is not a directory is reported; the listing goes on.
        let (h, meta) = match item {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cas: error: {}", output::chain(&e));
                ok = false;
                continue;
            }
        };
        let mut buf = [0u8; cas::HEX_LEN];
        if !h.to_hex_buf(&mut buf).starts_with(&f.prefix) {
            continue;
        }
        if let Some((_, mtime)) = meta {
            let age = now.duration_since(mtime).unwrap_or_default();
            if f.older_than.is_some_and(|d| age < d) || f.newer_than.is_some_and(|d| age > d) {
                continue;
            }
        }
        let (len, mtime, kind) = match meta {
            None => {
                writeln!(out, "{h}")?;
                continue;
            }
            Some((len, mtime)) if !f.long => (len, mtime, None),
            Some(_) => match store.object_info(&h) {
                Ok(i) => (
                    i.len,
                    i.mtime,
                    Some(if i.is_tree { "tree" } else { "blob" }),
                ),
                Err(e) if e.is_not_found() => continue, // removed meanwhile
                Err(e) => {
                    eprintln!("cas: error: {}", output::chain(&e));
                    ok = false;
                    continue;
                }
            },
        };
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if json {
            let v = match kind {
                Some(kind) => {
                    serde_json::json!({ "hash": h, "size": len, "time": secs, "kind": kind })
                }
                None => serde_json::json!({ "hash": h, "size": len, "time": secs }),
            };
            writeln!(out, "{v}")?;
        } else if let Some(kind) = kind {
            writeln!(out, "{h} {len:>12} {} {kind}", output::human_time(secs))?;
        } else {
            writeln!(out, "{h}")?;
        }
    }
    out.flush()?;
    Ok(exit(ok))
}

fn cmd_stats(store: &Store, json: bool) -> Result<ExitCode> {
    let u = store.usage()?;
    let objects = u.area("objects").map_or((0, 0), |a| (a.files, a.bytes));
    if json {
        // `fs` is the same object as in `cas doctor --json`; `objects`/`bytes` are the
        // objects area, `total_bytes` everything under the store.
        let v = serde_json::json!({
            "store": store.root(),
            "objects": objects.0,
            "bytes": objects.1,
            "total_files": u.files,
            "total_bytes": u.bytes,
            "counted_bytes": u.counted_bytes,
            "areas": u.areas,
            "durability": store.durability().to_string(),
            "shared_group": store.options().shared_group,
            "max_size": u.max_size,
            "fs": u.fs,
            "unreadable": u.unreadable,
            "upstream": store.upstream().map(cas::Upstream::location),
            "upstream_readonly": store.upstream_readonly(),
        });
        outln!("{v}");
    } else {
        outln!("store:       {}", store.root().display());
        for a in &u.areas {
            if a.files > 0 || a.name == "objects" {
                outln!(
                    "{:<12} {:>10} files {:>12}",
                    format!("{}:", a.name),
                    a.files,
                    output::human_bytes(a.bytes)
                );
            }
        }
        outln!(
            "{:<12} {:>10} files {:>12}",
            "total:",
            u.files,
            output::human_bytes(u.bytes)
        );
        outln!(
            "{:<12} {:>22} (objects, trash and quarantine: what gc reports and a budget limits)",
            "counted:",
            output::human_bytes(u.counted_bytes)
        );
        if let Some(b) = u.max_size {
            outln!("budget:      {} (gc evicts to it)", output::human_bytes(b));
        }
        outln!("durability:  {}", store.durability());
        if let Some(up) = store.upstream() {
            let ro = if store.upstream_readonly() {
                " (read-only)"
            } else {
                ""
            };
            outln!("upstream:    {}{ro}", up.location().display());
        }
        let note = if u.fs.network {
            " (network/FUSE: no mmap, link+unlink publish)"
        } else {
            ""
        };
        outln!("filesystem:  {}{note}", u.fs.fs_type);
        outln!("barrier:     {}", output::describe_barrier(u.fs.barrier));
        for (p, why) in &u.unreadable {
            eprintln!("cas: warning: cannot list {}: {why}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(store: &Store, hash: &HashArg, json: bool) -> Result<ExitCode> {
    let hash = &hash.resolve(store)?;
    // The reader first: through a tier it fetches the object (object_len only looks here).
    let mut r = store.reader(hash)?;
    let size = r.len()?;
    let mut head = [0u8; 8];
    let n = io::Read::read(&mut r, &mut head).context("read the object")?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if !cas::Tree::is_tree(&head[..n]) {
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "hash": hash, "kind": "blob", "size": size })
            )?;
        } else {
            writeln!(out, "blob {hash} {size}")?;
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    // Printed as the walk meets each entry (memory: the trees on the current path and one
    // number per distinct tree), after a pass that checks the tree's budgets: a tree bomb
    // fails before anything is printed.
    let mut write_error = None;
    let walked = store.walk_tree(hash, &cas::TreeLimits::default(), |path, kind| {
        show_entry(&mut out, path, kind, json).map_err(|e| {
            write_error = Some(e);
            cas::Error::Interrupted
        })
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    walked?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One line of `cas show` for a tree entry.
fn show_entry(out: &mut impl Write, path: &Path, kind: &cas::EntryKind, json: bool) -> Result<()> {
    let p = path.display();
    if json {
        let v = match kind {
            cas::EntryKind::File {
                executable,
                size,
                hash,
            } => serde_json::json!({ "path": path, "kind": "file", "hash": hash,
                "size": size, "executable": executable }),
            cas::EntryKind::Dir { hash } => {
                serde_json::json!({ "path": path, "kind": "dir", "hash": hash })
            }
            cas::EntryKind::Symlink { target } => serde_json::json!({ "path": path,
                "kind": "symlink", "target": String::from_utf8_lossy(target) }),
        };
        writeln!(out, "{v}")?;
        return Ok(());
    }
    match kind {
        cas::EntryKind::File {
            executable,
            size,
            hash,
        } => {
            let mode = if *executable { "100755" } else { "100644" };
            writeln!(out, "{mode} blob {hash} {size:>10}\t{p}")?;
        }
        cas::EntryKind::Dir { hash } => writeln!(out, "040000 tree {hash} {:>10}\t{p}", "-")?,
        cas::EntryKind::Symlink { target } => {
            let t = String::from_utf8_lossy(target);
            writeln!(out, "120000 link {:<64} {:>10}\t{p} -> {t}", "-", "-")?;
        }
    }
    Ok(())
}

/// `put -r` stored symlinks that point outside the tree: say so once, with an example.
fn warn_external_symlinks(dir: &Path, report: &cas::PutDirReport) {
    if let Some((link, target)) = &report.example {
        eprintln!(
            "cas: warning: {} symlink(s) in {} point outside it (e.g. {} -> {}); \
             `cas get -r` refuses to restore them unless --allow-external-symlinks",
            report.external_symlinks,
            dir.display(),
            link.display(),
            target.display()
        );
    }
}

/// Bytes and rate of a put on a terminal; the total is known before the bar starts unless
/// stdin is among the inputs.
fn put_bar(files: &[PathBuf], batch: &mut cas::Batch) -> output::Bar {
    let total = files.iter().try_fold(0u64, |t, f| {
        std::fs::metadata(f)
            .ok()
            .filter(|m| m.is_file() && f != Path::new("-"))
            .map(|m| t + m.len())
    });
    let bar = output::Bar::bytes("put", total);
    if let Some(b) = bar.handle() {
        batch.set_progress(move |p| {
            b.set_position(p.done);
            true
        });
    }
    bar
}

/// Plain files (and stdin) stored as one batch: one result per input, in order; `report`
/// names a failure on stderr and returns its message.
fn put_batch<'a>(
    store: &Store,
    files: &'a [PathBuf],
    report: &mut impl FnMut(&Path, String) -> String,
) -> Result<Vec<(&'a Path, Result<Hash, String>)>> {
    let mut batch = store.batch();
    let bar = put_bar(files, &mut batch);
    let mut results = Vec::new();
    for f in files {
        let r = if f == Path::new("-") {
            batch.put_reader(io::stdin().lock())
        } else if f.is_dir() {
            let e = report(
                f,
                "is a directory (use -r to store it as a tree)".to_owned(),
            );
            results.push((f.as_path(), Err(e)));
            continue;
        } else {
            batch.put_path(f)
        };
        let r = r.map_err(|e| report(f, output::chain(&e)));
        results.push((f.as_path(), r));
    }
    batch.commit()?;
    bar.finish();
    Ok(results)
}

fn cmd_put(
    store: &Store,
    files: &[PathBuf],
    recursive: Option<&cas::PutDirOptions>,
    ref_name: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let line = |f: &Path, h: &Hash| {
        if json {
            serde_json::json!({ "input": f, "hash": h }).to_string()
        } else {
            h.to_string()
        }
    };
    // With --json a failed input has its line too, so there is one line per input.
    let error_line = |f: &Path, e: &str| serde_json::json!({ "input": f, "error": e });
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
        } else if let (Some(opts), true) = (recursive, f.is_dir()) {
            let (hash, report) = put_tree(store, f, opts)?;
            if let Some(w) = &report.cache_warning {
                eprintln!("cas: warning: {w}");
            }
            warn_external_symlinks(f, &report);
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
    // One rule for partial failure: every good input is stored and its hash printed, in
    // input order; each bad one is named on stderr; the exit status is then 1.
    let mut last = None;
    let mut failed = 0usize;
    let mut report = |f: &Path, e: String| {
        failed += 1;
        eprintln!("cas: error: {}: {e}", f.display());
        e
    };
    if recursive.is_some() {
        for f in files {
            // One line per input as soon as it is stored, so a pipeline sees progress.
            let text = match put_one(f) {
                Ok(hash) => {
                    last = Some((f.as_path(), hash));
                    line(f, &hash)
                }
                Err(e) => {
                    let e = report(f, format!("{e:#}"));
                    if !json {
                        continue;
                    }
                    error_line(f, &e).to_string()
                }
            };
            let mut lock = stdout.lock();
            writeln!(lock, "{text}")?;
            lock.flush()?;
        }
    } else {
        // Plain files: one durability barrier for all of them (docs/performance.md).
        let results = put_batch(store, files, &mut report)?;
        let mut out = io::BufWriter::new(stdout.lock());
        for (f, r) in &results {
            match r {
                Ok(h) => {
                    last = Some((*f, *h));
                    writeln!(out, "{}", line(f, h))?;
                }
                Err(e) if json => writeln!(out, "{}", error_line(f, e))?,
                Err(_) => {}
            }
        }
        out.flush()?;
    }
    if failed > 0 {
        // A ref is only moved when everything it stands for was stored.
        if ref_name.is_some() {
            eprintln!("cas: the ref was not moved: {failed} input(s) failed");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let (Some(name), Some((f, hash))) = (ref_name, last) {
        // A stream cannot be read twice: only a file is put again if a gc took the object.
        let mut reput = || -> cas::Result<Hash> {
            put_one(f).map_err(|e| cas::Error::InvalidInput {
                what: "input",
                reason: format!("{e:#}"),
            })
        };
        let reput: Option<&mut dyn FnMut() -> cas::Result<Hash>> =
            (f != Path::new("-")).then_some(&mut reput);
        store.set_ref_after_put(name, hash, "put", reput)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_verify(store: &Store, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("verify");
    let r = store.verify(&|p| bar.update(p))?;
    bar.finish();
    if json {
        let clean = r.is_clean();
        outln!(
            "{}",
            output::json_with(serde_json::to_value(&r)?, store, &[("clean", clean.into())])
        );
    } else {
        output::print_verify(&r);
    }
    Ok(if r.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_ref(store: &Store, c: RefCmd, json: bool) -> Result<ExitCode> {
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
            let hash = hash.resolve(store)?;
            test_hook_barrier();
            let old = store.set_ref_msg(&name, hash, exp, &message)?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "name": name, "hash": hash, "old": old })
                );
            }
        }
        RefCmd::Get { name } => match store.get_ref(&name)? {
            Some(h) if json => outln!("{}", serde_json::json!({ "name": name, "hash": h })),
            Some(h) => outln!("{h}"),
            None => return Err(cas::Error::RefNotFound { name }.into()),
        },
        RefCmd::Rm { name, expect } => {
            let exp = expect.map_or(Expect::Any, Expect::Value);
            let old = store.remove_ref(&name, exp)?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "name": name, "old": old, "removed": true })
                );
            }
        }
        RefCmd::Ls { prefix, nul } => {
            let (refs, damaged) = store.refs_report(&prefix)?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            for (name, h) in refs {
                if json {
                    writeln!(out, "{}", serde_json::json!({ "name": name, "hash": h }))?;
                } else if nul {
                    write!(out, "{name} {h}\0")?;
                } else {
                    writeln!(out, "{name} {h}")?;
                }
            }
            out.flush()?;
            for p in &damaged {
                eprintln!("cas: error: {}: {}", p.path.display(), p.reason);
            }
            if !damaged.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        RefCmd::Log { name, lines } => {
            // Streamed: one line in memory, whatever the log's size.
            let mut out = io::BufWriter::new(io::stdout().lock());
            let mut write_error = None;
            let read = store.reflog_each(&name, lines, |line| {
                let written = match line {
                    Ok(e) => print_reflog_entry(&mut out, &e, json),
                    Err(p) => {
                        eprintln!("cas: warning: {}: {}", p.path.display(), p.reason);
                        Ok(())
                    }
                };
                written.map_err(|e| {
                    write_error = Some(e);
                    cas::Error::Interrupted
                })
            });
            if let Some(e) = write_error {
                return Err(e);
            }
            read?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `cas ref log`.
fn print_reflog_entry(out: &mut impl Write, e: &cas::RefLogEntry, json: bool) -> Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let f = |h: Option<Hash>| h.map_or_else(|| "-".to_owned(), |h| h.to_string());
        writeln!(
            out,
            "{} {} {} {} {} {}",
            f(e.old),
            f(e.new),
            output::human_time(e.time),
            e.host,
            e.user,
            e.message
        )?;
    }
    Ok(())
}

/// `cas key set`: a lost compare-and-swap is a negative answer (exit 1), not an error.
fn key_set(
    store: &Store,
    key: &str,
    hash: Hash,
    meta: &str,
    expect: Expect,
    json: bool,
) -> Result<ExitCode> {
    match store.set_keyed(key.as_bytes(), hash, meta.as_bytes(), expect) {
        Ok(old) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({ "key": key, "hash": hash, "old": old })
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_conflict() => {
            eprintln!("cas: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn key_rm(store: &Store, key: &str, json: bool) -> Result<()> {
    store.remove_keyed(key.as_bytes())?;
    if json {
        outln!("{}", serde_json::json!({ "key": key, "removed": true }));
    }
    Ok(())
}

/// `cas key ls`: sorted by key; damaged entries are named on stderr (exit 1).
fn key_ls(store: &Store, nul: bool, json: bool) -> Result<ExitCode> {
    let mut ok = true;
    let mut entries = Vec::new();
    for e in store.iter_keys()? {
        match e {
            Ok(e) => entries.push(e),
            Err(e) => {
                eprintln!("cas: error: {}", output::chain(&e));
                ok = false;
            }
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = io::BufWriter::new(io::stdout().lock());
    for e in entries {
        if json {
            writeln!(out, "{}", entry_json(&e))?;
        } else if nul {
            write!(out, "{} {} ", e.hash, e.size)?;
            out.write_all(&e.key)?;
            out.write_all(b"\0")?;
        } else {
            let key = String::from_utf8_lossy(&e.key);
            writeln!(out, "{} {} {}", e.hash, e.size, key.escape_debug())?;
        }
    }
    out.flush()?;
    Ok(exit(ok))
}

fn cmd_key(store: &Store, c: KeyCmd, json: bool) -> Result<ExitCode> {
    match c {
        KeyCmd::Put {
            key,
            file: Some(dir),
            recursive: true,
            meta,
        } => {
            let tree = store.put_dir(&dir)?;
            store.set_keyed(key.as_bytes(), tree, meta.as_bytes(), Expect::Any)?;
            if json {
                outln!("{}", serde_json::json!({ "key": key, "hash": tree }));
            } else {
                outln!("{tree}");
            }
        }
        KeyCmd::Put {
            recursive: true, ..
        } => return Err(anyhow!("key put -r needs a directory")),
        KeyCmd::Set {
            key,
            hash,
            meta,
            expect,
            expect_none,
        } => {
            let expect = match (expect, expect_none) {
                (Some(h), _) => Expect::Value(h),
                (None, true) => Expect::Absent,
                (None, false) => Expect::Any,
            };
            let hash = hash.resolve(store)?;
            test_hook_barrier();
            return key_set(store, &key, hash, &meta, expect, json);
        }
        KeyCmd::Ensure {
            key,
            output,
            timeout,
            tree,
            allow_external_symlinks,
            meta,
            cmd,
        } => {
            return ensure::run(
                store,
                &ensure::Ensure {
                    key: &key,
                    output: output.as_deref(),
                    timeout,
                    tree,
                    allow_external_symlinks,
                    meta: &meta,
                    cmd: &cmd,
                    json,
                },
            )
        }
        KeyCmd::Put {
            key, file, meta, ..
        } => {
            let hash = match file {
                Some(f) if f != Path::new("-") => {
                    let src = std::fs::File::open(&f)
                        .with_context(|| format!("cannot open {}", f.display()))?;
                    store.put_keyed(key.as_bytes(), src, meta.as_bytes())?
                }
                _ => store.put_keyed(key.as_bytes(), io::stdin().lock(), meta.as_bytes())?,
            };
            if json {
                outln!("{}", serde_json::json!({ "key": key, "hash": hash }));
            } else {
                outln!("{hash}");
            }
        }
        KeyCmd::Get { key, output } => {
            let got = store
                .entry(key.as_bytes())
                .map_err(anyhow::Error::from)
                .and_then(|entry| write_object(store, &entry.hash, output.as_deref()));
            return got
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| damaged_hint(e, &key));
        }
        KeyCmd::Info { key } => {
            let e = store.entry(key.as_bytes())?;
            if json {
                outln!("{}", entry_json(&e));
            } else {
                outln!("hash:     {}", e.hash);
                outln!("size:     {} ({})", e.size, output::human_bytes(e.size));
                outln!("time:     {}", output::human_time(e.time_ms / 1000));
                outln!("metadata: {}", String::from_utf8_lossy(&e.metadata));
            }
        }
        KeyCmd::Rm { key } => key_rm(store, &key, json)?,
        KeyCmd::Ls { nul } => return key_ls(store, nul, json),
    }
    Ok(ExitCode::SUCCESS)
}

/// A `key get` that failed on a damaged entry (undecodable, or its object missing or
/// corrupt) says what heals it: `key get` has nothing to rebuild with.
fn damaged_hint(e: anyhow::Error, key: &str) -> anyhow::Error {
    let damaged = e.downcast_ref::<cas::Error>().is_some_and(|c| {
        matches!(
            c,
            cas::Error::NotFound { .. } | cas::Error::Corrupt { .. } | cas::Error::Malformed { .. }
        )
    });
    if !damaged {
        return e;
    }
    let k = shell_word(key);
    e.context(format!(
        "cache entry {key:?} is damaged; `cas key ensure {k} -- CMD` computes it again, \
         `cas key rm {k}` drops it"
    ))
}

/// `s` as one shell word: as is if it needs no quoting, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/=@+%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A cache entry in JSON, the same for `key info` and `key ls`: `time` in Unix seconds as in
/// `ref log`, `time_ms` as stored.
fn entry_json(e: &cas::Entry) -> serde_json::Value {
    serde_json::json!({
        "key": String::from_utf8_lossy(&e.key),
        "hash": e.hash,
        "size": e.size,
        "time": e.time_ms / 1000,
        "time_ms": e.time_ms,
        "metadata": String::from_utf8_lossy(&e.metadata),
    })
}

fn cmd_has(store: &Store, hashes: &[Hash], json: bool) -> Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut all = true;
    for h in hashes {
        let present = store.contains(h);
        all &= present;
        if json {
            let v = serde_json::json!({ "hash": h, "present": present });
            writeln!(out, "{v}")?;
        } else if !present {
            eprintln!("cas: missing {h}");
        }
    }
    out.flush()?;
    Ok(exit(all))
}

/// `cas rm`: with --json one line per input, in order, as `put` does: `{input, hash,
/// removed}` or `{input, error}`.
fn cmd_rm(store: &Store, hashes: &[Hash], force: bool, json: bool) -> Result<ExitCode> {
    let mut ok = true;
    let opts = cas::RemoveOptions::default().force(force);
    let mut out = io::BufWriter::new(io::stdout().lock());
    for (h, r) in hashes.iter().zip(store.remove_all_with(hashes, &opts)) {
        let line = match r {
            Ok(()) => serde_json::json!({ "input": h, "hash": h, "removed": true }),
            Err(e) => {
                let msg = output::chain(&e);
                eprintln!("cas: error: {msg}");
                ok = false;
                serde_json::json!({ "input": h, "error": msg })
            }
        };
        if json {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    Ok(exit(ok))
}

fn cmd_completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    use clap::CommandFactory;
    // Into memory first: clap_complete panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cas", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

//! The command line's definitions (clap) and value parsers: what each command and option
//! means, parsed before any store is opened (a malformed hash or ref name is a usage error).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use cas::{Durability, Expect, Hash, Store};
use clap::{Args, Parser, Subcommand};
use clap_complete::engine::ArgValueCandidates;

use crate::complete;

/// A content-addressed object store: put bytes, get them back by hash.
///
/// The store is `--store DIR`, else `$CAS_STORE`, else `$XDG_CACHE_HOME/cas`, else
/// `~/.cache/cas`. Only `cas init` and the commands that store something (put, key put, key
/// set, key ensure, ref set, pull) create it, and only where nothing exists yet (or, for the
/// default store, an empty directory); commands that read, remove or maintain (gc, verify,
/// doctor) never create anything.
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
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

const GLOBAL: &str = "Global options";

#[derive(Args, Debug)]
pub(crate) struct Global {
    /// Store directory.
    #[arg(long, global = true, value_name = "DIR", env = "CAS_STORE", help_heading = GLOBAL)]
    pub(crate) store: Option<PathBuf>,
    /// Durability of writes: none, file (fsync objects) or full (also their directories).
    /// It covers every store the command writes: a tier's upstream and a push destination
    /// are written at least at this level (or their own configured level, if higher).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = parse_durability, help_heading = GLOBAL)]
    pub(crate) durability: Option<Durability>,
    /// Lock lease timeout: a lock older than this whose holder is not provably alive is broken.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    pub(crate) lock_timeout: Option<Duration>,
    /// Machine-readable output: one JSON object, or one per line for lists and multi-input
    /// commands (put, has, rm, ls, show, ref ls, ref log, key ls; a failed input as
    /// `{"input", "error"}`). The same fact has the same field name in every command; the
    /// fields are listed in docs/json.md.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) json: bool,
    /// Staging files of writers on other hosts are judged dead after this long (gc, doctor).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, help_heading = GLOBAL)]
    pub(crate) stale_age: Option<Duration>,
    /// Use the store as a local tier in front of the upstream store DIR: misses are fetched
    /// from it, puts written through to it, refs and keys live in it. With `cas init`,
    /// recorded in the store's config.
    #[arg(long, global = true, value_name = "DIR", env = "CAS_UPSTREAM", help_heading = GLOBAL)]
    pub(crate) upstream: Option<PathBuf>,
    /// The upstream is read-only (a published dataset): puts stay local; refs and keys can
    /// be read, not set.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub(crate) upstream_readonly: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
        #[arg(long, value_name = "NAME", value_parser = parse_ref_name,
              add = ArgValueCandidates::new(complete::ref_names))]
        r#ref: Option<String>,
        /// With -r: read and hash every file, neither using nor updating the stat cache
        /// (by default a file whose device, inode, size, mtime and ctime are unchanged since
        /// it was last stored, and whose object is still in the store, is not read again).
        #[arg(long, requires = "recursive")]
        no_cache: bool,
        /// With -r: also record each file's and directory's mtime in the tree (restored by
        /// `get -r`). Off by default: the tree then depends on contents and permission bits
        /// only, and two puts of the same files at different times give one hash.
        #[arg(long, requires = "recursive")]
        keep_mtime: bool,
        /// With -r: leave FIFOs, sockets and devices out (one warning with their count)
        /// instead of failing on the first one.
        #[arg(long, requires = "recursive")]
        skip_special: bool,
    },
    /// Write an object's bytes to stdout (or -o FILE), verified before anything is written.
    #[command(
        after_help = "Examples:\n  cas get HASH > copy\n  cas get HASH -o copy   # atomic; a device or FIFO is written in place\n  cas get HASH --range 4096-8191 -o part   # 4 KiB, verified without reading the rest\n  cas get -r TREE -o restored/"
    )]
    Get(GetArgs),
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
        /// Hashes to look for (or unique prefixes of 8 or more hex digits; one that no object
        /// starts with is missing).
        #[arg(required = true, value_parser = parse_hash_arg)]
        hashes: Vec<HashArg>,
    },
    /// Remove objects now. Refused (exit 1, naming it) for an object that a ref, a cache
    /// entry or an update in progress reaches, directly or through trees; unreferenced
    /// objects are better left to gc, which keeps them for the grace period.
    #[command(
        after_help = "Examples:\n  cas rm HASH\n  cas rm --force HASH   # even if a ref reaches it (the ref dangles)"
    )]
    Rm {
        /// Hashes to remove (or unique prefixes of 8 or more hex digits).
        #[arg(required = true, value_parser = parse_hash_arg)]
        hashes: Vec<HashArg>,
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
pub(crate) struct TransferArgs {
    /// Refs to transfer (after DEST or SRC).
    #[arg(value_name = "REF", value_parser = parse_ref_name,
          add = ArgValueCandidates::new(complete::ref_names))]
    pub(crate) refs: Vec<String>,
    /// Cache keys to transfer (repeatable).
    #[arg(long = "key", value_name = "KEY", add = ArgValueCandidates::new(complete::keys))]
    pub(crate) keys: Vec<String>,
    /// Every ref and every key.
    #[arg(long)]
    pub(crate) all: bool,
    /// Set the names whatever the destination holds now.
    #[arg(long)]
    pub(crate) force: bool,
    /// Objects copied at once.
    #[arg(long, short, value_name = "N", default_value_t = 4)]
    pub(crate) jobs: usize,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RefCmd {
    /// Point NAME at HASH (compare-and-swap with --expect / --expect-none).
    #[command(
        after_help = "Examples:\n  cas ref set release/v1 HASH\n  cas ref set release/v1 NEW --expect OLD   # compare-and-swap"
    )]
    Set {
        /// Ref name: segments of [A-Za-z0-9._-] separated by '/'.
        #[arg(value_parser = parse_ref_name, add = ArgValueCandidates::new(complete::ref_names))]
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
        #[arg(value_parser = parse_ref_name, add = ArgValueCandidates::new(complete::ref_names))]
        name: String,
    },
    /// Remove NAME (with --expect: only if it holds OLD).
    #[command(after_help = "Examples:\n  cas ref rm release/v1 --expect HASH")]
    Rm {
        /// Ref name.
        #[arg(value_parser = parse_ref_name, add = ArgValueCandidates::new(complete::ref_names))]
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
        #[arg(value_parser = parse_ref_name, add = ArgValueCandidates::new(complete::ref_names))]
        name: String,
        /// Only the last N lines of the log (read backwards from its end; a damaged line
        /// among them is named on stderr).
        #[arg(short = 'n', value_name = "N")]
        lines: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum KeyCmd {
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
        #[arg(add = ArgValueCandidates::new(complete::keys))]
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
        #[arg(add = ArgValueCandidates::new(complete::keys))]
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
        #[arg(add = ArgValueCandidates::new(complete::keys))]
        key: String,
        /// Write to FILE as `cas get -o` does (`-` is stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show KEY's entry: hash, size, time, metadata.
    #[command(after_help = "Examples:\n  cas key info build:abc123 --json")]
    Info {
        /// The key.
        #[arg(add = ArgValueCandidates::new(complete::keys))]
        key: String,
    },
    /// Remove KEY's entry.
    #[command(after_help = "Examples:\n  cas key rm build:abc123")]
    Rm {
        /// The key.
        #[arg(add = ArgValueCandidates::new(complete::keys))]
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
pub(crate) struct HashArg(pub(crate) String);

impl HashArg {
    pub(crate) fn resolve(&self, store: &Store) -> Result<Hash> {
        Ok(store.resolve_prefix(&self.0)?)
    }
}

/// A hash or prefix as typed: uppercase hex is accepted and lowered (some tools print it);
/// the store's own files and the library take lowercase only.
pub(crate) fn parse_hash_arg(s: &str) -> Result<HashArg, String> {
    let lowered = s.to_ascii_lowercase();
    let s = lowered.as_str();
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

pub(crate) fn parse_hash(s: &str) -> Result<Hash, String> {
    Hash::parse(&s.to_ascii_lowercase()).map_err(|e| e.to_string())
}
pub(crate) fn parse_hex_prefix(s: &str) -> Result<String, String> {
    if s.len() > cas::HEX_LEN || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "{s:?} is not a hash prefix (up to 64 lowercase hex digits)"
        ));
    }
    Ok(s.to_owned())
}

/// Ref names are checked while parsing arguments, so an invalid one is a usage error (exit 2).
pub(crate) fn parse_ref_name(s: &str) -> Result<String, String> {
    cas::validate_ref_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}
pub(crate) fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse().map_err(|e: cas::Error| e.to_string())
}
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    cas::parse_duration(s)
}
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    cas::parse_size(s)
}

/// `cas key ensure KEY CMD ARGS` without `--`: clap says only "unexpected argument". Says
/// where the `--` goes, with the line corrected (issue 23).
pub(crate) fn forgotten_dashes(e: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument || args.iter().any(|a| a == "--") {
        return None;
    }
    let ensure = args
        .windows(2)
        .position(|w| w[0] == "key" && w[1] == "ensure")?;
    let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let at = ensure + 2 + args[ensure + 2..].iter().position(|a| a == bad.as_str())?;
    let mut fixed: Vec<String> = std::iter::once("cas".to_owned())
        .chain(args[1..at].iter().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    fixed.push("--".to_owned());
    fixed.extend(args[at..].iter().map(|a| a.to_string_lossy().into_owned()));
    Some(format!(
        "tip: the command to run goes after `--` (options of cas before it):\n  {}",
        fixed.join(" ")
    ))
}

/// `--expect OLD` / `--expect-none` (of `ref set` and `key set`) as the library's [`Expect`].
pub(crate) fn expect(old: Option<Hash>, none: bool) -> Expect {
    match (old, none) {
        (Some(h), _) => Expect::Value(h),
        (None, true) => Expect::Absent,
        (None, false) => Expect::Any,
    }
}

/// What `cas get` is asked (its own struct, so that an option is one field here and one
/// branch in `cmd/get.rs`).
#[derive(Args, Debug)]
#[allow(clippy::struct_excessive_bools)] // one field per flag, as clap defines them
pub(crate) struct GetArgs {
    /// The object's hash, or a unique prefix of it (8 or more hex digits).
    #[arg(value_parser = parse_hash_arg)]
    pub(crate) hash: HashArg,
    /// Write to FILE, verified first: a regular file (or a symlink's target) is replaced
    /// atomically (a temp file beside it, renamed); a device or FIFO is written in place;
    /// `-` is stdout. With -r: the directory to create.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Restore a tree into the directory given with -o (which must not exist).
    #[arg(short, long, requires = "output")]
    pub(crate) recursive: bool,
    /// With -r: restore symlinks that point outside the destination as they are (like
    /// tar, git and cp -a) instead of refusing the tree. Whatever follows such a link later
    /// reaches wherever the tree's author pointed it: only for trees you trust.
    #[arg(long, requires = "recursive")]
    pub(crate) allow_external_symlinks: bool,
    /// With -r: give files and directories exactly the permission bits the tree records
    /// (like tar -p); by default they are masked by your umask, so a restore never makes
    /// a file more open than the umask allows.
    #[arg(long, requires = "recursive")]
    pub(crate) no_umask: bool,
    /// With -r: leave the mtimes the tree records (put -r --keep-mtime) out; files and
    /// directories get the time of the restore.
    #[arg(long, requires = "recursive")]
    pub(crate) no_mtime: bool,
    /// Only bytes START to END (inclusive offsets, as HTTP ranges; `START-` to the end,
    /// `-N` the last N bytes),
    /// verified a 16 KiB chunk group at a time through the object's outboard, without
    /// reading the rest of the object. On stdout, bytes of groups verified before a
    /// damaged one may have been written; -o FILE is replaced only if all verified.
    #[arg(long, value_name = "START-END", value_parser = parse_byte_range,
          conflicts_with = "recursive", allow_hyphen_values = true)]
    pub(crate) range: Option<ByteRange>,
}

/// `--range START-END` (inclusive), `START-` (to the end) or `-N` (the last N bytes), as
/// HTTP's byte ranges.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ByteRange {
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

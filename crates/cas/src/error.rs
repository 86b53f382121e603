//! The library's error type.
//!
//! One enum for the whole library: every operation family fails in the same few ways (an I/O step
//! on a path, a missing or corrupt object, bad input, a lost race), and an embedding program wants
//! one type to `?` and match on. Each variant says which step failed and on which path or name,
//! and keeps the underlying `io::Error` as its `source()`.

use std::io;
use std::path::{Path, PathBuf};

use crate::hash::Hash;

/// Shorthand for `Result<T, cas::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
///
/// Variants are matchable; helper predicates ([`Error::is_not_found`], [`Error::is_corrupt`],
/// [`Error::is_conflict`]) cover the common questions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed. (The operating system's error is the [`source`]; it is not
    /// repeated in this variant's message.)
    ///
    /// [`source`]: std::error::Error::source
    #[error("cannot {op} {}", path.display())]
    Io {
        /// The step that failed, as a verb phrase ("create staging file in", "read", …).
        op: &'static str,
        /// The path the step was applied to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The input of a put (a file given by path, or a stream) could not be read. Nothing was
    /// stored.
    #[error("cannot read input {input}")]
    Input {
        /// The input: a path as given, or `stream` for a reader.
        input: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// No object with this hash is in the store.
    #[error("object {hash} not found in the store ({})", path.display())]
    NotFound {
        /// The hash asked for.
        hash: Hash,
        /// Where the object would be.
        path: PathBuf,
    },

    /// An object's bytes do not hash to its name. The object has been moved to `quarantine/`
    /// when that was possible.
    #[error("object {expected} is corrupt: its bytes hash to {actual} ({})", path.display())]
    Corrupt {
        /// The object's name (the hash it should have).
        expected: Hash,
        /// The hash of the bytes found.
        actual: Hash,
        /// Where the corrupt bytes were found (after quarantine: where they are now).
        path: PathBuf,
    },

    /// A verified range read found bytes of an object that do not match its name: the chunk
    /// group `start..end` (byte offsets) hashes to something its outboard, checked against
    /// the name, does not hold. None of those bytes was returned; the object was moved to
    /// `quarantine/` when that was possible.
    #[error("object {hash} is corrupt: bytes {start}..{end} do not match its name ({})", path.display())]
    CorruptRange {
        /// The object's name.
        hash: Hash,
        /// First byte of the damaged chunk group.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Where the object was found (after quarantine: where it is now).
        path: PathBuf,
    },

    /// A string is not a valid hash.
    #[error("invalid hash {input:?}: {reason}")]
    InvalidHash {
        /// The input, truncated for display.
        input: String,
        /// What rule it broke.
        reason: &'static str,
    },

    /// A ref name breaks the naming rules.
    #[error("invalid ref name {name:?}: {reason}")]
    InvalidRefName {
        /// The rejected name.
        name: String,
        /// What rule it broke.
        reason: &'static str,
    },

    /// A ref does not exist.
    #[error("ref {name:?} does not exist")]
    RefNotFound {
        /// The ref name.
        name: String,
    },

    /// A file inside the store does not have the expected format.
    #[error("{} is not a valid {what}: {reason}", path.display())]
    Malformed {
        /// What the file was supposed to be ("ref", "cache entry", "FORMAT file", "tree object").
        what: &'static str,
        /// The file (for tree objects: the object path).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The store was written by a newer, incompatible version of cas.
    #[error("store {} has format {found:?}, this cas understands format {supported}; upgrade cas", path.display())]
    UnsupportedFormat {
        /// The `FORMAT` file.
        path: PathBuf,
        /// What it says.
        found: String,
        /// The major format this library supports.
        supported: u32,
    },

    /// The directory is not a cas store (no `FORMAT` file), or does not exist.
    #[error("{} is not a cas store (no FORMAT file); create one with `cas init`", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// What is at `path` instead, looked at when the error was made.
        found: Found,
    },

    /// A store was to be created at a path that holds something else: a directory that is
    /// neither empty nor a store, or a file. Nothing was written there.
    #[error("{} exists and is not an empty directory or a cas store; not creating a store there", path.display())]
    NotEmpty {
        /// The path.
        path: PathBuf,
        /// What is at `path`, looked at when the error was made.
        found: Found,
    },

    /// A compare-and-swap found another value than expected.
    #[error("{what} {name:?} is {}, expected {}", fmt_opt(.actual.as_ref()), fmt_opt(.expected.as_ref()))]
    Conflict {
        /// What was compared: `"ref"` or `"cache entry"`.
        what: &'static str,
        /// The ref name, or the cache key as text (lossy UTF-8).
        name: String,
        /// The value the caller expected (`None`: must not exist).
        expected: Option<Hash>,
        /// The value found (`None`: does not exist).
        actual: Option<Hash>,
    },

    /// A lock is held by a live holder and did not become free in time.
    #[error("{} is locked by {holder} (waited {waited_ms} ms)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as recorded in the lock ("host pid … since …").
        holder: String,
        /// How long we waited.
        waited_ms: u64,
    },

    /// Another caller's computation of a cache entry
    /// ([`Store::compute_once`](crate::Store::compute_once)) outlasted this caller's timeout.
    #[error("gave up waiting for cache entry {key} after {waited} (timeout {timeout}): it is being computed by {holder}")]
    ComputeTimeout {
        /// The key, shown as text.
        key: String,
        /// Who computes, in words ("host H pid P for 12 min").
        holder: String,
        /// How long this caller waited, in words.
        waited: String,
        /// The timeout, in words.
        timeout: String,
    },

    /// Our lock was broken by someone who judged it stale; the operation was not applied.
    #[error("lock {} was taken over by another process before the update was applied", path.display())]
    LockLost {
        /// The lock file.
        path: PathBuf,
    },

    /// A cache entry does not exist for the key.
    #[error("no cache entry for key {key}")]
    KeyNotFound {
        /// The key, shown as text (lossy UTF-8, truncated).
        key: String,
    },

    /// A tree object or a directory cannot be stored or restored.
    #[error("{}: {reason}", path.display())]
    Tree {
        /// The file or directory (for a restore: the entry's path under the destination).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tree is larger than a budget of tree walks allows ([`TreeLimits`](crate::TreeLimits)):
    /// more entries counted along every path, deeper nesting, or more file bytes claimed. A
    /// crafted tree naming one subtree at many paths (a "tree bomb") fails here before
    /// anything is listed or created.
    #[error("tree {tree} exceeds the {budget} budget of {limit}: {reason}")]
    TreeBudget {
        /// The tree asked for (the root of the walk).
        tree: Hash,
        /// Which budget: `max_entries`, `max_depth` or `max_bytes` (the
        /// [`TreeLimits`](crate::TreeLimits) field).
        budget: &'static str,
        /// Its value.
        limit: u64,
        /// What was found.
        reason: String,
    },

    /// An option or argument is out of range.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// The operation was interrupted through its progress callback.
    #[error("interrupted")]
    Interrupted,

    /// The producer of a compute-once entry ([`Store::compute_once`](crate::Store::compute_once))
    /// failed or panicked; nothing was stored, and the next caller computes.
    #[error("the producer of cache entry {key} failed")]
    Producer {
        /// The key, shown as text.
        key: String,
        /// What the producer reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An object was not removed because a name reaches it (directly or through trees):
    /// removing it would leave that name dangling. Nothing was removed.
    #[error(
        "object {hash} is {by}; `cas rm --force` removes it anyway, leaving that name dangling"
    )]
    InUse {
        /// The object.
        hash: Hash,
        /// One name that reaches it.
        by: Box<ReachedBy>,
    },

    /// The upstream store of a tiered store could not do what was needed: it is unreachable
    /// (missing, unmounted, I/O errors), or read-only for a write. Objects already cached in
    /// the local store are still served; whatever needs the upstream fails with this.
    #[error("upstream store {} {what}", upstream.display())]
    Upstream {
        /// The upstream, as configured.
        upstream: PathBuf,
        /// What went wrong, as a phrase ("is unavailable", "is read-only: …").
        what: String,
        /// The error the upstream gave, if any.
        #[source]
        source: Option<Box<Error>>,
    },
}

/// What kind of failure an [`Error`] is, for callers that branch on it
/// (see [`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object, ref or cache entry asked for does not exist (a cache miss).
    NotFound,
    /// An object's bytes do not match its hash.
    Corrupt,
    /// A file in the store (ref, entry, tree, lock, config, FORMAT) cannot be parsed.
    Malformed,
    /// An argument was rejected before the store was touched (hash, ref name, option, tree).
    InvalidInput,
    /// A compare-and-swap found another value than expected.
    Conflict,
    /// A lock stayed held by a live holder for longer than the caller would wait.
    Locked,
    /// Our lock was broken by someone who judged it stale.
    LockLost,
    /// The input of a put could not be read.
    Input,
    /// The directory is not a store, or a store of a newer format.
    NotAStore,
    /// A filesystem call failed (the store's directory vanished, a disk is full, …).
    Io,
    /// Cancelled through a progress callback.
    Interrupted,
    /// A compute-once producer failed.
    Producer,
    /// The upstream of a tiered store is unreachable or read-only.
    Upstream,
    /// An object a name reaches was not removed.
    InUse,
}

/// What is at a path that holds no store, as [`Error::NotAStore`] and [`Error::NotEmpty`]
/// found it: what a message needs to say what to run (`cas init DIR`, `cas init --force DIR`,
/// another path). The path itself is looked at, never followed: a symlink is [`Found::Other`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("notes.txt"), "mine")?;
/// match cas::Store::open(dir.path()) {
///     Err(cas::Error::NotAStore { found, .. }) => assert_eq!(found, cas::Found::Dir),
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// Nothing: the path does not exist (or cannot be looked at).
    Nothing,
    /// An empty directory (or one that cannot be listed).
    EmptyDir,
    /// A directory with something in it.
    Dir,
    /// A file, a symlink or anything else that is not a directory.
    Other,
}

impl Found {
    /// Looks at `path` without following it.
    pub(crate) fn at(path: &Path) -> Found {
        match std::fs::symlink_metadata(path) {
            Err(_) => Found::Nothing,
            Ok(m) if m.is_dir() => {
                if std::fs::read_dir(path).is_ok_and(|mut r| r.next().is_some()) {
                    Found::Dir
                } else {
                    Found::EmptyDir
                }
            }
            Ok(_) => Found::Other,
        }
    }
}

fn fmt_opt(h: Option<&Hash>) -> String {
    h.map_or_else(|| "absent".to_string(), ToString::to_string)
}

impl Error {
    /// [`Error::NotAStore`] for `path`, with what is there.
    pub(crate) fn not_a_store(path: &Path) -> Error {
        Error::NotAStore {
            path: path.to_owned(),
            found: Found::at(path),
        }
    }

    /// [`Error::NotEmpty`] for `path`, with what is there.
    pub(crate) fn not_empty(path: &Path) -> Error {
        Error::NotEmpty {
            path: path.to_owned(),
            found: Found::at(path),
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A closure for `map_err` that builds an [`Error::Io`] for `op` on `path`.
    pub(crate) fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Error::io(op, path, source)
    }

    /// What kind of failure this is.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// match store.get_keyed(b"never stored") {
    ///     Err(e) if e.kind() == cas::ErrorKind::NotFound => {} // a miss: compute it
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } | Error::RefNotFound { .. } | Error::KeyNotFound { .. } => {
                ErrorKind::NotFound
            }
            Error::Corrupt { .. } | Error::CorruptRange { .. } => ErrorKind::Corrupt,
            Error::Malformed { .. } => ErrorKind::Malformed,
            Error::InvalidHash { .. }
            | Error::InvalidRefName { .. }
            | Error::InvalidInput { .. }
            | Error::Tree { .. }
            | Error::TreeBudget { .. } => ErrorKind::InvalidInput,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Locked { .. } | Error::ComputeTimeout { .. } => ErrorKind::Locked,
            Error::LockLost { .. } => ErrorKind::LockLost,
            Error::Input { .. } => ErrorKind::Input,
            Error::NotAStore { .. } | Error::UnsupportedFormat { .. } | Error::NotEmpty { .. } => {
                ErrorKind::NotAStore
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Interrupted => ErrorKind::Interrupted,
            Error::Producer { .. } => ErrorKind::Producer,
            Error::Upstream { .. } => ErrorKind::Upstream,
            Error::InUse { .. } => ErrorKind::InUse,
        }
    }

    /// True when the object, ref or cache entry asked for does not exist: a cache miss. A
    /// filesystem error (even `ENOENT` because the store's own directory vanished) is not.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// True when a file in the store could not be parsed (a damaged ref or entry): callers
    /// of a cache usually treat it as a miss and write the entry again.
    pub fn is_malformed(&self) -> bool {
        self.kind() == ErrorKind::Malformed
    }

    /// True when a lock stayed held for longer than the caller would wait.
    pub fn is_locked(&self) -> bool {
        self.kind() == ErrorKind::Locked
    }

    /// True when a compare-and-swap expecting the name to be absent found it present
    /// ([`Expect::Absent`](crate::Expect::Absent) lost: someone else was first).
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Error::Conflict {
                expected: None,
                actual: Some(_),
                ..
            }
        )
    }

    /// True when an object failed verification.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::CorruptRange { .. })
    }

    /// True when a compare-and-swap lost (the value was not the expected one).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// True when the input (hash, name, option, tree) was rejected before touching the store.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidHash { .. } | Error::InvalidRefName { .. } | Error::InvalidInput { .. }
        )
    }

    /// The path the error is about, if there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::NotFound { path, .. }
            | Error::Corrupt { path, .. }
            | Error::CorruptRange { path, .. }
            | Error::Malformed { path, .. }
            | Error::UnsupportedFormat { path, .. }
            | Error::NotAStore { path, .. }
            | Error::NotEmpty { path, .. }
            | Error::Locked { path, .. }
            | Error::LockLost { path }
            | Error::Tree { path, .. }
            | Error::Upstream { upstream: path, .. } => Some(path),
            _ => None,
        }
    }

    /// The underlying I/O error, if the error came from a system call.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } | Error::Input { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io { source, .. } | Error::Input { source, .. } => source.kind(),
            Error::NotFound { .. } | Error::RefNotFound { .. } | Error::KeyNotFound { .. } => {
                io::ErrorKind::NotFound
            }
            Error::Corrupt { .. } | Error::CorruptRange { .. } | Error::Malformed { .. } => {
                io::ErrorKind::InvalidData
            }
            // Not `Interrupted`: std's `read_exact` and `io::copy` retry that, which would turn
            // a cancellation into a loop.
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
/// A name that keeps an object reachable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
#[non_exhaustive]
pub enum Root {
    /// A ref, by name.
    Ref(String),
    /// A cache entry, by key as messages show it: quoted text, or `0x…` hex.
    Entry(String),
    /// An update in progress: the pin in a ref or entry lock file.
    Update(PathBuf),
    /// Nothing readable reaches the object, but something that could not be read might (a
    /// damaged ref or entry, an undecodable tree): the reason, with its path. gc does not
    /// sweep in that case either.
    Unreadable(String),
}

/// Who reaches an object (see [`Store::who_reaches`](crate::Store::who_reaches)): one root, and the tree the object is
/// listed in when the root does not name it directly.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReachedBy {
    /// The ref, entry or update that reaches the object.
    pub root: Root,
    /// The tree object that lists it, if the root reaches it through trees.
    pub through: Option<Hash>,
}

impl std::fmt::Display for ReachedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.root {
            Root::Ref(n) => write!(f, "reached by ref {n:?}")?,
            Root::Entry(k) => write!(f, "reached by cache entry {k}")?,
            Root::Update(p) => write!(f, "reached by an update in progress ({})", p.display())?,
            Root::Unreadable(why) => {
                write!(f, "perhaps reached through what cannot be read ({why})")?;
            }
        }
        if let Some(t) = self.through {
            write!(f, " (through tree {t})")?;
        }
        Ok(())
    }
}

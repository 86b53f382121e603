//! The library's error type.
//!
//! One enum for the whole library: every operation family fails in the same few ways (an I/O step
//! on a path, a missing or corrupt object, bad input, a lost race), and an embedding program wants
//! one type to `?` and match on. Each variant says which step failed and on which path or name,
//! and keeps the underlying `io::Error` as its `source()`.

use std::io;
use std::path::{Path, PathBuf};

use crate::Hash;

/// Shorthand for `Result<T, cas::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
///
/// Variants are matchable; helper predicates ([`Error::is_not_found`], [`Error::is_corrupt`],
/// [`Error::is_conflict`]) cover the common questions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The step that failed, as a verb phrase ("create staging file in", "read", …).
        op: &'static str,
        /// The path the step was applied to.
        path: PathBuf,
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
    },

    /// A store was to be created at a path that holds something else: a directory that is
    /// neither empty nor a store, or a file. Nothing was written there.
    #[error("{} exists and is not an empty directory or a cas store; not creating a store there", path.display())]
    NotEmpty {
        /// The path.
        path: PathBuf,
    },

    /// A compare-and-swap found another value than expected.
    #[error("ref {name:?} is {}, expected {}", fmt_opt(.actual.as_ref()), fmt_opt(.expected.as_ref()))]
    Conflict {
        /// The ref (or cache key, shown as text).
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
}

fn fmt_opt(h: Option<&Hash>) -> String {
    h.map_or_else(|| "absent".to_string(), ToString::to_string)
}

impl Error {
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

    /// True when the thing asked for (object, ref, cache entry) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } | Error::RefNotFound { .. } | Error::KeyNotFound { .. } => true,
            Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// True when an object failed verification.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
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
            | Error::Malformed { path, .. }
            | Error::UnsupportedFormat { path, .. }
            | Error::NotAStore { path }
            | Error::NotEmpty { path }
            | Error::Locked { path, .. }
            | Error::LockLost { path }
            | Error::Tree { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The underlying I/O error, if the error came from a system call.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            Error::NotFound { .. } | Error::RefNotFound { .. } | Error::KeyNotFound { .. } => {
                io::ErrorKind::NotFound
            }
            Error::Corrupt { .. } | Error::Malformed { .. } => io::ErrorKind::InvalidData,
            Error::Interrupted => io::ErrorKind::Interrupted,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

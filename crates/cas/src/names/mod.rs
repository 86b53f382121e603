//! Names that point at objects: refs and their logs, keyed cache entries, cross-host locks,
//! compute-once, and the closure made present before any name is published.

pub(crate) mod backend;
pub(crate) mod closure;
pub(crate) mod entries;
pub(crate) mod lock;
pub(crate) mod once;
pub(crate) mod reflog;
pub(crate) mod refs;

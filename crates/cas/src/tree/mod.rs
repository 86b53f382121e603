//! Directory snapshots: the tree object's format, putting a directory, restoring a tree, and
//! the stat cache of `put -r`.

pub(crate) mod format;
pub(crate) mod put;
pub(crate) mod restore;
pub(crate) mod statcache;

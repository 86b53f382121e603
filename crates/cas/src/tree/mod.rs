//! Directory snapshots: the tree object's format (`format`), the walks that follow a tree's
//! paths and their budgets (`walk`), the symlink model that tells links inside a tree from
//! links that reach out (`links`), putting a directory (`put`), restoring a tree
//! (`restore`), and the stat cache of `put -r` (`statcache`).

pub(crate) mod format;
pub(crate) mod links;
pub(crate) mod put;
pub(crate) mod restore;
pub(crate) mod statcache;
pub(crate) mod walk;

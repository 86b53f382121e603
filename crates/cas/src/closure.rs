//! Naming an object: its whole closure present before the name is published (docs/format.md
//! "Publishing a name").
//!
//! Every name cas publishes — a ref, a cache entry, a push or pull destination name — is
//! written under a lock whose pin is the named object. Before the name is written,
//! [`Store::ensure_closure`] walks the object's closure through tree objects: every object is
//! made present in `objects/` (moved back from `trash/` where gc condemned it), and a missing
//! one fails the update with [`Error::NotFound`](crate::Error::NotFound). What gc condemns *after* an object was seen
//! present is rescued by gc's second mark, which sees the pin (or, once the update is
//! complete, the name itself). Together: a name is never published pointing at a closure that
//! is incomplete, and a published name's closure is never deleted.

use std::collections::HashSet;

use crate::error::Result;
use crate::fs;
use crate::hash::Hash;
use crate::mark::Children;
use crate::Store;

impl Store {
    /// Makes `root` and everything reachable from it through trees present in `objects/`,
    /// moving back what gc moved to trash. The caller holds a lock pinning `root` from before
    /// this call until the name is visible (docs/format.md "Publishing a name").
    ///
    /// Each object is visited once (a tree that names the same subtree many times costs one
    /// visit), so the walk is linear in the number of distinct objects.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) naming the first object that is nowhere (neither in `objects/` nor
    /// in trash); [`Error::Malformed`](crate::Error::Malformed) if a tree in the closure does not verify (it is damaged:
    /// its children cannot be known, so the closure cannot be shown complete); I/O errors
    /// naming the path.
    pub(crate) fn ensure_closure(&self, root: &Hash) -> Result<()> {
        let mut seen: HashSet<Hash> = HashSet::new();
        let mut stack: Vec<(Hash, bool)> = vec![(*root, true)];
        while let Some((hash, may_be_tree)) = stack.pop() {
            if !seen.insert(hash) {
                continue;
            }
            if !may_be_tree {
                self.ensure_leaf_present(&hash)?;
                continue;
            }
            // A possible tree is refreshed (young for a gc that has not judged it yet) and
            // moved back from trash before it is read.
            self.ensure_present(&hash)?;
            match self.tree_children(&hash)? {
                Children::Some(children) => stack.extend(children),
                // Verified, but of a later format: gc keeps everything while such a tree is
                // reachable (it cannot tell what is not), so naming it loses nothing.
                Children::Opaque(_) | Children::None => {}
            }
        }
        Ok(())
    }

    /// A leaf of a closure: present in `objects/` (one `fstatat` through the cached fan-out
    /// directory, no write), else moved back from trash, else [`Error::NotFound`](crate::Error::NotFound).
    fn ensure_leaf_present(&self, hash: &Hash) -> Result<()> {
        if let Ok(dir) = self.fanout_dir(hash, false) {
            let name = crate::stage::fanout_name(hash);
            match fs::lstat_at(std::os::fd::AsFd::as_fd(&*dir), name.as_ref()) {
                Ok(m) if m.kind == fs::Kind::File => return Ok(()),
                // Anything else at the name is not the object: the full check decides.
                Ok(_) | Err(_) => {}
            }
        }
        self.ensure_present(hash)
    }
}

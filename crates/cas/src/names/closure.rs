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
use std::os::fd::AsFd;

use crate::error::Result;
use crate::fs;
use crate::hash::Hash;
use crate::maint::mark::Children;
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
        let durability = self.durability();
        let mut seen: HashSet<Hash> = HashSet::new();
        // Fan-out directories to sync at `full`, each once: by the first object seen in it.
        let mut dirs: std::collections::BTreeMap<u8, Hash> = std::collections::BTreeMap::new();
        let mut stack: Vec<(Hash, bool)> = vec![(*root, true)];
        while let Some((hash, may_be_tree)) = stack.pop() {
            if !seen.insert(hash) {
                continue;
            }
            dirs.entry(hash.as_bytes()[0]).or_insert(hash);
            if !may_be_tree {
                self.ensure_leaf_present(&hash, durability)?;
                continue;
            }
            // A possible tree is refreshed (young for a gc that has not judged it yet) and
            // moved back from trash before it is read.
            self.ensure_present(&hash)?;
            self.settle_data(&hash, None, durability)?;
            match self.tree_children(&hash)? {
                Children::Some(children) => stack.extend(children),
                // Verified, but of a later format: gc keeps everything while such a tree is
                // reachable (it cannot tell what is not), so naming it loses nothing.
                Children::Opaque(_) | Children::None => {}
            }
        }
        if durability == crate::Durability::Full {
            // A name set at `full` never rests on an object whose own name may not survive
            // (docs/format.md "The write path (put)", "Re-puts").
            for h in dirs.values() {
                let path = self.object_path(h);
                let path = path.parent().unwrap_or(self.root());
                self.inner
                    .root_dir
                    .fsync_dir(path)
                    .map_err(crate::Error::at("fsync directory", path))?;
            }
        }
        Ok(())
    }

    /// The data of a present object brought up to `durability` (it may have been published
    /// at `none`): [`Store::settle_existing`] without the directory, which the caller syncs
    /// once for all. `mode` if the caller has just looked.
    fn settle_data(
        &self,
        hash: &Hash,
        mode: Option<u32>,
        durability: crate::Durability,
    ) -> Result<()> {
        if durability == crate::Durability::None {
            return Ok(());
        }
        let path = self.object_path(hash);
        let dir = self
            .fanout_dir(hash, false)
            .map_err(crate::Error::at("open", &path))?;
        let name = crate::write::stage::fanout_name(hash);
        let mode = match mode {
            Some(m) => m,
            None => match fs::lstat_at(dir.as_fd(), name.as_ref()) {
                Ok(m) => m.mode,
                // Moved by a concurrent gc after we saw it: the rescue mark sees our pin.
                Err(_) => return Ok(()),
            },
        };
        self.settle_existing(
            hash,
            dir.as_fd(),
            name.as_ref(),
            mode,
            crate::Durability::File,
        )
        .map_err(crate::Error::at("fdatasync", &path))
    }

    /// A leaf of a closure: present in `objects/` (one `fstatat` through the cached fan-out
    /// directory, no write), else moved back from trash, else [`Error::NotFound`](crate::Error::NotFound).
    fn ensure_leaf_present(&self, hash: &Hash, durability: crate::Durability) -> Result<()> {
        if let Ok(dir) = self.fanout_dir(hash, false) {
            let name = crate::write::stage::fanout_name(hash);
            match fs::lstat_at(dir.as_fd(), name.as_ref()) {
                Ok(m) if m.kind == fs::Kind::File => {
                    return self.settle_data(hash, Some(m.mode), durability);
                }
                // Anything else at the name is not the object: the full check decides.
                Ok(_) | Err(_) => {}
            }
        }
        self.ensure_present(hash)?;
        self.settle_data(hash, None, durability)
    }
}

//! Removing an object by hand (`cas rm`): refused while a name reaches it (docs/format.md
//! "Removing an object").
//!
//! The question "who reaches this object?" is answered by gc's own mark
//! ([`Store::mark`](crate::Store)), recording where each object was first reached from, so
//! `rm` and gc never disagree about what is reachable.

use crate::error::{Error, ReachedBy, Result, Root};
use crate::hash::Hash;
use crate::maint::mark::{Mark, Source};
use crate::Store;

/// Options of [`Store::remove_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoveOptions {
    /// Remove the object even if a ref, cache entry or update in progress reaches it (the
    /// name is left dangling, as with [`Store::remove`]).
    pub force: bool,
}

impl RemoveOptions {
    /// Sets `force` (builder style).
    #[must_use]
    pub fn force(mut self, on: bool) -> Self {
        self.force = on;
        self
    }
}

impl Store {
    /// One ref, cache entry or update in progress that reaches `hash` (directly or through
    /// trees), or `None` if nothing does. Refs are preferred over cache entries (gc's mark
    /// visits them first). If none does but a root or tree could not be read,
    /// [`Root::Unreadable`] says what: it may hide one. A tiered store answers for its own directory: its names live
    /// upstream, which holds every object the tier holds.
    ///
    /// The answer is a snapshot: a name set right after may reach the object.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let h = store.put_bytes(b"named")?;
    /// assert!(store.who_reaches(&h).is_none());
    /// store.set_ref("release", h, cas::Expect::Any)?;
    /// assert_eq!(store.who_reaches(&h).unwrap().to_string(), "reached by ref \"release\"");
    /// # Ok(()) }
    /// ```
    pub fn who_reaches(&self, hash: &Hash) -> Option<ReachedBy> {
        reached_by(&self.mark_recording(), hash)
    }

    /// Removes an object from `objects/`, unless a ref, cache entry or update in progress
    /// reaches it (directly or through trees) and `opts.force` is not set. Unreferenced
    /// objects are better left to gc, which honours the grace period; this is for removing
    /// one object now.
    ///
    /// The check and the removal are not atomic: a name set between them is left dangling,
    /// as with [`Store::remove`] (a later `verify` reports it).
    ///
    /// # Errors
    /// [`Error::InUse`] naming one root that reaches it, or what could not be read and might
    /// (nothing removed);
    /// [`Error::NotFound`] if it is not there; I/O errors naming the path.
    pub fn remove_with(&self, hash: &Hash, opts: &RemoveOptions) -> Result<()> {
        self.remove_all_with(&[*hash], opts).pop().unwrap_or(Ok(()))
    }

    /// [`Store::remove_with`] for many objects, with one mark for all of them (a mark reads
    /// every root and tree: once per call, not once per object). Returns one result per
    /// hash, in order.
    ///
    /// # Errors
    /// Per object, as [`Store::remove_with`].
    pub fn remove_all_with(&self, hashes: &[Hash], opts: &RemoveOptions) -> Vec<Result<()>> {
        let mark = (!opts.force).then(|| self.mark_recording());
        hashes
            .iter()
            .map(|hash| {
                if let Some(m) = &mark {
                    // Not there at all: say so, rather than which name would dangle.
                    self.object_len(hash)?;
                    if let Some(by) = reached_by(m, hash) {
                        return Err(Error::InUse {
                            hash: *hash,
                            by: Box::new(by),
                        });
                    }
                }
                self.remove(hash)
            })
            .collect()
    }
}

/// Who reaches `hash` according to a recording mark (see [`Store::who_reaches`]).
fn reached_by(m: &Mark, hash: &Hash) -> Option<ReachedBy> {
    let unreadable = || {
        (!m.reach.unsafe_to_sweep.is_empty()).then(|| ReachedBy {
            root: Root::Unreadable(m.reach.unsafe_to_sweep.join("; ")),
            through: None,
        })
    };
    let via = m.reach.via.as_ref()?;
    let mut through = None;
    let mut at = *hash;
    // Each step goes to where `at` was first reached from, which was reached before it: the
    // chain ends at a root. The bound only guards against a bug.
    for _ in 0..=via.len() {
        let Some(from) = via.get(&at) else {
            return unreadable();
        };
        let root = match from {
            Source::Tree(t) => {
                through.get_or_insert(*t);
                at = *t;
                continue;
            }
            Source::Ref(n) => Root::Ref(n.clone()),
            Source::Entry(k) => Root::Entry(k.clone()),
            Source::Pin(p) => Root::Update(p.clone()),
        };
        return Some(ReachedBy { root, through });
    }
    unreadable()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::format::{Tree, TreeEntry, TreeEntryKind};
    use crate::{Expect, Options};

    #[test]
    fn names_the_root_and_the_tree_and_refuses_unless_forced() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path(), Options::default()).unwrap();
        let leaf = s.put_bytes(b"leaf").unwrap();
        let sub = s
            .put_bytes(
                &Tree {
                    entries: vec![TreeEntry {
                        mode: None,
                        mtime: None,
                        name: b"f".to_vec(),
                        kind: TreeEntryKind::File {
                            executable: false,
                            size: 4,
                            hash: leaf,
                        },
                    }],
                }
                .encode(),
            )
            .unwrap();
        let top = s
            .put_bytes(
                &Tree {
                    entries: vec![TreeEntry {
                        mode: None,
                        mtime: None,
                        name: b"d".to_vec(),
                        kind: TreeEntryKind::Dir { hash: sub },
                    }],
                }
                .encode(),
            )
            .unwrap();
        let keyed = s.put_keyed_bytes(b"k", b"cached", b"").unwrap();
        s.set_ref("release", top, Expect::Any).unwrap();

        let by = s.who_reaches(&leaf).unwrap();
        assert_eq!(by.root, Root::Ref("release".into()));
        assert_eq!(by.through, Some(sub), "the tree that lists it");
        assert_eq!(s.who_reaches(&top).unwrap().through, None);
        assert_eq!(
            s.who_reaches(&keyed).unwrap().root,
            Root::Entry("\"k\"".into())
        );

        let e = s.remove_with(&leaf, &RemoveOptions::default()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InUse);
        let msg = e.to_string();
        assert!(
            msg.contains(&leaf.to_string())
                && msg.contains("ref \"release\"")
                && msg.contains(&sub.to_string()),
            "{msg}"
        );
        assert!(s.contains(&leaf), "a refused rm removed the object");

        let free = s.put_bytes(b"free").unwrap();
        s.remove_with(&free, &RemoveOptions::default()).unwrap();
        assert!(!s.contains(&free));
        s.remove_with(&leaf, &RemoveOptions::default().force(true))
            .unwrap();
        assert!(!s.contains(&leaf));
        let gone = s.remove_with(&free, &RemoveOptions::default()).unwrap_err();
        assert!(gone.is_not_found(), "{gone}");

        // A ref that cannot be read might name anything: refused, saying why.
        let other = s.put_bytes(b"other").unwrap();
        std::fs::write(d.path().join("refs/garbage"), b"hello\n").unwrap();
        let e = s
            .remove_with(&other, &RemoveOptions::default())
            .unwrap_err();
        assert!(
            matches!(&e, Error::InUse { by, .. } if matches!(by.root, Root::Unreadable(_))),
            "{e}"
        );
        assert!(e.to_string().contains("refs/garbage"), "{e}");
        assert!(s.contains(&other));
    }
}

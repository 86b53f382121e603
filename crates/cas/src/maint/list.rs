//! Listing a store's objects in hash order, one fan-out directory at a time (`cas ls`,
//! `cas stats`): memory is bounded by the largest fan-out directory, not by the number of
//! objects, and the size and last use of each object cost one `fstatat` relative to its
//! fan-out directory's descriptor, never an open.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::fs;
use crate::store::layout;
use crate::{Hash, Store};

/// One object as [`Store::iter_ordered_meta`] lists it: what `lstat` of its name says,
/// without opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The object's hash (its name).
    pub hash: Hash,
    /// Size in bytes.
    pub len: u64,
    /// Last use: when it was last put or read (see [`Store::object_info`]).
    pub mtime: SystemTime,
}

/// The fan-out directories of `objects/`, in name order, each opened and listed once.
struct Fanouts {
    store: Store,
    /// Fan-out names still to visit (sorted descending: popped from the end).
    names: Option<Vec<(OsString, fs::Kind)>>,
}

impl Fanouts {
    fn new(store: &Store) -> Fanouts {
        Fanouts {
            store: store.clone(),
            names: None,
        }
    }

    /// The next fan-out directory: its descriptor and its object names, sorted. A fan-out
    /// name that is not a directory, or cannot be listed, is an error item; the walk goes on.
    fn next_dir(&mut self) -> Option<Result<(OwnedFd, Vec<Hash>)>> {
        let root = &self.store.inner.root_dir;
        let objects = self.store.path(layout::OBJECTS);
        if self.names.is_none() {
            let listed = match root.read_dir(&objects) {
                Ok(v) => v,
                Err(e) if fs::is_not_found(&e) => Vec::new(),
                Err(e) => {
                    self.names = Some(Vec::new());
                    return Some(Err(Error::io("list", objects, e)));
                }
            };
            let mut names: Vec<_> = listed
                .into_iter()
                .filter(|(n, _)| layout::is_fanout_name(fs::name_bytes(n)))
                .collect();
            names.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            self.names = Some(names);
        }
        loop {
            let (name, kind) = self.names.as_mut()?.pop()?;
            let dpath = objects.join(&name);
            if kind != fs::Kind::Dir {
                return Some(Err(not_a_fanout_dir(dpath, kind)));
            }
            let listed = root
                .open_dir(&dpath)
                .and_then(|fd| Ok((fs::list_dir_at(fd.as_fd())?, fd)));
            match listed {
                Ok((ents, fd)) => {
                    let nb = fs::name_bytes(&name);
                    // Raw 32-byte hashes sort as their hex names do.
                    let mut hashes: Vec<Hash> = ents
                        .iter()
                        .filter_map(|(f, _)| layout::parse_object_name(nb, fs::name_bytes(f)))
                        .collect();
                    hashes.sort_unstable();
                    return Some(Ok((fd, hashes)));
                }
                Err(e) if fs::is_not_found(&e) => {} // removed by gc meanwhile
                Err(e) => return Some(Err(Error::io("list", dpath, e))),
            }
        }
    }
}

/// The error for a name under `objects/` that should be a fan-out directory and is not.
pub(crate) fn not_a_fanout_dir(path: std::path::PathBuf, kind: fs::Kind) -> Error {
    Error::io(
        "list",
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is {}, not a directory", kind.describe()),
        ),
    )
}

/// The hashes of a store's objects in hash order (see [`Store::iter_ordered`]).
pub struct OrderedObjects {
    fanouts: Fanouts,
    current: std::vec::IntoIter<Hash>,
}

impl std::fmt::Debug for OrderedObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedObjects").finish_non_exhaustive()
    }
}

impl Iterator for OrderedObjects {
    type Item = Result<Hash>;

    fn next(&mut self) -> Option<Result<Hash>> {
        loop {
            if let Some(h) = self.current.next() {
                return Some(Ok(h));
            }
            match self.fanouts.next_dir()? {
                Ok((_, hashes)) => self.current = hashes.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A store's objects with their size and last use, in hash order (see
/// [`Store::iter_ordered_meta`]).
pub struct OrderedObjectMeta {
    fanouts: Fanouts,
    dir: Option<OwnedFd>,
    current: std::vec::IntoIter<Hash>,
}

impl std::fmt::Debug for OrderedObjectMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedObjectMeta").finish_non_exhaustive()
    }
}

impl Iterator for OrderedObjectMeta {
    type Item = Result<ObjectMeta>;

    fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            if let (Some(dir), Some(h)) = (&self.dir, self.current.next()) {
                let mut buf = [0u8; crate::HEX_LEN];
                let name = &h.to_hex_buf(&mut buf)[2..];
                match fs::lstat_at(dir.as_fd(), name.as_ref()) {
                    Ok(m) => {
                        return Some(Ok(ObjectMeta {
                            hash: h,
                            len: m.len,
                            mtime: m.mtime,
                        }))
                    }
                    Err(e) if fs::is_not_found(&e) => continue, // removed meanwhile
                    Err(e) => {
                        return Some(Err(Error::io(
                            "stat",
                            self.fanouts.store.object_path(&h),
                            e,
                        )))
                    }
                }
            }
            match self.fanouts.next_dir()? {
                Ok((fd, hashes)) => {
                    self.dir = Some(fd);
                    self.current = hashes.into_iter();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The fan-out directories of `objects/` in name order, each with its descriptor and its
/// object names sorted (see [`Store::fanout_dirs`]).
pub(crate) struct FanoutDirs(Fanouts);

impl Iterator for FanoutDirs {
    type Item = Result<(OwnedFd, Vec<Hash>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_dir()
    }
}

impl Store {
    /// The fan-out directories one at a time, for walks that act on each object relative to
    /// its directory's descriptor (verify). Errors as [`Store::iter_ordered`].
    pub(crate) fn fanout_dirs(&self) -> FanoutDirs {
        FanoutDirs(Fanouts::new(self))
    }

    /// The hashes of all objects, in hash order, read one fan-out directory at a time: memory
    /// is bounded by the largest fan-out directory (about 1/256 of the objects), not by
    /// their number. Files under `objects/` whose names are not object names are skipped.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let mut put = vec![store.put_bytes(b"a")?, store.put_bytes(b"b")?, store.put_bytes(b"c")?];
    /// put.sort();
    /// let listed = store.iter_ordered().collect::<cas::Result<Vec<_>>>()?;
    /// assert_eq!(listed, put);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An item is an error if a fan-out name is not a directory or a directory cannot be
    /// listed; the iteration goes on after it.
    pub fn iter_ordered(&self) -> OrderedObjects {
        OrderedObjects {
            fanouts: Fanouts::new(self),
            current: Vec::new().into_iter(),
        }
    }

    /// Like [`Store::iter_ordered`], with each object's size and last use from one
    /// `fstatat` relative to its fan-out directory (the object is not opened; an object
    /// removed meanwhile is left out).
    ///
    /// # Errors
    /// As [`Store::iter_ordered`], and an item is an error if an object cannot be `stat`ed.
    pub fn iter_ordered_meta(&self) -> OrderedObjectMeta {
        OrderedObjectMeta {
            fanouts: Fanouts::new(self),
            dir: None,
            current: Vec::new().into_iter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Options, Store};

    /// `ls` used to sort every hash of the store at once by its hex string; the ordered
    /// walk gives the same order, fan-out by fan-out, and the sizes `lstat` gives.
    #[test]
    fn ordered_walk_is_hash_order_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), Options::default()).unwrap();
        let mut put: Vec<_> = (0..600u32)
            .map(|i| {
                store
                    .put_bytes(&i.to_le_bytes()[..(i % 4 + 1) as usize])
                    .unwrap()
            })
            .collect();
        put.sort_by_key(crate::Hash::to_hex);
        put.dedup();
        let listed: Vec<_> = store.iter_ordered().map(Result::unwrap).collect();
        assert_eq!(listed, put);
        let meta: Vec<_> = store.iter_ordered_meta().map(Result::unwrap).collect();
        assert_eq!(meta.iter().map(|m| m.hash).collect::<Vec<_>>(), put);
        for m in &meta {
            assert_eq!(m.len, store.object_len(&m.hash).unwrap());
        }
        // A stray file in objects/ and a fan-out name that is a file: skipped / reported.
        std::fs::write(d.path().join("objects/zz"), b"").unwrap();
        std::fs::write(d.path().join("objects/00"), b"").ok();
        let errors = store.iter_ordered().filter(Result::is_err).count();
        assert!(errors <= 1);
        assert_eq!(
            store.iter_ordered().filter_map(Result::ok).count(),
            put.len()
        );
    }
}

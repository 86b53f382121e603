//! Storing a directory as trees (`put -r`, `Store::put_dir*`): a post-order walk in which
//! each directory is listed through its descriptor and its entries are `fstatat`-ed and read
//! relative to it — one name lookup per file rather than a walk of its whole path, which was
//! most of the time of a re-put answered by the stat cache (issue 14).
//!
//! Files are still opened by path to be read (`Batch::put_path`, unchanged); subdirectories
//! are opened by path without following a link at their name, after their parent's entries
//! are done, so the walk holds one directory descriptor at a time whatever the depth.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::fs::{self, Kind};
use crate::hash::Hash;
use crate::progress::ProgressHook;
use crate::statcache::{StatCache, StatKey};
use crate::tree::{EntryKind, Tree, TreeEntry, Trees};
use crate::Store;

/// Stores the directory `root` (a symlink to a directory is followed at the root only);
/// returns its tree's hash. Every tree stored is also left decoded in `trees`. `progress` is
/// told the bytes of the files done so far: read, or found unchanged in the stat cache.
pub(crate) fn put_dir(
    store: &Store,
    root: &Path,
    cache: Option<&mut StatCache>,
    trees: &mut Trees,
    progress: Option<&ProgressHook>,
) -> Result<Hash> {
    let meta = std::fs::metadata(root).map_err(Error::at("stat", root))?;
    if !meta.is_dir() {
        return Err(Error::Tree {
            path: root.to_owned(),
            reason: "not a directory".into(),
        });
    }
    let fd = fs::open_src_dir(root, true).map_err(Error::at("read directory", root))?;
    // One batch for the whole tree: its barriers are shared by many files, and it publishes
    // in staging order, so an object is never visible before its children.
    let mut batch = store.batch();
    let skipped = Arc::new(AtomicU64::new(0));
    if let Some(p) = progress {
        let (p, skipped) = (p.clone(), Arc::clone(&skipped));
        batch.set_progress(move |b| {
            p.report("put", skipped.load(Ordering::Relaxed) + b.done, None)
        });
    }
    let mut walk = Walk {
        store,
        batch,
        cache,
        trees,
        progress: progress.map(|p| (p, skipped)),
    };
    let hash = walk.dir(fd, root)?;
    walk.batch.commit()?;
    Ok(hash)
}

struct Walk<'a> {
    store: &'a Store,
    batch: Batch,
    cache: Option<&'a mut StatCache>,
    trees: &'a mut Trees,
    /// The callback, and the bytes of files the stat cache answered for (the batch counts
    /// those it reads).
    progress: Option<(&'a ProgressHook, Arc<AtomicU64>)>,
}

impl Walk<'_> {
    fn dir(&mut self, fd: OwnedFd, path: &Path) -> Result<Hash> {
        let mut names = fs::list_src_dir(&fd).map_err(Error::at("read directory", path))?;
        names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut entries: Vec<(OsString, Option<EntryKind>)> = Vec::with_capacity(names.len());
        for (name, kind) in names {
            let p = path.join(&name);
            let st = match kind {
                Some(Kind::Dir | Kind::Symlink | Kind::Special) => None,
                Some(Kind::File) | None => {
                    Some(fs::lstat_src_at(fd.as_fd(), &name).map_err(Error::at("stat", &p))?)
                }
            };
            let kind = st.map_or(kind.unwrap_or(Kind::Special), |s| s.kind);
            let entry = match kind {
                Kind::Dir => None, // after this directory's descriptor is closed
                Kind::File => {
                    let st = st.expect("files are stat-ed above");
                    Some(EntryKind::File {
                        executable: st.mode & 0o111 != 0,
                        size: st.size,
                        hash: self.file(&p, StatKey::of_src(&st), st.size)?,
                    })
                }
                Kind::Symlink => {
                    let t = fs::readlink_src_at(fd.as_fd(), &name)
                        .map_err(Error::at("read link", &p))?;
                    Some(EntryKind::Symlink {
                        target: t.into_vec(),
                    })
                }
                Kind::Special => {
                    return Err(Error::Tree {
                        path: p,
                        reason: "cannot store this file type (socket, fifo or device)".into(),
                    })
                }
            };
            entries.push((name, entry));
        }
        drop(fd);
        let mut children = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            let kind = if let Some(k) = entry {
                k
            } else {
                let p = path.join(&name);
                let sub = fs::open_src_dir(&p, false).map_err(Error::at("read directory", &p))?;
                EntryKind::Dir {
                    hash: self.dir(sub, &p)?,
                }
            };
            children.push(TreeEntry {
                name: name.into_vec(),
                kind,
            });
        }
        self.tree(children, path)
    }

    /// A regular file's hash: from the stat cache if it has a usable entry, else read and
    /// staged (and recorded). `key` is from the `lstat` taken before the file is read: a write
    /// during the read changes what the next run sees, so it hashes again.
    fn file(&mut self, path: &Path, key: Option<StatKey>, size: u64) -> Result<Hash> {
        match (self.cache.as_deref_mut(), key) {
            (Some(c), Some(key)) => {
                if let Some(h) = c.lookup(self.store, &key) {
                    if let Some((p, skipped)) = &self.progress {
                        let s = skipped.fetch_add(size, Ordering::Relaxed) + size;
                        if !p.report("put", s + self.batch.bytes_in(), None) {
                            return Err(Error::Interrupted);
                        }
                    }
                    return Ok(h);
                }
                let h = self.batch.put_path(path)?;
                c.record(&key, h);
                Ok(h)
            }
            _ => self.batch.put_path(path),
        }
    }

    /// Stores a directory's tree object.
    fn tree(&mut self, entries: Vec<TreeEntry>, path: &Path) -> Result<Hash> {
        // Never write a tree that a reader would refuse to decode: gc would not know its
        // children.
        let (bytes, decoded) = Tree { entries }
            .try_encode()
            .and_then(|b| Tree::decode(&b).map(|t| (b, t)))
            .map_err(|reason| Error::Tree {
                path: path.to_owned(),
                reason,
            })?;
        let hash = match self.cache.as_deref_mut() {
            // An unchanged directory's tree is in the store already: one probe through the
            // fan-out directory the cache holds open (not on a first put, where the cache is
            // empty and the tree most likely new).
            Some(c) if !c.is_empty() => {
                let h = Hash::of(&bytes);
                if c.object_present(self.store, &h) {
                    h
                } else {
                    self.batch.put_bytes(&bytes)?
                }
            }
            _ => self.batch.put_bytes(&bytes)?,
        };
        self.trees.insert(hash, decoded);
        Ok(hash)
    }
}

#[cfg(test)]
mod tests {
    use crate::{EntryKind, Options, Store};

    /// The root may be a symlink (followed); below it links are stored as links, a FIFO is
    /// refused naming its path, and entries come out sorted by name bytes.
    #[test]
    fn links_below_the_root_are_stored_and_special_files_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("b"), b"b").unwrap();
        std::fs::write(src.join("sub/a"), b"a").unwrap();
        std::os::unix::fs::symlink("sub", src.join("a-link")).unwrap();
        std::os::unix::fs::symlink(&src, d.path().join("root-link")).unwrap();
        let t = store.put_dir(d.path().join("root-link")).unwrap();
        assert_eq!(t, store.put_dir(&src).unwrap());
        let tree = store.read_tree(&t).unwrap();
        let names: Vec<&[u8]> = tree.entries.iter().map(|e| &e.name[..]).collect();
        assert_eq!(names, vec![&b"a-link"[..], b"b", b"sub"]);
        assert!(matches!(&tree.entries[0].kind, EntryKind::Symlink { target } if target == b"sub"));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("sub/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = store.put_dir(&src).unwrap_err();
        assert!(e.to_string().contains("fifo"), "{e}");
        assert!(e.to_string().contains("sub"), "{e}");
    }
}

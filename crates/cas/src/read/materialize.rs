//! A real file path holding an object, to hand to another library (`Store::materialize`):
//! a reflink where the filesystem offers one, else a hard link to the object, else a copy.
//! The result is verified once, and the use counts for LRU eviction.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::copy::hash_file;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::names::entries::Entry;
use crate::store::abandon;
use crate::Store;

/// How [`Store::materialize`] made the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Materialized {
    /// A copy-on-write clone (`FICLONE`): an independent file sharing blocks with the object.
    Reflink,
    /// A hard link to the object itself (same filesystem): read-only (mode 0444), and it keeps
    /// the bytes alive after gc or eviction removes the object's name. Never make it writable:
    /// writing to it would change the object in the store (verified reads would then
    /// quarantine it).
    HardLink,
    /// A copy.
    Copy,
}

impl Store {
    /// Makes the new path `dest` a regular file holding the object `hash`, as cheaply as the
    /// filesystems allow: a reflink (btrfs, xfs, …), else a hard link to the object (same
    /// filesystem), else a copy. The bytes at `dest` are verified against the hash before it
    /// appears (a reflink or copy is built beside `dest` and renamed into place), and the use
    /// refreshes the object's age for LRU eviction.
    ///
    /// What the path's lifetime is: a reflink or copy is the caller's own file. A hard link
    /// keeps the bytes after gc or eviction removes the object's name from the store; it
    /// shares the object's inode, so it must never be written to.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path().join("s"), cas::Options::default())?;
    /// let h = store.put_bytes(b"model weights")?;
    /// let path = dir.path().join("weights.bin");
    /// store.materialize(&h, &path)?;
    /// assert_eq!(std::fs::read(&path).unwrap(), b"model weights");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] (the object is quarantined, `dest` is not made);
    /// [`Error::Io`] naming `dest` if it exists already or cannot be created.
    pub fn materialize(&self, hash: &Hash, dest: impl AsRef<Path>) -> Result<Materialized> {
        let dest = dest.as_ref();
        self.refuse_output_inside(dest)?;
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(Error::io(
                "materialize to",
                dest,
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let (object, path) = self.open_file(hash)?;
        let how = match self.clone_beside(hash, &object, &path, dest)? {
            Some(how) => how,
            None => self.link_or_copy(hash, &object, &path, dest)?,
        };
        let _ = self.refresh_if_present(hash, None, crate::Durability::None);
        Ok(how)
    }

    /// [`Store::materialize`] for the object `key` maps to; returns its entry too.
    ///
    /// # Errors
    /// [`Error::KeyNotFound`]; as [`Store::materialize`].
    pub fn materialize_keyed(
        &self,
        key: &[u8],
        dest: impl AsRef<Path>,
    ) -> Result<(Entry, Materialized)> {
        let entry = self.entry(key)?;
        let how = self.materialize(&entry.hash, dest)?;
        Ok((entry, how))
    }

    /// Reflink into a temporary file beside `dest`, verify it, rename it into place. `None` if
    /// the filesystems cannot clone between these files.
    fn clone_beside(
        &self,
        hash: &Hash,
        object: &File,
        path: &Path,
        dest: &Path,
    ) -> Result<Option<Materialized>> {
        let tmp = Beside::new(dest)?;
        match rustix::fs::ioctl_ficlone(&tmp.file, object) {
            Ok(()) => {}
            Err(_) => return Ok(None), // EXDEV, EOPNOTSUPP, EINVAL: no reflink here
        }
        self.finish_beside(hash, &tmp, path, dest)?;
        Ok(Some(Materialized::Reflink))
    }

    /// A hard link to the object where allowed (same filesystem, the kernel's
    /// `protected_hardlinks` rules), checked to be the inode that was opened and verified;
    /// else a copy.
    fn link_or_copy(
        &self,
        hash: &Hash,
        object: &File,
        path: &Path,
        dest: &Path,
    ) -> Result<Materialized> {
        let meta = object.metadata().map_err(Error::at("stat", path))?;
        let actual = hash_file(object, self.may_map(&meta)).map_err(Error::at("read", path))?;
        if actual != *hash {
            return Err(self.corrupt(hash, actual, path));
        }
        if self.inner.root_dir.link_out(path, dest).is_ok() {
            // The name may have been swapped between our open and the link: keep the link
            // only if it is the very inode we verified.
            let same = std::fs::symlink_metadata(dest)
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if same {
                return Ok(Materialized::HardLink);
            }
            let _ = std::fs::remove_file(dest);
        }
        let tmp = Beside::new(dest)?;
        let mut src = object;
        let mut out = &tmp.file;
        io::Seek::seek(&mut src, io::SeekFrom::Start(0)).map_err(Error::at("read", path))?;
        io::copy(&mut src, &mut out).map_err(|e| Error::io("copy to", &tmp.path, e))?;
        self.finish_beside(hash, &tmp, path, dest)?;
        Ok(Materialized::Copy)
    }

    /// Verifies the temporary file's bytes and moves it to `dest` without replacing.
    fn finish_beside(&self, hash: &Hash, tmp: &Beside, path: &Path, dest: &Path) -> Result<()> {
        let actual = hash_file(&tmp.file, false).map_err(|e| Error::io("read", &tmp.path, e))?;
        if actual != *hash {
            // The object changed under us (its bytes are not its name): the store's problem.
            return Err(self.corrupt(hash, actual, path));
        }
        fs::set_mode(&tmp.file, 0o444 & !fs::umask())
            .map_err(|e| Error::io("set permissions of", &tmp.path, e))?;
        std::fs::hard_link(&tmp.path, dest).map_err(Error::at("materialize to", dest))?;
        Ok(())
    }
}

/// A temporary file beside a destination, removed when dropped (also on a signal).
struct Beside {
    file: File,
    path: PathBuf,
    _reg: abandon::Registered,
}

impl Beside {
    fn new(dest: &Path) -> Result<Beside> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let t = tempfile::Builder::new()
            .prefix(&format!(".{name}.cas-materialize."))
            .tempfile_in(parent)
            .map_err(|e| Error::io("create the output in", parent, fs::without_path(e, parent)))?;
        let (file, path) = t.keep().map_err(|e| Error::io("create", parent, e.error))?;
        let reg = abandon::register_temp(&path);
        if abandon::abandoned() {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Interrupted);
        }
        Ok(Beside {
            file,
            path,
            _reg: reg,
        })
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        // The content lives on under `dest` (a hard link) if it was published.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    #[test]
    fn materializes_verified_and_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path().join("s"), Options::default()).unwrap();
        let hash = store.put_bytes(b"contents").unwrap();
        let out = d.path().join("out");
        let how = store.materialize(&hash, &out).unwrap();
        assert_ne!(how, Materialized::Reflink, "ext4/tmpfs have no reflink");
        assert_eq!(std::fs::read(&out).unwrap(), b"contents");
        let e = store.materialize(&hash, &out).unwrap_err();
        assert!(e.to_string().contains("out"), "{e}");
        // Nothing but the result beside it.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A corrupt object is quarantined and nothing appears.
        let rot = store.put_bytes(b"will rot").unwrap();
        let obj = store.object_path(&rot);
        std::fs::remove_file(&obj).unwrap();
        std::fs::write(&obj, b"rotten!!").unwrap();
        let never = d.path().join("never");
        assert!(store.materialize(&rot, &never).unwrap_err().is_corrupt());
        assert!(!never.exists());
    }
}

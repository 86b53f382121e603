//! `trash/`: where gc moves condemned objects before deleting them (docs/format.md "GC").
//!
//! Each gc run that condemns objects gets its own directory `trash/<unix-millis>.<host>.<pid>`,
//! so the time an object was condemned is in its path. Anything that needs an object that is
//! in trash (a read, setting a ref or cache entry to it, a later gc finding it reachable) moves
//! it back to `objects/` with the same no-replace publish a writer uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::store::layout;
use crate::Store;

/// A run directory in `trash/` and when it was made.
#[derive(Debug)]
pub(crate) struct TrashRun {
    pub(crate) path: PathBuf,
    pub(crate) created: SystemTime,
}

/// Parses `<unix-millis>.<host>.<pid>`.
pub(crate) fn parse_run_name(name: &str) -> Option<SystemTime> {
    let millis: u64 = name.split('.').next()?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

impl Store {
    pub(crate) fn trash_runs(&self) -> Result<Vec<TrashRun>> {
        let dir = self.path(layout::TRASH);
        let rd = match self.inner.root_dir.read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if fs::is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        let mut runs = Vec::new();
        for (name, kind) in rd {
            // Only real directories: a symlink planted in trash/ is never entered.
            if kind != fs::Kind::Dir {
                continue;
            }
            if let Some(created) = name.to_str().and_then(parse_run_name) {
                runs.push(TrashRun {
                    path: dir.join(name),
                    created,
                });
            }
        }
        runs.sort_by_key(|r| r.created);
        Ok(runs)
    }

    /// Where the object is in trash, if it is.
    pub(crate) fn find_in_trash(&self, hash: &Hash) -> Option<PathBuf> {
        let name = hash.to_string();
        self.trash_runs().ok()?.into_iter().find_map(|r| {
            let p = r.path.join(&name);
            self.inner.root_dir.lstat(&p).is_ok().then_some(p)
        })
    }

    /// Moves an object from trash back to `objects/`. Returns the path to read it from: the
    /// object path, or the trash path if moving it back was refused (read-only store for this
    /// user). `None` if it is in neither place.
    pub(crate) fn restore_from_trash(&self, hash: &Hash) -> Result<Option<PathBuf>> {
        let dst = self.object_path(hash);
        for _ in 0..4 {
            let Some(src) = self.find_in_trash(hash) else {
                // A concurrent restore may have won: check the object path once more.
                return Ok(self.inner.root_dir.lstat(&dst).is_ok().then_some(dst));
            };
            match self.move_back(&src, &dst) {
                Ok(()) => return Ok(Some(dst)),
                Err(e) if fs::is_not_found(&e) => {} // someone else moved or deleted it: retry
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(Some(src)),
                Err(e) => return Err(Error::io("restore from trash", &src, e)),
            }
        }
        Ok(self.inner.root_dir.lstat(&dst).is_ok().then_some(dst))
    }

    fn move_back(&self, src: &Path, dst: &Path) -> std::io::Result<()> {
        let mut attempts = 0;
        loop {
            let root = &self.inner.root_dir;
            match root.publish_noreplace(src, dst, &self.inner.caps) {
                Ok(fs::Published::Created) => return Ok(()),
                Ok(fs::Published::Existed) => {
                    // Re-put meanwhile: the trash copy is redundant.
                    let _ = root.unlink(src);
                    return Ok(());
                }
                Err(e) if fs::is_not_found(&e) && attempts < 4 && root.lstat(src).is_ok() => {
                    attempts += 1;
                    if let Some(dir) = dst.parent() {
                        self.ensure_dir(dir).map_err(std::io::Error::from)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ensures an object is in `objects/`, moving it back from trash if gc condemned it.
    /// Used before anything is made to point to the object.
    ///
    /// # Errors
    /// [`Error::NotFound`] if the object is neither in `objects/` nor in trash.
    pub(crate) fn ensure_present(&self, hash: &Hash) -> Result<()> {
        let p = self.object_path(hash);
        // Refreshing the mtime doubles as the existence check, and makes the object young for
        // a gc that has not yet judged it.
        if self.refresh_if_present(hash, None, crate::Durability::None) {
            return Ok(());
        }
        match self.restore_from_trash(hash)? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound {
                hash: *hash,
                path: p,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        let t = parse_run_name("1700000000123.host.a.42").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_700_000_000_123)
        );
        assert!(parse_run_name("x.host.1").is_none());
    }
}

//! Opening and creating a store; the handle every operation hangs off.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Options;
use crate::error::{Error, Result};
use crate::fs::{self, Caps, Published};
use crate::init::Create;
use crate::layout::{self, FORMAT_LINE, FORMAT_MAJOR};
use crate::Durability;

/// A handle on a store directory. Cheap to clone (`Arc` inside), `Send + Sync`: share one
/// handle between threads, or open the same directory from many processes and hosts.
///
/// ```
/// # fn main() -> cas::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = cas::Store::init(dir.path().join("store"), cas::Options::default())?;
/// let hash = store.put_bytes(b"hello")?;
/// assert_eq!(&*store.get(&hash)?, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) options: Options,
    pub(crate) caps: Caps,
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// `HOST.PID.`: the prefix of this process's staging files.
    pub(crate) staging_prefix: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .field("options", &self.inner.options)
            .field("filesystem", &self.inner.caps.name)
            .finish_non_exhaustive()
    }
}

/// What the store knows about the filesystem it lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FsInfo {
    /// Filesystem type name from `statfs` ("ext4", "nfs", "fuse", …, or "unknown").
    pub fs_type: String,
    /// The raw `statfs` magic number.
    pub magic: i64,
    /// Treated as a network filesystem: reads are not memory-mapped, publishes use link+unlink.
    pub network: bool,
    /// Whether `renameat2(RENAME_NOREPLACE)` is (still believed to be) usable.
    pub rename_noreplace: bool,
}

impl Store {
    /// Creates a store at `root` (and its missing parents) with `options`, or opens it if a
    /// store is already there (its own persisted options win; `init` is idempotent and safe
    /// to race). A store is only created where nothing exists yet, or in an empty directory:
    /// an existing directory that holds anything else is refused, so a mistyped path never
    /// scatters a store's files among someone else's. To create one there all the same, use
    /// [`Store::open_or_create`] with [`Create::Force`].
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path().join("new"), cas::Options::default())?;
    /// std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    /// let e = cas::Store::init(dir.path(), cas::Options::default()).unwrap_err();
    /// assert!(matches!(e, cas::Error::NotEmpty { .. }));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotEmpty`] if `root` exists and is neither a store nor an empty directory;
    /// I/O errors naming the path; [`Error::UnsupportedFormat`] if a newer store is there.
    #[allow(clippy::needless_pass_by_value)] // builder-style Options read better by value
    pub fn init(root: impl AsRef<Path>, options: Options) -> Result<Store> {
        Self::open_or_create(root, options, Create::IfMissingOrEmpty)
    }

    /// Lays out a store in the existing or missing directory `root`, in place.
    pub(crate) fn init_inner(root: &Path, options: &Options) -> Result<Store> {
        match Self::open(root) {
            Ok(s) => return Ok(s),
            Err(Error::NotAStore { .. }) => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(root).map_err(Error::at("create store directory", root))?;
        let dir_mode = dir_mode(options.shared_group);
        if options.shared_group {
            // setgid so everything below inherits the group; explicit chmod beats the umask.
            fs::chmod_path(root, dir_mode).map_err(Error::at("set permissions of", root))?;
        }
        for d in [
            layout::TMP,
            layout::OBJECTS,
            layout::REFS,
            layout::INDEX,
            layout::LOCKS,
        ] {
            let p = root.join(d);
            fs::mkdir_exist_ok(&p, dir_mode).map_err(Error::at("create directory", &p))?;
            if options.shared_group {
                fs::chmod_path(&p, dir_mode).map_err(Error::at("set permissions of", &p))?;
            }
        }
        let caps = Caps::probe(root).map_err(Error::at("statfs", root))?;
        // config first, FORMAT last: a FORMAT file means the store is complete. Both are
        // published without replacing, so racing inits agree on the first one's options.
        let tmp = root.join(layout::TMP);
        publish_small_file(
            &tmp,
            &root.join(layout::CONFIG),
            options.to_file().as_bytes(),
            &caps,
        )?;
        publish_small_file(
            &tmp,
            &root.join(layout::FORMAT),
            format!("{FORMAT_LINE}\nhash blake3\n").as_bytes(),
            &caps,
        )?;
        Self::open(root)
    }

    /// Opens an existing store with its persisted options.
    ///
    /// # Errors
    /// [`Error::NotAStore`] if there is no `FORMAT` file; [`Error::UnsupportedFormat`] for a
    /// store of a newer major format; [`Error::Malformed`] for an unreadable `config`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Self::open_inner(root.as_ref(), None)
    }

    /// Opens an existing store, overriding its persisted options for this handle only.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with(root: impl AsRef<Path>, options: Options) -> Result<Store> {
        Self::open_inner(root.as_ref(), Some(options))
    }

    /// Opens the store at `root`, creating it with `options` if nothing exists there yet or
    /// `root` is an empty directory (as [`Store::init`]). An existing directory that is not a
    /// store and not empty is never written.
    ///
    /// # Errors
    /// As [`Store::init`].
    #[allow(clippy::needless_pass_by_value)] // as `init`
    pub fn open_or_init(root: impl AsRef<Path>, options: Options) -> Result<Store> {
        Self::open_or_create(root, options, Create::IfMissingOrEmpty)
    }

    fn open_inner(root: &Path, over: Option<Options>) -> Result<Store> {
        let fmt_path = root.join(layout::FORMAT);
        let text = match read_small(&fmt_path) {
            Ok(t) => t,
            // NotADirectory: the path is a file.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(Error::NotAStore {
                    path: root.to_owned(),
                })
            }
            Err(e) => return Err(Error::io("read", &fmt_path, e)),
        };
        check_format(&fmt_path, &text)?;
        let cfg_path = root.join(layout::CONFIG);
        let options = match over {
            Some(o) => o,
            None => match read_small(&cfg_path) {
                Ok(t) => Options::parse_file(&t).map_err(|reason| Error::Malformed {
                    what: "config file",
                    path: cfg_path.clone(),
                    reason,
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Options::default(),
                Err(e) => return Err(Error::io("read", &cfg_path, e)),
            },
        };
        let caps = Caps::probe(root).map_err(Error::at("statfs", root))?;
        let host = fs::hostname();
        let pid = fs::pid();
        Ok(Store {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                staging_prefix: layout::staging_prefix(&host, pid),
                options,
                caps,
                host,
                pid,
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The options in force for this handle.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The default durability of writes through this handle.
    pub fn durability(&self) -> Durability {
        self.inner.options.durability
    }

    /// What was detected about the filesystem holding the store.
    pub fn fs_info(&self) -> FsInfo {
        let c = &self.inner.caps;
        FsInfo {
            fs_type: c.name.to_owned(),
            magic: c.magic,
            network: c.network,
            rename_noreplace: c
                .rename_noreplace
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.inner.root.join(sub)
    }

    pub(crate) fn dir_mode(&self) -> u32 {
        dir_mode(self.inner.options.shared_group)
    }

    /// Creates a directory of the store (and missing parents inside the store) with the store's
    /// directory mode; existing is fine. Safe against concurrent creators and removers.
    pub(crate) fn ensure_dir(&self, dir: &Path) -> Result<()> {
        let mode = self.dir_mode();
        let mut attempts = 0;
        loop {
            match fs::mkdir_exist_ok(dir, mode) {
                Ok(()) => break,
                Err(e) if fs::is_not_found(&e) && attempts < 8 => {
                    attempts += 1;
                    let parent = dir
                        .parent()
                        .filter(|p| p.starts_with(&self.inner.root) && *p != self.inner.root);
                    match parent {
                        Some(p) => self.ensure_dir(p)?,
                        None => return Err(Error::io("create directory", dir, e)),
                    }
                }
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
        }
        if self.inner.options.shared_group {
            // mkdir applies the umask; the shared mode must not depend on it. Only the creator
            // (owner) can chmod; someone else's directory already has the right mode.
            let _ = fs::chmod_path(dir, mode);
        }
        Ok(())
    }

    /// A new staging file in `tmp/`, named `HOST.PID.RANDOM`, created with `O_EXCL`.
    pub(crate) fn staging_file(&self) -> Result<tempfile::NamedTempFile> {
        let tmp = self.path(layout::TMP);
        let mut attempts = 0;
        loop {
            let r = tempfile::Builder::new()
                .prefix(&self.inner.staging_prefix)
                .rand_bytes(10)
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(
                    self.staging_mode(),
                ))
                .tempfile_in(&tmp);
            match r {
                // Checked after creating: either an abandoning thread's scan of tmp/ sees this
                // file, or we see its flag (crate::cleanup).
                Ok(_) if crate::cleanup::abandoned() => return Err(Error::Interrupted),
                Ok(f) => return Ok(f),
                // tmp/ missing (first use, or removed by hand): create it and retry.
                Err(e) if fs::is_not_found(&e) && attempts < 4 => {
                    attempts += 1;
                    self.ensure_dir(&tmp)?;
                }
                Err(e) => return Err(Error::io("create staging file in", &tmp, e)),
            }
        }
    }

    /// Atomically replaces the small file `dst` (a ref or cache entry) with `bytes`: write a
    /// staging file in `tmp/`, fsync per `durability`, rename over `dst`. Readers see the old or
    /// the new content, never a torn or missing file.
    pub(crate) fn replace_small(
        &self,
        dst: &Path,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<()> {
        let mut staging = self.staging_file()?;
        staging
            .write_all(bytes)
            .map_err(Error::at("write staging file", staging.path()))?;
        if durability != Durability::None {
            fs::sync_data(staging.as_file()).map_err(Error::at("fsync", staging.path()))?;
        }
        fs::set_mode(staging.as_file(), self.file_mode())
            .map_err(Error::at("set permissions of", staging.path()))?;
        let mut attempts = 0;
        loop {
            match std::fs::rename(staging.path(), dst) {
                Ok(()) => break,
                Err(e) if fs::is_not_found(&e) && attempts < 8 => {
                    attempts += 1;
                    self.ensure_dir(dst.parent().unwrap_or(dst))?;
                }
                Err(e) => return Err(Error::io("replace", dst, e)),
            }
        }
        // Renamed away: nothing for the guard to remove.
        let _ = staging.into_temp_path().keep();
        if durability == Durability::Full {
            let dir = dst.parent().unwrap_or(dst);
            fs::fsync_dir(dir).map_err(Error::at("fsync directory", dir))?;
        }
        Ok(())
    }

    pub(crate) fn staging_mode(&self) -> u32 {
        if self.inner.options.shared_group {
            0o660
        } else {
            0o600
        }
    }
}

fn dir_mode(shared: bool) -> u32 {
    if shared {
        0o2775
    } else {
        0o755
    }
}

fn check_format(path: &Path, text: &str) -> Result<()> {
    let first = text.lines().next().unwrap_or("").trim();
    let malformed = |reason: &str| Error::Malformed {
        what: "FORMAT file",
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(version) = first.strip_prefix("cas-store ") else {
        return Err(malformed("first line is not `cas-store N`"));
    };
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| malformed("the format version is not a number"))?;
    if major > FORMAT_MAJOR {
        return Err(Error::UnsupportedFormat {
            path: path.to_owned(),
            found: first.to_owned(),
            supported: FORMAT_MAJOR,
        });
    }
    if major < FORMAT_MAJOR {
        return Err(malformed("format 0 does not exist"));
    }
    for line in text.lines().skip(1) {
        if let Some(alg) = line.trim().strip_prefix("hash ") {
            if alg.trim() != "blake3" {
                return Err(malformed("only `hash blake3` is supported"));
            }
        }
    }
    Ok(())
}

/// Reads a small text file (FORMAT, config, refs, locks).
pub(crate) fn read_small(path: &Path) -> io::Result<String> {
    let mut f = fs::open_read(path)?;
    let mut s = String::new();
    Read::by_ref(&mut f)
        .take(64 * 1024)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// Writes `bytes` to a staging file in `tmp` and publishes it at `dst` without replacing.
/// Returns whether our file was published.
fn publish_small_file(tmp: &Path, dst: &Path, bytes: &[u8], caps: &Caps) -> Result<bool> {
    let mut f = tempfile::Builder::new()
        .prefix(&layout::staging_prefix(&fs::hostname(), fs::pid()))
        .tempfile_in(tmp)
        .map_err(Error::at("create staging file in", tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.as_file().sync_all())
        .map_err(Error::at("write", f.path()))?;
    fs::set_mode(f.as_file(), 0o444).map_err(Error::at("set permissions of", f.path()))?;
    let r = fs::publish_noreplace(f.path(), dst, caps).map_err(Error::at("publish", dst))?;
    Ok(r == Published::Created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_open_checks_format() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("s");
        assert!(matches!(Store::open(&root), Err(Error::NotAStore { .. })));
        let s = Store::init(&root, Options::default().durability(Durability::Full)).unwrap();
        assert_eq!(s.durability(), Durability::Full);
        // A second init keeps the first one's options.
        let s2 = Store::init(&root, Options::default().durability(Durability::None)).unwrap();
        assert_eq!(s2.durability(), Durability::Full);
        std::fs::remove_file(root.join("FORMAT")).unwrap();
        std::fs::write(root.join("FORMAT"), "cas-store 2\nhash blake3\n").unwrap();
        let e = Store::open(&root).unwrap_err();
        assert!(matches!(e, Error::UnsupportedFormat { .. }), "{e}");
        assert!(e.to_string().contains("cas-store 2"), "{e}");
    }
}

//! Opening and creating a store; the handle every operation hangs off.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::fs::{self, Barrier, Caps, Root};
use crate::store::config::Options;
use crate::store::init::Create;
use crate::store::layout::{self, FORMAT_LINE, FORMAT_MAJOR};
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
    /// The tier chosen at open (`crate::store::tier`): the upstream after this directory, and
    /// where names live; `None` for a standalone store.
    pub(crate) tier: Option<Arc<crate::store::tier::Tier>>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    /// The root directory, held open: every path inside the store is resolved beneath it.
    pub(crate) root_dir: Root,
    /// `tmp/`, held open once used (see `Store::new_staging`).
    pub(crate) tmp_dir: Mutex<Option<Arc<OwnedFd>>>,
    /// `objects/00/` … `objects/ff/`, held open once used (see `Store::fanout_dir`).
    pub(crate) fanouts: Mutex<Vec<Option<Arc<OwnedFd>>>>,
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
            .field("upstream", &self.upstream().map(crate::Upstream::location))
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
    /// The durability barrier used for this filesystem.
    pub barrier: Barrier,
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
    /// I/O errors naming the path; [`Error::UnsupportedFormat`] if a newer store is there;
    /// [`Error::Upstream`] if `options` names an upstream that is not a store (see
    /// [`Store::open_or_create`]).
    #[allow(clippy::needless_pass_by_value)] // builder-style Options read better by value
    pub fn init(root: impl AsRef<Path>, options: Options) -> Result<Store> {
        crate::store::init::open_or_create_inner(
            root.as_ref(),
            &options,
            Create::IfMissingOrEmpty,
            false,
        )
    }

    /// Lays out a store in the existing or missing directory `root`, in place; with
    /// `infer_shared`, a directory an administrator prepared for a shared store (setgid and
    /// group-writable, no store in it yet) gets a shared store even if `options` did not ask
    /// for one: a store's shared mode is never silently dropped.
    pub(crate) fn init_with(root: &Path, options: &Options, infer_shared: bool) -> Result<Store> {
        match Self::open(root) {
            Ok(s) => return Ok(s),
            Err(Error::NotAStore { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut options = options.clone();
        if infer_shared && !options.shared_group && prepared_for_sharing(root) {
            options.shared_group = true;
        }
        // The config records the upstream as an absolute path: a relative one would be
        // resolved against whatever directory a later process runs in.
        if let Some(up) = options.upstream.clone() {
            crate::store::config::check_upstream_path(&up)?;
            options.upstream = Some(std::path::absolute(&up).map_err(Error::at("resolve", &up))?);
        }
        let options = &options;
        std::fs::create_dir_all(root).map_err(Error::at("create store directory", root))?;
        let dir_mode = dir_mode(options.shared_group);
        if options.shared_group {
            // setgid so everything below inherits the group; explicit chmod beats the umask.
            // Only the owner may chmod: a directory an administrator created for the group
            // (docs/shared-stores.md) is fine as it is if it already has the shared bits.
            if let Err(e) = fs::chmod_path(root, dir_mode) {
                if !prepared_for_sharing(root) {
                    return Err(Error::Io {
                        op: "make the shared store directory setgid and group-writable (its owner must run `chmod 2775` on it)",
                        path: root.to_owned(),
                        source: e,
                    });
                }
            }
        }
        let handle = Root::open(root).map_err(Error::at("open store directory", root))?;
        for d in [
            layout::TMP,
            layout::OBJECTS,
            layout::REFS,
            layout::INDEX,
            layout::LOCKS,
        ] {
            // Beneath the root, never through a symlink planted at the name.
            let p = root.join(d);
            handle
                .mkdir(&p, dir_mode)
                .map_err(Error::at("create directory", &p))?;
            if options.shared_group {
                if let Err(e) = handle.chmod(&p, dir_mode) {
                    // Another member created it first: theirs to chmod, and fine if shared.
                    if handle.lstat(&p).map_or(true, |m| m.mode & 0o2070 != 0o2070) {
                        return Err(Error::io("set permissions of", &p, e));
                    }
                }
            }
        }
        // config first, FORMAT last: a FORMAT file means the store is complete. Both are
        // published without replacing, so racing inits agree on the first one's options.
        let store = Self::with_root(handle, options.clone())?;
        store.create_fanouts()?;
        for (name, text) in [
            (layout::CONFIG, options.to_file()),
            (layout::FORMAT, format!("{FORMAT_LINE}\nhash blake3\n")),
        ] {
            let dst = root.join(name);
            let mut staged = store.stage_small(text.as_bytes(), 0o444, Durability::Full)?;
            store
                .publish_small(&mut staged, &dst)
                .map_err(Error::at("publish", &dst))?;
        }
        store.sync_layout()?;
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
    ///
    /// A directory that exists, holds no store yet, and is setgid and group-writable (what an
    /// administrator prepares for a shared store, docs/shared-stores.md) gets a shared store
    /// whatever `options` says.
    pub fn open_or_init(root: impl AsRef<Path>, options: Options) -> Result<Store> {
        Self::open_or_create(root, options, Create::IfMissingOrEmpty)
    }

    fn open_inner(root: &Path, over: Option<Options>) -> Result<Store> {
        // Nothing there, a file, or no FORMAT in it: not a store.
        let absent = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            )
        };
        let not_a_store = || Error::not_a_store(root);
        let dir = match Root::open(root) {
            Ok(d) => d,
            Err(e) if absent(&e) => return Err(not_a_store()),
            Err(e) => return Err(Error::io("open store directory", root, e)),
        };
        let fmt_path = root.join(layout::FORMAT);
        let text = match read_small(&dir, &fmt_path) {
            Ok(t) => t,
            Err(e) if absent(&e) => return Err(not_a_store()),
            Err(e) => return Err(Error::io("read", &fmt_path, e)),
        };
        check_format(&fmt_path, &text)?;
        let cfg_path = root.join(layout::CONFIG);
        let options = match over {
            Some(o) => o,
            None => match read_small(&dir, &cfg_path) {
                Ok(t) => Options::parse_file(&t).map_err(|reason| Error::Malformed {
                    what: "config file",
                    path: cfg_path.clone(),
                    reason,
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Options::default(),
                Err(e) => return Err(Error::io("read", &cfg_path, e)),
            },
        };
        Ok(Self::with_root(dir, options)?.attach_upstream())
    }

    fn with_root(dir: Root, options: Options) -> Result<Store> {
        let root = dir.path().to_owned();
        let caps = Caps::probe(&root).map_err(Error::at("statfs", &root))?;
        let host = fs::hostname();
        let pid = fs::pid();
        Ok(Store {
            inner: Arc::new(Inner {
                staging_prefix: layout::staging_prefix(&host, pid),
                root,
                root_dir: dir,
                tmp_dir: Mutex::new(None),
                fanouts: Mutex::new(vec![None; 256]),
                options,
                caps,
                host,
                pid,
            }),
            tier: None,
        })
    }

    /// This handle, or — in a process `fork`ed from the one that opened it — a fresh handle
    /// on the same store with the same options, owned by this process.
    ///
    /// A handle records its process id: it names its staging files and its locks, and gc
    /// and lock breakers judge them by whether that process lives. A forked child that kept
    /// using its parent's handle would write under its parent's name, and its files and locks
    /// could be removed as soon as the parent exits. Call this (cheap: one `getpid`) before
    /// using a handle that may have crossed a `fork`, as the Python binding does on every
    /// call.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let same = store.for_this_process()?;      // not forked: the same handle
    /// assert_eq!(same.root(), store.root());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::open_with`], when a fresh handle is opened.
    pub fn for_this_process(&self) -> Result<Store> {
        if self.inner.pid == fs::pid() {
            return Ok(self.clone());
        }
        Self::open_with(&self.inner.root, self.inner.options.clone())
    }

    /// A handle on the same store with other options for this handle only (as
    /// [`Store::open_with`], without opening the store again: the same directory, the same
    /// filesystem knowledge).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let fast = store.with_options(store.options().clone().durability(cas::Durability::None))?;
    /// assert_eq!(fast.durability(), cas::Durability::None);
    /// assert_eq!(store.durability(), cas::Durability::File);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// I/O errors duplicating the store's directory descriptor.
    #[allow(clippy::needless_pass_by_value)] // builder-style Options read better by value
    pub fn with_options(&self, options: Options) -> Result<Store> {
        let i = &self.inner;
        let dir = i
            .root_dir
            .try_clone()
            .map_err(Error::at("open store directory", &i.root))?;
        let store = Store {
            inner: Arc::new(Inner {
                staging_prefix: i.staging_prefix.clone(),
                root: i.root.clone(),
                root_dir: dir,
                tmp_dir: Mutex::new(None),
                fanouts: Mutex::new(vec![None; 256]),
                options,
                caps: i.caps.snapshot(),
                host: i.host.clone(),
                pid: i.pid,
            }),
            // An upstream in `options` is attached; otherwise this handle's upstream (if
            // any, perhaps not a directory) stays (`without_upstream` drops it).
            tier: self.tier.clone(),
        };
        Ok(if store.inner.options.upstream.is_some() {
            store.attach_upstream()
        } else {
            store
        })
    }

    /// A handle on the same store whose writes are at least as durable as `level`: this
    /// handle if it already is, else one with its durability raised. What a command that
    /// promises `level` uses for every other store it writes (a tier's upstream, a push
    /// destination), so the promise covers them too.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default().durability(cas::Durability::None))?;
    /// assert_eq!(store.at_least(cas::Durability::Full)?.durability(), cas::Durability::Full);
    /// let full = store.at_least(cas::Durability::Full)?;
    /// assert_eq!(full.at_least(cas::Durability::File)?.durability(), cas::Durability::Full);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Store::with_options`].
    pub fn at_least(&self, level: crate::Durability) -> Result<Store> {
        if self.durability() >= level {
            return Ok(self.clone());
        }
        self.with_options(self.options().clone().durability(level))
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
            barrier: c.barrier,
        }
    }

    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.inner.root.join(sub)
    }

    pub(crate) fn dir_mode(&self) -> u32 {
        dir_mode(self.inner.options.shared_group)
    }

    /// Creates a directory of the store (and missing parents inside the store) with the store's
    /// directory mode; existing is fine. Safe against concurrent creators and removers, and
    /// never creates anything through a symlink. Returns true if this call created `dir`.
    pub(crate) fn ensure_dir(&self, dir: &Path) -> Result<bool> {
        let mode = self.dir_mode();
        let root = &self.inner.root_dir;
        let mut attempts = 0;
        let created = loop {
            match root.mkdir(dir, mode) {
                Ok(created) => break created,
                Err(e) if fs::is_not_found(&e) && attempts < 8 => {
                    attempts += 1;
                    let parent = dir
                        .parent()
                        .filter(|p| p.starts_with(&self.inner.root) && *p != self.inner.root);
                    match parent {
                        Some(p) => self.ensure_dir(p)?,
                        None => return Err(Error::io("create directory", dir, e)),
                    };
                }
                Err(e) => return Err(Error::io("create directory", dir, e)),
            }
        };
        if created && self.inner.options.shared_group {
            // mkdir applies the umask; the shared mode must not depend on it. Only the creator
            // (owner) can chmod; someone else's directory already has the right mode.
            let _ = root.chmod(dir, mode);
        }
        Ok(created)
    }

    /// Mode of published objects: read-only for everyone who may read the store.
    /// Refuses an output destination inside this store (or its upstream): `get -o`, `get -r`,
    /// `materialize` there would replace objects, refs or entries with other bytes behind the
    /// store's back. `dest` is resolved first (symlinks, `..`, bind mounts: see
    /// [`fs::is_inside`]).
    pub(crate) fn refuse_output_inside(&self, dest: &Path) -> Result<()> {
        let mut roots = vec![self.inner.root.as_path()];
        if let Some(t) = &self.tier {
            roots.push(t.upstream.location());
        }
        for root in roots {
            if fs::is_inside(dest, root).unwrap_or(false) {
                return Err(Error::InvalidInput {
                    what: "output destination",
                    reason: format!(
                        "{} is inside the store {} (writing there would replace the store's \
                         own files); choose a destination outside it",
                        dest.display(),
                        root.display()
                    ),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn object_mode(&self) -> u32 {
        0o444
    }

    pub(crate) fn staging_mode(&self) -> u32 {
        if self.inner.options.shared_group {
            0o660
        } else {
            0o600
        }
    }
}

/// True if `root` is a directory that is setgid and group-writable: prepared for a shared
/// store by whoever owns it.
pub(crate) fn prepared_for_sharing(root: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(root).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o2070 == 0o2070)
}

fn dir_mode(shared: bool) -> u32 {
    if shared {
        0o2775
    } else {
        0o755
    }
}

pub(crate) fn check_format(path: &Path, text: &str) -> Result<()> {
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

/// Reads a small text file inside the store (FORMAT, config, refs, locks): at most 64 KiB,
/// reached beneath the root, refused if it is not a regular file.
pub(crate) fn read_small(root: &Root, path: &Path) -> io::Result<String> {
    let (bytes, _, _) = root.read_small(path, 64 * 1024)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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

//! Creating stores only on purpose (docs/decisions.md, "Stores are created only on purpose").
//!
//! A store appears at a path that did not exist as a whole: it is laid out in a hidden
//! sibling directory and renamed into place without replacing, so racing first users agree on
//! one store and nobody ever sees a half-made one. An existing directory is only turned into a
//! store when it is empty (or holds nothing but what an interrupted or concurrent `init` made),
//! or when the caller says [`Create::Force`].

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fs;
use crate::store::abandon;
use crate::store::config::Options;
use crate::store::layout;
use crate::Store;

/// When [`Store::open_or_create`] may create a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Create {
    /// Never: open an existing store or fail with [`Error::NotAStore`] (as [`Store::open`]).
    Never,
    /// Only if nothing exists at the path yet (missing parents are created too). An existing
    /// directory that is not a store, even an empty one, is an [`Error::NotAStore`] — except
    /// an empty directory an administrator prepared for a shared store (setgid and
    /// group-writable), which gets a shared store.
    IfMissing,
    /// If nothing exists at the path, or it is an empty directory. The rule of
    /// [`Store::init`] and [`Store::open_or_init`].
    IfMissingOrEmpty,
    /// Also in an existing non-empty directory that is not a store: its files are left as
    /// they are and the store's files and directories are added beside them (`cas init
    /// --force`).
    Force,
}

/// Where a program that is given no store keeps one: the `cas` command's rule, for every
/// program that wants to share the user's default store (see [`DefaultStore::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefaultStore {
    /// The store's directory.
    pub path: PathBuf,
    /// Where a store may be created there when one is to be created: [`Create::IfMissing`]
    /// for a directory named by `$CAS_STORE` (an existing directory there is more likely a
    /// typo than a wish), [`Create::IfMissingOrEmpty`] for the per-user default.
    pub create: Create,
}

impl DefaultStore {
    /// `$CAS_STORE` if set and not empty, else `$XDG_CACHE_HOME/cas`, else `~/.cache/cas`.
    ///
    /// ```
    /// let d = cas::DefaultStore::locate();
    /// # if std::env::var_os("CAS_STORE").is_none() {
    /// if let Ok(d) = d {
    ///     assert!(d.path.ends_with("cas"));
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if neither `$CAS_STORE`, `$XDG_CACHE_HOME` nor `$HOME` is set.
    pub fn locate() -> Result<DefaultStore> {
        if let Some(s) = std::env::var_os("CAS_STORE").filter(|v| !v.is_empty()) {
            return Ok(DefaultStore {
                path: PathBuf::from(s),
                create: Create::IfMissing,
            });
        }
        Ok(DefaultStore {
            path: Self::per_user()?,
            create: Create::IfMissingOrEmpty,
        })
    }

    /// The per-user default alone, ignoring `$CAS_STORE`: `$XDG_CACHE_HOME/cas`, else
    /// `~/.cache/cas`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if neither `$XDG_CACHE_HOME` nor `$HOME` is set.
    pub fn per_user() -> Result<PathBuf> {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(x).join("cas"));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::InvalidInput {
                what: "store",
                reason: "no store given, and none of CAS_STORE, XDG_CACHE_HOME or HOME is set"
                    .into(),
            })?;
        Ok(PathBuf::from(home).join(".cache").join("cas"))
    }
}

/// Entries an `init` creates at a store's top level before its `FORMAT` (written last).
const LAYOUT_ENTRIES: [&str; 6] = [
    layout::TMP,
    layout::OBJECTS,
    layout::REFS,
    layout::INDEX,
    layout::LOCKS,
    layout::CONFIG,
];

impl Store {
    /// Opens the store at `root`, creating it with `options` where `create` allows.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// use cas::{Create, Options, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("store");
    /// // A read-only tool never creates a store by mistake:
    /// assert!(matches!(
    ///     Store::open_or_create(&path, Options::default(), Create::Never),
    ///     Err(cas::Error::NotAStore { .. })
    /// ));
    /// assert!(!path.exists());
    /// // A writer creates it where nothing was:
    /// let store = Store::open_or_create(&path, Options::default(), Create::IfMissing)?;
    /// // A directory with someone's files in it is only used on purpose:
    /// std::fs::write(dir.path().join("mine.txt"), "x").unwrap();
    /// assert!(Store::open_or_create(dir.path(), Options::default(), Create::IfMissingOrEmpty).is_err());
    /// let forced = Store::open_or_create(dir.path(), Options::default(), Create::Force)?;
    /// assert!(dir.path().join("mine.txt").exists());
    /// # let _ = (store, forced); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotAStore`] if there is no store and `create` does not allow making one here
    /// ([`Create::Never`], or [`Create::IfMissing`] on an existing directory);
    /// [`Error::NotEmpty`] if `root` exists and is not an empty directory (a non-empty
    /// directory, a file) and `create` is [`Create::IfMissingOrEmpty`] (or a file under
    /// [`Create::Force`]); [`Error::UnsupportedFormat`] for a newer store; I/O errors naming
    /// the path. [`Error::Upstream`] ("is not a store", with the upstream's own error as its
    /// source) if `options` names an upstream that cannot be opened as a store and `create`
    /// is not [`Create::Never`]: checked first, even where a store exists already.
    ///
    /// A directory that exists, holds no store yet, and is setgid and group-writable (what an
    /// administrator prepares for a shared store) gets a shared store whatever `options` says;
    /// [`Store::init`] takes `options` exactly.
    #[allow(clippy::needless_pass_by_value)] // builder-style Options read better by value
    pub fn open_or_create(
        root: impl AsRef<Path>,
        options: Options,
        create: Create,
    ) -> Result<Store> {
        open_or_create_inner(root.as_ref(), &options, create, true)
    }
}

/// `open_or_create`; with `infer_shared`, a directory prepared for a shared store gets one
/// (see `Store::init_with`).
pub(crate) fn open_or_create_inner(
    root: &Path,
    options: &Options,
    create: Create,
    infer_shared: bool,
) -> Result<Store> {
    if create != Create::Never {
        if let Some(up) = &options.upstream {
            check_upstream(up)?;
        }
    }
    // A racing creator may turn a missing path into a store (or an empty directory, if it is
    // not one of us) between our looks: a few rounds settle it.
    for _ in 0..4 {
        match Store::open(root) {
            Err(Error::NotAStore { .. }) => {}
            r => return r,
        }
        let not_a_store = || Error::not_a_store(root);
        if create == Create::Never {
            return Err(not_a_store());
        }
        match std::fs::metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(root).is_ok() {
                    // A dangling symlink: not ours to fill in.
                    return Err(Error::not_empty(root));
                }
                if let Some(s) = create_fresh(root, options)? {
                    return Ok(s);
                }
            }
            Err(e) => return Err(Error::io("stat", root, e)),
            Ok(m) if !m.is_dir() => return Err(Error::not_empty(root)),
            Ok(_) => {
                // It may have just become a store (a racing creator renamed it into place
                // after our first look).
                match Store::open(root) {
                    Err(Error::NotAStore { .. }) => {}
                    r => return r,
                }
                let usable = match create {
                    Create::Never => false,
                    // An existing directory is not taken for a store by accident, unless an
                    // administrator visibly prepared it for one (setgid, group-writable).
                    Create::IfMissing => {
                        infer_shared
                            && crate::store::handle::prepared_for_sharing(root)
                            && looks_empty(root)?
                    }
                    Create::IfMissingOrEmpty => looks_empty(root)?,
                    Create::Force => true,
                };
                if usable {
                    return Store::init_with(root, options, infer_shared);
                }
                if create == Create::IfMissing {
                    return Err(not_a_store());
                }
                return Err(Error::not_empty(root));
            }
        }
    }
    Err(Error::io(
        "create store",
        root,
        io::Error::other("the path kept changing under concurrent creators"),
    ))
}

/// An upstream named when creating a store must be a store: a typo would otherwise surface
/// only at the first miss. Checked whether or not the store exists yet (the caller named
/// this upstream on purpose); a store merely opened is never refused for its upstream (an
/// unmounted upstream still leaves the cached objects readable).
fn check_upstream(up: &Path) -> Result<()> {
    match Store::open(up) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Upstream {
            upstream: up.to_owned(),
            what: "is not a store".into(),
            source: Some(Box::new(e)),
        }),
    }
}

/// True for an empty directory, or one holding only what `init` creates before `FORMAT`
/// (another process is creating a store there right now, or one was interrupted).
fn looks_empty(dir: &Path) -> Result<bool> {
    let rd = std::fs::read_dir(dir).map_err(Error::at("list", dir))?;
    for ent in rd {
        let ent = ent.map_err(Error::at("list", dir))?;
        let name = ent.file_name();
        if !LAYOUT_ENTRIES.iter().any(|l| name == *l) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Creates a store where nothing exists: laid out in a hidden sibling directory, renamed into
/// place without replacing. `None` if something appeared at `root` meanwhile (the caller
/// looks again).
fn create_fresh(root: &Path, options: &Options) -> Result<Option<Store>> {
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = root.file_name().ok_or_else(|| Error::InvalidInput {
        what: "store path",
        reason: format!("{} does not end in a directory name", root.display()),
    })?;
    std::fs::create_dir_all(parent).map_err(Error::at("create directory", parent))?;
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{}.cas-init.", name.to_string_lossy()))
        .tempdir_in(parent)
        .map_err(Error::at("create temporary directory in", parent))?;
    let _reg = abandon::register_temp(staged.path());
    if abandon::abandoned() {
        return Err(Error::Interrupted);
    }
    // tempdir makes 0700; a store directory gets the mode mkdir would give it.
    let mode = if options.shared_group {
        0o2775
    } else {
        0o777 & !fs::umask()
    };
    fs::chmod_path(staged.path(), mode).map_err(Error::at("set permissions of", staged.path()))?;
    drop(Store::init_with(staged.path(), options, false)?);
    match fs::rename_dir_noreplace(staged.path(), root) {
        Ok(()) => {
            let _ = staged.keep();
            // The store's name must survive a power loss like its contents.
            fs::fsync_dir_path(parent).map_err(Error::at("fsync directory", parent))?;
            Store::open(root).map(Some)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(None) // dropping `staged` removes it
        }
        Err(e) => Err(Error::io("rename the new store to", root, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = walkdir::WalkDir::new(dir)
            .into_iter()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        v.sort();
        v
    }

    /// What is at a path that holds no store is in the error, so a caller can say what to do.
    #[test]
    fn errors_say_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let found = |p: &Path, c: Create| match Store::open_or_create(p, Options::default(), c) {
            Err(Error::NotAStore { found, .. } | Error::NotEmpty { found, .. }) => found,
            other => panic!("{other:?}"),
        };
        let missing = d.path().join("missing");
        assert_eq!(found(&missing, Create::Never), crate::Found::Nothing);
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(found(&empty, Create::IfMissing), crate::Found::EmptyDir);
        let full = d.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("mine"), "x").unwrap();
        assert_eq!(found(&full, Create::Never), crate::Found::Dir);
        assert_eq!(found(&full, Create::IfMissingOrEmpty), crate::Found::Dir);
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(found(&file, Create::Never), crate::Found::Other);
        assert_eq!(found(&file, Create::Force), crate::Found::Other);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&full, &link).unwrap();
        assert_eq!(found(&link, Create::Never), crate::Found::Other);
    }

    /// An upstream named at creation must be a store; nothing is created otherwise, and a
    /// plain open never looks at it.
    #[test]
    fn an_upstream_given_at_creation_must_be_a_store() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("tier");
        let typo = d.path().join("sahred");
        let o = Options::default().upstream(Some(typo.clone()));
        let e = Store::open_or_create(&root, o.clone(), Create::IfMissing).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Upstream, "{e}");
        assert!(e.to_string().contains("sahred"), "{e}");
        assert!(!root.exists());
        assert!(Store::init(&root, o.clone()).is_err());
        // Where it names a store, the store is created.
        Store::init(&typo, Options::default()).unwrap();
        Store::open_or_create(&root, o, Create::IfMissing).unwrap();
    }

    #[test]
    fn never_and_if_missing_leave_foreign_directories_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "x").unwrap();
        let before = tree(d.path());
        for c in [Create::Never, Create::IfMissing, Create::IfMissingOrEmpty] {
            assert!(Store::open_or_create(d.path(), Options::default(), c).is_err());
            assert_eq!(
                tree(d.path()),
                before,
                "{c:?} wrote into a foreign directory"
            );
        }
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = Store::open_or_create(&empty, Options::default(), Create::IfMissing).unwrap_err();
        assert!(matches!(e, Error::NotAStore { .. }), "{e}");
        Store::open_or_create(&empty, Options::default(), Create::IfMissingOrEmpty).unwrap();
        let missing = d.path().join("m").join("n");
        let e = Store::open_or_create(&missing, Options::default(), Create::Never).unwrap_err();
        assert!(matches!(e, Error::NotAStore { .. }), "{e}");
        assert!(!d.path().join("m").exists());
        Store::open_or_create(&missing, Options::default(), Create::IfMissing).unwrap();
        // No staging directory left beside it.
        let left: Vec<_> = std::fs::read_dir(d.path().join("m")).unwrap().collect();
        assert_eq!(left.len(), 1);
        Store::open(&missing).unwrap();
    }

    #[test]
    fn force_adds_a_store_beside_existing_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("keep"), "mine").unwrap();
        let s = Store::open_or_create(d.path(), Options::default(), Create::Force).unwrap();
        assert_eq!(std::fs::read(d.path().join("keep")).unwrap(), b"mine");
        s.put_bytes(b"x").unwrap();
        // A file is never a store.
        let f = d.path().join("keep");
        let e = Store::open_or_create(&f, Options::default(), Create::Force).unwrap_err();
        assert!(matches!(e, Error::NotEmpty { .. }), "{e}");
    }
}

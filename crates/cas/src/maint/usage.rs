//! What a store holds, area by area (`cas stats`): a `du` of the whole store, so that space
//! sent to trash or quarantine, or left by dead writers, is not invisible.

use std::path::PathBuf;

use crate::error::Result;
use crate::fs::Kind;
use crate::maint::doctor::FsInfoReport;
use crate::store::layout;
use crate::Store;

/// One area of a store (a top-level directory, or the store's own files).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Area {
    /// `objects`, `outboards`, `trash`, `quarantine`, `staging` (tmp/), `refs`, `reflogs`, `entries`
    /// (index/), `locks`, or `store files` (FORMAT, config, anything else at the top).
    pub name: &'static str,
    /// Regular files in it.
    pub files: u64,
    /// Their bytes (apparent size).
    pub bytes: u64,
}

/// A `du` of a store (see [`Store::usage`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Usage {
    /// The store's root.
    pub store: PathBuf,
    /// Area by area, in a fixed order.
    pub areas: Vec<Area>,
    /// All regular files.
    pub files: u64,
    /// All their bytes.
    pub bytes: u64,
    /// Bytes of `objects`, `trash` and `quarantine`: the store's size as gc reports it
    /// ([`GcReport::bytes_after`](crate::GcReport::bytes_after)) and as a size budget limits
    /// it. The other areas (names, logs, locks, staging) are small or transient.
    pub counted_bytes: u64,
    /// The standing size budget gc evicts to, if any.
    pub max_size: Option<u64>,
    /// The filesystem, its capabilities and the durability barrier in use.
    pub fs: FsInfoReport,
    /// Directories that could not be listed (with why): the figures leave them out.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Usage {
    /// The area named `name`, if the store has it.
    pub fn area(&self, name: &str) -> Option<&Area> {
        self.areas.iter().find(|a| a.name == name)
    }

    /// The number of objects (the files of the `objects` area).
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// store.put_bytes(b"hello")?;
    /// let u = store.usage()?;
    /// assert_eq!((u.objects(), u.object_bytes()), (1, 5));
    /// # Ok(()) }
    /// ```
    pub fn objects(&self) -> u64 {
        self.area("objects").map_or(0, |a| a.files)
    }

    /// The bytes of all objects (the `objects` area).
    pub fn object_bytes(&self) -> u64 {
        self.area("objects").map_or(0, |a| a.bytes)
    }
}

const AREAS: [(&str, &str); 9] = [
    (layout::OBJECTS, "objects"),
    (layout::OUTBOARDS, "outboards"),
    (layout::TRASH, "trash"),
    (layout::QUARANTINE, "quarantine"),
    (layout::TMP, "staging"),
    (layout::REFS, "refs"),
    (layout::LOGS, "reflogs"),
    (layout::INDEX, "entries"),
    (layout::LOCKS, "locks"),
];

/// The areas gc counts as the store's size and a budget limits.
const COUNTED: [&str; 3] = ["objects", "trash", "quarantine"];

impl Store {
    /// Counts every regular file in the store by area, without following anything.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// store.put_bytes(b"12345")?;
    /// let u = store.usage()?;
    /// assert_eq!(u.area("objects").map(|a| (a.files, a.bytes)), Some((1, 5)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// I/O errors listing the store's root.
    pub fn usage(&self) -> Result<Usage> {
        let root = &self.inner.root_dir;
        let mut u = Usage {
            store: self.inner.root.clone(),
            areas: Vec::new(),
            files: 0,
            bytes: 0,
            counted_bytes: 0,
            max_size: self.inner.options.max_size,
            fs: FsInfoReport::of(self),
            unreadable: Vec::new(),
        };
        for (dir, name) in AREAS {
            // Streamed: one directory listing in memory at a time, one `fstatat` per file
            // relative to its directory's descriptor.
            let du = root.du(&self.path(dir));
            let a = Area {
                name,
                files: du.files,
                bytes: du.bytes,
            };
            u.unreadable
                .extend(du.errors.into_iter().map(|(p, e)| (p, e.to_string())));
            u.areas.push(a);
        }
        let mut top = Area {
            name: "store files",
            files: 0,
            bytes: 0,
        };
        let listed = root
            .read_dir(&self.inner.root)
            .map_err(crate::Error::at("list", &self.inner.root))?;
        for (n, kind) in listed {
            if kind == Kind::File {
                if let Ok(m) = root.lstat(&self.inner.root.join(n)) {
                    top.files += 1;
                    top.bytes += m.len;
                }
            }
        }
        u.areas.push(top);
        u.files = u.areas.iter().map(|a| a.files).sum();
        u.bytes = u.areas.iter().map(|a| a.bytes).sum();
        u.counted_bytes = u
            .areas
            .iter()
            .filter(|a| COUNTED.contains(&a.name))
            .map(|a| a.bytes)
            .sum();
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Options, Store};

    /// Usage used to collect every path, sort them and `lstat` each by full path; the
    /// streamed walk (one `fstatat` per file relative to its directory) counts the same:
    /// regular files at any depth, never a symlink or a directory.
    #[test]
    fn streamed_usage_counts_regular_files_at_any_depth() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), Options::default()).unwrap();
        let mut bytes = 0;
        for i in 0..300u32 {
            let b = i.to_string().repeat(3);
            bytes += b.len() as u64;
            store.put_bytes(b.as_bytes()).unwrap();
        }
        let deep = d.path().join("trash/run/ab/cd");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("x"), b"12345").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", deep.join("link")).unwrap();
        let u = store.usage().unwrap();
        let s = store.stats().unwrap();
        assert_eq!(
            u.area("objects").map(|a| (a.files, a.bytes)),
            Some((300, bytes))
        );
        assert_eq!((s.objects, s.bytes), (300, bytes));
        assert_eq!(u.area("trash").map(|a| (a.files, a.bytes)), Some((1, 5)));
        assert_eq!(u.counted_bytes, bytes + 5);
        assert!(u.unreadable.is_empty(), "{:?}", u.unreadable);
    }

    #[test]
    fn prefixes_resolve_uniquely_or_say_why_not() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::init(d.path(), Options::default()).unwrap();
        // Two names sharing their first 10 digits (contents do not matter to resolution).
        let dir = d.path().join("objects/ab");
        for tail in ["cdef01234", "cdef01235"] {
            let name = format!("{tail}{}", "0".repeat(62 - tail.len()));
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let e = store.resolve_prefix("abcdef0123").unwrap_err();
        assert!(e.to_string().contains("ambiguous"), "{e}");
        assert!(e.to_string().contains("2 objects"), "{e}");
        // Both named, without a "…" that promises more (issue 23).
        assert!(e.to_string().contains(" and "), "{e}");
        assert!(!e.to_string().contains('…'), "{e}");
        let one = store.resolve_prefix("abcdef01234").unwrap();
        assert!(one.to_string().starts_with("abcdef01234"));
        assert!(
            store.resolve_prefix("abcdef0").is_err(),
            "7 digits is too short"
        );
        assert!(store.resolve_prefix("ABCDEF01").is_err(), "uppercase");
        assert!(store
            .resolve_prefix("ffffffff")
            .unwrap_err()
            .to_string()
            .contains("no object"));
    }
}

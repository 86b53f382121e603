//! Verification: rehash every object (in parallel), quarantine mismatches, find dangling
//! pointers and dead writers' leftovers.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::copy::hash_file;
use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::progress::{Progress, ProgressFn};
use crate::Store;

/// An object whose bytes do not match its name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CorruptObject {
    /// The object's name.
    pub hash: Hash,
    /// What its bytes hash to (`None` if they could not be read).
    pub actual: Option<Hash>,
    /// Where it was moved (`None` if it could not be moved, or the check failed to read).
    pub quarantined: Option<PathBuf>,
    /// What went wrong, in words.
    pub reason: String,
}

/// Something that points to an object that is not in the store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Dangling {
    /// What points ("ref \"main\"", "cache entry \"k\"", "tree `<hash>`").
    pub from: String,
    /// The missing object.
    pub hash: Hash,
}

/// A file in the store that is not what it should be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Objects checked.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects that failed verification (now in `quarantine/`).
    pub corrupt: Vec<CorruptObject>,
    /// Refs, cache entries and trees pointing to missing objects.
    pub dangling: Vec<Dangling>,
    /// Unreadable refs or cache entries.
    pub bad_files: Vec<Problem>,
    /// Staging files left by dead or stale writers (gc removes them).
    pub stale_staging: Vec<Problem>,
    /// Reachable objects found in trash and moved back to `objects/`, by hash.
    pub restored: Vec<Hash>,
    /// Outboards checked against their object's name (docs/format.md, "Outboards").
    pub outboards: u64,
    /// Outboards removed: wrong, or their object gone. Not a problem of the store (they are
    /// derived data, rebuilt on the next range read), so [`VerifyReport::is_clean`] ignores it.
    pub outboards_removed: u64,
}

impl VerifyReport {
    /// True when nothing was found wrong.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.dangling.is_empty()
            && self.bad_files.is_empty()
            && self.stale_staging.is_empty()
    }
}

impl Store {
    /// Verifies the whole store: rehashes every object on all cores (moving mismatches to
    /// `quarantine/`), checks that every ref, cache entry and tree points to objects that
    /// exist, and lists staging files of dead writers.
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// store.put_bytes(b"x")?;
    /// let report = store.verify(&cas::no_progress)?;
    /// assert!(report.is_clean() && report.objects == 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Interrupted`] if `progress` asked to stop; I/O errors listing the store.
    pub fn verify(&self, progress: ProgressFn<'_>) -> Result<VerifyReport> {
        self.maintainer().verify(self, progress)
    }

    /// [`Store::verify`] of a standalone store (the maintainer chosen at open says which).
    pub(crate) fn verify_standalone(&self, progress: ProgressFn<'_>) -> Result<VerifyReport> {
        // Streamed fan-out directory by fan-out directory: memory is bounded by the largest
        // one, and each object costs one `openat` relative to its directory's descriptor.
        // The progress bar's total comes from a first pass that only lists the directories.
        let total: u64 = self
            .fanout_dirs()
            .filter_map(Result::ok)
            .map(|(_, hashes)| hashes.len() as u64)
            .sum();
        let mut bad_files = Vec::new();
        let done = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let corrupt = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        for dir in self.fanout_dirs() {
            let (fd, hashes) = match dir {
                Ok(d) => d,
                Err(e) => {
                    bad_files.push(Problem {
                        path: e
                            .path()
                            .map_or_else(|| self.path(crate::store::layout::OBJECTS), Into::into),
                        reason: crate::maint::mark::error_reason(&e),
                    });
                    continue;
                }
            };
            let next = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..threads.min(hashes.len()) {
                    s.spawn(|| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= hashes.len() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let h = hashes[i];
                        if let Some(c) = self.check_object(fd.as_fd(), &h, &bytes) {
                            corrupt
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(c);
                        }
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if (d.is_multiple_of(256) || d == total)
                            && !progress(Progress {
                                phase: "verify",
                                done: d,
                                total: Some(total.max(d)),
                            })
                        {
                            stop.store(true, Ordering::Relaxed);
                        }
                    });
                }
            });
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
        }
        let mut report = VerifyReport {
            objects: done.load(Ordering::Relaxed),
            bytes: bytes.load(Ordering::Relaxed),
            corrupt: corrupt
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            bad_files,
            ..VerifyReport::default()
        };
        report.corrupt.sort_by_key(|c| c.hash);

        // Reachable objects sitting in trash (a gc was killed mid-run) go back, each named in
        // the report: the mark itself only looks (it reads trash in place).
        let m = self.mark();
        report.restored = self.restore_reachable_trash(&m.reach.reachable)?;
        report.dangling = m
            .reach
            .missing
            .into_iter()
            .filter(|x| !self.contains(&x.hash))
            .map(|x| Dangling {
                from: x.from.to_string(),
                hash: x.hash,
            })
            .collect();
        report.bad_files.extend(m.reach.damaged);
        let (stale, problems) = self.stale_staging();
        report.bad_files.extend(problems);
        report.stale_staging = stale
            .into_iter()
            .map(|s| Problem {
                path: s.path,
                reason: s.reason.to_owned(),
            })
            .collect();
        // Derived data: an `outboards/` that cannot be listed (a symlink planted there) is a
        // damaged item of the report, not a failure of the verify.
        match self.verify_outboards() {
            Ok(counts) => (report.outboards, report.outboards_removed) = counts,
            Err(e) => report.bad_files.push(Problem {
                path: e
                    .path()
                    .map_or_else(|| self.path(crate::store::layout::OUTBOARDS), Into::into),
                reason: crate::maint::mark::error_reason(&e),
            }),
        }
        Ok(report)
    }

    /// Moves every object in trash that is in `reachable` back to `objects/`; returns their
    /// hashes.
    pub(crate) fn restore_reachable_trash(
        &self,
        reachable: &crate::maint::hashes::Layers,
    ) -> Result<Vec<Hash>> {
        let mut restored = Vec::new();
        for run in self.trash_runs()? {
            let Ok(ents) = self.inner.root_dir.read_dir(&run.path) else {
                continue;
            };
            for (name, _) in ents {
                if let Some(h) = name.to_str().and_then(|n| Hash::parse(n).ok()) {
                    if reachable.contains(&h)
                        && self.inner.root_dir.lstat(&self.object_path(&h)).is_err()
                        && self.restore_from_trash(&h)?.is_some()
                    {
                        restored.push(h);
                    }
                }
            }
        }
        restored.sort();
        restored.dedup();
        Ok(restored)
    }

    /// Rehashes one object; `Some` if it is corrupt or unreadable. Anything at an object name
    /// that is not a regular file (a symlink, FIFO, socket, device or directory) is never
    /// followed or read: it is moved to `quarantine/` (a rename moves the name itself) and
    /// reported.
    fn check_object(
        &self,
        dir: BorrowedFd<'_>,
        h: &Hash,
        bytes: &AtomicU64,
    ) -> Option<CorruptObject> {
        let path = self.object_path(h);
        let name = crate::write::stage::fanout_name(h);
        let f = match fs::open_read_at(dir, name.as_ref()) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => return None, // removed meanwhile (gc)
            Err(e) if fs::is_hostile(&e) => {
                let what = match fs::lstat_at(dir, name.as_ref()) {
                    Ok(m) => format!("is {}, not a regular file", m.kind.describe()),
                    Err(_) => e.to_string(),
                };
                let q = self.quarantine(h, &path).ok();
                return Some(CorruptObject {
                    hash: *h,
                    actual: None,
                    quarantined: q,
                    reason: what,
                });
            }
            Err(e) => {
                return Some(CorruptObject {
                    hash: *h,
                    actual: None,
                    quarantined: None,
                    reason: format!("cannot open {}: {e}", path.display()),
                })
            }
        };
        let may_map = match f.metadata() {
            Ok(m) => {
                bytes.fetch_add(m.len(), Ordering::Relaxed);
                self.may_map(&m)
            }
            Err(_) => false,
        };
        match hash_file(&f, may_map) {
            Ok(actual) if actual == *h => None,
            Ok(actual) => {
                let q = self.quarantine(h, &path).ok();
                Some(CorruptObject {
                    hash: *h,
                    actual: Some(actual),
                    reason: format!("bytes hash to {actual}"),
                    quarantined: q,
                })
            }
            Err(e) => Some(CorruptObject {
                hash: *h,
                actual: None,
                quarantined: None,
                reason: format!("cannot read {}: {e}", path.display()),
            }),
        }
    }
}

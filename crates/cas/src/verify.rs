//! Verification: rehash every object (in parallel), quarantine mismatches, find dangling
//! pointers and dead writers' leftovers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::progress::{Progress, ProgressFn};
use crate::read::hash_file;
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
    /// Reachable objects found in trash and moved back.
    pub restored: u64,
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
        if self.upstream().is_some() {
            return self.without_upstream().verify(progress); // the local tier only
        }
        let hashes: Vec<Hash> = self.iter().collect::<Result<_>>()?;
        let total = hashes.len() as u64;
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let corrupt = Mutex::new(Vec::new());
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let may_map = !self.inner.caps.network;
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= hashes.len() || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let h = hashes[i];
                    if let Some(c) = self.check_object(&h, may_map, &bytes) {
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
                            total: Some(total),
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
        let mut report = VerifyReport {
            objects: done.load(Ordering::Relaxed),
            bytes: bytes.load(Ordering::Relaxed),
            corrupt: corrupt
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            ..VerifyReport::default()
        };
        report.corrupt.sort_by_key(|c| c.hash);

        // Reachable objects sitting in trash (a gc was killed mid-run) go back.
        let m = self.mark()?;
        for run in self.trash_runs()? {
            for ent in std::fs::read_dir(&run.path).into_iter().flatten().flatten() {
                if let Some(h) = ent.file_name().to_str().and_then(|n| Hash::parse(n).ok()) {
                    if m.reachable.contains(&h) && self.restore_from_trash(&h)?.is_some() {
                        report.restored += 1;
                    }
                }
            }
        }
        report.dangling = m
            .missing
            .into_iter()
            .filter(|(_, h)| !self.contains(h))
            .map(|(from, hash)| Dangling { from, hash })
            .collect();
        report.bad_files = m
            .bad
            .into_iter()
            .map(|(path, reason)| Problem { path, reason })
            .collect();
        report.stale_staging = self
            .stale_staging()?
            .into_iter()
            .map(|(path, why)| Problem {
                path,
                reason: why.to_owned(),
            })
            .collect();
        Ok(report)
    }

    /// Rehashes one object; `Some` if it is corrupt or unreadable.
    fn check_object(&self, h: &Hash, may_map: bool, bytes: &AtomicU64) -> Option<CorruptObject> {
        let path = self.object_path(h);
        let f = match fs::open_read(&path) {
            Ok(f) => f,
            Err(e) if fs::is_not_found(&e) => return None, // removed meanwhile (gc)
            Err(e) => {
                return Some(CorruptObject {
                    hash: *h,
                    actual: None,
                    quarantined: None,
                    reason: format!("cannot open {}: {e}", path.display()),
                })
            }
        };
        if let Ok(m) = f.metadata() {
            bytes.fetch_add(m.len(), Ordering::Relaxed);
        }
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

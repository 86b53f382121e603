//! Garbage collection and size-budget eviction (docs/format.md "GC").
//!
//! Roots are refs, cache entries, and the pins in ref/entry lock files (values being written);
//! everything reachable from a root through tree objects is kept. One gc at a time
//! (`locks/gc.lock`, a lease refreshed as it goes). An unreachable object older than the grace
//! period is moved to `trash/<run>/`; a later gc deletes trash older than the grace period after
//! checking reachability again; with a zero grace period that deletion happens in the same
//! run, after the rescue mark, so `gc --grace 0s` frees the space at once. After condemning,
//! gc marks a second time and moves back anything that became reachable meanwhile, so a
//! pointer made visible during the run never dangles.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::maint::hashes::Hashes;
use crate::maint::mark::Mark;
use crate::maint::verify::Problem;
use crate::names::lock::Wait;
use crate::progress::{Progress, ProgressFn};
use crate::store::layout;
use crate::Store;

/// Options of a gc run.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcOptions {
    /// Unreachable objects younger than this are kept; trash younger than this is not deleted.
    /// Zero condemns every unreachable object and deletes it in the same run.
    pub grace: Duration,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Size budget in bytes for this run (overrides the store's standing budget).
    pub max_size: Option<u64>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_hours(1),
            dry_run: false,
            max_size: None,
        }
    }
}

impl GcOptions {
    /// Sets the grace period (builder style).
    #[must_use]
    pub fn grace(mut self, g: Duration) -> Self {
        self.grace = g;
        self
    }
    /// Sets dry-run mode (builder style).
    #[must_use]
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }
    /// Sets the size budget (builder style).
    #[must_use]
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.max_size = bytes;
        self
    }
}

/// What a gc run did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// True if nothing was changed.
    pub dry_run: bool,
    /// Refs, cache entries and pins found.
    pub roots: u64,
    /// Objects reachable from them.
    pub reachable: u64,
    /// Objects scanned under `objects/`, and their bytes.
    pub objects: u64,
    /// Bytes of the objects scanned.
    pub bytes: u64,
    /// Unreachable objects kept because they are younger than the grace period.
    pub kept_young: u64,
    /// Objects moved to trash by this run, and their bytes.
    pub trashed: u64,
    /// Bytes moved to trash.
    pub trashed_bytes: u64,
    /// Objects deleted (trash of earlier runs, and evicted objects), and their bytes.
    pub deleted: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Objects moved back from trash because they were reachable.
    pub restored: u64,
    /// Cache entries removed to meet the size budget.
    pub evicted_entries: u64,
    /// Objects removed to meet the size budget, and their bytes.
    pub evicted_objects: u64,
    /// Bytes evicted.
    pub evicted_bytes: u64,
    /// Staging files of dead or stale writers removed.
    pub staging_removed: u64,
    /// Outboards removed because their object is gone (docs/format.md, "Outboards").
    pub outboards_removed: u64,
    /// Bytes under `objects/`, `trash/` and `quarantine/` after the run, as counted by its
    /// own scan (objects that concurrent writers added meanwhile are not included): the
    /// same areas as [`Usage::counted_bytes`](crate::Usage::counted_bytes), and what a size
    /// budget limits.
    pub bytes_after: u64,
    /// Quarantined files older than the grace period deleted by this run, and their bytes.
    pub quarantine_purged: u64,
    /// Bytes of quarantined files deleted.
    pub quarantine_purged_bytes: u64,
    /// Files left in `quarantine/` (younger than the grace period), and their bytes.
    pub quarantine_files: u64,
    /// Bytes left in `quarantine/`.
    pub quarantine_bytes: u64,
    /// Set when a size budget applied and the store is still over it after the run: what
    /// holds the bytes gc may not remove.
    pub budget_unmet: Option<BudgetUnmet>,
    /// Hashes condemned by this run (moved to trash, or would be in a dry run).
    pub condemned: Vec<Hash>,
    /// Damaged items found (refs, entries, locks, objects, staging files that are not what
    /// they should be), each by path; gc went on past them.
    pub problems: Vec<Problem>,
    /// Why nothing was deleted or condemned, if the mark could not prove what is unreachable
    /// (an unreadable root, an undecodable tree): then only reachable objects are restored
    /// from trash and dead writers' staging files removed.
    pub sweep_skipped: Option<String>,
}

/// A size budget gc could not meet, and what holds the bytes (see [`GcReport::budget_unmet`]).
/// The `held_*` fields add up to `bytes_after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BudgetUnmet {
    /// The budget, in bytes.
    pub budget: u64,
    /// Bytes in the store after the run ([`GcReport::bytes_after`]).
    pub bytes_after: u64,
    /// Bytes of objects that refs reach: never evicted (remove or move the refs).
    pub held_by_refs: u64,
    /// Bytes of objects that only updates in progress (pins in ref or entry locks) reach.
    pub held_by_pins: u64,
    /// Everything else kept: objects, cache entries' objects and trash used or created within
    /// the grace period (or entries being updated while gc ran); `--grace 0s` evicts them.
    pub held_young: u64,
    /// Bytes of quarantined files younger than the grace period (kept for inspection).
    pub held_quarantine: u64,
}

impl GcReport {
    /// True if gc found nothing damaged and could sweep.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.sweep_skipped.is_none()
    }
}

/// What the sweep found.
struct Sweep {
    /// Bytes of the objects seen that refs reach, and that only pins reach.
    held_by_refs: u64,
    held_by_pins: u64,
    /// Objects reachable from young unreachable objects: as protected as those.
    young: Hashes,
    /// `progress` asked to stop.
    interrupted: bool,
}

/// An object in a trash run (its path is the run's directory joined with its hash).
#[derive(Debug, Clone)]
struct Trashed {
    hash: Hash,
    len: u64,
    mtime: SystemTime,
}

/// A staging file gc may remove, and why.
#[derive(Debug, Clone)]
pub(crate) struct StaleStaging {
    pub(crate) path: PathBuf,
    pub(crate) reason: &'static str,
}

impl Store {
    /// Collects garbage: see the module docs and docs/format.md "GC".
    ///
    /// ```
    /// # fn main() -> cas::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = cas::Store::init(dir.path(), cas::Options::default())?;
    /// let keep = store.put_bytes(b"keep")?;
    /// let drop = store.put_bytes(b"drop")?;
    /// store.set_ref("keep", keep, cas::Expect::Any)?;
    /// let opts = cas::GcOptions::default().grace(std::time::Duration::ZERO);
    /// store.gc(&opts, &cas::no_progress)?; // condemns `drop` to trash
    /// store.gc(&opts, &cas::no_progress)?; // deletes it
    /// assert!(store.contains(&keep) && !store.contains(&drop));
    /// # Ok(()) }
    /// ```
    ///
    /// Damaged items do not stop gc: they are listed in [`GcReport::problems`]. If one of
    /// them could hide reachable objects (a ref or cache entry that cannot be parsed, a tree
    /// that cannot be decoded), nothing is condemned or deleted and
    /// [`GcReport::sweep_skipped`] says why.
    ///
    /// # Errors
    /// [`Error::Locked`] if another gc is running; [`Error::Interrupted`] if `progress` asked
    /// to stop (the store is left consistent); I/O errors naming the path.
    pub fn gc(&self, opts: &GcOptions, progress: ProgressFn<'_>) -> Result<GcReport> {
        self.maintainer().gc(self, opts, progress)
    }

    /// [`Store::gc`] of a standalone store (the maintainer chosen at open says which).
    pub(crate) fn gc_standalone(
        &self,
        opts: &GcOptions,
        progress: ProgressFn<'_>,
    ) -> Result<GcReport> {
        let lock_path = layout::gc_lock_path(&self.inner.root);
        let lock = self.acquire_gc_lock(&lock_path)?;
        let mut beat = Heartbeat::new(self.inner.options.lock_timeout);
        let start = SystemTime::now();
        let cutoff = start
            .checked_sub(opts.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let dry = opts.dry_run;
        let mut r = GcReport {
            dry_run: dry,
            ..GcReport::default()
        };
        let m1 = self.mark();
        r.roots = m1.roots;
        r.reachable = m1.reach.reachable.len() as u64;
        r.problems.extend(m1.reach.damaged.iter().cloned());
        if !m1.reach.unsafe_to_sweep.is_empty() {
            r.sweep_skipped = Some(format!(
                "cannot tell what is unreachable: {}",
                m1.reach.unsafe_to_sweep.join("; ")
            ));
        }
        let sweep = r.sweep_skipped.is_none();
        if !progress(Progress {
            phase: "mark",
            done: m1.roots,
            total: Some(m1.roots),
        }) {
            return Err(Error::Interrupted);
        }

        self.purge_trash(&m1, cutoff, dry, sweep, &mut r)?;
        // What is left in trash and quarantine; with the sweep's own count of objects/ this
        // is the store's size, without walking objects/ a second time.
        let mut trash_bytes = 0u64;
        for run in self.trash_runs()? {
            trash_bytes += self
                .list_trash_run(&run.path)?
                .iter()
                .map(|t| t.len)
                .sum::<u64>();
        }
        self.purge_quarantine(cutoff, dry, &mut r);

        // Sweep: condemn unreachable objects older than the grace period.
        let run_dir = self.path(layout::TRASH).join(layout::trash_run_name(
            start,
            &self.inner.host,
            self.inner.pid,
            false,
        ));
        let Sweep {
            held_by_refs,
            held_by_pins,
            young,
            interrupted,
        } = self.sweep(&m1, cutoff, &run_dir, &lock, &mut beat, progress, &mut r)?;

        // Bytes under objects/ and trash/ as this run counted them: moving to trash frees
        // nothing (the budget covers both), and a dry run has not deleted what it reports.
        let mut total = r.bytes + trash_bytes + r.quarantine_bytes;
        if dry {
            total = total.saturating_sub(r.deleted_bytes);
        }

        // Eviction to the size budget, least recently used first.
        let mut evicted: Vec<(PathBuf, u64)> = Vec::new();
        let budget = opts.max_size.or(self.inner.options.max_size);
        if let (Some(budget), false, true) = (budget, interrupted, sweep) {
            evicted = self.evict(&m1, &young, cutoff, budget, total, dry, &mut r)?;
        }

        let deleted_before_rescue = r.deleted_bytes;
        // The rescue mark replaces M1: never two marks in memory at once.
        drop(m1);
        if !dry {
            let m2 = self.rescue(evicted, &mut r)?;
            if opts.grace.is_zero() && !interrupted && sweep {
                // No grace: what this run condemned is already "trash older than the grace
                // period", so delete it now, exactly as the next run would (after the rescue
                // mark, so nothing that became reachable meanwhile goes).
                self.purge_trash(&m2, SystemTime::now(), false, sweep, &mut r)?;
            }
            let _ = self.inner.root_dir.rmdir(&run_dir);
        } else if opts.grace.is_zero() {
            // A dry run reports what a real one would free.
            r.deleted += r.trashed;
            r.deleted_bytes += r.trashed_bytes;
        }

        let (stale, staging_problems) = self.stale_staging();
        r.problems.extend(staging_problems);
        for s in stale {
            if dry || self.inner.root_dir.unlink(&s.path).is_ok() {
                r.staging_removed += 1;
            }
        }
        self.clean_broken_locks(dry);
        if !dry {
            // Derived data: a failure to list or remove costs only disk space.
            r.outboards_removed = self.sweep_outboards().unwrap_or(0);
        }
        // Empty fan-out directories stay: `init` makes all 256 and a publish never has to
        // create one (whose own name would need another fsync to survive a power loss).
        r.bytes_after = if dry && opts.grace.is_zero() {
            total.saturating_sub(r.evicted_bytes + r.trashed_bytes)
        } else if dry {
            total.saturating_sub(r.evicted_bytes)
        } else {
            total.saturating_sub(r.deleted_bytes - deleted_before_rescue)
        };
        if let Some(budget) = budget.filter(|b| r.bytes_after > *b) {
            r.budget_unmet = Some(budget_unmet(held_by_refs, held_by_pins, budget, &r));
        }
        lock.release();
        if interrupted {
            return Err(Error::Interrupted);
        }
        Ok(r)
    }

    /// Sweep: scans `objects/`, then condemns each object that is unreachable, older than
    /// the grace period, and not reachable from an object younger than it (a tree just put
    /// names children that may be old: they are as protected as the tree). Unless the mark
    /// could not prove what is unreachable. Returns the bytes refs and pins hold, the set
    /// protected by young objects, and whether `progress` asked to stop.
    ///
    /// The scan streams fan-out by fan-out (one `fstatat` per object relative to its
    /// directory); it remembers only the hashes of unreachable objects — the old ones, to
    /// condemn (in hash order, as listed), and the young ones, whose closure protects old
    /// ones: 32 bytes each, nothing per reachable object.
    #[allow(clippy::too_many_arguments)]
    fn sweep(
        &self,
        m1: &Mark,
        cutoff: SystemTime,
        run_dir: &Path,
        lock: &crate::names::lock::Lock,
        beat: &mut Heartbeat,
        progress: ProgressFn<'_>,
        r: &mut GcReport,
    ) -> Result<Sweep> {
        let sweep = r.sweep_skipped.is_none();
        let dry = r.dry_run;
        let mut interrupted = false;
        let reachable = &m1.reach.reachable;
        let (mut held_by_refs, mut held_by_pins) = (0u64, 0u64);
        let mut old: Vec<(Hash, u64)> = Vec::new();
        let mut young_roots: Vec<Hash> = Vec::new();
        for (i, m) in self.iter_ordered_meta().enumerate() {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    r.problems.push(problem_of(&e, self.path(layout::OBJECTS)));
                    continue;
                }
            };
            r.objects += 1;
            r.bytes += m.len;
            if m1.pinned_only(&m.hash) {
                held_by_pins += m.len;
            } else if m1.pinned_by_refs(&m.hash) {
                held_by_refs += m.len;
            } else if reachable.contains(&m.hash) {
                // Reached from a cache entry: kept, nothing to remember.
            } else if m.mtime > cutoff {
                young_roots.push(m.hash);
            } else {
                old.push((m.hash, m.len));
            }
            if i % 1024 == 1023 {
                beat.beat(lock)?;
                if !progress(Progress {
                    phase: "sweep",
                    done: i as u64 + 1,
                    total: None,
                }) {
                    interrupted = true;
                    break;
                }
            }
        }
        let young = if old.is_empty() {
            Hashes::new() // nothing old to protect: no tree needs reading
        } else {
            self.closure_of(&young_roots, &|h| reachable.contains(h))
        };
        if interrupted || !sweep {
            return Ok(Sweep {
                held_by_refs,
                held_by_pins,
                young,
                interrupted,
            });
        }
        r.kept_young += young_roots.len() as u64;
        drop(young_roots);
        for (hash, len) in old {
            if young.contains(&hash) {
                r.kept_young += 1;
            } else if dry {
                r.condemned.push(hash);
                r.trashed += 1;
                r.trashed_bytes += len;
            } else {
                // Anything at an unreachable object name goes: a rename moves the name
                // (a symlink, a FIFO, a directory) and never follows it.
                let p = self.object_path(&hash);
                if !self.move_to_trash(&p, run_dir, &hash)? {
                    continue; // removed meanwhile
                }
                if self.refreshed_in_trash(run_dir, &hash, cutoff) {
                    // A put refreshed it between our stat and the rename: it is young.
                    r.kept_young += 1;
                    continue;
                }
                r.condemned.push(hash);
                r.trashed += 1;
                r.trashed_bytes += len;
            }
        }
        Ok(Sweep {
            held_by_refs,
            held_by_pins,
            young,
            interrupted,
        })
    }

    /// After moving an object to trash: true if its mtime (which a rename keeps) shows a put
    /// refreshed it after the sweep's stat. It is then moved back.
    fn refreshed_in_trash(&self, run_dir: &Path, h: &Hash, cutoff: SystemTime) -> bool {
        let p = run_dir.join(h.to_string());
        match self.inner.root_dir.lstat(&p) {
            Ok(md) if md.mtime > cutoff => {
                // Best effort: a failure leaves it in trash, where reads and name updates
                // find it and the rescue mark runs before anything is deleted.
                let _ = self.restore_from_trash(h);
                true
            }
            _ => false,
        }
    }

    /// Trash of earlier runs, condemned longer ago than the grace period: delete what is still
    /// unreachable (only if `sweep`: the mark proved it), restore the rest.
    fn purge_trash(
        &self,
        m1: &Mark,
        cutoff: SystemTime,
        dry: bool,
        sweep: bool,
        r: &mut GcReport,
    ) -> Result<()> {
        for run in self.trash_runs()? {
            if run.created > cutoff {
                continue;
            }
            for t in self.list_trash_run(&run.path)? {
                if m1.reach.reachable.contains(&t.hash) {
                    if !dry && self.restore_from_trash(&t.hash)?.is_some() {
                        r.restored += 1;
                    }
                } else if sweep {
                    r.deleted += 1;
                    r.deleted_bytes += t.len;
                    if !dry {
                        self.delete(&run.path.join(t.hash.to_string()), r);
                    }
                }
            }
            if !dry {
                let _ = self.inner.root_dir.rmdir(&run.path);
            }
        }
        Ok(())
    }

    /// Deletes quarantined files quarantined longer ago than the grace period (they are kept
    /// that long for inspection) and counts what stays in [`GcReport::quarantine_files`] and
    /// `quarantine_bytes`. Names cas did not make, and directories, are left alone (and
    /// counted if they are files: they take space all the same).
    pub(crate) fn purge_quarantine(&self, cutoff: SystemTime, dry: bool, r: &mut GcReport) {
        let root = &self.inner.root_dir;
        let dir = self.path(layout::QUARANTINE);
        let ents = match root.read_dir(&dir) {
            Ok(v) => v,
            Err(e) if fs::is_not_found(&e) => return,
            Err(e) => {
                r.problems.push(Problem {
                    path: dir,
                    reason: format!("cannot list the quarantine: {e}"),
                });
                return;
            }
        };
        let cutoff_secs = cutoff
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (name, kind) in ents {
            if kind == fs::Kind::Dir {
                continue; // never recursed into; `stats` counts what is inside
            }
            let path = dir.join(&name);
            let len = root.lstat(&path).map_or(0, |m| m.len);
            let when = name.to_str().and_then(layout::parse_quarantine_name);
            // Whole seconds: a zero grace period purges this second's quarantine too.
            if when.is_some_and(|t| t <= cutoff_secs) {
                if !dry {
                    match root.unlink(&path) {
                        Ok(()) => {}
                        Err(e) if fs::is_not_found(&e) => continue,
                        Err(e) => {
                            r.problems.push(Problem {
                                path,
                                reason: format!("cannot delete: {e}"),
                            });
                            r.quarantine_files += 1;
                            r.quarantine_bytes += len;
                            continue;
                        }
                    }
                }
                r.quarantine_purged += 1;
                r.quarantine_purged_bytes += len;
            } else if kind == fs::Kind::File {
                r.quarantine_files += 1;
                r.quarantine_bytes += len;
            }
        }
    }

    /// Deletes a name in trash; a directory planted there is reported, never recursed into.
    fn delete(&self, p: &Path, r: &mut GcReport) {
        match self.inner.root_dir.unlink(p) {
            Ok(()) => {}
            Err(e) if fs::is_not_found(&e) => {}
            Err(e) => r.problems.push(Problem {
                path: p.to_owned(),
                reason: format!("cannot delete: {e}"),
            }),
        }
    }

    /// Rescue mark: anything in trash that became reachable while we condemned goes back;
    /// then the evicted objects still in trash are deleted.
    fn rescue(&self, evicted: Vec<(PathBuf, u64)>, r: &mut GcReport) -> Result<Mark> {
        let m2 = self.mark();
        for run in self.trash_runs()? {
            for t in self.list_trash_run(&run.path)? {
                if m2.reach.reachable.contains(&t.hash)
                    && self.restore_from_trash(&t.hash)?.is_some()
                {
                    r.restored += 1;
                }
            }
        }
        for (p, len) in evicted {
            match self.inner.root_dir.unlink(&p) {
                Ok(()) => {
                    r.deleted += 1;
                    r.deleted_bytes += len;
                }
                Err(e) if fs::is_not_found(&e) => {}
                Err(e) => return Err(Error::io("delete", &p, e)),
            }
        }
        Ok(m2)
    }

    /// Chooses and removes cache entries and condemned objects, least recently used first,
    /// until the store (`total` bytes now) is under `budget`. Never evicted: an entry used
    /// within the grace period, an object younger than it, anything reachable from refs, pins,
    /// young objects (`young`) or entries that stay. Returns the trash paths of evicted
    /// objects, to delete after the rescue mark.
    #[allow(clippy::too_many_arguments)]
    fn evict(
        &self,
        m1: &Mark,
        young: &Hashes,
        cutoff: SystemTime,
        budget: u64,
        total: u64,
        dry: bool,
        r: &mut GcReport,
    ) -> Result<Vec<(PathBuf, u64)>> {
        if total <= budget {
            return Ok(Vec::new());
        }
        // Size and last use of an object in `objects/` now (one `fstatat` relative to its
        // fan-out directory): what the sweep condemned is not there, what was put since is
        // younger than the cutoff. Nothing per object is held across the walk.
        let size_of = |h: &Hash| -> Option<(u64, SystemTime)> {
            let dir = self.fanout_dir(h, false).ok()?;
            let name = crate::write::stage::fanout_name(h);
            let m = fs::lstat_at(std::os::fd::AsFd::as_fd(&*dir), name.as_ref()).ok()?;
            Some((m.len, m.mtime))
        };
        // An entry's age: the later of its file's and its object's mtime (reads refresh the
        // object, `get_keyed` the entry).
        let used: Vec<SystemTime> = m1
            .entries
            .iter()
            .map(|e| {
                let obj_t = size_of(&e.hash).map_or(SystemTime::UNIX_EPOCH, |x| x.1);
                e.mtime.max(obj_t)
            })
            .collect();
        // One traversal for all entries, most recently used first: each object belongs to
        // the first (newest) entry that reaches it, so it is released exactly when that
        // entry — the last of its users in LRU order — is evicted. Objects that refs, pins or
        // young objects reach belong to no entry.
        let mut order: Vec<usize> = (0..m1.entries.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(used[i]));
        let mut seen = Hashes::new();
        let skip = |h: &Hash| m1.pinned_by_refs(h) || young.contains(h);
        let mut owned: Vec<Vec<Hash>> = vec![Vec::new(); m1.entries.len()];
        for &i in &order {
            owned[i] = self.reach_new([(m1.entries[i].hash, true)], &skip, &mut seen);
        }
        let mut cands: Vec<(SystemTime, Cand)> = Vec::new();
        for run in self.trash_runs()? {
            for t in self.list_trash_run(&run.path)? {
                let path = run.path.join(t.hash.to_string());
                cands.push((t.mtime, Cand::Trash(path, t.len)));
            }
        }
        for (i, t) in used.iter().enumerate() {
            if *t <= cutoff {
                cands.push((*t, Cand::Entry(i)));
            }
        }
        let plan = plan_eviction(cands, &owned, &size_of, cutoff, budget, total);
        let run_dir = self.path(layout::TRASH).join(layout::trash_run_name(
            SystemTime::now(),
            &self.inner.host,
            self.inner.pid,
            true,
        ));
        let mut out = Vec::new();
        for step in plan {
            match step {
                Evict::Trash(p, len) => {
                    r.evicted_objects += 1;
                    r.evicted_bytes += len;
                    out.push((p, len));
                }
                Evict::Entry(i, objects) => {
                    if !dry && !self.remove_entry_if_unchanged(&m1.entries[i])? {
                        continue; // used or rewritten meanwhile: it stays, with its objects
                    }
                    r.evicted_entries += 1;
                    for (h, len) in objects {
                        r.evicted_objects += 1;
                        r.evicted_bytes += len;
                        if !dry && self.move_to_trash(&self.object_path(&h), &run_dir, &h)? {
                            if self.refreshed_in_trash(&run_dir, &h, cutoff) {
                                r.evicted_objects -= 1;
                                r.evicted_bytes -= len;
                                continue;
                            }
                            out.push((run_dir.join(h.to_string()), len));
                        }
                    }
                }
            }
        }
        if dry {
            out.clear();
        }
        Ok(out)
    }

    /// Removes an evicted cache entry under the entry's lock, only if it still is what the
    /// mark saw (same object, same mtime): an entry set or read meanwhile stays. A busy lock
    /// means someone is updating it: it stays too.
    fn remove_entry_if_unchanged(&self, e: &crate::maint::mark::EntryRoot) -> Result<bool> {
        let lock_path = layout::entry_paths(&self.inner.root, &Hash::of(&e.key)).1;
        let lock = match self.acquire_lock(&lock_path, None, Wait::For(Duration::ZERO)) {
            Ok(l) => l,
            Err(err) if err.kind() == crate::ErrorKind::Locked => return Ok(false),
            Err(err) => return Err(err),
        };
        let same = match self.read_entry_file(&e.path) {
            Ok(Some((now, f))) => {
                let mtime = f
                    .metadata()
                    .and_then(|md| md.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                now.key == e.key && now.hash == e.hash && mtime == e.mtime
            }
            Ok(None) | Err(_) => false,
        };
        if same {
            lock.verify()?;
            match self.inner.root_dir.unlink(&e.path) {
                Ok(()) => {}
                Err(err) if fs::is_not_found(&err) => {}
                Err(err) => return Err(Error::io("delete", &e.path, err)),
            }
        }
        lock.release();
        Ok(same)
    }

    /// Moves an object name into a trash run; false if it was removed meanwhile.
    fn move_to_trash(&self, src: &Path, run_dir: &Path, h: &Hash) -> Result<bool> {
        let dst = run_dir.join(h.to_string());
        let root = &self.inner.root_dir;
        let mut attempts = 0;
        loop {
            match root.rename(src, &dst) {
                Ok(()) => return Ok(true),
                Err(e) if fs::is_not_found(&e) && attempts < 2 => {
                    if root.lstat(src).is_err() {
                        return Ok(false); // removed meanwhile
                    }
                    attempts += 1;
                    self.ensure_dir(run_dir)?;
                }
                Err(e) => return Err(Error::io("move to trash", src, e)),
            }
        }
    }

    /// The staging files gc may remove, and what in `tmp/` is not what it should be.
    ///
    /// This is the one place that decides (docs/format.md "GC"): only regular files (never
    /// followed, never a directory) whose name parses as a staging name `HOST.PID.RANDOM`,
    /// whose writer is provably dead (this host, pid gone) or that are older than the stale
    /// age — and in a shared store, an old file only if it is this user's own: another user's
    /// writer on another host may still be alive, however slow.
    pub(crate) fn stale_staging(&self) -> (Vec<StaleStaging>, Vec<Problem>) {
        let root = &self.inner.root_dir;
        let tmp = self.path(layout::TMP);
        let mut stale = Vec::new();
        let mut problems = Vec::new();
        let ents = match root.read_dir(&tmp) {
            Ok(v) => v,
            Err(e) if fs::is_not_found(&e) => return (stale, problems),
            Err(e) => {
                problems.push(Problem {
                    path: tmp,
                    reason: format!("cannot list staging files: {e}"),
                });
                return (stale, problems);
            }
        };
        let me = fs::uid();
        for (name, kind) in ents {
            let path = tmp.join(&name);
            let parsed = name.to_str().and_then(layout::parse_staging_name);
            let Some((host, pid)) = parsed else {
                continue; // not ours to judge: cas never made it
            };
            if kind != fs::Kind::File {
                problems.push(Problem {
                    path,
                    reason: format!("a staging name that is {}", kind.describe()),
                });
                continue;
            }
            let Ok(meta) = root.lstat(&path) else {
                continue;
            };
            let age = meta.mtime.elapsed().unwrap_or_default();
            let dead = host == self.inner.host && !fs::pid_alive(pid);
            let old = age > self.inner.options.stale_age
                && (!self.inner.options.shared_group || meta.uid == me);
            if dead {
                stale.push(StaleStaging {
                    path,
                    reason: "its writer is dead",
                });
            } else if old {
                stale.push(StaleStaging {
                    path,
                    reason: "older than the stale age",
                });
            }
        }
        (stale, problems)
    }

    /// The objects in a trash run directory.
    fn list_trash_run(&self, dir: &Path) -> Result<Vec<Trashed>> {
        // One `fstatat` per object relative to the run's descriptor (issue 26).
        let root = &self.inner.root_dir;
        let listed = root
            .open_dir(dir)
            .and_then(|fd| Ok((fs::list_dir_at(std::os::fd::AsFd::as_fd(&fd))?, fd)));
        let (ents, fd) = match listed {
            Ok(v) => v,
            Err(e) if fs::is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        let mut out = Vec::new();
        for (name, _) in ents {
            let Some(hash) = name.to_str().and_then(|n| Hash::parse(n).ok()) else {
                continue;
            };
            if let Ok(md) = fs::lstat_at(std::os::fd::AsFd::as_fd(&fd), &name) {
                out.push(Trashed {
                    hash,
                    len: md.len,
                    mtime: md.mtime,
                });
            }
        }
        Ok(out)
    }
}

/// An eviction candidate: an object in trash, or a cache entry (index into `Mark::entries`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cand {
    Trash(PathBuf, u64),
    Entry(usize),
}

/// One step of an eviction plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Evict {
    /// Delete this object from trash.
    Trash(PathBuf, u64),
    /// Remove this cache entry (index into `Mark::entries`), then condemn the objects it
    /// releases.
    Entry(usize, Vec<(Hash, u64)>),
}

/// Plans eviction, least recently used first, until `total` is within `budget`. Removing
/// entry `i` releases `owned[i]` (the objects whose newest user it is); only objects the sweep
/// saw (`size_of`) and older than `cutoff` are counted and condemned.
fn plan_eviction(
    mut cands: Vec<(SystemTime, Cand)>,
    owned: &[Vec<Hash>],
    size_of: &dyn Fn(&Hash) -> Option<(u64, SystemTime)>,
    cutoff: SystemTime,
    budget: u64,
    mut total: u64,
) -> Vec<Evict> {
    cands.sort_by_key(|c| c.0);
    let mut out = Vec::new();
    for (_, c) in cands {
        if total <= budget {
            break;
        }
        match c {
            Cand::Trash(p, len) => {
                total = total.saturating_sub(len);
                out.push(Evict::Trash(p, len));
            }
            Cand::Entry(i) => {
                let mut objects = Vec::new();
                for x in &owned[i] {
                    let Some((len, mtime)) = size_of(x) else {
                        continue;
                    };
                    if mtime > cutoff {
                        continue;
                    }
                    total = total.saturating_sub(len);
                    objects.push((*x, len));
                }
                out.push(Evict::Entry(i, objects));
            }
        }
    }
    out
}

/// What holds the bytes of a store gc could not bring under `budget`: objects the sweep kept
/// that refs or pins reach (`refs`, `pins` bytes: never evicted), the young quarantine, and
/// the rest.
fn budget_unmet(refs: u64, pins: u64, budget: u64, r: &GcReport) -> BudgetUnmet {
    let after = r.bytes_after;
    let held_by_refs = refs.min(after);
    let held_by_pins = pins.min(after - held_by_refs);
    let held_quarantine = r.quarantine_bytes.min(after - held_by_refs - held_by_pins);
    BudgetUnmet {
        budget,
        bytes_after: after,
        held_by_refs,
        held_by_pins,
        held_young: after - held_by_refs - held_by_pins - held_quarantine,
        held_quarantine,
    }
}

fn problem_of(e: &Error, fallback: PathBuf) -> Problem {
    Problem {
        path: e.path().map_or(fallback, Path::to_path_buf),
        reason: crate::maint::mark::error_reason(e),
    }
}

/// Refreshes a lease every third of its timeout.
struct Heartbeat {
    last: Instant,
    every: Duration,
}

impl Heartbeat {
    fn new(timeout: Duration) -> Self {
        Heartbeat {
            last: Instant::now(),
            every: timeout / 3,
        }
    }
    fn beat(&mut self, lock: &crate::names::lock::Lock) -> Result<()> {
        if self.last.elapsed() >= self.every {
            lock.verify()?;
            lock.refresh()?;
            self.last = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn eviction_is_lru_and_releases_shared_objects_with_their_newest_user() {
        let (a, b, shared) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"s"));
        let sizes: std::collections::HashMap<Hash, (u64, SystemTime)> =
            [(a, (10, t(1))), (b, (10, t(1))), (shared, (100, t(1)))]
                .into_iter()
                .collect();
        let size_of = |h: &Hash| sizes.get(h).copied();
        // Entry 0 (older) uses a and shared; entry 1 (newer) uses b and shared: the shared
        // object belongs to entry 1, the newest that reaches it.
        let owned = vec![vec![a], vec![b, shared]];
        let cands = vec![
            (t(20), Cand::Entry(1)),
            (t(10), Cand::Entry(0)),
            (t(5), Cand::Trash(PathBuf::from("trash/x"), 7)),
        ];
        let cutoff = t(100);
        // Over budget by a little: the oldest thing (trash) goes first, and is enough.
        let plan = plan_eviction(cands.clone(), &owned, &size_of, cutoff, 120, 127);
        assert_eq!(plan, vec![Evict::Trash(PathBuf::from("trash/x"), 7)]);
        // More: entry 0 goes, releasing a but not the shared object entry 1 still uses.
        let plan = plan_eviction(cands.clone(), &owned, &size_of, cutoff, 110, 127);
        assert_eq!(
            plan,
            vec![
                Evict::Trash(PathBuf::from("trash/x"), 7),
                Evict::Entry(0, vec![(a, 10)]),
            ]
        );
        // Everything: the shared object is released with the last entry using it.
        let plan = plan_eviction(cands, &owned, &size_of, cutoff, 0, 127);
        assert_eq!(plan[2..], [Evict::Entry(1, vec![(b, 10), (shared, 100)])]);
    }

    #[test]
    fn eviction_never_releases_young_or_unseen_objects() {
        let (old, young) = (Hash::of(b"old"), Hash::of(b"young"));
        let sizes: std::collections::HashMap<Hash, (u64, SystemTime)> =
            [(old, (10, t(1))), (young, (10, t(50)))]
                .into_iter()
                .collect();
        let size_of = |h: &Hash| sizes.get(h).copied();
        let unseen = Hash::of(b"unseen");
        let plan = plan_eviction(
            vec![(t(1), Cand::Entry(0))],
            &[vec![old, young, unseen]],
            &size_of,
            t(40),
            0,
            50,
        );
        assert_eq!(plan, vec![Evict::Entry(0, vec![(old, 10)])]);
    }

    /// A store holding a directory tree (two files, a subdirectory with a third), every object
    /// condemned to one trash run, as a sweep that ran before any name existed leaves it.
    /// Returns the store, the tree and every object of its closure.
    fn condemned_tree(dir: &Path) -> (Store, Hash, Vec<Hash>) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), b"alpha").unwrap();
        std::fs::write(src.join("b"), b"beta").unwrap();
        std::fs::write(src.join("sub/c"), b"gamma").unwrap();
        let s = Store::init(dir.join("store"), crate::Options::default()).unwrap();
        let top = s.put_dir(&src).unwrap();
        let all: Vec<Hash> = s.closure_of(&[top], &|_| false).into_iter().collect();
        assert_eq!(all.len(), 5, "tree, subtree, three files");
        let run = s.path(layout::TRASH).join("1000.h.1");
        std::fs::create_dir_all(&run).unwrap();
        for h in &all {
            std::fs::rename(s.object_path(h), run.join(h.to_string())).unwrap();
        }
        (s, top, all)
    }

    /// The purge of a gc whose mark ran before the name existed.
    fn purge_with_old_mark(s: &Store, m: &Mark) -> GcReport {
        let mut r = GcReport::default();
        s.purge_trash(m, SystemTime::now(), false, true, &mut r)
            .unwrap();
        r
    }

    /// A ref, a cache entry or a pushed name set between a gc's mark and its purge used to
    /// bring back only the root, and the purge deleted the children.
    #[test]
    fn a_name_set_after_the_mark_brings_its_whole_closure_back_before_the_purge() {
        for how in ["ref", "key", "push"] {
            let d = tempfile::tempdir().unwrap();
            let (s, top, all) = condemned_tree(d.path());
            let m = s.mark();
            assert!(m.reach.reachable.is_empty());
            match how {
                "ref" => {
                    s.set_ref("r", top, crate::Expect::Any).unwrap();
                }
                "key" => {
                    s.set_keyed(b"k", top, b"", crate::Expect::Any).unwrap();
                }
                _ => {
                    // The destination has every object, in its trash: present for the old
                    // code, so nothing was copied and only the root came back.
                    let src =
                        Store::init(d.path().join("src-store"), crate::Options::default()).unwrap();
                    let t = src.put_dir(d.path().join("src")).unwrap();
                    assert_eq!(t, top);
                    src.set_ref("r", t, crate::Expect::Any).unwrap();
                    src.push_to(&s, &crate::TransferOptions::default().refs(["r"]))
                        .unwrap();
                }
            }
            let r = purge_with_old_mark(&s, &m);
            assert_eq!(
                r.deleted, 0,
                "{how}: the purge deleted part of a named closure"
            );
            for h in &all {
                assert!(
                    s.get(h).is_ok(),
                    "{how}: {h} of the named tree's closure is gone"
                );
            }
        }
    }

    /// A name whose closure is incomplete is refused, not published dangling.
    #[test]
    fn a_name_is_refused_when_a_child_is_nowhere() {
        let d = tempfile::tempdir().unwrap();
        let (s, top, all) = condemned_tree(d.path());
        let run = s.path(layout::TRASH).join("1000.h.1");
        let leaf = Hash::of(b"gamma");
        assert!(all.contains(&leaf));
        std::fs::remove_file(run.join(leaf.to_string())).unwrap();
        let e = s.set_ref("r", top, crate::Expect::Any).unwrap_err();
        assert!(
            e.is_not_found() && e.to_string().contains(&leaf.to_string()),
            "{e}"
        );
        assert_eq!(s.get_ref("r").unwrap(), None);
        let e = s.set_keyed(b"k", top, b"", crate::Expect::Any).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(s.entry(b"k").is_err());
    }

    /// Eviction: an entry rewritten after the mark is not removed.
    #[test]
    fn eviction_leaves_an_entry_rewritten_after_the_mark() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path(), crate::Options::default()).unwrap();
        s.put_keyed_bytes(b"k", b"one", b"").unwrap();
        let m = s.mark();
        assert_eq!(m.entries.len(), 1);
        // Rewritten with other bytes, and with the same bytes (only its mtime moves).
        s.put_keyed_bytes(b"k", b"two", b"").unwrap();
        assert!(!s.remove_entry_if_unchanged(&m.entries[0]).unwrap());
        assert_eq!(&*s.get_keyed(b"k").unwrap(), b"two");
        let m = s.mark();
        let e = &m.entries[0];
        crate::fs::chmod_path(&e.path, 0o644).ok();
        std::fs::File::options()
            .write(true)
            .open(&e.path)
            .unwrap()
            .set_modified(e.mtime + Duration::from_secs(5))
            .unwrap();
        assert!(!s.remove_entry_if_unchanged(e).unwrap());
        assert!(s.entry(b"k").is_ok());
        // Unchanged since the mark: removed.
        let m = s.mark();
        assert!(s.remove_entry_if_unchanged(&m.entries[0]).unwrap());
        assert!(s.entry(b"k").is_err());
    }
}

//! Garbage collection and size-budget eviction (docs/format.md §GC).
//!
//! Roots are refs, cache entries, and the pins in ref/entry lock files (values being written);
//! everything reachable from a root through tree objects is kept. One gc at a time
//! (`locks/gc.lock`, a lease refreshed as it goes). An unreachable object older than the grace
//! period is moved to `trash/<run>/`; a later gc deletes trash older than the grace period after
//! checking reachability again; with a zero grace period that deletion happens in the same
//! run, after the rescue mark, so `gc --grace 0s` frees the space at once. After condemning,
//! gc marks a second time and moves back anything that became reachable meanwhile, so a
//! pointer made visible during the run never dangles.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::fs;
use crate::hash::Hash;
use crate::layout;
use crate::lock::Wait;
use crate::progress::{Progress, ProgressFn};
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
    /// Bytes under `objects/` and `trash/` after the run, as counted by its own scan (objects
    /// that concurrent writers added meanwhile are not included).
    pub bytes_after: u64,
    /// Hashes condemned by this run (moved to trash, or would be in a dry run).
    pub condemned: Vec<Hash>,
}

/// The result of marking: what is reachable, and from where things are missing.
#[derive(Debug, Default)]
pub(crate) struct Mark {
    pub(crate) reachable: HashSet<Hash>,
    pub(crate) roots: u64,
    /// (what points, missing hash)
    pub(crate) missing: Vec<(String, Hash)>,
    /// Cache entries: (entry file, object hash, entry mtime).
    pub(crate) entries: Vec<(PathBuf, Hash, SystemTime)>,
    /// Files that should be roots but could not be decoded: (path, reason).
    pub(crate) bad: Vec<(PathBuf, String)>,
}

fn mtime(m: &std::fs::Metadata) -> SystemTime {
    m.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Store {
    /// Finds all roots and everything reachable from them.
    pub(crate) fn mark(&self) -> Result<Mark> {
        let mut m = Mark::default();
        // Pins first, then the pointers: a pin removed while we list pins belongs to an update
        // that completed before we list the pointers, so we see its result there.
        let mut roots: Vec<(String, Hash, bool)> = Vec::new();
        for dir in [layout::REFS, layout::INDEX] {
            for h in self.lock_pins(&self.path(dir))? {
                roots.push(("an update in progress".into(), h, false));
            }
        }
        for (name, h) in self.list_refs("")? {
            roots.push((format!("ref {name:?}"), h, true));
        }
        for p in self.entry_files()? {
            match self.read_entry_file(&p) {
                Ok(Some((e, f))) => {
                    let t = f.metadata().map_or(SystemTime::UNIX_EPOCH, |md| mtime(&md));
                    m.entries.push((p, e.hash, t));
                    roots.push((
                        format!("cache entry {}", crate::index::display_key(&e.key)),
                        e.hash,
                        true,
                    ));
                }
                Ok(None) => {}
                Err(e) => m.bad.push((p, e.to_string())),
            }
        }
        m.roots = roots.len() as u64;
        let mut stack: Vec<(String, Hash, bool, bool)> = roots
            .into_iter()
            .map(|(from, h, report)| (from, h, true, report))
            .collect();
        while let Some((from, h, maybe_tree, report)) = stack.pop() {
            if !m.reachable.insert(h) {
                continue;
            }
            if !maybe_tree {
                if report && !self.contains(&h) {
                    m.missing.push((from, h));
                }
                continue;
            }
            match self.tree_children(&h) {
                Ok(Some(children)) => {
                    for (c, is_tree) in children {
                        stack.push((format!("tree {h}"), c, is_tree, true));
                    }
                }
                Ok(None) => {}
                Err(e) if e.is_not_found() => {
                    if report {
                        m.missing.push((from, h));
                    }
                }
                Err(e) if e.is_corrupt() => m.missing.push((from, h)),
                Err(e) => return Err(e),
            }
        }
        Ok(m)
    }

    /// Collects garbage: see the module docs and docs/format.md §GC.
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
    /// # Errors
    /// [`Error::Locked`] if another gc is running; [`Error::Interrupted`] if `progress` asked
    /// to stop (the store is left consistent); I/O errors naming the path.
    pub fn gc(&self, opts: &GcOptions, progress: ProgressFn<'_>) -> Result<GcReport> {
        if self.upstream().is_some() {
            return self.gc_tier(opts, progress); // a cache of its upstream (crate::upstream)
        }
        let lock_path = self.path(layout::LOCKS).join("gc.lock");
        let lock = self.acquire_lock(&lock_path, None, Wait::For(Duration::ZERO))?;
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
        let mut interrupted = false;

        let m1 = self.mark()?;
        r.roots = m1.roots;
        r.reachable = m1.reachable.len() as u64;
        if !progress(Progress {
            phase: "mark",
            done: m1.roots,
            total: Some(m1.roots),
        }) {
            return Err(Error::Interrupted);
        }

        self.purge_trash(&m1, cutoff, dry, &mut r)?;
        // What is left in trash; with the sweep's own count of objects/ this is the store's
        // size, without walking objects/ a second time.
        let trash_bytes = self.trash_usage()?;

        // Sweep: condemn unreachable objects older than the grace period.
        let run_dir = self.path(layout::TRASH).join(format!(
            "{}.{}.{}",
            start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            self.inner.host,
            self.inner.pid
        ));
        let mut live: Vec<(Hash, u64, SystemTime)> = Vec::new();
        for (i, h) in self.iter().enumerate() {
            let h = h?;
            let p = self.object_path(&h);
            let md = match std::fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e) if fs::is_not_found(&e) => continue,
                Err(e) => return Err(Error::io("stat", &p, e)),
            };
            r.objects += 1;
            r.bytes += md.len();
            if m1.reachable.contains(&h) {
                live.push((h, md.len(), mtime(&md)));
            } else if mtime(&md) > cutoff {
                r.kept_young += 1;
                live.push((h, md.len(), mtime(&md)));
            } else {
                r.condemned.push(h);
                r.trashed += 1;
                r.trashed_bytes += md.len();
                if !dry {
                    self.move_to_trash(&p, &run_dir, &h)?;
                }
            }
            if i % 1024 == 1023 {
                beat.beat(&lock)?;
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

        // Bytes under objects/ and trash/ as this run counted them: moving to trash frees
        // nothing (the budget covers both), and a dry run has not deleted what it reports.
        let mut total = r.bytes + trash_bytes;
        if dry {
            total = total.saturating_sub(r.deleted_bytes);
        }

        // Eviction to the size budget, least recently used first.
        let mut evicted: Vec<(PathBuf, u64)> = Vec::new();
        if let (Some(budget), false) = (opts.max_size.or(self.inner.options.max_size), interrupted)
        {
            evicted = self.evict(&m1, &live, budget, total, dry, &mut r)?;
        }

        let deleted_before_rescue = r.deleted_bytes;
        self.after_condemning(opts, evicted, interrupted, &run_dir, &mut r)?;

        // Empty fan-out directories stay: `init` makes all 256 and a publish never has to
        // create one (whose own name would need another fsync to survive a power loss).
        r.staging_removed = self.clean_staging(dry)?;
        r.bytes_after = if dry && opts.grace.is_zero() {
            total.saturating_sub(r.evicted_bytes + r.trashed_bytes)
        } else if dry {
            total.saturating_sub(r.evicted_bytes)
        } else {
            total.saturating_sub(r.deleted_bytes - deleted_before_rescue)
        };
        lock.release();
        if interrupted {
            return Err(Error::Interrupted);
        }
        Ok(r)
    }

    /// Trash of earlier runs, condemned longer ago than the grace period: delete what is still
    /// unreachable, restore the rest.
    fn purge_trash(
        &self,
        m1: &Mark,
        cutoff: SystemTime,
        dry: bool,
        r: &mut GcReport,
    ) -> Result<()> {
        for run in self.trash_runs()? {
            if run.created > cutoff {
                continue;
            }
            for (h, p, len, _) in list_trash_run(&run.path)? {
                if m1.reachable.contains(&h) {
                    if !dry && self.restore_from_trash(&h)?.is_some() {
                        r.restored += 1;
                    }
                } else {
                    r.deleted += 1;
                    r.deleted_bytes += len;
                    if !dry {
                        remove_file_ok(&p)?;
                    }
                }
            }
            if !dry {
                let _ = std::fs::remove_dir(&run.path);
            }
        }
        Ok(())
    }

    /// After the sweep and eviction: the rescue mark, then with a zero grace period the
    /// deletion of what is still condemned.
    fn after_condemning(
        &self,
        opts: &GcOptions,
        evicted: Vec<(PathBuf, u64)>,
        interrupted: bool,
        run_dir: &Path,
        r: &mut GcReport,
    ) -> Result<()> {
        if !opts.dry_run {
            let m2 = self.rescue(evicted, r)?;
            if opts.grace.is_zero() && !interrupted {
                // No grace: what this run condemned is already "trash older than the grace
                // period", so delete it now, exactly as the next run would (after the rescue
                // mark, so nothing that became reachable meanwhile goes).
                self.purge_trash(&m2, SystemTime::now(), false, r)?;
            }
            let _ = std::fs::remove_dir(run_dir);
        } else if opts.grace.is_zero() {
            // A dry run reports what a real one would free.
            r.deleted += r.trashed;
            r.deleted_bytes += r.trashed_bytes;
        }
        Ok(())
    }

    /// Rescue mark: anything in trash that became reachable while we condemned goes back;
    /// then the evicted objects still in trash are deleted.
    fn rescue(&self, evicted: Vec<(PathBuf, u64)>, r: &mut GcReport) -> Result<Mark> {
        let m2 = self.mark()?;
        for run in self.trash_runs()? {
            for (h, _, _, _) in list_trash_run(&run.path)? {
                if m2.reachable.contains(&h) && self.restore_from_trash(&h)?.is_some() {
                    r.restored += 1;
                }
            }
        }
        for (p, len) in evicted {
            match std::fs::remove_file(&p) {
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
    /// until the store (`total` bytes now) is under `budget`. Objects reachable from refs or
    /// pins are never evicted, nor unreachable objects younger than the grace period. Returns
    /// the trash paths of evicted objects, to delete after the rescue mark.
    fn evict(
        &self,
        m1: &Mark,
        live: &[(Hash, u64, SystemTime)],
        budget: u64,
        mut total: u64,
        dry: bool,
        r: &mut GcReport,
    ) -> Result<Vec<(PathBuf, u64)>> {
        if total <= budget {
            return Ok(Vec::new());
        }
        let size_of: HashMap<Hash, (u64, SystemTime)> =
            live.iter().map(|(h, l, t)| (*h, (*l, *t))).collect();
        // Objects pinned by refs and in-flight updates: closure of every root but the entries.
        let pinned = self.pinned_by_refs()?;
        let mut refcount: HashMap<Hash, u32> = HashMap::new();
        let mut closures: Vec<Vec<Hash>> = Vec::new();
        for (_, h, _) in &m1.entries {
            let c: Vec<Hash> = self
                .closure(h)?
                .into_iter()
                .filter(|x| !pinned.contains(x))
                .collect();
            for x in &c {
                *refcount.entry(*x).or_default() += 1;
            }
            closures.push(c);
        }
        let mut cands: Vec<(SystemTime, Cand)> = Vec::new();
        for run in self.trash_runs()? {
            for (_, p, len, t) in list_trash_run(&run.path)? {
                cands.push((t, Cand::Trash(p, len)));
            }
        }
        for (i, (_, h, t)) in m1.entries.iter().enumerate() {
            let obj_t = size_of.get(h).map_or(SystemTime::UNIX_EPOCH, |x| x.1);
            cands.push(((*t).max(obj_t), Cand::Entry(i)));
        }
        cands.sort_by_key(|c| c.0);
        let run_dir = self.path(layout::TRASH).join(format!(
            "{}.{}.{}.evict",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            self.inner.host,
            self.inner.pid
        ));
        let mut out = Vec::new();
        for (_, c) in cands {
            if total <= budget {
                break;
            }
            match c {
                Cand::Trash(p, len) => {
                    total = total.saturating_sub(len);
                    r.evicted_objects += 1;
                    r.evicted_bytes += len;
                    out.push((p, len));
                }
                Cand::Entry(i) => {
                    let (path, _, _) = &m1.entries[i];
                    r.evicted_entries += 1;
                    if !dry {
                        remove_file_ok(path)?;
                    }
                    for x in &closures[i] {
                        let n = refcount.entry(*x).or_default();
                        *n = n.saturating_sub(1);
                        if *n > 0 {
                            continue;
                        }
                        let Some((len, _)) = size_of.get(x) else {
                            continue;
                        };
                        total = total.saturating_sub(*len);
                        r.evicted_objects += 1;
                        r.evicted_bytes += len;
                        if !dry {
                            let src = self.object_path(x);
                            if self.move_to_trash(&src, &run_dir, x).is_ok() {
                                out.push((run_dir.join(x.to_string()), *len));
                            }
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

    /// Everything reachable from refs and pins (not from cache entries).
    fn pinned_by_refs(&self) -> Result<HashSet<Hash>> {
        let mut set = HashSet::new();
        for dir in [layout::REFS, layout::INDEX] {
            for h in self.lock_pins(&self.path(dir))? {
                set.extend(self.closure(&h)?);
            }
        }
        for (_, h) in self.list_refs("")? {
            set.extend(self.closure(&h)?);
        }
        Ok(set)
    }

    /// The object and everything reachable from it through trees.
    pub(crate) fn closure(&self, root: &Hash) -> Result<Vec<Hash>> {
        let mut seen = HashSet::new();
        let mut stack = vec![(*root, true)];
        while let Some((h, maybe_tree)) = stack.pop() {
            if !seen.insert(h) || !maybe_tree {
                continue;
            }
            match self.tree_children(&h) {
                Ok(Some(children)) => stack.extend(children),
                Ok(None) => {}
                Err(e) if e.is_not_found() || e.is_corrupt() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(seen.into_iter().collect())
    }

    fn move_to_trash(&self, src: &Path, run_dir: &Path, h: &Hash) -> Result<()> {
        let dst = run_dir.join(h.to_string());
        let mut attempts = 0;
        loop {
            match std::fs::rename(src, &dst) {
                Ok(()) => return Ok(()),
                Err(e) if fs::is_not_found(&e) && attempts < 2 => {
                    if std::fs::symlink_metadata(src).is_err() {
                        return Ok(()); // removed meanwhile
                    }
                    attempts += 1;
                    self.ensure_dir(run_dir)?;
                }
                Err(e) => return Err(Error::io("move to trash", src, e)),
            }
        }
    }

    /// Removes staging files whose writer is dead (same host) or older than the stale age.
    /// Returns how many were (or, dry, would be) removed.
    fn clean_staging(&self, dry: bool) -> Result<u64> {
        let mut n = 0;
        for (p, _) in self.stale_staging()? {
            n += 1;
            if !dry {
                fs::remove_quietly(&p);
            }
        }
        // Leftovers of lock breakers that died between rename and unlink.
        let locks = self.path(layout::LOCKS);
        if let Ok(rd) = std::fs::read_dir(&locks) {
            for ent in rd.flatten() {
                let name = ent.file_name();
                let old = ent
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > self.inner.options.lock_timeout);
                if name.to_string_lossy().starts_with("broken.") && old && !dry {
                    fs::remove_quietly(&ent.path());
                }
            }
        }
        Ok(n)
    }

    /// Staging files in `tmp/` whose writer is dead (same host, pid gone) or that are older
    /// than the stale age, with the reason.
    pub(crate) fn stale_staging(&self) -> Result<Vec<(PathBuf, &'static str)>> {
        let tmp = self.path(layout::TMP);
        let rd = match std::fs::read_dir(&tmp) {
            Ok(rd) => rd,
            Err(e) if fs::is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &tmp, e)),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(Error::at("list", &tmp))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let age = ent
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let dead = layout::parse_staging_name(&name)
                .is_some_and(|(host, pid)| host == self.inner.host && !fs::pid_alive(pid));
            if dead {
                out.push((ent.path(), "its writer is dead"));
            } else if age > self.inner.options.stale_age {
                out.push((ent.path(), "older than the stale age"));
            }
        }
        Ok(out)
    }

    /// Bytes under `trash/`.
    fn trash_usage(&self) -> Result<u64> {
        let mut total = 0;
        for run in self.trash_runs()? {
            total += list_trash_run(&run.path)?.iter().map(|x| x.2).sum::<u64>();
        }
        Ok(total)
    }
}

/// An eviction candidate: an object in trash, or a cache entry (index into `Mark::entries`).
enum Cand {
    Trash(PathBuf, u64),
    Entry(usize),
}

/// (hash, path, size, mtime) of the objects in a trash run directory.
fn list_trash_run(dir: &Path) -> Result<Vec<(Hash, PathBuf, u64, SystemTime)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if fs::is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(Error::at("list", dir))?;
        let Some(h) = ent.file_name().to_str().and_then(|n| Hash::parse(n).ok()) else {
            continue;
        };
        if let Ok(md) = std::fs::symlink_metadata(ent.path()) {
            out.push((h, ent.path(), md.len(), mtime(&md)));
        }
    }
    Ok(out)
}

fn remove_file_ok(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if fs::is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::io("delete", p, e)),
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
    fn beat(&mut self, lock: &crate::lock::Lock) -> Result<()> {
        if self.last.elapsed() >= self.every {
            lock.verify()?;
            lock.refresh()?;
            self.last = Instant::now();
        }
        Ok(())
    }
}

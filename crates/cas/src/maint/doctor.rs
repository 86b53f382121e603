//! `doctor`: what the store's filesystem can do, and what is wrong with the store that a
//! person should know about (permissions, dead writers, expired leases, dangling refs).

use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::fs;
use crate::maint::verify::{Dangling, Problem};
use crate::store::layout;
use crate::Store;

/// The result of one capability probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Probe {
    /// What was probed.
    pub name: &'static str,
    /// Whether it works here.
    pub ok: bool,
    /// What was observed.
    pub detail: String,
}

/// What [`Store::doctor`] found (and fixed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DoctorReport {
    /// Filesystem type and the capabilities in use.
    pub fs: FsInfoReport,
    /// Capability probes run in `tmp/`.
    pub probes: Vec<Probe>,
    /// Directories or files whose permissions break the store's mode (shared or not).
    pub permission_problems: Vec<Problem>,
    /// Staging files of dead or stale writers.
    pub stale_staging: Vec<Problem>,
    /// Locks whose holder is dead or whose lease expired.
    pub expired_locks: Vec<Problem>,
    /// Refs, cache entries or trees pointing to missing objects.
    pub dangling: Vec<Dangling>,
    /// Items that are not what they should be (a symlink, FIFO or garbage where a ref, entry,
    /// lock or object belongs), by path.
    pub damaged: Vec<Problem>,
    /// Reachable objects sitting in trash (a gc was interrupted). Without `fix` they are only
    /// reported; with `fix` they are moved back (and listed in `fixed` too).
    pub reachable_in_trash: Vec<crate::Hash>,
    /// What `fix` repaired.
    pub fixed: Vec<String>,
    /// Whether this was a run with `fix` (what it found stale was removed).
    pub fix: bool,
    /// Set when the store's root directory belongs to another user than the one running
    /// doctor (and it is not a shared store this user can write to): then what this user
    /// cannot write is a consequence, not damage, and only the owner (or root) can `fix` it.
    pub foreign_owner: Option<Owner>,
    /// Every problem above grouped by kind and reason, each group once with a count (the
    /// many identical findings of one cause are one line).
    pub summary: Vec<ProblemGroup>,
}

/// A store's owner and the user looking at it (see [`DoctorReport::foreign_owner`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Owner {
    /// The store's owner.
    pub uid: u32,
    /// Its name, if `/etc/passwd` lists it.
    pub name: Option<String>,
    /// The user running doctor (effective uid).
    pub you: u32,
    /// Its name, if listed.
    pub your_name: Option<String>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = |uid: u32, name: &Option<String>| match name {
            Some(n) => format!("{n} (uid {uid})"),
            None => format!("uid {uid}"),
        };
        write!(
            f,
            "this store belongs to {}, not to you ({})",
            who(self.uid, &self.name),
            who(self.you, &self.your_name)
        )
    }
}

/// Findings of one kind with one reason (see [`DoctorReport::summary`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ProblemGroup {
    /// `permissions`, `staging`, `lock`, `dangling`, `damaged` or `in trash`.
    pub kind: &'static str,
    /// What is wrong, the same for every member.
    pub reason: String,
    /// How many.
    pub count: usize,
    /// The first one (a path, or for `dangling` and `in trash` a hash).
    pub example: String,
}

/// Groups findings by kind and reason, in the order first met.
fn summarize(r: &DoctorReport) -> Vec<ProblemGroup> {
    let mut out: Vec<ProblemGroup> = Vec::new();
    let mut add = |kind: &'static str, reason: String, example: String| {
        if let Some(g) = out
            .iter_mut()
            .find(|g| g.kind == kind && g.reason == reason)
        {
            g.count += 1;
        } else {
            out.push(ProblemGroup {
                kind,
                reason,
                count: 1,
                example,
            });
        }
    };
    let lists = [
        ("permissions", &r.permission_problems),
        ("staging", &r.stale_staging),
        ("lock", &r.expired_locks),
        ("damaged", &r.damaged),
    ];
    for (kind, list) in lists {
        for p in list {
            add(kind, p.reason.clone(), p.path.display().to_string());
        }
    }
    for d in &r.dangling {
        add(
            "dangling",
            format!("points to a missing object (from {})", d.from),
            d.hash.to_string(),
        );
    }
    for h in &r.reachable_in_trash {
        add(
            "in trash",
            "reachable object in trash (`doctor --fix` moves it back)".to_owned(),
            h.to_string(),
        );
    }
    out
}

/// [`FsInfo`](crate::FsInfo) in a serializable form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FsInfoReport {
    /// Filesystem type name.
    pub fs_type: String,
    /// statfs magic, hex.
    pub magic: String,
    /// Treated as a network filesystem.
    pub network: bool,
    /// Publishing uses `renameat2(RENAME_NOREPLACE)` (else `link` + `unlink`).
    pub rename_noreplace: bool,
    /// Large objects are memory-mapped for reads (those this user owns): a local filesystem
    /// and a private store. In a shared store the group could truncate a mapped object.
    pub mmap_reads: bool,
    /// The durability barrier used before names are published (`syncfs` or `fdatasync`).
    pub barrier: crate::Barrier,
}

impl FsInfoReport {
    /// The report of a store's filesystem: what [`Store::fs_info`] says, and whether reads
    /// map by the store's rule ([`Store::may_map_own`]: the filesystem *and* the store's
    /// sharing decide).
    pub(crate) fn of(store: &Store) -> Self {
        let f = store.fs_info();
        FsInfoReport {
            fs_type: f.fs_type,
            magic: format!("{:#x}", f.magic),
            mmap_reads: store.may_map_own(),
            network: f.network,
            rename_noreplace: f.rename_noreplace,
            barrier: f.barrier,
        }
    }
}

impl DoctorReport {
    /// True if nothing needs attention (probes that fail only change which fallback is used).
    /// After a run with `fix`, the stale staging files and expired locks it reports were
    /// removed, so they no longer count.
    pub fn is_healthy(&self) -> bool {
        self.permission_problems.is_empty()
            && self.dangling.is_empty()
            && self.damaged.is_empty()
            && (self.fix || (self.stale_staging.is_empty() && self.expired_locks.is_empty()))
    }
}

impl Store {
    /// Probes the filesystem and inspects the store; with `fix`, repairs what is safe:
    /// removes dead writers' staging files, breaks expired locks, restores shared-mode
    /// permissions on what this user owns.
    ///
    /// # Errors
    /// I/O errors listing the store or running the probes.
    ///
    /// Without `fix`, nothing in the store changes (the capability probes use private staging
    /// files in `tmp/` and remove them): reachable objects found in trash are reported, not
    /// moved back.
    pub fn doctor(&self, fix: bool) -> Result<DoctorReport> {
        self.maintainer().doctor(self, fix)
    }

    /// [`Store::doctor`] of a standalone store (the maintainer chosen at open says which).
    pub(crate) fn doctor_standalone(&self, fix: bool) -> Result<DoctorReport> {
        // Probes need staging files; a tmp/ that cannot hold them (a symlink planted there, a
        // full filesystem) is a finding, not a reason to stop.
        let (probes, probe_failure) = match self.probe_capabilities() {
            Ok(p) => (p, None),
            Err(e) => (
                vec![Probe {
                    name: "staging files in tmp/",
                    ok: false,
                    detail: e.to_string(),
                }],
                Some(Problem {
                    path: self.path(layout::TMP),
                    reason: crate::maint::mark::error_reason(&e),
                }),
            ),
        };
        let mut fixed = Vec::new();
        let root = &self.inner.root_dir;

        let (stale, mut damaged) = self.stale_staging();
        damaged.extend(probe_failure);
        let stale_staging: Vec<Problem> = stale
            .into_iter()
            .map(|s| {
                if fix && root.unlink(&s.path).is_ok() {
                    fixed.push(format!("removed staging file {}", s.path.display()));
                }
                Problem {
                    path: s.path,
                    reason: s.reason.to_owned(),
                }
            })
            .collect();

        let expired_locks = self.expired_locks(fix, &mut fixed);

        let permission_problems = self.check_permissions(fix, &mut fixed);

        let m = self.mark();
        let mut reachable_in_trash = Vec::new();
        for run in self.trash_runs()? {
            for (name, _) in root.read_dir(&run.path).unwrap_or_default() {
                if let Some(h) = name.to_str().and_then(|n| crate::Hash::parse(n).ok()) {
                    if m.reach.reachable.contains(&h) && root.lstat(&self.object_path(&h)).is_err()
                    {
                        reachable_in_trash.push(h);
                    }
                }
            }
        }
        if fix {
            for h in self.restore_reachable_trash(&m.reach.reachable)? {
                fixed.push(format!("moved reachable object {h} back from trash"));
            }
        }
        let dangling = m
            .reach
            .missing
            .into_iter()
            .filter(|x| self.locate(&x.hash).is_none())
            .map(|x| Dangling {
                from: x.from.to_string(),
                hash: x.hash,
            })
            .collect();
        damaged.extend(m.reach.damaged);
        let foreign_owner = self.foreign_owner();
        let mut r = DoctorReport {
            fs: FsInfoReport::of(self),
            probes,
            permission_problems,
            stale_staging,
            expired_locks,
            dangling,
            damaged,
            reachable_in_trash,
            fixed,
            fix,
            foreign_owner,
            summary: Vec::new(),
        };
        r.summary = summarize(&r);
        Ok(r)
    }

    /// Locks whose holder is dead or whose lease expired; with `fix`, broken.
    fn expired_locks(&self, fix: bool, fixed: &mut Vec<String>) -> Vec<Problem> {
        let root = &self.inner.root_dir;
        let mut expired_locks = Vec::new();
        for dir in [layout::REFS, layout::INDEX, layout::LOCKS] {
            let walk = root.walk_tree(&self.path(dir));
            for (path, kind) in walk.entries {
                if kind != fs::Kind::File || !path.to_string_lossy().ends_with(layout::LOCK_SUFFIX)
                {
                    continue;
                }
                let Ok((holder, age)) = self.read_lock(&path) else {
                    continue;
                };
                if self.is_stale(holder.as_ref(), age) {
                    let who = holder.as_ref().map_or_else(
                        || "an incomplete or unparsable lock".to_owned(),
                        |h| format!("held by host {} pid {}", h.host, h.pid),
                    );
                    if fix && self.break_lock(&path, holder.as_ref()).is_ok() {
                        fixed.push(format!("broke expired lock {}", path.display()));
                    }
                    expired_locks.push(Problem {
                        path,
                        reason: format!("{who}, not refreshed for {} s", age.as_secs()),
                    });
                }
            }
        }
        expired_locks
    }

    /// The store's owner, if it is not this user (and this is not a shared store this user
    /// can write to).
    fn foreign_owner(&self) -> Option<Owner> {
        let root = &self.inner.root_dir;
        let me = fs::uid();
        // A member of a shared store that can write to it is not looking at someone else's
        // store: that is what sharing is for.
        let member = self.inner.options.shared_group && root.writable(self.root());
        root.root_meta()
            .ok()
            .filter(|md| md.uid != me && !member)
            .map(|md| Owner {
                uid: md.uid,
                name: fs::user_name(md.uid),
                you: me,
                your_name: fs::user_name(me),
            })
    }

    /// Tries the operations the protocols rely on, in `tmp/`, and records what works.
    fn probe_capabilities(&self) -> Result<Vec<Probe>> {
        let tmp = self.path(layout::TMP);
        let root = &self.inner.root_dir;
        let a = self.new_staging()?;
        let b = self.new_staging()?;
        let (a, b, _guards) = (a.path(), b.path(), (a, b));
        let mut probes = Vec::new();
        // Onto a free name first (FUSE/NFS refuse the flag with EINVAL), then onto a taken one.
        let free = tmp.join(format!("{}probe-rename", self.inner.staging_prefix));
        let noreplace = |from: &Path, to: &Path| root.rename_noreplace(from, to);
        let (ok, detail) = match noreplace(&b, &free) {
            Err(e) => (false, format!("{e}: using link()+unlink() to publish")),
            Ok(()) => match noreplace(&free, &a) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    (true, "renames, and refuses to replace (EEXIST)".to_owned())
                }
                Err(e) => (
                    false,
                    format!("{e} onto an existing name: using link()+unlink()"),
                ),
                Ok(()) => (
                    false,
                    "REPLACED an existing file: using link()+unlink()".to_owned(),
                ),
            },
        };
        let _ = root.unlink(&free);
        if !ok {
            self.inner
                .caps
                .rename_noreplace
                .store(false, Ordering::Relaxed);
        }
        probes.push(Probe {
            name: "renameat2(RENAME_NOREPLACE)",
            ok,
            detail,
        });

        let c = tmp.join(format!("{}probe-link", self.inner.staging_prefix));
        let (ok, detail) = match root.link(&a, &c) {
            Ok(()) => match root.link(&a, &c) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                    true,
                    "creates, and refuses an existing name (EEXIST)".to_owned(),
                ),
                Err(e) => (
                    false,
                    format!("second link failed with {e}, expected EEXIST"),
                ),
                Ok(()) => (false, "linked over an existing name".to_owned()),
            },
            Err(e) => (
                false,
                format!("{e}: no-replace publishing is not possible here"),
            ),
        };
        let _ = root.unlink(&c);
        probes.push(Probe {
            name: "link()",
            ok,
            detail,
        });

        let (ok, detail) = match root.create_excl(&a, 0o600) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                (true, "EEXIST on an existing name".to_owned())
            }
            Err(e) => (false, format!("{e}")),
            Ok(_) => (false, "opened an existing file".to_owned()),
        };
        probes.push(Probe {
            name: "open(O_CREAT|O_EXCL)",
            ok,
            detail,
        });

        let (ok, detail) = match root.fsync_dir(&tmp) {
            Ok(()) => (true, "works".to_owned()),
            Err(e) => (
                false,
                format!("{e}: durability `full` cannot make names durable"),
            ),
        };
        probes.push(Probe {
            name: "fsync(directory)",
            ok,
            detail,
        });
        Ok(probes)
    }

    /// Directories must be writable by us (and, shared, setgid + group-writable); objects and
    /// pointer files readable by the group in a shared store.
    fn check_permissions(&self, fix: bool, fixed: &mut Vec<String>) -> Vec<Problem> {
        let shared = self.inner.options.shared_group;
        let want_dir = self.dir_mode();
        let mut out = Vec::new();
        let dirs = [
            layout::OBJECTS,
            layout::TMP,
            layout::REFS,
            layout::INDEX,
            layout::LOCKS,
            layout::LOGS,
            layout::TRASH,
            layout::QUARANTINE,
        ];
        let root = &self.inner.root_dir;
        let mut check = |path: &Path, is_dir: bool| {
            let Ok(md) = root.lstat(path) else {
                return;
            };
            let mode = md.mode;
            let bad = if is_dir {
                if shared {
                    (mode & 0o2070) != 0o2070
                } else {
                    !root.writable(path)
                }
            } else {
                shared && mode & 0o040 == 0
            };
            if !bad {
                return;
            }
            let reason = if is_dir && !shared {
                // The mode may be right (755) and the directory someone else's: say that.
                let owner = match fs::user_name(md.uid) {
                    Some(n) => format!("{n} (uid {})", md.uid),
                    None => format!("uid {}", md.uid),
                };
                format!(
                    "directory mode {mode:o}, owned by {owner}: not writable by you (uid {})",
                    fs::uid()
                )
            } else if is_dir {
                format!("directory mode {mode:o}; want {want_dir:o}")
            } else {
                format!("file mode {mode:o} is not group-readable")
            };
            if fix {
                let target = if is_dir { want_dir } else { mode | 0o040 };
                // Opened without following and type-checked: never chmods through a link.
                if root.chmod(path, target).is_ok() {
                    fixed.push(format!("chmod {target:o} {}", path.display()));
                    return;
                }
            }
            out.push(Problem {
                path: path.to_owned(),
                reason,
            });
        };
        check(self.root(), true);
        for d in dirs {
            let p = self.path(d);
            check(&p, true);
            for (ent, kind) in root.walk_tree(&p).entries {
                if !matches!(kind, fs::Kind::File | fs::Kind::Dir)
                    || (d == layout::TMP && kind == fs::Kind::File)
                {
                    continue; // private staging files are fine; links and FIFOs are reported elsewhere
                }
                check(&ent, kind == fs::Kind::Dir);
            }
        }
        out
    }
}

//! Output helpers: human sizes, broken pipes, progress bars, reports.

use std::io;
use std::path::Path;

/// True if the error is a write to a closed pipe (`cas get … | head`): not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<cas::Error>()
                .and_then(cas::Error::io_error)
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// 1536 → "1.5 KiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
pub struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub fn new(what: &str) -> Bar {
        use std::io::IsTerminal;
        if !io::stderr().is_terminal() {
            return Bar(None);
        }
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} {msg:8} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_prefix(what.to_owned());
        Bar(Some(b))
    }

    /// Updates from a library progress report; never interrupts.
    pub fn update(&self, p: cas::Progress) -> bool {
        if let Some(b) = &self.0 {
            b.set_message(p.phase);
            if let Some(t) = p.total {
                b.set_length(t);
            }
            b.set_position(p.done);
        }
        true
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

pub fn print_verify(r: &cas::VerifyReport) {
    for c in &r.corrupt {
        match &c.quarantined {
            Some(q) => println!("corrupt {}: {}; moved to {}", c.hash, c.reason, q.display()),
            None => println!("corrupt {}: {}", c.hash, c.reason),
        }
    }
    for d in &r.dangling {
        println!("missing {} (pointed to by {})", d.hash, d.from);
    }
    for p in &r.bad_files {
        println!("unreadable {}: {}", p.path.display(), p.reason);
    }
    for p in &r.stale_staging {
        println!(
            "stale staging file {} ({}); `cas gc` removes it",
            p.path.display(),
            p.reason
        );
    }
    println!(
        "verified {} objects ({}): {} corrupt, {} missing, {} unreadable, {} stale staging files{}",
        r.objects,
        human_bytes(r.bytes),
        r.corrupt.len(),
        r.dangling.len(),
        r.bad_files.len(),
        r.stale_staging.len(),
        if r.restored > 0 {
            format!(", {} restored from trash", r.restored)
        } else {
            String::new()
        }
    );
}

pub fn print_gc(r: &cas::GcReport) {
    let verb = if r.dry_run { "would " } else { "" };
    if r.dry_run {
        for h in &r.condemned {
            println!("would trash {h}");
        }
    }
    println!(
        "gc: {} roots, {} reachable, {} objects ({}) scanned; {verb}trash {} ({}), {verb}delete {} ({}), {} kept as young, {} restored, {verb}evict {} entries and {} objects ({}), {verb}remove {} staging files; {} in the store after",
        r.roots,
        r.reachable,
        r.objects,
        human_bytes(r.bytes),
        r.trashed,
        human_bytes(r.trashed_bytes),
        r.deleted,
        human_bytes(r.deleted_bytes),
        r.kept_young,
        r.restored,
        r.evicted_entries,
        r.evicted_objects,
        human_bytes(r.evicted_bytes),
        r.staging_removed,
        human_bytes(r.bytes_after),
    );
}

pub fn print_doctor(root: &Path, r: &cas::DoctorReport) {
    println!("store:        {}", root.display());
    println!(
        "filesystem:   {} (magic {}){}",
        r.fs.fs_type,
        r.fs.magic,
        if r.fs.network {
            ", network/FUSE"
        } else {
            ", local"
        }
    );
    println!(
        "publishing:   {}",
        if r.fs.rename_noreplace {
            "renameat2(RENAME_NOREPLACE)"
        } else {
            "link() + unlink()"
        }
    );
    println!(
        "large reads:  {}",
        if r.fs.mmap_reads {
            "memory-mapped"
        } else {
            "read() (no mmap)"
        }
    );
    for p in &r.probes {
        println!(
            "probe {:30} {} — {}",
            p.name,
            if p.ok { "ok  " } else { "NO  " },
            p.detail
        );
    }
    for p in &r.permission_problems {
        println!("permissions  {}: {}", p.path.display(), p.reason);
    }
    for p in &r.stale_staging {
        println!("staging      {}: {}", p.path.display(), p.reason);
    }
    for p in &r.expired_locks {
        println!("lock         {}: {}", p.path.display(), p.reason);
    }
    for d in &r.dangling {
        println!("dangling     {} (pointed to by {})", d.hash, d.from);
    }
    for f in &r.fixed {
        println!("fixed        {f}");
    }
    println!(
        "{}",
        if r.is_healthy() {
            "healthy"
        } else {
            "problems found (cas doctor --fix repairs what is safe)"
        }
    );
}

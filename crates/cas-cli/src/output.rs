//! Output helpers: atomic output files, human sizes, broken pipes.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `path` atomically: `fill` writes into a temp file beside `path`, which is renamed
/// into place only if `fill` succeeds. On failure `path` is left untouched and the temp file
/// removed.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> cas::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    {
        let mut w = io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Regular file permissions per the umask, not tempfile's private 0600.
    let mode = 0o666 & !cas_umask();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
    .with_context(|| format!("cannot set permissions of {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename the output into place at {}", path.display()))?;
    Ok(())
}

fn cas_umask() -> u32 {
    // Read from /proc to avoid an unsafe umask() call in the CLI; default to 022.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

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
    for h in &r.restored {
        println!("restored {h} from trash (it is reachable)");
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
        if r.restored.is_empty() {
            String::new()
        } else {
            format!(", {} restored from trash", r.restored.len())
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
    for p in &r.damaged {
        println!("damaged      {}: {}", p.path.display(), p.reason);
    }
    for h in &r.reachable_in_trash {
        println!("in trash     {h} is reachable (cas doctor --fix moves it back)");
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

//! One renderer for every report the commands print: each report type says here what it
//! looks like to a person and as JSON, and [`print`] / [`line`] choose between the two by
//! `--json` — the only place that does. The commands decide what to report and the exit
//! status; what they print on stderr (warnings, errors) is theirs.

use std::io::{self, Write};
use std::path::Path;

use cas::{Hash, Store};
use serde_json::{json, Value};

use crate::output::{human_bytes, human_time};

/// A report with a human form (lines) and a JSON form (one object).
pub trait Report {
    /// The lines a person reads (possibly none: the exit status says it all).
    fn human(&self, out: &mut dyn Write) -> io::Result<()>;
    /// The one JSON object.
    fn json(&self) -> Value;
    /// The JSON object as text: [`Report::json`]'s, unless the report keeps its fields in
    /// its own order (a `serde_json::Value` sorts them).
    fn json_text(&self) -> String {
        self.json().to_string()
    }
}

/// Writes `r` to `out` in the form `--json` asks for (a line of a listing).
pub fn line(out: &mut dyn Write, json: bool, r: &dyn Report) -> io::Result<()> {
    if json {
        writeln!(out, "{}", r.json_text())
    } else {
        r.human(out)
    }
}

/// Prints `r` on stdout in the form `--json` asks for, with [`outln!`](crate::outln)'s
/// rules for a closed pipe or a failed write.
pub fn print(json: bool, r: &dyn Report) {
    let mut buf = Vec::new();
    // Writing into memory cannot fail.
    let _ = line(&mut buf, json, r);
    if !buf.is_empty() {
        crate::output::write_stdout(&buf);
    }
}

/// Streams reports on stdout as a library walk meets them (one in memory at a time):
/// `walk` is given `emit`, which prints one; a failed write stops the walk
/// ([`cas::Error::Interrupted`]) and is the error returned.
pub fn stream(
    json: bool,
    walk: impl FnOnce(&mut dyn FnMut(&dyn Report) -> cas::Result<()>) -> cas::Result<()>,
) -> anyhow::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut write_error = None;
    let walked = walk(&mut |r| {
        line(&mut out, json, r).map_err(|e| {
            write_error = Some(e);
            cas::Error::Interrupted
        })
    });
    if let Some(e) = write_error {
        return Err(e.into());
    }
    walked?;
    out.flush()?;
    Ok(())
}

/// A report that only `--json` prints (a set, a removal: the human form is the exit status).
pub struct JsonOnly(pub Value);

impl Report for JsonOnly {
    fn human(&self, _: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
    fn json(&self) -> Value {
        self.0.clone()
    }
}

/// A hash, alone on its line for a person (`put`, `key put`, `ref get`), with the facts
/// beside it in JSON.
pub struct HashLine(pub Hash, pub Value);

impl Report for HashLine {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.0)
    }
    fn json(&self) -> Value {
        self.1.clone()
    }
}

/// `cas init`'s result: the store's path, and whether this call created it.
pub struct Init<'a> {
    pub store: &'a Path,
    pub created: bool,
}

impl Report for Init<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.store.display())
    }
    fn json(&self) -> Value {
        json!({ "store": self.store, "created": self.created })
    }
}

/// `cas verify`.
pub struct Verify<'a>(pub &'a Store, pub &'a cas::VerifyReport);

impl Report for Verify<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        verify_human(out, self.1)
    }
    fn json(&self) -> Value {
        let v = serde_json::to_value(self.1).unwrap_or(Value::Null);
        json_with(v, self.0, &[("clean", self.1.is_clean().into())])
    }
}

/// `cas gc`.
pub struct Gc<'a>(pub &'a Store, pub &'a cas::GcReport);

impl Report for Gc<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        gc_human(out, self.1)
    }
    fn json(&self) -> Value {
        json_with(
            serde_json::to_value(self.1).unwrap_or(Value::Null),
            self.0,
            &[],
        )
    }
}

/// `cas doctor`.
pub struct Doctor<'a>(pub &'a Store, pub &'a cas::DoctorReport);

impl Report for Doctor<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        doctor_human(out, self.0.root(), self.1)
    }
    fn json(&self) -> Value {
        let v = serde_json::to_value(self.1).unwrap_or(Value::Null);
        json_with(v, self.0, &[("healthy", self.1.is_healthy().into())])
    }
}

/// `cas push` / `cas pull`.
pub struct Transfer<'a> {
    pub src: &'a Store,
    pub dst: &'a Store,
    pub report: &'a cas::TransferReport,
}

impl Report for Transfer<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.report;
        writeln!(
            out,
            "{} objects: {} copied ({}), {} already there; refs set: {}; keys set: {}",
            r.objects,
            r.objects_copied,
            human_bytes(r.bytes_copied),
            r.objects_skipped,
            r.refs_set.len(),
            r.keys_set.len()
        )
    }
    fn json(&self) -> Value {
        let mut v = serde_json::to_value(self.report).unwrap_or(Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.insert("source".into(), json!(self.src.root()));
            m.insert("dest".into(), json!(self.dst.root()));
            m.insert("complete".into(), self.report.is_complete().into());
        }
        v
    }
}

/// `cas stats`: the store's usage and configuration.
pub struct Stats<'a>(pub &'a Store, pub &'a cas::Usage);

impl Report for Stats<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let (store, u) = (self.0, self.1);
        writeln!(out, "store:       {}", store.root().display())?;
        for a in &u.areas {
            if a.files > 0 || a.name == "objects" {
                writeln!(
                    out,
                    "{:<12} {:>10} files {:>12}",
                    format!("{}:", a.name),
                    a.files,
                    human_bytes(a.bytes)
                )?;
            }
        }
        writeln!(
            out,
            "{:<12} {:>10} files {:>12}",
            "total:",
            u.files,
            human_bytes(u.bytes)
        )?;
        writeln!(
            out,
            "{:<12} {:>22} (objects, trash and quarantine: what gc reports and a budget limits)",
            "counted:",
            human_bytes(u.counted_bytes)
        )?;
        if let Some(b) = u.max_size {
            writeln!(out, "budget:      {} (gc evicts to it)", human_bytes(b))?;
        }
        writeln!(out, "durability:  {}", store.durability())?;
        if let Some(up) = store.upstream() {
            let ro = if store.upstream_readonly() {
                " (read-only)"
            } else {
                ""
            };
            writeln!(out, "upstream:    {}{ro}", up.location().display())?;
        }
        let note = if u.fs.network {
            " (network/FUSE: no mmap, link+unlink publish)"
        } else {
            ""
        };
        writeln!(out, "filesystem:  {}{note}", u.fs.fs_type)?;
        writeln!(out, "barrier:     {}", describe_barrier(u.fs.barrier))
    }
    fn json(&self) -> Value {
        let (store, u) = (self.0, self.1);
        // `fs` is the same object as in `cas doctor --json`; `objects`/`bytes` are the
        // objects area, `total_bytes` everything under the store.
        json!({
            "store": store.root(),
            "objects": u.objects(),
            "bytes": u.object_bytes(),
            "total_files": u.files,
            "total_bytes": u.bytes,
            "counted_bytes": u.counted_bytes,
            "areas": u.areas,
            "durability": store.durability().to_string(),
            "shared_group": store.options().shared_group,
            "max_size": u.max_size,
            "fs": u.fs,
            "unreadable": u.unreadable,
            "upstream": store.upstream().map(cas::Upstream::location),
            "upstream_readonly": store.upstream_readonly(),
        })
    }
}

/// One object of `cas ls`: its hash, and with `-l` or `--json` its size, last use and (with
/// `-l`) kind.
pub struct LsItem {
    pub hash: Hash,
    pub size: u64,
    pub time: u64,
    pub kind: Option<&'static str>,
}

impl Report for LsItem {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        match self.kind {
            Some(kind) => writeln!(
                out,
                "{} {:>12} {} {kind}",
                self.hash,
                self.size,
                human_time(self.time)
            ),
            None => writeln!(out, "{}", self.hash),
        }
    }
    fn json(&self) -> Value {
        let (h, len, secs) = (self.hash, self.size, self.time);
        match self.kind {
            Some(kind) => json!({ "hash": h, "size": len, "time": secs, "kind": kind }),
            None => json!({ "hash": h, "size": len, "time": secs }),
        }
    }
}

/// `cas show` of a blob.
pub struct Blob {
    pub hash: Hash,
    pub size: u64,
}

impl Report for Blob {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "blob {} {}", self.hash, self.size)
    }
    fn json(&self) -> Value {
        json!({ "hash": self.hash, "kind": "blob", "size": self.size })
    }
}

/// One line of `cas show` for a tree entry (`git ls-tree -r -t`'s columns).
pub struct TreeLine<'a>(pub &'a Path, pub &'a cas::TreeEntry);

impl Report for TreeLine<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let (path, e) = (self.0, self.1);
        // Control characters escaped as `key ls` does: one entry is one line.
        let p = path.to_string_lossy();
        let p = p.escape_debug();
        match &e.kind {
            cas::TreeEntryKind::File {
                executable,
                size,
                hash,
            } => {
                let mode = match e.mode {
                    Some(m) => format!("100{m:03o}"),
                    None if *executable => "100755".to_owned(),
                    None => "100644".to_owned(),
                };
                writeln!(out, "{mode} blob {hash} {size:>10}\t{p}")
            }
            cas::TreeEntryKind::Dir { hash } => {
                let mode = e
                    .mode
                    .map_or("040000".to_owned(), |m| format!("040{m:03o}"));
                writeln!(out, "{mode} tree {hash} {:>10}\t{p}", "-")
            }
            cas::TreeEntryKind::Symlink { target } => {
                let t = String::from_utf8_lossy(target);
                let t = t.escape_debug();
                writeln!(out, "120000 link {:<64} {:>10}\t{p} -> {t}", "-", "-")
            }
        }
    }
    fn json(&self) -> Value {
        let (path, e) = (self.0, self.1);
        let mode = e.mode.map(|m| format!("{m:04o}"));
        match &e.kind {
            cas::TreeEntryKind::File {
                executable,
                size,
                hash,
            } => json!({ "path": path, "kind": "file", "hash": hash,
                "size": size, "executable": executable, "mode": mode, "mtime_ns": e.mtime }),
            cas::TreeEntryKind::Dir { hash } => json!({ "path": path, "kind": "dir",
                "hash": hash, "mode": mode, "mtime_ns": e.mtime }),
            cas::TreeEntryKind::Symlink { target } => json!({ "path": path,
                "kind": "symlink", "target": String::from_utf8_lossy(target) }),
        }
    }
}

/// One ref of `cas ref ls`: `NAME HASH`, ended by a newline or (with `-z`) a NUL.
pub struct RefLine<'a> {
    pub name: &'a str,
    pub hash: Hash,
    pub nul: bool,
}

impl Report for RefLine<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.nul {
            write!(out, "{} {}\0", self.name, self.hash)
        } else {
            writeln!(out, "{} {}", self.name, self.hash)
        }
    }
    fn json(&self) -> Value {
        json!({ "name": self.name, "hash": self.hash })
    }
}

/// One line of `cas ref log`: OLD NEW TIME HOST USER MESSAGE.
pub struct RefLog<'a>(pub &'a cas::RefLogEntry);

impl Report for RefLog<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let e = self.0;
        let f = |h: Option<Hash>| h.map_or_else(|| "-".to_owned(), |h| h.to_string());
        writeln!(
            out,
            "{} {} {} {} {} {}",
            f(e.old),
            f(e.new),
            human_time(e.time),
            e.host,
            e.user,
            e.message
        )
    }
    fn json(&self) -> Value {
        serde_json::to_value(self.0).unwrap_or(Value::Null)
    }
    /// In the entry's field order (old, new, time, host, user, message), as written before
    /// the renderer existed.
    fn json_text(&self) -> String {
        serde_json::to_string(self.0).unwrap_or_else(|_| self.json().to_string())
    }
}

/// A cache entry in JSON, the same for `key info` and `key ls`: `time` in Unix seconds as in
/// `ref log`, `time_ms` as stored.
fn entry_json(e: &cas::Entry) -> Value {
    json!({
        "key": String::from_utf8_lossy(&e.key),
        "hash": e.hash,
        "size": e.size,
        "time": e.time_ms / 1000,
        "time_ms": e.time_ms,
        "metadata": String::from_utf8_lossy(&e.metadata),
    })
}

/// `cas key info`: the entry, one fact a line.
pub struct KeyInfo<'a>(pub &'a cas::Entry);

impl Report for KeyInfo<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let e = self.0;
        writeln!(out, "hash:     {}", e.hash)?;
        writeln!(out, "size:     {} ({})", e.size, human_bytes(e.size))?;
        writeln!(out, "time:     {}", human_time(e.time_ms / 1000))?;
        writeln!(out, "metadata: {}", String::from_utf8_lossy(&e.metadata))
    }
    fn json(&self) -> Value {
        entry_json(self.0)
    }
}

/// One entry of `cas key ls`: HASH SIZE KEY, the key escaped, or verbatim and NUL-ended
/// with `-z`.
pub struct KeyLine<'a> {
    pub entry: &'a cas::Entry,
    pub nul: bool,
}

impl Report for KeyLine<'_> {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        let e = self.entry;
        if self.nul {
            write!(out, "{} {} ", e.hash, e.size)?;
            out.write_all(&e.key)?;
            out.write_all(b"\0")
        } else {
            let key = String::from_utf8_lossy(&e.key);
            writeln!(out, "{} {} {}", e.hash, e.size, key.escape_debug())
        }
    }
    fn json(&self) -> Value {
        entry_json(self.entry)
    }
}

/// A report as JSON with the store's path and extra fields (`clean`, `healthy`) added, so
/// every command names the same facts the same way.
pub(crate) fn json_with(
    mut v: serde_json::Value,
    store: &cas::Store,
    extra: &[(&str, serde_json::Value)],
) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("store".into(), serde_json::json!(store.root()));
        for (k, x) in extra {
            m.insert((*k).into(), x.clone());
        }
    }
    v
}

fn verify_human(out: &mut dyn Write, r: &cas::VerifyReport) -> io::Result<()> {
    for c in &r.corrupt {
        match &c.quarantined {
            Some(q) => writeln!(
                out,
                "corrupt {}: {}; moved to {}",
                c.hash,
                c.reason,
                q.display()
            )?,
            None => writeln!(out, "corrupt {}: {}", c.hash, c.reason)?,
        }
    }
    for d in &r.dangling {
        writeln!(out, "missing {} (pointed to by {})", d.hash, d.from)?;
    }
    for p in &r.bad_files {
        writeln!(out, "unreadable {}: {}", p.path.display(), p.reason)?;
    }
    for h in &r.restored {
        writeln!(out, "restored {h} from trash (it is reachable)")?;
    }
    for p in &r.stale_staging {
        writeln!(
            out,
            "stale staging file {} ({}); `cas gc` removes it",
            p.path.display(),
            p.reason
        )?;
    }
    writeln!(
        out,
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
    )?;
    Ok(())
}

fn gc_human(out: &mut dyn Write, r: &cas::GcReport) -> io::Result<()> {
    let verb = if r.dry_run { "would " } else { "" };
    if r.dry_run {
        for h in &r.condemned {
            writeln!(out, "would trash {h}")?;
        }
    }
    writeln!(
        out,
        "gc: {} roots, {} reachable, {} objects ({}) scanned; {verb}trash {} ({}), {verb}delete {} ({}), {} kept as young, {} restored, {verb}evict {} entries and {} objects ({}), {verb}remove {} staging files, {verb}purge {} quarantined files ({}); {} in the store after (objects, trash and {} quarantined files of {})",
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
        r.quarantine_purged,
        human_bytes(r.quarantine_purged_bytes),
        human_bytes(r.bytes_after),
        r.quarantine_files,
        human_bytes(r.quarantine_bytes),
    )?;
    Ok(())
}

/// A duration as a person writes it: `0s`, `90s`, `15min`, `1h`, `2d` (the largest unit
/// that divides it; the form `--grace` accepts).
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3600), ("min", 60)] {
        if s > 0 && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// A budget gc could not meet, and what holds the bytes, in one line.
pub fn budget_unmet(b: &cas::BudgetUnmet, grace: std::time::Duration) -> String {
    let mut held = Vec::new();
    for (bytes, what) in [
        (b.held_by_refs, "objects refs reach (move or remove the refs)".to_owned()),
        (b.held_by_pins, "objects of updates in progress".to_owned()),
        (
            b.held_young,
            format!(
                "objects and cache entries used within the grace period of {} (`--grace 0s` evicts them)",
                human_duration(grace)
            ),
        ),
        (
            b.held_quarantine,
            "quarantined files kept for inspection for the grace period".to_owned(),
        ),
    ] {
        if bytes > 0 {
            held.push(format!("{} by {what}", human_bytes(bytes)));
        }
    }
    format!(
        "the size budget of {} is not met: {} in the store after gc, held: {}",
        human_bytes(b.budget),
        human_bytes(b.bytes_after),
        held.join("; ")
    )
}

/// How a store makes staged bytes durable, in words.
pub fn describe_barrier(b: cas::Barrier) -> &'static str {
    match b {
        cas::Barrier::Syncfs => "syncfs per batch, fdatasync per single object",
        _ => "fdatasync of every object (syncfs does not reach stable storage here)",
    }
}

fn doctor_human(out: &mut dyn Write, root: &Path, r: &cas::DoctorReport) -> io::Result<()> {
    if let Some(o) = &r.foreign_owner {
        // First: it explains most of what follows.
        writeln!(out, "owner:        {o}")?;
    }
    writeln!(out, "store:        {}", root.display())?;
    writeln!(
        out,
        "filesystem:   {} (magic {}){}",
        r.fs.fs_type,
        r.fs.magic,
        if r.fs.network {
            ", network/FUSE"
        } else {
            ", local"
        }
    )?;
    writeln!(out, "barrier:      {}", describe_barrier(r.fs.barrier))?;
    writeln!(
        out,
        "publishing:   {}",
        if r.fs.rename_noreplace {
            "renameat2(RENAME_NOREPLACE)"
        } else {
            "link() + unlink()"
        }
    )?;
    writeln!(
        out,
        "large reads:  {}",
        if r.fs.mmap_reads {
            "memory-mapped"
        } else {
            "read() (no mmap)"
        }
    )?;
    for p in &r.probes {
        writeln!(
            out,
            "probe {:30} {} — {}",
            p.name,
            if p.ok { "ok  " } else { "NO  " },
            p.detail
        )?;
    }
    // Each kind of problem once, with a count: one cause (another user's store, a bad
    // umask) gives hundreds of identical findings.
    for g in &r.summary {
        if g.count == 1 {
            writeln!(out, "{:<12} {}: {}", g.kind, g.example, g.reason)?;
        } else {
            writeln!(
                out,
                "{:<12} {} × {} (the first: {})",
                g.kind, g.count, g.reason, g.example
            )?;
        }
    }
    for f in &r.fixed {
        writeln!(out, "fixed        {f}")?;
    }
    writeln!(
        out,
        "{}",
        match (r.is_healthy(), &r.foreign_owner) {
            (true, _) => "healthy".to_owned(),
            (false, Some(o)) => format!(
                "problems found; {o}: only its owner (or root) can repair them with `cas doctor --fix`"
            ),
            (false, None) => "problems found (cas doctor --fix repairs what is safe)".to_owned(),
        }
    )?;
    Ok(())
}

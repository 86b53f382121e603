//! Looking at the store: `cas show`, `ls`, `has` and `stats`.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use cas::{Hash, Store};

use crate::args::HashArg;
use crate::render;
use crate::{exit, output};

pub(crate) fn show(store: &Store, hash: &HashArg, json: bool) -> Result<ExitCode> {
    let hash = &hash.resolve(store)?;
    // The reader first: through a tier it fetches the object (object_len only looks here).
    let mut r = store.reader(hash)?;
    let size = r.len()?;
    let is_tree = cas::Tree::sniff(&mut r).context("read the object")?;
    if !is_tree {
        render::print(json, &render::Blob { hash: *hash, size });
        return Ok(ExitCode::SUCCESS);
    }
    // Printed as the walk meets each entry (memory: the trees on the current path and one
    // number per distinct tree), after a pass that checks the tree's budgets: a tree bomb
    // fails before anything is printed.
    render::stream(json, |emit| {
        store.walk_tree_entries(hash, &cas::TreeLimits::default(), |path, entry| {
            emit(&render::TreeLine(path, entry))
        })
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What `cas ls` lists and how.
pub(crate) struct LsFilter {
    pub(crate) long: bool,
    pub(crate) prefix: String,
    pub(crate) older_than: Option<Duration>,
    pub(crate) newer_than: Option<Duration>,
}

/// An object `ls` lists, with its size and last use when they are wanted.
type LsItem = cas::Result<(Hash, Option<(u64, SystemTime)>)>;

pub(crate) fn ls(store: &Store, f: &LsFilter, json: bool) -> Result<ExitCode> {
    // In hash order (listings compare and diff), streamed one fan-out directory at a time by
    // the library. Size and time come from one `fstatat` each; only `-l` opens an object,
    // to read whether it is a tree.
    let now = std::time::SystemTime::now();
    let by_age = f.older_than.is_some() || f.newer_than.is_some();
    let mut ok = true;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let listed: Box<dyn Iterator<Item = LsItem>> = if json || by_age || f.long {
        Box::new(
            store
                .iter_ordered_meta()
                .map(|m| m.map(|m| (m.hash, Some((m.len, m.mtime))))),
        )
    } else {
        Box::new(store.iter_ordered().map(|h| h.map(|h| (h, None))))
    };
    for item in listed {
        // A fan-out name that is not a directory is reported; the listing goes on.
        let (h, meta) = match item {
            Ok(x) => x,
            Err(e) => {
                eprintln!("cas: error: {}", output::chain(&e));
                ok = false;
                continue;
            }
        };
        let mut buf = [0u8; cas::HEX_LEN];
        if !h.to_hex_buf(&mut buf).starts_with(&f.prefix) {
            continue;
        }
        if let Some((_, mtime)) = meta {
            let age = now.duration_since(mtime).unwrap_or_default();
            if f.older_than.is_some_and(|d| age < d) || f.newer_than.is_some_and(|d| age > d) {
                continue;
            }
        }
        let (size, mtime, kind) = match meta {
            None => (0, std::time::UNIX_EPOCH, None),
            Some((len, mtime)) if !f.long => (len, mtime, None),
            Some(_) => match store.object_info(&h) {
                Ok(i) => (
                    i.len,
                    i.mtime,
                    Some(if i.is_tree { "tree" } else { "blob" }),
                ),
                Err(e) if e.is_not_found() => continue, // removed meanwhile
                Err(e) => {
                    eprintln!("cas: error: {}", output::chain(&e));
                    ok = false;
                    continue;
                }
            },
        };
        let time = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let item = render::LsItem {
            hash: h,
            size,
            time,
            kind,
        };
        render::line(&mut out, json, &item)?;
    }
    out.flush()?;
    Ok(exit(ok))
}

pub(crate) fn has(store: &Store, hashes: &[HashArg], json: bool) -> Result<ExitCode> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut all = true;
    for arg in hashes {
        // A prefix no object starts with is missing; an ambiguous one is an error.
        let found = match store.find_prefix(&arg.0) {
            Ok(h) => h.filter(|h| store.contains(h)),
            Err(e) if e.kind() == cas::ErrorKind::InvalidInput => return Err(e.into()),
            Err(_) => None,
        };
        let present = found.is_some();
        all &= present;
        if !json && !present {
            eprintln!("cas: missing {}", arg.0);
        }
        let hash = found.map_or_else(|| arg.0.clone(), |h| h.to_string());
        let v = serde_json::json!({ "hash": hash, "present": present });
        render::line(&mut out, json, &render::JsonOnly(v))?;
    }
    out.flush()?;
    Ok(exit(all))
}

pub(crate) fn stats(store: &Store, json: bool) -> Result<ExitCode> {
    let u = store.usage()?;
    render::print(json, &render::Stats(store, &u));
    if !json {
        // With --json they are the report's `unreadable`.
        for (p, why) in &u.unreadable {
            eprintln!("cas: warning: cannot list {}: {why}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

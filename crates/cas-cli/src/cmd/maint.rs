//! Maintenance: `cas gc`, `verify`, `doctor` and `rm`.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use cas::{Hash, Store};
use serde_json::json;

use crate::args::HashArg;
use crate::render::{self, JsonOnly};
use crate::{exit, output};

pub(crate) fn gc(store: &Store, opts: &cas::GcOptions, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("gc");
    let r = store.gc(opts, &|p| bar.update(p))?;
    bar.finish();
    render::print(json, &render::Gc(store, &r));
    for p in &r.problems {
        eprintln!("cas: damaged: {}: {}", p.path.display(), p.reason);
    }
    if let Some(why) = &r.sweep_skipped {
        eprintln!("cas: gc condemned and deleted nothing: {why}");
    }
    // A budget gc could not meet is a warning, not a failure: gc did all it may (what holds
    // the bytes is not its to remove); docs/decisions.md.
    if let Some(b) = &r.budget_unmet {
        eprintln!("cas: warning: {}", render::budget_unmet(b, opts.grace));
    }
    Ok(exit(r.is_clean()))
}

pub(crate) fn verify(store: &Store, json: bool) -> Result<ExitCode> {
    let bar = output::Bar::new("verify");
    let r = store.verify(&|p| bar.update(p))?;
    bar.finish();
    render::print(json, &render::Verify(store, &r));
    Ok(exit(r.is_clean()))
}

pub(crate) fn doctor(store: &Store, fix: bool, json: bool) -> Result<ExitCode> {
    let r = store.doctor(fix)?;
    render::print(json, &render::Doctor(store, &r));
    Ok(exit(r.is_healthy()))
}

/// `cas rm`: with --json one line per input, in order, as `put` does: `{input, hash,
/// removed}` or `{input, error}`.
pub(crate) fn rm(store: &Store, args: &[HashArg], force: bool, json: bool) -> Result<ExitCode> {
    let mut ok = true;
    let opts = cas::RemoveOptions::default().force(force);
    let mut out = io::BufWriter::new(io::stdout().lock());
    // Prefixes resolved first; one that resolves to nothing is that input's failure.
    let resolved: Vec<Result<Hash, String>> = args
        .iter()
        .map(|a| store.resolve_prefix(&a.0).map_err(|e| output::chain(&e)))
        .collect();
    let hashes: Vec<Hash> = resolved.iter().filter_map(|r| r.clone().ok()).collect();
    let mut removed = store.remove_all_with(&hashes, &opts).into_iter();
    for (arg, r) in args.iter().zip(resolved) {
        let r = r.and_then(|h| {
            removed
                .next()
                .expect("one result per hash")
                .map(|()| h)
                .map_err(|e| output::chain(&e))
        });
        let line = match r {
            Ok(h) => json!({ "input": arg.0, "hash": h, "removed": true }),
            Err(msg) => {
                eprintln!("cas: error: {msg}");
                ok = false;
                json!({ "input": arg.0, "error": msg })
            }
        };
        render::line(&mut out, json, &JsonOnly(line))?;
    }
    out.flush()?;
    Ok(exit(ok))
}

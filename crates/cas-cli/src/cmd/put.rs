//! `cas put`: files, stdin and (with -r) directories into the store, one hash per input.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use cas::{Hash, Store};
use serde_json::json;

use crate::output;
use crate::render::{self, HashLine, JsonOnly};

pub(crate) fn run(
    store: &Store,
    files: &[PathBuf],
    recursive: Option<&cas::PutDirOptions>,
    ref_name: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    // One line per input: its hash, or with --json `{input, hash}`; with --json a failed
    // input has its line too, `{input, error}`.
    let stored = |f: &Path, h: Hash| HashLine(h, json!({ "input": f, "hash": h }));
    let failure = |f: &Path, e: &str| JsonOnly(json!({ "input": f, "error": e }));
    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    let stdout = io::stdout();
    let put_one = |f: &Path| -> Result<Hash> {
        Ok(if f == Path::new("-") {
            store.put_reader(io::stdin().lock())?
        } else if let (Some(opts), true) = (recursive, f.is_dir()) {
            let (hash, report) = put_tree(store, f, opts)?;
            if let Some(w) = &report.cache_warning {
                eprintln!("cas: warning: {w}");
            }
            warn_external_symlinks(f, &report);
            warn_skipped_special(f, &report);
            hash
        } else if f.is_dir() {
            anyhow::bail!(
                "{} is a directory (use -r to store it as a tree)",
                f.display()
            )
        } else {
            store.put_path(f)?
        })
    };
    // One rule for partial failure: every good input is stored and its hash printed, in
    // input order; each bad one is named on stderr; the exit status is then 1.
    let mut last = None;
    let mut failed = 0usize;
    let mut report = |f: &Path, e: String| {
        failed += 1;
        eprintln!("cas: error: {}: {e}", f.display());
        e
    };
    if recursive.is_some() {
        for f in files {
            // One line per input as soon as it is stored, so a pipeline sees progress.
            let put = put_one(f);
            let mut lock = stdout.lock();
            match put {
                Ok(hash) => {
                    last = Some((f.as_path(), hash));
                    render::line(&mut lock, json, &stored(f, hash))?;
                }
                Err(e) => {
                    let e = report(f, format!("{e:#}"));
                    render::line(&mut lock, json, &failure(f, &e))?;
                }
            }
            lock.flush()?;
        }
    } else {
        // Plain files: one durability barrier for all of them (docs/performance.md).
        let results = put_batch(store, files, &mut report)?;
        let mut out = io::BufWriter::new(stdout.lock());
        for (f, r) in &results {
            match r {
                Ok(h) => {
                    last = Some((*f, *h));
                    render::line(&mut out, json, &stored(f, *h))?;
                }
                Err(e) => render::line(&mut out, json, &failure(f, e))?,
            }
        }
        out.flush()?;
    }
    if failed > 0 {
        // A ref is only moved when everything it stands for was stored.
        if ref_name.is_some() {
            eprintln!("cas: the ref was not moved: {failed} input(s) failed");
        }
        return Ok(ExitCode::FAILURE);
    }
    if let (Some(name), Some((f, hash))) = (ref_name, last) {
        // A stream cannot be read twice: only a file is put again if a gc took the object.
        let mut reput = || -> cas::Result<Hash> {
            put_one(f).map_err(|e| cas::Error::InvalidInput {
                what: "input",
                reason: format!("{e:#}"),
            })
        };
        let reput: Option<&mut dyn FnMut() -> cas::Result<Hash>> =
            (f != Path::new("-")).then_some(&mut reput);
        store.set_ref_after_put(name, hash, "put", reput)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `put -r`'s options from its flags.
pub(crate) fn put_dir_options(
    no_cache: bool,
    keep_mtime: bool,
    skip_special: bool,
) -> cas::PutDirOptions {
    cas::PutDirOptions::default()
        .stat_cache(!no_cache)
        .keep_mtime(keep_mtime)
        .skip_special(skip_special)
}

/// Plain files (and stdin) stored as one batch: one result per input, in order; `report`
/// names a failure on stderr and returns its message.
fn put_batch<'a>(
    store: &Store,
    files: &'a [PathBuf],
    report: &mut impl FnMut(&Path, String) -> String,
) -> Result<Vec<(&'a Path, Result<Hash, String>)>> {
    let mut batch = store.batch();
    let bar = put_bar(files, &mut batch);
    let mut results = Vec::new();
    for f in files {
        let r = if f == Path::new("-") {
            batch.put_reader(io::stdin().lock())
        } else if f.is_dir() {
            let e = report(
                f,
                "is a directory (use -r to store it as a tree)".to_owned(),
            );
            results.push((f.as_path(), Err(e)));
            continue;
        } else {
            batch.put_path(f)
        };
        let r = r.map_err(|e| report(f, output::chain(&e)));
        results.push((f.as_path(), r));
    }
    batch.commit()?;
    bar.finish();
    Ok(results)
}

/// Bytes and rate of a put on a terminal; the total is known before the bar starts unless
/// stdin is among the inputs.
fn put_bar(files: &[PathBuf], batch: &mut cas::Batch) -> output::Bar {
    let total = files.iter().try_fold(0u64, |t, f| {
        std::fs::metadata(f)
            .ok()
            .filter(|m| m.is_file() && f != Path::new("-"))
            .map(|m| t + m.len())
    });
    let bar = output::Bar::bytes("put", total);
    if let Some(b) = bar.handle() {
        batch.set_progress(move |p| {
            b.set_position(p.done);
            true
        });
    }
    bar
}

/// `put -r` of one directory, with a bar of bytes and rate (no total: counting first would
/// walk the tree twice).
fn put_tree(
    store: &Store,
    dir: &Path,
    opts: &cas::PutDirOptions,
) -> cas::Result<(Hash, cas::PutDirReport)> {
    let bar = output::Bar::bytes("put -r", None);
    let with_bar = bar.handle().map(|b| {
        opts.clone().progress(move |p| {
            b.set_position(p.done);
            true
        })
    });
    let put = store.put_dir_with(dir, with_bar.as_ref().unwrap_or(opts));
    bar.finish();
    put
}

/// `put -r` stored symlinks that point outside the tree: say so once, with an example.
fn warn_external_symlinks(dir: &Path, report: &cas::PutDirReport) {
    if let Some((link, target)) = &report.example {
        eprintln!(
            "cas: warning: {} symlink(s) in {} point outside it (e.g. {} -> {}); \
             `cas get -r` refuses to restore them unless --allow-external-symlinks",
            report.external_symlinks,
            dir.display(),
            link.display(),
            target.display()
        );
    }
}

/// `put -r --skip-special` left special files out: one line, with their count and an example.
fn warn_skipped_special(dir: &Path, report: &cas::PutDirReport) {
    if let Some(example) = &report.skipped_example {
        eprintln!(
            "cas: warning: skipped {} special file(s) (FIFOs, sockets, devices) in {}, e.g. {}",
            report.skipped_special,
            dir.display(),
            example.display()
        );
    }
}

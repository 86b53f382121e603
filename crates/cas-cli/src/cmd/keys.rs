//! `cas key`: keyed cache entries (`key ensure` is [`super::ensure`]).

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use cas::{Expect, Hash, Store};
use serde_json::json;

use super::{ensure, get};
use crate::args::{self, KeyCmd};
use crate::render::{self, HashLine, JsonOnly, KeyInfo, KeyLine};
use crate::{exit, hooks, output};

pub(crate) fn run(store: &Store, c: KeyCmd, json: bool) -> Result<ExitCode> {
    match c {
        KeyCmd::Put {
            key,
            file: Some(dir),
            recursive: true,
            meta,
        } => {
            let tree = store.put_dir(&dir)?;
            store.set_keyed(key.as_bytes(), tree, meta.as_bytes(), Expect::Any)?;
            render::print(json, &HashLine(tree, json!({ "key": key, "hash": tree })));
        }
        KeyCmd::Put {
            recursive: true, ..
        } => return Err(anyhow!("key put -r needs a directory")),
        KeyCmd::Set {
            key,
            hash,
            meta,
            expect,
            expect_none,
        } => {
            let expect = args::expect(expect, expect_none);
            let hash = hash.resolve(store)?;
            hooks::barrier();
            return key_set(store, &key, hash, &meta, expect, json);
        }
        KeyCmd::Ensure {
            key,
            output,
            timeout,
            tree,
            allow_external_symlinks,
            meta,
            cmd,
        } => {
            return ensure::run(
                store,
                &ensure::Ensure {
                    key: &key,
                    output: output.as_deref(),
                    timeout,
                    tree,
                    allow_external_symlinks,
                    meta: &meta,
                    cmd: &cmd,
                    json,
                },
            )
        }
        KeyCmd::Put {
            key, file, meta, ..
        } => {
            let hash = match file {
                Some(f) if f != Path::new("-") => {
                    let src = std::fs::File::open(&f)
                        .with_context(|| format!("cannot open {}", f.display()))?;
                    store.put_keyed(key.as_bytes(), src, meta.as_bytes())?
                }
                _ => store.put_keyed(key.as_bytes(), io::stdin().lock(), meta.as_bytes())?,
            };
            render::print(json, &HashLine(hash, json!({ "key": key, "hash": hash })));
        }
        KeyCmd::Get { key, output } => {
            let got = store
                .entry(key.as_bytes())
                .map_err(anyhow::Error::from)
                .and_then(|entry| get::write_object(store, &entry.hash, output.as_deref()));
            return got
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| damaged_hint(e, &key));
        }
        KeyCmd::Info { key } => {
            let e = store.entry(key.as_bytes())?;
            render::print(json, &KeyInfo(&e));
        }
        KeyCmd::Rm { key } => key_rm(store, &key, json)?,
        KeyCmd::Ls { nul } => return key_ls(store, nul, json),
    }
    Ok(ExitCode::SUCCESS)
}

/// `cas key set`: a lost compare-and-swap is a negative answer (exit 1), not an error.
fn key_set(
    store: &Store,
    key: &str,
    hash: Hash,
    meta: &str,
    expect: Expect,
    json: bool,
) -> Result<ExitCode> {
    match store.set_keyed(key.as_bytes(), hash, meta.as_bytes(), expect) {
        Ok(old) => {
            render::print(
                json,
                &JsonOnly(json!({ "key": key, "hash": hash, "old": old })),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_conflict() => {
            eprintln!("cas: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

fn key_rm(store: &Store, key: &str, json: bool) -> Result<()> {
    store.remove_keyed(key.as_bytes())?;
    render::print(json, &JsonOnly(json!({ "key": key, "removed": true })));
    Ok(())
}

/// `cas key ls`: sorted by key; damaged entries are named on stderr (exit 1).
fn key_ls(store: &Store, nul: bool, json: bool) -> Result<ExitCode> {
    let mut ok = true;
    let mut entries = Vec::new();
    for e in store.iter_keys()? {
        match e {
            Ok(e) => entries.push(e),
            Err(e) => {
                eprintln!("cas: error: {}", output::chain(&e));
                ok = false;
            }
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = io::BufWriter::new(io::stdout().lock());
    for entry in &entries {
        render::line(&mut out, json, &KeyLine { entry, nul })?;
    }
    out.flush()?;
    Ok(exit(ok))
}

/// A `key get` that failed on a damaged entry (undecodable, or its object missing or
/// corrupt) says what heals it: `key get` has nothing to rebuild with.
fn damaged_hint(e: anyhow::Error, key: &str) -> anyhow::Error {
    let damaged = e.downcast_ref::<cas::Error>().is_some_and(|c| {
        matches!(
            c,
            cas::Error::NotFound { .. } | cas::Error::Corrupt { .. } | cas::Error::Malformed { .. }
        )
    });
    if !damaged {
        return e;
    }
    let k = shell_word(key);
    e.context(format!(
        "cache entry {key:?} is damaged; `cas key ensure {k} -- CMD` computes it again, \
         `cas key rm {k}` drops it"
    ))
}

/// `s` as one shell word: as is if it needs no quoting, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/=@+%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

//! Stores and their neighbours: `cas init` (with its upstream), `push` and `pull`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use cas::{Create, Hash, Options, Store};

use crate::args::{Global, TransferArgs};
use crate::exit;
use crate::open::{open_other, store_dir, with_globals};
use crate::render;

pub(crate) fn init(
    g: &Global,
    dir: Option<PathBuf>,
    force: bool,
    shared: Option<&str>,
    max_size: Option<u64>,
) -> Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => store_dir(g)?,
    };
    let o = with_globals(
        Options::default()
            .shared_group(shared == Some("group"))
            .max_size(max_size),
        g,
    );
    let existed = Store::open(&dir).is_ok();
    let create = if force {
        Create::Force
    } else {
        Create::IfMissingOrEmpty
    };
    // Without --shared, a directory prepared for a shared store (setgid, group-writable)
    // gets one: its shared mode is never silently dropped. `--shared none` is the way out.
    let made = if shared.is_none() || force {
        Store::open_or_create(&dir, o, create)
    } else {
        Store::init(&dir, o)
    };
    let store = match made {
        Ok(s) => s,
        // The library checks an upstream given at creation (a typo would otherwise surface
        // only at the first miss); nothing else in an init reaches the upstream.
        Err(cas::Error::Upstream {
            upstream,
            source: Some(cause),
            ..
        }) => {
            let up = upstream.display();
            return Err(anyhow::Error::from(*cause).context(format!(
                "the upstream {up} is not a store (create it first with `cas init {up}`)"
            )));
        }
        Err(cas::Error::NotEmpty { path, .. }) => anyhow::bail!(
            "{} exists and is not an empty directory or a store; nothing was written. \
             `cas init --force {}` adds a store beside what is there",
            path.display(),
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if !g.json {
        if existed {
            eprintln!("cas: {} is already a store; left as it is", dir.display());
        } else if shared.is_none() && store.options().shared_group {
            eprintln!(
                "cas: {} was prepared for a shared store (setgid, group-writable): made a \
                 shared (group) store; use --shared none for a private one",
                dir.display()
            );
        }
    }
    let report = render::Init {
        store: store.root(),
        created: !existed,
    };
    render::print(g.json, &report);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn transfer(
    this: &Store,
    other: &Path,
    push: bool,
    what: &TransferArgs,
    g: &Global,
) -> Result<ExitCode> {
    let other = open_other(other)?;
    let (src, dst) = if push { (this, &other) } else { (&other, this) };
    let json = g.json;
    let opts = cas::TransferOptions::default()
        .refs(what.refs.iter().cloned())
        .keys(what.keys.iter().map(|k| k.as_bytes().to_vec()))
        .all(what.all)
        .force(what.force)
        .jobs(what.jobs);
    let r = src.push_to(dst, &opts)?;
    for c in &r.conflicts {
        let f = |h: Option<Hash>| h.map_or_else(|| "absent".to_owned(), |h| h.to_string());
        eprintln!(
            "cas: error: {} moved on {} while transferring (was {}, now {}); not set \
             (--force overwrites)",
            c.name,
            dst.root().display(),
            f(c.expected),
            f(c.actual)
        );
    }
    render::print(
        json,
        &render::Transfer {
            src,
            dst,
            report: &r,
        },
    );
    Ok(exit(r.is_complete()))
}

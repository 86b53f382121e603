//! Opening the stores a command works on: the global options applied, created only where
//! the command may create one, and a store that is not there explained with what to run.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use cas::{Create, Found, Options, Store};

use crate::args::Global;
use crate::signals;

/// The default store directory: `$XDG_CACHE_HOME/cas`, else `~/.cache/cas` (the library's
/// rule, shared with every program using the default store; `$CAS_STORE` is clap's).
fn default_store() -> Result<PathBuf> {
    cas::DefaultStore::per_user()
        .map_err(|_| anyhow!("no store given: use --store DIR or set CAS_STORE or HOME"))
}

pub(crate) fn store_dir(g: &Global) -> Result<PathBuf> {
    match &g.store {
        Some(s) => Ok(s.clone()),
        None => default_store(),
    }
}

/// Whether a command may create the store it works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads, checks or removes: the store must exist; nothing is ever created.
    Existing,
    /// Stores something: creates the store where nothing exists yet (the default store also
    /// in an empty directory), never in an existing directory that is not a store.
    Write,
}

/// Opens the store, with the global overrides applied; creates it only as `access` allows.
pub(crate) fn open_store(g: &Global, access: Access) -> Result<Store> {
    let dir = store_dir(g)?;
    let create = match access {
        Access::Existing => Create::Never,
        // An explicit --store / $CAS_STORE is created only where nothing is: an existing
        // directory there, even an empty one, is more likely a typo than a wish.
        Access::Write if g.store.is_some() => Create::IfMissing,
        Access::Write => Create::IfMissingOrEmpty,
    };
    let store = match Store::open_or_create(&dir, Options::default(), create) {
        Ok(s) => s,
        Err(cas::Error::NotAStore { found, .. } | cas::Error::NotEmpty { found, .. }) => {
            return Err(not_a_store_hint(&dir, found));
        }
        Err(e) => return Err(e.into()),
    };
    let store = apply_overrides(store, g)?;
    signals::set_store(&store);
    Ok(store)
}

/// The error for a path that holds no store, saying what to run: what is there is the
/// library's finding ([`Found`], carried by its error).
fn not_a_store_hint(dir: &Path, found: Found) -> anyhow::Error {
    let d = dir.display();
    let msg = match found {
        Found::Nothing => format!("there is no store at {d}; create one with `cas init {d}`"),
        Found::Dir => format!(
            "{d} is not a cas store (nothing was written there); to make it one, run \
             `cas init --force {d}` (its files are kept), or choose another --store"
        ),
        Found::EmptyDir => format!("{d} is not a cas store; create one there with `cas init {d}`"),
        _ => format!("{d} is a file, not a store (a store is a directory; see `cas init DIR`)"),
    };
    anyhow!(msg)
}

fn apply_overrides(store: Store, g: &Global) -> Result<Store> {
    if g.durability.is_none()
        && g.lock_timeout.is_none()
        && g.stale_age.is_none()
        && g.upstream.is_none()
        && !g.upstream_readonly
    {
        return Ok(store);
    }
    let o = with_globals(store.options().clone(), g);
    Ok(store.with_options(o)?)
}

/// The global --durability, --lock-timeout and --stale-age applied to `o`.
pub(crate) fn with_globals(mut o: Options, g: &Global) -> Options {
    if let Some(d) = g.durability {
        o = o.durability(d);
    }
    if let Some(t) = g.lock_timeout {
        o = o.lock_timeout(t);
    }
    if let Some(t) = g.stale_age {
        o = o.stale_age(t);
    }
    if let Some(u) = &g.upstream {
        o = o.upstream(Some(std::path::absolute(u).unwrap_or_else(|_| u.clone())));
    }
    if g.upstream_readonly {
        o = o.upstream_readonly(true);
    }
    o
}

/// The other store of a push or pull: it must exist; its own config (and upstream) apply.
pub(crate) fn open_other(dir: &Path) -> Result<Store> {
    match Store::open(dir) {
        Ok(s) => {
            signals::set_store(&s);
            Ok(s)
        }
        Err(cas::Error::NotAStore { found, .. }) => Err(not_a_store_hint(dir, found)),
        Err(e) => Err(e.into()),
    }
}

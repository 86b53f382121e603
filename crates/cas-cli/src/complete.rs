//! Dynamic completion of ref names and cache keys (`clap_complete`'s `CompleteEnv`): the shell
//! calls `cas` itself with `COMPLETE=SHELL` set, and the candidates come from the store the
//! command line names (`--store DIR`, else `$CAS_STORE`, else the default store), opened
//! without ever creating it. Any failure completes nothing: a completion must never print an
//! error into the user's prompt.

use std::ffi::OsString;
use std::path::PathBuf;

use clap_complete::engine::CompletionCandidate;

/// The store the command line being completed names, if there is one there.
fn store() -> Option<cas::Store> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let given = args
        .windows(2)
        .rev()
        .find(|w| w[0] == "--store")
        .map(|w| PathBuf::from(&w[1]))
        .or_else(|| {
            args.iter()
                .rev()
                .find_map(|a| a.to_str()?.strip_prefix("--store=").map(PathBuf::from))
        })
        .or_else(|| {
            std::env::var_os("CAS_STORE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
    let dir = match given {
        Some(d) => d,
        None => cas::DefaultStore::per_user().ok()?,
    };
    cas::Store::open(dir).ok()
}

/// Ref names of the store, for `ref get NAME`, `push DEST NAME` and the like.
pub(crate) fn ref_names() -> Vec<CompletionCandidate> {
    let Some(s) = store() else {
        return Vec::new();
    };
    s.refs_report("")
        .map(|(refs, _)| {
            refs.into_iter()
                .map(|(name, _)| CompletionCandidate::new(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Cache keys of the store that are UTF-8 without control characters (others cannot be typed
/// as one shell word anyway).
pub(crate) fn keys() -> Vec<CompletionCandidate> {
    let Some(s) = store() else {
        return Vec::new();
    };
    let Ok(iter) = s.iter_keys() else {
        return Vec::new();
    };
    let mut out: Vec<String> = iter
        .filter_map(Result::ok)
        .filter_map(|e| String::from_utf8(e.key).ok())
        .filter(|k| !k.chars().any(char::is_control))
        .collect();
    out.sort();
    out.into_iter().map(CompletionCandidate::new).collect()
}

//! `cas get`: an object to stdout or a file, or (with -r) a tree into a new directory;
//! verified before anything is written.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cas::{Hash, Store};

use crate::args::{ByteRange, GetArgs, Global};
use crate::open::{open_store, Access};
use crate::{hooks, output};

/// `cas get`: one object to stdout or `-o FILE`, or with `-r` a tree into `-o DIR`.
pub(crate) fn run(g: &Global, a: &GetArgs) -> Result<ExitCode> {
    if a.recursive {
        let dest = a.output.as_deref().context("-r needs -o DIR")?;
        let store = open_store(g, Access::Existing)?;
        let opts = cas::CheckoutOptions::default()
            .allow_external_symlinks(a.allow_external_symlinks)
            .ignore_umask(a.no_umask)
            .skip_mtimes(a.no_mtime);
        restore_tree(&store, &a.hash.resolve(&store)?, dest, opts)?;
    } else {
        let store = open_store(g, Access::Existing)?;
        let hash = a.hash.resolve(&store)?;
        match a.range {
            Some(r) => write_range(&store, &hash, r, a.output.as_deref())?,
            None => write_object(&store, &hash, a.output.as_deref())?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cas get --range`: the verified bytes of the range to stdout or `-o FILE`.
fn write_range(store: &Store, hash: &Hash, r: ByteRange, output: Option<&Path>) -> Result<()> {
    use std::io::Write as _;
    use std::ops::Bound;
    let range = match r {
        ByteRange::From { start, end } => (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Included),
        ),
        ByteRange::Last(n) => {
            // As HTTP: more than the object has is all of it.
            let len = store.object_info(hash)?.len;
            (Bound::Included(len.saturating_sub(n)), Bound::Unbounded)
        }
    };
    match output {
        Some(path) if path != Path::new("-") => {
            store.read_range_to_path(hash, range, path)?;
        }
        _ => {
            let mut out = io::BufWriter::new(io::stdout().lock());
            store.read_range_to_writer(hash, range, &mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Writes an object to `output` (see `Store::get_to_path`) or stdout (none, or `-`),
/// verified before any byte is written.
pub(crate) fn write_object(store: &Store, hash: &Hash, output: Option<&Path>) -> Result<()> {
    let bar = output::BytesBar::new("get");
    let progress = |p| bar.update(p);
    let done = match output {
        Some(path) if path != Path::new("-") => store.get_to_path_progress(hash, path, &progress),
        _ => {
            // Straight to the descriptor (spliced into a pipe), past Rust's buffer, which
            // holds nothing yet: nothing is printed before the object. No bar when the bytes
            // themselves go to the terminal: it would be drawn across them.
            let stdout = io::stdout();
            let lock = stdout.lock();
            let progress: cas::ProgressFn = if std::io::IsTerminal::is_terminal(&lock) {
                &cas::no_progress
            } else {
                &progress
            };
            store.get_to_fd(hash, lock.as_fd(), progress)
        }
    };
    bar.finish();
    done?;
    Ok(())
}

/// `get -r`: restores a tree, with a bar of the bytes restored out of the tree's total.
pub(crate) fn restore_tree(
    store: &Store,
    hash: &Hash,
    dest: &Path,
    opts: cas::CheckoutOptions,
) -> cas::Result<()> {
    let bar = std::sync::Arc::new(output::BytesBar::new("get -r"));
    let b = std::sync::Arc::clone(&bar);
    let pause = hooks::pause_at();
    let done = store.checkout_with(
        hash,
        dest,
        &opts.progress(move |p| {
            if let Some(at) = &pause {
                hooks::pause(at, p.done);
            }
            b.update(p)
        }),
    );
    bar.finish();
    done
}

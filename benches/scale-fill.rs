//! Builds a large store for benches/scale.sh (issue 26) quickly: `scale-fill STORE N`.
//!
//! The N leaf objects (`object I\n`, 9–16 bytes) are written straight into the store's layout
//! (`objects/xx/<62 hex>`, mode 0444, no fsync: what `--durability none` publishes), each
//! named by the BLAKE3 of its bytes, so `verify` rehashes them as real objects. The trees and
//! names go through the library: leaves in groups of 1 000 under one tree each; 80 % of the
//! groups under a top tree named by the ref `all`, 10 % each named by a cache entry `k/G`, and
//! 10 % of the leaves left unreachable (garbage for gc to condemn). A `put -r` of a 1M-file
//! source tree makes the same store in about 75 s (docs/performance.md, issue 26 part); this
//! takes a few seconds plus the file creation.
//!
//! Writes are relative to each fan-out directory's descriptor, so it costs what creating N
//! small files costs on the filesystem, nothing more.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use cas::{TreeEntryKind, Expect, Hash, Options, Store, Tree, TreeEntry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: scale-fill STORE N");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let n: u64 = n.parse()?;
    let store = Store::init(&dir, Options::default().durability(cas::Durability::None))?;
    let group = 1000u64;
    let groups = n.div_ceil(group);
    let mut subtrees = Vec::new();
    for g in 0..groups {
        let mut entries = Vec::new();
        for i in g * group..((g + 1) * group).min(n) {
            let bytes = format!("object {i}\n");
            let h = Hash::of(bytes.as_bytes());
            let hex = h.to_hex();
            let path = dir.join("objects").join(&hex[..2]).join(&hex[2..]);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&path)?;
            f.write_all(bytes.as_bytes())?;
            entries.push(TreeEntry {
                name: format!("f{i}").into_bytes(),
                kind: TreeEntryKind::File {
                    executable: false,
                    size: bytes.len() as u64,
                    hash: h,
                },
            });
        }
        let tree = Tree { entries }.encode();
        subtrees.push(store.put_bytes(&tree)?);
    }
    let named = groups * 9 / 10;
    let by_ref = groups * 8 / 10;
    let top = Tree {
        entries: subtrees[..by_ref as usize]
            .iter()
            .enumerate()
            .map(|(g, h)| TreeEntry {
                name: format!("g{g}").into_bytes(),
                kind: TreeEntryKind::Dir { hash: *h },
            })
            .collect(),
    }
    .encode();
    let top = store.put_bytes(&top)?;
    store.set_ref("all", top, Expect::Any)?;
    for g in by_ref..named {
        store.set_keyed(
            format!("k/{g}").as_bytes(),
            subtrees[g as usize],
            b"",
            Expect::Any,
        )?;
    }
    println!(
        "{n} leaves + {} trees: {} groups by ref `all`, {} by cache entries, {} unreachable",
        groups + 1,
        by_ref,
        named - by_ref,
        groups - named
    );
    Ok(())
}

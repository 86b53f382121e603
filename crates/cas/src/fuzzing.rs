//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpora
//! (`crates/cas/tests/fuzz_corpus.rs`). Not part of the API: hidden, unstable, and only here
//! because most decoders are crate-private.
//!
//! Everything a store holds is hostile input: another member of the group, a crash or a bad
//! disk can put any bytes in any file or name. Each function feeds `data` to the decoders of one
//! family the way the store reads that kind of file, and checks what must hold for *every*
//! input: no panic, no unbounded allocation, and where an encoder exists, that what decoded
//! re-encodes to something that decodes to the same value (and, for canonical formats, to the
//! very same bytes). A broken property panics, which is what a fuzzer reports.
//!
//! Each function returns whether the input was accepted by the family's main decoder, so the
//! replay test can tell that a corpus still holds valid examples.

use std::time::{Duration, SystemTime};

use crate::hash::{Hash, HEX_LEN};
use crate::maint::trash;
use crate::names::entries::{display_key, Entry};
use crate::names::lock::Holder;
use crate::names::refs::{log_field, parse_log_line, parse_ref_content, validate_ref_name};
use crate::store::config::{format_duration, Options};
use crate::store::{handle as store, layout};
use crate::tree::format::{Tree, TreeEntry, TreeEntryKind};
use crate::Durability;

/// A fuzz target: its name (the directory of its corpus) and its function.
pub type Target = (&'static str, fn(&[u8]) -> bool);

/// Every target, by name. `fuzz/fuzz_targets/NAME.rs` calls the function of the same name.
pub const TARGETS: &[Target] = &[
    ("entry", entry),
    ("tree", tree),
    ("lock", lock),
    ("refs", refs),
    ("config", config),
    ("names", names),
    ("cli_values", cli_values),
    ("outboard", outboard),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A cache entry file (`index/ab/…`): `Entry::decode`, then encode → decode gives the same
/// entry.
pub fn entry(data: &[u8]) -> bool {
    let _ = display_key(data);
    match Entry::decode(data) {
        Ok(e) => {
            let _ = display_key(&e.key);
            let again = Entry::encode(&e);
            assert_eq!(Entry::decode(&again).as_ref(), Ok(&e), "entry round trip");
            true
        }
        Err(msg) => {
            assert!(!msg.is_empty());
            false
        }
    }
}

/// The object an [`outboard`] input is about: its length from the input's first two bytes
/// (up to 40 chunk groups, so every shape of small tree is reached), its bytes fixed by it.
fn outboard_object(data: &[u8]) -> Vec<u8> {
    let v = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let len = v * 37 % (40 * crate::outboard::GROUP + 1);
    (0..len).map(|i| (i * 7 + (i >> 9)) as u8).collect()
}

/// An outboard file (`outboards/ab/…`) for the object [`outboard_object`] makes of the first
/// two bytes; the rest is the file. Read as range reads read it: `check_header`, then every
/// group checked through `Verifier` with pairs from the file, and `pairs_consistent` as
/// verify checks it. Whatever the file holds: the object's true bytes are never blamed (a
/// wrong outboard is reported as the outboard's fault, so a good object is never
/// quarantined), a changed byte is never accepted, and the only outboard whose pairs are
/// consistent with the name is the one the store writes. Accepted: a consistent outboard.
pub fn outboard(data: &[u8]) -> bool {
    use crate::outboard::{self as ob, Mismatch, Verifier, GROUP, HEADER_LEN, PAIR};
    if data.len() < 2 {
        return false;
    }
    let object = outboard_object(data);
    let len = object.len() as u64;
    let (root, real) = ob::build(&object, false);
    let file = &data[2..];
    if ob::check_header(file, file.len() as u64, len).is_err() {
        return false;
    }
    let consistent = ob::pairs_consistent(&file[HEADER_LEN as usize..], len, &root);
    if consistent {
        assert!(file == real, "a second outboard consistent with the name");
    }
    let groups = ob::groups(len);
    let mut pair_at = |node: u64| -> Result<[u8; PAIR as usize], ()> {
        let at = usize::try_from(HEADER_LEN + node * PAIR).map_err(|_| ())?;
        let found = file.get(at..at + PAIR as usize).ok_or(())?;
        let mut out = [0u8; PAIR as usize];
        out.copy_from_slice(found);
        Ok(out)
    };
    for g in [0, groups / 2, groups - 1] {
        let (start, end) = ((g * GROUP) as usize, ((g + 1) * GROUP).min(len) as usize);
        let got = Verifier::new(root, len).check(g, &object[start..end], &mut pair_at);
        assert_ne!(got, Ok(Err(Mismatch::Data)), "good bytes blamed, group {g}");
        if consistent {
            assert_eq!(got, Ok(Ok(())), "consistent outboard refused group {g}");
        }
        if end > start {
            let mut bad = object[start..end].to_vec();
            bad[(end - start) / 2] ^= 1;
            let changed = Verifier::new(root, len).check(g, &bad, &mut pair_at);
            assert_ne!(changed, Ok(Ok(())), "changed byte accepted");
        }
    }
    consistent
}

/// A tree object: `Tree::decode`, whose format is canonical, so a decoded tree re-encodes to
/// exactly the input bytes.
pub fn tree(data: &[u8]) -> bool {
    let _ = Tree::is_tree(data);
    match Tree::decode(data) {
        Ok(t) => {
            let _ = t.children().count();
            let again = t.encode();
            assert_eq!(Tree::decode(&again).as_ref(), Ok(&t), "tree round trip");
            assert!(
                again == data,
                "a tree decoded from bytes that are not its canonical encoding"
            );
            true
        }
        Err(msg) => {
            assert!(!msg.is_empty());
            false
        }
    }
}

/// A lock file's content, read as the store reads it (UTF-8, lossily): `Holder::parse`, then
/// render → parse gives the same holder.
pub fn lock(data: &[u8]) -> bool {
    let Some(h) = Holder::parse(&text(data)) else {
        return false;
    };
    let again = h.render();
    assert_eq!(
        Holder::parse(&again).as_ref(),
        Some(&h),
        "lock holder round trip"
    );
    true
}

/// The ref family: a ref file's content (canonical: the hash and a newline), a ref name, and a
/// reflog (every line parsed; a parsed line re-renders to a line that parses the same).
pub fn refs(data: &[u8]) -> bool {
    let s = text(data);
    let content = parse_ref_content(&s);
    if let Some(h) = content {
        assert_eq!(format!("{h}\n"), s, "ref content is canonical");
    }
    let name_ok = match validate_ref_name(&s) {
        Ok(()) => {
            // Accepted names stay below refs/ and never collide with lock files.
            for c in std::path::Path::new(s.as_ref()).components() {
                assert!(
                    matches!(c, std::path::Component::Normal(_)),
                    "ref name {s:?} has a non-normal component"
                );
            }
            assert!(!s.ends_with(layout::LOCK_SUFFIX));
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    let mut lines = 0;
    for line in s.lines() {
        if let Some(e) = parse_log_line(line) {
            let rendered = e.to_line();
            assert_eq!(
                parse_log_line(&rendered).as_ref(),
                Some(&e),
                "reflog round trip"
            );
            lines += 1;
        }
    }
    content.is_some() || name_ok || lines > 0
}

/// The store's text files: `config` (`Options::parse_file`; what parses renders back to a file
/// that parses the same) and `FORMAT` (`check_format`).
pub fn config(data: &[u8]) -> bool {
    let s = text(data);
    let parsed = match Options::parse_file(&s) {
        Ok(o) => {
            assert_eq!(
                Options::parse_file(&o.to_file()).as_ref(),
                Ok(&o),
                "config round trip"
            );
            true
        }
        Err(msg) => {
            assert!(!msg.is_empty());
            false
        }
    };
    let format = match store::check_format(std::path::Path::new("FORMAT"), &s) {
        Ok(()) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    parsed || format
}

/// Names found in directories: a hash (canonical), an object name (fan-out directory and file
/// name: the first two bytes and the rest), a staging file name, a trash run name.
pub fn names(data: &[u8]) -> bool {
    let s = text(data);
    let hash = match Hash::parse(&s) {
        Ok(h) => {
            assert_eq!(h.to_string(), s, "hashes are canonical");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    let object = match data.split_at_checked(2) {
        Some((dir, file)) => match layout::parse_object_name(dir, file) {
            Some(h) => {
                assert_eq!(h.to_hex().as_bytes(), data, "object names are canonical");
                true
            }
            None => false,
        },
        None => false,
    };
    let staging = match layout::parse_staging_name(&s) {
        Some((host, pid)) => {
            assert!(s.starts_with(host) && !host.is_empty());
            let again = format!("{}x", layout::staging_prefix(host, pid));
            assert_eq!(layout::parse_staging_name(&again), Some((host, pid)));
            true
        }
        None => false,
    };
    let run = match trash::parse_run_name(&s) {
        Some(t) => {
            let ms = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("a run is never before the epoch")
                .as_millis();
            let again = format!("{ms}.host.1");
            assert_eq!(
                trash::parse_run_name(&again),
                Some(t),
                "trash run round trip"
            );
            true
        }
        None => false,
    };
    hash || object || staging || run
}

/// The command line's value parsers (`--max-size`, `--lock-timeout`, `--grace`,
/// `--durability`): sizes and durations re-render to text that parses the same.
pub fn cli_values(data: &[u8]) -> bool {
    let s = text(data);
    let size = match crate::parse_size(&s) {
        Ok(n) => {
            assert_eq!(crate::parse_size(&n.to_string()), Ok(n), "size round trip");
            true
        }
        Err(msg) => {
            assert!(!msg.is_empty());
            false
        }
    };
    let duration = match crate::parse_duration(&s) {
        Ok(d) => {
            assert_eq!(
                crate::parse_duration(&format_duration(d)),
                Ok(d),
                "duration round trip"
            );
            true
        }
        Err(msg) => {
            assert!(!msg.is_empty());
            false
        }
    };
    let durability = match s.parse::<Durability>() {
        Ok(d) => {
            assert_eq!(d.to_string(), s, "durability names are canonical");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    };
    size || duration || durability
}

/// Valid examples for each target, made with the store's own encoders (the seeds of the
/// corpora; the replay test also checks that each is accepted).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = binary_seeds();
    out.extend(text_seeds());
    out.extend(outboard_seeds());
    out
}

/// Entry files and tree objects.
fn binary_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let h = |s: &[u8]| Hash::of(s);
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();

    let entries = [
        Entry {
            key: b"build:abc".to_vec(),
            hash: h(b"artifact"),
            size: 8,
            time_ms: 1_700_000_000_123,
            metadata: b"{\"target\":\"x86\"}".to_vec(),
        },
        Entry {
            key: Vec::new(),
            hash: h(b""),
            size: 0,
            time_ms: 0,
            metadata: Vec::new(),
        },
        Entry {
            key: vec![0xff; 300],
            hash: h(b"x"),
            size: u64::MAX,
            time_ms: u64::MAX,
            metadata: (0..=255).collect(),
        },
    ];
    out.extend(entries.iter().map(|e| ("entry", e.encode())));

    let file = |name: &[u8], size: u64, executable: bool| TreeEntry {
        mode: None,
        mtime: None,
        name: name.to_vec(),
        kind: TreeEntryKind::File {
            executable,
            size,
            hash: h(name),
        },
    };
    let trees = [
        Tree::default(),
        Tree {
            entries: vec![file(b"a.txt", 2, false)],
        },
        Tree {
            entries: vec![
                file(b"README", 300, false),
                TreeEntry {
                    mode: None,
                    mtime: None,
                    name: b"link".to_vec(),
                    kind: TreeEntryKind::Symlink {
                        target: b"../up/x".to_vec(),
                    },
                },
                file(b"run.sh", 70_000, true),
                TreeEntry {
                    mode: None,
                    mtime: None,
                    name: b"sub".to_vec(),
                    kind: TreeEntryKind::Dir { hash: h(b"sub") },
                },
                file("é\u{1}".as_bytes(), 1 << 40, false),
            ],
        },
    ];
    // Version 2: modes on files and directories, mtimes (negative ones too), a link without.
    let mut v2 = trees[2].clone();
    for (e, (mode, mtime)) in v2.entries.iter_mut().zip([
        (Some(0o600), Some(1_700_000_000_123_456_789)),
        (None, Some(-1)),
        (Some(0o755), None),
        (Some(0o700), Some(i64::MAX)),
        (Some(0o444), Some(0)),
    ]) {
        if !matches!(e.kind, TreeEntryKind::Symlink { .. }) {
            e.mode = mode;
        }
        e.mtime = mtime;
    }
    let mut modes_only = trees[1].clone();
    modes_only.entries[0].mode = Some(0o640);
    let trees = [
        trees[0].clone(),
        trees[1].clone(),
        trees[2].clone(),
        v2,
        modes_only,
    ];
    out.extend(trees.iter().map(|t| ("tree", t.encode())));
    out
}

/// Real outboards of objects of 0, 1, 2, 3 and 23 chunk groups (the first two bytes pick
/// the object, see [`outboard_object`]).
fn outboard_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [0u16, 100, 443, 1000, 10_000]
        .into_iter()
        .map(|v| {
            let mut d = v.to_le_bytes().to_vec();
            let (_, ob) = crate::outboard::build(&outboard_object(&d), false);
            d.extend(ob);
            ("outboard", d)
        })
        .collect()
}

/// Lock files, refs, config, FORMAT, names, command-line values.
fn text_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let h = |s: &[u8]| Hash::of(s);
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();

    let holders = [
        Holder {
            host: "node1.cluster.local".into(),
            pid: 4242,
            start_ms: 1_700_000_000_123,
            nonce: "0123456789abcdef".into(),
            pin: None,
        },
        Holder {
            host: "h".into(),
            pid: u32::MAX,
            start_ms: 0,
            nonce: "n".into(),
            pin: Some(h(b"pinned")),
        },
    ];
    out.extend(holders.iter().map(|x| ("lock", x.render().into_bytes())));

    out.push(("refs", format!("{}\n", h(b"v1")).into_bytes()));
    out.push(("refs", b"release/latest".to_vec()));
    out.push(("refs", b"builds/x86_64/v1.2-rc_3".to_vec()));
    let log = format!(
        "{} {} 1700000000 host user\tset\n{} {} 1700000001 host user\tremove\n",
        log_field(None),
        log_field(Some(&h(b"a"))),
        log_field(Some(&h(b"a"))),
        log_field(None),
    );
    out.push(("refs", log.into_bytes()));

    let options = [
        Options::default(),
        Options::default()
            .durability(Durability::Full)
            .shared_group(true)
            .max_size(Some(10 << 30))
            .lock_timeout(Duration::from_millis(1500))
            .stale_age(Duration::from_hours(48)),
        Options::default().durability(Durability::None),
    ];
    out.extend(options.iter().map(|o| ("config", o.to_file().into_bytes())));
    out.push((
        "config",
        format!("{}\nhash blake3\n", layout::FORMAT_LINE).into_bytes(),
    ));

    let hex = h(b"object").to_hex();
    out.push(("names", hex.clone().into_bytes()));
    out.push((
        "names",
        format!("{}.4242.AbC12x", "node1.cluster.local").into_bytes(),
    ));
    out.push(("names", b"1700000000123.node1.cluster.local.4242".to_vec()));
    out.push(("names", b"1700000000123.h.7.evict".to_vec()));
    assert_eq!(hex.len(), HEX_LEN);

    for v in [
        "1536", "10M", "2GiB", "1.5G", "0.5k", "1P", "0s", "90m", "1h30m", "1.5h", "1w", "250ms",
        "2d12h", "none", "file", "full",
    ] {
        out.push(("cli_values", v.as_bytes().to_vec()));
    }
    out
}

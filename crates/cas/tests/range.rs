//! Verified range reads (issue 21): `Store::read_range` and `Store::verified_reader` return
//! exactly the object's bytes, checked against its name a 16 KiB chunk group at a time through
//! the object's outboard; damage inside a range fails it without returning a byte of the
//! damaged group, damage outside does not; a missing or wrong outboard is rebuilt.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use proptest::prelude::*;

const G: u64 = 16 * 1024;
/// Larger than the outboard threshold (4 MiB): these objects get an outboard.
const BIG: u64 = 5 * 1024 * 1024 + 12_345;

fn store() -> (tempfile::TempDir, cas::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = cas::Store::init(dir.path().join("s"), cas::Options::default()).unwrap();
    (dir, store)
}

fn data(len: u64, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn outboard_path(store: &cas::Store, h: &cas::Hash) -> PathBuf {
    let hex = h.to_hex();
    store
        .root()
        .join("outboards")
        .join(&hex[..2])
        .join(&hex[2..])
}

/// Flips one byte of a file in the store (read-only: made writable first).
fn flip(path: &std::path::Path, at: u64) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x20;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
}

#[test]
fn ranges_at_group_edges_and_ends() {
    let (_d, store) = store();
    let bytes = data(BIG, 1);
    let h = store.put_bytes(&bytes).unwrap();
    assert!(
        outboard_path(&store, &h).is_file(),
        "put wrote the outboard"
    );
    let n = BIG;
    let last = n - n % G;
    for r in [
        0..0,
        0..1,
        0..G,
        G - 1..G + 1,
        G..2 * G,
        3 * G - 5..7 * G + 3,
        last - 1..last + 1,
        last..n,
        n - 1..n,
        n..n,
        0..n,
    ] {
        let got = store.read_range(&h, r.clone()).unwrap();
        assert_eq!(got, &bytes[r.start as usize..r.end as usize], "{r:?}");
    }
    #[allow(clippy::reversed_empty_ranges, clippy::range_plus_one)] // bad on purpose
    let bads = [0..n + 1, n + 1..n + 1, 10..5];
    for bad in bads {
        let e = store.read_range(&h, bad.clone()).unwrap_err();
        assert!(e.is_invalid_input(), "{bad:?}: {e}");
        assert!(e.to_string().contains(&h.to_hex()), "{e}");
    }
}

#[test]
fn small_objects_are_verified_whole() {
    let (_d, store) = store();
    for len in [0, 1, G - 1, G, G + 1, 3 * G] {
        let bytes = data(len, 2);
        let h = store.put_bytes(&bytes).unwrap();
        assert_eq!(store.read_range(&h, 0..len).unwrap(), bytes, "{len}");
        if len > 2 {
            assert_eq!(
                store.read_range(&h, 1..len - 1).unwrap(),
                &bytes[1..len as usize - 1]
            );
        }
        assert!(
            !outboard_path(&store, &h).exists(),
            "no outboard under 4 MiB"
        );
        assert!(store.read_range(&h, 0..=len).is_err());
    }
    let h = store.put_bytes(&data(3 * G, 3)).unwrap();
    flip(&store.object_path(&h), 2 * G + 7);
    let e = store.read_range(&h, 0..10).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
}

#[test]
fn a_flip_outside_the_range_does_not_fail_it_inside_does() {
    let (_d, store) = store();
    let bytes = data(BIG, 4);
    let h = store.put_bytes(&bytes).unwrap();
    let at = 100 * G + 77;
    flip(&store.object_path(&h), at);
    // Groups 99 and 101 are intact.
    assert_eq!(
        store.read_range(&h, 99 * G..100 * G).unwrap(),
        &bytes[(99 * G) as usize..(100 * G) as usize]
    );
    assert_eq!(
        store.read_range(&h, 101 * G..101 * G + 10).unwrap(),
        &bytes[(101 * G) as usize..(101 * G + 10) as usize]
    );
    // A reader gets every byte before the damaged group, then the error: none of its bytes.
    let mut r = store.verified_reader(&h).unwrap();
    r.seek(SeekFrom::Start(99 * G)).unwrap();
    let mut got = Vec::new();
    let e = r.read_to_end(&mut got).unwrap_err();
    assert_eq!(got, &bytes[(99 * G) as usize..(100 * G) as usize]);
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let inner = e.into_inner().unwrap().downcast::<cas::Error>().unwrap();
    match *inner {
        cas::Error::CorruptRange {
            hash, start, end, ..
        } => {
            assert_eq!((hash, start, end), (h, 100 * G, 101 * G));
        }
        ref other => panic!("{other}"),
    }
    let msg = inner.to_string();
    assert!(
        msg.contains(&h.to_hex()) && msg.contains("1638400..1654784"),
        "{msg}"
    );
    // The damaged object was quarantined.
    assert!(!store.object_path(&h).exists());
}

#[test]
fn a_range_read_fails_inside_the_damage() {
    let (_d, store) = store();
    let bytes = data(BIG, 5);
    let h = store.put_bytes(&bytes).unwrap();
    flip(&store.object_path(&h), 5 * G + 1);
    let e = store.read_range(&h, 5 * G + 100..5 * G + 200).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert!(matches!(e, cas::Error::CorruptRange { start, .. } if start == 5 * G));
}

#[test]
fn the_last_partial_group_is_checked() {
    let (_d, store) = store();
    let bytes = data(BIG, 6);
    let h = store.put_bytes(&bytes).unwrap();
    flip(&store.object_path(&h), BIG - 1);
    assert!(store.read_range(&h, 0..G).is_ok());
    let e = store.read_range(&h, BIG - 2..BIG).unwrap_err();
    assert!(
        matches!(e, cas::Error::CorruptRange { end, .. } if end == BIG),
        "{e}"
    );
}

#[test]
fn a_missing_or_wrong_outboard_is_rebuilt() {
    let (_d, store) = store();
    let bytes = data(BIG, 7);
    let h = store.put_bytes(&bytes).unwrap();
    let ob = outboard_path(&store, &h);
    let good = std::fs::read(&ob).unwrap();
    assert_eq!(good.len() as u64, 24 + 64 * (BIG.div_ceil(G) - 1));
    let range = 200 * G + 3..200 * G + 4000;
    let want = &bytes[range.start as usize..range.end as usize];

    // Missing: computed on first range read and published.
    std::fs::remove_file(&ob).unwrap();
    assert_eq!(store.read_range(&h, range.clone()).unwrap(), want);
    assert_eq!(std::fs::read(&ob).unwrap(), good);

    // A flipped pair (found as the path is checked), a truncated file, garbage, a wrong
    // header: each is replaced by the right one.
    let damages: Vec<Box<dyn Fn()>> = vec![
        Box::new(|| flip(&ob, (good.len() - 40) as u64)),
        Box::new(|| {
            std::fs::set_permissions(&ob, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&ob)
                .unwrap()
                .set_len(100)
                .unwrap();
        }),
        Box::new(|| {
            std::fs::remove_file(&ob).unwrap();
            std::fs::write(&ob, vec![0xAB; good.len()]).unwrap();
        }),
        Box::new(|| flip(&ob, 3)),
    ];
    for (i, damage) in damages.iter().enumerate() {
        damage();
        assert_ne!(std::fs::read(&ob).unwrap(), good, "damage {i}");
        assert_eq!(
            store.read_range(&h, range.clone()).unwrap(),
            want,
            "damage {i}"
        );
        assert_eq!(std::fs::read(&ob).unwrap(), good, "damage {i} rebuilt");
    }

    // A symlink at the outboard's name is never followed: replaced by a file.
    let target = store.root().parent().unwrap().join("elsewhere");
    std::fs::write(&target, &good).unwrap();
    std::fs::remove_file(&ob).unwrap();
    std::os::unix::fs::symlink(&target, &ob).unwrap();
    assert_eq!(store.read_range(&h, range.clone()).unwrap(), want);
    assert!(!std::fs::symlink_metadata(&ob).unwrap().is_symlink());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        good,
        "the link's target untouched"
    );
}

#[test]
fn every_put_path_writes_the_same_outboard() {
    type Put<'a> = Box<dyn Fn(&cas::Store) -> cas::Hash + 'a>;
    let (d, store) = store();
    let bytes = data(BIG, 8);
    let (h, ob) = {
        let h = store.put_bytes(&bytes).unwrap();
        (h, std::fs::read(outboard_path(&store, &h)).unwrap())
    };
    let file = d.path().join("input");
    std::fs::write(&file, &bytes).unwrap();
    let puts: Vec<(&str, Put)> = vec![
        ("put_path", Box::new(|s| s.put_path(&file).unwrap())),
        (
            "put_reader",
            Box::new(|s| s.put_reader(&bytes[..]).unwrap()),
        ),
        (
            "batch put_bytes",
            Box::new(|s| {
                let mut b = s.batch();
                let h = b.put_bytes(&bytes).unwrap();
                b.commit().unwrap();
                h
            }),
        ),
        (
            "writer, odd pieces",
            Box::new(|s| {
                let mut w = s.writer().unwrap();
                for c in bytes.chunks(700_001) {
                    w.write_all(c).unwrap();
                }
                w.commit().unwrap()
            }),
        ),
    ];
    for (what, put) in puts {
        let (_d2, s2) = self::store();
        assert_eq!(put(&s2), h, "{what}");
        assert_eq!(std::fs::read(outboard_path(&s2, &h)).unwrap(), ob, "{what}");
        assert_eq!(
            std::fs::read_dir(s2.root().join("tmp")).unwrap().count(),
            0,
            "{what}"
        );
    }
}

#[test]
fn gc_and_verify_cover_outboards() {
    let (_d, store) = store();
    let bytes = data(BIG, 9);
    let h = store.put_bytes(&bytes).unwrap();
    store.set_ref("keep", h, cas::Expect::Any).unwrap();
    let gone = store.put_bytes(&data(BIG, 10)).unwrap();
    let ob = outboard_path(&store, &h);
    let ob_gone = outboard_path(&store, &gone);
    assert!(ob_gone.is_file());

    let clean = store.verify(&cas::no_progress).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.outboards, clean.outboards_removed), (2, 0));

    // A wrong outboard: verify removes it (not a problem of the store), a read rebuilds it.
    let good = std::fs::read(&ob).unwrap();
    flip(&ob, 24 + 64 * 10 + 1);
    let r = store.verify(&cas::no_progress).unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.outboards_removed, 1);
    assert!(!ob.exists());
    store.read_range(&h, 0..10).unwrap();
    assert_eq!(std::fs::read(&ob).unwrap(), good);

    // gc: the unreachable object goes, and then its outboard.
    store.remove(&gone).unwrap();
    let opts = cas::GcOptions::default().grace(std::time::Duration::ZERO);
    let r = store.gc(&opts, &cas::no_progress).unwrap();
    assert_eq!(r.outboards_removed, 1);
    assert!(!ob_gone.exists());
    assert!(ob.is_file(), "the kept object's outboard stays");
}

/// A tier's gc evicts objects its upstream holds; their outboards in the tier go with them
/// (they used to stay behind: the tier's gc had no outboard sweep).
#[test]
fn a_tiers_gc_removes_the_outboards_of_what_it_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let up_dir = dir.path().join("up");
    cas::Store::init(&up_dir, cas::Options::default()).unwrap();
    let tier = cas::Store::init(
        dir.path().join("tier"),
        cas::Options::default().upstream(Some(up_dir)),
    )
    .unwrap();
    let h = tier.put_bytes(&data(BIG, 11)).unwrap();
    let ob = outboard_path(&tier, &h);
    assert!(ob.is_file(), "the put wrote the tier's outboard");
    let opts = cas::GcOptions::default()
        .grace(std::time::Duration::ZERO)
        .max_size(Some(1));
    let r = tier.gc(&opts, &cas::no_progress).unwrap();
    assert_eq!(r.evicted_objects, 1, "{r:?}");
    assert!(!tier.object_path(&h).exists());
    assert_eq!(r.outboards_removed, 1, "{r:?}");
    assert!(
        !ob.exists(),
        "the evicted object's outboard stayed in the tier"
    );
    // Still readable, by range too, through the upstream.
    assert_eq!(tier.read_range(&h, 0..4).unwrap(), data(BIG, 11)[..4]);
}

#[test]
fn a_seeking_reader_returns_the_objects_bytes() {
    let (_d, store) = store();
    let bytes = data(BIG, 11);
    let h = store.put_bytes(&bytes).unwrap();
    let mut r = store.verified_reader(&h).unwrap();
    assert_eq!(r.len().unwrap(), BIG);
    let mut rng = 12345u64;
    for _ in 0..200 {
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let at = rng % BIG;
        let len = (rng >> 40) % 70_000;
        r.seek(SeekFrom::Start(at)).unwrap();
        let mut got = vec![0u8; len as usize];
        let n = {
            let mut n = 0;
            while n < got.len() {
                let k = r.read(&mut got[n..]).unwrap();
                if k == 0 {
                    break;
                }
                n += k;
            }
            n
        };
        let end = (at + len).min(BIG);
        assert_eq!(n as u64, end - at);
        assert_eq!(&got[..n], &bytes[at as usize..end as usize]);
    }
    // The streaming reader turns into the verified one at its first seek.
    let mut s = store.reader(&h).unwrap();
    s.seek(SeekFrom::End(-3)).unwrap();
    let mut tail = Vec::new();
    s.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &bytes[bytes.len() - 3..]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Any range of any object (small, one group, with an outboard or without) is the slice.
    #[test]
    fn ranges_are_slices(len in prop_oneof![0u64..3 * G, 4 * 1024 * 1024..4 * 1024 * 1024 + 5 * G],
                         a in any::<u64>(), b in any::<u64>(), drop_outboard in any::<bool>()) {
        let (_d, store) = store();
        let bytes = data(len, (a % 1000) as u32);
        let h = store.put_bytes(&bytes).unwrap();
        if drop_outboard {
            let _ = std::fs::remove_file(outboard_path(&store, &h));
        }
        let (mut s, mut e) = (a % (len + 1), b % (len + 1));
        if s > e {
            std::mem::swap(&mut s, &mut e);
        }
        prop_assert_eq!(store.read_range(&h, s..e).unwrap(), &bytes[s as usize..e as usize]);
    }
}

/// Hostile store: `outboards/` (or a fan-out under it) is a symlink to a directory outside the
/// store. Range reads still return the right bytes, and nothing is read or written through
/// the link.
#[test]
fn a_symlinked_outboards_directory_is_never_followed() {
    let (d, store) = store();
    let bytes = data(BIG, 12);
    let h = store.put_bytes(&bytes).unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let hex = h.to_hex();
    // A planted outboard-shaped file outside, where the link would lead.
    std::fs::create_dir(outside.join(&hex[..2])).unwrap();
    std::fs::write(outside.join(&hex[..2]).join(&hex[2..]), b"planted").unwrap();
    let top = store.root().join("outboards");
    std::fs::remove_dir_all(&top).unwrap();
    std::os::unix::fs::symlink(&outside, &top).unwrap();
    let r = 77 * G + 5..90 * G;
    assert_eq!(
        store.read_range(&h, r.clone()).unwrap(),
        &bytes[r.start as usize..r.end as usize]
    );
    assert_eq!(
        std::fs::read(outside.join(&hex[..2]).join(&hex[2..])).unwrap(),
        b"planted"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    // gc and verify do not descend through it either; verify names it.
    let r = store.verify(&cas::no_progress).unwrap();
    assert!(
        r.bad_files.iter().any(|p| p.path.ends_with("outboards")),
        "{r:?}"
    );
    let opts = cas::GcOptions::default().grace(std::time::Duration::ZERO);
    store.gc(&opts, &cas::no_progress).unwrap();
    assert!(outside.join(&hex[..2]).join(&hex[2..]).exists());
}

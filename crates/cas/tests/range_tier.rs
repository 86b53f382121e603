//! A range read through a tier (issue 21): an object the tier does not hold is read in place
//! in the upstream — only the chunk groups the range touches and the outboard — verified, and
//! without fetching the whole object. One test in its own binary: it measures the bytes this
//! process reads (`rchar` of /proc/self/io), which parallel tests would disturb.

use std::io::{Read, Seek, SeekFrom};

fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_tier_reads_only_the_groups_of_a_range_from_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up_dir = dir.path().join("up");
    let up = cas::Store::init(&up_dir, cas::Options::default()).unwrap();
    let len = 64 << 20;
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8)
        .collect();
    let h = up.put_bytes(&data).unwrap();
    let tier = cas::Store::init(
        dir.path().join("tier"),
        cas::Options::default().upstream(Some(up_dir.clone())),
    )
    .unwrap();

    let at = 40 << 20;
    let before = rchar();
    let got = tier.read_range(&h, at..at + 4096).unwrap();
    let read = rchar() - before;
    assert_eq!(got, &data[at as usize..at as usize + 4096]);
    // The outboard is mapped here (a private local store): its pages touched (at most one
    // per level of the path, 12 for 64 MiB) are not in `rchar`, and are at most 48 KiB.
    eprintln!("read {read} bytes from the upstream for a 4 KiB range");
    assert!(read < 1 << 20, "read {read} bytes for a 4 KiB range");
    assert!(
        !tier.object_path(&h).exists(),
        "the tier did not fetch the whole object"
    );

    // A seeking verified reader goes the same way.
    let mut r = tier.verified_reader(&h).unwrap();
    r.seek(SeekFrom::Start(at + 100)).unwrap();
    let mut buf = [0u8; 50];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(buf[..], data[at as usize + 100..at as usize + 150]);
    assert!(!tier.object_path(&h).exists());

    // Damage in the upstream's copy is found (and reported naming the bytes).
    let p = up.object_path(&h);
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&p, perm).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[at as usize + 5] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let e = tier.read_range(&h, at..at + 10).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
}

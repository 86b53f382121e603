//! `ObjectReader` seeks (for the Python binding's `io.RawIOBase` file object): random access
//! never hands out bytes of an object that does not match its name.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;

fn store() -> (tempfile::TempDir, cas::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = cas::Store::init(dir.path().join("s"), cas::Options::default()).unwrap();
    (dir, store)
}

/// Flips one byte of an object on disk (objects are read-only: make it writable first).
fn corrupt(store: &cas::Store, h: &cas::Hash, at: usize) {
    let p = store.object_path(h);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[at] ^= 1;
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn seeks_read_the_right_bytes() {
    let (_d, store) = store();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let h = store.put_bytes(&data).unwrap();
    let mut r = store.reader(&h).unwrap();
    let mut head = [0u8; 10];
    r.read_exact(&mut head).unwrap();
    assert_eq!(head, data[..10]);
    assert_eq!(r.stream_position().unwrap(), 10);
    assert_eq!(r.seek(SeekFrom::End(-5)).unwrap(), data.len() as u64 - 5);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, data[data.len() - 5..]);
    assert_eq!(
        r.seek(SeekFrom::Current(-100)).unwrap(),
        data.len() as u64 - 100
    );
    let mut mid = [0u8; 100];
    r.read_exact(&mut mid).unwrap();
    assert_eq!(mid[..], data[data.len() - 100..]);
    r.seek(SeekFrom::Start(0)).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    let e = r
        .seek(SeekFrom::Current(-(data.len() as i64) - 1))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
}

#[test]
fn a_seek_verifies_the_whole_object_first() {
    let (_d, store) = store();
    let data = vec![7u8; 100_000];
    let h = store.put_bytes(&data).unwrap();
    // The damage is at the end; the seek targets the start: it must still be found.
    corrupt(&store, &h, 99_999);
    let mut r = store.reader(&h).unwrap();
    let e = r.seek(SeekFrom::Start(1)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    let inner = e.into_inner().unwrap().downcast::<cas::Error>().unwrap();
    assert!(inner.is_corrupt(), "{inner}");
    assert!(inner.to_string().contains(&h.to_hex()), "{inner}");
    // Quarantined: the name no longer holds the bad bytes.
    assert!(!store.object_path(&h).exists());
}

#[test]
fn tell_reads_nothing_and_does_not_verify() {
    let (_d, store) = store();
    let h = store.put_bytes(b"0123456789").unwrap();
    corrupt(&store, &h, 9);
    let mut r = store.reader(&h).unwrap();
    // A seek that does not move (what `tell` is) neither reads nor fails.
    assert_eq!(r.stream_position().unwrap(), 0);
    #[allow(clippy::seek_from_current)] // the explicit form, as Python's tell() sends it
    let pos = r.seek(SeekFrom::Current(0)).unwrap();
    assert_eq!(pos, 0);
    assert!(store.object_path(&h).exists());
    // Reading to the end still catches it.
    let mut all = Vec::new();
    let e = r.read_to_end(&mut all).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn for_this_process_keeps_the_handle_in_the_same_process() {
    let (_d, store) = store();
    let h = store.put_bytes(b"x").unwrap();
    let same = store.for_this_process().unwrap();
    assert_eq!(same.root(), store.root());
    assert_eq!(same.durability(), store.durability());
    assert_eq!(&*same.get(&h).unwrap(), b"x");
    // (Across a fork it opens a fresh handle: crates/cas-py/tests/test_processes.py.)
}

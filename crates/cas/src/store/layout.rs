//! Pure path arithmetic of the on-disk layout (docs/format.md "Layout"). No I/O here.

use std::path::{Path, PathBuf};

use crate::hash::{Hash, HEX_LEN};

/// The `FORMAT` file's first line for the format this library writes.
pub(crate) const FORMAT_LINE: &str = "cas-store 1";
/// The major format version this library reads and writes.
pub(crate) const FORMAT_MAJOR: u32 = 1;

pub(crate) const FORMAT: &str = "FORMAT";
pub(crate) const CONFIG: &str = "config";
pub(crate) const OBJECTS: &str = "objects";
pub(crate) const TMP: &str = "tmp";
pub(crate) const REFS: &str = "refs";
pub(crate) const LOGS: &str = "logs";
pub(crate) const INDEX: &str = "index";
pub(crate) const QUARANTINE: &str = "quarantine";
pub(crate) const TRASH: &str = "trash";
pub(crate) const LOCKS: &str = "locks";
/// Per-user hints (the stat cache of `put -r`), never needed for correctness.
pub(crate) const CACHE: &str = "cache";
/// Outboards of large objects (derived data, docs/format.md "Outboards"): `outboards/ab/cdef…`.
pub(crate) const OUTBOARDS: &str = "outboards";

/// Suffix of lock files next to the file they protect.
pub(crate) const LOCK_SUFFIX: &str = ".lock";

/// `objects/ab/cdef…` for `hash` under `root`.
pub(crate) fn object_path(root: &Path, hash: &Hash) -> PathBuf {
    let mut buf = [0u8; HEX_LEN];
    let hex = hash.to_hex_buf(&mut buf);
    let mut p = PathBuf::with_capacity(root.as_os_str().len() + 1 + OBJECTS.len() + 2 + HEX_LEN);
    p.push(root);
    p.push(OBJECTS);
    p.push(&hex[..2]);
    p.push(&hex[2..]);
    p
}

/// `outboards/ab/cdef…`: the outboard of the object `hash` (the object's path with
/// `outboards` for `objects`).
pub(crate) fn outboard_path(root: &Path, hash: &Hash) -> PathBuf {
    let mut buf = [0u8; HEX_LEN];
    let hex = hash.to_hex_buf(&mut buf);
    let mut p = root.join(OUTBOARDS);
    p.push(&hex[..2]);
    p.push(&hex[2..]);
    p
}

/// Parses a fan-out directory name and a file name inside it back into a hash.
/// Returns `None` for anything that is not exactly a well-formed object name.
pub(crate) fn parse_object_name(dir: &[u8], file: &[u8]) -> Option<Hash> {
    if dir.len() != 2 || file.len() != HEX_LEN - 2 {
        return None;
    }
    let mut hex = [0u8; HEX_LEN];
    hex[..2].copy_from_slice(dir);
    hex[2..].copy_from_slice(file);
    let s = std::str::from_utf8(&hex).ok()?;
    Hash::parse(s).ok()
}

/// Parses the name of a staging file, `HOST.PID.RANDOM`, into host and pid.
/// Hosts may contain dots, so the pid is the second field from the right.
pub(crate) fn parse_staging_name(name: &str) -> Option<(&str, u32)> {
    let (rest, random) = name.rsplit_once('.')?;
    let (host, pid) = rest.rsplit_once('.')?;
    if host.is_empty() || random.is_empty() {
        return None;
    }
    Some((host, pid.parse().ok()?))
}

/// `locks/gc.lock`: the gc lease.
pub(crate) fn gc_lock_path(root: &Path) -> PathBuf {
    root.join(LOCKS).join("gc.lock")
}

/// The name of a trash run directory: `MILLIS.HOST.PID`, with `.evict` for eviction runs.
pub(crate) fn trash_run_name(
    start: std::time::SystemTime,
    host: &str,
    pid: u32,
    evict: bool,
) -> String {
    let millis = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let suffix = if evict { ".evict" } else { "" };
    format!("{millis}.{host}.{pid}{suffix}")
}

/// The name of a quarantined object: `HASH.SECS.PID.N`.
pub(crate) fn quarantine_name(hash: &Hash, secs: u64, pid: u32, n: u32) -> String {
    format!("{hash}.{secs}.{pid}.{n}")
}

/// When a quarantined copy was quarantined (the SECS of `HASH.SECS.PID.N`, or of the older
/// `HASH.SECS.PID`), or `None` for a name cas did not make.
pub(crate) fn parse_quarantine_name(name: &str) -> Option<u64> {
    let mut parts = name.split('.');
    Hash::parse(parts.next()?).ok()?;
    let secs = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some(secs),
        (Some(n), None) if n.parse::<u32>().is_ok() => Some(secs),
        _ => None,
    }
}

/// The name a lock breaker moves a lock to in `locks/`: `broken.HOST.PID.NONCE`.
pub(crate) fn broken_lock_name(host: &str, pid: u32, nonce: &str) -> String {
    format!("broken.{host}.{pid}.{nonce}")
}

/// The name in `tmp/` of a lock holder's commit file, `HOST.PID.fence-NONCE`: the staged new
/// content of the name the lock protects, which a breaker of that lock removes (docs/format.md,
/// "Locks (leases)"). It parses as a staging name, so gc cleans one a dead holder left.
pub(crate) fn fence_name(host: &str, pid: u32, nonce: &str) -> String {
    format!("{host}.{pid}.fence-{nonce}")
}

/// The name in `tmp/` a remover moves a ref aside to before it knows the removal stands:
/// `HOST.PID.removed-NONCE` (a staging name, cleaned by gc if its remover dies).
pub(crate) fn removed_name(host: &str, pid: u32, nonce: &str) -> String {
    format!("{host}.{pid}.removed-{nonce}")
}

/// The path of a ref under `refs/`, of its lock, and of its log under `logs/refs/`.
pub(crate) fn ref_paths(root: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let refs = root.join(REFS);
    (
        refs.join(name),
        refs.join(format!("{name}{LOCK_SUFFIX}")),
        root.join(LOGS).join(REFS).join(name),
    )
}

/// The path of the cache entry for a key hash (`index/ab/<62 hex>`) and of its lock.
pub(crate) fn entry_paths(root: &Path, key_hash: &Hash) -> (PathBuf, PathBuf) {
    let kh = key_hash.to_hex();
    let p = root.join(INDEX).join(&kh[..2]).join(&kh[2..]);
    let mut lock = p.clone().into_os_string();
    lock.push(LOCK_SUFFIX);
    (p, lock.into())
}

/// True if `name` is a fan-out directory's name under `objects/`: two lowercase hex digits.
pub(crate) fn is_fanout_name(name: &[u8]) -> bool {
    name.len() == 2 && name.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The prefix of this process's staging files: `HOST.PID.`.
pub(crate) fn staging_prefix(host: &str, pid: u32) -> String {
    format!("{host}.{pid}.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn object_path_splits_after_two() {
        let h = Hash::of(b"abc");
        let hex = h.to_string();
        let p = object_path(Path::new("/s"), &h);
        assert_eq!(p, Path::new("/s/objects").join(&hex[..2]).join(&hex[2..]));
        assert_eq!(
            parse_object_name(&hex.as_bytes()[..2], &hex.as_bytes()[2..]),
            Some(h)
        );
    }

    #[test]
    fn staging_names() {
        assert_eq!(
            parse_staging_name("node1.cluster.local.4242.AbC12x"),
            Some(("node1.cluster.local", 4242))
        );
        assert_eq!(parse_staging_name("h.notapid.x"), None);
        assert_eq!(parse_staging_name("nodots"), None);
        let p = staging_prefix("h.x", 7);
        assert_eq!(parse_staging_name(&format!("{p}rnd")), Some(("h.x", 7)));
    }

    #[test]
    fn names_of_the_layout() {
        let r = Path::new("/s");
        let (re, lock, log) = ref_paths(r, "a/b");
        assert_eq!(re, Path::new("/s/refs/a/b"));
        assert_eq!(lock, Path::new("/s/refs/a/b.lock"));
        assert_eq!(log, Path::new("/s/logs/refs/a/b"));
        let k = Hash::of(b"key");
        let hex = k.to_string();
        let (e, el) = entry_paths(r, &k);
        assert_eq!(e, Path::new("/s/index").join(&hex[..2]).join(&hex[2..]));
        assert_eq!(el.to_str().unwrap(), format!("{}.lock", e.display()));
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1234);
        assert_eq!(trash_run_name(t, "h.x", 7, false), "1234.h.x.7");
        assert_eq!(trash_run_name(t, "h", 7, true), "1234.h.7.evict");
        assert!(crate::maint::trash::parse_run_name(&trash_run_name(t, "h", 7, true)).is_some());
        assert_eq!(broken_lock_name("h", 1, "n"), "broken.h.1.n");
        assert_eq!(quarantine_name(&k, 5, 6, 0), format!("{hex}.5.6.0"));
        assert_eq!(
            parse_quarantine_name(&quarantine_name(&k, 5, 6, 0)),
            Some(5)
        );
        assert_eq!(parse_quarantine_name(&format!("{hex}.5.6")), Some(5));
        for bad in [
            "",
            "x.5.6.0",
            &format!("{hex}.5"),
            &format!("{hex}.5.6.0.1"),
            &format!("{hex}.-5.6.0"),
        ] {
            assert_eq!(parse_quarantine_name(bad), None, "{bad}");
        }
        assert_eq!(gc_lock_path(r), Path::new("/s/locks/gc.lock"));
    }

    proptest! {
        #[test]
        fn object_names_never_panic(d in proptest::collection::vec(any::<u8>(), 0..4),
                                    f in proptest::collection::vec(any::<u8>(), 0..70)) {
            let _ = parse_object_name(&d, &f);
        }

        #[test]
        fn staging_round_trip(host in "[a-z0-9.-]{1,20}", pid in any::<u32>(), r in "[A-Za-z0-9]{1,10}") {
            let name = format!("{}{}", staging_prefix(&host, pid), r);
            prop_assert_eq!(parse_staging_name(&name), Some((host.as_str(), pid)));
        }
    }
}

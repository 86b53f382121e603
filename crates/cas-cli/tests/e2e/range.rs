//! `cas get HASH --range START-END` through the real binary (issue 21): inclusive offsets as in
//! HTTP, `START-` to the end, `-N` the last N bytes, `-o FILE` atomic; malformed ranges are usage errors (exit 2),
//! ranges past the end fail naming the object and its size; a damaged group inside the range
//! fails it, outside does not.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::{cas, data, run, run_ok, text, Store};

const G: usize = 16 * 1024;
const LEN: usize = 5 * 1024 * 1024 + 333;

fn put_big(s: &Store, seed: u64) -> (String, Vec<u8>) {
    let bytes = data(LEN, seed);
    let input = s.input("big", &bytes);
    let h = run_ok(cas(s).arg("put").arg(&input)).trim().to_owned();
    (h, bytes)
}

fn get_range(s: &Store, h: &str, range: &str) -> std::process::Output {
    run(cas(s).args(["get", h, "--range", range]))
}

#[test]
fn ranges_print_exactly_their_bytes() {
    let s = Store::new();
    let (h, bytes) = put_big(&s, 1);
    for (arg, want) in [
        ("0-0", &bytes[0..1]),
        ("0-16383", &bytes[..G]),
        ("16383-16384", &bytes[G - 1..=G]),
        ("1000000-1004095", &bytes[1_000_000..1_004_096]),
        (&format!("{}-", LEN - 10), &bytes[LEN - 10..]),
        (&format!("{LEN}-"), &bytes[LEN..]),
        ("0-", &bytes[..]),
        ("-5", &bytes[LEN - 5..]),
        (&format!("-{}", LEN + 5), &bytes[..]),
    ] {
        let out = get_range(&s, &h, arg);
        assert!(out.status.success(), "{arg}: {}", text(&out.stderr));
        assert!(
            out.stdout == want,
            "{arg}: wrong bytes ({} bytes)",
            out.stdout.len()
        );
    }
    // -o FILE: written whole, atomically.
    let dst = s.scratch.join("part");
    run_ok(
        cas(&s)
            .args(["get", &h, "--range", "5000000-5100000", "-o"])
            .arg(&dst),
    );
    assert!(std::fs::read(&dst).unwrap() == bytes[5_000_000..=5_100_000]);
    // Prefixes of the hash work as for any get.
    let out = get_range(&s, &h[..12], "7-9");
    assert_eq!(out.stdout, &bytes[7..=9]);
}

#[test]
fn bad_ranges_are_refused_clearly() {
    let s = Store::new();
    let (h, _) = put_big(&s, 2);
    for bad in [
        "",
        "5",
        "-",
        "--5",
        "a-b",
        "9-3",
        "1-2-3",
        " 1-2",
        "99999999999999999999999-",
    ] {
        let out = get_range(&s, &h, bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("byte range"),
            "{bad:?}: {}",
            text(&out.stderr)
        );
    }
    for past in [
        format!("0-{LEN}"),
        format!("{}-", LEN + 1),
        format!("{LEN}-{LEN}"),
    ] {
        let out = get_range(&s, &h, &past);
        assert_eq!(out.status.code(), Some(1), "{past}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&h) && err.contains(&format!("{LEN} bytes")),
            "{past}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    // Nothing is created at -o for a range past the end.
    let dst = s.scratch.join("none");
    let out = run(cas(&s)
        .args(["get", &h, "--range", &format!("0-{LEN}"), "-o"])
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1));
    assert!(!dst.exists());
    // --range and -r do not go together.
    let out = run(cas(&s).args(["get", &h, "-r", "--range", "0-1", "-o", "x"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn damage_fails_only_the_ranges_that_touch_it() {
    let s = Store::new();
    let (h, bytes) = put_big(&s, 3);
    let p = s.object_path(&h);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[40 * G + 5] ^= 1;
    std::fs::write(&p, b).unwrap();
    let out = get_range(&s, &h, &format!("{}-{}", 39 * G, 40 * G - 1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == bytes[39 * G..40 * G]);
    let dst = s.scratch.join("bad");
    std::fs::write(&dst, b"old").unwrap();
    let out = run(cas(&s)
        .args([
            "get",
            &h,
            "--range",
            &format!("{}-{}", 40 * G, 40 * G + 10),
            "-o",
        ])
        .arg(&dst));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&h) && err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"old", "not replaced");
}

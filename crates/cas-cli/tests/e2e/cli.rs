//! Command-line surface tests of the `cas` binary: usage errors and help.

use std::path::Path;
use std::process::Command;

use crate::common::{cas_home, run, text};

/// A `cas` command isolated from the caller's environment: an explicit store in `dir`, no
/// `CAS_STORE`, and a `HOME`/`XDG_CACHE_HOME` inside `dir` so nothing can reach a real store.
fn cas(dir: &Path) -> Command {
    cas_home(&dir.join("store"), dir)
}

/// A well-formed hash (64 lowercase hex characters): malformed variants are derived from it.
const GOOD: &str = "d74981efa70a0c880b8d8c1985d075dbcbf679b99a5f9914e5aaf96b831a9e24";

fn malformed() -> Vec<(&'static str, String)> {
    vec![
        // Shorter than the 8 digits a prefix needs (`get` takes unique prefixes of 8–63).
        ("short", GOOD[..7].to_owned()),
        ("long", format!("{GOOD}0")),
        // Not uppercase: since issue 23 the command line lowers it, and
        // cli_rules::the_small_things_of_issue_23 tests that get, has and rm accept it.
        ("non-hex", format!("{}g", &GOOD[..63])),
        ("slash", format!("{}/{}", &GOOD[..2], &GOOD[3..])),
        ("dotdot", format!("../{}", &GOOD[3..])),
        ("bare dotdot", "../..".to_owned()),
    ]
}

#[test]
fn help_exits_zero_and_lists_commands() {
    let d = tempfile::tempdir().unwrap();
    let out = run(cas(d.path()).arg("--help"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for sub in ["put", "get", "has", "rm", "ls", "stats"] {
        assert!(
            stdout.contains(sub),
            "--help does not mention {sub}:\n{stdout}"
        );
    }
    let out = run(cas(d.path()).args(["get", "--help"]));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("--output"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let d = tempfile::tempdir().unwrap();
    let out = run(cas(d.path()).arg("frobnicate"));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("frobnicate"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
    // No subcommand at all is a usage error too.
    let out = run(&mut cas(d.path()));
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    // A usage error must not have created the store.
    assert!(!d.path().join("store").exists());
}

#[test]
fn malformed_hashes_are_usage_errors_naming_the_input() {
    let d = tempfile::tempdir().unwrap();
    for sub in ["get", "has", "rm"] {
        for (what, bad) in malformed() {
            let out = run(cas(d.path()).arg(sub).arg(&bad));
            let stderr = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "cas {sub} with a {what} hash {bad:?}: stderr: {stderr}"
            );
            assert!(
                stderr.contains(&bad),
                "cas {sub}: stderr does not name the {what} input {bad:?}: {stderr}"
            );
            assert!(stderr.contains("invalid"), "cas {sub} {bad:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "cas {sub} {bad:?}: {stderr}");
            assert!(out.stdout.is_empty(), "cas {sub} {bad:?} wrote to stdout");
        }
        // A malformed hash after a good one is rejected as well (nothing is looked up).
        if sub != "get" {
            let out = run(cas(d.path()).args([sub, GOOD, "nothex"]));
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
            assert!(text(&out.stderr).contains("nothex"));
        }
    }
    let out = run(cas(d.path())
        .args(["get", "-o"])
        .arg(d.path().join("out"))
        .arg("zz"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!d.path().join("out").exists());
    // Nothing above got as far as creating the store.
    assert!(!d.path().join("store").exists());
}

#[test]
fn missing_arguments_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    for sub in ["get", "has", "rm"] {
        let out = run(cas(d.path()).arg(sub));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "cas {sub}: {stderr}");
        assert!(!stderr.contains("panicked"), "cas {sub}: {stderr}");
    }
}

#[test]
fn unique_prefixes_resolve_and_ambiguity_is_named() {
    let d = tempfile::tempdir().unwrap();
    let init = run(cas(d.path()).arg("init"));
    assert!(init.status.success(), "{}", text(&init.stderr));
    // An 8-digit prefix resolves; one that matches nothing is named (ambiguity: unit test
    // of Store::resolve_prefix, with crafted names).
    let f = d.path().join("a");
    std::fs::write(&f, b"prefix me").unwrap();
    let out = run(cas(d.path()).arg("put").arg(&f));
    let h = text(&out.stdout).trim().to_owned();
    let got = run(cas(d.path()).args(["get", &h[..8]]));
    assert_eq!(text(&got.stdout), "prefix me", "{}", text(&got.stderr));
    let other = if h.starts_with("00") {
        "ffffffff"
    } else {
        "00000000"
    };
    let miss = run(cas(d.path()).args(["get", other]));
    assert_eq!(miss.status.code(), Some(1));
    assert!(text(&miss.stderr).contains(other), "{}", text(&miss.stderr));
}

//! The Python package (`crates/cas-py`, issue 20) as part of the one test command: installed
//! as a user would (`pip install ./crates/cas-py` into a fresh virtual environment, maturin from
//! `PyPI` as the build backend), then its pytest suite, with mypy so the typed examples are
//! checked. The package is its own cargo workspace (docs/decisions.md, "The Python package"),
//! so `cargo test --workspace` does not build it: this test does.
//!
//! Needs `python3` with `venv` and the package index. Without them it says so and passes,
//! unless `CAS_REQUIRE_PYTHON=1` (set by `.ci/run`), which turns a missing prerequisite into a
//! failure. Takes ~2.5 min on 2 cores (the release build of the extension inside pip).

use crate::common;

use std::process::Command;

use common::text;

fn required() -> bool {
    std::env::var_os("CAS_REQUIRE_PYTHON").is_some_and(|v| v == "1")
}

#[test]
fn the_python_package_installs_and_its_suite_passes() {
    let venv_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !venv_ok {
        assert!(
            !required(),
            "CAS_REQUIRE_PYTHON=1 but python3 with venv and ensurepip is missing"
        );
        eprintln!("SKIPPED: python3 with venv and ensurepip is missing");
        return;
    }
    let root = common::repo();
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let step = |what: &str, cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    step(
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    );
    // The extension is built in a directory of its own: the `cargo test` running this test
    // holds the lock of the workspace's target directory until it ends.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("cas-py");
    step(
        "pip install ./crates/cas-py pytest mypy",
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .arg(root.join("crates/cas-py"))
            .args(["pytest", "mypy"])
            .env("CARGO_TARGET_DIR", &target),
    );
    // pytest exits 5 when it collects nothing: a failure like any other here.
    let out = step(
        "pytest",
        Command::new(venv.join("bin/python"))
            .args(["-m", "pytest", "-q", "tests"])
            .current_dir(root.join("crates/cas-py"))
            .env("CAS_REQUIRE_MYPY", "1")
            .env_remove("CAS_STORE"),
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.contains(" passed") && !last.contains("failed"),
        "pytest's summary: {last}"
    );
    eprintln!("python: {last}");
}

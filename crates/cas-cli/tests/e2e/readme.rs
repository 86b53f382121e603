//! Issue 19: every command of the README's tour ("## A 30-second tour"), run in order by bash
//! against a fresh default store with the real `cas` binary. The README's venv example could
//! not work; this keeps the tour honest.
//!
//! The block is read from README.md itself (the first fenced `sh` block under the tour's
//! heading); each command line must exit 0 (pipelines with `pipefail`), checked line by line.
//! Two things are mapped, and only these: `cas` is the binary under test (a shell function;
//! the tour's `alias` line is inert in a non-interactive shell), and the cluster paths
//! `/shared/cas` and `/local/cas` become directories of the test. `curl`, `pip` and `python3`
//! are stand-ins on `PATH` (the test has no network): they do what the tour's calls ask of
//! them, so what is tested is what cas does with their output.

use crate::common;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{blake3_hex, cas_bin, files_under, text};

/// The command lines of the tour (comment-only lines dropped), with their README line numbers.
fn tour_commands(readme: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let heading = lines
        .iter()
        .position(|l| l.starts_with("## ") && l.contains("tour"))
        .expect("README.md has no tour heading (## … tour)");
    let open = heading
        + lines[heading..]
            .iter()
            .position(|l| l.trim() == "```sh")
            .expect("no ```sh block under the tour heading");
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate().skip(open + 1) {
        if l.trim() == "```" {
            return out;
        }
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        out.push((i + 1, (*l).to_owned()));
    }
    panic!("the tour's ```sh block is not closed");
}

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `curl … -o FILE URL`, `pip wheel … -w DIR` and `python3 -m venv DIR` (whose `bin/pip
/// install -f DIR` succeeds only if DIR holds a wheel).
fn stand_ins(bin: &Path) {
    fs::create_dir_all(bin).unwrap();
    script(
        &bin.join("curl"),
        r#"out=""
while [ $# -gt 0 ]; do [ "$1" = -o ] && { out="$2"; shift; }; shift; done
[ -n "$out" ] || exit 2
printf 'pkg-1.2 tarball\n' > "$out"
"#,
    );
    script(
        &bin.join("pip"),
        r#"dir=""
while [ $# -gt 0 ]; do [ "$1" = -w ] && { dir="$2"; shift; }; shift; done
[ -n "$dir" ] || exit 2
mkdir -p "$dir" && printf 'wheel\n' > "$dir/pkg-1.2-py3-none-any.whl"
"#,
    );
    script(
        &bin.join("python3"),
        r#"[ "$1 $2" = "-m venv" ] || exit 2
mkdir -p "$3/bin" || exit 1
cat > "$3/bin/pip" <<'PIP'
#!/bin/sh
dir=""
while [ $# -gt 0 ]; do [ "$1" = -f ] && { dir="$2"; shift; }; shift; done
ls "$dir"/*.whl >/dev/null 2>&1
PIP
chmod 755 "$3/bin/pip"
"#,
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for f in files_under(from) {
        let dst = to.join(f.strip_prefix(from).unwrap());
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(&f, &dst).unwrap();
    }
}

#[test]
fn every_command_of_the_readme_tour_runs() {
    let repo = common::repo();
    let readme = fs::read_to_string(repo.join("README.md")).unwrap();
    let commands = tour_commands(&readme);
    assert!(
        commands.len() >= 20,
        "the tour has only {} commands",
        commands.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    fs::copy(repo.join("README.md"), work.join("README.md")).unwrap();
    // A real source tree for the tour's `src/` (the workspace root has none).
    copy_dir(&repo.join("crates/cas-cli/src"), &work.join("src"));
    let bin = dir.path().join("bin");
    stand_ins(&bin);
    let shared: PathBuf = dir.path().join("shared/cas");
    let local: PathBuf = dir.path().join("local/cas");

    // The tour runs for real: it must not write outside its directory (an earlier tour
    // wrote completions into /etc).
    for (n, line) in &commands {
        let code = line.split("  #").next().unwrap_or(line);
        assert!(
            !code.contains("> /") && !code.contains(">/"),
            "README.md line {n} writes to an absolute path: {line}"
        );
    }
    let mut sh = String::from("set -o pipefail\ncas() { \"$CAS_BIN\" \"$@\"; }\n");
    for (n, line) in &commands {
        let line = line
            .replace("/shared/cas", &shared.display().to_string())
            .replace("/local/cas", &local.display().to_string());
        sh.push_str(&line);
        sh.push('\n');
        let _ = writeln!(
            sh,
            "rc=$?; [ $rc -eq 0 ] || {{ echo \"README.md line {n} exited $rc: {}\" >&2; exit 1; }}",
            line.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        );
    }
    sh.push_str("echo \"h=$h h2=$h2 t=$t\"\n");
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", &sh])
        .current_dir(&work)
        .env("CAS_BIN", cas_bin())
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("PATH", path)
        .env_remove("CAS_STORE")
        .env_remove("CAS_UPSTREAM")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the tour failed:\n{stderr}\n--- stdout:\n{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // What the tour's comments promise.
    let (h, h2) = (blake3_hex(readme.as_bytes()), blake3_hex(b"hello\n"));
    assert!(
        stdout.contains(&format!("h={h} h2={h2} t=")),
        "put printed the wrong hashes: {stdout}"
    );
    let first = readme.lines().next().unwrap();
    assert!(stdout.contains(first), "get | head -3: {stdout}");
    assert_eq!(fs::read(work.join("copy.md")).unwrap(), readme.as_bytes());
    for f in files_under(&work.join("src")) {
        let rel = f.strip_prefix(work.join("src")).unwrap();
        assert_eq!(
            fs::read(work.join("restored").join(rel)).unwrap(),
            fs::read(&f).unwrap()
        );
    }
    assert_eq!(fs::read(work.join("ref.fa")).unwrap(), b">chr1\nACGT\n");
    assert_eq!(
        fs::read(work.join("pkg.tgz")).unwrap(),
        b"pkg-1.2 tarball\n"
    );
    assert!(work.join("wheels/pkg-1.2-py3-none-any.whl").is_file());
    assert!(
        stdout.contains(&format!("release/v1 {h2}")),
        "ref ls on the tier: {stdout}"
    );
    assert!(
        home.join(".cache/cas/FORMAT").is_file(),
        "the default store"
    );
    assert!(
        fs::read_to_string(work.join("cas.bash"))
            .unwrap()
            .contains("complete"),
        "completions"
    );
}

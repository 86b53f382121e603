//! Test hooks (undocumented, read from the environment): points where a test can make
//! concurrent `cas` processes meet without sleeping.

use std::path::Path;
use std::time::Duration;

use crate::{output, signals};

/// A test hook (undocumented, for the ensure and tiers modules of crates/cas-cli/tests/e2e): `CAS_TEST_BARRIER=N:DIR`
/// makes `ref set` and `key set` create `DIR/PID` just before they update the name, then wait
/// until `DIR` holds N files (at most 60 s) and print `cas-test: barrier passed` on stderr
/// (or `cas-test: barrier timed out`). A test that sees every setter pass knows they
/// overlapped: none updated the name before all were about to.
pub(crate) fn barrier() {
    let Ok(v) = std::env::var("CAS_TEST_BARRIER") else {
        return;
    };
    let Some((n, dir)) = v.split_once(':') else {
        return;
    };
    let Ok(n) = n.parse::<usize>() else { return };
    let dir = Path::new(dir);
    let _ = std::fs::write(dir.join(std::process::id().to_string()), "");
    let until = std::time::Instant::now() + Duration::from_mins(1);
    loop {
        if std::fs::read_dir(dir).map_or(0, Iterator::count) >= n {
            eprintln!("cas-test: barrier passed");
            return;
        }
        if std::time::Instant::now() > until {
            eprintln!("cas-test: barrier timed out");
            return;
        }
        std::thread::sleep(Duration::from_millis(1)); // polling the other setters' arrival
    }
}

/// A test hook (undocumented, for crates/cas-cli/tests/e2e/hostile.rs): `CAS_TEST_RESTORE_PAUSE_AT=BYTES` makes
/// the first restore progress report at or past BYTES print `cas-test: restore paused` on
/// stderr and wait (at most 60 s) until a signal has arrived, so that a test can signal a
/// restore at a chosen point without sleeping — while the restore's other threads go on.
pub(crate) fn pause_at() -> Option<(u64, std::sync::atomic::AtomicBool)> {
    let at = std::env::var("CAS_TEST_RESTORE_PAUSE_AT").ok()?;
    Some((at.parse().ok()?, std::sync::atomic::AtomicBool::new(false)))
}

pub(crate) fn pause((at, fired): &(u64, std::sync::atomic::AtomicBool), done: u64) {
    use std::sync::atomic::Ordering;
    if done < *at || fired.swap(true, Ordering::SeqCst) {
        return;
    }
    output::above_bars(|| eprintln!("cas-test: restore paused"));
    signals::wait_for_signal(Duration::from_mins(1));
}

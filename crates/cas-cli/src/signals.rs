//! SIGINT, SIGTERM and SIGHUP: abandon what is in flight, then exit 128 + the signal.
//!
//! The signals are received by `signal-hook`'s iterator on an ordinary thread (its handler only
//! writes to a pipe), so the clean-up — removing this process's staging files and temporary
//! outputs and releasing its own locks, all through the library's
//! `Store::abandon_own_staging` — runs as normal code, not inside a signal handler.

use std::sync::Mutex;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The stores whose `tmp/` is cleaned (two for push and pull).
static STORES: Mutex<Vec<cas::Store>> = Mutex::new(Vec::new());

/// Starts the thread that waits for the signals. Call first thing in `main`.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let stores = STORES
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cas::abandon_temporaries();
                for store in stores.iter() {
                    store.abandon_own_staging();
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// Adds a store whose `tmp/` is cleaned if a signal comes (with its upstream's, for a tier).
pub fn set_store(store: &cas::Store) {
    STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(store.clone());
}

//! SIGINT, SIGTERM and SIGHUP: abandon what is in flight, then exit 128 + the signal.
//!
//! The signals are received by `signal-hook`'s iterator on an ordinary thread (its handler only
//! writes to a pipe), so the clean-up — removing this process's staging files and temporary
//! outputs and releasing its own locks, all through the library's
//! `Store::abandon_own_staging` — runs as normal code, not inside a signal handler. The
//! library's clean-up first stops work in flight (a tree restore's threads) and waits for it,
//! so nothing is still being written into a temporary it removes.
//!
//! Once a signal has arrived, the command's own outcome no longer decides the exit status:
//! the work it interrupted fails (`interrupted`, or whatever the clean-up pulled from under
//! it), and the main thread then waits for this thread to exit 128 + the signal
//! ([`exit_if_signalled`]) instead of printing that failure and exiting 1.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The stores whose `tmp/` is cleaned (two for push and pull).
static STORES: Mutex<Vec<cas::Store>> = Mutex::new(Vec::new());
/// The signal received, 0 before one is.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Notified when a signal arrives (for [`wait_for_signal`]).
static ARRIVED: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Starts the thread that waits for the signals. Call first thing in `main`.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                {
                    let _g = ARRIVED.0.lock();
                    RECEIVED.store(sig, Ordering::SeqCst);
                    ARRIVED.1.notify_all();
                }
                let stores = STORES
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cas::abandon_temporaries();
                // After the work in flight is stopped (above), before the slower clean-up:
                // erased earlier, the bar left a window in which a restore could finish.
                crate::output::clear_bars();
                for store in stores.iter() {
                    store.abandon_own_staging();
                }
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// The signal this process received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Waits until a signal has arrived, at most `limit`.
pub fn wait_for_signal(limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut g = ARRIVED
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while received().is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        g = ARRIVED
            .1
            .wait_timeout(g, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
}

/// If a signal arrived, never returns: the signal thread is cleaning up and exits the process
/// with 128 + the signal. Call before reporting a failure.
pub fn exit_if_signalled() {
    if received().is_some() {
        loop {
            std::thread::park();
        }
    }
}

/// Adds a store whose `tmp/` is cleaned if a signal comes (with its upstream's, for a tier).
pub fn set_store(store: &cas::Store) {
    STORES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(store.clone());
}

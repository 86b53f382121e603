//! Progress reporting and interruption for long operations (verify, gc, gets, tree puts and
//! restores).

use std::sync::Arc;

/// A progress report: which phase, how far, out of how much (when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The phase ("mark", "sweep", "hash", "get", "restore", "put", …).
    pub phase: &'static str,
    /// Items (or bytes, for the byte-counting phases) done in this phase.
    pub done: u64,
    /// Items in this phase, if known.
    pub total: Option<u64>,
}

/// A progress callback. It may be called from several threads at once. Returning `false`
/// asks the operation to stop at the next safe point; it then fails with
/// [`crate::Error::Interrupted`], leaving the store consistent.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) -> bool + Sync);

/// A callback that ignores progress and never interrupts.
pub fn no_progress(_: Progress) -> bool {
    true
}

/// A progress callback held by an options value ([`crate::PutDirOptions::progress`],
/// [`crate::CheckoutOptions::progress`]): shared, so the options stay cheap to clone. Two
/// hooks are equal only if they are the same callback.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// let last = Arc::new(AtomicU64::new(0));
/// let l = last.clone();
/// let hook = cas::ProgressHook::new(move |p| { l.store(p.done, Ordering::Relaxed); true });
/// assert!(hook.report("restore", 5, Some(10)));
/// assert_eq!(last.load(Ordering::Relaxed), 5);
/// assert_eq!(hook, hook.clone());
/// ```
#[derive(Clone)]
pub struct ProgressHook(Arc<dyn Fn(Progress) -> bool + Send + Sync>);

impl ProgressHook {
    /// Wraps a callback (see [`ProgressFn`] for what its result means).
    pub fn new(f: impl Fn(Progress) -> bool + Send + Sync + 'static) -> Self {
        ProgressHook(Arc::new(f))
    }

    /// Calls the callback; `false`: the caller asked to stop.
    pub fn report(&self, phase: &'static str, done: u64, total: Option<u64>) -> bool {
        (self.0)(Progress { phase, done, total })
    }

    /// The callback as a [`ProgressFn`].
    pub fn as_fn(&self) -> ProgressFn<'_> {
        &*self.0
    }
}

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook(..)")
    }
}

impl PartialEq for ProgressHook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ProgressHook {}

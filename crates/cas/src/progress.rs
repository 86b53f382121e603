//! Progress reporting and interruption for long operations (verify, gc).

/// A progress report: which phase, how far, out of how much (when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The phase ("mark", "sweep", "hash", …).
    pub phase: &'static str,
    /// Items done in this phase.
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

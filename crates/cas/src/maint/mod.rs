//! Maintenance: marking what is reachable, gc and its trash, verification, doctor, usage,
//! listing, and removing an object by hand.

pub(crate) mod doctor;
pub(crate) mod gc;
pub(crate) mod hashes;
pub(crate) mod list;
pub(crate) mod mark;
pub(crate) mod remove;
pub(crate) mod trash;
pub(crate) mod usage;
pub(crate) mod verify;

use crate::error::Result;
use crate::maint::doctor::DoctorReport;
use crate::maint::gc::{GcOptions, GcReport};
use crate::maint::verify::VerifyReport;
use crate::progress::ProgressFn;
use crate::store::tier::Maintainer;
use crate::Store;

/// A standalone store's maintenance: gc with trash and grace, verify and doctor of its
/// directory.
struct Standalone;

impl Maintainer for Standalone {
    fn gc(&self, store: &Store, opts: &GcOptions, progress: ProgressFn<'_>) -> Result<GcReport> {
        store.gc_standalone(opts, progress)
    }
    fn verify(&self, store: &Store, progress: ProgressFn<'_>) -> Result<VerifyReport> {
        store.verify_standalone(progress)
    }
    fn doctor(&self, store: &Store, fix: bool) -> Result<DoctorReport> {
        store.doctor_standalone(fix)
    }
}

impl Store {
    /// Who maintains this store: itself, or the tier chosen when it was opened.
    pub(crate) fn maintainer(&self) -> &dyn Maintainer {
        match self.tier.as_deref() {
            Some(t) => &*t.maintainer,
            None => &Standalone,
        }
    }
}

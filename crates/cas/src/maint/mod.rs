//! Maintenance: marking what is reachable, gc and its trash, verification, doctor, usage,
//! listing, and removing an object by hand.

pub(crate) mod doctor;
pub(crate) mod gc;
pub(crate) mod list;
pub(crate) mod mark;
pub(crate) mod remove;
pub(crate) mod trash;
pub(crate) mod usage;
pub(crate) mod verify;

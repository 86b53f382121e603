//! Putting objects: the staging protocol every file of the store is written through, the
//! streaming writer, and batches.

pub(crate) mod batch;
pub(crate) mod stage;
pub(crate) mod writer;

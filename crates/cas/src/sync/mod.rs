//! Between stores: tiers (a local store in front of an upstream) and push/pull.

pub(crate) mod transfer;
pub(crate) mod upstream;

//! Getting objects out: locating and verifying them, copying them out in bounded memory,
//! writing a destination path, and materializing a real file.

pub(crate) mod copyout;
pub(crate) mod destination;
pub(crate) mod get;
pub(crate) mod materialize;

//! The store itself: the handle every operation hangs off, creating and opening stores, their
//! options and `config` file, the on-disk layout's names, and abandoning this process's
//! temporaries on a signal.

pub(crate) mod abandon;
pub(crate) mod config;
pub(crate) mod handle;
pub(crate) mod init;
pub(crate) mod layout;
pub(crate) mod tier;

//! One module per command family; each turns parsed arguments into library calls and
//! reports through [`crate::render`].

pub(crate) mod ensure;
pub(crate) mod get;
pub(crate) mod inspect;
pub(crate) mod keys;
pub(crate) mod maint;
pub(crate) mod man;
pub(crate) mod put;
pub(crate) mod refs;
pub(crate) mod sync;

//! The local names backend and the choice of backend: a store's refs and cache entries live
//! in its own directory ([`Here`]) unless it is a tier, whose names live where its tier says
//! (the upstream, `crate::sync::upstream`). The choice is made when the store is opened (the
//! handle's tier); the operations in `refs.rs` and `entries.rs` call [`Store::names`] and
//! never ask which backend it is.

use std::ops::Deref;

use crate::error::Result;
use crate::hash::Hash;
use crate::names::entries::Entry;
use crate::names::refs::{RefLogEntry, RefLogLine, RefsReport};
use crate::store::tier::Names;
use crate::{Expect, Store};

/// This store's own directory as the names backend.
pub(crate) struct Here<'a>(pub(crate) &'a Store);

/// The names backend of a store handle: its own directory, or the one its tier chose.
pub(crate) enum NamesRef<'a> {
    Here(Here<'a>),
    Other(&'a dyn Names),
}

impl<'a> Deref for NamesRef<'a> {
    type Target = dyn Names + 'a;
    fn deref(&self) -> &Self::Target {
        match self {
            NamesRef::Here(h) => h,
            NamesRef::Other(n) => *n,
        }
    }
}

impl Store {
    /// Where this handle's refs and cache entries live (chosen when it was opened).
    pub(crate) fn names(&self) -> NamesRef<'_> {
        match self.tier.as_deref() {
            Some(t) => NamesRef::Other(&*t.names),
            None => NamesRef::Here(Here(self)),
        }
    }
}

impl Names for Here<'_> {
    fn get_ref(&self, name: &str) -> Result<Option<Hash>> {
        self.0.read_ref_file(name)
    }
    fn set_ref(
        &self,
        name: &str,
        new: Hash,
        expect: Expect,
        message: &str,
    ) -> Result<Option<Hash>> {
        self.0.update_ref(name, Some(new), expect, message)
    }
    fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash> {
        self.0.remove_ref_here(name, expect)
    }
    fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>> {
        self.0.list_refs_here(prefix)
    }
    fn refs_report(&self, prefix: &str) -> Result<RefsReport> {
        Ok(self.0.refs_report_here(prefix))
    }
    fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>> {
        let mut entries = Vec::new();
        self.0.reflog_each_here(name, None, &mut |line| {
            entries.extend(line.ok());
            Ok(())
        })?;
        Ok(entries)
    }
    fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(RefLogLine) -> Result<()>,
    ) -> Result<()> {
        self.0.reflog_each_here(name, last, f)
    }
    fn entry(&self, key: &[u8]) -> Result<Entry> {
        self.0.entry_here(key)
    }
    fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>> {
        self.0.set_keyed_here(key, hash, metadata, expect)
    }
    fn remove_keyed(&self, key: &[u8]) -> Result<()> {
        self.0.remove_keyed_here(key)
    }
    fn list_keys(&self) -> Result<Vec<Result<Entry>>> {
        Ok(self.0.iter_keys()?.collect())
    }
    fn publish_keyed(
        &self,
        publish: &mut dyn FnMut() -> Result<()>,
        key: &[u8],
        hash: Hash,
        size: u64,
        metadata: &[u8],
    ) -> Result<()> {
        self.0
            .publish_keyed_here(publish, key, hash, size, metadata)
    }
    fn entry_used(&self, key: &[u8], used: &mut dyn FnMut(&Entry) -> Result<()>) -> Result<Entry> {
        self.0.entry_used_here(key, used)
    }
}

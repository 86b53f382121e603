//! The tier seam, chosen when a store is opened (as git's alternates and gix-odb's small
//! traits): an object source after this store's own directory ([`Upstream`]) and the backend
//! where names live ([`Names`]): this store's directory, or the upstream. The protocols
//! behind them live in `crate::sync::upstream` (fetch, write-through, the tier's gc) and
//! `crate::names` (the local backend); this module only defines the seam, so that the
//! store's handle, below both, can hold it.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::names::entries::Entry;
use crate::names::refs::RefLogEntry;
use crate::Expect;

/// Where a store's refs and cache entries live: its own directory, or, for a tier, its
/// upstream. Chosen when the store is opened (docs/architecture.md); the operations on refs
/// and entries call it and never ask which it is. The methods mean what the
/// [`Store`](crate::Store) methods
/// of the same names mean.
///
/// Every method may fail with [`Error::Upstream`] when a remote backend cannot be reached;
/// "not there" answers are `Ok(None)` or the usual not-found errors ([`Error::KeyNotFound`],
/// [`Error::RefNotFound`]).
pub trait Names: Send + Sync {
    /// A ref's value.
    fn get_ref(&self, name: &str) -> Result<Option<Hash>>;
    /// Sets a ref with compare-and-swap (as [`Store::set_ref_msg`](crate::Store::set_ref_msg)).
    fn set_ref(&self, name: &str, new: Hash, expect: Expect, message: &str)
        -> Result<Option<Hash>>;
    /// Removes a ref (as [`Store::remove_ref`](crate::Store::remove_ref)).
    fn remove_ref(&self, name: &str, expect: Expect) -> Result<Hash>;
    /// Refs whose names start with `prefix`, sorted.
    fn list_refs(&self, prefix: &str) -> Result<Vec<(String, Hash)>>;
    /// Refs whose names start with `prefix`, sorted, and the damaged ones by path (as
    /// [`Store::refs_report`](crate::Store::refs_report)). The default lists with
    /// [`Names::list_refs`], which reports no damage apart (the first damaged ref is its error).
    ///
    /// # Errors
    /// As [`Names::list_refs`].
    fn refs_report(&self, prefix: &str) -> Result<crate::RefsReport> {
        Ok((self.list_refs(prefix)?, Vec::new()))
    }
    /// A ref's history.
    fn reflog(&self, name: &str) -> Result<Vec<RefLogEntry>>;
    /// A ref's history, line by line (as [`Store::reflog_each`](crate::Store::reflog_each)). The
    /// default collects [`Names::reflog`] (which reports no damaged lines), then keeps its last
    /// `last` entries.
    ///
    /// # Errors
    /// As [`Names::reflog`]; whatever `f` returns.
    fn reflog_each(
        &self,
        name: &str,
        last: Option<usize>,
        f: &mut dyn FnMut(crate::RefLogLine) -> Result<()>,
    ) -> Result<()> {
        let entries = self.reflog(name)?;
        let skip = last.map_or(0, |n| entries.len().saturating_sub(n));
        entries.into_iter().skip(skip).try_for_each(|e| f(Ok(e)))
    }
    /// A cache entry.
    fn entry(&self, key: &[u8]) -> Result<Entry>;
    /// Sets a cache entry with compare-and-swap (as [`Store::set_keyed`](crate::Store::set_keyed)).
    fn set_keyed(
        &self,
        key: &[u8],
        hash: Hash,
        metadata: &[u8],
        expect: Expect,
    ) -> Result<Option<Hash>>;
    /// Removes a cache entry.
    fn remove_keyed(&self, key: &[u8]) -> Result<()>;
    /// All cache entries (an undecodable one is an `Err` item).
    fn list_keys(&self) -> Result<Vec<Result<Entry>>>;
    /// Refuses at once if names cannot be written here (a read-only upstream), before a
    /// caller does work whose result it could not name. The default accepts.
    ///
    /// # Errors
    /// [`Error::Upstream`] naming the backend.
    fn writable(&self) -> Result<()> {
        Ok(())
    }
    /// Publishes an object (`publish`) and points `key` at it, replacing any entry. The
    /// default publishes, then sets the entry; a backend that can pin the object before it is
    /// published (so gc keeps it until the entry is visible) overrides this.
    ///
    /// # Errors
    /// `publish`'s error; as [`Names::set_keyed`].
    fn publish_keyed(
        &self,
        publish: &mut dyn FnMut() -> Result<()>,
        key: &[u8],
        hash: Hash,
        size: u64,
        metadata: &[u8],
    ) -> Result<()> {
        let _ = size;
        publish()?;
        self.set_keyed(key, hash, metadata, Expect::Any).map(|_| ())
    }
    /// The entry for `key`, read to be used: `used` is called with it (the caller reads its
    /// object there), then the backend may record the use (a local entry's age). The
    /// default reads [`Names::entry`] and calls `used`.
    ///
    /// # Errors
    /// As [`Names::entry`]; `used`'s error.
    fn entry_used(&self, key: &[u8], used: &mut dyn FnMut(&Entry) -> Result<()>) -> Result<Entry> {
        let e = self.entry(key)?;
        used(&e)?;
        Ok(e)
    }
}

/// Where a tiered store's misses go and its writes end up (the object source after this
/// store's own directory), and, as its [`Names`], where its refs and cache entries live.
///
/// Implementations are shared between threads. Every method may fail with
/// [`Error::Upstream`] when the upstream cannot be reached; "not there" answers are
/// `Ok(false)`, `Ok(None)` or the usual not-found errors ([`Error::NotFound`],
/// [`Error::KeyNotFound`], [`Error::RefNotFound`]).
pub trait Upstream: Names {
    /// The upstream's location, for messages (a directory, a URL).
    fn location(&self) -> &Path;
    /// True if the upstream holds the object.
    fn has(&self, hash: &Hash) -> Result<bool>;
    /// Writes the object's bytes to `into`, verified by the upstream before anything is
    /// written where it can (the receiving store verifies again). Returns the length.
    fn fetch(&self, hash: &Hash, into: &mut dyn Write) -> Result<u64>;
    /// Stores objects whose hashes the caller already knows (the bytes were hashed while they
    /// were staged). Objects already present are skipped. Returns when all are published
    /// with the upstream's durability.
    fn put(&self, objects: &mut [(Hash, &mut dyn Read)]) -> Result<()>;
    /// The upstream as a store on a filesystem this process reaches, if it is one: a range
    /// read through a tier reads the chunk groups it needs (and the outboard) there, in place,
    /// instead of fetching the whole object (docs/format.md, "Outboards"). `None` (the
    /// default): ranges fetch the whole object first.
    fn as_store(&self) -> Option<crate::Store> {
        None
    }
    /// The object whose hash starts with `prefix` (8 to 63 lowercase hex digits, already checked),
    /// as [`Store::resolve_prefix`](crate::Store::resolve_prefix). The default cannot: it asks for
    /// the full hash.
    fn resolve_prefix(&self, prefix: &str) -> Result<Hash> {
        Err(Error::InvalidInput {
            what: "hash prefix",
            reason: format!(
                "{prefix}: the upstream {} cannot resolve prefixes; give the full hash",
                self.location().display()
            ),
        })
    }
    /// For a process about to exit on a signal: removes what this process has in flight in the
    /// upstream (staging files of a write-through). Called by
    /// [`Store::abandon_own_staging`](crate::Store::abandon_own_staging) of the tier. Returns how
    /// many files it removed.
    fn abandon_own_staging(&self) -> u64 {
        0
    }
}

/// How a store is maintained: a tier is a cache of its upstream (gc evicts what the upstream
/// holds, never through trash; verify and doctor look at its own directory only), a
/// standalone store is not. Chosen when the store is opened, with the tier.
pub(crate) trait Maintainer: Send + Sync {
    fn gc(
        &self,
        store: &crate::Store,
        opts: &crate::GcOptions,
        progress: crate::ProgressFn<'_>,
    ) -> Result<crate::GcReport>;
    fn verify(
        &self,
        store: &crate::Store,
        progress: crate::ProgressFn<'_>,
    ) -> Result<crate::VerifyReport>;
    fn doctor(&self, store: &crate::Store, fix: bool) -> Result<crate::DoctorReport>;
}

/// Where objects come from and go after this store's own directory: nowhere for a
/// standalone store ([`Alone`]), the upstream for a tier (`crate::sync::upstream`). Chosen
/// at open; the read and write paths call it without asking which it is.
pub(crate) trait ObjectChain: Send + Sync {
    /// Called by the write path before staged objects are published here.
    fn write_through(&self, staged: &[crate::write::stage::Staged]) -> Result<()>;
    /// A miss here: brings the object into `store` (through its write path). `Ok(false)`:
    /// there is nowhere else to look.
    fn fetch(&self, store: &crate::Store, hash: &Hash) -> Result<bool>;
    /// True if the object is held after this directory.
    fn has(&self, hash: &Hash) -> bool;
    /// Resolves a hash prefix after (in a tier: before) this directory; `None`: look here.
    fn resolve_prefix(&self, prefix: &str) -> Option<Result<Hash>>;
}

/// A standalone store: nothing after its own directory.
pub(crate) struct Alone;

impl ObjectChain for Alone {
    fn write_through(&self, _: &[crate::write::stage::Staged]) -> Result<()> {
        Ok(())
    }
    fn fetch(&self, _: &crate::Store, _: &Hash) -> Result<bool> {
        Ok(false)
    }
    fn has(&self, _: &Hash) -> bool {
        false
    }
    fn resolve_prefix(&self, _: &str) -> Option<Result<Hash>> {
        None
    }
}

impl crate::Store {
    /// The objects after this store's own directory (chosen when it was opened).
    pub(crate) fn after_here(&self) -> &dyn ObjectChain {
        match self.tier.as_deref() {
            Some(t) => &*t.objects,
            None => &Alone,
        }
    }
}

/// A store's upstream and how it may be used.
pub(crate) struct Tier {
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) readonly: bool,
    /// Where this tier's names live: the upstream, through the tier's rules (a read-only
    /// upstream refuses writes; an object is written up before a name points at it).
    pub(crate) names: Arc<dyn Names>,
    /// How the tier is maintained (`crate::sync::upstream`).
    pub(crate) maintainer: Arc<dyn Maintainer>,
    /// Where objects come from and go after the tier's own directory.
    pub(crate) objects: Arc<dyn ObjectChain>,
}

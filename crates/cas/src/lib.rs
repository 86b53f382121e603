//! # cas — a content-addressed object store on a directory
//!
//! Every object is hashed with BLAKE3 while it streams into a staging file inside the store,
//! then published as `objects/<hash>` without ever replacing an existing name. A name only ever
//! holds complete, correct bytes; writes are idempotent; racing writers — threads, processes or
//! hosts sharing a network filesystem — converge on one object. No server, no daemon, no
//! `flock`.
//!
//! ```
//! # fn main() -> cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = cas::Store::open_or_init(dir.path().join("store"), cas::Options::default())?;
//! let hash = store.put_bytes(b"some bytes")?;
//! assert_eq!(&*store.get(&hash)?, b"some bytes");
//! assert!(store.contains(&hash));
//! # Ok(()) }
//! ```
//!
//! ## Guarantees
//! - A reader never sees a partial or wrong object: names are published by rename/link of a
//!   complete staging file, and every read through [`Store::get`] or [`Store::reader`] is verified
//!   against the hash. A corrupt object is moved to `quarantine/` and reported as
//!   [`Error::Corrupt`].
//! - A process killed at any point leaves at most a staging file in `tmp/` (cleaned by gc).
//! - Durability against power loss is chosen per store handle ([`Durability`] in [`Options`];
//!   [`Store::with_options`] or [`Store::at_least`] for another level).
//! - Stores are created only on purpose: [`Store::open`] never creates one, and
//!   [`Store::open_or_create`] says where one may be created ([`Create`]); an existing
//!   directory holding anything but a store is never written unless [`Create::Force`].
//! - A program stopping on a signal calls [`Store::abandon_own_staging`] (from a normal
//!   thread) and leaves no staging file, temporary output or lock of its own behind.
//!
//! The on-disk format and protocols, and the full contract per durability level and
//! filesystem, are documented in the repository (`docs/format.md`, `docs/guarantees.md`).
//!
//! # Cookbook
//!
//! ## A download cache
//! Key the entry by what identifies the content (the URL and its version), keep what you will
//! want to check later in the metadata, and let a size budget evict what is unused:
//! ```
//! # fn main() -> cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let fetch = |_url: &str| -> Vec<u8> { b"tarball bytes".to_vec() };
//! let store = cas::Store::open_or_init(dir.path().join("dl"), cas::Options::default())?;
//! let url = "https://example.org/pkg-1.2.tar.gz";
//! let body = match store.get_keyed(url.as_bytes()) {
//!     Ok(obj) => obj.into_vec(),                        // verified against its hash
//!     // A miss, or a damaged entry: undecodable, its object missing or corrupt (then
//!     // quarantined). `compute_once` does this for you, and once across processes.
//!     Err(e) if e.is_not_found() || e.is_malformed() || e.is_corrupt() => {
//!         let bytes = fetch(url);
//!         store.put_keyed_bytes(url.as_bytes(), &bytes, b"etag=\"abc\"")?;
//!         bytes
//!     }
//!     Err(e) => return Err(e),                          // a real failure: say so
//! };
//! # assert_eq!(body, b"tarball bytes");
//! // Later, or from cron: keep the store under 10 GiB, least recently used first.
//! store.gc(&cas::GcOptions::default().max_size(Some(10 << 30)), &cas::no_progress)?;
//! # Ok(()) }
//! ```
//!
//! ## A directory artifact built once, per format version
//! Put the layout's version in the key: a new version is a new entry, and old ones age out.
//! [`Store::compute_once`] builds it in exactly one of all the processes and hosts that ask at
//! once; [`Store::checkout`] restores it (and succeeds if the directory already holds it).
//! ```
//! # fn main() -> cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = cas::Store::open_or_init(dir.path().join("s"), cas::Options::default())?;
//! const FORMAT: u32 = 3;
//! let key = format!("index:genome-hg38:v{FORMAT}");
//! let tree = store.compute_once(key.as_bytes()).dir(|out| {
//!     std::fs::write(out.join("index.bin"), b"...")?;  // the expensive build
//!     Ok(())
//! })?;
//! store.checkout(&tree, dir.path().join("work"))?;
//! store.checkout(&tree, dir.path().join("work"))?;     // already there: fine
//! # Ok(()) }
//! ```
//!
//! ## A memo cache of a serialized map
//! A damaged entry (a crash, a bad disk, another version's format) is a miss, not an error:
//! ```
//! # fn main() -> cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::collections::BTreeMap;
//! let store = cas::Store::open_or_init(dir.path().join("memo"), cas::Options::default())?;
//! let compute = || BTreeMap::from([("answer".to_string(), 42u64)]);
//! let decode = |b: &[u8]| serde_json::from_slice::<BTreeMap<String, u64>>(b).ok();
//! let memo = match store.get_keyed(b"memo:v1") {
//!     Ok(obj) => decode(&obj),
//!     Err(e) if e.is_not_found() || e.is_malformed() || e.is_corrupt() => None,
//!     Err(e) => return Err(e),
//! };
//! let memo = memo.unwrap_or_else(|| {
//!     let m = compute();
//!     // Best effort: a cache that cannot be written is still a working program.
//!     let _ = store.put_keyed_bytes(b"memo:v1", &serde_json::to_vec(&m).unwrap(), b"");
//!     m
//! });
//! assert_eq!(memo["answer"], 42);
//! # Ok(()) }
//! ```
//!
//! ## Compute once, as bytes or streamed
//! ```
//! # fn main() -> cas::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::io::Write;
//! let store = cas::Store::open_or_init(dir.path().join("s"), cas::Options::default())?;
//! let obj = store.get_or_insert_with(b"report:2026-12", |w| {
//!     writeln!(w, "expensive report")?;                 // streamed into the store
//!     Ok(())
//! })?;
//! assert_eq!(&*obj, b"expensive report\n");
//! # Ok(()) }
//! ```
//! Waiters give up after [`ComputeOnce::timeout`] with [`Error::Locked`]; a producer's error
//! comes back as [`Error::Producer`] and nothing is stored.
//!
//! ## From async code
//! The API is synchronous and does blocking filesystem I/O (and `fsync`s): call it from a
//! blocking thread, not from an async task.
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = cas::Store::open_or_init(dir.path().join("s"), cas::Options::default())?;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! let hash = rt.block_on(async {
//!     let s = store.clone(); // a cheap handle (an Arc inside), Send + Sync
//!     tokio::task::spawn_blocking(move || s.put_bytes(b"from async")).await
//! })??;
//! assert_eq!(&*store.get(&hash)?, b"from async");
//! # Ok(()) }
//! ```
//!
//! ## Errors to branch on
//! [`Error::kind`] says what happened ([`ErrorKind`]); the predicates cover the usual
//! questions: [`Error::is_not_found`] (a miss: the object, ref or key is absent — never a
//! filesystem error), [`Error::is_malformed`], [`Error::is_corrupt`], [`Error::is_conflict`],
//! [`Error::is_already_exists`], [`Error::is_locked`]. The operating system's error is the
//! [`source`](std::error::Error::source), printed once by a reporter that walks the chain.
//!
//! ## Limitations
//! - Unix only (Linux is what is tested).
//! - Objects are stored whole and uncompressed, so the store can be checked with standard tools
//!   (`b3sum objects/ab/cd…` prints the object's own name).

mod codec;
mod copy;
mod error;
mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod maint;
mod names;
mod outboard;
mod progress;
mod read;
mod store;
mod sync;
mod tree;
mod write;

pub use error::{Error, ErrorKind, Found, ReachedBy, Result, Root};
pub use fs::Barrier;
pub use hash::{Hash, HASH_LEN, HEX_LEN};
pub use maint::doctor::{DoctorReport, FsInfoReport, Owner, Probe, ProblemGroup};
pub use maint::gc::{BudgetUnmet, GcOptions, GcReport};
pub use maint::list::{ObjectMeta, OrderedObjectMeta, OrderedObjects};
pub use maint::remove::RemoveOptions;
pub use maint::usage::{Area, Usage};
pub use maint::verify::{CorruptObject, Dangling, Problem, VerifyReport};
pub use names::entries::Entry;
pub use names::once::{
    ComputeOnce, Damage, OnceEvent, OnceEventFn, ProducerError, Resolved, Waiting,
};
pub use names::refs::{
    validate_ref_name, Expect, RefLogEntry, RefLogLine, RefsReport, MAX_REF_NAME, MAX_REF_SEGMENT,
};
#[doc(hidden)]
pub use outboard::range::bench_write_outboards;
pub use progress::{no_progress, Progress, ProgressFn, ProgressHook};
pub use read::get::{Object, ObjectInfo, ObjectIter, ObjectReader, Stats};
pub use read::materialize::Materialized;
pub use store::abandon::abandon_temporaries;
pub use store::config::{parse_duration, parse_size, Durability, Options};
pub use store::handle::{FsInfo, Store};
pub use store::init::{Create, DefaultStore};
pub use store::tier::{Names, Upstream};
pub use sync::transfer::{TransferConflict, TransferOptions, TransferReport};
pub use sync::upstream::DirUpstream;
pub use tree::format::{Tree, TreeEntry, TreeEntryKind, TREE_MAGIC, TREE_MODE_BITS, TREE_VERSION};
pub use tree::put::{PutDirOptions, PutDirReport};
pub use tree::restore::CheckoutOptions;
pub use tree::walk::TreeLimits;
pub use write::batch::Batch;
pub use write::writer::Writer;

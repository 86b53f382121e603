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
//! - Durability against power loss is chosen per store or per write ([`Durability`]).
//! - Stores are created only on purpose: [`Store::open`] never creates one, and
//!   [`Store::open_or_create`] says where one may be created ([`Create`]); an existing
//!   directory holding anything but a store is never written unless [`Create::Force`].
//! - A program stopping on a signal calls [`Store::abandon_own_staging`] (from a normal
//!   thread) and leaves no staging file, temporary output or lock of its own behind.
//!
//! See `docs/format.md` for the on-disk format and protocols and `docs/guarantees.md` for the
//! full contract.
//!
//! ## Limitations
//! - Unix only (Linux is what is tested).
//! - Objects are stored whole and uncompressed, so the store can be checked with standard tools
//!   (`b3sum objects/ab/cd…` prints the object's own name).

mod batch;
mod cleanup;
mod codec;
mod config;
mod copyout;
mod doctor;
mod error;
mod fs;
mod gc;
mod hash;
mod index;
mod init;
mod layout;
mod lock;
mod mark;
mod once;
mod output;
mod progress;
mod putdir;
mod read;
mod refs;
mod restore;
mod stage;
mod statcache;
mod store;
mod trash;
mod tree;
mod verify;
mod write;

pub use batch::Batch;
pub use cleanup::abandon_temporaries;
pub use config::{parse_duration, parse_size, Durability, Options};
pub use doctor::{DoctorReport, FsInfoReport, Probe};
pub use error::{Error, ErrorKind, Result};
pub use gc::{GcOptions, GcReport};
pub use hash::{Hash, HASH_LEN, HEX_LEN};
pub use index::Entry;
pub use init::Create;
pub use once::{ComputeOnce, ProducerError};
pub use progress::{no_progress, Progress, ProgressFn};
pub use read::{Object, ObjectIter, ObjectReader, Stats};
pub use refs::{validate_ref_name, Expect, RefLogEntry, MAX_REF_NAME, MAX_REF_SEGMENT};
pub use store::{Barrier, FsInfo, Store};
pub use tree::{
    CheckoutOptions, EntryKind, PutDirOptions, PutDirReport, Tree, TreeEntry, TREE_MAGIC,
    TREE_VERSION,
};
pub use verify::{CorruptObject, Dangling, Problem, VerifyReport};
pub use write::Writer;

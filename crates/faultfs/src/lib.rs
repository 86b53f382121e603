//! `faultfs`: a test-only FUSE pass-through filesystem that simulates power loss the way
//! `LazyFS` does, and injects I/O faults on command.
//!
//! # Running it
//!
//! ```text
//! faultfs BACKING MOUNTPOINT --control SOCKET [--strict] [--state DIR]
//! faultfs ctl SOCKET COMMAND...
//! ```
//!
//! The mount command must run as root (it mounts with `mount(2)` directly, no `fusermount3`
//! needed) and stays in the foreground. Once mounted it prints `ready` on stdout and answers
//! `ping` on the control socket; that is the readiness signal. It mounts with
//! `default_permissions` (the kernel checks permissions) and `allow_other` (any uid may use
//! it), attribute and entry TTLs of zero, and opens every file with `FOPEN_DIRECT_IO`, so the
//! kernel caches neither metadata nor data that a power loss might drop. `statfs` reports the
//! FUSE magic, like any FUSE filesystem. Stop it with the control command `unmount` (detaches
//! the mount, replies `ok`, exits) or with `umount MOUNTPOINT` from outside (the process exits
//! once the mount is gone; after `umount -l`, once no file on it is open any more). Nothing
//! else may change BACKING while it is mounted.
//! [`harness::Mounted`] does all of this for a Rust test (with a bounded wait for readiness
//! and an unmount in `Drop`, so no mount is left behind when a test fails); from another
//! package's tests, build the binary first (`cargo build -p faultfs`) and find it with
//! [`harness::default_binary`]. If the process is killed instead, the dead mount stays until
//! `umount -l MOUNTPOINT`.
//!
//! # The durability model
//!
//! * **File data** written through the mount is kept in memory, per inode, until that file is
//!   `fsync`ed or `fdatasync`ed (`FUSE_FSYNC`); reads, sizes and mtimes show it overlaid on the
//!   backing bytes, so a running workload sees an ordinary filesystem. Truncates (including
//!   `O_TRUNC`) are pending data too. An fsync writes the file's pending data into BACKING and
//!   fsyncs the backing file. Close (`flush`/`release`) makes nothing durable, and neither does
//!   `syncfs(2)` / `sync -f`: the kernel sends no FUSE request for them. A created file that
//!   was never synced is an empty file in BACKING. Pending data belongs to the inode, so it
//!   follows renames and hard links.
//! * **Metadata** (create, mkdir, mknod, symlink, link, unlink, rmdir, rename, chmod, chown,
//!   utimes) goes to BACKING at once. In the default mode it is durable at once.
//! * **Strict mode** (`--strict`): a directory-entry change (create, mkdir, mknod, symlink,
//!   link, unlink, rmdir, rename) survives a power loss only if its directory was fsynced
//!   (`FUSE_FSYNCDIR`) after it; a rename needs both its old and its new parent fsynced. The
//!   rule is the conservative one: fsync of a *file* never makes the entry naming it durable
//!   (ext4 often does in practice; a store must not rely on it). Changes are applied to
//!   BACKING at once and recorded in an undo journal; unlinked files and replaced rename
//!   targets are moved to a graveyard (`DIR/graveyard`, by default `.NAME.faultfs/graveyard`
//!   beside BACKING; it must be on BACKING's filesystem) so that they can be put back.
//!   chmod/chown/utimes are not journaled (durable at once). One refinement keeps the result
//!   a state some real filesystem could reach: a change is also durable when a *later* durable
//!   change touched the same name (an ordered journal), e.g. `rename(x/a, y/b)` with only `y`
//!   fsynced, then `unlink(y/b)` and an fsync of `y`: the rename stays. Only cross-directory
//!   renames can bring this about. `powerloss` reports how many undos failed
//!   (`undo_failed`, 0 unless BACKING was changed behind faultfs's back).
//! * **Power loss** (control command `powerloss`): under the lock that serialises every
//!   filesystem operation, all pending data is dropped (BACKING already holds each file's
//!   last-synced content), in strict mode every journaled change not made durable is undone in
//!   reverse order, and from then on every operation fails with `EIO`. The reply comes once
//!   BACKING is in its post-crash state; then the test unmounts and inspects BACKING.
//!
//! What it does not model: reordering or tearing of writes within a file (a file is all
//! synced or all unsynced), torn sectors, partial fsync, metadata-only (`fsync` vs
//! `fdatasync`) differences, lost metadata updates other than directory entries (size changes
//! are data), write errors surfacing later on fsync, and `mmap` writes beyond what the kernel
//! turns into FUSE writes. Unsynced data lives in memory (whole 4 KiB pages), so it suits test
//! workloads, not big files. After an injected fsync error the data stays pending (it is not
//! dropped as Linux may do).
//!
//! # Control protocol
//!
//! A Unix domain socket at `--control SOCKET`; one command per line, one reply line each:
//! `ok`, `ok DATA` or `err MESSAGE`. A connection may send many commands.
//!
//! | command | effect |
//! | --- | --- |
//! | `ping` | `ok` once mounted |
//! | `powerloss` | crash as above; `ok dropped=N undone=N undo_failed=N` (files whose unsynced data was dropped, entries undone, undos that failed); again: `ok already dead` |
//! | `fault OP N ERR [sticky] [under PREFIX]` | the N-th (1-based, counted from now) call of OP fails with ERR; `sticky`: that and every later call, until `clear`; `under PREFIX`: only calls on paths under PREFIX (relative to the mount root; a rename or link counts if either name is under it, a call on a hard-linked file if any of its names is) are counted |
//! | `clear` | disarm all faults |
//! | `stats` | `ok lookup=N getattr=N setattr=N readlink=N mknod=N mkdir=N unlink=N rmdir=N symlink=N rename=N link=N open=N read=N write=N flush=N release=N fsync=N opendir=N readdir=N fsyncdir=N statfs=N create=N`: calls per op since mount, faulted ones included (not those after a power loss) |
//! | `unmount` | lazily unmount (like `umount -l`), reply `ok`, and exit; files still open on the mount then fail with `ENOTCONN` |
//!
//! OP is one of `write`, `read`, `open`, `create`, `fsync` (also fdatasync), `fsyncdir`,
//! `setattr` (chmod, truncate, utimes), `rename`, `link`, `unlink`, `rmdir`, `mkdir`,
//! `mknod`, `symlink`. ERR is `ENOSPC`, `EIO`, `EDQUOT`, `EROFS`, `EPERM`, `EACCES`, or
//! `short` for `write` only: half of the bytes are written and that short count returned. A
//! faulted call does nothing else. Several faults may be armed at once. Calls are FUSE
//! requests, not system calls: the kernel splits a `write(2)` larger than 1 MiB (its
//! `max_pages`) into several `write` requests, and a `close` is a `flush` plus a `release`.

pub mod control;
pub mod fs;
pub mod harness;
pub mod model;

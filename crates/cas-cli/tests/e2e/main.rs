//! The end-to-end tests of `cas`: one test binary in the package that owns the `cas` binary,
//! so Cargo builds `cas` first and `env!("CARGO_BIN_EXE_cas")` names it. One module per
//! subject (README's test table); `common` holds the shared fixtures.
//!
//! Run one subject with its module path as a filter: `cargo test -p cas-cli --test e2e torture::`.

mod common;

mod cli;
mod cli_rules;
mod cluster;
mod core;
mod durability;
mod durability_paths;
mod ensure;
mod faults;
mod hostile;
mod maintenance;
mod perf_paths;
mod python;
mod range;
mod readme;
mod refs;
mod tiers;
mod torture;

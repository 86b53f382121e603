//! Benchmarks of `cas` against its peers; see `compare.rs` and `docs/performance.md`.
//!
//! This library is intentionally empty: Cargo requires every package to have a library or
//! binary target, and the benchmark itself lives in the `compare` bench target
//! (`cargo bench -p cas-bench --bench compare`).

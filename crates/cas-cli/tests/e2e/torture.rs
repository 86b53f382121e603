//! The acknowledged-names torture test on one machine (issue 18): see
//! `crates/cas-cli/tests/e2e/common/torture.rs`. The cluster stage runs a short version on both distributed
//! filesystems (`crates/cas-cli/tests/e2e/cluster.rs`).

use crate::common;

use common::torture::{cas_here, secs, seed, torture, Env};

#[test]
fn every_acknowledged_name_survives_gc_eviction_and_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("in");
    std::fs::create_dir_all(&scratch).unwrap();
    let env = Env {
        cmd: &cas_here,
        a: vec![dir.path().join("a")],
        b: vec![dir.path().join("b")],
    };
    torture(&env, &scratch, seed(), secs(20));
}

//! Replays the fuzzers' corpora (`fuzz/corpus/TARGET/*`) through the same functions the fuzz
//! targets call (`cas::fuzzing`), so a plain `cargo test` on stable — no nightly, no
//! cargo-fuzz — checks that every decoder still survives every input the fuzzers kept and
//! that the round-trip properties hold. See docs/decisions.md, "Fuzzing every decoder".
//!
//! To add the seeds (valid examples made with the store's own encoders) to the corpora:
//! `cargo run -p cas --example write_fuzz_seeds` (a tool, not a test).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cas::fuzzing::{seeds, TARGETS};

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn seeds_are_accepted() {
    let targets: BTreeMap<_, _> = TARGETS.iter().copied().collect();
    let mut per_target: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, bytes) in seeds() {
        let f = targets[name];
        assert!(f(&bytes), "seed for {name} not accepted: {bytes:?}");
        *per_target.entry(name).or_default() += 1;
    }
    for (name, _) in TARGETS {
        assert!(per_target.contains_key(name), "no seed for target {name}");
    }
}

#[test]
fn corpora_replay_without_panics() {
    let root = corpus_root();
    let mut total = 0;
    for (name, f) in TARGETS {
        let dir = root.join(name);
        let listing = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()));
        let (mut files, mut accepted) = (0usize, 0usize);
        for ent in listing {
            let path = ent.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let ok = std::panic::catch_unwind(|| f(&bytes))
                .unwrap_or_else(|_| panic!("target {name} panicked on {}", path.display()));
            files += 1;
            accepted += usize::from(ok);
        }
        assert!(files > 0, "corpus {} is empty", dir.display());
        assert!(
            accepted > 0,
            "corpus {} holds no input its decoders accept",
            dir.display()
        );
        println!("{name}: {files} inputs replayed, {accepted} accepted");
        total += files;
    }
    // Every corpus directory belongs to a target (a renamed target must not leave its corpus
    // unreplayed).
    for ent in std::fs::read_dir(&root).unwrap() {
        let name = ent.unwrap().file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no target in cas::fuzzing::TARGETS"
        );
    }
    println!("{total} inputs replayed");
}

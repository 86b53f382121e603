//! Writes the fuzz seeds — valid examples made with the store's own encoders, from
//! `cas::fuzzing::seeds` — into `fuzz/corpus/TARGET/seed-NN`, the corpora that cargo-fuzz
//! starts from and that `crates/cas/tests/fuzz_corpus.rs` replays.
//!
//! A tool, not a test: run it after adding a target or changing an encoder, then commit the
//! new corpus files:
//!
//! ```sh
//! cargo run -p cas --example write_fuzz_seeds
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut written = 0;
    for (i, (name, bytes)) in cas::fuzzing::seeds().into_iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes)?;
        written += 1;
    }
    println!("{written} seeds written under {}", root.display());
    Ok(())
}

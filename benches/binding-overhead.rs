//! The library's own time for the operations `crates/cas-py/bench/bench.py` times through
//! the Python binding (issue 20): the binding's overhead is the difference.
//!
//! `binding-overhead DIR DURABILITY SMALL_COUNT BIG_REPS` prints one line per operation:
//! `op size seconds_per_op` (`reget`: 5 more warm passes of gets over the small objects). The values are built exactly as bench.py builds them (an 8-byte
//! little-endian counter, then zeros), so both sides store and read the same objects.

use std::io::Write as _;
use std::time::Instant;

/// Passes of warm re-gets over the small objects (bench.py does the same).
const REGETS: u64 = 5;

fn value(i: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, durability, small, big] = &args[..] else {
        return Err("usage: binding-overhead DIR DURABILITY SMALL_COUNT BIG_REPS".into());
    };
    let (small, big): (u64, u64) = (small.parse()?, big.parse()?);
    let opts = cas::Options::default().durability(durability.parse()?);
    let store = cas::Store::init(dir, opts)?;
    let mut out = std::io::stdout().lock();
    for (size, count, salt) in [(4usize << 10, small, 0u64), (64 << 20, big, 1 << 40)] {
        let values: Vec<Vec<u8>> = (0..count).map(|i| value(salt + i, size)).collect();
        let t = Instant::now();
        let hashes = values
            .iter()
            .map(|v| store.put_bytes(v))
            .collect::<cas::Result<Vec<_>>>()?;
        writeln!(
            out,
            "put {size} {:.9}",
            t.elapsed().as_secs_f64() / count as f64
        )?;
        let t = Instant::now();
        for h in &hashes {
            std::hint::black_box(store.get(h)?);
        }
        writeln!(
            out,
            "get {size} {:.9}",
            t.elapsed().as_secs_f64() / count as f64
        )?;
        if size == 4 << 10 {
            // The binding's own cost, with the filesystem as quiet as it gets: warm re-gets.
            let t = Instant::now();
            for _ in 0..REGETS {
                for h in &hashes {
                    std::hint::black_box(store.get(h)?);
                }
            }
            let per = t.elapsed().as_secs_f64() / (REGETS * count) as f64;
            writeln!(out, "reget {size} {per:.9}")?;
        }
    }
    Ok(())
}

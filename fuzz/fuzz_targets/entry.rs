//! Fuzz target `entry`: see `cas::fuzzing::entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::entry(data);
});

//! Fuzz target `refs`: see `cas::fuzzing::refs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::refs(data);
});

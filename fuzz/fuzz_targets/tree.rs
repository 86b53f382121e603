//! Fuzz target `tree`: see `cas::fuzzing::tree`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::tree(data);
});

//! Fuzz target `outboard`: see `cas::fuzzing::outboard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::outboard(data);
});

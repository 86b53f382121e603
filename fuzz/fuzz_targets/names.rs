//! Fuzz target `names`: see `cas::fuzzing::names`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::names(data);
});

//! Fuzz target `lock`: see `cas::fuzzing::lock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::lock(data);
});

//! Fuzz target `config`: see `cas::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::config(data);
});

//! Fuzz target `cli_values`: see `cas::fuzzing::cli_values`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cas::fuzzing::cli_values(data);
});

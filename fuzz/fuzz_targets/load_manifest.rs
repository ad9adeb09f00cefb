//! Arbitrary bytes through the manifest loader and the validator: must never panic.
//!
//! The first byte picks the format (`data[0] % 3`: 0 YAML, 1 TOML, 2 JSON); the rest is the file.
//! The body lives in `executioner::fuzzing`, shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executioner::fuzzing::load_manifest(data));

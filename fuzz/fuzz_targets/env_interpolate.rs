//! Environment layering and `${}` interpolation on arbitrary text: must never panic.
//!
//! Input (lossy UTF-8), split on `\n`: the first line is a template; each later line (at most 8)
//! is `KEY=VALUE` (split at the first `=`; no `=` means an empty value). A line starting with `+`
//! goes, without the `+`, to the base layer (finished values); the others to the layer applied on
//! The body lives in `executioner::fuzzing`, shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executioner::fuzzing::env_interpolate(data));

//! Cron schedule parsing on arbitrary (lossy UTF-8) text: must never panic.
//! The body lives in `executioner::fuzzing`, shared with `tests/fuzz_smoke.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| executioner::fuzzing::cron_schedule(data));

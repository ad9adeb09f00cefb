//! Cron schedule parsing on arbitrary (lossy UTF-8) text: must never panic.
//! Keep in step with `cron_schedule` in `tests/fuzz_smoke.rs`.
#![no_main]

use executioner::schedule::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Schedule::parse(&String::from_utf8_lossy(data));
});

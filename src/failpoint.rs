//! Crash points for the reliability tests: with the `failpoints` feature, `EXECUTIONER_FAILPOINT
//! =NAME[:N]` makes the process SIGKILL itself the Nth time (default 1st) execution reaches point
//! NAME, exactly as `kill -9` would. Without the feature, `hit` compiles to nothing.
//!
//! Also error points, for failures a test cannot cause from outside without harming the rest of
//! the machine (exhausting the system's inotify watches): `EXECUTIONER_FAIL=NAME` makes
//! [`fails`]`(NAME)` true. Without the feature it is always false. [`fails_once`] is the same for
//! one subject (`EXECUTIONER_FAIL=NAME:SUBJECT`, e.g. a pipeline), true only the first time: a
//! transient fault, so that a test sees what recovers from it succeed.

/// Marks a point where a crash must be survivable.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether the error point `name` is armed (`EXECUTIONER_FAIL=NAME`, `failpoints` builds only).
#[inline]
pub fn fails(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return std::env::var("EXECUTIONER_FAIL").is_ok_and(|armed| armed == name);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// The controller's clock for schedules: the wall clock, or (`failpoints` builds only) with
/// `EXECUTIONER_CLOCK_SCALE=N` one that runs N times faster from its first reading, so that a test
/// sees a per-minute schedule tick every 60/N seconds. `EXECUTIONER_CLOCK_ORIGIN=UNIX_MS` starts it
/// there instead, so that several processes share one fast clock.
pub fn schedule_now() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    #[cfg(feature = "failpoints")]
    {
        use std::sync::OnceLock;
        static START: OnceLock<chrono::DateTime<chrono::Utc>> = OnceLock::new();
        let scale = clock_scale();
        if scale > 1 {
            let start = *START.get_or_init(|| {
                std::env::var("EXECUTIONER_CLOCK_ORIGIN")
                    .ok()
                    .and_then(|ms| ms.parse().ok())
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .unwrap_or(now)
            });
            return start + (now - start) * scale as i32;
        }
    }
    now
}

/// How many times faster [`schedule_now`] runs (1 unless a `failpoints` build is told otherwise).
pub fn clock_scale() -> u32 {
    #[cfg(feature = "failpoints")]
    return std::env::var("EXECUTIONER_CLOCK_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n: &u32| (1..=3600).contains(n))
        .unwrap_or(1);
    #[cfg(not(feature = "failpoints"))]
    1
}

/// Whether the error point `name` is armed for `subject` (`EXECUTIONER_FAIL=NAME:SUBJECT`) and has
/// not fired yet in this process (`failpoints` builds only).
#[inline]
pub fn fails_once(name: &str, subject: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return armed::fails_once(name, subject);
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, subject);
        false
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    /// `EXECUTIONER_FAIL` names one point: one flag says whether it has fired.
    static FIRED: AtomicBool = AtomicBool::new(false);

    pub fn fails_once(name: &str, subject: &str) -> bool {
        let armed = std::env::var("EXECUTIONER_FAIL").is_ok_and(|armed| {
            armed
                .split_once(':')
                .is_some_and(|(point, armed_subject)| point == name && armed_subject == subject)
        });
        armed && !FIRED.swap(true, Ordering::SeqCst)
    }

    pub fn hit(name: &str) {
        let target = TARGET.get_or_init(|| {
            let raw = std::env::var("EXECUTIONER_FAILPOINT").ok()?;
            let (point, nth) = match raw.split_once(':') {
                Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
                None => (raw, 1),
            };
            Some((point, nth))
        });
        if let Some((point, nth)) = target
            && point == name
            && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *nth
        {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

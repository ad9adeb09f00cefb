//! Retry decisions as pure functions: the delay before the next attempt, and whether a failure
//! qualifies for one. Randomness (jitter) comes in as an argument, so every case is testable.

use std::time::Duration;

use crate::spec::RetryPolicy;

/// Longest delay ever computed, whatever the policy (guards `factor^n` overflow).
pub const MAX_COMPUTED_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    ExitCode(i32),
    Signal(i32),
    Timeout,
    PreCheck,
    PostCheck,
    /// A `wait` sensor gave up: retrying would wait all over again, so it is final.
    CheckTimeout,
    /// The command could not be started at all.
    Spawn,
    /// The environment could not be built; retrying cannot help.
    Env,
    /// The outputs file was refused (too large, malformed): another run of the command may write
    /// a good one, so it is retried like a failed post-check.
    Output,
}

/// The delay before retry number `retry` (1 = the first retry), given a uniform random number
/// `random` in `[0, 1)`: `delay * factor^(retry-1)`, capped at `maxDelay`, then spread by `jitter`
/// (and capped again, so `maxDelay` is a hard bound).
pub fn next_delay(policy: &RetryPolicy, retry: u32, random: f64) -> Duration {
    let base = policy.delay.as_std().as_secs_f64();
    let factor = policy.factor.unwrap_or(1.0).max(1.0);
    let exponent = retry.saturating_sub(1).min(1000) as i32;
    let mut secs = base * factor.powi(exponent);
    let cap = policy
        .max_delay
        .map(|d| d.as_std())
        .unwrap_or(MAX_COMPUTED_DELAY)
        .min(MAX_COMPUTED_DELAY)
        .as_secs_f64();
    if !secs.is_finite() || secs > cap {
        secs = cap;
    }
    let jitter = policy.jitter.unwrap_or(0.0).clamp(0.0, 1.0);
    if jitter > 0.0 {
        let spread = jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        secs *= 1.0 + spread;
    }
    Duration::from_secs_f64(secs.clamp(0.0, cap))
}

/// Whether a failed attempt is followed by another.
///
/// `attempts` counts the attempts made so far that count against `limit` (lost ones do not);
/// `elapsed` is the time since the first attempt started; `delay` is what [`next_delay`] gave.
/// A retry that would start after the deadline is not made (no wasted last sleep).
pub fn should_retry(
    policy: &RetryPolicy,
    failure: Failure,
    attempts: u32,
    elapsed: Duration,
    delay: Duration,
) -> bool {
    if attempts > policy.limit {
        return false;
    }
    let qualifies = match failure {
        Failure::ExitCode(code) => match &policy.on_exit_codes {
            None => true,
            Some(codes) => codes.contains(&code),
        },
        Failure::Timeout => policy.on_timeout.unwrap_or(true),
        // With an exit-code filter, only the listed codes qualify.
        Failure::Signal(_)
        | Failure::PreCheck
        | Failure::PostCheck
        | Failure::Spawn
        | Failure::Output => policy.on_exit_codes.is_none(),
        Failure::CheckTimeout | Failure::Env => false,
    };
    if !qualifies {
        return false;
    }
    match policy.deadline {
        Some(deadline) => elapsed + delay <= deadline.as_std(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Duration as SpecDuration;
    use proptest::prelude::*;

    fn policy(limit: u32, delay_ms: u64, factor: f64) -> RetryPolicy {
        RetryPolicy {
            limit,
            delay: SpecDuration::from_millis(delay_ms),
            factor: Some(factor),
            max_delay: None,
            jitter: None,
            on_exit_codes: None,
            on_timeout: None,
            deadline: None,
        }
    }

    #[test]
    fn exponential_backoff_with_cap() {
        let mut p = policy(5, 1000, 2.0);
        assert_eq!(next_delay(&p, 1, 0.5), Duration::from_secs(1));
        assert_eq!(next_delay(&p, 2, 0.5), Duration::from_secs(2));
        assert_eq!(next_delay(&p, 3, 0.5), Duration::from_secs(4));
        p.max_delay = Some(SpecDuration::from_secs(3));
        assert_eq!(next_delay(&p, 3, 0.5), Duration::from_secs(3));
        assert_eq!(next_delay(&p, 1000, 0.5), Duration::from_secs(3));
    }

    #[test]
    fn jitter_spreads_both_ways() {
        let mut p = policy(3, 1000, 1.0);
        p.jitter = Some(0.2);
        assert_eq!(next_delay(&p, 1, 0.0), Duration::from_millis(800));
        assert_eq!(next_delay(&p, 1, 0.5), Duration::from_secs(1));
        assert!(next_delay(&p, 1, 0.999_999) <= Duration::from_millis(1200));
    }

    #[test]
    fn exit_code_filter() {
        let mut p = policy(3, 0, 1.0);
        p.on_exit_codes = Some(vec![1]);
        assert!(should_retry(
            &p,
            Failure::ExitCode(1),
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        assert!(!should_retry(
            &p,
            Failure::ExitCode(3),
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        assert!(!should_retry(
            &p,
            Failure::PostCheck,
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        p.on_exit_codes = None;
        assert!(should_retry(
            &p,
            Failure::ExitCode(3),
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        assert!(should_retry(
            &p,
            Failure::PostCheck,
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
    }

    #[test]
    fn limit_timeout_and_deadline() {
        let mut p = policy(2, 0, 1.0);
        assert!(should_retry(
            &p,
            Failure::ExitCode(1),
            2,
            Duration::ZERO,
            Duration::ZERO
        ));
        assert!(!should_retry(
            &p,
            Failure::ExitCode(1),
            3,
            Duration::ZERO,
            Duration::ZERO
        ));
        assert!(should_retry(
            &p,
            Failure::Timeout,
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        p.on_timeout = Some(false);
        assert!(!should_retry(
            &p,
            Failure::Timeout,
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
        p.deadline = Some(SpecDuration::from_secs(10));
        assert!(should_retry(
            &p,
            Failure::ExitCode(1),
            1,
            Duration::from_secs(5),
            Duration::from_secs(5)
        ));
        assert!(!should_retry(
            &p,
            Failure::ExitCode(1),
            1,
            Duration::from_secs(6),
            Duration::from_secs(5)
        ));
        assert!(!should_retry(
            &p,
            Failure::CheckTimeout,
            1,
            Duration::ZERO,
            Duration::ZERO
        ));
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_monotonic_without_jitter(
            delay_ms in 0u64..100_000, factor in 1.0f64..10.0, retry in 1u32..200,
            max_ms in proptest::option::of(1u64..1_000_000), random in 0.0f64..1.0,
        ) {
            let mut p = policy(10, delay_ms, factor);
            p.max_delay = max_ms.map(SpecDuration::from_millis);
            let d1 = next_delay(&p, retry, random);
            let d2 = next_delay(&p, retry + 1, random);
            prop_assert!(d1 <= d2);
            if let Some(m) = max_ms {
                prop_assert!(d2 <= Duration::from_millis(m));
            }
            prop_assert!(d2 <= MAX_COMPUTED_DELAY);
        }

        #[test]
        fn jitter_stays_within_its_fraction(
            delay_ms in 1u64..100_000, jitter in 0.0f64..1.0, random in 0.0f64..1.0,
        ) {
            let mut p = policy(1, delay_ms, 1.0);
            p.jitter = Some(jitter);
            let d = next_delay(&p, 1, random).as_secs_f64();
            let base = delay_ms as f64 / 1000.0;
            prop_assert!(d >= base * (1.0 - jitter) - 1e-9);
            prop_assert!(d <= base * (1.0 + jitter) + 1e-9);
        }
    }
}

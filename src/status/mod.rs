//! Observed state: the phases and reasons of runs and jobs, as recorded in the store, shown by the
//! CLI and written to status files. Only the engine decides transitions; this module names them.

pub mod file;
mod ids;
pub mod outputs;
mod verdict;

pub use ids::{AttemptId, IdParseError, RunId};
pub use verdict::{JobVerdict, Tally, verdict};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The current time as RFC 3339 UTC with milliseconds (`2026-11-27T02:00:00.123Z`).
pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// A time as RFC 3339 UTC with milliseconds.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Defines one of the name enums of observed state: serialized, shown, stored and parsed by the
/// variant's own name (PascalCase in every output and column), with `ALL` listing every variant so
/// parsing needs no hand-kept list.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($kind:literal) {
            $($(#[$variant_meta:meta])* $variant:ident,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownName {
                        kind: $kind,
                        value: s.to_owned(),
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// Where a job stands in a run.
    pub enum JobPhase ("job phase") {
        /// Not started yet (waiting for dependencies or a worker).
        Pending,
        /// A pre-check with `wait` is being polled.
        Waiting,
        Running,
        Succeeded,
        Failed,
        /// Never started: its trigger could not hold, fail-fast, `--skip`, or a run timeout.
        Skipped,
        Cancelled,
        /// Was running when its executioner died.
        Lost,
        /// Stopped because the controller was stopping (a restart, an upgrade): the run goes on when
        /// a controller starts again.
        Interrupted,
    }
}

impl JobPhase {
    /// Terminal phases are final for the round (a resume may start a new one).
    pub fn is_terminal(self) -> bool {
        match self {
            JobPhase::Succeeded
            | JobPhase::Failed
            | JobPhase::Skipped
            | JobPhase::Cancelled
            | JobPhase::Lost
            | JobPhase::Interrupted => true,
            JobPhase::Pending | JobPhase::Waiting | JobPhase::Running => false,
        }
    }
}

named_enum! {
    /// Where a run stands.
    pub enum RunPhase ("run phase") {
        Pending,
        Running,
        Succeeded,
        Failed,
        Cancelled,
    }
}

impl RunPhase {
    pub fn is_terminal(self) -> bool {
        match self {
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled => true,
            RunPhase::Pending | RunPhase::Running => false,
        }
    }
}

named_enum! {
    /// Why a job (or one of its attempts) is in its phase.
    pub enum JobReason ("job reason") {
        /// Exited 0 and every check passed.
        Completed,
        /// Exited with a non-zero code.
        ExitCode,
        /// Killed by a signal it did not expect.
        Signaled,
        /// The attempt's timeout passed, or the run's timeout stopped the attempt.
        Timeout,
        /// The run's timeout passed before the job could start or retry.
        RunTimeout,
        PreCheckFailed,
        PostCheckFailed,
        /// A `wait` pre-check did not pass in time.
        CheckTimeout,
        /// The command could not be started.
        SpawnFailed,
        /// The environment could not be built (a secret missing, an undefined variable).
        InvalidEnv,
        /// A dependency's outcome rules the job out under the default trigger.
        UpstreamFailed,
        /// The job's trigger rule can no longer hold.
        TriggerNotMet,
        /// `failFast`: nothing new starts after a failure.
        FailFast,
        /// Named in `--skip`.
        SkippedByUser,
        /// Stopped by a signal to executioner, a deletion or a replacement.
        Cancelled,
        /// Was running when its executioner died.
        Lost,
        /// Lost three times.
        LostTooOften,
        /// Stopped by a controller that was stopping (not counted against `retry.limit`).
        ControllerStopped,
        /// Set by `mark-success`.
        MarkedSuccess,
        /// A failed job with `continueOnError`.
        FailedIgnored,
        /// A `${jobs.ID.outputs.KEY}` the upstream job did not produce (not retried).
        MissingOutput,
        /// The job wrote more than 1 MiB to `$EXECUTIONER_OUTPUT`.
        OutputTooLarge,
        /// What the job wrote to `$EXECUTIONER_OUTPUT` is not `KEY=VALUE` lines and blocks.
        InvalidOutput,
        /// Queued for a worker (PostgreSQL), and no live worker has the labels its `runOn` asks for.
        NoWorker,
    }
}

named_enum! {
    /// Why a run is in its phase: its verdict's reason (see [`verdict`]), or why it stopped
    /// without one.
    pub enum RunReason ("run reason") {
        /// Every job succeeded (or was allowed to fail).
        AllSucceeded,
        /// At least one job failed.
        JobsFailed,
        /// Every job succeeded, at least one of them by `mark-success`.
        MarkedSucceeded,
        /// The run's deadline skipped jobs.
        RunTimeout,
        /// A user's cancellation stopped a job.
        Cancelled,
        /// The controller stopped while the run went on: it stays Running for the next controller
        /// (reported, never stored).
        ControllerStopped,
    }
}

/// A stored phase or reason name that this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &r in JobReason::ALL {
            assert_eq!(r.as_str().parse::<JobReason>(), Ok(r));
        }
        for &r in RunReason::ALL {
            assert_eq!(r.as_str().parse::<RunReason>(), Ok(r));
        }
        // The names every store, status file and JSON output has always had.
        let names: Vec<&str> = RunReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "AllSucceeded",
                "JobsFailed",
                "MarkedSucceeded",
                "RunTimeout",
                "Cancelled",
                "ControllerStopped"
            ]
        );
        assert_eq!(
            serde_json::to_string(&JobReason::PreCheckFailed).unwrap(),
            "\"PreCheckFailed\""
        );
        assert!("AllSucceeded".parse::<JobReason>().is_err());
        assert!("ExitCode".parse::<RunReason>().is_err());
        assert_eq!("Lost".parse::<JobPhase>(), Ok(JobPhase::Lost));
        assert!("lost".parse::<JobPhase>().is_err());
        assert_eq!("Cancelled".parse::<RunPhase>(), Ok(RunPhase::Cancelled));
    }
}

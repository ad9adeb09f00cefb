//! Observed state: the phases and reasons of runs and jobs, as recorded in the store, shown by the
//! CLI and written to status files. Only the engine decides transitions; this module names them.

pub mod file;
mod ids;
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

/// Where a job stands in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobPhase {
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

    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Waiting => "Waiting",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
            JobPhase::Skipped => "Skipped",
            JobPhase::Cancelled => "Cancelled",
            JobPhase::Lost => "Lost",
            JobPhase::Interrupted => "Interrupted",
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunPhase {
    pub fn is_terminal(self) -> bool {
        match self {
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled => true,
            RunPhase::Pending | RunPhase::Running => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Pending => "Pending",
            RunPhase::Running => "Running",
            RunPhase::Succeeded => "Succeeded",
            RunPhase::Failed => "Failed",
            RunPhase::Cancelled => "Cancelled",
        }
    }
}

/// Why a job or run is in its phase (PascalCase in every output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Exited 0 and every check passed.
    Completed,
    /// Exited with a non-zero code.
    ExitCode,
    /// Killed by a signal it did not expect.
    Signaled,
    /// The attempt's timeout passed.
    Timeout,
    /// The run's timeout passed.
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
    /// Run level: every job succeeded (or was allowed to fail).
    AllSucceeded,
    /// Run level: at least one job failed.
    JobsFailed,
    /// Run level: every job succeeded, at least one of them by `mark-success`.
    MarkedSucceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Completed => "Completed",
            Reason::ExitCode => "ExitCode",
            Reason::Signaled => "Signaled",
            Reason::Timeout => "Timeout",
            Reason::RunTimeout => "RunTimeout",
            Reason::PreCheckFailed => "PreCheckFailed",
            Reason::PostCheckFailed => "PostCheckFailed",
            Reason::CheckTimeout => "CheckTimeout",
            Reason::SpawnFailed => "SpawnFailed",
            Reason::InvalidEnv => "InvalidEnv",
            Reason::UpstreamFailed => "UpstreamFailed",
            Reason::TriggerNotMet => "TriggerNotMet",
            Reason::FailFast => "FailFast",
            Reason::SkippedByUser => "SkippedByUser",
            Reason::Cancelled => "Cancelled",
            Reason::Lost => "Lost",
            Reason::LostTooOften => "LostTooOften",
            Reason::ControllerStopped => "ControllerStopped",
            Reason::MarkedSuccess => "MarkedSuccess",
            Reason::FailedIgnored => "FailedIgnored",
            Reason::AllSucceeded => "AllSucceeded",
            Reason::JobsFailed => "JobsFailed",
            Reason::MarkedSucceeded => "MarkedSucceeded",
        }
    }

    const ALL: [Reason; 23] = [
        Reason::Completed,
        Reason::ExitCode,
        Reason::Signaled,
        Reason::Timeout,
        Reason::RunTimeout,
        Reason::PreCheckFailed,
        Reason::PostCheckFailed,
        Reason::CheckTimeout,
        Reason::SpawnFailed,
        Reason::InvalidEnv,
        Reason::UpstreamFailed,
        Reason::TriggerNotMet,
        Reason::FailFast,
        Reason::SkippedByUser,
        Reason::Cancelled,
        Reason::Lost,
        Reason::LostTooOften,
        Reason::ControllerStopped,
        Reason::MarkedSuccess,
        Reason::FailedIgnored,
        Reason::AllSucceeded,
        Reason::JobsFailed,
        Reason::MarkedSucceeded,
    ];
}

/// A stored phase or reason name that this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
}

impl FromStr for JobPhase {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JobPhase::Pending,
            JobPhase::Waiting,
            JobPhase::Running,
            JobPhase::Succeeded,
            JobPhase::Failed,
            JobPhase::Skipped,
            JobPhase::Cancelled,
            JobPhase::Lost,
            JobPhase::Interrupted,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| UnknownName {
            kind: "job phase",
            value: s.to_owned(),
        })
    }
}

impl FromStr for RunPhase {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunPhase::Pending,
            RunPhase::Running,
            RunPhase::Succeeded,
            RunPhase::Failed,
            RunPhase::Cancelled,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| UnknownName {
            kind: "run phase",
            value: s.to_owned(),
        })
    }
}

impl FromStr for Reason {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownName {
                kind: "reason",
                value: s.to_owned(),
            })
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(JobPhase, RunPhase, Reason);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert_eq!("Lost".parse::<JobPhase>(), Ok(JobPhase::Lost));
        assert!("lost".parse::<JobPhase>().is_err());
        assert_eq!("Cancelled".parse::<RunPhase>(), Ok(RunPhase::Cancelled));
    }
}

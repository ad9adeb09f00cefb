//! The verdict of a run, derived from its jobs (DESIGN 3.1). It is never stored apart from them:
//! the store computes it with this function whenever a round ends, a run is closed or jobs are
//! marked succeeded, so `run`, `resume`, the controller, `status` and notifications all see the
//! same answer.

use super::{JobPhase, JobReason, RunPhase, RunReason};

/// What the verdict needs of one job: its recorded phase and reason, and whether the spec lets it
/// fail (`continueOnError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobVerdict {
    pub phase: JobPhase,
    pub reason: Option<JobReason>,
    pub continue_on_error: bool,
}

impl JobVerdict {
    /// True when this job does not stand in the way of the run's success: it succeeded, was
    /// skipped by the user or because its trigger legitimately did not hold, or failed while
    /// allowed to.
    pub fn is_ok(self) -> bool {
        match self.phase {
            JobPhase::Succeeded => true,
            JobPhase::Skipped => matches!(
                self.reason,
                Some(JobReason::SkippedByUser | JobReason::TriggerNotMet)
            ),
            JobPhase::Failed => self.continue_on_error,
            JobPhase::Pending
            | JobPhase::Waiting
            | JobPhase::Running
            | JobPhase::Cancelled
            | JobPhase::Lost
            | JobPhase::Interrupted => false,
        }
    }

    fn is_cancelled(self) -> bool {
        match self.phase {
            JobPhase::Cancelled => true,
            JobPhase::Skipped => self.reason == Some(JobReason::Cancelled),
            JobPhase::Pending
            | JobPhase::Waiting
            | JobPhase::Running
            | JobPhase::Succeeded
            | JobPhase::Failed
            | JobPhase::Lost
            | JobPhase::Interrupted => false,
        }
    }
}

/// The verdict being gathered over a run's jobs, one at a time (so a store can fold its rows
/// into it without holding them all).
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    all_ok: bool,
    marked: bool,
    cancelled: bool,
    timed_out: bool,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            all_ok: true,
            marked: false,
            cancelled: false,
            timed_out: false,
        }
    }
}

impl Tally {
    pub fn add(&mut self, job: JobVerdict) {
        self.all_ok &= job.is_ok();
        self.marked |=
            job.phase == JobPhase::Succeeded && job.reason == Some(JobReason::MarkedSuccess);
        self.cancelled |= job.is_cancelled();
        self.timed_out |= job.reason == Some(JobReason::RunTimeout);
    }

    /// See [`verdict`].
    pub fn finish(self) -> (RunPhase, RunReason) {
        match (self.all_ok, self.cancelled, self.timed_out) {
            (true, _, _) if self.marked => (RunPhase::Succeeded, RunReason::MarkedSucceeded),
            (true, _, _) => (RunPhase::Succeeded, RunReason::AllSucceeded),
            (false, true, _) => (RunPhase::Cancelled, RunReason::Cancelled),
            (false, false, true) => (RunPhase::Failed, RunReason::RunTimeout),
            (false, false, false) => (RunPhase::Failed, RunReason::JobsFailed),
        }
    }
}

/// The run's phase and reason from its jobs: `Succeeded` exactly when every job is ok (see
/// [`JobVerdict::is_ok`]), with reason `MarkedSucceeded` when a job was marked by hand; otherwise
/// `Cancelled` when a user's cancellation stopped a job, else `Failed` (`RunTimeout` when the run's
/// deadline skipped jobs, `JobsFailed` otherwise). A run with no job succeeds.
pub fn verdict(jobs: impl IntoIterator<Item = JobVerdict>) -> (RunPhase, RunReason) {
    let mut tally = Tally::default();
    for job in jobs {
        tally.add(job);
    }
    tally.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(phase: JobPhase, reason: Option<JobReason>) -> JobVerdict {
        JobVerdict {
            phase,
            reason,
            continue_on_error: false,
        }
    }

    #[test]
    fn succeeded_only_when_every_job_is_ok() {
        let ok = [
            job(JobPhase::Succeeded, Some(JobReason::Completed)),
            job(JobPhase::Skipped, Some(JobReason::SkippedByUser)),
            job(JobPhase::Skipped, Some(JobReason::TriggerNotMet)),
            JobVerdict {
                continue_on_error: true,
                ..job(JobPhase::Failed, Some(JobReason::ExitCode))
            },
        ];
        assert_eq!(verdict(ok), (RunPhase::Succeeded, RunReason::AllSucceeded));
        for spoiler in [
            job(JobPhase::Failed, Some(JobReason::ExitCode)),
            job(JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            job(JobPhase::Skipped, Some(JobReason::FailFast)),
            job(JobPhase::Pending, None),
            job(JobPhase::Lost, Some(JobReason::Lost)),
            job(JobPhase::Interrupted, Some(JobReason::ControllerStopped)),
        ] {
            let jobs = ok.iter().copied().chain([spoiler]);
            assert_eq!(
                verdict(jobs),
                (RunPhase::Failed, RunReason::JobsFailed),
                "{spoiler:?}"
            );
        }
    }

    #[test]
    fn marked_cancelled_and_timed_out_runs() {
        let marked = [
            job(JobPhase::Succeeded, Some(JobReason::MarkedSuccess)),
            job(JobPhase::Succeeded, Some(JobReason::Completed)),
        ];
        assert_eq!(
            verdict(marked),
            (RunPhase::Succeeded, RunReason::MarkedSucceeded)
        );
        let cancelled = [
            job(JobPhase::Cancelled, Some(JobReason::Cancelled)),
            job(JobPhase::Failed, Some(JobReason::ExitCode)),
        ];
        assert_eq!(
            verdict(cancelled),
            (RunPhase::Cancelled, RunReason::Cancelled)
        );
        let timed_out = [
            job(JobPhase::Failed, Some(JobReason::Timeout)),
            job(JobPhase::Skipped, Some(JobReason::RunTimeout)),
        ];
        assert_eq!(
            verdict(timed_out),
            (RunPhase::Failed, RunReason::RunTimeout)
        );
        assert_eq!(verdict([]), (RunPhase::Succeeded, RunReason::AllSucceeded));
    }
}

//! Starting a run or a new round of one: which jobs run again on a resume, and recovery of
//! attempts left running by an executioner that died (their process groups are stopped and the
//! attempts recorded `Lost`).

use crate::process;
use crate::scheduler::{Outcome, Start};
use crate::spec::JobId;
use crate::status::{JobPhase, JobReason};
use crate::store::{AttemptId, JobRow, RunId, RunRow, Store, StoreError};

use super::plan::Plan;

/// Which jobs a new round of a run runs again (DESIGN 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeMode {
    /// `resume`: every job that did not succeed runs again.
    All,
    /// `resume --failed-only`: the jobs that failed, were lost, never finished or were kept from
    /// starting by fail-fast run again, and so does everything downstream of them (or of a job
    /// marked succeeded) that had not succeeded; cancelled jobs and jobs skipped for other
    /// reasons keep their state.
    FailedOnly,
    /// A controller continuing a run it found interrupted or lost: only the jobs that had not
    /// ended run (lost, interrupted, never started); every ended job keeps its result.
    Continue,
}

/// How each job enters a new round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// How each job of the plan enters the new round.
    pub starts: Vec<Start>,
    /// Ids of the jobs that run again.
    pub rerun: Vec<JobId>,
}

/// What an ended job means to its dependents when it keeps its result; `None` when the job has
/// no result to keep (lost, interrupted, never finished, or new to the spec).
fn kept(row: Option<&JobRow>, continue_on_error: bool) -> Option<Outcome> {
    let row = row?;
    match row.phase {
        JobPhase::Succeeded => Some(Outcome::Succeeded),
        JobPhase::Failed => Some(Outcome::Failed {
            ignored: continue_on_error,
        }),
        JobPhase::Skipped => Some(Outcome::skipped(
            row.reason.unwrap_or(JobReason::UpstreamFailed),
        )),
        JobPhase::Cancelled => Some(Outcome::Cancelled),
        JobPhase::Pending
        | JobPhase::Waiting
        | JobPhase::Running
        | JobPhase::Lost
        | JobPhase::Interrupted => None,
    }
}

/// Decides a new round of a run from its job rows (see [`ResumeMode`]). Jobs of the plan with no
/// row (new in a changed spec) run.
pub fn plan_resume(plan: &Plan, rows: &[JobRow], mode: ResumeMode) -> ResumePlan {
    let by_id: std::collections::HashMap<&str, &JobRow> =
        rows.iter().map(|r| (r.job_id.as_str(), r)).collect();
    let kept: Vec<Option<Outcome>> = plan
        .jobs
        .iter()
        .map(|j| kept(by_id.get(j.id.as_str()).copied(), j.continue_on_error))
        .collect();
    let runs: Vec<bool> = match mode {
        ResumeMode::All => kept
            .iter()
            .map(|k| !matches!(k, Some(Outcome::Succeeded)))
            .collect(),
        ResumeMode::Continue => kept.iter().map(Option::is_none).collect(),
        ResumeMode::FailedOnly => {
            // Jobs that fail-fast kept from starting are the failure's to re-run as well.
            let fail_fast = |job: &str| {
                by_id.get(job).is_some_and(|r| {
                    r.phase == JobPhase::Skipped && r.reason == Some(JobReason::FailFast)
                })
            };
            let seed: Vec<bool> = kept
                .iter()
                .zip(&plan.jobs)
                .map(|(k, j)| matches!(k, None | Some(Outcome::Failed { .. })) || fail_fast(&j.id))
                .collect();
            // A job marked succeeded by hand is a root too: what it blocked while it had failed
            // is evaluated afresh, so no job stays skipped for a failure that is no longer there.
            let marked = |job: &str| {
                by_id
                    .get(job)
                    .is_some_and(|r| r.reason == Some(JobReason::MarkedSuccess))
            };
            let roots: Vec<usize> = (0..seed.len())
                .filter(|&i| seed[i] || marked(&plan.jobs[i].id))
                .collect();
            let downstream = plan.dag.downstream(&roots);
            (0..kept.len())
                .map(|i| seed[i] || (downstream[i] && !matches!(kept[i], Some(Outcome::Succeeded))))
                .collect()
        }
    };
    let mut starts = Vec::with_capacity(plan.jobs.len());
    let mut rerun = Vec::new();
    for ((job, kept), runs) in plan.jobs.iter().zip(kept).zip(runs) {
        match kept {
            Some(outcome) if !runs => starts.push(Start::Keep(outcome)),
            Some(_) | None => {
                starts.push(Start::Run);
                rerun.push(job.id.clone());
            }
        }
    }
    ResumePlan { starts, rerun }
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The jobs whose attempts were recorded Lost.
    pub lost: Vec<JobId>,
    /// Queued attempts left to their workers, for the next round to wait for.
    pub adopted: Vec<AdoptedAttempt>,
}

/// A queued attempt a leader adopts.
#[derive(Debug, Clone)]
pub struct AdoptedAttempt {
    pub job: JobId,
    pub attempt: AttemptId,
    pub number: i64,
}

/// Attempts found running in a run whose owner is gone: stops what is left of their process
/// groups (only when pid and start time still match) and records them `Lost`. With a shared
/// store, an attempt queued for a worker is the worker's: a leader (`adopt`) leaves it to it and
/// waits for its end; anyone else asks its worker to stop it and records it Lost.
pub async fn recover(store: &Store, run: &RunRow, adopt: bool) -> Result<Recovered, StoreError> {
    let mut open = store.open_attempts(run.id).await?;
    if open.is_empty() {
        return Ok(Recovered::default());
    }
    let mut recovered = Recovered::default();
    if store.is_shared() {
        let queued: std::collections::HashSet<AttemptId> = store
            .work_states(run.id)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if adopt {
            open.retain(|a| {
                if queued.contains(&a.id) {
                    recovered.adopted.push(AdoptedAttempt {
                        job: a.job_id.clone(),
                        attempt: a.id,
                        number: a.number,
                    });
                    false
                } else {
                    true
                }
            });
        } else {
            let stop: Vec<i64> = open
                .iter()
                .filter(|a| queued.contains(&a.id))
                .map(|a| a.id.get())
                .collect();
            if !stop.is_empty() {
                store
                    .cancel_queued(&stop, &super::remote::stopped_text())
                    .await?;
            }
        }
        if open.is_empty() {
            return Ok(recovered);
        }
    }
    for attempt in &open {
        let group = match (attempt.pgid, attempt.process_start_time) {
            (Some(pgid), Some(start))
                if process::kill_leftover_group(pgid as i32, start as u64) =>
            {
                Some(pgid as i32)
            }
            _ => None,
        };
        // Every process of the attempt carries its token: this also finds an attempt whose pid
        // was never recorded (the executioner died right after the spawn) and descendants left
        // behind by a leader that already exited. The next round must not start while any of
        // them still holds the job's files.
        let marker = format!(
            "{}={}",
            super::ATTEMPT_TOKEN_VAR,
            super::attempt_token(store, attempt.id)
        );
        let _ = tokio::task::spawn_blocking(move || {
            let limit = std::time::Duration::from_secs(10);
            process::kill_marked(&marker, limit);
            if let Some(group) = group {
                process::wait_group_gone(group, limit);
            }
        })
        .await;
    }
    let ids: Vec<AttemptId> = open.iter().map(|a| a.id).collect();
    store.mark_lost(&ids).await?;
    recovered.lost = open.into_iter().map(|a| a.job_id).collect();
    Ok(recovered)
}

/// True when the run's recorded owner process is still alive (same pid and start time).
pub fn owner_alive(run: &RunRow) -> bool {
    match (run.owner_pid, run.owner_start_time) {
        (Some(pid), Some(start)) => {
            let same_host = run
                .owner_host
                .as_deref()
                .is_none_or(|h| h == process::hostname().as_str());
            // A zombie (killed, not yet reaped: a parent that does not reap, as a container's
            // first process may not) owns nothing any more.
            same_host
                && process::is_same_process(pid as i32, start as u64)
                && process::pid_exists(pid as i32)
        }
        _ => false,
    }
}

/// Attempts made per job so far in `run` (attempt numbers continue after them).
pub async fn previous_attempts(
    store: &Store,
    run: RunId,
    plan: &Plan,
) -> Result<Vec<i64>, StoreError> {
    let mut last: std::collections::HashMap<JobId, i64> = std::collections::HashMap::new();
    for a in store.attempts(run).await? {
        let n = last.entry(a.job_id).or_insert(0);
        *n = (*n).max(a.number);
    }
    Ok(plan
        .jobs
        .iter()
        .map(|j| last.get(&j.id).copied().unwrap_or(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    /// a -> b -> c, and d alone; `c` has continueOnError.
    fn plan() -> Plan {
        let manifest = serde_json::json!({
            "apiVersion": "executioner.dev/v1",
            "kind": "Pipeline",
            "metadata": {"name": "p"},
            "spec": {"jobs": [
                {"id": "a", "command": "true"},
                {"id": "b", "command": "true", "dependencies": ["a"]},
                {"id": "c", "command": "true", "dependencies": ["b"], "continueOnError": true},
                {"id": "d", "command": "true"},
            ]},
        });
        let manifest = serde_json::from_value(manifest).expect("manifest");
        Plan::new(
            &manifest,
            std::path::Path::new("."),
            &IndexMap::new(),
            IndexMap::new(),
        )
        .expect("plan")
    }

    fn row(job: &str, phase: JobPhase, reason: Option<JobReason>) -> JobRow {
        JobRow {
            run_id: RunId::from(1),
            job_id: JobId::parse(job).expect("job id"),
            position: 0,
            phase,
            reason,
            attempts: 1,
            lost: 0,
            exit_code: None,
            started_at: None,
            finished_at: None,
            log_path: format!("{job}.log"),
            message: None,
        }
    }

    fn rerun(plan: &Plan, rows: &[JobRow], mode: ResumeMode) -> Vec<JobId> {
        plan_resume(plan, rows, mode).rerun
    }

    #[test]
    fn each_mode_picks_its_jobs() {
        let plan = plan();
        // a failed, so b and c were skipped; d was cancelled.
        let rows = [
            row("a", JobPhase::Failed, Some(JobReason::ExitCode)),
            row("b", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            row("c", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            row("d", JobPhase::Cancelled, Some(JobReason::Cancelled)),
        ];
        assert_eq!(rerun(&plan, &rows, ResumeMode::All), ["a", "b", "c", "d"]);
        assert_eq!(
            rerun(&plan, &rows, ResumeMode::FailedOnly),
            ["a", "b", "c"],
            "the failure and what it blocked; the cancelled job keeps its state"
        );
        assert!(rerun(&plan, &rows, ResumeMode::Continue).is_empty());
        let kept = plan_resume(&plan, &rows, ResumeMode::FailedOnly).starts;
        assert_eq!(kept[3], Start::Keep(Outcome::Cancelled));
    }

    #[test]
    fn marked_jobs_release_what_they_blocked_and_new_jobs_run() {
        let plan = plan();
        let rows = [
            row("a", JobPhase::Succeeded, Some(JobReason::MarkedSuccess)),
            row("b", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            row("c", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
        ];
        // d has no row: a job new to the spec runs in every mode.
        assert_eq!(rerun(&plan, &rows, ResumeMode::FailedOnly), ["b", "c", "d"]);
        assert_eq!(rerun(&plan, &rows, ResumeMode::All), ["b", "c", "d"]);
        assert_eq!(rerun(&plan, &rows, ResumeMode::Continue), ["d"]);
    }

    #[test]
    fn failed_only_reruns_what_fail_fast_kept_from_starting() {
        let plan = plan();
        let rows = [
            row("a", JobPhase::Failed, Some(JobReason::ExitCode)),
            row("b", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            row("c", JobPhase::Skipped, Some(JobReason::UpstreamFailed)),
            row("d", JobPhase::Skipped, Some(JobReason::FailFast)),
        ];
        assert_eq!(
            rerun(&plan, &rows, ResumeMode::FailedOnly),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn a_continuation_runs_only_what_had_not_ended() {
        let plan = plan();
        let rows = [
            row("a", JobPhase::Succeeded, Some(JobReason::Completed)),
            row(
                "b",
                JobPhase::Interrupted,
                Some(JobReason::ControllerStopped),
            ),
            row("c", JobPhase::Pending, None),
            row("d", JobPhase::Failed, Some(JobReason::ExitCode)),
        ];
        assert_eq!(rerun(&plan, &rows, ResumeMode::Continue), ["b", "c"]);
        let starts = plan_resume(&plan, &rows, ResumeMode::Continue).starts;
        assert_eq!(starts[3], Start::Keep(Outcome::Failed { ignored: false }));
        // A lost job runs again too.
        let rows = [
            row("a", JobPhase::Lost, Some(JobReason::Lost)),
            row("b", JobPhase::Pending, None),
            row("c", JobPhase::Pending, None),
            row("d", JobPhase::Succeeded, Some(JobReason::Completed)),
        ];
        assert_eq!(rerun(&plan, &rows, ResumeMode::Continue), ["a", "b", "c"]);
    }
}

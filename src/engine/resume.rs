//! Starting a run or a new round of one: which jobs run again on a resume, and recovery of
//! attempts left running by an executioner that died (their process groups are stopped and the
//! attempts recorded `Lost`).

use crate::process;
use crate::scheduler::{Outcome, Start};
use crate::status::{JobPhase, Reason};
use crate::store::{JobRow, RunId, RunRow, Store, StoreError};

use super::plan::Plan;

/// What a resume does to one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// How each job of the plan enters the new round.
    pub starts: Vec<Start>,
    /// Ids of the jobs that run again.
    pub rerun: Vec<String>,
}

/// Decides a resume round: succeeded jobs keep their result; every other job runs again, or with
/// `failed_only` only the failed (and lost) ones, the others keeping their state.
pub fn plan_resume(plan: &Plan, rows: &[JobRow], failed_only: bool) -> ResumePlan {
    let mut starts = Vec::with_capacity(plan.jobs.len());
    let mut rerun = Vec::new();
    for job in &plan.jobs {
        let row = rows.iter().find(|r| r.job_id == job.id);
        let start = match row.map(|r| (r.phase, r.reason)) {
            Some((JobPhase::Succeeded, _)) => Start::Keep(Outcome::Succeeded),
            Some((JobPhase::Failed, _)) | Some((JobPhase::Lost, _)) => Start::Run,
            Some((JobPhase::Skipped, reason)) if failed_only => Start::Keep(Outcome::Skipped {
                satisfied: reason == Some(Reason::SkippedByUser),
            }),
            Some((JobPhase::Cancelled, _)) if failed_only => Start::Keep(Outcome::Cancelled),
            Some((JobPhase::Pending | JobPhase::Waiting | JobPhase::Running, _)) if failed_only => {
                Start::Keep(Outcome::Skipped { satisfied: false })
            }
            _ => Start::Run,
        };
        if start == Start::Run {
            rerun.push(job.id.clone());
        }
        starts.push(start);
    }
    ResumePlan { starts, rerun }
}

/// Attempts found running in a run whose owner is gone: stops what is left of their process
/// groups (only when pid and start time still match) and records them `Lost`.
/// Returns the ids of the jobs whose attempts were lost.
pub async fn recover(store: &Store, run: &RunRow) -> Result<Vec<String>, StoreError> {
    let open = store.open_attempts(run.id).await?;
    if open.is_empty() {
        return Ok(Vec::new());
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
    let ids: Vec<i64> = open.iter().map(|a| a.id).collect();
    store.mark_lost(&ids).await?;
    Ok(open.into_iter().map(|a| a.job_id).collect())
}

/// True when the run's recorded owner process is still alive (same pid and start time).
pub fn owner_alive(run: &RunRow) -> bool {
    match (run.owner_pid, run.owner_start_time) {
        (Some(pid), Some(start)) => {
            let same_host = run
                .owner_host
                .as_deref()
                .is_none_or(|h| h == hostname().as_str());
            same_host && process::is_same_process(pid as i32, start as u64)
        }
        _ => false,
    }
}

/// This machine's name, for run ownership.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Attempts made per job so far in `run` (attempt numbers continue after them).
pub async fn previous_attempts(
    store: &Store,
    run: RunId,
    plan: &Plan,
) -> Result<Vec<i64>, StoreError> {
    let attempts = store.attempts(run).await?;
    Ok(plan
        .jobs
        .iter()
        .map(|j| {
            attempts
                .iter()
                .filter(|a| a.job_id == j.id)
                .map(|a| a.number)
                .max()
                .unwrap_or(0)
        })
        .collect())
}

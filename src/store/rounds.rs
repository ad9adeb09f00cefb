//! A run's lifecycle across rounds: opening a new round (resume, with the jobs a changed spec adds
//! or removes), closing a run, and `mark-success`. Whenever one of these leaves the run terminal,
//! its phase is the verdict derived from its jobs ([`crate::status::verdict`]) inside the same
//! transaction, so no stored run phase can disagree with its jobs.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use rusqlite::OptionalExtension;
use time::OffsetDateTime;

use super::sqlite::direct::Immediate;

use super::{
    NewJob, Owner, RunId, StoreError, job_not_found, saturating_i64, sqlite::SqliteStore, timestamp,
};
use crate::status::{JobPhase, JobReason, JobVerdict, RunPhase, RunReason, Tally};

/// The event kind recorded by [`Store::mark_success`].
pub const EVENT_MARKED_SUCCESS: &str = "MarkedSuccess";
/// The event kind recorded when a resume with a changed spec drops a job from the run.
pub const EVENT_JOB_REMOVED: &str = "JobRemoved";

/// The detail of a [`EVENT_MARKED_SUCCESS`] event: the phase the job had, as stored
/// (`{"previousPhase":"Failed"}`).
pub(super) fn marked_success_detail(previous: &str) -> String {
    serde_json::json!({ "previousPhase": previous }).to_string()
}

/// The detail of a [`EVENT_JOB_REMOVED`] event: the phase the job had, as stored, and its attempts.
pub(super) fn job_removed_detail(phase: &str, attempts: i64) -> String {
    serde_json::json!({ "previousPhase": phase, "attempts": attempts }).to_string()
}

/// What a new round changes in a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundChange<'a> {
    /// Jobs that run again: back to Pending with their counters, exit code, times and message
    /// cleared (`lost` too when `reset_lost`).
    pub rerun: &'a [&'a str],
    /// A user's resume forgives earlier losses; a controller's continuation keeps counting them
    /// (a job lost too often fails).
    pub reset_lost: bool,
    /// The owner (pid, start time) the caller saw when it decided to take the run over: the round
    /// opens only if the run still has it, so a `resume` and a starting controller can never both
    /// drive the same run (`StoreError::TakenOver` for the later one).
    pub owner_was: Option<(Option<i64>, Option<i64>)>,
    /// Jobs new in a changed spec (they also belong in `rerun`).
    pub added: &'a [NewJob<'a>],
    /// Jobs the changed spec no longer has: their rows and attempts leave the run (their logs stay
    /// on disk), each recorded by a `JobRemoved` event.
    pub removed: &'a [&'a str],
    /// The new spec (pinned JSON, hash) and its jobs in declaration order, when it changed.
    pub spec: Option<(&'a str, &'a str, &'a [&'a str])>,
}

impl SqliteStore {
    /// Resume: a new round on the same run id (see [`RoundChange`]). The run becomes Running with
    /// `rounds + 1`, no finish time and the new owner. Returns the new round number. One
    /// transaction; an unknown run or job changes nothing.
    pub async fn begin_round(
        &self,
        run: RunId,
        change: &RoundChange<'_>,
        owner: &Owner,
    ) -> Result<i64, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let change = OwnedRoundChange::from(change);
        let owner = (
            i64::from(owner.pid),
            owner.host.clone(),
            owner.start_time.map(saturating_i64),
        );
        // These writes scale with the run (on the blocking pool, not the runtime's thread).
        self.write_blocking("starting a new round", move |tx| {
            begin_round(tx, run, &change, &owner, &now)
        })
        .await
    }

    /// Ends the run's round: the run takes the verdict of its jobs and its finish time. The jobs
    /// named in `continue_on_error` may fail. Returns the verdict.
    pub async fn close_run(
        &self,
        run: RunId,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        self.settle_run(run, continue_on_error, false).await
    }

    /// A user's cancellation of a run no process drives any more (its manifest was deleted or
    /// replaced while no controller ran): every job that had not ended is recorded Cancelled, then
    /// the run takes its verdict.
    pub async fn cancel_run(
        &self,
        run: RunId,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        self.settle_run(run, continue_on_error, true).await
    }

    async fn settle_run(
        &self,
        run: RunId,
        continue_on_error: &[&str],
        cancel_rest: bool,
    ) -> Result<(RunPhase, RunReason), StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let may_fail = owned_set(continue_on_error);
        let path = self.path.clone();
        self.write_blocking("finishing a run", move |tx| {
            if cancel_rest {
                tx.prepare_cached(
                    "UPDATE jobs SET phase = 'Cancelled', reason = 'Cancelled', \
                     finished_at = coalesce(finished_at, ?) WHERE run_id = ? \
                     AND phase IN ('Pending', 'Waiting', 'Running', 'Lost', 'Interrupted')",
                )?
                .execute(rusqlite::params![now, run])?;
            }
            settle_verdict(tx, run, &may_fail, &now, &path)
        })
        .await
    }

    /// One transaction: each job becomes Succeeded with reason MarkedSuccess (its message is the
    /// given reason), one `MarkedSuccess` event per job records the reason, the actor and the
    /// phase it had, and the run takes the verdict of its jobs (so marking the last failed jobs
    /// turns it Succeeded). An unknown job changes nothing. Whether the marking is allowed is the
    /// caller's decision. Returns the run's verdict.
    pub async fn mark_success(
        &self,
        run: RunId,
        jobs: &[&str],
        reason: &str,
        actor: &str,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let jobs: Vec<String> = jobs.iter().map(|j| (*j).to_owned()).collect();
        let (reason, actor) = (reason.to_owned(), actor.to_owned());
        let may_fail = owned_set(continue_on_error);
        let path = self.path.clone();
        self.write_blocking("marking jobs succeeded", move |tx| {
            for job in &jobs {
                let previous: Option<String> = tx
                    .prepare_cached("SELECT phase FROM jobs WHERE run_id = ? AND job_id = ?")?
                    .query_row(rusqlite::params![run, job], |row| row.get(0))
                    .optional()?;
                let Some(previous) = previous else {
                    return Ok(Err(job_not_found(run, job)));
                };
                tx.prepare_cached(
                    "UPDATE jobs SET phase = 'Succeeded', reason = 'MarkedSuccess', \
                     message = nullif(?1, ''), finished_at = coalesce(finished_at, ?2) \
                     WHERE run_id = ?3 AND job_id = ?4",
                )?
                .execute(rusqlite::params![reason, now, run, job])?;
                let detail = marked_success_detail(&previous);
                let event = Event {
                    job,
                    kind: EVENT_MARKED_SUCCESS,
                    reason: &reason,
                    actor: Some(&actor),
                    detail: &detail,
                };
                insert_event(tx, run, &event, &now)?;
            }
            settle_verdict(tx, run, &may_fail, &now, &path)
        })
        .await
    }
}

/// A [`RoundChange`] the write owns (it may run on the blocking pool).
#[derive(Debug)]
struct OwnedRoundChange {
    rerun: Vec<String>,
    reset_lost: bool,
    owner_was: Option<(Option<i64>, Option<i64>)>,
    /// Id and log path.
    added: Vec<(String, String)>,
    removed: Vec<String>,
    spec: Option<(String, String, Vec<String>)>,
}

impl From<&RoundChange<'_>> for OwnedRoundChange {
    fn from(change: &RoundChange<'_>) -> Self {
        let strings = |jobs: &[&str]| jobs.iter().map(|j| (*j).to_owned()).collect::<Vec<_>>();
        OwnedRoundChange {
            rerun: strings(change.rerun),
            reset_lost: change.reset_lost,
            owner_was: change.owner_was,
            added: change
                .added
                .iter()
                .map(|j| (j.id.as_str().to_owned(), j.log_path.to_owned()))
                .collect(),
            removed: strings(change.removed),
            spec: change
                .spec
                .map(|(json, hash, order)| (json.to_owned(), hash.to_owned(), strings(order))),
        }
    }
}

fn owned_set(jobs: &[&str]) -> HashSet<String> {
    jobs.iter().map(|j| (*j).to_owned()).collect()
}

/// The transaction of [`SqliteStore::begin_round`]. `owner` is pid, host and start time.
fn begin_round(
    tx: &Immediate<'_>,
    run: RunId,
    change: &OwnedRoundChange,
    owner: &(i64, String, Option<i64>),
    now: &str,
) -> rusqlite::Result<Result<i64, StoreError>> {
    let (check_owner, pid_was, start_was) = match change.owner_was {
        Some((pid, start)) => (true, pid, start),
        None => (false, None, None),
    };
    let round: Option<i64> = tx
        .prepare_cached(
            "UPDATE runs SET phase = 'Running', reason = NULL, rounds = rounds + 1, \
             finished_at = NULL, owner_pid = ?, owner_host = ?, owner_start_time = ? \
             WHERE id = ? AND (NOT ? OR (owner_pid IS ? AND owner_start_time IS ?)) \
             RETURNING rounds",
        )?
        .query_row(
            rusqlite::params![
                owner.0,
                owner.1,
                owner.2,
                run,
                check_owner,
                pid_was,
                start_was
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(round) = round else {
        let exists: Option<i64> = tx
            .prepare_cached("SELECT id FROM runs WHERE id = ?")?
            .query_row([run], |row| row.get(0))
            .optional()?;
        return Ok(Err(match exists {
            Some(_) => StoreError::TakenOver { run },
            None => StoreError::NotFound {
                what: format!("run {run}"),
            },
        }));
    };
    for job in &change.removed {
        let previous: Option<(String, i64)> = tx
            .prepare_cached("SELECT phase, attempts FROM jobs WHERE run_id = ? AND job_id = ?")?
            .query_row(rusqlite::params![run, job], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        let Some((phase, attempts)) = previous else {
            return Ok(Err(job_not_found(run, job)));
        };
        // Attempts first: they refer to the job's row.
        for table in [
            "DELETE FROM attempts WHERE run_id = ? AND job_id = ?",
            "DELETE FROM jobs WHERE run_id = ? AND job_id = ?",
        ] {
            tx.prepare_cached(table)?
                .execute(rusqlite::params![run, job])?;
        }
        let detail = job_removed_detail(&phase, attempts);
        let event = Event {
            job,
            kind: EVENT_JOB_REMOVED,
            reason: "not in the new spec",
            actor: None,
            detail: &detail,
        };
        insert_event(tx, run, &event, now)?;
    }
    for (job, log_path) in &change.added {
        tx.prepare_cached(
            "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
             VALUES (?1, ?2, (SELECT coalesce(max(position), -1) + 1 FROM jobs WHERE run_id = ?1), \
             'Pending', ?3)",
        )?
        .execute(rusqlite::params![run, job, log_path])?;
    }
    if let Some((spec_json, spec_hash, order)) = &change.spec {
        tx.prepare_cached("UPDATE runs SET spec_json = ?, spec_hash = ? WHERE id = ?")?
            .execute(rusqlite::params![spec_json, spec_hash, run])?;
        for (position, job) in order.iter().enumerate() {
            tx.prepare_cached("UPDATE jobs SET position = ? WHERE run_id = ? AND job_id = ?")?
                .execute(rusqlite::params![saturating_i64(position as u64), run, job])?;
        }
    }
    for job in &change.rerun {
        let changed = tx
            .prepare_cached(
                "UPDATE jobs SET phase = 'Pending', reason = NULL, attempts = 0, \
                 exit_code = NULL, started_at = NULL, finished_at = NULL, message = NULL, \
                 lost = CASE WHEN ? THEN 0 ELSE lost END \
                 WHERE run_id = ? AND job_id = ?",
            )?
            .execute(rusqlite::params![change.reset_lost, run, job])?;
        if changed == 0 {
            return Ok(Err(job_not_found(run, job)));
        }
    }
    Ok(Ok(round))
}

/// Sets the run's phase and reason to the verdict of its jobs, and its finish time if it has
/// none.
fn settle_verdict(
    tx: &Immediate<'_>,
    run: RunId,
    may_fail: &HashSet<String>,
    now: &str,
    path: &Path,
) -> rusqlite::Result<Result<(RunPhase, RunReason), StoreError>> {
    // Folded row by row: a 10,000-job run's rows are never all in memory at once.
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut tally = Tally::default();
    let mut select =
        tx.prepare_cached("SELECT job_id, phase, reason FROM jobs WHERE run_id = ?")?;
    let mut rows = select.query([run])?;
    while let Some(row) = rows.next()? {
        let id = row.get_ref(0)?.as_str()?;
        let phase = row.get_ref(1)?.as_str()?;
        let reason = row.get_ref(2)?.as_str_or_null()?;
        let phase = match JobPhase::from_str(phase) {
            Ok(phase) => phase,
            Err(e) => return Ok(Err(corrupt(e.to_string()))),
        };
        let reason = match reason.map(JobReason::from_str).transpose() {
            Ok(reason) => reason,
            Err(e) => return Ok(Err(corrupt(e.to_string()))),
        };
        tally.add(JobVerdict {
            phase,
            reason,
            continue_on_error: may_fail.contains(id),
        });
    }
    drop(rows);
    drop(select);
    let (phase, reason) = tally.finish();
    let changed = tx
        .prepare_cached(
            "UPDATE runs SET phase = ?, reason = ?, finished_at = coalesce(finished_at, ?) \
             WHERE id = ?",
        )?
        .execute(rusqlite::params![phase.as_str(), reason.as_str(), now, run])?;
    if changed == 0 {
        return Ok(Err(StoreError::NotFound {
            what: format!("run {run}"),
        }));
    }
    Ok(Ok((phase, reason)))
}

/// One audit event of a job.
struct Event<'a> {
    job: &'a str,
    kind: &'a str,
    reason: &'a str,
    actor: Option<&'a str>,
    detail: &'a str,
}

fn insert_event(
    tx: &Immediate<'_>,
    run: RunId,
    event: &Event<'_>,
    at: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (run_id, job_id, kind, reason, actor, at, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(rusqlite::params![
        run,
        event.job,
        event.kind,
        event.reason,
        event.actor,
        at,
        event.detail
    ])
    .map(drop)
}

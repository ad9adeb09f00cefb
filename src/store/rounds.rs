//! A run's lifecycle across rounds: opening a new round (resume, with the jobs a changed spec adds
//! or removes), closing a run, and `mark-success`. Whenever one of these leaves the run terminal,
//! its phase is the verdict derived from its jobs ([`crate::status::verdict`]) inside the same
//! transaction, so no stored run phase can disagree with its jobs.

use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::{
    NewJob, Owner, RunId, StoreError, job_not_found, saturating_i64, sqlite::SqliteStore, timestamp,
};
use crate::status::{JobPhase, JobReason, JobVerdict, RunPhase, RunReason, Tally};

/// The event kind recorded by [`Store::mark_success`].
pub const EVENT_MARKED_SUCCESS: &str = "MarkedSuccess";
/// The event kind recorded when a resume with a changed spec drops a job from the run.
pub const EVENT_JOB_REMOVED: &str = "JobRemoved";

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
        let context = "starting a new round";
        let now = timestamp(OffsetDateTime::now_utc());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        let (check_owner, pid_was, start_was) = match change.owner_was {
            Some((pid, start)) => (true, pid, start),
            None => (false, None, None),
        };
        let round: Option<i64> = sqlx::query(
            "UPDATE runs SET phase = 'Running', reason = NULL, rounds = rounds + 1, \
             finished_at = NULL, owner_pid = ?, owner_host = ?, owner_start_time = ? \
             WHERE id = ? AND (NOT ? OR (owner_pid IS ? AND owner_start_time IS ?)) \
             RETURNING rounds",
        )
        .bind(i64::from(owner.pid))
        .bind(owner.host.as_str())
        .bind(owner.start_time.map(saturating_i64))
        .bind(run)
        .bind(check_owner)
        .bind(pid_was)
        .bind(start_was)
        .fetch_optional(&mut *tx)
        .await
        .and_then(|row| row.map(|row| row.try_get(0)).transpose())
        .map_err(self.sql(context))?;
        let Some(round) = round else {
            let exists: Option<i64> = sqlx::query("SELECT id FROM runs WHERE id = ?")
                .bind(run)
                .fetch_optional(&mut *tx)
                .await
                .and_then(|row| row.map(|row| row.try_get(0)).transpose())
                .map_err(self.sql(context))?;
            return Err(match exists {
                Some(_) => StoreError::TakenOver { run },
                None => StoreError::NotFound {
                    what: format!("run {run}"),
                },
            });
        };
        for job in change.removed {
            let previous: Option<(String, i64)> =
                sqlx::query("SELECT phase, attempts FROM jobs WHERE run_id = ? AND job_id = ?")
                    .bind(run)
                    .bind(*job)
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| {
                        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                            .transpose()
                    })
                    .map_err(self.sql(context))?;
            let Some((phase, attempts)) = previous else {
                return Err(job_not_found(run, job));
            };
            // Attempts first: they refer to the job's row.
            for table in [
                "DELETE FROM attempts WHERE run_id = ? AND job_id = ?",
                "DELETE FROM jobs WHERE run_id = ? AND job_id = ?",
            ] {
                sqlx::query(table)
                    .bind(run)
                    .bind(*job)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.sql(context))?;
            }
            let detail =
                serde_json::json!({ "previousPhase": phase, "attempts": attempts }).to_string();
            let event = Event {
                job,
                kind: EVENT_JOB_REMOVED,
                reason: "not in the new spec",
                actor: None,
                detail: &detail,
            };
            insert_event(&mut tx, run, &event, &now)
                .await
                .map_err(self.sql(context))?;
        }
        for job in change.added {
            sqlx::query(
                "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
                 VALUES (?, ?, (SELECT coalesce(max(position), -1) + 1 FROM jobs WHERE run_id = ?), \
                 'Pending', ?)",
            )
            .bind(run)
            .bind(job.id)
            .bind(run)
            .bind(job.log_path)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
        }
        if let Some((spec_json, spec_hash, order)) = change.spec {
            sqlx::query("UPDATE runs SET spec_json = ?, spec_hash = ? WHERE id = ?")
                .bind(spec_json)
                .bind(spec_hash)
                .bind(run)
                .execute(&mut *tx)
                .await
                .map_err(self.sql(context))?;
            for (position, job) in order.iter().enumerate() {
                sqlx::query("UPDATE jobs SET position = ? WHERE run_id = ? AND job_id = ?")
                    .bind(saturating_i64(position as u64))
                    .bind(run)
                    .bind(*job)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.sql(context))?;
            }
        }
        for job in change.rerun {
            let done = sqlx::query(
                "UPDATE jobs SET phase = 'Pending', reason = NULL, attempts = 0, \
                 exit_code = NULL, started_at = NULL, finished_at = NULL, message = NULL, \
                 lost = CASE WHEN ? THEN 0 ELSE lost END \
                 WHERE run_id = ? AND job_id = ?",
            )
            .bind(change.reset_lost)
            .bind(run)
            .bind(*job)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
            if done.rows_affected() == 0 {
                return Err(job_not_found(run, job));
            }
        }
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(round)
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
        let context = "finishing a run";
        let now = timestamp(OffsetDateTime::now_utc());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        if cancel_rest {
            sqlx::query(
                "UPDATE jobs SET phase = 'Cancelled', reason = 'Cancelled', \
                 finished_at = coalesce(finished_at, ?) WHERE run_id = ? \
                 AND phase IN ('Pending', 'Waiting', 'Running', 'Lost', 'Interrupted')",
            )
            .bind(&now)
            .bind(run)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
        }
        let verdict = self
            .settle_verdict(&mut tx, run, continue_on_error, &now, context)
            .await?;
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(verdict)
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
        let context = "marking jobs succeeded";
        let now = timestamp(OffsetDateTime::now_utc());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        for job in jobs {
            let previous: Option<String> =
                sqlx::query("SELECT phase FROM jobs WHERE run_id = ? AND job_id = ?")
                    .bind(run)
                    .bind(*job)
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| row.map(|row| row.try_get(0)).transpose())
                    .map_err(self.sql(context))?;
            let Some(previous) = previous else {
                return Err(job_not_found(run, job));
            };
            sqlx::query(
                "UPDATE jobs SET phase = 'Succeeded', reason = 'MarkedSuccess', \
                 message = nullif(?1, ''), finished_at = coalesce(finished_at, ?2) \
                 WHERE run_id = ?3 AND job_id = ?4",
            )
            .bind(reason)
            .bind(&now)
            .bind(run)
            .bind(*job)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
            let detail = serde_json::json!({ "previousPhase": previous }).to_string();
            let event = Event {
                job,
                kind: EVENT_MARKED_SUCCESS,
                reason,
                actor: Some(actor),
                detail: &detail,
            };
            insert_event(&mut tx, run, &event, &now)
                .await
                .map_err(self.sql(context))?;
        }
        let verdict = self
            .settle_verdict(&mut tx, run, continue_on_error, &now, context)
            .await?;
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(verdict)
    }

    /// Sets the run's phase and reason to the verdict of its jobs, and its finish time if it has
    /// none.
    async fn settle_verdict(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        run: RunId,
        continue_on_error: &[&str],
        now: &str,
        context: &'static str,
    ) -> Result<(RunPhase, RunReason), StoreError> {
        // Folded row by row: a 10,000-job run's rows are never all in memory at once.
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        };
        let may_fail: std::collections::HashSet<&str> = continue_on_error.iter().copied().collect();
        let mut tally = Tally::default();
        let mut rows = sqlx::query("SELECT job_id, phase, reason FROM jobs WHERE run_id = ?")
            .bind(run)
            .fetch(&mut **tx);
        while let Some(row) = rows.try_next().await.map_err(self.sql(context))? {
            let id: &str = row.try_get(0).map_err(self.sql(context))?;
            let phase: &str = row.try_get(1).map_err(self.sql(context))?;
            let reason: Option<&str> = row.try_get(2).map_err(self.sql(context))?;
            tally.add(JobVerdict {
                phase: JobPhase::from_str(phase).map_err(|e| corrupt(e.to_string()))?,
                reason: reason
                    .map(JobReason::from_str)
                    .transpose()
                    .map_err(|e| corrupt(e.to_string()))?,
                continue_on_error: may_fail.contains(id),
            });
        }
        drop(rows);
        let (phase, reason) = tally.finish();
        let done = sqlx::query(
            "UPDATE runs SET phase = ?, reason = ?, finished_at = coalesce(finished_at, ?) \
             WHERE id = ?",
        )
        .bind(phase.as_str())
        .bind(reason.as_str())
        .bind(now)
        .bind(run)
        .execute(&mut **tx)
        .await
        .map_err(self.sql(context))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("run {run}"),
            });
        }
        Ok((phase, reason))
    }
}

/// One audit event of a job.
struct Event<'a> {
    job: &'a str,
    kind: &'a str,
    reason: &'a str,
    actor: Option<&'a str>,
    detail: &'a str,
}

async fn insert_event(
    tx: &mut Transaction<'_, Sqlite>,
    run: RunId,
    event: &Event<'_>,
    at: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (run_id, job_id, kind, reason, actor, at, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(run)
    .bind(event.job)
    .bind(event.kind)
    .bind(event.reason)
    .bind(event.actor)
    .bind(at)
    .bind(event.detail)
    .execute(&mut **tx)
    .await
    .map(drop)
}

//! A run's lifecycle across rounds on PostgreSQL: opening a new round (resume, with the jobs a
//! changed spec adds or removes), closing or cancelling a run, and `mark-success`, each one
//! transaction whose terminal run phase is the verdict of its jobs, as on SQLite.
//!
//! Where SQLite's `BEGIN IMMEDIATE` made read-then-write atomic, these take the run's row lock
//! first (the owner check of `begin_round` is the `UPDATE`'s own condition, which PostgreSQL checks
//! again on the locked row; the others `SELECT ... FOR UPDATE` the run), so two processes changing
//! one run take turns.

use std::str::FromStr;

use futures_util::TryStreamExt;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::PgStore;
use crate::status::{JobPhase, JobReason, JobVerdict, RunPhase, RunReason, Tally};
use crate::store::rounds::{job_removed_detail, marked_success_detail};
use crate::store::{
    EVENT_JOB_REMOVED, EVENT_MARKED_SUCCESS, Owner, RoundChange, RunId, StoreError, job_not_found,
    saturating_i64,
};

impl PgStore {
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
        let now = super::now();
        let sql = self.sql(context);
        let mut tx = self.begin(context).await?;
        let (check_owner, pid_was, start_was) = match change.owner_was {
            Some((pid, start)) => (true, pid, start),
            None => (false, None, None),
        };
        let round: Option<i64> = sqlx::query_scalar(
            "UPDATE runs SET phase = 'Running', reason = NULL, rounds = rounds + 1, \
             finished_at = NULL, owner_pid = $1, owner_host = $2, owner_start_time = $3 \
             WHERE id = $4 AND (NOT $5 OR (owner_pid IS NOT DISTINCT FROM $6 \
                                           AND owner_start_time IS NOT DISTINCT FROM $7)) \
             RETURNING rounds",
        )
        .bind(i64::from(owner.pid))
        .bind(owner.host.as_str())
        .bind(owner.start_time.map(saturating_i64))
        .bind(run.get())
        .bind(check_owner)
        .bind(pid_was)
        .bind(start_was)
        .fetch_optional(&mut *tx)
        .await
        .map_err(&sql)?;
        let Some(round) = round else {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE id = $1")
                .bind(run.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(&sql)?;
            return Err(match exists {
                Some(_) => StoreError::TakenOver { run },
                None => StoreError::NotFound {
                    what: format!("run {run}"),
                },
            });
        };
        for job in change.removed {
            let previous: Option<(String, i64)> = sqlx::query_as(
                "SELECT phase, attempts FROM jobs WHERE run_id = $1 AND job_id = $2",
            )
            .bind(run.get())
            .bind(*job)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&sql)?;
            let Some((phase, attempts)) = previous else {
                return Err(job_not_found(run, job));
            };
            // Attempts first: they refer to the job's row.
            for statement in [
                "DELETE FROM attempts WHERE run_id = $1 AND job_id = $2",
                "DELETE FROM jobs WHERE run_id = $1 AND job_id = $2",
            ] {
                sqlx::query(statement)
                    .bind(run.get())
                    .bind(*job)
                    .execute(&mut *tx)
                    .await
                    .map_err(&sql)?;
            }
            let detail = job_removed_detail(&phase, attempts);
            let event = Event {
                job,
                kind: EVENT_JOB_REMOVED,
                reason: "not in the new spec",
                actor: None,
                detail: &detail,
            };
            insert_event(&mut tx, run, &event, now)
                .await
                .map_err(&sql)?;
        }
        if !change.added.is_empty() {
            let ids: Vec<&str> = change.added.iter().map(|j| j.id.as_str()).collect();
            let logs: Vec<&str> = change.added.iter().map(|j| j.log_path).collect();
            sqlx::query(
                "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
                 SELECT $1, a.job, \
                     (SELECT coalesce(max(position), -1) FROM jobs WHERE run_id = $1) + a.ord, \
                     'Pending', a.log \
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS a (job, log, ord)",
            )
            .bind(run.get())
            .bind(ids)
            .bind(logs)
            .execute(&mut *tx)
            .await
            .map_err(&sql)?;
        }
        if let Some((spec_json, spec_hash, order)) = change.spec {
            sqlx::query("UPDATE runs SET spec_json = $1, spec_hash = $2 WHERE id = $3")
                .bind(spec_json)
                .bind(spec_hash)
                .bind(run.get())
                .execute(&mut *tx)
                .await
                .map_err(&sql)?;
            sqlx::query(
                "UPDATE jobs AS j SET position = o.ord - 1 \
                 FROM unnest($2::text[]) WITH ORDINALITY AS o (job, ord) \
                 WHERE j.run_id = $1 AND j.job_id = o.job",
            )
            .bind(run.get())
            .bind(order.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(&sql)?;
        }
        if !change.rerun.is_empty() {
            let reset: Vec<String> = sqlx::query_scalar(
                "UPDATE jobs SET phase = 'Pending', reason = NULL, attempts = 0, \
                 exit_code = NULL, started_at = NULL, finished_at = NULL, message = NULL, \
                 lost = CASE WHEN $1 THEN 0 ELSE lost END \
                 WHERE run_id = $2 AND job_id = ANY($3) RETURNING job_id",
            )
            .bind(change.reset_lost)
            .bind(run.get())
            .bind(change.rerun.to_vec())
            .fetch_all(&mut *tx)
            .await
            .map_err(&sql)?;
            if let Some(job) = change
                .rerun
                .iter()
                .find(|job| !reset.iter().any(|r| r == *job))
            {
                return Err(job_not_found(run, job));
            }
        }
        tx.commit().await.map_err(&sql)?;
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

    /// A user's cancellation of a run no process drives any more: every job that had not ended is
    /// recorded Cancelled, then the run takes its verdict.
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
        let now = super::now();
        let mut tx = self.begin(context).await?;
        lock_run(&mut tx, run).await.map_err(self.sql(context))?;
        if cancel_rest {
            sqlx::query(
                "UPDATE jobs SET phase = 'Cancelled', reason = 'Cancelled', \
                 finished_at = coalesce(finished_at, $1) WHERE run_id = $2 \
                 AND phase IN ('Pending', 'Waiting', 'Running', 'Lost', 'Interrupted')",
            )
            .bind(now)
            .bind(run.get())
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
        }
        let verdict = self
            .settle_verdict(&mut tx, run, continue_on_error, now, context)
            .await?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(verdict)
    }

    /// One transaction: each job becomes Succeeded with reason MarkedSuccess (its message is the
    /// given reason), one `MarkedSuccess` event per job records the reason, the actor and the
    /// phase it had, and the run takes the verdict of its jobs. An unknown job changes nothing.
    /// Returns the run's verdict.
    pub async fn mark_success(
        &self,
        run: RunId,
        jobs: &[&str],
        reason: &str,
        actor: &str,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        let context = "marking jobs succeeded";
        let now = super::now();
        let sql = self.sql(context);
        let mut tx = self.begin(context).await?;
        lock_run(&mut tx, run).await.map_err(&sql)?;
        for job in jobs {
            let previous: Option<String> = sqlx::query_scalar(
                "SELECT phase FROM jobs WHERE run_id = $1 AND job_id = $2 FOR UPDATE",
            )
            .bind(run.get())
            .bind(*job)
            .fetch_optional(&mut *tx)
            .await
            .map_err(&sql)?;
            let Some(previous) = previous else {
                return Err(job_not_found(run, job));
            };
            sqlx::query(
                "UPDATE jobs SET phase = 'Succeeded', reason = 'MarkedSuccess', \
                 message = nullif($1, ''), finished_at = coalesce(finished_at, $2) \
                 WHERE run_id = $3 AND job_id = $4",
            )
            .bind(reason)
            .bind(now)
            .bind(run.get())
            .bind(*job)
            .execute(&mut *tx)
            .await
            .map_err(&sql)?;
            let detail = marked_success_detail(&previous);
            let event = Event {
                job,
                kind: EVENT_MARKED_SUCCESS,
                reason,
                actor: Some(actor),
                detail: &detail,
            };
            insert_event(&mut tx, run, &event, now)
                .await
                .map_err(&sql)?;
        }
        let verdict = self
            .settle_verdict(&mut tx, run, continue_on_error, now, context)
            .await?;
        tx.commit().await.map_err(&sql)?;
        Ok(verdict)
    }

    /// Sets the run's phase and reason to the verdict of its jobs, and its finish time if it has
    /// none. Folded row by row: a 10,000-job run's rows are never all in memory at once.
    async fn settle_verdict(
        &self,
        tx: &mut PgConnection,
        run: RunId,
        continue_on_error: &[&str],
        now: OffsetDateTime,
        context: &'static str,
    ) -> Result<(RunPhase, RunReason), StoreError> {
        let may_fail: std::collections::HashSet<&str> = continue_on_error.iter().copied().collect();
        let mut tally = Tally::default();
        {
            let mut rows = sqlx::query("SELECT job_id, phase, reason FROM jobs WHERE run_id = $1")
                .bind(run.get())
                .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(self.sql(context))? {
                let id: &str = row.try_get(0).map_err(self.sql(context))?;
                let phase: &str = row.try_get(1).map_err(self.sql(context))?;
                let reason: Option<&str> = row.try_get(2).map_err(self.sql(context))?;
                tally.add(JobVerdict {
                    phase: JobPhase::from_str(phase).map_err(|e| self.corrupt(e.to_string()))?,
                    reason: reason
                        .map(JobReason::from_str)
                        .transpose()
                        .map_err(|e| self.corrupt(e.to_string()))?,
                    continue_on_error: may_fail.contains(id),
                });
            }
        }
        let (phase, reason) = tally.finish();
        let done = sqlx::query(
            "UPDATE runs SET phase = $1, reason = $2, finished_at = coalesce(finished_at, $3) \
             WHERE id = $4",
        )
        .bind(phase.as_str())
        .bind(reason.as_str())
        .bind(now)
        .bind(run.get())
        .execute(&mut *tx)
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

/// Takes the run's row lock for the rest of the transaction (nothing when the run is unknown: the
/// caller's own update finds no row and says so).
async fn lock_run(tx: &mut PgConnection, run: RunId) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE")
        .bind(run.get())
        .fetch_optional(&mut *tx)
        .await
        .map(drop)
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
    tx: &mut PgConnection,
    run: RunId,
    event: &Event<'_>,
    at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (run_id, job_id, kind, reason, actor, at, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(run.get())
    .bind(event.job)
    .bind(event.kind)
    .bind(event.reason)
    .bind(event.actor)
    .bind(at)
    .bind(event.detail)
    .execute(&mut *tx)
    .await
    .map(drop)
}

//! The engine's group commit on PostgreSQL: one [`Batch`] (everything one turn of a run loop
//! decided) as one transaction, in the SQLite store's order (ends with the job phases they decide
//! and the outputs of succeeded attempts, then job phases, then pids, then starts), each step one
//! multi-row statement over arrays (`unnest`) rather than a round trip per row.
//!
//! As on SQLite, a change whose row does not exist is reported as [`StoreError::NotFound`] after
//! the commit, which keeps the rest of the batch. One difference in an edge the engine never
//! makes: a batch that names the same job twice among its job phases applies one of them (an
//! `UPDATE ... FROM` changes a row once), where SQLite applied both in order.

use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;

use super::PgStore;
use super::runs::first;
use crate::store::{AttemptId, Batch, RunId, StoreError, attempt_not_found, job_not_found};

/// Attempt ends; the job phases they decide (same transaction, same statement: a data-modifying
/// CTE per table); the outputs of succeeded attempts. Returns the ids of the attempts found.
const ENDS_SQL: &str = "WITH e AS (SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], \
        $5::int[], $6::int[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bool[], $11::text[], \
        $12::text[], $13::text[], $14::bool[]) AS e (id, phase, reason, exit_code, signal, \
        user_time_us, system_time_us, max_rss_kib, upper_bound, message, job_phase, job_reason, \
        terminal)), \
    ended AS (UPDATE attempts AS a SET phase = e.phase, reason = e.reason, \
        exit_code = e.exit_code, signal = e.signal, finished_at = $1, \
        user_time_us = e.user_time_us, system_time_us = e.system_time_us, \
        max_rss_kib = e.max_rss_kib, max_rss_upper_bound = e.upper_bound, message = e.message \
        FROM e WHERE a.id = e.id RETURNING a.id, a.run_id, a.job_id), \
    decided AS (UPDATE jobs AS j SET phase = e.job_phase, reason = e.job_reason, \
        exit_code = e.exit_code, message = e.message, \
        finished_at = CASE WHEN e.terminal THEN $1::timestamptz END \
        FROM ended JOIN e ON e.id = ended.id \
        WHERE e.job_phase IS NOT NULL AND j.run_id = ended.run_id AND j.job_id = ended.job_id) \
    SELECT id FROM ended";

/// Outputs after the ends (SQLite's `INSERT OR REPLACE`: the newest outputs of an attempt win).
const OUTPUTS_SQL: &str = "INSERT INTO attempt_outputs (attempt_id, run_id, job_id, outputs) \
    SELECT a.id, a.run_id, a.job_id, o.outputs \
    FROM unnest($1::bigint[], $2::text[]) AS o (id, outputs) \
    JOIN attempts AS a ON a.id = o.id \
    ON CONFLICT (attempt_id) DO UPDATE SET run_id = excluded.run_id, job_id = excluded.job_id, \
        outputs = excluded.outputs";

const JOBS_SQL: &str = "UPDATE jobs AS j SET phase = c.phase, reason = c.reason, \
        message = c.message, \
        started_at = coalesce(j.started_at, CASE WHEN c.starts THEN $1::timestamptz END), \
        finished_at = CASE WHEN c.terminal THEN $1::timestamptz END \
    FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bool[], $8::bool[]) \
        AS c (job, phase, reason, message, starts, terminal) \
    WHERE j.run_id = $2 AND j.job_id = c.job RETURNING j.job_id";

const PIDS_SQL: &str = "UPDATE attempts AS a SET pid = p.pid, pgid = p.pgid, \
        process_start_time = p.start_time \
    FROM unnest($1::bigint[], $2::int[], $3::int[], $4::bigint[]) AS p (id, pid, pgid, start_time) \
    WHERE a.id = p.id RETURNING a.id";

/// The jobs become Running and each gets its new attempt. Returns `(attempt id, job)`.
const STARTS_SQL: &str = "WITH s AS (SELECT * FROM unnest($4::text[], $5::bigint[], $6::bigint[]) \
        WITH ORDINALITY AS s (job, number, counted, ord)), \
    started AS (UPDATE jobs AS j SET phase = 'Running', reason = NULL, attempts = s.counted, \
        exit_code = NULL, message = NULL, started_at = coalesce(j.started_at, $1), \
        finished_at = NULL FROM s WHERE j.run_id = $2 AND j.job_id = s.job RETURNING j.job_id) \
    INSERT INTO attempts (run_id, job_id, round, number, phase, started_at) \
    SELECT $2, s.job, $3, s.number, 'Running', $1 FROM s JOIN started ON started.job_id = s.job \
    ORDER BY s.ord RETURNING id, job_id";

impl PgStore {
    /// Commits `batch` (changes to run `run`; new attempts belong to `round`) as one transaction
    /// and empties it. Returns the ids of the attempts it started, in the order they were added.
    /// A change whose row does not exist is an error ([`StoreError::NotFound`]) reported after the
    /// commit; the rest of the batch is committed.
    pub async fn commit(
        &self,
        run: RunId,
        round: i64,
        batch: &mut Batch,
    ) -> Result<Vec<AttemptId>, StoreError> {
        let context = "recording the run's progress";
        let batch = std::mem::take(batch);
        let now = super::now();
        let mut tx = self.begin(context).await?;
        let sql = self.sql(context);

        let mut missing_end = None;
        if !batch.ends.is_empty() {
            let found: HashSet<i64> = self
                .end_attempts(&mut tx, &batch, now)
                .await
                .map_err(&sql)?;
            missing_end = batch
                .ends
                .iter()
                .find(|end| !found.contains(&end.id.get()))
                .map(|end| end.id);
            // A queued attempt is settled: its item leaves the queue with the end that settles it.
            sqlx::query("DELETE FROM work_items WHERE attempt_id = ANY($1)")
                .bind(batch.ends.iter().map(|e| e.id.get()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(&sql)?;
        }
        if !batch.outputs.is_empty() {
            // The last outputs given for an attempt win (one statement may not change a row twice).
            let mut last: HashMap<i64, &str> = HashMap::with_capacity(batch.outputs.len());
            for row in &batch.outputs {
                last.insert(row.attempt.get(), row.json.as_str());
            }
            let (ids, json): (Vec<i64>, Vec<&str>) = last.into_iter().unzip();
            sqlx::query(OUTPUTS_SQL)
                .bind(ids)
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(&sql)?;
        }
        let mut missing_job = None;
        if !batch.jobs.is_empty() {
            let changes = &batch.jobs;
            let rows = sqlx::query(JOBS_SQL)
                .bind(now)
                .bind(run.get())
                .bind(changes.iter().map(|c| c.job.as_str()).collect::<Vec<_>>())
                .bind(changes.iter().map(|c| c.phase).collect::<Vec<_>>())
                .bind(changes.iter().map(|c| c.reason).collect::<Vec<_>>())
                .bind(
                    changes
                        .iter()
                        .map(|c| c.message.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(changes.iter().map(|c| c.starts).collect::<Vec<_>>())
                .bind(changes.iter().map(|c| c.terminal).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await
                .map_err(&sql)?;
            let found: HashSet<String> = rows
                .iter()
                .map(first)
                .collect::<Result<_, _>>()
                .map_err(&sql)?;
            missing_job = changes
                .iter()
                .find(|c| !found.contains(c.job.as_str()))
                .map(|c| c.job.clone());
        }
        let mut missing_pid = None;
        if !batch.spawned.is_empty() {
            let rows = &batch.spawned;
            let found = sqlx::query(PIDS_SQL)
                .bind(rows.iter().map(|r| r.id.get()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.pid).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.pgid).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.start_time).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await
                .map_err(&sql)?;
            let found: HashSet<i64> = found
                .iter()
                .map(first)
                .collect::<Result<_, _>>()
                .map_err(&sql)?;
            missing_pid = rows
                .iter()
                .find(|r| !found.contains(&r.id.get()))
                .map(|r| r.id);
        }
        let mut missing_start = None;
        let mut started = Vec::with_capacity(batch.starts.len());
        if !batch.starts.is_empty() {
            let starts = &batch.starts;
            let rows = sqlx::query(STARTS_SQL)
                .bind(now)
                .bind(run.get())
                .bind(round)
                .bind(starts.iter().map(|s| s.job.as_str()).collect::<Vec<_>>())
                .bind(starts.iter().map(|s| s.number).collect::<Vec<_>>())
                .bind(starts.iter().map(|s| s.counted).collect::<Vec<_>>())
                .fetch_all(&mut *tx)
                .await
                .map_err(&sql)?;
            // By job: a job starts at most one attempt per batch.
            let mut ids: HashMap<String, i64> = HashMap::with_capacity(rows.len());
            for row in &rows {
                use sqlx::Row;
                let id: i64 = row.try_get(0).map_err(&sql)?;
                let job: String = row.try_get(1).map_err(&sql)?;
                ids.insert(job, id);
            }
            let mut queued: (Vec<i64>, Vec<&str>, Vec<&str>) = Default::default();
            for start in starts {
                match ids.get(start.job.as_str()) {
                    Some(id) => {
                        started.push(AttemptId::from(*id));
                        if let Some(placement) = &start.queue {
                            queued.0.push(*id);
                            queued.1.push(start.job.as_str());
                            queued.2.push(placement);
                        }
                    }
                    None => {
                        missing_start.get_or_insert_with(|| start.job.clone());
                    }
                }
            }
            if !queued.0.is_empty() {
                super::queue::enqueue(&mut tx, run, &queued.0, &queued.1, &queued.2)
                    .await
                    .map_err(&sql)?;
            }
        }
        tx.commit().await.map_err(&sql)?;

        let missing = missing_end
            .map(attempt_not_found)
            .or_else(|| missing_pid.map(attempt_not_found))
            .or_else(|| missing_job.map(|job| job_not_found(run, &job)))
            .or_else(|| missing_start.map(|job| job_not_found(run, &job)));
        match missing {
            Some(error) => Err(error),
            None => Ok(started),
        }
    }

    async fn end_attempts(
        &self,
        tx: &mut sqlx::PgConnection,
        batch: &Batch,
        now: OffsetDateTime,
    ) -> Result<HashSet<i64>, sqlx::Error> {
        let ends = &batch.ends;
        let rows = sqlx::query(ENDS_SQL)
            .bind(now)
            .bind(ends.iter().map(|e| e.id.get()).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.phase).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.reason).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.exit_code).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.signal).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.user_time_us).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.system_time_us).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.max_rss_kib).collect::<Vec<_>>())
            .bind(
                ends.iter()
                    .map(|e| e.max_rss_upper_bound)
                    .collect::<Vec<_>>(),
            )
            .bind(
                ends.iter()
                    .map(|e| e.message.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(ends.iter().map(|e| e.job_phase).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.job_reason).collect::<Vec<_>>())
            .bind(ends.iter().map(|e| e.terminal).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        rows.iter().map(first).collect()
    }
}

//! Runs, their jobs, attempts and events on PostgreSQL: creating a run with its jobs, the reads
//! every command makes, and crash recovery's `mark_lost` (the single-change writes are one-change
//! batches, built by the facade in `store/mod.rs`). The row decoders of the shared row types live here too.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Decoder, PgStore, now};
use crate::store::rows;
use crate::store::{
    AttemptId, AttemptRow, EventRow, JobRow, NewRun, RunId, RunRow, StoreError, saturating_i64,
};

macro_rules! select_runs {
    ($tail:literal) => {
        concat!(
            "SELECT id, pipeline, generation, spec_json, spec_hash, phase, reason, rounds, ",
            "owner_pid, owner_host, owner_start_time, created_at, started_at, finished_at ",
            "FROM runs ",
            $tail
        )
    };
}
pub(super) use select_runs;

macro_rules! select_attempts {
    ($tail:literal) => {
        concat!(
            "SELECT id, run_id, job_id, round, number, phase, reason, pid, pgid, ",
            "process_start_time, exit_code, signal, started_at, finished_at, user_time_us, ",
            "system_time_us, max_rss_kib, max_rss_upper_bound, message FROM attempts ",
            $tail
        )
    };
}

impl PgStore {
    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<RunId, StoreError> {
        let context = "creating a run";
        let now = now();
        let mut tx = self.begin(context).await?;
        let run: i64 = sqlx::query_scalar(
            "INSERT INTO runs (pipeline, generation, spec_json, spec_hash, phase, rounds, \
             owner_pid, owner_host, owner_start_time, created_at, started_at) \
             VALUES ($1, $2, $3, $4, 'Running', 1, $5, $6, $7, $8, $8) RETURNING id",
        )
        .bind(new.pipeline.as_str())
        .bind(new.generation)
        .bind(new.spec_json)
        .bind(new.spec_hash)
        .bind(i64::from(new.owner.pid))
        .bind(new.owner.host.as_str())
        .bind(new.owner.start_time.map(saturating_i64))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        // Every job in one statement; its place in the arrays is its position.
        let ids: Vec<&str> = new.jobs.iter().map(|j| j.id.as_str()).collect();
        let logs: Vec<&str> = new.jobs.iter().map(|j| j.log_path).collect();
        sqlx::query(
            "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
             SELECT $1, j.job, j.ord - 1, 'Pending', j.log \
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS j (job, log, ord)",
        )
        .bind(run)
        .bind(ids)
        .bind(logs)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(RunId::from(run))
    }

    pub async fn run(&self, run: RunId) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(select_runs!("WHERE id = $1"))
            .bind(run.get())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql("reading a run"))?;
        row.map(|row| self.run_row(&row)).transpose()
    }

    /// Runs, newest first, of one pipeline or all; a negative `limit` means no limit.
    pub async fn runs(
        &self,
        pipeline: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        // PostgreSQL's LIMIT NULL is no limit (SQLite's is a negative one).
        let limit = (limit >= 0).then_some(limit);
        let query = match pipeline {
            Some(pipeline) => sqlx::query(select_runs!(
                "WHERE pipeline = $2 ORDER BY id DESC LIMIT $1"
            ))
            .bind(limit)
            .bind(pipeline),
            None => sqlx::query(select_runs!("ORDER BY id DESC LIMIT $1")).bind(limit),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("listing runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// The newest run of a pipeline.
    pub async fn latest_run(&self, pipeline: &str) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(select_runs!("WHERE pipeline = $1 ORDER BY id DESC LIMIT 1"))
            .bind(pipeline)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql("reading the latest run"))?;
        row.map(|row| self.run_row(&row)).transpose()
    }

    /// Runs whose phase is Running, oldest first (for crash recovery).
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(select_runs!("WHERE phase = 'Running' ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("listing unfinished runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// A run's jobs in declaration order.
    pub async fn jobs(&self, run: RunId) -> Result<Vec<JobRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, job_id, position, phase, reason, attempts, lost, exit_code, \
             started_at, finished_at, log_path, message FROM jobs \
             WHERE run_id = $1 ORDER BY position",
        )
        .bind(run.get())
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading jobs"))?;
        rows.iter().map(|row| self.job_row(row)).collect()
    }

    /// One job of a run.
    pub async fn job(&self, run: RunId, job: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id, job_id, position, phase, reason, attempts, lost, exit_code, \
             started_at, finished_at, log_path, message FROM jobs \
             WHERE run_id = $1 AND job_id = $2",
        )
        .bind(run.get())
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a job"))?;
        row.map(|row| self.job_row(&row)).transpose()
    }

    /// Every attempt of a run, in the order they started.
    pub async fn attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(select_attempts!("WHERE run_id = $1 ORDER BY id"))
            .bind(run.get())
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("reading attempts"))?;
        rows.iter().map(|row| self.attempt_row(row)).collect()
    }

    /// Attempts of this run still recorded Running (crash recovery).
    pub async fn open_attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(select_attempts!(
            "WHERE run_id = $1 AND phase = 'Running' ORDER BY id"
        ))
        .bind(run.get())
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading open attempts"))?;
        rows.iter().map(|row| self.attempt_row(row)).collect()
    }

    /// Crash recovery, one transaction: each attempt still Running becomes Lost (reason Lost,
    /// finished now), and its job gets `lost + 1` and phase Lost. Attempts that already ended are
    /// left alone, so calling this twice counts a loss once (the first UPDATE locks the attempt
    /// rows, and a concurrent caller's condition is checked again on them once it may proceed).
    pub async fn mark_lost(&self, attempts: &[AttemptId]) -> Result<(), StoreError> {
        let context = "recording lost attempts";
        let now = now();
        let ids: Vec<i64> = attempts.iter().map(|a| a.get()).collect();
        let mut tx = self.begin(context).await?;
        // One statement for both tables: each lost attempt's job once per attempt lost (a job has
        // one attempt running at a time, so at most one here).
        sqlx::query(
            "WITH lost AS ( \
                 UPDATE attempts SET phase = 'Lost', reason = 'Lost', finished_at = $2 \
                 WHERE id = ANY($1) AND phase = 'Running' RETURNING run_id, job_id) \
             UPDATE jobs SET phase = 'Lost', reason = 'Lost', lost = jobs.lost + 1, \
                 finished_at = $2 FROM lost \
             WHERE jobs.run_id = lost.run_id AND jobs.job_id = lost.job_id",
        )
        .bind(ids)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(())
    }

    /// A run's audit events, oldest first.
    pub async fn events(&self, run: RunId) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, run_id, job_id, kind, reason, actor, at, detail FROM events \
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run.get())
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading events"))?;
        rows.iter()
            .map(|row| rows::event_row(&Decoder { row, store: self }))
            .collect()
    }

    pub(super) fn run_row(&self, row: &PgRow) -> Result<RunRow, StoreError> {
        rows::run_row(&Decoder { row, store: self })
    }

    fn job_row(&self, row: &PgRow) -> Result<JobRow, StoreError> {
        rows::job_row(&Decoder { row, store: self })
    }

    fn attempt_row(&self, row: &PgRow) -> Result<AttemptRow, StoreError> {
        rows::attempt_row(&Decoder { row, store: self })
    }
}

/// The first column of a row, as `T` (for `RETURNING` one value).
pub(super) fn first<T>(row: &PgRow) -> Result<T, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(0)
}

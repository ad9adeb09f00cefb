//! The state database: runs, their jobs, every attempt, and the audit events, in SQLite. This is the
//! only module with SQL. It records what the engine tells it, in the order it is told, and decides
//! nothing: which transition is allowed, when to retry and what a lost job means belong to the
//! engine and the scheduler.
//!
//! Reads go through a small pool; writes through one dedicated connection per process (SQLite admits
//! one writer at a time anyway), except the engine's per-turn transaction ([`Store::commit`]), which
//! has a second connection of its own, used synchronously (see `store/direct.rs`): it is on every job's
//! critical path, and a hop to sqlx's worker thread and back cost more than SQLite's own work.
//! Writes that touch several rows run in one `BEGIN IMMEDIATE` transaction: the write lock is taken
//! up front, so concurrent processes wait on the busy timeout instead of failing with "database is
//! locked". SQL text is constant so the statement caches keep it prepared. Times are stored as
//! RFC 3339 UTC strings with milliseconds.

mod batch;
mod direct;
mod generations;
mod ids;
mod inventory;
mod migrations;
mod open;
pub mod outbox;
mod outputs;
mod overlap;
mod pipelines;
pub mod postgres;
pub mod retention;
mod rounds;

pub use batch::Batch;
pub use inventory::AppliedFile;
pub use overlap::EVENT_TICK_SKIPPED;
pub use pipelines::PipelineRow;
pub use rounds::{EVENT_JOB_REMOVED, EVENT_MARKED_SUCCESS, RoundChange};
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Mutex, MutexGuard};

use crate::spec::{JobId, PipelineName};
use crate::status::{JobPhase, JobReason, RunPhase, RunReason};

pub use crate::state_dir::DB_FILE;

pub use crate::status::{AttemptId, RunId};

/// How hard a commit tries to survive a power loss (config `durability`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    // (Not doc comments: the configuration's schema lists the names alone.)
    // `synchronous=NORMAL`: a killed process loses nothing committed; a power loss may roll back
    // the last commits.
    #[default]
    Normal,
    // `synchronous=FULL`: every commit is synced to disk.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state database {} has schema version {found}; this executioner supports up to {supported}",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("unsafe state at {}: {detail}", path.display())]
    Unsafe { path: PathBuf, detail: String },
    #[error("state database failed while {context}")]
    Sql {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("state database failed while {context}")]
    Direct {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    /// Another process opened a round of the run first (see [`RoundChange::owner_was`]).
    #[error("run {run} was taken over by another process")]
    TakenOver { run: RunId },
    /// A PostgreSQL state database that cannot be reached (`database` names it without password).
    #[error("cannot connect to the state database {database}: {detail}")]
    Connect { database: String, detail: String },
}

impl StoreError {
    /// The database cannot be used by this build and must not be touched (exit code 3).
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Corrupt { .. } | StoreError::NewerSchema { .. } => true,
            StoreError::Io { .. }
            | StoreError::Unsafe { .. }
            | StoreError::Sql { .. }
            | StoreError::Direct { .. }
            | StoreError::NotFound { .. }
            | StoreError::TakenOver { .. }
            | StoreError::Connect { .. } => false,
        }
    }
}

/// The process that drives a run (so recovery can tell a live owner from a dead one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// The process's start time as the OS reports it, to tell a reused pid apart.
    pub start_time: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    pub pipeline: &'a PipelineName,
    pub generation: i64,
    pub spec_json: &'a str,
    pub spec_hash: &'a str,
    /// In declaration order, which becomes each job's `position`.
    pub jobs: &'a [NewJob<'a>],
    pub owner: &'a Owner,
}

#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub id: &'a JobId,
    pub log_path: &'a str,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd {
    /// Succeeded, Failed, Cancelled or Lost.
    pub phase: JobPhase,
    pub reason: Option<JobReason>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub user_time: Duration,
    pub system_time: Duration,
    pub max_rss_kib: u64,
    /// `max_rss_kib` is only an upper bound of the child's own peak.
    pub max_rss_upper_bound: bool,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: RunId,
    pub pipeline: PipelineName,
    pub generation: i64,
    pub spec_json: String,
    pub spec_hash: String,
    pub phase: RunPhase,
    pub reason: Option<RunReason>,
    /// 1 for the first round, +1 per resume.
    pub rounds: i64,
    pub owner_pid: Option<i64>,
    pub owner_host: Option<String>,
    pub owner_start_time: Option<i64>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub run_id: RunId,
    pub job_id: JobId,
    pub position: i64,
    pub phase: JobPhase,
    pub reason: Option<JobReason>,
    /// Attempts counted against `retry.limit` in the current round.
    pub attempts: i64,
    /// Times the job was lost with its executioner.
    pub lost: i64,
    pub exit_code: Option<i64>,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub log_path: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub id: AttemptId,
    pub run_id: RunId,
    pub job_id: JobId,
    pub round: i64,
    /// 1-based across the run.
    pub number: i64,
    /// Running, Succeeded, Failed, Cancelled or Lost.
    pub phase: JobPhase,
    pub reason: Option<JobReason>,
    pub pid: Option<i64>,
    pub pgid: Option<i64>,
    pub process_start_time: Option<i64>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub user_time_us: Option<i64>,
    pub system_time_us: Option<i64>,
    pub max_rss_kib: Option<i64>,
    /// `max_rss_kib` is only an upper bound of the attempt's own peak.
    pub max_rss_upper_bound: bool,
    pub message: Option<String>,
}

/// One audit log entry, such as a mark-success with its reason and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub id: i64,
    pub run_id: RunId,
    pub job_id: Option<JobId>,
    pub kind: String,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub at: OffsetDateTime,
    /// JSON, e.g. `{"previousPhase":"Failed"}`.
    pub detail: Option<String>,
}

/// A handle on the state database; cheap to clone (the connections are shared).
#[derive(Debug, Clone)]
pub struct Store {
    /// Readers: in WAL mode they never wait for a writer.
    pool: SqlitePool,
    /// The one connection this process writes through. SQLite admits one writer at a time anyway,
    /// and a dedicated connection spares the engine's per-attempt writes the pool's acquire and
    /// release round trips.
    writer: Arc<Mutex<WriterSlot>>,
    /// A second writer connection, used synchronously for [`Store::commit`], the engine's
    /// per-attempt transaction (see `store/direct.rs`).
    direct: Arc<direct::DirectWriter>,
    path: Arc<Path>,
    /// Names this database among others on the machine (see [`Store::identity`]).
    identity: Arc<str>,
}

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
// For the submodules too (declared above, so out of the macro's textual scope).
pub(crate) use select_runs;

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

impl Store {
    /// Opens (creating if needed) `STATE_DIR/executioner.db`. An existing file is checked before
    /// anything writes to it: a foreign, damaged or newer database is reported and left untouched.
    pub async fn open(state_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        let opened = open::open(state_dir, durability).await?;
        let identity = identity(&opened.path).into();
        let direct = direct::DirectWriter::new(&opened.path, durability, open::BUSY_TIMEOUT);
        Ok(Store {
            direct: Arc::new(direct),
            pool: opened.pool,
            writer: Arc::new(Mutex::new(WriterSlot {
                conn: Some(opened.writer),
                options: opened.options,
                closed: false,
            })),
            path: opened.path.into(),
            identity,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 16 hex digits of the SHA-256 of the database's canonical path: tells this database's
    /// attempts apart from another state folder's (the engine's attempt tokens start with it).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Closes every connection (of every clone of this handle: their later calls fail); the last
    /// connection to the file checkpoints it and removes the WAL.
    pub async fn close(self) {
        let writer = {
            let mut slot = self.writer.lock().await;
            slot.closed = true;
            slot.conn.take()
        };
        self.direct.close().await;
        if let Some(conn) = writer {
            // Nothing is left to commit; a failure to close cleanly loses nothing.
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }

    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<RunId, StoreError> {
        let context = "creating a run";
        let now = timestamp(OffsetDateTime::now_utc());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        let run = sqlx::query(
            "INSERT INTO runs (pipeline, generation, spec_json, spec_hash, phase, rounds, \
             owner_pid, owner_host, owner_start_time, created_at, started_at) \
             VALUES (?, ?, ?, ?, 'Running', 1, ?, ?, ?, ?, ?)",
        )
        .bind(new.pipeline)
        .bind(new.generation)
        .bind(new.spec_json)
        .bind(new.spec_hash)
        .bind(i64::from(new.owner.pid))
        .bind(new.owner.host.as_str())
        .bind(new.owner.start_time.map(saturating_i64))
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?
        .last_insert_rowid();
        // Every job in one statement: a JSON array of [id, log path], its index the position.
        let jobs: Vec<(&str, &str)> = new
            .jobs
            .iter()
            .map(|j| (j.id.as_str(), j.log_path))
            .collect();
        let jobs = serde_json::to_string(&jobs).unwrap_or_else(|_| "[]".to_owned());
        let inserted = sqlx::query(
            "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
             SELECT ?, j.value ->> 0, j.key, 'Pending', j.value ->> 1 FROM json_each(?) AS j",
        )
        .bind(run)
        .bind(jobs)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        debug_assert_eq!(inserted.rows_affected(), new.jobs.len() as u64);
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(RunId::from(run))
    }

    /// Sets a job's phase, reason and message (see [`Batch::set_job`]), in a transaction of its own.
    pub async fn set_job(
        &self,
        run: RunId,
        job: &JobId,
        phase: JobPhase,
        reason: Option<JobReason>,
        message: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.set_job(job, phase, reason, message);
        self.commit(run, 0, &mut batch).await.map(drop)
    }

    /// Record-before-act: inserts the attempt (phase Running, no pid yet) and sets the job Running
    /// with `attempts = counted`, in one transaction committed before the caller spawns anything.
    pub async fn attempt_started(
        &self,
        run: RunId,
        job: &JobId,
        round: i64,
        number: i64,
        counted: i64,
    ) -> Result<AttemptId, StoreError> {
        let mut batch = Batch::default();
        batch.attempt_started(job, number, counted);
        let ids = self.commit(run, round, &mut batch).await?;
        ids.first().copied().ok_or_else(|| job_not_found(run, job))
    }

    /// Records the attempt's process (see [`Batch::attempt_spawned`]) in a transaction of its own.
    pub async fn attempt_spawned(
        &self,
        attempt: AttemptId,
        pid: i32,
        pgid: i32,
        start_time: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.attempt_spawned(attempt, pid, pgid, start_time);
        // No job or start rows: the run and round are not used.
        self.commit(RunId::from(0), 0, &mut batch).await.map(drop)
    }

    /// Records the attempt's end (see [`Batch::attempt_finished`]) in a transaction of its own.
    pub async fn attempt_finished(
        &self,
        attempt: AttemptId,
        end: &AttemptEnd,
        job: Option<(JobPhase, Option<JobReason>)>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.attempt_finished(attempt, end, job);
        // No job or start rows: the run and round are not used.
        self.commit(RunId::from(0), 0, &mut batch).await.map(drop)
    }

    pub async fn run(&self, run: RunId) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(select_runs!("WHERE id = ?"))
            .bind(run)
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
        let query = match pipeline {
            Some(pipeline) => {
                sqlx::query(select_runs!("WHERE pipeline = ? ORDER BY id DESC LIMIT ?"))
                    .bind(pipeline)
            }
            None => sqlx::query(select_runs!("ORDER BY id DESC LIMIT ?")),
        };
        let rows = query
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("listing runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// The newest run of a pipeline.
    pub async fn latest_run(&self, pipeline: &str) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(select_runs!("WHERE pipeline = ? ORDER BY id DESC LIMIT 1"))
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
             WHERE run_id = ? ORDER BY position",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading jobs"))?;
        rows.iter().map(|row| self.job_row(row)).collect()
    }

    /// Every attempt of a run, in the order they started.
    pub async fn attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(select_attempts!("WHERE run_id = ? ORDER BY id"))
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("reading attempts"))?;
        rows.iter().map(|row| self.attempt_row(row)).collect()
    }

    /// Attempts of this run still recorded Running (crash recovery).
    pub async fn open_attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        let rows = sqlx::query(select_attempts!(
            "WHERE run_id = ? AND phase = 'Running' ORDER BY id"
        ))
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading open attempts"))?;
        rows.iter().map(|row| self.attempt_row(row)).collect()
    }

    /// Crash recovery, one transaction: each attempt still Running becomes Lost (reason Lost,
    /// finished now), and its job gets `lost + 1` and phase Lost. Attempts that already ended are
    /// left alone, so calling this twice counts a loss once.
    pub async fn mark_lost(&self, attempts: &[AttemptId]) -> Result<(), StoreError> {
        let context = "recording lost attempts";
        let now = timestamp(OffsetDateTime::now_utc());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        for attempt in attempts {
            let job = sqlx::query(
                "UPDATE attempts SET phase = 'Lost', reason = 'Lost', finished_at = ? \
                 WHERE id = ? AND phase = 'Running' RETURNING run_id, job_id",
            )
            .bind(&now)
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.sql(context))?;
            let Some(job) = job else { continue };
            let run: RunId = job.try_get(0).map_err(self.sql(context))?;
            let job: String = job.try_get(1).map_err(self.sql(context))?;
            sqlx::query(
                "UPDATE jobs SET phase = 'Lost', reason = 'Lost', lost = lost + 1, \
                 finished_at = ? WHERE run_id = ? AND job_id = ?",
            )
            .bind(&now)
            .bind(run)
            .bind(job)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
        }
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(())
    }

    /// A run's audit events, oldest first.
    pub async fn events(&self, run: RunId) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, run_id, job_id, kind, reason, actor, at, detail FROM events \
             WHERE run_id = ? ORDER BY id",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading events"))?;
        rows.iter()
            .map(|row| {
                let row = Decoder { row, store: self };
                Ok(EventRow {
                    id: row.get("id")?,
                    run_id: row.get("run_id")?,
                    job_id: row.get("job_id")?,
                    kind: row.get("kind")?,
                    reason: row.get("reason")?,
                    actor: row.get("actor")?,
                    at: row.time("at")?,
                    detail: row.get("detail")?,
                })
            })
            .collect()
    }

    /// Takes the writer connection (reconnecting if the last write lost it).
    async fn writing(&self, context: &'static str) -> Result<Writing<'_>, StoreError> {
        let mut slot = self.writer.lock().await;
        if slot.closed {
            return Err(closed(context));
        }
        let conn = match slot.conn.take() {
            Some(conn) => conn,
            None => slot.options.connect().await.map_err(self.sql(context))?,
        };
        Ok(Writing {
            slot,
            conn,
            path: &self.path,
        })
    }

    /// Runs one statement on the writer (autocommit: a single statement is its own transaction, and
    /// SQLite waits for the write lock with the busy timeout). Returns the number of rows changed.
    async fn write_one(
        &self,
        query: Query<'_, Sqlite, SqliteArguments>,
        context: &'static str,
    ) -> Result<u64, StoreError> {
        let mut writing = self.writing(context).await?;
        let done = query
            .execute(&mut writing.conn)
            .await
            .map_err(self.sql(context))?;
        writing.release();
        Ok(done.rows_affected())
    }

    /// Runs a write transaction written as one script, `BEGIN IMMEDIATE; ...; COMMIT;`, in a
    /// single round trip to the connection's worker thread (the engine makes these calls for every
    /// attempt, and each round trip costs tens of microseconds). Returns the rows of its RETURNING
    /// clauses. A script that fails or is cancelled before its COMMIT loses the connection, which
    /// rolls the transaction back (see [`Writing`]). A cancelled call's outcome is unknown until
    /// the next write: the dropped connection's worker thread finishes the statement it is running
    /// (which may be the COMMIT), but it holds the write lock since its BEGIN IMMEDIATE, so every
    /// later write is ordered after it.
    async fn write_script(
        &self,
        query: Query<'_, Sqlite, SqliteArguments>,
        context: &'static str,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let mut writing = self.writing(context).await?;
        let rows = query
            .fetch_all(&mut writing.conn)
            .await
            .map_err(self.sql(context))?;
        writing.release();
        Ok(rows)
    }

    fn sql(&self, context: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        sql_error(&self.path, context)
    }

    fn run_row(&self, row: &SqliteRow) -> Result<RunRow, StoreError> {
        let row = Decoder { row, store: self };
        Ok(RunRow {
            id: row.get("id")?,
            pipeline: row.get("pipeline")?,
            generation: row.get("generation")?,
            spec_json: row.get("spec_json")?,
            spec_hash: row.get("spec_hash")?,
            phase: row.parse("phase")?,
            reason: row.parse_opt("reason")?,
            rounds: row.get("rounds")?,
            owner_pid: row.get("owner_pid")?,
            owner_host: row.get("owner_host")?,
            owner_start_time: row.get("owner_start_time")?,
            created_at: row.time("created_at")?,
            started_at: row.time_opt("started_at")?,
            finished_at: row.time_opt("finished_at")?,
        })
    }

    fn job_row(&self, row: &SqliteRow) -> Result<JobRow, StoreError> {
        let row = Decoder { row, store: self };
        Ok(JobRow {
            run_id: row.get("run_id")?,
            job_id: row.get("job_id")?,
            position: row.get("position")?,
            phase: row.parse("phase")?,
            reason: row.parse_opt("reason")?,
            attempts: row.get("attempts")?,
            lost: row.get("lost")?,
            exit_code: row.get("exit_code")?,
            started_at: row.time_opt("started_at")?,
            finished_at: row.time_opt("finished_at")?,
            log_path: row.get("log_path")?,
            message: row.get("message")?,
        })
    }

    fn attempt_row(&self, row: &SqliteRow) -> Result<AttemptRow, StoreError> {
        let row = Decoder { row, store: self };
        Ok(AttemptRow {
            id: row.get("id")?,
            run_id: row.get("run_id")?,
            job_id: row.get("job_id")?,
            round: row.get("round")?,
            number: row.get("number")?,
            phase: row.parse("phase")?,
            reason: row.parse_opt("reason")?,
            pid: row.get("pid")?,
            pgid: row.get("pgid")?,
            process_start_time: row.get("process_start_time")?,
            exit_code: row.get("exit_code")?,
            signal: row.get("signal")?,
            started_at: row.time("started_at")?,
            finished_at: row.time_opt("finished_at")?,
            user_time_us: row.get("user_time_us")?,
            system_time_us: row.get("system_time_us")?,
            max_rss_kib: row.get("max_rss_kib")?,
            max_rss_upper_bound: row.get("max_rss_upper_bound")?,
            message: row.get("message")?,
        })
    }
}

/// The writer connection, or none after a write lost it.
#[derive(Debug)]
struct WriterSlot {
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    /// Set by [`Store::close`]: no reconnecting after that.
    closed: bool,
}

/// A write in progress on the writer connection, taken out of its slot. [`Writing::release`] puts it
/// back once the write has committed. Dropped instead (an error, a cancelled call), it closes the
/// connection, which makes SQLite roll back whatever was left uncommitted, so no open transaction
/// can leak into the next write; that write reconnects.
struct Writing<'a> {
    slot: MutexGuard<'a, WriterSlot>,
    conn: SqliteConnection,
    path: &'a Path,
}

impl Writing<'_> {
    /// `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction that read first
    /// could not wait for the lock later and would fail with "database is locked".
    async fn begin(
        &mut self,
        context: &'static str,
    ) -> Result<Transaction<'_, Sqlite>, StoreError> {
        self.conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql_error(self.path, context))
    }

    fn release(self) {
        let Writing { mut slot, conn, .. } = self;
        slot.conn = Some(conn);
    }
}

/// Reads typed columns; a value that does not decode means the file is not what we wrote.
struct Decoder<'a> {
    row: &'a SqliteRow,
    store: &'a Store,
}

impl Decoder<'_> {
    fn corrupt(&self, column: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.store.path.to_path_buf(),
            detail: format!("column {column}: {detail}"),
        }
    }

    fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.row
            .try_get(column)
            .map_err(|err| self.corrupt(column, err))
    }

    fn parse<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let text: String = self.get(column)?;
        text.parse().map_err(|err| self.corrupt(column, err))
    }

    fn parse_opt<T>(&self, column: &str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.get::<Option<String>>(column)?
            .map(|text| text.parse().map_err(|err| self.corrupt(column, err)))
            .transpose()
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        let text: String = self.get(column)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(|err| self.corrupt(column, err))
    }

    fn time_opt(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.get::<Option<String>>(column)?
            .map(|text| {
                OffsetDateTime::parse(&text, &Rfc3339).map_err(|err| self.corrupt(column, err))
            })
            .transpose()
    }
}

/// `2026-11-27T02:00:00.123Z`: UTC, milliseconds, so the text sorts like the time.
fn timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn identity(path: &Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What every write after [`Store::close`] gets, whichever connection it would have used.
fn closed(context: &'static str) -> StoreError {
    StoreError::Sql {
        context,
        source: sqlx::Error::PoolClosed,
    }
}

fn job_not_found(run: RunId, job: &str) -> StoreError {
    StoreError::NotFound {
        what: format!("job {job:?} of run {run}"),
    }
}

fn attempt_not_found(attempt: AttemptId) -> StoreError {
    StoreError::NotFound {
        what: format!("attempt {attempt}"),
    }
}

/// The primary SQLite result code of a database error (the low byte of the extended code).
fn primary_code(err: &sqlx::Error) -> Option<i32> {
    let code = err.as_database_error()?.code()?;
    code.parse::<i32>().ok().map(|code| code & 0xff)
}

const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// Maps a sqlx error; SQLite reporting a damaged file becomes [`StoreError::Corrupt`].
fn sql_error<'a>(path: &'a Path, context: &'static str) -> impl Fn(sqlx::Error) -> StoreError + 'a {
    move |source| match primary_code(&source) {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        _ => StoreError::Sql { context, source },
    }
}

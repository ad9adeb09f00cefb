//! The SQLite backend of the store (the default): the state database is one file in the state
//! folder, `executioner.db`.
//!
//! Reads go through a small sqlx pool (in WAL mode they never wait for a writer). Every write goes
//! through one connection per process, the direct writer (`direct.rs`, rusqlite, used on the
//! caller's thread when SQLite's write lock is free): the engine's per-turn transaction
//! ([`Store::commit`]) is on every job's critical path, and a hop to sqlx's worker thread and back
//! cost more than SQLite's own work; the other writes share the connection, so no two connections
//! of one process contend for the lock. Each write is one `BEGIN IMMEDIATE` transaction: the write
//! lock is taken up front, so concurrent processes wait on the busy timeout instead of failing
//! with "database is locked". SQL text is constant so the statement caches keep it prepared. Times are stored as
//! RFC 3339 UTC strings with milliseconds.
//!
//! The SQL of each concern sits beside its types one level up (`store/rounds.rs`, `outbox.rs`, ...);
//! this module owns the connections, opening and migrating the file, and the row decoding.
//!
//! [`Store::commit`]: super::Store::commit

pub(super) mod direct;
mod ids;
pub(super) mod migrations;
pub(super) mod open;

use std::path::Path;
use std::sync::Arc;

use rusqlite::OptionalExtension;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use direct::Immediate;

/// The parameters of a write, owned: the write may run on the blocking pool.
pub(super) type Params = Vec<Box<dyn rusqlite::ToSql + Send + Sync>>;

/// `owned_params![a, b]`: [`Params`] from owned values.
macro_rules! owned_params {
    ($($param:expr),* $(,)?) => {
        vec![$(Box::new($param) as Box<dyn rusqlite::ToSql + Send + Sync>),*]
    };
}
pub(crate) use owned_params;

use super::rows;
use super::{
    AttemptId, AttemptRow, Durability, EventRow, JobRow, NewRun, RunId, RunRow, StoreError,
    saturating_i64, timestamp,
};

/// A handle on the state database; cheap to clone (the connections are shared).
#[derive(Debug, Clone)]
pub(super) struct SqliteStore {
    /// Readers: in WAL mode they never wait for a writer.
    pub(super) pool: SqlitePool,
    /// The one connection this process writes through (see `direct.rs`).
    pub(super) direct: Arc<direct::DirectWriter>,
    pub(super) path: Arc<Path>,
    /// Names this database among others on the machine (see [`SqliteStore::identity`]).
    pub(super) identity: Arc<str>,
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

impl SqliteStore {
    /// Opens (creating if needed) `STATE_DIR/executioner.db`. An existing file is checked before
    /// anything writes to it: a foreign, damaged or newer database is reported and left untouched.
    pub async fn open(state_dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        let opened = open::open(state_dir, durability).await?;
        let identity = identity(&opened.path).into();
        let direct = direct::DirectWriter::new(&opened.path, durability, open::BUSY_TIMEOUT);
        Ok(SqliteStore {
            direct: Arc::new(direct),
            pool: opened.pool,
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
        self.direct.close().await;
        self.pool.close().await;
    }

    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<RunId, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let run = owned_params![
            new.pipeline.as_str().to_owned(),
            new.generation,
            new.spec_json.to_owned(),
            new.spec_hash.to_owned(),
            i64::from(new.owner.pid),
            new.owner.host.clone(),
            new.owner.start_time.map(saturating_i64),
            now.clone(),
            now,
        ];
        // Every job in one statement: a JSON array of [id, log path], its index the position.
        let jobs: Vec<(&str, &str)> = new
            .jobs
            .iter()
            .map(|j| (j.id.as_str(), j.log_path))
            .collect();
        let jobs = serde_json::to_string(&jobs).unwrap_or_else(|_| "[]".to_owned());
        let count = new.jobs.len();
        // On the blocking pool: a 10,000-job run is 10,000 rows.
        self.write_blocking("creating a run", move |tx| {
            tx.prepare_cached(
                "INSERT INTO runs (pipeline, generation, spec_json, spec_hash, phase, rounds, \
                 owner_pid, owner_host, owner_start_time, created_at, started_at) \
                 VALUES (?, ?, ?, ?, 'Running', 1, ?, ?, ?, ?, ?)",
            )?
            .execute(rusqlite::params_from_iter(run.iter()))?;
            let run = tx.last_insert_rowid();
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO jobs (run_id, job_id, position, phase, log_path) \
                     SELECT ?, j.value ->> 0, j.key, 'Pending', j.value ->> 1 FROM json_each(?) AS j",
                )?
                .execute(rusqlite::params![run, jobs])?;
            debug_assert_eq!(inserted, count);
            Ok(Ok(RunId::from(run)))
        })
        .await
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

    /// One job of a run.
    pub async fn job(&self, run: RunId, job: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id, job_id, position, phase, reason, attempts, lost, exit_code, \
             started_at, finished_at, log_path, message FROM jobs \
             WHERE run_id = ? AND job_id = ?",
        )
        .bind(run)
        .bind(job)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a job"))?;
        row.map(|row| self.job_row(&row)).transpose()
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
        let now = timestamp(OffsetDateTime::now_utc());
        let attempts: Vec<i64> = attempts.iter().map(|a| a.get()).collect();
        self.write("recording lost attempts", move |tx| {
            for attempt in &attempts {
                let job: Option<(i64, String)> = tx
                    .prepare_cached(
                        "UPDATE attempts SET phase = 'Lost', reason = 'Lost', finished_at = ? \
                         WHERE id = ? AND phase = 'Running' RETURNING run_id, job_id",
                    )?
                    .query_row(rusqlite::params![now, attempt], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()?;
                let Some((run, job)) = job else { continue };
                tx.prepare_cached(
                    "UPDATE jobs SET phase = 'Lost', reason = 'Lost', lost = lost + 1, \
                     finished_at = ? WHERE run_id = ? AND job_id = ?",
                )?
                .execute(rusqlite::params![now, run, job])?;
            }
            Ok(Ok(()))
        })
        .await
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
            .map(|row| rows::event_row(&Decoder { row, store: self }))
            .collect()
    }

    /// Runs `write` in one `BEGIN IMMEDIATE` transaction on the direct writer, the one connection
    /// this process writes through (see `direct.rs`): committed when `write` returns `Ok(Ok(_))`,
    /// rolled back when it returns an error of either kind. `write` may run more than once (a
    /// first try that found the write lock busy wrote nothing), so it must only read what it
    /// captured.
    pub(super) async fn write<T, F>(&self, context: &'static str, write: F) -> Result<T, StoreError>
    where
        F: Fn(&Immediate<'_>) -> rusqlite::Result<Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.direct
            .run(context, move |conn| transaction(conn, &write))
            .await?
    }

    /// [`SqliteStore::write`] on the blocking pool (see `DirectWriter::run_blocking`).
    pub(super) async fn write_blocking<T, F>(
        &self,
        context: &'static str,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(&Immediate<'_>) -> rusqlite::Result<Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.direct
            .run_blocking(context, move |conn| transaction(conn, &write))
            .await?
    }

    /// Runs one statement in a transaction of its own; returns the number of rows it changed.
    pub(super) async fn execute(
        &self,
        context: &'static str,
        sql: &'static str,
        params: Params,
    ) -> Result<usize, StoreError> {
        self.write(context, move |tx| {
            let changed = tx
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(params.iter()))?;
            Ok(Ok(changed))
        })
        .await
    }

    /// Runs one statement with a `RETURNING` of one integer column in a transaction of its own;
    /// returns the value of its first row, if any.
    pub(super) async fn execute_returning(
        &self,
        context: &'static str,
        sql: &'static str,
        params: Params,
    ) -> Result<Option<i64>, StoreError> {
        self.write(context, move |tx| {
            let mut statement = tx.prepare_cached(sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(params.iter()))?;
            let value = match rows.next()? {
                Some(row) => Some(row.get(0)?),
                None => None,
            };
            Ok(Ok(value))
        })
        .await
    }

    pub(super) fn sql(&self, context: &'static str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        sql_error(&self.path, context)
    }

    pub(super) fn run_row(&self, row: &SqliteRow) -> Result<RunRow, StoreError> {
        rows::run_row(&Decoder { row, store: self })
    }

    pub(super) fn job_row(&self, row: &SqliteRow) -> Result<JobRow, StoreError> {
        rows::job_row(&Decoder { row, store: self })
    }

    pub(super) fn attempt_row(&self, row: &SqliteRow) -> Result<AttemptRow, StoreError> {
        rows::attempt_row(&Decoder { row, store: self })
    }
}

/// `write` in one `BEGIN IMMEDIATE` transaction: committed on `Ok(Ok(_))`, else rolled back.
fn transaction<T>(
    conn: &rusqlite::Connection,
    write: &impl Fn(&Immediate<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> rusqlite::Result<Result<T, StoreError>> {
    let tx = Immediate::begin(conn)?;
    match write(&tx)? {
        Ok(value) => {
            tx.commit()?;
            Ok(Ok(value))
        }
        // Dropping the transaction rolls it back.
        Err(error) => Ok(Err(error)),
    }
}

/// Reads typed columns; a value that does not decode means the file is not what we wrote.
pub(super) struct Decoder<'a> {
    pub(super) row: &'a SqliteRow,
    pub(super) store: &'a SqliteStore,
}

impl Decoder<'_> {
    pub(super) fn corrupt(&self, column: &str, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.store.path.to_path_buf(),
            detail: format!("column {column}: {detail}"),
        }
    }

    pub(super) fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
    {
        self.row
            .try_get(column)
            .map_err(|err| self.corrupt(column, err))
    }
}

impl rows::Columns for Decoder<'_> {
    fn corrupt_column(&self, column: &str, detail: &dyn std::fmt::Display) -> StoreError {
        self.corrupt(column, detail)
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.get(column)
    }

    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.get(column)
    }

    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.get(column)
    }

    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.get(column)
    }

    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        self.get(column)
    }

    /// SQLite keeps times as RFC 3339 text (see `store::timestamp`).
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

pub(super) fn identity(path: &Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let digest = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What every write after [`SqliteStore::close`] gets, whichever connection it would have used.
pub(super) fn closed(context: &'static str) -> StoreError {
    StoreError::Sql {
        context,
        source: sqlx::Error::PoolClosed,
    }
}

/// The primary SQLite result code of a database error (the low byte of the extended code).
pub(super) fn primary_code(err: &sqlx::Error) -> Option<i32> {
    let code = err.as_database_error()?.code()?;
    code.parse::<i32>().ok().map(|code| code & 0xff)
}

pub(super) const SQLITE_CORRUPT: i32 = 11;
pub(super) const SQLITE_NOTADB: i32 = 26;

/// Maps a sqlx error; SQLite reporting a damaged file becomes [`StoreError::Corrupt`].
pub(super) fn sql_error<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl Fn(sqlx::Error) -> StoreError + 'a {
    move |source| match primary_code(&source) {
        Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: source.to_string(),
        },
        _ => StoreError::Sql { context, source },
    }
}

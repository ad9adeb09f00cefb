//! The schema, as an ordered list of SQL scripts, and the runner that applies the missing ones.
//!
//! A script is never edited once it has landed: a change is a new script at the end. The version of a
//! database is the number of scripts applied to it, kept in `PRAGMA user_version` (in the file header,
//! so it is readable before anything else is trusted). Each script runs in its own `BEGIN IMMEDIATE`
//! transaction together with the version bump, so concurrent openers apply it exactly once.

use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, Row, SqliteConnection};

use super::{StoreError, sql_error};

/// Migration `i` (0-based) takes a database from version `i` to `i + 1`.
pub(in crate::store) const MIGRATIONS: &[&str] = &[
    // 1: runs, jobs, attempts, events.
    r#"
CREATE TABLE runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline         TEXT    NOT NULL,
    generation       INTEGER NOT NULL,
    spec_json        TEXT    NOT NULL,
    spec_hash        TEXT    NOT NULL,
    phase            TEXT    NOT NULL,
    reason           TEXT,
    rounds           INTEGER NOT NULL,
    owner_pid        INTEGER,
    owner_host       TEXT,
    owner_start_time INTEGER,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX runs_pipeline_id ON runs (pipeline, id);
CREATE INDEX runs_running ON runs (id) WHERE phase = 'Running';

CREATE TABLE jobs (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    job_id      TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    phase       TEXT    NOT NULL,
    reason      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lost        INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER,
    started_at  TEXT,
    finished_at TEXT,
    log_path    TEXT    NOT NULL,
    message     TEXT,
    PRIMARY KEY (run_id, job_id)
);

CREATE TABLE attempts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id             INTEGER NOT NULL,
    job_id             TEXT    NOT NULL,
    round              INTEGER NOT NULL,
    number             INTEGER NOT NULL,
    phase              TEXT    NOT NULL,
    reason             TEXT,
    pid                INTEGER,
    pgid               INTEGER,
    process_start_time INTEGER,
    exit_code          INTEGER,
    signal             INTEGER,
    started_at         TEXT    NOT NULL,
    finished_at        TEXT,
    user_time_us       INTEGER,
    system_time_us     INTEGER,
    max_rss_kib        INTEGER,
    message            TEXT,
    FOREIGN KEY (run_id, job_id) REFERENCES jobs (run_id, job_id)
);
CREATE INDEX attempts_run_job ON attempts (run_id, job_id);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    job_id TEXT,
    kind   TEXT    NOT NULL,
    reason TEXT,
    actor  TEXT,
    at     TEXT    NOT NULL,
    detail TEXT
);
CREATE INDEX events_run ON events (run_id, id);
"#,
    // 2: pipelines known to the controller (identity, generation, requests).
    r#"
CREATE TABLE pipelines (
    name            TEXT    PRIMARY KEY,
    generation      INTEGER NOT NULL,
    spec_hash       TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    rerun_requested INTEGER NOT NULL DEFAULT 0,
    last_tick       TEXT,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX runs_pipeline_generation ON runs (pipeline, generation, id);
"#,
    // 3: the notification outbox, and the run rounds whose notifications were queued. Rounds that
    // ended before this migration are marked queued, so an upgrade sends nothing about the past.
    r#"
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    round           INTEGER NOT NULL,
    channel         TEXT    NOT NULL CHECK (channel IN ('email', 'command')),
    scope           TEXT    NOT NULL,
    target          TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    sent_at         TEXT,
    failed_at       TEXT,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    UNIQUE (run_id, round, channel, scope, target)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;

CREATE TABLE outbox_rounds (
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    round     INTEGER NOT NULL,
    queued_at TEXT    NOT NULL,
    PRIMARY KEY (run_id, round)
);
INSERT INTO outbox_rounds (run_id, round, queued_at)
    SELECT id, rounds, coalesce(finished_at, created_at) FROM runs
    WHERE phase IN ('Succeeded', 'Failed', 'Cancelled');
"#,
    // 4: what the controller of this state folder knows of itself (its manifests folder), so that
    // commands run from elsewhere find the pipelines it watches. (IF NOT EXISTS: a database rewound
    // to an earlier version by dropping only that version's tables replays this script.)
    r#"
CREATE TABLE IF NOT EXISTS controller_settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    // 5: whether an attempt's peak memory is only an upper bound (a `posix_spawn` child's rusage
    // starts from the executioner's own size). Figures recorded before were all measured so.
    r#"
ALTER TABLE attempts ADD COLUMN max_rss_upper_bound INTEGER NOT NULL DEFAULT 0;
UPDATE attempts SET max_rss_upper_bound = 1 WHERE max_rss_kib IS NOT NULL;
"#,
    // The source revision (git commit, `-dirty` when the folder had changes) each generation of a
    // pipeline was first recorded at; a generation seen outside a git work tree has no row.
    r#"
CREATE TABLE IF NOT EXISTS generations (
    pipeline    TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    revision    TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    PRIMARY KEY (pipeline, generation)
);
"#,
    // The inventory of `apply`: which file of a manifests folder an apply of which source last
    // wrote, and a hash of what it wrote (`apply --prune` deletes only those, only unchanged).
    r#"
CREATE TABLE IF NOT EXISTS apply_inventory (
    manifests_dir TEXT NOT NULL,
    file          TEXT NOT NULL,
    source        TEXT NOT NULL,
    pipeline      TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    applied_at    TEXT NOT NULL,
    PRIMARY KEY (manifests_dir, file)
);
CREATE INDEX IF NOT EXISTS apply_inventory_source ON apply_inventory (source, manifests_dir);
"#,
    // Job outputs, per succeeded attempt (masked, as JSON), and the parameters of a pending
    // rerun request (the run's own parameters are in its pinned spec).
    r#"
CREATE TABLE IF NOT EXISTS attempt_outputs (
    attempt_id INTEGER PRIMARY KEY REFERENCES attempts (id) ON DELETE CASCADE,
    run_id     INTEGER NOT NULL,
    job_id     TEXT    NOT NULL,
    outputs    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS attempt_outputs_by_run ON attempt_outputs (run_id);
CREATE TABLE IF NOT EXISTS rerun_params (
    pipeline TEXT PRIMARY KEY,
    params   TEXT NOT NULL
);
"#,
];

/// The schema version this build writes and understands.
pub(in crate::store) const LATEST: i64 = MIGRATIONS.len() as i64;

/// The schema version of a database, refused when newer than this build.
pub(in crate::store) async fn checked_version(
    conn: &mut SqliteConnection,
    path: &Path,
    context: &'static str,
) -> Result<i64, StoreError> {
    let found: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql_error(path, context))?;
    if found > LATEST {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: LATEST,
        });
    }
    Ok(found)
}

/// Applies every missing migration, one transaction each. A database newer than this build is left
/// untouched and reported.
pub(in crate::store) async fn migrate(
    conn: &mut SqliteConnection,
    path: &Path,
) -> Result<(), StoreError> {
    let context = "migrating the schema";
    // The usual case, up to date, needs no write lock.
    let current: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sql_error(path, context))?;
    if current == LATEST {
        return Ok(());
    }
    loop {
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql_error(path, context))?;
        let found = checked_version(&mut tx, path, context).await?;
        let Ok(index) = usize::try_from(found) else {
            return Err(StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("negative schema version {found}"),
            });
        };
        let Some(script) = MIGRATIONS.get(index) else {
            tx.commit().await.map_err(sql_error(path, context))?;
            return Ok(());
        };
        sqlx::raw_sql(*script)
            .execute(&mut *tx)
            .await
            .map_err(sql_error(path, context))?;
        // PRAGMA takes no bound parameters; the value is an integer we computed.
        sqlx::query(AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            found + 1
        )))
        .execute(&mut *tx)
        .await
        .map_err(sql_error(path, context))?;
        tx.commit().await.map_err(sql_error(path, context))?;
    }
}

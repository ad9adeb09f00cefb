//! The state database: runs, their jobs, every attempt, and the audit events. This is the only
//! module with SQL. It records what the engine tells it, in the order it is told, and decides
//! nothing: which transition is allowed, when to retry and what a lost job means belong to the
//! engine and the scheduler.
//!
//! [`Store`] is the one handle the rest of the program uses; it passes each call to its backend:
//! SQLite (`sqlite/`, the default, one file in the state folder). The rows, errors and the other
//! types every backend shares are defined here and beside each concern (`rounds.rs`, `outbox.rs`,
//! ...). Times are UTC with milliseconds.

mod batch;
mod generations;
mod inventory;
mod leader;
pub mod outbox;
mod outputs;
mod overlap;
mod pipelines;
pub mod postgres;
pub mod queue;
pub mod retention;
mod rounds;
mod rows;
mod sqlite;
pub mod workers;

pub use batch::Batch;
pub use inventory::AppliedFile;
pub use leader::LeaderRow;
pub use overlap::EVENT_TICK_SKIPPED;
pub use pipelines::PipelineRow;
pub use queue::{Claim, Finished, QueueEnd, WorkState};
pub use rounds::{EVENT_JOB_REMOVED, EVENT_MARKED_SUCCESS, RoundChange};
#[cfg(test)]
mod test_bodies;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::spec::{JobId, PipelineName};
use crate::status::outputs::Outputs;
use crate::status::{JobPhase, JobReason, RunPhase, RunReason};
use outbox::{NewOutboxEntry, OutboxEntry, OutboxId};
use retention::{AutoVacuum, Policies, PruneMode, SweepReport};

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
    /// A call only a shared (PostgreSQL) database has, on the SQLite file `database`.
    #[error("{what} need a PostgreSQL database (set database.url); {database} is SQLite")]
    NeedsPostgres {
        what: &'static str,
        database: String,
    },
    /// Another live worker holds the name (see [`Store::register_worker`]).
    #[error(
        "worker name {name:?} is held by a live worker on {host} (pid {pid}): give this one another --name, or stop that one"
    )]
    WorkerNameTaken {
        name: String,
        host: String,
        pid: i64,
    },
    /// A fenced write of a leader whose lease another controller took over (`leader.rs`).
    #[error(
        "this controller is no longer the leader: its lease (epoch {epoch}) was taken over by another controller, so its writes are refused"
    )]
    Deposed { epoch: i64 },
    /// An operation the backend does not have (a defect of the caller).
    #[error("{what} is not available on this state database: {detail}")]
    Unsupported {
        what: &'static str,
        detail: &'static str,
    },
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
            | StoreError::Connect { .. }
            | StoreError::NeedsPostgres { .. }
            | StoreError::WorkerNameTaken { .. }
            | StoreError::Deposed { .. }
            | StoreError::Unsupported { .. } => false,
        }
    }

    /// A shared database that cannot be reached right now (restarting, a dropped connection, no
    /// connection within the pool's timeout): the caller pauses and tries again, and nothing it
    /// had committed is lost. SQLite's errors are never transient in this sense.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Sql { source, .. } => match source {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                // Class 08: connection exception; 57P01-57P03: the server is shutting down,
                // crashed or not yet accepting connections.
                sqlx::Error::Database(e) => e.code().is_some_and(|code| {
                    code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
                }),
                _ => false,
            },
            StoreError::Io { .. }
            | StoreError::Corrupt { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Unsafe { .. }
            | StoreError::Direct { .. }
            | StoreError::NotFound { .. }
            | StoreError::TakenOver { .. }
            | StoreError::NeedsPostgres { .. }
            | StoreError::WorkerNameTaken { .. }
            | StoreError::Deposed { .. }
            | StoreError::Unsupported { .. } => false,
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
    backend: Backend,
    /// The state folder: logs and locks live there whichever backend holds the rows.
    state_dir: Arc<Path>,
}

/// Where the rows live.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Passes one call to the backend: `dispatch!(self, db => db.method(args))`.
macro_rules! dispatch {
    ($store:ident, $db:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sqlite($db) => $call,
            Backend::Postgres($db) => $call,
        }
    };
}

impl Store {
    /// Opens (creating if needed) `STATE_DIR/executioner.db`. An existing file is checked before
    /// anything writes to it: a foreign, damaged or newer database is reported and left untouched.
    pub async fn open(state_dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        let db = sqlite::SqliteStore::open(state_dir, durability).await?;
        Ok(Store {
            backend: Backend::Sqlite(db),
            state_dir: state_dir.into(),
        })
    }

    /// Connects to the state database `url` names (config `database.url`): a `postgres://` (or
    /// `postgresql://`) URL, with its `sslmode`; migrates it first if it is behind. The state
    /// folder (created private if missing) still holds this host's logs and locks.
    pub async fn connect(state_dir: &Path, url: &str) -> Result<Store, StoreError> {
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("postgres" | "postgresql") => {
                sqlite::open::prepare_dir(state_dir)?;
                Ok(Store {
                    backend: Backend::Postgres(postgres::PgStore::connect(url).await?),
                    state_dir: state_dir.into(),
                })
            }
            _ => Err(StoreError::Connect {
                database: crate::config::redact_url(url).into_owned(),
                detail: "not a postgres:// URL (leave database.url unset for SQLite in the state folder)"
                    .to_owned(),
            }),
        }
    }

    /// The SQLite backend, for tests that look at the file itself.
    #[cfg(test)]
    fn sqlite(&self) -> &sqlite::SqliteStore {
        match &self.backend {
            Backend::Sqlite(db) => db,
            Backend::Postgres(_) => panic!("a SQLite test on a PostgreSQL store"),
        }
    }

    /// The state folder this handle was opened for.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The database file, or the PostgreSQL database (without password), for messages.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(db) => db.path().display().to_string(),
            Backend::Postgres(db) => db.target().to_owned(),
        }
    }

    /// Whether the rows are in a PostgreSQL database shared by several hosts.
    pub fn is_shared(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(_) => true,
        }
    }

    /// Deletes the rows of `runs` that are still prunable, in one transaction; returns those
    /// deleted (retention's deleting transaction, which checks its rules again).
    async fn delete_runs(&self, runs: &[RunId]) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        dispatch!(self, db => db.delete_runs(runs).await)
    }

    /// 16 hex digits of a SHA-256 naming this database: tells this database's attempts apart from
    /// another state folder's (the engine's attempt tokens start with it).
    pub fn identity(&self) -> &str {
        dispatch!(self, db => db.identity())
    }

    /// Closes every connection (of every clone of this handle: their later calls fail).
    pub async fn close(self) {
        match self.backend {
            Backend::Sqlite(db) => db.close().await,
            Backend::Postgres(db) => db.close().await,
        }
    }

    pub async fn create_run(&self, new: &NewRun<'_>) -> Result<RunId, StoreError> {
        dispatch!(self, db => db.create_run(new).await)
    }

    // The four convenience writes below are each a one-change [`Batch`] through [`Store::commit`],
    // for both backends. The engine builds its own batches (one group commit per turn); these
    // serve single writes off that path (a pre-check's Waiting, tests).

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
        dispatch!(self, db => db.run(run).await)
    }

    /// Runs, newest first, of one pipeline or all; a negative `limit` means no limit.
    pub async fn runs(
        &self,
        pipeline: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.runs(pipeline, limit).await)
    }

    /// The newest run of a pipeline.
    pub async fn latest_run(&self, pipeline: &str) -> Result<Option<RunRow>, StoreError> {
        dispatch!(self, db => db.latest_run(pipeline).await)
    }

    /// Runs whose phase is Running, oldest first (for crash recovery).
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.unfinished_runs().await)
    }

    /// A run's jobs in declaration order.
    pub async fn jobs(&self, run: RunId) -> Result<Vec<JobRow>, StoreError> {
        dispatch!(self, db => db.jobs(run).await)
    }

    /// One job of a run (`None` when the run has no such job).
    pub async fn job(&self, run: RunId, job: &str) -> Result<Option<JobRow>, StoreError> {
        dispatch!(self, db => db.job(run, job).await)
    }

    /// Every attempt of a run, in the order they started.
    pub async fn attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        dispatch!(self, db => db.attempts(run).await)
    }

    /// Attempts of this run still recorded Running (crash recovery).
    pub async fn open_attempts(&self, run: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        dispatch!(self, db => db.open_attempts(run).await)
    }

    /// Crash recovery, one transaction: each attempt still Running becomes Lost (reason Lost,
    /// finished now), and its job gets `lost + 1` and phase Lost. Attempts that already ended are
    /// left alone, so calling this twice counts a loss once.
    pub async fn mark_lost(&self, attempts: &[AttemptId]) -> Result<(), StoreError> {
        dispatch!(self, db => db.mark_lost(attempts).await)
    }

    /// A run's audit events, oldest first.
    pub async fn events(&self, run: RunId) -> Result<Vec<EventRow>, StoreError> {
        dispatch!(self, db => db.events(run).await)
    }

    /// Commits `batch` (changes to run `run`; new attempts belong to `round`) as one transaction
    /// and empties it. Returns the ids of the attempts it started, in the order they were added.
    ///
    /// The transaction runs on the direct writer (see `store/direct.rs`): inline when the write
    /// lock is free, which is the common case, else on the blocking pool. Its statements are few
    /// and constant, so they stay prepared.
    ///
    /// A change whose row does not exist is an error ([`StoreError::NotFound`]) reported after
    /// the commit; the rest of the batch is committed (as separate statements would have been).
    pub async fn commit(
        &self,
        run: RunId,
        round: i64,
        batch: &mut Batch,
    ) -> Result<Vec<AttemptId>, StoreError> {
        dispatch!(self, db => db.commit(run, round, batch).await)
    }

    /// Records that generation `generation` of `pipeline` came from `revision`, unless that
    /// generation already has one: a generation keeps the revision it was first seen at.
    pub async fn record_revision(
        &self,
        pipeline: &str,
        generation: i64,
        revision: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self, db => db.record_revision(pipeline, generation, revision).await)
    }

    /// The source revision generation `generation` of `pipeline` was recorded at, if any.
    pub async fn revision(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, db => db.revision(pipeline, generation).await)
    }

    /// Records that `entry.source` wrote `entry.file` (replacing whoever wrote it before).
    pub async fn record_applied(&self, entry: &AppliedFile) -> Result<(), StoreError> {
        dispatch!(self, db => db.record_applied(entry).await)
    }

    /// Every file of `manifests_dir` that an apply of `source` wrote last, by file name.
    pub async fn applied_by(
        &self,
        source: &str,
        manifests_dir: &str,
    ) -> Result<Vec<AppliedFile>, StoreError> {
        dispatch!(self, db => db.applied_by(source, manifests_dir).await)
    }

    /// The entry of `file` in `manifests_dir`, whichever source wrote it.
    pub async fn applied_file(
        &self,
        manifests_dir: &str,
        file: &str,
    ) -> Result<Option<AppliedFile>, StoreError> {
        dispatch!(self, db => db.applied_file(manifests_dir, file).await)
    }

    /// Drops the entry of `file` (pruned, or gone).
    pub async fn forget_applied(&self, manifests_dir: &str, file: &str) -> Result<(), StoreError> {
        dispatch!(self, db => db.forget_applied(manifests_dir, file).await)
    }

    /// Queues a run round's messages and marks the round queued, in one transaction. Messages
    /// already queued are left as they are. Returns how many were new.
    pub async fn enqueue_notifications(
        &self,
        run: RunId,
        round: i64,
        entries: &[NewOutboxEntry<'_>],
    ) -> Result<usize, StoreError> {
        dispatch!(self, db => db.enqueue_notifications(run, round, entries).await)
    }

    /// Runs whose latest round is terminal but whose notifications were never queued (the process
    /// died between the two commits), oldest first.
    pub async fn runs_not_queued(&self) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.runs_not_queued().await)
    }

    /// Pending messages due at `now`, oldest first, at most `limit`.
    pub async fn due_outbox(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        dispatch!(self, db => db.due_outbox(now, limit).await)
    }

    /// How many messages are still to be sent: queued, or waiting for a retry (not given up).
    pub async fn pending_outbox(&self) -> Result<i64, StoreError> {
        dispatch!(self, db => db.pending_outbox().await)
    }

    /// Every message of a run, in the order they were queued.
    pub async fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        dispatch!(self, db => db.outbox(run).await)
    }

    /// Takes a due message for sending: counts the attempt and moves `next_attempt_at` to
    /// `lease_until`, so no other sender takes it meanwhile. Returns the attempt number, or `None`
    /// when the message is no longer due (sent, given up, or taken by another sender).
    pub async fn claim_outbox(
        &self,
        id: OutboxId,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, db => db.claim_outbox(id, now, lease_until).await)
    }

    /// The message was delivered.
    pub async fn outbox_sent(&self, id: OutboxId) -> Result<(), StoreError> {
        dispatch!(self, db => db.outbox_sent(id).await)
    }

    /// The send failed: due again at `retry_at`, or given up when `None`.
    pub async fn outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        dispatch!(self, db => db.outbox_failed(id, error, retry_at).await)
    }

    /// Each job's current outputs in a run: those of its latest succeeded attempt (a job whose
    /// latest success wrote none has none, whatever an earlier round wrote).
    pub async fn job_outputs(&self, run: RunId) -> Result<HashMap<String, Outputs>, StoreError> {
        dispatch!(self, db => db.job_outputs(run).await)
    }

    /// Asks for a new run of pipeline `name` with these parameters (see
    /// [`Store::request_rerun`]); false when the pipeline is unknown.
    pub async fn request_rerun_with_params(
        &self,
        name: &str,
        params: &IndexMap<String, String>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, db => db.request_rerun_with_params(name, params).await)
    }

    /// Consumes the parameters of a rerun request (empty when it had none).
    pub async fn take_rerun_params(
        &self,
        name: &str,
    ) -> Result<IndexMap<String, String>, StoreError> {
        dispatch!(self, db => db.take_rerun_params(name).await)
    }

    /// The runs of `pipeline` recorded Running (their owners may be gone), newest first.
    pub async fn running_runs_of(&self, pipeline: &str) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.running_runs_of(pipeline).await)
    }

    /// The runs recorded Running whose recorded owner is not process `pid` on `host` (a
    /// controller's own runs are left out in the query: they are most of them), oldest first.
    pub async fn running_runs_not_owned_by(
        &self,
        pid: u32,
        host: &str,
    ) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.running_runs_not_owned_by(pid, host).await)
    }

    /// Records on `run` (the one going on) that the schedule's tick `tick` (its wall-clock time,
    /// as `schedule` gives it) was skipped, with why.
    pub async fn record_tick_skipped(
        &self,
        run: RunId,
        tick: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        dispatch!(self, db => db.record_tick_skipped(run, tick, reason).await)
    }

    /// Records that pipeline `name` has spec `spec_hash` (from `source`) and returns its
    /// generation: 1 for a new pipeline, +1 when the hash changed or the pipeline comes back after
    /// a deletion, unchanged otherwise.
    pub async fn observe_pipeline(
        &self,
        name: &str,
        spec_hash: &str,
        source: &str,
    ) -> Result<i64, StoreError> {
        dispatch!(self, db => db.observe_pipeline(name, spec_hash, source).await)
    }

    /// Every pipeline ever observed (deleted ones included), by name.
    pub async fn pipelines(&self) -> Result<Vec<PipelineRow>, StoreError> {
        dispatch!(self, db => db.pipelines().await)
    }

    pub async fn pipeline(&self, name: &str) -> Result<Option<PipelineRow>, StoreError> {
        dispatch!(self, db => db.pipeline(name).await)
    }

    pub async fn mark_pipeline_deleted(&self, name: &str) -> Result<(), StoreError> {
        dispatch!(self, db => db.mark_pipeline_deleted(name).await)
    }

    /// Asks for a new run of the current generation; false when the pipeline is unknown.
    pub async fn request_rerun(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, db => db.request_rerun(name).await)
    }

    /// Consumes a rerun request; true when there was one.
    pub async fn take_rerun(&self, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, db => db.take_rerun(name).await)
    }

    pub async fn set_last_tick(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        dispatch!(self, db => db.set_last_tick(name, at).await)
    }

    /// Records the manifests folder (an absolute path) the controller of this state folder watches.
    pub async fn set_manifests_dir(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        dispatch!(self, db => db.set_manifests_dir(dir).await)
    }

    /// The manifests folder a controller last recorded, if any.
    pub async fn manifests_dir(&self) -> Result<Option<std::path::PathBuf>, StoreError> {
        dispatch!(self, db => db.manifests_dir().await)
    }

    /// The newest run of one generation of a pipeline.
    pub async fn latest_run_of_generation(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<RunRow>, StoreError> {
        dispatch!(self, db => db.latest_run_of_generation(pipeline, generation).await)
    }

    /// The newest run of every pipeline, in one query.
    pub async fn latest_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        dispatch!(self, db => db.latest_runs().await)
    }

    /// Finished runs beyond their pipeline's policy at `now`, oldest first, with their pipeline.
    pub async fn prunable_runs(
        &self,
        policies: &Policies,
        now: OffsetDateTime,
    ) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        dispatch!(self, db => db.prunable_runs(policies, now).await)
    }

    /// Gives the pages retention freed back to the file system where the backend keeps them
    /// (SQLite's incremental vacuum); how many bytes that was.
    async fn reclaim_space(&self) -> Result<u64, StoreError> {
        dispatch!(self, db => db.reclaim_space().await)
    }

    /// Finds the log folders left without their run (a prune whose process died between the
    /// commit and the removal) and removes them, unless dry: under `STATE/logs/PIPELINE/`, each
    /// folder named by a run id below the pipeline's oldest run left. Anything else there (a
    /// newer number, another name, a symlink) is not ours to judge and stays.
    pub async fn sweep_log_folders(
        &self,
        state_dir: &Path,
        mode: PruneMode,
    ) -> Result<SweepReport, StoreError> {
        dispatch!(self, db => db.sweep_log_folders(state_dir, mode).await)
    }

    /// The database's `auto_vacuum` mode.
    pub async fn auto_vacuum(&self) -> Result<AutoVacuum, StoreError> {
        dispatch!(self, db => db.auto_vacuum().await)
    }

    /// Rewrites the whole database once so that it has `auto_vacuum = INCREMENTAL` (a database
    /// created before retention existed). Holds the write lock for as long as the rewrite takes:
    /// call it when nothing else is writing.
    pub async fn convert_to_incremental_vacuum(&self) -> Result<(), StoreError> {
        dispatch!(self, db => db.convert_to_incremental_vacuum().await)
    }

    /// Resume: a new round on the same run id (see [`RoundChange`]). The run becomes Running with
    /// `rounds + 1`, no finish time and the new owner. Returns the new round number. One
    /// transaction; an unknown run or job changes nothing.
    pub async fn begin_round(
        &self,
        run: RunId,
        change: &RoundChange<'_>,
        owner: &Owner,
    ) -> Result<i64, StoreError> {
        dispatch!(self, db => db.begin_round(run, change, owner).await)
    }

    /// Ends the run's round: the run takes the verdict of its jobs and its finish time. The jobs
    /// named in `continue_on_error` may fail. Returns the verdict.
    pub async fn close_run(
        &self,
        run: RunId,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        dispatch!(self, db => db.close_run(run, continue_on_error).await)
    }

    /// A user's cancellation of a run no process drives any more (its manifest was deleted or
    /// replaced while no controller ran): every job that had not ended is recorded Cancelled, then
    /// the run takes its verdict.
    pub async fn cancel_run(
        &self,
        run: RunId,
        continue_on_error: &[&str],
    ) -> Result<(RunPhase, RunReason), StoreError> {
        dispatch!(self, db => db.cancel_run(run, continue_on_error).await)
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
        dispatch!(self, db => db.mark_success(run, jobs, reason, actor, continue_on_error).await)
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

//! The workers' rows and their shipped output (DESIGN 9), as [`Store`] shows them: who registered
//! (`workers`, with its heartbeat and the state read from it), and the chunks of a job's output
//! a worker shipped (`log_chunks`, fenced by the attempt's token). Only the PostgreSQL backend
//! has them (`postgres/workers.rs` holds the SQL); on SQLite each call is
//! [`StoreError::NeedsPostgres`]. Claiming attempts and their leases are the queue's
//! (`queue.rs`), not this file's; what a worker does with a refused heartbeat is the worker's.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::{AttemptId, Backend, RunId, Store, StoreError, postgres::PgStore};

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Unique among the live workers of the database (`--name`).
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// What placement (`runOn`) matches against.
    pub labels: BTreeMap<String, String>,
    /// How many attempts it runs at once.
    pub slots: u32,
}

/// A registered worker, as `executioner workers` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub pid: i64,
    pub labels: BTreeMap<String, String>,
    pub slots: i64,
    /// Attempts it holds claimed now.
    pub running: i64,
    pub started_at: OffsetDateTime,
    pub heartbeat_at: OffsetDateTime,
    pub state: WorkerState,
    /// The database's `now()` when the row was read: `heartbeat_at` is compared against it, never
    /// against the reader's clock.
    pub read_at: OffsetDateTime,
}

/// Whether a worker is there, from its heartbeat against the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum WorkerState {
    /// Heartbeat younger than the ttl.
    Live,
    /// No heartbeat for the ttl: gone, cut off, or stuck (its name may be taken).
    Stale,
    /// Stopped cleanly (`worker_stopped`).
    Stopped,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Live => "Live",
            WorkerState::Stale => "Stale",
            WorkerState::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of a job's output, as its worker shipped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub attempt_id: AttemptId,
    /// From 0, per attempt.
    pub seq: i64,
    pub data: Vec<u8>,
}

impl Chunk {
    /// Where a reader that printed this chunk goes on from.
    pub fn cursor(&self) -> ChunkCursor {
        ChunkCursor {
            attempt_id: self.attempt_id,
            seq: self.seq,
        }
    }
}

/// The last chunk a reader has: [`Store::log_chunks`] returns those after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkCursor {
    pub attempt_id: AttemptId,
    pub seq: i64,
}

impl Store {
    /// The PostgreSQL backend, or the error saying `what` needs one.
    fn shared_backend(&self, what: &'static str) -> Result<&PgStore, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => Ok(db),
            Backend::Sqlite(db) => Err(StoreError::NeedsPostgres {
                what,
                database: db.path().display().to_string(),
            }),
        }
    }

    /// Registers `worker` (or registers it again: a restart of the same process, or a name whose
    /// last holder stopped or has not sent a heartbeat for `ttl`). Refused with
    /// [`StoreError::WorkerNameTaken`] while another live worker (another host or pid) holds the
    /// name. Times are the database's.
    pub async fn register_worker(
        &self,
        worker: &WorkerInfo,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.register_worker_replacing(worker, ttl, None).await
    }

    /// As [`Store::register_worker`], and the name is also taken from a holder on this same host
    /// whose pid is `replacing` (a worker of this name that died, as the caller checked: a
    /// restart after kill -9 takes its name back at once instead of waiting for it to go stale).
    pub async fn register_worker_replacing(
        &self,
        worker: &WorkerInfo,
        ttl: Duration,
        replacing: Option<u32>,
    ) -> Result<(), StoreError> {
        let db = self.shared_backend("workers")?;
        db.register_worker(worker, ttl, replacing).await
    }

    /// Renews the heartbeat of worker `name` run by `pid`; false when the row is no longer this
    /// process's (stopped, or the name was taken over after this one went stale).
    pub async fn worker_heartbeat(&self, name: &str, pid: u32) -> Result<bool, StoreError> {
        let db = self.shared_backend("workers")?;
        db.worker_heartbeat(name, pid).await
    }

    /// Records that worker `name` run by `pid` stopped (nothing when the row is not its own).
    pub async fn worker_stopped(&self, name: &str, pid: u32) -> Result<(), StoreError> {
        let db = self.shared_backend("workers")?;
        db.worker_stopped(name, pid).await
    }

    /// Every registered worker by name, with its state (`ttl` without a heartbeat: Stale) and the
    /// attempts it holds claimed.
    pub async fn workers(&self, ttl: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let db = self.shared_backend("workers")?;
        db.workers(ttl).await
    }

    /// The labels of each live worker (heartbeat younger than `ttl`, not stopped): whether any
    /// can take a placement (the controller's `NoWorker`).
    pub async fn live_worker_labels(
        &self,
        ttl: Duration,
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        let db = self.shared_backend("workers")?;
        db.live_worker_labels(ttl).await
    }

    /// Ships chunk `seq` of attempt `attempt`'s output. Fenced: stored only while the attempt's
    /// queue item is claimed with `token`; false means rejected (the claim is gone, the caller
    /// stops shipping). Shipping the same `seq` again (a retry after a lost answer) replaces it.
    pub async fn append_log_chunk(
        &self,
        attempt: AttemptId,
        token: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let db = self.shared_backend("shipped logs")?;
        db.append_log_chunk(attempt, token, seq, data).await
    }

    /// The shipped chunks of job `job` of run `run` after `after` (all with `None`), in order
    /// (attempt, seq); at most [`CHUNKS_PER_READ`]: read again from the last one's cursor until
    /// none come back.
    pub async fn log_chunks(
        &self,
        run: RunId,
        job: &str,
        after: Option<ChunkCursor>,
    ) -> Result<Vec<Chunk>, StoreError> {
        let db = self.shared_backend("shipped logs")?;
        db.log_chunks(run, job, after).await
    }
}

/// How many chunks one [`Store::log_chunks`] returns at most (at 64 KiB each, 16 MiB: a reader
/// never holds a whole long log at once).
pub const CHUNKS_PER_READ: i64 = 256;

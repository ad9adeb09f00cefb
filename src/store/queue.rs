//! The attempt queue of a shared (PostgreSQL) store, as the engine, the controller and the
//! workers see it (see `postgres/queue.rs` for the mechanism). The SQLite store has no workers:
//! its attempts run in the process that records them, so these calls refuse it.

use std::time::Duration;

use super::{AttemptId, Backend, RunId, Store, StoreError};

pub use super::postgres::queue::{CANCEL_CHANNEL, DONE_CHANNEL, WORK_CHANNEL};

/// A queued attempt a worker claimed.
#[derive(Debug, Clone)]
pub struct Claim {
    pub attempt: AttemptId,
    pub run: RunId,
    pub job: String,
    /// The fencing token every later write of this claim names.
    pub token: i64,
    pub number: i64,
    pub round: i64,
}

/// How a queued attempt ended, as the queue knows it.
#[derive(Debug, Clone)]
pub struct QueueEnd {
    pub attempt: AttemptId,
    /// The worker's result (the engine's text); `None` when its lease expired (`Lost`).
    pub result: Option<String>,
    /// The worker that claimed it, if any did.
    pub worker: Option<String>,
}

/// A claimed attempt's result as a worker records it, with its log's last chunk (seq, bytes).
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub attempt: AttemptId,
    pub token: i64,
    pub result: &'a str,
    pub last_chunk: Option<(i64, &'a [u8])>,
}

/// Where a queued attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkState {
    Queued,
    Claimed,
    Done,
    Lost,
}

impl Store {
    fn queue(&self) -> Result<&super::postgres::PgStore, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => Ok(db),
            Backend::Sqlite(db) => Err(StoreError::NeedsPostgres {
                what: "workers and their queue",
                database: db.path().display().to_string(),
            }),
        }
    }

    /// A connection listening on `channels` (see [`WORK_CHANNEL`] and the others).
    pub async fn listen(
        &self,
        channels: &[&str],
    ) -> Result<sqlx::postgres::PgListener, StoreError> {
        self.queue()?.listen(channels).await
    }

    pub async fn claim(
        &self,
        worker: &str,
        labels: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.queue()?.claim(worker, labels, limit, ttl).await
    }

    pub async fn renew(
        &self,
        worker: &str,
        tokens: &[i64],
        ttl: Duration,
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        self.queue()?.renew(worker, tokens, ttl).await
    }

    pub async fn claimed_spawned(
        &self,
        attempt: AttemptId,
        token: i64,
        pid: i32,
        pgid: i32,
        start_time: Option<u64>,
    ) -> Result<bool, StoreError> {
        let start_time = start_time.map(super::saturating_i64);
        self.queue()?
            .claimed_spawned(attempt, token, pid, pgid, start_time)
            .await
    }

    pub async fn claimed_finished(
        &self,
        attempt: AttemptId,
        token: i64,
        result: &str,
    ) -> Result<bool, StoreError> {
        self.queue()?.claimed_finished(attempt, token, result).await
    }

    pub async fn finish_and_claim(
        &self,
        worker: &str,
        labels: &str,
        finished: &[Finished<'_>],
        limit: usize,
        ttl: Duration,
    ) -> Result<(Vec<i64>, Vec<Claim>), StoreError> {
        self.queue()?
            .finish_and_claim(worker, labels, finished, limit, ttl)
            .await
    }

    pub async fn queue_ends(&self, attempts: &[i64]) -> Result<Vec<QueueEnd>, StoreError> {
        self.queue()?.queue_ends(attempts).await
    }

    pub async fn expire_leases(&self) -> Result<Vec<AttemptId>, StoreError> {
        self.queue()?.expire_leases().await
    }

    pub async fn cancel_queued(&self, attempts: &[i64], stopped: &str) -> Result<(), StoreError> {
        self.queue()?.cancel_queued(attempts, stopped).await
    }

    pub async fn work_states(&self, run: RunId) -> Result<Vec<(AttemptId, WorkState)>, StoreError> {
        self.queue()?.work_states(run).await
    }

    pub async fn mark_no_worker(
        &self,
        ttl: Duration,
    ) -> Result<Vec<(AttemptId, bool)>, StoreError> {
        self.queue()?.mark_no_worker(ttl).await
    }

    pub async fn claimed_groups(&self, worker: &str) -> Result<Vec<(i32, u64)>, StoreError> {
        self.queue()?.claimed_groups(worker).await
    }
}

//! The notification outbox: messages queued after a run round reached its terminal state, and
//! their delivery state. Queuing a round's messages and marking the round queued is one
//! transaction, and a message is unique per (run, round, channel, scope, target), so queuing twice
//! queues nothing new. A sender claims a message (a lease on `next_attempt_at`) before sending it,
//! so two processes never send the same message at once.
//!
//! What a message says, when it is due again after a failure and when to give up are the notify
//! module's decisions; this module records them.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::rows;
use super::{RunId, RunRow, StoreError, sqlite::Decoder, sqlite::SqliteStore, timestamp};

pub type OutboxId = i64;

/// How a message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxChannel {
    Email,
    Command,
}

impl OutboxChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxChannel::Email => "email",
            OutboxChannel::Command => "command",
        }
    }
}

impl fmt::Display for OutboxChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxChannel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "email" => Ok(OutboxChannel::Email),
            "command" => Ok(OutboxChannel::Command),
            other => Err(format!("unknown outbox channel {other:?}")),
        }
    }
}

/// One message to queue.
#[derive(Debug, Clone, Copy)]
pub struct NewOutboxEntry<'a> {
    pub channel: OutboxChannel,
    /// What the message is about: empty for the run, else a job id.
    pub scope: &'a str,
    /// The recipient address, or the command as JSON.
    pub target: &'a str,
    /// What the sender needs, as JSON.
    pub payload: &'a str,
}

/// Where a message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxState {
    /// Not sent yet: due at `next_attempt_at` (or leased by a sender until then).
    Pending {
        next_attempt_at: OffsetDateTime,
        last_error: Option<String>,
    },
    Sent {
        at: OffsetDateTime,
    },
    /// Given up: the message cannot be sent (a bad address) or failed too often.
    GaveUp {
        at: OffsetDateTime,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: OutboxId,
    pub run_id: RunId,
    pub round: i64,
    pub channel: OutboxChannel,
    pub scope: String,
    pub target: String,
    pub payload: String,
    /// Sends tried so far.
    pub attempts: i64,
    pub state: OutboxState,
    pub created_at: OffsetDateTime,
}

macro_rules! select_outbox {
    ($tail:literal) => {
        concat!(
            "SELECT id, run_id, round, channel, scope, target, payload, attempts, next_attempt_at, ",
            "sent_at, failed_at, last_error, created_at FROM outbox ",
            $tail
        )
    };
}

impl SqliteStore {
    /// Queues a run round's messages and marks the round queued, in one transaction. Messages
    /// already queued are left as they are. Returns how many were new.
    pub async fn enqueue_notifications(
        &self,
        run: RunId,
        round: i64,
        entries: &[NewOutboxEntry<'_>],
    ) -> Result<usize, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let entries: Vec<(&'static str, String, String, String)> = entries
            .iter()
            .map(|e| {
                let (scope, target, payload) = (
                    e.scope.to_owned(),
                    e.target.to_owned(),
                    e.payload.to_owned(),
                );
                (e.channel.as_str(), scope, target, payload)
            })
            .collect();
        self.write("queuing notifications", move |tx| {
            let mut queued = 0;
            for (channel, scope, target, payload) in &entries {
                queued += tx
                    .prepare_cached(
                        "INSERT INTO outbox (run_id, round, channel, scope, target, payload, \
                         next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                         ON CONFLICT (run_id, round, channel, scope, target) DO NOTHING",
                    )?
                    .execute(rusqlite::params![
                        run, round, channel, scope, target, payload, now
                    ])?;
            }
            tx.prepare_cached(
                "INSERT INTO outbox_rounds (run_id, round, queued_at) VALUES (?, ?, ?) \
                 ON CONFLICT (run_id, round) DO NOTHING",
            )?
            .execute(rusqlite::params![run, round, now])?;
            Ok(Ok(queued))
        })
        .await
    }

    /// Runs whose latest round is terminal but whose notifications were never queued (the process
    /// died between the two commits), oldest first.
    pub async fn runs_not_queued(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(super::sqlite::select_runs!(
            "WHERE phase IN ('Succeeded', 'Failed', 'Cancelled') AND NOT EXISTS \
             (SELECT 1 FROM outbox_rounds q WHERE q.run_id = runs.id AND q.round = runs.rounds) \
             ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing runs without notifications"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// Pending messages due at `now`, oldest first, at most `limit`.
    pub async fn due_outbox(
        &self,
        now: OffsetDateTime,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(select_outbox!(
            "WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ? \
             ORDER BY next_attempt_at, id LIMIT ?"
        ))
        .bind(timestamp(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading due notifications"))?;
        rows.iter().map(|row| self.outbox_row(row)).collect()
    }

    /// How many messages are still to be sent: queued, or waiting for a retry (not given up).
    pub async fn pending_outbox(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.sql("counting pending notifications"))
    }

    /// Every message of a run, in the order they were queued.
    pub async fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(select_outbox!("WHERE run_id = ? ORDER BY id"))
            .bind(run)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("reading notifications"))?;
        rows.iter().map(|row| self.outbox_row(row)).collect()
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
        self.execute_returning(
            "claiming a notification",
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?1 \
             WHERE id = ?2 AND sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?3 \
             RETURNING attempts",
            super::sqlite::owned_params![timestamp(lease_until), id, timestamp(now)],
        )
        .await
    }

    /// The message was delivered.
    pub async fn outbox_sent(&self, id: OutboxId) -> Result<(), StoreError> {
        self.execute(
            "recording a sent notification",
            "UPDATE outbox SET sent_at = ?1, last_error = NULL WHERE id = ?2",
            super::sqlite::owned_params![timestamp(OffsetDateTime::now_utc()), id],
        )
        .await
        .map(drop)
    }

    /// The send failed: due again at `retry_at`, or given up when `None`.
    pub async fn outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        self.execute(
            "recording a failed notification",
            "UPDATE outbox SET last_error = ?1, next_attempt_at = coalesce(?2, next_attempt_at), \
             failed_at = CASE WHEN ?2 IS NULL THEN ?3 ELSE NULL END WHERE id = ?4",
            super::sqlite::owned_params![
                error.to_owned(),
                retry_at.map(timestamp),
                timestamp(now),
                id
            ],
        )
        .await
        .map(drop)
    }

    fn outbox_row(&self, row: &sqlx::sqlite::SqliteRow) -> Result<OutboxEntry, StoreError> {
        rows::outbox_row(&Decoder { row, store: self })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::store::Store;
    use sqlx::{ConnectOptions, Connection};

    use super::*;
    use crate::status::{JobPhase, RunPhase};
    use crate::store::{Durability, NewJob, NewRun, Owner};

    async fn finished_run(store: &Store, phase: RunPhase) -> RunId {
        let owner = Owner {
            pid: std::process::id(),
            host: "test-host".into(),
            start_time: None,
        };
        let pipeline = crate::spec::PipelineName::parse("p").unwrap();
        let job_id = crate::spec::JobId::parse("a").unwrap();
        let run = store
            .create_run(&NewRun {
                pipeline: &pipeline,
                generation: 1,
                spec_json: "{}",
                spec_hash: "h",
                jobs: &[NewJob {
                    id: &job_id,
                    log_path: "a.log",
                }],
                owner: &owner,
            })
            .await
            .unwrap();
        let job = match phase {
            RunPhase::Succeeded => JobPhase::Succeeded,
            RunPhase::Cancelled => JobPhase::Cancelled,
            RunPhase::Failed | RunPhase::Pending | RunPhase::Running => JobPhase::Failed,
        };
        store.set_job(run, &job_id, job, None, None).await.unwrap();
        assert_eq!(store.close_run(run, &[]).await.unwrap().0, phase);
        run
    }

    /// Upgrading a database of version 2 marks the runs that had already ended as queued, so
    /// nothing is sent about the past.
    #[tokio::test]
    async fn the_migration_marks_past_runs_queued() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        let ended = finished_run(&store, RunPhase::Failed).await;
        let path = store.sqlite().path().to_path_buf();
        store.close().await;
        // Back to version 2, as a database written before the outbox existed.
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(
            "DROP TABLE outbox; DROP TABLE outbox_rounds; \
             ALTER TABLE attempts DROP COLUMN max_rss_upper_bound; PRAGMA user_version = 2;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        assert!(store.runs_not_queued().await.unwrap().is_empty());
        let later = finished_run(&store, RunPhase::Succeeded).await;
        let missing: Vec<RunId> = store
            .runs_not_queued()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(missing, [later]);
        assert_ne!(ended, later);
    }
}

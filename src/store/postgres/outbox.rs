//! The notification outbox on PostgreSQL: a round's messages queued with the round marked queued in
//! one transaction (unique per run, round, channel, scope and target), and the senders' claims. A
//! claim is one `UPDATE ... WHERE due RETURNING`: PostgreSQL locks the row and checks the condition
//! again once a concurrent claimer has committed, so two senders on two hosts never both take it.

use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::runs::select_runs;
use super::{Decoder, PgStore, ms, now};
use crate::store::outbox::{NewOutboxEntry, OutboxEntry, OutboxId};
use crate::store::rows;
use crate::store::{RunId, RunRow, StoreError};

macro_rules! select_outbox {
    ($tail:literal) => {
        concat!(
            "SELECT id, run_id, round, channel, scope, target, payload, attempts, next_attempt_at, ",
            "sent_at, failed_at, last_error, created_at FROM outbox ",
            $tail
        )
    };
}

impl PgStore {
    /// Queues a run round's messages and marks the round queued, in one transaction. Messages
    /// already queued are left as they are. Returns how many were new.
    pub async fn enqueue_notifications(
        &self,
        run: RunId,
        round: i64,
        entries: &[NewOutboxEntry<'_>],
    ) -> Result<usize, StoreError> {
        let context = "queuing notifications";
        let now = now();
        let mut tx = self.begin(context).await?;
        let mut queued = 0;
        if !entries.is_empty() {
            // In the given order, so ids follow it; a repeated message inside `entries` is
            // queued once (DO NOTHING also covers rows of the same statement).
            let done = sqlx::query(
                "INSERT INTO outbox (run_id, round, channel, scope, target, payload, \
                 next_attempt_at, created_at) \
                 SELECT $1, $2, e.channel, e.scope, e.target, e.payload, $3, $3 \
                 FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
                     AS e (channel, scope, target, payload, ord) ORDER BY e.ord \
                 ON CONFLICT (run_id, round, channel, scope, target) DO NOTHING",
            )
            .bind(run.get())
            .bind(round)
            .bind(now)
            .bind(
                entries
                    .iter()
                    .map(|e| e.channel.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(entries.iter().map(|e| e.scope).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.target).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.payload).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
            queued = usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
        }
        sqlx::query(
            "INSERT INTO outbox_rounds (run_id, round, queued_at) VALUES ($1, $2, $3) \
             ON CONFLICT (run_id, round) DO NOTHING",
        )
        .bind(run.get())
        .bind(round)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(queued)
    }

    /// Runs whose latest round is terminal but whose notifications were never queued, oldest first.
    pub async fn runs_not_queued(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(select_runs!(
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
        let limit = (limit >= 0).then_some(limit);
        let rows = sqlx::query(select_outbox!(
            "WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, id LIMIT $2"
        ))
        .bind(ms(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading due notifications"))?;
        rows.iter().map(|row| self.outbox_row(row)).collect()
    }

    /// How many messages are still to be sent: queued, or waiting for a retry (not given up).
    pub async fn pending_outbox(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(self.sql("counting pending notifications"))
    }

    /// Every message of a run, in the order they were queued.
    pub async fn outbox(&self, run: RunId) -> Result<Vec<OutboxEntry>, StoreError> {
        let rows = sqlx::query(select_outbox!("WHERE run_id = $1 ORDER BY id"))
            .bind(run.get())
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("reading notifications"))?;
        rows.iter().map(|row| self.outbox_row(row)).collect()
    }

    /// Takes a due message for sending: counts the attempt and moves `next_attempt_at` to
    /// `lease_until`. Returns the attempt number, or `None` when the message is no longer due.
    pub async fn claim_outbox(
        &self,
        id: OutboxId,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $1 \
             WHERE id = $2 AND sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $3 \
             RETURNING attempts",
        )
        .bind(ms(lease_until))
        .bind(id)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("claiming a notification"))
    }

    /// The message was delivered.
    pub async fn outbox_sent(&self, id: OutboxId) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET sent_at = $1, last_error = NULL WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(self.sql("recording a sent notification"))?;
        Ok(())
    }

    /// The send failed: due again at `retry_at`, or given up when `None`.
    pub async fn outbox_failed(
        &self,
        id: OutboxId,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET last_error = $1, \
             next_attempt_at = coalesce($2, next_attempt_at), \
             failed_at = CASE WHEN $2::timestamptz IS NULL THEN $3 ELSE NULL END WHERE id = $4",
        )
        .bind(error)
        .bind(retry_at.map(ms))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(self.sql("recording a failed notification"))?;
        Ok(())
    }

    fn outbox_row(&self, row: &PgRow) -> Result<OutboxEntry, StoreError> {
        rows::outbox_row(&Decoder { row, store: self })
    }
}

//! The attempt queue on PostgreSQL (`work_items`, DESIGN 9): the leader queues an attempt in the
//! commit that records it; a worker claims it (`FOR UPDATE SKIP LOCKED`, a new fencing token),
//! renews its lease, records its process and its result, each write naming the token, so a worker
//! whose lease was taken from it changes nothing. The leader reads the results, expires the leases
//! that were not renewed (the database's clock decides), and settles each attempt, which removes
//! its item. Notifications (`LISTEN/NOTIFY`) wake whoever waits; they carry no state, so a lost
//! one costs a poll. What a result means is the engine's; this file stores its text.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgListener;

use super::PgStore;
use crate::store::{AttemptId, Claim, Finished, QueueEnd, RunId, StoreError, WorkState};

/// Woken when attempts are queued (payload empty): idle workers claim.
pub const WORK_CHANNEL: &str = "executioner_work";
/// Woken when an attempt's result is in, or its lease expired (payload: the attempt id).
pub const DONE_CHANNEL: &str = "executioner_done";
/// Woken when attempts are to be stopped (payload: the attempt id).
pub const CANCEL_CHANNEL: &str = "executioner_cancel";

const ENQUEUE_SQL: &str = "WITH q AS (INSERT INTO work_items (attempt_id, run_id, job_id, labels, \
        state) SELECT i.id, $1, i.job, i.labels::jsonb, 'queued' \
        FROM unnest($2::bigint[], $3::text[], $4::text[]) AS i (id, job, labels) RETURNING 1) \
    SELECT pg_notify('executioner_work', '') WHERE EXISTS (SELECT 1 FROM q)";

const CLAIM_SQL: &str = "WITH c AS (SELECT attempt_id FROM work_items \
        WHERE state = 'queued' AND NOT cancel AND labels <@ $2::jsonb \
        ORDER BY attempt_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
    UPDATE work_items AS w SET state = 'claimed', worker = $1, \
        token = nextval('fencing_tokens'), claimed_at = now(), \
        lease_expires_at = now() + $4 * interval '1 millisecond' \
    FROM c JOIN attempts AS a ON a.id = c.attempt_id \
    WHERE w.attempt_id = c.attempt_id \
    RETURNING w.attempt_id, w.run_id, w.job_id, w.token, a.number, a.round";

const RENEW_SQL: &str = "UPDATE work_items SET lease_expires_at = now() + $3 * interval '1 millisecond' \
    WHERE worker = $1 AND token = ANY($2) AND state = 'claimed' RETURNING token, cancel";

const SPAWNED_SQL: &str = "UPDATE attempts AS a SET pid = $3, pgid = $4, process_start_time = $5 \
    FROM work_items AS w WHERE a.id = $1 AND w.attempt_id = a.id AND w.token = $2 \
        AND w.state = 'claimed'";

const FINISH_SQL: &str = "WITH u AS (UPDATE work_items SET state = 'done', result = $3 \
        WHERE attempt_id = $1 AND token = $2 AND state = 'claimed' RETURNING attempt_id) \
    SELECT pg_notify('executioner_done', attempt_id::text) FROM u";

/// The last log chunks of attempts whose results follow in the same transaction, fenced as
/// `log_chunks`' own inserts are (the claim must hold under its token).
const LAST_CHUNKS_SQL: &str = "INSERT INTO log_chunks (attempt_id, seq, data) \
    SELECT c.id, c.seq, c.data FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[]) \
        AS c (id, token, seq, data) \
    JOIN work_items AS w ON w.attempt_id = c.id AND w.token = c.token AND w.state = 'claimed' \
    ON CONFLICT (attempt_id, seq) DO UPDATE SET data = excluded.data";

/// Several claimed attempts' results at once (a worker's slots that ended together).
const FINISH_MANY_SQL: &str = "WITH u AS (UPDATE work_items AS w SET state = 'done', \
        result = f.result FROM unnest($1::bigint[], $2::bigint[], $3::text[]) \
            AS f (id, token, result) \
        WHERE w.attempt_id = f.id AND w.token = f.token AND w.state = 'claimed' \
        RETURNING w.attempt_id) \
    SELECT attempt_id, pg_notify('executioner_done', attempt_id::text) FROM u";

const RESULTS_SQL: &str = "SELECT attempt_id, state, result, worker FROM work_items \
    WHERE attempt_id = ANY($1) AND state IN ('done', 'lost')";

const EXPIRE_SQL: &str = "WITH l AS (UPDATE work_items SET state = 'lost' \
        WHERE state = 'claimed' AND lease_expires_at < now() RETURNING attempt_id) \
    SELECT attempt_id, pg_notify('executioner_done', attempt_id::text) FROM l";

/// Queued items are done at once (nobody ran them); claimed ones are flagged for their worker.
const CANCEL_SQL: &str = "WITH c AS (UPDATE work_items SET cancel = TRUE, \
        state = CASE WHEN state = 'queued' THEN 'done' ELSE state END, \
        result = CASE WHEN state = 'queued' THEN $2 ELSE result END \
        WHERE attempt_id = ANY($1) AND state IN ('queued', 'claimed') \
        RETURNING attempt_id, state) \
    SELECT pg_notify(CASE WHEN state = 'done' THEN 'executioner_done' \
        ELSE 'executioner_cancel' END, attempt_id::text) FROM c";

const STATES_SQL: &str = "SELECT attempt_id, state FROM work_items WHERE run_id = $1";

/// Queued items no live worker's labels contain, and the jobs of those that some worker took
/// since they were shown waiting for one.
const NO_WORKER_SQL: &str = "WITH waiting AS (SELECT w.attempt_id, w.run_id, w.job_id \
        FROM work_items AS w \
        WHERE w.state = 'queued' AND NOT EXISTS (SELECT 1 FROM workers AS k \
            WHERE k.stopped_at IS NULL \
            AND k.heartbeat_at > now() - $1 * interval '1 millisecond' \
            AND k.labels @> w.labels)), \
    pending AS (UPDATE jobs AS j SET phase = 'Pending', reason = 'NoWorker' FROM waiting \
        WHERE j.run_id = waiting.run_id AND j.job_id = waiting.job_id AND j.phase = 'Running' \
        RETURNING waiting.attempt_id), \
    taken AS (UPDATE jobs AS j SET phase = 'Running', reason = NULL FROM work_items AS w \
        WHERE j.phase = 'Pending' AND j.reason = 'NoWorker' AND w.run_id = j.run_id \
            AND w.job_id = j.job_id AND w.state <> 'queued' RETURNING w.attempt_id) \
    SELECT attempt_id, TRUE FROM pending UNION ALL SELECT attempt_id, FALSE FROM taken";

const GROUPS_SQL: &str = "SELECT a.pgid, a.process_start_time FROM work_items AS w \
    JOIN attempts AS a ON a.id = w.attempt_id \
    WHERE w.worker = $1 AND w.state = 'claimed' AND a.pgid IS NOT NULL \
        AND a.process_start_time IS NOT NULL";

fn claim_of(row: &sqlx::postgres::PgRow) -> Result<Claim, sqlx::Error> {
    Ok(Claim {
        attempt: AttemptId::from(row.try_get::<i64, _>(0)?),
        run: RunId::from(row.try_get::<i64, _>(1)?),
        job: row.try_get(2)?,
        token: row.try_get(3)?,
        number: row.try_get(4)?,
        round: row.try_get(5)?,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Queues the attempts `ids` of run `run` (jobs and placements alike ordered) inside the commit
/// that records them, and wakes the workers when it commits.
pub(super) async fn enqueue(
    tx: &mut sqlx::PgConnection,
    run: RunId,
    ids: &[i64],
    jobs: &[&str],
    placements: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query(ENQUEUE_SQL)
        .bind(run.get())
        .bind(ids)
        .bind(jobs)
        .bind(placements)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(())
}

impl PgStore {
    /// A connection that listens on `channels` (its own, outside the pool; sqlx reconnects it
    /// and resubscribes after a dropped connection).
    pub async fn listen(&self, channels: &[&str]) -> Result<PgListener, StoreError> {
        let context = "listening for notifications";
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(self.sql(context))?;
        listener
            .listen_all(channels.iter().copied())
            .await
            .map_err(self.sql(context))?;
        Ok(listener)
    }

    /// Claims at most `limit` queued attempts whose placement `labels` (a JSON object) contain,
    /// oldest first, each with a new fencing token and a lease of `ttl`.
    pub async fn claim(
        &self,
        worker: &str,
        labels: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let sql = self.sql("claiming queued attempts");
        let rows = sqlx::query(CLAIM_SQL)
            .bind(worker)
            .bind(labels)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(millis(ttl))
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        rows.iter()
            .map(claim_of)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&sql)
    }

    /// Renews the leases of `tokens` held by `worker`; returns those still held, each with
    /// whether its attempt is to be stopped. A token missing from the answer was taken from it.
    pub async fn renew(
        &self,
        worker: &str,
        tokens: &[i64],
        ttl: Duration,
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        let sql = self.sql("renewing the leases of running attempts");
        let rows = sqlx::query(RENEW_SQL)
            .bind(worker)
            .bind(tokens)
            .bind(millis(ttl))
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&sql)
    }

    /// Records the process of a claimed attempt; false when `token` no longer holds it.
    pub async fn claimed_spawned(
        &self,
        attempt: AttemptId,
        token: i64,
        pid: i32,
        pgid: i32,
        start_time: Option<i64>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(SPAWNED_SQL)
            .bind(attempt.get())
            .bind(token)
            .bind(i64::from(pid))
            .bind(i64::from(pgid))
            .bind(start_time)
            .execute(&self.pool)
            .await
            .map_err(self.sql("recording a claimed attempt's process"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a claimed attempt's result (the engine's text) and wakes the leader; false when
    /// `token` no longer holds it (the result is discarded: the lease was taken over).
    pub async fn claimed_finished(
        &self,
        attempt: AttemptId,
        token: i64,
        result: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(FINISH_SQL)
            .bind(attempt.get())
            .bind(token)
            .bind(result)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql("recording a claimed attempt's result"))?;
        Ok(row.is_some())
    }

    /// Records the results of `finished` claimed attempts (attempt, token, result) and claims at
    /// most `limit` more, in one transaction: one commit where a worker whose job ended takes the
    /// next would otherwise make two. Returns the attempts whose results were taken (a result
    /// whose token no longer holds is discarded) and the new claims.
    pub async fn finish_and_claim(
        &self,
        worker: &str,
        labels: &str,
        finished: &[Finished<'_>],
        limit: usize,
        ttl: Duration,
    ) -> Result<(Vec<i64>, Vec<Claim>), StoreError> {
        let sql = self.sql("recording results and claiming queued attempts");
        let mut tx = self.pool.begin().await.map_err(&sql)?;
        let chunks: Vec<(i64, i64, i64, &[u8])> = finished
            .iter()
            .filter_map(|f| {
                f.last_chunk
                    .map(|(seq, data)| (f.attempt.get(), f.token, seq, data))
            })
            .collect();
        if !chunks.is_empty() {
            sqlx::query(LAST_CHUNKS_SQL)
                .bind(chunks.iter().map(|c| c.0).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.1).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.2).collect::<Vec<_>>())
                .bind(chunks.iter().map(|c| c.3).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await
                .map_err(&sql)?;
        }
        let rows = sqlx::query(FINISH_MANY_SQL)
            .bind(finished.iter().map(|f| f.attempt.get()).collect::<Vec<_>>())
            .bind(finished.iter().map(|f| f.token).collect::<Vec<_>>())
            .bind(finished.iter().map(|f| f.result).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await
            .map_err(&sql)?;
        let accepted = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&sql)?;
        let claims = if limit == 0 {
            Vec::new()
        } else {
            let rows = sqlx::query(CLAIM_SQL)
                .bind(worker)
                .bind(labels)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .bind(millis(ttl))
                .fetch_all(&mut *tx)
                .await
                .map_err(&sql)?;
            rows.iter()
                .map(claim_of)
                .collect::<Result<_, _>>()
                .map_err(&sql)?
        };
        tx.commit().await.map_err(&sql)?;
        Ok((accepted, claims))
    }

    /// The ends of those of `attempts` that have one: a worker's result, or a lease that expired.
    pub async fn queue_ends(&self, attempts: &[i64]) -> Result<Vec<QueueEnd>, StoreError> {
        let sql = self.sql("reading the results of queued attempts");
        let rows = sqlx::query(RESULTS_SQL)
            .bind(attempts)
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get(1)?;
                Ok(QueueEnd {
                    attempt: AttemptId::from(row.try_get::<i64, _>(0)?),
                    result: if state == "lost" {
                        None
                    } else {
                        row.try_get(2)?
                    },
                    worker: row.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&sql)
    }

    /// Marks Lost every claimed attempt whose lease has expired; returns their ids.
    pub async fn expire_leases(&self) -> Result<Vec<AttemptId>, StoreError> {
        let sql = self.sql("expiring the leases of attempts");
        let rows = sqlx::query(EXPIRE_SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        rows.iter()
            .map(|row| Ok(AttemptId::from(row.try_get::<i64, _>(0)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&sql)
    }

    /// Asks for `attempts` to be stopped: one still queued ends at once with `stopped` as its
    /// result; a claimed one is flagged for its worker, which stops it and records its result.
    pub async fn cancel_queued(&self, attempts: &[i64], stopped: &str) -> Result<(), StoreError> {
        sqlx::query(CANCEL_SQL)
            .bind(attempts)
            .bind(stopped)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql("stopping queued attempts"))?;
        Ok(())
    }

    /// The queue's state of each attempt of run `run` that is queued (settled ones are not).
    pub async fn work_states(&self, run: RunId) -> Result<Vec<(AttemptId, WorkState)>, StoreError> {
        let sql = self.sql("reading a run's queued attempts");
        let rows = sqlx::query(STATES_SQL)
            .bind(run.get())
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(&sql)?;
            let state: String = row.try_get(1).map_err(&sql)?;
            let state = match state.as_str() {
                "queued" => WorkState::Queued,
                "claimed" => WorkState::Claimed,
                "done" => WorkState::Done,
                "lost" => WorkState::Lost,
                other => return Err(self.corrupt(format!("work item state {other:?}"))),
            };
            out.push((AttemptId::from(id), state));
        }
        Ok(out)
    }

    /// Shows the queued jobs no live worker can take as Pending (`NoWorker`), and those a worker
    /// took since as Running again; `ttl` is how old a worker's heartbeat may be. Returns the
    /// attempts whose jobs it changed, each with whether it now waits for a worker.
    pub async fn mark_no_worker(
        &self,
        ttl: Duration,
    ) -> Result<Vec<(AttemptId, bool)>, StoreError> {
        let sql = self.sql("showing the jobs no worker can take");
        let rows = sqlx::query(NO_WORKER_SQL)
            .bind(millis(ttl))
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        rows.iter()
            .map(|row| Ok((AttemptId::from(row.try_get::<i64, _>(0)?), row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&sql)
    }

    /// The process groups (pgid, start time) recorded for the attempts `worker` holds claimed.
    pub async fn claimed_groups(&self, worker: &str) -> Result<Vec<(i32, u64)>, StoreError> {
        let sql = self.sql("reading a worker's claimed attempts");
        let rows = sqlx::query(GROUPS_SQL)
            .bind(worker)
            .fetch_all(&self.pool)
            .await
            .map_err(&sql)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let pgid: i64 = row.try_get(0).map_err(&sql)?;
            let start: i64 = row.try_get(1).map_err(&sql)?;
            if let (Ok(pgid), Ok(start)) = (i32::try_from(pgid), u64::try_from(start)) {
                out.push((pgid, start));
            }
        }
        Ok(out)
    }
}

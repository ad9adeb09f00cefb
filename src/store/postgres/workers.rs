//! The SQL of the workers' rows and of their shipped output on PostgreSQL (tables `workers` and
//! `log_chunks` of migration 2). Every time comes from the server's `now()`, so hosts whose
//! clocks disagree still agree on who is live. A chunk is fenced by its attempt's queue item: it
//! is inserted only while that item is claimed with the chunk's token, under a share lock of the
//! item, so no chunk lands once the claim has moved on. Claims and leases are `queue.rs`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{Decoder, PgStore};
use crate::store::workers::{
    CHUNKS_PER_READ, Chunk, ChunkCursor, WorkerInfo, WorkerRow, WorkerState,
};
use crate::store::{AttemptId, RunId, StoreError};

/// `ttl` in seconds, for `make_interval(secs => ...)`.
fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl PgStore {
    pub async fn register_worker(
        &self,
        worker: &WorkerInfo,
        ttl: Duration,
        replacing: Option<u32>,
    ) -> Result<(), StoreError> {
        let context = "registering a worker";
        let labels = serde_json::to_string(&worker.labels).unwrap_or_else(|_| "{}".to_owned());
        // A refused upsert, then no row: the holder's row was deleted in between (by hand), and
        // the name is free for the next try. Twice in a row would take a race nobody runs.
        let mut holder = None;
        for _ in 0..3 {
            // The name is free when nobody has it, its holder stopped or went stale, or the
            // holder is this very process registering again (then it keeps its start time).
            let registered = sqlx::query(
                "INSERT INTO workers (name, host, pid, labels, slots, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4::jsonb, $5, now(), now()) \
                 ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
                     labels = excluded.labels, slots = excluded.slots, \
                     started_at = CASE WHEN workers.host = excluded.host \
                                        AND workers.pid = excluded.pid \
                                        AND workers.stopped_at IS NULL \
                                  THEN workers.started_at ELSE now() END, \
                     heartbeat_at = now(), stopped_at = NULL \
                 WHERE workers.stopped_at IS NOT NULL \
                    OR workers.heartbeat_at < now() - make_interval(secs => $6) \
                    OR (workers.host = excluded.host AND workers.pid = excluded.pid) \
                    OR (workers.host = excluded.host AND workers.pid = $7)",
            )
            .bind(&worker.name)
            .bind(&worker.host)
            .bind(i64::from(worker.pid))
            .bind(&labels)
            .bind(i64::from(worker.slots))
            .bind(seconds(ttl))
            .bind(replacing.map(i64::from))
            .execute(&self.pool)
            .await
            .map_err(self.sql(context))?
            .rows_affected()
                > 0;
            if registered {
                return Ok(());
            }
            let row = sqlx::query("SELECT host, pid FROM workers WHERE name = $1")
                .bind(&worker.name)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.sql(context))?;
            if let Some(row) = row {
                let d = Decoder {
                    row: &row,
                    store: self,
                };
                holder = Some((d.get::<String>("host")?, d.get::<i64>("pid")?));
                break;
            }
        }
        let (host, pid) = holder.unwrap_or_else(|| ("(another host)".to_owned(), 0));
        Err(StoreError::WorkerNameTaken {
            name: worker.name.clone(),
            host,
            pid,
        })
    }

    pub async fn worker_heartbeat(&self, name: &str, pid: u32) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE workers SET heartbeat_at = now() \
             WHERE name = $1 AND pid = $2 AND stopped_at IS NULL",
        )
        .bind(name)
        .bind(i64::from(pid))
        .execute(&self.pool)
        .await
        .map_err(self.sql("renewing a worker's heartbeat"))?
        .rows_affected();
        Ok(updated > 0)
    }

    pub async fn worker_stopped(&self, name: &str, pid: u32) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workers SET stopped_at = now() \
             WHERE name = $1 AND pid = $2 AND stopped_at IS NULL",
        )
        .bind(name)
        .bind(i64::from(pid))
        .execute(&self.pool)
        .await
        .map_err(self.sql("recording that a worker stopped"))?;
        Ok(())
    }

    pub async fn workers(&self, ttl: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.name, w.host, w.pid, w.labels::text AS labels, w.slots, w.started_at, \
                    w.heartbeat_at, now() AS read_at, \
                    CASE WHEN w.stopped_at IS NOT NULL THEN 'Stopped' \
                         WHEN w.heartbeat_at < now() - make_interval(secs => $1) THEN 'Stale' \
                         ELSE 'Live' END AS state, \
                    (SELECT count(*) FROM work_items i \
                     WHERE i.worker = w.name AND i.state = 'claimed') AS running \
             FROM workers w ORDER BY w.name",
        )
        .bind(seconds(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing workers"))?;
        rows.iter().map(|row| self.worker_row(row)).collect()
    }

    fn worker_row(&self, row: &PgRow) -> Result<WorkerRow, StoreError> {
        let d = Decoder { row, store: self };
        let state = match d.get::<String>("state")?.as_str() {
            "Live" => WorkerState::Live,
            "Stale" => WorkerState::Stale,
            "Stopped" => WorkerState::Stopped,
            other => return Err(d.corrupt("state", format!("unknown worker state {other:?}"))),
        };
        Ok(WorkerRow {
            name: d.get("name")?,
            host: d.get("host")?,
            pid: d.get("pid")?,
            labels: self.labels(&d.get::<String>("labels")?)?,
            slots: d.get("slots")?,
            running: d.get("running")?,
            started_at: d.get("started_at")?,
            heartbeat_at: d.get("heartbeat_at")?,
            state,
            read_at: d.get("read_at")?,
        })
    }

    fn labels(&self, json: &str) -> Result<BTreeMap<String, String>, StoreError> {
        serde_json::from_str(json)
            .map_err(|e| self.corrupt(format!("a worker's labels {json}: {e}")))
    }

    pub async fn live_worker_labels(
        &self,
        ttl: Duration,
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        let context = "reading the live workers' labels";
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT labels::text FROM workers \
             WHERE stopped_at IS NULL AND heartbeat_at >= now() - make_interval(secs => $1) \
             ORDER BY name",
        )
        .bind(seconds(ttl))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        rows.iter().map(|json| self.labels(json)).collect()
    }

    pub async fn append_log_chunk(
        &self,
        attempt: AttemptId,
        token: i64,
        seq: i64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        // `FOR SHARE` on the item: a settle or a takeover (an UPDATE of the item) waits for this
        // insert, or this insert waits for it and then checks the claim again on the new row.
        // The same seq again (a retry whose first answer was lost) replaces the row, fenced the
        // same way, so a retry is not mistaken for a rejection.
        let inserted = sqlx::query(
            "INSERT INTO log_chunks (attempt_id, seq, data) \
             SELECT i.attempt_id, $2, $3 FROM work_items i \
             WHERE i.attempt_id = $1 AND i.token = $4 AND i.state = 'claimed' FOR SHARE \
             ON CONFLICT (attempt_id, seq) DO UPDATE SET data = excluded.data",
        )
        .bind(attempt.get())
        .bind(seq)
        .bind(data)
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(self.sql("shipping a log chunk"))?
        .rows_affected();
        Ok(inserted > 0)
    }

    pub async fn log_chunks(
        &self,
        run: RunId,
        job: &str,
        after: Option<ChunkCursor>,
    ) -> Result<Vec<Chunk>, StoreError> {
        let context = "reading shipped log chunks";
        let (after_attempt, after_seq) =
            after.map_or((i64::MIN, i64::MIN), |c| (c.attempt_id.get(), c.seq));
        let rows = sqlx::query(
            "SELECT c.attempt_id, c.seq, c.data FROM log_chunks c \
             JOIN attempts a ON a.id = c.attempt_id \
             WHERE a.run_id = $1 AND a.job_id = $2 AND (c.attempt_id, c.seq) > ($3, $4) \
             ORDER BY c.attempt_id, c.seq LIMIT $5",
        )
        .bind(run.get())
        .bind(job)
        .bind(after_attempt)
        .bind(after_seq)
        .bind(CHUNKS_PER_READ)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        rows.iter()
            .map(|row| {
                Ok(Chunk {
                    attempt_id: AttemptId::from(
                        row.try_get::<i64, _>(0).map_err(self.sql(context))?,
                    ),
                    seq: row.try_get(1).map_err(self.sql(context))?,
                    data: row.try_get(2).map_err(self.sql(context))?,
                })
            })
            .collect()
    }
}

//! What overlapping runs of one pipeline need on PostgreSQL (`concurrencyPolicy`): the runs of a
//! pipeline still recorded Running, and the audit event of a skipped schedule tick. Whether an
//! owner is alive is the caller's decision, as on SQLite.

use super::runs::select_runs;
use super::{PgStore, now};
use crate::store::{EVENT_TICK_SKIPPED, RunId, RunRow, StoreError};

impl PgStore {
    /// The runs of `pipeline` recorded Running (their owners may be gone), newest first.
    pub async fn running_runs_of(&self, pipeline: &str) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(select_runs!(
            "WHERE phase = 'Running' AND pipeline = $1 ORDER BY id DESC"
        ))
        .bind(pipeline)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing a pipeline's running runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// The runs recorded Running whose recorded owner is not process `pid` on `host`, oldest first.
    pub async fn running_runs_not_owned_by(
        &self,
        pid: u32,
        host: &str,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(select_runs!(
            "WHERE phase = 'Running' \
             AND NOT (coalesce(owner_pid, -1) = $1 AND coalesce(owner_host, '') = $2) ORDER BY id"
        ))
        .bind(i64::from(pid))
        .bind(host)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing other processes' running runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// Records on `run` that the schedule's tick `tick` was skipped, with why.
    pub async fn record_tick_skipped(
        &self,
        run: RunId,
        tick: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let detail = crate::store::overlap::tick_skipped_detail(tick);
        let query = sqlx::query(
            "INSERT INTO events (run_id, job_id, kind, reason, actor, at, detail) \
             VALUES ($1, NULL, $2, $3, 'controller', $4, $5)",
        )
        .bind(run.get())
        .bind(EVENT_TICK_SKIPPED)
        .bind(reason)
        .bind(now())
        .bind(detail);
        self.execute_decision("recording a skipped tick", query)
            .await?;
        Ok(())
    }
}

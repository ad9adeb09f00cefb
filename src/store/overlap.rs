//! What overlapping runs of one pipeline need from the store (`concurrencyPolicy`, DESIGN 11):
//! the runs of a pipeline still recorded Running, and the audit event of a schedule tick skipped
//! because a run was going on. Whether a run's owner is alive, and what to do about it, is the
//! caller's (`engine::resume::owner_alive`, the controller's decision, `executioner run`).

use time::OffsetDateTime;

use super::{RunId, RunRow, StoreError, sqlite::SqliteStore, timestamp};

/// The audit event of a schedule tick not run because another run was going on.
pub const EVENT_TICK_SKIPPED: &str = "TickSkipped";

/// The detail of a [`EVENT_TICK_SKIPPED`] event: the tick's wall-clock time, as `schedule` gives it.
pub(super) fn tick_skipped_detail(tick: &str) -> String {
    serde_json::json!({ "tick": tick }).to_string()
}

impl SqliteStore {
    /// The runs of `pipeline` recorded Running (their owners may be gone), newest first.
    pub async fn running_runs_of(&self, pipeline: &str) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(super::sqlite::select_runs!(
            "WHERE phase = 'Running' AND pipeline = ? ORDER BY id DESC"
        ))
        .bind(pipeline)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing a pipeline's running runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// The runs recorded Running whose recorded owner is not process `pid` on `host` (a
    /// controller's own runs are left out in the query: they are most of them), oldest first.
    pub async fn running_runs_not_owned_by(
        &self,
        pid: u32,
        host: &str,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(super::sqlite::select_runs!(
            "WHERE phase = 'Running' \
             AND NOT (coalesce(owner_pid, -1) = ? AND coalesce(owner_host, '') = ?) ORDER BY id"
        ))
        .bind(i64::from(pid))
        .bind(host)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing other processes' running runs"))?;
        rows.iter().map(|row| self.run_row(row)).collect()
    }

    /// Records on `run` (the one going on) that the schedule's tick `tick` (its wall-clock time,
    /// as `schedule` gives it) was skipped, with why.
    pub async fn record_tick_skipped(
        &self,
        run: RunId,
        tick: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let detail = tick_skipped_detail(tick);
        self.execute(
            "recording a skipped tick",
            "INSERT INTO events (run_id, job_id, kind, reason, actor, at, detail) \
             VALUES (?, NULL, ?, ?, 'controller', ?, ?)",
            super::sqlite::owned_params![
                run,
                EVENT_TICK_SKIPPED,
                reason.to_owned(),
                timestamp(OffsetDateTime::now_utc()),
                detail,
            ],
        )
        .await
        .map(drop)
    }
}

//! What overlapping runs of one pipeline need from the store (`concurrencyPolicy`, DESIGN 11):
//! the runs of a pipeline still recorded Running, and the audit event of a schedule tick skipped
//! because a run was going on. Whether a run's owner is alive, and what to do about it, is the
//! caller's (`engine::resume::owner_alive`, the controller's decision, `executioner run`).

use time::OffsetDateTime;

use super::{RunId, RunRow, StoreError, sqlite::SqliteStore, timestamp};

/// The audit event of a schedule tick not run because another run was going on.
pub const EVENT_TICK_SKIPPED: &str = "TickSkipped";

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
        let detail = serde_json::json!({ "tick": tick }).to_string();
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

#[cfg(test)]
mod tests {
    use crate::store::{Durability, NewJob, NewRun, Owner, Store};

    #[tokio::test]
    async fn running_runs_are_listed_newest_first_and_a_skipped_tick_is_an_event_of_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        let owner = Owner {
            pid: 1,
            host: "h".into(),
            start_time: None,
        };
        let a = crate::spec::JobId::parse("a").unwrap();
        let (p, q) = (
            crate::spec::PipelineName::parse("p").unwrap(),
            crate::spec::PipelineName::parse("q").unwrap(),
        );
        let jobs = [NewJob {
            id: &a,
            log_path: "a.log",
        }];
        let new = |pipeline| NewRun {
            pipeline,
            generation: 1,
            spec_json: "{}",
            spec_hash: "x",
            jobs: &jobs,
            owner: &owner,
        };
        let first = store.create_run(&new(&p)).await.unwrap();
        store.create_run(&new(&q)).await.unwrap();
        let second = store.create_run(&new(&p)).await.unwrap();
        let ids: Vec<_> = store
            .running_runs_of("p")
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [second, first]);
        let others = store.running_runs_not_owned_by(1, "h").await.unwrap();
        assert!(others.is_empty());
        let others = store.running_runs_not_owned_by(2, "h").await.unwrap();
        assert_eq!(others.len(), 3);
        store
            .record_tick_skipped(second, "2026-07-01T10:21:00", "run still running")
            .await
            .unwrap();
        let events = store.events(second).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, super::EVENT_TICK_SKIPPED);
        assert_eq!(events[0].actor.as_deref(), Some("controller"));
        assert!(events[0].detail.as_deref().unwrap().contains("10:21"));
    }
}

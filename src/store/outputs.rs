//! The SQL of run data: each succeeded attempt's outputs (JSON, masked by the engine before they
//! get here) and the parameters a `rerun` request carries to the controller. A run's own
//! parameter values are in its pinned spec (`runs.spec_json`), so they need nothing here.

use std::collections::HashMap;

use indexmap::IndexMap;
use rusqlite::{Connection, OptionalExtension, params};
use sqlx::Row;

use super::{AttemptId, RunId, StoreError, sqlite::SqliteStore};
use crate::status::outputs::Outputs;

/// One attempt's outputs, waiting in a [`super::Batch`].
#[derive(Debug)]
pub(super) struct OutputsRow {
    pub(super) attempt: AttemptId,
    pub(super) json: String,
}

impl OutputsRow {
    pub(super) fn new(attempt: AttemptId, outputs: &Outputs) -> Self {
        OutputsRow {
            attempt,
            json: serde_json::to_string(outputs).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

const INSERT_SQL: &str = "INSERT OR REPLACE INTO attempt_outputs (attempt_id, run_id, job_id, outputs) \
    SELECT id, run_id, job_id, ? FROM attempts WHERE id = ?";

/// Inserts the rows in the batch's transaction (after the attempts' ends).
pub(super) fn insert(tx: &Connection, rows: &[OutputsRow]) -> rusqlite::Result<()> {
    for row in rows {
        tx.prepare_cached(INSERT_SQL)?
            .execute(params![row.json, row.attempt.get()])?;
    }
    Ok(())
}

impl SqliteStore {
    /// Each job's current outputs in a run: those of its latest succeeded attempt (a job whose
    /// latest success wrote none has none, whatever an earlier round wrote).
    pub async fn job_outputs(&self, run: RunId) -> Result<HashMap<String, Outputs>, StoreError> {
        let context = "reading job outputs";
        let rows = sqlx::query(
            "SELECT a.job_id, o.outputs FROM attempts a \
             JOIN attempt_outputs o ON o.attempt_id = a.id \
             WHERE a.id IN (SELECT max(id) FROM attempts \
                            WHERE run_id = ? AND phase = 'Succeeded' GROUP BY job_id)",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let job: String = row.try_get(0).map_err(self.sql(context))?;
            let json: String = row.try_get(1).map_err(self.sql(context))?;
            let outputs: Outputs =
                serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    path: self.path.to_path_buf(),
                    detail: format!("outputs of job {job}: {e}"),
                })?;
            out.insert(job, outputs);
        }
        Ok(out)
    }

    /// Asks for a new run of pipeline `name` with these parameters (see
    /// [`Store::request_rerun`]); false when the pipeline is unknown.
    pub async fn request_rerun_with_params(
        &self,
        name: &str,
        params: &IndexMap<String, String>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(params).unwrap_or_else(|_| "{}".to_owned());
        let name = name.to_owned();
        self.write("requesting a rerun", move |tx| {
            let known = tx
                .prepare_cached(
                    "UPDATE pipelines SET rerun_requested = 1 WHERE name = ? AND deleted = 0",
                )?
                .execute([&name])?
                > 0;
            if known {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO rerun_params (pipeline, params) VALUES (?, ?)",
                )?
                .execute([&name, &json])?;
            }
            Ok(Ok(known))
        })
        .await
    }

    /// Consumes the parameters of a rerun request (empty when it had none).
    pub async fn take_rerun_params(
        &self,
        name: &str,
    ) -> Result<IndexMap<String, String>, StoreError> {
        let owned = name.to_owned();
        let json: Option<String> = self
            .write("taking a rerun request's parameters", move |tx| {
                let json = tx
                    .prepare_cached("DELETE FROM rerun_params WHERE pipeline = ? RETURNING params")?
                    .query_row([&owned], |row| row.get(0))
                    .optional()?;
                Ok(Ok(json))
            })
            .await?;
        let Some(json) = json else {
            return Ok(IndexMap::new());
        };
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            path: self.path.to_path_buf(),
            detail: format!("rerun parameters of {name}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::store::Store;
    use std::time::Duration;

    use super::*;
    use crate::spec::{JobId, PipelineName};
    use crate::status::{JobPhase, JobReason};
    use crate::store::{AttemptEnd, Batch, Durability, NewJob, NewRun, Owner};

    fn succeeded() -> AttemptEnd {
        AttemptEnd {
            phase: JobPhase::Succeeded,
            reason: Some(JobReason::Completed),
            exit_code: Some(0),
            signal: None,
            user_time: Duration::ZERO,
            system_time: Duration::ZERO,
            max_rss_kib: 0,
            max_rss_upper_bound: false,
            message: None,
        }
    }

    fn outputs(pairs: &[(&str, &str)]) -> Outputs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn a_jobs_outputs_are_those_of_its_latest_success() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state"), Durability::Normal)
            .await
            .unwrap();
        let (extract, load) = (
            JobId::parse("extract").unwrap(),
            JobId::parse("load").unwrap(),
        );
        let owner = Owner {
            pid: std::process::id(),
            host: "h".into(),
            start_time: None,
        };
        let run = store
            .create_run(&NewRun {
                pipeline: &PipelineName::parse("p").unwrap(),
                generation: 1,
                spec_json: "{}",
                spec_hash: "x",
                jobs: &[
                    NewJob {
                        id: &extract,
                        log_path: "extract.log",
                    },
                    NewJob {
                        id: &load,
                        log_path: "load.log",
                    },
                ],
                owner: &owner,
            })
            .await
            .unwrap();
        let mut batch = Batch::default();
        batch.attempt_started(&extract, 1, 1);
        batch.attempt_started(&load, 1, 1);
        let ids = store.commit(run, 1, &mut batch).await.unwrap();
        let done = Some((JobPhase::Succeeded, Some(JobReason::Completed)));
        batch.attempt_finished(ids[0], &succeeded(), done);
        batch.attempt_outputs(ids[0], &outputs(&[("A", "1")]));
        batch.attempt_finished(ids[1], &succeeded(), done);
        batch.attempt_outputs(ids[1], &outputs(&[("B", "two\nlines")]));
        store.commit(run, 1, &mut batch).await.unwrap();
        let found = store.job_outputs(run).await.unwrap();
        assert_eq!(found["extract"], outputs(&[("A", "1")]));
        assert_eq!(found["load"], outputs(&[("B", "two\nlines")]));

        // Run again (a later round) and succeeded without outputs: it has none any more.
        batch.attempt_started(&extract, 2, 1);
        let again = store.commit(run, 2, &mut batch).await.unwrap();
        batch.attempt_finished(again[0], &succeeded(), done);
        store.commit(run, 2, &mut batch).await.unwrap();
        let found = store.job_outputs(run).await.unwrap();
        assert!(!found.contains_key("extract"));
        assert!(found.contains_key("load"));
    }

    #[tokio::test]
    async fn a_rerun_request_carries_its_params_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state"), Durability::Normal)
            .await
            .unwrap();
        let params: IndexMap<String, String> = [("day".to_owned(), "2026-11-30".to_owned())]
            .into_iter()
            .collect();
        assert!(!store.request_rerun_with_params("p", &params).await.unwrap());
        store.observe_pipeline("p", "hash", "p.yaml").await.unwrap();
        assert!(store.request_rerun_with_params("p", &params).await.unwrap());
        assert!(store.take_rerun("p").await.unwrap());
        assert_eq!(store.take_rerun_params("p").await.unwrap(), params);
        assert!(store.take_rerun_params("p").await.unwrap().is_empty());
    }
}

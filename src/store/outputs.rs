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

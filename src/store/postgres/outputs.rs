//! Run data on PostgreSQL: each job's current outputs (those of its latest succeeded attempt; they
//! are written by the batch commit) and the parameters a `rerun` request carries.

use std::collections::HashMap;

use indexmap::IndexMap;
use sqlx::Row;

use super::PgStore;
use crate::status::outputs::Outputs;
use crate::store::{RunId, StoreError};

impl PgStore {
    /// Each job's current outputs in a run: those of its latest succeeded attempt.
    pub async fn job_outputs(&self, run: RunId) -> Result<HashMap<String, Outputs>, StoreError> {
        let context = "reading job outputs";
        let rows = sqlx::query(
            "SELECT a.job_id, o.outputs FROM attempts a \
             JOIN attempt_outputs o ON o.attempt_id = a.id \
             WHERE a.id IN (SELECT max(id) FROM attempts \
                            WHERE run_id = $1 AND phase = 'Succeeded' GROUP BY job_id)",
        )
        .bind(run.get())
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            let job: String = row.try_get(0).map_err(self.sql(context))?;
            let json: String = row.try_get(1).map_err(self.sql(context))?;
            let outputs: Outputs = serde_json::from_str(&json)
                .map_err(|e| self.corrupt(format!("outputs of job {job}: {e}")))?;
            out.insert(job, outputs);
        }
        Ok(out)
    }

    /// Asks for a new run of pipeline `name` with these parameters; false when the pipeline is
    /// unknown.
    pub async fn request_rerun_with_params(
        &self,
        name: &str,
        params: &IndexMap<String, String>,
    ) -> Result<bool, StoreError> {
        let context = "requesting a rerun";
        let json = serde_json::to_string(params).unwrap_or_else(|_| "{}".to_owned());
        let mut tx = self.begin(context).await?;
        let known = sqlx::query(
            "UPDATE pipelines SET rerun_requested = TRUE WHERE name = $1 AND NOT deleted",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(self.sql(context))?
        .rows_affected()
            > 0;
        if known {
            sqlx::query(
                "INSERT INTO rerun_params (pipeline, params) VALUES ($1, $2) \
                 ON CONFLICT (pipeline) DO UPDATE SET params = excluded.params",
            )
            .bind(name)
            .bind(&json)
            .execute(&mut *tx)
            .await
            .map_err(self.sql(context))?;
        }
        tx.commit().await.map_err(self.sql(context))?;
        Ok(known)
    }

    /// Consumes the parameters of a rerun request (empty when it had none).
    pub async fn take_rerun_params(
        &self,
        name: &str,
    ) -> Result<IndexMap<String, String>, StoreError> {
        let context = "taking a rerun request's parameters";
        let json: Option<String> =
            sqlx::query_scalar("DELETE FROM rerun_params WHERE pipeline = $1 RETURNING params")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.sql(context))?;
        let Some(json) = json else {
            return Ok(IndexMap::new());
        };
        serde_json::from_str(&json)
            .map_err(|e| self.corrupt(format!("rerun parameters of {name}: {e}")))
    }
}

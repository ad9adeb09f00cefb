//! The controller's pipelines on PostgreSQL: identity, the generation of the spec it last saw, the
//! requests made to it (`rerun`), and the manifests folder the controller records. The upsert that
//! counts generations is one statement (`INSERT ... ON CONFLICT DO UPDATE` is atomic), so
//! controllers on several hosts observing one pipeline at once agree on its generation.

use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::runs::select_runs;
use super::{Decoder, PgStore, ms, now};
use crate::store::rows;
use crate::store::{PipelineRow, RunRow, StoreError};

impl PgStore {
    /// Records that pipeline `name` has spec `spec_hash` (from `source`) and returns its
    /// generation: 1 for a new pipeline, +1 when the hash changed or the pipeline comes back after
    /// a deletion, unchanged otherwise.
    pub async fn observe_pipeline(
        &self,
        name: &str,
        spec_hash: &str,
        source: &str,
    ) -> Result<i64, StoreError> {
        let query = sqlx::query_scalar(
            "INSERT INTO pipelines AS p (name, generation, spec_hash, source, deleted, updated_at) \
             VALUES ($1, 1, $2, $3, FALSE, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               generation = CASE WHEN p.spec_hash <> excluded.spec_hash OR p.deleted \
                                 THEN p.generation + 1 ELSE p.generation END, \
               updated_at = CASE WHEN p.spec_hash <> excluded.spec_hash OR p.deleted \
                                      OR p.source <> excluded.source \
                                 THEN excluded.updated_at ELSE p.updated_at END, \
               spec_hash = excluded.spec_hash, source = excluded.source, deleted = FALSE \
             RETURNING generation",
        )
        .bind(name)
        .bind(spec_hash)
        .bind(source)
        .bind(now());
        let context = "recording a pipeline";
        if self.fenced_with().is_none() {
            return query.fetch_one(&self.pool).await.map_err(self.sql(context));
        }
        // A leader's generation count is a decision: checked against its fence.
        let mut tx = self.begin(context).await?;
        let generation = query.fetch_one(&mut *tx).await.map_err(self.sql(context))?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(generation)
    }

    /// Every pipeline ever observed (deleted ones included), by name.
    pub async fn pipelines(&self) -> Result<Vec<PipelineRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, generation, spec_hash, source, deleted, rerun_requested, last_tick, \
             updated_at FROM pipelines ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing pipelines"))?;
        rows.iter().map(|r| self.pipeline_row(r)).collect()
    }

    pub async fn pipeline(&self, name: &str) -> Result<Option<PipelineRow>, StoreError> {
        let row = sqlx::query(
            "SELECT name, generation, spec_hash, source, deleted, rerun_requested, last_tick, \
             updated_at FROM pipelines WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a pipeline"))?;
        row.map(|r| self.pipeline_row(&r)).transpose()
    }

    pub async fn mark_pipeline_deleted(&self, name: &str) -> Result<(), StoreError> {
        let query = sqlx::query(
            "UPDATE pipelines SET deleted = TRUE, rerun_requested = FALSE, updated_at = $1 \
             WHERE name = $2",
        )
        .bind(now())
        .bind(name);
        self.execute_decision("deleting a pipeline", query).await?;
        Ok(())
    }

    /// Asks for a new run of the current generation; false when the pipeline is unknown.
    pub async fn request_rerun(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pipelines SET rerun_requested = TRUE WHERE name = $1 AND NOT deleted",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(self.sql("requesting a rerun"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Consumes a rerun request; true when there was one (one taker wins: the row lock makes a
    /// second taker see it consumed).
    pub async fn take_rerun(&self, name: &str) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "UPDATE pipelines SET rerun_requested = FALSE WHERE name = $1 AND rerun_requested",
        )
        .bind(name);
        let done = self
            .execute_decision("taking a rerun request", query)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_last_tick(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        let query = sqlx::query("UPDATE pipelines SET last_tick = $1 WHERE name = $2")
            .bind(ms(at))
            .bind(name);
        self.execute_decision("recording a schedule tick", query)
            .await?;
        Ok(())
    }

    /// Records the manifests folder (an absolute path) the controller of this database watches.
    pub async fn set_manifests_dir(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO controller_settings AS s (key, value, updated_at) \
             VALUES ('manifests_dir', $1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
               updated_at = excluded.updated_at WHERE s.value <> excluded.value",
        )
        .bind(dir.to_string_lossy().into_owned())
        .bind(now());
        self.execute_decision("recording the manifests folder", query)
            .await?;
        Ok(())
    }

    /// The manifests folder a controller last recorded, if any.
    pub async fn manifests_dir(&self) -> Result<Option<std::path::PathBuf>, StoreError> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM controller_settings WHERE key = 'manifests_dir'")
                .fetch_optional(&self.pool)
                .await
                .map_err(self.sql("reading the manifests folder"))?;
        Ok(value.map(std::path::PathBuf::from))
    }

    /// The newest run of one generation of a pipeline.
    pub async fn latest_run_of_generation(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(select_runs!(
            "WHERE pipeline = $1 AND generation = $2 ORDER BY id DESC LIMIT 1"
        ))
        .bind(pipeline)
        .bind(generation)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a generation's run"))?;
        row.map(|r| self.run_row(&r)).transpose()
    }

    /// The newest run of every pipeline, in one query.
    pub async fn latest_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(select_runs!(
            "WHERE id IN (SELECT max(id) FROM runs GROUP BY pipeline)"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading the latest runs"))?;
        rows.iter().map(|r| self.run_row(r)).collect()
    }

    fn pipeline_row(&self, row: &PgRow) -> Result<PipelineRow, StoreError> {
        rows::pipeline_row(&Decoder { row, store: self })
    }
}

//! The controller's pipelines: identity (name), the generation of the spec it last saw, and the
//! requests made to it (`rerun`). A generation increases when the canonical spec hash changes.

use sqlx::Row;
use time::OffsetDateTime;

use super::rows;
use super::{RunRow, StoreError, sqlite::Decoder, sqlite::SqliteStore, timestamp};

/// One pipeline as the controller last observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineRow {
    pub name: String,
    pub generation: i64,
    pub spec_hash: String,
    /// The manifest file it came from (a name inside the manifests folder).
    pub source: String,
    pub deleted: bool,
    pub rerun_requested: bool,
    /// The last schedule tick acted on: its wall-clock time in the schedule's zone, stored as if
    /// it were UTC (ticks are compared as wall-clock times; see `schedule`).
    pub last_tick: Option<OffsetDateTime>,
    /// When the generation, source or deletion last changed.
    pub updated_at: OffsetDateTime,
}

impl SqliteStore {
    /// Records that pipeline `name` has spec `spec_hash` (from `source`) and returns its
    /// generation: 1 for a new pipeline, +1 when the hash changed or the pipeline comes back after
    /// a deletion, unchanged otherwise.
    pub async fn observe_pipeline(
        &self,
        name: &str,
        spec_hash: &str,
        source: &str,
    ) -> Result<i64, StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        let generation = self.execute_returning(
            "recording a pipeline",
            "INSERT INTO pipelines (name, generation, spec_hash, source, deleted, updated_at) \
             VALUES (?1, 1, ?2, ?3, 0, ?4) \
             ON CONFLICT (name) DO UPDATE SET \
               generation = CASE WHEN spec_hash <> excluded.spec_hash OR deleted = 1 \
                                 THEN generation + 1 ELSE generation END, \
               updated_at = CASE WHEN spec_hash <> excluded.spec_hash OR deleted = 1 OR source <> excluded.source \
                                 THEN excluded.updated_at ELSE updated_at END, \
               spec_hash = excluded.spec_hash, source = excluded.source, deleted = 0 \
             RETURNING generation",
            super::sqlite::owned_params![name.to_owned(), spec_hash.to_owned(), source.to_owned(), now],
        )
        .await?;
        Ok(generation.unwrap_or(1))
    }

    /// Every pipeline ever observed (deleted ones included), by name.
    pub async fn pipelines(&self) -> Result<Vec<PipelineRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, generation, spec_hash, source, deleted, rerun_requested, last_tick, updated_at \
             FROM pipelines ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("listing pipelines"))?;
        rows.iter().map(|r| self.pipeline_row(r)).collect()
    }

    pub async fn pipeline(&self, name: &str) -> Result<Option<PipelineRow>, StoreError> {
        let row = sqlx::query(
            "SELECT name, generation, spec_hash, source, deleted, rerun_requested, last_tick, updated_at \
             FROM pipelines WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a pipeline"))?;
        row.map(|r| self.pipeline_row(&r)).transpose()
    }

    pub async fn mark_pipeline_deleted(&self, name: &str) -> Result<(), StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        self.execute(
            "deleting a pipeline",
            "UPDATE pipelines SET deleted = 1, rerun_requested = 0, updated_at = ?1 WHERE name = ?2",
            super::sqlite::owned_params![now, name.to_owned()],
        )
        .await
        .map(drop)
    }

    /// Asks for a new run of the current generation; false when the pipeline is unknown.
    pub async fn request_rerun(&self, name: &str) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "requesting a rerun",
                "UPDATE pipelines SET rerun_requested = 1 WHERE name = ? AND deleted = 0",
                super::sqlite::owned_params![name.to_owned()],
            )
            .await?;
        Ok(changed > 0)
    }

    /// Consumes a rerun request; true when there was one.
    pub async fn take_rerun(&self, name: &str) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "taking a rerun request",
                "UPDATE pipelines SET rerun_requested = 0 WHERE name = ? AND rerun_requested = 1",
                super::sqlite::owned_params![name.to_owned()],
            )
            .await?;
        Ok(changed > 0)
    }

    pub async fn set_last_tick(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        self.execute(
            "recording a schedule tick",
            "UPDATE pipelines SET last_tick = ?1 WHERE name = ?2",
            super::sqlite::owned_params![timestamp(at), name.to_owned()],
        )
        .await
        .map(drop)
    }

    /// Records the manifests folder (an absolute path) the controller of this state folder watches.
    pub async fn set_manifests_dir(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        let now = timestamp(OffsetDateTime::now_utc());
        self.execute(
            "recording the manifests folder",
            "INSERT INTO controller_settings (key, value, updated_at) VALUES ('manifests_dir', ?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
             WHERE value <> excluded.value",
            super::sqlite::owned_params![dir.to_string_lossy().into_owned(), now],
        )
        .await
        .map(drop)
    }

    /// The manifests folder a controller last recorded, if any.
    pub async fn manifests_dir(&self) -> Result<Option<std::path::PathBuf>, StoreError> {
        let row = sqlx::query("SELECT value FROM controller_settings WHERE key = 'manifests_dir'")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql("reading the manifests folder"))?;
        row.map(|r| {
            r.try_get::<String, _>("value")
                .map(std::path::PathBuf::from)
                .map_err(|e| StoreError::Corrupt {
                    path: self.path.to_path_buf(),
                    detail: format!("controller_settings.value: {e}"),
                })
        })
        .transpose()
    }

    /// The newest run of one generation of a pipeline.
    pub async fn latest_run_of_generation(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(super::sqlite::select_runs!(
            "WHERE pipeline = ? AND generation = ? ORDER BY id DESC LIMIT 1"
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
        let rows = sqlx::query(super::sqlite::select_runs!(
            "WHERE id IN (SELECT MAX(id) FROM runs GROUP BY pipeline)"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading the latest runs"))?;
        rows.iter().map(|r| self.run_row(r)).collect()
    }

    fn pipeline_row(&self, row: &sqlx::sqlite::SqliteRow) -> Result<PipelineRow, StoreError> {
        rows::pipeline_row(&Decoder { row, store: self })
    }
}

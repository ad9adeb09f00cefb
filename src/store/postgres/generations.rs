//! Each generation's source revision on PostgreSQL: the first revision recorded for a generation
//! of a pipeline is kept (`ON CONFLICT DO NOTHING`), as on SQLite.

use super::{PgStore, now};
use crate::store::StoreError;

impl PgStore {
    /// Records that generation `generation` of `pipeline` came from `revision`, unless that
    /// generation already has one.
    pub async fn record_revision(
        &self,
        pipeline: &str,
        generation: i64,
        revision: &str,
    ) -> Result<(), StoreError> {
        let query = sqlx::query(
            "INSERT INTO generations (pipeline, generation, revision, recorded_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (pipeline, generation) DO NOTHING",
        )
        .bind(pipeline)
        .bind(generation)
        .bind(revision)
        .bind(now());
        self.execute_decision("recording a source revision", query)
            .await?;
        Ok(())
    }

    /// The source revision generation `generation` of `pipeline` was recorded at, if any.
    pub async fn revision(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT revision FROM generations WHERE pipeline = $1 AND generation = $2",
        )
        .bind(pipeline)
        .bind(generation)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a source revision"))
    }
}

//! Each generation's source revision: the git commit (and `-dirty`) the manifests folder was at
//! when the controller first recorded that generation of a pipeline. Asking git is
//! `crate::revision`'s; counting generations is `pipelines`'.

use time::OffsetDateTime;

use super::{StoreError, sqlite::SqliteStore, timestamp};

impl SqliteStore {
    /// Records that generation `generation` of `pipeline` came from `revision`, unless that
    /// generation already has one: a generation keeps the revision it was first seen at.
    pub async fn record_revision(
        &self,
        pipeline: &str,
        generation: i64,
        revision: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "recording a source revision",
            "INSERT INTO generations (pipeline, generation, revision, recorded_at) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (pipeline, generation) DO NOTHING",
            super::sqlite::owned_params![
                pipeline.to_owned(),
                generation,
                revision.to_owned(),
                timestamp(OffsetDateTime::now_utc()),
            ],
        )
        .await
        .map(drop)
    }

    /// The source revision generation `generation` of `pipeline` was recorded at, if any.
    pub async fn revision(
        &self,
        pipeline: &str,
        generation: i64,
    ) -> Result<Option<String>, StoreError> {
        let revision: Option<(String,)> = sqlx::query_as(
            "SELECT revision FROM generations WHERE pipeline = ?1 AND generation = ?2",
        )
        .bind(pipeline)
        .bind(generation)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading a source revision"))?;
        Ok(revision.map(|(r,)| r))
    }
}

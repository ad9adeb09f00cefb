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

#[cfg(test)]
mod tests {
    use crate::store::{Durability, Store};

    /// A generation keeps the revision it was first recorded at; another generation has its own.
    #[tokio::test]
    async fn a_generation_keeps_its_first_revision() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        assert_eq!(store.revision("p", 1).await.unwrap(), None);
        store.record_revision("p", 1, "abc").await.unwrap();
        store.record_revision("p", 1, "def-dirty").await.unwrap();
        store.record_revision("p", 2, "def").await.unwrap();
        assert_eq!(
            store.revision("p", 1).await.unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            store.revision("p", 2).await.unwrap().as_deref(),
            Some("def")
        );
        assert_eq!(store.revision("q", 1).await.unwrap(), None);
    }
}

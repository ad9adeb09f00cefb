//! The inventory of `apply` (like kubectl's ApplySet): which manifest file of a manifests folder
//! an `apply` of which source last wrote, for which pipeline, and a hash of the bytes it wrote.
//! `apply --prune` deletes only files listed here for its source, and only while they still hold
//! those bytes. A file has one entry: the source that wrote it last owns it. Deciding what to
//! prune and touching the files is `cli::apply`'s; this only keeps the list.

use time::OffsetDateTime;

use super::rows;
use super::{StoreError, sqlite::Decoder, sqlite::SqliteStore, timestamp};

/// One file an `apply` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedFile {
    /// The manifests folder (an absolute path).
    pub manifests_dir: String,
    /// The file's name inside the manifests folder.
    pub file: String,
    /// What was given to `apply -f` (an absolute path).
    pub source: String,
    pub pipeline: String,
    /// Hex SHA-256 of the bytes written.
    pub content_hash: String,
}

impl SqliteStore {
    /// Records that `entry.source` wrote `entry.file` (replacing whoever wrote it before).
    pub async fn record_applied(&self, entry: &AppliedFile) -> Result<(), StoreError> {
        self.execute(
            "recording what apply wrote",
            "INSERT INTO apply_inventory (manifests_dir, file, source, pipeline, content_hash, applied_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (manifests_dir, file) DO UPDATE SET source = excluded.source, \
               pipeline = excluded.pipeline, content_hash = excluded.content_hash, \
               applied_at = excluded.applied_at",
            super::sqlite::owned_params![
                entry.manifests_dir.clone(),
                entry.file.clone(),
                entry.source.clone(),
                entry.pipeline.clone(),
                entry.content_hash.clone(),
                timestamp(OffsetDateTime::now_utc()),
            ],
        )
        .await
        .map(drop)
    }

    /// Every file of `manifests_dir` that an apply of `source` wrote last, by file name.
    pub async fn applied_by(
        &self,
        source: &str,
        manifests_dir: &str,
    ) -> Result<Vec<AppliedFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT manifests_dir, file, source, pipeline, content_hash FROM apply_inventory \
             WHERE source = ?1 AND manifests_dir = ?2 ORDER BY file",
        )
        .bind(source)
        .bind(manifests_dir)
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql("reading what apply wrote"))?;
        rows.iter()
            .map(|row| rows::applied_file(&Decoder { row, store: self }))
            .collect()
    }

    /// The entry of `file` in `manifests_dir`, whichever source wrote it.
    pub async fn applied_file(
        &self,
        manifests_dir: &str,
        file: &str,
    ) -> Result<Option<AppliedFile>, StoreError> {
        let row = sqlx::query(
            "SELECT manifests_dir, file, source, pipeline, content_hash FROM apply_inventory \
             WHERE manifests_dir = ?1 AND file = ?2",
        )
        .bind(manifests_dir)
        .bind(file)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("reading what apply wrote"))?;
        row.as_ref()
            .map(|row| rows::applied_file(&Decoder { row, store: self }))
            .transpose()
    }

    /// Drops the entry of `file` (pruned, or gone).
    pub async fn forget_applied(&self, manifests_dir: &str, file: &str) -> Result<(), StoreError> {
        self.execute(
            "forgetting what apply wrote",
            "DELETE FROM apply_inventory WHERE manifests_dir = ?1 AND file = ?2",
            super::sqlite::owned_params![manifests_dir.to_owned(), file.to_owned()],
        )
        .await
        .map(drop)
    }
}

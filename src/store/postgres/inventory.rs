//! The inventory of `apply` on PostgreSQL: which file of a manifests folder an apply of which
//! source last wrote, with a hash of its bytes (see `store/inventory.rs` for what it is for).

use super::{Decoder, PgStore, now};
use crate::store::rows;
use crate::store::{AppliedFile, StoreError};

impl PgStore {
    /// Records that `entry.source` wrote `entry.file` (replacing whoever wrote it before).
    pub async fn record_applied(&self, entry: &AppliedFile) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO apply_inventory (manifests_dir, file, source, pipeline, content_hash, \
             applied_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (manifests_dir, file) DO UPDATE SET source = excluded.source, \
               pipeline = excluded.pipeline, content_hash = excluded.content_hash, \
               applied_at = excluded.applied_at",
        )
        .bind(&entry.manifests_dir)
        .bind(&entry.file)
        .bind(&entry.source)
        .bind(&entry.pipeline)
        .bind(&entry.content_hash)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(self.sql("recording what apply wrote"))?;
        Ok(())
    }

    /// Every file of `manifests_dir` that an apply of `source` wrote last, by file name.
    pub async fn applied_by(
        &self,
        source: &str,
        manifests_dir: &str,
    ) -> Result<Vec<AppliedFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT manifests_dir, file, source, pipeline, content_hash FROM apply_inventory \
             WHERE source = $1 AND manifests_dir = $2 ORDER BY file",
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
             WHERE manifests_dir = $1 AND file = $2",
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
        sqlx::query("DELETE FROM apply_inventory WHERE manifests_dir = $1 AND file = $2")
            .bind(manifests_dir)
            .bind(file)
            .execute(&self.pool)
            .await
            .map_err(self.sql("forgetting what apply wrote"))?;
        Ok(())
    }
}

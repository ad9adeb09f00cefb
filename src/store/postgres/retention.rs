//! History retention on PostgreSQL: which finished runs lie beyond their pipeline's policy and
//! their removal (rows in batches of one transaction each, then the log folders), with the same
//! never-pruned rules as `store/retention.rs` (read it for them), checked again by the deleting
//! transaction on the locked run rows.
//!
//! Vacuum: PostgreSQL's autovacuum gives dead rows' space back for reuse and truncates empty pages
//! at the end of a table on its own, so there is nothing to convert and nothing to run after a
//! prune: [`PgStore::auto_vacuum`] reports [`AutoVacuum::Incremental`] (no conversion needed),
//! [`PgStore::convert_to_incremental_vacuum`] does nothing, and a prune reports 0 bytes freed
//! (autovacuum frees them later, when it runs, in the server's own time).

use std::path::Path;

use sqlx::postgres::PgRow;
use time::OffsetDateTime;

use super::{Decoder, PgStore, ms};
use crate::spec::PipelineName;
use crate::store::retention::{AutoVacuum, Policies, PruneMode, SweepReport};
use crate::store::rows::Columns as _;
use crate::store::{RunId, StoreError};

impl PgStore {
    /// Finished runs beyond their pipeline's policy at `now`, oldest first, with their pipeline.
    pub async fn prunable_runs(
        &self,
        policies: &Policies,
        now: OffsetDateTime,
    ) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        let context = "selecting runs to prune";
        let names: Vec<&str> = policies.pipelines.keys().map(String::as_str).collect();
        let keep: Vec<i64> = policies
            .pipelines
            .values()
            .map(|p| i64::from(p.keep_runs))
            .collect();
        let cutoffs: Vec<Option<OffsetDateTime>> = policies
            .pipelines
            .values()
            .map(|p| cutoff(now, p.keep_for))
            .collect();
        // A policy's cutoff NULL (a duration past what a date can say) is no age limit; a pipeline
        // without a policy of its own takes the default's.
        let rows = sqlx::query(
            "WITH policy AS ( \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) \
                     AS p (pipeline, keep_runs, cutoff)), \
             ranked AS ( \
                 SELECT id, pipeline, phase, rounds, coalesce(finished_at, created_at) AS ended, \
                        row_number() OVER (PARTITION BY pipeline ORDER BY id DESC) AS newness \
                 FROM runs), \
             current AS ( \
                 SELECT max(c.id) AS id FROM runs AS c JOIN pipelines AS g \
                 ON g.name = c.pipeline AND g.generation = c.generation GROUP BY c.pipeline) \
             SELECT r.id, r.pipeline FROM ranked AS r LEFT JOIN policy AS p ON p.pipeline = r.pipeline \
             WHERE r.newness > 1 \
               AND r.phase IN ('Succeeded', 'Failed', 'Cancelled') \
               AND (r.newness > coalesce(p.keep_runs, $4) \
                    OR r.ended < CASE WHEN p.pipeline IS NULL THEN $5 ELSE p.cutoff END) \
               AND r.id NOT IN (SELECT id FROM current WHERE id IS NOT NULL) \
               AND EXISTS (SELECT 1 FROM outbox_rounds AS q WHERE q.run_id = r.id \
                           AND q.round = r.rounds) \
               AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.run_id = r.id \
                               AND o.sent_at IS NULL AND o.failed_at IS NULL) \
             ORDER BY r.id",
        )
        .bind(names)
        .bind(keep)
        .bind(cutoffs)
        .bind(i64::from(policies.default.keep_runs))
        .bind(cutoff(now, policies.default.keep_for))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        rows.iter().map(|row| self.run_and_pipeline(row)).collect()
    }

    /// `(id, pipeline)` of a selected run; a pipeline name that is not one is a damaged database.
    fn run_and_pipeline(&self, row: &PgRow) -> Result<(RunId, PipelineName), StoreError> {
        let row = Decoder { row, store: self };
        Ok((row.run_id("id")?, row.pipeline("pipeline")?))
    }

    /// Deletes the rows of `runs` that are still prunable, in one transaction (the candidates'
    /// rows locked first, so a resume racing the prune either waits or wins); returns those
    /// deleted with their pipeline.
    pub(in crate::store) async fn delete_runs(
        &self,
        runs: &[RunId],
    ) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        let context = "pruning runs";
        let ids: Vec<i64> = runs.iter().map(|r| r.get()).collect();
        let mut tx = self.begin(context).await?;
        let rows = sqlx::query(
            "SELECT r.id, r.pipeline FROM runs AS r WHERE r.id = ANY($1) \
               AND r.phase IN ('Succeeded', 'Failed', 'Cancelled') \
               AND EXISTS (SELECT 1 FROM runs AS n WHERE n.pipeline = r.pipeline AND n.id > r.id) \
               AND NOT EXISTS (SELECT 1 FROM pipelines AS g WHERE g.name = r.pipeline \
                   AND g.generation = r.generation \
                   AND NOT EXISTS (SELECT 1 FROM runs AS n WHERE n.pipeline = r.pipeline \
                                   AND n.generation = r.generation AND n.id > r.id)) \
               AND EXISTS (SELECT 1 FROM outbox_rounds AS q WHERE q.run_id = r.id \
                           AND q.round = r.rounds) \
               AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.run_id = r.id \
                               AND o.sent_at IS NULL AND o.failed_at IS NULL) \
             ORDER BY r.id FOR UPDATE OF r",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        let confirmed: Vec<(RunId, PipelineName)> = rows
            .iter()
            .map(|row| self.run_and_pipeline(row))
            .collect::<Result<_, _>>()?;
        let ids: Vec<i64> = confirmed.iter().map(|(r, _)| r.get()).collect();
        // Children before parents; `attempt_outputs` goes with its attempts (ON DELETE CASCADE).
        for statement in [
            "DELETE FROM attempts WHERE run_id = ANY($1)",
            "DELETE FROM jobs WHERE run_id = ANY($1)",
            "DELETE FROM events WHERE run_id = ANY($1)",
            "DELETE FROM outbox WHERE run_id = ANY($1)",
            "DELETE FROM outbox_rounds WHERE run_id = ANY($1)",
            "DELETE FROM runs WHERE id = ANY($1)",
        ] {
            sqlx::query(statement)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(self.sql(context))?;
        }
        tx.commit().await.map_err(self.sql(context))?;
        Ok(confirmed)
    }

    /// Finds the log folders left without their run and removes them, unless dry (see
    /// `store::retention::sweep`).
    pub async fn sweep_log_folders(
        &self,
        state_dir: &Path,
        mode: PruneMode,
    ) -> Result<SweepReport, StoreError> {
        let context = "finding log folders without a run";
        let rows = sqlx::query("SELECT min(id) AS id, pipeline FROM runs GROUP BY pipeline")
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql(context))?;
        let oldest = rows
            .iter()
            .map(|row| self.run_and_pipeline(row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::store::retention::sweep(state_dir, &oldest, mode))
    }

    /// Always [`AutoVacuum::Incremental`]: autovacuum reclaims space without a conversion (see
    /// the module's comment).
    pub async fn auto_vacuum(&self) -> Result<AutoVacuum, StoreError> {
        Ok(AutoVacuum::Incremental)
    }

    /// 0: autovacuum reuses the pages a prune frees (see the module's comment).
    pub async fn reclaim_space(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Nothing to do on PostgreSQL (see the module's comment).
    pub async fn convert_to_incremental_vacuum(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The end time before which a finished run is too old; `None` (no limit) when `keep_for`
/// reaches past what a date can say.
fn cutoff(now: OffsetDateTime, keep_for: std::time::Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(keep_for)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .filter(|at| at.year() >= 0)
        .map(ms)
}

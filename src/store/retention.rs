//! History retention in the store: which finished runs lie beyond their pipeline's policy, and
//! their removal, rows first (one transaction per batch, every table keyed by a run) and then
//! their log folders (`state_dir::run_log_dir`); then the freed pages go back to the file system
//! (incremental vacuum). What each pipeline's policy is (its manifest, the configuration) and when
//! to prune (the controller's once a minute, `executioner gc`) are the callers' to decide.
//!
//! Never pruned: a run that is not finished (a Running run, which includes a resume under way), a
//! pipeline's latest run, the latest run of the pipeline's current generation (the controller
//! decides by it whether the pipeline needs a run; a foreground run since is of generation 0), a
//! run whose end is not yet followed by the queuing of its notifications (no `outbox_rounds` row
//! for its last round: its process is in between, or died there and the next start queues them),
//! and a run whose notifications still wait in the outbox. Each deleting transaction checks these
//! again, so a run resumed after it was selected is kept. A log folder that cannot be removed is
//! reported, not an error: its rows are already gone. Pipeline names are read back as
//! [`PipelineName`]s, so a damaged row is an error, never a path outside `logs/`.
//!
//! A log folder whose rows are gone but which is still there (the process died between the
//! commit and the removal) is found by [`Store::sweep_log_folders`]: a run folder of a pipeline
//! numbered below that pipeline's oldest run left (ids only grow, so no run can still come for it).
//!
//! Vacuum, and the way there for every database: one created by this version has
//! `auto_vacuum = INCREMENTAL` (`open` sets it on a new, empty file, before WAL mode and the
//! first table), and each prune ends with `PRAGMA incremental_vacuum`, which truncates the file by the
//! pages it freed. One created before has `auto_vacuum = NONE`, which only a full `VACUUM` can
//! change: until then SQLite reuses the freed pages, so the file stops growing at its high-water
//! mark, and [`Store::convert_to_incremental_vacuum`] rewrites it once (`executioner gc` calls it
//! when no run is running, since the rewrite holds the write lock for its whole length). No
//! migration script does it: a script runs inside a transaction, and VACUUM cannot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{RunId, StoreError, sqlite::Decoder, sqlite::SqliteStore, timestamp};
use crate::spec::PipelineName;

/// Runs deleted per transaction: short enough that the engine's writes, waiting on the same lock,
/// are held up for milliseconds, not seconds.
const BATCH: usize = 200;

/// How much history one pipeline keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest runs kept (the latest is kept even at 0).
    pub keep_runs: u32,
    /// Finished runs that ended longer ago are pruned, even among the newest `keep_runs`.
    pub keep_for: std::time::Duration,
}

/// Every pipeline's policy: its own, or the default (which also covers pipelines not listed,
/// such as those whose manifest was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    pub default: RetentionPolicy,
    pub pipelines: BTreeMap<String, RetentionPolicy>,
}

/// Whether a prune deletes or only says what it would delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    DryRun,
    Delete,
}

/// One run pruned (or that a dry run would prune).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedRun {
    pub pipeline: PipelineName,
    pub run: RunId,
    /// The size of the files in its log folder.
    pub log_bytes: u64,
}

/// What a prune did.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Oldest first.
    pub runs: Vec<PrunedRun>,
    /// Log folders of pruned runs that could not be removed, with why.
    pub leftovers: Vec<(PathBuf, std::io::Error)>,
    /// Bytes the database file gave back (incremental vacuum); 0 for a dry run.
    pub db_bytes_freed: u64,
}

/// What a sweep of the log folders found (or, dry, would remove).
#[derive(Debug, Default)]
pub struct SweepReport {
    /// Run folders with no run, with the size of their files; by pipeline, then run.
    pub folders: Vec<(PathBuf, u64)>,
    /// Those of them that could not be removed, with why.
    pub leftovers: Vec<(PathBuf, std::io::Error)>,
}

/// The database's `auto_vacuum` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoVacuum {
    /// Freed pages stay in the file for reuse (a database made before retention existed).
    None,
    Full,
    Incremental,
}

impl SqliteStore {
    /// Finished runs beyond their pipeline's policy at `now`, oldest first, with their pipeline.
    pub async fn prunable_runs(
        &self,
        policies: &Policies,
        now: OffsetDateTime,
    ) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        let context = "selecting runs to prune";
        // The newest run of each pipeline has newness 1; a run is beyond the policy when it is
        // past the newest `keep_runs` or ended before the cutoff.
        let rows = sqlx::query(
            "WITH policy (pipeline, keep_runs, cutoff) AS ( \
                 SELECT p.value ->> 0, p.value ->> 1, p.value ->> 2 FROM json_each(?1) AS p), \
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
               AND (r.newness > coalesce(p.keep_runs, ?2) OR r.ended < coalesce(p.cutoff, ?3)) \
               AND r.id NOT IN (SELECT id FROM current) \
               AND EXISTS (SELECT 1 FROM outbox_rounds AS q WHERE q.run_id = r.id \
                           AND q.round = r.rounds) \
               AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.run_id = r.id \
                               AND o.sent_at IS NULL AND o.failed_at IS NULL) \
             ORDER BY r.id",
        )
        .bind(policies_json(policies, now))
        .bind(i64::from(policies.default.keep_runs))
        .bind(cutoff(now, policies.default.keep_for))
        .fetch_all(&self.pool)
        .await
        .map_err(self.sql(context))?;
        rows.iter().map(|row| self.run_and_pipeline(row)).collect()
    }

    /// `(id, pipeline)` of a selected run; a pipeline name that is not one is a damaged database.
    fn run_and_pipeline(
        &self,
        row: &sqlx::sqlite::SqliteRow,
    ) -> Result<(RunId, PipelineName), StoreError> {
        let row = Decoder { row, store: self };
        Ok((row.get("id")?, row.get("pipeline")?))
    }

    /// Deletes the rows of `runs` that are still prunable (finished, not their pipeline's latest
    /// nor its current generation's, notifications queued and none waiting), in one transaction;
    /// returns those deleted with their pipeline.
    pub(super) async fn delete_runs(
        &self,
        runs: &[RunId],
    ) -> Result<Vec<(RunId, PipelineName)>, StoreError> {
        let ids: Vec<i64> = runs.iter().map(|r| r.get()).collect();
        let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned());
        let path = self.path.clone();
        self.write_blocking("pruning runs", move |tx| {
            // Checked again in the transaction that deletes: since the selection, a run may have
            // been resumed, or its pipeline given a new generation (whose newest run this is).
            let mut select = tx.prepare_cached(
                "SELECT r.id, r.pipeline FROM runs AS r JOIN json_each(?1) AS c ON r.id = c.value \
                 WHERE r.phase IN ('Succeeded', 'Failed', 'Cancelled') \
                   AND EXISTS (SELECT 1 FROM runs AS n WHERE n.pipeline = r.pipeline AND n.id > r.id) \
                   AND NOT EXISTS (SELECT 1 FROM pipelines AS g WHERE g.name = r.pipeline \
                       AND g.generation = r.generation \
                       AND NOT EXISTS (SELECT 1 FROM runs AS n WHERE n.pipeline = r.pipeline \
                                       AND n.generation = r.generation AND n.id > r.id)) \
                   AND EXISTS (SELECT 1 FROM outbox_rounds AS q WHERE q.run_id = r.id \
                               AND q.round = r.rounds) \
                   AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.run_id = r.id \
                                   AND o.sent_at IS NULL AND o.failed_at IS NULL) \
                 ORDER BY r.id",
            )?;
            let rows: Vec<(i64, String)> = select
                .query_map([&ids], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut confirmed = Vec::with_capacity(rows.len());
            for (run, pipeline) in rows {
                match PipelineName::parse(&pipeline) {
                    Ok(name) => confirmed.push((RunId::from(run), name)),
                    Err(err) => {
                        return Ok(Err(StoreError::Corrupt {
                            path: path.to_path_buf(),
                            detail: format!("column pipeline: {err}"),
                        }));
                    }
                }
            }
            let ids: Vec<i64> = confirmed.iter().map(|(r, _)| r.get()).collect();
            let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned());
            // Children before parents (foreign keys are on). Every table with a run id: runs,
            // jobs, attempts, events, outbox, outbox_rounds (see `migrations`).
            for statement in [
                "DELETE FROM attempts WHERE run_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM jobs WHERE run_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM events WHERE run_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM outbox WHERE run_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM outbox_rounds WHERE run_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?1))",
            ] {
                tx.prepare_cached(statement)?.execute([&ids])?;
            }
            Ok(Ok(confirmed))
        })
        .await
    }

    /// Finds the log folders left without their run (a prune whose process died between the
    /// commit and the removal) and removes them, unless dry (see [`sweep`]).
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
        Ok(sweep(state_dir, &oldest, mode))
    }

    /// The database's `auto_vacuum` mode.
    pub async fn auto_vacuum(&self) -> Result<AutoVacuum, StoreError> {
        // Read on the writer: a connection answers from what it read of the file header at its
        // last transaction, and an idle reader may predate a conversion.
        let mode: i64 = self
            .direct
            .run("reading the vacuum mode", |conn| {
                conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            })
            .await?;
        match mode {
            0 => Ok(AutoVacuum::None),
            1 => Ok(AutoVacuum::Full),
            2 => Ok(AutoVacuum::Incremental),
            other => Err(StoreError::Corrupt {
                path: self.path.to_path_buf(),
                detail: format!("unknown auto_vacuum mode {other}"),
            }),
        }
    }

    /// Rewrites the whole database once so that it has `auto_vacuum = INCREMENTAL` (a database
    /// created before retention existed). Holds the write lock for as long as the rewrite takes:
    /// call it when nothing else is writing.
    pub async fn convert_to_incremental_vacuum(&self) -> Result<(), StoreError> {
        self.direct
            .run_blocking("converting the database to incremental vacuum", |conn| {
                // The new mode is only noted by the pragma; the VACUUM applies it.
                conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            })
            .await
    }

    /// Gives the free pages back to the file system, when the database allows it; returns how
    /// many bytes that was. (With `auto_vacuum = NONE` the pages stay free for reuse.)
    pub async fn reclaim_space(&self) -> Result<u64, StoreError> {
        if self.auto_vacuum().await? != AutoVacuum::Incremental {
            return Ok(0);
        }
        let freed = self
            .direct
            .run_blocking("vacuuming the database", |conn| {
                let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
                let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
                // Each step of the pragma is a row; running it to the end frees every page.
                let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
                let mut steps = vacuum.query([])?;
                while steps.next()?.is_some() {}
                // The file shrinks when the WAL is copied back into it; a passive checkpoint
                // waits for nobody (what readers still use is copied by a later one).
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                Ok(free.saturating_mul(page_size))
            })
            .await?;
        Ok(u64::try_from(freed).unwrap_or(0))
    }
}

/// `[[pipeline, keep_runs, cutoff], ...]` for the selection query.
fn policies_json(policies: &Policies, now: OffsetDateTime) -> String {
    let rows: Vec<(&str, i64, String)> = policies
        .pipelines
        .iter()
        .map(|(name, p)| {
            let cutoff = cutoff(now, p.keep_for);
            (name.as_str(), i64::from(p.keep_runs), cutoff)
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_else(|_| "[]".to_owned())
}

/// The end time before which a finished run is too old, as stored; the empty string (before
/// every time) when `keep_for` reaches past what a date can say.
fn cutoff(now: OffsetDateTime, keep_for: std::time::Duration) -> String {
    time::Duration::try_from(keep_for)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .filter(|at| at.year() >= 0)
        .map(timestamp)
        .unwrap_or_default()
}

impl super::Store {
    /// Prunes the history beyond `policies` at `now`: the rows of each selected run, in batches of
    /// one transaction each, then its log folder under `state_dir`; then the freed pages of the
    /// database. A dry run reads only.
    pub async fn prune_history(
        &self,
        state_dir: &Path,
        policies: &Policies,
        now: OffsetDateTime,
        mode: PruneMode,
    ) -> Result<PruneReport, StoreError> {
        let selected = self.prunable_runs(policies, now).await?;
        let mut report = PruneReport::default();
        if mode == PruneMode::DryRun {
            for (run, pipeline) in selected {
                let dir = crate::state_dir::run_log_dir(state_dir, pipeline.as_str(), run);
                report.runs.push(PrunedRun {
                    log_bytes: tree_size(&dir),
                    pipeline,
                    run,
                });
            }
            return Ok(report);
        }
        for batch in selected.chunks(BATCH) {
            let ids: Vec<RunId> = batch.iter().map(|(run, _)| *run).collect();
            // Rows first: a run without rows is gone for every reader, and a folder left behind
            // by a failed removal is only disk space.
            for (run, pipeline) in self.delete_runs(&ids).await? {
                let dir = crate::state_dir::run_log_dir(state_dir, pipeline.as_str(), run);
                let log_bytes = tree_size(&dir);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => report.leftovers.push((dir, e)),
                }
                report.runs.push(PrunedRun {
                    pipeline,
                    run,
                    log_bytes,
                });
            }
        }
        if !report.runs.is_empty() {
            report.db_bytes_freed = self.reclaim_space().await?;
        }
        Ok(report)
    }
}

/// The log folders left without their run, removed unless dry: under `STATE/logs/PIPELINE/`,
/// each folder named by a run id below the pipeline's oldest run left (`oldest`, per pipeline).
/// Anything else there (a newer number, another name, a symlink) is not ours to judge and stays.
pub(super) fn sweep(
    state_dir: &Path,
    oldest: &[(RunId, PipelineName)],
    mode: PruneMode,
) -> SweepReport {
    let mut report = SweepReport::default();
    for (oldest, pipeline) in oldest {
        let dir = state_dir.join("logs").join(pipeline.as_str());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut orphans: Vec<(i64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let id: i64 = name.parse().ok()?;
                // Only the name a run's folder has (`007` is not run 7's).
                (id < oldest.get() && name == id.to_string()).then(|| (id, e.path()))
            })
            .collect();
        orphans.sort_unstable();
        for (_, path) in orphans {
            let bytes = tree_size(&path);
            if mode == PruneMode::Delete {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        report.leftovers.push((path, e));
                        continue;
                    }
                }
            }
            report.folders.push((path, bytes));
        }
    }
    report
}

/// The total size of the files under `dir` (symlinks not followed); 0 when it is missing.
pub(super) fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            Ok(_) | Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    use super::*;
    use crate::status::RunPhase;
    use crate::store::Durability;
    use crate::store::test_bodies::run;

    async fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        (tmp, store)
    }

    #[tokio::test]
    async fn a_new_database_vacuums_incrementally() {
        let (_tmp, store) = store().await;
        assert_eq!(store.auto_vacuum().await.unwrap(), AutoVacuum::Incremental);
    }

    /// A database made before retention (auto_vacuum NONE) is converted once, keeping its rows.
    #[tokio::test]
    async fn an_old_database_is_converted_once() {
        use sqlx::{ConnectOptions, Connection};
        let tmp = tempfile::tempdir().unwrap();
        let path = crate::state_dir::db_path(tmp.path());
        {
            let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
            run(&store, "a", RunPhase::Succeeded).await;
            store.close().await;
        }
        // Back to NONE, as every database written before.
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql("PRAGMA auto_vacuum = NONE; VACUUM;")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();

        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        assert_eq!(store.auto_vacuum().await.unwrap(), AutoVacuum::None);
        store.convert_to_incremental_vacuum().await.unwrap();
        assert_eq!(store.auto_vacuum().await.unwrap(), AutoVacuum::Incremental);
        assert!(store.run(RunId::from(1)).await.unwrap().is_some());
    }
}

//! History retention in the store: which finished runs lie beyond their pipeline's policy, and
//! their removal, rows first (one transaction per batch, every table keyed by a run) and then
//! their log folders (`state_dir::run_log_dir`); then the freed pages go back to the file system
//! (incremental vacuum). What each pipeline's policy is (its manifest, the configuration) and when
//! to prune (the controller's once a minute, `executioner gc`) are the callers' to decide.
//!
//! Never pruned: a run that is not finished (a Running run, which includes a resume under way), a
//! pipeline's latest run, and a run whose notifications still wait in the outbox. Each deleting
//! transaction checks these again, so a run resumed after it was selected is kept. A log folder
//! that cannot be removed is reported, not an error: its rows are already gone.
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

use sqlx::Row;
use time::OffsetDateTime;

use super::{RunId, Store, StoreError, timestamp};

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
    pub pipeline: String,
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

/// The database's `auto_vacuum` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoVacuum {
    /// Freed pages stay in the file for reuse (a database made before retention existed).
    None,
    Full,
    Incremental,
}

impl Store {
    /// Finished runs beyond their pipeline's policy at `now`, oldest first, with their pipeline.
    pub async fn prunable_runs(
        &self,
        policies: &Policies,
        now: OffsetDateTime,
    ) -> Result<Vec<(RunId, String)>, StoreError> {
        let context = "selecting runs to prune";
        // The newest run of each pipeline has newness 1; a run is beyond the policy when it is
        // past the newest `keep_runs` or ended before the cutoff.
        let rows = sqlx::query(
            "WITH policy (pipeline, keep_runs, cutoff) AS ( \
                 SELECT p.value ->> 0, p.value ->> 1, p.value ->> 2 FROM json_each(?1) AS p), \
             ranked AS ( \
                 SELECT id, pipeline, phase, coalesce(finished_at, created_at) AS ended, \
                        row_number() OVER (PARTITION BY pipeline ORDER BY id DESC) AS newness \
                 FROM runs) \
             SELECT r.id, r.pipeline FROM ranked AS r LEFT JOIN policy AS p ON p.pipeline = r.pipeline \
             WHERE r.newness > 1 \
               AND r.phase IN ('Succeeded', 'Failed', 'Cancelled') \
               AND (r.newness > coalesce(p.keep_runs, ?2) OR r.ended < coalesce(p.cutoff, ?3)) \
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
        rows.iter()
            .map(|row| {
                let id: RunId = row.try_get(0)?;
                let pipeline: String = row.try_get(1)?;
                Ok((id, pipeline))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.sql(context))
    }

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
                let dir = crate::state_dir::run_log_dir(state_dir, &pipeline, run);
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
                let dir = crate::state_dir::run_log_dir(state_dir, &pipeline, run);
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
            report.db_bytes_freed = self.incremental_vacuum().await?;
        }
        Ok(report)
    }

    /// Deletes the rows of `runs` that are still prunable (finished, not their pipeline's latest,
    /// no notification waiting), in one transaction; returns those deleted with their pipeline.
    async fn delete_runs(&self, runs: &[RunId]) -> Result<Vec<(RunId, String)>, StoreError> {
        let context = "pruning runs";
        let ids: Vec<i64> = runs.iter().map(|r| r.get()).collect();
        let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned());
        let mut writing = self.writing(context).await?;
        let mut tx = writing.begin(context).await?;
        // A newer run of the same pipeline stays: only this module deletes runs, and never a
        // pipeline's newest, so "not the latest" cannot change once true.
        let rows = sqlx::query(
            "SELECT r.id, r.pipeline FROM runs AS r JOIN json_each(?1) AS c ON r.id = c.value \
             WHERE r.phase IN ('Succeeded', 'Failed', 'Cancelled') \
               AND EXISTS (SELECT 1 FROM runs AS n WHERE n.pipeline = r.pipeline AND n.id > r.id) \
               AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.run_id = r.id \
                               AND o.sent_at IS NULL AND o.failed_at IS NULL) \
             ORDER BY r.id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(self.sql(context))?;
        let confirmed: Vec<(RunId, String)> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.sql(context))?;
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
            sqlx::query(statement)
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .map_err(self.sql(context))?;
        }
        tx.commit().await.map_err(self.sql(context))?;
        writing.release();
        Ok(confirmed)
    }

    /// The database's `auto_vacuum` mode.
    pub async fn auto_vacuum(&self) -> Result<AutoVacuum, StoreError> {
        let context = "reading the vacuum mode";
        // Read on the writer: a connection answers from what it read of the file header at its
        // last transaction, and an idle reader may predate a conversion.
        let mut writing = self.writing(context).await?;
        let mode: i64 = sqlx::query("PRAGMA auto_vacuum")
            .fetch_one(&mut writing.conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(self.sql(context))?;
        writing.release();
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
        let context = "converting the database to incremental vacuum";
        let mut writing = self.writing(context).await?;
        // The new mode is only noted by the pragma; the VACUUM applies it.
        sqlx::raw_sql("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .execute(&mut writing.conn)
            .await
            .map_err(self.sql(context))?;
        writing.release();
        Ok(())
    }

    /// Gives the free pages back to the file system, when the database allows it; returns how
    /// many bytes that was. (With `auto_vacuum = NONE` the pages stay free for reuse.)
    async fn incremental_vacuum(&self) -> Result<u64, StoreError> {
        let context = "vacuuming the database";
        if self.auto_vacuum().await? != AutoVacuum::Incremental {
            return Ok(0);
        }
        let mut writing = self.writing(context).await?;
        let pages = |row: sqlx::sqlite::SqliteRow| row.try_get::<i64, _>(0);
        let free: i64 = sqlx::query("PRAGMA freelist_count")
            .fetch_one(&mut writing.conn)
            .await
            .and_then(pages)
            .map_err(self.sql(context))?;
        let page_size: i64 = sqlx::query("PRAGMA page_size")
            .fetch_one(&mut writing.conn)
            .await
            .and_then(pages)
            .map_err(self.sql(context))?;
        sqlx::query("PRAGMA incremental_vacuum")
            .fetch_all(&mut writing.conn)
            .await
            .map_err(self.sql(context))?;
        // The file shrinks when the WAL is copied back into it; a passive checkpoint waits for
        // nobody (what readers still use is copied by a later one).
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_all(&mut writing.conn)
            .await
            .map_err(self.sql(context))?;
        writing.release();
        Ok(u64::try_from(free.saturating_mul(page_size)).unwrap_or(0))
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

/// The total size of the files under `dir` (symlinks not followed); 0 when it is missing.
fn tree_size(dir: &Path) -> u64 {
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
    use std::collections::BTreeMap;
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::status::{JobPhase, RunPhase};
    use crate::store::{Durability, NewJob, NewRun, Owner};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn keep(runs: u32, days: u64) -> RetentionPolicy {
        RetentionPolicy {
            keep_runs: runs,
            keep_for: DAY * u32::try_from(days).unwrap(),
        }
    }

    fn policies(default: RetentionPolicy, own: &[(&str, RetentionPolicy)]) -> Policies {
        Policies {
            default,
            pipelines: own
                .iter()
                .map(|(name, p)| ((*name).to_owned(), *p))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Durability::Normal).await.unwrap();
        (tmp, store)
    }

    /// A run of `pipeline` with one job; finished with `phase` unless that is Running.
    async fn run(store: &Store, pipeline: &str, phase: RunPhase) -> RunId {
        let owner = Owner {
            pid: std::process::id(),
            host: "test-host".into(),
            start_time: None,
        };
        let pipeline = crate::spec::PipelineName::parse(pipeline).unwrap();
        let a = crate::spec::JobId::parse("a").unwrap();
        let run = store
            .create_run(&NewRun {
                pipeline: &pipeline,
                generation: 1,
                spec_json: "{}",
                spec_hash: "h",
                jobs: &[NewJob {
                    id: &a,
                    log_path: "a.log",
                }],
                owner: &owner,
            })
            .await
            .unwrap();
        let attempt = store.attempt_started(run, &a, 1, 1, 1).await.unwrap();
        if phase == RunPhase::Running {
            return run;
        }
        let job = match phase {
            RunPhase::Succeeded => JobPhase::Succeeded,
            RunPhase::Cancelled => JobPhase::Cancelled,
            RunPhase::Failed | RunPhase::Pending | RunPhase::Running => JobPhase::Failed,
        };
        let end = crate::store::AttemptEnd {
            phase: job,
            reason: None,
            exit_code: Some(0),
            signal: None,
            user_time: Duration::ZERO,
            system_time: Duration::ZERO,
            max_rss_kib: 0,
            max_rss_upper_bound: false,
            message: None,
        };
        store
            .attempt_finished(attempt, &end, Some((job, None)))
            .await
            .unwrap();
        assert_eq!(store.close_run(run, &[]).await.unwrap().0, phase);
        run
    }

    fn ids(selected: &[(RunId, String)]) -> Vec<i64> {
        selected.iter().map(|(r, _)| r.get()).collect()
    }

    #[tokio::test]
    async fn beyond_keep_runs_per_pipeline_and_never_running_or_latest() {
        let (_tmp, store) = store().await;
        // a: 1..=5 finished, 6 running, 7 finished (latest). b: 8 running (latest and only).
        for _ in 0..5 {
            run(&store, "a", RunPhase::Succeeded).await;
        }
        run(&store, "a", RunPhase::Running).await;
        run(&store, "a", RunPhase::Failed).await;
        run(&store, "b", RunPhase::Running).await;
        let now = OffsetDateTime::now_utc();

        let p = policies(keep(2, 30), &[]);
        // Newest two of a are 7 and 6; 1..=5 are beyond; 6 is running anyway.
        assert_eq!(
            ids(&store.prunable_runs(&p, now).await.unwrap()),
            [1, 2, 3, 4, 5]
        );

        // keep_runs 0 still keeps the latest, and never the running one.
        let p = policies(keep(0, 30), &[]);
        assert_eq!(
            ids(&store.prunable_runs(&p, now).await.unwrap()),
            [1, 2, 3, 4, 5]
        );

        // A pipeline's own policy wins over the default.
        let p = policies(keep(100, 30), &[("a", keep(4, 30))]);
        assert_eq!(ids(&store.prunable_runs(&p, now).await.unwrap()), [1, 2, 3]);
        let p = policies(keep(1, 30), &[("a", keep(100, 30))]);
        assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn older_than_keep_for_even_among_the_newest() {
        let (_tmp, store) = store().await;
        for _ in 0..3 {
            run(&store, "a", RunPhase::Succeeded).await;
        }
        let now = OffsetDateTime::now_utc();
        let p = policies(keep(100, 7), &[]);
        assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
        // Eight days later, every finished run but the latest is too old.
        let later = now + time::Duration::days(8);
        assert_eq!(ids(&store.prunable_runs(&p, later).await.unwrap()), [1, 2]);
        // A duration past what a date can say is no age limit at all.
        let p = policies(
            RetentionPolicy {
                keep_runs: 100,
                keep_for: Duration::from_secs(u64::MAX),
            },
            &[],
        );
        assert!(store.prunable_runs(&p, later).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn waiting_notifications_keep_their_run() {
        let (_tmp, store) = store().await;
        let first = run(&store, "a", RunPhase::Failed).await;
        run(&store, "a", RunPhase::Succeeded).await;
        store
            .enqueue_notifications(
                first,
                1,
                &[crate::store::outbox::NewOutboxEntry {
                    channel: crate::store::outbox::OutboxChannel::Command,
                    scope: "pipeline",
                    target: "true",
                    payload: "{}",
                }],
            )
            .await
            .unwrap();
        let p = policies(keep(1, 30), &[]);
        let now = OffsetDateTime::now_utc();
        assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn pruning_deletes_every_row_of_the_run_and_its_log_folder() {
        let (tmp, store) = store().await;
        let old = run(&store, "a", RunPhase::Succeeded).await;
        let latest = run(&store, "a", RunPhase::Succeeded).await;
        for r in [old, latest] {
            let dir = crate::state_dir::run_log_dir(tmp.path(), "a", r);
            crate::state_dir::create_private_dir(&dir).unwrap();
            std::fs::write(dir.join("a.log"), b"0123456789").unwrap();
        }
        let p = policies(keep(1, 30), &[]);
        let now = OffsetDateTime::now_utc();

        let dry = store
            .prune_history(tmp.path(), &p, now, PruneMode::DryRun)
            .await
            .unwrap();
        assert_eq!(
            dry.runs,
            [PrunedRun {
                pipeline: "a".into(),
                run: old,
                log_bytes: 10
            }]
        );
        assert!(store.run(old).await.unwrap().is_some());
        assert!(crate::state_dir::run_log_dir(tmp.path(), "a", old).exists());

        let done = store
            .prune_history(tmp.path(), &p, now, PruneMode::Delete)
            .await
            .unwrap();
        assert_eq!(done.runs, dry.runs);
        assert!(done.leftovers.is_empty());
        assert!(store.run(old).await.unwrap().is_none());
        assert!(store.jobs(old).await.unwrap().is_empty());
        assert!(store.attempts(old).await.unwrap().is_empty());
        assert!(!crate::state_dir::run_log_dir(tmp.path(), "a", old).exists());
        assert!(store.run(latest).await.unwrap().is_some());
        assert!(crate::state_dir::run_log_dir(tmp.path(), "a", latest).exists());
        // Nothing left to do.
        let again = store
            .prune_history(tmp.path(), &p, now, PruneMode::Delete)
            .await
            .unwrap();
        assert!(again.runs.is_empty());
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

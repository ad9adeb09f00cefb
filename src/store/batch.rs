//! The engine's writes for one run, grouped: everything one turn of the run loop decided (attempt
//! ends, job phases, recorded pids, new attempts) is committed as one transaction on the direct
//! writer (group commit).
//!
//! Inside the transaction the order is fixed: ends, then job phases, then pids, then starts, so an
//! attempt that ends and the job's next attempt can share a batch.

use rusqlite::{Connection, params};

use super::sqlite::direct::Immediate;

use super::{
    AttemptEnd, AttemptId, RunId, StoreError, attempt_not_found, job_not_found, micros,
    saturating_i64, sqlite::SqliteStore, timestamp,
};
use crate::spec::JobId;
use crate::status::{JobPhase, JobReason};

/// Changes to one run, to be committed together by [`Store::commit`].
///
/// A job appears at most once among the ends and job phases of one batch (a job has one attempt
/// running at a time, and a job being skipped or cancelled has none).
#[derive(Debug, Default)]
pub struct Batch {
    pub(super) ends: Vec<EndRow>,
    pub(super) jobs: Vec<JobChange>,
    pub(super) spawned: Vec<SpawnedRow>,
    pub(super) starts: Vec<StartRow>,
    pub(super) outputs: Vec<super::outputs::OutputsRow>,
}

#[derive(Debug)]
pub(super) struct EndRow {
    pub(super) id: AttemptId,
    pub(super) phase: &'static str,
    pub(super) reason: Option<&'static str>,
    pub(super) exit_code: Option<i32>,
    pub(super) signal: Option<i32>,
    pub(super) user_time_us: i64,
    pub(super) system_time_us: i64,
    pub(super) max_rss_kib: i64,
    pub(super) max_rss_upper_bound: bool,
    pub(super) message: Option<String>,
    /// The job's new phase, when this attempt decides it (not for an attempt that will be retried).
    pub(super) job_phase: Option<&'static str>,
    pub(super) job_reason: Option<&'static str>,
    pub(super) terminal: bool,
}

#[derive(Debug)]
pub(super) struct JobChange {
    pub(super) job: JobId,
    pub(super) phase: &'static str,
    pub(super) reason: Option<&'static str>,
    pub(super) message: Option<String>,
    pub(super) starts: bool,
    pub(super) terminal: bool,
}

#[derive(Debug)]
pub(super) struct SpawnedRow {
    pub(super) id: AttemptId,
    pub(super) pid: i32,
    pub(super) pgid: i32,
    pub(super) start_time: Option<i64>,
}

#[derive(Debug)]
pub(super) struct StartRow {
    pub(super) job: JobId,
    pub(super) number: i64,
    pub(super) counted: i64,
    /// Queued for a worker with this placement (PostgreSQL only), else run by the caller.
    pub(super) queue: Option<std::sync::Arc<str>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
            && self.jobs.is_empty()
            && self.spawned.is_empty()
            && self.starts.is_empty()
            && self.outputs.is_empty()
    }

    /// How many attempts this batch starts.
    pub fn starts(&self) -> usize {
        self.starts.len()
    }

    /// The attempt's end and, when `job` is given, the job's new phase and reason with the
    /// attempt's exit code and message (`finished_at` set by a terminal phase, cleared by another).
    pub fn attempt_finished(
        &mut self,
        attempt: AttemptId,
        end: &AttemptEnd,
        job: Option<(JobPhase, Option<JobReason>)>,
    ) {
        self.ends.push(EndRow {
            id: attempt,
            phase: end.phase.as_str(),
            reason: end.reason.map(JobReason::as_str),
            exit_code: end.exit_code,
            signal: end.signal,
            user_time_us: micros(end.user_time),
            system_time_us: micros(end.system_time),
            max_rss_kib: saturating_i64(end.max_rss_kib),
            max_rss_upper_bound: end.max_rss_upper_bound,
            message: end.message.clone(),
            job_phase: job.map(|(phase, _)| phase.as_str()),
            job_reason: job.and_then(|(_, reason)| reason).map(JobReason::as_str),
            terminal: job.is_some_and(|(phase, _)| phase.is_terminal()),
        });
    }

    /// A succeeded attempt's outputs (already masked), stored after its end.
    pub fn attempt_outputs(
        &mut self,
        attempt: AttemptId,
        outputs: &crate::status::outputs::Outputs,
    ) {
        self.outputs
            .push(super::outputs::OutputsRow::new(attempt, outputs));
    }

    /// Sets a job's phase, reason and message. `started_at` is set on the first move to Running
    /// or Waiting; `finished_at` is set by a terminal phase and cleared by any other.
    pub fn set_job(
        &mut self,
        job: &JobId,
        phase: JobPhase,
        reason: Option<JobReason>,
        message: Option<&str>,
    ) {
        self.jobs.push(JobChange {
            // A shared text: no copy of the id per change.
            job: job.clone(),
            phase: phase.as_str(),
            reason: reason.map(JobReason::as_str),
            message: message.map(str::to_owned),
            starts: matches!(phase, JobPhase::Running | JobPhase::Waiting),
            terminal: phase.is_terminal(),
        });
    }

    /// The attempt's process exists: its pid, process group and start time (to recognise it, and
    /// not a reused pid, after a crash).
    pub fn attempt_spawned(
        &mut self,
        attempt: AttemptId,
        pid: i32,
        pgid: i32,
        start_time: Option<u64>,
    ) {
        self.spawned.push(SpawnedRow {
            id: attempt,
            pid,
            pgid,
            start_time: start_time.map(saturating_i64),
        });
    }

    /// Record-before-act: a new attempt (phase Running, no pid yet) of `job`, which becomes
    /// Running with `attempts = counted`. [`Store::commit`] returns the new attempts' ids in the
    /// order of these calls; nothing may be spawned for them before it has returned.
    pub fn attempt_started(&mut self, job: &JobId, number: i64, counted: i64) {
        self.starts.push(StartRow {
            job: job.clone(),
            number,
            counted,
            queue: None,
        });
    }

    /// As [`Batch::attempt_started`], and the attempt is queued in the same transaction for a
    /// worker whose labels contain `placement` (a JSON object), which is woken by a notification
    /// sent at commit. Only a PostgreSQL store has workers.
    pub fn attempt_queued(
        &mut self,
        job: &JobId,
        number: i64,
        counted: i64,
        placement: std::sync::Arc<str>,
    ) {
        self.starts.push(StartRow {
            job: job.clone(),
            number,
            counted,
            queue: Some(placement),
        });
    }
}

/// One statement per change; each reports how many rows it changed, so that a change that found
/// nothing can be told.
const END_SQL: &str = "UPDATE attempts SET phase = ?, reason = ?, exit_code = ?, signal = ?, \
    finished_at = ?, user_time_us = ?, system_time_us = ?, max_rss_kib = ?, \
    max_rss_upper_bound = ?, message = ? WHERE id = ?";
const END_JOB_SQL: &str = "UPDATE jobs SET phase = ?, reason = ?, exit_code = ?, message = ?, \
    finished_at = ? WHERE (run_id, job_id) = (SELECT run_id, job_id FROM attempts WHERE id = ?)";
const JOB_SQL: &str = "UPDATE jobs SET phase = ?, reason = ?, message = ?, \
    started_at = coalesce(started_at, ?), finished_at = ? WHERE run_id = ? AND job_id = ?";
const PID_SQL: &str = "UPDATE attempts SET pid = ?, pgid = ?, process_start_time = ? WHERE id = ?";
const START_JOB_SQL: &str = "UPDATE jobs SET phase = 'Running', reason = NULL, attempts = ?, \
    exit_code = NULL, message = NULL, started_at = coalesce(started_at, ?), finished_at = NULL \
    WHERE run_id = ? AND job_id = ?";
const START_SQL: &str = "INSERT INTO attempts (run_id, job_id, round, number, phase, started_at) \
    VALUES (?, ?, ?, ?, 'Running', ?)";

impl SqliteStore {
    /// Commits `batch` (changes to run `run`; new attempts belong to `round`) as one transaction
    /// and empties it. Returns the ids of the attempts it started, in the order they were added.
    ///
    /// The transaction runs on the direct writer (see `store/direct.rs`): inline when the write
    /// lock is free, which is the common case, else on the blocking pool. Its statements are few
    /// and constant, so they stay prepared.
    ///
    /// A change whose row does not exist is an error ([`StoreError::NotFound`]) reported after
    /// the commit; the rest of the batch is committed (as separate statements would have been).
    pub async fn commit(
        &self,
        run: RunId,
        round: i64,
        batch: &mut Batch,
    ) -> Result<Vec<AttemptId>, StoreError> {
        let batch = std::mem::take(batch);
        let now = timestamp(time::OffsetDateTime::now_utc());
        self.direct
            .run("recording the run's progress", move |conn| {
                apply(conn, run, round, &batch, &now)
            })
            .await?
    }
}

/// Runs `batch` in one transaction: ends, then job phases, then pids, then starts. Returns the
/// new attempts' ids, or the first change that found no row (after committing the rest).
fn apply(
    conn: &Connection,
    run: RunId,
    round: i64,
    batch: &Batch,
    now: &str,
) -> rusqlite::Result<Result<Vec<AttemptId>, StoreError>> {
    let tx = Immediate::begin(conn)?;
    let mut missing_end = None;
    for end in &batch.ends {
        let changed = tx.prepare_cached(END_SQL)?.execute(params![
            end.phase,
            end.reason,
            end.exit_code,
            end.signal,
            now,
            end.user_time_us,
            end.system_time_us,
            end.max_rss_kib,
            end.max_rss_upper_bound,
            end.message,
            end.id.get(),
        ])?;
        if changed == 0 {
            missing_end.get_or_insert(end.id);
            continue;
        }
        if let Some(phase) = end.job_phase {
            tx.prepare_cached(END_JOB_SQL)?.execute(params![
                phase,
                end.job_reason,
                end.exit_code,
                end.message,
                end.terminal.then_some(now),
                end.id.get(),
            ])?;
        }
    }
    super::outputs::insert(&tx, &batch.outputs)?;
    let mut missing_job = None;
    for change in &batch.jobs {
        let changed = tx.prepare_cached(JOB_SQL)?.execute(params![
            change.phase,
            change.reason,
            change.message,
            change.starts.then_some(now),
            change.terminal.then_some(now),
            run.get(),
            change.job.as_str(),
        ])?;
        if changed == 0 {
            missing_job.get_or_insert(change.job.as_str());
        }
    }
    let mut missing_pid = None;
    for row in &batch.spawned {
        let changed = tx.prepare_cached(PID_SQL)?.execute(params![
            row.pid,
            row.pgid,
            row.start_time,
            row.id.get(),
        ])?;
        if changed == 0 {
            missing_pid.get_or_insert(row.id);
        }
    }
    let mut missing_start = None;
    let mut started = Vec::with_capacity(batch.starts.len());
    for start in &batch.starts {
        let changed = tx.prepare_cached(START_JOB_SQL)?.execute(params![
            start.counted,
            now,
            run.get(),
            start.job.as_str(),
        ])?;
        if changed == 0 {
            missing_start.get_or_insert(start.job.as_str());
            continue;
        }
        tx.prepare_cached(START_SQL)?.execute(params![
            run.get(),
            start.job.as_str(),
            round,
            start.number,
            now,
        ])?;
        started.push(AttemptId::from(tx.last_insert_rowid()));
    }
    tx.commit()?;

    let missing = missing_end
        .map(attempt_not_found)
        .or_else(|| missing_pid.map(attempt_not_found))
        .or_else(|| missing_job.map(|job| job_not_found(run, job)))
        .or_else(|| missing_start.map(|job| job_not_found(run, job)));
    Ok(match missing {
        Some(error) => Err(error),
        None => Ok(started),
    })
}

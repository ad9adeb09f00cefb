//! The engine's writes for one run, grouped: everything one turn of the run loop decided (attempt
//! ends, job phases, recorded pids, new attempts) is committed as one transaction, in one round
//! trip to the writer connection (group commit).
//!
//! Inside the transaction the order is fixed: ends, then job phases, then pids, then starts, so an
//! attempt that ends and the job's next attempt can share a batch.

use super::{
    AttemptEnd, AttemptId, RunId, Store, StoreError, attempt_not_found, job_not_found, micros,
    saturating_i64, timestamp,
};
use crate::status::{JobPhase, Reason};

/// Changes to one run, to be committed together by [`Store::commit`].
///
/// A job appears at most once among the ends and job phases of one batch (a job has one attempt
/// running at a time, and a job being skipped or cancelled has none).
#[derive(Debug, Default)]
pub struct Batch {
    ends: Vec<EndRow>,
    jobs: Vec<JobChange>,
    spawned: Vec<SpawnedRow>,
    starts: Vec<StartRow>,
}

#[derive(Debug)]
struct EndRow {
    id: AttemptId,
    phase: &'static str,
    reason: Option<&'static str>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    user_time_us: i64,
    system_time_us: i64,
    max_rss_kib: i64,
    message: Option<String>,
    /// The job's new phase, when this attempt decides it (not for an attempt that will be retried).
    job_phase: Option<&'static str>,
    job_reason: Option<&'static str>,
    terminal: bool,
}

#[derive(Debug)]
struct JobChange {
    job: String,
    phase: &'static str,
    reason: Option<&'static str>,
    message: Option<String>,
    starts: bool,
    terminal: bool,
}

#[derive(Debug)]
struct SpawnedRow {
    id: AttemptId,
    pid: i32,
    pgid: i32,
    start_time: Option<i64>,
}

#[derive(Debug)]
struct StartRow {
    job: String,
    number: i64,
    counted: i64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
            && self.jobs.is_empty()
            && self.spawned.is_empty()
            && self.starts.is_empty()
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
        job: Option<(JobPhase, Option<Reason>)>,
    ) {
        self.ends.push(EndRow {
            id: attempt,
            phase: end.phase.as_str(),
            reason: end.reason.map(Reason::as_str),
            exit_code: end.exit_code,
            signal: end.signal,
            user_time_us: micros(end.user_time),
            system_time_us: micros(end.system_time),
            max_rss_kib: saturating_i64(end.max_rss_kib),
            message: end.message.clone(),
            job_phase: job.map(|(phase, _)| phase.as_str()),
            job_reason: job.and_then(|(_, reason)| reason).map(Reason::as_str),
            terminal: job.is_some_and(|(phase, _)| phase.is_terminal()),
        });
    }

    /// Sets a job's phase, reason and message. `started_at` is set on the first move to Running
    /// or Waiting; `finished_at` is set by a terminal phase and cleared by any other.
    pub fn set_job(
        &mut self,
        job: &str,
        phase: JobPhase,
        reason: Option<Reason>,
        message: Option<&str>,
    ) {
        self.jobs.push(JobChange {
            job: job.to_owned(),
            phase: phase.as_str(),
            reason: reason.map(Reason::as_str),
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
    pub fn attempt_started(&mut self, job: &str, number: i64, counted: i64) {
        self.starts.push(StartRow {
            job: job.to_owned(),
            number,
            counted,
        });
    }
}

/// One statement per change, with positional parameters bound in order (sqlx hands each
/// statement of a script the next ones). Each returns a tagged row per row it changed, so that a
/// change that found nothing can be told.
const END_SQL: &str = "UPDATE attempts SET phase = ?, reason = ?, exit_code = ?, signal = ?, \
    finished_at = ?, user_time_us = ?, system_time_us = ?, max_rss_kib = ?, message = ? \
    WHERE id = ? RETURNING 'end', id, NULL;";
const END_JOB_SQL: &str = "UPDATE jobs SET phase = ?, reason = ?, exit_code = ?, message = ?, \
    finished_at = ? WHERE (run_id, job_id) = (SELECT run_id, job_id FROM attempts WHERE id = ?);";
const JOB_SQL: &str = "UPDATE jobs SET phase = ?, reason = ?, message = ?, \
    started_at = coalesce(started_at, ?), finished_at = ? WHERE run_id = ? AND job_id = ? \
    RETURNING 'job', NULL, job_id;";
const PID_SQL: &str = "UPDATE attempts SET pid = ?, pgid = ?, process_start_time = ? WHERE id = ? \
    RETURNING 'pid', id, NULL;";
/// The INSERT runs only when the UPDATE found the job.
const START_SQL: &str = "UPDATE jobs SET phase = 'Running', reason = NULL, attempts = ?, \
    exit_code = NULL, message = NULL, started_at = coalesce(started_at, ?), finished_at = NULL \
    WHERE run_id = ? AND job_id = ?; \
    INSERT INTO attempts (run_id, job_id, round, number, phase, started_at) \
    SELECT ?, ?, ?, ?, 'Running', ? WHERE changes() = 1 RETURNING 'start', id, job_id;";

impl Store {
    /// Commits `batch` (changes to run `run`; new attempts belong to `round`) as one transaction
    /// and empties it. Returns the ids of the attempts it started, in the order they were added.
    ///
    /// The batch becomes one script, `BEGIN IMMEDIATE`, ends, job phases, pids, starts, `COMMIT`,
    /// sent in one round trip. Its text depends only on how many changes of each kind it holds, so
    /// the common shapes stay prepared in sqlx's statement cache.
    ///
    /// A change whose row does not exist is an error ([`StoreError::NotFound`]) reported after
    /// the commit; the rest of the batch is committed (as separate statements would have been).
    pub async fn commit(
        &self,
        run: RunId,
        round: i64,
        batch: &mut Batch,
    ) -> Result<Vec<AttemptId>, StoreError> {
        let context = "recording the run's progress";
        let batch = std::mem::take(batch);
        let now = timestamp(time::OffsetDateTime::now_utc());
        let mut sql = String::from("BEGIN IMMEDIATE; ");
        for end in &batch.ends {
            sql.push_str(END_SQL);
            if end.job_phase.is_some() {
                sql.push_str(END_JOB_SQL);
            }
        }
        for _ in &batch.jobs {
            sql.push_str(JOB_SQL);
        }
        for _ in &batch.spawned {
            sql.push_str(PID_SQL);
        }
        for _ in &batch.starts {
            sql.push_str(START_SQL);
        }
        sql.push_str(" COMMIT;");

        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for end in &batch.ends {
            query = query
                .bind(end.phase)
                .bind(end.reason)
                .bind(end.exit_code)
                .bind(end.signal)
                .bind(now.clone())
                .bind(end.user_time_us)
                .bind(end.system_time_us)
                .bind(end.max_rss_kib)
                .bind(end.message.clone())
                .bind(end.id);
            if let Some(phase) = end.job_phase {
                query = query
                    .bind(phase)
                    .bind(end.job_reason)
                    .bind(end.exit_code)
                    .bind(end.message.clone())
                    .bind(end.terminal.then(|| now.clone()))
                    .bind(end.id);
            }
        }
        for change in &batch.jobs {
            query = query
                .bind(change.phase)
                .bind(change.reason)
                .bind(change.message.clone())
                .bind(change.starts.then(|| now.clone()))
                .bind(change.terminal.then(|| now.clone()))
                .bind(run)
                .bind(change.job.clone());
        }
        for row in &batch.spawned {
            query = query
                .bind(row.pid)
                .bind(row.pgid)
                .bind(row.start_time)
                .bind(row.id);
        }
        for start in &batch.starts {
            query = query
                .bind(start.counted)
                .bind(now.clone())
                .bind(run)
                .bind(start.job.clone())
                .bind(run)
                .bind(start.job.clone())
                .bind(round)
                .bind(start.number)
                .bind(now.clone());
        }
        let rows = self.write_script(query, context).await?;

        let mut ended = std::collections::HashSet::new();
        let mut spawned = std::collections::HashSet::new();
        let mut jobs = std::collections::HashSet::new();
        let mut started = std::collections::HashMap::new();
        for row in &rows {
            use sqlx::Row;
            let tag: String = row.try_get(0).map_err(self.sql(context))?;
            let id: Option<AttemptId> = row.try_get(1).map_err(self.sql(context))?;
            let job: Option<String> = row.try_get(2).map_err(self.sql(context))?;
            match (tag.as_str(), id, job) {
                ("end", Some(id), _) => {
                    ended.insert(id);
                }
                ("pid", Some(id), _) => {
                    spawned.insert(id);
                }
                ("job", _, Some(job)) => {
                    jobs.insert(job);
                }
                ("start", Some(id), Some(job)) => {
                    started.insert(job, id);
                }
                _ => {}
            }
        }
        if let Some(end) = batch.ends.iter().find(|end| !ended.contains(&end.id)) {
            return Err(attempt_not_found(end.id));
        }
        if let Some(row) = batch.spawned.iter().find(|row| !spawned.contains(&row.id)) {
            return Err(attempt_not_found(row.id));
        }
        if let Some(change) = batch.jobs.iter().find(|change| !jobs.contains(&change.job)) {
            return Err(job_not_found(run, &change.job));
        }
        batch
            .starts
            .iter()
            .map(|start| {
                started
                    .get(&start.job)
                    .copied()
                    .ok_or_else(|| job_not_found(run, &start.job))
            })
            .collect()
    }
}

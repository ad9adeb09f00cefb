//! The `-o json` objects of runs, jobs and attempts (DESIGN section 3: camelCase fields,
//! PascalCase phases), as typed values shared by the CLI (which prints them) and the HTTP API
//! (which serves them and describes them in its OpenAPI document). Owns what is derived from the
//! stored rows for display, never stored: a job's attempt count (every attempt of the run, all
//! rounds), its signal (its last attempt's), each round's span (from its attempts), a run's
//! duration (the sum of its rounds' spans), and `Interrupted` for a run still recorded Running
//! whose executioner is gone. Not the tables and text lines (`cli::render`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::status::outputs::Outputs;
use crate::status::{RunPhase, format_time};
use crate::store::{AttemptRow, JobRow, RunId, RunRow};

/// The phase a run is shown with: `Interrupted` for one recorded Running whose owning process is
/// gone (killed, or stopped by a full disk), which only `resume` continues. Display only: the
/// store keeps it Running, as `resume` expects.
pub fn shown_phase(run: &RunRow) -> &'static str {
    match run.phase {
        RunPhase::Running if !crate::engine::resume::owner_alive(run) => "Interrupted",
        phase => phase.as_str(),
    }
}

/// One round of a run: from its first attempt's start to its last attempt's end (`None` while an
/// attempt of it has not ended, or when it had no attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSpan {
    pub round: i64,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

/// The span of each round `1..=run.rounds`, from the run's attempts.
pub fn round_spans(run: &RunRow, attempts: &[AttemptRow]) -> Vec<RoundSpan> {
    (1..=run.rounds.max(1))
        .map(|round| {
            let of_round: Vec<&AttemptRow> = attempts.iter().filter(|a| a.round == round).collect();
            let started_at = of_round.iter().map(|a| a.started_at).min();
            let open = of_round.iter().any(|a| a.finished_at.is_none());
            let finished_at = if open {
                None
            } else {
                of_round.iter().filter_map(|a| a.finished_at).max()
            };
            RoundSpan {
                round,
                started_at,
                finished_at,
            }
        })
        .collect()
}

/// The time a run worked: the sum of its rounds' spans; `None` while a round is still open.
pub fn run_duration(spans: &[RoundSpan]) -> Option<time::Duration> {
    let mut total = time::Duration::ZERO;
    for span in spans {
        match (span.started_at, span.finished_at) {
            (Some(s), Some(e)) => total += e - s,
            (Some(_), None) => return None,
            (None, _) => {}
        }
    }
    Some(total)
}

/// One round of `roundList`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoundView {
    pub round: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A run without its jobs (`runs -o json`, `GET /api/v1/runs`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    #[schema(value_type = i64)]
    pub id: RunId,
    pub pipeline: String,
    pub generation: i64,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Cancelled` or `Interrupted`.
    pub phase: &'static str,
    pub reason: Option<&'static str>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub rounds: i64,
    pub round_list: Vec<RoundView>,
}

/// One attempt of a job's `attemptList`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub attempt: i64,
    pub round: i64,
    pub phase: &'static str,
    pub reason: Option<&'static str>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub max_rss_bytes: Option<i64>,
    pub max_rss_upper_bound: bool,
    /// The worker that ran it (always null on one machine).
    #[schema(value_type = Option<String>)]
    pub worker: Option<()>,
}

/// A job of a run, with its attempts and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub phase: &'static str,
    pub reason: Option<&'static str>,
    /// Every attempt of the job in the run, all rounds.
    pub attempts: usize,
    pub exit_code: Option<i64>,
    /// Its last attempt's.
    pub signal: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The job's log file.
    #[schema(value_type = String)]
    pub log: PathBuf,
    pub attempt_list: Vec<AttemptView>,
    /// Its outputs (stored masked).
    #[schema(value_type = HashMap<String, String>)]
    pub outputs: Outputs,
}

/// A run with its jobs (`runs show -o json`, `run -o json`, `GET /api/v1/runs/ID`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    pub jobs: Vec<JobView>,
    /// Its parameters, as its pinned spec recorded them.
    pub params: IndexMap<String, String>,
    /// The source revision of the generation it ran (absent when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

fn time_text(t: Option<OffsetDateTime>) -> Option<String> {
    t.map(format_time)
}

fn seconds(us: Option<i64>) -> Option<f64> {
    us.map(|us| us as f64 / 1e6)
}

/// A run object, without jobs; `attempts` are the run's (for its rounds).
pub fn run_view(run: &RunRow, attempts: &[AttemptRow]) -> RunView {
    RunView {
        id: run.id,
        pipeline: run.pipeline.to_string(),
        generation: run.generation,
        phase: shown_phase(run),
        reason: run.reason.map(|r| r.as_str()),
        started_at: time_text(run.started_at),
        finished_at: time_text(run.finished_at),
        rounds: run.rounds,
        round_list: round_spans(run, attempts)
            .iter()
            .map(|s| RoundView {
                round: s.round,
                started_at: time_text(s.started_at),
                finished_at: time_text(s.finished_at),
            })
            .collect(),
    }
}

/// The attempts of one job, in the order they started.
pub fn attempts_of<'a>(job: &str, attempts: &'a [AttemptRow]) -> Vec<&'a AttemptRow> {
    attempts.iter().filter(|a| a.job_id == job).collect()
}

/// One attempt of `attemptList`.
pub fn attempt_view(a: &AttemptRow) -> AttemptView {
    AttemptView {
        attempt: a.number,
        round: a.round,
        phase: a.phase.as_str(),
        reason: a.reason.map(|r| r.as_str()),
        exit_code: a.exit_code,
        signal: a.signal,
        message: a.message.clone(),
        started_at: format_time(a.started_at),
        finished_at: time_text(a.finished_at),
        cpu_user_seconds: seconds(a.user_time_us),
        cpu_system_seconds: seconds(a.system_time_us),
        max_rss_bytes: a.max_rss_kib.map(|k| k.saturating_mul(1024)),
        max_rss_upper_bound: a.max_rss_upper_bound,
        worker: None,
    }
}

/// A job object; `log` is the job's log file.
pub fn job_view(job: &JobRow, attempts: &[AttemptRow], log: &Path, outputs: Outputs) -> JobView {
    let own = attempts_of(&job.job_id, attempts);
    JobView {
        id: job.job_id.to_string(),
        phase: job.phase.as_str(),
        reason: job.reason.map(|r| r.as_str()),
        attempts: own.len(),
        exit_code: job.exit_code,
        signal: own.last().and_then(|a| a.signal),
        started_at: time_text(job.started_at),
        finished_at: time_text(job.finished_at),
        log: log.to_owned(),
        attempt_list: own.iter().map(|a| attempt_view(a)).collect(),
        outputs,
    }
}

/// A run's parameters, as its pinned spec recorded them.
pub fn run_params(run: &RunRow) -> IndexMap<String, String> {
    crate::spec::Pinned::from_json(&run.spec_json)
        .map(|p| p.params)
        .unwrap_or_default()
}

/// Reads a run's jobs, attempts, outputs and (when `with_revision`) its generation's source
/// revision from the store, and builds its [`run_detail`].
pub async fn load_run_detail(
    store: &crate::store::Store,
    run: &RunRow,
    state_dir: &Path,
    with_revision: bool,
) -> Result<RunDetail, crate::store::StoreError> {
    let jobs = store.jobs(run.id).await?;
    let attempts = store.attempts(run.id).await?;
    let outputs = store.job_outputs(run.id).await?;
    let revision = match with_revision {
        true => store.revision(&run.pipeline, run.generation).await?,
        false => None,
    };
    let rows = RunRows {
        run,
        jobs: &jobs,
        attempts: &attempts,
        outputs: &outputs,
        revision: revision.as_deref(),
    };
    Ok(run_detail(rows, state_dir))
}

/// What [`run_detail`] is built from: a run's rows as the store gives them.
#[derive(Debug, Clone, Copy)]
pub struct RunRows<'a> {
    pub run: &'a RunRow,
    pub jobs: &'a [JobRow],
    pub attempts: &'a [AttemptRow],
    pub outputs: &'a HashMap<String, Outputs>,
    pub revision: Option<&'a str>,
}

/// A run object with its jobs, params and outputs; job logs under `state_dir`.
pub fn run_detail(rows: RunRows<'_>, state_dir: &Path) -> RunDetail {
    let run = rows.run;
    RunDetail {
        run: run_view(run, rows.attempts),
        jobs: rows
            .jobs
            .iter()
            .map(|j| {
                let log =
                    crate::state_dir::job_log_path(state_dir, &run.pipeline, run.id, &j.job_id);
                let outputs = rows
                    .outputs
                    .get(j.job_id.as_str())
                    .cloned()
                    .unwrap_or_default();
                job_view(j, rows.attempts, &log, outputs)
            })
            .collect(),
        params: run_params(run),
        revision: rows.revision.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AttemptId, JobPhase, RunId};
    use time::macros::datetime;

    fn run(rounds: i64) -> RunRow {
        RunRow {
            id: RunId::from(1),
            pipeline: crate::spec::PipelineName::parse("p").expect("name"),
            generation: 0,
            spec_json: String::new(),
            spec_hash: String::new(),
            phase: RunPhase::Succeeded,
            reason: None,
            rounds,
            owner_pid: None,
            owner_host: None,
            owner_start_time: None,
            created_at: datetime!(2026-12-01 10:00 UTC),
            started_at: Some(datetime!(2026-12-01 10:00 UTC)),
            finished_at: Some(datetime!(2026-12-01 12:00 UTC)),
        }
    }

    fn attempt(
        round: i64,
        started_at: OffsetDateTime,
        finished_at: Option<OffsetDateTime>,
    ) -> AttemptRow {
        AttemptRow {
            id: AttemptId::from(1),
            run_id: RunId::from(1),
            job_id: crate::spec::JobId::parse("a").expect("job id"),
            round,
            number: 1,
            phase: JobPhase::Succeeded,
            reason: None,
            pid: None,
            pgid: None,
            process_start_time: None,
            exit_code: Some(0),
            signal: None,
            started_at,
            finished_at,
            user_time_us: None,
            system_time_us: None,
            max_rss_kib: None,
            max_rss_upper_bound: false,
            message: None,
        }
    }

    #[test]
    fn a_runs_duration_is_the_sum_of_its_rounds() {
        let attempts = [
            attempt(
                1,
                datetime!(2026-12-01 10:00 UTC),
                Some(datetime!(2026-12-01 10:01 UTC)),
            ),
            attempt(
                1,
                datetime!(2026-12-01 10:00:30 UTC),
                Some(datetime!(2026-12-01 10:02 UTC)),
            ),
            attempt(
                2,
                datetime!(2026-12-01 11:59 UTC),
                Some(datetime!(2026-12-01 12:00 UTC)),
            ),
        ];
        let spans = round_spans(&run(3), &attempts);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].finished_at, Some(datetime!(2026-12-01 10:02 UTC)));
        assert_eq!(spans[2].started_at, None, "a round without attempts");
        assert_eq!(run_duration(&spans), Some(time::Duration::minutes(3)));
        let open = [attempt(1, datetime!(2026-12-01 10:00 UTC), None)];
        assert_eq!(run_duration(&round_spans(&run(1), &open)), None);
    }
}

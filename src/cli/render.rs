//! Rendering of runs and jobs: the `-o json` objects of DESIGN section 3 (camelCase fields,
//! PascalCase phases) and the human tables.
//!
//! What is shown is derived here from the stored rows, never stored: a job's attempt count (every
//! attempt of the run, all rounds), its signal (its last attempt's), each round's span (from its
//! attempts), a run's duration (the sum of its rounds' spans, without the idle time between
//! them), and `Interrupted` for a run still recorded Running whose executioner is gone.

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::status::outputs::Outputs;
use crate::status::{RunPhase, format_time};
use crate::store::{AttemptRow, JobRow, RunRow};

fn time_value(t: Option<OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_time(t)))
}

/// The phase a run is shown with: `Interrupted` for one recorded Running whose owning process is
/// gone (killed, or stopped by a full disk), which only `resume` continues. Display only: the
/// store keeps it Running, as `resume` expects.
pub fn shown_phase(run: &RunRow) -> &'static str {
    match run.phase {
        RunPhase::Running if !crate::engine::resume::owner_alive(run) => "Interrupted",
        phase => phase.as_str(),
    }
}

/// Whether the run is shown `Interrupted` (see [`shown_phase`]).
pub fn interrupted(run: &RunRow) -> bool {
    shown_phase(run) == "Interrupted"
}

/// The hint printed under an interrupted run.
pub fn resume_hint(run: &RunRow) -> String {
    format!(
        "run {} was interrupted (its executioner is gone): `executioner resume {}` continues it",
        run.id, run.id
    )
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

/// A run object, without jobs (`runs -o json`); `attempts` are the run's (for its rounds).
pub fn run_json(run: &RunRow, attempts: &[AttemptRow]) -> Value {
    let rounds: Vec<Value> = round_spans(run, attempts)
        .iter()
        .map(|s| {
            json!({
                "round": s.round,
                "startedAt": time_value(s.started_at),
                "finishedAt": time_value(s.finished_at),
            })
        })
        .collect();
    json!({
        "id": run.id,
        "pipeline": run.pipeline,
        "generation": run.generation,
        "phase": shown_phase(run),
        "reason": run.reason.map(|r| r.as_str()),
        "startedAt": time_value(run.started_at),
        "finishedAt": time_value(run.finished_at),
        "rounds": run.rounds,
        "roundList": rounds,
    })
}

/// The attempts of one job, in the order they started.
fn attempts_of<'a>(job: &str, attempts: &'a [AttemptRow]) -> Vec<&'a AttemptRow> {
    attempts.iter().filter(|a| a.job_id == job).collect()
}

fn seconds(us: Option<i64>) -> Value {
    us.map_or(Value::Null, |us| json!(us as f64 / 1e6))
}

/// One attempt of `attemptList`.
pub fn attempt_json(a: &AttemptRow) -> Value {
    json!({
        "attempt": a.number,
        "round": a.round,
        "phase": a.phase.as_str(),
        "reason": a.reason.map(|r| r.as_str()),
        "exitCode": a.exit_code,
        "signal": a.signal,
        "message": a.message,
        "startedAt": format_time(a.started_at),
        "finishedAt": time_value(a.finished_at),
        "cpuUserSeconds": seconds(a.user_time_us),
        "cpuSystemSeconds": seconds(a.system_time_us),
        "maxRssBytes": a.max_rss_kib.map(|k| k.saturating_mul(1024)),
        "maxRssUpperBound": a.max_rss_upper_bound,
        "worker": Value::Null,
    })
}

/// A job object (`runs show -o json`); `log` is the job's log file. `attempts` counts every
/// attempt of the job in the run, all rounds (as the table does); `signal` is its last attempt's.
pub fn job_json(job: &JobRow, attempts: &[AttemptRow], log: &std::path::Path) -> Value {
    let own = attempts_of(&job.job_id, attempts);
    json!({
        "id": job.job_id,
        "phase": job.phase.as_str(),
        "reason": job.reason.map(|r| r.as_str()),
        "attempts": own.len(),
        "exitCode": job.exit_code,
        "signal": own.last().and_then(|a| a.signal),
        "startedAt": time_value(job.started_at),
        "finishedAt": time_value(job.finished_at),
        "log": log,
        "attemptList": own.iter().map(|a| attempt_json(a)).collect::<Vec<_>>(),
    })
}

/// A run object with its jobs (`runs show -o json`, `run -o json`).
pub fn run_with_jobs_json(
    run: &RunRow,
    jobs: &[JobRow],
    attempts: &[AttemptRow],
    state_dir: &std::path::Path,
) -> Value {
    let mut value = run_json(run, attempts);
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "jobs".into(),
            jobs.iter()
                .map(|j| {
                    let log =
                        crate::state_dir::job_log_path(state_dir, &run.pipeline, run.id, &j.job_id);
                    job_json(j, attempts, &log)
                })
                .collect(),
        );
    }
    value
}

/// A run's parameters, as its pinned spec recorded them.
pub fn run_params(run: &RunRow) -> indexmap::IndexMap<String, String> {
    crate::spec::Pinned::from_json(&run.spec_json)
        .map(|p| p.params)
        .unwrap_or_default()
}

/// Adds `"params"` to a run object and `"outputs"` to each of its jobs (stored masked).
pub fn with_run_data(
    mut value: Value,
    run: &RunRow,
    outputs: &std::collections::HashMap<String, Outputs>,
) -> Value {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("params".into(), json!(run_params(run)));
        if let Some(jobs) = obj.get_mut("jobs").and_then(Value::as_array_mut) {
            for job in jobs {
                let id = job.get("id").and_then(Value::as_str).unwrap_or_default();
                let own = json!(outputs.get(id).cloned().unwrap_or_default());
                if let Some(job) = job.as_object_mut() {
                    job.insert("outputs".into(), own);
                }
            }
        }
    }
    value
}

/// The params and outputs of a run as text lines (`runs show`), empty without any.
pub fn run_data_text(
    run: &RunRow,
    jobs: &[JobRow],
    outputs: &std::collections::HashMap<String, Outputs>,
) -> String {
    let mut out = String::new();
    for (name, value) in run_params(run) {
        out.push_str(&format!("param {name}={value}\n"));
    }
    for job in jobs {
        for (key, value) in outputs.get(job.job_id.as_str()).into_iter().flatten() {
            let value = if value.contains('\n') {
                format!("{value:?}")
            } else {
                value.clone()
            };
            out.push_str(&format!("output {}.{key}={value}\n", job.job_id));
        }
    }
    out
}

/// `1.234s`, `2m03s`.
pub fn span_text(d: time::Duration) -> String {
    let ms = d.whole_milliseconds().max(0);
    if ms < 60_000 {
        format!("{}.{:03}s", ms / 1000, ms % 1000)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `1.234s`, `2m03s`, or `-`.
pub fn duration_text(start: Option<OffsetDateTime>, end: Option<OffsetDateTime>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => span_text(e - s),
        _ => "-".into(),
    }
}

/// A peak memory figure: `12.3 MiB`, `640 KiB`, or `≤ 18.0 MiB` when it is only an upper bound.
pub fn rss_text(a: &AttemptRow) -> String {
    match a.max_rss_kib {
        None => "-".into(),
        Some(k) => {
            let bound = if a.max_rss_upper_bound { "≤ " } else { "" };
            if k < 1024 {
                format!("{bound}{k} KiB")
            } else {
                format!("{bound}{:.1} MiB", k as f64 / 1024.0)
            }
        }
    }
}

/// The summary table of a run's jobs; ATTEMPTS counts every attempt of the run, all rounds.
pub fn jobs_table(jobs: &[JobRow], attempts: &[AttemptRow]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["JOB", "PHASE", "REASON", "ATTEMPTS", "EXIT", "DURATION"]);
    for j in jobs {
        let own = attempts_of(&j.job_id, attempts);
        let exit = match (j.exit_code, own.last().and_then(|a| a.signal)) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "-".into(),
        };
        table.add_row([
            j.job_id.to_string(),
            j.phase.to_string(),
            j.reason.map_or("-".into(), |r| r.to_string()),
            own.len().to_string(),
            exit,
            duration_text(j.started_at, j.finished_at),
        ]);
    }
    table.to_string()
}

/// The history table; `attempts` gives each run's attempts (for its duration).
pub fn runs_table(runs: &[(RunRow, Vec<AttemptRow>)]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "RUN", "PIPELINE", "PHASE", "REASON", "ROUNDS", "STARTED", "DURATION",
    ]);
    for (r, attempts) in runs {
        table.add_row([
            r.id.to_string(),
            r.pipeline.to_string(),
            shown_phase(r).to_string(),
            r.reason.map_or("-".into(), |x| x.to_string()),
            r.rounds.to_string(),
            r.started_at.map_or("-".into(), format_time),
            run_duration(&round_spans(r, attempts)).map_or("-".into(), span_text),
        ]);
    }
    table.to_string()
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

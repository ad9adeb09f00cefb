//! Rendering of runs and jobs: the `-o json` objects of DESIGN section 3 (camelCase fields,
//! PascalCase phases) and the human tables.

use serde_json::{Value, json};

use crate::status::format_time;
use crate::store::{JobRow, RunRow};

fn time_value(t: Option<time::OffsetDateTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(format_time(t)))
}

/// A run object, without jobs (`runs -o json`).
pub fn run_json(run: &RunRow) -> Value {
    json!({
        "id": run.id,
        "pipeline": run.pipeline,
        "generation": run.generation,
        "phase": run.phase.as_str(),
        "reason": run.reason.map(|r| r.as_str()),
        "startedAt": time_value(run.started_at),
        "finishedAt": time_value(run.finished_at),
        "rounds": run.rounds,
    })
}

/// A job object (`runs show -o json`); `log` is the job's log file.
pub fn job_json(job: &JobRow, log: &std::path::Path) -> Value {
    json!({
        "id": job.job_id,
        "phase": job.phase.as_str(),
        "reason": job.reason.map(|r| r.as_str()),
        "attempts": job.attempts,
        "exitCode": job.exit_code,
        "startedAt": time_value(job.started_at),
        "finishedAt": time_value(job.finished_at),
        "log": log,
    })
}

/// A run object with its jobs (`runs show -o json`, `run -o json`).
pub fn run_with_jobs_json(run: &RunRow, jobs: &[JobRow], state_dir: &std::path::Path) -> Value {
    let mut value = run_json(run);
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "jobs".into(),
            jobs.iter()
                .map(|j| {
                    let log =
                        crate::engine::job_log_path(state_dir, &run.pipeline, run.id, &j.job_id);
                    job_json(j, &log)
                })
                .collect(),
        );
    }
    value
}

/// `1.234s`, `2m03s`, or `-`.
pub fn duration_text(
    start: Option<time::OffsetDateTime>,
    end: Option<time::OffsetDateTime>,
) -> String {
    match (start, end) {
        (Some(s), Some(e)) => {
            let d = e - s;
            let ms = d.whole_milliseconds().max(0);
            if ms < 60_000 {
                format!("{}.{:03}s", ms / 1000, ms % 1000)
            } else {
                format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
            }
        }
        _ => "-".into(),
    }
}

/// The summary table of a run's jobs.
pub fn jobs_table(jobs: &[JobRow]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(["JOB", "PHASE", "REASON", "ATTEMPTS", "EXIT", "DURATION"]);
    for j in jobs {
        table.add_row([
            j.job_id.clone(),
            j.phase.to_string(),
            j.reason.map_or("-".into(), |r| r.to_string()),
            j.attempts.to_string(),
            j.exit_code.map_or("-".into(), |c| c.to_string()),
            duration_text(j.started_at, j.finished_at),
        ]);
    }
    table.to_string()
}

/// The history table.
pub fn runs_table(runs: &[RunRow]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "RUN", "PIPELINE", "PHASE", "REASON", "ROUNDS", "STARTED", "DURATION",
    ]);
    for r in runs {
        table.add_row([
            r.id.to_string(),
            r.pipeline.clone(),
            r.phase.to_string(),
            r.reason.map_or("-".into(), |x| x.to_string()),
            r.rounds.to_string(),
            r.started_at.map_or("-".into(), format_time),
            duration_text(r.started_at, r.finished_at),
        ]);
    }
    table.to_string()
}

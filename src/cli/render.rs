//! Rendering of runs and jobs for the terminal: the human tables and text lines, and printing
//! the `-o json` objects, which `crate::views` builds (shared with the HTTP API).

use time::OffsetDateTime;

use crate::status::format_time;
use crate::status::outputs::Outputs;
use crate::store::{AttemptRow, JobRow, RunRow};

use crate::views::attempts_of;
pub use crate::views::{round_spans, run_duration, run_params, shown_phase};

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

/// Prints a `-o json` value, pretty.
pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
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

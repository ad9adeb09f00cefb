//! `executioner runs`, `runs show`, `logs` and `mark-success`: reading and correcting the history.

use std::io::{Read, Seek, Write};
use std::time::Duration;

use crate::state_dir;
use crate::status::{JobPhase, RunPhase};
use crate::store::RunId;

use super::{CliError, CliResult, Exit, GlobalArgs, OutputFormat, render};

pub fn list(
    pipeline: Option<&str>,
    limit: i64,
    output: OutputFormat,
    global: &GlobalArgs,
) -> CliResult {
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    super::runtime()?.block_on(async {
        let store = super::open_store_existing(&state_dir, &config).await?;
        let Some(store) = store else {
            match output {
                OutputFormat::Json => println!("[]"),
                OutputFormat::Table => println!("no runs yet"),
            }
            return Ok(Exit::Success);
        };
        let runs = store.runs(pipeline, limit.max(1)).await?;
        let mut rows = Vec::with_capacity(runs.len());
        for run in runs {
            let attempts = store.attempts(run.id).await?;
            rows.push((run, attempts));
        }
        match output {
            OutputFormat::Json => {
                let items: Vec<crate::views::RunView> = rows
                    .iter()
                    .map(|(run, attempts)| crate::views::run_view(run, attempts))
                    .collect();
                render::print_json(&items);
            }
            OutputFormat::Table => {
                if rows.is_empty() {
                    println!("no runs yet");
                } else {
                    println!("{}", render::runs_table(&rows));
                    for (run, _) in rows.iter().filter(|(run, _)| render::interrupted(run)) {
                        println!("{}", render::resume_hint(run));
                    }
                }
            }
        }
        Ok(Exit::Success)
    })
}

/// The store and one run of it; an unknown run (or no history at all) is a usage error.
async fn open_run(
    state_dir: &std::path::Path,
    config: &crate::config::Config,
    run_id: RunId,
) -> Result<(crate::store::Store, crate::store::RunRow), CliError> {
    let missing = || CliError::usage(format!("run {run_id} does not exist"));
    let store = super::open_store_existing(state_dir, config)
        .await?
        .ok_or_else(missing)?;
    let run = store.run(run_id).await?.ok_or_else(missing)?;
    Ok((store, run))
}

pub fn show(run_id: RunId, output: OutputFormat, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    super::runtime()?.block_on(async {
        let (store, run) = open_run(&state_dir, &config, run_id).await?;
        let jobs = store.jobs(run_id).await?;
        let attempts = store.attempts(run_id).await?;
        // The source revision of the generation it ran (a foreground run, generation 0, has none).
        let revision = store.revision(&run.pipeline, run.generation).await?;
        let outputs = store.job_outputs(run_id).await?;
        match output {
            OutputFormat::Json => {
                let rows = crate::views::RunRows {
                    run: &run,
                    jobs: &jobs,
                    attempts: &attempts,
                    outputs: &outputs,
                    revision: revision.as_deref(),
                };
                render::print_json(&crate::views::run_detail(rows, &state_dir));
            }
            OutputFormat::Table => {
                let spans = render::round_spans(&run, &attempts);
                println!(
                    "run {} of {}: {} ({}), round {}, started {}, took {}",
                    run.id,
                    run.pipeline,
                    render::shown_phase(&run),
                    run.reason.map_or("-".into(), |r| r.to_string()),
                    run.rounds,
                    run.started_at
                        .map_or("-".into(), crate::status::format_time),
                    render::run_duration(&spans).map_or("-".into(), render::span_text)
                );
                if let Some(revision) = &revision {
                    println!("generation {}, source revision {revision}", run.generation);
                }
                if render::interrupted(&run) {
                    println!("{}", render::resume_hint(&run));
                }
                for span in &spans {
                    println!(
                        "round {}: started {}, finished {}, took {}",
                        span.round,
                        span.started_at
                            .map_or("-".into(), crate::status::format_time),
                        span.finished_at
                            .map_or("-".into(), crate::status::format_time),
                        render::duration_text(span.started_at, span.finished_at)
                    );
                }
                println!("{}", render::jobs_table(&jobs, &attempts));
                print!("{}", render::run_data_text(&run, &jobs, &outputs));
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
                table.set_header([
                    "JOB", "ATTEMPT", "ROUND", "PHASE", "REASON", "EXIT", "CPU USER", "CPU SYS",
                    "MAX RSS", "MESSAGE",
                ]);
                for a in &attempts {
                    table.add_row([
                        a.job_id.to_string(),
                        a.number.to_string(),
                        a.round.to_string(),
                        a.phase.to_string(),
                        a.reason.map_or("-".into(), |r| r.to_string()),
                        match (a.exit_code, a.signal) {
                            (Some(c), _) => c.to_string(),
                            (None, Some(s)) => format!("signal {s}"),
                            _ => "-".into(),
                        },
                        a.user_time_us
                            .map_or("-".into(), |us| format!("{:.3}s", us as f64 / 1e6)),
                        a.system_time_us
                            .map_or("-".into(), |us| format!("{:.3}s", us as f64 / 1e6)),
                        render::rss_text(a),
                        a.message.clone().unwrap_or_default(),
                    ]);
                }
                if !attempts.is_empty() {
                    println!("attempts:\n{table}");
                }
                for j in &jobs {
                    println!(
                        "log {}: {}",
                        j.job_id,
                        state_dir::job_log_path(&state_dir, &run.pipeline, run.id, &j.job_id)
                            .display()
                    );
                }
                let events = store.events(run_id).await?;
                for e in events {
                    println!(
                        "event {} {} {}: {} by {}",
                        crate::status::format_time(e.at),
                        e.kind,
                        e.job_id.as_deref().unwrap_or_default(),
                        e.reason.unwrap_or_default(),
                        e.actor.unwrap_or_default()
                    );
                }
            }
        }
        Ok(Exit::Success)
    })
}

pub fn logs(run_id: RunId, job: Option<&str>, follow: bool, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    let local = super::runtime()?.block_on(async {
        let (store, run) = open_run(&state_dir, &config, run_id).await?;
        let path = match job {
            Some(id) => {
                let jobs = store.jobs(run_id).await?;
                let Some(row) = jobs.iter().find(|j| j.job_id == id) else {
                    return Err(CliError::usage(format!("run {run_id} has no job {id:?}")));
                };
                let path = state_dir::job_log_path(&state_dir, &run.pipeline, run.id, id);
                // No file here, but a shared database: the job ran (or runs) on another host,
                // whose worker shipped its output.
                if !path.exists() && store.is_shared() {
                    super::shipped::print_job_log(&store, &run, row, follow).await?;
                    return Ok(None);
                }
                // No log: the job never started (or its log was removed). Only a job that may
                // still start is worth following.
                let may_start =
                    follow && row.phase == JobPhase::Pending && !run.phase.is_terminal();
                if !path.exists() && !may_start {
                    let reason = row.reason.map_or(String::new(), |r| format!(" ({r})"));
                    return Err(CliError::usage(format!(
                        "job {id} of run {run_id} was {}{reason}: it has no log",
                        row.phase
                    )));
                }
                path
            }
            None => state_dir::run_log_path(&state_dir, &run.pipeline, run.id),
        };
        Ok::<_, CliError>(Some((path, run.phase.is_terminal())))
    })?;
    let Some((path, pipeline_done)) = local else {
        return Ok(Exit::Success);
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {
            // The job has not started yet: wait for its log to appear, while the run goes on.
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if let Ok(f) = std::fs::File::open(&path) {
                    break f;
                }
                if !run_still_going(run_id, global) {
                    return Err(CliError::usage(format!(
                        "run {run_id} ended before job {} started: it has no log",
                        job.unwrap_or_default()
                    )));
                }
            }
        }
        Err(e) => return Err(CliError::usage(format!("{}: {e}", path.display()))),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        if n == 0 {
            if !follow || pipeline_done {
                break;
            }
            // Follow until the run ends: poll the file (cheap) and the run's phase (rarely).
            std::thread::sleep(Duration::from_millis(200));
            let pos = file.stream_position().unwrap_or(0);
            if !run_still_going(run_id, global) {
                file.seek(std::io::SeekFrom::Start(pos)).ok();
                let _ = std::io::copy(&mut file, &mut out);
                break;
            }
            continue;
        }
        if out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = out.flush();
    Ok(Exit::Success)
}

fn run_still_going(run_id: RunId, global: &GlobalArgs) -> bool {
    let Ok(config) = super::load_config(global) else {
        return false;
    };
    let state_dir = super::state_dir(&config);
    let Ok(rt) = super::runtime() else {
        return false;
    };
    rt.block_on(async {
        match super::open_store_existing(&state_dir, &config).await {
            Ok(Some(store)) => matches!(
                store.run(run_id).await,
                Ok(Some(run)) if !run.phase.is_terminal()
            ),
            _ => false,
        }
    })
}

pub fn mark_success(
    run_id: RunId,
    jobs: &[String],
    reason: Option<&str>,
    global: &GlobalArgs,
) -> CliResult {
    if jobs.is_empty() {
        return Err(CliError::usage("mark-success needs at least one job id"));
    }
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    super::runtime()?.block_on(async {
        let (store, run) = open_run(&state_dir, &config, run_id).await?;
        if run.phase == RunPhase::Running {
            return Err(CliError::usage(format!("run {run_id} is still running; mark-success applies to finished runs")));
        }
        let rows = store.jobs(run_id).await?;
        let mut targets: Vec<&str> = Vec::new();
        for id in jobs {
            match rows.iter().find(|r| &r.job_id == id) {
                None => return Err(CliError::usage(format!("run {run_id} has no job {id:?}"))),
                Some(r) if r.phase == JobPhase::Succeeded => {
                    println!("{id}: already Succeeded");
                }
                Some(_) => targets.push(id),
            }
        }
        if targets.is_empty() {
            return Ok(Exit::Success);
        }
        let actor = std::env::var("USER").unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
        let reason = reason.unwrap_or("marked successful by hand");
        let pinned = crate::spec::Pinned::from_json(&run.spec_json).map_err(|e| {
            CliError::PinnedSpec {
                run: run_id,
                source: e,
            }
        })?;
        let coe = pinned.continue_on_error();
        let coe: Vec<&str> = coe.iter().map(String::as_str).collect();
        let (phase, verdict) = store
            .mark_success(run_id, &targets, reason, &actor, &coe)
            .await?;
        for id in &targets {
            println!("{id}: marked Succeeded");
        }
        if phase == RunPhase::Succeeded {
            println!("run {run_id} is now {phase} ({verdict})");
        } else {
            println!("run {run_id} is still {phase} ({verdict}); `executioner resume {run_id}` runs the jobs that have not succeeded");
        }
        Ok(Exit::Success)
    })
}

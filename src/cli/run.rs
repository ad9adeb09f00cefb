//! `executioner run FILE` and `executioner resume RUN`: one run in the foreground, with live
//! progress, a summary table and the exit code of its outcome.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use tokio::sync::{Semaphore, mpsc};

use crate::controller::overlap;
use crate::engine::launch::{self, PinnedPlan, Round};
use crate::engine::resume::ResumeMode;
use crate::engine::{self, EngineOptions, Plan, RunEvent, RunRequest};
use crate::spec::{ConcurrencyPolicy, Manifest, Pinned};
use crate::status::{JobPhase, RunPhase};
use crate::store::{RunId, Store};
use crate::validate::Options;

use super::{CliError, CliResult, Exit, GlobalArgs, OutputFormat, render};

/// The arguments of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The manifest (YAML, TOML or JSON, v1 or the original tool's format).
    pub file: PathBuf,
    /// Jobs running at once, at least 1 (default: configuration `workers`, else the number of
    /// CPUs).
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub workers: Option<usize>,
    /// The original tool's `--parallel`: the manifest's `maxParallel` gives way, so `--workers`
    /// alone limits how many jobs run at once.
    #[arg(long, hide = true)]
    pub parallel: bool,
    /// Print the plan (levels, what would run or be skipped) and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Extra environment, the highest layer: `--env K=V` (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// A run parameter: `--param NAME=VALUE` (repeatable), checked against `spec.params`; a
    /// resume keeps the values the run was started with.
    #[arg(
        long = "param",
        value_name = "NAME=VALUE",
        conflicts_with = "resume_from"
    )]
    pub param: Vec<String>,
    /// Jobs not to run (comma-separated or repeated); they count as satisfied for dependents.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub skip: Vec<String>,
    /// Start nothing new after the first failure.
    #[arg(long, conflicts_with = "continue_on_error")]
    pub fail_fast: bool,
    /// Keep going after failures (overrides `failFast: true`).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Continue run RUN as a new round instead of starting a new run.
    #[arg(long, value_name = "RUN")]
    pub resume_from: Option<RunId>,
    /// With --resume-from: run again only the jobs that failed (or were lost) and what they kept from running.
    #[arg(long, requires = "resume_from")]
    pub failed_only: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

fn parse_env(pairs: &[String]) -> Result<IndexMap<String, String>, CliError> {
    let mut out = IndexMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--env {pair:?}: expected K=V")))?;
        if !crate::env::is_valid_name(k) {
            return Err(CliError::usage(format!(
                "--env {pair:?}: {k:?} is not a valid variable name"
            )));
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

pub fn run(args: RunArgs, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let cli_env = parse_env(&args.env)?;
    let options = Options {
        cli_env: cli_env.clone(),
        security: super::security_policy(&config),
        ..Options::default()
    };
    let valid = super::validate::load_one(&args.file, &options)?;
    let mut manifest = valid.manifest;
    if args.fail_fast {
        manifest.spec.fail_fast = true;
    }
    if args.continue_on_error {
        manifest.spec.fail_fast = false;
    }
    if args.parallel {
        manifest.spec.max_parallel = None;
    }
    for id in &args.skip {
        if !manifest.spec.jobs.iter().any(|j| j.id.as_str() == id) {
            return Err(CliError::usage(format!(
                "--skip {id}: no such job in {}",
                valid.file.display()
            )));
        }
    }
    let base_dir = args
        .file
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let process_env: IndexMap<String, String> = std::env::vars().collect();
    let mut plan = Plan::new(&manifest, &base_dir, &process_env, cli_env.clone())
        .map_err(|e| CliError::failed(super::error::chain(&e)))?;
    if args.resume_from.is_none() {
        plan.params =
            super::params::resolve(&manifest.spec.params, &super::params::parse(&args.param)?)?;
    }
    let workers = args.workers.unwrap_or_else(|| config.workers());

    if args.dry_run {
        print!("{}", dry_run_text(&plan, &args.skip, workers));
        return Ok(Exit::Success);
    }

    let runtime = super::engine_runtime()?;
    runtime.block_on(async move {
        let state_dir = super::state_dir(&config);
        let store = super::open_store(&state_dir, &config).await?;
        let owner = launch::this_process();
        let (run_id, request) = match args.resume_from {
            None => {
                // Held until the run is recorded, so that two `run` at once see each other.
                let _lock = lock(&state_dir, &plan.pipeline)?;
                let policy = manifest.spec.concurrency_policy;
                make_way(&state_dir, &store, &plan.pipeline, policy, &config, None).await?;
                let pinned = Pinned::new(manifest, &base_dir, cli_env, args.skip.clone())
                    .with_params(plan.params.clone());
                let request = launch::new_run(&store, &plan, &pinned, 0, &owner)
                    .await?;
                (request.run_id, request)
            }
            Some(run_id) => {
                let previous = store
                    .run(run_id)
                    .await?
                    .ok_or_else(|| CliError::usage(format!("run {run_id} does not exist")))?;
                if previous.pipeline != manifest.metadata.name.as_str() {
                    return Err(CliError::usage(format!(
                        "run {run_id} is a run of pipeline {}; {} is pipeline {}",
                        previous.pipeline,
                        valid.file.display(),
                        manifest.metadata.name
                    )));
                }
                // The run's recorded values, against the declarations of the spec used now.
                let recorded = Pinned::from_json(&previous.spec_json).map(|p| p.params).unwrap_or_default();
                plan.params = super::params::resolve(&manifest.spec.params, &recorded)?;
                // A resume is a run too: held until its round is recorded.
                let _lock = lock(&state_dir, &plan.pipeline)?;
                if previous.phase != RunPhase::Succeeded {
                    let policy = manifest.spec.concurrency_policy;
                    make_way(&state_dir, &store, &plan.pipeline, policy, &config, Some(run_id)).await?;
                }
                let respec = match spec_differences(&previous.spec_json, &manifest) {
                    Some(diff) => {
                        eprintln!("the manifest differs from the spec run {run_id} was started with; using the new spec:\n{diff}");
                        Some(Pinned::new(manifest, &base_dir, cli_env, args.skip.clone()).with_params(plan.params.clone()))
                    }
                    None => None,
                };
                match round(&store, &previous, &plan, resume_mode(args.failed_only), &owner, respec.as_ref()).await? {
                    Some(request) => (run_id, request),
                    None => return unchanged(&store, run_id, &state_dir, args.output).await,
                }
            }
        };
        drive(&store, plan, request, run_id, &state_dir, &config, workers, args.output, global).await
    })
}

/// `STATE/locks/PIPELINE.lock`, held while a run or a resume checks for a run in the way and
/// records its own (see [`overlap::lock_pipeline`]).
fn lock(state_dir: &Path, pipeline: &str) -> Result<nix::fcntl::Flock<std::fs::File>, CliError> {
    overlap::lock_pipeline(state_dir, pipeline).map_err(|e| {
        CliError::usage(format!(
            "cannot lock pipeline {pipeline} in {}: {e}",
            state_dir.display()
        ))
    })
}

/// What `concurrencyPolicy` says about the live runs of `pipeline` (a run whose owner is gone
/// never counts, nor `resuming`, the run a resume continues): `Forbid` refuses (exit 2, naming
/// the run and who drives it), `Allow` goes ahead, `Replace` has each cancelled (the live
/// controller's by a request file it watches, any other by a SIGTERM to its process) and waits
/// for it to end.
async fn make_way(
    state_dir: &Path,
    store: &Store,
    pipeline: &str,
    policy: ConcurrencyPolicy,
    config: &crate::config::Config,
    resuming: Option<RunId>,
) -> Result<(), CliError> {
    let mut running = overlap::live_runs_of(store, pipeline).await?;
    running.retain(|r| Some(r.id) != resuming);
    let Some(other) = running.first() else {
        return Ok(());
    };
    let controller = overlap::live_controller(state_dir);
    let driver = |run: &crate::store::RunRow| overlap::Driver::of(run, controller.as_ref());
    let who = |run: &crate::store::RunRow| {
        format!(
            "run {} (driven by {}, pid {} on {})",
            run.id,
            driver(run).as_str(),
            run.owner_pid.unwrap_or_default(),
            run.owner_host.as_deref().unwrap_or("?")
        )
    };
    match policy {
        ConcurrencyPolicy::Allow => Ok(()),
        ConcurrencyPolicy::Forbid => {
            let hint = match driver(other) {
                overlap::Driver::Controller => {
                    format!("wait for it with `executioner wait {pipeline}`")
                }
                overlap::Driver::Foreground => {
                    format!("follow it with `executioner logs {} --follow`", other.id)
                }
            };
            Err(CliError::usage(format!(
                "pipeline {pipeline} is already running: {}; concurrencyPolicy Forbid refuses a second run ({hint}, or set spec.concurrencyPolicy to Allow or Replace)",
                who(other),
            )))
        }
        ConcurrencyPolicy::Replace => {
            let grace = config.shutdown_grace.as_std() + std::time::Duration::from_secs(10);
            for run in &running {
                eprintln!("cancelling {} (concurrencyPolicy: Replace)", who(run));
                let request = match driver(run) {
                    overlap::Driver::Foreground => {
                        overlap::cancel_foreground(run, controller.as_ref());
                        None
                    }
                    overlap::Driver::Controller => {
                        Some(overlap::request_cancel(state_dir, run.id).map_err(|e| {
                            CliError::usage(format!(
                                "cannot ask the controller to cancel run {}: {e}",
                                run.id
                            ))
                        })?)
                    }
                };
                let ended = overlap::wait_ended(store, run.id, grace).await?;
                if let Some(request) = request {
                    let _ = std::fs::remove_file(request);
                }
                if !ended {
                    return Err(CliError::usage(format!(
                        "{} did not stop within {}s",
                        who(run),
                        grace.as_secs()
                    )));
                }
            }
            Ok(())
        }
    }
}

/// `executioner resume RUN [--failed-only]`: the same run id, a new round, the pinned spec.
pub fn resume(
    run_id: RunId,
    failed_only: bool,
    output: OutputFormat,
    global: &GlobalArgs,
) -> CliResult {
    let config = super::load_config(global)?;
    let runtime = super::engine_runtime()?;
    runtime.block_on(async move {
        let state_dir = super::state_dir(&config);
        let store = super::open_store(&state_dir, &config).await?;
        let run = store
            .run(run_id)
            .await?
            .ok_or_else(|| CliError::usage(format!("run {run_id} does not exist")))?;
        let pinned = Pinned::from_json(&run.spec_json).map_err(|e| CliError::PinnedSpec {
            run: run_id,
            source: e,
        })?;
        let plan = pinned
            .plan()
            .map_err(|e| CliError::failed(super::error::chain(&e)))?;
        let owner = launch::this_process();
        let next = {
            // The same concurrency check as a new run (pinned policy), held until it is recorded.
            let _lock = lock(&state_dir, &run.pipeline)?;
            if run.phase != RunPhase::Succeeded {
                let policy = pinned.manifest.spec.concurrency_policy;
                make_way(
                    &state_dir,
                    &store,
                    &run.pipeline,
                    policy,
                    &config,
                    Some(run_id),
                )
                .await?;
            }
            round(&store, &run, &plan, resume_mode(failed_only), &owner, None).await?
        };
        let Some(request) = next else {
            return unchanged(&store, run_id, &state_dir, output).await;
        };
        let workers = config.workers();
        drive(
            &store, plan, request, run_id, &state_dir, &config, workers, output, global,
        )
        .await
    })
}

/// A resume that ran nothing: the run as it stands (its object with `-o json`), and an exit code
/// that says whether it succeeded.
async fn unchanged(
    store: &Store,
    run_id: RunId,
    state_dir: &Path,
    output: OutputFormat,
) -> CliResult {
    let run = store
        .run(run_id)
        .await?
        .ok_or_else(|| CliError::usage(format!("run {run_id} does not exist")))?;
    if output == OutputFormat::Json {
        render::print_json(&crate::views::load_run_detail(store, &run, state_dir, false).await?);
    }
    Ok(match run.phase {
        RunPhase::Succeeded => Exit::Success,
        RunPhase::Cancelled | RunPhase::Failed | RunPhase::Pending | RunPhase::Running => {
            Exit::Failed
        }
    })
}

fn resume_mode(failed_only: bool) -> ResumeMode {
    if failed_only {
        ResumeMode::FailedOnly
    } else {
        ResumeMode::All
    }
}

/// Recovery and the next round of an existing run; `None` when there is nothing to do.
async fn round(
    store: &Store,
    run: &crate::store::RunRow,
    plan: &Plan,
    mode: ResumeMode,
    owner: &crate::store::Owner,
    respec: Option<&Pinned>,
) -> Result<Option<RunRequest>, CliError> {
    match launch::next_round(store, run, plan, mode, owner, respec, false).await? {
        Round::OwnedElsewhere { pid, host } => Err(CliError::usage(format!(
            "run {} is still running (pid {pid} on {host})",
            run.id
        ))),
        Round::AlreadySucceeded => {
            eprintln!("run {} already succeeded; nothing to resume", run.id);
            Ok(None)
        }
        Round::NothingToDo => {
            eprintln!("run {}: no job to run again", run.id);
            Ok(None)
        }
        Round::Next {
            request,
            rerun,
            lost,
        } => {
            if !lost.is_empty() {
                eprintln!(
                    "run {}: its executioner died; attempts of {} recorded Lost",
                    run.id,
                    lost.join(", ")
                );
            }
            eprintln!(
                "run {}: round {}, running again: {}",
                run.id,
                request.round,
                rerun.join(", ")
            );
            Ok(Some(request))
        }
    }
}

/// The differences between a run's pinned manifest and `manifest`, one line each, if any.
fn spec_differences(pinned_json: &str, manifest: &Manifest) -> Option<String> {
    let pinned: serde_json::Value = serde_json::from_str(pinned_json).ok()?;
    let old: Manifest = serde_json::from_value(pinned["manifest"].clone()).ok()?;
    if old.spec == manifest.spec {
        return None;
    }
    let mut lines = Vec::new();
    let old_jobs: HashMap<&str, &crate::spec::JobSpec> =
        old.spec.jobs.iter().map(|j| (j.id.as_str(), j)).collect();
    let new_jobs: HashMap<&str, &crate::spec::JobSpec> = manifest
        .spec
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j))
        .collect();
    for j in &manifest.spec.jobs {
        match old_jobs.get(j.id.as_str()) {
            None => lines.push(format!("  + job {} (new)", j.id)),
            Some(o) if *o != j => lines.push(format!("  ~ job {} (changed)", j.id)),
            Some(_) => {}
        }
    }
    for j in &old.spec.jobs {
        if !new_jobs.contains_key(j.id.as_str()) {
            lines.push(format!("  - job {} (removed)", j.id));
        }
    }
    let mut old_rest = old.spec.clone();
    let mut new_rest = manifest.spec.clone();
    old_rest.jobs.clear();
    new_rest.jobs.clear();
    if old_rest != new_rest {
        lines.push("  ~ pipeline settings changed".into());
    }
    Some(lines.join("\n"))
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    store: &Store,
    plan: Plan,
    request: RunRequest,
    run_id: RunId,
    state_dir: &Path,
    config: &crate::config::Config,
    workers: usize,
    output: OutputFormat,
    global: &GlobalArgs,
) -> CliResult {
    let plan = Arc::new(plan);
    let options = EngineOptions {
        state_dir: state_dir.to_path_buf(),
        workers: Arc::new(Semaphore::new(workers)),
        shutdown_grace: config.shutdown_grace.as_std(),
        plugin_dirs: config.plugin_dirs.clone(),
        // A foreground run is the user's own process: its jobs run here, on either store.
        queue: None,
    };
    let stop = engine::Stop::default();
    let signals = super::watch_signals(stop.cancel.clone(), stop.kill_now.clone())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let quiet = global.quiet || output == OutputFormat::Json;
    let names: Vec<String> = plan.jobs.iter().map(|j| j.id.to_string()).collect();
    let printer = tokio::spawn(print_progress(
        rx,
        names,
        quiet,
        run_id,
        plan.pipeline.to_string(),
    ));
    // The loop runs as a task, like the attempts it starts; the engine runtime is single-threaded,
    // so all of them are polled on this thread.
    let engine = tokio::spawn({
        let store = store.clone();
        let plan = plan.clone();
        async move { engine::execute(&store, plan, request, &options, tx, stop).await }
    });
    let report = engine.await;
    let _ = printer.await;
    signals.abort();
    let report =
        report.map_err(|e| CliError::usage(format!("internal error in the run: {e}")))??;
    // Notifications go through the outbox after the terminal state is committed; a failure to
    // deliver is reported but never changes the run's result.
    crate::failpoint::hit("run-committed");
    match crate::notify::enqueue_for_run(store, run_id, state_dir).await {
        Ok(0) => {}
        Ok(_) => match crate::notify::deliver_due(store, config).await {
            Ok((_, 0)) => {}
            Ok((sent, failed)) => {
                tracing::warn!("notifications: {sent} sent, {failed} failed (retried later)")
            }
            Err(e) => tracing::error!("notifications: {}", super::error::chain(&e)),
        },
        Err(e) => tracing::error!("notifications: {}", super::error::chain(&e)),
    }

    let run = store.run(run_id).await?;
    // A quiet run that succeeded prints nothing: it reads nothing more either.
    let shown =
        output == OutputFormat::Json || !global.quiet || report.phase != RunPhase::Succeeded;
    let (jobs, attempts) = if shown {
        (store.jobs(run_id).await?, store.attempts(run_id).await?)
    } else {
        (Vec::new(), Vec::new())
    };
    match (output, run) {
        (OutputFormat::Json, Some(run)) => {
            // The rows are read already (the `-q` lines below use them too).
            let outputs = store.job_outputs(run_id).await?;
            let rows = crate::views::RunRows {
                run: &run,
                jobs: &jobs,
                attempts: &attempts,
                outputs: &outputs,
                revision: None,
            };
            render::print_json(&crate::views::run_detail(rows, state_dir));
        }
        (_, _) if !global.quiet => {
            println!("{}", render::jobs_table(&jobs, &attempts));
            println!(
                "run {run_id} of {} {} ({}): {}",
                plan.pipeline,
                report.phase,
                report.reason,
                Counts::of(jobs.iter().map(|j| j.phase))
            );
        }
        (OutputFormat::Table | OutputFormat::Json, _) => {}
    }
    // `-q` keeps the essentials of a run that did not succeed: what failed, why, where its log
    // is, and the verdict.
    if global.quiet && report.phase != RunPhase::Succeeded {
        for job in jobs.iter().filter(|j| needs_attention(j.phase)) {
            let last = attempts.iter().rfind(|a| a.job_id == job.job_id);
            let ended = match (job.exit_code, last.and_then(|a| a.signal)) {
                (Some(code), _) => format!(", exit code {code}"),
                (None, Some(signal)) => format!(", signal {signal}"),
                (None, None) => String::new(),
            };
            eprintln!(
                "{} {} ({}{ended}), log {}",
                job.job_id,
                job.phase,
                job.reason.map_or("-".into(), |r| r.to_string()),
                crate::state_dir::job_log_path(state_dir, &plan.pipeline, run_id, &job.job_id)
                    .display()
            );
        }
        eprintln!(
            "run {run_id} of {} {} ({})",
            plan.pipeline, report.phase, report.reason
        );
    }
    Ok(match report.phase {
        RunPhase::Succeeded => Exit::Success,
        RunPhase::Cancelled => Exit::Interrupted,
        RunPhase::Failed | RunPhase::Pending | RunPhase::Running => Exit::Failed,
    })
}

/// Whether `-q` names a job of a run that did not succeed: the ones that ended badly.
fn needs_attention(phase: JobPhase) -> bool {
    match phase {
        JobPhase::Failed | JobPhase::Cancelled | JobPhase::Lost | JobPhase::Interrupted => true,
        JobPhase::Pending
        | JobPhase::Waiting
        | JobPhase::Running
        | JobPhase::Succeeded
        | JobPhase::Skipped => false,
    }
}

/// How many jobs ended in each phase, for the summary line and the live status line: a job
/// stopped by a cancel counts as cancelled, one that never started as skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    succeeded: usize,
    failed: usize,
    cancelled: usize,
    skipped: usize,
}

impl Counts {
    fn of(phases: impl IntoIterator<Item = JobPhase>) -> Counts {
        let mut counts = Counts::default();
        for phase in phases {
            counts.add(phase);
        }
        counts
    }

    fn add(&mut self, phase: JobPhase) {
        match phase {
            JobPhase::Succeeded => self.succeeded += 1,
            JobPhase::Failed | JobPhase::Lost => self.failed += 1,
            JobPhase::Cancelled => self.cancelled += 1,
            JobPhase::Skipped => self.skipped += 1,
            JobPhase::Pending | JobPhase::Waiting | JobPhase::Running | JobPhase::Interrupted => {}
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} succeeded, {} failed, {} cancelled, {} skipped",
            self.succeeded, self.failed, self.cancelled, self.skipped
        )
    }
}

/// Prints one line per state change; on a terminal, also a live status line.
async fn print_progress(
    mut rx: mpsc::UnboundedReceiver<RunEvent>,
    names: Vec<String>,
    quiet: bool,
    run_id: RunId,
    pipeline: String,
) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let total = names.len();
    let mut running: HashMap<usize, i64> = HashMap::new();
    let mut done = 0usize;
    let mut counts = Counts::default();
    if !quiet {
        eprintln!("run {run_id} of {pipeline}: {total} jobs");
    }
    while let Some(event) = rx.recv().await {
        if quiet {
            continue;
        }
        let line = match &event {
            RunEvent::JobSkipped { job, reason } => {
                done += 1;
                counts.add(JobPhase::Skipped);
                format!("{:<24} Skipped ({reason})", names[*job])
            }
            RunEvent::AttemptStarted { job, attempt } => {
                running.insert(*job, *attempt);
                format!("{:<24} Running (attempt {attempt})", names[*job])
            }
            RunEvent::JobWaiting { job } => {
                format!("{:<24} Waiting (pre-check sensor)", names[*job])
            }
            RunEvent::SensorPassed { job } => {
                format!("{:<24} Running (sensor passed)", names[*job])
            }
            RunEvent::NoWorker { job, waiting } => {
                if *waiting {
                    format!(
                        "{:<24} Pending (NoWorker: no live worker matches its runOn)",
                        names[*job]
                    )
                } else {
                    format!("{:<24} Running (a worker took it)", names[*job])
                }
            }
            RunEvent::AttemptFailedWillRetry {
                job,
                attempt,
                reason,
                delay,
            } => {
                running.remove(job);
                format!(
                    "{:<24} attempt {attempt} failed ({reason}); retry in {:.1}s",
                    names[*job],
                    delay.as_secs_f64()
                )
            }
            RunEvent::JobFinished {
                job,
                phase,
                reason,
                exit_code,
            } => {
                running.remove(job);
                done += 1;
                counts.add(*phase);
                let code = exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
                let phase_text = match phase {
                    JobPhase::Succeeded => "Succeeded".to_string(),
                    other => other.to_string(),
                };
                format!("{:<24} {phase_text} ({reason}{code})", names[*job])
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "[{elapsed:>7.2}s] {line}");
        if tty {
            let _ = write!(
                err,
                "[{elapsed:>7.2}s] {done}/{total} done ({counts}), {} running",
                running.len()
            );
            let _ = err.flush();
        }
    }
    if tty && !quiet {
        eprint!("\r\x1b[2K");
    }
}

/// The `--dry-run` plan: levels of the DAG, with what would be skipped and why.
fn dry_run_text(plan: &Plan, skip: &[String], workers: usize) -> String {
    let levels = plan.dag.levels().unwrap_or_default();
    let depth = levels.iter().copied().max().map_or(0, |m| m + 1);
    let mut out = format!(
        "plan of pipeline/{}: {} jobs in {depth} levels, {} at once{}\n",
        plan.pipeline,
        plan.jobs.len(),
        plan.max_parallel.map_or(workers, |m| m.min(workers)),
        if plan.fail_fast { ", fail-fast" } else { "" }
    );
    let skipped_by_user: Vec<bool> = plan
        .jobs
        .iter()
        .map(|j| skip.iter().any(|s| j.id == *s))
        .collect();
    for level in 0..depth {
        out.push_str(&format!("level {level}:\n"));
        for (i, job) in plan
            .jobs
            .iter()
            .enumerate()
            .filter(|(i, _)| levels[*i] == level)
        {
            let deps: Vec<&str> = job
                .dependencies
                .iter()
                .map(|d| plan.jobs[*d].id.as_str())
                .collect();
            let mut line = format!("  {}", job.id);
            if skipped_by_user[i] {
                line.push_str("  [SKIPPED: --skip]");
            } else {
                line.push_str("  would run");
            }
            if !deps.is_empty() {
                line.push_str(&format!(" after {}", deps.join(", ")));
            }
            if job.trigger != crate::spec::Trigger::AllSucceeded {
                line.push_str(&format!(" (trigger {})", trigger_name(job.trigger)));
            }
            if job.retry.limit > 0 {
                line.push_str(&format!(", up to {} retries", job.retry.limit));
            }
            if let Some(t) = job.timeout {
                line.push_str(&format!(", timeout {}", crate::spec::Duration::from(t)));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// A trigger as the manifest spells it (`allDone`), from its serde name.
fn trigger_name(trigger: crate::spec::Trigger) -> String {
    match serde_json::to_value(trigger) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{trigger:?}"),
    }
}

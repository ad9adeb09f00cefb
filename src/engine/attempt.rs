//! One attempt of one job: its environment and working folder, the pre-checks (a `wait` makes one
//! a sensor), the command in its own process group with its timeout, and the post-checks. It
//! reports its process and its outcome to the run loop, which records them; the attempt itself
//! writes only its log and a sensor's `Waiting` phase.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::env;
use crate::process::{self, ExitStatus, Output, SpawnSpec, Stdin};
use crate::scheduler::retry::Failure;
use crate::spec::{Check, Command, WaitPolicy};
use crate::state_dir::open_private_append;
use crate::status::outputs::{self, MAX_OUTPUT_BYTES, Outputs};
use crate::status::{JobPhase, JobReason};
use crate::store::{AttemptId, RunId, Store};

use super::logs::{append_log, ended_marker, write_marker};
use super::{ATTEMPT_TOKEN_VAR, Plan, RunEvent, attempt_token, checks, mask};

/// How long a job runs before its attempt reports the process (pid, group, start time) for the
/// loop to record on its own. A job that ends sooner has its pid recorded with its end, and
/// costs neither the start time's read nor a commit of its own. Until the pid is on record,
/// recovery finds the attempt's processes by their token.
const PID_REPORT_DELAY: Duration = Duration::from_millis(20);

/// How one attempt ended.
#[derive(Debug)]
pub(super) enum AttemptOutcome {
    Succeeded,
    Failed {
        failure: Failure,
        reason: JobReason,
        message: String,
    },
    /// Stopped by the loop (cancellation or run timeout).
    Stopped,
    /// A queued attempt whose worker stopped holding its lease (recorded `Lost` already): run
    /// again, not counted against `retry.limit`.
    Lost,
    /// A queued attempt its worker stopped because the worker was stopping: run again, not
    /// counted (as a controller's stop is not).
    Interrupted,
    /// A queued attempt this controller stopped waiting for (it is stopping, or no longer leads):
    /// nothing is recorded; the worker goes on and the next leader adopts the attempt.
    Detached,
}

#[derive(Debug)]
pub(super) struct AttemptResult {
    pub(super) job: usize,
    pub(super) attempt_id: AttemptId,
    /// The process's pid and group when the loop has not been sent them yet (a short job).
    pub(super) pid: Option<(i32, i32)>,
    pub(super) number: i64,
    pub(super) outcome: AttemptOutcome,
    pub(super) exit: Option<process::Exited>,
    pub(super) spawn_error: Option<String>,
    /// What a succeeded attempt wrote to `$EXECUTIONER_OUTPUT` (secrets masked); `None` when empty.
    pub(super) outputs: Option<Outputs>,
}

/// An attempt's process, as reported by its task.
#[derive(Debug)]
pub(super) struct Spawned {
    pub(super) attempt: AttemptId,
    pub(super) pid: i32,
    pub(super) pgid: i32,
    pub(super) start_time: Option<u64>,
}

pub(super) struct AttemptSpec {
    pub(super) store: Store,
    pub(super) plan: Arc<Plan>,
    pub(super) run: RunId,
    pub(super) round: i64,
    pub(super) job: usize,
    /// The attempt's id, once the loop has committed its row.
    pub(super) recorded: oneshot::Receiver<AttemptId>,
    pub(super) number: i64,
    pub(super) log_path: PathBuf,
    /// `$EXECUTIONER_OUTPUT` (created by the job when it writes one), removed after the attempt.
    pub(super) output_path: PathBuf,
    /// The outputs of the upstream jobs this job reads.
    pub(super) upstream: Vec<(usize, Arc<Outputs>)>,
    pub(super) grace: Duration,
    pub(super) plugin_dirs: Vec<PathBuf>,
    pub(super) cancel: CancellationToken,
    pub(super) kill_now: CancellationToken,
    pub(super) events: mpsc::UnboundedSender<RunEvent>,
    pub(super) spawned: mpsc::UnboundedSender<Spawned>,
}

/// One attempt, whose log part ends with a marker line saying how it ended.
pub(super) async fn run_attempt(spec: AttemptSpec) -> AttemptResult {
    let log_path = spec.log_path.clone();
    let output_path = spec.output_path.clone();
    let started = Instant::now();
    tracing::debug!("attempt started");
    let result = attempt_body(spec).await;
    // It may hold secrets in the clear; what is kept of it is the masked, stored outputs.
    let _ = std::fs::remove_file(&output_path);
    if result.attempt_id != AttemptId::from(0) {
        let marker = ended_marker(&result, started.elapsed());
        tracing::debug!("{marker}");
        append_log(&log_path, &marker);
    }
    result
}

async fn attempt_body(mut spec: AttemptSpec) -> AttemptResult {
    let job = &spec.plan.jobs[spec.job];
    // Prepared while the loop commits the attempt's row. Nothing here acts on the world but
    // creating the log file.
    let env = spec
        .plan
        .job_env(spec.job, spec.run, spec.number, &spec.upstream);
    let log = open_private_append(&spec.log_path);

    // Record before acting: nothing runs before the attempt's row is committed.
    // Awaited by reference: the checks borrow the whole spec later.
    let Ok(attempt_id) = (&mut spec.recorded).await else {
        // Not recorded: the loop has failed and stops; this attempt is never settled.
        return AttemptResult {
            job: spec.job,
            attempt_id: AttemptId::from(0),
            pid: None,
            number: spec.number,
            outcome: AttemptOutcome::Stopped,
            exit: None,
            spawn_error: None,
            outputs: None,
        };
    };
    let mut result = AttemptResult {
        job: spec.job,
        attempt_id,
        pid: None,
        number: spec.number,
        outcome: AttemptOutcome::Stopped,
        exit: None,
        spawn_error: None,
        outputs: None,
    };
    let fail = |failure, reason, message: String| AttemptOutcome::Failed {
        failure,
        reason,
        message,
    };
    let mut env = match env {
        Ok(env) => env,
        Err(e) => {
            result.outcome = env_failure(&e);
            return result;
        }
    };
    // The file is not created here: the job creates it when it writes (`>>`). Creating and
    // removing one per attempt measured ~0.8 ms per job (ext4, 1,000 `true` jobs), against a bar
    // of 0.3 ms for the whole per-job overhead; a job that writes nothing costs one failed stat
    // and one failed unlink instead. It lives in the run's `outputs/` folder, inside the private
    // (0700) log folder, and not beside the logs, whose ahead-of-time creation would make these
    // lookups wait.
    env.insert(
        OUTPUT_VAR.into(),
        spec.output_path.to_string_lossy().into_owned(),
    );
    // Every process of the attempt inherits this: recovery finds them by it even when the
    // executioner died before recording the pid, or after the group's leader exited.
    env.insert(
        ATTEMPT_TOKEN_VAR.into(),
        attempt_token(&spec.store, attempt_id),
    );
    let cwd = match env::interpolate("workingDir", &job.working_dir, &env) {
        Ok(dir) => PathBuf::from(dir),
        Err(e) => {
            result.outcome = fail(Failure::Env, JobReason::InvalidEnv, e.to_string());
            return result;
        }
    };
    let marked =
        log.and_then(|file| write_marker(file, &job.id, spec.number, spec.round, spec.run));
    let (log_file, offset) = match marked {
        Ok(v) => v,
        Err(e) => {
            result.outcome = fail(
                Failure::Spawn,
                JobReason::SpawnFailed,
                format!("cannot open the log {}: {e}", spec.log_path.display()),
            );
            return result;
        }
    };
    let check_ctx = checks::CheckContext {
        pipeline: &spec.plan.pipeline,
        run_id: spec.run,
        job: &job.id,
        attempt: spec.number,
        env: &env,
        cwd: &cwd,
        log: Some((&spec.log_path, offset)),
        plugin_dirs: &spec.plugin_dirs,
        store: &spec.store,
    };

    // Pre-checks (a `wait` turns one into a sensor, polled until it passes).
    if let Err(outcome) = run_checks(Stage::Pre, &job.pre_checks, &check_ctx, &spec).await {
        result.outcome = outcome;
        return result;
    }
    if spec.cancel.is_cancelled() {
        return result;
    }

    let argv: Vec<String> = match &job.command {
        Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        Command::Exec(args) => {
            let mut out = Vec::with_capacity(args.len());
            for a in args {
                match env::interpolate("command", a, &env) {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        result.outcome = env_failure(&e);
                        return result;
                    }
                }
            }
            out
        }
    };
    let Some((program, args)) = argv.split_first() else {
        result.outcome = fail(
            Failure::Spawn,
            JobReason::SpawnFailed,
            "empty command".into(),
        );
        return result;
    };
    // With secrets in the environment, output goes through a pipe and a masking copier;
    // without, the log file itself is the child's stdout and stderr (no copying at all).
    let (output, copier) = if spec.plan.secrets.is_empty() {
        (Output::File(log_file), None)
    } else {
        match mask::start(log_file, &spec.plan.secrets) {
            Ok((write_end, task)) => (Output::File(write_end), Some(task)),
            Err(e) => {
                result.outcome = fail(
                    Failure::Spawn,
                    JobReason::SpawnFailed,
                    format!("cannot create the output pipe: {e}"),
                );
                return result;
            }
        }
    };
    // Parameters and outputs are in the map for interpolation only.
    let exported: process::Environment = if spec.plan.params.is_empty() && spec.upstream.is_empty()
    {
        env.iter().collect()
    } else {
        env.iter().filter(|(k, _)| !env::is_qualified(k)).collect()
    };
    let spawn_spec = SpawnSpec {
        program: program.into(),
        args: args.iter().map(Into::into).collect(),
        env: exported,
        cwd: cwd.clone(),
        stdin: Stdin::Null,
        output,
    };
    let spawned = process::spawn(spawn_spec);
    // The copier ends when every writer is gone: the child's group is killed when its leader
    // exits, so waiting for it never hangs on a background grandchild.
    let copier = copier.map(|task| async move {
        let _ = task.await;
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let message = crate::error_chain::render(&e);
            append_log(&spec.log_path, &format!("cannot start: {message}"));
            result.spawn_error = Some(message.clone());
            result.outcome = fail(Failure::Spawn, JobReason::SpawnFailed, message);
            return result;
        }
    };
    crate::failpoint::hit("spawned");
    // A job still running after PID_REPORT_DELAY reports its process, for the loop to record so
    // that recovery can find and stop the group; a shorter one's pid goes with its end.
    result.pid = Some((child.pid(), child.pgid()));
    let report = tokio::time::sleep(PID_REPORT_DELAY);
    tokio::pin!(report);
    let mut reported = false;

    let timeout = job.timeout;
    let timed_out = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    enum End {
        Exited(Result<process::Exited, process::ProcessError>),
        TimedOut,
        Cancelled,
    }
    tokio::pin!(timed_out);
    let end = loop {
        tokio::select! {
            r = child.wait() => break End::Exited(r),
            _ = &mut timed_out => break End::TimedOut,
            _ = spec.cancel.cancelled() => break End::Cancelled,
            _ = &mut report, if !reported => {
                reported = true;
                result.pid = None;
                let _ = spec.spawned.send(Spawned {
                    attempt: attempt_id,
                    pid: child.pid(),
                    pgid: child.pgid(),
                    start_time: child.start_time(),
                });
            }
        }
    };
    let exited = match end {
        End::Exited(r) => r,
        End::TimedOut | End::Cancelled => {
            let stopped = tokio::select! {
                r = child.stop(spec.grace) => r,
                _ = spec.kill_now.cancelled() => {
                    child.kill_group();
                    child.wait().await
                }
            };
            // The group's other members die asynchronously: a retry must not start while they
            // still hold the job's files.
            let group = child.pgid();
            let _ = tokio::task::spawn_blocking(move || {
                process::wait_group_gone(group, Duration::from_secs(5))
            })
            .await;
            if matches!(end, End::TimedOut) {
                let limit = timeout.unwrap_or_default();
                append_log(
                    &spec.log_path,
                    &format!("timed out after {limit:?}; process group stopped"),
                );
                result.exit = stopped.ok();
                result.outcome = fail(
                    Failure::Timeout,
                    JobReason::Timeout,
                    format!("timed out after {limit:?}"),
                );
            } else {
                result.exit = stopped.ok();
                result.outcome = AttemptOutcome::Stopped;
            }
            return result;
        }
    };
    if let Some(copier) = copier {
        copier.await;
    }
    let exited = match exited {
        Ok(e) => e,
        Err(e) => {
            let message = crate::error_chain::render(&e);
            result.outcome = fail(Failure::Spawn, JobReason::SpawnFailed, message);
            return result;
        }
    };
    let status = exited.status;
    result.exit = Some(exited);
    match status {
        ExitStatus::Code(0) => {}
        ExitStatus::Code(code) => {
            result.outcome = fail(
                Failure::ExitCode(code),
                JobReason::ExitCode,
                format!("exited with code {code}"),
            );
            return result;
        }
        ExitStatus::Signal(sig) => {
            result.outcome = fail(
                Failure::Signal(sig),
                JobReason::Signaled,
                format!("killed by signal {sig}"),
            );
            return result;
        }
    }

    if let Err(outcome) = run_checks(Stage::Post, &job.post_checks, &check_ctx, &spec).await {
        result.outcome = outcome;
        return result;
    }
    match read_outputs(&spec) {
        Ok(outputs) => {
            result.outputs = outputs;
            result.outcome = AttemptOutcome::Succeeded;
        }
        Err(outcome) => result.outcome = outcome,
    }
    result
}

/// The variable naming the file a job writes its outputs to.
pub const OUTPUT_VAR: &str = "EXECUTIONER_OUTPUT";

/// How an environment that cannot be built fails the attempt: an output the upstream did not
/// produce is `MissingOutput`, anything else `InvalidEnv`. Neither is retried (`Failure::Env`):
/// the upstream's outputs do not change while this job waits (Argo and GitHub Actions fail it too).
fn env_failure(e: &env::EnvError) -> AttemptOutcome {
    let missing = match e {
        env::EnvError::Undefined { name, .. } => match env::qualified(name) {
            Some(env::Qualified::Output { job, key }) => Some(format!(
                "job `{job}` produced no output {key} (read as ${{{name}}})"
            )),
            Some(env::Qualified::Param(_)) | None => None,
        },
        env::EnvError::Cycle { .. } | env::EnvError::Syntax { .. } => None,
    };
    let (reason, message) = match missing {
        Some(message) => (JobReason::MissingOutput, message),
        None => (JobReason::InvalidEnv, e.to_string()),
    };
    AttemptOutcome::Failed {
        failure: Failure::Env,
        reason,
        message,
    }
}

/// Reads what the command wrote to `$EXECUTIONER_OUTPUT`: nothing (the usual case, no file)
/// costs one stat; more than [`MAX_OUTPUT_BYTES`] or a malformed file fails the attempt. Values holding a
/// secret are masked before anything stores, shows or passes them on.
fn read_outputs(spec: &AttemptSpec) -> Result<Option<Outputs>, AttemptOutcome> {
    let failed = |reason, message: String| {
        append_log(&spec.log_path, &message);
        AttemptOutcome::Failed {
            failure: Failure::Output,
            reason,
            message,
        }
    };
    let too_large = |size: u64| {
        format!(
            "wrote {size} bytes to ${OUTPUT_VAR}; at most {MAX_OUTPUT_BYTES} (1 MiB) are allowed"
        )
    };
    let size = match std::fs::metadata(&spec.output_path) {
        Ok(meta) => meta.len(),
        // Never written.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(failed(
                JobReason::InvalidOutput,
                format!("cannot read the outputs file: {e}"),
            ));
        }
    };
    if size == 0 {
        return Ok(None);
    }
    if size > MAX_OUTPUT_BYTES {
        return Err(failed(JobReason::OutputTooLarge, too_large(size)));
    }
    let bytes = std::fs::read(&spec.output_path).map_err(|e| {
        failed(
            JobReason::InvalidOutput,
            format!("cannot read the outputs file: {e}"),
        )
    })?;
    // A process the job left behind may have grown it since the stat.
    if bytes.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(failed(
            JobReason::OutputTooLarge,
            too_large(bytes.len() as u64),
        ));
    }
    let mut outputs =
        outputs::parse(&bytes).map_err(|e| failed(JobReason::InvalidOutput, e.to_string()))?;
    for (key, value) in outputs.iter_mut() {
        if !spec.plan.secrets.is_empty() {
            *value = mask::mask_text(value, &spec.plan.secrets);
        }
        let first = value.lines().next().unwrap_or("");
        let shown: String = first.chars().take(200).collect();
        let more = if shown.len() < value.len() {
            " ..."
        } else {
            ""
        };
        append_log(&spec.log_path, &format!("output {key}={shown}{more}"));
    }
    Ok(Some(outputs))
}

/// Which of a job's checks run: before its command or after it.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Pre,
    Post,
}

impl Stage {
    /// How the log names a check of this stage.
    fn label(self) -> &'static str {
        match self {
            Stage::Pre => "pre-check",
            Stage::Post => "post-check",
        }
    }

    /// How a failed check of this stage fails the attempt.
    fn failure(self) -> (Failure, JobReason) {
        match self {
            Stage::Pre => (Failure::PreCheck, JobReason::PreCheckFailed),
            Stage::Post => (Failure::PostCheck, JobReason::PostCheckFailed),
        }
    }
}

/// Runs `checks` in order, each verdict logged; the first that fails ends the attempt with the
/// outcome returned. Before the command a check with `wait` is a sensor, polled until it passes
/// (validation allows `wait` on pre-checks only, so after the command it is not looked at).
async fn run_checks(
    stage: Stage,
    checks: &[Check],
    ctx: &checks::CheckContext<'_>,
    spec: &AttemptSpec,
) -> Result<(), AttemptOutcome> {
    for check in checks {
        let verdict = match (stage, &check.wait) {
            (Stage::Pre, Some(wait)) => sense(check, wait, ctx, spec).await?,
            (Stage::Pre, None) | (Stage::Post, _) => checks::run_check(check, ctx).await,
        };
        append_log(
            &spec.log_path,
            &format!(
                "{} {}: {}",
                stage.label(),
                check_name(check),
                verdict.message
            ),
        );
        if !verdict.passed {
            let (failure, reason) = stage.failure();
            return Err(AttemptOutcome::Failed {
                failure,
                reason,
                message: verdict.message,
            });
        }
    }
    Ok(())
}

/// A pre-check with `wait`: the job is Waiting while the check is polled every `interval` until it
/// passes (its verdict), the wait's timeout passes (`CheckTimeout`) or the attempt is stopped.
async fn sense(
    check: &Check,
    wait: &WaitPolicy,
    ctx: &checks::CheckContext<'_>,
    spec: &AttemptSpec,
) -> Result<checks::Verdict, AttemptOutcome> {
    let job = &spec.plan.jobs[spec.job];
    let _ = spec
        .store
        .set_job(
            spec.run,
            &job.id,
            JobPhase::Waiting,
            None,
            Some("waiting for a pre-check"),
        )
        .await;
    let _ = spec.events.send(RunEvent::JobWaiting { job: spec.job });
    let until = tokio::time::Instant::now() + wait.timeout.as_std();
    let interval = wait
        .interval
        .map_or(Duration::from_secs(10), |d| d.as_std());
    loop {
        let v = checks::run_check(check, ctx).await;
        if v.passed {
            // The job is no longer waiting: what follows (more checks, the command) is its run.
            let _ = spec
                .store
                .set_job(spec.run, &job.id, JobPhase::Running, None, None)
                .await;
            let _ = spec.events.send(RunEvent::SensorPassed { job: spec.job });
            return Ok(v);
        }
        if tokio::time::Instant::now() + interval > until {
            return Err(AttemptOutcome::Failed {
                failure: Failure::CheckTimeout,
                reason: JobReason::CheckTimeout,
                message: format!(
                    "pre-check still failing after {}: {}",
                    wait.timeout, v.message
                ),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = spec.cancel.cancelled() => return Err(AttemptOutcome::Stopped),
        }
    }
}

fn check_name(check: &Check) -> &'static str {
    check.kinds().first().map_or("check", |k| k.name())
}

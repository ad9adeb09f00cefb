//! Runs one pipeline run to completion: the scheduler's decisions become attempts (pre-checks,
//! command, post-checks), every state change is recorded in the store before it is acted on, and
//! progress is reported as [`RunEvent`]s for whoever displays it.
//!
//! One loop per run owns all the run's state and has one `select!`: attempt completions (a
//! `JoinSet`), attempts' pids, retry timers, a free worker, the run deadline and cancellation.
//! Each turn of the loop gathers what happened, decides (ends, retries, skips, the next attempts)
//! and records all of it in one transaction (a [`Turn`] over a store [`Batch`]) before it reports
//! anything or launches the new attempts. So an attempt's row is committed before its process is
//! spawned, and a job's end is committed with the start of the dependents it releases. Attempts
//! are tasks that own their child process and report its pid back to the loop, which records it
//! with its next commit. See docs/engine.md.

pub mod checks;
pub mod launch;
mod mask;
pub mod plan;
mod prefetch;
pub mod resume;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::env;
use crate::process::{self, ExitStatus, Output, SpawnSpec, Stdin};
use crate::scheduler::retry::{self, Failure};
use crate::scheduler::{Decision, JobRules, Outcome, Scheduler, Start};
use crate::spec::Command;
use crate::status::{JobPhase, Reason, RunPhase};
use crate::store::{AttemptEnd, AttemptId, Batch, RunId, Store, StoreError};

pub use plan::{Plan, PlanError};

/// The variable that marks every process of an attempt (see [`attempt_token`]).
pub const ATTEMPT_TOKEN_VAR: &str = "EXECUTIONER_ATTEMPT_TOKEN";

/// A token unique to one attempt of one state database: `<hash of the database path>:<attempt id>`.
pub fn attempt_token(store: &Store, attempt: AttemptId) -> String {
    format!("{}:{attempt}", store.identity())
}

/// How long a job runs before its attempt reports the process (pid, group, start time) for the
/// loop to record on its own. A job that ends sooner has its pid recorded with its end, and
/// costs neither the start time's read nor a commit of its own. Until the pid is on record,
/// recovery finds the attempt's processes by their token.
const PID_REPORT_DELAY: Duration = Duration::from_millis(20);

/// A job lost this many times fails (`LostTooOften`) instead of running again.
pub const MAX_LOST: i64 = 3;

/// What the engine shares with other runs and needs from its caller.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub state_dir: PathBuf,
    /// Global worker limit, shared by every run of the process.
    pub workers: Arc<Semaphore>,
    /// Grace period between SIGTERM and SIGKILL.
    pub shutdown_grace: Duration,
    pub plugin_dirs: Vec<PathBuf>,
}

/// One run (or resume round) to execute.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: RunId,
    pub round: i64,
    /// How each job enters this round (run, skip, keep an earlier result).
    pub starts: Vec<Start>,
    /// Attempts already made per job in earlier rounds (attempt numbers continue after them).
    pub previous_attempts: Vec<i64>,
    /// Times each job was lost so far.
    pub lost: Vec<i64>,
}

/// Progress, in the past tense, for display.
#[derive(Debug, Clone)]
pub enum RunEvent {
    JobSkipped {
        job: usize,
        reason: Reason,
    },
    AttemptStarted {
        job: usize,
        attempt: i64,
    },
    JobWaiting {
        job: usize,
    },
    AttemptFailedWillRetry {
        job: usize,
        attempt: i64,
        reason: Reason,
        delay: Duration,
    },
    JobFinished {
        job: usize,
        phase: JobPhase,
        reason: Reason,
        exit_code: Option<i32>,
    },
}

/// How a run can be stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// A user's cancellation (`run` interrupted, a deletion, a replacement): running jobs are
    /// stopped and recorded Cancelled, the others skipped, and the run ends Cancelled.
    pub cancel: CancellationToken,
    /// The controller is stopping (a restart, an upgrade): running jobs are stopped and recorded
    /// Interrupted (`ControllerStopped`), nothing else changes, and the run stays Running for the
    /// next controller to continue.
    pub interrupt: CancellationToken,
    /// Skip the grace period of the stops above: kill at once.
    pub kill_now: CancellationToken,
}

/// The end of a run, or of this process's part in it.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: RunId,
    /// The run's verdict; `Running` when it was interrupted (reason `ControllerStopped`).
    pub phase: RunPhase,
    pub reason: Reason,
}

/// Why the engine stopped without finishing the run (the store failed: a critical error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("recording run {run}: {source}")]
    Store {
        run: RunId,
        #[source]
        source: StoreError,
    },
    #[error("cannot create the log folder {}: {source}", path.display())]
    Logs {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Folder of a run's logs: `STATE/logs/PIPELINE/RUN`. Names are validated, so it stays inside.
pub fn run_log_dir(state_dir: &Path, pipeline: &str, run: RunId) -> PathBuf {
    state_dir.join("logs").join(pipeline).join(run.to_string())
}

/// `STATE/logs/PIPELINE/RUN/JOB.log`.
pub fn job_log_path(state_dir: &Path, pipeline: &str, run: RunId, job: &str) -> PathBuf {
    run_log_dir(state_dir, pipeline, run).join(format!("{job}.log"))
}

/// How the run should stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    Cancelled,
    RunTimeout,
    Interrupted,
}

impl Halt {
    /// The reason recorded on an attempt this halt stopped (its job gets the same).
    fn stopped_reason(self) -> Reason {
        match self {
            Halt::Cancelled => Reason::Cancelled,
            Halt::RunTimeout => Reason::Timeout,
            Halt::Interrupted => Reason::ControllerStopped,
        }
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum AttemptOutcome {
    Succeeded,
    Failed {
        failure: Failure,
        reason: Reason,
        message: String,
    },
    /// Stopped by the loop (cancellation or run timeout).
    Stopped,
}

#[derive(Debug)]
struct AttemptResult {
    job: usize,
    attempt_id: AttemptId,
    /// The process's pid and group when the loop has not been sent them yet (a short job).
    pid: Option<(i32, i32)>,
    number: i64,
    outcome: AttemptOutcome,
    exit: Option<process::Exited>,
    spawn_error: Option<String>,
}

/// Per-job bookkeeping of the loop.
#[derive(Debug, Clone)]
struct JobTrack {
    counted: u32,
    next_number: i64,
    first_start: Option<Instant>,
}

/// Runs `request` of `plan` to its end.
#[tracing::instrument(name = "run", skip_all, fields(pipeline = %plan.pipeline, run = request.run_id))]
pub async fn execute(
    store: &Store,
    plan: Arc<Plan>,
    request: RunRequest,
    options: &EngineOptions,
    events: mpsc::UnboundedSender<RunEvent>,
    stop: Stop,
) -> Result<RunReport, EngineError> {
    let Stop {
        cancel,
        interrupt,
        kill_now,
    } = stop;
    let run = request.run_id;
    let store_err = |source| EngineError::Store { run, source };
    let log_dir = run_log_dir(&options.state_dir, &plan.pipeline, run);
    create_private_dir(&log_dir).map_err(|source| EngineError::Logs {
        path: log_dir.clone(),
        source,
    })?;
    let mut run_log = RunLog::open(&log_dir.join("run.log"));
    run_log.line(&format!(
        "round {} of run {run} of {} started",
        request.round, plan.pipeline
    ));

    let n = plan.jobs.len();
    let mut starts = request.starts.clone();
    let mut turn = Turn::default();
    // A job lost too often fails instead of running again.
    let mut lost_out: Vec<usize> = Vec::new();
    for (i, start) in starts.iter_mut().enumerate() {
        if *start == Start::Run && request.lost.get(i).copied().unwrap_or(0) >= MAX_LOST {
            *start = Start::Keep(Outcome::Failed {
                ignored: plan.jobs[i].continue_on_error,
            });
            lost_out.push(i);
        }
    }
    for &i in &lost_out {
        turn.batch.set_job(
            &plan.jobs[i].id,
            JobPhase::Failed,
            Some(Reason::LostTooOften),
            Some("lost 3 times"),
        );
        turn.events.push(RunEvent::JobFinished {
            job: i,
            phase: JobPhase::Failed,
            reason: Reason::LostTooOften,
            exit_code: None,
        });
    }

    let rules: Vec<JobRules> = plan
        .jobs
        .iter()
        .zip(&starts)
        .map(|(j, s)| JobRules {
            trigger: j.trigger,
            continue_on_error: j.continue_on_error,
            start: *s,
        })
        .collect();
    let (scheduler, decisions) = Scheduler::new(plan.dag.clone(), rules, plan.fail_fast);
    let prefetch = prefetch::LogPrefetch::start(
        (0..n)
            .filter(|&i| starts[i] == Start::Run)
            .map(|i| {
                let path = job_log_path(&options.state_dir, &plan.pipeline, run, &plan.jobs[i].id);
                (i, path)
            })
            .collect(),
        prefetch::WINDOW,
    );
    turn.skipped(&plan, &decisions);

    let mut state = LoopState {
        tracks: (0..n)
            .map(|i| JobTrack {
                counted: 0,
                next_number: request.previous_attempts.get(i).copied().unwrap_or(0) + 1,
                first_start: None,
            })
            .collect(),
        scheduler,
        retry_at: BTreeSet::new(),
        running: 0,
        halted: None,
        rng: <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng(),
    };
    let max_parallel = plan.max_parallel.unwrap_or(usize::MAX).max(1);
    let deadline = plan.timeout.map(|t| tokio::time::Instant::now() + t);
    // Each attempt holds its worker permit until the loop has settled its end, so no other job
    // can take the worker before this one's outcome is known (fail-fast, declaration order).
    let mut attempts: JoinSet<(AttemptResult, tokio::sync::OwnedSemaphorePermit)> = JoinSet::new();
    // Attempts report their process here; the loop records it with its next commit.
    let (spawned_tx, mut spawned_rx) = mpsc::unbounded_channel::<Spawned>();
    // Not a child of `cancel`: attempts are stopped by the loop, after it has halted the
    // scheduler, so that no stopped attempt is mistaken for a failure that releases dependents.
    let attempt_cancel = CancellationToken::new();
    // A worker permit this loop waited for (all were taken), kept for its next start. Waiting for
    // one and giving it back instead would let two runs sharing the workers hand it to each other
    // forever, neither ever starting a job (a livelock the controller's tests once hit).
    let mut reserved: Option<tokio::sync::OwnedSemaphorePermit> = None;

    loop {
        // Start what can start. Retries first (they were ready earlier), then new jobs. The
        // attempts are recorded with the rest of this turn; their tasks prepare meanwhile and
        // act only once the commit has given them their ids.
        while state.running < max_parallel && state.halted.is_none() {
            let due = state
                .retry_at
                .first()
                .copied()
                .filter(|(at, _)| *at <= tokio::time::Instant::now());
            let job = match due {
                Some(entry) => {
                    state.retry_at.remove(&entry);
                    Some(entry.1)
                }
                None if state.scheduler.has_ready() => None,
                None => break,
            };
            let permit = match reserved.take() {
                Some(permit) => permit,
                None => match options.workers.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        if let Some(j) = job {
                            state.retry_at.insert((tokio::time::Instant::now(), j));
                        }
                        break;
                    }
                },
            };
            let job = match job {
                Some(j) => j,
                None => match state.scheduler.next_ready() {
                    Some(j) => j,
                    None => break,
                },
            };
            let track = &mut state.tracks[job];
            let number = track.next_number;
            track.next_number += 1;
            track.counted += 1;
            track.first_start.get_or_insert_with(Instant::now);
            turn.batch
                .attempt_started(&plan.jobs[job].id, number, i64::from(track.counted));
            turn.events.push(RunEvent::AttemptStarted {
                job,
                attempt: number,
            });
            // The task prepares (environment, log file) while the turn is committed, and waits
            // for its attempt's id before it acts.
            let (recorded, recorded_rx) = oneshot::channel();
            let ctx = AttemptSpec {
                store: store.clone(),
                plan: plan.clone(),
                run,
                round: request.round,
                job,
                recorded: recorded_rx,
                number,
                log_path: job_log_path(&options.state_dir, &plan.pipeline, run, &plan.jobs[job].id),
                grace: options.shutdown_grace,
                plugin_dirs: options.plugin_dirs.clone(),
                cancel: attempt_cancel.clone(),
                kill_now: kill_now.clone(),
                events: events.clone(),
                spawned: spawned_tx.clone(),
            };
            let span = tracing::info_span!("attempt", job = %plan.jobs[job].id, attempt = number);
            let attempt = tracing::Instrument::instrument(run_attempt(ctx), span);
            attempts.spawn(async move { (attempt.await, permit) });
            turn.launches.push(Launch { recorded });
            prefetch.started();
            state.running += 1;
        }

        // A kept permit no start needed (the run halted meanwhile) goes back to the others.
        reserved = None;

        // Record everything this turn decided, in one transaction, before acting on any of it.
        // (A failed commit drops the launches: their tasks then end without acting.)
        for (launch, attempt_id) in turn
            .commit(store, run, request.round, &events, &mut run_log)
            .await
            .map_err(store_err)?
        {
            crate::failpoint::hit("attempt-recorded");
            let _ = launch.recorded.send(attempt_id);
        }

        if state.running == 0 {
            if let Some(halt) = state.halted {
                // Retries still waiting will not happen (in this process, when interrupted).
                for (_, job) in std::mem::take(&mut state.retry_at) {
                    if halt == Halt::Interrupted {
                        turn.interrupted(&plan, job);
                    } else {
                        turn.finish_job(&plan, job, JobPhase::Cancelled, Reason::Cancelled, None);
                        state.scheduler.finished(job, Outcome::Cancelled);
                    }
                }
                break;
            }
            if state.retry_at.is_empty() && !state.scheduler.has_ready() {
                break;
            }
        }

        let next_retry = state.retry_at.first().map(|(at, _)| *at);
        let wants_worker = state.running < max_parallel
            && state.halted.is_none()
            && (state.scheduler.has_ready()
                || next_retry.is_some_and(|at| at <= tokio::time::Instant::now()));
        let halted = state.halted.is_some();
        tokio::select! {
            biased;
            Some(joined) = attempts.join_next(), if state.running > 0 => {
                state.settle(&plan, joined, &mut turn);
            }
            Some(spawned) = spawned_rx.recv() => turn.spawned(spawned),
            _ = sleep_until_opt(next_retry), if next_retry.is_some() && !halted => {}
            permit = options.workers.clone().acquire_owned(), if wants_worker && reserved.is_none() && options.workers.available_permits() == 0 => {
                reserved = permit.ok();
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && !halted => {
                state.halted = Some(Halt::RunTimeout);
                turn.lines.push("run timeout: stopping running jobs, skipping the rest".into());
                let decisions = state.scheduler.halt_with(Reason::RunTimeout);
                turn.skipped(&plan, &decisions);
                attempt_cancel.cancel();
            }
            _ = cancel.cancelled(), if !halted => {
                state.halted = Some(Halt::Cancelled);
                turn.lines.push("cancelled: stopping running jobs, skipping the rest".into());
                let decisions = state.scheduler.halt_with(Reason::Cancelled);
                turn.skipped(&plan, &decisions);
                attempt_cancel.cancel();
            }
            _ = interrupt.cancelled(), if !halted => {
                // Nothing new starts and nothing is skipped: the jobs not started stay Pending
                // for the controller that continues the run.
                state.halted = Some(Halt::Interrupted);
                turn.lines.push("controller stopping: stopping running jobs; the run continues at the next start".into());
                attempt_cancel.cancel();
            }
        }
        // Whatever else has happened meanwhile joins this turn (group commit).
        while let Some(joined) = attempts.try_join_next() {
            state.settle(&plan, joined, &mut turn);
        }
        while let Ok(spawned) = spawned_rx.try_recv() {
            turn.spawned(spawned);
        }
    }

    // Whatever is left (the cancelled retries) is recorded before the run's end.
    turn.commit(store, run, request.round, &events, &mut run_log)
        .await
        .map_err(store_err)?;
    // A log made ahead for a job that did not run this round goes again (if still empty).
    for job in prefetch.finish() {
        if state.tracks[job].counted == 0 {
            let path = job_log_path(&options.state_dir, &plan.pipeline, run, &plan.jobs[job].id);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    if state.halted == Some(Halt::Interrupted) {
        run_log.line(&format!("run {run} interrupted (ControllerStopped)"));
        return Ok(RunReport {
            run_id: run,
            phase: RunPhase::Running,
            reason: Reason::ControllerStopped,
        });
    }
    // The verdict is the store's, derived from every job of the run (kept ones included).
    let (phase, reason) = store
        .close_run(run, &plan.continue_on_error())
        .await
        .map_err(store_err)?;
    run_log.line(&format!("run {run} {phase} ({reason})"));
    Ok(RunReport {
        run_id: run,
        phase,
        reason,
    })
}

/// An attempt's process, as reported by its task.
#[derive(Debug)]
struct Spawned {
    attempt: AttemptId,
    pid: i32,
    pgid: i32,
    start_time: Option<u64>,
}

/// An attempt started in this turn: its task waits for the id the commit gives it.
struct Launch {
    recorded: oneshot::Sender<AttemptId>,
}

/// What one turn of the loop has decided and not yet recorded: the store changes, the attempts to
/// launch, and what to report. Nothing is reported or launched before [`Turn::commit`].
#[derive(Default)]
struct Turn {
    batch: Batch,
    launches: Vec<Launch>,
    events: Vec<RunEvent>,
    lines: Vec<String>,
    /// The batch decides a job's final phase (the `finished` failpoint follows its commit).
    finishes: bool,
}

impl Turn {
    /// Commits the batch, then reports its events and log lines; returns the attempts to launch
    /// with their ids.
    async fn commit(
        &mut self,
        store: &Store,
        run: RunId,
        round: i64,
        events: &mpsc::UnboundedSender<RunEvent>,
        run_log: &mut RunLog,
    ) -> Result<Vec<(Launch, AttemptId)>, StoreError> {
        let ids = if self.batch.is_empty() {
            Vec::new()
        } else {
            store.commit(run, round, &mut self.batch).await?
        };
        if std::mem::take(&mut self.finishes) {
            crate::failpoint::hit("finished");
        }
        for line in self.lines.drain(..) {
            run_log.line(&line);
        }
        for event in self.events.drain(..) {
            let _ = events.send(event);
        }
        Ok(self.launches.drain(..).zip(ids).collect())
    }

    fn finish_job(
        &mut self,
        plan: &Plan,
        job: usize,
        phase: JobPhase,
        reason: Reason,
        exit_code: Option<i32>,
    ) {
        self.batch
            .set_job(&plan.jobs[job].id, phase, Some(reason), None);
        self.finished(plan, job, phase, reason, exit_code);
    }

    /// Reports a job's final phase (recorded in the batch by the caller).
    fn finished(
        &mut self,
        plan: &Plan,
        job: usize,
        phase: JobPhase,
        reason: Reason,
        exit_code: Option<i32>,
    ) {
        self.finishes = true;
        self.lines
            .push(format!("{} {phase} ({reason})", plan.jobs[job].id));
        self.events.push(RunEvent::JobFinished {
            job,
            phase,
            reason,
            exit_code,
        });
    }

    fn skipped(&mut self, plan: &Plan, decisions: &[Decision]) {
        for Decision::Skipped { job, reason } in decisions {
            self.batch
                .set_job(&plan.jobs[*job].id, JobPhase::Skipped, Some(*reason), None);
            self.lines
                .push(format!("{} Skipped ({reason})", plan.jobs[*job].id));
            self.events.push(RunEvent::JobSkipped {
                job: *job,
                reason: *reason,
            });
        }
    }

    /// A job waiting for a retry when the controller stopped: it continues at the next start.
    fn interrupted(&mut self, plan: &Plan, job: usize) {
        self.batch.set_job(
            &plan.jobs[job].id,
            JobPhase::Interrupted,
            Some(Reason::ControllerStopped),
            None,
        );
        self.lines.push(format!(
            "{} Interrupted (ControllerStopped)",
            plan.jobs[job].id
        ));
    }

    fn spawned(&mut self, spawned: Spawned) {
        self.batch.attempt_spawned(
            spawned.attempt,
            spawned.pid,
            spawned.pgid,
            spawned.start_time,
        );
    }
}

/// The loop's own state, besides the turn in progress.
struct LoopState {
    tracks: Vec<JobTrack>,
    scheduler: Scheduler,
    retry_at: BTreeSet<(tokio::time::Instant, usize)>,
    /// Attempts launched or about to be, whose end is not settled yet.
    running: usize,
    halted: Option<Halt>,
    rng: rand::rngs::StdRng,
}

impl LoopState {
    /// Decides what an ended attempt means (a retry, or the job's final phase and what that
    /// releases) and adds it to the turn.
    fn settle(
        &mut self,
        plan: &Plan,
        joined: Result<(AttemptResult, tokio::sync::OwnedSemaphorePermit), tokio::task::JoinError>,
        turn: &mut Turn,
    ) {
        self.running -= 1;
        let (result, _permit) = match joined {
            Ok(r) => r,
            Err(e) => {
                // An attempt task panicked: a defect, but the run must still end cleanly.
                turn.lines
                    .push(format!("internal error in an attempt: {e}"));
                return;
            }
        };
        let job = result.job;
        crate::failpoint::hit("exited");
        let (decision, phase) =
            settle_attempt(plan, &mut self.tracks, &result, self.halted, &mut self.rng);
        let end = attempt_end(&result, &phase, self.halted);
        if let Some((pid, pgid)) = result.pid {
            turn.batch
                .attempt_spawned(result.attempt_id, pid, pgid, None);
        }
        match decision {
            Settled::Retry { delay, reason } => {
                turn.batch.attempt_finished(result.attempt_id, &end, None);
                turn.lines.push(format!(
                    "{} attempt {} failed ({reason}); retrying in {delay:?}",
                    plan.jobs[job].id, result.number
                ));
                turn.events.push(RunEvent::AttemptFailedWillRetry {
                    job,
                    attempt: result.number,
                    reason,
                    delay,
                });
                self.retry_at
                    .insert((tokio::time::Instant::now() + delay, job));
            }
            Settled::Final {
                phase,
                reason,
                outcome,
            } => {
                let exit_code = result.exit.as_ref().and_then(|e| match e.status {
                    ExitStatus::Code(c) => Some(c),
                    ExitStatus::Signal(_) => None,
                });
                turn.batch
                    .attempt_finished(result.attempt_id, &end, Some((phase, Some(reason))));
                turn.finished(plan, job, phase, reason, exit_code);
                let decisions = self.scheduler.finished(job, outcome.scheduler());
                turn.skipped(plan, &decisions);
            }
            Settled::Interrupted => {
                // Its dependents are not released: they wait for the next controller.
                turn.batch.attempt_finished(
                    result.attempt_id,
                    &end,
                    Some((JobPhase::Interrupted, Some(Reason::ControllerStopped))),
                );
                turn.lines.push(format!(
                    "{} Interrupted (ControllerStopped)",
                    plan.jobs[job].id
                ));
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the loop does after an attempt.
enum Settled {
    Retry {
        delay: Duration,
        reason: Reason,
    },
    Final {
        phase: JobPhase,
        reason: Reason,
        outcome: FinalOutcome,
    },
    /// Stopped by a controller that is stopping: neither a failure nor an end.
    Interrupted,
}

#[derive(Debug, Clone, Copy)]
enum FinalOutcome {
    Succeeded,
    Failed { ignored: bool },
    Cancelled,
}

impl FinalOutcome {
    fn scheduler(self) -> Outcome {
        match self {
            FinalOutcome::Succeeded => Outcome::Succeeded,
            FinalOutcome::Failed { ignored } => Outcome::Failed { ignored },
            FinalOutcome::Cancelled => Outcome::Cancelled,
        }
    }
}

fn settle_attempt(
    plan: &Plan,
    tracks: &mut [JobTrack],
    result: &AttemptResult,
    halted: Option<Halt>,
    rng: &mut impl Rng,
) -> (Settled, JobPhase) {
    let job = &plan.jobs[result.job];
    let track = &tracks[result.job];
    match &result.outcome {
        AttemptOutcome::Succeeded => (
            Settled::Final {
                phase: JobPhase::Succeeded,
                reason: Reason::Completed,
                outcome: FinalOutcome::Succeeded,
            },
            JobPhase::Succeeded,
        ),
        AttemptOutcome::Stopped => match halted {
            Some(Halt::Interrupted) => (Settled::Interrupted, JobPhase::Interrupted),
            Some(Halt::RunTimeout) => (
                Settled::Final {
                    phase: JobPhase::Failed,
                    reason: Reason::Timeout,
                    outcome: FinalOutcome::Failed {
                        ignored: job.continue_on_error,
                    },
                },
                JobPhase::Failed,
            ),
            Some(Halt::Cancelled) | None => (
                Settled::Final {
                    phase: JobPhase::Cancelled,
                    reason: Reason::Cancelled,
                    outcome: FinalOutcome::Cancelled,
                },
                JobPhase::Cancelled,
            ),
        },
        AttemptOutcome::Failed {
            failure, reason, ..
        } => {
            let delay = retry::next_delay(&job.retry, track.counted, rng.random::<f64>());
            let elapsed = track.first_start.map_or(Duration::ZERO, |t| t.elapsed());
            if halted.is_none()
                && retry::should_retry(&job.retry, *failure, track.counted, elapsed, delay)
            {
                (
                    Settled::Retry {
                        delay,
                        reason: *reason,
                    },
                    JobPhase::Failed,
                )
            } else {
                (
                    Settled::Final {
                        phase: JobPhase::Failed,
                        reason: *reason,
                        outcome: FinalOutcome::Failed {
                            ignored: job.continue_on_error,
                        },
                    },
                    JobPhase::Failed,
                )
            }
        }
    }
}

fn attempt_end(result: &AttemptResult, phase: &JobPhase, halted: Option<Halt>) -> AttemptEnd {
    let (exit_code, signal) = match result.exit.as_ref().map(|e| e.status) {
        Some(ExitStatus::Code(c)) => (Some(c), None),
        Some(ExitStatus::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    let usage = result.exit.as_ref().map(|e| e.usage).unwrap_or_default();
    let (reason, message) = match &result.outcome {
        AttemptOutcome::Succeeded => (Reason::Completed, None),
        AttemptOutcome::Failed {
            reason, message, ..
        } => (*reason, Some(message.clone())),
        AttemptOutcome::Stopped => (halted.map_or(Reason::Cancelled, Halt::stopped_reason), None),
    };
    AttemptEnd {
        phase: *phase,
        reason: Some(reason),
        exit_code,
        signal,
        user_time: usage.user,
        system_time: usage.system,
        max_rss_kib: usage.max_rss_kib,
        max_rss_upper_bound: usage.max_rss_upper_bound,
        message: message.or_else(|| result.spawn_error.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// One attempt

struct AttemptSpec {
    store: Store,
    plan: Arc<Plan>,
    run: RunId,
    round: i64,
    job: usize,
    /// The attempt's id, once the loop has committed its row.
    recorded: oneshot::Receiver<AttemptId>,
    number: i64,
    log_path: PathBuf,
    grace: Duration,
    plugin_dirs: Vec<PathBuf>,
    cancel: CancellationToken,
    kill_now: CancellationToken,
    events: mpsc::UnboundedSender<RunEvent>,
    spawned: mpsc::UnboundedSender<Spawned>,
}

/// One attempt, whose log part ends with a marker line saying how it ended.
async fn run_attempt(spec: AttemptSpec) -> AttemptResult {
    let log_path = spec.log_path.clone();
    let started = Instant::now();
    tracing::debug!("attempt started");
    let result = attempt_body(spec).await;
    if result.attempt_id != 0 {
        let marker = ended_marker(&result, started.elapsed());
        tracing::debug!("{marker}");
        append_log(&log_path, &marker);
    }
    result
}

/// The text of an attempt's closing marker: its outcome, exit code or signal, and duration.
fn ended_marker(result: &AttemptResult, took: Duration) -> String {
    let status = match result.exit.as_ref().map(|e| e.status) {
        Some(ExitStatus::Code(c)) => format!("exit code {c}"),
        Some(ExitStatus::Signal(s)) => format!("signal {s}"),
        None => "no exit status".to_owned(),
    };
    let outcome = match &result.outcome {
        AttemptOutcome::Succeeded => "succeeded".to_owned(),
        AttemptOutcome::Failed { reason, .. } => format!("failed ({reason})"),
        AttemptOutcome::Stopped => "stopped".to_owned(),
    };
    format!(
        "attempt {} {outcome}: {status}, after {:.3}s",
        result.number,
        took.as_secs_f64()
    )
}

async fn attempt_body(spec: AttemptSpec) -> AttemptResult {
    let job = &spec.plan.jobs[spec.job];
    // Prepared while the loop commits the attempt's row. Nothing here acts on the world but
    // creating the log file.
    let env = spec
        .plan
        .job_env(spec.job, spec.run, spec.number)
        .map_err(|e| e.to_string());
    let log = open_private_append(&spec.log_path);

    // Record before acting: nothing runs before the attempt's row is committed.
    let Ok(attempt_id) = spec.recorded.await else {
        // Not recorded: the loop has failed and stops; this attempt is never settled.
        return AttemptResult {
            job: spec.job,
            attempt_id: 0,
            pid: None,
            number: spec.number,
            outcome: AttemptOutcome::Stopped,
            exit: None,
            spawn_error: None,
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
    };
    let fail = |failure, reason, message: String| AttemptOutcome::Failed {
        failure,
        reason,
        message,
    };
    let mut env = match env {
        Ok(env) => env,
        Err(e) => {
            result.outcome = fail(Failure::Env, Reason::InvalidEnv, e);
            return result;
        }
    };
    // Every process of the attempt inherits this: recovery finds them by it even when the
    // executioner died before recording the pid, or after the group's leader exited.
    env.insert(
        ATTEMPT_TOKEN_VAR.into(),
        attempt_token(&spec.store, attempt_id),
    );
    let cwd = match env::interpolate("workingDir", &job.working_dir, &env) {
        Ok(dir) => PathBuf::from(dir),
        Err(e) => {
            result.outcome = fail(Failure::Env, Reason::InvalidEnv, e.to_string());
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
                Reason::SpawnFailed,
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
    for check in &job.pre_checks {
        let verdict = match &check.wait {
            None => checks::run_check(check, &check_ctx).await,
            Some(wait) => {
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
                    let v = checks::run_check(check, &check_ctx).await;
                    if v.passed {
                        break v;
                    }
                    if tokio::time::Instant::now() + interval > until {
                        result.outcome = fail(
                            Failure::CheckTimeout,
                            Reason::CheckTimeout,
                            format!(
                                "pre-check still failing after {}: {}",
                                wait.timeout, v.message
                            ),
                        );
                        return result;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = spec.cancel.cancelled() => return result,
                    }
                }
            }
        };
        append_log(
            &spec.log_path,
            &format!("pre-check {}: {}", check_name(check), verdict.message),
        );
        if !verdict.passed {
            result.outcome = fail(Failure::PreCheck, Reason::PreCheckFailed, verdict.message);
            return result;
        }
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
                        result.outcome = fail(Failure::Env, Reason::InvalidEnv, e.to_string());
                        return result;
                    }
                }
            }
            out
        }
    };
    let Some((program, args)) = argv.split_first() else {
        result.outcome = fail(Failure::Spawn, Reason::SpawnFailed, "empty command".into());
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
                    Reason::SpawnFailed,
                    format!("cannot create the output pipe: {e}"),
                );
                return result;
            }
        }
    };
    let spawn_spec = SpawnSpec {
        program: program.into(),
        args: args.iter().map(Into::into).collect(),
        env: env.iter().collect(),
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
            append_log(&spec.log_path, &format!("cannot start: {e}"));
            result.spawn_error = Some(e.to_string());
            result.outcome = fail(Failure::Spawn, Reason::SpawnFailed, e.to_string());
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
                    Reason::Timeout,
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
            result.outcome = fail(Failure::Spawn, Reason::SpawnFailed, e.to_string());
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
                Reason::ExitCode,
                format!("exited with code {code}"),
            );
            return result;
        }
        ExitStatus::Signal(sig) => {
            result.outcome = fail(
                Failure::Signal(sig),
                Reason::Signaled,
                format!("killed by signal {sig}"),
            );
            return result;
        }
    }

    for check in &job.post_checks {
        let verdict = checks::run_check(check, &check_ctx).await;
        append_log(
            &spec.log_path,
            &format!("post-check {}: {}", check_name(check), verdict.message),
        );
        if !verdict.passed {
            result.outcome = fail(Failure::PostCheck, Reason::PostCheckFailed, verdict.message);
            return result;
        }
    }
    result.outcome = AttemptOutcome::Succeeded;
    result
}

fn check_name(check: &crate::spec::Check) -> &'static str {
    check.kinds().first().map_or("check", |k| k.name())
}

/// Writes this attempt's marker line to the job's log (opened by [`open_private_append`]), and
/// returns the file with the offset where the attempt's output starts.
fn write_marker(
    mut file: std::fs::File,
    job: &str,
    number: i64,
    round: i64,
    run: RunId,
) -> std::io::Result<(std::fs::File, u64)> {
    let now = crate::status::now_rfc3339();
    // One write per line: the file is shared with the child, and a line must never be split.
    file.write_all(
        format!("==> executioner: job {job}, attempt {number} (run {run}, round {round}) started at {now}\n")
            .as_bytes(),
    )?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

fn append_log(path: &Path, text: &str) {
    if let Ok(mut f) = open_private_append(path) {
        let _ = f.write_all(format!("==> executioner: {text}\n").as_bytes());
    }
}

/// Opens a file for appending with mode 0600, refusing symlinks.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates a folder (and parents) with mode 0700 for the parts it creates.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The run's own event log (`run.log`); best effort, never fails the run.
struct RunLog {
    file: Option<std::fs::File>,
}

impl RunLog {
    fn open(path: &Path) -> Self {
        Self {
            file: open_private_append(path).ok(),
        }
    }

    fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let _ = f.write_all(format!("{} {text}\n", crate::status::now_rfc3339()).as_bytes());
        }
    }
}

//! The run loop: one task per run that owns all of the run's state, turns the scheduler's
//! decisions into attempts, and records each turn's changes in one commit ([`Turn`]) before it
//! reports or launches anything. It does not run attempts (`attempt.rs`) nor write job logs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::process::ExitStatus;
use crate::scheduler::retry;
use crate::scheduler::{Decision, JobRules, Outcome, Scheduler, Start};
use crate::state_dir::{
    create_private_dir, job_log_path, job_output_path, run_log_dir, run_log_path, run_outputs_dir,
};
use crate::status::outputs::Outputs;
use crate::status::{JobPhase, JobReason, RunPhase, RunReason};
use crate::store::{AttemptEnd, AttemptId, Batch, RunId, Store, StoreError};

use super::attempt::{AttemptOutcome, AttemptResult, AttemptSpec, Spawned, run_attempt};
use super::logs::RunLog;
use super::remote::{self, RemoteSpec};
use super::{
    EngineError, EngineOptions, MAX_LOST, Plan, RunEvent, RunReport, RunRequest, Stop, prefetch,
};

/// How the run should stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    Cancelled,
    RunTimeout,
    Interrupted,
}

impl Halt {
    /// The reason recorded on an attempt this halt stopped (its job gets the same).
    fn stopped_reason(self) -> JobReason {
        match self {
            Halt::Cancelled => JobReason::Cancelled,
            Halt::RunTimeout => JobReason::Timeout,
            Halt::Interrupted => JobReason::ControllerStopped,
        }
    }

    /// The reason the jobs not started yet are skipped with; `None` when they stay Pending (the
    /// run goes on at the next controller).
    fn skip_reason(self) -> Option<JobReason> {
        match self {
            Halt::Cancelled => Some(JobReason::Cancelled),
            Halt::RunTimeout => Some(JobReason::RunTimeout),
            Halt::Interrupted => None,
        }
    }

    /// The run log's line for this halt.
    fn line(self) -> &'static str {
        match self {
            Halt::Cancelled => "cancelled: stopping running jobs, skipping the rest",
            Halt::RunTimeout => "run timeout: stopping running jobs, skipping the rest",
            Halt::Interrupted => {
                "controller stopping: stopping running jobs; the run continues at the next start"
            }
        }
    }
}

/// Per-job bookkeeping of the loop.
#[derive(Debug, Clone)]
struct JobTrack {
    counted: u32,
    next_number: i64,
    first_start: Option<Instant>,
    /// Times the job was lost so far (earlier rounds included).
    lost: i64,
}

/// Runs `request` of `plan` to its end.
#[tracing::instrument(name = "run", skip_all, fields(pipeline = %plan.pipeline, run = request.run_id.get()))]
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
    let outputs_dir = run_outputs_dir(&options.state_dir, &plan.pipeline, run);
    create_private_dir(&outputs_dir).map_err(|source| EngineError::Logs {
        path: outputs_dir.clone(),
        source,
    })?;
    let mut run_log = RunLog::open(&run_log_path(&options.state_dir, &plan.pipeline, run));
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
            Some(JobReason::LostTooOften),
            Some("lost 3 times"),
        );
        turn.events.push(RunEvent::JobFinished {
            job: i,
            phase: JobPhase::Failed,
            reason: JobReason::LostTooOften,
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
    // The outputs of the jobs that keep an earlier round's result are that round's, from the
    // store; the others' come from their attempts in this round.
    let mut outputs: Vec<Option<Arc<Outputs>>> = vec![None; n];
    let reads_outputs = plan.jobs.iter().any(|j| !j.reads_outputs.is_empty());
    if reads_outputs && starts.iter().any(|s| matches!(s, Start::Keep(_))) {
        let stored = store.job_outputs(run).await.map_err(store_err)?;
        for (i, job) in plan.jobs.iter().enumerate() {
            if matches!(starts[i], Start::Keep(_))
                && let Some(values) = stored.get(job.id.as_str())
            {
                outputs[i] = Some(Arc::new(values.clone()));
            }
        }
    }
    // Logs made ahead for the jobs to come; not when workers run them (each writes its own, on
    // its host, and an empty file here would hide the shipped one from `logs`).
    let prefetch = prefetch::LogPrefetch::start(
        (0..n)
            .filter(|&i| starts[i] == Start::Run && options.queue.is_none())
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
                lost: request.lost.get(i).copied().unwrap_or(0),
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

    // Attempts a dead or deposed leader queued, which their workers may still be running: this
    // loop waits for them rather than starting them again.
    if let Some(dispatch) = &options.queue {
        for adopted in &request.adopt {
            if !state.scheduler.take(adopted.job) {
                continue;
            }
            let track = &mut state.tracks[adopted.job];
            track.counted += 1;
            track.next_number = track.next_number.max(adopted.number + 1);
            track.first_start.get_or_insert_with(Instant::now);
            let permit = match options.workers.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => match Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => continue,
                },
            };
            let dispatch = dispatch.clone();
            let (job, attempt, number) = (adopted.job, adopted.attempt, adopted.number);
            let (cancel, interrupt) = (attempt_cancel.clone(), interrupt.clone());
            let events = events.clone();
            attempts.spawn(async move {
                let stop = remote::Halting {
                    cancel: &cancel,
                    interrupt: &interrupt,
                };
                let result =
                    remote::await_end(&dispatch, job, attempt, number, stop, &events).await;
                (result, permit)
            });
            prefetch.started();
            state.running += 1;
        }
    }

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
            turn.events.push(RunEvent::AttemptStarted {
                job,
                attempt: number,
            });
            // The task prepares (environment, log file) while the turn is committed, and waits
            // for its attempt's id before it acts.
            let (recorded, recorded_rx) = oneshot::channel();
            if let Some(dispatch) = &options.queue {
                // A worker runs it: queued with its row, in this turn's commit.
                turn.batch.attempt_queued(
                    &plan.jobs[job].id,
                    number,
                    i64::from(track.counted),
                    plan.jobs[job].placement.clone(),
                );
                let spec = RemoteSpec {
                    dispatch: dispatch.clone(),
                    job,
                    number,
                    recorded: recorded_rx,
                    cancel: attempt_cancel.clone(),
                    interrupt: interrupt.clone(),
                    events: events.clone(),
                };
                attempts.spawn(async move { (remote::remote_attempt(spec).await, permit) });
                turn.launches.push(Launch { recorded });
                prefetch.started();
                state.running += 1;
                continue;
            }
            turn.batch
                .attempt_started(&plan.jobs[job].id, number, i64::from(track.counted));
            let ctx = AttemptSpec {
                store: store.clone(),
                plan: plan.clone(),
                run,
                round: request.round,
                job,
                recorded: recorded_rx,
                number,
                log_path: job_log_path(&options.state_dir, &plan.pipeline, run, &plan.jobs[job].id),
                output_path: job_output_path(
                    &options.state_dir,
                    &plan.pipeline,
                    run,
                    &plan.jobs[job].id,
                    number,
                ),
                upstream: plan.jobs[job]
                    .reads_outputs
                    .iter()
                    .filter_map(|&from| outputs[from].clone().map(|o| (from, o)))
                    .collect(),
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
                    match halt {
                        Halt::Interrupted => turn.interrupted(&plan, job),
                        // Its retry fell past the run's deadline: a failure, not a cancellation.
                        Halt::RunTimeout => {
                            turn.finish_job(
                                &plan,
                                job,
                                JobPhase::Failed,
                                JobReason::RunTimeout,
                                None,
                            );
                            let ignored = plan.jobs[job].continue_on_error;
                            state.scheduler.finished(job, Outcome::Failed { ignored });
                        }
                        Halt::Cancelled => {
                            turn.finish_job(
                                &plan,
                                job,
                                JobPhase::Cancelled,
                                JobReason::Cancelled,
                                None,
                            );
                            state.scheduler.finished(job, Outcome::Cancelled);
                        }
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
                state.settle(&plan, joined, &mut turn, &mut outputs);
            }
            Some(spawned) = spawned_rx.recv() => turn.spawned(spawned),
            _ = sleep_until_opt(next_retry), if next_retry.is_some() && !halted => {}
            permit = options.workers.clone().acquire_owned(), if wants_worker && reserved.is_none() && options.workers.available_permits() == 0 => {
                reserved = permit.ok();
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && !halted => {
                state.halt(Halt::RunTimeout, &plan, &mut turn);
                attempt_cancel.cancel();
            }
            _ = cancel.cancelled(), if !halted => {
                state.halt(Halt::Cancelled, &plan, &mut turn);
                attempt_cancel.cancel();
            }
            _ = interrupt.cancelled(), if !halted => {
                state.halt(Halt::Interrupted, &plan, &mut turn);
                attempt_cancel.cancel();
            }
        }
        // Whatever else has happened meanwhile joins this turn (group commit).
        while let Some(joined) = attempts.try_join_next() {
            state.settle(&plan, joined, &mut turn, &mut outputs);
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
    // Every attempt has removed its file: the folder goes too (one call per run).
    let _ = std::fs::remove_dir(&outputs_dir);
    if state.halted == Some(Halt::Interrupted) {
        run_log.line(&format!("run {run} interrupted (ControllerStopped)"));
        return Ok(RunReport {
            run_id: run,
            phase: RunPhase::Running,
            reason: RunReason::ControllerStopped,
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
        reason: JobReason,
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
        reason: JobReason,
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
            Some(JobReason::ControllerStopped),
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
    /// Stops starting jobs: the jobs not started yet are skipped, or, when the controller is
    /// stopping, stay Pending for the one that continues the run. Running attempts are stopped
    /// by the caller.
    fn halt(&mut self, halt: Halt, plan: &Plan, turn: &mut Turn) {
        self.halted = Some(halt);
        turn.lines.push(halt.line().into());
        if let Some(reason) = halt.skip_reason() {
            let decisions = self.scheduler.halt_with(reason);
            turn.skipped(plan, &decisions);
        }
    }

    /// Decides what an ended attempt means (a retry, or the job's final phase and what that
    /// releases) and adds it to the turn.
    fn settle(
        &mut self,
        plan: &Plan,
        joined: Result<(AttemptResult, tokio::sync::OwnedSemaphorePermit), tokio::task::JoinError>,
        turn: &mut Turn,
        outputs: &mut [Option<Arc<Outputs>>],
    ) {
        self.running -= 1;
        let (mut result, _permit) = match joined {
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
            Settled::Detached => {}
            Settled::Again { lost } => {
                // Neither a failure nor an end: the attempt does not count against the limit.
                let track = &mut self.tracks[job];
                track.counted = track.counted.saturating_sub(1);
                if lost {
                    track.lost += 1;
                } else {
                    turn.batch.attempt_finished(result.attempt_id, &end, None);
                }
                let what = if lost {
                    "lost (its worker's lease expired)"
                } else {
                    "interrupted (its worker stopped)"
                };
                match self.halted {
                    // The next controller continues it.
                    Some(Halt::Interrupted) => {}
                    Some(Halt::Cancelled) => {
                        turn.finish_job(plan, job, JobPhase::Cancelled, JobReason::Cancelled, None);
                        let decisions = self.scheduler.finished(job, Outcome::Cancelled);
                        turn.skipped(plan, &decisions);
                    }
                    Some(Halt::RunTimeout) => {
                        turn.finish_job(plan, job, JobPhase::Failed, JobReason::RunTimeout, None);
                        let ignored = plan.jobs[job].continue_on_error;
                        let decisions = self.scheduler.finished(job, Outcome::Failed { ignored });
                        turn.skipped(plan, &decisions);
                    }
                    None if self.tracks[job].lost >= MAX_LOST => {
                        turn.batch.set_job(
                            &plan.jobs[job].id,
                            JobPhase::Failed,
                            Some(JobReason::LostTooOften),
                            Some("lost 3 times"),
                        );
                        turn.finished(plan, job, JobPhase::Failed, JobReason::LostTooOften, None);
                        let ignored = plan.jobs[job].continue_on_error;
                        let decisions = self.scheduler.finished(job, Outcome::Failed { ignored });
                        turn.skipped(plan, &decisions);
                    }
                    None => {
                        turn.lines.push(format!(
                            "{} attempt {} {what}; running it again",
                            plan.jobs[job].id, result.number
                        ));
                        self.retry_at.insert((tokio::time::Instant::now(), job));
                    }
                }
            }
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
                // A job run again replaces its earlier outputs, even with none.
                outputs[job] = None;
                if let Some(values) = result.outputs.take() {
                    turn.batch.attempt_outputs(result.attempt_id, &values);
                    outputs[job] = Some(Arc::new(values));
                }
                turn.finished(plan, job, phase, reason, exit_code);
                let decisions = self.scheduler.finished(job, outcome.scheduler());
                turn.skipped(plan, &decisions);
            }
            Settled::Interrupted => {
                // Its dependents are not released: they wait for the next controller.
                turn.batch.attempt_finished(
                    result.attempt_id,
                    &end,
                    Some((JobPhase::Interrupted, Some(JobReason::ControllerStopped))),
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
        reason: JobReason,
    },
    Final {
        phase: JobPhase,
        reason: JobReason,
        outcome: FinalOutcome,
    },
    /// Stopped by a controller that is stopping: neither a failure nor an end.
    Interrupted,
    /// A queued attempt lost by its worker (`lost`) or stopped by a worker that was stopping:
    /// it runs again, not counted against `retry.limit`.
    Again {
        lost: bool,
    },
    /// A queued attempt this controller left to its worker: nothing to record.
    Detached,
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
                reason: JobReason::Completed,
                outcome: FinalOutcome::Succeeded,
            },
            JobPhase::Succeeded,
        ),
        AttemptOutcome::Lost => (Settled::Again { lost: true }, JobPhase::Lost),
        AttemptOutcome::Interrupted => (Settled::Again { lost: false }, JobPhase::Interrupted),
        AttemptOutcome::Detached => (Settled::Detached, JobPhase::Running),
        AttemptOutcome::Stopped => match halted {
            Some(Halt::Interrupted) => (Settled::Interrupted, JobPhase::Interrupted),
            Some(Halt::RunTimeout) => (
                Settled::Final {
                    phase: JobPhase::Failed,
                    reason: JobReason::Timeout,
                    outcome: FinalOutcome::Failed {
                        ignored: job.continue_on_error,
                    },
                },
                JobPhase::Failed,
            ),
            Some(Halt::Cancelled) | None => (
                Settled::Final {
                    phase: JobPhase::Cancelled,
                    reason: JobReason::Cancelled,
                    outcome: FinalOutcome::Cancelled,
                },
                JobPhase::Cancelled,
            ),
        },
        // An attempt that failed while the controller was stopping (its job's group may have been
        // signalled along with the controller) is interrupted too: the next controller runs it.
        AttemptOutcome::Failed { .. } if halted == Some(Halt::Interrupted) => {
            (Settled::Interrupted, JobPhase::Interrupted)
        }
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
        AttemptOutcome::Succeeded => (JobReason::Completed, None),
        AttemptOutcome::Failed {
            reason, message, ..
        } => (*reason, Some(message.clone())),
        AttemptOutcome::Stopped => (
            halted.map_or(JobReason::Cancelled, Halt::stopped_reason),
            None,
        ),
        AttemptOutcome::Lost => (JobReason::Lost, None),
        AttemptOutcome::Interrupted | AttemptOutcome::Detached => {
            (JobReason::ControllerStopped, None)
        }
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

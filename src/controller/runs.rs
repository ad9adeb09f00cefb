//! Starting, finishing and recovering runs for the controller's actor: recovery at start of the
//! runs a dead controller left Running, launching a run of a generation, the task each run
//! executes on, what a run's end does (notifications, its status file), and faults: a run whose
//! task ends without ending it (an engine error, a panic) is logged and recovered as the same run
//! after a pause, without stopping the controller or the other pipelines. It does not decide
//! when a run starts or is cancelled (`reconcile`), nor gather what a pass sees (`gather`).

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use crate::engine::launch::{self, PinnedPlan, Round};
use crate::engine::{self, EngineError, RunEvent, RunReport};
use crate::spec::{OnSpecChange, Pinned};
use crate::store::{RunId, RunRow, StoreError};

use super::folder::Desired;
use super::reconcile::Why;
use super::{Controller, ControllerError, ControllerEvent, RunFault};

/// A run of this controller whose task is executing it.
pub(super) struct Active {
    pub run: RunId,
    pub generation: i64,
    pub cancel: CancellationToken,
    pub cancelling: bool,
    /// Stops the run's jobs without ending the run (the controller is stopping).
    pub interrupt: CancellationToken,
    /// The task executing it, to know whose task a panic was.
    task: tokio::task::Id,
    /// Its faults in this controller so far.
    faults: u32,
}

/// A run of this controller whose task ended without ending it, waiting to be recovered.
pub(super) struct Faulted {
    pub run: RunId,
    pub generation: i64,
    faults: u32,
    retry_at: tokio::time::Instant,
}

/// What a run's task returns.
pub(super) type RunDone = (String, RunId, Result<RunReport, EngineError>);
/// A progress event of a run, with its pipeline.
pub(super) type Progress = (String, RunId, RunEvent);

/// The pause before recovering a faulted run, doubled at each further fault of the same run.
const FAULT_PAUSE: Duration = Duration::from_secs(1);
/// The pipeline's lock held for a launch (none when it could not be opened), until dropped.
pub(super) struct LaunchGuard {
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// How soon a launch deferred by [`Controller::launch_guard`] is looked at again.
pub(super) const LAUNCH_RETRY: Duration = Duration::from_millis(100);

/// Faults of one run after which it is left Running for the next start (or `resume` once this
/// controller has stopped): a fault that does not go away must not spin.
const MAX_RUN_FAULTS: u32 = 5;

impl Controller {
    /// Runs left Running by a controller that stopped or died: recovered (see
    /// [`Controller::recover_run`]); then the notifications a crash kept from being queued. Runs of
    /// a foreground `executioner run` (generation 0) are the user's to resume and are left alone.
    /// This asks what a run is (of a generation or not), not who drives it (`overlap::Driver`):
    /// nobody does once its owner is gone, and a generation's run that a dead `resume` drove is
    /// still the generation's to continue.
    pub(super) async fn recover(&mut self) -> Result<(), ControllerError> {
        // A leader (its store fenced) adopts every run of a generation, even one whose recorded
        // owner lives: that owner is a controller that lost the lead (this one, earlier, too)
        // and whose tasks were dropped with it.
        let leader = self.store.fenced_with().is_some();
        for run in self.store.unfinished_runs().await? {
            if run.generation == 0 || (!leader && engine::resume::owner_alive(&run)) {
                continue;
            }
            // Recovered by an earlier try of this pass (the database went away meanwhile).
            if self.active.values().any(|a| a.run == run.id) {
                continue;
            }
            self.recover_run(run, 0).await?;
        }
        // Runs that ended before a crash but whose notifications were never queued.
        if let Err(e) = crate::notify::enqueue_missed(&self.store, &self.opts.state_dir).await {
            let _ = self
                .events
                .send(ControllerEvent::Warning(format!("notifications: {e}")));
        }
        self.deliver();
        Ok(())
    }

    /// Recovers the faulted runs whose pause is over; returns when the next one is due.
    pub(super) async fn recover_faulted(&mut self) -> Result<Option<Duration>, ControllerError> {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .faulted
            .iter()
            .filter(|(_, f)| f.retry_at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(f) = self.faulted.remove(&name) else {
                continue;
            };
            // Its task is gone, so the store's row is all there is (it may have ended meanwhile).
            let row = match self.store.run(f.run).await {
                Ok(row) => row,
                Err(e) => {
                    // Tried again at the next pass (the database may be away).
                    self.faulted.insert(name, f);
                    return Err(e.into());
                }
            };
            if let Some(run) = row
                && !run.phase.is_terminal()
            {
                self.recover_run(run, f.faults).await?;
            }
        }
        Ok(self
            .faulted
            .values()
            .map(|f| f.retry_at.saturating_duration_since(now))
            .min())
    }

    /// A run no task executes: continued (only what had not ended runs) on its pinned spec when
    /// its manifest is still there, unless it changed meanwhile under `onSpecChange: replace`;
    /// closed as Cancelled when the manifest was deleted or replaced.
    async fn recover_run(&mut self, run: RunRow, faults: u32) -> Result<(), ControllerError> {
        let continues = if self.active.contains_key(run.pipeline.as_str()) {
            false
        } else if let Some(d) = self.reader.folder().desired.get(run.pipeline.as_str()) {
            let generation = self
                .store
                .observe_pipeline(&d.name, &d.spec_hash, &d.source)
                .await?;
            generation == run.generation || d.manifest.spec.on_spec_change == OnSpecChange::Queue
        } else {
            // An invalid edit does not stop a run of an earlier valid generation.
            self.reader.folder().invalid_named(&run.pipeline).is_some()
        };
        let pinned = Pinned::from_json(&run.spec_json).ok();
        let plan = match pinned.as_ref().map(|p| p.plan()) {
            Some(Ok(plan)) => Some(plan),
            Some(Err(e)) if continues => {
                // Left Running (and shown interrupted): a user can fix the environment and
                // resume it; cancelling would throw the run away.
                let _ = self.events.send(ControllerEvent::Warning(format!(
                    "run {} of {}: cannot continue it: {}",
                    run.id,
                    run.pipeline,
                    crate::error_chain::render(&e)
                )));
                return Ok(());
            }
            Some(Err(_)) | None => None,
        };
        let Some(plan) = plan.filter(|_| continues) else {
            engine::resume::recover(&self.store, &run, false).await?;
            let coe = pinned
                .as_ref()
                .map_or_else(Vec::new, Pinned::continue_on_error);
            let coe: Vec<&str> = coe.iter().map(String::as_str).collect();
            self.store.cancel_run(run.id, &coe).await?;
            return Ok(());
        };
        let owner = launch::this_process();
        let mode = engine::resume::ResumeMode::Continue;
        match launch::next_round(
            &self.store,
            &run,
            &plan,
            mode,
            &owner,
            None,
            self.engine.queue.is_some(),
        )
        .await?
        {
            Round::Next { request, lost, .. } => {
                let _ = self.events.send(ControllerEvent::RunResumed {
                    pipeline: run.pipeline.to_string(),
                    run: run.id,
                    lost: lost.iter().map(ToString::to_string).collect(),
                    round: self.round_jobs(&plan, &request),
                });
                self.spawn_run(
                    run.pipeline.to_string(),
                    plan,
                    request,
                    run.generation,
                    faults,
                );
            }
            Round::AlreadySucceeded | Round::NothingToDo | Round::OwnedElsewhere { .. } => {}
        }
        Ok(())
    }

    /// Takes the pipeline's lock for a launch (the one a foreground `run` holds while it checks
    /// for a run in the way and records its own), without waiting, and re-checks under it for a
    /// live run of another process that the pass did not see: `None` defers the launch (the
    /// actor looks again within [`LAUNCH_RETRY`]). Under `Allow` a foreground run is no reason
    /// to wait. A lock that cannot be opened is warned about and not waited for.
    pub(super) async fn launch_guard(
        &mut self,
        d: &Desired,
        why: Why,
    ) -> Result<Option<LaunchGuard>, StoreError> {
        let lock = match super::overlap::try_lock_pipeline(&self.opts.state_dir, &d.name) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => return self.defer_launch(&d.name, why).await,
            Err(e) => {
                let _ = self.events.send(ControllerEvent::Warning(format!(
                    "pipeline {}: cannot lock it against a foreground run: {e}",
                    d.name
                )));
                None
            }
        };
        if d.manifest.spec.concurrency_policy != crate::spec::ConcurrencyPolicy::Allow {
            let me = launch::this_process();
            let others = super::overlap::live_runs_of(&self.store, &d.name).await?;
            if others.iter().any(|r| {
                super::overlap::Driver::of(r, Some(&me)) == super::overlap::Driver::Foreground
            }) {
                return self.defer_launch(&d.name, why).await;
            }
        }
        Ok(Some(LaunchGuard { _lock: lock }))
    }

    /// A launch put off by [`Controller::launch_guard`]: a schedule tick (already remembered)
    /// becomes a rerun request, so it runs once the way is clear, as the policy says; a rerun is
    /// taken only when it starts, and a new generation is seen again at the next pass.
    async fn defer_launch(
        &mut self,
        pipeline: &str,
        why: Why,
    ) -> Result<Option<LaunchGuard>, StoreError> {
        self.launch_deferred = true;
        match why {
            Why::Schedule => {
                self.store.request_rerun(pipeline).await?;
            }
            Why::RerunRequested { .. } | Why::NewGeneration => {}
        }
        Ok(None)
    }

    /// Asks the owner of `run` (another process's, in the way under `Replace`) to cancel it; one
    /// that cannot be asked (the signal is refused) is waited for instead, not asked again at
    /// each pass.
    pub(super) async fn cancel_elsewhere(
        &mut self,
        pipeline: String,
        run: RunId,
    ) -> Result<(), StoreError> {
        let Some(row) = self.store.run(run).await? else {
            return Ok(());
        };
        if row.phase.is_terminal() {
            return Ok(());
        }
        if super::overlap::cancel_foreground(&row, Some(&launch::this_process())) {
            let why = "replaced by a new run (concurrencyPolicy: Replace)";
            let _ = self
                .events
                .send(ControllerEvent::Cancelling { pipeline, run, why });
        } else if engine::resume::owner_alive(&row) {
            self.uncancellable.insert(run);
            let _ = self.events.send(ControllerEvent::Warning(format!(
                "pipeline {pipeline}: cannot ask pid {} to cancel run {run}; waiting for it to end",
                row.owner_pid.unwrap_or_default()
            )));
        }
        Ok(())
    }

    pub(super) async fn launch(
        &mut self,
        d: &Desired,
        generation: i64,
        why: &'static str,
    ) -> Result<(), StoreError> {
        self.launch_with(d, generation, why, &IndexMap::new()).await
    }

    /// Starts a run with these parameters (a rerun's; none for a new generation or a tick).
    pub(super) async fn launch_with(
        &mut self,
        d: &Desired,
        generation: i64,
        why: &'static str,
        params: &IndexMap<String, String>,
    ) -> Result<(), StoreError> {
        let params = match crate::spec::params::resolve(&d.manifest.spec.params, params) {
            Ok(values) => values,
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let _ = self.events.send(ControllerEvent::Warning(format!(
                    "pipeline {}: cannot start a run: {}",
                    d.name,
                    errors.join("; ")
                )));
                return Ok(());
            }
        };
        let pinned = Pinned::new(
            d.manifest.clone(),
            &self.opts.manifests_dir,
            IndexMap::new(),
            Vec::new(),
        )
        .with_params(params);
        let plan = match pinned.plan() {
            Ok(p) => p,
            Err(e) => {
                let _ = self.events.send(ControllerEvent::Warning(format!(
                    "pipeline {}: cannot start a run: {}",
                    d.name,
                    crate::error_chain::render(&e)
                )));
                return Ok(());
            }
        };
        let owner = launch::this_process();
        let request = launch::new_run(&self.store, &plan, &pinned, generation, &owner).await?;
        let _ = self.events.send(ControllerEvent::RunStarted {
            pipeline: d.name.clone(),
            run: request.run_id,
            generation,
            why,
            round: self.round_jobs(&plan, &request),
        });
        self.settled.remove(&d.name);
        self.dirty.insert(d.name.clone());
        self.spawn_run(d.name.clone(), plan, request, generation, 0);
        Ok(())
    }

    /// What the metrics need of a round's jobs (only when they are kept: `detailed_events`).
    fn round_jobs(
        &self,
        plan: &engine::Plan,
        request: &engine::RunRequest,
    ) -> Option<super::RoundJobs> {
        self.opts.detailed_events.then(|| super::RoundJobs {
            dependencies: plan.jobs.iter().map(|j| j.dependencies.clone()).collect(),
            runs: request
                .starts
                .iter()
                .map(|s| *s == crate::scheduler::Start::Run)
                .collect(),
        })
    }

    fn spawn_run(
        &mut self,
        name: String,
        plan: engine::Plan,
        request: engine::RunRequest,
        generation: i64,
        faults: u32,
    ) {
        let stop = engine::Stop::default();
        let run = request.run_id;
        let jobs = plan.jobs.iter().map(|j| j.id.to_string()).collect();
        self.status.run_started(&name, run, jobs);
        let store = self.store.clone();
        let options = self.engine.clone();
        let (cancel, interrupt) = (stop.cancel.clone(), stop.interrupt.clone());
        let stop = engine::Stop {
            kill_now: self.kill_now.clone(),
            ..stop
        };
        // The run's events, labelled with its pipeline, reach the status writer through a task
        // of their own (it ends when the engine drops its sender): the run's task neither polls
        // the engine again per event nor waits for the forwarding to end.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let progress = self.progress.clone();
        let pipeline = name.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let _ = progress.send((pipeline.clone(), run, event));
            }
        });
        let task = self.runs.spawn({
            let name = name.clone();
            async move {
                if crate::failpoint::fails_once("run-panic", &name) {
                    panic!("failpoint run-panic:{name}");
                }
                let result =
                    engine::execute(&store, Arc::new(plan), request, &options, tx, stop).await;
                (name, run, result)
            }
        });
        self.active.insert(
            name,
            Active {
                run,
                generation,
                cancel,
                cancelling: false,
                interrupt,
                task: task.id(),
                faults,
            },
        );
    }

    /// A run's task ended: the run ended (or was interrupted), or its task failed without
    /// ending it.
    pub(super) async fn task_ended(
        &mut self,
        done: Result<(tokio::task::Id, RunDone), JoinError>,
    ) -> Result<(), ControllerError> {
        match done {
            Ok((_, (name, run, Ok(report)))) => self.finished(&name, run, report).await,
            Ok((_, (name, run, Err(e)))) => {
                self.faulted(&name, run, RunFault::Engine(Arc::new(e)))
                    .await
            }
            Err(e) => {
                let Some((name, run)) = self
                    .active
                    .iter()
                    .find(|(_, a)| a.task == e.id())
                    .map(|(name, a)| (name.clone(), a.run))
                else {
                    return Ok(());
                };
                self.faulted(&name, run, RunFault::Panicked(e.to_string()))
                    .await
            }
        }
    }

    async fn finished(
        &mut self,
        name: &str,
        run: RunId,
        report: RunReport,
    ) -> Result<(), ControllerError> {
        self.active.remove(name);
        self.status.run_ended(name);
        crate::failpoint::hit("run-committed");
        // An interrupted run has not ended: its notifications wait for its end.
        let ended = report.phase.is_terminal();
        if ended
            && let Err(e) =
                crate::notify::enqueue_for_run(&self.store, run, &self.opts.state_dir).await
        {
            let _ = self.events.send(ControllerEvent::Warning(format!(
                "notifications of run {run}: {e}"
            )));
        }
        self.deliver();
        if ended {
            self.pruner.run_ended(self.reader.folder());
        }
        let _ = self.events.send(if ended {
            ControllerEvent::RunFinished {
                pipeline: name.to_owned(),
                run,
                phase: report.phase,
            }
        } else {
            ControllerEvent::RunInterrupted {
                pipeline: name.to_owned(),
                run,
            }
        });
        self.write_status(name).await?;
        Ok(())
    }

    /// A run's task ended without ending the run. The run stays Running in the store; it is
    /// recovered as after a crash (its open attempts' processes stopped, recorded Lost) once its
    /// pause is over, unless this run has faulted too often.
    async fn faulted(
        &mut self,
        name: &str,
        run: RunId,
        fault: RunFault,
    ) -> Result<(), ControllerError> {
        let Some(a) = self.active.remove(name) else {
            return Ok(());
        };
        self.status.run_ended(name);
        // A shared database that was away is not the run's fault: it is recovered, without
        // counting, for as long as the outage lasts (each try waits for the database).
        let outage = matches!(&fault, RunFault::Engine(e)
            if matches!(&**e, EngineError::Store { source, .. } if source.is_transient()));
        let faults = if outage {
            a.faults.min(2)
        } else {
            a.faults + 1
        };
        let retry_in =
            (faults < MAX_RUN_FAULTS).then(|| FAULT_PAUSE * 2u32.pow(faults.saturating_sub(1)));
        if let Some(pause) = retry_in {
            self.faulted.insert(
                name.to_owned(),
                Faulted {
                    run,
                    generation: a.generation,
                    faults,
                    retry_at: tokio::time::Instant::now() + pause,
                },
            );
        }
        let _ = self.events.send(ControllerEvent::RunFault {
            pipeline: name.to_owned(),
            run,
            fault,
            retry_in,
        });
        self.write_status(name).await?;
        Ok(())
    }

    /// Sends what is due in the outbox on a task of its own (an SMTP timeout never blocks the
    /// loop); at most one delivery pass at a time.
    pub(super) fn deliver(&mut self) {
        if !self.deliveries.is_empty() {
            return;
        }
        let store = self.store.clone();
        let config = self.opts.config.clone();
        let events = self.events.clone();
        let detailed = self.opts.detailed_events;
        self.deliveries.spawn(async move {
            let pass = crate::notify::deliver_due(&store, &config).await;
            if detailed && let Ok(count) = store.pending_outbox().await {
                let _ = events.send(ControllerEvent::NotificationsPending { count });
            }
            match pass {
                Ok((_, 0)) => {}
                Ok((sent, failed)) => {
                    let _ = events.send(ControllerEvent::Warning(format!(
                        "notifications: {sent} sent, {failed} failed (retried later)"
                    )));
                }
                Err(e) => {
                    let _ = events.send(ControllerEvent::Warning(format!("notifications: {e}")));
                }
            }
        });
    }
}

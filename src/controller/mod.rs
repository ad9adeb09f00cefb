//! The controller: watches a manifests folder and reconciles it with the store. Dropping, editing
//! or deleting a manifest is the only input; each pipeline's current generation is driven to one
//! terminal run, schedules start one run per tick, and a status file per pipeline says where it is.
//!
//! One actor owns all the state and has one `select!`: folder events (debounced), the periodic
//! resync, schedule ticks, retries of files caught half-written, runs finishing, runs' progress
//! events, status writes and shutdown. Reconcile is level-triggered: whatever woke it, the actor
//! reads the folder (`folder`), records its specs and gathers what the store says, lets the pure
//! decision (`reconcile`) say what to do, and does it. Runs execute on the engine, sharing one
//! worker semaphore; their events reach the status files through `status_writer`. This file is
//! the actor (its options, events, errors, the loop, `reconcile` and `act`); starting, finishing
//! and recovering runs is `runs`, what a pass gathers from the store is `gather`, the watcher is
//! `watch`. See docs/controller.md.

pub mod folder;
mod gather;
pub mod leader;
pub mod lock;
pub mod observe;
pub mod overlap;
pub mod permissions;
pub mod reconcile;
pub mod retention;
mod runs;
pub mod status_writer;
mod watch;

pub use watch::request_rerun;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{EngineError, EngineOptions};
use crate::status::RunPhase;
use crate::store::{PipelineRow, RunId, Store, StoreError};
use crate::validate::Options;

use folder::{Folder, FolderReader};
use permissions::Trust;
use reconcile::{Action, Observed, Why};
use runs::{Active, Faulted, Progress, RunDone};
use status_writer::StatusWriter;

/// Quiet time after a folder event before reconciling.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

/// What the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub manifests_dir: PathBuf,
    pub state_dir: PathBuf,
    pub config: Config,
    /// Exit once every current manifest's run is terminal.
    pub once: bool,
    /// Also send [`ControllerEvent::RunProgress`], [`ControllerEvent::Reconciled`] and
    /// [`ControllerEvent::NotificationsPending`], and the `round` of a run started or resumed
    /// (what the metrics are fed from); off, they cost nothing.
    pub detailed_events: bool,
    /// With a shared store, fired when this controller loses the lead (`leader.rs`): the actor
    /// then ends at once, its run tasks aborted, writing nothing more.
    pub lead_lost: Option<CancellationToken>,
}

/// What happened, for the log.
#[derive(Debug, Clone)]
pub enum ControllerEvent {
    Started {
        manifests: PathBuf,
        workers: usize,
    },
    RunStarted {
        pipeline: String,
        run: RunId,
        generation: i64,
        why: &'static str,
        /// Only with `detailed_events`.
        round: Option<RoundJobs>,
    },
    RunResumed {
        pipeline: String,
        run: RunId,
        lost: Vec<String>,
        /// Only with `detailed_events`.
        round: Option<RoundJobs>,
    },
    RunFinished {
        pipeline: String,
        run: RunId,
        phase: RunPhase,
    },
    Cancelling {
        pipeline: String,
        run: RunId,
        why: &'static str,
    },
    /// The controller is stopping: the run's jobs are stopped, the run continues at the next start.
    Interrupting {
        pipeline: String,
        run: RunId,
    },
    RunInterrupted {
        pipeline: String,
        run: RunId,
    },
    Invalid {
        source: String,
        message: String,
    },
    Deleted {
        pipeline: String,
    },
    /// Finished runs beyond their pipeline's history policy were deleted with their logs.
    HistoryPruned {
        runs: usize,
        log_bytes: u64,
    },
    /// A schedule tick not run: run `run` was going on (`concurrencyPolicy: Forbid`).
    TickSkipped {
        pipeline: String,
        tick: String,
        run: RunId,
    },
    /// A run's task ended without ending the run: recovered as the same run after `retry_in`,
    /// or, when `None` (it faulted too often), left Running for the next start.
    RunFault {
        pipeline: String,
        run: RunId,
        fault: RunFault,
        retry_in: Option<Duration>,
    },
    Warning(String),
    Stopping,
    /// A run's progress event, as the status writer gets it (only with `detailed_events`).
    RunProgress {
        pipeline: String,
        run: RunId,
        event: crate::engine::RunEvent,
    },
    /// A reconcile pass ended after `took` (only with `detailed_events`).
    Reconciled {
        took: Duration,
    },
    /// A delivery pass of the outbox ended with `count` messages still to send (only with
    /// `detailed_events`).
    NotificationsPending {
        count: i64,
    },
    /// A pipeline's status was built from the store: it is in `phase`.
    StatusBuilt {
        pipeline: String,
        phase: crate::status::file::PipelinePhase,
    },
    /// With a shared store: this controller stands by, leads, or lost or gave up the lead.
    Leadership(leader::LeadershipChange),
}

/// The jobs of a run's round as the engine gets them, so that its progress events can say which
/// jobs are ready (the metrics): each job's dependencies, by the engine's job index, and whether it
/// runs in this round (a resume keeps the others' results).
#[derive(Debug, Clone)]
pub struct RoundJobs {
    pub dependencies: Vec<Vec<usize>>,
    pub runs: Vec<bool>,
}

/// How a run's task failed.
#[derive(Debug, Clone)]
pub enum RunFault {
    /// The engine stopped with an error (the store or the log folder failed).
    Engine(Arc<EngineError>),
    /// The task panicked (a defect): the panic's message.
    Panicked(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the manifests folder {}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to run the manifests in {0}")]
    InsecureFolder(permissions::InsecurePath),
    #[error(transparent)]
    UnknownOwner(#[from] permissions::UnknownOwner),
}

/// Why the controller woke up (besides timers).
#[derive(Debug)]
enum Wake {
    Files(notify::Result<notify::Event>),
}

/// The reconcile actor.
struct Controller {
    opts: ControllerOptions,
    store: Store,
    events: mpsc::UnboundedSender<ControllerEvent>,
    engine: EngineOptions,
    kill_now: CancellationToken,
    active: HashMap<String, Active>,
    /// Runs whose task ended without ending them, waiting to be recovered.
    faulted: HashMap<String, Faulted>,
    runs: JoinSet<RunDone>,
    /// The outbox delivery pass, when one is under way.
    deliveries: JoinSet<()>,
    /// The manifests folder, with what was last read of it.
    reader: FolderReader,
    reported_invalid: HashMap<String, String>,
    /// The pipelines last seen suspended.
    suspended: HashSet<String>,
    recovered: bool,
    /// What the store was last told of each pipeline: (spec hash, source, generation), so that
    /// an unchanged pipeline costs no write per pass.
    observed: HashMap<String, (String, String, i64)>,
    /// Pipelines whose current generation (the value) already has a terminal run.
    settled: HashMap<String, i64>,
    /// Pipelines whose status file may be stale.
    dirty: HashSet<String>,
    status: StatusWriter,
    /// Where the engine's progress events of every run arrive.
    progress: mpsc::UnboundedSender<Progress>,
    pruner: retention::Pruner,
    /// A launch of this pass waited for a foreground `run` holding the pipeline's lock.
    launch_deferred: bool,
    /// Foreground runs in the way under `Replace` that could not be signalled (waited for).
    uncancellable: HashSet<RunId>,
}

/// Runs the controller until `cancel` (or, with `once`, until every run is terminal).
/// Returns true when every pipeline's current run succeeded and no manifest is invalid.
pub async fn run(
    opts: ControllerOptions,
    store: Store,
    events: mpsc::UnboundedSender<ControllerEvent>,
    cancel: CancellationToken,
    kill_now: CancellationToken,
) -> Result<bool, ControllerError> {
    let workers = opts.config.workers();
    std::fs::create_dir_all(&opts.manifests_dir).map_err(|source| ControllerError::Folder {
        path: opts.manifests_dir.clone(),
        source,
    })?;
    permissions::check_folder(&opts.manifests_dir).map_err(ControllerError::InsecureFolder)?;
    let trust = Trust::from_config(&opts.config.security)?;
    // So that `status`, `wait` and others run from another folder find what this controller watches.
    store.set_manifests_dir(&opts.manifests_dir).await?;
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<Wake>();
    let (watcher, resync) = watch::watch_or_rescan(&opts, wake_tx, &events);
    let _ = events.send(ControllerEvent::Started {
        manifests: opts.manifests_dir.clone(),
        workers,
    });
    let security = crate::validate::SecurityPolicy::from_config(&opts.config.security);
    let options = Options {
        security,
        ..Options::default()
    };
    let (progress, mut progress_rx) = mpsc::unbounded_channel::<Progress>();
    // With a shared store, workers run the jobs (this controller's embedded one among them): the
    // engine queues every attempt, and the worker slots, not this process, bound how many run.
    let (queue, workers, _dispatch_guard) = if store.is_shared() {
        let ttl = opts.config.lease_ttl();
        // Ends with this function, also when a controller that lost the lead drops it.
        let stop = cancel.child_token();
        let dispatch =
            crate::engine::remote::Dispatch::start(store.clone(), ttl, stop.clone()).await?;
        let guard = stop.drop_guard();
        (Some(dispatch), Semaphore::MAX_PERMITS, Some(guard))
    } else {
        (None, workers, None)
    };
    let mut c = Controller {
        reader: FolderReader::new(opts.manifests_dir.clone(), options, trust),
        status: StatusWriter::new(
            opts.manifests_dir.clone(),
            opts.state_dir.clone(),
            events.clone(),
        ),
        progress,
        pruner: retention::Pruner::start(
            store.clone(),
            opts.state_dir.clone(),
            opts.config.history.clone(),
            events.clone(),
        ),
        engine: EngineOptions {
            state_dir: opts.state_dir.clone(),
            workers: Arc::new(Semaphore::new(workers)),
            shutdown_grace: opts.config.shutdown_grace.as_std(),
            plugin_dirs: opts.config.plugin_dirs.clone(),
            queue,
        },
        opts,
        store,
        events,
        kill_now,
        active: HashMap::new(),
        faulted: HashMap::new(),
        runs: JoinSet::new(),
        deliveries: JoinSet::new(),
        reported_invalid: HashMap::new(),
        suspended: HashSet::new(),
        recovered: false,
        observed: HashMap::new(),
        settled: HashMap::new(),
        dirty: HashSet::new(),
        launch_deferred: false,
        uncancellable: HashSet::new(),
    };
    let mut full_pass = true;
    let mut outage = Outage::default();

    let mut next_reconcile: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut resync_at = tokio::time::Instant::now() + resync;
    let mut stopping = false;
    loop {
        if !stopping
            && let Some(at) = next_reconcile
            && at <= tokio::time::Instant::now()
        {
            next_reconcile = None;
            let began = std::time::Instant::now();
            let requeue = match c.reconcile(std::mem::take(&mut full_pass)).await {
                Ok(requeue) => {
                    outage.end(&c.events);
                    requeue
                }
                // A shared database away (restarting, unreachable): nothing committed is lost;
                // the pass is made again, whole, once it answers.
                Err(ControllerError::Store(e)) if e.is_transient() => {
                    full_pass = true;
                    next_reconcile =
                        Some(tokio::time::Instant::now() + outage.pause(&e, &c.events));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if c.opts.detailed_events {
                let _ = c.events.send(ControllerEvent::Reconciled {
                    took: began.elapsed(),
                });
            }
            if let Some(after) = requeue {
                next_reconcile = Some(tokio::time::Instant::now() + after);
            }
            if c.opts.once && c.is_settled() && next_reconcile.is_none() {
                break;
            }
        }
        if stopping && c.active.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = lead_lost(&c.opts.lead_lost) => {
                // Another controller decides from now on and adopts the runs: dropping the actor
                // aborts their tasks (a job's process group dies with its task) and writes nothing.
                for (name, a) in &c.active {
                    let _ = c.events.send(ControllerEvent::RunInterrupted { pipeline: name.clone(), run: a.run });
                }
                return Ok(false);
            }
            Some(done) = c.runs.join_next_with_id(), if !c.runs.is_empty() => {
                match c.task_ended(done).await {
                    Ok(()) => {}
                    // Its status file is written at the next pass.
                    Err(ControllerError::Store(e)) if e.is_transient() => {
                        let _ = outage.pause(&e, &c.events);
                    }
                    Err(e) => return Err(e),
                }
                if !stopping {
                    // Coalesced: a burst of runs ending costs one pass, not one each.
                    let at = tokio::time::Instant::now() + DEBOUNCE;
                    next_reconcile = Some(next_reconcile.map_or(at, |n| n.min(at)));
                }
            }
            Some(_) = c.deliveries.join_next(), if !c.deliveries.is_empty() => {}
            Some(wake) = wake_rx.recv() => {
                let Wake::Files(res) = wake;
                match res {
                    // Reading the folder (our own readdir) shows up as an access: not a change.
                    Ok(event) if !watch::relevant(&event) => continue,
                    Ok(event) => c.reader.note_event(&event),
                    Err(e) => {
                        let _ = c.events.send(ControllerEvent::Warning(format!("watcher error ({e}); full rescan")));
                        full_pass = true;
                    }
                }
                let at = tokio::time::Instant::now() + DEBOUNCE;
                next_reconcile = Some(next_reconcile.map_or(at, |n| n.max(at)));
                // A watcher error may mean lost events: look at everything.
            }
            _ = sleep_until_opt(next_reconcile), if next_reconcile.is_some() && !stopping => {}
            _ = tokio::time::sleep_until(resync_at) => {
                resync_at = tokio::time::Instant::now() + resync;
                if !stopping {
                    full_pass = true;
                    next_reconcile = Some(tokio::time::Instant::now());
                    c.deliver();
                }
            }
            _ = cancel.cancelled(), if !stopping => {
                // A restart or an upgrade, not a user's decision: the runs are interrupted, stay
                // Running, and the next controller continues them (DESIGN 5).
                stopping = true;
                let _ = c.events.send(ControllerEvent::Stopping);
                for (name, a) in &c.active {
                    a.interrupt.cancel();
                    let _ = c.events.send(ControllerEvent::Interrupting { pipeline: name.clone(), run: a.run });
                }
            }
            // Last, so that a stream of events never holds up the branches above.
            _ = sleep_until_opt(c.status.flush_at()), if c.status.flush_at().is_some() => {
                match c.status.flush(&c.store, c.reader.folder()).await {
                    Ok(()) => {}
                    // Written at the next pass's flush, once the database answers.
                    Err(e) if e.is_transient() => {
                        let _ = outage.pause(&e, &c.events);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Some((name, run, event)) = progress_rx.recv() => {
                c.status.apply(&name, run, &event);
                if c.opts.detailed_events {
                    let _ = c.events.send(ControllerEvent::RunProgress { pipeline: name, run, event });
                }
            }
        }
    }
    drop(watcher);
    c.write_all_statuses().await?;
    // Notifications of the runs that just ended go out before exit (each bounded by the SMTP
    // timeout); what cannot be sent stays in the outbox for the next start.
    if !c.deliveries.is_empty() || c.opts.once {
        while c.deliveries.join_next().await.is_some() {}
        c.deliver();
        while c.deliveries.join_next().await.is_some() {}
    }
    let all_succeeded = c.all_succeeded().await?;
    c.pruner.stop().await;
    Ok(all_succeeded)
}

/// A shared database that stopped answering: how long to pause before the next try (doubling from
/// 250 ms to 8 s), and one warning per outage, not one per try.
#[derive(Debug, Default)]
struct Outage {
    pause: Option<Duration>,
}

impl Outage {
    fn pause(
        &mut self,
        e: &StoreError,
        events: &mpsc::UnboundedSender<ControllerEvent>,
    ) -> Duration {
        let pause = match self.pause {
            None => {
                let _ = events.send(ControllerEvent::Warning(format!(
                    "state database unreachable ({}); pausing, trying again with backoff",
                    crate::error_chain::render(e)
                )));
                Duration::from_millis(250)
            }
            Some(p) => (p * 2).min(Duration::from_secs(8)),
        };
        self.pause = Some(pause);
        pause
    }

    fn end(&mut self, events: &mpsc::UnboundedSender<ControllerEvent>) {
        if self.pause.take().is_some() {
            let _ = events.send(ControllerEvent::Warning(
                "state database reachable again; going on".into(),
            ));
        }
    }
}

async fn lead_lost(lost: &Option<CancellationToken>) {
    match lost {
        Some(lost) => lost.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    /// True when nothing runs and every valid pipeline's current generation has a terminal run.
    fn is_settled(&self) -> bool {
        self.active.is_empty() && self.faulted.is_empty() && !self.reader.retrying()
    }

    /// One level-triggered pass: reads the folder, records its specs (the store gives each its
    /// generation), gathers what the store says, and does what `reconcile::decide` says. Returns
    /// when to come back early, if at all.
    async fn reconcile(&mut self, full: bool) -> Result<Option<Duration>, ControllerError> {
        let rows: HashMap<String, PipelineRow> = self
            .store
            .pipelines()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let bound = folder::bound_sources(rows.values());
        let snapshot = self
            .reader
            .read(&bound)
            .map_err(|source| ControllerError::Folder {
                path: self.opts.manifests_dir.clone(),
                source,
            })?;

        if !self.recovered {
            self.recover().await?;
            self.recovered = true;
        }
        let recovery_in = self.recover_faulted().await?;

        let generations = self.record_specs(&snapshot.folder, &rows).await?;
        let latest = self
            .latest_runs(&snapshot.folder, &rows, &generations)
            .await?;
        let elsewhere =
            overlap::running_elsewhere(&self.store, &self.active.values().map(|a| a.run).collect())
                .await?;
        self.uncancellable
            .retain(|run| elsewhere.values().any(|r| r == run));
        let observed = Observed {
            rows,
            generations,
            latest,
            active: self.own_runs(),
            reported_invalid: std::mem::take(&mut self.reported_invalid),
            elsewhere,
            uncancellable: self.uncancellable.clone(),
            suspended: std::mem::take(&mut self.suspended),
            cancel_requested: overlap::cancel_requests(&self.opts.state_dir),
        };
        let decision = reconcile::decide(&snapshot, &observed, crate::failpoint::schedule_now());
        self.reported_invalid = reconcile::invalid_sources(&snapshot.folder);
        self.suspended = reconcile::suspended(&snapshot.folder);
        self.launch_deferred = false;
        for action in decision.actions {
            self.act(action, &snapshot.folder).await?;
        }
        let deferred = std::mem::take(&mut self.launch_deferred).then_some(runs::LAUNCH_RETRY);

        if full {
            self.write_all_statuses().await?;
        } else {
            let dirty: Vec<String> = self.dirty.drain().collect();
            for name in dirty {
                self.write_status(&name).await?;
            }
        }
        let requeue = decision
            .requeue
            .map(|after| after / crate::failpoint::clock_scale());
        let requeue = match (requeue, deferred) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(match (requeue, recovery_in) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Carries out one action of the decision.
    async fn act(&mut self, action: Action, folder: &Folder) -> Result<(), StoreError> {
        match action {
            Action::Launch {
                pipeline,
                generation,
                why,
            } => {
                let Some(d) = folder.desired.get(&pipeline) else {
                    return Ok(());
                };
                // Held until the run is recorded; none while a foreground `run` holds it.
                let Some(_lock) = self.launch_guard(d, why).await? else {
                    return Ok(());
                };
                match why {
                    Why::RerunRequested { or_tick } => {
                        if self.store.take_rerun(&pipeline).await? {
                            let params = self.store.take_rerun_params(&pipeline).await?;
                            self.launch_with(d, generation, why.as_str(), &params)
                                .await?;
                        } else if or_tick {
                            self.launch(d, generation, Why::Schedule.as_str()).await?;
                        }
                    }
                    Why::NewGeneration | Why::Schedule => {
                        self.launch(d, generation, why.as_str()).await?;
                    }
                }
            }
            Action::Cancel { pipeline, run, why } => {
                if let Some(a) = self.active.get_mut(&pipeline)
                    && a.run == run
                    && !a.cancelling
                {
                    a.cancel.cancel();
                    a.cancelling = true;
                    let _ = self
                        .events
                        .send(ControllerEvent::Cancelling { pipeline, run, why });
                }
            }
            Action::RequestRerun { pipeline } => {
                self.store.request_rerun(&pipeline).await?;
            }
            Action::SkipTick {
                pipeline,
                tick,
                run,
            } => {
                let tick = tick.format("%Y-%m-%dT%H:%M:%S").to_string();
                let why = format!("run {run} was still running (concurrencyPolicy: Forbid)");
                self.store.record_tick_skipped(run, &tick, &why).await?;
                let _ = self.events.send(ControllerEvent::TickSkipped {
                    pipeline,
                    tick,
                    run,
                });
            }
            Action::CancelElsewhere { pipeline, run } => {
                self.cancel_elsewhere(pipeline, run).await?;
            }
            Action::RememberTick { pipeline, tick } => {
                let at = time::OffsetDateTime::from_unix_timestamp(tick.and_utc().timestamp())
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                self.store.set_last_tick(&pipeline, at).await?;
            }
            Action::MarkDeleted { pipeline } => {
                self.store.mark_pipeline_deleted(&pipeline).await?;
                self.observed.remove(&pipeline);
                self.settled.remove(&pipeline);
                self.status.remove(&pipeline);
                let _ = self.events.send(ControllerEvent::Deleted { pipeline });
            }
            Action::ReportInvalid { source, message } => {
                let _ = self
                    .events
                    .send(ControllerEvent::Invalid { source, message });
            }
            Action::WriteStatus { pipeline } => {
                self.dirty.insert(pipeline);
            }
        }
        Ok(())
    }

    /// Every pipeline's status file (see `StatusWriter::write_all`).
    async fn write_all_statuses(&mut self) -> Result<(), StoreError> {
        let generations: HashMap<String, i64> = self
            .observed
            .iter()
            .map(|(name, (_, _, g))| (name.clone(), *g))
            .collect();
        self.status
            .write_all(&self.store, self.reader.folder(), &generations)
            .await
    }

    async fn write_status(&mut self, name: &str) -> Result<(), StoreError> {
        self.status
            .write(&self.store, self.reader.folder(), name)
            .await
    }
}

//! The controller: watches a manifests folder and reconciles it with the store. Dropping, editing
//! or deleting a manifest is the only input; each pipeline's current generation is driven to one
//! terminal run, schedules start one run per tick, and a status file per pipeline says where it is.
//!
//! One actor owns all the state and has one `select!`: folder events (debounced), the periodic
//! resync, schedule ticks, retries of files caught half-written, runs finishing, runs' progress
//! events, status writes and shutdown. Reconcile is level-triggered: whatever woke it, the actor
//! reads the folder (`folder`), records its specs and gathers what the store says, lets the pure
//! decision (`reconcile`) say what to do, and does it. Runs execute on the engine, sharing one
//! worker semaphore; their events reach the status files through `status_writer`. See
//! docs/controller.md.

pub mod folder;
pub mod lock;
pub mod observe;
pub mod permissions;
pub mod reconcile;
pub mod status_writer;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use notify::Watcher;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::launch::{self, PinnedPlan, Round};
use crate::engine::{self, EngineError, EngineOptions, RunEvent, RunReport};
use crate::spec::{OnSpecChange, Pinned};
use crate::status::RunPhase;
use crate::store::{PipelineRow, RunId, Store, StoreError};
use crate::validate::Options;

use folder::{Desired, Folder, FolderReader};
use permissions::Trust;
use reconcile::{Action, ActiveRun, LatestRun, Observed, Why};
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
    },
    RunResumed {
        pipeline: String,
        run: RunId,
        lost: Vec<String>,
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
    Warning(String),
    Stopping,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
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

struct Active {
    run: RunId,
    generation: i64,
    cancel: CancellationToken,
    cancelling: bool,
    /// Stops the run's jobs without ending the run (the controller is stopping).
    interrupt: CancellationToken,
}

type RunDone = (String, RunId, Result<RunReport, EngineError>);
/// A progress event of a run, with its pipeline.
type Progress = (String, RunId, RunEvent);

/// The reconcile actor.
struct Controller {
    opts: ControllerOptions,
    store: Store,
    events: mpsc::UnboundedSender<ControllerEvent>,
    engine: EngineOptions,
    kill_now: CancellationToken,
    active: HashMap<String, Active>,
    runs: JoinSet<RunDone>,
    /// The outbox delivery pass, when one is under way.
    deliveries: JoinSet<()>,
    /// The manifests folder, with what was last read of it.
    reader: FolderReader,
    reported_invalid: HashMap<String, String>,
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
    let requests = crate::state_dir::requests_dir(&opts.state_dir);
    let _ = crate::state_dir::create_private_dir(&requests);
    std::fs::create_dir_all(&opts.manifests_dir).map_err(|source| ControllerError::Folder {
        path: opts.manifests_dir.clone(),
        source,
    })?;
    permissions::check_folder(&opts.manifests_dir).map_err(ControllerError::InsecureFolder)?;
    let trust = Trust::from_config(&opts.config.security)?;
    // So that `status`, `wait` and others run from another folder find what this controller watches.
    store.set_manifests_dir(&opts.manifests_dir).await?;
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel::<Wake>();
    let watcher = {
        let tx = wake_tx.clone();
        notify::recommended_watcher(move |res| {
            let _ = tx.send(Wake::Files(res));
        })
        .and_then(|mut w| {
            if crate::failpoint::fails("watch") {
                // What running out of inotify watches looks like to us (tests only).
                return Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch));
            }
            w.watch(&opts.manifests_dir, notify::RecursiveMode::NonRecursive)?;
            w.watch(&requests, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        })
    };
    let resync = match &watcher {
        Ok(_) => opts
            .config
            .resync_interval
            .as_std()
            .max(Duration::from_millis(100)),
        Err(e) => {
            let _ = events.send(ControllerEvent::Warning(format!(
                "cannot watch {} ({e}); falling back to a rescan every second",
                opts.manifests_dir.display()
            )));
            Duration::from_secs(1)
        }
    };
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
    let mut c = Controller {
        reader: FolderReader::new(opts.manifests_dir.clone(), options, trust),
        status: StatusWriter::new(
            opts.manifests_dir.clone(),
            opts.state_dir.clone(),
            events.clone(),
        ),
        progress,
        engine: EngineOptions {
            state_dir: opts.state_dir.clone(),
            workers: Arc::new(Semaphore::new(workers)),
            shutdown_grace: opts.config.shutdown_grace.as_std(),
            plugin_dirs: opts.config.plugin_dirs.clone(),
        },
        opts,
        store,
        events,
        kill_now,
        active: HashMap::new(),
        runs: JoinSet::new(),
        deliveries: JoinSet::new(),
        reported_invalid: HashMap::new(),
        recovered: false,
        observed: HashMap::new(),
        settled: HashMap::new(),
        dirty: HashSet::new(),
    };
    let mut full_pass = true;

    let mut next_reconcile: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut resync_at = tokio::time::Instant::now() + resync;
    let mut stopping = false;
    loop {
        if !stopping
            && let Some(at) = next_reconcile
            && at <= tokio::time::Instant::now()
        {
            next_reconcile = None;
            let requeue = c.reconcile(std::mem::take(&mut full_pass)).await?;
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
            Some(done) = c.runs.join_next(), if !c.runs.is_empty() => {
                if let Ok((name, run, result)) = done {
                    c.finished(&name, run, result).await?;
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
                    Ok(event) if !relevant(&event) => continue,
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
                c.status.flush(&c.store, c.reader.folder()).await?;
            }
            Some((name, run, event)) = progress_rx.recv() => c.status.apply(&name, run, &event),
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
    Ok(c.all_succeeded().await?)
}

/// Whether a folder event can mean a changed manifest or request (reads and opens cannot).
fn relevant(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
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
        self.active.is_empty() && !self.reader.retrying()
    }

    async fn all_succeeded(&self) -> Result<bool, StoreError> {
        let folder = self.reader.folder();
        if !folder.invalid.is_empty() {
            return Ok(false);
        }
        for name in folder.desired.keys() {
            match self.store.latest_run(name).await? {
                Some(r) if r.phase == RunPhase::Succeeded => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
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
            self.recovered = true;
            self.recover().await?;
            // Runs that ended before a crash but whose notifications were never queued.
            if let Err(e) = crate::notify::enqueue_missed(&self.store, &self.opts.state_dir).await {
                let _ = self
                    .events
                    .send(ControllerEvent::Warning(format!("notifications: {e}")));
            }
            self.deliver();
        }

        let generations = self.record_specs(&snapshot.folder, &rows).await?;
        let latest = self
            .latest_runs(&snapshot.folder, &rows, &generations)
            .await?;
        let observed = Observed {
            rows,
            generations,
            latest,
            active: self
                .active
                .iter()
                .map(|(name, a)| {
                    let run = ActiveRun {
                        run: a.run,
                        generation: a.generation,
                        cancelling: a.cancelling,
                    };
                    (name.clone(), run)
                })
                .collect(),
            reported_invalid: std::mem::take(&mut self.reported_invalid),
        };
        let decision = reconcile::decide(&snapshot, &observed, chrono::Utc::now());
        self.reported_invalid = reconcile::invalid_sources(&snapshot.folder);
        for action in decision.actions {
            self.act(action, &snapshot.folder).await?;
        }

        if full {
            self.write_all_statuses().await?;
        } else {
            let dirty: Vec<String> = self.dirty.drain().collect();
            for name in dirty {
                self.write_status(&name).await?;
            }
        }
        Ok(decision.requeue)
    }

    /// Tells the store each pipeline of the folder (it counts generations); an unchanged pipeline
    /// costs no write. Returns each one's current generation.
    async fn record_specs(
        &mut self,
        folder: &Folder,
        rows: &HashMap<String, PipelineRow>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut generations = HashMap::new();
        for d in folder.desired.values() {
            let known = self
                .observed
                .get(&d.name)
                .filter(|(hash, source, _)| *hash == d.spec_hash && *source == d.source)
                .map(|(_, _, g)| *g)
                .filter(|_| rows.get(&d.name).is_some_and(|r| !r.deleted));
            let generation = match known {
                Some(g) => g,
                None => {
                    let g = self
                        .store
                        .observe_pipeline(&d.name, &d.spec_hash, &d.source)
                        .await?;
                    self.observed
                        .insert(d.name.clone(), (d.spec_hash.clone(), d.source.clone(), g));
                    self.dirty.insert(d.name.clone());
                    g
                }
            };
            generations.insert(d.name.clone(), generation);
        }
        Ok(generations)
    }

    /// The latest run of the current generation of each pipeline not running here, except those
    /// already known to have a terminal one and with nothing asking for another (no rerun
    /// request, no schedule): those cost no query.
    async fn latest_runs(
        &mut self,
        folder: &Folder,
        rows: &HashMap<String, PipelineRow>,
        generations: &HashMap<String, i64>,
    ) -> Result<HashMap<String, LatestRun>, StoreError> {
        let mut latest = HashMap::new();
        for d in folder.desired.values() {
            let Some(&generation) = generations.get(&d.name) else {
                continue;
            };
            let rerun_requested = rows.get(&d.name).is_some_and(|r| r.rerun_requested);
            if self.active.contains_key(&d.name)
                || (self.settled.get(&d.name) == Some(&generation)
                    && !rerun_requested
                    && d.manifest.spec.schedule.is_none())
            {
                continue;
            }
            let run = self
                .store
                .latest_run_of_generation(&d.name, generation)
                .await?;
            let seen = match run {
                None => LatestRun::None,
                Some(r) if !r.phase.is_terminal() => LatestRun::Unfinished,
                Some(_) => {
                    self.settled.insert(d.name.clone(), generation);
                    LatestRun::Terminal
                }
            };
            latest.insert(d.name.clone(), seen);
        }
        Ok(latest)
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

    /// Runs left Running by a controller that stopped or died: recovered and continued (only what
    /// had not ended runs) on their pinned spec when their manifest is still there, unless it
    /// changed meanwhile under `onSpecChange: replace`; closed as Cancelled when the manifest was
    /// deleted or replaced. Runs of a foreground `executioner run` (generation 0) are the user's
    /// to resume and are left alone.
    async fn recover(&mut self) -> Result<(), ControllerError> {
        for run in self.store.unfinished_runs().await? {
            if run.generation == 0 || engine::resume::owner_alive(&run) {
                continue;
            }
            let continues = if self.active.contains_key(run.pipeline.as_str()) {
                false
            } else if let Some(d) = self.reader.folder().desired.get(run.pipeline.as_str()) {
                let generation = self
                    .store
                    .observe_pipeline(&d.name, &d.spec_hash, &d.source)
                    .await?;
                generation == run.generation
                    || d.manifest.spec.on_spec_change == OnSpecChange::Queue
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
                    continue;
                }
                Some(Err(_)) | None => None,
            };
            let Some(plan) = plan.filter(|_| continues) else {
                engine::resume::recover(&self.store, &run).await?;
                let coe = pinned
                    .as_ref()
                    .map_or_else(Vec::new, Pinned::continue_on_error);
                let coe: Vec<&str> = coe.iter().map(String::as_str).collect();
                self.store.cancel_run(run.id, &coe).await?;
                continue;
            };
            let owner = launch::this_process();
            let mode = engine::resume::ResumeMode::Continue;
            match launch::next_round(&self.store, &run, &plan, mode, &owner, None).await? {
                Round::Next { request, lost, .. } => {
                    let _ = self.events.send(ControllerEvent::RunResumed {
                        pipeline: run.pipeline.to_string(),
                        run: run.id,
                        lost: lost.iter().map(ToString::to_string).collect(),
                    });
                    self.spawn_run(run.pipeline.to_string(), plan, request, run.generation);
                }
                Round::AlreadySucceeded | Round::NothingToDo | Round::OwnedElsewhere { .. } => {}
            }
        }
        Ok(())
    }

    async fn launch(
        &mut self,
        d: &Desired,
        generation: i64,
        why: &'static str,
    ) -> Result<(), StoreError> {
        self.launch_with(d, generation, why, &IndexMap::new()).await
    }

    /// Starts a run with these parameters (a rerun's; none for a new generation or a tick).
    async fn launch_with(
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
        });
        self.settled.remove(&d.name);
        self.dirty.insert(d.name.clone());
        self.spawn_run(d.name.clone(), plan, request, generation);
        Ok(())
    }

    fn spawn_run(
        &mut self,
        name: String,
        plan: engine::Plan,
        request: engine::RunRequest,
        generation: i64,
    ) {
        let stop = engine::Stop::default();
        let run = request.run_id;
        self.active.insert(
            name.clone(),
            Active {
                run,
                generation,
                cancel: stop.cancel.clone(),
                cancelling: false,
                interrupt: stop.interrupt.clone(),
            },
        );
        let jobs = plan.jobs.iter().map(|j| j.id.to_string()).collect();
        self.status.run_started(&name, run, jobs);
        let store = self.store.clone();
        let options = self.engine.clone();
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
        self.runs.spawn(async move {
            let result = engine::execute(&store, Arc::new(plan), request, &options, tx, stop).await;
            (name, run, result)
        });
    }

    async fn finished(
        &mut self,
        name: &str,
        run: RunId,
        result: Result<RunReport, EngineError>,
    ) -> Result<(), ControllerError> {
        self.active.remove(name);
        self.status.run_ended(name);
        crate::failpoint::hit("run-committed");
        // An interrupted run has not ended: its notifications wait for its end.
        let ended = result.as_ref().is_ok_and(|r| r.phase.is_terminal());
        if ended
            && let Err(e) =
                crate::notify::enqueue_for_run(&self.store, run, &self.opts.state_dir).await
        {
            let _ = self.events.send(ControllerEvent::Warning(format!(
                "notifications of run {run}: {e}"
            )));
        }
        self.deliver();
        match result {
            Ok(report) if report.phase.is_terminal() => {
                let _ = self.events.send(ControllerEvent::RunFinished {
                    pipeline: name.to_owned(),
                    run,
                    phase: report.phase,
                });
            }
            Ok(_) => {
                let _ = self.events.send(ControllerEvent::RunInterrupted {
                    pipeline: name.to_owned(),
                    run,
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.write_status(name).await?;
        Ok(())
    }

    /// Sends what is due in the outbox on a task of its own (an SMTP timeout never blocks the
    /// loop); at most one delivery pass at a time.
    fn deliver(&mut self) {
        if !self.deliveries.is_empty() {
            return;
        }
        let store = self.store.clone();
        let config = self.opts.config.clone();
        let events = self.events.clone();
        self.deliveries.spawn(async move {
            match crate::notify::deliver_due(&store, &config).await {
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

/// Asks a running controller for a new run of `name` (through the store and a request file the
/// controller watches). False when the pipeline is unknown.
pub async fn request_rerun(
    store: &Store,
    state_dir: &Path,
    name: &str,
    params: &IndexMap<String, String>,
) -> Result<bool, StoreError> {
    if !store.request_rerun_with_params(name, params).await? {
        return Ok(false);
    }
    let dir = crate::state_dir::requests_dir(state_dir);
    let _ = crate::state_dir::create_private_dir(&dir);
    let _ = std::fs::write(dir.join(format!("rerun-{name}")), b"");
    Ok(true)
}

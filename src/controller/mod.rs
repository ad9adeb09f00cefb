//! The controller: watches a manifests folder and reconciles it with the store. Dropping, editing
//! or deleting a manifest is the only input; each pipeline's current generation is driven to one
//! terminal run, schedules start one run per tick, and a status file per pipeline says where it is.
//!
//! One actor owns all the state and has one `select!`: folder events (debounced), the periodic
//! resync, schedule ticks, retries of files caught half-written, runs finishing, status flushes and
//! shutdown. Reconcile is level-triggered: it reads the folder and the store and converges, whatever
//! woke it. Runs execute on the engine, sharing one worker semaphore. See docs/controller.md.

pub mod lock;
pub mod observe;
pub mod permissions;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use notify::Watcher;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::launch::{self, PinnedPlan, Round};
use crate::engine::{self, EngineError, EngineOptions, RunReport};
use crate::schedule::Due;
use crate::spec::{OnSpecChange, Pinned};
use crate::status::RunPhase;
use crate::status::file::{status_path, write_atomic};
use crate::store::{RunId, Store, StoreError};
use crate::validate::Options;

use observe::{Desired, Dirs, Folder};
use permissions::Trust;

/// Quiet time after a folder event before reconciling.
pub const DEBOUNCE: Duration = Duration::from_millis(10);
/// How long a file that is being written (modified, not yet closed) is left alone at most.
pub const WRITE_QUIET: Duration = Duration::from_secs(2);
/// When a file fails to parse, it is read again after this before it is reported Invalid.
pub const PARSE_RETRY: Duration = Duration::from_millis(300);
/// How often status files of running pipelines are refreshed.
pub const STATUS_FLUSH: Duration = Duration::from_millis(100);

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
    #[error("cannot read the manifests folder {}: {source}", path.display())]
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
    folder: Folder,
    /// Files modified and not yet closed, with the time of the last event.
    writing: HashMap<PathBuf, Instant>,
    /// Sources whose parse failure is being retried, with when it was first seen.
    parse_failures: HashMap<String, Instant>,
    reported_invalid: HashMap<String, String>,
    /// Who may own a manifest that is run.
    trust: Trust,
    recovered: bool,
    options: Options,
    /// What the store was last told of each pipeline: (spec hash, source, generation), so that
    /// an unchanged pipeline costs no write per pass.
    observed: HashMap<String, (String, String, i64)>,
    /// Pipelines whose current generation (the value) already has a terminal run.
    settled: HashMap<String, i64>,
    /// Pipelines whose status file may be stale.
    dirty: HashSet<String>,
    /// Each manifest file's parse, by (size, mtime, mtime ns, inode).
    parsed: HashMap<PathBuf, (FileStamp, Folder)>,
    /// What each status file was last written from, and its text.
    written: HashMap<String, (StatusKey, String)>,
}

/// The inputs of a status file that can change while its pipeline is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusKey {
    generation: Option<i64>,
    run: Option<(RunId, String, Option<String>)>,
    invalid: Option<String>,
}

/// The key of a status document just built.
fn status_key(doc: &crate::status::file::PipelineStatusDoc) -> StatusKey {
    let invalid = doc
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Valid" && c.status == "False")
        .map(|c| c.message.clone());
    StatusKey {
        generation: Some(doc.metadata.generation).filter(|g| *g > 0),
        run: doc
            .status
            .run_id
            .map(|id| (id, doc.status.phase.clone(), doc.status.finished_at.clone())),
        invalid,
    }
}

type FileStamp = (u64, i64, i64, u64);

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
    let mut c = Controller {
        engine: EngineOptions {
            state_dir: opts.state_dir.clone(),
            workers: Arc::new(Semaphore::new(workers)),
            shutdown_grace: opts.config.shutdown_grace.as_std(),
            plugin_dirs: opts.config.plugin_dirs.clone(),
        },
        options: Options {
            security,
            ..Options::default()
        },
        opts,
        store,
        events,
        kill_now,
        active: HashMap::new(),
        runs: JoinSet::new(),
        deliveries: JoinSet::new(),
        folder: Folder::default(),
        writing: HashMap::new(),
        parse_failures: HashMap::new(),
        reported_invalid: HashMap::new(),
        trust,
        recovered: false,
        observed: HashMap::new(),
        settled: HashMap::new(),
        dirty: HashSet::new(),
        parsed: HashMap::new(),
        written: HashMap::new(),
    };
    let mut full_pass = true;

    let mut next_reconcile: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut resync_at = tokio::time::Instant::now() + resync;
    let mut flush_at = tokio::time::Instant::now() + STATUS_FLUSH;
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
                    Ok(event) => c.note_event(&event),
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
            _ = tokio::time::sleep_until(flush_at) => {
                flush_at = tokio::time::Instant::now() + STATUS_FLUSH;
                let running: Vec<String> = c.active.keys().cloned().collect();
                for name in running {
                    c.write_status(&name).await?;
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

/// Whether a file just created is a new name of a file that already has another (a hard link):
/// its content was written before, it is not being written through this name.
fn is_link_to_existing(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.nlink() > 1)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Controller {
    /// Tracks files being written: modified but not yet closed.
    ///
    /// A rename into place and a new hard link to an existing file (`ln`, or `apply` on a
    /// filesystem without `RENAME_NOREPLACE`) are complete files: acted on at once.
    fn note_event(&mut self, event: &notify::Event) {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        for path in &event.paths {
            match event.kind {
                EventKind::Create(CreateKind::File) if is_link_to_existing(path) => {
                    self.writing.remove(path);
                }
                EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(path.clone(), Instant::now());
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                | EventKind::Remove(_) => {
                    self.writing.remove(path);
                }
                _ => {}
            }
        }
    }

    /// True when nothing runs and every valid pipeline's current generation has a terminal run.
    fn is_settled(&self) -> bool {
        self.active.is_empty() && self.parse_failures.is_empty()
    }

    async fn all_succeeded(&self) -> Result<bool, StoreError> {
        if !self.folder.invalid.is_empty() {
            return Ok(false);
        }
        for name in self.folder.desired.keys() {
            match self.store.latest_run(name).await? {
                Some(r) if r.phase == RunPhase::Succeeded => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Reads the folder, keeping the previous view of files still being written or failing to
    /// parse for the first time, and binds names to files (the store's `bound` sources keep their
    /// pipelines). Returns when to look again, if sooner than the resync.
    fn read_folder(
        &mut self,
        bound: &HashMap<String, String>,
    ) -> Result<(Folder, Option<Duration>), ControllerError> {
        let dir = &self.opts.manifests_dir;
        let files = match crate::validate::manifest_files(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ControllerError::Folder {
                    path: dir.clone(),
                    source,
                });
            }
        };
        let now = Instant::now();
        self.writing
            .retain(|_, t| now.duration_since(*t) < WRITE_QUIET);
        let mut read: Vec<Folder> = Vec::with_capacity(files.len());
        let mut requeue: Option<Duration> = None;
        let previous = |source: &str, prev: &Folder| {
            let mut kept = Folder::default();
            for d in prev.desired.values().filter(|d| d.source == source) {
                kept.desired.insert(d.name.clone(), d.clone());
            }
            for i in prev.invalid.iter().filter(|i| i.source == source) {
                kept.invalid.push(i.clone());
            }
            kept
        };
        let mut seen_sources = HashSet::new();
        for file in files {
            let source = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen_sources.insert(source.clone());
            if let Some(t) = self.writing.get(&file) {
                read.push(previous(&source, &self.folder));
                let left = WRITE_QUIET.saturating_sub(now.duration_since(*t));
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
                continue;
            }
            // Unchanged files (same size, mtime and inode) are not parsed again: a pass over a
            // folder of thousands of manifests costs a stat each. Owner and mode are checked on
            // every pass (a chmod does not change the mtime).
            let meta = std::fs::symlink_metadata(&file).ok();
            let stamp = meta.as_ref().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
            });
            let one = match (stamp, self.parsed.get(&file)) {
                (Some(st), Some((cached, entries))) if *cached == st => entries.clone(),
                _ => {
                    let mut one = Folder::default();
                    observe::read_file(&file, &self.options, &mut one);
                    if let Some(st) = stamp {
                        self.parsed.insert(file.clone(), (st, one.clone()));
                    }
                    one
                }
            };
            if let Some(Err(problem)) = meta.as_ref().map(|m| self.trust.check_manifest(m)) {
                let insecure = permissions::InsecurePath {
                    path: file.clone(),
                    problem,
                };
                self.parse_failures.remove(&source);
                read.push(observe::mark_insecure(one, &insecure, &file));
                continue;
            }
            let syntax_failure = one.invalid.iter().any(|i| i.syntax);
            if syntax_failure {
                let first = *self.parse_failures.entry(source.clone()).or_insert(now);
                if now.duration_since(first) < PARSE_RETRY {
                    read.push(previous(&source, &self.folder));
                    let left = PARSE_RETRY.saturating_sub(now.duration_since(first));
                    requeue = Some(requeue.map_or(left, |r| r.min(left)));
                    continue;
                }
            } else {
                self.parse_failures.remove(&source);
            }
            read.push(one);
        }
        self.parse_failures.retain(|s, _| seen_sources.contains(s));
        self.parsed.retain(|path, _| {
            path.file_name()
                .is_some_and(|n| seen_sources.contains(n.to_string_lossy().as_ref()))
        });
        Ok((observe::bind(read, bound), requeue))
    }

    /// One level-triggered pass. Returns when to come back early, if at all.
    async fn reconcile(&mut self, full: bool) -> Result<Option<Duration>, ControllerError> {
        let rows: HashMap<String, crate::store::PipelineRow> = self
            .store
            .pipelines()
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let bound: HashMap<String, String> = rows
            .values()
            .filter(|r| !r.deleted)
            .map(|r| (r.name.clone(), r.source.clone()))
            .collect();
        let (folder, mut requeue) = self.read_folder(&bound)?;
        self.folder = folder;

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

        let desired: Vec<Desired> = self.folder.desired.values().cloned().collect();
        for d in &desired {
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
            if self.active.contains_key(&d.name) {
                // A tick while the pipeline runs becomes one queued rerun.
                let (due, wait) = self.schedule_due(d).await?;
                if due {
                    self.store.request_rerun(&d.name).await?;
                }
                if let Some(wait) = wait {
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                }
            }
            if let Some(a) = self.active.get_mut(&d.name) {
                if a.generation < generation
                    && d.manifest.spec.on_spec_change == OnSpecChange::Replace
                    && !a.cancelling
                {
                    a.cancel.cancel();
                    a.cancelling = true;
                    let _ = self.events.send(ControllerEvent::Cancelling {
                        pipeline: d.name.clone(),
                        run: a.run,
                        why: "replaced by a new generation",
                    });
                }
                continue;
            }
            let rerun_requested = rows.get(&d.name).is_some_and(|r| r.rerun_requested);
            if self.settled.get(&d.name) == Some(&generation)
                && !rerun_requested
                && d.manifest.spec.schedule.is_none()
            {
                continue;
            }
            let latest = self
                .store
                .latest_run_of_generation(&d.name, generation)
                .await?;
            let tick = self.schedule_due(d).await?;
            if let Some(wait) = tick.1 {
                requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
            }
            match latest {
                None => self.launch(d, generation, "new generation").await?,
                Some(r) if !r.phase.is_terminal() => {
                    // Left running by another process; the foreground `run` owning it goes on.
                }
                Some(_) => {
                    self.settled.insert(d.name.clone(), generation);
                    if rerun_requested && self.store.take_rerun(&d.name).await? {
                        self.launch(d, generation, "rerun requested").await?;
                    } else if tick.0 {
                        self.launch(d, generation, "schedule").await?;
                    }
                }
            }
        }

        // Pipelines whose manifest is gone.
        let named_invalid: HashSet<String> = self
            .folder
            .invalid
            .iter()
            .filter_map(|i| i.name.clone())
            .collect();
        for row in rows.values() {
            if row.deleted
                || self.folder.desired.contains_key(&row.name)
                || named_invalid.contains(&row.name)
            {
                continue;
            }
            if let Some(a) = self.active.get_mut(&row.name)
                && !a.cancelling
            {
                a.cancel.cancel();
                a.cancelling = true;
                let _ = self.events.send(ControllerEvent::Cancelling {
                    pipeline: row.name.clone(),
                    run: a.run,
                    why: "manifest deleted",
                });
            }
            self.store.mark_pipeline_deleted(&row.name).await?;
            self.observed.remove(&row.name);
            self.settled.remove(&row.name);
            let _ = std::fs::remove_file(status_path(&self.opts.manifests_dir, &row.name));
            let _ = self.events.send(ControllerEvent::Deleted {
                pipeline: row.name.clone(),
            });
        }

        // Invalid manifests: reported once per change.
        let mut now_invalid = HashMap::new();
        for i in &self.folder.invalid {
            now_invalid.insert(i.source.clone(), i.message.clone());
            if self.reported_invalid.get(&i.source) != Some(&i.message) {
                if let Some(n) = &i.name {
                    self.dirty.insert(n.clone());
                }
                let _ = self.events.send(ControllerEvent::Invalid {
                    source: i.source.clone(),
                    message: i.message.clone(),
                });
            }
        }
        // Fixed manifests: their status must drop the Invalid phase.
        for source in self.reported_invalid.keys() {
            if !now_invalid.contains_key(source) {
                for d in self.folder.desired.values().filter(|d| &d.source == source) {
                    self.dirty.insert(d.name.clone());
                }
            }
        }
        self.reported_invalid = now_invalid;

        if full {
            self.write_all_statuses().await?;
        } else {
            let dirty: Vec<String> = self.dirty.drain().collect();
            for name in dirty {
                self.write_status(&name).await?;
            }
        }
        Ok(requeue)
    }

    /// Whether a schedule tick is due now, and how long until the next one.
    async fn schedule_due(&mut self, d: &Desired) -> Result<(bool, Option<Duration>), StoreError> {
        let Some(text) = &d.manifest.spec.schedule else {
            return Ok((false, None));
        };
        let Ok(schedule) = crate::schedule::Schedule::parse(text) else {
            return Ok((false, None));
        };
        let now = chrono::Utc::now();
        let row = self.store.pipeline(&d.name).await?;
        // The store keeps the last tick as the wall-clock time it was in the schedule's zone
        // (labelled UTC): ticks are compared as wall-clock times (see `schedule`).
        let last_tick = row.and_then(|r| r.last_tick).and_then(|t| {
            chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).map(|at| at.naive_utc())
        });
        let wait = schedule.next_tick(now).map(|(_, at)| {
            (at - now).to_std().unwrap_or(Duration::from_secs(1)) + Duration::from_millis(5)
        });
        let stored = |tick: chrono::NaiveDateTime| {
            time::OffsetDateTime::from_unix_timestamp(tick.and_utc().timestamp())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        match schedule.due(last_tick, now) {
            Due::Remember(tick) => {
                self.store.set_last_tick(&d.name, stored(tick)).await?;
                Ok((false, wait))
            }
            Due::Run(tick) => {
                self.store.set_last_tick(&d.name, stored(tick)).await?;
                Ok((true, wait))
            }
            Due::Nothing => Ok((false, wait)),
        }
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
            let continues = if self.active.contains_key(&run.pipeline) {
                false
            } else if let Some(d) = self.folder.desired.get(&run.pipeline) {
                let generation = self
                    .store
                    .observe_pipeline(&d.name, &d.spec_hash, &d.source)
                    .await?;
                generation == run.generation
                    || d.manifest.spec.on_spec_change == OnSpecChange::Queue
            } else {
                // An invalid edit does not stop a run of an earlier valid generation.
                self.folder.invalid_named(&run.pipeline).is_some()
            };
            let pinned = Pinned::from_json(&run.spec_json).ok();
            let plan = pinned.as_ref().and_then(|p| p.plan().ok());
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
                        pipeline: run.pipeline.clone(),
                        run: run.id,
                        lost,
                    });
                    self.spawn_run(run.pipeline.clone(), plan, request, run.generation);
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
        let pinned = Pinned::new(
            d.manifest.clone(),
            &self.opts.manifests_dir,
            IndexMap::new(),
            Vec::new(),
        );
        let plan = match pinned.plan() {
            Ok(p) => p,
            Err(e) => {
                let _ = self.events.send(ControllerEvent::Warning(format!(
                    "pipeline {}: cannot start a run: {e}",
                    d.name
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
        let store = self.store.clone();
        let options = self.engine.clone();
        let stop = engine::Stop {
            kill_now: self.kill_now.clone(),
            ..stop
        };
        self.runs.spawn(async move {
            // Progress reaches the status file through the periodic flush.
            let (tx, _rx) = mpsc::unbounded_channel();
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

    /// Every pipeline's status file, skipping (cheaply) those whose run, generation and validity
    /// are what was last written and whose file still holds that text.
    async fn write_all_statuses(&mut self) -> Result<(), StoreError> {
        let mut names: Vec<String> = self.folder.desired.keys().cloned().collect();
        let named_invalid: HashSet<&String> = self
            .folder
            .invalid
            .iter()
            .filter_map(|i| i.name.as_ref())
            .collect();
        for n in named_invalid {
            if !self.folder.desired.contains_key(n) {
                names.push(n.clone());
            }
        }
        let latest: HashMap<String, crate::store::RunRow> = self
            .store
            .latest_runs()
            .await?
            .into_iter()
            .map(|r| (r.pipeline.clone(), r))
            .collect();
        for name in names {
            if !self.active.contains_key(&name)
                && let Some((key, text)) = self.written.get(&name)
                && *key == self.cheap_key(&name, latest.get(&name))
                && std::fs::read_to_string(status_path(&self.opts.manifests_dir, &name))
                    .ok()
                    .as_deref()
                    == Some(text.as_str())
            {
                continue;
            }
            self.write_status(&name).await?;
        }
        Ok(())
    }

    /// What decides a pipeline's status besides its run's jobs (which only change while it runs).
    fn cheap_key(&self, name: &str, run: Option<&crate::store::RunRow>) -> StatusKey {
        let invalid = self.folder.invalid_named(name).map(|i| i.message.clone());
        StatusKey {
            generation: self.observed.get(name).map(|(_, _, g)| *g),
            run: run.map(|r| {
                (
                    r.id,
                    r.phase.to_string(),
                    r.finished_at.map(crate::status::format_time),
                )
            }),
            invalid,
        }
    }

    /// Rewrites the status file when its content differs from what the store says (so a file
    /// deleted or edited behind the controller's back is restored).
    async fn write_status(&mut self, name: &str) -> Result<(), StoreError> {
        let (source, invalid) = match self.folder.desired.get(name) {
            Some(d) => (d.source.clone(), None),
            None => match self.folder.invalid_named(name) {
                Some(i) => (i.source.clone(), Some(i.clone())),
                None => return Ok(()),
            },
        };
        let row = self.store.pipeline(name).await?;
        let dirs = Dirs {
            state: &self.opts.state_dir,
            manifests: &self.opts.manifests_dir,
        };
        let doc = observe::pipeline_status(
            &self.store,
            dirs,
            name,
            &source,
            row.as_ref(),
            invalid.as_ref(),
        )
        .await?;
        let text = doc.to_yaml();
        let path = status_path(&self.opts.manifests_dir, name);
        self.written
            .insert(name.to_owned(), (status_key(&doc), text.clone()));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str())
            && let Err(e) = write_atomic(&path, &text)
        {
            let _ = self.events.send(ControllerEvent::Warning(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        Ok(())
    }
}

/// Asks a running controller for a new run of `name` (through the store and a request file the
/// controller watches). False when the pipeline is unknown.
pub async fn request_rerun(
    store: &Store,
    state_dir: &Path,
    name: &str,
) -> Result<bool, StoreError> {
    if !store.request_rerun(name).await? {
        return Ok(false);
    }
    let dir = crate::state_dir::requests_dir(state_dir);
    let _ = crate::state_dir::create_private_dir(&dir);
    let _ = std::fs::write(dir.join(format!("rerun-{name}")), b"");
    Ok(true)
}

//! `executioner controller`, `status` and `rerun`: the declarative side of the CLI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::controller::leader::LeadershipChange;
use crate::controller::{self, ControllerEvent, ControllerOptions, RunFault, lock};
use crate::status::file::{ConditionType, PipelinePhase, PipelineStatusDoc};
use crate::validate::Options;

use super::{CliError, CliResult, Exit, GlobalArgs};

/// `--manifests`, else the configuration's `manifests_dir`, made absolute.
pub fn manifests_dir(flag: Option<&Path>, config: &crate::config::Config) -> PathBuf {
    super::absolute(flag.unwrap_or(&config.manifests_dir))
}

pub fn run_controller(
    manifests: Option<&Path>,
    once: bool,
    listen: Option<String>,
    slots: Option<usize>,
    global: &GlobalArgs,
) -> CliResult {
    let mut config = super::load_config(global)?;
    if listen.is_some() {
        config.http.listen = listen;
    }
    let state_dir = super::state_dir(&config);
    let manifests_dir = manifests_dir(manifests, &config);
    super::runtime()?.block_on(async move {
        let store = super::open_store(&state_dir, &config).await?;
        let _lock = lock::acquire(&state_dir)?;
        if nix::unistd::geteuid().is_root() {
            if !config.security.allow_root {
                return Err(CliError::usage(
                    "refusing to run the controller as root (security.allow_root = false)",
                ));
            }
            tracing::warn!("running as root: every job runs as root too");
        }
        let cancel = CancellationToken::new();
        let kill_now = CancellationToken::new();
        let signals = super::watch_signals(cancel.clone(), kill_now.clone())?;
        let server = start_http(&config, &store, &state_dir, &manifests_dir).await?;
        // With a shared store the jobs run on workers; this one runs some of them in this
        // process, on a store of its own (its writes are fenced by its leases, not by this
        // controller's leadership).
        let worker_stop = cancel.child_token();
        let embedded = match slots.unwrap_or_else(|| config.workers()) {
            n if n > 0 && store.is_shared() => {
                super::worker::supervise_jobs()?;
                let worker_store = super::open_store(&state_dir, &config).await?;
                let opts = super::worker::options(
                    &config,
                    &state_dir,
                    super::worker::default_name(Some(&state_dir)),
                    std::collections::BTreeMap::new(),
                    n,
                );
                let (tx, rx) = mpsc::unbounded_channel();
                let printer = tokio::spawn(super::worker::print_events(rx));
                let stop = worker_stop.clone();
                let kill = kill_now.clone();
                Some(tokio::spawn(async move {
                    let served = crate::worker::serve(worker_store, opts, tx, stop, kill).await;
                    if let Err(e) = &served {
                        tracing::error!(error = %super::error::chain(e), "embedded worker stopped");
                    }
                    let _ = printer.await;
                }))
            }
            _ => None,
        };
        let metrics = server
            .as_ref()
            .map(|s| (s.metrics.clone(), s.changes.clone(), store.clone()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Some((metrics, changes, store)) = &metrics {
                    metrics.observe(&event);
                    changes.observe(&event);
                    if let ControllerEvent::RunFinished { run, .. } = &event
                        && let Err(e) = metrics.record_job_durations(store, *run).await
                    {
                        tracing::warn!(error = %super::error::chain(&e), "metrics: job durations");
                    }
                }
                log_event(&event);
            }
        });
        let status_dir = manifests_dir.join(".status");
        let opts = ControllerOptions {
            manifests_dir,
            state_dir,
            config,
            once,
            detailed_events: server.is_some(),
            lead_lost: None,
        };
        // Several controllers may share a PostgreSQL store: only the elected one decides.
        let result = if store.is_shared() {
            controller::leader::run_elected(opts, store, tx, cancel.clone(), kill_now).await
        } else {
            controller::run(opts, store, tx, cancel.clone(), kill_now).await
        };
        // `--once` ends here with nothing left to run; a stop has already reached the worker.
        worker_stop.cancel();
        if let Some(embedded) = embedded {
            let _ = embedded.await;
        }
        let _ = printer.await;
        if let Some(server) = server {
            server.stop().await;
        }
        signals.abort();
        let all_ok = result?;
        tracing::info!(dir = %status_dir.display(), "status files");
        Ok(if cancel.is_cancelled() {
            Exit::Interrupted
        } else if all_ok || !once {
            Exit::Success
        } else {
            Exit::Failed
        })
    })
}

/// The HTTP server while it serves: its metrics (fed from the controller's events) and its task.
struct Server {
    metrics: std::sync::Arc<crate::http::metrics::Metrics>,
    changes: crate::http::live::Changes,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// How long the server may take to finish its requests in flight once the controller stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

impl Server {
    async fn stop(self) {
        // The live streams never end by themselves: end them so that the drain does not wait.
        self.changes.close();
        self.stop.cancel();
        let abort = self.task.abort_handle();
        match tokio::time::timeout(HTTP_DRAIN, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server failed"),
            Ok(Err(_)) | Err(_) => abort.abort(),
        }
    }
}

/// Binds and serves the HTTP API when `http.listen` is set (its own task: a request never holds
/// up the reconcile loop).
async fn start_http(
    config: &crate::config::Config,
    store: &crate::store::Store,
    state_dir: &Path,
    manifests_dir: &Path,
) -> Result<Option<Server>, CliError> {
    let Some(listen) = &config.http.listen else {
        return Ok(None);
    };
    let token = config
        .http
        .token_env
        .as_deref()
        .map(crate::http::auth::Token::from_env)
        .transpose()
        .map_err(|e| CliError::usage(e.to_string()))?;
    let bound = crate::http::bind(listen, state_dir)
        .await
        .map_err(|e| CliError::usage(super::error::chain(&e)))?;
    if !bound.addr.ip().is_loopback() && token.is_none() {
        tracing::warn!(
            addr = %bound.addr,
            "the HTTP API listens beyond this machine without a token (http.token_env): anyone who reaches it can read every pipeline, run and log"
        );
    }
    tracing::info!(addr = %bound.addr, read_only = token.is_none(), "listening");
    let metrics = std::sync::Arc::new(crate::http::metrics::Metrics::new());
    let changes = crate::http::live::Changes::new();
    let app = crate::http::App {
        // The API writes requests (rerun, cancel), never a leader's decisions: not fenced.
        store: store.unfenced(),
        state_dir: state_dir.to_owned(),
        manifests_dir: manifests_dir.to_owned(),
        options: Options {
            security: super::security_policy(config),
            ..Options::default()
        },
        trust: trust(config)?,
        metrics: metrics.clone(),
        token,
        changes: changes.clone(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(crate::http::serve(
        bound,
        std::sync::Arc::new(app),
        stop.clone(),
    ));
    Ok(Some(Server {
        metrics,
        changes,
        stop,
        task,
    }))
}

/// A controller event as a log line, with its fields (the subscriber formats it, see
/// [`super::logging`]).
fn log_event(event: &ControllerEvent) {
    match event {
        ControllerEvent::Started { manifests, workers } => tracing::info!(
            manifests = %manifests.display(),
            workers,
            "controller started"
        ),
        ControllerEvent::RunStarted {
            pipeline,
            run,
            generation,
            why,
            ..
        } => {
            tracing::info!(pipeline = %pipeline, run = run.get(), generation, why = %why, "run started")
        }
        ControllerEvent::RunResumed {
            pipeline,
            run,
            lost,
            ..
        } => tracing::warn!(
            pipeline = %pipeline,
            run = run.get(),
            lost = %lost.join(","),
            "run resumed after a crash"
        ),
        ControllerEvent::RunFinished {
            pipeline,
            run,
            phase,
        } => {
            tracing::info!(pipeline = %pipeline, run = run.get(), phase = %phase.as_str(), "run finished")
        }
        ControllerEvent::Cancelling { pipeline, run, why } => {
            tracing::info!(pipeline = %pipeline, run = run.get(), why = %why, "cancelling run")
        }
        ControllerEvent::Interrupting { pipeline, run } => tracing::info!(
            pipeline = %pipeline,
            run = run.get(),
            "interrupting run (it continues at the next start)"
        ),
        ControllerEvent::RunInterrupted { pipeline, run } => {
            tracing::info!(pipeline = %pipeline, run = run.get(), "run interrupted")
        }
        ControllerEvent::Invalid { source, message } => {
            tracing::error!(source = %source, error = %message, "invalid manifest")
        }
        ControllerEvent::Deleted { pipeline } => {
            tracing::info!(pipeline = %pipeline, "pipeline deleted")
        }
        ControllerEvent::TickSkipped {
            pipeline,
            tick,
            run,
        } => tracing::info!(
            pipeline = %pipeline,
            tick = %tick,
            run = run.get(),
            "schedule tick skipped: the run is still going on (concurrencyPolicy: Forbid)"
        ),
        ControllerEvent::RunFault {
            pipeline,
            run,
            fault,
            retry_in,
        } => {
            let recovery = match retry_in {
                Some(pause) => format!("the run is recovered in {pause:?}"),
                None => "it faulted too often: left Running for the next start".to_owned(),
            };
            match fault {
                RunFault::Engine(e) => tracing::error!(
                    pipeline = %pipeline,
                    run = run.get(),
                    error = %super::error::chain(e.as_ref()),
                    recovery = %recovery,
                    "run failed in the engine"
                ),
                RunFault::Panicked(message) => tracing::error!(
                    pipeline = %pipeline,
                    run = run.get(),
                    error = %message,
                    recovery = %recovery,
                    "run task panicked"
                ),
            }
        }
        ControllerEvent::HistoryPruned { runs, log_bytes } => {
            tracing::info!(runs, log_bytes, "history pruned")
        }
        ControllerEvent::Warning(message) => tracing::warn!("{message}"),
        ControllerEvent::Stopping => tracing::info!("stopping: interrupting runs"),
        ControllerEvent::Leadership(change) => log_leadership(change),
        // What the metrics are fed from: too frequent for the log.
        ControllerEvent::RunProgress { .. }
        | ControllerEvent::Reconciled { .. }
        | ControllerEvent::NotificationsPending { .. }
        | ControllerEvent::StatusBuilt { .. } => {}
    }
}

fn log_leadership(change: &LeadershipChange) {
    match change {
        LeadershipChange::Standby {
            leader: Some((holder, epoch)),
        } => tracing::info!("standby: leader is {holder} (epoch {epoch})"),
        LeadershipChange::Standby { leader: None } => {
            tracing::info!("standby: no controller leads yet")
        }
        LeadershipChange::Leading { holder, epoch } => {
            tracing::info!("leading as {holder} (epoch {epoch}): recovering runs and reconciling")
        }
        LeadershipChange::Deposed { epoch, why } => tracing::warn!(
            "no longer the leader (epoch {epoch}): {why}; its runs are left to the new leader, standing by"
        ),
        LeadershipChange::Resigned { epoch } => {
            tracing::info!("gave up the lead (epoch {epoch}) so a standby takes over at once")
        }
    }
}

/// The manifests folder of the state folder's pipelines: `--manifests`, else the one the
/// controller of that state folder recorded (so `status --state-dir X` works from any folder),
/// else the configuration's.
pub async fn watched_dir(
    flag: Option<&Path>,
    store: Option<&crate::store::Store>,
    config: &crate::config::Config,
) -> Result<PathBuf, CliError> {
    if flag.is_none()
        && let Some(store) = store
        && let Some(recorded) = store.manifests_dir().await?
    {
        return Ok(recorded);
    }
    Ok(manifests_dir(flag, config))
}

/// Who may own a manifest, from the configuration (an unknown user name is a usage error).
pub fn trust(config: &crate::config::Config) -> Result<controller::permissions::Trust, CliError> {
    controller::permissions::Trust::from_config(&config.security)
        .map_err(|e| CliError::usage(e.to_string()))
}

/// The status documents, from the store and the folder (no controller needed).
pub fn statuses(
    manifests: Option<&Path>,
    global: &GlobalArgs,
) -> Result<Vec<PipelineStatusDoc>, CliError> {
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    let options = Options {
        security: super::security_policy(&config),
        ..Options::default()
    };
    let trust = trust(&config)?;
    super::runtime()?.block_on(async move {
        let store = super::open_store_existing(&state_dir, &config).await?;
        let manifests_dir = watched_dir(manifests, store.as_ref(), &config).await?;
        let dirs = controller::observe::Dirs {
            state: &state_dir,
            manifests: &manifests_dir,
        };
        controller::observe::snapshot(store.as_ref(), dirs, &options, &trust)
            .await
            .map_err(CliError::from)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
    Yaml,
}

pub fn status(
    name: Option<&str>,
    format: StatusFormat,
    watch: bool,
    manifests: Option<&Path>,
    global: &GlobalArgs,
) -> CliResult {
    use std::io::IsTerminal;
    // On a terminal the screen is redrawn; elsewhere (a pipe, a file) each change is printed once,
    // as plain text.
    let terminal = std::io::stdout().is_terminal();
    let mut last: Option<String> = None;
    loop {
        let mut docs = statuses(manifests, global)?;
        if let Some(n) = name {
            docs.retain(|d| d.metadata.name == n);
            if docs.is_empty() {
                return Err(CliError::usage(format!("pipeline/{n} not found")));
            }
        }
        let text = match format {
            StatusFormat::Json => {
                let value = match (name, docs.first()) {
                    (Some(_), Some(d)) => serde_json::to_value(d).unwrap_or_default(),
                    _ => serde_json::to_value(&docs).unwrap_or_default(),
                };
                serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
            }
            StatusFormat::Yaml => docs
                .iter()
                .map(PipelineStatusDoc::to_yaml)
                .collect::<Vec<_>>()
                .join("---\n"),
            StatusFormat::Table => {
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
                // Outside git no pipeline has a revision, and the column is left out.
                let revisions = docs.iter().any(|d| d.metadata.revision.is_some());
                let mut header = vec![
                    "PIPELINE",
                    "PHASE",
                    "GENERATION",
                    "RUN",
                    "PROGRESS",
                    "SOURCE",
                ];
                if revisions {
                    header.push("REVISION");
                }
                table.set_header(header);
                for d in &docs {
                    let p = &d.status.progress;
                    let mut row = vec![
                        d.metadata.name.clone(),
                        d.status.phase.to_string(),
                        d.metadata.generation.to_string(),
                        d.status.run_id.map_or("-".into(), |r| r.to_string()),
                        format!(
                            "{}/{} succeeded, {} failed, {} running, {} skipped{}{}",
                            p.succeeded,
                            p.total,
                            p.failed,
                            p.running,
                            p.skipped,
                            if p.cancelled > 0 {
                                format!(", {} cancelled", p.cancelled)
                            } else {
                                String::new()
                            },
                            if p.waiting_for_worker > 0 {
                                format!(", {} waiting for a worker", p.waiting_for_worker)
                            } else {
                                String::new()
                            }
                        ),
                        d.metadata.source.clone(),
                    ];
                    if revisions {
                        row.push(
                            d.metadata
                                .revision
                                .as_deref()
                                .map_or("-".into(), crate::revision::short),
                        );
                    }
                    table.add_row(row);
                }
                let mut out = table.to_string();
                out.push('\n');
                for d in &docs {
                    if let Some(message) = d.invalid_message() {
                        out.push_str(&format!("{}: {message}\n", d.metadata.name));
                    }
                    if d.status.phase == PipelinePhase::Interrupted
                        && let Some(c) = d.condition(ConditionType::Complete)
                    {
                        out.push_str(&format!("{}: {}\n", d.metadata.name, c.message));
                    }
                }
                out
            }
        };
        if !watch {
            print!("{text}");
        } else if terminal {
            print!("\x1b[2J\x1b[H{text}");
        } else if last.as_deref() != Some(text.as_str()) {
            if last.is_some() && format == StatusFormat::Yaml {
                println!("---");
            }
            print!("{text}");
        }
        let _ = std::io::stdout().flush();
        if !watch {
            return Ok(Exit::Success);
        }
        last = Some(text);
        std::thread::sleep(if terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        });
    }
}

pub fn rerun(name: &str, param: &[String], global: &GlobalArgs) -> CliResult {
    crate::spec::PipelineName::parse(name).map_err(|e| CliError::usage(e.to_string()))?;
    let given = super::params::parse(param)?;
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    super::runtime()?.block_on(async move {
        let store = super::open_store_existing(&state_dir, &config)
            .await?
            .ok_or_else(|| {
                CliError::usage(format!(
                    "pipeline/{name} not found (no controller has seen it)"
                ))
            })?;
        // Checked here against the spec of its latest run, for an error at once; the controller
        // checks them again against the current manifest when it starts the run.
        if let Some(run) = store.latest_run(name).await?
            && let Ok(pinned) = crate::spec::Pinned::from_json(&run.spec_json)
        {
            super::params::resolve(&pinned.manifest.spec.params, &given)?;
        }
        if controller::request_rerun(&store, &state_dir, name, &given).await? {
            println!("pipeline/{name} rerun requested");
            Ok(Exit::Success)
        } else {
            Err(CliError::usage(format!("pipeline/{name} not found")))
        }
    })
}

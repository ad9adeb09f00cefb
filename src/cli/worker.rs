//! `executioner worker`: a worker process (DESIGN 9) on a PostgreSQL state database, and the
//! controller's embedded one (`controller --slots N`). The worker itself is `crate::worker`; this
//! file parses its flags, opens its store and prints what it reports.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::worker::{self, WorkerEvent, WorkerOptions};

use super::{CliError, CliResult, Exit, GlobalArgs};

/// `--labels k=v,k2=v2` (also repeated): the labels placement (`runOn`) matches.
pub fn parse_labels(values: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut labels = BTreeMap::new();
    for part in values.iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once('=') else {
            return Err(CliError::usage(format!(
                "--labels: {part:?} is not KEY=VALUE (for example --labels zone=eu,gpu=true)"
            )));
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && key.len() <= 63
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !valid {
            return Err(CliError::usage(format!(
                "--labels: label name {key:?} must be 1-63 of A-Z a-z 0-9 - _ . /"
            )));
        }
        labels.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// The worker's name when `--name` is left out: this host's name, so that a worker restarted on
/// the same host takes its name back (and stops what its predecessor left). A controller's
/// embedded worker adds `-controller-` and a digest of its state folder: two controllers on one
/// host (each has its own state folder) get two names, and a restarted one gets its own back.
pub fn default_name(embedded_in: Option<&std::path::Path>) -> String {
    let host = crate::process::hostname();
    match embedded_in {
        None => host,
        Some(state_dir) => {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(state_dir.to_string_lossy().as_bytes());
            let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("{host}-controller-{short}")
        }
    }
}

/// Every job of this process runs under a supervisor from now on, so that its process tree dies
/// with this process, even by kill -9 (DESIGN 9: no job left running while its lease is taken
/// over elsewhere).
pub fn supervise_jobs() -> Result<(), CliError> {
    crate::process::supervise::supervise_jobs().map_err(|e| {
        CliError::usage(format!(
            "cannot set up the supervision of jobs (a pipe, this executable's path): {e}"
        ))
    })
}

pub fn options(
    config: &Config,
    state_dir: &std::path::Path,
    name: String,
    labels: BTreeMap<String, String>,
    slots: usize,
) -> WorkerOptions {
    WorkerOptions {
        name,
        labels,
        slots: slots.max(1),
        lease_ttl: config.lease_ttl(),
        state_dir: state_dir.to_path_buf(),
        shutdown_grace: config.shutdown_grace.as_std(),
        plugin_dirs: config.plugin_dirs.clone(),
    }
}

pub fn run_worker(
    name: Option<String>,
    labels: &[String],
    slots: Option<usize>,
    global: &GlobalArgs,
) -> CliResult {
    let config = super::load_config(global)?;
    if config.database.url.is_none() {
        return Err(CliError::usage(
            "a worker needs a PostgreSQL state database: set database.url \
             (EXECUTIONER_DATABASE__URL or --database-url postgres://...)",
        ));
    }
    let labels = parse_labels(labels)?;
    let state_dir = super::state_dir(&config);
    let slots = slots.unwrap_or_else(|| config.workers());
    let name = name.unwrap_or_else(|| default_name(None));
    let plain = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(CliError::usage(format!(
            "--name {name:?}: 1-253 of A-Z a-z 0-9 - _ ."
        )));
    }
    supervise_jobs()?;
    super::runtime()?.block_on(async move {
        let store = super::open_store(&state_dir, &config).await?;
        let stop = CancellationToken::new();
        let kill_now = CancellationToken::new();
        let _signals = super::watch_signals(stop.clone(), kill_now.clone())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let printer = tokio::spawn(print_events(rx));
        let opts = options(&config, &state_dir, name, labels, slots);
        let served = worker::serve(store, opts, tx, stop.clone(), kill_now).await;
        let _ = printer.await;
        match served {
            Err(worker::WorkerError::Store(e)) => Err(CliError::from(e)),
            Ok(()) if stop.is_cancelled() => Ok(Exit::Interrupted),
            Ok(()) => Ok(Exit::Success),
        }
    })
}

/// Prints a worker's events as log lines until its channel closes.
pub async fn print_events(mut rx: mpsc::UnboundedReceiver<WorkerEvent>) {
    while let Some(event) = rx.recv().await {
        log_event(&event);
    }
}

fn log_event(event: &WorkerEvent) {
    match event {
        WorkerEvent::Registered {
            name,
            labels,
            slots,
        } => {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            tracing::info!(worker = %name, labels = %labels.join(","), slots, "worker registered");
        }
        WorkerEvent::Started {
            attempt,
            run,
            job,
            number,
        } => tracing::info!(
            attempt = attempt.get(),
            run = run.get(),
            job = %job,
            number,
            "attempt started"
        ),
        WorkerEvent::Finished {
            attempt,
            job,
            recorded,
        } => {
            if *recorded {
                tracing::info!(attempt = attempt.get(), job = %job, "attempt finished");
            } else {
                tracing::warn!(
                    attempt = attempt.get(),
                    job = %job,
                    "attempt finished; its result was discarded (the lease was no longer this worker's)"
                );
            }
        }
        WorkerEvent::LeaseLost { attempt, job, why } => {
            tracing::warn!(attempt = attempt.get(), job = %job, "job killed: {why}")
        }
        WorkerEvent::LeftoversKilled { groups } => tracing::warn!(
            groups,
            "stopped jobs an earlier worker of this name left running on this host"
        ),
        WorkerEvent::Warning(message) => tracing::warn!("{message}"),
        WorkerEvent::Reconnected => tracing::info!("state database reachable again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_key_value_pairs_in_one_or_more_flags() {
        let labels = parse_labels(&["zone=eu, gpu=true".into(), "tier=1".into()]).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["zone"], "eu");
        assert_eq!(labels["gpu"], "true");
        assert_eq!(labels["tier"], "1");
        let bad = parse_labels(&["zone".into()]).unwrap_err().render();
        assert!(bad.contains("not KEY=VALUE"), "{bad}");
        let bad = parse_labels(&["a b=1".into()]).unwrap_err().render();
        assert!(bad.contains("label name"), "{bad}");
    }

    #[test]
    fn two_controllers_on_one_host_name_their_workers_apart() {
        let a = default_name(Some(std::path::Path::new("/srv/a/state")));
        let b = default_name(Some(std::path::Path::new("/srv/b/state")));
        assert_ne!(a, b);
        assert_eq!(a, default_name(Some(std::path::Path::new("/srv/a/state"))));
        assert_eq!(default_name(None), crate::process::hostname());
    }
}

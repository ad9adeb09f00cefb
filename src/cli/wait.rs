//! `executioner wait NAME [--timeout D]`: block until the current generation's run is terminal.
//!
//! The current generation is the one of the manifest now in the manifests folder: `wait` reads the
//! folder, takes that manifest's spec hash, and waits until the store shows the controller has
//! observed that hash (as a generation) and that generation's run is terminal. So `apply` then
//! `wait` never returns the previous generation's result, even before the controller has seen
//! the new file. A manifest that is Invalid ends the wait at once (exit 1) with the reason.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::controller::folder::{self, Invalid};
use crate::status::RunPhase;
use crate::validate::Options;

use super::{CliError, CliResult, Exit, GlobalArgs};

/// How long a syntax error may last before it counts: the file may be caught half-written by an
/// editor that does not write atomically (the controller gives it as long).
const SYNTAX_GRACE: Duration = Duration::from_millis(600);

/// What the folder says of the pipeline waited for.
enum Target {
    /// A valid manifest with this spec hash.
    Spec(String),
    Invalid(Invalid),
    /// No manifest holds the name.
    Absent,
}

/// What one look at the folder and the store found.
enum Seen {
    Terminal(RunPhase),
    Invalid(Invalid),
    /// The pipeline is in neither the folder nor the store.
    Unknown,
    /// `spec.suspend` holds and the generation has no run: none will start until `unsuspend`.
    Suspended,
    NotYet,
}

/// Waits for pipeline `name`: for a terminal run of the generation of the manifest now in the
/// manifests folder (`manifests`, else the one the controller recorded, else the configured one).
/// Exit 0 Succeeded, 1 Failed/Cancelled or Invalid, 2 timeout, unknown pipeline, or suspended with
/// no run of its generation (it would never end).
pub fn wait_for(
    name: &str,
    manifests: Option<&Path>,
    timeout: Option<Duration>,
    global: &GlobalArgs,
) -> CliResult {
    crate::spec::PipelineName::parse(name).map_err(|e| CliError::usage(e.to_string()))?;
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    let options = Options {
        security: super::security_policy(&config),
        ..Options::default()
    };
    let trust = super::controller::trust(&config)?;
    let started = Instant::now();
    let runtime = super::runtime()?;
    // The pipeline may not be known yet (just applied): give the controller a moment to see it.
    let unknown_grace = Duration::from_secs(10);
    let mut syntax_since: Option<Instant> = None;
    loop {
        let seen = runtime.block_on(async {
            let store = super::open_store_existing(&state_dir, &config).await?;
            let rows = match &store {
                Some(s) => s.pipelines().await?,
                None => Vec::new(),
            };
            let dir = super::controller::watched_dir(manifests, store.as_ref(), &config).await?;
            let folder = folder::read_folder(&dir, &options, &trust, &folder::bound_sources(&rows))
                .unwrap_or_default();
            let suspended = folder
                .desired
                .get(name)
                .is_some_and(|d| d.manifest.spec.suspend);
            let target = match (folder.desired.get(name), folder.invalid_named(name)) {
                (Some(d), _) => Target::Spec(d.spec_hash.clone()),
                (None, Some(i)) => Target::Invalid(i.clone()),
                (None, None) => Target::Absent,
            };
            let row = rows.into_iter().find(|r| r.name == name);
            let (Some(store), Some(row)) = (store, row) else {
                return Ok::<_, CliError>(match target {
                    Target::Invalid(i) => Seen::Invalid(i),
                    Target::Spec(_) => Seen::NotYet,
                    Target::Absent => Seen::Unknown,
                });
            };
            let generation = match target {
                Target::Invalid(i) => return Ok(Seen::Invalid(i)),
                // Not observed yet: the store still shows the previous generation (or a deletion).
                Target::Spec(hash) if row.deleted || row.spec_hash != hash => {
                    return Ok(Seen::NotYet);
                }
                Target::Spec(_) => row.generation,
                // Not in the folder we can see: the store's current generation.
                Target::Absent if row.deleted => return Ok(Seen::Unknown),
                Target::Absent => row.generation,
            };
            let run = store.latest_run_of_generation(name, generation).await?;
            Ok(match run {
                Some(r) if r.phase.is_terminal() => Seen::Terminal(r.phase),
                Some(_) => Seen::NotYet,
                None if suspended => Seen::Suspended,
                None => Seen::NotYet,
            })
        })?;
        match seen {
            Seen::Terminal(RunPhase::Succeeded) => {
                println!("pipeline/{name} Succeeded");
                return Ok(Exit::Success);
            }
            Seen::Terminal(phase) => {
                println!("pipeline/{name} {phase}");
                return Ok(Exit::Failed);
            }
            Seen::Invalid(i)
                if !i.syntax || syntax_since.is_some_and(|t| t.elapsed() >= SYNTAX_GRACE) =>
            {
                println!("pipeline/{name} Invalid");
                return Err(CliError::failed(format!(
                    "pipeline/{name} is invalid:\n{}",
                    i.message
                )));
            }
            Seen::Invalid(_) => {
                syntax_since.get_or_insert_with(Instant::now);
            }
            Seen::Unknown
                if started.elapsed() > unknown_grace
                    && timeout.is_none_or(|t| t > unknown_grace) =>
            {
                return Err(CliError::usage(format!("pipeline/{name} not found")));
            }
            Seen::Suspended => {
                println!("pipeline/{name} Suspended");
                return Err(CliError::usage(format!(
                    "pipeline/{name} is suspended and its generation has no run: none starts \
                     until `executioner unsuspend {name}`"
                )));
            }
            Seen::Unknown | Seen::NotYet => syntax_since = None,
        }
        if let Some(t) = timeout
            && started.elapsed() >= t
        {
            return Err(CliError::usage(format!(
                "timed out after {} waiting for pipeline/{name}",
                humantime::format_duration(t)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

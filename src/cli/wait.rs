//! `executioner wait NAME [--timeout D]`: block until the current generation's run is terminal.

use std::time::{Duration, Instant};

use crate::status::RunPhase;

use super::{CliError, CliResult, Exit, GlobalArgs};

/// Waits for pipeline `name`: for a terminal run of its current generation (or of at least
/// `generation` when given). Exit 0 Succeeded, 1 Failed/Cancelled, 2 timeout or unknown pipeline.
pub fn wait_for(
    name: &str,
    generation: Option<i64>,
    timeout: Option<Duration>,
    global: &GlobalArgs,
) -> CliResult {
    crate::spec::PipelineName::parse(name).map_err(|e| CliError::usage(e.to_string()))?;
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    let started = Instant::now();
    let runtime = super::runtime()?;
    // The pipeline may not be known yet (just applied): give the controller a moment to see it.
    let unknown_grace = Duration::from_secs(10);
    loop {
        let verdict = runtime.block_on(async {
            let Some(store) = super::open_store_existing(&state_dir, &config).await? else {
                return Ok::<_, CliError>(None);
            };
            let Some(row) = store.pipeline(name).await.map_err(super::store_error)? else {
                return Ok(None);
            };
            let wanted = generation.unwrap_or(row.generation).max(row.generation);
            let run = store
                .latest_run_of_generation(name, wanted)
                .await
                .map_err(super::store_error)?;
            Ok(Some(run.filter(|r| r.phase.is_terminal()).map(|r| r.phase)))
        })?;
        match verdict {
            Some(Some(RunPhase::Succeeded)) => {
                println!("pipeline/{name} Succeeded");
                return Ok(Exit::Success);
            }
            Some(Some(phase)) => {
                println!("pipeline/{name} {phase}");
                return Ok(Exit::Failed);
            }
            None if started.elapsed() > unknown_grace
                && timeout.is_none_or(|t| t > unknown_grace) =>
            {
                return Err(CliError::usage(format!("pipeline/{name} not found")));
            }
            _ => {}
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

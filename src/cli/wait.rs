//! `executioner wait NAME [--timeout D]`: block until the current generation's run is terminal.

use std::time::Duration;

use super::{CliError, CliResult, GlobalArgs};

/// Waits for pipeline `name`: when `generation` is given, for a terminal run of at least that
/// generation. Exit 0 Succeeded, 1 Failed/Cancelled, 2 timeout or unknown pipeline.
pub fn wait_for(
    name: &str,
    generation: Option<i64>,
    timeout: Option<Duration>,
    global: &GlobalArgs,
) -> CliResult {
    let _ = (name, generation, timeout, global);
    Err(CliError::usage("wait: not available yet"))
}

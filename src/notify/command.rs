//! The `command` notifier: runs a program (no shell) with the run summary as JSON on its stdin, in
//! the state folder, with the executioner's environment. Exit 0 means delivered; anything else,
//! or running past [`COMMAND_TIMEOUT`], is a failure retried like an email's.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use crate::process::{self, Output, SpawnSpec, Stdin};
use crate::store::outbox::OutboxEntry;

use super::{COMMAND_TIMEOUT, CommandPayload, Failure};

/// Time a command that ran past its timeout gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// At most this much of a failed command's output is kept as the entry's error.
const ERROR_OUTPUT: usize = 2000;

pub(super) async fn run(entry: &OutboxEntry, state_dir: &Path) -> Result<(), Failure> {
    let payload: CommandPayload = super::decode_payload(entry)?;
    let Some((program, args)) = payload.command.split_first() else {
        return Err(Failure::permanent("empty notification command"));
    };
    let stdin = serde_json::to_vec_pretty(&payload.summary)
        .map_err(|e| Failure::permanent(format!("encoding the run summary: {e}")))?;
    let mut child = process::spawn(SpawnSpec {
        program: OsString::from(program),
        args: args.iter().map(OsString::from).collect(),
        env: std::env::vars().collect(),
        cwd: state_dir.to_path_buf(),
        stdin: Stdin::Bytes(stdin),
        output: Output::Capture,
    })
    .map_err(|e| Failure::retry(crate::error_chain::render(&e)))?;
    let exited = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(result) => result.map_err(|e| Failure::retry(crate::error_chain::render(&e)))?,
        Err(_) => {
            let _ = child.stop(STOP_GRACE).await;
            return Err(Failure::retry(format!(
                "{program} did not finish within {COMMAND_TIMEOUT:?}"
            )));
        }
    };
    if exited.status.success() {
        return Ok(());
    }
    let output = exited.captured.unwrap_or_default();
    let output = String::from_utf8_lossy(&output[output.len().saturating_sub(ERROR_OUTPUT)..]);
    let output = output.trim();
    Err(Failure::retry(if output.is_empty() {
        format!("{program} ended with {}", exited.status)
    } else {
        format!("{program} ended with {}: {output}", exited.status)
    }))
}

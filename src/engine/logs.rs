//! What the engine writes into a run's logs: the marker lines around each attempt in a job's log,
//! and the run's own `run.log`. Where the logs live and how they are opened is the state folder's
//! ([`crate::state_dir`]); the child's output goes to the log without passing through here.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::process::ExitStatus;
use crate::state_dir::open_private_append;
use crate::store::RunId;

use super::attempt::{AttemptOutcome, AttemptResult};

/// The text of an attempt's closing marker: its outcome, exit code or signal, and duration.
pub(super) fn ended_marker(result: &AttemptResult, took: Duration) -> String {
    let status = match result.exit.as_ref().map(|e| e.status) {
        Some(ExitStatus::Code(c)) => format!("exit code {c}"),
        Some(ExitStatus::Signal(s)) => format!("signal {s}"),
        None => "no exit status".to_owned(),
    };
    let outcome = match &result.outcome {
        AttemptOutcome::Succeeded => "succeeded".to_owned(),
        AttemptOutcome::Failed { reason, .. } => format!("failed ({reason})"),
        AttemptOutcome::Stopped => "stopped".to_owned(),
        AttemptOutcome::Lost => "lost (its worker's lease expired)".to_owned(),
        AttemptOutcome::Interrupted => "interrupted (its worker stopped)".to_owned(),
        AttemptOutcome::Detached => "left to its worker".to_owned(),
    };
    format!(
        "attempt {} {outcome}: {status}, after {:.3}s",
        result.number,
        took.as_secs_f64()
    )
}

/// Writes this attempt's marker line to the job's log (opened by [`open_private_append`]), and
/// returns the file with the offset where the attempt's output starts.
pub(super) fn write_marker(
    mut file: std::fs::File,
    job: &str,
    number: i64,
    round: i64,
    run: RunId,
) -> std::io::Result<(std::fs::File, u64)> {
    let now = crate::status::now_rfc3339();
    // One write per line: the file is shared with the child, and a line must never be split.
    file.write_all(
        format!("==> executioner: job {job}, attempt {number} (run {run}, round {round}) started at {now}\n")
            .as_bytes(),
    )?;
    let offset = file.metadata()?.len();
    Ok((file, offset))
}

pub(super) fn append_log(path: &Path, text: &str) {
    if let Ok(mut f) = open_private_append(path) {
        let _ = f.write_all(format!("==> executioner: {text}\n").as_bytes());
    }
}

/// The run's own event log (`run.log`); best effort, never fails the run.
pub(super) struct RunLog {
    file: Option<std::fs::File>,
}

impl RunLog {
    pub(super) fn open(path: &Path) -> Self {
        Self {
            file: open_private_append(path).ok(),
        }
    }

    pub(super) fn line(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let _ = f.write_all(format!("{} {text}\n", crate::status::now_rfc3339()).as_bytes());
        }
    }
}

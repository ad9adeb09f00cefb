//! `executioner logs RUN JOB` for a job whose log file is on another host: the output its worker
//! shipped to the shared database, printed in order, and with `--follow` read again every
//! [`POLL_EVERY`] until the job (or its run) has ended. Which chunks exist and how they are fenced
//! is the store's (`store/workers.rs`); finding the local log file first is `history.rs`'s.

use std::io::Write;
use std::time::Duration;

use crate::store::workers::ChunkCursor;
use crate::store::{JobRow, RunRow, Store};

use super::CliError;

/// How often `--follow` asks the database for new chunks.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Prints job `job`'s shipped output (all of it, or followed until the job ends). A job that
/// shipped nothing and will not start is the same error as a job without a log file.
pub async fn print_job_log(
    store: &Store,
    run: &RunRow,
    job: &JobRow,
    follow: bool,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let mut cursor: Option<ChunkCursor> = None;
    let mut run_phase = run.phase;
    let mut job = job.clone();
    loop {
        // The phases are read before the chunks: a job seen ended has shipped everything by
        // then (its worker ships the last chunk before it settles the attempt).
        let ended = run_phase.is_terminal() || job.phase.is_terminal();
        loop {
            let chunks = store.log_chunks(run.id, &job.job_id, cursor).await?;
            let Some(last) = chunks.last() else {
                break;
            };
            cursor = Some(last.cursor());
            for chunk in &chunks {
                if out.write_all(&chunk.data).is_err() {
                    // The reader went away (`logs ... | head`): nothing more to do.
                    return Ok(());
                }
            }
            let _ = out.flush();
        }
        if cursor.is_none() && (!follow || ended) {
            let error = if follow && job.phase == crate::status::JobPhase::Pending {
                format!(
                    "run {} ended before job {} started: it has no log",
                    run.id, job.job_id
                )
            } else {
                no_log(run, &job)
            };
            return Err(CliError::usage(error));
        }
        if !follow || ended {
            return Ok(());
        }
        tokio::time::sleep(POLL_EVERY).await;
        if let Some(now) = store.run(run.id).await? {
            run_phase = now.phase;
        }
        if let Some(now) = store.job(run.id, &job.job_id).await? {
            job = now;
        }
    }
}

/// Today's message for a job with no log: its phase and reason.
fn no_log(run: &RunRow, job: &JobRow) -> String {
    let reason = job.reason.map_or(String::new(), |r| format!(" ({r})"));
    format!(
        "job {} of run {} was {}{reason}: it has no log",
        job.job_id, run.id, job.phase
    )
}

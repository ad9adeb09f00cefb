//! Runs one pipeline run to completion: the scheduler's decisions become attempts (pre-checks,
//! command, post-checks), every state change is recorded in the store before it is acted on, and
//! progress is reported as [`RunEvent`]s for whoever displays it.
//!
//! One loop per run owns all the run's state and has one `select!`: attempt completions (a
//! `JoinSet`), attempts' pids, retry timers, a free worker, the run deadline and cancellation.
//! Each turn of the loop gathers what happened, decides (ends, retries, skips, the next attempts)
//! and records all of it in one transaction (a `Turn` over a store [`Batch`](crate::store::Batch))
//! before it reports anything or launches the new attempts. So an attempt's row is committed
//! before its process is spawned, and a job's end is committed with the start of the dependents it
//! releases. Attempts are tasks that own their child process and report its pid back to the loop,
//! which records it with its next commit. See docs/engine.md.
//!
//! The files, by mechanism: `run.rs` (the loop and its per-turn commit), `attempt.rs` (one
//! attempt: pre-checks, command, post-checks), `logs.rs` (the markers in job logs, `run.log`);
//! this file holds the public API. Where logs live is [`crate::state_dir`]'s.

mod attempt;
pub mod checks;
pub mod launch;
mod logs;
mod mask;
pub mod plan;
mod prefetch;
pub mod remote;
pub mod resume;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::scheduler::Start;
use crate::status::{JobPhase, JobReason, RunPhase, RunReason};
use crate::store::{AttemptId, RunId, Store, StoreError};

pub use plan::{Plan, PlanError};
pub use run::execute;

/// The variable that marks every process of an attempt (see [`attempt_token`]).
pub const ATTEMPT_TOKEN_VAR: &str = "EXECUTIONER_ATTEMPT_TOKEN";

/// A token unique to one attempt of one state database: `<hash of the database path>:<attempt id>`.
pub fn attempt_token(store: &Store, attempt: AttemptId) -> String {
    format!("{}:{attempt}", store.identity())
}

/// A job lost this many times fails (`LostTooOften`) instead of running again.
pub const MAX_LOST: i64 = 3;

/// What the engine shares with other runs and needs from its caller.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub state_dir: PathBuf,
    /// Global worker limit, shared by every run of the process.
    pub workers: Arc<Semaphore>,
    /// Grace period between SIGTERM and SIGKILL.
    pub shutdown_grace: Duration,
    pub plugin_dirs: Vec<PathBuf>,
    /// With a shared (PostgreSQL) store and workers: the attempts are queued for workers and
    /// their results come back through this; `None` runs them in this process.
    pub queue: Option<remote::Dispatch>,
}

/// One run (or resume round) to execute.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub run_id: RunId,
    pub round: i64,
    /// How each job enters this round (run, skip, keep an earlier result).
    pub starts: Vec<Start>,
    /// Attempts already made per job in earlier rounds (attempt numbers continue after them).
    pub previous_attempts: Vec<i64>,
    /// Times each job was lost so far.
    pub lost: Vec<i64>,
    /// Attempts an earlier leader queued that workers may still run: waited for, not started
    /// again (only with [`EngineOptions::queue`]).
    pub adopt: Vec<Adopted>,
}

/// A queued attempt of an earlier leader that a continued run waits for.
#[derive(Debug, Clone, Copy)]
pub struct Adopted {
    pub job: usize,
    pub attempt: AttemptId,
    pub number: i64,
}

/// Progress, in the past tense, for display.
#[derive(Debug, Clone)]
pub enum RunEvent {
    JobSkipped {
        job: usize,
        reason: JobReason,
    },
    AttemptStarted {
        job: usize,
        attempt: i64,
    },
    JobWaiting {
        job: usize,
    },
    /// A waiting job's sensor passed: its attempt goes on (Running again).
    SensorPassed {
        job: usize,
    },
    /// A queued job no live worker can take (`waiting`: Pending, reason `NoWorker`), or one a
    /// worker took since (Running again).
    NoWorker {
        job: usize,
        waiting: bool,
    },
    AttemptFailedWillRetry {
        job: usize,
        attempt: i64,
        reason: JobReason,
        delay: Duration,
    },
    JobFinished {
        job: usize,
        phase: JobPhase,
        reason: JobReason,
        exit_code: Option<i32>,
    },
}

/// How a run can be stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// A user's cancellation (`run` interrupted, a deletion, a replacement): running jobs are
    /// stopped and recorded Cancelled, the others skipped, and the run ends Cancelled.
    pub cancel: CancellationToken,
    /// The controller is stopping (a restart, an upgrade): running jobs are stopped and recorded
    /// Interrupted (`ControllerStopped`), nothing else changes, and the run stays Running for the
    /// next controller to continue.
    pub interrupt: CancellationToken,
    /// Skip the grace period of the stops above: kill at once.
    pub kill_now: CancellationToken,
}

/// The end of a run, or of this process's part in it.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: RunId,
    /// The run's verdict; `Running` when it was interrupted (reason `ControllerStopped`).
    pub phase: RunPhase,
    pub reason: RunReason,
}

/// Why the engine stopped without finishing the run (the store failed: a critical error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("recording run {run}")]
    Store {
        run: RunId,
        #[source]
        source: StoreError,
    },
    #[error("cannot create the log folder {}", path.display())]
    Logs {
        path: PathBuf,
        source: std::io::Error,
    },
}

//! Notifications about finished runs: what a run's pinned manifest asks for (`notify` of the
//! pipeline and of each job), queued in the store's outbox, then delivered by email (lettre, SMTP)
//! or by running a command with the run summary as JSON on its stdin.
//!
//! It owns the messages (subject, body, attachments, summary JSON) and their delivery policy
//! (timeouts, retries with backoff, when to give up). It does not decide when a run is over (the
//! engine commits that first) nor when delivery runs (its callers: `executioner run` after the
//! run, the controller on its loop).
//!
//! Why an outbox: queuing is a local transaction made right after the run's terminal state is
//! committed, and sending is a separate step that may fail, be retried, or be cut short by a
//! crash. So an SMTP outage never delays or fails a run, and a crash between the run's commit and
//! the send still sends once after a restart ([`enqueue_missed`] covers a crash before queuing,
//! the outbox a crash after it). A message is marked sent right after the server accepts it; only
//! a crash in between those two steps can send it twice.
//!
//! `on` semantics: `success` fires when the run (or, for a job's `notify`, the job) succeeded,
//! `failure` when it failed (a cancelled run counts as failed; a job fires only when it ended
//! Succeeded or Failed), `always` on both. Each email recipient gets a message of its own.
//!
//! Email delivery reads `smtp` from the configuration: `tls: none` is plain SMTP, `starttls`
//! requires STARTTLS, `tls` is implicit TLS; with `username`, the password is read from the
//! environment variable named by `password_env` at send time (never from a manifest or the store).
//! Every connection and command is bounded by `smtp.timeout`, and so is each message as a whole.
//! Server certificates are checked against the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR`
//! replace them, as for OpenSSL) plus the PEM file named by `EXECUTIONER_CA_FILE` (or the older
//! `EXECUTIONER_SMTP_CA_FILE`), if set, for a private CA (see `tls`).

mod command;
mod email;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::Config;
use crate::spec::{Notify, NotifyOn, Pinned};
use crate::status::{JobPhase, RunPhase, format_time};
use crate::store::outbox::{NewOutboxEntry, OutboxChannel, OutboxEntry};
use crate::store::{JobRow, RunId, RunRow, Store, StoreError};

pub use email::{AttachmentPayload, EmailPayload};

pub use crate::tls::CA_FILE_ENV;

/// At most this much of the end of each failed job's log is attached.
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// At most this many failed jobs' logs are attached to one email.
pub const MAX_ATTACHMENTS: usize = 3;

/// A message is given up after this many failed sends (about 6 hours with [`next_delay`]).
pub const MAX_ATTEMPTS: i64 = 12;

/// How long a notification command may run before it is stopped.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages taken per [`deliver_due`] call; the rest wait for the next call.
const BATCH: i64 = 100;

/// How long a claimed message is kept from other senders beyond its own time limit, so a sender
/// that died mid-send hands it back.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification outbox")]
    Store {
        #[source]
        source: StoreError,
    },
    #[error("run {run} not found")]
    RunNotFound { run: RunId },
    #[error("run {run} is {phase:?}, not finished")]
    RunNotFinished { run: RunId, phase: RunPhase },
    #[error("run {run}: pinned spec unreadable")]
    PinnedSpec {
        run: RunId,
        #[source]
        source: serde_json::Error,
    },
    #[error("run {run}: encoding a notification")]
    Encode {
        run: RunId,
        #[source]
        source: serde_json::Error,
    },
}

impl From<StoreError> for NotifyError {
    fn from(source: StoreError) -> Self {
        NotifyError::Store { source }
    }
}

/// The run summary: the stdin of a `command` notifier, and what emails are written from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub pipeline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub run_id: RunId,
    /// 1 for the first round, +1 per resume.
    pub round: i64,
    /// Succeeded, Failed or Cancelled.
    pub phase: String,
    pub reason: Option<String>,
    /// The job a job-level `notify` is about; `None` for the pipeline's.
    pub job: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub counts: Counts,
    pub jobs: Vec<JobSummary>,
    /// The run's parameters (`spec.params`, as given or defaulted).
    #[serde(default, skip_serializing_if = "indexmap::IndexMap::is_empty")]
    pub params: indexmap::IndexMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    /// Pending, running or lost (none once a run has ended normally).
    pub other: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: String,
    pub phase: String,
    pub reason: Option<String>,
    pub attempts: i64,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The job's log file.
    pub log: PathBuf,
}

/// What a `command` outbox entry holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandPayload {
    pub command: Vec<String>,
    pub summary: RunSummary,
}

/// Queues the notifications a finished run asks for (pipeline-level and job-level `notify`), in the
/// store, idempotently (safe to call twice for the same run). Called right after the run's terminal
/// state is committed. Does no network I/O.
pub async fn enqueue_for_run(
    store: &Store,
    run_id: RunId,
    state_dir: &Path,
) -> Result<usize, NotifyError> {
    let run = store
        .run(run_id)
        .await?
        .ok_or(NotifyError::RunNotFound { run: run_id })?;
    enqueue_run(store, &run, state_dir).await
}

/// Queues the notifications of every run whose last round ended but was never queued (the
/// executioner died between the run's commit and [`enqueue_for_run`]). Call it at start-up,
/// before [`deliver_due`]. Returns how many messages were queued.
pub async fn enqueue_missed(store: &Store, state_dir: &Path) -> Result<usize, NotifyError> {
    let mut queued = 0;
    for run in store.runs_not_queued().await? {
        queued += match enqueue_run(store, &run, state_dir).await {
            // A run whose pinned spec cannot be read asks for nothing we can know; mark it
            // queued so it is not looked at again at every start.
            Err(NotifyError::PinnedSpec { .. }) => {
                store.enqueue_notifications(run.id, run.rounds, &[]).await?
            }
            other => other?,
        };
    }
    Ok(queued)
}

async fn enqueue_run(store: &Store, run: &RunRow, state_dir: &Path) -> Result<usize, NotifyError> {
    if !run.phase.is_terminal() {
        return Err(NotifyError::RunNotFinished {
            run: run.id,
            phase: run.phase,
        });
    }
    // Most runs ask for nothing: skip reading a (possibly 10,000-job) spec and its jobs then.
    if !run.spec_json.contains("\"notify\"") {
        return Ok(store.enqueue_notifications(run.id, run.rounds, &[]).await?);
    }
    let pinned = Pinned::from_json(&run.spec_json).map_err(|source| NotifyError::PinnedSpec {
        run: run.id,
        source,
    })?;
    let jobs = store.jobs(run.id).await?;
    let messages =
        messages_for_run(run, &pinned, &jobs, state_dir).map_err(|source| NotifyError::Encode {
            run: run.id,
            source,
        })?;
    let entries: Vec<NewOutboxEntry<'_>> = messages
        .iter()
        .map(|m| NewOutboxEntry {
            channel: m.channel,
            scope: &m.scope,
            target: &m.target,
            payload: &m.payload,
        })
        .collect();
    Ok(store
        .enqueue_notifications(run.id, run.rounds, &entries)
        .await?)
}

/// One message to queue, before it is handed to the store.
#[derive(Debug, Clone, PartialEq)]
struct Queued {
    channel: OutboxChannel,
    scope: String,
    target: String,
    payload: String,
}

/// Every message a finished run asks for: the pipeline's `notify`, then each job's in declaration
/// order.
fn messages_for_run(
    run: &RunRow,
    pinned: &Pinned,
    jobs: &[JobRow],
    state_dir: &Path,
) -> Result<Vec<Queued>, serde_json::Error> {
    let spec = &pinned.manifest.spec;
    let mut out = Vec::new();
    let succeeded = match run.phase {
        RunPhase::Succeeded => Some(true),
        RunPhase::Failed | RunPhase::Cancelled => Some(false),
        RunPhase::Pending | RunPhase::Running => None,
    };
    if let (Some(notify), Some(succeeded)) = (&spec.notify, succeeded) {
        let mut summary = summarize(run, spec.description.as_deref(), jobs, None, state_dir);
        summary.params = pinned.params.clone();
        push_messages(&mut out, notify, succeeded, "", &summary, jobs)?;
    }
    for job in &spec.jobs {
        let Some(notify) = &job.notify else { continue };
        let Some(row) = jobs.iter().find(|r| r.job_id == job.id.as_str()) else {
            continue;
        };
        let succeeded = match row.phase {
            JobPhase::Succeeded => true,
            JobPhase::Failed => false,
            JobPhase::Pending
            | JobPhase::Waiting
            | JobPhase::Running
            | JobPhase::Skipped
            | JobPhase::Cancelled
            | JobPhase::Lost
            | JobPhase::Interrupted => continue,
        };
        let mut summary = summarize(
            run,
            spec.description.as_deref(),
            jobs,
            Some(&row.job_id),
            state_dir,
        );
        summary.params = pinned.params.clone();
        let focus = std::slice::from_ref(row);
        push_messages(&mut out, notify, succeeded, &row.job_id, &summary, focus)?;
    }
    Ok(out)
}

/// The messages of one `notify` block, if its `on` matches. `failed_from` are the jobs whose
/// failed logs may be attached.
fn push_messages(
    out: &mut Vec<Queued>,
    notify: &Notify,
    succeeded: bool,
    scope: &str,
    summary: &RunSummary,
    failed_from: &[JobRow],
) -> Result<(), serde_json::Error> {
    if let Some(email) = &notify.email
        && fires(&email.on, succeeded)
    {
        let attachments = email::log_attachments(summary, failed_from);
        let subject = email::subject(summary);
        let body = email::body(summary, &attachments);
        for to in &email.to {
            let payload = EmailPayload {
                to: to.trim().to_owned(),
                subject: subject.clone(),
                body: body.clone(),
                attachments: attachments.clone(),
            };
            out.push(Queued {
                channel: OutboxChannel::Email,
                scope: scope.to_owned(),
                target: payload.to.clone(),
                payload: serde_json::to_string(&payload)?,
            });
        }
    }
    if let Some(command) = &notify.command
        && fires(&command.on, succeeded)
    {
        let payload = CommandPayload {
            command: command.command.clone(),
            summary: summary.clone(),
        };
        out.push(Queued {
            channel: OutboxChannel::Command,
            scope: scope.to_owned(),
            target: serde_json::to_string(&command.command)?,
            payload: serde_json::to_string(&payload)?,
        });
    }
    Ok(())
}

/// Whether a `notify` with `on` fires for this outcome.
fn fires(on: &[NotifyOn], succeeded: bool) -> bool {
    on.iter().any(|on| match on {
        NotifyOn::Always => true,
        NotifyOn::Success => succeeded,
        NotifyOn::Failure => !succeeded,
    })
}

fn summarize(
    run: &RunRow,
    description: Option<&str>,
    jobs: &[JobRow],
    job: Option<&str>,
    state_dir: &Path,
) -> RunSummary {
    let mut counts = Counts {
        total: jobs.len(),
        ..Counts::default()
    };
    for row in jobs {
        match row.phase {
            JobPhase::Succeeded => counts.succeeded += 1,
            JobPhase::Failed => counts.failed += 1,
            JobPhase::Skipped => counts.skipped += 1,
            JobPhase::Cancelled => counts.cancelled += 1,
            JobPhase::Pending
            | JobPhase::Waiting
            | JobPhase::Running
            | JobPhase::Lost
            | JobPhase::Interrupted => {
                counts.other += 1;
            }
        }
    }
    let duration_seconds = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => Some((end - start).as_seconds_f64().max(0.0)),
        _ => None,
    };
    RunSummary {
        pipeline: run.pipeline.to_string(),
        description: description.map(str::to_owned),
        run_id: run.id,
        round: run.rounds,
        phase: run.phase.as_str().to_owned(),
        reason: run.reason.map(|r| r.as_str().to_owned()),
        job: job.map(str::to_owned),
        started_at: run.started_at.map(format_time),
        finished_at: run.finished_at.map(format_time),
        duration_seconds,
        counts,
        params: indexmap::IndexMap::new(),
        jobs: jobs
            .iter()
            .map(|row| JobSummary {
                id: row.job_id.to_string(),
                phase: row.phase.as_str().to_owned(),
                reason: row.reason.map(|r| r.as_str().to_owned()),
                attempts: row.attempts,
                exit_code: row.exit_code,
                message: row.message.clone(),
                started_at: row.started_at.map(format_time),
                finished_at: row.finished_at.map(format_time),
                log: crate::state_dir::job_log_path(state_dir, &run.pipeline, run.id, &row.job_id),
            })
            .collect(),
    }
}

/// How to deliver, beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct DeliverOptions {
    /// A PEM file of extra CA certificates trusted for SMTP over TLS.
    pub extra_ca_file: Option<PathBuf>,
}

impl DeliverOptions {
    /// Reads [`CA_FILE_ENV`] (or its older name).
    pub fn from_env() -> Self {
        Self {
            extra_ca_file: crate::tls::extra_ca_file(),
        }
    }
}

/// Sends what is due in the outbox (each entry at most once successfully; failures are retried with
/// exponential backoff: next_attempt_at), bounded by the SMTP timeout per message. Never panics.
/// Returns (sent, failed) counts.
pub async fn deliver_due(store: &Store, config: &Config) -> Result<(usize, usize), NotifyError> {
    deliver_due_with(store, config, &DeliverOptions::from_env()).await
}

/// [`deliver_due`] with explicit options instead of the environment's.
pub async fn deliver_due_with(
    store: &Store,
    config: &Config,
    options: &DeliverOptions,
) -> Result<(usize, usize), NotifyError> {
    let now = OffsetDateTime::now_utc();
    let due = store.due_outbox(now, BATCH).await?;
    let state_dir = store.state_dir().to_path_buf();
    let smtp_timeout = config.smtp.timeout.as_std();
    let mut mailer: Option<Result<email::Mailer, Failure>> = None;
    // Set once the server looks unreachable: the other emails wait for the next call rather than
    // each waiting out the timeout again.
    let mut server_down = false;
    let (mut sent, mut failed) = (0, 0);
    for entry in due {
        let limit = match entry.channel {
            OutboxChannel::Email if server_down => continue,
            OutboxChannel::Email => smtp_timeout,
            OutboxChannel::Command => COMMAND_TIMEOUT,
        };
        let now = OffsetDateTime::now_utc();
        let Some(attempt) = store
            .claim_outbox(entry.id, now, now + limit + LEASE_MARGIN)
            .await?
        else {
            continue;
        };
        let outcome = match entry.channel {
            OutboxChannel::Email => {
                let mailer =
                    mailer.get_or_insert_with(|| email::Mailer::new(&config.smtp, options));
                match mailer {
                    Ok(mailer) => mailer.send(&entry).await,
                    Err(failure) => Err(failure.clone()),
                }
            }
            OutboxChannel::Command => command::run(&entry, &state_dir).await,
        };
        match outcome {
            Ok(()) => {
                store.outbox_sent(entry.id).await?;
                sent += 1;
            }
            Err(failure) => {
                if failure.kind == FailureKind::Unreachable {
                    server_down = true;
                }
                let retry_at = match failure.kind {
                    FailureKind::Permanent => None,
                    FailureKind::Retry | FailureKind::Unreachable if attempt >= MAX_ATTEMPTS => {
                        None
                    }
                    FailureKind::Retry | FailureKind::Unreachable => {
                        Some(OffsetDateTime::now_utc() + next_delay(attempt))
                    }
                };
                store
                    .outbox_failed(entry.id, &failure.message, retry_at)
                    .await?;
                failed += 1;
            }
        }
    }
    Ok((sent, failed))
}

/// The wait before the next try after `attempts` failed sends: 30 s, doubling, at most an hour.
pub fn next_delay(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(30)
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(3600))
}

/// Why one message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    message: String,
    kind: FailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The message itself can never be sent (a malformed address or payload): give up now.
    Permanent,
    /// Try again later.
    Retry,
    /// The server could not be reached or talked to: try again later, and spare the other
    /// messages of this pass the same wait.
    Unreachable,
}

impl Failure {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Permanent,
        }
    }

    fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Retry,
        }
    }

    fn unreachable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: FailureKind::Unreachable,
        }
    }
}

/// An entry's payload as `T`, or a permanent failure (the store holds what we wrote, so this only
/// happens to a hand-edited or foreign database).
fn decode_payload<T: serde::de::DeserializeOwned>(entry: &OutboxEntry) -> Result<T, Failure> {
    serde_json::from_str(&entry.payload)
        .map_err(|e| Failure::permanent(format!("unreadable {} payload: {e}", entry.channel)))
}

#[cfg(test)]
mod tests;

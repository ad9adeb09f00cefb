//! Email: the message a run's summary becomes (subject, plain-text body, failed jobs' log tails as
//! attachments) and its delivery over SMTP with lettre.
//!
//! Headers are only ever set through lettre's typed builder: recipients are parsed into
//! `Mailbox`es (an address with a CR or LF does not parse) and text headers are encoded by lettre,
//! so nothing a manifest or a job writes can start a header line of its own.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::config::{SmtpConfig, SmtpTls};
use crate::status::JobPhase;
use crate::store::JobRow;
use crate::store::outbox::OutboxEntry;

use super::{DeliverOptions, Failure, LOG_TAIL_BYTES, MAX_ATTACHMENTS, RunSummary};

/// What an `email` outbox entry holds: one message to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailPayload {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub attachments: Vec<AttachmentPayload>,
}

/// A text attachment (a log tail), read when the message was queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentPayload {
    pub name: String,
    pub content: String,
}

/// `[PIPELINE] Run #ID SUCCEEDED|FAILED|CANCELLED`, or `[PIPELINE] Run #ID job JOB
/// SUCCEEDED|FAILED` for a job's own `notify`.
pub(super) fn subject(summary: &RunSummary) -> String {
    match &summary.job {
        None => format!(
            "[{}] Run #{} {}",
            summary.pipeline,
            summary.run_id,
            summary.phase.to_ascii_uppercase()
        ),
        Some(job) => {
            let phase = summary
                .jobs
                .iter()
                .find(|j| &j.id == job)
                .map_or("FINISHED".to_owned(), |j| j.phase.to_ascii_uppercase());
            format!(
                "[{}] Run #{} job {job} {phase}",
                summary.pipeline, summary.run_id
            )
        }
    }
}

/// The plain-text body: the outcome, the counts, then the failed jobs (reason, exit code, message,
/// log path), the skipped and cancelled jobs (reason) and the succeeded ones.
pub(super) fn body(summary: &RunSummary, attachments: &[AttachmentPayload]) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let outcome = match &summary.reason {
        Some(reason) => format!("{} ({reason})", summary.phase),
        None => summary.phase.clone(),
    };
    match &summary.job {
        None => line(format!(
            "Pipeline {}, run #{} (round {}): {outcome}",
            summary.pipeline, summary.run_id, summary.round
        )),
        Some(job) => {
            let phase = summary
                .jobs
                .iter()
                .find(|j| &j.id == job)
                .map_or("finished", |j| j.phase.as_str());
            line(format!(
                "Job {job} of pipeline {}, run #{} (round {}): {phase}; the run {outcome}",
                summary.pipeline, summary.run_id, summary.round
            ));
        }
    }
    if let Some(description) = &summary.description {
        line(format!("Description: {}", one_line(description)));
    }
    if !summary.params.is_empty() {
        let params: Vec<String> = summary
            .params
            .iter()
            .map(|(name, value)| format!("{name}={}", one_line(value)))
            .collect();
        line(format!("Params:   {}", params.join(", ")));
    }
    if let Some(started) = &summary.started_at {
        line(format!("Started:  {started}"));
    }
    if let Some(finished) = &summary.finished_at {
        line(format!("Finished: {finished}"));
    }
    if let Some(seconds) = summary.duration_seconds {
        line(format!("Duration: {seconds:.1}s"));
    }
    let c = &summary.counts;
    line(format!(
        "Jobs: {} total, {} succeeded, {} failed, {} skipped, {} cancelled",
        c.total, c.succeeded, c.failed, c.skipped, c.cancelled
    ));

    let in_phase = |phase: JobPhase| {
        summary
            .jobs
            .iter()
            .filter(move |j| j.phase == phase.as_str())
    };
    if in_phase(JobPhase::Failed).next().is_some() {
        line(String::new());
        line("Failed jobs:".into());
        for job in in_phase(JobPhase::Failed) {
            let reason = job.reason.as_deref().unwrap_or("unknown");
            let code = job
                .exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default();
            line(format!(
                "  - {}: {reason}{code}, {} attempt(s)",
                job.id, job.attempts
            ));
            if let Some(message) = job.message.as_deref().filter(|m| !m.is_empty()) {
                line(format!("    message: {}", one_line(message)));
            }
            line(format!("    log: {}", job.log.display()));
        }
    }
    for (phase, title) in [
        (JobPhase::Skipped, "Skipped jobs:"),
        (JobPhase::Cancelled, "Cancelled jobs:"),
    ] {
        if in_phase(phase).next().is_some() {
            line(String::new());
            line(title.into());
            for job in in_phase(phase) {
                line(format!(
                    "  - {}: {}",
                    job.id,
                    job.reason.as_deref().unwrap_or("unknown")
                ));
            }
        }
    }
    let succeeded: Vec<&str> = in_phase(JobPhase::Succeeded)
        .map(|j| j.id.as_str())
        .collect();
    if !succeeded.is_empty() {
        line(String::new());
        line(format!("Succeeded jobs: {}", succeeded.join(", ")));
    }
    if !attachments.is_empty() {
        line(String::new());
        let names: Vec<&str> = attachments.iter().map(|a| a.name.as_str()).collect();
        line(format!(
            "Attached: the last {} KiB of {}.",
            LOG_TAIL_BYTES / 1024,
            names.join(", ")
        ));
    }
    out
}

/// Multi-line text (a job's message) folded onto one line of the body.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The tails of the failed jobs' logs among `jobs`, at most [`MAX_ATTACHMENTS`]; a log that cannot
/// be read is left out (the body still names its path).
pub(super) fn log_attachments(summary: &RunSummary, jobs: &[JobRow]) -> Vec<AttachmentPayload> {
    jobs.iter()
        .filter(|row| row.phase == JobPhase::Failed)
        .filter_map(|row| {
            let job = summary.jobs.iter().find(|j| j.id == row.job_id)?;
            let content = log_tail(&job.log, LOG_TAIL_BYTES).ok()?;
            Some(AttachmentPayload {
                name: format!("{}.log", row.job_id),
                content,
            })
        })
        .take(MAX_ATTACHMENTS)
        .collect()
}

/// The last `limit` bytes of a file as text (invalid UTF-8 replaced), starting at a line boundary
/// when the file was cut, with a note of how much was left out.
fn log_tail(path: &Path, limit: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(limit);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    if start == 0 {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    let cut = bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let omitted = start + cut as u64;
    Ok(format!(
        "[... {omitted} earlier bytes omitted ...]\n{}",
        String::from_utf8_lossy(&bytes[cut..])
    ))
}

/// Builds the message; `from` is `smtp.from`.
pub(super) fn message(
    payload: &EmailPayload,
    from: &str,
    message_id: String,
) -> Result<Message, Failure> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| Failure::retry(format!("smtp.from {from:?} is not an address: {e}")))?;
    let to: Mailbox = payload.to.parse().map_err(|e| {
        Failure::permanent(format!("recipient {:?} is not an address: {e}", payload.to))
    })?;
    let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(payload.body.clone()));
    for attachment in &payload.attachments {
        parts = parts.singlepart(
            Attachment::new(attachment.name.clone())
                .body(attachment.content.clone(), ContentType::TEXT_PLAIN),
        );
    }
    Message::builder()
        .from(from)
        .to(to)
        .subject(payload.subject.clone())
        .message_id(Some(message_id))
        .user_agent(concat!("executioner/", env!("CARGO_PKG_VERSION")).to_owned())
        .multipart(parts)
        .map_err(|e| Failure::permanent(format!("cannot build the message: {e}")))
}

/// An SMTP client for one delivery pass.
pub(super) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: String,
    timeout: std::time::Duration,
    host_name: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// The transport `smtp` describes. Fails (to be retried) when the password variable is not
    /// set or the extra CA file cannot be read.
    pub(super) fn new(smtp: &SmtpConfig, options: &DeliverOptions) -> Result<Mailer, Failure> {
        let timeout = smtp.timeout.as_std();
        let host_name = host_name();
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
                .port(smtp.port)
                .timeout(Some(timeout))
                .hello_name(ClientId::Domain(host_name.clone()));
        builder = match smtp.tls {
            SmtpTls::None => builder,
            SmtpTls::Starttls => builder.tls(Tls::Required(tls_parameters(smtp, options)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls_parameters(smtp, options)?)),
        };
        if let Some(username) = &smtp.username {
            let Some(variable) = smtp.password_env.as_deref().filter(|v| !v.is_empty()) else {
                return Err(Failure::retry(
                    "smtp.username is set but smtp.password_env is not",
                ));
            };
            let password = std::env::var(variable).map_err(|_| {
                Failure::retry(format!(
                    "the SMTP password variable {variable} is not set in the environment"
                ))
            })?;
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Mailer {
            transport: builder.build(),
            from: smtp.from.clone(),
            timeout,
            host_name,
        })
    }

    /// Sends one outbox entry, within the timeout as a whole.
    pub(super) async fn send(&self, entry: &OutboxEntry) -> Result<(), Failure> {
        let payload: EmailPayload = super::decode_payload(entry)?;
        let message_id = format!(
            "<executioner.run-{}.round-{}.{}@{}>",
            entry.run_id, entry.round, entry.id, self.host_name
        );
        let message = message(&payload, &self.from, message_id)?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(classify(&err)),
            Err(_) => Err(Failure::unreachable(format!(
                "no answer from the SMTP server within {:?}",
                self.timeout
            ))),
        }
    }
}

/// An SMTP reply is about this message or this session (try again later); anything else (no
/// connection, TLS, a timeout) means the server cannot be talked to now.
fn classify(err: &lettre::transport::smtp::Error) -> Failure {
    let message = format!("SMTP: {}", error_chain(err));
    if err.is_permanent() || err.is_transient() {
        Failure::retry(message)
    } else {
        Failure::unreachable(message)
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn tls_parameters(smtp: &SmtpConfig, options: &DeliverOptions) -> Result<TlsParameters, Failure> {
    let mut builder = TlsParameters::builder(smtp.host.clone());
    if let Some(path) = &options.extra_ca_file {
        for der in crate::tls::read_ca_file(path).map_err(Failure::retry)? {
            let certificate = Certificate::from_der(der.to_vec())
                .map_err(|e| Failure::retry(format!("CA file {}: {e}", path.display())))?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build_rustls()
        .map_err(|e| Failure::retry(format!("TLS setup: {e}")))
}

/// This machine's name for EHLO and Message-IDs, or `localhost` when it is not a plain DNS name.
fn host_name() -> String {
    let name = crate::process::hostname();
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plain { name } else { "localhost".into() }
}

//! Notification tests: which messages a finished run queues (recipients, subjects, log tails,
//! masking) and their delivery, with real files and a real state database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use time::OffsetDateTime;

use super::email::{self, AttachmentPayload, EmailPayload};
use super::*;
use crate::status::{JobReason, RunReason};

fn manifest(value: serde_json::Value) -> crate::spec::Manifest {
    serde_json::from_value(value).expect("manifest")
}

fn pinned(notify: serde_json::Value, job_notify: serde_json::Value) -> Pinned {
    let manifest = manifest(serde_json::json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "etl"},
        "spec": {
            "notify": notify,
            "jobs": [
                {"id": "extract", "command": "true"},
                {"id": "load", "command": "false", "notify": job_notify},
                {"id": "report", "command": "true", "dependencies": ["load"]},
            ]
        }
    }));
    Pinned::new(manifest, Path::new("/tmp"), IndexMap::new(), Vec::new())
}

fn run_row(phase: RunPhase) -> RunRow {
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    RunRow {
        id: RunId::from(7),
        pipeline: crate::spec::PipelineName::parse("etl").expect("name"),
        generation: 0,
        spec_json: String::new(),
        spec_hash: String::new(),
        phase,
        reason: Some(match phase {
            RunPhase::Succeeded => RunReason::AllSucceeded,
            RunPhase::Pending | RunPhase::Running | RunPhase::Failed | RunPhase::Cancelled => {
                RunReason::JobsFailed
            }
        }),
        rounds: 1,
        owner_pid: None,
        owner_host: None,
        owner_start_time: None,
        created_at: at,
        started_at: Some(at),
        finished_at: Some(at + time::Duration::seconds(12)),
    }
}

fn job_row(id: &str, phase: JobPhase, reason: JobReason) -> JobRow {
    JobRow {
        run_id: RunId::from(7),
        job_id: crate::spec::JobId::parse(id).expect("job id"),
        position: 0,
        phase,
        reason: Some(reason),
        attempts: 1,
        lost: 0,
        exit_code: (phase == JobPhase::Failed).then_some(3),
        started_at: None,
        finished_at: None,
        log_path: format!("{id}.log"),
        message: (phase == JobPhase::Failed).then(|| "exit code 3\nsecond line".into()),
    }
}

fn failed_jobs() -> Vec<JobRow> {
    vec![
        job_row("extract", JobPhase::Succeeded, JobReason::Completed),
        job_row("load", JobPhase::Failed, JobReason::ExitCode),
        job_row("report", JobPhase::Skipped, JobReason::UpstreamFailed),
    ]
}

fn state_with_log(job: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = crate::state_dir::job_log_path(dir.path(), "etl", RunId::from(7), job);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    dir
}

#[test]
fn on_matches_the_outcome() {
    assert!(fires(&[NotifyOn::Failure], false));
    assert!(!fires(&[NotifyOn::Failure], true));
    assert!(fires(&[NotifyOn::Success], true));
    assert!(!fires(&[NotifyOn::Success], false));
    assert!(fires(&[NotifyOn::Always], true));
    assert!(fires(&[NotifyOn::Always], false));
    assert!(fires(&[NotifyOn::Success, NotifyOn::Failure], false));
    assert!(!fires(&[], false));
}

#[test]
fn delays_double_from_30s_up_to_an_hour() {
    assert_eq!(next_delay(1), Duration::from_secs(30));
    assert_eq!(next_delay(2), Duration::from_secs(60));
    assert_eq!(next_delay(5), Duration::from_secs(480));
    assert_eq!(next_delay(8), Duration::from_secs(3600));
    assert_eq!(next_delay(1000), Duration::from_secs(3600));
    assert_eq!(next_delay(0), Duration::from_secs(30));
    let total: Duration = (1..MAX_ATTEMPTS).map(next_delay).sum();
    assert!(total > Duration::from_secs(4 * 3600) && total < Duration::from_secs(12 * 3600));
}

#[test]
fn a_failed_run_emails_each_recipient_with_the_failed_log_attached() {
    let state = state_with_log("load", "starting\nORA-00942 table missing\n");
    let pinned = pinned(
        serde_json::json!({"email": {"to": ["a@example.com", " b@example.com "], "on": ["failure"]}}),
        serde_json::json!(null),
    );
    let messages = messages_for_run(
        &run_row(RunPhase::Failed),
        &pinned,
        &failed_jobs(),
        state.path(),
    )
    .unwrap();
    assert_eq!(messages.len(), 2);
    let targets: Vec<&str> = messages.iter().map(|m| m.target.as_str()).collect();
    assert_eq!(targets, ["a@example.com", "b@example.com"]);
    let payload: EmailPayload = serde_json::from_str(&messages[0].payload).unwrap();
    assert_eq!(payload.subject, "[etl] Run #7 FAILED");
    assert!(
        payload
            .body
            .contains("  - load: ExitCode, exit code 3, 1 attempt(s)")
    );
    assert!(payload.body.contains("message: exit code 3 | second line"));
    assert!(payload.body.contains("logs/etl/7/load.log"));
    assert!(payload.body.contains("  - report: UpstreamFailed"));
    assert!(payload.body.contains("Succeeded jobs: extract"));
    assert!(payload.body.contains("Duration: 12.0s"));
    assert_eq!(payload.attachments.len(), 1);
    assert_eq!(payload.attachments[0].name, "load.log");
    assert!(payload.attachments[0].content.contains("ORA-00942"));
}

#[test]
fn a_succeeded_run_sends_only_what_asks_for_success() {
    let state = tempfile::tempdir().unwrap();
    let pinned = pinned(
        serde_json::json!({"email": {"to": ["a@example.com"]}, "command": {"command": ["notify-me"], "on": ["always"]}}),
        serde_json::json!(null),
    );
    let jobs = vec![job_row(
        "extract",
        JobPhase::Succeeded,
        JobReason::Completed,
    )];
    let messages =
        messages_for_run(&run_row(RunPhase::Succeeded), &pinned, &jobs, state.path()).unwrap();
    assert_eq!(messages.len(), 1, "email defaults to on: [failure]");
    assert_eq!(messages[0].channel, OutboxChannel::Command);
    assert_eq!(messages[0].target, r#"["notify-me"]"#);
    let payload: CommandPayload = serde_json::from_str(&messages[0].payload).unwrap();
    assert_eq!(payload.summary.phase, "Succeeded");
    assert_eq!(payload.summary.job, None);
}

#[test]
fn a_job_notify_fires_on_its_own_outcome() {
    let state = state_with_log("load", "boom\n");
    let pinned = pinned(
        serde_json::json!(null),
        serde_json::json!({"email": {"to": ["owner@example.com"], "on": ["failure"]}}),
    );
    let messages = messages_for_run(
        &run_row(RunPhase::Failed),
        &pinned,
        &failed_jobs(),
        state.path(),
    )
    .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].scope, "load");
    let payload: EmailPayload = serde_json::from_str(&messages[0].payload).unwrap();
    assert_eq!(payload.subject, "[etl] Run #7 job load FAILED");
    assert!(
        payload
            .body
            .starts_with("Job load of pipeline etl, run #7 (round 1): Failed")
    );
    assert_eq!(payload.attachments.len(), 1);

    // The same job succeeding does not fire a failure notify.
    let mut jobs = failed_jobs();
    jobs[1] = job_row("load", JobPhase::Succeeded, JobReason::Completed);
    let messages =
        messages_for_run(&run_row(RunPhase::Failed), &pinned, &jobs, state.path()).unwrap();
    assert!(messages.is_empty());
}

#[test]
fn at_most_three_logs_are_attached() {
    let state = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    let mut specs = Vec::new();
    for i in 0..5 {
        let id = format!("j{i}");
        let path = crate::state_dir::job_log_path(state.path(), "etl", RunId::from(7), &id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("log of {id}\n")).unwrap();
        jobs.push(job_row(&id, JobPhase::Failed, JobReason::ExitCode));
        specs.push(serde_json::json!({"id": id, "command": "false"}));
    }
    let manifest = manifest(serde_json::json!({
        "apiVersion": "executioner.dev/v1", "kind": "Pipeline", "metadata": {"name": "etl"},
        "spec": {"notify": {"email": {"to": ["a@example.com"]}}, "jobs": specs}
    }));
    let pinned = Pinned::new(manifest, Path::new("/tmp"), IndexMap::new(), Vec::new());
    let messages =
        messages_for_run(&run_row(RunPhase::Failed), &pinned, &jobs, state.path()).unwrap();
    let payload: EmailPayload = serde_json::from_str(&messages[0].payload).unwrap();
    let names: Vec<&str> = payload
        .attachments
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["j0.log", "j1.log", "j2.log"]);
    assert!(payload.body.contains("  - j4: ExitCode"));
}

#[test]
fn a_long_log_is_cut_to_its_tail_at_a_line_boundary() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("big.log");
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!("line {i}\n"));
    }
    std::fs::write(&path, &text).unwrap();
    let job = JobSummary {
        id: "big".into(),
        phase: "Failed".into(),
        reason: None,
        attempts: 1,
        exit_code: None,
        message: None,
        started_at: None,
        finished_at: None,
        log: path,
    };
    let summary = RunSummary {
        pipeline: "etl".into(),
        description: None,
        run_id: RunId::from(7),
        round: 1,
        phase: "Failed".into(),
        reason: None,
        job: None,
        started_at: None,
        finished_at: None,
        duration_seconds: None,
        counts: Counts::default(),
        jobs: vec![job],
        params: IndexMap::new(),
    };
    let rows = vec![job_row("big", JobPhase::Failed, JobReason::ExitCode)];
    let attachments = email::log_attachments(&summary, &rows);
    let tail = &attachments[0].content;
    assert!(tail.len() <= LOG_TAIL_BYTES as usize + 64);
    assert!(tail.starts_with("[... "));
    let first = tail.lines().nth(1).unwrap();
    assert!(first.starts_with("line "), "{first:?}");
    assert!(tail.ends_with("line 19999\n"));
}

fn payload(to: &str, subject: &str) -> EmailPayload {
    EmailPayload {
        to: to.into(),
        subject: subject.into(),
        body: "body\n".into(),
        attachments: vec![AttachmentPayload {
            name: "x\r\nBcc: name@example.com.log".into(),
            content: "tail\n".into(),
        }],
    }
}

/// The header section of a formatted message, one logical header per entry (folded lines
/// joined back).
fn headers(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            out.last_mut().unwrap().push_str(line);
        } else {
            out.push(line.to_owned());
        }
    }
    out
}

#[test]
fn no_crlf_reaches_a_header() {
    let evil = "[etl] Run #7 FAILED\r\nBcc: subject@example.com\nX-Injected: yes";
    let message = email::message(
        &payload("a@example.com", evil),
        "executioner@example.com",
        "<id@localhost>".into(),
    )
    .unwrap();
    let formatted = message.formatted();
    for header in headers(&formatted) {
        let name = header.split(':').next().unwrap().to_ascii_lowercase();
        assert!(
            !["bcc", "x-injected"].contains(&name.as_str()),
            "injected header {header:?}"
        );
    }
    // Every recipient of the envelope is the one intended.
    let to: Vec<String> = message
        .envelope()
        .to()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(to, ["a@example.com"]);
    // Nowhere in the whole message, attachment headers included, does an injected line start.
    let text = String::from_utf8_lossy(&formatted);
    for line in text.split(['\r', '\n']) {
        assert!(
            !line.starts_with("Bcc:") && !line.starts_with("X-Injected:"),
            "injected line {line:?} in\n{text}"
        );
    }
}

#[test]
fn a_recipient_with_crlf_is_refused_for_good() {
    let failure = email::message(
        &payload("a@example.com\r\nBcc: b@example.com", "s"),
        "executioner@example.com",
        "<id@localhost>".into(),
    )
    .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Permanent);
    let failure = email::message(
        &payload("not an address", "s"),
        "executioner@example.com",
        "<id@localhost>".into(),
    )
    .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Permanent);
    // A bad sender is the configuration's fault: it may be fixed, so it is retried.
    let failure = email::message(
        &payload("a@example.com", "s"),
        "bad\r\nfrom",
        "<id@localhost>".into(),
    )
    .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Retry);
}

#[test]
fn the_summary_carries_the_runs_params() {
    let mut params = IndexMap::new();
    params.insert("date".to_owned(), "2026-11-30".to_owned());
    let pinned = pinned(
        serde_json::json!({
            "email": {"to": ["ops@example.com"], "on": ["always"]},
            "command": {"command": ["true"], "on": ["always"]}
        }),
        serde_json::Value::Null,
    )
    .with_params(params);
    let state = tempfile::tempdir().unwrap();
    let out = messages_for_run(
        &run_row(RunPhase::Failed),
        &pinned,
        &failed_jobs(),
        state.path(),
    )
    .unwrap();
    let email: EmailPayload = serde_json::from_str(&out[0].payload).unwrap();
    assert!(
        email.body.contains("Params:   date=2026-11-30"),
        "{}",
        email.body
    );
    let command: CommandPayload = serde_json::from_str(&out[1].payload).unwrap();
    assert_eq!(command.summary.params["date"], "2026-11-30");
}

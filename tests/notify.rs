//! Notifications end to end: real runs executed by the engine, the outbox in a real state
//! database, and delivery to a real SMTP server on loopback (tests/smtp_server.py, aiosmtpd) in
//! plain text, with STARTTLS and with implicit TLS under a throwaway CA, with and without login.
//!
//! These tests drive the library (`enqueue_for_run`, `deliver_due`) rather than the binary, so
//! they do not depend on how `run` and the controller call it. They skip, saying so, only when
//! `aiosmtpd` is missing outside CI (`.ci/run` installs it; under `CI` a missing module fails).
//!
//! They run one at a time (a lock): they set process environment variables (the SMTP password
//! variable, the CA file), which must not change under another test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ca::throwaway_ca;
use executioner::config::{Config, SmtpConfig, SmtpTls};
use executioner::engine::launch::{self, PinnedPlan};
use executioner::engine::{self, EngineOptions};
use executioner::notify::{self, CA_FILE_ENV, CommandPayload, RunSummary};
use executioner::spec::Pinned;
use executioner::status::RunPhase;
use executioner::store::outbox::{OutboxChannel, OutboxState};
use executioner::store::{Durability, RunId, Store};
use indexmap::IndexMap;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc};

static SERIAL: Mutex<()> = Mutex::const_new(());

const PASSWORD_ENV: &str = "EXECUTIONER_TEST_NOTIFY_SMTP_PASSWORD";

/// Whether aiosmtpd can be imported; under CI its absence is a failure, not a skip.
fn have_aiosmtpd(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "aiosmtpd is not installed (python3 -m pip install aiosmtpd); CI must run {test}"
        );
        eprintln!(
            "SKIPPED {test}: python3 cannot import aiosmtpd (python3 -m pip install aiosmtpd)"
        );
    }
    ok
}

/// Sets a process environment variable. Only called with [`SERIAL`] held, so no other test of
/// this binary runs (or reads the environment) meanwhile.
#[allow(unsafe_code)]
fn set_env(key: &str, value: impl AsRef<std::ffi::OsStr>) {
    // SAFETY: every test of this file holds SERIAL for its whole duration, and the variables
    // set here are read only by the test holding it.
    unsafe { std::env::set_var(key, value) }
}

#[allow(unsafe_code)]
fn remove_env(key: &str) {
    // SAFETY: as in set_env.
    unsafe { std::env::remove_var(key) }
}

/// tests/smtp_server.py, stopped on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start(maildir: &Path, args: &[&str]) -> SmtpServer {
        std::fs::create_dir_all(maildir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(maildir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the SMTP server did not get ready");
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected SMTP server output {line:?}"));
        SmtpServer {
            child,
            port,
            maildir: maildir.to_path_buf(),
        }
    }

    /// The delivered messages, in delivery order. Each is complete: the server writes it before
    /// answering the DATA command, so before `deliver_due` can count it sent.
    fn messages(&self) -> Vec<Value> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.maildir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp_config(port: u16, tls: SmtpTls, username: Option<&str>, timeout: u64) -> Config {
    Config {
        smtp: SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls,
            username: username.map(str::to_owned),
            password_env: username.map(|_| PASSWORD_ENV.to_owned()),
            from: "executioner@example.com".into(),
            timeout: executioner::spec::Duration::from_secs(timeout),
        },
        ..Config::default()
    }
}

/// A pipeline whose `load` job fails (printing a marker to its log) and whose `report` is then
/// skipped, with the given pipeline-level and `load`-level `notify`.
fn failing_pipeline(notify: Value, load_notify: Value) -> Value {
    json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "nightly-etl"},
        "spec": {
            "notify": notify,
            "jobs": [
                {"id": "extract", "command": "echo extracted"},
                {"id": "load", "command": "echo boom-marker-42; exit 3",
                 "dependencies": ["extract"], "notify": load_notify},
                {"id": "report", "command": "echo never", "dependencies": ["load"]}
            ]
        }
    })
}

/// Runs `manifest` to its end with the engine and returns the run id; the run's terminal state
/// is committed when this returns.
async fn finished_run(store: &Store, state_dir: &Path, dir: &Path, manifest: Value) -> RunId {
    let manifest = serde_json::from_value(manifest).expect("manifest");
    let pinned = Pinned::new(manifest, dir, IndexMap::new(), Vec::new());
    let plan = pinned.plan().expect("plan");
    let request = launch::new_run(store, &plan, &pinned, 0, &launch::this_process())
        .await
        .expect("new run");
    let options = EngineOptions {
        state_dir: state_dir.to_path_buf(),
        workers: Arc::new(Semaphore::new(2)),
        shutdown_grace: Duration::from_secs(1),
        plugin_dirs: Vec::new(),
        queue: None,
    };
    let (events, _ignored) = mpsc::unbounded_channel();
    let report = engine::execute(
        store,
        Arc::new(plan),
        request,
        &options,
        events,
        engine::Stop::default(),
    )
    .await
    .expect("execute");
    assert!(report.phase.is_terminal());
    report.run_id
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    (dir, state)
}

/// The acceptance case: a failing run sends exactly one email to each recipient, with the failed
/// job's reason and log tail; queuing and delivering again sends nothing more.
#[tokio::test]
async fn a_failing_run_emails_each_recipient_once_with_the_reason_and_log_tail() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("a_failing_run_emails_each_recipient_once") {
        return;
    }
    let (dir, state) = workspace();
    let server = SmtpServer::start(&dir.path().join("mail"), &[]);
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let manifest = failing_pipeline(
        json!({"email": {"to": ["ops@example.com", "dba@example.com"], "on": ["failure"]}}),
        Value::Null,
    );
    let run = finished_run(&store, &state, dir.path(), manifest).await;
    assert_eq!(
        store.run(run).await.unwrap().unwrap().phase,
        RunPhase::Failed
    );

    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        2
    );
    let config = smtp_config(server.port, SmtpTls::None, None, 5);
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (2, 0));

    let messages = server.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let mut recipients: Vec<&str> = messages
        .iter()
        .map(|m| m["rcptTos"][0].as_str().unwrap())
        .collect();
    recipients.sort_unstable();
    assert_eq!(recipients, ["dba@example.com", "ops@example.com"]);
    for message in &messages {
        assert_eq!(message["rcptTos"].as_array().unwrap().len(), 1);
        assert_eq!(message["mailFrom"], "executioner@example.com");
        assert_eq!(
            message["subject"],
            format!("[nightly-etl] Run #{run} FAILED")
        );
        let body = message["body"].as_str().unwrap();
        assert!(body.contains("Failed jobs:"), "{body}");
        assert!(body.contains("  - load: ExitCode, exit code 3"), "{body}");
        let log = executioner::state_dir::job_log_path(&state, "nightly-etl", run, "load");
        assert!(body.contains(&log.display().to_string()), "{body}");
        assert!(body.contains("  - report: UpstreamFailed"), "{body}");
        let attachments = message["attachments"].as_array().unwrap();
        assert_eq!(attachments.len(), 1, "{attachments:?}");
        assert_eq!(attachments[0]["filename"], "load.log");
        assert!(
            attachments[0]["content"]
                .as_str()
                .unwrap()
                .contains("boom-marker-42")
        );
    }

    // Idempotent: queuing the same run again and delivering again sends nothing.
    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        0
    );
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 0));
    assert_eq!(server.messages().len(), 2);
    let outbox = store.outbox(run).await.unwrap();
    assert_eq!(outbox.len(), 2);
    assert!(
        outbox
            .iter()
            .all(|e| matches!(e.state, OutboxState::Sent { .. }) && e.attempts == 1)
    );
}

/// STARTTLS with login, and implicit TLS, both against a throwaway CA trusted through
/// `EXECUTIONER_CA_FILE`.
/// A failed job that printed a secret: the delivered mail (body and attached log tail) shows it
/// masked, never the value.
#[tokio::test]
async fn a_failure_mail_never_carries_a_secret_the_job_printed() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("a_failure_mail_never_carries_a_secret_the_job_printed") {
        return;
    }
    let (dir, state) = workspace();
    let server = SmtpServer::start(&dir.path().join("mail"), &[]);
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let secret = "s3cr3t-value-9913";
    let secret_file = dir.path().join("token");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let manifest = json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "leaky"},
        "spec": {
            "notify": {"email": {"to": ["ops@example.com"], "on": ["failure"]}},
            "jobs": [{
                "id": "load",
                "command": "echo \"token=$API_TOKEN\"; echo \"$API_TOKEN\" >&2; exit 3",
                "env": {"API_TOKEN": {"fromFile": secret_file.display().to_string()}}
            }]
        }
    });
    let run = finished_run(&store, &state, dir.path(), manifest).await;
    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        1
    );
    let config = smtp_config(server.port, SmtpTls::None, None, 5);
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (1, 0));

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    // Everything the server received, headers, body and attachments, decoded.
    let delivered = messages[0].to_string();
    assert!(!delivered.contains(secret), "{delivered}");
    let attachment = messages[0]["attachments"][0]["content"].as_str().unwrap();
    assert!(attachment.contains("token=***"), "{attachment}");
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_login_deliver() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("starttls_and_implicit_tls_with_login_deliver") {
        return;
    }
    let (dir, state) = workspace();
    let (ca, cert, key) = throwaway_ca(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let starttls = SmtpServer::start(
        &dir.path().join("mail-starttls"),
        &["--starttls", cert, key, "--auth", "notifier", "s3cret"],
    );
    let implicit = SmtpServer::start(
        &dir.path().join("mail-tls"),
        &["--implicit-tls", cert, key, "--auth", "notifier", "s3cret"],
    );
    set_env(PASSWORD_ENV, "s3cret");
    set_env(CA_FILE_ENV, &ca);

    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let manifest = failing_pipeline(json!({"email": {"to": ["ops@example.com"]}}), Value::Null);
    for (server, tls) in [(&starttls, SmtpTls::Starttls), (&implicit, SmtpTls::Tls)] {
        let run = finished_run(&store, &state, dir.path(), manifest.clone()).await;
        assert_eq!(
            notify::enqueue_for_run(&store, run, &state).await.unwrap(),
            1
        );
        let config = smtp_config(server.port, tls, Some("notifier"), 5);
        let delivered = notify::deliver_due(&store, &config).await.unwrap();
        let outbox = store.outbox(run).await.unwrap();
        assert_eq!(delivered, (1, 0), "{tls:?}: {outbox:#?}");
        let messages = server.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0]["tls"], true);
        assert_eq!(messages[0]["authenticated"], true);
        assert_eq!(
            messages[0]["subject"],
            format!("[nightly-etl] Run #{run} FAILED")
        );
    }

    // Without the CA the server's certificate is refused: nothing is sent, the entry waits.
    remove_env(CA_FILE_ENV);
    let run = finished_run(&store, &state, dir.path(), manifest).await;
    notify::enqueue_for_run(&store, run, &state).await.unwrap();
    let config = smtp_config(starttls.port, SmtpTls::Starttls, Some("notifier"), 5);
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 1));
    assert_eq!(starttls.messages().len(), 1);
    remove_env(PASSWORD_ENV);
}

/// A wrong password fails the send at once, the entry waits for a retry with backoff, and the
/// run's result is unchanged; a server that never answers costs one timeout per pass.
#[tokio::test]
async fn a_failed_send_is_retried_later_and_never_touches_the_run() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("a_failed_send_is_retried_later_and_never_touches_the_run") {
        return;
    }
    let (dir, state) = workspace();
    let server = SmtpServer::start(&dir.path().join("mail"), &["--auth", "notifier", "right"]);
    set_env(PASSWORD_ENV, "wrong");
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let manifest = json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "ok-pipeline"},
        "spec": {
            "notify": {"email": {"to": ["ops@example.com"], "on": ["always"]}},
            "jobs": [{"id": "only", "command": "true"}]
        }
    });
    let run = finished_run(&store, &state, dir.path(), manifest.clone()).await;
    let before = store.run(run).await.unwrap().unwrap();
    assert_eq!(before.phase, RunPhase::Succeeded);
    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        1
    );

    let timeout = 3;
    let config = smtp_config(server.port, SmtpTls::None, Some("notifier"), timeout);
    let started = Instant::now();
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 1));
    assert!(started.elapsed() < Duration::from_secs(timeout + 2));
    assert!(server.messages().is_empty());
    assert_eq!(store.run(run).await.unwrap().unwrap(), before);
    let entry = &store.outbox(run).await.unwrap()[0];
    assert_eq!(entry.attempts, 1);
    match &entry.state {
        OutboxState::Pending {
            next_attempt_at,
            last_error,
        } => {
            let wait = *next_attempt_at - time::OffsetDateTime::now_utc();
            assert!(wait > time::Duration::seconds(20), "{wait}");
            assert!(
                last_error.as_deref().unwrap().contains("535"),
                "{last_error:?}"
            );
        }
        other => panic!("expected a pending entry, got {other:?}"),
    }
    // Not due yet: the next pass leaves it alone.
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 0));

    // A server that accepts connections and never answers: the pass ends after one timeout,
    // even with two messages due (the second waits for the next pass).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let manifest = json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "ok-pipeline"},
        "spec": {
            "notify": {"email": {"to": ["a@example.com", "b@example.com"], "on": ["always"]}},
            "jobs": [{"id": "only", "command": "true"}]
        }
    });
    let run = finished_run(&store, &state, dir.path(), manifest).await;
    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        2
    );
    let config = smtp_config(silent_port, SmtpTls::None, None, 1);
    let started = Instant::now();
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 1));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        store.run(run).await.unwrap().unwrap().phase,
        RunPhase::Succeeded
    );
    drop(silent);
    remove_env(PASSWORD_ENV);
}

/// A crash after the run's terminal commit: before the outbox was written (the run is queued
/// at restart by `enqueue_missed`), or after it but before the send (the outbox survives). Either
/// way exactly one message is sent after the restart.
#[tokio::test]
async fn a_restart_sends_what_a_crash_left_unsent_exactly_once() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("a_restart_sends_what_a_crash_left_unsent_exactly_once") {
        return;
    }
    let (dir, state) = workspace();
    let server = SmtpServer::start(&dir.path().join("mail"), &[]);
    let config = smtp_config(server.port, SmtpTls::None, None, 5);
    let manifest = failing_pipeline(json!({"email": {"to": ["ops@example.com"]}}), Value::Null);

    // Crashed after queuing, before sending.
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let queued = finished_run(&store, &state, dir.path(), manifest.clone()).await;
    assert_eq!(
        notify::enqueue_for_run(&store, queued, &state)
            .await
            .unwrap(),
        1
    );
    // Crashed between the run's terminal commit and queuing.
    let unqueued = finished_run(&store, &state, dir.path(), manifest).await;
    drop(store);

    // The restart.
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    assert_eq!(notify::enqueue_missed(&store, &state).await.unwrap(), 1);
    assert_eq!(notify::enqueue_missed(&store, &state).await.unwrap(), 0);
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (2, 0));
    let subjects: Vec<String> = server
        .messages()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        subjects,
        [
            format!("[nightly-etl] Run #{queued} FAILED"),
            format!("[nightly-etl] Run #{unqueued} FAILED")
        ]
    );

    // Another restart sends nothing again.
    store.close().await;
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    assert_eq!(notify::enqueue_missed(&store, &state).await.unwrap(), 0);
    assert_eq!(
        notify::enqueue_for_run(&store, queued, &state)
            .await
            .unwrap(),
        0
    );
    assert_eq!(notify::deliver_due(&store, &config).await.unwrap(), (0, 0));
    assert_eq!(server.messages().len(), 2);
}

/// The `command` notifier gets the run summary as JSON on stdin; a command that fails is
/// recorded with its output and retried later. No SMTP server is involved.
#[tokio::test]
async fn a_command_notifier_reads_the_run_summary_on_stdin() {
    let _serial = SERIAL.lock().await;
    let (dir, state) = workspace();
    let run_out = dir.path().join("run-summary.json");
    let job_out = dir.path().join("job-summary.json");
    let write_stdin = |path: &Path| {
        json!([
            "sh",
            "-c",
            "cat > \"$1\"",
            "notifier",
            path.to_str().unwrap()
        ])
    };
    let mut manifest = failing_pipeline(
        json!({"command": {"command": write_stdin(&run_out), "on": ["always"]}}),
        json!({"command": {"command": write_stdin(&job_out), "on": ["failure"]}}),
    );
    // A job-level notifier on the job that succeeded, which fails itself.
    manifest["spec"]["jobs"][0]["notify"] = json!({
        "command": {"command": ["sh", "-c", "echo no-route-to-pager >&2; exit 4"], "on": ["success"]}
    });
    let store = Store::open(&state, Durability::Normal).await.unwrap();
    let run = finished_run(&store, &state, dir.path(), manifest).await;
    assert_eq!(
        notify::enqueue_for_run(&store, run, &state).await.unwrap(),
        3
    );
    assert_eq!(
        notify::deliver_due(&store, &Config::default())
            .await
            .unwrap(),
        (2, 1)
    );

    let summary: RunSummary = serde_json::from_slice(&std::fs::read(&run_out).unwrap()).unwrap();
    assert_eq!(summary.pipeline, "nightly-etl");
    assert_eq!(summary.run_id, run);
    assert_eq!(summary.phase, "Failed");
    assert_eq!(summary.reason.as_deref(), Some("JobsFailed"));
    assert_eq!(summary.job, None);
    assert_eq!(summary.counts.total, 3);
    assert_eq!(
        (
            summary.counts.succeeded,
            summary.counts.failed,
            summary.counts.skipped
        ),
        (1, 1, 1)
    );
    let load = summary.jobs.iter().find(|j| j.id == "load").unwrap();
    assert_eq!(
        (load.phase.as_str(), load.reason.as_deref(), load.exit_code),
        ("Failed", Some("ExitCode"), Some(3))
    );
    assert_eq!(
        load.log,
        executioner::state_dir::job_log_path(&state, "nightly-etl", run, "load")
    );
    let report = summary.jobs.iter().find(|j| j.id == "report").unwrap();
    assert_eq!(report.reason.as_deref(), Some("UpstreamFailed"));
    // Field names as documented for notifier authors.
    let raw: Value = serde_json::from_slice(&std::fs::read(&run_out).unwrap()).unwrap();
    for key in [
        "pipeline",
        "runId",
        "round",
        "phase",
        "reason",
        "job",
        "startedAt",
        "finishedAt",
        "counts",
        "jobs",
    ] {
        assert!(raw.get(key).is_some(), "missing {key} in {raw}");
    }

    let job_summary: RunSummary =
        serde_json::from_slice(&std::fs::read(&job_out).unwrap()).unwrap();
    assert_eq!(job_summary.job.as_deref(), Some("load"));

    let outbox = store.outbox(run).await.unwrap();
    let failing = outbox
        .iter()
        .find(|e| e.scope == "extract")
        .expect("the extract notifier");
    assert_eq!(failing.channel, OutboxChannel::Command);
    match &failing.state {
        OutboxState::Pending { last_error, .. } => {
            let error = last_error.as_deref().unwrap();
            assert!(
                error.contains("exit code 4") && error.contains("no-route-to-pager"),
                "{error}"
            );
        }
        other => panic!("expected a pending entry, got {other:?}"),
    }
    let payload: CommandPayload = serde_json::from_str(&failing.payload).unwrap();
    assert_eq!(payload.summary.job.as_deref(), Some("extract"));
}

/// The binary killed (SIGKILL) after a run's terminal commit and before its notification was
/// queued or sent: the next controller sends it exactly once, and later ones never again.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn kill_9_between_the_terminal_commit_and_the_send_mails_once_after_restart() {
    let _serial = SERIAL.lock().await;
    if !have_aiosmtpd("kill_9_between_the_terminal_commit_and_the_send") {
        return;
    }
    let (_tmp, dir) = workspace();
    let server = SmtpServer::start(&dir.join("mail"), &[]);
    std::fs::write(
        dir.join("executioner.toml"),
        format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"\n",
            server.port
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("manifests/mailing.yaml"),
        "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {name: mailing}\nspec:\n  notify:\n    email: {to: [ops@example.com], on: [failure]}\n  jobs:\n    - {id: broken, command: \"echo boom; exit 3\"}\n",
    )
    .unwrap();
    let controller = |failpoint: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_executioner"));
        cmd.current_dir(&dir)
            .args([
                "--state-dir",
                "state",
                "controller",
                "--manifests",
                "manifests",
                "--once",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(point) = failpoint {
            cmd.env("EXECUTIONER_FAILPOINT", point);
        }
        cmd.status().unwrap()
    };
    let died = controller(Some("run-committed"));
    assert!(
        !died.success() && died.code().is_none(),
        "the controller should have been killed: {died:?}"
    );
    assert!(
        server.messages().is_empty(),
        "nothing can have been sent before the crash"
    );
    // The run's failure is committed; the restart finds the unsent notification.
    let _ = controller(None);
    let start = std::time::Instant::now();
    while server.messages().is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.messages().len(), 1);
    let _ = controller(None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.messages().len(), 1, "sent twice");
}

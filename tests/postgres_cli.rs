//! The commands on a PostgreSQL state database (issue 16: "`executioner run`, the controller and
//! every command work on both backends"): the real binary with `--database-url`, on a throwaway
//! cluster of this binary's own. A failed run, its resume and a mark-success, the history and the
//! audit trail; the controller reconciling a folder, `status` and `wait`; a controller's run going
//! on through a stop and start of the server; and what a user sees for a database that cannot be
//! reached. Every test holds `FAULTS`, so the one that stops the server cuts no other short.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Workspace, json, manifest, pg_cluster, run_with_timeout, text};

static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `executioner --state-dir STATE --database-url URL ARGS...` in `ws`.
fn exe(ws: &Workspace, url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["--database-url", url])
        .args(args)
        .env_remove("EXECUTIONER_STATE_DIR")
        .env_remove("EXECUTIONER_DATABASE__URL")
        .stdin(Stdio::null());
    run_with_timeout(cmd, Duration::from_secs(120))
}

#[tokio::test]
async fn run_resume_mark_success_and_history_on_postgres() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let ws = Workspace::new();
    // `flaky` fails until the marker exists; `last` needs it.
    let marker = ws.path().join("fixed");
    let jobs = format!(
        "    - {{id: first, command: \"echo one\"}}\n    - {{id: flaky, command: \"test -e {m}\", dependencies: [first]}}\n    - {{id: last, command: \"echo done\", dependencies: [flaky]}}\n    - {{id: other, command: \"exit 3\"}}\n",
        m = marker.display()
    );
    ws.write("p.yaml", &manifest("pg-cli", "", &jobs));

    let out = exe(&ws, &db.url, &["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = json(&exe(&ws, &db.url, &["runs", "show", "1", "-o", "json"]));
    let phase = |run: &serde_json::Value, id: &str| common::job_state(run, id).0;
    assert_eq!(show["phase"], "Failed", "{show}");
    assert_eq!(phase(&show, "first"), "Succeeded");
    assert_eq!(phase(&show, "flaky"), "Failed");
    assert_eq!(phase(&show, "last"), "Skipped");
    assert_eq!(phase(&show, "other"), "Failed");

    // Resume the failed jobs once the cause is fixed: the same run, a second round.
    std::fs::write(&marker, b"").unwrap();
    let out = exe(&ws, &db.url, &["resume", "1", "--failed-only"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "other still fails: {}",
        text(&out.stderr)
    );
    let show = json(&exe(&ws, &db.url, &["runs", "show", "1", "-o", "json"]));
    assert_eq!(show["rounds"], 2, "{show}");
    assert_eq!(phase(&show, "flaky"), "Succeeded");
    assert_eq!(phase(&show, "last"), "Succeeded");
    assert_eq!(phase(&show, "other"), "Failed");

    // Mark the last failure succeeded: the run's verdict follows its jobs.
    let out = exe(
        &ws,
        &db.url,
        &["mark-success", "1", "other", "--reason", "known issue"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = json(&exe(&ws, &db.url, &["runs", "show", "1", "-o", "json"]));
    assert_eq!(show["phase"], "Succeeded", "{show}");
    assert_eq!(show["reason"], "MarkedSucceeded", "{show}");

    // The history is in the database, not the state folder: another state folder sees it.
    let elsewhere = Workspace::new();
    let runs = json(&exe(&elsewhere, &db.url, &["runs", "-o", "json"]));
    let runs = runs.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["pipeline"], "pg-cli");
    assert!(
        !elsewhere.state_dir().join("executioner.db").exists(),
        "no SQLite file is made when the URL is set"
    );
}

#[tokio::test]
async fn the_controller_reconciles_and_status_and_wait_read_postgres() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let ws = Workspace::new();
    ws.write(
        "manifests/hello.yaml",
        &manifest(
            "pg-hello",
            "",
            "    - {id: a, command: \"echo hi\"}\n    - {id: b, command: \"true\", dependencies: [a]}\n",
        ),
    );
    let out = exe(
        &ws,
        &db.url,
        &["controller", "--manifests", "manifests", "--once"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let status = json(&exe(&ws, &db.url, &["status", "pg-hello", "-o", "json"]));
    assert_eq!(status["status"]["phase"], "Succeeded", "{status}");
    assert_eq!(status["status"]["observedGeneration"], 1, "{status}");
    let out = exe(&ws, &db.url, &["wait", "pg-hello", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = exe(&ws, &db.url, &["logs", "1", "a"]);
    assert!(text(&out.stdout).contains("hi"), "{}", text(&out.stdout));
}

/// The server stopped for a few seconds while a controller's run goes on: the run still ends
/// Succeeded with every job started and succeeded exactly once. The worker's writes and the
/// controller's pass wait and try again with backoff; a turn whose write found its connection
/// closed by the stop faults the run, and the controller continues it, adopting the attempt in
/// flight (still held by its worker's lease) instead of recording it Lost.
#[tokio::test]
async fn a_controllers_run_goes_on_through_a_stop_and_start_of_the_server() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let cluster = pg_cluster::cluster().expect("the cluster the database is on");
    let ws = Workspace::new();
    let jobs: String = (0..6)
        .map(|i| {
            let after = if i == 0 {
                String::new()
            } else {
                format!(", dependencies: [j{}]", i - 1)
            };
            format!("    - {{id: j{i}, command: \"sleep 0.5\"{after}}}\n")
        })
        .collect();
    ws.write("manifests/chain.yaml", &manifest("pg-outage", "", &jobs));
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args([
            "--database-url",
            &db.url,
            "controller",
            "--manifests",
            "manifests",
            "--once",
        ])
        .env_remove("EXECUTIONER_DATABASE__URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let controller = cmd.spawn().unwrap();
    // Mid-run: the first jobs have ended.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cluster.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start();
    let out = tokio::task::spawn_blocking(move || controller.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let show = json(&exe(&ws, &db.url, &["runs", "show", "1", "-o", "json"]));
    assert_eq!(show["phase"], "Succeeded", "{show}");
    for job in show["jobs"].as_array().expect("jobs") {
        assert_eq!(job["phase"], "Succeeded", "{show}");
        let attempts = job["attemptList"].as_array().expect("attempts");
        let succeeded = attempts
            .iter()
            .filter(|a| a["phase"] == "Succeeded")
            .count();
        assert_eq!(succeeded, 1, "each job succeeded once: {show}");
        // The stop (3 s) is shorter than the lease (15 s): the attempt in flight goes on on its
        // worker, and the controller, which pauses and continues the run, adopts it rather than
        // recording it Lost and starting it again.
        assert_eq!(
            attempts.len(),
            1,
            "no job started twice across the outage: {show}"
        );
    }
    assert_eq!(show["jobs"].as_array().map(Vec::len), Some(6), "{show}");
}

#[test]
fn an_unreachable_or_foreign_database_is_a_clear_usage_error() {
    let ws = Workspace::new();
    // Port 1 on loopback: nothing listens there.
    let out = exe(&ws, "postgres://ops:hunter2@127.0.0.1:1/exe", &["runs"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the state database postgres://ops@127.0.0.1:1/exe"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let out = exe(&ws, "mysql://ops@db/exe", &["runs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a postgres:// URL"),
        "{}",
        text(&out.stderr)
    );
}

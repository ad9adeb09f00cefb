//! Integration tests of one attempt's checks (engine/attempt.rs): the pre- and post-checks run
//! through one function, each verdict is logged under its stage, and a pre-check with `wait` is a
//! sensor that gives up with `CheckTimeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Workspace, job_state, json, manifest, text};

#[test]
fn check_verdicts_are_logged_under_their_stage() {
    let ws = Workspace::new();
    ws.write(
        "c.yaml",
        &manifest(
            "stages",
            "",
            "    - id: both\n      command: echo checked\n      preChecks: [{command: [\"true\"]}]\n      postChecks: [{logContains: {pattern: '^checked$'}}]\n",
        ),
    );
    let out = ws.run(&["run", "c.yaml", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(job_state(&json(&out), "both").0, "Succeeded");
    let log = text(&ws.run(&["logs", "1", "both"]).stdout);
    let pre = log
        .find("==> executioner: pre-check command: ")
        .expect(&log);
    let output = log.find("\nchecked\n").expect(&log);
    let post = log
        .find("==> executioner: post-check logContains: ")
        .expect(&log);
    assert!(pre < output && output < post, "{log}");
}

#[test]
fn a_sensor_that_never_passes_fails_with_check_timeout() {
    let ws = Workspace::new();
    ws.write(
        "s.yaml",
        &manifest(
            "sensor",
            "",
            "    - id: wait\n      command: touch ran\n      preChecks:\n        - fileExists: {path: never.txt}\n          wait: {timeout: 300ms, interval: 100ms}\n",
        ),
    );
    let out = ws.run(&["run", "s.yaml", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(
        job_state(&run, "wait"),
        ("Failed".into(), "CheckTimeout".into(), 1)
    );
    assert!(
        !ws.path().join("ran").exists(),
        "the command ran after its sensor timed out"
    );
}

/// Once a sensor passes, its job is Running again while its command runs (it stayed Waiting).
#[test]
fn a_job_whose_sensor_passed_is_running() {
    let ws = Workspace::new();
    ws.write(
        "s.yaml",
        &manifest(
            "sensed",
            "",
            "    - id: sensed\n      command: \"touch started; i=0; until test -e go || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done\"\n      preChecks: [{fileExists: {path: arrived}, wait: {timeout: 20s, interval: 50ms}}]\n",
        ),
    );
    let mut child = ws.spawn(&["run", "s.yaml"]);
    let phase = || {
        let out = ws.run(&["runs", "show", "1", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .map(|run| job_state(&run, "sensed").0)
    };
    common::wait_until(std::time::Duration::from_secs(20), || {
        phase().as_deref() == Some("Waiting")
    });
    std::fs::write(ws.path().join("arrived"), "").unwrap();
    common::wait_until(std::time::Duration::from_secs(20), || {
        ws.path().join("started").exists()
    });
    assert_eq!(phase().as_deref(), Some("Running"));
    std::fs::write(ws.path().join("go"), "").unwrap();
    assert!(child.wait().unwrap().success());
}

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

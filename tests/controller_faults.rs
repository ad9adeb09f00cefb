//! Fault isolation in the controller (issue 14): a run whose engine fails, or whose task panics,
//! is logged with its pipeline and run, recovered as the same run, and never stops the controller
//! nor holds up the other pipelines. A real controller process, real files, real jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Running, Workspace, manifest, run_count, wait_phase, wait_until};

const JOBS: &str =
    "    - {id: a, command: \"echo a\"}\n    - {id: b, command: \"echo b\", dependencies: [a]}\n";

/// The controller's JSON log lines so far.
fn log_lines(ws: &Workspace) -> Vec<serde_json::Value> {
    std::fs::read_to_string(ws.path().join("controller.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits for an ERROR line about run 1 of `pipeline` whose message starts with `message`.
fn wait_fault_line(ws: &Workspace, pipeline: &str, message: &str) -> serde_json::Value {
    let mut found = None;
    wait_until(Duration::from_secs(60), || {
        found = log_lines(ws).into_iter().find(|l| {
            l["level"] == "ERROR"
                && l["pipeline"] == pipeline
                && l["run"] == 1
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
        });
        found.is_some()
    });
    found.unwrap()
}

/// After the fault: the other pipeline is reconciled and succeeds meanwhile; once the fault is
/// `cleared`, the faulted run is recovered (the same run, not a new one) and succeeds, and the
/// controller is still running.
fn check_isolated(ws: &Workspace, controller: &mut Running, cleared: impl FnOnce()) {
    ws.write("manifests/good.yaml", &manifest("good", "", JOBS));
    wait_phase(ws, "good", "Succeeded", 1);
    cleared();
    let s = wait_phase(ws, "bad", "Succeeded", 1);
    assert_eq!(s["status"]["runId"], 1, "{s}");
    assert_eq!(run_count(ws, "bad"), 1);
    assert!(
        log_lines(ws).iter().any(|l| l["pipeline"] == "bad"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("run resumed"))),
        "no resume line"
    );
    let child = controller.child.as_mut().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the controller exited");
}

/// The engine fails for one run (its log folder cannot be made: `STATE/logs/bad` is a file).
/// The controller logs it and goes on; once the folder can be made, the run is recovered.
#[test]
fn an_engine_error_of_one_run_stops_neither_the_controller_nor_the_others() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.state_dir().join("logs")).unwrap();
    let blocker = ws.state_dir().join("logs/bad");
    std::fs::write(&blocker, "not a folder").unwrap();
    let mut c = Running::start(&ws, &[("EXECUTIONER_LOG_FORMAT", "json")]);
    ws.write("manifests/bad.yaml", &manifest("bad", "", JOBS));
    let line = wait_fault_line(&ws, "bad", "run failed in the engine");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot create the log folder")),
        "{line}"
    );
    check_isolated(&ws, &mut c, || std::fs::remove_file(&blocker).unwrap());
}

/// The task running one run panics (a defect, injected by a `failpoints` build): the pipeline is
/// not left "active" forever; the run is recovered at a next pass.
#[cfg(feature = "failpoints")]
#[test]
fn a_panicked_run_task_is_cleared_and_its_run_recovered() {
    let ws = Workspace::new();
    let mut c = Running::start(
        &ws,
        &[
            ("EXECUTIONER_LOG_FORMAT", "json"),
            ("EXECUTIONER_FAIL", "run-panic:bad"),
        ],
    );
    ws.write("manifests/bad.yaml", &manifest("bad", "", JOBS));
    wait_fault_line(&ws, "bad", "run task panicked");
    check_isolated(&ws, &mut c, || {});
}

/// A fault that does not go away does not spin: after five faults the run is left Running (for the
/// next start, or `resume` once the controller has stopped) and said so, the other pipeline
/// succeeds, and `--once` ends with the verdict of a run that did not succeed.
#[test]
fn a_run_that_keeps_faulting_is_left_running_and_once_ends() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.state_dir().join("logs")).unwrap();
    std::fs::write(ws.state_dir().join("logs/bad"), "not a folder").unwrap();
    ws.write("manifests/bad.yaml", &manifest("bad", "", JOBS));
    ws.write("manifests/good.yaml", &manifest("good", "", JOBS));
    let out = ws.run_limited(
        &[
            "--log-format",
            "json",
            "controller",
            "--manifests",
            "manifests",
            "--once",
        ],
        Duration::from_secs(120),
    );
    let log = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let faults: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "run failed in the engine" && l["pipeline"] == "bad")
        .collect();
    assert_eq!(faults.len(), 5, "{log}");
    assert!(
        faults[4]["recovery"]
            .as_str()
            .is_some_and(|r| r.contains("left Running")),
        "{log}"
    );
    let good = common::status(&ws, "good").unwrap();
    assert_eq!(good["status"]["phase"], "Succeeded", "{good}");
    assert_eq!(run_count(&ws, "bad"), 1);
}

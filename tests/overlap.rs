//! Overlapping runs and suspend (issue 15, DESIGN 11): `concurrencyPolicy` between two
//! `executioner run` of one pipeline, between a foreground run and the controller, and for
//! schedule ticks during a run; `suspend`/`unsuspend` round trips; the example manifest.
//! Schedule ticks come from a controller whose schedule clock runs 60 times faster
//! (`EXECUTIONER_CLOCK_SCALE`, failpoints builds): a `* * * * *` schedule ticks every second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Running, Workspace, json, manifest, marker, text, wait_no_marker, wait_until};

/// A job that says it started (`started.RUN`) and then holds until `release` exists (at most
/// 60 s) when `$HOLD` is set; the lock makes a second overlapping holder visible (`overlap`).
const HOLDING_JOB: &str = "    - {id: hold, command: \"touch started.$EXECUTIONER_RUN_ID; if [ -n \\\"$HOLD\\\" ]; then i=0; while [ ! -e release ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; fi\"}\n";

fn pipeline(policy: &str) -> String {
    manifest(
        "nightly",
        &format!("  concurrencyPolicy: {policy}\n"),
        HOLDING_JOB,
    )
}

/// `run FILE --env HOLD=1` in the background, with its output kept for the end.
fn hold(ws: &Workspace, file: &Path, marker: &str) -> std::process::Child {
    let (key, value) = marker.split_once('=').unwrap();
    std::process::Command::new(common::bin())
        .current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["run", file.to_str().unwrap(), "--env", "HOLD=1"])
        .env(key, value)
        .env_remove("EXECUTIONER_STATE_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// `executioner ARGS` in the background with `HOLD=1` and the marker in its environment (the
/// jobs of a resumed run hold like those of [`hold`]), with its output kept for the end.
fn hold_args(ws: &Workspace, args: &[&str], marker: &str) -> std::process::Child {
    let (key, value) = marker.split_once('=').unwrap();
    std::process::Command::new(common::bin())
        .current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(args)
        .env("HOLD", "1")
        .env(key, value)
        .env_remove("EXECUTIONER_STATE_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `child` exited (at most 30 s) and returns its output.
fn exited(mut child: std::process::Child) -> std::process::Output {
    wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    finish(child)
}

/// Waits until run `run` of a job working in `dir` (the manifest's folder) started.
fn wait_started(dir: &Path, run: u64) {
    let file = dir.join(format!("started.{run}"));
    wait_until(Duration::from_secs(30), || file.exists());
}

fn finish(child: std::process::Child) -> std::process::Output {
    child.wait_with_output().unwrap()
}

fn run_phase(ws: &Workspace, run: u64) -> String {
    let out = ws.run(&["runs", "show", &run.to_string(), "-o", "json"]);
    json(&out)["phase"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_second_run_under_forbid_exits_2_naming_the_running_one() {
    let ws = Workspace::new();
    let file = ws.write("nightly.yaml", &pipeline("Forbid"));
    let mark = marker("forbid");
    let first = hold(&ws, &file, &mark);
    wait_started(ws.path(), 1);
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("run 1") && err.contains("foreground") && err.contains("Forbid"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    ws.write("release", "");
    let first = finish(first);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(run_phase(&ws, 1), "Succeeded");
    // Nothing of the refused one was recorded.
    assert!(ws.run(&["runs", "show", "2"]).status.code() == Some(2));
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn a_second_run_under_allow_runs_alongside() {
    let ws = Workspace::new();
    let file = ws.write("nightly.yaml", &pipeline("Allow"));
    let mark = marker("allow");
    let first = hold(&ws, &file, &mark);
    wait_started(ws.path(), 1);
    let second = ws.run(&["run", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert_eq!(json(&second)["id"], 2);
    // The first is still going on: two Running runs of one pipeline were fine; status shows
    // the newest.
    assert_eq!(run_phase(&ws, 1), "Running");
    ws.write("release", "");
    let first = finish(first);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(run_phase(&ws, 1), "Succeeded");
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn a_second_run_under_replace_cancels_the_running_one_first() {
    let ws = Workspace::new();
    let file = ws.write("nightly.yaml", &pipeline("Replace"));
    let mark = marker("replace");
    let first = hold(&ws, &file, &mark);
    wait_started(ws.path(), 1);
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{err}");
    assert!(err.contains("cancelling run 1"), "{err}");
    // The first was cancelled as a user's action (exit 130), before the second started.
    let first = finish(first);
    assert_eq!(first.status.code(), Some(130), "{}", text(&first.stderr));
    assert_eq!(run_phase(&ws, 1), "Cancelled");
    assert_eq!(run_phase(&ws, 2), "Succeeded");
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn a_run_left_running_by_a_dead_process_does_not_block_forbid() {
    let ws = Workspace::new();
    let file = ws.write("nightly.yaml", &pipeline("Forbid"));
    let mark = marker("stale");
    let mut first = hold(&ws, &file, &mark);
    wait_started(ws.path(), 1);
    first.kill().unwrap();
    first.wait().unwrap();
    // Its job is an orphan now; gone too, like after a reboot.
    for pid in common::processes_with_marker(&mark) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
    // Shown as what it is: nobody drives it any more.
    assert_eq!(run_phase(&ws, 1), "Interrupted");
    let second = ws.run(&["run", file.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
}

#[test]
fn a_run_while_the_controller_runs_the_pipeline_is_refused_under_forbid() {
    let ws = Workspace::new();
    let mark = marker("ctl-forbid");
    let (key, value) = mark.split_once('=').unwrap();
    let _c = Running::start(&ws, &[("HOLD", "1"), (key, value)]);
    let file = ws.write("manifests/nightly.yaml", &pipeline("Forbid"));
    wait_started(&ws.path().join("manifests"), 1);
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains("run 1") && err.contains("the controller"),
        "{err}"
    );
    ws.write("manifests/release", "");
    common::wait_phase(&ws, "nightly", "Succeeded", 1);
}

#[test]
fn a_run_under_replace_has_the_controllers_run_cancelled_first() {
    let ws = Workspace::new();
    let mark = marker("ctl-replace");
    let (key, value) = mark.split_once('=').unwrap();
    let _c = Running::start(&ws, &[("HOLD", "1"), (key, value)]);
    let file = ws.write("manifests/nightly.yaml", &pipeline("Replace"));
    wait_started(&ws.path().join("manifests"), 1);
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{err}");
    assert!(
        err.contains("cancelling run 1 (driven by the controller"),
        "{err}"
    );
    // Cancelled as a user's action, and the request is gone.
    assert_eq!(run_phase(&ws, 1), "Cancelled");
    assert_eq!(run_phase(&ws, 2), "Succeeded");
    assert!(!ws.state_dir().join("requests/cancel-1").exists());
}

/// A controller with a fast schedule clock on `nightly` (every minute, so every second), whose
/// jobs hold until `release`; waits for the first run to start.
#[cfg(feature = "failpoints")]
fn ticking(ws: &Workspace, policy: &str, mark: &str) -> Running {
    let (key, value) = mark.split_once('=').unwrap();
    let c = Running::start(
        ws,
        &[
            ("EXECUTIONER_CLOCK_SCALE", "60"),
            ("HOLD", "1"),
            (key, value),
        ],
    );
    ws.write(
        "manifests/nightly.yaml",
        &manifest(
            "nightly",
            &format!("  schedule: \"* * * * *\"\n  concurrencyPolicy: {policy}\n"),
            HOLDING_JOB,
        ),
    );
    wait_started(&ws.path().join("manifests"), 1);
    c
}

#[cfg(feature = "failpoints")]
fn controller_log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
}

#[cfg(feature = "failpoints")]
#[test]
fn a_tick_during_a_run_under_forbid_is_skipped_and_recorded() {
    let ws = Workspace::new();
    let mark = marker("tick-forbid");
    let _c = ticking(&ws, "Forbid", &mark);
    // Ticks pass (one a second) while run 1 holds: each is an audit event of run 1.
    wait_until(Duration::from_secs(30), || {
        text(&ws.run(&["runs", "show", "1"]).stdout).contains("TickSkipped")
    });
    let shown = text(&ws.run(&["runs", "show", "1"]).stdout);
    assert!(
        shown.contains("run 1 was still running (concurrencyPolicy: Forbid) by controller"),
        "{shown}"
    );
    assert!(
        controller_log(&ws).contains("schedule tick skipped"),
        "{}",
        controller_log(&ws)
    );
    // Nothing else started meanwhile.
    assert!(!ws.path().join("manifests/started.2").exists());
    assert_eq!(run_phase(&ws, 1), "Running");
    ws.write("manifests/release", "");
    // The next tick after it ended starts a run.
    wait_started(&ws.path().join("manifests"), 2);
    assert_eq!(run_phase(&ws, 1), "Succeeded");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_tick_during_a_run_under_allow_queues_one_run_after_it() {
    let ws = Workspace::new();
    let mark = marker("tick-allow");
    let _c = ticking(&ws, "Allow", &mark);
    // Ticks pass (one a second) while run 1 holds: none is skipped, and nothing overlaps it
    // (this controller drives one run of a pipeline at a time)...
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!text(&ws.run(&["runs", "show", "1"]).stdout).contains("TickSkipped"));
    assert!(!ws.path().join("manifests/started.2").exists());
    assert!(!controller_log(&ws).contains("schedule tick skipped"));
    // ...but queued: the next run starts as soon as this one ended.
    ws.write("manifests/release", "");
    wait_started(&ws.path().join("manifests"), 2);
    assert_eq!(run_phase(&ws, 1), "Succeeded");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_tick_during_a_run_under_replace_cancels_it_and_starts_a_new_one() {
    let ws = Workspace::new();
    let mark = marker("tick-replace");
    let _c = ticking(&ws, "Replace", &mark);
    // The next tick cancels run 1 (a user's action, recorded Cancelled) and starts run 2.
    wait_started(&ws.path().join("manifests"), 2);
    assert_eq!(run_phase(&ws, 1), "Cancelled");
    let log = controller_log(&ws);
    assert!(log.contains("concurrencyPolicy: Replace"), "{log}");
    ws.write("manifests/release", "");
}

#[cfg(feature = "failpoints")]
#[test]
fn suspend_stops_ticks_shows_suspended_and_unsuspend_resumes() {
    let ws = Workspace::new();
    let mark = marker("suspend");
    let (key, value) = mark.split_once('=').unwrap();
    let _c = Running::start(&ws, &[("EXECUTIONER_CLOCK_SCALE", "60"), (key, value)]);
    let source = "# the nightly load\napiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: nightly\nspec:\n  # every minute\n  schedule: \"* * * * *\"\n  jobs:\n    - {id: hold, command: \"touch started.$EXECUTIONER_RUN_ID\"}\n";
    let file = ws.write("manifests/nightly.yaml", source);
    wait_started(&ws.path().join("manifests"), 2);

    let out = ws.run(&["suspend", "nightly", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pipeline/nightly suspended\n");
    // A minimal edit: the comments are still there.
    let edited = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        edited,
        source.replace("spec:\n", "spec:\n  suspend: true\n")
    );
    wait_until(Duration::from_secs(30), || {
        common::status(&ws, "nightly").is_some_and(|s| s["status"]["phase"] == "Suspended")
    });
    let table = text(&ws.run(&["status", "--manifests", "manifests"]).stdout);
    assert!(table.contains("Suspended"), "{table}");
    // The controller's status file follows once it has seen the edit.
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(common::status_file(&ws, "nightly"))
            .is_ok_and(|f| f.contains("phase: Suspended"))
    });
    // Ticks pass (three of them), and nothing starts.
    let runs = common::run_count(&ws, "nightly");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(common::run_count(&ws, "nightly"), runs);
    // The generation did not change: suspending is not a new spec.
    let s = common::status(&ws, "nightly").unwrap();
    assert_eq!(s["metadata"]["generation"], 1);

    let again = ws.run(&["suspend", "nightly", "--manifests", "manifests"]);
    assert_eq!(text(&again.stdout), "pipeline/nightly unchanged\n");
    let out = ws.run(&["unsuspend", "nightly", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pipeline/nightly unsuspended\n");
    wait_until(Duration::from_secs(30), || {
        common::run_count(&ws, "nightly") > runs
    });
    let s = common::status(&ws, "nightly").unwrap();
    assert_ne!(s["status"]["phase"], "Suspended");
}

#[test]
fn suspend_of_a_missing_pipeline_exits_2_and_a_toml_manifest_keeps_its_comments() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    let out = ws.run(&["suspend", "nope", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("pipeline/nope not found"),
        "{}",
        text(&out.stderr)
    );
    let toml = "# nightly\napiVersion = \"executioner.dev/v1\"\nkind = \"Pipeline\"\n\n[metadata]\nname = \"nightly\"\n\n[spec]\nschedule = \"@daily\" # midnight\n\n[[spec.jobs]]\nid = \"x\"\ncommand = \"true\"\n";
    let file = ws.write("manifests/nightly.toml", toml);
    let out = ws.run(&["suspend", "nightly", "--manifests", "manifests"]);
    assert_eq!(text(&out.stdout), "pipeline/nightly suspended\n");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        toml.replace("[spec]\n", "[spec]\nsuspend = true\n")
    );
    let out = ws.run(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // No controller ever ran: status still says Suspended.
    let s = common::status(&ws, "nightly").unwrap();
    assert_eq!(s["status"]["phase"], "Suspended");
}

#[test]
fn the_overlap_example_validates_and_runs() {
    let ws = Workspace::new();
    let example = common::repo().join("examples/overlap.yaml");
    let out = ws.run(&["validate", example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let file = ws.write("overlap.yaml", &std::fs::read_to_string(&example).unwrap());
    let out = ws.run(&["run", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)["phase"], "Succeeded");
}

#[test]
fn a_starting_deadline_too_short_to_catch_a_tick_is_refused() {
    let ws = Workspace::new();
    let file = ws.write(
        "short.yaml",
        &manifest(
            "short",
            "  schedule: \"@hourly\"\n  startingDeadline: 5s\n  catchup: All\n",
            "    - {id: a, command: \"true\"}\n",
        ),
    );
    let out = ws.run(&["validate", file.to_str().unwrap()]);
    let err = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("short.yaml:7:21: startingDeadline must be at least 10s"),
        "{err}"
    );
    let bad = ws.write(
        "bad.yaml",
        &manifest(
            "bad",
            "  concurrencyPolicy: Sometimes\n",
            "    - {id: a, command: \"true\"}\n",
        ),
    );
    let out = ws.run(&["validate", bad.to_str().unwrap()]);
    let err = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("concurrencyPolicy"), "{err}");
}

#[test]
fn wait_on_a_suspended_pipeline_without_a_run_says_so_instead_of_hanging() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    ws.write(
        "manifests/nightly.yaml",
        &manifest(
            "nightly",
            "  suspend: true\n",
            "    - {id: a, command: \"true\"}\n",
        ),
    );
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(common::status_file(&ws, "nightly"))
            .is_ok_and(|f| f.contains("phase: Suspended"))
    });
    let started = std::time::Instant::now();
    let out = ws.run(&["wait", "nightly", "--timeout", "60s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30), "it waited");
    assert!(
        text(&out.stderr).contains("executioner unsuspend nightly"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(common::run_count(&ws, "nightly"), 0);
}

/// A controller's run 1 of `nightly` under `policy`, left Running by a controller that stopped,
/// then resumed by a foreground `executioner resume 1` whose job holds: returns that process.
fn a_resumed_controller_run(ws: &Workspace, policy: &str, mark: &str) -> std::process::Child {
    let (key, value) = mark.split_once('=').unwrap();
    let mut c = Running::start(ws, &[("HOLD", "1"), (key, value)]);
    ws.write("manifests/nightly.yaml", &pipeline(policy));
    let dir = ws.path().join("manifests");
    wait_started(&dir, 1);
    c.stop();
    assert_eq!(run_phase(ws, 1), "Interrupted");
    std::fs::remove_file(dir.join("started.1")).unwrap();
    let resumed = hold_args(ws, &["resume", "1"], mark);
    wait_started(&dir, 1);
    resumed
}

#[test]
fn a_resumed_controller_run_is_driven_by_the_process_that_resumed_it() {
    let ws = Workspace::new();
    let mark = marker("resumed-forbid");
    let resumed = a_resumed_controller_run(&ws, "Forbid", &mark);
    let file = ws.path().join("manifests/nightly.yaml");
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "run 1 (driven by a foreground `executioner run`, pid {}",
            resumed.id()
        )),
        "{err}"
    );
    ws.write("manifests/release", "");
    let resumed = exited(resumed);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn a_run_under_replace_signals_the_process_that_resumed_a_controllers_run() {
    let ws = Workspace::new();
    let mark = marker("resumed-replace");
    let resumed = a_resumed_controller_run(&ws, "Replace", &mark);
    let file = ws.path().join("manifests/nightly.yaml");
    // No controller runs: the run is cancelled by a SIGTERM to its owner, not a request file.
    let second = ws.run(&["run", file.to_str().unwrap()]);
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{err}");
    assert!(
        err.contains("cancelling run 1 (driven by a foreground"),
        "{err}"
    );
    let resumed = exited(resumed);
    assert_eq!(
        resumed.status.code(),
        Some(130),
        "{}",
        text(&resumed.stderr)
    );
    assert_eq!(run_phase(&ws, 1), "Cancelled");
    assert!(!ws.state_dir().join("requests/cancel-1").exists());
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn the_controller_under_replace_cancels_a_resume_of_its_run_for_a_rerun() {
    let ws = Workspace::new();
    let mark = marker("resumed-ctl");
    let resumed = a_resumed_controller_run(&ws, "Replace", &mark);
    let (key, value) = mark.split_once('=').unwrap();
    let _c = Running::start(&ws, &[(key, value)]);
    let out = ws.run(&["rerun", "nightly"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Asked to stop as a user's cancel (a SIGTERM), and the rerun starts after it.
    let resumed = exited(resumed);
    assert_eq!(
        resumed.status.code(),
        Some(130),
        "{}",
        text(&resumed.stderr)
    );
    wait_started(&ws.path().join("manifests"), 2);
    assert_eq!(run_phase(&ws, 1), "Cancelled");
}

/// Run 1 of `file`, left Running by a process killed with its job (nobody drives it).
fn a_dead_run(ws: &Workspace, file: &Path, mark: &str) {
    let mut first = hold(ws, file, mark);
    wait_started(ws.path(), 1);
    first.kill().unwrap();
    first.wait().unwrap();
    for pid in common::processes_with_marker(mark) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(wait_no_marker(mark, Duration::from_secs(10)).is_empty());
    assert_eq!(run_phase(ws, 1), "Interrupted");
}

#[test]
fn a_resume_under_forbid_beside_a_live_run_exits_2() {
    let ws = Workspace::new();
    let file = ws.write("nightly.yaml", &pipeline("Forbid"));
    let mark = marker("resume-forbid");
    a_dead_run(&ws, &file, &mark);
    let live = hold(&ws, &file, &mark);
    wait_started(ws.path(), 2);
    for args in [
        vec!["resume", "1"],
        vec!["run", file.to_str().unwrap(), "--resume-from", "1"],
    ] {
        let out = ws.run(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("run 2") && err.contains("Forbid"), "{err}");
    }
    // Neither started a round: run 1 is as it was.
    assert_eq!(run_phase(&ws, 1), "Interrupted");
    ws.write("release", "");
    let live = finish(live);
    assert_eq!(live.status.code(), Some(0), "{}", text(&live.stderr));
    // Once it ended, the resume goes ahead.
    let out = ws.run(&["resume", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(wait_no_marker(&mark, Duration::from_secs(10)).is_empty());
}

#[test]
fn the_controller_does_not_start_a_run_while_a_run_holds_the_pipeline_lock() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    // What `executioner run` holds while it checks for a run in the way and records its own.
    let lock = ws.state_dir().join("locks/nightly.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let held = nix::fcntl::Flock::lock(
        std::fs::File::create(&lock).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    ws.write("manifests/nightly.yaml", &pipeline("Forbid"));
    // A few passes (each looks again within a fraction of a second): nothing starts.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(common::run_count(&ws, "nightly"), 0);
    drop(held);
    wait_started(&ws.path().join("manifests"), 1);
}

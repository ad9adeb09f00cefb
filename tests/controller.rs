//! End-to-end tests of the controller (issue 5): a real controller process, real files, real jobs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Running, Workspace, job_state, json, manifest, marker, run_count, status, status_file, text,
    wait_no_marker, wait_phase, wait_until,
};

const HELLO_JOBS: &str =
    "    - {id: a, command: \"echo a\"}\n    - {id: b, command: \"echo b\", dependencies: [a]}\n";

#[test]
fn drop_edit_and_relabel_a_manifest() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    ws.write("manifests/hello.yaml", &manifest("hello", "", HELLO_JOBS));
    let s = wait_phase(&ws, "hello", "Succeeded", 1);
    assert_eq!(s["metadata"]["generation"], 1);
    assert_eq!(s["status"]["progress"]["succeeded"], 2);
    assert!(status_file(&ws, "hello").exists());

    // A spec edit: generation 2 and a second run.
    ws.write(
        "manifests/hello.yaml",
        &manifest("hello", "", &HELLO_JOBS.replace("echo b", "echo B")),
    );
    wait_phase(&ws, "hello", "Succeeded", 2);
    assert_eq!(run_count(&ws, "hello"), 2);

    // A label-only edit: no new generation, no new run.
    let labelled = manifest("hello", "", &HELLO_JOBS.replace("echo b", "echo B"))
        .replace("  name: hello\n", "  name: hello\n  labels: {team: data}\n");
    ws.write("manifests/hello.yaml", &labelled);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run_count(&ws, "hello"), 2);
    assert_eq!(status(&ws, "hello").unwrap()["metadata"]["generation"], 2);

    // A status file deleted behind the controller's back is rewritten at the next resync.
    std::fs::remove_file(status_file(&ws, "hello")).unwrap();
    wait_until(Duration::from_secs(10), || {
        status_file(&ws, "hello").exists()
    });
}

#[test]
fn invalid_manifest_is_reported_and_others_are_unaffected() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    ws.write("manifests/good.yaml", &manifest("good", "", HELLO_JOBS));
    ws.write(
        "manifests/broken.yaml",
        &manifest(
            "broken",
            "",
            "    - {id: a, command: \"true\", dependencies: [nope]}\n",
        ),
    );
    wait_phase(&ws, "good", "Succeeded", 1);
    let start = Instant::now();
    let s = loop {
        if let Some(s) = status(&ws, "broken")
            && s["status"]["phase"] == "Invalid"
        {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    };
    let valid = s["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Valid")
        .unwrap()
        .clone();
    assert_eq!(valid["status"], "False");
    let message = valid["message"].as_str().unwrap();
    assert!(message.contains("broken.yaml:7:"), "{message}");
    assert!(message.contains("unknown job `nope`"), "{message}");
    // The status file says the same.
    let file = std::fs::read_to_string(status_file(&ws, "broken")).unwrap();
    assert!(file.contains("phase: Invalid"), "{file}");

    // Fixing it starts a run.
    ws.write(
        "manifests/broken.yaml",
        &manifest("broken", "", "    - {id: a, command: \"true\"}\n"),
    );
    wait_phase(&ws, "broken", "Succeeded", 1);
}

#[test]
fn pipelines_sharing_one_worker_all_finish() {
    // Every run of the controller draws on the same workers; with one, runs that all have jobs
    // ready take turns with it (they once handed it to each other forever, starting nothing).
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[("EXECUTIONER_WORKERS", "1")]);
    let jobs: String = (0..8)
        .map(|i| format!("    - {{id: j{i}, command: \"true\"}}\n"))
        .collect();
    for name in ["left", "middle", "right"] {
        ws.write(
            &format!("manifests/{name}.yaml"),
            &manifest(name, "", &jobs),
        );
    }
    for name in ["left", "middle", "right"] {
        let s = wait_phase(&ws, name, "Succeeded", 1);
        assert_eq!(s["status"]["progress"]["succeeded"], 8);
    }
}

/// Without folder events (here the watch fails as when the system's inotify watches are used up,
/// injected by a `failpoints` build) the controller says so and rescans every second, so a new
/// manifest is still picked up in about a second, not at the next resync (60 s here).
#[cfg(feature = "failpoints")]
#[test]
fn without_a_folder_watch_the_controller_rescans_every_second() {
    let ws = Workspace::new();
    let _c = Running::start(
        &ws,
        &[
            ("EXECUTIONER_FAIL", "watch"),
            ("EXECUTIONER_RESYNC_INTERVAL", "60"),
        ],
    );
    // Past the controller's first scan, so only a later rescan can find the manifest.
    std::thread::sleep(Duration::from_millis(300));
    ws.write("manifests/hello.yaml", &manifest("hello", "", HELLO_JOBS));
    wait_until(Duration::from_secs(10), || {
        status(&ws, "hello").is_some_and(|s| s["status"]["phase"] == "Succeeded")
    });
    let log = std::fs::read_to_string(ws.path().join("controller.log")).unwrap();
    assert!(
        log.contains("falling back to a rescan every second"),
        "{log}"
    );
}

#[test]
fn deleting_a_manifest_cancels_its_run() {
    let ws = Workspace::new();
    let mark = marker("ctl-delete");
    let _c = Running::start(&ws, &[]);
    let spec = format!(
        "  env:\n    {}: \"{}\"\n",
        mark.split('=').next().unwrap(),
        mark.split('=').nth(1).unwrap()
    );
    ws.write(
        "manifests/long.yaml",
        &manifest("long", &spec, "    - {id: sleeper, command: \"sleep 100 & sleep 100; wait\"}\n    - {id: after, command: \"true\", dependencies: [sleeper]}\n"),
    );
    wait_until(Duration::from_secs(20), || {
        !common::processes_with_marker(&mark).is_empty()
    });
    std::fs::remove_file(ws.path().join("manifests/long.yaml")).unwrap();
    wait_until(Duration::from_secs(20), || {
        let out = ws.run(&["runs", "show", "1", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|r| r["phase"] == "Cancelled")
    });
    assert!(
        wait_no_marker(&mark, Duration::from_secs(15)).is_empty(),
        "job processes survived"
    );
    wait_until(Duration::from_secs(10), || {
        !status_file(&ws, "long").exists()
    });
}

#[test]
fn partial_writes_and_editor_saves_make_one_generation_each() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let path = ws.path().join("manifests/edited.yaml");
    let version = |n: usize| {
        manifest(
            "edited",
            "",
            &format!(
                "    - {{id: a, command: \"echo version {n}\"}}\n    - {{id: b, command: \"true\", dependencies: [a]}}\n"
            ),
        )
    };

    // 1-3: written one byte at a time, 1 ms apart, through one open file.
    for n in 1..=3 {
        let mut f = std::fs::File::create(&path).unwrap();
        for byte in version(n).as_bytes() {
            f.write_all(&[*byte]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(f);
        wait_phase(&ws, "edited", "Succeeded", n as i64);
    }
    // 4-6: the way vim saves (write a swap file, write a temp file, rename over the original).
    for n in 4..=6 {
        ws.write("manifests/.edited.yaml.swp", "swap file garbage: [");
        let tmp = ws.path().join("manifests/4913");
        std::fs::write(&tmp, version(n)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        std::fs::remove_file(ws.path().join("manifests/.edited.yaml.swp")).unwrap();
        wait_phase(&ws, "edited", "Succeeded", n as i64);
    }
    // 7-9: sed -i.
    for n in 7..=9 {
        let status = Command::new("sed")
            .args([
                "-i",
                &format!("s/echo version {}/echo version {n}/", n - 1),
                path.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        wait_phase(&ws, "edited", "Succeeded", n as i64);
    }
    std::thread::sleep(Duration::from_millis(500));
    // Exactly one run per completed save, each of a complete version.
    assert_eq!(run_count(&ws, "edited"), 9);
    let out = ws.run(&[
        "runs",
        "--pipeline",
        "edited",
        "--limit",
        "100",
        "-o",
        "json",
    ]);
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for r in runs.as_array().unwrap() {
        assert_eq!(r["phase"], "Succeeded", "{r}");
    }
}

#[test]
fn kill_9_of_the_controller_mid_run_then_restart() {
    let ws = Workspace::new();
    let mark = marker("ctl-kill9");
    let (key, value) = mark.split_once('=').unwrap();
    let jobs = common::ledger_jobs(20, "../", "0.3");
    let mut c = Running::start(&ws, &[]);
    ws.write(
        "manifests/crashy.yaml",
        &manifest(
            "crashy",
            &format!("  maxParallel: 4\n  env:\n    {key}: \"{value}\"\n"),
            &jobs,
        ),
    );
    let ledger = ws.path().join("ledger");
    wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&ledger)
            .unwrap_or_default()
            .matches("end,")
            .count()
            >= 5
    });
    c.kill9();
    let _c2 = Running::start(&ws, &[]);
    let s = wait_phase(&ws, "crashy", "Succeeded", 1);
    assert!(
        wait_no_marker(&mark, Duration::from_secs(10)).is_empty(),
        "orphans survived"
    );
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        !ledger_text.contains("CONFLICT"),
        "two attempts at once:\n{ledger_text}"
    );
    for i in 0..20 {
        assert!(
            ledger_text.contains(&format!("end,j{i},")),
            "j{i} never ended"
        );
    }
    // Every job terminal, and the status file comes to equal the store (the controller writes it
    // just after the run's last commit, so `status` can see the end first).
    assert_eq!(s["status"]["progress"]["succeeded"], 20);
    let run_id = s["status"]["runId"].as_i64().unwrap();
    let read = || std::fs::read_to_string(status_file(&ws, "crashy")).unwrap_or_default();
    wait_until(Duration::from_secs(30), || read().contains("succeeded: 20"));
    let file = read();
    assert!(file.contains(&format!("runId: {run_id}")), "{file}");
    assert!(file.contains("\n  phase: Succeeded"), "{file}");
}

#[test]
fn a_second_controller_exits_2_naming_the_first() {
    let ws = Workspace::new();
    let first = Running::start(&ws, &[]);
    let start = Instant::now();
    let out = ws.run_limited(
        &["controller", "--manifests", "manifests"],
        Duration::from_secs(10),
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
}

#[test]
fn once_mode_and_status_shapes() {
    let ws = Workspace::new();
    ws.write("manifests/ok.yaml", &manifest("ok", "", HELLO_JOBS));
    ws.write(
        "manifests/bad.yaml",
        &manifest("bad", "", "    - {id: a, command: exit 3}\n"),
    );
    let out = ws.run_limited(
        &["controller", "--manifests", "manifests", "--once"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "a failed pipeline: exit 1");
    let out = ws.run(&["status", "-o", "json", "--manifests", "manifests"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2);
    for s in all {
        assert_eq!(s["apiVersion"], "executioner.dev/v1");
        assert_eq!(s["kind"], "PipelineStatus");
        for key in ["name", "source", "generation"] {
            assert!(s["metadata"].get(key).is_some(), "{key}");
        }
        for key in [
            "phase",
            "observedGeneration",
            "runId",
            "startedAt",
            "finishedAt",
            "progress",
            "conditions",
            "jobs",
        ] {
            assert!(s["status"].get(key).is_some(), "{key}");
        }
        for key in [
            "total",
            "succeeded",
            "failed",
            "running",
            "pending",
            "skipped",
        ] {
            assert!(s["status"]["progress"].get(key).is_some(), "{key}");
        }
        for c in s["status"]["conditions"].as_array().unwrap() {
            for key in ["type", "status", "reason", "message", "lastTransitionTime"] {
                assert!(c.get(key).is_some(), "{key}");
            }
        }
    }
    assert_eq!(all[0]["metadata"]["name"], "bad");
    assert_eq!(all[0]["status"]["phase"], "Failed");
    assert_eq!(all[1]["status"]["phase"], "Succeeded");
    // The status files hold no environment values.
    let file = std::fs::read_to_string(status_file(&ws, "ok")).unwrap();
    assert!(!file.contains("PATH"), "{file}");
    // wait on a finished pipeline.
    assert_eq!(
        ws.run(&["wait", "ok", "--timeout", "5s"]).status.code(),
        Some(0)
    );
    assert_eq!(
        ws.run(&["wait", "bad", "--timeout", "5s"]).status.code(),
        Some(1)
    );
}

#[test]
fn rerun_starts_a_new_run_of_the_same_generation() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    ws.write("manifests/again.yaml", &manifest("again", "", HELLO_JOBS));
    wait_phase(&ws, "again", "Succeeded", 1);
    let out = ws.run(&["rerun", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || run_count(&ws, "again") == 2);
    wait_phase(&ws, "again", "Succeeded", 1);
    assert_eq!(ws.run(&["rerun", "nope"]).status.code(), Some(2));
}

#[test]
fn apply_wait_and_unchanged() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    ws.write("src/good.yaml", &manifest("applied-good", "", HELLO_JOBS));
    ws.write(
        "src/bad.yaml",
        &manifest("applied-bad", "", "    - {id: a, command: exit 4}\n"),
    );
    let out = ws.run_limited(
        &[
            "apply",
            "-f",
            "src/good.yaml",
            "--manifests",
            "manifests",
            "--wait",
            "--timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("pipeline/applied-good created"));
    let out = ws.run_limited(
        &[
            "apply",
            "-f",
            "src/bad.yaml",
            "--manifests",
            "manifests",
            "--wait",
            "--timeout",
            "60s",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = ws.run(&["apply", "-f", "src/good.yaml", "--manifests", "manifests"]);
    assert!(
        text(&out.stdout).contains("pipeline/applied-good unchanged"),
        "{}",
        text(&out.stdout)
    );
    // delete through the CLI: the controller forgets it.
    let out = ws.run(&["delete", "applied-bad", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(0));
    wait_until(Duration::from_secs(10), || {
        !status_file(&ws, "applied-bad").exists()
    });
}

#[test]
fn json_log_lines_carry_pipeline_and_run_fields() {
    let ws = Workspace::new();
    ws.write("manifests/logged.yaml", &manifest("logged", "", HELLO_JOBS));
    let out = ws.run_limited(
        &[
            "--log-format",
            "json",
            "controller",
            "--manifests",
            "manifests",
            "--once",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "run started")
        .unwrap();
    assert_eq!(started["pipeline"], "logged");
    assert_eq!(started["run"], 1);
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "run finished" && l["phase"] == "Succeeded")
    );
    // Each run also keeps its own event log.
    let run_log = std::fs::read_to_string(ws.state_dir().join("logs/logged/1/run.log")).unwrap();
    assert!(
        run_log.contains("a Succeeded") && run_log.contains("run 1 Succeeded"),
        "{run_log}"
    );
}

/// Drops pipeline `ticking` (one `true` job) on `schedule` and waits for its first run, which
/// its generation gets whatever the schedule.
fn start_ticking(ws: &Workspace, schedule: &str) {
    ws.write(
        "manifests/ticking.yaml",
        &manifest(
            "ticking",
            &format!("  schedule: \"{schedule}\"\n"),
            "    - {id: a, command: \"true\"}\n",
        ),
    );
    wait_phase(ws, "ticking", "Succeeded", 1);
}

/// Between ticks a scheduled pipeline does not run again: the controller asks its schedule
/// every time it reconciles (every second here), and a tick it has acted on must stay acted on
/// (a tick carrying the fraction of a second it was asked at once made every check a new tick).
#[test]
fn a_scheduled_pipeline_does_not_run_again_between_ticks() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    start_ticking(&ws, "TZ=Europe/Paris * * * * *");
    std::thread::sleep(Duration::from_secs(3));
    // The generation's first run, and at most one tick if a minute began meanwhile.
    let runs = run_count(&ws, "ticking");
    assert!((1..=2).contains(&runs), "{runs} runs in about 3 s");
}

/// A schedule tick starts a run (up to a minute of waiting: `make test-long`).
#[test]
#[ignore = "waits for a cron tick (up to 60 s); run with make test-long"]
fn a_schedule_tick_starts_one_run() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    start_ticking(&ws, "* * * * *");
    let start = Instant::now();
    while run_count(&ws, "ticking") < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(75),
            "no run at the tick"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(run_count(&ws, "ticking"), 2, "one run per tick");
}

#[test]
fn sigterm_of_the_controller_interrupts_its_run_and_the_next_one_continues_it() {
    let ws = Workspace::new();
    let mut c = Running::start(&ws, &[]);
    // b is slow the first time; no retries are allowed, so only an interruption that does not
    // count against `retry.limit` lets it run again.
    ws.write(
        "manifests/restart.yaml",
        &manifest(
            "restart",
            "",
            "    - {id: a, command: \"true\"}\n    - {id: b, command: \"test -e ../second && exit 0; touch ../b-started; sleep 30\", dependencies: [a], retry: {limit: 0}}\n    - {id: c, command: \"echo c >> ../c-ran\", dependencies: [b]}\n",
        ),
    );
    wait_until(Duration::from_secs(20), || {
        ws.path().join("b-started").exists()
    });
    assert_eq!(c.stop(), Some(130), "a stopped controller exits 130");

    // The run is left going: b Interrupted (ControllerStopped), c still waiting, nothing cancelled.
    let out = ws.run(&["runs", "show", "1", "-o", "json"]);
    let run = json(&out);
    assert_ne!(run["phase"], "Cancelled", "{run}");
    assert_ne!(run["phase"], "Failed", "{run}");
    let b = job_state(&run, "b");
    assert_eq!(
        (b.0.as_str(), b.1.as_str()),
        ("Interrupted", "ControllerStopped")
    );
    assert_eq!(job_state(&run, "c").0, "Pending");
    assert_eq!(job_state(&run, "a").0, "Succeeded");
    let log = std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default();
    assert!(!log.contains("cancelling run"), "{log}");
    assert!(!log.contains("notifications of run"), "{log}");

    std::fs::write(ws.path().join("second"), "").unwrap();
    let _c2 = Running::start(&ws, &[]);
    let s = wait_phase(&ws, "restart", "Succeeded", 1);
    assert_eq!(s["status"]["runId"], 1, "the same run continues");
    assert_eq!(run_count(&ws, "restart"), 1);
    let out = ws.run(&["runs", "show", "1", "-o", "json"]);
    let run = json(&out);
    assert_eq!(run["phase"], "Succeeded", "{run}");
    // a kept its result; b and c ran in the continuation.
    assert_eq!(job_state(&run, "a").0, "Succeeded");
    assert_eq!(job_state(&run, "b").0, "Succeeded");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("c-ran")).unwrap_or_default(),
        "c\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 13: the controller's view of the folder and the kubectl-like commands.

/// `executioner --state-dir WS/state ARGS...` run from `cwd`, bounded.
fn run_in(ws: &Workspace, cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(cwd)
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(args)
        .env_remove("EXECUTIONER_STATE_DIR");
    common::run_with_timeout(cmd, Duration::from_secs(90))
}

fn once(ws: &Workspace, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args(["controller", "--manifests", "manifests", "--once"])
        .env_remove("EXECUTIONER_STATE_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run_with_timeout(cmd, Duration::from_secs(60))
}

fn apply_file(ws: &Workspace, file: &str) {
    let out = ws.run(&["apply", "-f", file, "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn wait_after_apply_waits_for_the_generation_just_written() {
    let ws = Workspace::new();
    let failing = manifest("flip", "", "    - {id: a, command: exit 3}\n");
    let fixed = manifest("flip", "", "    - {id: a, command: \"true\"}\n");
    ws.write("src/failing.yaml", &failing);
    ws.write("src/fixed.yaml", &fixed);
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    apply_file(&ws, "src/failing.yaml");
    assert_eq!(once(&ws, &[]).status.code(), Some(1));
    // Generation 1 failed. The fixed manifest is applied while no controller runs: `wait` must
    // not take generation 1's result for it (it used to exit 1 at once); the new one has no run.
    apply_file(&ws, "src/fixed.yaml");
    let out = ws.run(&["wait", "flip", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(once(&ws, &[]).status.code(), Some(0));
    let out = ws.run(&["wait", "flip", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // And the reverse: a succeeded generation does not answer for a failing one.
    apply_file(&ws, "src/failing.yaml");
    let out = ws.run(&["wait", "flip", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert_eq!(once(&ws, &[]).status.code(), Some(1));
    let out = ws.run(&["wait", "flip", "--timeout", "10s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // With a controller running, apply then wait at once gets the new generation's verdict.
    let _c = Running::start(&ws, &[]);
    for (file, code, generation) in [("src/fixed.yaml", 0, 4), ("src/failing.yaml", 1, 5)] {
        apply_file(&ws, file);
        let out = ws.run(&["wait", "flip", "--timeout", "60s"]);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let s = status(&ws, "flip").unwrap();
        assert_eq!(s["status"]["observedGeneration"], generation, "{s}");
    }
    assert_eq!(run_count(&ws, "flip"), 5);
}

#[test]
fn a_manifest_written_by_apply_starts_at_once() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let started = ws.path().join("started");
    let job = |n: u32| {
        format!(
            "    - {{id: a, command: \"echo {n} >> {}\"}}\n",
            started.display()
        )
    };
    for (n, verb) in [(1, "created"), (2, "configured")] {
        ws.write("src/quick.yaml", &manifest("quick", "", &job(n)));
        let out = ws.run(&["apply", "-f", "src/quick.yaml", "--manifests", "manifests"]);
        assert!(text(&out.stdout).contains(verb), "{}", text(&out.stdout));
        let applied = Instant::now();
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&started).is_ok_and(|t| t.lines().count() == n as usize)
        });
        // A rename into place is a complete file: no quiet period (it used to be ~2 s).
        assert!(
            applied.elapsed() < Duration::from_secs(1),
            "{verb}: the run started {:?} after apply",
            applied.elapsed()
        );
    }
}

#[test]
fn a_manifest_linked_into_the_folder_starts_at_once() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let started = ws.path().join("started");
    let source = ws.write(
        "src/linked.yaml",
        &manifest(
            "linked",
            "",
            &format!(
                "    - {{id: a, command: \"touch {}\"}}\n",
                started.display()
            ),
        ),
    );
    // A new link is a complete file (as `ln` makes it): no quiet period.
    std::fs::hard_link(&source, ws.path().join("manifests/linked.yaml")).unwrap();
    let linked = Instant::now();
    wait_until(Duration::from_secs(10), || started.exists());
    assert!(
        linked.elapsed() < Duration::from_secs(1),
        "the run started {:?} after the link",
        linked.elapsed()
    );
}

#[test]
fn wait_on_an_invalid_manifest_exits_1_and_says_why() {
    let ws = Workspace::new();
    let broken = manifest(
        "broken",
        "",
        "    - {id: a, command: \"true\", dependencies: [nope]}\n",
    );
    // No controller has ever run: the configured folder is read.
    ws.write("manifests/broken.yaml", &broken);
    let out = ws.run(&["wait", "broken", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("broken.yaml:7:"), "{err}");
    assert!(err.contains("unknown job `nope`"), "{err}");

    // A generation that succeeded, then a broken edit: wait says the edit is invalid.
    ws.write(
        "manifests/broken.yaml",
        &manifest("broken", "", "    - {id: a, command: \"true\"}\n"),
    );
    let _c = Running::start(&ws, &[]);
    wait_phase(&ws, "broken", "Succeeded", 1);
    ws.write("manifests/broken.yaml", &broken);
    let out = ws.run(&["wait", "broken", "--timeout", "20s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("broken.yaml:7:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_second_file_with_a_bound_name_does_not_take_the_pipeline() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let stolen = ws.path().join("stolen");
    ws.write("manifests/b.yaml", &manifest("shared", "", HELLO_JOBS));
    wait_phase(&ws, "shared", "Succeeded", 1);
    // a.yaml sorts first; it used to take the pipeline over and run.
    ws.write(
        "manifests/a.yaml",
        &manifest(
            "shared",
            "",
            &format!("    - {{id: a, command: \"touch {}\"}}\n", stolen.display()),
        ),
    );
    let start = Instant::now();
    let all = loop {
        let out = ws.run(&["status", "-o", "json", "--manifests", "manifests"]);
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = all.as_array().unwrap();
        if rows.iter().any(|r| r["metadata"]["source"] == "a.yaml") {
            break rows.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{all}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["metadata"]["source"], "b.yaml");
    assert_eq!(all[0]["metadata"]["generation"], 1);
    assert_eq!(all[0]["status"]["phase"], "Succeeded");
    let newcomer = &all[1];
    assert_eq!(newcomer["metadata"]["name"], "shared");
    assert_eq!(newcomer["status"]["phase"], "Invalid");
    let valid = &newcomer["status"]["conditions"][0];
    assert_eq!(valid["reason"], "DuplicateName", "{newcomer}");
    let message = valid["message"].as_str().unwrap();
    assert!(message.contains("a.yaml:4:"), "{message}");
    assert!(message.contains("b.yaml"), "{message}");
    // The table shows it too.
    let out = ws.run(&["status", "--manifests", "manifests"]);
    assert!(
        text(&out.stdout).contains("a.yaml"),
        "{}",
        text(&out.stdout)
    );
    let file = std::fs::read_to_string(status_file(&ws, "shared")).unwrap();
    assert!(file.contains("source: b.yaml"), "{file}");
    assert_eq!(run_count(&ws, "shared"), 1);
    assert!(!stolen.exists());
}

#[test]
fn status_from_another_folder_and_stable_between_calls() {
    let ws = Workspace::new();
    ws.write("manifests/ok.yaml", &manifest("ok", "", HELLO_JOBS));
    ws.write(
        "manifests/bad.yaml",
        &manifest(
            "bad",
            "",
            "    - {id: a, command: \"true\", dependencies: [x]}\n",
        ),
    );
    assert_eq!(once(&ws, &[]).status.code(), Some(1));
    // A pipeline the controller has not seen: Pending, its times from the file.
    ws.write("manifests/later.yaml", &manifest("later", "", HELLO_JOBS));
    let elsewhere = tempfile::tempdir().unwrap();
    let first = run_in(&ws, elsewhere.path(), &["status", "-o", "json"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let all: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bad", "later", "ok"], "{all}");
    std::thread::sleep(Duration::from_millis(20));
    let second = run_in(&ws, elsewhere.path(), &["status", "-o", "json"]);
    assert_eq!(text(&first.stdout), text(&second.stdout));
}

#[test]
fn status_watch_on_a_pipe_prints_plain_snapshots_once_per_change() {
    use std::io::Read;
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let gate = ws.path().join("gate");
    ws.write(
        "manifests/watched.yaml",
        &manifest(
            "watched",
            "",
            &format!(
                "    - {{id: a, command: \"while [ ! -e {} ]; do sleep 0.05; done\"}}\n",
                gate.display()
            ),
        ),
    );
    wait_phase(&ws, "watched", "Running", 1);
    let mut child = Command::new(common::bin())
        .current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args([
            "status",
            "watched",
            "-o",
            "json",
            "--watch",
            "--manifests",
            "manifests",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let mut collect = |until: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        while !until(&String::from_utf8_lossy(&out)) {
            assert!(start.elapsed() < Duration::from_secs(30), "{}", text(&out));
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                out.extend(chunk);
            }
        }
    };
    collect(&|t| t.contains("\"Running\""));
    std::fs::write(&gate, "").unwrap();
    collect(&|t| t.contains("\"Succeeded\""));
    let _ = child.kill();
    let _ = child.wait();
    let all = text(&out);
    assert!(!all.contains('\x1b'), "{all:?}");
    let snapshots: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&all)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(snapshots.len() >= 2, "{all}");
    for pair in snapshots.windows(2) {
        assert_ne!(pair[0], pair[1], "a snapshot printed twice");
    }
}

#[test]
fn insecure_manifests_are_never_run() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let ran = ws.path().join("ran");
    let path = ws.write(
        "manifests/open.yaml",
        &manifest(
            "open",
            "",
            &format!("    - {{id: a, command: \"touch {}\"}}\n", ran.display()),
        ),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let start = Instant::now();
    let s = loop {
        if let Some(s) = status(&ws, "open")
            && s["status"]["phase"] == "Invalid"
        {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    };
    let valid = &s["status"]["conditions"][0];
    assert_eq!(valid["reason"], "InsecurePermissions", "{s}");
    assert!(
        valid["message"]
            .as_str()
            .unwrap()
            .contains("writable by group or others"),
        "{s}"
    );
    assert_eq!(run_count(&ws, "open"), 0);
    assert!(!ran.exists());
    // `validate` says the same of that file.
    let out = ws.run(&["validate", "manifests/open.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("InsecurePermissions"),
        "{}",
        text(&out.stdout)
    );
    // Made writable by its owner only, it runs.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_phase(&ws, "open", "Succeeded", 1);
    assert!(ran.exists());
}

#[test]
fn a_manifests_folder_writable_by_others_is_refused_unless_sticky() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write("manifests/ok.yaml", &manifest("ok", "", HELLO_JOBS));
    let dir = ws.path().join("manifests");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = once(&ws, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("writable by others without the sticky bit"),
        "{err}"
    );
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    assert_eq!(run_count(&ws, "ok"), 0);
    // apply will not write there either.
    ws.write("src/new.yaml", &manifest("new", "", HELLO_JOBS));
    let out = ws.run(&["apply", "-f", "src/new.yaml", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!dir.join("new.yaml").exists());
    // With the sticky bit (as /tmp), others cannot replace our files: accepted.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = once(&ws, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_manifest_of_another_owner_runs_only_when_trusted() {
    let ws = Workspace::new();
    let path = ws.write("manifests/synced.yaml", &manifest("synced", "", HELLO_JOBS));
    // uid 65534 (nobody): not the controller's user (root in the tests), not root.
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    assert_eq!(once(&ws, &[]).status.code(), Some(1));
    let s = status(&ws, "synced").unwrap();
    assert_eq!(s["status"]["phase"], "Invalid", "{s}");
    let valid = &s["status"]["conditions"][0];
    assert_eq!(valid["reason"], "InsecurePermissions", "{s}");
    assert!(valid["message"].as_str().unwrap().contains("65534"), "{s}");
    assert_eq!(run_count(&ws, "synced"), 0);
    for trusted in ["[65534]", "[\"nobody\"]"] {
        let out = once(&ws, &[("EXECUTIONER_SECURITY__TRUSTED_OWNERS", trusted)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{trusted}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(run_count(&ws, "synced"), 1);
}

#[test]
fn a_run_whose_process_is_gone_is_shown_interrupted() {
    let ws = Workspace::new();
    let tag = marker("interrupted");
    let (key, value) = tag.split_once('=').unwrap();
    let started = ws.path().join("started");
    ws.write(
        "manifests/orphan.yaml",
        &manifest(
            "orphan",
            "",
            &format!(
                "    - {{id: a, command: \"touch {}; sleep 30\"}}\n",
                started.display()
            ),
        ),
    );
    let mut run = Command::new(common::bin())
        .current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args(["run", "manifests/orphan.yaml"])
        .env(key, value)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), || started.exists());
    let s = status(&ws, "orphan").unwrap();
    assert_eq!(s["status"]["phase"], "Running", "{s}");
    run.kill().unwrap();
    run.wait().unwrap();
    let s = status(&ws, "orphan").unwrap();
    assert_eq!(s["status"]["phase"], "Interrupted", "{s}");
    let run_id = s["status"]["runId"].as_i64().unwrap();
    let out = ws.run(&["status", "--manifests", "manifests"]);
    assert!(
        text(&out.stdout).contains(&format!("executioner resume {run_id}")),
        "{}",
        text(&out.stdout)
    );
    for pid in common::processes_with_marker(&tag) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Issue 13's acceptance scenario, as a user drives it: apply, wait, edit, apply, wait, break the
/// manifest, wait (exit 1), fix it, SIGTERM the controller mid-run, restart, wait (exit 0), delete.
#[test]
fn scenario_apply_edit_break_fix_restart_delete() {
    let ws = Workspace::new();
    let mut controller = Running::start(&ws, &[]);
    let apply = |file: &str| {
        let out = ws.run(&["apply", "-f", file, "--manifests", "manifests"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let wait = |code: i32| {
        let out = ws.run(&["wait", "etl", "--timeout", "60s"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    };
    let generation = || status(&ws, "etl").unwrap()["status"]["observedGeneration"].clone();

    ws.write("src/etl.yaml", &manifest("etl", "", "    - {id: extract, command: \"echo one\"}\n    - {id: load, command: \"echo loaded\", dependencies: [extract]}\n"));
    assert!(apply("src/etl.yaml").contains("pipeline/etl created"));
    wait(0);
    assert_eq!(generation(), 1);

    // An edit: a new generation, and `wait` answers for it.
    ws.write("src/etl.yaml", &manifest("etl", "", "    - {id: extract, command: \"echo two\"}\n    - {id: load, command: \"exit 5\", dependencies: [extract]}\n"));
    assert!(apply("src/etl.yaml").contains("pipeline/etl configured"));
    wait(1);
    assert_eq!(generation(), 2);

    // Broken by hand in the folder (apply would refuse it): wait exits 1 and says where.
    ws.write(
        "manifests/etl.yaml",
        &manifest("etl", "", "    - {id: extract, comand: \"echo typo\"}\n"),
    );
    let out = wait(1);
    let said = text(&out.stderr) + &text(&out.stdout);
    assert!(
        said.contains("etl.yaml:") && said.contains("comand"),
        "{said}"
    );

    // Fixed, with a job slow enough to stop the controller in the middle of it.
    ws.write("src/etl.yaml", &manifest("etl", "", "    - {id: extract, command: \"echo three\"}\n    - {id: load, command: \"test -e ../go && exit 0; touch ../load-started; sleep 30\", dependencies: [extract]}\n    - {id: report, command: \"echo report >> ../reported\", dependencies: [load]}\n"));
    assert!(apply("src/etl.yaml").contains("pipeline/etl configured"));
    wait_until(Duration::from_secs(30), || {
        ws.path().join("load-started").exists()
    });
    assert_eq!(controller.stop(), Some(130));
    let before = run_count(&ws, "etl");

    std::fs::write(ws.path().join("go"), "").unwrap();
    let _restarted = Running::start(&ws, &[]);
    wait(0);
    assert_eq!(generation(), 3);
    assert_eq!(
        run_count(&ws, "etl"),
        before,
        "the interrupted run continued; none was added"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("reported")).unwrap(),
        "report\n"
    );

    // Delete: the manifest and its status file go, the history stays.
    let out = ws.run(&["delete", "etl", "--manifests", "manifests"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(30), || {
        !status_file(&ws, "etl").exists()
    });
    assert!(!ws.path().join("manifests/etl.yaml").exists());
    assert_eq!(run_count(&ws, "etl"), before);
}

/// A spec changed while no controller ran follows `onSpecChange`, as a change during a run does:
/// `queue` continues the interrupted run on its pinned spec, then runs the new generation;
/// `replace` cancels it. A killed foreground `run` of the same pipeline is left to its user.
#[test]
fn a_spec_changed_while_stopped_follows_on_spec_change() {
    for policy in ["queue", "replace"] {
        let ws = Workspace::new();
        let mut c = Running::start(&ws, &[]);
        let jobs = |tag: &str| {
            format!(
                "    - {{id: a, command: \"test -e ../go || {{ touch ../a-started; sleep 30; }}; echo {tag} >> ../ran\"}}\n"
            )
        };
        let spec = format!("  onSpecChange: {policy}\n");
        ws.write("manifests/p.yaml", &manifest("p", &spec, &jobs("old")));
        wait_until(Duration::from_secs(20), || {
            ws.path().join("a-started").exists()
        });
        assert_eq!(c.stop(), Some(130));
        ws.write("manifests/p.yaml", &manifest("p", &spec, &jobs("new")));
        std::fs::write(ws.path().join("go"), "").unwrap();
        let _c2 = Running::start(&ws, &[]);
        wait_phase(&ws, "p", "Succeeded", 2);
        let first = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
        let ran = std::fs::read_to_string(ws.path().join("ran")).unwrap_or_default();
        if policy == "queue" {
            assert_eq!(first["phase"], "Succeeded", "{first}");
            assert_eq!(ran, "old\nnew\n");
        } else {
            assert_eq!(first["phase"], "Cancelled", "{first}");
            assert_eq!(ran, "new\n");
        }
        assert_eq!(run_count(&ws, "p"), 2);
    }
}

/// Issue 14: `-v` adds the engine's debug lines, inside the spans of their run (`pipeline`,
/// `run`) and attempt (`job`, `attempt`), so that a JSON line can be filtered by them; without
/// `-v` nothing below info is logged.
#[test]
fn verbose_json_lines_carry_the_run_and_attempt_spans() {
    let controller_lines = |verbose: bool| -> Vec<serde_json::Value> {
        let ws = Workspace::new();
        ws.write("manifests/traced.yaml", &manifest("traced", "", HELLO_JOBS));
        let mut args = vec![
            "--log-format",
            "json",
            "controller",
            "--manifests",
            "manifests",
            "--once",
        ];
        if verbose {
            args.insert(0, "-v");
        }
        let out = ws.run_limited(&args, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let quiet = controller_lines(false);
    assert!(quiet.iter().any(|l| l["message"] == "run started"));
    assert!(
        quiet.iter().all(|l| l["level"] != "DEBUG"),
        "debug lines without -v: {quiet:?}"
    );
    let verbose = controller_lines(true);
    let started: Vec<&serde_json::Value> = verbose
        .iter()
        .filter(|l| l["level"] == "DEBUG" && l["message"] == "attempt started")
        .collect();
    assert_eq!(started.len(), 2, "{verbose:?}");
    let b = started
        .iter()
        .find(|l| l["spans"][1]["job"] == "b")
        .unwrap_or_else(|| panic!("no attempt span of b: {started:?}"));
    assert_eq!(b["spans"][0]["name"], "run");
    assert_eq!(b["spans"][0]["pipeline"], "traced");
    assert_eq!(b["spans"][0]["run"], 1);
    assert_eq!(b["spans"][1]["name"], "attempt");
    assert_eq!(b["spans"][1]["attempt"], 1);
    assert!(
        verbose.iter().any(|l| l["level"] == "DEBUG"
            && l["spans"][1]["job"] == "a"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("attempt 1 succeeded"))),
        "{verbose:?}"
    );
}

/// While a pipeline runs, its status file follows its jobs (written from the run's progress
/// events, issue 14), and once the run ends it is what the store says.
#[test]
fn a_running_pipelines_status_file_follows_its_jobs() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let gate = ws.path().join("gate");
    ws.write(
        "manifests/steps.yaml",
        &manifest(
            "steps",
            "",
            &format!(
                "    - {{id: a, command: \"true\"}}\n    - {{id: b, command: \"while [ ! -e {} ]; do sleep 0.05; done\", dependencies: [a]}}\n    - {{id: c, command: \"true\", dependencies: [b]}}\n",
                gate.display()
            ),
        ),
    );
    let file = status_file(&ws, "steps");
    wait_until(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.contains("phase: Running")
            && text.contains("succeeded: 1")
            && text.contains("running: 1")
            && text.contains("pending: 1")
    });
    std::fs::write(&gate, "").unwrap();
    let s = wait_phase(&ws, "steps", "Succeeded", 1);
    assert_eq!(s["status"]["progress"]["succeeded"], 3);
    // The file is the store's view: what `status` builds from it, time for time.
    wait_until(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let out = ws.run(&["status", "steps", "-o", "yaml"]);
        text.contains("succeeded: 3") && String::from_utf8_lossy(&out.stdout) == text
    });
}

/// A syntax error saved into a running pipeline's file is an invalid edit, not a deletion: the
/// run goes on, `status` says where the error is, and fixing the file brings no new run.
#[test]
fn a_syntax_error_in_a_running_pipelines_file_does_not_delete_it() {
    let ws = Workspace::new();
    let _c = Running::start(&ws, &[]);
    let good = manifest(
        "nightly-etl",
        "",
        "    - {id: a, command: \"touch ../a-started; i=0; until test -e ../go || [ $i -ge 600 ]; do sleep 0.05; i=$((i+1)); done\"}\n    - {id: b, command: \"echo b >> ../b-ran\", dependencies: [a]}\n",
    );
    // The file's name is not the pipeline's: only the store knows which pipeline it holds.
    ws.write("manifests/prod.yaml", &good);
    wait_until(Duration::from_secs(20), || {
        ws.path().join("a-started").exists()
    });
    ws.write(
        "manifests/prod.yaml",
        "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {name: nightly-etl\nspec: [\n",
    );
    // Still running (its run goes on), with a Valid condition that says what is wrong.
    let invalid = |s: &serde_json::Value| {
        s["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Valid").cloned())
            .filter(|c| c["status"] == "False")
    };
    wait_until(Duration::from_secs(20), || {
        status(&ws, "nightly-etl").is_some_and(|s| invalid(&s).is_some())
    });
    let s = status(&ws, "nightly-etl").unwrap();
    assert_eq!(s["status"]["phase"], "Running", "{s}");
    let valid = invalid(&s).unwrap();
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("prod.yaml:4:"),
        "{s}"
    );
    // The controller has seen it too (after its parse retry), and deleted nothing.
    let log = || std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default();
    wait_until(Duration::from_secs(20), || {
        log().contains("invalid manifest")
    });
    let seen = log();
    assert!(
        !seen.contains("pipeline deleted") && !seen.contains("cancelling run"),
        "{seen}"
    );
    // Fixed: the same spec, so the same generation; the run that went on finishes.
    std::fs::write(ws.path().join("go"), "").unwrap();
    ws.write("manifests/prod.yaml", &good);
    let _ = ws.run(&["wait", "nightly-etl", "--timeout", "60s"]);
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_ne!(run["phase"], "Cancelled", "{run}");
    assert_eq!(run_count(&ws, "nightly-etl"), 1);
}

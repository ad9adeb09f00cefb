//! Crash tests (issue 7): the controller is killed (SIGKILL) at named points of the attempt
//! lifecycle and at seeded random moments; after each restart the ledger proves no job had two
//! attempts alive at once and every job ended, no job process is left, and the status file
//! equals the store. Named points need the `failpoints` feature (`make test` enables it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Running, Workspace, json, manifest, marker, status_file, wait_no_marker};

/// A manifest of `n` jobs (chains of 4 lanes) whose every attempt holds a per-job `flock` for its
/// whole life and writes start/end lines to `ledger`; a second live attempt writes CONFLICT.
fn ledger_manifest(name: &str, n: usize, mark: &str, sleep: &str) -> String {
    let (key, value) = mark.split_once('=').unwrap();
    let jobs = common::ledger_jobs(n, "../", sleep);
    manifest(
        name,
        &format!("  maxParallel: 4\n  env:\n    {key}: \"{value}\"\n"),
        &jobs,
    )
}

/// The checks every crash test ends with. With a single crash the run must succeed; under
/// repeated crashes a job lost three times fails by design (`LostTooOften`, its dependents are
/// skipped), so then only jobs that succeeded must have ended in the ledger.
fn check_after_recovery(ws: &Workspace, name: &str, n: usize, mark: &str, must_succeed: bool) {
    let start = std::time::Instant::now();
    let s = loop {
        if let Some(s) = common::status(ws, name)
            && (s["status"]["phase"] == "Succeeded"
                || (!must_succeed && s["status"]["phase"] == "Failed"))
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    for job in run["jobs"].as_array().unwrap() {
        match job["phase"].as_str().unwrap() {
            "Succeeded" => {}
            "Failed" => assert_eq!(job["reason"], "LostTooOften", "{job}"),
            "Skipped" => assert_eq!(job["reason"], "UpstreamFailed", "{job}"),
            other => panic!("{other}: {job}"),
        }
    }
    let succeeded: Vec<String> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["phase"] == "Succeeded")
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    if must_succeed {
        assert_eq!(succeeded.len(), n);
    }
    assert!(
        wait_no_marker(mark, Duration::from_secs(10)).is_empty(),
        "orphan job processes"
    );
    let ledger = std::fs::read_to_string(ws.path().join("ledger")).unwrap_or_default();
    assert!(
        !ledger.contains("CONFLICT"),
        "two attempts alive at once:\n{ledger}"
    );
    for i in (0..n).filter(|i| succeeded.contains(&format!("j{i}"))) {
        assert!(
            ledger.contains(&format!("end,j{i},")),
            "j{i} never ended:\n{ledger}\n{}",
            common::text(&ws.run(&["runs", "show", "1"]).stdout)
        );
    }
    let mut lines = std::collections::HashSet::new();
    for line in ledger.lines() {
        assert!(lines.insert(line), "an attempt wrote {line} twice");
    }
    // The status file equals the store (give the controller a flush to write the final state).
    let want_run = s["status"]["runId"].as_i64().unwrap();
    let phase = s["status"]["phase"].as_str().unwrap().to_owned();
    let done = succeeded.len();
    common::wait_until(Duration::from_secs(10), || {
        let file = std::fs::read_to_string(status_file(ws, name)).unwrap_or_default();
        file.contains(&format!("runId: {want_run}"))
            && file.contains(&format!("phase: {phase}"))
            && file.contains(&format!("succeeded: {done}"))
    });
}

#[cfg(feature = "failpoints")]
#[test]
fn crash_at_each_named_point_then_recover() {
    for point in ["attempt-recorded:3", "spawned:3", "exited:3", "finished:3"] {
        let ws = Workspace::new();
        let mark = marker(&format!("crash-{}", point.replace(':', "-")));
        let mut first = Running::start(&ws, &[("EXECUTIONER_FAILPOINT", point)]);
        ws.write(
            "manifests/crashy.yaml",
            &ledger_manifest("crashy", 12, &mark, "0.1"),
        );
        // The controller kills itself at the point.
        let start = std::time::Instant::now();
        let died = loop {
            if let Some(child) = first.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{point}: never reached"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!died.success(), "{point}: {died:?}");
        first.child = None;
        let _second = Running::start(&ws, &[]);
        check_after_recovery(&ws, "crashy", 12, &mark, true);
    }
}

/// A seeded xorshift, so the random kill moments are reproducible.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill_9_at_random_moments_of_a_50_job_run() {
    let seed: u64 = std::env::var("EXECUTIONER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234);
    let kills: usize = if std::env::var_os("EXECUTIONER_LONG_TESTS").is_some() {
        60
    } else {
        20
    };
    let mut rng = seed;
    let ws = Workspace::new();
    let mark = marker("crash-random");
    let mut controller = Running::start(&ws, &[]);
    ws.write(
        "manifests/crashy.yaml",
        &ledger_manifest("crashy", 50, &mark, "0.05"),
    );
    let mut done_kills = 0;
    for _ in 0..kills {
        let delay = Duration::from_millis(20 + xorshift(&mut rng) % 150);
        std::thread::sleep(delay);
        controller.kill9();
        done_kills += 1;
        controller = Running::start(&ws, &[]);
        let finished =
            common::status(&ws, "crashy").is_some_and(|s| s["status"]["phase"] == "Succeeded");
        if finished {
            break;
        }
    }
    assert!(
        done_kills >= 5,
        "the run finished before enough crashes ({done_kills})"
    );
    check_after_recovery(&ws, "crashy", 50, &mark, false);
    drop(controller);
}

//! Reliability under load and hostile input (issue 7): many parallel jobs, concurrency limits,
//! stop signals, a flood of manifests, and hostile names and symlinks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Running, Workspace, json, manifest, marker, run_count, text, wait_no_marker, wait_until,
};

#[test]
fn a_thousand_parallel_jobs_without_running_out_of_descriptors() {
    let ws = Workspace::new();
    let mut jobs = String::new();
    for i in 0..1000 {
        jobs.push_str(&format!("    - {{id: j{i}, command: \"sleep 1\"}}\n"));
    }
    ws.write(
        "wide.yaml",
        &manifest("wide", "  maxParallel: 1000\n", &jobs),
    );
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path()).args([
        "--state-dir",
        ws.state_dir().to_str().unwrap(),
        "-q",
        "run",
        "wide.yaml",
        "--workers",
        "1000",
        "-o",
        "json",
    ]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(240));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(run["phase"], "Succeeded");
    assert!(!text(&out.stderr).contains("Too many open files"));
}

#[test]
fn max_parallel_is_never_exceeded() {
    let ws = Workspace::new();
    let mut jobs = String::new();
    for i in 0..40 {
        jobs.push_str(&format!(
            "    - {{id: j{i}, command: \"echo +1 $(date +%s%N) >> ../events; sleep 0.2; echo -1 $(date +%s%N) >> ../events\"}}\n"
        ));
    }
    ws.write(
        "w/p.yaml",
        &manifest("limited", "  maxParallel: 8\n", &jobs),
    );
    let out = ws.run(&["run", "w/p.yaml", "--workers", "32"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events = std::fs::read_to_string(ws.path().join("events")).unwrap();
    let mut points: Vec<(u128, i32)> = events
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            let delta: i32 = p.next().unwrap().parse().unwrap();
            let at: u128 = p.next().unwrap().parse().unwrap();
            (at, delta)
        })
        .collect();
    // Ends before starts at the same instant, so touching intervals do not count as overlap.
    points.sort_by_key(|(at, d)| (*at, *d));
    let (mut now, mut peak) = (0, 0);
    for (_, d) in points {
        now += d;
        peak = peak.max(now);
    }
    assert!(peak <= 8, "{peak} jobs ran at once");
    assert!(peak >= 6, "the limit was not used ({peak})");
}

fn stop_fixture(ws: &Workspace, mark: &str, grace: &str, job: &str) -> Running {
    let (key, value) = mark.split_once('=').unwrap();
    ws.write(
        "executioner.toml",
        &format!("shutdown_grace = \"{grace}\"\n"),
    );
    let c = Running::start(ws, &[]);
    ws.write(
        "manifests/stoppable.yaml",
        &manifest(
            "stoppable",
            &format!("  env:\n    {key}: \"{value}\"\n"),
            &format!("    - {{id: a, command: \"{job}\"}}\n    - {{id: b, command: \"{job}\"}}\n"),
        ),
    );
    wait_until(Duration::from_secs(20), || {
        common::processes_with_marker(mark).len() >= 4
    });
    c
}

#[test]
fn sigterm_reaches_every_job_group_promptly() {
    let ws = Workspace::new();
    let mark = marker("stop-term");
    let mut c = stop_fixture(
        &ws,
        &mark,
        "10s",
        "trap 'echo term >> ../terms; exit 0' TERM; sleep 100 & wait",
    );
    let start = Instant::now();
    assert_eq!(c.stop(), Some(130));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let terms = std::fs::read_to_string(ws.path().join("terms")).unwrap_or_default();
    assert_eq!(terms.lines().count(), 2, "{terms}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
    // A stopped controller interrupts its run (the next one continues it); it cancels nothing.
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(run["phase"], "Interrupted", "{run}");
    for job in run["jobs"].as_array().unwrap() {
        assert_eq!(job["phase"], "Interrupted", "{run}");
        assert_eq!(job["reason"], "ControllerStopped", "{run}");
    }
}

#[test]
fn sigkill_follows_the_grace_period() {
    let ws = Workspace::new();
    let mark = marker("stop-grace");
    let mut c = stop_fixture(
        &ws,
        &mark,
        "1s",
        "trap '' TERM; sleep 100 & sleep 100; wait",
    );
    let start = Instant::now();
    assert_eq!(c.stop(), Some(130));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

#[test]
fn a_second_signal_kills_at_once() {
    let ws = Workspace::new();
    let mark = marker("stop-twice");
    let c = stop_fixture(
        &ws,
        &mark,
        "60s",
        "trap '' TERM; sleep 100 & sleep 100; wait",
    );
    let pid = nix::unistd::Pid::from_raw(c.pid() as i32);
    let start = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut c = c;
    let status = c.child.take().unwrap().wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

#[test]
fn two_thousand_manifests_at_once_are_all_reconciled() {
    let ws = Workspace::new();
    let n = 2000;
    // Prepared outside, then moved in at once (rename is atomic per file).
    let staging = ws.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for i in 0..n {
        std::fs::write(
            staging.join(format!("p{i}.yaml")),
            manifest(&format!("p{i}"), "", "    - {id: a, command: [\"true\"]}\n"),
        )
        .unwrap();
    }
    ws.write("executioner.toml", "workers = 8\n");
    let c = Running::start(&ws, &[]);
    for i in 0..n {
        std::fs::rename(
            staging.join(format!("p{i}.yaml")),
            ws.path().join(format!("manifests/p{i}.yaml")),
        )
        .unwrap();
    }
    let start = Instant::now();
    wait_until(Duration::from_secs(300), || {
        let out = ws.run(&["runs", "--limit", "5000", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v.as_array()
                    .map(|a| a.iter().filter(|r| r["phase"] == "Succeeded").count())
            })
            .unwrap_or(0)
            == n
    });
    let took = start.elapsed();
    // Bounded memory: the controller's resident set after all of it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 200 * 1024, "controller peak RSS {rss_kib} KiB");
    assert_eq!(run_count(&ws, "p1999"), 1);
    eprintln!(
        "{n} manifests reconciled in {took:?}, peak RSS {} MiB",
        rss_kib / 1024
    );
}

#[test]
fn hostile_ids_and_symlinks_are_refused() {
    let ws = Workspace::new();
    for id in [
        "../../etc/x",
        "/abs",
        "..",
        "a\\u0000b",
        "a\\nb",
        &"x".repeat(300),
        "caf\\u00e9",
        "\\u202eexe.txt",
    ] {
        ws.write(
            "h.yaml",
            &manifest(
                "hostile",
                "",
                &format!("    - {{id: \"{id}\", command: \"touch pwned\"}}\n"),
            ),
        );
        let out = ws.run(&["run", "h.yaml"]);
        assert_eq!(out.status.code(), Some(1), "{id}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("h.yaml:7:"),
            "{id}: {}",
            text(&out.stderr)
        );
    }
    assert!(!ws.path().join("pwned").exists());
    assert!(
        !ws.state_dir().join("logs").exists(),
        "nothing is written for an invalid manifest"
    );

    // A symlinked manifest is not followed by the controller.
    let outside = ws.write(
        "outside/evil.yaml",
        &manifest(
            "evil",
            "",
            "    - {id: a, command: \"touch ../pwned-by-symlink\"}\n",
        ),
    );
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    std::os::unix::fs::symlink(&outside, ws.path().join("manifests/evil.yaml")).unwrap();
    ws.write(
        "manifests/fine.yaml",
        &manifest("fine", "", "    - {id: a, command: \"true\"}\n"),
    );
    let out = ws.run_limited(
        &["controller", "--manifests", "manifests", "--once"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!ws.path().join("pwned-by-symlink").exists());
    assert_eq!(run_count(&ws, "evil"), 0);

    // A pre-planted symlink at a status-file path is replaced, not written through.
    let target = ws.write("victim.txt", "precious");
    std::os::unix::fs::symlink(&target, ws.path().join("manifests/.status/fine2.yaml")).unwrap();
    ws.write(
        "manifests/fine2.yaml",
        &manifest("fine2", "", "    - {id: a, command: \"true\"}\n"),
    );
    let out = ws.run_limited(
        &["controller", "--manifests", "manifests", "--once"],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

    // A pre-planted symlink at a log path makes the attempt fail instead of writing through it.
    ws.write(
        "p.yaml",
        &manifest("logsym", "", "    - {id: a, command: \"echo hi\"}\n"),
    );
    let runs = json(&ws.run(&["runs", "--limit", "1000", "-o", "json"]));
    let next = runs.as_array().unwrap().len() + 1;
    std::fs::create_dir_all(ws.state_dir().join(format!("logs/logsym/{next}"))).unwrap();
    std::os::unix::fs::symlink(
        &target,
        ws.state_dir().join(format!("logs/logsym/{next}/a.log")),
    )
    .unwrap();
    let out = ws.run(&["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    let _ = Stdio::null();
}

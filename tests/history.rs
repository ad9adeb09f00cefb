//! Integration tests of the run history (issue 4): resume, mark-success, concurrency, recovery
//! after kill -9, corrupt databases, and the JSON shapes — with a real database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Workspace, job_state, json, manifest, marker, text, wait_no_marker};

const DIAMOND: &str = "    - {id: a, command: \"echo a >> ran\"}\n    - {id: b, command: \"echo b >> ran; test -e fixed\", dependencies: [a]}\n    - {id: c, command: \"echo c >> ran\", dependencies: [b]}\n    - {id: d, command: \"echo d >> ran; test -e fixed\"}\n    - {id: e, command: \"echo e >> ran\"}\n";

fn ran(ws: &Workspace) -> Vec<String> {
    let list = std::fs::read_to_string(ws.path().join("ran")).unwrap_or_default();
    let _ = std::fs::remove_file(ws.path().join("ran"));
    list.lines().map(str::to_owned).collect()
}

#[test]
fn resume_reruns_what_did_not_succeed_on_the_same_run_id() {
    let ws = Workspace::new();
    ws.write("p.yaml", &manifest("resumable", "", DIAMOND));
    let out = ws.run(&["run", "p.yaml", "--workers", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(ran(&ws), ["a", "b", "d", "e"]);
    std::fs::write(ws.path().join("fixed"), "").unwrap();

    // Plain resume: failed (b, d) and skipped (c) run again; a and e keep their success.
    let out = ws.run(&["resume", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(run["id"], 1);
    assert_eq!(run["rounds"], 2);
    assert_eq!(run["phase"], "Succeeded");
    let mut again = ran(&ws);
    again.sort();
    assert_eq!(again, ["b", "c", "d"]);

    // A succeeded run: nothing to do, exit 0.
    let out = ws.run(&["resume", "1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("already succeeded"));
    assert!(ran(&ws).is_empty());

    // An unknown run: exit 2, and no run is created under that id.
    let out = ws.run(&["resume", "999"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ws.run(&["runs", "-o", "json"]);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);
}

#[test]
fn resume_failed_only_reruns_the_failed_jobs_and_what_they_blocked() {
    let ws = Workspace::new();
    ws.write("p.yaml", &manifest("failed-only", "", DIAMOND));
    assert_eq!(
        ws.run(&["run", "p.yaml", "--workers", "1"]).status.code(),
        Some(1)
    );
    ran(&ws);
    // Not fixed yet: b and d fail again, c is skipped again, and the run stays Failed.
    let out = ws.run(&["resume", "1", "--failed-only", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(json(&out)["phase"], "Failed");
    let c = job_state(&json(&out), "c");
    assert_eq!((c.0.as_str(), c.1.as_str()), ("Skipped", "UpstreamFailed"));
    ran(&ws);
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    let out = ws.run(&[
        "run",
        "p.yaml",
        "--resume-from",
        "1",
        "--failed-only",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = json(&out);
    let mut again = ran(&ws);
    again.sort();
    // c was skipped because b failed: it is evaluated afresh and runs; a and e keep their success.
    assert_eq!(again, ["b", "c", "d"]);
    assert_eq!(job_state(&run, "c").0, "Succeeded");
    assert_eq!(run["phase"], "Succeeded");
    assert_eq!(run["rounds"], 3);
}

#[test]
fn resume_failed_only_keeps_jobs_skipped_by_the_user() {
    let ws = Workspace::new();
    ws.write("p.yaml", &manifest("keep-skips", "", DIAMOND));
    let out = ws.run(&["run", "p.yaml", "--workers", "1", "--skip", "e"]);
    assert_eq!(out.status.code(), Some(1));
    ran(&ws);
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    let out = ws.run(&["resume", "1", "--failed-only", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut again = ran(&ws);
    again.sort();
    assert_eq!(again, ["b", "c", "d"]);
    let run = json(&out);
    let e = job_state(&run, "e");
    assert_eq!((e.0.as_str(), e.1.as_str()), ("Skipped", "SkippedByUser"));
    assert_eq!(run["phase"], "Succeeded");
}

#[test]
fn resume_from_lists_differences_with_the_pinned_spec() {
    let ws = Workspace::new();
    ws.write("p.yaml", &manifest("drift", "", DIAMOND));
    assert_eq!(
        ws.run(&["run", "p.yaml", "--workers", "1"]).status.code(),
        Some(1)
    );
    ran(&ws);
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    let changed = DIAMOND.replace("echo e >> ran", "echo E >> ran")
        + "    - {id: f, command: \"echo f >> ran\"}\n";
    ws.write("p.yaml", &manifest("drift", "", &changed));
    let out = ws.run(&["run", "p.yaml", "--resume-from", "1"]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("~ job e (changed)"), "{stderr}");
    assert!(stderr.contains("+ job f (new)"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // The new job ran (with the failed ones and what they blocked).
    let mut again = ran(&ws);
    again.sort();
    assert_eq!(again, ["b", "c", "d", "f"]);
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(job_state(&run, "f").0, "Succeeded");
    assert_eq!(run["phase"], "Succeeded");

    // A job removed from the manifest leaves the run, which no longer waits for it.
    let fewer = changed.replace("    - {id: f, command: \"echo f >> ran\"}\n", "")
        + "    - {id: g, command: \"exit 1\"}\n";
    ws.write("p.yaml", &manifest("drift", "", &fewer));
    let out = ws.run(&["run", "p.yaml", "--resume-from", "1", "-o", "json"]);
    assert!(
        text(&out.stderr).contains("- job f (removed)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
    let run = json(&out);
    let ids: Vec<&str> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "g"]);
    ws.write(
        "p.yaml",
        &manifest(
            "drift",
            "",
            &changed.replace("    - {id: f, command: \"echo f >> ran\"}\n", ""),
        ),
    );
    let out = ws.run(&["run", "p.yaml", "--resume-from", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json(&out)["phase"], "Succeeded");

    // A manifest of another pipeline is refused, naming the run's pipeline.
    ws.write("q.yaml", &manifest("other", "", DIAMOND));
    let out = ws.run(&["run", "q.yaml", "--resume-from", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("pipeline drift"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn mark_success_then_resume_runs_exactly_the_downstream_jobs() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "marking",
            "",
            "    - {id: a, command: \"echo a >> ran\"}\n    - {id: b, command: \"echo b >> ran; exit 1\", dependencies: [a]}\n    - {id: c, command: \"echo c >> ran\", dependencies: [b]}\n    - {id: d, command: \"echo d >> ran\", dependencies: [c]}\n    - {id: e, command: \"echo e >> ran\"}\n",
        ),
    );
    assert_eq!(
        ws.run(&["run", "p.yaml", "--workers", "1"]).status.code(),
        Some(1)
    );
    ran(&ws);
    let out = ws.run(&[
        "mark-success",
        "1",
        "b",
        "--reason",
        "fixed by hand in the warehouse",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // c and d were skipped because of b: the run is still Failed until they run.
    assert_eq!(
        json(&ws.run(&["runs", "show", "1", "-o", "json"]))["phase"],
        "Failed"
    );
    let out = ws.run(&["resume", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(ran(&ws), ["c", "d"]);
    assert_eq!(json(&out)["phase"], "Succeeded");
    let run = json(&out);
    assert_eq!(job_state(&run, "b").1, "MarkedSuccess");
    // The audit event, with its reason.
    let out = ws.run(&["runs", "show", "1"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("MarkedSuccess") && shown.contains("fixed by hand in the warehouse"),
        "{shown}"
    );
    // Unknown job: usage error.
    assert_eq!(ws.run(&["mark-success", "1", "zzz"]).status.code(), Some(2));
}

#[test]
fn marking_the_last_failed_job_turns_the_run_succeeded() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "greening",
            "",
            "    - {id: a, command: \"true\"}\n    - {id: b, command: \"exit 3\", dependencies: [a]}\n    - {id: c, command: \"exit 4\"}\n",
        ),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(1));
    // One of two failures marked: still Failed.
    let out = ws.run(&["mark-success", "1", "b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("still Failed"),
        "{}",
        text(&out.stdout)
    );
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(run["phase"], "Failed");
    // The last one: the run is Succeeded, with the reason saying why.
    let out = ws.run(&["mark-success", "1", "c", "--reason", "known flake"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("now Succeeded"),
        "{}",
        text(&out.stdout)
    );
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(run["phase"], "Succeeded", "{run}");
    assert_eq!(run["reason"], "MarkedSucceeded", "{run}");
    let listed = json(&ws.run(&["runs", "-o", "json"]));
    assert_eq!(listed[0]["phase"], "Succeeded");
    // Nothing is left to resume.
    let out = ws.run(&["resume", "1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("already succeeded"));
}

#[test]
fn concurrent_runs_get_distinct_ids() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        // Allow: the default (Forbid) refuses a second run of a pipeline while one runs.
        &manifest("concurrent", "  concurrencyPolicy: Allow\n", "    - {id: a, command: \"true\"}\n    - {id: b, command: \"true\", dependencies: [a]}\n    - {id: c, command: \"true\", dependencies: [a]}\n"),
    );
    let children: Vec<_> = (0..20)
        .map(|_| {
            std::process::Command::new(common::bin())
                .current_dir(ws.path())
                .args([
                    "--state-dir",
                    ws.state_dir().to_str().unwrap(),
                    "run",
                    "p.yaml",
                    "-o",
                    "json",
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("locked"), "{stderr}");
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        ids.push(json(&out)["id"].as_i64().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let out = ws.run(&["runs", "--limit", "100", "-o", "json"]);
    let runs = json(&out);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|r| r["phase"] == "Succeeded"));
}

#[test]
fn kill_9_then_resume_recovers_without_duplicates_or_orphans() {
    let ws = Workspace::new();
    let mark = marker("kill9");
    // Each attempt takes a per-job flock for its whole life (children inherit it): a second
    // attempt of the same job alive at the same time cannot get it and writes CONFLICT.
    let jobs = common::ledger_jobs(20, "", "0.4");
    ws.write("p.yaml", &manifest("crashy", "", &jobs));
    let mut child = std::process::Command::new(common::bin())
        .current_dir(ws.path())
        .args([
            "--state-dir",
            ws.state_dir().to_str().unwrap(),
            "run",
            "p.yaml",
            "--workers",
            "4",
            "--env",
            &mark,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Let some jobs finish and others run, then kill -9.
    let ledger = ws.path().join("ledger");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        if text.lines().filter(|l| l.starts_with("end,")).count() >= 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "jobs did not progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let out = ws.run(&["resume", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(run["phase"], "Succeeded");
    assert!(
        wait_no_marker(&mark, Duration::from_secs(5)).is_empty(),
        "processes of the first run survived"
    );

    let ledger = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        !ledger.contains("CONFLICT"),
        "two attempts of a job were alive at once:\n{ledger}"
    );
    // Every job ended; every attempt started at most once and ended at most once.
    let mut seen = std::collections::HashSet::new();
    for line in ledger.lines() {
        assert!(seen.insert(line.to_owned()), "duplicate ledger line {line}");
    }
    for i in 0..20 {
        assert!(
            ledger.contains(&format!("end,j{i},")),
            "j{i} never ended:\n{ledger}"
        );
    }
    // Interrupted attempts are recorded Lost.
    let out = ws.run(&["runs", "show", "1"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("Lost"), "{shown}");
}

#[test]
fn corrupt_databases_are_refused_and_left_untouched() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("corrupt", "", "    - {id: a, command: \"true\"}\n"),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(0));
    let db = ws.state_dir().join("executioner.db");
    let good = std::fs::read(&db).unwrap();
    let _ = std::fs::remove_file(ws.state_dir().join("executioner.db-wal"));
    let _ = std::fs::remove_file(ws.state_dir().join("executioner.db-shm"));
    let mut zeroed = good.clone();
    zeroed[..100].fill(0);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for (name, bytes) in [
        ("truncated", good[..1000.min(good.len())].to_vec()),
        ("zeroed", zeroed),
        ("garbage", garbage),
    ] {
        std::fs::write(&db, &bytes).unwrap();
        for args in [
            vec!["run", "p.yaml"],
            vec!["runs"],
            vec!["runs", "show", "1"],
        ] {
            let out = ws.run(&args);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{name} {args:?}: {}",
                text(&out.stderr)
            );
            assert!(!text(&out.stderr).is_empty());
        }
        assert_eq!(std::fs::read(&db).unwrap(), bytes, "{name}: file changed");
    }
}

#[test]
fn json_shapes_of_runs_and_runs_show() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "shapes",
            "",
            "    - {id: a, command: \"true\"}\n    - {id: b, command: exit 2}\n",
        ),
    );
    ws.run(&["run", "p.yaml"]);
    ws.run(&["run", "p.yaml"]);
    let runs = json(&ws.run(&["runs", "-o", "json"]));
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["id"], 2, "newest first");
    for r in runs {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "id",
                "pipeline",
                "generation",
                "phase",
                "reason",
                "startedAt",
                "finishedAt",
                "rounds",
                "roundList"
            ]
        );
    }
    let limited = json(&ws.run(&["runs", "--limit", "1", "-o", "json"]));
    assert_eq!(limited.as_array().unwrap().len(), 1);
    assert_eq!(limited[0]["id"], 2, "--limit keeps the newest");
    let show = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    let keys: Vec<&str> = show
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "pipeline",
            "generation",
            "phase",
            "reason",
            "startedAt",
            "finishedAt",
            "rounds",
            "roundList",
            "jobs",
            "params"
        ]
    );
    let job = &show["jobs"][1];
    let keys: Vec<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "phase",
            "reason",
            "attempts",
            "exitCode",
            "signal",
            "startedAt",
            "finishedAt",
            "log",
            "attemptList",
            "outputs"
        ]
    );
    let attempt = &job["attemptList"][0];
    let keys: Vec<&str> = attempt
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "attempt",
            "round",
            "phase",
            "reason",
            "exitCode",
            "signal",
            "message",
            "startedAt",
            "finishedAt",
            "cpuUserSeconds",
            "cpuSystemSeconds",
            "maxRssBytes",
            "maxRssUpperBound",
            "worker"
        ]
    );
    assert_eq!(attempt["exitCode"], 2);
    assert_eq!(attempt["worker"], serde_json::Value::Null);
    assert!(attempt["cpuUserSeconds"].is_f64(), "{attempt}");
    assert_eq!(job["exitCode"], 2);
    assert_eq!(job["phase"], "Failed");
    assert!(std::path::Path::new(job["log"].as_str().unwrap()).exists());
    // The original's flags map onto the same commands.
    let out = ws.run(&["--list-runs", "shapes"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("shapes"));
    let out = ws.run(&["--show-run", "1"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn state_folder_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("private", "", "    - {id: a, command: \"true\"}\n"),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(0));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ws.state_dir()), 0o700);
    assert_eq!(mode(&ws.state_dir().join("executioner.db")), 0o600);
    assert_eq!(mode(&ws.state_dir().join("logs/private/1")), 0o700);
    assert_eq!(mode(&ws.state_dir().join("logs/private/1/a.log")), 0o600);
    assert_eq!(mode(&ws.state_dir().join("logs/private/1/run.log")), 0o600);
}

/// A job that runs longer than a moment has its process on record while it runs (pid, group and
/// start time, which recovery needs to find it after a crash); a short job has its pid recorded
/// with its end.
#[test]
fn a_running_job_has_its_process_on_record() {
    use executioner::store::{Durability, Store};
    let ws = Workspace::new();
    let mark = marker("onrecord");
    ws.write(
        "r.yaml",
        &manifest(
            "onrecord",
            "",
            "    - {id: quick, command: \"true\"}\n    - {id: slow, command: \"sleep 30\", dependencies: [quick]}\n",
        ),
    );
    let mut child = ws.spawn(&["run", "r.yaml", "--env", &mark]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let attempts = |job: &str| {
        runtime.block_on(async {
            let Ok(store) = Store::open(&ws.state_dir(), Durability::Normal).await else {
                return None;
            };
            let attempts = store.attempts(1.into()).await.ok()?;
            store.close().await;
            attempts.into_iter().find(|a| a.job_id == job)
        })
    };
    let start = Instant::now();
    let slow = loop {
        if let Some(a) = attempts("slow")
            && a.pid.is_some()
            && a.process_start_time.is_some()
        {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the slow job's process was never recorded"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (pid, start_time) = (slow.pid.unwrap(), slow.process_start_time.unwrap());
    assert_eq!(slow.pgid, Some(pid), "the job leads its own group");
    let pid = i32::try_from(pid).unwrap();
    assert!(
        common::processes_with_marker(&mark).contains(&pid),
        "the recorded pid is the job's process"
    );
    assert!(executioner::process::is_same_process(
        pid,
        u64::try_from(start_time).unwrap()
    ));
    let quick = attempts("quick").expect("quick attempt");
    assert!(
        quick.pid.is_some(),
        "a short job's pid is recorded with its end"
    );
    assert!(quick.finished_at.is_some());

    common::sigterm(&child);
    assert_eq!(child.wait().unwrap().code(), Some(130));
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

#[test]
fn logs_say_why_a_job_has_none_and_every_attempt_ends_with_a_marker() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "logs",
            "",
            "    - {id: a, command: \"echo try; exit 3\", retry: {limit: 1}}\n    - {id: b, command: \"echo b\", dependencies: [a]}\n    - {id: c, command: \"echo fine\"}\n",
        ),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(1));
    let out = ws.run(&["logs", "1", "b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("job b of run 1 was Skipped (UpstreamFailed): it has no log"),
        "{}",
        text(&out.stderr)
    );
    let log = text(&ws.run(&["logs", "1", "a"]).stdout);
    let ends: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("==> executioner: attempt "))
        .collect();
    assert_eq!(ends.len(), 2, "{log}");
    assert!(
        ends[0].starts_with("==> executioner: attempt 1 failed (ExitCode): exit code 3, after "),
        "{log}"
    );
    assert!(
        ends[1].starts_with("==> executioner: attempt 2 failed (ExitCode): exit code 3, after "),
        "{log}"
    );
    let log = text(&ws.run(&["logs", "1", "c"]).stdout);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("==> executioner: attempt 1 succeeded: exit code 0, after "),
        "{log}"
    );
}

/// Issue 13, defect 10: each job's `signal` and `attemptList` in `runs show -o json`; the job's
/// `attempts` counts every attempt of the run (all rounds) in the JSON and the table alike.
#[test]
fn runs_show_lists_attempts_and_counts_them_across_rounds() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "attempts",
            "",
            "    - {id: flaky, command: \"test -e fixed || exit 4\", retry: {limit: 1, delay: 0s}}\n    - {id: killed, command: \"test -e fixed || kill -9 $$\"}\n",
        ),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(1));
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    let out = ws.run(&["resume", "1", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let resumed = json(&out);
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(
        resumed, run,
        "run -o json and runs show -o json print the same object"
    );
    let job = |id: &str| {
        run["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap()
    };
    let flaky = job("flaky");
    assert_eq!(flaky["attempts"], 3, "{flaky}");
    let list = flaky["attemptList"].as_array().unwrap();
    let numbered: Vec<(i64, i64, &str)> = list
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["round"].as_i64().unwrap(),
                a["phase"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        numbered,
        [(1, 1, "Failed"), (2, 1, "Failed"), (3, 2, "Succeeded")]
    );
    assert_eq!(list[0]["exitCode"], 4);
    let killed = job("killed");
    assert_eq!(killed["attempts"], 2);
    assert_eq!(killed["attemptList"][0]["signal"], 9, "{killed}");
    assert_eq!(
        killed["attemptList"][0]["exitCode"],
        serde_json::Value::Null
    );
    assert_eq!(
        killed["signal"],
        serde_json::Value::Null,
        "the last attempt exited 0"
    );

    let table = text(&ws.run(&["runs", "show", "1"]).stdout);
    let row = table
        .lines()
        .find(|l| l.contains(" flaky ") && l.contains("Succeeded"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.contains(&"3"),
        "the table counts 3 attempts too: {row}"
    );
}

/// Issue 13, defect 10: the job's signal is shown when its last attempt was killed.
#[test]
fn a_killed_jobs_signal_is_on_its_row() {
    let ws = Workspace::new();
    ws.write(
        "k.yaml",
        &manifest("killed", "", "    - {id: k, command: \"kill -9 $$\"}\n"),
    );
    assert_eq!(ws.run(&["run", "k.yaml"]).status.code(), Some(1));
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(run["jobs"][0]["signal"], 9, "{run}");
}

/// Issue 13, defect 10: a run's duration is the sum of its rounds' spans, not the time from its
/// first start to its last end; each round is shown.
#[test]
fn a_runs_duration_leaves_out_the_time_between_rounds() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("rounds", "", "    - {id: a, command: \"test -e fixed\"}\n"),
    );
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(1));
    // The idle time between the rounds.
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(ws.path().join("fixed"), "").unwrap();
    assert_eq!(ws.run(&["resume", "1"]).status.code(), Some(0));
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    let rounds = run["roundList"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{run}");
    for (i, r) in rounds.iter().enumerate() {
        assert_eq!(r["round"], i as i64 + 1);
        assert!(
            r["startedAt"].is_string() && r["finishedAt"].is_string(),
            "{r}"
        );
    }
    let table = text(&ws.run(&["runs", "show", "1"]).stdout);
    let took = table
        .lines()
        .next()
        .and_then(|l| l.split("took ").nth(1))
        .unwrap_or_else(|| panic!("{table}"));
    let seconds: f64 = took
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{took}"));
    assert!(seconds < 2.0, "the idle time was counted: {table}");
    assert!(
        table.contains("round 1:") && table.contains("round 2:"),
        "{table}"
    );
    let list = text(&ws.run(&["runs"]).stdout);
    let row = list.lines().find(|l| l.contains(" rounds ")).unwrap();
    let duration = row.split_whitespace().rfind(|c| *c != "│").unwrap();
    let seconds: f64 = duration
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{row}"));
    assert!(seconds < 2.0, "the idle time was counted: {list}");
}

/// Issue 13, defect 19: a run whose executioner is gone (kill -9) is shown Interrupted, with the
/// command that continues it; the database keeps it Running for `resume`.
#[test]
fn a_run_whose_process_is_gone_is_shown_interrupted() {
    let ws = Workspace::new();
    let mark = marker("gone");
    ws.write(
        "g.yaml",
        &manifest("gone", "", "    - {id: long, command: \"sleep 30\"}\n"),
    );
    let mut child = ws.spawn(&["run", "g.yaml", "--env", &mark]);
    let start = Instant::now();
    while common::processes_with_marker(&mark).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the job never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = json(&ws.run(&["runs", "-o", "json"]));
    assert_eq!(
        live[0]["phase"], "Running",
        "a live run is not interrupted: {live}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    for pid in common::processes_with_marker(&mark) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let list = json(&ws.run(&["runs", "-o", "json"]));
    assert_eq!(list[0]["phase"], "Interrupted", "{list}");
    let table = text(&ws.run(&["runs"]).stdout);
    assert!(table.contains("Interrupted"), "{table}");
    assert!(table.contains("executioner resume 1"), "{table}");
    let show = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(show["phase"], "Interrupted", "{show}");
    let shown = text(&ws.run(&["runs", "show", "1"]).stdout);
    assert!(shown.contains("Interrupted"), "{shown}");
    assert!(shown.contains("executioner resume 1"), "{shown}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

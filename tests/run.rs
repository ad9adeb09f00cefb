//! Integration tests of `executioner run` (issue 3): real child processes, a real SQLite file.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Workspace, job_state, json, manifest, marker, text, wait_no_marker};

fn run_json(
    ws: &Workspace,
    file: &str,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["run", file, "-o", "json"];
    args.extend_from_slice(extra);
    let out = ws.run(&args);
    let stderr = text(&out.stderr);
    (out.status.code(), json(&out), stderr)
}

#[test]
fn failure_propagation_and_reasons() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "propagation",
            "",
            "    - {id: a, command: exit 3}\n    - {id: b, command: \"true\", dependencies: [a]}\n    - {id: c, command: \"true\", dependencies: [b]}\n    - {id: d, command: \"true\"}\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "p.yaml", &["--workers", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(run["phase"], "Failed");
    assert_eq!(job_state(&run, "a").0, "Failed");
    assert_eq!(job_state(&run, "a").1, "ExitCode");
    assert_eq!(run["jobs"][0]["exitCode"], 3);
    assert_eq!(
        job_state(&run, "b"),
        ("Skipped".into(), "UpstreamFailed".into(), 0)
    );
    assert_eq!(
        job_state(&run, "c"),
        ("Skipped".into(), "UpstreamFailed".into(), 0)
    );
    // Independent branches keep running after a failure.
    assert_eq!(job_state(&run, "d").0, "Succeeded");
    // Logs are made ahead of time for jobs that may run; a skipped job is left without one.
    let logs = ws.state_dir().join("logs/propagation/1");
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.log", "d.log", "run.log"]);
}

#[test]
fn fail_fast_and_continue_on_error_flags() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "failfast",
            "",
            "    - {id: a, command: exit 1}\n    - {id: b, command: \"true\"}\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "p.yaml", &["--workers", "1", "--fail-fast"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        job_state(&run, "b"),
        ("Skipped".into(), "FailFast".into(), 0)
    );
    // The original's format converts to failFast: true; --continue-on-error turns it off, and
    // the run still fails (exit 1) because a job failed.
    ws.write(
        "legacy.json",
        r#"{"working_dir": ".", "jobs": [{"id": "a", "command": "exit 1"}, {"id": "b", "command": "true"}]}"#,
    );
    let (code, run, _) = run_json(&ws, "legacy.json", &["--continue-on-error"]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "b").0, "Succeeded");
    let (code, run, _) = run_json(&ws, "legacy.json", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "b").1, "FailFast");
}

#[test]
fn trigger_rules_and_continue_on_error() {
    let ws = Workspace::new();
    let example = common::repo().join("examples/triggers.yaml");
    let (code, run, _) = run_json(&ws, example.to_str().unwrap(), &["--workers", "2"]);
    assert_eq!(code, Some(1), "broken fails the run");
    assert_eq!(job_state(&run, "ok").0, "Succeeded");
    assert_eq!(job_state(&run, "broken").0, "Failed");
    assert_eq!(job_state(&run, "tolerated").0, "Failed");
    assert_eq!(job_state(&run, "after-tolerated").0, "Succeeded");
    assert_eq!(
        job_state(&run, "needs-all"),
        ("Skipped".into(), "UpstreamFailed".into(), 0)
    );
    assert_eq!(job_state(&run, "on-failure").0, "Succeeded");
    assert_eq!(job_state(&run, "finally").0, "Succeeded");

    // Every rule against one success and one failure upstream.
    let rules = [
        ("allSucceeded", "Skipped"),
        ("allDone", "Succeeded"),
        ("allFailed", "Skipped"),
        ("anySucceeded", "Succeeded"),
        ("anyFailed", "Succeeded"),
        ("noneFailed", "Skipped"),
        ("always", "Succeeded"),
    ];
    let mut jobs = String::from(
        "    - {id: good, command: \"true\"}\n    - {id: bad, command: \"false\", continueOnError: false}\n",
    );
    for (rule, _) in rules {
        jobs.push_str(&format!(
            "    - {{id: t-{rule}, command: \"true\", dependencies: [good, bad], trigger: {rule}}}\n"
        ));
    }
    ws.write("t.yaml", &manifest("triggers-all", "", &jobs));
    let (_, run, _) = run_json(&ws, "t.yaml", &[]);
    for (rule, phase) in rules {
        assert_eq!(job_state(&run, &format!("t-{rule}")).0, phase, "{rule}");
    }
    // A failure with continueOnError alone: the run succeeds.
    ws.write(
        "c.yaml",
        &manifest("tolerant", "", "    - {id: a, command: exit 4, continueOnError: true}\n    - {id: b, command: \"true\", dependencies: [a]}\n"),
    );
    let (code, run, _) = run_json(&ws, "c.yaml", &[]);
    assert_eq!(code, Some(0));
    assert_eq!(run["phase"], "Succeeded");
    assert_eq!(job_state(&run, "b").0, "Succeeded");
}

#[test]
fn skip_counts_as_satisfied() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("skipping", "", "    - {id: a, command: \"touch a-ran\"}\n    - {id: b, command: \"touch b-ran\", dependencies: [a]}\n"),
    );
    let (code, run, _) = run_json(&ws, "p.yaml", &["--skip", "a"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        job_state(&run, "a"),
        ("Skipped".into(), "SkippedByUser".into(), 0)
    );
    assert_eq!(job_state(&run, "b").0, "Succeeded");
    assert!(!ws.path().join("a-ran").exists());
    assert!(ws.path().join("b-ran").exists());
    // Unknown ids are an error, not silently accepted.
    let out = ws.run(&["run", "p.yaml", "--skip", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn retries_with_backoff_exit_code_filter_and_deadline() {
    let ws = Workspace::new();
    // Fails twice, then succeeds; delays 200 ms then 400 ms.
    ws.write(
        "flaky.yaml",
        &manifest(
            "flaky",
            "",
            "    - id: flaky\n      command: n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; [ $n -ge 3 ]\n      retry: {limit: 3, delay: 200ms, factor: 2}\n",
        ),
    );
    let start = Instant::now();
    let (code, run, _) = run_json(&ws, "flaky.yaml", &[]);
    let elapsed = start.elapsed();
    assert_eq!(code, Some(0));
    assert_eq!(
        job_state(&run, "flaky"),
        ("Succeeded".into(), "Completed".into(), 3)
    );
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");

    // Exit 3 is not retried when only 1 is listed.
    ws.write(
        "codes.yaml",
        &manifest(
            "codes",
            "",
            "    - id: three\n      command: echo x >> tries; exit 3\n      retry: {limit: 3, onExitCodes: [1]}\n    - id: one\n      command: echo x >> tries1; exit 1\n      retry: {limit: 2, onExitCodes: [1]}\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "codes.yaml", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "three").2, 1);
    assert_eq!(
        std::fs::read_to_string(ws.path().join("tries"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    assert_eq!(job_state(&run, "one").2, 3);

    // The deadline stops retrying: delays of 1 s cannot fit three retries in 1.5 s.
    ws.write(
        "deadline.yaml",
        &manifest(
            "deadline",
            "",
            "    - id: d\n      command: exit 1\n      retry: {limit: 10, delay: 1s, deadline: 1500ms}\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "deadline.yaml", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "d").2, 2, "{run}");
}

#[test]
fn job_timeout_kills_the_whole_process_group() {
    let ws = Workspace::new();
    let mark = marker("timeout");
    ws.write(
        "t.yaml",
        &manifest(
            "timeouts",
            "",
            "    - id: slow\n      command: sleep 100 & sleep 100 & echo started; wait\n      timeout: 500ms\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "t.yaml", &["--env", &mark]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "slow").0, "Failed");
    assert_eq!(job_state(&run, "slow").1, "Timeout");
    assert!(
        wait_no_marker(&mark, Duration::from_secs(5)).is_empty(),
        "grandchildren survived"
    );
}

#[test]
fn run_timeout_stops_running_and_skips_the_rest() {
    let ws = Workspace::new();
    let mark = marker("runtimeout");
    ws.write(
        "t.yaml",
        &manifest(
            "run-timeout",
            "  timeout: 500ms\n",
            "    - {id: long, command: sleep 30}\n    - {id: after, command: \"true\", dependencies: [long]}\n",
        ),
    );
    let start = Instant::now();
    let (code, run, _) = run_json(&ws, "t.yaml", &["--env", &mark]);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(code, Some(1));
    assert_eq!(run["reason"], "RunTimeout");
    assert_eq!(job_state(&run, "long").1, "Timeout");
    assert_eq!(
        job_state(&run, "after"),
        ("Skipped".into(), "RunTimeout".into(), 0)
    );
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

#[test]
fn pre_and_post_checks() {
    let ws = Workspace::new();
    ws.write(
        "c.yaml",
        &manifest(
            "checks",
            "",
            "    - id: pre\n      command: touch pre-ran\n      preChecks: [{fileExists: {path: missing.txt}}]\n    - id: post\n      command: echo 'ORA-01555 snapshot too old'\n      postChecks: [{logNotContains: {pattern: 'ORA-[0-9]+'}}]\n    - id: good\n      command: echo all good > out.txt; echo done\n      postChecks:\n        - fileExists: {path: out.txt, minSize: 3}\n        - logContains: {pattern: '^done$'}\n        - command: [test, -s, out.txt]\n",
        ),
    );
    let (code, run, _) = run_json(&ws, "c.yaml", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(job_state(&run, "pre").1, "PreCheckFailed");
    assert!(
        !ws.path().join("pre-ran").exists(),
        "the command ran despite a failed pre-check"
    );
    assert_eq!(job_state(&run, "post").1, "PostCheckFailed");
    assert_eq!(job_state(&run, "good").0, "Succeeded");

    // A sensor: the file arrives while the pre-check waits.
    let example = common::repo().join("examples/checks.yaml");
    std::fs::copy(&example, ws.path().join("sensor.yaml")).unwrap();
    let (code, run, stderr) = run_json(&ws, "sensor.yaml", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(job_state(&run, "consume").0, "Succeeded");
}

#[test]
fn environment_layers_interpolation_and_inherit_modes() {
    let ws = Workspace::new();
    let example = common::repo().join("examples/environment.yaml");
    let (code, _, _) = run_json(&ws, example.to_str().unwrap(), &["--env", "GREETING=hi"]);
    assert_eq!(code, Some(0));
    let out = ws.run(&["logs", "1", "show"]);
    let log = text(&out.stdout);
    assert!(log.contains("hi /srv/etl/out/show $5"), "{log}");
    let out = ws.run(&["logs", "1", "argv"]);
    assert!(text(&out.stdout).contains("/srv/etl|hi"));

    // inheritEnv modes: all / none / minimal / list.
    for (mode, visible) in [
        ("all", true),
        ("none", false),
        ("minimal", false),
        ("[SECRET_PROBE]", true),
    ] {
        ws.write(
            "inherit.yaml",
            &manifest(
                "inherit",
                &format!("  inheritEnv: {mode}\n"),
                "    - id: probe\n      command: [/usr/bin/env]\n",
            ),
        );
        let mut cmd = std::process::Command::new(common::bin());
        cmd.current_dir(ws.path())
            .env("SECRET_PROBE", "probe-value")
            .args([
                "--state-dir",
                ws.state_dir().to_str().unwrap(),
                "run",
                "inherit.yaml",
                "-o",
                "json",
            ]);
        let out = common::run_with_timeout(cmd, Duration::from_secs(60));
        let run = json(&out);
        let id = run["id"].as_i64().unwrap().to_string();
        let log = text(&ws.run(&["logs", &id, "probe"]).stdout);
        assert_eq!(
            log.contains("SECRET_PROBE=probe-value"),
            visible,
            "{mode}: {log}"
        );
        assert!(log.contains("EXECUTIONER_JOB_ID=probe"), "{mode}");
        assert_eq!(
            log.contains("PATH="),
            mode != "none" && mode != "[SECRET_PROBE]",
            "{mode}: {log}"
        );
    }
}

#[test]
fn injection_payloads_in_values_never_execute() {
    let ws = Workspace::new();
    let payloads = [
        "$(touch canary1)",
        "`touch canary2`",
        "x; touch canary3",
        "'; touch canary4; '",
        "\"; touch canary5; \"",
    ];
    let mut env = String::from("  env:\n");
    for (i, p) in payloads.iter().enumerate() {
        env.push_str(&format!(
            "    P{i}: {}\n",
            serde_json::to_string(p).unwrap()
        ));
    }
    ws.write(
        "inj.yaml",
        &manifest(
            "injection",
            &env,
            "    - id: shell\n      command: echo \"$P0 $P1 $P2 $P3 $P4\"\n    - id: argv\n      command: [echo, \"${P0}\", \"${P1}\", \"${P2}\"]\n",
        ),
    );
    let mut cli = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        cli.push(format!("C{i}={p}"));
    }
    let mut args = vec!["run", "inj.yaml", "-o", "json"];
    for c in &cli {
        args.push("--env");
        args.push(c);
    }
    let out = ws.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for i in 1..=5 {
        assert!(
            !ws.path().join(format!("canary{i}")).exists(),
            "payload {i} executed"
        );
    }
    let log = text(&ws.run(&["logs", "1", "shell"]).stdout);
    assert!(log.contains("$(touch canary1)"), "{log}");
}

#[test]
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn large_output_is_complete_and_memory_stays_flat() {
    let ws = Workspace::new();
    ws.write(
        "big.yaml",
        &manifest(
            "big-output",
            "",
            "    - id: big\n      command: head -c 200000000 /dev/zero; printf 'last line without newline'\n",
        ),
    );
    let mut cmd = std::process::Command::new(common::bin());
    cmd.current_dir(ws.path())
        .args([
            "--state-dir",
            ws.state_dir().to_str().unwrap(),
            "-q",
            "run",
            "big.yaml",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child; status and usage point to valid, writable memory.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    let max_rss_mib = usage.ru_maxrss / 1024;
    assert!(
        max_rss_mib < 100,
        "peak RSS {max_rss_mib} MiB while a job printed 200 MB"
    );
    let log = ws.state_dir().join("logs/big-output/1/big.log");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(len > 200_000_000, "log has {len} bytes");
    let tail = {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&log).unwrap();
        f.seek(SeekFrom::End(-200)).unwrap();
        let mut s = String::new();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        s.push_str(&String::from_utf8_lossy(&buf));
        s
    };
    assert!(tail.contains("last line without newline"), "{tail}");
}

#[test]
fn sigterm_to_run_leaves_no_job_process() {
    let ws = Workspace::new();
    let mark = marker("sigterm");
    ws.write(
        "s.yaml",
        &manifest(
            "sigterm",
            "",
            "    - {id: a, command: \"sleep 100 & sleep 100; wait\"}\n    - {id: b, command: \"trap '' TERM; sleep 100\"}\n    - {id: c, command: \"true\", dependencies: [a]}\n",
        ),
    );
    let mut child = ws.spawn(&["run", "s.yaml", "--workers", "4", "--env", &mark]);
    // Wait until the jobs run, then SIGTERM executioner.
    let start = Instant::now();
    while common::processes_with_marker(&mark).len() < 3
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(common::processes_with_marker(&mark).len() >= 3);
    common::sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        wait_no_marker(&mark, Duration::from_secs(5)).is_empty(),
        "job processes survived"
    );
    let out = ws.run(&["runs", "show", "1", "-o", "json"]);
    let run = json(&out);
    assert_eq!(run["phase"], "Cancelled");
    assert_eq!(job_state(&run, "a").0, "Cancelled");
    assert_eq!(job_state(&run, "c").1, "Cancelled");
}

#[test]
fn parallel_workers_and_eager_dependents() {
    let ws = Workspace::new();
    ws.write(
        "par.yaml",
        &manifest(
            "parallel",
            "",
            "    - {id: a, command: sleep 1}\n    - {id: b, command: sleep 1}\n    - {id: c, command: sleep 1}\n    - {id: d, command: sleep 1}\n",
        ),
    );
    let start = Instant::now();
    let (code, _, _) = run_json(&ws, "par.yaml", &["--workers", "4"]);
    let elapsed = start.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        elapsed < Duration::from_millis(3000),
        "four 1 s jobs with 4 workers took {elapsed:?}"
    );

    // The dependent of the fast job starts while its slow siblings still run.
    ws.write(
        "eager.yaml",
        &manifest(
            "eager",
            "",
            "    - {id: fast, command: sleep 0.1}\n    - {id: slow1, command: sleep 2 && date +%s%N > slow1.end}\n    - {id: slow2, command: sleep 2}\n    - {id: after-fast, command: date +%s%N > after.start, dependencies: [fast]}\n",
        ),
    );
    let (code, _, _) = run_json(&ws, "eager.yaml", &["--workers", "4"]);
    assert_eq!(code, Some(0));
    let read = |f: &str| {
        std::fs::read_to_string(ws.path().join(f))
            .unwrap()
            .trim()
            .parse::<u128>()
            .unwrap()
    };
    assert!(
        read("after.start") < read("slow1.end"),
        "the dependent waited for unrelated jobs"
    );
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let ws = Workspace::new();
    ws.write(
        "d.yaml",
        &manifest("dry", "", "    - {id: a, command: touch ran}\n    - {id: b, command: touch ran, dependencies: [a]}\n"),
    );
    let out = ws.run(&["run", "d.yaml", "--dry-run", "--skip", "a"]);
    assert_eq!(out.status.code(), Some(0));
    let plan = text(&out.stdout);
    assert!(
        plan.contains("level 0:") && plan.contains("level 1:"),
        "{plan}"
    );
    assert!(plan.contains("[SKIPPED: --skip]"), "{plan}");
    assert!(!ws.path().join("ran").exists());
    assert!(!ws.state_dir().join("executioner.db").exists());
}

#[test]
fn secrets_are_masked_in_logs_and_absent_from_the_database_and_status_files() {
    let ws = Workspace::new();
    let secret = "s3cr3t-Pa55-value";
    let text_manifest = manifest(
        "secretive",
        "  env:\n    PW: {fromEnv: TEST_SECRET_PW}\n    URL: postgres://app:${PW}@db/x\n",
        "    - id: leak\n      command: echo \"the password is $PW\"; echo \"url $URL\" >&2; printf '%s' \"$PW\" | cut -c1-4\n",
    );
    ws.write("s.yaml", &text_manifest);
    ws.write("manifests/s.yaml", &text_manifest);
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.current_dir(ws.path())
            .env("TEST_SECRET_PW", secret)
            .args(["--state-dir", ws.state_dir().to_str().unwrap()])
            .args(args);
        common::run_with_timeout(cmd, Duration::from_secs(60))
    };
    let out = run(&["run", "s.yaml", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(ws.state_dir().join("logs/secretive/1/leak.log")).unwrap();
    assert!(log.contains("the password is ***"), "{log}");
    assert!(log.contains("url postgres://app:***@db/x"), "{log}");
    assert!(!log.contains(secret), "{log}");
    assert!(log.contains("s3cr"), "a prefix alone is not masked: {log}");
    // The controller's status file, and every state file, hold no secret.
    let out = run(&["controller", "--manifests", "manifests", "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut checked = 0;
    for dir in [ws.state_dir(), ws.path().join("manifests/.status")] {
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} contains the secret",
                entry.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn tcp_http_plugin_and_pipeline_checks() {
    let ws = Workspace::new();
    // A one-shot HTTP server and an open TCP port on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for _ in 0..2 {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            }
        }
    });
    // A plugin: passes when its params say so, and echoes its context.
    let plugins = ws.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugin = plugins.join("executioner-check-quota");
    std::fs::write(&plugin, "#!/bin/sh\ncat > ../plugin-context.json\ngrep -q '\"ok\":true' ../plugin-context.json && echo quota fine\n").unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ws.write(
        "executioner.toml",
        &format!("plugin_dirs = [\"{}\"]\n", plugins.display()),
    );
    ws.write(
        "up.yaml",
        &manifest("upstream", "", "    - {id: a, command: \"true\"}\n"),
    );
    assert_eq!(ws.run(&["run", "up.yaml"]).status.code(), Some(0));
    ws.write(
        "w/c.yaml",
        &manifest(
            "checks-ext",
            "",
            &format!(
                "    - id: tcp\n      command: \"true\"\n      preChecks: [{{tcp: {{host: 127.0.0.1, port: {port}}}}}]\n    - id: http\n      command: \"true\"\n      preChecks: [{{http: {{url: \"http://127.0.0.1:{port}/health\", expectStatus: 204}}}}]\n    - id: plugin-ok\n      command: \"true\"\n      preChecks: [{{plugin: {{name: quota, params: {{ok: true}}}}}}]\n    - id: plugin-no\n      command: \"true\"\n      preChecks: [{{plugin: {{name: quota, params: {{ok: false}}}}}}]\n    - id: upstream-ok\n      command: \"true\"\n      preChecks: [{{pipelineSucceeded: {{name: upstream, within: 1h}}}}]\n    - id: upstream-missing\n      command: \"true\"\n      preChecks: [{{pipelineSucceeded: {{name: never-ran}}}}]\n    - id: closed-port\n      command: \"true\"\n      preChecks: [{{tcp: {{host: 127.0.0.1, port: 1, timeout: 1s}}}}]\n"
            ),
        ),
    );
    let (code, run, stderr) = run_json(&ws, "w/c.yaml", &["--workers", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    for (job, phase) in [
        ("tcp", "Succeeded"),
        ("http", "Succeeded"),
        ("plugin-ok", "Succeeded"),
        ("plugin-no", "Failed"),
        ("upstream-ok", "Succeeded"),
        ("upstream-missing", "Failed"),
        ("closed-port", "Failed"),
    ] {
        assert_eq!(job_state(&run, job).0, phase, "{job}: {run}");
    }
    let context: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join("plugin-context.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(context["pipeline"], "checks-ext");
    assert_eq!(context["params"]["ok"], false);
    server.join().unwrap();
}

#[test]
fn logs_follow_streams_until_the_run_ends() {
    let ws = Workspace::new();
    ws.write(
        "f.yaml",
        &manifest(
            "follow",
            "",
            "    - {id: talk, command: \"echo one; sleep 1; echo two\"}\n",
        ),
    );
    let mut run = std::process::Command::new(common::bin())
        .current_dir(ws.path())
        .args([
            "--state-dir",
            ws.state_dir().to_str().unwrap(),
            "-q",
            "run",
            "f.yaml",
        ])
        .spawn()
        .unwrap();
    let log = ws.state_dir().join("logs/follow/1/talk.log");
    let start = Instant::now();
    while !log.exists() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = ws.run_limited(&["logs", "1", "talk", "--follow"], Duration::from_secs(30));
    let text = text(&out.stdout);
    assert!(text.contains("one") && text.contains("two"), "{text}");
    assert!(run.wait().unwrap().success());
}

/// Issue 13, defect 1: `-q` keeps a failed run's essentials on stderr (the failed jobs with their
/// reason, exit code and log, and the verdict); a run that succeeds stays silent.
#[test]
fn quiet_failed_run_names_its_failed_jobs_and_verdict() {
    let ws = Workspace::new();
    ws.write(
        "q.yaml",
        &manifest(
            "quiet",
            "",
            "    - {id: ok, command: \"true\"}\n    - {id: broken, command: exit 3}\n    - {id: after, command: \"true\", dependencies: [broken]}\n",
        ),
    );
    let out = ws.run(&["-q", "run", "q.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let log = ws.state_dir().join("logs/quiet/1/broken.log");
    let line = stderr
        .lines()
        .find(|l| l.contains("broken"))
        .unwrap_or_else(|| panic!("no line about the failed job:\n{stderr}"));
    assert!(line.contains("ExitCode"), "{line}");
    assert!(line.contains("exit code 3"), "{line}");
    assert!(line.contains(&log.display().to_string()), "{line}");
    assert!(
        stderr.contains("run 1 of quiet Failed (JobsFailed)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ok "),
        "succeeded jobs are not listed:\n{stderr}"
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));

    ws.write(
        "fine.yaml",
        &manifest("fine", "", "    - {id: ok, command: \"true\"}\n"),
    );
    let out = ws.run(&["-q", "run", "fine.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

/// Issue 13, defect 1: `-q` also hides the controller's "running as root" warning.
#[test]
fn quiet_controller_hides_the_root_warning() {
    let ws = Workspace::new();
    ws.write(
        "manifests/r.yaml",
        &manifest("rooted", "", "    - {id: a, command: \"true\"}\n"),
    );
    let once = |quiet: bool| {
        let mut args = vec!["controller", "--manifests", "manifests", "--once"];
        if quiet {
            args.insert(0, "-q");
        }
        let out = ws.run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    if nix::unistd::geteuid().is_root() {
        assert!(once(false).contains("running as root"));
    }
    let quiet = once(true);
    assert!(!quiet.contains("running as root"), "{quiet}");
}

/// Issue 13, defect 12: a zero count is a usage error, not silently another number.
#[test]
fn zero_workers_and_zero_limit_are_usage_errors() {
    let ws = Workspace::new();
    ws.write(
        "z.yaml",
        &manifest("zero", "", "    - {id: a, command: touch ran}\n"),
    );
    for args in [
        &["run", "z.yaml", "--workers", "0"][..],
        &["runs", "--limit", "0"][..],
    ] {
        let out = ws.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("at least 1"), "{args:?}: {stderr}");
    }
    assert!(!ws.path().join("ran").exists());
}

/// Issue 13, defect 12: the dry run spells triggers as the manifest does.
#[test]
fn dry_run_spells_triggers_as_the_manifest_does() {
    let ws = Workspace::new();
    ws.write(
        "t.yaml",
        &manifest(
            "triggers",
            "",
            "    - {id: a, command: \"true\"}\n    - {id: b, command: \"true\", dependencies: [a], trigger: allDone}\n    - {id: c, command: \"true\", dependencies: [a], trigger: anyFailed}\n",
        ),
    );
    let out = ws.run(&["run", "t.yaml", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let plan = text(&out.stdout);
    assert!(plan.contains("trigger allDone"), "{plan}");
    assert!(plan.contains("trigger anyFailed"), "{plan}");
    assert!(!plan.contains("AllDone"), "{plan}");
}

/// Issue 13, defect 12: a cancelled job is counted as cancelled in the run's summary.
#[test]
fn a_cancelled_job_is_counted_as_cancelled() {
    let ws = Workspace::new();
    let mark = marker("counted");
    ws.write(
        "c.yaml",
        &manifest(
            "counted",
            "",
            "    - {id: ok, command: \"true\"}\n    - {id: long, command: sleep 30, dependencies: [ok]}\n    - {id: after, command: \"true\", dependencies: [long]}\n",
        ),
    );
    let mut cmd = std::process::Command::new(common::bin());
    cmd.current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args(["run", "c.yaml", "--env", &mark])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    while common::processes_with_marker(&mark).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "long never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stdout = text(&out.stdout);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("run 1 of counted"))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(summary.contains("1 succeeded"), "{summary}");
    assert!(summary.contains("1 cancelled"), "{summary}");
    assert!(summary.contains("1 skipped"), "{summary}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

/// Issue 13, defect 12: a job stopped by the run's timeout has the same reason on its row and on
/// its attempt's row.
#[test]
fn a_run_timeout_job_has_the_same_reason_on_its_attempt() {
    let ws = Workspace::new();
    let mark = marker("sametimeout");
    ws.write(
        "t.yaml",
        &manifest(
            "same-timeout",
            "  timeout: 500ms\n",
            "    - {id: long, command: sleep 30}\n",
        ),
    );
    let (code, _, _) = run_json(&ws, "t.yaml", &["--env", &mark]);
    assert_eq!(code, Some(1));
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    let job = &run["jobs"][0];
    assert_eq!(job["reason"], "Timeout");
    assert_eq!(job["attemptList"][0]["reason"], job["reason"], "{job}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
}

/// Issue 13, defect 16: the original's `--parallel --workers 4` runs four jobs at once, whatever
/// the converted file's `parallel: false` says. Each job waits (bounded) until all four have
/// started: run one at a time, the first gives up and fails.
#[test]
fn original_parallel_flag_runs_that_many_jobs_at_once() {
    let ws = Workspace::new();
    let barrier = "touch started.$EXECUTIONER_JOB_ID; i=0; while [ $(ls started.* | wc -l) -lt 4 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; [ $(ls started.* | wc -l) -ge 4 ] && touch ended.$EXECUTIONER_JOB_ID";
    let jobs: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({"id": format!("j{i}"), "command": barrier}))
        .collect();
    let legacy = serde_json::json!({
        "application_name": "legacy_parallel",
        "parallel": false,
        "jobs": jobs,
    });
    ws.write("legacy.json", &legacy.to_string());
    let out = ws.run(&["-c", "legacy.json", "--parallel", "--workers", "4"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for i in 0..4 {
        assert!(ws.path().join(format!("ended.j{i}")).exists(), "j{i}");
    }
}

/// Issue 13, defect 11: an attempt's peak memory is its own, not the executioner's image that a
/// `posix_spawn` child starts from: a small job records little, a job that fills 100 MiB at least
/// 90. A figure that could not be told apart from the executioner's own is marked an upper bound
/// (`true` may exit before its memory can be read; a shell's children are only in the kernel's
/// figure), never shown as the job's.
#[test]
fn peak_memory_is_the_jobs_own() {
    let ws = Workspace::new();
    ws.write(
        "m.yaml",
        &manifest(
            "memory",
            "",
            "    - {id: small, command: [sleep, \"0.2\"]}\n    - {id: instant, command: [\"true\"]}\n    - {id: big, command: [python3, -c, \"b = b'x' * (100 * 2**20)\"]}\n    - {id: shell, command: \"python3 -c \\\"b = b'x' * (20 * 2**20)\\\"; true\"}\n",
        ),
    );
    let (code, _, stderr) = run_json(&ws, "m.yaml", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    let attempt = |id: &str| {
        let a = run["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .map(|j| j["attemptList"][0].clone())
            .unwrap();
        let bytes = a["maxRssBytes"].as_i64().unwrap();
        let bound = a["maxRssUpperBound"].as_bool().unwrap();
        (bytes, bound, a)
    };
    const MIB: i64 = 1 << 20;
    let (bytes, bound, a) = attempt("small");
    assert!(bytes > 0 && bytes < 8 * MIB && !bound, "small: {a}");
    let (bytes, bound, a) = attempt("instant");
    assert!(bound || bytes < 8 * MIB, "instant: {a}");
    let (bytes, bound, a) = attempt("big");
    assert!(bytes >= 90 * MIB && !bound, "big: {a}");
    let (bytes, bound, a) = attempt("shell");
    assert!(bound || bytes >= 20 * MIB, "shell: {a}");

    let shown = text(&ws.run(&["runs", "show", "1"]).stdout);
    let table = shown.split("attempts:").nth(1).unwrap_or_default();
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!(" {id} ")) && l.contains("Completed"))
            .unwrap_or_else(|| panic!("{table}"))
            .to_owned()
    };
    assert!(!row("big").contains('≤'), "{table}");
    assert!(!row("small").contains('≤'), "{table}");
    if bound {
        assert!(row("shell").contains('≤'), "{table}");
    }
}

/// A job waiting for its retry when the run's deadline passes fails the run with `RunTimeout`; it
/// is not a cancellation (found in review: the run ended Cancelled and `run` exited 130).
#[test]
fn a_retry_past_the_run_deadline_fails_the_run() {
    let ws = Workspace::new();
    ws.write(
        "t.yaml",
        &manifest(
            "retry-deadline",
            "  timeout: 1s\n",
            "    - {id: flaky, command: \"exit 1\", retry: {limit: 3, delay: 30s}}\n",
        ),
    );
    let out = ws.run(&["run", "t.yaml", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(run["phase"], "Failed", "{run}");
    assert_eq!(run["reason"], "RunTimeout", "{run}");
    assert_eq!(run["jobs"][0]["phase"], "Failed", "{run}");
    assert_eq!(run["jobs"][0]["reason"], "RunTimeout", "{run}");
}

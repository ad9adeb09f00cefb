//! The controller's HTTP API (DESIGN 10): a real controller with `--listen 127.0.0.1:0`, real
//! runs, and plain HTTP/1.1 requests over TCP (so that hostile URLs reach the server exactly as
//! written). Every endpoint against the CLI's `-o json` for the same object, the OpenAPI document,
//! `/metrics` parsed and moving with a run, hostile input, the token matrix of the two `POST`s,
//! and 200 clients reading a log while the controller starts a new run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Workspace, bin, manifest, repo, text, wait_phase, wait_until};
use serde_json::Value;

const TOKEN: &str = "t0k3n-for-tests";

/// A controller serving HTTP on a free port, stopped (SIGTERM) when dropped.
struct Served {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Served {
    fn start(ws: &Workspace, listen: &str, env: &[(&str, &str)]) -> Served {
        std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.current_dir(ws.path())
            .args(["--state-dir", ws.state_dir().to_str().unwrap()])
            .args(["controller", "--manifests", "manifests", "--listen", listen])
            .env("EXECUTIONER_RESYNC_INTERVAL", "1")
            .env_remove("EXECUTIONER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(ws.path().join("controller.log")).unwrap(),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let file = ws.state_dir().join("http.addr");
        let start = Instant::now();
        let addr: SocketAddr = loop {
            if let Some(addr) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break addr;
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "no {} (exited: {exited:?}):\n{}",
                file.display(),
                log(ws)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // A wildcard bind is reached on loopback.
        let addr = SocketAddr::new([127, 0, 0, 1].into(), addr.port());
        Served {
            child: Some(child),
            addr,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

fn log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
}

/// An answer: status, lowercased header lines, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&self.body)))
    }

    fn text(&self) -> String {
        text(&self.body)
    }

    /// An error answer: JSON `{"error": "..."}` with `status`.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_owned()
    }
}

/// One HTTP/1.1 request on its own connection, `target` sent exactly as given.
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    // The server may answer (and close) before a huge request is all written.
    let _ = stream.write_all(head.as_bytes());
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", text(&raw)));
    let head = text(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked"),
        "chunked answers are not expected: {head}"
    );
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(addr: SocketAddr, target: &str) -> Answer {
    request(addr, "GET", target, &[])
}

fn get_json(addr: SocketAddr, target: &str) -> Value {
    let answer = get(addr, target);
    assert_eq!(answer.status, 200, "{target}: {}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.json()
}

/// The CLI's `-o json` of the same state folder and manifests.
fn cli_json(ws: &Workspace, args: &[&str]) -> Value {
    let out = ws.run(args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    common::json(&out)
}

/// The samples of a scrape, by name and labels, after checking every line is well formed.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let answer = get(addr, "/metrics");
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        answer.headers
    );
    let body = answer.text();
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Strict where the parser is lenient: a comment or `name{labels} value`.
    for line in body.lines() {
        if line.starts_with("# ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("executioner_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                panic!("{name} is not a number")
            }
        })
}

fn run_ids(ws: &Workspace, pipeline: &str) -> Vec<i64> {
    cli_json(ws, &["runs", "--pipeline", pipeline, "-o", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

fn wait_runs_done(ws: &Workspace, pipeline: &str, count: usize) {
    wait_until(Duration::from_secs(60), || {
        let runs = cli_json(ws, &["runs", "--pipeline", pipeline, "-o", "json"]);
        let runs = runs.as_array().unwrap();
        runs.len() >= count
            && runs
                .iter()
                .all(|r| r["phase"] != "Running" && r["phase"] != "Pending")
    });
}

#[test]
fn the_api_serves_what_the_cli_shows_and_the_token_guards_changes() {
    let ws = Workspace::new();
    ws.write(
        "manifests/hello.yaml",
        &manifest(
            "hello",
            "",
            "    - {id: a, command: \"echo '<script>alert(1)</script> \\\"q\\\"'\"}\n    - {id: b, command: \"true\", dependencies: [a]}\n",
        ),
    );
    let served = Served::start(
        &ws,
        "127.0.0.1:0",
        &[
            ("EXECUTIONER_HTTP__TOKEN_ENV", "EXEC_HTTP_TOKEN"),
            ("EXEC_HTTP_TOKEN", TOKEN),
        ],
    );
    let addr = served.addr;
    assert!(log(&ws).contains("listening"), "{}", log(&ws));
    wait_phase(&ws, "hello", "Succeeded", 1);

    // Health.
    assert_eq!(get_json(addr, "/healthz")["status"], "ok");
    wait_until(Duration::from_secs(10), || {
        get(addr, "/readyz").status == 200
    });
    assert_eq!(get_json(addr, "/readyz")["status"], "ready");

    // Every object as the CLI shows it.
    let args = ["--manifests", "manifests"];
    assert_eq!(
        get_json(addr, "/api/v1/pipelines"),
        cli_json(&ws, &["status", "-o", "json", args[0], args[1]])
    );
    assert_eq!(
        get_json(addr, "/api/v1/pipelines/hello"),
        cli_json(&ws, &["status", "hello", "-o", "json", args[0], args[1]])
    );
    assert_eq!(
        get_json(addr, "/api/v1/runs"),
        cli_json(&ws, &["runs", "-o", "json"])
    );
    assert_eq!(
        get_json(addr, "/api/v1/runs?pipeline=hello&limit=1"),
        cli_json(
            &ws,
            &["runs", "--pipeline", "hello", "--limit", "1", "-o", "json"]
        )
    );
    let id = run_ids(&ws, "hello")[0].to_string();
    let run = get_json(addr, &format!("/api/v1/runs/{id}"));
    assert_eq!(run, cli_json(&ws, &["runs", "show", &id, "-o", "json"]));
    assert_eq!(run["jobs"].as_array().unwrap().len(), 2);

    // A log comes back verbatim, as text that no browser renders.
    let answer = get(addr, &format!("/api/v1/runs/{id}/jobs/a/log"));
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    let out = ws.run(&["logs", &id, "a"]);
    assert_eq!(answer.body, out.stdout);
    assert!(answer.text().contains("<script>alert(1)</script> \"q\""));

    // Not found, as JSON.
    get(addr, "/api/v1/runs/999999").assert_error(404);
    get(addr, "/api/v1/pipelines/nope").assert_error(404);
    get(addr, &format!("/api/v1/runs/{id}/jobs/nope/log")).assert_error(404);
    get(addr, "/api/v1/nothing-here").assert_error(404);
    request(addr, "DELETE", "/api/v1/runs", &[]).assert_error(405);
    get(addr, "/api/v1/pipelines/hello/rerun").assert_error(405);

    // Hostile input never reaches a file: bad names and ids are refused as such.
    for target in [
        "/api/v1/pipelines/..%2F..%2Fetc",
        "/api/v1/pipelines/%2E%2E",
        "/api/v1/pipelines/%3Cscript%3E",
        "/api/v1/runs/..%2F1",
        "/api/v1/runs/-1",
        "/api/v1/runs/1e3",
        "/api/v1/runs?pipeline=..%2F..&limit=1",
        "/api/v1/runs?limit=0",
        "/api/v1/runs?limit=abc",
        &format!("/api/v1/runs/{id}/jobs/..%2F..%2F..%2F..%2Fetc%2Fpasswd/log"),
        &format!("/api/v1/runs/{id}/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E/log"),
        &format!("/api/v1/runs/{id}/jobs/a%00/log"),
        &format!("/api/v1/runs/{id}/jobs/%ff/log"),
    ] {
        let answer = get(addr, target);
        assert!(
            answer.status == 400 || answer.status == 404,
            "{target}: {} {}",
            answer.status,
            answer.text()
        );
        answer.assert_error(answer.status);
        assert!(!answer.text().contains("root:"), "{target}");
    }
    // Unnormalized dot segments are no route.
    let answer = get(
        addr,
        &format!("/api/v1/runs/{id}/jobs/../../../../etc/passwd/log"),
    );
    answer.assert_error(404);
    // A long URL is refused by the server; a huge one before it is even parsed.
    let long = format!("/api/v1/pipelines/{}", "a".repeat(16 * 1024));
    get(addr, &long).assert_error(414);
    let huge = format!("/api/v1/pipelines/{}", "a".repeat(1024 * 1024));
    let status = get(addr, &huge).status;
    assert!([400, 414, 431].contains(&status), "{status}");
    assert_eq!(get(addr, "/healthz").status, 200, "still serving");

    // The OpenAPI document: JSON, committed, and naming every route.
    let doc = get_json(addr, "/api/v1/openapi.json");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc, committed,
        "schemas/openapi.json drifted: run `make schemas` and commit"
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for route in executioner::http::ROUTES {
        assert!(
            doc["paths"].get(route).is_some(),
            "{route} not in the document"
        );
    }
    assert_eq!(
        doc["paths"].as_object().unwrap().len(),
        executioner::http::ROUTES.len()
    );

    // The token matrix of the two changes.
    let rerun = "/api/v1/pipelines/hello/rerun";
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    let short = "Bearer t0k3n";
    for headers in [
        vec![],
        vec![("Authorization", wrong.as_str())],
        vec![("Authorization", short)],
        vec![("Authorization", TOKEN)],
    ] {
        let answer = request(addr, "POST", rerun, &headers);
        answer.assert_error(401);
        assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
        request(addr, "POST", &format!("/api/v1/runs/{id}/cancel"), &headers).assert_error(401);
    }
    assert_eq!(run_ids(&ws, "hello").len(), 1, "nothing changed");
    let auth = [("Authorization", bearer.as_str())];
    request(addr, "POST", "/api/v1/pipelines/nope/rerun", &auth).assert_error(404);
    request(addr, "POST", "/api/v1/pipelines/..%2F/rerun", &auth).assert_error(400);
    request(addr, "POST", "/api/v1/runs/999999/cancel", &auth).assert_error(404);
    request(addr, "POST", &format!("/api/v1/runs/{id}/cancel"), &auth).assert_error(409);

    // A rerun through the API moves the counters.
    let before = scrape(addr);
    let answer = request(addr, "POST", rerun, &auth);
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(answer.json()["requested"], "rerun");
    wait_runs_done(&ws, "hello", 2);
    // The run's last events reach the metrics just after the store says it ended.
    let mut after = scrape(addr);
    wait_until(Duration::from_secs(10), || {
        after = scrape(addr);
        sample(&after, "executioner_running_jobs", &[]) == 0.0
            && sample(
                &after,
                "executioner_attempts_total",
                &[("pipeline", "hello"), ("reason", "Completed")],
            ) >= sample(
                &before,
                "executioner_attempts_total",
                &[("pipeline", "hello"), ("reason", "Completed")],
            ) + 2.0
    });
    let runs = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "executioner_runs_total",
            &[("pipeline", "hello"), ("phase", "Succeeded")],
        )
    };
    let jobs = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "executioner_jobs_total",
            &[("pipeline", "hello"), ("phase", "Succeeded")],
        )
    };
    let attempts = |s: &prometheus_parse::Scrape| {
        sample(
            s,
            "executioner_attempts_total",
            &[("pipeline", "hello"), ("reason", "Completed")],
        )
    };
    assert_eq!(runs(&after), runs(&before) + 1.0);
    assert_eq!(jobs(&after), jobs(&before) + 2.0);
    assert_eq!(attempts(&after), attempts(&before) + 2.0);
    assert_eq!(sample(&after, "executioner_running_jobs", &[]), 0.0);
    assert_eq!(
        sample(&after, "executioner_pipelines", &[("phase", "Succeeded")]),
        1.0
    );
    let histogram = |name: &str| {
        after
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert!(histogram("executioner_job_duration_seconds") >= 2.0);
    assert!(
        after
            .samples
            .iter()
            .any(|s| s.metric == "executioner_notifications_pending"),
        "no executioner_notifications_pending"
    );
    assert!(histogram("executioner_reconcile_duration_seconds") >= 1.0);

    // A running run is cancelled through the API.
    ws.write(
        "manifests/slow.yaml",
        &manifest("slow", "", "    - {id: sleeper, command: \"sleep 60\"}\n"),
    );
    wait_until(Duration::from_secs(30), || {
        get(addr, "/metrics")
            .text()
            .contains("executioner_running_jobs 1")
    });
    let slow = run_ids(&ws, "slow")[0];
    let answer = request(addr, "POST", &format!("/api/v1/runs/{slow}/cancel"), &auth);
    assert_eq!(answer.status, 202, "{}", answer.text());
    wait_phase(&ws, "slow", "Cancelled", 1);
    assert!(scrape(addr).samples.iter().any(
        |s| s.metric == "executioner_runs_total" && s.labels.get("phase") == Some("Cancelled")
    ));
}

#[test]
fn read_only_without_a_token_and_serving_never_holds_up_the_controller() {
    let ws = Workspace::new();
    ws.write(
        "manifests/first.yaml",
        &manifest("first", "", "    - {id: talk, command: \"seq 1 2000\"}\n"),
    );
    // A wildcard bind without a token: served, with a warning.
    let served = Served::start(&ws, "0.0.0.0:0", &[]);
    let addr = served.addr;
    wait_phase(&ws, "first", "Succeeded", 1);
    assert!(log(&ws).contains("without a token"), "{}", log(&ws));
    let id = run_ids(&ws, "first")[0];
    request(addr, "POST", "/api/v1/pipelines/first/rerun", &[]).assert_error(403);
    request(
        addr,
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        &[("Authorization", "Bearer anything")],
    )
    .assert_error(403);

    // 200 clients read a log over and over while a new pipeline is dropped in and runs.
    let stop = Arc::new(AtomicBool::new(false));
    let served_count = Arc::new(AtomicUsize::new(0));
    let target = format!("/api/v1/runs/{id}/jobs/talk/log");
    let expected = ws.run(&["logs", &id.to_string(), "talk"]).stdout;
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (stop, count, target, expected) = (
                stop.clone(),
                served_count.clone(),
                target.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = get(addr, &target);
                    assert_eq!(answer.status, 200);
                    assert_eq!(answer.body, expected);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), || {
        served_count.load(Ordering::Relaxed) >= 200
    });
    ws.write(
        "manifests/second.yaml",
        &manifest("second", "", "    - {id: x, command: \"true\"}\n"),
    );
    wait_phase(&ws, "second", "Succeeded", 1);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client failed");
    }
    assert!(served_count.load(Ordering::Relaxed) >= 200);
}

#[test]
fn a_bad_listen_address_or_a_missing_token_is_a_usage_error() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    let out = ws.run(&[
        "controller",
        "--manifests",
        "manifests",
        "--once",
        "--listen",
        "localhost-ish",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not an address"),
        "{}",
        text(&out.stderr)
    );
    let mut cmd = Command::new(bin());
    cmd.current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args(["controller", "--manifests", "manifests", "--once"])
        .env("EXECUTIONER_HTTP__LISTEN", "127.0.0.1:0")
        .env("EXECUTIONER_HTTP__TOKEN_ENV", "EXEC_HTTP_TOKEN_UNSET")
        .env_remove("EXEC_HTTP_TOKEN_UNSET")
        .env_remove("EXECUTIONER_STATE_DIR");
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("EXEC_HTTP_TOKEN_UNSET"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&ws.state_dir().join("http.addr")).exists());
}

/// Every metric of DESIGN 10 that applies without PostgreSQL is exported, and
/// `executioner_ready_jobs` counts the jobs that wait only for a worker.
#[test]
fn every_metric_of_the_design_is_exported_and_ready_jobs_wait_for_a_worker() {
    let ws = Workspace::new();
    // Four independent jobs and one worker: while one runs, the others wait for it.
    let jobs: String = (0..4)
        .map(|i| format!("    - {{id: j{i}, command: \"sleep 0.5\"}}\n"))
        .collect();
    ws.write("manifests/wide.yaml", &manifest("wide", "", &jobs));
    let served = Served::start(&ws, "127.0.0.1:0", &[("EXECUTIONER_WORKERS", "1")]);
    let addr = served.addr;
    let mut most_ready = 0.0f64;
    wait_until(Duration::from_secs(60), || {
        let s = scrape(addr);
        most_ready = most_ready.max(sample(&s, "executioner_ready_jobs", &[]));
        assert!(sample(&s, "executioner_running_jobs", &[]) <= 1.0);
        sample(
            &s,
            "executioner_runs_total",
            &[("pipeline", "wide"), ("phase", "Succeeded")],
        ) == 1.0
    });
    // All four are ready when the run starts, then three wait while one runs, and so on.
    assert!(
        most_ready >= 2.0,
        "never more ready jobs than workers: {most_ready}"
    );
    assert!(most_ready <= 4.0, "{most_ready} ready with four jobs");
    let s = scrape(addr);
    assert_eq!(sample(&s, "executioner_ready_jobs", &[]), 0.0);
    for name in [
        "executioner_runs_total",
        "executioner_jobs_total",
        "executioner_attempts_total",
        "executioner_job_duration_seconds",
        "executioner_running_jobs",
        "executioner_ready_jobs",
        "executioner_pipelines",
        "executioner_reconcile_duration_seconds",
        "executioner_notifications_pending",
        "executioner_leader",
    ] {
        assert!(
            s.samples.iter().any(|m| m.metric == name),
            "{name} is not exported:\n{}",
            get(addr, "/metrics").text()
        );
    }
}

//! The distributed scenarios of issue 16 (DESIGN 9), end to end: controllers and workers are real
//! `executioner` processes, each "host" with its own state folder, all on one database of this
//! binary's throwaway PostgreSQL cluster (a database per test). Placement across two workers (a),
//! a worker killed with -9 mid-run (b), the server restarted and killed with -9 mid-run (d), a
//! worker cut off from the database by the database refusing its role (e), and 100 concurrent
//! applies into a controller's folder (f); then `executioner worker`'s usage errors.
//!
//! Every job of a scenario is a ledger job: it holds a per-job `flock` for its whole life and
//! appends `start,JOB,ATTEMPT,PID,WORKER` and `end,...` lines to one ledger file, so the ledger
//! proves that no job ran twice at once (a second live attempt writes `CONFLICT` and exits 99),
//! and that every job ended exactly once. The worker a job ran on is the `EXECUTIONER_TEST_WORKER`
//! variable set on each worker process (jobs inherit their worker's environment); each worker also
//! carries its own `EXECUTIONER_TEST_HOST` marker, so its jobs' processes can be found in `/proc`.
//!
//! The tests hold one lock each: the cluster is shared by the binary (d restarts it) and the
//! machine is small, so the scenarios run one after the other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Workspace, json, pg_cluster, processes_with_marker, text, wait_no_marker};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lease of every scenario but d and e: short, so that a lost worker is noticed within seconds.
const TTL_SECS: f64 = 3.0;

// ---------------------------------------------------------------------------------------------
// Hosts: controller and worker processes.

/// One `executioner controller` or `executioner worker` process with its own state folder and log.
struct Host {
    name: String,
    state_dir: PathBuf,
    log: PathBuf,
    /// `EXECUTIONER_TEST_HOST=...` of this process, inherited by the jobs it runs.
    marker: String,
    child: Option<Child>,
}

impl Host {
    /// `executioner --state-dir WS/NAME ARGS...` on `url`, with the lease `ttl`, started and
    /// waited for until its log says `ready`.
    fn start(ws: &Workspace, url: &str, ttl: f64, name: &str, args: &[&str], ready: &str) -> Host {
        let state_dir = ws.path().join(name);
        let log = ws.path().join(format!("{name}.log"));
        // Not the pipelines' `EXECUTIONER_TEST_MARKER`, which a job's own environment replaces.
        let marker =
            common::marker(name).replace("EXECUTIONER_TEST_MARKER=", "EXECUTIONER_TEST_HOST=");
        let (marker_key, marker_value) = marker.split_once('=').unwrap();
        let before = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let child = Command::new(common::bin())
            .current_dir(ws.path())
            .arg("--state-dir")
            .arg(&state_dir)
            .args(args)
            .env_remove("EXECUTIONER_STATE_DIR")
            .env("EXECUTIONER_DATABASE__URL", url)
            .env("EXECUTIONER_LEASE_TTL", format!("{ttl}s"))
            .env("EXECUTIONER_RESYNC_INTERVAL", "1")
            .env("EXECUTIONER_TEST_WORKER", name)
            .env(marker_key, marker_value)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Appended to: a host started again on the same folder keeps the first one's lines.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn executioner");
        let mut host = Host {
            name: name.to_owned(),
            state_dir,
            log,
            marker,
            child: Some(child),
        };
        let start = Instant::now();
        while !ready
            .split('|')
            .any(|r| host.log_text().get(before..).unwrap_or("").contains(r))
        {
            let exited = host.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "{name} did not log {ready:?} (exited: {exited:?}):\n{}",
                host.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host
    }

    /// A controller watching `WS/MANIFESTS`, running jobs on `slots` embedded slots. `ready` of
    /// [`Host::start`] may name several lines, `|`-separated.
    fn controller(ws: &Workspace, url: &str, name: &str, manifests: &str, slots: usize) -> Host {
        std::fs::create_dir_all(ws.path().join(manifests)).unwrap();
        let slots = slots.to_string();
        let args = ["controller", "--manifests", manifests, "--slots", &slots];
        // The first to start leads ("controller started"); another stands by.
        let ready = "controller started|standby: leader is";
        Host::start(ws, url, TTL_SECS, name, &args, ready)
    }

    /// `executioner worker --name NAME --labels LABELS --slots SLOTS`.
    fn worker(ws: &Workspace, url: &str, ttl: f64, name: &str, labels: &str, slots: usize) -> Host {
        let slots = slots.to_string();
        let mut args = vec!["worker", "--name", name, "--slots", &slots];
        if !labels.is_empty() {
            args.extend(["--labels", labels]);
        }
        Host::start(ws, url, ttl, name, &args, "worker registered")
    }

    /// Whether the process has exited (a host that was stopped on purpose has not).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The live processes of the jobs this host started.
    fn job_processes(&self) -> Vec<i32> {
        let own = self.child.as_ref().map(|c| c.id() as i32);
        processes_with_marker(&self.marker)
            .into_iter()
            .filter(|pid| Some(*pid) != own)
            .collect()
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL when it has not exited within 15 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // It may have exited already (a failed start): then there is nothing to signal.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines at level ERROR.
    fn errors(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|line| line.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger.

/// One ledger job; it prints `JOB on WORKER` to its log last. `extra` is more of the job's flow
/// mapping (`, runOn: {...}`).
fn ledger_job(id: &str, ledger: &Path, sleep: &str, extra: &str) -> String {
    let dir = ledger.parent().unwrap().display();
    let ledger = ledger.display();
    let line = "$EXECUTIONER_JOB_ID,$EXECUTIONER_ATTEMPT,$$,$EXECUTIONER_TEST_WORKER";
    format!(
        "    - {{id: {id}, command: \"exec 9>{dir}/lock.$EXECUTIONER_JOB_ID; flock -n 9 || {{ echo CONFLICT,$EXECUTIONER_JOB_ID >> {ledger}; exit 99; }}; echo start,{line} >> {ledger}; sleep {sleep} & sleep {sleep}; wait; echo end,{line} >> {ledger}; echo $EXECUTIONER_JOB_ID on $EXECUTIONER_TEST_WORKER\"{extra}}}\n"
    )
}

/// A pipeline of `jobs` (YAML list items) with `mark` in every job's environment.
fn pipeline(name: &str, mark: &str, jobs: &str) -> String {
    placed_pipeline(name, mark, "", jobs)
}

/// [`pipeline`] with a `spec.runOn` (`zone: a`, say; empty for none).
fn placed_pipeline(name: &str, mark: &str, run_on: &str, jobs: &str) -> String {
    let (key, value) = mark.split_once('=').unwrap();
    let run_on = if run_on.is_empty() {
        String::new()
    } else {
        format!("  runOn: {{labels: {{{run_on}}}}}\n")
    };
    common::manifest(
        name,
        &format!("{run_on}  env:\n    {key}: \"{value}\"\n"),
        jobs,
    )
}

#[derive(Debug, Clone, PartialEq)]
struct Line {
    job: String,
    attempt: i64,
    worker: String,
}

/// The ledger, read back: per job, its starts and ends in order.
#[derive(Debug, Default)]
struct Ledger {
    text: String,
    starts: BTreeMap<String, Vec<Line>>,
    ends: BTreeMap<String, Vec<Line>>,
}

impl Ledger {
    fn read(path: &Path) -> Ledger {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut ledger = Ledger {
            text: text.clone(),
            ..Ledger::default()
        };
        for line in text.lines() {
            let fields: Vec<&str> = line.split(',').collect();
            let [kind, job, attempt, _pid, worker] = fields[..] else {
                continue;
            };
            let entry = Line {
                job: job.to_owned(),
                attempt: attempt.parse().unwrap(),
                worker: worker.to_owned(),
            };
            let into = match kind {
                "start" => &mut ledger.starts,
                "end" => &mut ledger.ends,
                other => panic!("a ledger line of kind {other}: {line}"),
            };
            into.entry(job.to_owned()).or_default().push(entry);
        }
        ledger
    }

    fn ended(&self) -> usize {
        self.ends.values().map(Vec::len).sum()
    }

    /// No two attempts of a job were alive at once, every one of `jobs` ended exactly once, and no
    /// line was written twice.
    fn assert_each_ended_once(&self, jobs: &[String]) {
        assert!(
            !self.text.contains("CONFLICT"),
            "two attempts alive at once:\n{}",
            self.text
        );
        let mut lines = std::collections::HashSet::new();
        for line in self.text.lines() {
            assert!(lines.insert(line), "{line} written twice:\n{}", self.text);
        }
        for job in jobs {
            let ends = self.ends.get(job).map_or(0, Vec::len);
            assert_eq!(ends, 1, "{job} ended {ends} times:\n{}", self.text);
        }
        assert_eq!(self.ends.len(), jobs.len(), "{}", self.text);
    }
}

// ---------------------------------------------------------------------------------------------
// The database, read directly.

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("the test's own connection")
}

/// The phase of `pipeline`'s latest run when it is terminal.
async fn terminal_phase(db: &sqlx::PgPool, pipeline: &str) -> Option<String> {
    let phase: Option<String> =
        sqlx::query_scalar("SELECT phase FROM runs WHERE pipeline = $1 ORDER BY id DESC LIMIT 1")
            .bind(pipeline)
            .fetch_optional(db)
            .await
            .ok()
            .flatten();
    phase.filter(|phase| ["Succeeded", "Failed", "Cancelled"].contains(&phase.as_str()))
}

/// The phase of `pipeline`'s latest run, once it is terminal; panics after `limit`.
async fn wait_run_terminal(
    db: &sqlx::PgPool,
    pipeline: &str,
    limit: Duration,
    hosts: &[&Host],
) -> String {
    let start = Instant::now();
    loop {
        if let Some(phase) = terminal_phase(db, pipeline).await {
            return phase;
        }
        assert!(
            start.elapsed() < limit,
            "{pipeline}'s run is not terminal after {limit:?}\n{}",
            logs_of(hosts)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `runs show RUN -o json` through the database.
fn runs_show(ws: &Workspace, url: &str, run: i64) -> serde_json::Value {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args([
            "--database-url",
            url,
            "runs",
            "show",
            &run.to_string(),
            "-o",
            "json",
        ])
        .env_remove("EXECUTIONER_STATE_DIR")
        .env_remove("EXECUTIONER_DATABASE__URL")
        .stdin(Stdio::null());
    json(&common::run_with_timeout(cmd, Duration::from_secs(60)))
}

/// The attempts of job `id` in a `runs show -o json` value: `(phase, reason)` in order.
fn attempts_of(run: &serde_json::Value, id: &str) -> Vec<(String, String)> {
    let job = run["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("no job {id} in {run}"));
    job["attemptList"]
        .as_array()
        .expect("attemptList")
        .iter()
        .map(|a| {
            (
                a["phase"].as_str().unwrap_or_default().to_owned(),
                a["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until `ok`; after `limit` panics with the last lines of the hosts' logs.
async fn wait_for(limit: Duration, what: &str, hosts: &[&Host], mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "not within {limit:?}: {what}\n{}",
            logs_of(hosts)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last 40 lines of each host's log, for a failure's message.
fn logs_of(hosts: &[&Host]) -> String {
    let mut out = String::new();
    for host in hosts {
        let log = host.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        out.push_str(&format!("--- {} ---\n{}\n", host.name, tail.join("\n")));
    }
    out
}

fn job_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// a. One controller with no slots and two workers labelled zone=a and zone=b: a 200-job pipeline
/// placed half on each (the pipeline's `runOn` says zone a, every other job's own says b) runs
/// every job on its zone's worker (the ledger names the worker; the job's log is in that worker's
/// state folder and not in the other's). A pipeline placed on zone c waits `Pending`/`NoWorker`
/// until a worker of zone c comes.
#[tokio::test]
async fn a_placement_runs_each_job_on_a_worker_of_its_labels() {
    let _serial = SERIAL.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let started = Instant::now();
    let ws = Workspace::new();
    let ledger = ws.path().join("ledger");
    let mark = common::marker("placement");
    let n = 200;
    let jobs: String = (0..n)
        .map(|i| {
            let run_on = if i % 2 == 0 {
                ""
            } else {
                ", runOn: {labels: {zone: b}}"
            };
            ledger_job(&format!("j{i}"), &ledger, "0", run_on)
        })
        .collect();
    let controller = Host::controller(&ws, &db.url, "controller", "manifests", 0);
    let wa = Host::worker(&ws, &db.url, TTL_SECS, "wa", "zone=a", 6);
    let wb = Host::worker(&ws, &db.url, TTL_SECS, "wb", "zone=b,disk=ssd", 6);
    let ledger_c = ws.path().join("c/ledger");
    std::fs::create_dir_all(ledger_c.parent().unwrap()).unwrap();
    let job_c = ledger_job("c0", &ledger_c, "0", "");
    ws.write(
        "manifests/zone-c.yaml",
        &placed_pipeline("zone-c", &mark, "zone: c", &job_c),
    );
    ws.write(
        "manifests/place.yaml",
        &placed_pipeline("place", &mark, "zone: a", &jobs),
    );
    let sql = pool(&db.url).await;
    let hosts = [&controller, &wa, &wb];
    let phase = wait_run_terminal(&sql, "place", Duration::from_secs(120), &hosts).await;
    assert_eq!(phase, "Succeeded", "{}", logs_of(&hosts));
    let place_run: i64 = sqlx::query_scalar("SELECT id FROM runs WHERE pipeline = 'place'")
        .fetch_one(&sql)
        .await
        .unwrap();

    let ids = job_ids("j", n);
    let ledger = Ledger::read(&ledger);
    ledger.assert_each_ended_once(&ids);
    for (i, id) in ids.iter().enumerate() {
        let (own, other) = if i % 2 == 0 { (&wa, &wb) } else { (&wb, &wa) };
        let starts = &ledger.starts[id];
        assert_eq!(starts.len(), 1, "{id}: {starts:?}");
        assert_eq!(starts[0].worker, own.name, "{id} ran on the wrong worker");
        let log = |host: &Host| {
            host.state_dir
                .join(format!("logs/place/{place_run}/{id}.log"))
        };
        let printed = std::fs::read_to_string(log(own)).unwrap_or_default();
        assert!(
            printed.contains(&format!("{id} on {}", own.name)),
            "{id}: its log in {}: {printed:?}",
            own.name
        );
        assert!(!log(other).exists(), "{id}: a log in {}", other.name);
    }
    {
        // From a host that ran none of them (a state folder of its own).
        let elsewhere = Workspace::new();
        for id in ["j0", "j1"] {
            let mut cmd = Command::new(common::bin());
            cmd.current_dir(elsewhere.path())
                .arg("--state-dir")
                .arg(elsewhere.state_dir())
                .args([
                    "--database-url",
                    &db.url,
                    "logs",
                    &place_run.to_string(),
                    id,
                ])
                .env_remove("EXECUTIONER_STATE_DIR")
                .env_remove("EXECUTIONER_DATABASE__URL")
                .stdin(Stdio::null());
            let out = common::run_with_timeout(cmd, Duration::from_secs(30));
            let worker = if id == "j0" { "wa" } else { "wb" };
            assert!(
                text(&out.stdout).contains(&format!("{id} on {worker}")),
                "logs {place_run} {id}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
    let run = runs_show(&ws, &db.url, place_run);
    for id in &ids {
        assert_eq!(
            attempts_of(&run, id),
            [("Succeeded".into(), "Completed".into())]
        );
    }

    // No live worker has zone c: its job waits, shown Pending (NoWorker), until one comes.
    let start = Instant::now();
    loop {
        let job: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT j.phase, j.reason FROM jobs AS j JOIN runs AS r ON r.id = j.run_id \
             WHERE r.pipeline = 'zone-c'",
        )
        .fetch_optional(&sql)
        .await
        .unwrap();
        if job == Some(("Pending".into(), Some("NoWorker".into()))) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "zone-c's job: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Ledger::read(&ledger_c).text, "", "nobody ran zone-c's job");
    let wc = Host::worker(&ws, &db.url, TTL_SECS, "wc", "zone=c", 1);
    let hosts = [&controller, &wc];
    let phase = wait_run_terminal(&sql, "zone-c", Duration::from_secs(30), &hosts).await;
    assert_eq!(phase, "Succeeded", "{}", logs_of(&hosts));
    let ledger_c = Ledger::read(&ledger_c);
    ledger_c.assert_each_ended_once(&["c0".to_owned()]);
    assert_eq!(ledger_c.ends["c0"][0].worker, "wc");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
    eprintln!("scenario a took {:?}", started.elapsed());
}

/// b. A worker killed with -9 while its jobs sleep: their attempts are Lost once the lease ends
/// and run again on the other worker, queued again within the TTL and a margin of the kill; the
/// run succeeds, every job ended exactly once, none ran twice at once, no job process is left.
#[tokio::test]
async fn b_a_killed_workers_attempts_are_lost_and_run_again_elsewhere() {
    let _serial = SERIAL.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let started = Instant::now();
    let ws = Workspace::new();
    let ledger_path = ws.path().join("ledger");
    let mark = common::marker("killed-worker");
    let n = 6;
    let ids = job_ids("k", n);
    let jobs: String = ids
        .iter()
        .map(|id| ledger_job(id, &ledger_path, "4", ""))
        .collect();
    let controller = Host::controller(&ws, &db.url, "controller", "manifests", 0);
    let mut wa = Host::worker(&ws, &db.url, TTL_SECS, "wa", "", 3);
    let wb = Host::worker(&ws, &db.url, TTL_SECS, "wb", "", 3);
    ws.write("manifests/kill.yaml", &pipeline("kill", &mark, &jobs));
    // Both workers run three jobs each.
    let on = |worker: &str| {
        let ledger = Ledger::read(&ledger_path);
        ledger
            .starts
            .values()
            .flatten()
            .filter(|s| s.worker == worker)
            .count()
    };
    wait_for(
        Duration::from_secs(30),
        "both workers run their jobs",
        &[&controller, &wa, &wb],
        || on("wa") == 3 && on("wb") == 3,
    )
    .await;
    let on_wa: Vec<String> = Ledger::read(&ledger_path)
        .starts
        .values()
        .flatten()
        .filter(|s| s.worker == "wa")
        .map(|s| s.job.clone())
        .collect();
    let wa_jobs = wa.job_processes();
    assert!(!wa_jobs.is_empty(), "wa's jobs are found by its marker");
    wa.kill9();
    let killed_at = epoch_now();

    // The jobs of a killed worker die with it (they must be gone before the lease ends, or a
    // second attempt could run beside them); they would sleep 4 s more.
    let left = wait_no_marker(&wa.marker, Duration::from_millis(1500));
    assert!(left.is_empty(), "wa's job processes outlived it: {left:?}");

    let sql = pool(&db.url).await;
    let hosts = [&controller, &wb];
    let phase = wait_run_terminal(&sql, "kill", Duration::from_secs(60), &hosts).await;
    assert_eq!(phase, "Succeeded", "{}", logs_of(&hosts));
    let ledger = Ledger::read(&ledger_path);
    ledger.assert_each_ended_once(&ids);
    let run = runs_show(&ws, &db.url, 1);
    for id in &ids {
        let attempts = attempts_of(&run, id);
        let ended_on = &ledger.ends[id][0].worker;
        assert_eq!(ended_on, "wb", "{id}: every job ends on the live worker");
        if on_wa.contains(id) {
            assert_eq!(attempts.len(), 2, "{id}: {attempts:?}");
            assert_eq!(attempts[0].0, "Lost", "{id}: {attempts:?}");
            assert_eq!(attempts[1].0, "Succeeded", "{id}: {attempts:?}");
            let starts: Vec<&str> = ledger.starts[id].iter().map(|s| &*s.worker).collect();
            assert_eq!(starts, ["wa", "wb"], "{id}");
        } else {
            assert_eq!(attempts, [("Succeeded".into(), "Completed".into())], "{id}");
        }
    }
    // The second attempts were queued within the lease and a margin of the kill (the leader
    // sweeps expired leases every second).
    let requeued: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at)::float8 FROM attempts WHERE number = 2",
    )
    .fetch_all(&sql)
    .await
    .unwrap();
    assert_eq!(requeued.len(), on_wa.len());
    for at in requeued {
        let after = at - killed_at;
        assert!(
            after < TTL_SECS + 3.0,
            "queued again {after:.1} s after the kill (TTL {TTL_SECS} s)"
        );
    }
    assert!(
        wait_no_marker(&mark, Duration::from_secs(10)).is_empty(),
        "orphan job processes"
    );
    eprintln!("scenario b took {:?}", started.elapsed());
}

/// d. The server restarted (a fast shutdown) mid-run, then killed with -9 and started: the run
/// completes with every job started and ended exactly once, and every attempt a job process saw
/// has its row.
#[tokio::test]
async fn d_a_restarted_and_a_killed_server_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let cluster = pg_cluster::cluster().expect("the cluster the database is on");
    let started = Instant::now();
    let ws = Workspace::new();
    let ledger_path = ws.path().join("ledger");
    let mark = common::marker("server-faults");
    // 60 jobs in 4 lanes, each after the one 4 before it: 15 levels of 0.3 s.
    let n = 60;
    let ids = job_ids("j", n);
    let jobs: String = (0..n)
        .map(|i| {
            let deps = if i >= 4 {
                format!(", dependencies: [j{}]", i - 4)
            } else {
                String::new()
            };
            ledger_job(&ids[i], &ledger_path, "0.3", &deps)
        })
        .collect();
    // A lease longer than the outages: a worker pauses through them rather than giving up.
    let ttl = 8.0;
    let mut controller = Host::controller(&ws, &db.url, "controller", "manifests", 0);
    let w1 = Host::worker(&ws, &db.url, ttl, "w1", "", 4);
    ws.write("manifests/faults.yaml", &pipeline("faults", &mark, &jobs));

    let ended = || Ledger::read(&ledger_path).ended();
    // The controller rides out the faults (it pauses and reconnects): it must never exit.
    let revive = |controller: &mut Host| {
        if let Some(status) = controller.exited() {
            panic!(
                "the controller exited ({status}) on a server fault:\n{}",
                logs_of(&[controller, &w1])
            );
        }
    };
    let limit = Duration::from_secs(60);
    let start = Instant::now();
    while ended() < 8 {
        revive(&mut controller);
        let logs = || logs_of(&[&controller, &w1]);
        assert!(start.elapsed() < limit, "8 jobs never ended\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.restart();
    let after_restart = ended();
    let start = Instant::now();
    while ended() < after_restart + 8 {
        revive(&mut controller);
        let logs = || logs_of(&[&controller, &w1]);
        assert!(start.elapsed() < limit, "no 8 more jobs ended\n{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = ended();
    assert!(at_kill < n, "the run ended before the kill -9");
    cluster.kill_9_postmaster();
    cluster.start();

    let sql = pool(&db.url).await;
    let start = Instant::now();
    let phase = loop {
        if let Some(phase) = terminal_phase(&sql, "faults").await {
            break phase;
        }
        revive(&mut controller);
        let logs = || logs_of(&[&controller, &w1]);
        assert!(start.elapsed() < limit, "the run never ended\n{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ledger = Ledger::read(&ledger_path);
    let run = runs_show(&ws, &db.url, 1);
    let twice: Vec<(&String, Vec<(String, String)>)> = ledger
        .starts
        .iter()
        .filter(|(_, starts)| starts.len() > 1)
        .map(|(job, _)| (job, attempts_of(&run, job)))
        .collect();
    assert!(
        twice.is_empty(),
        "jobs started twice (their attempts): {twice:?}\nledger:\n{}\nworker:\n{}",
        ledger.text,
        w1.log_text()
    );
    assert_eq!(phase, "Succeeded", "{run}");
    ledger.assert_each_ended_once(&ids);
    // Every attempt a job process saw has its row.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT job_id, number FROM attempts")
        .fetch_all(&sql)
        .await
        .unwrap();
    for start in ledger.starts.values().flatten() {
        assert!(
            rows.contains(&(start.job.clone(), start.attempt)),
            "no attempt row for {start:?}: {rows:?}"
        );
    }
    assert_eq!(rows.len(), n, "one attempt per job: {rows:?}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
    eprintln!(
        "scenario d took {:?} (restart after {after_restart} ends, kill -9 after {at_kill})",
        started.elapsed()
    );
}

/// e. A worker cut off from the database (its role may no longer log in, its sessions are ended)
/// stops its job before its lease ends; the job runs again once, on the other worker; the run
/// succeeds.
#[tokio::test]
async fn e_a_worker_cut_off_from_the_database_stops_its_job_before_the_lease_ends() {
    let _serial = SERIAL.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let started = Instant::now();
    let ws = Workspace::new();
    let ledger_path = ws.path().join("ledger");
    let mark = common::marker("cut-off");
    let jobs = ledger_job("long", &ledger_path, "8", "");
    // A lease of 6 s: the worker gives up 4 s after its last renewal, 2 s before the lease ends,
    // a margin a loaded machine keeps.
    let ttl = 6.0;
    // The controller's first connect migrates the database; then worker 2's role gets its rows.
    let controller = Host::controller(&ws, &db.url, "controller", "manifests", 0);
    let sql = pool(&db.url).await;
    let role = format!("w2_{}", db.name);
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'w2-secret'"),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"),
        // No CREATE on the schema: a worker's role needs only its rows (a database already
        // migrated is not migrated again).
        format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&sql)
            .await
            .unwrap();
    }
    let w2_url = format!(
        "postgres://{role}:w2-secret@127.0.0.1:{}/{}",
        db.cluster.port(),
        db.name
    );
    let w2 = Host::worker(&ws, &w2_url, ttl, "w2", "", 1);
    ws.write("manifests/cut.yaml", &pipeline("cut", &mark, &jobs));
    let started_on = |worker: &str| {
        Ledger::read(&ledger_path)
            .starts
            .values()
            .flatten()
            .any(|s| s.worker == worker)
    };
    wait_for(
        Duration::from_secs(30),
        "w2 runs the job",
        &[&controller, &w2],
        || started_on("w2"),
    )
    .await;
    let w1 = Host::worker(&ws, &db.url, ttl, "w1", "", 1);

    sqlx::query(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} NOLOGIN")))
        .execute(&sql)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&role)
        .execute(&sql)
        .await
        .unwrap();
    let cut_at = epoch_now();
    // w2 can renew no more: the lease it last renewed is final.
    let (attempt, expires): (i64, f64) = sqlx::query_as(
        "SELECT attempt_id, extract(epoch FROM lease_expires_at)::float8 FROM work_items \
         WHERE worker = 'w2' AND state = 'claimed'",
    )
    .fetch_one(&sql)
    .await
    .expect("w2's claimed attempt");
    wait_for(
        Duration::from_secs_f64(ttl * 2.0),
        "w2's job process is gone",
        &[&controller, &w2],
        || w2.job_processes().is_empty(),
    )
    .await;
    let gone_at = epoch_now();
    assert!(
        gone_at < expires,
        "w2's job outlived its lease: gone {:.2} s after the cut, the lease ended {:.2} s after it\n{}",
        gone_at - cut_at,
        expires - cut_at,
        w2.log_text()
    );
    assert!(
        w2.log_text().contains("job killed"),
        "w2 says it killed its job:\n{}",
        w2.log_text()
    );

    let hosts = [&controller, &w1, &w2];
    let phase = wait_run_terminal(&sql, "cut", Duration::from_secs(60), &hosts).await;
    assert_eq!(phase, "Succeeded", "{}", logs_of(&hosts));
    let ledger = Ledger::read(&ledger_path);
    ledger.assert_each_ended_once(&["long".to_owned()]);
    let starts: Vec<&str> = ledger.starts["long"].iter().map(|s| &*s.worker).collect();
    assert_eq!(starts, ["w2", "w1"], "run again once, on w1");
    assert_eq!(ledger.ends["long"][0].worker, "w1");
    let run = runs_show(&ws, &db.url, 1);
    let attempts = attempts_of(&run, "long");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].0, "Lost", "attempt {attempt}: {attempts:?}");
    assert_eq!(attempts[1].0, "Succeeded", "{attempts:?}");
    assert!(wait_no_marker(&mark, Duration::from_secs(5)).is_empty());
    drop(w2);
    eprintln!(
        "scenario e took {:?} (w2's job gone {:.2} s after the cut, its lease ended {:.2} s after)",
        started.elapsed(),
        gone_at - cut_at,
        expires - cut_at
    );
}

/// f. 100 `executioner apply -f FILE` at once (100 pipelines) into the manifests folder of the
/// controller(s) on one database: every apply exits 0; every pipeline ends at generation 1 with
/// exactly one run; no controller logs an error.
#[tokio::test]
async fn f_a_hundred_concurrent_applies_make_one_run_each() {
    let _serial = SERIAL.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let started = Instant::now();
    let ws = Workspace::new();
    let n = 100;
    // Two controllers, each watching its own copy of the manifests, as on two hosts: one leads.
    let controllers = [
        Host::controller(&ws, &db.url, "c1", "m1", 0),
        Host::controller(&ws, &db.url, "c2", "m2", 0),
    ];
    let worker = Host::worker(&ws, &db.url, TTL_SECS, "w1", "", 8);
    let names: Vec<String> = (0..n).map(|i| format!("p{i:03}")).collect();
    for name in &names {
        ws.write(
            &format!("src/{name}.yaml"),
            &common::manifest(name, "", "    - {id: only, command: \"true\"}\n"),
        );
    }
    let folders: Vec<&str> = ["m1", "m2"][..controllers.len()].to_vec();
    let applies: Vec<(String, Child)> = names
        .iter()
        .flat_map(|name| folders.iter().map(move |folder| (name, folder)))
        .map(|(name, folder)| {
            let child = Command::new(common::bin())
                .current_dir(ws.path())
                .arg("--state-dir")
                .arg(ws.state_dir())
                .args([
                    "apply",
                    "-f",
                    &format!("src/{name}.yaml"),
                    "--manifests",
                    folder,
                ])
                .env_remove("EXECUTIONER_STATE_DIR")
                .env("EXECUTIONER_DATABASE__URL", &db.url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (format!("{folder}/{name}"), child)
        })
        .collect();
    for (what, child) in applies {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "apply {what}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let sql = pool(&db.url).await;
    for name in &names {
        let mut hosts: Vec<&Host> = controllers.iter().collect();
        hosts.push(&worker);
        let phase = wait_run_terminal(&sql, name, Duration::from_secs(120), &hosts).await;
        assert_eq!(phase, "Succeeded", "{name}");
    }
    // Two resyncs more: nothing starts a second run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pipelines: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, generation FROM pipelines ORDER BY name")
            .fetch_all(&sql)
            .await
            .unwrap();
    let want: Vec<(String, i64)> = names.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(pipelines, want);
    let runs: Vec<(String, i64)> =
        sqlx::query_as("SELECT pipeline, count(*) FROM runs GROUP BY pipeline ORDER BY pipeline")
            .fetch_all(&sql)
            .await
            .unwrap();
    let want: Vec<(String, i64)> = names.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(runs, want, "exactly one run per pipeline");
    for controller in &controllers {
        assert_eq!(
            controller.errors(),
            Vec::<String>::new(),
            "{}",
            controller.name
        );
    }
    eprintln!("scenario f took {:?}", started.elapsed());
}

/// `executioner worker` without a database, or with labels it cannot read: usage errors.
#[test]
fn worker_usage_errors() {
    let ws = Workspace::new();
    let worker = |url: Option<&str>, labels: &str| {
        let mut cmd = Command::new(common::bin());
        cmd.current_dir(ws.path())
            .arg("--state-dir")
            .arg(ws.state_dir())
            .env_remove("EXECUTIONER_STATE_DIR")
            .env_remove("EXECUTIONER_DATABASE__URL")
            .stdin(Stdio::null());
        if let Some(url) = url {
            cmd.args(["--database-url", url]);
        }
        cmd.args(["worker", "--labels", labels]);
        common::run_with_timeout(cmd, Duration::from_secs(30))
    };
    let out = worker(None, "zone=a");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("database.url"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listens on port 1: the labels are refused before any connection is tried.
    let url = Some("postgres://ops@127.0.0.1:1/exe");
    for labels in ["zone", "=a", "zone=a,bad key=b"] {
        let out = worker(url, labels);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{labels}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("--labels"),
            "{labels}: {}",
            text(&out.stderr)
        );
    }
}

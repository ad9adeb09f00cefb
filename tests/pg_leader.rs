//! Controller HA on PostgreSQL (issue 16 item 4, scenario c): the leader lease of the store (one
//! holder at a time, takeover only after expiry with a higher epoch, a lost lease not renewed,
//! a fenced store's writes refused once deposed while an unfenced one's go on), and real
//! controller processes sharing one database: exactly one leads (`/readyz` 200, the other 503),
//! the standby takes over a leader killed with kill -9 mid-run and the run completes, and a
//! schedule ticks once per tick across two controllers. This binary has a cluster of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::http::Served;
use common::{Workspace, json, manifest, pg_cluster, run_with_timeout};
use executioner::spec::{JobId, PipelineName};
use executioner::store::{NewJob, NewRun, Owner, Store, StoreError};

/// The lease of the process tests: short, so that a takeover is quick.
const TTL: &str = "3s";
const TTL_SECS: u64 = 3;

async fn connect(db: &pg_cluster::TestDatabase) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&dir.path().join("state"), &db.url)
        .await
        .unwrap();
    (dir, store)
}

/// Waits out a lease of `ttl` taken just now (by the database's clock, which the test shares).
async fn expire(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
}

#[tokio::test]
async fn one_holder_at_a_time_and_a_takeover_only_after_expiry_with_the_next_epoch() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (_dir, store) = connect(&db).await;
    let ttl = Duration::from_millis(400);
    assert_eq!(store.leader().await.unwrap(), None);
    assert_eq!(store.try_lead("a", ttl).await.unwrap(), Some(1));
    assert_eq!(store.try_lead("b", ttl).await.unwrap(), None, "a holds it");
    assert_eq!(
        store.try_lead("a", ttl).await.unwrap(),
        Some(1),
        "the holder keeps its epoch"
    );
    let row = store.leader().await.unwrap().unwrap();
    assert_eq!((row.holder.as_str(), row.epoch), ("a", 1));
    assert!(store.renew_lead("a", 1, ttl).await.unwrap());

    expire(ttl).await;
    assert_eq!(store.try_lead("b", ttl).await.unwrap(), Some(2));
    assert!(
        !store.renew_lead("a", 1, ttl).await.unwrap(),
        "a lost it: its renewal fails"
    );
    assert_eq!(store.try_lead("a", ttl).await.unwrap(), None);
    assert!(store.renew_lead("b", 2, ttl).await.unwrap());

    // Resigning lets a standby take over at once, with the next epoch.
    store.resign("a", 1).await.unwrap();
    assert_eq!(
        store.try_lead("c", ttl).await.unwrap(),
        None,
        "a's resignation of a lease it lost changes nothing"
    );
    store.resign("b", 2).await.unwrap();
    assert_eq!(store.try_lead("c", ttl).await.unwrap(), Some(3));
    let row = store.leader().await.unwrap().unwrap();
    assert_eq!((row.holder.as_str(), row.epoch), ("c", 3));
}

fn owner() -> Owner {
    Owner {
        pid: 1,
        host: "test-host".to_owned(),
        start_time: Some(7),
    }
}

async fn create_run(store: &Store) -> Result<executioner::store::RunId, StoreError> {
    let pipeline = PipelineName::parse("p").unwrap();
    let job = JobId::parse("a").unwrap();
    store
        .create_run(&NewRun {
            pipeline: &pipeline,
            generation: 1,
            spec_json: "{}",
            spec_hash: "h",
            jobs: &[NewJob {
                id: &job,
                log_path: "a.log",
            }],
            owner: &owner(),
        })
        .await
}

#[tokio::test]
async fn a_fenced_stores_writes_fail_once_deposed_and_an_unfenced_ones_go_on() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (_dir, leader) = connect(&db).await;
    let (_other_dir, other) = connect(&db).await;
    // A clone made before the fence is fenced too; `unfenced` is not.
    let engine = leader.clone();
    let api = leader.unfenced();
    let ttl = Duration::from_millis(400);
    let epoch = leader.try_lead("a", ttl).await.unwrap().unwrap();
    leader.fence(epoch).unwrap();
    assert_eq!(engine.fenced_with(), Some(epoch));
    assert_eq!(api.fenced_with(), None);
    // While it leads, its writes (single statements and transactions) go through.
    assert_eq!(
        leader.observe_pipeline("p", "h1", "p.yaml").await.unwrap(),
        1
    );
    create_run(&engine).await.unwrap();
    leader
        .set_last_tick("p", time::OffsetDateTime::now_utc())
        .await
        .unwrap();

    expire(ttl).await;
    assert_eq!(other.try_lead("b", ttl).await.unwrap(), Some(epoch + 1));
    for result in [
        leader.observe_pipeline("p", "h2", "p.yaml").await.map(drop),
        create_run(&engine).await.map(drop),
        leader.take_rerun("p").await.map(drop),
        leader
            .set_last_tick("p", time::OffsetDateTime::now_utc())
            .await,
        leader.mark_pipeline_deleted("p").await,
    ] {
        match result {
            Err(StoreError::Deposed { epoch: e }) => assert_eq!(e, epoch),
            other => panic!("a deposed leader's write: {other:?}"),
        }
    }
    let message = StoreError::Deposed { epoch }.to_string();
    assert!(
        message.contains("no longer the leader") && message.contains(&format!("epoch {epoch}")),
        "{message}"
    );
    // Nothing of it landed; the commands' unfenced stores write as before.
    assert_eq!(other.pipeline("p").await.unwrap().unwrap().generation, 1);
    assert!(api.request_rerun("p").await.unwrap());
    assert_eq!(
        other.observe_pipeline("p", "h2", "p.yaml").await.unwrap(),
        2
    );
    create_run(&other).await.unwrap();
    // Fenced with the new epoch, the new leader writes.
    other.fence(epoch + 1).unwrap();
    assert!(other.take_rerun("p").await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Controller processes.

/// A controller process on `ws` (its own state folder and manifests copy) and the shared
/// database, serving HTTP on a free port (`common::http::Served`).
struct Controller;

impl Controller {
    fn start(ws: &Workspace, url: &str, env: &[(&str, &str)]) -> Served {
        let mut all = vec![
            ("EXECUTIONER_DATABASE__URL", url),
            ("EXECUTIONER_LEASE_TTL", TTL),
            ("EXECUTIONER_WORKERS", "4"),
        ];
        all.extend_from_slice(env);
        Served::start(ws, &all)
    }
}

fn log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
}

/// `executioner --state-dir STATE --database-url URL ARGS...` in `ws`.
fn exe(ws: &Workspace, url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["--database-url", url])
        .args(args)
        .env_remove("EXECUTIONER_STATE_DIR")
        .env_remove("EXECUTIONER_DATABASE__URL")
        .stdin(Stdio::null());
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// Waits until exactly one of `controllers` is ready (leads) and the others answer 503 saying
/// they stand by; returns the leader's index.
fn the_one_leader(controllers: &[&Served], limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let answers: Vec<(u16, String)> = controllers.iter().map(|c| c.ready()).collect();
        let leaders: Vec<usize> = (0..answers.len())
            .filter(|i| answers[*i].0 == 200)
            .collect();
        let standbys = answers
            .iter()
            .filter(|(status, body)| *status == 503 && body.contains("standby"))
            .count();
        if leaders.len() == 1 && standbys == answers.len() - 1 {
            return leaders[0];
        }
        assert!(leaders.len() <= 1, "two leaders at once: {answers:?}");
        assert!(
            start.elapsed() < limit,
            "no single leader within {limit:?}: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both workspaces get the same manifest, as two hosts with one git checkout would.
fn write_both(workspaces: &[&Workspace], file: &str, text: &str) {
    for ws in workspaces {
        ws.write(&format!("manifests/{file}"), text);
    }
}

/// Two controllers on one database: one leads, the other stands by. The leader is killed with
/// kill -9 mid-run; the standby leads within the lease and a margin, adopts the run, and the run
/// completes with every job succeeded once, no two attempts of a job alive at once, and no job
/// process left over. (Jobs still run as the controller's own processes here: an attempt the
/// killed leader was running may finish unrecorded before the new leader recovers it as Lost and
/// runs it again, so the ledger may show such a job ended twice, once per recorded attempt.)
#[test]
fn the_standby_takes_over_a_killed_leaders_run_and_completes_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg_cluster::database()) else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let dir = format!("{}/", shared.path().display());
    let (a, b) = (Workspace::new(), Workspace::new());
    let mark = common::marker("pg-leader");
    let (key, value) = mark.split_once('=').unwrap();
    let n = 12;
    write_both(
        &[&a, &b],
        "ha.yaml",
        &manifest(
            "ha",
            &format!("  maxParallel: 4\n  env:\n    {key}: \"{value}\"\n"),
            &common::ledger_jobs(n, &dir, "0.4"),
        ),
    );
    let mut controllers = [
        Controller::start(&a, &db.url, &[]),
        Controller::start(&b, &db.url, &[]),
    ];
    let workspaces = [&a, &b];
    let first = the_one_leader(&[&controllers[0], &controllers[1]], Duration::from_secs(30));
    let standby = 1 - first;
    assert!(
        log(workspaces[standby]).contains("standby: leader is "),
        "{}",
        log(workspaces[standby])
    );
    // Mid-run: some jobs ended, not all.
    let ledger = shared.path().join("ledger");
    let ends = |ledger: &Path| {
        std::fs::read_to_string(ledger)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("end,"))
            .count()
    };
    common::wait_until(Duration::from_secs(60), || ends(&ledger) >= 4);
    assert!(ends(&ledger) < n, "the run ended before the kill");
    controllers[first].kill9();
    let killed = Instant::now();
    common::wait_until(Duration::from_secs(TTL_SECS + 10), || {
        controllers[standby].ready().0 == 200
    });
    let failover = killed.elapsed();
    assert!(
        log(workspaces[standby]).contains("leading as "),
        "{}",
        log(workspaces[standby])
    );

    let ws = workspaces[standby];
    let start = Instant::now();
    let run = loop {
        let run = json(&exe(ws, &db.url, &["runs", "show", "1", "-o", "json"]));
        if run["phase"] == "Succeeded" {
            break run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) && run["phase"] != "Failed",
            "the run did not complete after the failover ({failover:?}): {run}\n{}",
            log(ws)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        common::wait_no_marker(&mark, Duration::from_secs(10)).is_empty(),
        "job processes left over"
    );
    let ledger = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        !ledger.contains("CONFLICT"),
        "two attempts of a job alive at once:\n{ledger}"
    );
    let jobs = run["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), n);
    for job in jobs {
        let id = job["id"].as_str().unwrap();
        assert_eq!(job["phase"], "Succeeded", "{run}");
        let attempts = job["attemptList"].as_array().unwrap();
        let phases: Vec<&str> = attempts
            .iter()
            .map(|a| a["phase"].as_str().unwrap())
            .collect();
        assert_eq!(
            phases.iter().filter(|p| **p == "Succeeded").count(),
            1,
            "{id} succeeded once: {run}"
        );
        assert!(
            phases.iter().all(|p| *p == "Succeeded" || *p == "Lost"),
            "{id}: an attempt cut by the failover is Lost, nothing else: {run}"
        );
        let ended = ledger
            .lines()
            .filter(|l| l.starts_with(&format!("end,{id},")))
            .count();
        assert!(
            (1..=attempts.len()).contains(&ended),
            "{id} ended {ended} times with {} attempts:\n{ledger}",
            attempts.len()
        );
    }
}

/// Two controllers on one database, a schedule ticking every 2 s (a minute at 30 times the
/// clock's speed): each tick starts one run, not one per controller. Runs of one tick by two
/// controllers would start within a reconcile of each other; distinct ticks are 2 s apart (the
/// scaled clock starts at each process's first reading, so the two would not even agree on when).
#[cfg(feature = "failpoints")]
#[test]
fn a_schedule_ticks_once_per_tick_across_two_controllers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg_cluster::database()) else {
        return;
    };
    let (a, b) = (Workspace::new(), Workspace::new());
    write_both(
        &[&a, &b],
        "ticking.yaml",
        &manifest(
            "ticking",
            "  schedule: \"* * * * *\"\n",
            "    - {id: a, command: \"true\"}\n",
        ),
    );
    // One fast clock for both, so that both would wake at each tick's very moment.
    let origin = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let scale = [
        ("EXECUTIONER_CLOCK_SCALE", "30"),
        ("EXECUTIONER_CLOCK_ORIGIN", origin.as_str()),
    ];
    let controllers = [
        Controller::start(&a, &db.url, &scale),
        Controller::start(&b, &db.url, &scale),
    ];
    let leader = the_one_leader(&[&controllers[0], &controllers[1]], Duration::from_secs(30));
    let workspaces = [&a, &b];
    let runs = || -> Vec<serde_json::Value> {
        json(&exe(
            &a,
            &db.url,
            &[
                "runs",
                "--pipeline",
                "ticking",
                "--limit",
                "100",
                "-o",
                "json",
            ],
        ))
        .as_array()
        .cloned()
        .unwrap_or_default()
    };
    // The generation's run and at least three ticks.
    common::wait_until(Duration::from_secs(60), || runs().len() >= 4);
    let rows = rt.block_on(async {
        let (_dir, store) = connect(&db).await;
        store.runs(Some("ticking"), 100).await.unwrap()
    });
    // Only the leader decided: every run is its own, the standby started none.
    let owners: std::collections::BTreeSet<Option<i64>> =
        rows.iter().map(|r| r.owner_pid).collect();
    let leader_pid = controllers[leader]
        .child
        .as_ref()
        .map(|c| i64::from(c.id()));
    assert_eq!(owners, [leader_pid].into(), "{rows:?}");
    assert!(
        !log(workspaces[1 - leader]).contains("run started"),
        "{}",
        log(workspaces[1 - leader])
    );
    let mut started: Vec<time::OffsetDateTime> = rows.iter().map(|r| r.created_at).collect();
    started.sort();
    // The generation's own run may start just before the first tick: the ticks' runs are compared.
    for pair in started[1..].windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= time::Duration::milliseconds(1000),
            "two runs {gap} apart: one tick started twice: {started:?}\n{}\n{}",
            log(&a),
            log(&b)
        );
    }
}

/// A leader frozen (SIGSTOP) past its lease is deposed: the standby takes over and adopts the
/// run, though its recorded owner still lives (the frozen jobs are stopped and recorded Lost);
/// woken up (SIGCONT), the old leader finds its lease gone, writes nothing more (its writes
/// would be refused by the fence), says so and stands by. The run completes once.
#[test]
fn a_frozen_leader_is_deposed_and_stands_by_when_it_wakes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg_cluster::database()) else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let dir = format!("{}/", shared.path().display());
    let (a, b) = (Workspace::new(), Workspace::new());
    let mark = common::marker("pg-frozen");
    let (key, value) = mark.split_once('=').unwrap();
    let n = 8;
    write_both(
        &[&a, &b],
        "frozen.yaml",
        &manifest(
            "frozen",
            &format!("  maxParallel: 4\n  env:\n    {key}: \"{value}\"\n"),
            &common::ledger_jobs(n, &dir, "0.5"),
        ),
    );
    let controllers = [
        Controller::start(&a, &db.url, &[]),
        Controller::start(&b, &db.url, &[]),
    ];
    let workspaces = [&a, &b];
    let first = the_one_leader(&[&controllers[0], &controllers[1]], Duration::from_secs(30));
    let second = 1 - first;
    let ledger = shared.path().join("ledger");
    common::wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains("start,"))
    });
    let pid = nix::unistd::Pid::from_raw(controllers[first].child.as_ref().unwrap().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    common::wait_until(Duration::from_secs(TTL_SECS + 10), || {
        controllers[second].ready().0 == 200
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    common::wait_until(Duration::from_secs(TTL_SECS + 10), || {
        log(workspaces[first]).contains("no longer the leader")
    });
    assert_eq!(
        the_one_leader(&[&controllers[0], &controllers[1]], Duration::from_secs(10)),
        second,
        "the old leader stands by"
    );

    let ws = workspaces[second];
    let start = Instant::now();
    let run = loop {
        let run = json(&exe(ws, &db.url, &["runs", "show", "1", "-o", "json"]));
        if run["phase"] == "Succeeded" {
            break run;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) && run["phase"] != "Failed",
            "the run did not complete after the takeover: {run}\n{}",
            log(ws)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        common::wait_no_marker(&mark, Duration::from_secs(10)).is_empty(),
        "job processes left over"
    );
    let ledger = std::fs::read_to_string(&ledger).unwrap();
    assert!(!ledger.contains("CONFLICT"), "{ledger}");
    for job in run["jobs"].as_array().unwrap() {
        let attempts = job["attemptList"].as_array().unwrap();
        assert_eq!(
            attempts
                .iter()
                .filter(|a| a["phase"] == "Succeeded")
                .count(),
            1,
            "{run}"
        );
        assert!(
            attempts
                .iter()
                .all(|a| a["phase"] == "Succeeded" || a["phase"] == "Lost"),
            "{run}"
        );
    }
    // The deposed leader stood by without an error, and still stands by.
    let old = log(workspaces[first]);
    assert!(!old.contains("error:"), "{old}");
    assert_eq!(
        controllers[first].ready().0,
        503,
        "the deposed leader stands by: {old}"
    );
}

/// SIGTERM to the leader: it stops as it always does (exit 130), gives up the lead (the lease
/// expired as of its exit), and the standby takes over at its next try.
#[test]
fn a_stopped_leader_resigns_and_the_standby_takes_over_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(pg_cluster::database()) else {
        return;
    };
    let (a, b) = (Workspace::new(), Workspace::new());
    write_both(
        &[&a, &b],
        "once.yaml",
        &manifest("once", "", "    - {id: a, command: \"true\"}\n"),
    );
    let ttl = [("EXECUTIONER_LEASE_TTL", "6s")];
    let mut controllers = [
        Controller::start(&a, &db.url, &ttl),
        Controller::start(&b, &db.url, &ttl),
    ];
    let workspaces = [&a, &b];
    let first = the_one_leader(&[&controllers[0], &controllers[1]], Duration::from_secs(30));
    let lease = || {
        rt.block_on(async {
            let (_dir, store) = connect(&db).await;
            store.leader().await.unwrap().unwrap()
        })
    };
    let before = lease();
    let mut child = controllers[first].child.take().unwrap();
    common::sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", log(workspaces[first]));
    assert!(
        log(workspaces[first]).contains("gave up the lead"),
        "{}",
        log(workspaces[first])
    );
    // Expired as it stopped (or already taken over with the next epoch).
    let after = lease();
    assert!(
        (after.holder == before.holder
            && after.epoch == before.epoch
            && after.expires_at <= time::OffsetDateTime::now_utc())
            || after.epoch == before.epoch + 1,
        "the lease still runs after the leader stopped: {before:?} then {after:?}"
    );
    common::wait_until(Duration::from_secs(30), || {
        controllers[1 - first].ready().0 == 200
    });
}

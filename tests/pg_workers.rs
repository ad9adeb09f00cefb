//! Workers and their shipped logs on a real PostgreSQL (issue 16 item 2, DESIGN 9): registering,
//! heartbeats, Stale and Stopped by the database's clock, a name a live worker holds; log chunks
//! fenced by the attempt's token; the shipper against a real file that grows (what it ships is
//! the file's tail; the cap's marker; a rejected claim stops it); `executioner logs` from a state
//! folder that never ran the job printing (and following) the shipped chunks; `executioner
//! workers` as a table and as JSON. The attempt queue is the lead's: its `work_items` rows are
//! written here by hand with SQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Workspace, json, pg_cluster, run_with_timeout, text};
use executioner::spec::{JobId, PipelineName};
use executioner::status::{JobPhase, JobReason};
use executioner::store::workers::{WorkerInfo, WorkerState};
use executioner::store::{AttemptId, NewJob, NewRun, Owner, RunId, Store, StoreError};
use executioner::worker::ship::{ShipHandle, ShipOutcome};

const TTL: Duration = Duration::from_secs(15);

fn worker(name: &str, host: &str, pid: u32, labels: &[(&str, &str)]) -> WorkerInfo {
    WorkerInfo {
        name: name.to_owned(),
        host: host.to_owned(),
        pid,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        slots: 2,
    }
}

async fn connect(url: &str) -> (Store, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let store = Store::connect(state.path(), url).await.unwrap();
    (store, state)
}

async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url).await.unwrap()
}

/// A run of pipeline `p` with jobs `a` and `b`, and a Running attempt of `a`.
async fn run_with_attempt(store: &Store) -> (RunId, AttemptId) {
    let pipeline = PipelineName::parse("p").unwrap();
    let (a, b) = (JobId::parse("a").unwrap(), JobId::parse("b").unwrap());
    let run = store
        .create_run(&NewRun {
            pipeline: &pipeline,
            generation: 1,
            spec_json: "{}",
            spec_hash: "h",
            jobs: &[
                NewJob {
                    id: &a,
                    log_path: "a.log",
                },
                NewJob {
                    id: &b,
                    log_path: "b.log",
                },
            ],
            owner: &Owner {
                pid: 1,
                host: "controller-host".to_owned(),
                start_time: None,
            },
        })
        .await
        .unwrap();
    let attempt = store.attempt_started(run, &a, 1, 1, 1).await.unwrap();
    (run, attempt)
}

/// The queue item of `attempt`, as a claim by worker `w1` with `token` would leave it.
async fn claim_by_hand(pool: &sqlx::PgPool, run: RunId, attempt: AttemptId, token: i64) {
    sqlx::query(
        "INSERT INTO work_items (attempt_id, run_id, job_id, state, worker, token, lease_expires_at, claimed_at) \
         VALUES ($1, $2, 'a', 'claimed', 'w1', $3, now() + interval '15 seconds', now())",
    )
    .bind(attempt.get())
    .bind(run.get())
    .bind(token)
    .execute(pool)
    .await
    .unwrap();
}

async fn set_item_state(pool: &sqlx::PgPool, attempt: AttemptId, state: &str) {
    sqlx::query("UPDATE work_items SET state = $2 WHERE attempt_id = $1")
        .bind(attempt.get())
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
}

/// Every shipped byte of job `a`, in order.
async fn shipped(store: &Store, run: RunId) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let chunks = store.log_chunks(run, "a", cursor).await.unwrap();
        let Some(last) = chunks.last() else {
            return out;
        };
        cursor = Some(last.cursor());
        for chunk in &chunks {
            out.extend_from_slice(&chunk.data);
        }
    }
}

/// Waits (up to 20 s) until job `a` of `run` has at least `bytes` shipped.
async fn wait_shipped(store: &Store, run: RunId, bytes: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while shipped(store, run).await.len() < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "never shipped {bytes} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn append(path: &std::path::Path, data: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(data).unwrap();
}

#[tokio::test]
async fn workers_register_heartbeat_go_stale_stop_and_keep_their_names() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, _state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    store
        .register_worker(&worker("w1", "h1", 10, &[("gpu", "a100")]), TTL)
        .await
        .unwrap();

    // Another host, or another process on the same host, may not take a live worker's name.
    for (host, pid) in [("h2", 11), ("h1", 12)] {
        let err = store
            .register_worker(&worker("w1", host, pid, &[]), TTL)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::WorkerNameTaken { host, pid: 10, .. } if host == "h1"),
            "{err:?}"
        );
        let message = executioner::error_chain::render(&err);
        assert!(
            message.contains("\"w1\" is held by a live worker on h1 (pid 10)"),
            "{message}"
        );
    }
    // The same process registering again keeps it.
    store
        .register_worker(&worker("w1", "h1", 10, &[("gpu", "a100")]), TTL)
        .await
        .unwrap();
    assert!(store.worker_heartbeat("w1", 10).await.unwrap());
    assert!(!store.worker_heartbeat("w1", 99).await.unwrap());

    let rows = store.workers(TTL).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(
        (row.name.as_str(), row.host.as_str(), row.pid),
        ("w1", "h1", 10)
    );
    assert_eq!(
        row.labels,
        BTreeMap::from([("gpu".to_owned(), "a100".to_owned())])
    );
    assert_eq!(
        (row.slots, row.running, row.state),
        (2, 0, WorkerState::Live)
    );
    assert!(row.heartbeat_at <= row.read_at);
    assert_eq!(
        store.live_worker_labels(TTL).await.unwrap(),
        vec![row.labels.clone()]
    );

    // Its claimed attempts count as running.
    let (run, attempt) = run_with_attempt(&store).await;
    claim_by_hand(&pool, run, attempt, 1).await;
    assert_eq!(store.workers(TTL).await.unwrap()[0].running, 1);

    // No heartbeat for longer than the ttl, by the database's clock: Stale, not live, and its
    // name free for another host; the old process's heartbeat is then refused.
    sqlx::query("UPDATE workers SET heartbeat_at = now() - interval '1 minute'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        store.workers(TTL).await.unwrap()[0].state,
        WorkerState::Stale
    );
    assert!(store.live_worker_labels(TTL).await.unwrap().is_empty());
    store
        .register_worker(&worker("w1", "h2", 11, &[("zone", "eu")]), TTL)
        .await
        .unwrap();
    assert!(!store.worker_heartbeat("w1", 10).await.unwrap());
    let row = &store.workers(TTL).await.unwrap()[0];
    assert_eq!((row.host.as_str(), row.state), ("h2", WorkerState::Live));

    // Stopped: shown so, no longer live, its heartbeat refused, its name free at once.
    store.worker_stopped("w1", 11).await.unwrap();
    assert_eq!(
        store.workers(TTL).await.unwrap()[0].state,
        WorkerState::Stopped
    );
    assert!(!store.worker_heartbeat("w1", 11).await.unwrap());
    assert!(store.live_worker_labels(TTL).await.unwrap().is_empty());
    store
        .register_worker(&worker("w1", "h3", 12, &[]), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.workers(TTL).await.unwrap()[0].state,
        WorkerState::Live
    );
}

#[tokio::test]
async fn on_sqlite_workers_and_shipped_logs_are_a_clear_error() {
    let state = tempfile::tempdir().unwrap();
    let store = Store::open(state.path(), Default::default()).await.unwrap();
    let err = store.workers(TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::NeedsPostgres { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("workers need a PostgreSQL database"),
        "{err}"
    );
    let err = store
        .append_log_chunk(AttemptId::from(1), 1, 0, b"x")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("shipped logs need a PostgreSQL database"),
        "{err}"
    );
}

#[tokio::test]
async fn log_chunks_are_fenced_by_the_claims_token_and_read_in_order() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, _state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    let (run, first) = run_with_attempt(&store).await;
    // No queue item at all: nothing may be shipped.
    assert!(
        !store
            .append_log_chunk(first, 7, 0, b"early\n")
            .await
            .unwrap()
    );
    claim_by_hand(&pool, run, first, 7).await;
    assert!(store.append_log_chunk(first, 7, 0, b"one\n").await.unwrap());
    // A retry of the same chunk (its answer lost) is not a rejection.
    assert!(store.append_log_chunk(first, 7, 0, b"one\n").await.unwrap());
    assert!(
        !store
            .append_log_chunk(first, 8, 1, b"stale token\n")
            .await
            .unwrap()
    );
    assert!(store.append_log_chunk(first, 7, 1, b"two\n").await.unwrap());
    for state in ["done", "lost", "queued"] {
        set_item_state(&pool, first, state).await;
        assert!(
            !store
                .append_log_chunk(first, 7, 2, b"late\n")
                .await
                .unwrap(),
            "accepted while {state}"
        );
    }

    // A second attempt of the same job: read after the first one's chunks.
    let a = JobId::parse("a").unwrap();
    let second = store.attempt_started(run, &a, 1, 2, 2).await.unwrap();
    claim_by_hand(&pool, run, second, 9).await;
    assert!(
        store
            .append_log_chunk(second, 9, 0, b"three\n")
            .await
            .unwrap()
    );

    let chunks = store.log_chunks(run, "a", None).await.unwrap();
    let seen: Vec<(AttemptId, i64, &[u8])> = chunks
        .iter()
        .map(|c| (c.attempt_id, c.seq, c.data.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (first, 0, &b"one\n"[..]),
            (first, 1, &b"two\n"[..]),
            (second, 0, &b"three\n"[..])
        ]
    );
    let rest = store
        .log_chunks(run, "a", Some(chunks[0].cursor()))
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(
        store
            .log_chunks(run, "a", Some(chunks[2].cursor()))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.log_chunks(run, "b", None).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_shipper_ships_the_tail_of_a_growing_file() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    let (run, attempt) = run_with_attempt(&store).await;
    claim_by_hand(&pool, run, attempt, 3).await;
    let path = state.path().join("a.log");
    // What an earlier attempt wrote stays out: shipping starts at the offset.
    append(&path, b"==> an earlier attempt\n");
    let offset = std::fs::metadata(&path).unwrap().len();
    let ship = ShipHandle::start(store.clone(), attempt, 3, path.clone(), offset, 1 << 20);
    append(&path, b"first line\n");
    wait_shipped(&store, run, 11).await;
    // More than one chunk's worth at once, then a last line without its newline.
    let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    append(&path, &big);
    append(&path, b"\nlast line, no newline");
    let report = ship.finish().await.unwrap();
    assert_eq!(report.outcome, ShipOutcome::Complete);
    let file = std::fs::read(&path).unwrap();
    let tail = &file[usize::try_from(offset).unwrap()..];
    assert_eq!(shipped(&store, run).await, tail);
    assert_eq!(report.bytes, tail.len() as u64);
    let chunks = store.log_chunks(run, "a", None).await.unwrap();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.data.len() <= 64 * 1024));
    assert_eq!(report.chunks, i64::try_from(chunks.len()).unwrap());
}

#[tokio::test]
async fn the_shipper_stops_at_the_cap_with_a_marker_line() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    let (run, attempt) = run_with_attempt(&store).await;
    claim_by_hand(&pool, run, attempt, 3).await;
    let path = state.path().join("a.log");
    let lines: String = (0..50).map(|i| format!("line {i:03}\n")).collect();
    append(&path, lines.as_bytes());
    let ship = ShipHandle::start(store.clone(), attempt, 3, path.clone(), 0, 100);
    let report = ship.finish().await.unwrap();
    assert_eq!(report.outcome, ShipOutcome::Truncated);
    // Cut after the last whole line that fits: 11 lines of 9 bytes.
    assert_eq!(report.bytes, 99);
    let text = String::from_utf8(shipped(&store, run).await).unwrap();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(
        text,
        format!(
            "{}[executioner] output truncated after 99 bytes (cap 100); the full log is in {} on {host}\n",
            &lines[..99],
            path.display()
        )
    );

    // One long line with no newline in the cap: cut inside it, the marker on a line of its own.
    let a = JobId::parse("a").unwrap();
    let second = store.attempt_started(run, &a, 1, 2, 2).await.unwrap();
    claim_by_hand(&pool, run, second, 4).await;
    let offset = std::fs::metadata(&path).unwrap().len();
    append(&path, b"0123456789abcdefghij");
    let ship = ShipHandle::start(store.clone(), second, 4, path.clone(), offset, 10);
    let report = ship.finish().await.unwrap();
    assert_eq!(
        (report.outcome, report.bytes, report.chunks),
        (ShipOutcome::Truncated, 10, 2)
    );
    let chunks = store.log_chunks(run, "a", None).await.unwrap();
    let second_text: Vec<u8> = chunks
        .iter()
        .filter(|c| c.attempt_id == second)
        .flat_map(|c| c.data.clone())
        .collect();
    assert!(
        String::from_utf8(second_text)
            .unwrap()
            .starts_with("0123456789\n[executioner] output truncated after 10 bytes (cap 10);"),
    );
}

#[tokio::test]
async fn the_shipper_stops_when_its_claim_is_gone() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    let (run, attempt) = run_with_attempt(&store).await;
    claim_by_hand(&pool, run, attempt, 3).await;
    let path = state.path().join("a.log");
    let ship = ShipHandle::start(store.clone(), attempt, 3, path.clone(), 0, 1 << 20);
    // The file appears after the shipper started.
    append(&path, b"shipped\n");
    wait_shipped(&store, run, 8).await;
    // The lease expired and the attempt was recorded Lost elsewhere: the late output is refused.
    set_item_state(&pool, attempt, "lost").await;
    append(&path, b"too late\n");
    let report = ship.finish().await.unwrap();
    assert_eq!(report.outcome, ShipOutcome::Rejected);
    assert_eq!(shipped(&store, run).await, b"shipped\n");
}

/// `executioner --state-dir STATE --database-url URL ARGS...` in `ws`.
fn exe_command(ws: &Workspace, url: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(args)
        .env_remove("EXECUTIONER_STATE_DIR")
        .env_remove("EXECUTIONER_DATABASE__URL")
        .stdin(Stdio::null());
    if let Some(url) = url {
        cmd.args(["--database-url", url]);
    }
    cmd
}

fn exe(ws: &Workspace, url: Option<&str>, args: &[&str]) -> Output {
    run_with_timeout(exe_command(ws, url, args), Duration::from_secs(60))
}

#[tokio::test]
async fn logs_from_another_state_folder_print_and_follow_the_shipped_chunks() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, _state) = connect(&db.url).await;
    let pool = pool(&db.url).await;
    let (run, attempt) = run_with_attempt(&store).await;
    claim_by_hand(&pool, run, attempt, 5).await;
    assert!(
        store
            .append_log_chunk(attempt, 5, 0, b"hello ")
            .await
            .unwrap()
    );
    assert!(
        store
            .append_log_chunk(attempt, 5, 1, b"from h1\n")
            .await
            .unwrap()
    );

    // A host that never ran the job: no log file in its own state folder.
    let other = Workspace::new();
    let run_arg = run.to_string();
    let out = exe(&other, Some(&db.url), &["logs", &run_arg, "a"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello from h1\n");

    // Unknown run or job, or a job that never ran: today's errors.
    let out = exe(&other, Some(&db.url), &["logs", "999", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("run 999 does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = exe(&other, Some(&db.url), &["logs", &run_arg, "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("has no job \"nope\""),
        "{}",
        text(&out.stderr)
    );
    let out = exe(&other, Some(&db.url), &["logs", &run_arg, "b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("job b of run"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("it has no log"),
        "{}",
        text(&out.stderr)
    );

    // --follow prints each chunk as it comes (each is seen before the next is shipped), until
    // the job ends.
    let mut follow = exe_command(&other, Some(&db.url), &["logs", &run_arg, "a", "--follow"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = follow.spawn().unwrap();
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines.send(line.unwrap());
        }
    });
    let next_line = || seen.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(next_line(), "hello from h1");
    assert!(
        store
            .append_log_chunk(attempt, 5, 2, b"more\n")
            .await
            .unwrap()
    );
    assert_eq!(next_line(), "more");
    assert!(
        store
            .append_log_chunk(attempt, 5, 3, b"done\n")
            .await
            .unwrap()
    );
    let a = JobId::parse("a").unwrap();
    store
        .set_job(
            run,
            &a,
            JobPhase::Succeeded,
            Some(JobReason::Completed),
            None,
        )
        .await
        .unwrap();
    assert_eq!(next_line(), "done");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    reader.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(seen.try_recv().is_err(), "nothing after the job ended");
}

#[tokio::test]
async fn the_workers_command_shows_a_table_and_json() {
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let (store, _state) = connect(&db.url).await;
    let ws = Workspace::new();
    let out = exe(&ws, Some(&db.url), &["workers"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no workers registered"),
        "{}",
        text(&out.stdout)
    );

    store
        .register_worker(&worker("gpu-1", "h1", 10, &[("gpu", "a100")]), TTL)
        .await
        .unwrap();
    store
        .register_worker(&worker("cpu-1", "h2", 20, &[]), TTL)
        .await
        .unwrap();
    store.worker_stopped("cpu-1", 20).await.unwrap();

    let out = exe(&ws, Some(&db.url), &["workers"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for expected in [
        "NAME",
        "HOST",
        "LABELS",
        "SLOTS",
        "RUNNING",
        "HEARTBEAT",
        "STATE",
        "gpu-1",
        "h1 (pid 10)",
        "gpu=a100",
        "Live",
        "cpu-1",
        "Stopped",
    ] {
        assert!(table.contains(expected), "{expected} missing:\n{table}");
    }

    let workers = json(&exe(&ws, Some(&db.url), &["workers", "-o", "json"]));
    let workers = workers.as_array().unwrap();
    assert_eq!(workers.len(), 2);
    // By name: cpu-1 first.
    assert_eq!(workers[0]["name"], "cpu-1");
    assert_eq!(workers[0]["state"], "Stopped");
    assert_eq!(workers[1]["name"], "gpu-1");
    assert_eq!(workers[1]["host"], "h1");
    assert_eq!(workers[1]["pid"], 10);
    assert_eq!(workers[1]["labels"]["gpu"], "a100");
    assert_eq!(workers[1]["slots"], 2);
    assert_eq!(workers[1]["running"], 0);
    assert_eq!(workers[1]["state"], "Live");
    assert!(workers[1]["heartbeatAgeSeconds"].as_f64().unwrap() >= 0.0);
    assert!(workers[1]["heartbeatAt"].as_str().unwrap().ends_with('Z'));

    // SQLite: exit 2 with what to do, and no state folder made for it.
    let local = Workspace::new();
    let out = exe(&local, None, &["workers"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("workers need a PostgreSQL database"),
        "{}",
        text(&out.stderr)
    );
    assert!(!local.state_dir().exists());
}

//! The SQLite-only store tests: the file itself (creation and modes, header and integrity checks, a
//! newer or older schema, unsafe permissions), the busy write lock, and processes racing or killed
//! on one file. What a store does is tested on both backends in `store/test_bodies.rs`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::*;

use super::test_bodies::{JOB_IDS, end, jid, jobs, new_run, owner};

fn state_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("state")
}

async fn open(dir: &Path) -> Store {
    Store::open(dir, Durability::Normal).await.expect("open")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

#[tokio::test]
async fn open_creates_private_folder_and_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("nested").join("state");
    let store = open(&dir).await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(store.sqlite().path(), dir.join(DB_FILE));
    assert_eq!(mode(store.sqlite().path()), 0o600);
    // The WAL exists while a connection that wrote is open.
    store
        .observe_pipeline("p", "hash", "p.yaml")
        .await
        .expect("write");
    let wal = sqlite::open::sibling(store.sqlite().path(), "-wal");
    assert_eq!(
        mode(&wal),
        0o600,
        "SQLite gives the WAL the database's mode"
    );

    let journal: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&store.sqlite().pool)
        .await
        .and_then(|row| row.try_get(0))
        .expect("journal mode");
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query("PRAGMA synchronous")
        .fetch_one(&store.sqlite().pool)
        .await
        .and_then(|row| row.try_get(0))
        .expect("synchronous");
    assert_eq!(synchronous, 1, "NORMAL");
    let version: i64 = sqlx::query("PRAGMA user_version")
        .fetch_one(&store.sqlite().pool)
        .await
        .and_then(|row| row.try_get(0))
        .expect("user_version");
    assert_eq!(version, sqlite::migrations::LATEST);
    store.close().await;

    // Reopening an existing database of ours, with full durability this time.
    let store = Store::open(&dir, Durability::Full).await.expect("reopen");
    let synchronous: i64 = sqlx::query("PRAGMA synchronous")
        .fetch_one(&store.sqlite().pool)
        .await
        .and_then(|row| row.try_get(0))
        .expect("synchronous");
    assert_eq!(synchronous, 2, "FULL");
}

/// Writes a database of ours with one run and closes it (removing the WAL).
async fn valid_database(dir: &Path) -> PathBuf {
    let store = open(dir).await;
    new_run(&store, "p").await;
    let path = store.sqlite().path().to_owned();
    store.close().await;
    assert!(!sqlite::open::sibling(&path, "-wal").exists());
    path
}

/// Opening must fail as corruption and leave the file and its folder exactly as they were.
async fn assert_refused_untouched(dir: &Path, path: &Path) -> StoreError {
    let before = fs::read(path).expect("read");
    let err = Store::open(dir, Durability::Normal)
        .await
        .expect_err("must refuse");
    assert!(err.is_corruption(), "{err:?}");
    assert_eq!(fs::read(path).expect("read"), before, "file changed");
    for suffix in ["-wal", "-shm", "-journal"] {
        let sibling = sqlite::open::sibling(path, suffix);
        assert!(!sibling.exists(), "{} was created", sibling.display());
    }
    err
}

#[tokio::test]
async fn truncated_database_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let path = valid_database(&dir).await;
    fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(1000))
        .expect("truncate");
    let err = assert_refused_untouched(&dir, &path).await;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn zeroed_header_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let path = valid_database(&dir).await;
    let mut bytes = fs::read(&path).expect("read");
    bytes[..100].fill(0);
    fs::write(&path, &bytes).expect("write");
    let err = assert_refused_untouched(&dir, &path).await;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn garbage_file_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = dir.join(DB_FILE);
    // A xorshift stream: random-looking bytes without a dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    fs::write(&path, &bytes).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = assert_refused_untouched(&dir, &path).await;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn damaged_page_fails_the_integrity_check_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let path = valid_database(&dir).await;
    let mut bytes = fs::read(&path).expect("read");
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(bytes.len() >= 3 * page_size);
    // Page 2 onwards: b-tree pages of the schema's tables.
    for byte in &mut bytes[page_size..page_size * 3] {
        *byte = 0xA5;
    }
    fs::write(&path, &bytes).expect("write");
    let err = assert_refused_untouched(&dir, &path).await;
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn newer_schema_is_refused_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let path = valid_database(&dir).await;
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .expect("connect");
    sqlx::query("PRAGMA user_version = 99")
        .execute(&mut conn)
        .await
        .expect("bump");
    conn.close().await.expect("close");
    assert!(!sqlite::open::sibling(&path, "-wal").exists());

    let err = assert_refused_untouched(&dir, &path).await;
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, supported, .. } if supported == sqlite::migrations::LATEST),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_older_database_is_migrated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = dir.join(DB_FILE);
    // Version 0: a valid SQLite file (rollback journal) that has never been migrated.
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE unrelated (x)")
        .execute(&mut conn)
        .await
        .expect("create");
    conn.close().await.expect("close");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");

    let store = open(&dir).await;
    let run = new_run(&store, "p").await;
    assert_eq!(store.jobs(run).await.expect("jobs").len(), 3);
}

#[tokio::test]
async fn writable_state_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = Store::open(&dir, Durability::Normal)
        .await
        .expect_err("world-writable");
    assert!(matches!(err, StoreError::Unsafe { .. }), "{err:?}");
    assert!(
        err.to_string().contains("writable by group or others"),
        "{err}"
    );
    assert!(!dir.join(DB_FILE).exists());

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = valid_database(&dir).await;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).expect("chmod");
    let err = Store::open(&dir, Durability::Normal)
        .await
        .expect_err("group-writable database");
    assert!(matches!(err, StoreError::Unsafe { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_create_distinct_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    // A fresh folder: the openers also race to create and migrate the database.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let dir = dir.clone();
            tokio::spawn(async move {
                let store = Store::open(&dir, Durability::Normal).await?;
                let owner = owner();
                let race = PipelineName::parse("race").expect("name");
                let run = store
                    .create_run(&NewRun {
                        pipeline: &race,
                        generation: 1,
                        spec_json: "{}",
                        spec_hash: "h",
                        jobs: &jobs(),
                        owner: &owner,
                    })
                    .await?;
                let attempt = store.attempt_started(run, &jid("extract"), 1, 1, 1).await?;
                store
                    .attempt_finished(
                        attempt,
                        &end(JobPhase::Succeeded, JobReason::Completed, 0),
                        Some((JobPhase::Succeeded, Some(JobReason::Completed))),
                    )
                    .await?;
                store.close().await;
                Ok::<_, StoreError>(run)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("join").expect("no store error"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let store = open(&dir).await;
    assert_eq!(store.runs(Some("race"), 100).await.expect("runs").len(), 20);
}

// Multi-process tests: the test binary runs itself as the child, selecting only
// `child_process_entry`, which does nothing unless the environment tells it what to do.

const CHILD_DIR: &str = "EXECUTIONER_STORE_TEST_DIR";
const CHILD_MODE: &str = "EXECUTIONER_STORE_TEST_MODE";
const CHILD_START_MS: &str = "EXECUTIONER_STORE_TEST_START_MS";

fn child_test_name() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, rest)| rest);
    format!("{module}::child_process_entry")
}

fn spawn_child(dir: &Path, mode: &str, start_ms: u128) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            child_test_name().as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .env(CHILD_START_MS, start_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

#[tokio::test]
async fn child_process_entry() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let start: u128 = std::env::var(CHILD_START_MS)
        .expect("start")
        .parse()
        .expect("start ms");
    if let Some(wait) = start.checked_sub(unix_ms()) {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    let store = Store::open(Path::new(&dir), Durability::Normal)
        .await
        .unwrap_or_else(|err| panic!("CHILD-ERROR open: {err:?}"));
    let run = new_run(&store, "procs").await;
    let attempt = store
        .attempt_started(run, &jid("extract"), 1, 1, 1)
        .await
        .unwrap_or_else(|err| panic!("CHILD-ERROR attempt: {err:?}"));
    store
        .attempt_spawned(attempt, 1, 1, Some(1))
        .await
        .unwrap_or_else(|err| panic!("CHILD-ERROR spawned: {err:?}"));
    // The harness prints the test name on the same line first.
    println!("CHILD-RUN={run}");
    if mode == "abort" {
        // Like kill -9: no destructors, no checkpoint, the WAL stays behind.
        std::process::abort();
    }
    store.close().await;
}

fn child_run_id(output: &std::process::Output) -> RunId {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.split_once("CHILD-RUN=").map(|(_, id)| id))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no run id from child; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

#[tokio::test]
async fn concurrent_processes_create_distinct_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let start = unix_ms() + 500;
    let children: Vec<_> = (0..20)
        .map(|_| spawn_child(&dir, "normal", start))
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ids.push(child_run_id(&output));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let store = open(&dir).await;
    assert_eq!(
        store.runs(Some("procs"), 100).await.expect("runs").len(),
        20
    );
}

#[tokio::test]
async fn a_killed_writer_loses_nothing_committed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = state_dir(&tmp);
    let output = spawn_child(&dir, "abort", 0)
        .wait_with_output()
        .expect("wait");
    assert!(!output.status.success(), "the child aborts");
    let run = child_run_id(&output);
    assert!(sqlite::open::sibling(&dir.join(DB_FILE), "-wal").exists());

    let store = open(&dir).await;
    let row = store
        .run(run)
        .await
        .expect("run")
        .expect("committed run survives");
    assert_eq!(row.phase, RunPhase::Running);
    assert_eq!(store.unfinished_runs().await.expect("unfinished").len(), 1);
    let open_attempts = store.open_attempts(run).await.expect("open");
    assert_eq!(open_attempts.len(), 1);
    assert_eq!(open_attempts[0].pid, Some(1));
}

#[test]
fn timestamps_are_utc_with_milliseconds() {
    let at = time::macros::datetime!(2026-11-27 03:00:00.123456 +01:00);
    assert_eq!(timestamp(at), "2026-11-27T02:00:00.123Z");
    let parsed = OffsetDateTime::parse(&timestamp(at), &Rfc3339).expect("parse");
    assert_eq!(parsed, time::macros::datetime!(2026-11-27 02:00:00.123 UTC));
}

#[test]
fn corruption_errors_map_to_exit_code_3() {
    let path = PathBuf::from("x.db");
    assert!(
        StoreError::Corrupt {
            path: path.clone(),
            detail: String::new()
        }
        .is_corruption()
    );
    assert!(
        StoreError::NewerSchema {
            path: path.clone(),
            found: 2,
            supported: 1
        }
        .is_corruption()
    );
    assert!(
        !StoreError::Unsafe {
            path,
            detail: String::new()
        }
        .is_corruption()
    );
}

/// Takes SQLite's write lock on a connection of its own, as another process writing would; it is
/// released by `COMMIT` on that connection.
fn hold_write_lock(store: &Store) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(store.sqlite().path()).expect("second connection");
    conn.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    conn
}

#[tokio::test]
async fn a_commit_waits_for_a_busy_write_lock_without_blocking_the_runtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    let lock = hold_write_lock(&store);
    let write = tokio::spawn({
        let store = store.clone();
        async move { store.attempt_started(run, &jid("extract"), 1, 1, 1).await }
    });
    // The test's runtime has one thread: this timer fires only if the waiting write leaves it free.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!write.is_finished(), "the write did not wait for the lock");
    assert_eq!(store.attempts(run).await.expect("attempts"), []);
    lock.execute_batch("COMMIT").expect("release the lock");
    write
        .await
        .expect("join")
        .expect("the write, once the lock is free");
    let job = store.jobs(run).await.expect("jobs").remove(0);
    assert_eq!((job.phase, job.attempts), (JobPhase::Running, 1));
}

#[tokio::test]
async fn a_cancelled_write_is_all_or_nothing_and_before_later_ones() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    let lock = hold_write_lock(&store);
    let mut cx = Context::from_waker(Waker::noop());
    // The first call finds the write lock busy and goes on waiting for it on the blocking pool;
    // the second waits for the connection. Both are dropped (cancelled) while waiting.
    for number in 1..=2 {
        let mut call = std::pin::pin!(store.attempt_started(run, &JOB_IDS[0], 1, number, number));
        assert!(matches!(call.as_mut().poll(&mut cx), Poll::Pending));
    }
    lock.execute_batch("COMMIT").expect("release the lock");
    // The first write still happens, whole, and before this one; the second never started.
    store
        .set_job(run, &jid("report"), JobPhase::Pending, None, None)
        .await
        .expect("a later write");
    let numbers: Vec<i64> = store
        .attempts(run)
        .await
        .expect("attempts")
        .iter()
        .map(|a| a.number)
        .collect();
    assert_eq!(numbers, [1]);
    let job = store.jobs(run).await.expect("jobs").remove(0);
    assert_eq!((job.phase, job.attempts), (JobPhase::Running, 1));
    // No transaction was left open on the connection.
    store
        .attempt_started(run, &jid("extract"), 1, 2, 2)
        .await
        .expect("write after the cancellations");
    assert_eq!(store.jobs(run).await.expect("jobs")[0].attempts, 2);
}

//! The PostgreSQL store against a real server (issue 16, part 1): connecting and its errors, the
//! migrations (concurrent connectors, a newer or edited database refused), what row locks must
//! keep from SQLite's single writer (one claim of a message, one owner of a round), and committed
//! data surviving a restart and a kill -9 of the postmaster. This binary has a cluster of its own,
//! so restarting it disturbs no other test binary; the tests that stop it hold `FAULTS`.
//! Also: a state file of SQLite schema version 8, made by the binary before this change, opens
//! and migrates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::pg_cluster;
use executioner::spec::{JobId, PipelineName};
use executioner::store::postgres::PgStore;
use executioner::store::{NewJob, NewRun, Owner, RoundChange, RunId, StoreError};

/// Every test of this binary holds it, so a test that stops the server never cuts another's
/// call short.
static FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn owner(pid: u32) -> Owner {
    Owner {
        pid,
        host: "test-host".to_owned(),
        start_time: Some(7),
    }
}

async fn new_run(store: &PgStore) -> RunId {
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
            owner: &owner(1),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn connection_errors_name_the_server_and_never_the_password() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    // Nobody listens on a port we just had free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{port}/x",
        pg_cluster::USER,
        pg_cluster::PASSWORD
    );
    let err = PgStore::connect(&url).await.unwrap_err();
    let text = executioner::error_chain::render(&err);
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains(pg_cluster::PASSWORD), "{text}");

    let wrong = db.url.replace(pg_cluster::PASSWORD, "not-the-password-123");
    let err = PgStore::connect(&wrong).await.unwrap_err();
    let text = executioner::error_chain::render(&err);
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("not-the-password-123"), "{text}");

    let err = PgStore::connect("postgres://u:secret-pw@host:notaport/db")
        .await
        .unwrap_err();
    let text = executioner::error_chain::render(&err);
    assert!(text.contains("not a PostgreSQL URL"), "{text}");
    assert!(!text.contains("secret-pw"), "{text}");
    assert!(!err.is_corruption());
}

#[tokio::test]
async fn the_identity_names_the_database_not_the_password() {
    let _faults = FAULTS.lock().await;
    let (Some(a), Some(b)) = (pg_cluster::database().await, pg_cluster::database().await) else {
        return;
    };
    let first = PgStore::connect(&a.url).await.unwrap();
    assert_eq!(first.identity().len(), 16);
    assert!(!first.target().contains(pg_cluster::PASSWORD));
    let again = PgStore::connect(&a.url.replace("127.0.0.1", "localhost"))
        .await
        .unwrap();
    let other = PgStore::connect(&b.url).await.unwrap();
    assert_ne!(first.identity(), other.identity());
    // Another spelling of the host is another name (as a symlinked path is on SQLite: the
    // identity only has to tell databases apart, never to merge them).
    assert_ne!(first.identity(), again.identity());
    assert_eq!(
        first.identity(),
        PgStore::connect(&a.url).await.unwrap().identity()
    );
}

#[tokio::test]
async fn concurrent_connectors_migrate_once() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let connects: Vec<_> = (0..8)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for connect in connects {
        stores.push(connect.await.unwrap().expect("every connector succeeds"));
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    // Once each: as many rows as there are migrations.
    let migrations = std::fs::read_dir(common::repo().join("migrations/postgres"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(applied, i64::try_from(migrations).unwrap());
    // Each works.
    for store in &stores {
        new_run(store).await;
    }
}

#[tokio::test]
async fn a_newer_or_edited_database_is_refused_untouched() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    PgStore::connect(&db.url).await.unwrap();
    let raw = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, '\\x00', 0)",
    )
    .execute(&raw)
    .await
    .unwrap();
    let err = PgStore::connect(&db.url).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 9999, .. }),
        "{err:?}"
    );
    assert!(err.is_corruption());
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 9999")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&raw)
        .await
        .unwrap();
    let err = PgStore::connect(&db.url).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let text = executioner::error_chain::render(&err);
    assert!(text.contains("migration 1"), "{text}");
    assert!(!text.contains(pg_cluster::PASSWORD), "{text}");
}

/// SQLite's one writer made these read-then-write steps atomic; here the row locks must: of two
/// stores claiming one message at once, one gets it; of two processes taking over one run from
/// the owner they both saw, one opens the round and the other is told it was taken over.
#[tokio::test]
async fn row_locks_give_one_claim_and_one_owner() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let a = PgStore::connect(&db.url).await.unwrap();
    let b = PgStore::connect(&db.url).await.unwrap();
    let run = new_run(&a).await;
    a.close_run(run, &[]).await.unwrap();
    let entry = executioner::store::outbox::NewOutboxEntry {
        channel: executioner::store::outbox::OutboxChannel::Command,
        scope: "",
        target: "true",
        payload: "{}",
    };
    a.enqueue_notifications(run, 1, &[entry]).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let id = a.due_outbox(now, 10).await.unwrap()[0].id;
    let lease = now + time::Duration::minutes(5);
    for _ in 0..20 {
        let (x, y) = tokio::join!(
            a.claim_outbox(id, now, lease),
            b.claim_outbox(id, now, lease)
        );
        let claims = [x.unwrap(), y.unwrap()];
        assert!(
            claims.iter().filter(|c| c.is_some()).count() <= 1,
            "{claims:?}"
        );
    }
    assert_eq!(a.outbox(run).await.unwrap()[0].attempts, 1);

    let seen = Some((Some(1), Some(7)));
    let change = RoundChange {
        owner_was: seen,
        ..RoundChange::default()
    };
    let (two, three) = (owner(2), owner(3));
    let (x, y) = tokio::join!(
        a.begin_round(run, &change, &two),
        b.begin_round(run, &change, &three)
    );
    let outcomes = [x, y];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(StoreError::TakenOver { .. }))),
        "{outcomes:?}"
    );
    assert_eq!(a.run(run).await.unwrap().unwrap().rounds, 2);
}

/// What was committed survives a fast shutdown and a kill -9 of the postmaster, and the same
/// store handle works again once the server is back (the pool reconnects).
#[tokio::test]
async fn committed_rows_survive_a_restart_and_a_crash_of_the_server() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let store = PgStore::connect(&db.url).await.unwrap();
    let first = new_run(&store).await;
    db.cluster.restart();
    let second = new_run(&store).await;
    db.cluster.kill_9_postmaster();
    db.cluster.start();
    let ids: Vec<RunId> = store
        .runs(None, -1)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [second, first]);
}

/// A state database made by the binary before the PostgreSQL store (schema version 8: a
/// controller's succeeded run, a failed and a succeeded foreground run, one pipeline row) opens,
/// and its runs read back.
#[tokio::test]
async fn a_version_8_state_file_opens_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v8.db");
    let db = state.join(executioner::store::DB_FILE);
    std::fs::copy(&fixture, &db).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = executioner::store::Store::open(&state, executioner::store::Durability::Normal)
        .await
        .unwrap();
    let runs: Vec<(i64, String, String)> = store
        .runs(None, -1)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.id.get(), r.pipeline.to_string(), r.phase.to_string()))
        .collect();
    let expected = [
        (3, "ok", "Succeeded"),
        (2, "bad", "Failed"),
        (1, "ok", "Succeeded"),
    ]
    .map(|(id, p, phase)| (id, p.to_owned(), phase.to_owned()));
    assert_eq!(runs, expected);
    let jobs = store.jobs(RunId::from(2)).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[1].exit_code, Some(3));
    let pipeline = store.pipeline("ok").await.unwrap().unwrap();
    assert_eq!(pipeline.generation, 1);
    // It writes, too.
    store
        .observe_pipeline("ok", "changed", "ok.yaml")
        .await
        .unwrap();
    assert_eq!(store.pipeline("ok").await.unwrap().unwrap().generation, 2);
}

/// `sslmode` comes from the URL: `require` against a server without TLS is refused (rather than
/// silently sent in the clear), `prefer` falls back, `disable` never tries.
#[tokio::test]
async fn sslmode_in_the_url_is_honoured() {
    let _faults = FAULTS.lock().await;
    let Some(db) = pg_cluster::database().await else {
        return;
    };
    let err = PgStore::connect(&format!("{}?sslmode=require", db.url))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
    let text = executioner::error_chain::render(&err);
    assert!(!text.contains(pg_cluster::PASSWORD), "{text}");
    for mode in ["prefer", "disable"] {
        PgStore::connect(&format!("{}?sslmode={mode}", db.url))
            .await
            .unwrap();
    }
}

//! Store tests against real database files in temporary folders.

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

fn owner() -> Owner {
    Owner {
        pid: std::process::id(),
        host: "test-host".to_owned(),
        start_time: Some(12_345),
    }
}

static JOB_IDS: std::sync::LazyLock<[JobId; 3]> =
    std::sync::LazyLock::new(|| ["extract", "load", "report"].map(jid));

/// The three jobs of every test run.
fn jobs() -> [NewJob<'static>; 3] {
    [
        NewJob {
            id: &JOB_IDS[0],
            log_path: "logs/p/1/extract.log",
        },
        NewJob {
            id: &JOB_IDS[1],
            log_path: "logs/p/1/load.log",
        },
        NewJob {
            id: &JOB_IDS[2],
            log_path: "logs/p/1/report.log",
        },
    ]
}

fn jid(id: &str) -> JobId {
    JobId::parse(id).expect("job id")
}

async fn new_run(store: &Store, pipeline: &str) -> RunId {
    let owner = owner();
    let pipeline = PipelineName::parse(pipeline).expect("pipeline name");
    store
        .create_run(&NewRun {
            pipeline: &pipeline,
            generation: 3,
            spec_json: r#"{"jobs":[]}"#,
            spec_hash: "abc123",
            jobs: &jobs(),
            owner: &owner,
        })
        .await
        .expect("create run")
}

fn state_dir(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("state")
}

async fn open(dir: &Path) -> Store {
    Store::open(dir, Durability::Normal).await.expect("open")
}

fn end(phase: JobPhase, reason: JobReason, exit_code: i32) -> AttemptEnd {
    AttemptEnd {
        phase,
        reason: Some(reason),
        exit_code: Some(exit_code),
        signal: None,
        user_time: Duration::from_micros(1500),
        system_time: Duration::from_micros(250),
        max_rss_kib: 2048,
        max_rss_upper_bound: false,
        message: None,
    }
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

#[tokio::test]
async fn run_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let before = OffsetDateTime::now_utc() - Duration::from_millis(1);
    let run = new_run(&store, "nightly").await;

    let row = store.run(run).await.expect("run").expect("exists");
    assert_eq!(row.pipeline, "nightly");
    assert_eq!(row.generation, 3);
    assert_eq!(row.spec_json, r#"{"jobs":[]}"#);
    assert_eq!(row.spec_hash, "abc123");
    assert_eq!(row.phase, RunPhase::Running);
    assert_eq!(row.reason, None);
    assert_eq!(row.rounds, 1);
    assert_eq!(row.owner_pid, Some(i64::from(std::process::id())));
    assert_eq!(row.owner_host.as_deref(), Some("test-host"));
    assert_eq!(row.owner_start_time, Some(12_345));
    assert!(row.created_at >= before);
    assert_eq!(row.started_at, Some(row.created_at));
    assert_eq!(row.finished_at, None);

    let jobs = store.jobs(run).await.expect("jobs");
    let ids: Vec<_> = jobs
        .iter()
        .map(|j| (j.job_id.as_str(), j.position))
        .collect();
    assert_eq!(ids, [("extract", 0), ("load", 1), ("report", 2)]);
    assert!(
        jobs.iter()
            .all(|j| j.phase == JobPhase::Pending && j.attempts == 0)
    );
    assert_eq!(jobs[1].log_path, "logs/p/1/load.log");

    // First attempt of extract fails and will be retried; the second succeeds.
    let first = store
        .attempt_started(run, &jid("extract"), 1, 1, 1)
        .await
        .expect("started");
    store
        .attempt_spawned(first, 4242, 4242, Some(99))
        .await
        .expect("spawned");
    let job = &store.jobs(run).await.expect("jobs")[0];
    assert_eq!((job.phase, job.attempts), (JobPhase::Running, 1));
    let started = job.started_at.expect("started_at");
    let mut failed = end(JobPhase::Failed, JobReason::ExitCode, 1);
    failed.message = Some("exit code 1".to_owned());
    store
        .attempt_finished(first, &failed, Some((JobPhase::Pending, None)))
        .await
        .expect("finished");
    let job = &store.jobs(run).await.expect("jobs")[0];
    assert_eq!(job.phase, JobPhase::Pending);
    assert_eq!(job.exit_code, Some(1));
    assert_eq!(job.finished_at, None);

    let second = store
        .attempt_started(run, &jid("extract"), 1, 2, 2)
        .await
        .expect("started");
    store
        .attempt_spawned(second, 4243, 4243, None)
        .await
        .expect("spawned");
    store
        .attempt_finished(
            second,
            &end(JobPhase::Succeeded, JobReason::Completed, 0),
            Some((JobPhase::Succeeded, Some(JobReason::Completed))),
        )
        .await
        .expect("finished");

    let job = &store.jobs(run).await.expect("jobs")[0];
    assert_eq!(job.phase, JobPhase::Succeeded);
    assert_eq!(job.reason, Some(JobReason::Completed));
    assert_eq!(job.attempts, 2);
    assert_eq!(job.exit_code, Some(0));
    assert_eq!(job.message, None);
    assert_eq!(job.started_at, Some(started), "kept from the first attempt");
    assert!(job.finished_at.expect("finished_at") >= started);

    let attempts = store.attempts(run).await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    let a = &attempts[0];
    assert_eq!(
        (a.id, a.job_id.as_str(), a.round, a.number),
        (first, "extract", 1, 1)
    );
    assert_eq!(a.phase, JobPhase::Failed);
    assert_eq!(a.reason, Some(JobReason::ExitCode));
    assert_eq!(
        (a.pid, a.pgid, a.process_start_time),
        (Some(4242), Some(4242), Some(99))
    );
    assert_eq!((a.exit_code, a.signal), (Some(1), None));
    assert_eq!((a.user_time_us, a.system_time_us), (Some(1500), Some(250)));
    assert_eq!(a.max_rss_kib, Some(2048));
    assert_eq!(a.message.as_deref(), Some("exit code 1"));
    assert!(a.finished_at.expect("finished_at") >= a.started_at);
    assert_eq!(attempts[1].phase, JobPhase::Succeeded);
    assert_eq!(attempts[1].process_start_time, None);
    assert!(store.open_attempts(run).await.expect("open").is_empty());

    // An attempt end without a job change leaves the job alone.
    let third = store
        .attempt_started(run, &jid("load"), 1, 3, 1)
        .await
        .expect("started");
    store
        .attempt_finished(
            third,
            &end(JobPhase::Cancelled, JobReason::Cancelled, -1),
            None,
        )
        .await
        .expect("finished");
    assert_eq!(
        store.jobs(run).await.expect("jobs")[1].phase,
        JobPhase::Running
    );

    // Waiting sets started_at; a terminal phase sets finished_at.
    store
        .set_job(
            run,
            &jid("report"),
            JobPhase::Waiting,
            None,
            Some("waiting for input"),
        )
        .await
        .expect("set");
    let job = &store.jobs(run).await.expect("jobs")[2];
    assert!(job.started_at.is_some());
    assert_eq!(job.message.as_deref(), Some("waiting for input"));
    store
        .set_job(
            run,
            &jid("report"),
            JobPhase::Skipped,
            Some(JobReason::UpstreamFailed),
            None,
        )
        .await
        .expect("set");
    let job = &store.jobs(run).await.expect("jobs")[2];
    assert_eq!(
        (job.phase, job.reason),
        (JobPhase::Skipped, Some(JobReason::UpstreamFailed))
    );
    assert!(job.finished_at.is_some());
    assert_eq!(job.message, None);

    // The run's phase is the verdict of its jobs.
    assert_eq!(
        store.close_run(run, &[]).await.expect("finish"),
        (RunPhase::Failed, RunReason::JobsFailed)
    );
    let row = store.run(run).await.expect("run").expect("exists");
    assert_eq!(
        (row.phase, row.reason),
        (RunPhase::Failed, Some(RunReason::JobsFailed))
    );
    assert!(row.finished_at.is_some());
    assert!(
        store
            .unfinished_runs()
            .await
            .expect("unfinished")
            .is_empty()
    );
}

#[tokio::test]
async fn one_batch_records_an_end_a_skip_a_pid_and_the_next_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;

    let mut batch = Batch::default();
    batch.attempt_started(&jid("extract"), 1, 1);
    batch.attempt_started(&jid("load"), 1, 1);
    assert_eq!(batch.starts(), 2);
    let ids = store
        .commit(run, 1, &mut batch)
        .await
        .expect("commit starts");
    assert!(batch.is_empty(), "a committed batch is emptied");
    assert_eq!(ids.len(), 2);
    let (extract, load) = (ids[0], ids[1]);

    // One turn of the loop: extract's pid arrives, extract fails and will be retried at once (its
    // end and its next attempt in the same batch), load succeeds, report is skipped.
    let mut batch = Batch::default();
    batch.attempt_spawned(extract, 4242, 4242, Some(7));
    batch.attempt_finished(
        extract,
        &end(JobPhase::Failed, JobReason::ExitCode, 1),
        None,
    );
    batch.attempt_finished(
        load,
        &end(JobPhase::Succeeded, JobReason::Completed, 0),
        Some((JobPhase::Succeeded, Some(JobReason::Completed))),
    );
    batch.set_job(
        &jid("report"),
        JobPhase::Skipped,
        Some(JobReason::UpstreamFailed),
        None,
    );
    batch.attempt_started(&jid("extract"), 2, 2);
    let ids = store.commit(run, 1, &mut batch).await.expect("commit turn");
    assert_eq!(ids.len(), 1);
    let retry = ids[0];
    assert!(retry > load);

    let attempts = store.attempts(run).await.expect("attempts");
    let first = attempts.iter().find(|a| a.id == extract).expect("first");
    assert_eq!(first.phase, JobPhase::Failed);
    assert_eq!(
        (first.pid, first.pgid, first.process_start_time),
        (Some(4242), Some(4242), Some(7))
    );
    assert_eq!(first.exit_code, Some(1));
    assert!(first.finished_at.is_some());
    let second = attempts.iter().find(|a| a.id == retry).expect("retry");
    assert_eq!(
        (second.phase, second.number, second.round),
        (JobPhase::Running, 2, 1)
    );

    let jobs = store.jobs(run).await.expect("jobs");
    let phase = |id: &str| {
        let job = jobs.iter().find(|j| j.job_id == id).expect("job");
        (job.phase, job.reason, job.attempts)
    };
    assert_eq!(phase("extract"), (JobPhase::Running, None, 2));
    assert_eq!(
        phase("load"),
        (JobPhase::Succeeded, Some(JobReason::Completed), 1)
    );
    assert_eq!(
        phase("report"),
        (JobPhase::Skipped, Some(JobReason::UpstreamFailed), 0)
    );
    let report = jobs.iter().find(|j| j.job_id == "report").expect("report");
    assert!(report.finished_at.is_some() && report.started_at.is_none());

    // A change that finds nothing is reported, whatever else the batch held.
    let mut batch = Batch::default();
    batch.attempt_finished(
        retry,
        &end(JobPhase::Succeeded, JobReason::Completed, 0),
        None,
    );
    batch.attempt_started(&jid("nope"), 1, 1);
    assert!(matches!(
        store.commit(run, 1, &mut batch).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store
            .commit(run, 1, &mut Batch::default())
            .await
            .expect("empty")
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_rows_are_not_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    assert!(
        store
            .run(RunId::from(run.get() + 1))
            .await
            .expect("run")
            .is_none()
    );
    assert!(matches!(
        store
            .set_job(run, &jid("nope"), JobPhase::Running, None, None)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .attempt_started(RunId::from(run.get() + 1), &jid("extract"), 1, 1, 1)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.attempt_spawned(AttemptId::from(77), 1, 1, None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .attempt_finished(
                AttemptId::from(77),
                &end(JobPhase::Failed, JobReason::ExitCode, 1),
                None
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.close_run(RunId::from(run.get() + 1), &[]).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(store.attempts(run).await.expect("attempts").is_empty());
}

#[tokio::test]
async fn runs_are_listed_newest_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let mut ids = Vec::new();
    for pipeline in ["a", "b", "a", "b", "a"] {
        ids.push(new_run(&store, pipeline).await);
    }
    let listed = |rows: Vec<RunRow>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        listed(store.runs(None, 3).await.expect("runs")),
        [ids[4], ids[3], ids[2]]
    );
    assert_eq!(
        listed(store.runs(Some("a"), 10).await.expect("runs")),
        [ids[4], ids[2], ids[0]]
    );
    assert_eq!(
        listed(store.runs(Some("b"), -1).await.expect("runs")),
        [ids[3], ids[1]]
    );
    assert!(store.runs(Some("c"), 10).await.expect("runs").is_empty());
    assert_eq!(
        store.latest_run("b").await.expect("latest").map(|r| r.id),
        Some(ids[3])
    );
    assert!(store.latest_run("c").await.expect("latest").is_none());

    store.close_run(ids[1], &[]).await.expect("finish");
    assert_eq!(
        listed(store.unfinished_runs().await.expect("unfinished")),
        [ids[0], ids[2], ids[3], ids[4]]
    );
}

fn rerun<'a>(jobs: &'a [&'a str]) -> crate::store::RoundChange<'a> {
    crate::store::RoundChange {
        rerun: jobs,
        ..Default::default()
    }
}

#[tokio::test]
async fn begin_round_resets_only_the_listed_jobs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    for (number, job) in ["extract", "load"].into_iter().enumerate() {
        let attempt = store
            .attempt_started(run, &jid(job), 1, number as i64 + 1, 1)
            .await
            .expect("started");
        let (phase, reason, code) = if job == "extract" {
            (JobPhase::Succeeded, JobReason::Completed, 0)
        } else {
            (JobPhase::Failed, JobReason::ExitCode, 2)
        };
        store
            .attempt_finished(
                attempt,
                &end(phase, reason, code),
                Some((phase, Some(reason))),
            )
            .await
            .expect("finished");
    }
    store
        .set_job(
            run,
            &jid("report"),
            JobPhase::Skipped,
            Some(JobReason::UpstreamFailed),
            None,
        )
        .await
        .expect("skip");
    store.close_run(run, &[]).await.expect("finish");

    let new_owner = Owner {
        pid: 777,
        host: "other".to_owned(),
        start_time: None,
    };
    let round = store
        .begin_round(run, &rerun(&["load", "report"]), &new_owner)
        .await
        .expect("round");
    assert_eq!(round, 2);

    let row = store.run(run).await.expect("run").expect("exists");
    assert_eq!(
        (row.phase, row.reason, row.rounds),
        (RunPhase::Running, None, 2)
    );
    assert_eq!(row.finished_at, None);
    assert_eq!(row.owner_pid, Some(777));
    assert_eq!(row.owner_host.as_deref(), Some("other"));
    assert_eq!(row.owner_start_time, None);

    let jobs = store.jobs(run).await.expect("jobs");
    assert_eq!(jobs[0].phase, JobPhase::Succeeded);
    assert_eq!(jobs[0].attempts, 1);
    assert_eq!(jobs[0].exit_code, Some(0));
    for job in &jobs[1..] {
        assert_eq!(job.phase, JobPhase::Pending, "{}", job.job_id);
        assert_eq!((job.reason, job.attempts, job.exit_code), (None, 0, None));
        assert_eq!((job.started_at, job.finished_at), (None, None));
    }
    // The history of attempts stays.
    assert_eq!(store.attempts(run).await.expect("attempts").len(), 2);

    // An unknown job or run changes nothing.
    assert!(matches!(
        store
            .begin_round(run, &rerun(&["load", "nope"]), &new_owner)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .begin_round(RunId::from(run.get() + 1), &rerun(&[]), &new_owner)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.run(run).await.expect("run").expect("exists").rounds,
        2
    );
}

#[tokio::test]
async fn mark_success_records_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    store
        .set_job(
            run,
            &jid("load"),
            JobPhase::Failed,
            Some(JobReason::ExitCode),
            None,
        )
        .await
        .expect("fail");
    store
        .set_job(
            run,
            &jid("report"),
            JobPhase::Skipped,
            Some(JobReason::UpstreamFailed),
            None,
        )
        .await
        .expect("skip");
    store
        .mark_success(run, &["load", "report"], "loaded by hand", "alice", &[])
        .await
        .expect("mark");

    let jobs = store.jobs(run).await.expect("jobs");
    for job in &jobs[1..] {
        assert_eq!(job.phase, JobPhase::Succeeded);
        assert_eq!(job.reason, Some(JobReason::MarkedSuccess));
        assert_eq!(job.message.as_deref(), Some("loaded by hand"));
        assert!(job.finished_at.is_some());
    }
    assert_eq!(jobs[0].phase, JobPhase::Pending);

    let events = store.events(run).await.expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].job_id.as_deref(), Some("load"));
    assert_eq!(events[1].job_id.as_deref(), Some("report"));
    for event in &events {
        assert_eq!(event.run_id, run);
        assert_eq!(event.kind, EVENT_MARKED_SUCCESS);
        assert_eq!(event.reason.as_deref(), Some("loaded by hand"));
        assert_eq!(event.actor.as_deref(), Some("alice"));
    }
    assert_eq!(
        events[0].detail.as_deref(),
        Some(r#"{"previousPhase":"Failed"}"#)
    );
    assert_eq!(
        events[1].detail.as_deref(),
        Some(r#"{"previousPhase":"Skipped"}"#)
    );

    // All or nothing.
    assert!(matches!(
        store
            .mark_success(run, &["extract", "nope"], "", "bob", &[])
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.jobs(run).await.expect("jobs")[0].phase,
        JobPhase::Pending
    );
    assert_eq!(store.events(run).await.expect("events").len(), 2);
}

#[tokio::test]
async fn mark_lost_counts_each_loss_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    let a = store
        .attempt_started(run, &jid("extract"), 1, 1, 1)
        .await
        .expect("a");
    store
        .attempt_spawned(a, 100, 100, Some(5))
        .await
        .expect("spawned");
    let b = store
        .attempt_started(run, &jid("load"), 1, 2, 1)
        .await
        .expect("b");
    let c = store
        .attempt_started(run, &jid("report"), 1, 3, 1)
        .await
        .expect("c");
    store
        .attempt_finished(
            c,
            &end(JobPhase::Succeeded, JobReason::Completed, 0),
            Some((JobPhase::Succeeded, Some(JobReason::Completed))),
        )
        .await
        .expect("c finished");

    let open_attempts = store.open_attempts(run).await.expect("open");
    let ids: Vec<_> = open_attempts.iter().map(|a| a.id).collect();
    assert_eq!(ids, [a, b]);
    assert_eq!(open_attempts[0].pgid, Some(100));
    assert_eq!(open_attempts[1].pid, None);

    store.mark_lost(&ids).await.expect("lost");
    store.mark_lost(&ids).await.expect("lost again");
    assert!(store.open_attempts(run).await.expect("open").is_empty());

    let attempts = store.attempts(run).await.expect("attempts");
    for attempt in &attempts[..2] {
        assert_eq!(attempt.phase, JobPhase::Lost);
        assert_eq!(attempt.reason, Some(JobReason::Lost));
        assert!(attempt.finished_at.is_some());
    }
    assert_eq!(attempts[2].phase, JobPhase::Succeeded);
    let jobs = store.jobs(run).await.expect("jobs");
    for job in &jobs[..2] {
        assert_eq!(
            (job.phase, job.reason, job.lost),
            (JobPhase::Lost, Some(JobReason::Lost), 1)
        );
        assert_eq!(
            job.attempts, 1,
            "a loss is not counted against the retry limit"
        );
    }
    assert_eq!((jobs[2].phase, jobs[2].lost), (JobPhase::Succeeded, 0));

    // A controller's continuation keeps counting losses; a user's resume forgives them.
    let owner = Owner {
        pid: 1,
        host: "h".into(),
        start_time: None,
    };
    let keep = crate::store::RoundChange {
        rerun: &["extract"],
        reset_lost: false,
        ..Default::default()
    };
    store.begin_round(run, &keep, &owner).await.expect("round");
    assert_eq!(store.jobs(run).await.expect("jobs")[0].lost, 1);
    let forgive = crate::store::RoundChange {
        rerun: &["extract"],
        reset_lost: true,
        ..Default::default()
    };
    store
        .begin_round(run, &forgive, &owner)
        .await
        .expect("round");
    assert_eq!(store.jobs(run).await.expect("jobs")[0].lost, 0);
}

#[tokio::test]
async fn a_round_opens_only_for_the_owner_its_caller_saw() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    let seen = store.run(run).await.expect("run").expect("exists");
    let was = Some((seen.owner_pid, seen.owner_start_time));
    let change = |owner_was| crate::store::RoundChange {
        rerun: &["load"],
        owner_was,
        ..Default::default()
    };
    let first = Owner {
        pid: 11,
        host: "a".into(),
        start_time: Some(1),
    };
    let second = Owner {
        pid: 22,
        host: "b".into(),
        start_time: Some(2),
    };
    // Two processes saw the same dead owner; the first to open a round takes the run.
    assert_eq!(
        store
            .begin_round(run, &change(was), &first)
            .await
            .expect("first"),
        2
    );
    assert!(matches!(
        store.begin_round(run, &change(was), &second).await,
        Err(StoreError::TakenOver { .. })
    ));
    let now = store.run(run).await.expect("run").expect("exists");
    assert_eq!((now.owner_pid, now.rounds), (Some(11), 2));
}

#[tokio::test]
async fn unknown_names_read_back_are_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    sqlx::query("UPDATE jobs SET phase = 'Exploded' WHERE job_id = 'load'")
        .execute(&store.sqlite().pool)
        .await
        .expect("tamper");
    let err = store.jobs(run).await.expect_err("unknown phase");
    assert!(err.is_corruption(), "{err:?}");
    assert!(err.to_string().contains("Exploded"), "{err}");

    sqlx::query("UPDATE runs SET reason = 'Whatever', created_at = 'yesterday'")
        .execute(&store.sqlite().pool)
        .await
        .expect("tamper");
    let err = store.run(run).await.expect_err("unknown reason");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn names_and_reasons_read_back_are_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "nightly").await;
    // Read back typed, by the names they were written with.
    let row = store.run(run).await.expect("run").expect("exists");
    assert_eq!(row.pipeline, "nightly");
    let jobs = store.jobs(run).await.expect("jobs");
    assert_eq!(jobs[0].job_id, JOB_IDS[0]);

    // A job's reason is not a run's: the runs table holds run reasons only.
    sqlx::query("UPDATE runs SET reason = 'ExitCode'")
        .execute(&store.sqlite().pool)
        .await
        .expect("tamper");
    let err = store.run(run).await.expect_err("a job reason on a run");
    assert!(err.is_corruption(), "{err:?}");
    assert!(err.to_string().contains("ExitCode"), "{err}");

    // A job id that breaks the rules (it could escape the logs folder) is not what we wrote.
    sqlx::query("UPDATE jobs SET job_id = '../x' WHERE job_id = 'load'")
        .execute(&store.sqlite().pool)
        .await
        .expect("tamper");
    let err = store.jobs(run).await.expect_err("a bad job id");
    assert!(err.is_corruption(), "{err:?}");
    assert!(err.to_string().contains("job_id"), "{err}");
    sqlx::query("UPDATE runs SET pipeline = 'Not A Name', reason = NULL")
        .execute(&store.sqlite().pool)
        .await
        .expect("tamper");
    let err = store.run(run).await.expect_err("a bad pipeline name");
    assert!(err.is_corruption(), "{err:?}");
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

#[tokio::test]
async fn a_closed_store_refuses_further_calls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&state_dir(&tmp)).await;
    let run = new_run(&store, "p").await;
    let clone = store.clone();
    store.close().await;
    assert!(matches!(
        clone.close_run(run, &[]).await,
        Err(StoreError::Sql { .. })
    ));
    assert!(matches!(clone.run(run).await, Err(StoreError::Sql { .. })));
    assert!(matches!(
        clone.attempt_started(run, &jid("extract"), 1, 1, 1).await,
        Err(StoreError::Sql { .. })
    ));
}

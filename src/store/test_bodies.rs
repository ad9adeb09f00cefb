//! The store's test bodies, written once and run against both backends through the [`Store`]
//! facade: `on_sqlite` (a state folder in a temporary folder) and `on_postgres` (a fresh database
//! of this test binary's throwaway cluster, `tests/common/pg_cluster.rs`). Tests about SQLite's
//! file itself (header checks, file modes, WAL, the busy lock, vacuum modes, a process crash on the
//! file, its migrations) stay in `store/tests.rs` and beside their module; the PostgreSQL
//! migration pins stay in `store/postgres/tests.rs`.
//!
//! How the bodies are shared: [`shared_store_tests!`] expands to the test functions for an opener
//! (`async fn() -> Option<(Guard, Store)>`, `None` to skip; the guard keeps the database or folder
//! alive). A body that simulates damage edits rows with [`tamper`], whose SQL both dialects read
//! alike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/common/pg_cluster.rs"]
mod pg_cluster;

use super::{Backend, Store};

/// The shared test bodies, opened by `$open` (see the module's comment).
macro_rules! shared_store_tests {
    ($open:path) => {
        #[allow(unused_imports)]
        use std::collections::BTreeMap;
        #[allow(unused_imports)]
        use std::time::Duration;

        #[allow(unused_imports)]
        use indexmap::IndexMap;
        #[allow(unused_imports)]
        use time::OffsetDateTime;

        #[allow(unused_imports)]
        use crate::spec::{JobId, PipelineName};
        #[allow(unused_imports)]
        use crate::status::outputs::Outputs;
        #[allow(unused_imports)]
        use crate::status::{JobPhase, JobReason, RunPhase, RunReason};
        #[allow(unused_imports)]
        use crate::store::outbox::{NewOutboxEntry, OutboxChannel, OutboxState};
        #[allow(unused_imports)]
        use crate::store::retention::{Policies, PruneMode, PrunedRun, RetentionPolicy};
        #[allow(unused_imports)]
        use super::{
            JOB_IDS, count_runs, end, jid, jobs, new_run, owner, run, run_unqueued, tamper,
        };
        #[allow(unused_imports)]
        use crate::store::{
            AppliedFile, AttemptEnd, AttemptId, Batch, EVENT_JOB_REMOVED, EVENT_MARKED_SUCCESS,
            NewJob, NewRun, Owner, RunId, RunRow, Store, StoreError,
        };

        #[tokio::test]
        async fn run_round_trip() {
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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
            let Some((_guard, store)) = $open().await else { return };
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

        async fn finished_run(store: &Store, phase: RunPhase) -> RunId {
            let owner = Owner {
                pid: std::process::id(),
                host: "test-host".into(),
                start_time: None,
            };
            let pipeline = crate::spec::PipelineName::parse("p").unwrap();
            let job_id = crate::spec::JobId::parse("a").unwrap();
            let run = store
                .create_run(&NewRun {
                    pipeline: &pipeline,
                    generation: 1,
                    spec_json: "{}",
                    spec_hash: "h",
                    jobs: &[NewJob {
                        id: &job_id,
                        log_path: "a.log",
                    }],
                    owner: &owner,
                })
                .await
                .unwrap();
            let job = match phase {
                RunPhase::Succeeded => JobPhase::Succeeded,
                RunPhase::Cancelled => JobPhase::Cancelled,
                RunPhase::Failed | RunPhase::Pending | RunPhase::Running => JobPhase::Failed,
            };
            store.set_job(run, &job_id, job, None, None).await.unwrap();
            assert_eq!(store.close_run(run, &[]).await.unwrap().0, phase);
            run
        }

        fn email(target: &str) -> NewOutboxEntry<'_> {
            NewOutboxEntry {
                channel: OutboxChannel::Email,
                scope: "",
                target,
                payload: "{}",
            }
        }

        #[tokio::test]
        async fn queuing_twice_queues_once_and_marks_the_round() {
            let Some((_guard, store)) = $open().await else { return };
            let run = finished_run(&store, RunPhase::Failed).await;
            assert_eq!(store.runs_not_queued().await.unwrap().len(), 1);
            let entries = [email("a@x"), email("b@x"), email("a@x")];
            assert_eq!(
                store.enqueue_notifications(run, 1, &entries).await.unwrap(),
                2
            );
            assert_eq!(
                store.enqueue_notifications(run, 1, &entries).await.unwrap(),
                0
            );
            assert!(store.runs_not_queued().await.unwrap().is_empty());
            // The same message about another round (a resume) is a new message.
            assert_eq!(
                store
                    .enqueue_notifications(run, 2, &entries[..1])
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(store.outbox(run).await.unwrap().len(), 3);
        }

        #[tokio::test]
        async fn a_claimed_message_is_not_due_until_its_lease_ends() {
            let Some((_guard, store)) = $open().await else { return };
            let run = finished_run(&store, RunPhase::Failed).await;
            store
                .enqueue_notifications(run, 1, &[email("a@x")])
                .await
                .unwrap();
            let now = OffsetDateTime::now_utc();
            let due = store.due_outbox(now, 10).await.unwrap();
            assert_eq!(due.len(), 1);
            let id = due[0].id;
            let lease = now + time::Duration::minutes(5);
            assert_eq!(store.claim_outbox(id, now, lease).await.unwrap(), Some(1));
            assert_eq!(store.claim_outbox(id, now, lease).await.unwrap(), None);
            assert!(store.due_outbox(now, 10).await.unwrap().is_empty());
            // A sender that died: the message is due again once the lease has passed.
            let later = lease + time::Duration::seconds(1);
            assert_eq!(store.due_outbox(later, 10).await.unwrap().len(), 1);
            assert_eq!(store.claim_outbox(id, later, later).await.unwrap(), Some(2));

            store
                .outbox_failed(id, "no route", Some(later + time::Duration::minutes(1)))
                .await
                .unwrap();
            let entry = &store.outbox(run).await.unwrap()[0];
            assert!(matches!(
                &entry.state,
                OutboxState::Pending { last_error: Some(e), .. } if e == "no route"
            ));
            store.outbox_failed(id, "bad address", None).await.unwrap();
            let entry = &store.outbox(run).await.unwrap()[0];
            assert!(
                matches!(&entry.state, OutboxState::GaveUp { error, .. } if error == "bad address")
            );
            let far = later + time::Duration::days(30);
            assert!(store.due_outbox(far, 10).await.unwrap().is_empty());
            assert_eq!(store.claim_outbox(id, far, far).await.unwrap(), None);
        }

        #[tokio::test]
        async fn sent_is_final() {
            let Some((_guard, store)) = $open().await else { return };
            let run = finished_run(&store, RunPhase::Succeeded).await;
            store
                .enqueue_notifications(run, 1, &[email("a@x")])
                .await
                .unwrap();
            let now = OffsetDateTime::now_utc();
            let id = store.due_outbox(now, 10).await.unwrap()[0].id;
            store.claim_outbox(id, now, now).await.unwrap();
            store.outbox_sent(id).await.unwrap();
            let entry = &store.outbox(run).await.unwrap()[0];
            assert!(matches!(entry.state, OutboxState::Sent { .. }));
            let far = now + time::Duration::days(30);
            assert!(store.due_outbox(far, 10).await.unwrap().is_empty());
            assert_eq!(store.claim_outbox(id, far, far).await.unwrap(), None);
        }
        fn succeeded() -> AttemptEnd {
            AttemptEnd {
                phase: JobPhase::Succeeded,
                reason: Some(JobReason::Completed),
                exit_code: Some(0),
                signal: None,
                user_time: Duration::ZERO,
                system_time: Duration::ZERO,
                max_rss_kib: 0,
                max_rss_upper_bound: false,
                message: None,
            }
        }

        fn outputs(pairs: &[(&str, &str)]) -> Outputs {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }

        #[tokio::test]
        async fn a_jobs_outputs_are_those_of_its_latest_success() {
            let Some((_guard, store)) = $open().await else { return };
            let (extract, load) = (
                JobId::parse("extract").unwrap(),
                JobId::parse("load").unwrap(),
            );
            let owner = Owner {
                pid: std::process::id(),
                host: "h".into(),
                start_time: None,
            };
            let run = store
                .create_run(&NewRun {
                    pipeline: &PipelineName::parse("p").unwrap(),
                    generation: 1,
                    spec_json: "{}",
                    spec_hash: "x",
                    jobs: &[
                        NewJob {
                            id: &extract,
                            log_path: "extract.log",
                        },
                        NewJob {
                            id: &load,
                            log_path: "load.log",
                        },
                    ],
                    owner: &owner,
                })
                .await
                .unwrap();
            let mut batch = Batch::default();
            batch.attempt_started(&extract, 1, 1);
            batch.attempt_started(&load, 1, 1);
            let ids = store.commit(run, 1, &mut batch).await.unwrap();
            let done = Some((JobPhase::Succeeded, Some(JobReason::Completed)));
            batch.attempt_finished(ids[0], &succeeded(), done);
            batch.attempt_outputs(ids[0], &outputs(&[("A", "1")]));
            batch.attempt_finished(ids[1], &succeeded(), done);
            batch.attempt_outputs(ids[1], &outputs(&[("B", "two\nlines")]));
            store.commit(run, 1, &mut batch).await.unwrap();
            let found = store.job_outputs(run).await.unwrap();
            assert_eq!(found["extract"], outputs(&[("A", "1")]));
            assert_eq!(found["load"], outputs(&[("B", "two\nlines")]));

            // Run again (a later round) and succeeded without outputs: it has none any more.
            batch.attempt_started(&extract, 2, 1);
            let again = store.commit(run, 2, &mut batch).await.unwrap();
            batch.attempt_finished(again[0], &succeeded(), done);
            store.commit(run, 2, &mut batch).await.unwrap();
            let found = store.job_outputs(run).await.unwrap();
            assert!(!found.contains_key("extract"));
            assert!(found.contains_key("load"));
        }

        #[tokio::test]
        async fn a_rerun_request_carries_its_params_once() {
            let Some((_guard, store)) = $open().await else { return };
            let params: IndexMap<String, String> = [("day".to_owned(), "2026-11-30".to_owned())]
                .into_iter()
                .collect();
            assert!(!store.request_rerun_with_params("p", &params).await.unwrap());
            store.observe_pipeline("p", "hash", "p.yaml").await.unwrap();
            assert!(store.request_rerun_with_params("p", &params).await.unwrap());
            assert!(store.take_rerun("p").await.unwrap());
            assert_eq!(store.take_rerun_params("p").await.unwrap(), params);
            assert!(store.take_rerun_params("p").await.unwrap().is_empty());
        }
        #[tokio::test]
        async fn running_runs_are_listed_newest_first_and_a_skipped_tick_is_an_event_of_the_run() {
            let Some((_guard, store)) = $open().await else { return };
            let owner = Owner {
                pid: 1,
                host: "h".into(),
                start_time: None,
            };
            let a = crate::spec::JobId::parse("a").unwrap();
            let (p, q) = (
                crate::spec::PipelineName::parse("p").unwrap(),
                crate::spec::PipelineName::parse("q").unwrap(),
            );
            let jobs = [NewJob {
                id: &a,
                log_path: "a.log",
            }];
            let new = |pipeline| NewRun {
                pipeline,
                generation: 1,
                spec_json: "{}",
                spec_hash: "x",
                jobs: &jobs,
                owner: &owner,
            };
            let first = store.create_run(&new(&p)).await.unwrap();
            store.create_run(&new(&q)).await.unwrap();
            let second = store.create_run(&new(&p)).await.unwrap();
            let ids: Vec<_> = store
                .running_runs_of("p")
                .await
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(ids, [second, first]);
            let others = store.running_runs_not_owned_by(1, "h").await.unwrap();
            assert!(others.is_empty());
            let others = store.running_runs_not_owned_by(2, "h").await.unwrap();
            assert_eq!(others.len(), 3);
            store
                .record_tick_skipped(second, "2026-07-01T10:21:00", "run still running")
                .await
                .unwrap();
            let events = store.events(second).await.unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kind, crate::store::EVENT_TICK_SKIPPED);
            assert_eq!(events[0].actor.as_deref(), Some("controller"));
            assert!(events[0].detail.as_deref().unwrap().contains("10:21"));
        }

        /// A generation keeps the revision it was first recorded at; another generation has its own.
        #[tokio::test]
        async fn a_generation_keeps_its_first_revision() {
            let Some((_guard, store)) = $open().await else { return };
            assert_eq!(store.revision("p", 1).await.unwrap(), None);
            store.record_revision("p", 1, "abc").await.unwrap();
            store.record_revision("p", 1, "def-dirty").await.unwrap();
            store.record_revision("p", 2, "def").await.unwrap();
            assert_eq!(
                store.revision("p", 1).await.unwrap().as_deref(),
                Some("abc")
            );
            assert_eq!(
                store.revision("p", 2).await.unwrap().as_deref(),
                Some("def")
            );
            assert_eq!(store.revision("q", 1).await.unwrap(), None);
        }
        fn entry(file: &str, source: &str, hash: &str) -> AppliedFile {
            AppliedFile {
                manifests_dir: "/m".into(),
                file: file.into(),
                source: source.into(),
                pipeline: file.trim_end_matches(".yaml").into(),
                content_hash: hash.into(),
            }
        }

        /// A file has one owner, the source that wrote it last; forgetting drops it.
        #[tokio::test]
        async fn the_last_source_to_write_a_file_owns_it() {
            let Some((_guard, store)) = $open().await else { return };
            store
                .record_applied(&entry("a.yaml", "/s", "1"))
                .await
                .unwrap();
            store
                .record_applied(&entry("b.yaml", "/s", "2"))
                .await
                .unwrap();
            store
                .record_applied(&entry("a.yaml", "/s", "3"))
                .await
                .unwrap();
            let files = store.applied_by("/s", "/m").await.unwrap();
            assert_eq!(
                files,
                [entry("a.yaml", "/s", "3"), entry("b.yaml", "/s", "2")]
            );
            assert!(store.applied_by("/s", "/other").await.unwrap().is_empty());

            store
                .record_applied(&entry("b.yaml", "/t", "4"))
                .await
                .unwrap();
            assert_eq!(
                store.applied_by("/s", "/m").await.unwrap(),
                [entry("a.yaml", "/s", "3")]
            );
            store.forget_applied("/m", "a.yaml").await.unwrap();
            assert!(store.applied_by("/s", "/m").await.unwrap().is_empty());
            assert_eq!(store.applied_by("/t", "/m").await.unwrap().len(), 1);
            assert_eq!(
                store.applied_file("/m", "b.yaml").await.unwrap(),
                Some(entry("b.yaml", "/t", "4"))
            );
            assert_eq!(store.applied_file("/m", "a.yaml").await.unwrap(), None);
        }

        #[tokio::test]
        async fn the_manifests_folder_is_recorded_and_replaced() {
            let Some((_guard, store)) = $open().await else { return };
            assert_eq!(store.manifests_dir().await.unwrap(), None);
            store.set_manifests_dir("/srv/a".as_ref()).await.unwrap();
            store.set_manifests_dir("/srv/a".as_ref()).await.unwrap();
            assert_eq!(
                store.manifests_dir().await.unwrap().as_deref(),
                Some(std::path::Path::new("/srv/a"))
            );
            store.set_manifests_dir("/srv/b".as_ref()).await.unwrap();
            assert_eq!(
                store.manifests_dir().await.unwrap().as_deref(),
                Some(std::path::Path::new("/srv/b"))
            );
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);

        fn keep(runs: u32, days: u64) -> RetentionPolicy {
            RetentionPolicy {
                keep_runs: runs,
                keep_for: DAY * u32::try_from(days).unwrap(),
            }
        }

        fn policies(default: RetentionPolicy, own: &[(&str, RetentionPolicy)]) -> Policies {
            Policies {
                default,
                pipelines: own
                    .iter()
                    .map(|(name, p)| ((*name).to_owned(), *p))
                    .collect::<BTreeMap<_, _>>(),
            }
        }



        fn ids(selected: &[(RunId, PipelineName)]) -> Vec<i64> {
            selected.iter().map(|(r, _)| r.get()).collect()
        }

        #[tokio::test]
        async fn beyond_keep_runs_per_pipeline_and_never_running_or_latest() {
            let Some((_guard, store)) = $open().await else { return };
            // a: 1..=5 finished, 6 running, 7 finished (latest). b: 8 running (latest and only).
            for _ in 0..5 {
                run(&store, "a", RunPhase::Succeeded).await;
            }
            run(&store, "a", RunPhase::Running).await;
            run(&store, "a", RunPhase::Failed).await;
            run(&store, "b", RunPhase::Running).await;
            let now = OffsetDateTime::now_utc();

            let p = policies(keep(2, 30), &[]);
            // Newest two of a are 7 and 6; 1..=5 are beyond; 6 is running anyway.
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [1, 2, 3, 4, 5]
            );

            // keep_runs 0 still keeps the latest, and never the running one.
            let p = policies(keep(0, 30), &[]);
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [1, 2, 3, 4, 5]
            );

            // A pipeline's own policy wins over the default.
            let p = policies(keep(100, 30), &[("a", keep(4, 30))]);
            assert_eq!(ids(&store.prunable_runs(&p, now).await.unwrap()), [1, 2, 3]);
            let p = policies(keep(1, 30), &[("a", keep(100, 30))]);
            assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn older_than_keep_for_even_among_the_newest() {
            let Some((_guard, store)) = $open().await else { return };
            for _ in 0..3 {
                run(&store, "a", RunPhase::Succeeded).await;
            }
            let now = OffsetDateTime::now_utc();
            let p = policies(keep(100, 7), &[]);
            assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
            // Eight days later, every finished run but the latest is too old.
            let later = now + time::Duration::days(8);
            assert_eq!(ids(&store.prunable_runs(&p, later).await.unwrap()), [1, 2]);
            // A duration past what a date can say is no age limit at all.
            let p = policies(
                RetentionPolicy {
                    keep_runs: 100,
                    keep_for: Duration::from_secs(u64::MAX),
                },
                &[],
            );
            assert!(store.prunable_runs(&p, later).await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn waiting_notifications_keep_their_run() {
            let Some((_guard, store)) = $open().await else { return };
            let first = run(&store, "a", RunPhase::Failed).await;
            run(&store, "a", RunPhase::Succeeded).await;
            store
                .enqueue_notifications(
                    first,
                    1,
                    &[crate::store::outbox::NewOutboxEntry {
                        channel: crate::store::outbox::OutboxChannel::Command,
                        scope: "pipeline",
                        target: "true",
                        payload: "{}",
                    }],
                )
                .await
                .unwrap();
            let p = policies(keep(1, 30), &[]);
            let now = OffsetDateTime::now_utc();
            assert!(store.prunable_runs(&p, now).await.unwrap().is_empty());
        }

        #[tokio::test]
        async fn pruning_deletes_every_row_of_the_run_and_its_log_folder() {
            let Some((_guard, store)) = $open().await else { return };
            let tmp = tempfile::tempdir().unwrap();
            let old = run(&store, "a", RunPhase::Succeeded).await;
            let latest = run(&store, "a", RunPhase::Succeeded).await;
            for r in [old, latest] {
                let dir = crate::state_dir::run_log_dir(tmp.path(), "a", r);
                crate::state_dir::create_private_dir(&dir).unwrap();
                std::fs::write(dir.join("a.log"), b"0123456789").unwrap();
            }
            let p = policies(keep(1, 30), &[]);
            let now = OffsetDateTime::now_utc();

            let dry = store
                .prune_history(tmp.path(), &p, now, PruneMode::DryRun)
                .await
                .unwrap();
            assert_eq!(
                dry.runs,
                [PrunedRun {
                    pipeline: PipelineName::parse("a").unwrap(),
                    run: old,
                    log_bytes: 10
                }]
            );
            assert!(store.run(old).await.unwrap().is_some());
            assert!(crate::state_dir::run_log_dir(tmp.path(), "a", old).exists());

            let done = store
                .prune_history(tmp.path(), &p, now, PruneMode::Delete)
                .await
                .unwrap();
            assert_eq!(done.runs, dry.runs);
            assert!(done.leftovers.is_empty());
            assert!(store.run(old).await.unwrap().is_none());
            assert!(store.jobs(old).await.unwrap().is_empty());
            assert!(store.attempts(old).await.unwrap().is_empty());
            assert!(!crate::state_dir::run_log_dir(tmp.path(), "a", old).exists());
            assert!(store.run(latest).await.unwrap().is_some());
            assert!(crate::state_dir::run_log_dir(tmp.path(), "a", latest).exists());
            // Nothing left to do.
            let again = store
                .prune_history(tmp.path(), &p, now, PruneMode::Delete)
                .await
                .unwrap();
            assert!(again.runs.is_empty());
        }

        /// The controller decides by the newest run of the pipeline's current generation: a later
        /// foreground run (generation 0) does not make that run prunable, else the controller would
        /// run the pipeline again.
        #[tokio::test]
        async fn the_current_generations_newest_run_is_kept() {
            let Some((_guard, store)) = $open().await else { return };
            let generation = store.observe_pipeline("a", "h", "a.yaml").await.unwrap();
            let controllers = run_unqueued(&store, "a", generation, RunPhase::Succeeded).await;
            store
                .enqueue_notifications(controllers, 1, &[])
                .await
                .unwrap();
            let mut foreground = Vec::new();
            for _ in 0..2 {
                let r = run_unqueued(&store, "a", 0, RunPhase::Succeeded).await;
                store.enqueue_notifications(r, 1, &[]).await.unwrap();
                foreground.push(r);
            }
            let p = policies(keep(1, 30), &[]);
            let now = OffsetDateTime::now_utc();
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [foreground[0].get()]
            );
            // The deleting transaction checks it again.
            assert!(store.delete_runs(&[controllers]).await.unwrap().is_empty());
            assert!(store.run(controllers).await.unwrap().is_some());
            // An older run of the current generation is history like any other.
            let newer = run_unqueued(&store, "a", generation, RunPhase::Succeeded).await;
            store.enqueue_notifications(newer, 1, &[]).await.unwrap();
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [controllers.get(), foreground[0].get(), foreground[1].get()]
            );
        }

        /// A run whose end was committed but whose notifications are not queued yet (its process is
        /// between the two, or died there and the next start queues them) is kept.
        #[tokio::test]
        async fn a_run_whose_notifications_are_not_queued_yet_is_kept() {
            let Some((_guard, store)) = $open().await else { return };
            let unqueued = run_unqueued(&store, "a", 1, RunPhase::Failed).await;
            let queued = run(&store, "a", RunPhase::Succeeded).await;
            run(&store, "a", RunPhase::Succeeded).await;
            let p = policies(keep(1, 30), &[]);
            let now = OffsetDateTime::now_utc();
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [queued.get()]
            );
            assert!(store.delete_runs(&[unqueued]).await.unwrap().is_empty());
            // Once queued, it is history like the others.
            store.enqueue_notifications(unqueued, 1, &[]).await.unwrap();
            assert_eq!(
                ids(&store.prunable_runs(&p, now).await.unwrap()),
                [unqueued.get(), queued.get()]
            );
        }

        #[tokio::test]
        async fn a_pipeline_reads_back_its_generation_rerun_request_last_tick_and_deletion() {
            let Some((_guard, store)) = $open().await else { return };
            assert_eq!(store.observe_pipeline("a", "h1", "a.yaml").await.unwrap(), 1);
            assert_eq!(store.observe_pipeline("a", "h1", "a.yaml").await.unwrap(), 1);
            assert_eq!(store.observe_pipeline("a", "h2", "a.yaml").await.unwrap(), 2);
            let row = store.pipeline("a").await.unwrap().unwrap();
            assert_eq!(
                (row.name.as_str(), row.generation, row.spec_hash.as_str()),
                ("a", 2, "h2")
            );
            assert_eq!(row.source, "a.yaml");
            assert!(!row.deleted && !row.rerun_requested);
            assert_eq!(row.last_tick, None);

            assert!(store.request_rerun("a").await.unwrap());
            assert!(!store.request_rerun("nope").await.unwrap());
            let tick = time::macros::datetime!(2026-11-27 02:00:00.123 UTC);
            store.set_last_tick("a", tick).await.unwrap();
            let row = store.pipeline("a").await.unwrap().unwrap();
            assert!(row.rerun_requested);
            assert_eq!(row.last_tick, Some(tick));
            assert!(store.take_rerun("a").await.unwrap());
            assert!(!store.take_rerun("a").await.unwrap());

            store.mark_pipeline_deleted("a").await.unwrap();
            let rows = store.pipelines().await.unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0].deleted);
            // Back after a deletion: a new generation.
            assert_eq!(store.observe_pipeline("a", "h2", "a.yaml").await.unwrap(), 3);
            assert!(!store.pipeline("a").await.unwrap().unwrap().deleted);
            assert!(store.pipeline("nope").await.unwrap().is_none());
        }

        // Rows edited by hand (a damaged or tampered database): what is read back is checked.

        #[tokio::test]
        async fn an_unknown_phase_or_reason_read_back_is_corruption() {
            let Some((_guard, store)) = $open().await else { return };
            let run = new_run(&store, "p").await;
            tamper(&store, "UPDATE jobs SET phase = 'Exploded' WHERE job_id = 'load'").await;
            let err = store.jobs(run).await.expect_err("unknown phase");
            assert!(err.is_corruption(), "{err:?}");
            assert!(err.to_string().contains("Exploded"), "{err}");

            tamper(&store, "UPDATE runs SET reason = 'Whatever'").await;
            let err = store.run(run).await.expect_err("unknown reason");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            assert!(err.to_string().contains("Whatever"), "{err}");
        }

        #[tokio::test]
        async fn a_job_reason_on_a_run_or_a_name_against_the_rules_read_back_is_corruption() {
            let Some((_guard, store)) = $open().await else { return };
            let run = new_run(&store, "nightly").await;
            // Read back typed, by the names they were written with.
            let row = store.run(run).await.expect("run").expect("exists");
            assert_eq!(row.pipeline, "nightly");
            let jobs = store.jobs(run).await.expect("jobs");
            assert_eq!(jobs[0].job_id, JOB_IDS[0]);

            // A job's reason is not a run's: the runs table holds run reasons only.
            tamper(&store, "UPDATE runs SET reason = 'ExitCode'").await;
            let err = store.run(run).await.expect_err("a job reason on a run");
            assert!(err.is_corruption(), "{err:?}");
            assert!(err.to_string().contains("ExitCode"), "{err}");

            // A job id that breaks the rules (it could escape the logs folder) is not what we wrote.
            tamper(&store, "UPDATE jobs SET job_id = '../x' WHERE job_id = 'load'").await;
            let err = store.jobs(run).await.expect_err("a bad job id");
            assert!(err.is_corruption(), "{err:?}");
            assert!(err.to_string().contains("job_id"), "{err}");
            tamper(&store, "UPDATE runs SET pipeline = 'Not A Name', reason = NULL").await;
            let err = store.run(run).await.expect_err("a bad pipeline name");
            assert!(err.is_corruption(), "{err:?}");
        }

        /// A pipeline name in the database that is not one (`../escape`: a row edited by hand) is
        /// reported as a damaged database, by the reads and by a prune, and no folder outside
        /// `logs/` is removed.
        #[tokio::test]
        async fn a_pipeline_name_read_back_that_is_not_one_is_corruption_and_prunes_nothing() {
            let Some((_guard, store)) = $open().await else { return };
            let tmp = tempfile::tempdir().unwrap();
            for _ in 0..3 {
                run(&store, "a", RunPhase::Succeeded).await;
            }
            tamper(&store, "UPDATE runs SET pipeline = '../escape' WHERE id IN (1, 2)").await;
            let err = store.run(RunId::from(1)).await.unwrap_err();
            assert!(err.is_corruption(), "{err:?}");
            let outside = tmp.path().join("escape").join("1");
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("keep.txt"), b"not a log").unwrap();
            let p = policies(keep(1, 30), &[]);
            let now = OffsetDateTime::now_utc();
            for mode in [PruneMode::DryRun, PruneMode::Delete] {
                let err = store
                    .prune_history(tmp.path(), &p, now, mode)
                    .await
                    .unwrap_err();
                assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            }
            assert!(outside.join("keep.txt").exists());
            assert_eq!(count_runs(&store).await, 3, "no row is deleted either");
        }

        #[tokio::test]
        async fn a_closed_store_refuses_further_calls() {
            let Some((_guard, store)) = $open().await else { return };
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
    };
}
pub(crate) use shared_store_tests;

// The fixtures of the bodies above, and of the SQLite-only tests (`store/tests.rs`, the vacuum
// tests of `retention.rs`): backend-neutral, written once.

use crate::spec::{JobId, PipelineName};
use crate::status::{JobPhase, JobReason, RunPhase};
use crate::store::{AttemptEnd, NewJob, NewRun, Owner, RunId};
use std::time::Duration;

pub(super) fn owner() -> Owner {
    Owner {
        pid: std::process::id(),
        host: "test-host".to_owned(),
        start_time: Some(12_345),
    }
}

pub(super) static JOB_IDS: std::sync::LazyLock<[JobId; 3]> =
    std::sync::LazyLock::new(|| ["extract", "load", "report"].map(jid));

/// The three jobs of every test run.
pub(super) fn jobs() -> [NewJob<'static>; 3] {
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

pub(super) fn jid(id: &str) -> JobId {
    JobId::parse(id).expect("job id")
}

pub(super) async fn new_run(store: &Store, pipeline: &str) -> RunId {
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
pub(super) fn end(phase: JobPhase, reason: JobReason, exit_code: i32) -> AttemptEnd {
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

/// A run of `pipeline` with one job; finished with `phase` unless that is Running, and then
/// its (no) notifications queued, as every process that runs one does.
pub(super) async fn run(store: &Store, pipeline: &str, phase: RunPhase) -> RunId {
    let run = run_unqueued(store, pipeline, 1, phase).await;
    if phase != RunPhase::Running {
        let rounds = store.run(run).await.unwrap().unwrap().rounds;
        store.enqueue_notifications(run, rounds, &[]).await.unwrap();
    }
    run
}

/// A run as [`run`] makes it, of `generation`, whose end was not yet followed by the queuing
/// of its notifications.
pub(super) async fn run_unqueued(
    store: &Store,
    pipeline: &str,
    generation: i64,
    phase: RunPhase,
) -> RunId {
    let owner = Owner {
        pid: std::process::id(),
        host: "test-host".into(),
        start_time: None,
    };
    let pipeline = crate::spec::PipelineName::parse(pipeline).unwrap();
    let a = crate::spec::JobId::parse("a").unwrap();
    let run = store
        .create_run(&NewRun {
            pipeline: &pipeline,
            generation,
            spec_json: "{}",
            spec_hash: "h",
            jobs: &[NewJob {
                id: &a,
                log_path: "a.log",
            }],
            owner: &owner,
        })
        .await
        .unwrap();
    let attempt = store.attempt_started(run, &a, 1, 1, 1).await.unwrap();
    if phase == RunPhase::Running {
        return run;
    }
    let job = match phase {
        RunPhase::Succeeded => JobPhase::Succeeded,
        RunPhase::Cancelled => JobPhase::Cancelled,
        RunPhase::Failed | RunPhase::Pending | RunPhase::Running => JobPhase::Failed,
    };
    let end = crate::store::AttemptEnd {
        phase: job,
        reason: None,
        exit_code: Some(0),
        signal: None,
        user_time: Duration::ZERO,
        system_time: Duration::ZERO,
        max_rss_kib: 0,
        max_rss_upper_bound: false,
        message: None,
    };
    store
        .attempt_finished(attempt, &end, Some((job, None)))
        .await
        .unwrap();
    assert_eq!(store.close_run(run, &[]).await.unwrap().0, phase);
    run
}

/// Runs `sql` (an `UPDATE` both dialects read alike) on the backend's own connections, as someone
/// editing the database by hand would.
async fn tamper(store: &Store, sql: &'static str) {
    let done = match &store.backend {
        Backend::Sqlite(db) => sqlx::query(sql).execute(&db.pool).await.map(drop),
        Backend::Postgres(db) => sqlx::query(sql).execute(&db.pool).await.map(drop),
    };
    done.expect("tamper");
}

/// How many runs the database holds, counted behind the store's back.
async fn count_runs(store: &Store) -> i64 {
    let sql = "SELECT count(*) FROM runs";
    let count = match &store.backend {
        Backend::Sqlite(db) => sqlx::query_scalar(sql).fetch_one(&db.pool).await,
        Backend::Postgres(db) => sqlx::query_scalar(sql).fetch_one(&db.pool).await,
    };
    count.expect("count runs")
}

/// A fresh database on the cluster, connected (migrated); `None` when PostgreSQL is not installed.
async fn open_postgres() -> Option<(pg_cluster::TestDatabase, Store)> {
    let database = pg_cluster::database().await?;
    let state = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&state.path().join("state"), &database.url)
        .await
        .expect("connect");
    Some((database, store))
}

mod on_postgres {
    super::shared_store_tests!(super::open_postgres);
}

/// The twin of SQLite's `concurrent_stores_create_distinct_runs`: twenty handles connect at once
/// to a fresh PostgreSQL database (racing to migrate it, as processes on several hosts would) and
/// each creates and finishes a run: every run gets its own id and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_handles_on_one_postgres_database_create_distinct_runs() {
    use crate::spec::{JobId, PipelineName};
    use crate::status::{JobPhase, JobReason};
    use crate::store::{AttemptEnd, NewJob, NewRun, Owner, StoreError};
    let Some(database) = pg_cluster::database().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let state = tmp.path().join(format!("host-{i}"));
            let url = database.url.clone();
            tokio::spawn(async move {
                let store = Store::connect(&state, &url).await?;
                let owner = Owner {
                    pid: std::process::id(),
                    host: format!("host-{i}"),
                    start_time: None,
                };
                let race = PipelineName::parse("race").expect("name");
                let job = JobId::parse("a").expect("job id");
                let run = store
                    .create_run(&NewRun {
                        pipeline: &race,
                        generation: 1,
                        spec_json: "{}",
                        spec_hash: "h",
                        jobs: &[NewJob {
                            id: &job,
                            log_path: "a.log",
                        }],
                        owner: &owner,
                    })
                    .await?;
                let attempt = store.attempt_started(run, &job, 1, 1, 1).await?;
                let end = AttemptEnd {
                    phase: JobPhase::Succeeded,
                    reason: Some(JobReason::Completed),
                    exit_code: Some(0),
                    signal: None,
                    user_time: std::time::Duration::ZERO,
                    system_time: std::time::Duration::ZERO,
                    max_rss_kib: 0,
                    max_rss_upper_bound: false,
                    message: None,
                };
                store
                    .attempt_finished(
                        attempt,
                        &end,
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
    let store = Store::connect(&tmp.path().join("reader"), &database.url)
        .await
        .expect("connect");
    assert_eq!(store.runs(Some("race"), 100).await.expect("runs").len(), 20);
}

/// A state folder in a temporary folder.
async fn open_sqlite() -> Option<(tempfile::TempDir, Store)> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&tmp.path().join("state"), crate::store::Durability::Normal)
        .await
        .expect("open");
    Some((tmp, store))
}

mod on_sqlite {
    super::shared_store_tests!(super::open_sqlite);
}

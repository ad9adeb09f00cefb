//! History retention (issue 15 item 1): `spec.history`, config `history.*`, `executioner gc` and
//! the controller's prune after runs end. Real binary, real files; the 2,000-run growth test
//! drives the store directly for speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

fn pn(name: &str) -> executioner::spec::PipelineName {
    executioner::spec::PipelineName::parse(name).unwrap()
}

fn jid(id: &str) -> executioner::spec::JobId {
    executioner::spec::JobId::parse(id).unwrap()
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Running, Workspace, json, manifest, run_with_timeout, text, wait_until};

const QUICK_JOB: &str = "    - {id: a, command: \"echo a line of output\"}\n";

/// `executioner --state-dir STATE ARGS...` with extra environment.
fn run_env(ws: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(args)
        .env_remove("EXECUTIONER_STATE_DIR")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(120))
}

fn ok(out: &Output) -> &Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The run ids of `pipeline`, oldest first.
fn run_ids(ws: &Workspace, pipeline: &str) -> Vec<i64> {
    let out = ws.run(&[
        "runs",
        "--pipeline",
        pipeline,
        "--limit",
        "10000",
        "-o",
        "json",
    ]);
    let mut ids: Vec<i64> = json(ok(&out))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// The run folders under `logs/PIPELINE/`, by id.
fn log_folders(ws: &Workspace, pipeline: &str) -> Vec<i64> {
    let dir = ws.state_dir().join("logs").join(pipeline);
    let mut ids: Vec<i64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// Every file under `dir` with its contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                found.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// Every row of every table of the state database, as text.
fn rows(state_dir: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        state_dir.join("executioner.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let values: Vec<String> = (0..columns)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            out.push(format!("{table}: {}", values.join(", ")));
        }
    }
    out
}

/// `gc --dry-run` says what it would prune and changes no row and no file; `gc` then prunes
/// exactly that, keeping the newest `keepRuns` runs and their log folders.
#[test]
fn gc_dry_run_changes_nothing_and_gc_keeps_keep_runs() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("kept", "  history: {keepRuns: 3}\n", QUICK_JOB),
    );
    for _ in 0..6 {
        ok(&ws.run(&["run", "p.yaml", "-q"]));
    }
    assert_eq!(log_folders(&ws, "kept"), [1, 2, 3, 4, 5, 6]);

    let rows_before = rows(&ws.state_dir());
    let logs_before = files(&ws.state_dir().join("logs"));
    let dry = json(ok(&ws.run(&["gc", "--dry-run", "-o", "json"])));
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["runs"], 3);
    assert_eq!(dry["pipelines"][0]["pipeline"], "kept");
    assert_eq!(dry["pipelines"][0]["runs"], serde_json::json!([1, 2, 3]));
    assert!(dry["logBytes"].as_u64().unwrap() > 0);
    assert_eq!(
        rows(&ws.state_dir()),
        rows_before,
        "a dry run changes no row"
    );
    assert_eq!(
        files(&ws.state_dir().join("logs")),
        logs_before,
        "a dry run changes no file"
    );

    let done = ws.run(&["gc"]);
    let said = text(&ok(&done).stdout);
    assert!(
        said.contains("pipeline/kept: pruned 3 runs (runs 1-3)"),
        "{said}"
    );
    assert_eq!(run_ids(&ws, "kept"), [4, 5, 6]);
    assert_eq!(log_folders(&ws, "kept"), [4, 5, 6]);
    let runs_show = ws.run(&["runs", "show", "2"]);
    assert_eq!(runs_show.status.code(), Some(2), "a pruned run is gone");
    // Nothing more to do.
    assert!(text(&ok(&ws.run(&["gc"])).stdout).contains("nothing to prune"));
}

/// A run still running and each pipeline's latest run survive any policy (here the
/// configuration's, from the environment: keep 1), whatever their age.
#[test]
fn a_running_run_and_the_latest_run_are_never_pruned() {
    use executioner::status::{JobPhase, RunPhase};
    use executioner::store::{Durability, NewJob, NewRun, Owner, Store};
    let ws = Workspace::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&ws.state_dir(), Durability::Normal)
            .await
            .unwrap();
        let owner = Owner {
            pid: std::process::id(),
            host: "test".into(),
            start_time: None,
        };
        for n in 1..=6 {
            let run = store
                .create_run(&NewRun {
                    pipeline: &pn("mixed"),
                    generation: 0,
                    spec_json: "{}",
                    spec_hash: "h",
                    jobs: &[NewJob {
                        id: &jid("a"),
                        log_path: "a.log",
                    }],
                    owner: &owner,
                })
                .await
                .unwrap();
            let dir = ws.state_dir().join(format!("logs/mixed/{run}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.log"), "output\n").unwrap();
            // Run 2 stays Running.
            if n != 2 {
                store
                    .set_job(run, &jid("a"), JobPhase::Succeeded, None, None)
                    .await
                    .unwrap();
                assert_eq!(
                    store.close_run(run, &[]).await.unwrap().0,
                    RunPhase::Succeeded
                );
                store.enqueue_notifications(run, 1, &[]).await.unwrap();
            }
        }
        store.close().await;
    });
    let env = [
        ("EXECUTIONER_HISTORY__KEEP_RUNS", "1"),
        ("EXECUTIONER_HISTORY__KEEP_FOR", "0s"),
    ];
    let out = json(ok(&run_env(&ws, &["gc", "-o", "json"], &env)));
    assert_eq!(out["pipelines"][0]["runs"], serde_json::json!([1, 3, 4, 5]));
    assert_eq!(run_ids(&ws, "mixed"), [2, 6]);
    assert_eq!(log_folders(&ws, "mixed"), [2, 6]);
}

/// `keepFor` prunes finished runs by the time they ended, even among the newest `keepRuns`;
/// the latest run stays however old it is.
#[test]
fn keep_for_prunes_by_age() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest(
            "aged",
            "  history: {keepRuns: 50, keepFor: 1d}\n",
            QUICK_JOB,
        ),
    );
    for _ in 0..4 {
        ok(&ws.run(&["run", "p.yaml", "-q"]));
    }
    assert!(text(&ok(&ws.run(&["gc"])).stdout).contains("nothing to prune"));
    // Runs 1, 2 and 4 ended two days ago (the store's times, moved back).
    let conn = rusqlite::Connection::open(ws.state_dir().join("executioner.db")).unwrap();
    conn.execute(
        "UPDATE runs SET created_at = '2020-01-01T00:00:00.000Z', \
         finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days') WHERE id IN (1, 2, 4)",
        [],
    )
    .unwrap();
    drop(conn);
    let out = json(ok(&ws.run(&["gc", "-o", "json"])));
    assert_eq!(out["pipelines"][0]["runs"], serde_json::json!([1, 2]));
    assert_eq!(run_ids(&ws, "aged"), [3, 4]);
    assert_eq!(log_folders(&ws, "aged"), [3, 4]);
}

/// The controller prunes after a run ends: a pipeline with earlier history keeps `keepRuns`
/// runs once the controller's own run is over.
#[test]
fn the_controller_prunes_after_a_run_ends() {
    let ws = Workspace::new();
    let text_of = manifest("nightly", "  history: {keepRuns: 3}\n", QUICK_JOB);
    ws.write("manifests/nightly.yaml", &text_of);
    for _ in 0..5 {
        ok(&ws.run(&["run", "manifests/nightly.yaml", "-q"]));
    }
    let out = ws.run(&["controller", "--manifests", "manifests", "--once"]);
    ok(&out);
    assert_eq!(run_ids(&ws, "nightly"), [4, 5, 6]);
    assert_eq!(log_folders(&ws, "nightly"), [4, 5, 6]);
    assert!(
        text(&out.stderr).contains("history pruned"),
        "{}",
        text(&out.stderr)
    );
}

/// `gc` needs no controller lock: it prunes beside a running controller and leaves the run that
/// controller is running.
#[test]
fn gc_works_beside_a_running_controller() {
    let ws = Workspace::new();
    // Quick while `slow` is absent: the history is made with `run`, then the controller's own run
    // is a long one.
    let job = format!(
        "    - {{id: a, command: \"if [ -e {dir}/slow ]; then sleep 30; fi\"}}\n",
        dir = ws.path().display()
    );
    ws.write(
        "manifests/beside.yaml",
        &manifest("beside", "  history: {keepRuns: 1}\n", &job),
    );
    for _ in 0..3 {
        ok(&ws.run(&["run", "manifests/beside.yaml", "-q"]));
    }
    ws.write("slow", "");
    let mut controller = Running::start(&ws, &[]);
    wait_until(Duration::from_secs(30), || {
        common::status(&ws, "beside").is_some_and(|s| s["status"]["phase"] == "Running")
    });
    let out = json(ok(&ws.run(&["gc", "-o", "json"])));
    assert_eq!(out["pipelines"][0]["runs"], serde_json::json!([1, 2, 3]));
    assert_eq!(run_ids(&ws, "beside"), [4]);
    assert_eq!(log_folders(&ws, "beside"), [4]);
    controller.stop();
}

/// `executioner config` shows the history settings with where they came from.
#[test]
fn config_shows_the_history_settings_and_their_sources() {
    let ws = Workspace::new();
    let out = run_env(
        &ws,
        &["config", "-o", "json"],
        &[("EXECUTIONER_HISTORY__KEEP_RUNS", "7")],
    );
    let items = json(ok(&out));
    let find = |key: &str| {
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in {items}"))
    };
    assert_eq!(find("history.keep_runs")["value"], 7);
    assert_eq!(
        find("history.keep_runs")["source"],
        "env EXECUTIONER_HISTORY__KEEP_RUNS"
    );
    assert_eq!(find("history.keep_for")["source"], "default");
    assert_eq!(
        executioner::spec::Duration::parse(find("history.keep_for")["value"].as_str().unwrap()),
        Ok(executioner::spec::Duration::from_secs(30 * 24 * 3600))
    );
}

/// Over 2,000 runs pruned to the newest 100 as they go, the database file stops growing: its
/// size after 2,000 runs is that after 1,000, within a few pages; every pruned run's log folder
/// is gone.
#[test]
fn the_database_stops_growing_over_two_thousand_runs() {
    use executioner::status::{JobPhase, RunPhase};
    use executioner::store::retention::{Policies, PruneMode, RetentionPolicy};
    use executioner::store::{AttemptEnd, Durability, NewJob, NewRun, Owner, Store};
    let ws = Workspace::new();
    let state = ws.state_dir();
    let policies = Policies {
        default: RetentionPolicy {
            keep_runs: 100,
            keep_for: Duration::from_secs(30 * 24 * 3600),
        },
        pipelines: BTreeMap::new(),
    };
    let owner = Owner {
        pid: std::process::id(),
        host: "test".into(),
        start_time: None,
    };
    let jobs = [
        NewJob {
            id: &jid("extract"),
            log_path: "extract.log",
        },
        NewJob {
            id: &jid("load"),
            log_path: "load.log",
        },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db_size = || {
        std::fs::metadata(state.join("executioner.db"))
            .unwrap()
            .len()
    };
    let mut sizes = Vec::new();
    runtime.block_on(async {
        let mut store = Store::open(&state, Durability::Normal).await.unwrap();
        for n in 1..=2000 {
            let run = store
                .create_run(&NewRun {
                    pipeline: &pn("every-minute"),
                    generation: 1,
                    spec_json: r#"{"manifest":{"spec":{"jobs":[]}},"padding":"a pinned spec of some size"}"#,
                    spec_hash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    jobs: &jobs,
                    owner: &owner,
                })
                .await
                .unwrap();
            let dir = state.join(format!("logs/every-minute/{run}"));
            std::fs::create_dir_all(&dir).unwrap();
            for job in ["extract", "load"] {
                let attempt = store.attempt_started(run, &jid(job), 1, 1, 1).await.unwrap();
                std::fs::write(dir.join(format!("{job}.log")), "== attempt 1\nsome output\n")
                    .unwrap();
                let end = AttemptEnd {
                    phase: JobPhase::Succeeded,
                    reason: None,
                    exit_code: Some(0),
                    signal: None,
                    user_time: Duration::from_millis(3),
                    system_time: Duration::from_millis(1),
                    max_rss_kib: 2048,
                    max_rss_upper_bound: false,
                    message: None,
                };
                store
                    .attempt_finished(attempt, &end, Some((JobPhase::Succeeded, None)))
                    .await
                    .unwrap();
            }
            assert_eq!(store.close_run(run, &[]).await.unwrap().0, RunPhase::Succeeded);
            store.enqueue_notifications(run, 1, &[]).await.unwrap();
            // As the controller does, once in a while rather than after every run.
            if n % 10 == 0 {
                let now = time::OffsetDateTime::now_utc();
                store
                    .prune_history(&state, &policies, now, PruneMode::Delete)
                    .await
                    .unwrap();
            }
            if n % 1000 == 0 {
                // Closing checkpoints the WAL into the file: its size is then the database's.
                store.close().await;
                sizes.push(db_size());
                store = Store::open(&state, Durability::Normal).await.unwrap();
            }
        }
        store.close().await;
    });
    let page = 4096;
    assert!(
        sizes[1] <= sizes[0] + 4 * page,
        "the database grew from {} to {} bytes between 1,000 and 2,000 runs",
        sizes[0],
        sizes[1]
    );
    assert_eq!(run_ids(&ws, "every-minute").len(), 100);
    assert_eq!(
        log_folders(&ws, "every-minute"),
        (1901..=2000).collect::<Vec<i64>>()
    );
}

/// Exit codes (DESIGN 3): no state folder is nothing to prune (0, and nothing is created); a
/// damaged database is 3 and left as it was.
#[test]
fn gc_exit_codes() {
    let ws = Workspace::new();
    let out = ws.run(&["gc"]);
    assert!(text(&ok(&out).stdout).contains("nothing to prune"));
    assert!(!ws.state_dir().exists(), "gc creates no state folder");

    std::fs::create_dir_all(ws.state_dir()).unwrap();
    let db = ws.state_dir().join("executioner.db");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let out = ws.run(&["gc"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x5a; 8192]);
}

/// The controller decides whether a pipeline needs a run by the newest run of its current
/// generation; foreground runs since (generation 0) do not make that run prunable, so after `gc`
/// the controller does not run the pipeline again.
#[test]
fn gc_keeps_the_controllers_run_of_the_current_generation() {
    let ws = Workspace::new();
    ws.write(
        "manifests/mixed.yaml",
        &manifest("mixed", "  history: {keepRuns: 1}\n", QUICK_JOB),
    );
    ok(&ws.run(&["controller", "--manifests", "manifests", "--once"]));
    for _ in 0..2 {
        ok(&ws.run(&["run", "manifests/mixed.yaml", "-q"]));
    }
    assert_eq!(run_ids(&ws, "mixed"), [1, 2, 3]);
    let out = json(ok(&ws.run(&["gc", "-o", "json"])));
    assert_eq!(out["pipelines"][0]["runs"], serde_json::json!([2]));
    assert_eq!(run_ids(&ws, "mixed"), [1, 3]);
    ok(&ws.run(&["controller", "--manifests", "manifests", "--once"]));
    assert_eq!(run_ids(&ws, "mixed"), [1, 3], "the controller ran it again");
}

/// Turns the state database back into one made before retention (auto_vacuum NONE).
fn make_old_database(ws: &Workspace) {
    let conn = rusqlite::Connection::open(ws.state_dir().join("executioner.db")).unwrap();
    conn.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    let mode: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 0);
}

/// The one-time rewrite of an old database holds the write lock for its whole length, which an
/// idle controller's writes cannot wait out: `gc` skips it while a controller runs, says so, and
/// converts once the controller is stopped.
#[test]
fn gc_converts_an_old_database_only_without_a_controller() {
    let ws = Workspace::new();
    ws.write("p.yaml", &manifest("old", "", QUICK_JOB));
    ok(&ws.run(&["run", "p.yaml", "-q"]));
    make_old_database(&ws);
    let mut controller = Running::start(&ws, &[]);
    let beside = ws.run(&["gc", "-o", "json"]);
    let out = json(ok(&beside));
    assert_eq!(out["converted"], false, "{out}");
    assert!(
        text(&beside.stderr).contains("a controller is running"),
        "{}",
        text(&beside.stderr)
    );
    controller.stop();
    let out = json(ok(&ws.run(&["gc", "-o", "json"])));
    assert_eq!(out["converted"], true, "{out}");
}

/// A log folder whose run's rows are gone (the process died between the commit and the removal)
/// is removed by `gc` when it is older than the pipeline's oldest run kept; a newer one, or a
/// folder that is not a run's, stays.
#[test]
fn gc_removes_orphaned_log_folders_older_than_the_oldest_run() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("orphans", "  history: {keepRuns: 2}\n", QUICK_JOB),
    );
    for _ in 0..3 {
        ok(&ws.run(&["run", "p.yaml", "-q"]));
    }
    ok(&ws.run(&["gc"]));
    assert_eq!(run_ids(&ws, "orphans"), [2, 3]);
    let logs = ws.state_dir().join("logs").join("orphans");
    for name in ["1", "notes", "7"] {
        std::fs::create_dir_all(logs.join(name)).unwrap();
        std::fs::write(logs.join(name).join("a.log"), "left behind\n").unwrap();
    }
    let dry = json(ok(&ws.run(&["gc", "--dry-run", "-o", "json"])));
    assert_eq!(
        dry["orphanedLogFolders"].as_array().unwrap().len(),
        1,
        "{dry}"
    );
    assert!(logs.join("1").exists(), "a dry run removes nothing");
    let out = ws.run(&["gc"]);
    let said = text(&ok(&out).stdout);
    assert!(said.contains("orphaned log folder"), "{said}");
    assert!(!logs.join("1").exists());
    assert!(logs.join("notes").exists());
    assert!(logs.join("7").exists());
    assert_eq!(log_folders(&ws, "orphans"), [2, 3, 7]);
}

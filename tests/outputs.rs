//! Integration tests of issue 18, data between jobs: outputs written to `$EXECUTIONER_OUTPUT` and
//! read as `${jobs.ID.outputs.KEY}`, run parameters (`spec.params`, `--param`), through the real
//! binary, a real controller and the state database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Running, Workspace, job_state, json, manifest, text, wait_phase, wait_until};

fn run_json(ws: &Workspace, file: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["run", file, "-o", "json"];
    args.extend_from_slice(extra);
    let out = ws.run(&args);
    (out.status.code(), json(&out))
}

fn job<'a>(run: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    run["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("no job {id} in {run}"))
}

fn log(ws: &Workspace, run: &str, job: &str) -> String {
    text(&ws.run(&["logs", run, job]).stdout)
}

#[test]
fn outputs_flow_through_a_chain_and_a_diamond() {
    let ws = Workspace::new();
    ws.write(
        "chain.yaml",
        &manifest(
            "chain",
            "",
            r#"    - id: a
      command: |
        echo "FILE=/data/a.csv" >> "$EXECUTIONER_OUTPUT"
        printf 'NOTES<<EOF\nfirst line\n\nthird=line\nEOF\n' >> "$EXECUTIONER_OUTPUT"
    - id: b
      dependencies: [a]
      command: [sh, -c, 'echo "b got $1" && echo "COUNT=3" >> "$EXECUTIONER_OUTPUT"', b, "${jobs.a.outputs.FILE}"]
    - id: c
      dependencies: [b]
      command: 'printf "%s|%s|%s\n" "$FILE" "$COUNT" "$NOTES"'
      env:
        FILE: ${jobs.a.outputs.FILE}
        COUNT: ${jobs.b.outputs.COUNT}
        NOTES: ${jobs.a.outputs.NOTES}
    - id: top
      command: echo "ROOT=r" >> "$EXECUTIONER_OUTPUT"
    - id: left
      dependencies: [top]
      command: echo "SIDE=left-$R" >> "$EXECUTIONER_OUTPUT"
      env: {R: "${jobs.top.outputs.ROOT}"}
    - id: right
      dependencies: [top]
      command: echo "SIDE=right-$R" >> "$EXECUTIONER_OUTPUT"
      env: {R: "${jobs.top.outputs.ROOT}"}
    - id: bottom
      dependencies: [left, right]
      command: [echo, "diamond ${jobs.left.outputs.SIDE} ${jobs.right.outputs.SIDE} ${jobs.top.outputs.ROOT}"]
"#,
        ),
    );
    let (code, run) = run_json(&ws, "chain.yaml", &[]);
    assert_eq!(code, Some(0), "{run}");
    assert!(log(&ws, "1", "b").contains("b got /data/a.csv"));
    assert!(
        log(&ws, "1", "c").contains("/data/a.csv|3|first line\n\nthird=line\n"),
        "{}",
        log(&ws, "1", "c")
    );
    assert!(log(&ws, "1", "bottom").contains("diamond left-r right-r r"));
    // Every job's outputs are in the run object, and nothing of the files is left behind.
    assert_eq!(
        job(&run, "a")["outputs"]["NOTES"],
        "first line\n\nthird=line"
    );
    assert_eq!(job(&run, "b")["outputs"], serde_json::json!({"COUNT": "3"}));
    assert_eq!(job(&run, "bottom")["outputs"], serde_json::json!({}));
    let shown = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(job(&shown, "left")["outputs"]["SIDE"], "left-r");
    assert_eq!(shown["params"], serde_json::json!({}));
    let table = text(&ws.run(&["runs", "show", "1"]).stdout);
    assert!(table.contains("output a.FILE=/data/a.csv"), "{table}");
    assert!(!ws.state_dir().join("logs/chain/1/outputs").exists());
}

/// Every file under `dir` (the database, its WAL, the logs, status files), as bytes.
fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const SECRET: &str = "s3cr3t-Value-42";

fn secret_manifest(name: &str) -> String {
    manifest(
        name,
        "  env:\n    TOKEN: {fromEnv: OUTPUT_TEST_SECRET}\n",
        r#"    - id: login
      command: echo "URL=https://user:$TOKEN@db.example" >> "$EXECUTIONER_OUTPUT"
    - id: use
      dependencies: [login]
      command: [echo, "using ${jobs.login.outputs.URL}"]
"#,
    )
}

#[test]
fn an_output_holding_a_secret_is_masked_in_logs_database_and_status() {
    let ws = Workspace::new();
    ws.write("secret.yaml", &secret_manifest("secret"));
    let mut cmd = std::process::Command::new(common::bin());
    cmd.current_dir(ws.path())
        .args(["--state-dir", ws.state_dir().to_str().unwrap()])
        .args(["run", "secret.yaml", "-o", "json"])
        .env("OUTPUT_TEST_SECRET", SECRET);
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let run = json(&out);
    assert_eq!(
        job(&run, "login")["outputs"]["URL"],
        "https://user:***@db.example"
    );
    assert!(log(&ws, "1", "use").contains("using https://user:***@db.example"));
    assert!(log(&ws, "1", "login").contains("output URL=https://user:***@db.example"));
    // The database, read as SQLite and as raw bytes (WAL included).
    let db = rusqlite::Connection::open(ws.state_dir().join("executioner.db")).unwrap();
    let stored: String = db
        .query_row(
            "SELECT outputs FROM attempt_outputs WHERE job_id = 'login'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, r#"{"URL":"https://user:***@db.example"}"#);
    drop(db);

    // The same through the controller, for the status file.
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    ws.write("manifests/secret2.yaml", &secret_manifest("secret2"));
    let controller = Running::start(&ws, &[("OUTPUT_TEST_SECRET", SECRET)]);
    wait_phase(&ws, "secret2", "Succeeded", 1);
    drop(controller);
    assert!(common::status_file(&ws, "secret2").exists());
    for (path, bytes) in all_bytes(ws.path()) {
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            path.display()
        );
    }
}

#[test]
fn a_missing_output_fails_the_dependent_before_it_starts_and_a_huge_one_is_refused() {
    let ws = Workspace::new();
    ws.write(
        "missing.yaml",
        &manifest(
            "missing",
            "",
            r#"    - id: up
      command: echo "HERE=1" >> "$EXECUTIONER_OUTPUT"
    - id: down
      dependencies: [up]
      retry: {limit: 3}
      command: [sh, -c, 'touch started; echo "$1"', down, "${jobs.up.outputs.NOT_THERE}"]
    - id: defaulted
      dependencies: [up]
      command: [echo, "${jobs.up.outputs.NOT_THERE:-fallback}"]
    - id: big
      command: "head -c 2097152 /dev/zero | tr '\\0' x | sed 's/^/K=/' > \"$EXECUTIONER_OUTPUT\""
    - id: malformed
      command: echo "no equals sign" >> "$EXECUTIONER_OUTPUT"
    - id: retried
      retry: {limit: 1}
      command: 'if [ "$EXECUTIONER_ATTEMPT" = 1 ]; then echo "OLD=1" >> "$EXECUTIONER_OUTPUT"; exit 3; fi; echo "NEW=2" >> "$EXECUTIONER_OUTPUT"'
"#,
        ),
    );
    let (code, run) = run_json(&ws, "missing.yaml", &[]);
    assert_eq!(code, Some(1), "{run}");
    // Not retried, and its command never ran.
    assert_eq!(
        job_state(&run, "down"),
        ("Failed".into(), "MissingOutput".into(), 1)
    );
    let down = &job(&run, "down")["attemptList"][0];
    assert!(
        down["message"]
            .as_str()
            .unwrap()
            .contains("job `up` produced no output NOT_THERE"),
        "{down}"
    );
    assert!(!ws.path().join("started").exists());
    assert_eq!(job_state(&run, "defaulted").0, "Succeeded");
    assert!(log(&ws, "1", "defaulted").contains("fallback"));
    assert_eq!(job_state(&run, "big").1, "OutputTooLarge");
    assert!(
        job(&run, "big")["attemptList"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 1048576 (1 MiB)")
    );
    assert_eq!(job_state(&run, "malformed").1, "InvalidOutput");
    assert_eq!(job(&run, "big")["outputs"], serde_json::json!({}));
    // Each attempt has a file of its own: the one that succeeded gives the outputs.
    assert_eq!(job_state(&run, "retried").0, "Succeeded");
    assert_eq!(
        job(&run, "retried")["outputs"],
        serde_json::json!({"NEW": "2"})
    );
}

#[test]
fn references_to_jobs_not_upstream_are_validation_errors() {
    let ws = Workspace::new();
    ws.write(
        "refs.yaml",
        &manifest(
            "refs",
            "  params:\n    day: {default: today}\n",
            r#"    - id: extract
      command: "true"
    - id: load
      command: [echo, "${jobs.extrct.outputs.FILE}", "${params.dai}"]
      dependencies: [extract]
    - id: side
      command: "true"
      env: {X: "${jobs.load.outputs.K}"}
    - id: shell
      command: echo ${params.day}
"#,
        ),
    );
    let out = ws.run(&["validate", "refs.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr) + &text(&out.stdout);
    assert!(
        stderr.contains("refs.yaml:12:23: job `load`: ${jobs.extrct.outputs.FILE} reads unknown job `extrct`, did you mean `extract`?"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "${params.dai}: parameter `dai` is not declared in spec.params, did you mean `day`?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "job `side`: ${jobs.load.outputs.K} reads job `load`, which is not upstream of it"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "job `shell`: a string command goes to sh unchanged, which cannot expand ${params.day}"
        ),
        "{stderr}"
    );
}

fn params_manifest(name: &str) -> String {
    manifest(
        name,
        r#"  params:
    day: {type: string, default: "2026-11-30", description: the day}
    region: {enum: [eu, us], default: eu}
    limit: {type: integer, default: 10}
    ratio: {type: number, default: 0.5}
    full: {type: boolean, default: false}
"#,
        r#"    - id: show
      command: echo "day=$DAY region=$REGION limit=$LIMIT ratio=$RATIO full=$FULL"
      env:
        DAY: ${params.day}
        REGION: ${params.region}
        LIMIT: ${params.limit}
        RATIO: ${params.ratio}
        FULL: ${params.full}
    - id: envdump
      command: [env]
      postChecks:
        - command: [sh, -c, 'if env | grep -q "^params\."; then exit 1; fi']
"#,
    )
}

#[test]
fn params_defaults_types_enums_and_unknown_names() {
    let ws = Workspace::new();
    ws.write("params.yaml", &params_manifest("params"));
    let (code, run) = run_json(&ws, "params.yaml", &[]);
    assert_eq!(code, Some(0), "{run}");
    assert!(
        log(&ws, "1", "show").contains("day=2026-11-30 region=eu limit=10 ratio=0.5 full=false")
    );
    assert_eq!(run["params"]["limit"], "10");

    let (code, run) = run_json(
        &ws,
        "params.yaml",
        &[
            "--param",
            "region=us",
            "--param",
            "limit=7",
            "--param",
            "full=true",
        ],
    );
    assert_eq!(code, Some(0), "{run}");
    assert!(log(&ws, "2", "show").contains("day=2026-11-30 region=us limit=7 ratio=0.5 full=true"));
    let shown = json(&ws.run(&["runs", "show", "2", "-o", "json"]));
    assert_eq!(shown["params"]["region"], "us");
    // Parameters are not exported to the job or its checks: only their interpolations are.
    let dump = log(&ws, "2", "envdump");
    assert!(dump.contains("EXECUTIONER_OUTPUT="), "{dump}");
    assert!(!dump.contains("params."), "{dump}");
    assert_eq!(job_state(&run, "envdump").0, "Succeeded");

    for (args, message) in [
        (
            vec!["--param", "region=asia"],
            "parameter region: \"asia\" is not one of eu, us",
        ),
        (
            vec!["--param", "limit=ten"],
            "parameter limit: \"ten\" is not an integer",
        ),
        (
            vec!["--param", "ratio=abc"],
            "parameter ratio: \"abc\" is not a number",
        ),
        (
            vec!["--param", "full=yes"],
            "parameter full: \"yes\" is not a boolean (true or false)",
        ),
        (
            vec!["--param", "dya=1"],
            "unknown parameter \"dya\", did you mean \"day\"?",
        ),
        (
            vec!["--param", "nothing"],
            "--param \"nothing\": expected NAME=VALUE",
        ),
    ] {
        let mut all = vec!["run", "params.yaml"];
        all.extend(args);
        let out = ws.run(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(
            text(&out.stderr).contains(message),
            "{all:?}: {}",
            text(&out.stderr)
        );
    }

    // A parameter without default must be given.
    ws.write(
        "required.yaml",
        &manifest(
            "required",
            "  params:\n    date: {type: string}\n",
            "    - id: a\n      command: [echo, \"${params.date}\"]\n",
        ),
    );
    let out = ws.run(&["run", "required.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("parameter date is required"));
    let (code, _) = run_json(&ws, "required.yaml", &["--param", "date=2026-12-01"]);
    assert_eq!(code, Some(0));
}

#[test]
fn rerun_with_params_through_a_real_controller() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    ws.write("manifests/daily.yaml", &params_manifest("daily"));
    let _controller = Running::start(&ws, &[]);
    wait_phase(&ws, "daily", "Succeeded", 1);

    let out = ws.run(&["rerun", "daily", "--param", "limit=many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("parameter limit: \"many\" is not an integer"));

    let out = ws.run(&[
        "rerun",
        "daily",
        "--param",
        "day=2026-12-24",
        "--param",
        "region=us",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(60), || {
        let out = ws.run(&["runs", "show", "2", "-o", "json"]);
        out.status.code() == Some(0) && json(&out)["phase"] == "Succeeded"
    });
    let shown = json(&ws.run(&["runs", "show", "2", "-o", "json"]));
    assert_eq!(shown["params"]["day"], "2026-12-24");
    assert_eq!(shown["params"]["region"], "us");
    assert_eq!(shown["params"]["limit"], "10");
    assert!(log(&ws, "2", "show").contains("day=2026-12-24 region=us limit=10"));
    // Parameters do not change the generation.
    assert_eq!(shown["generation"], 1);
}

#[test]
fn a_resume_uses_the_stored_outputs_without_running_their_job_again() {
    let ws = Workspace::new();
    let marker = ws.path().join("a.runs");
    let gate = ws.path().join("gate");
    ws.write(
        "resume.yaml",
        &manifest(
            "resume",
            "  params:\n    tag: {default: v1}\n",
            &format!(
                r#"    - id: a
      command: 'echo run >> {marker}; echo "ID=$$-$TAG" >> "$EXECUTIONER_OUTPUT"'
      env: {{TAG: "${{params.tag}}"}}
    - id: b
      dependencies: [a]
      command: [echo, "b ${{jobs.a.outputs.ID}}"]
    - id: c
      dependencies: [b]
      command: 'test -e {gate} && echo "c $ID"'
      env: {{ID: "${{jobs.a.outputs.ID}}"}}
"#,
                marker = marker.display(),
                gate = gate.display()
            ),
        ),
    );
    let (code, run) = run_json(&ws, "resume.yaml", &["--param", "tag=v2"]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(job_state(&run, "c").0, "Failed");
    let id = job(&run, "a")["outputs"]["ID"].as_str().unwrap().to_owned();
    assert!(id.ends_with("-v2"), "{id}");

    std::fs::write(&gate, "").unwrap();
    let out = ws.run(&["resume", "1", "--failed-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "run\n");
    assert!(
        log(&ws, "1", "c").contains(&format!("c {id}")),
        "{}",
        log(&ws, "1", "c")
    );
    let shown = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(shown["phase"], "Succeeded");
    assert_eq!(job(&shown, "a")["outputs"]["ID"], id.as_str());
    assert_eq!(shown["params"]["tag"], "v2");

    // A full resume of a failed run runs `a` again: its new outputs replace the old ones, and the
    // recorded parameter is used again. (`run --resume-from` refuses new values.)
    let out = ws.run(&[
        "run",
        "resume.yaml",
        "--resume-from",
        "1",
        "--param",
        "tag=v3",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_example_runs() {
    let ws = Workspace::new();
    let example = common::repo().join("examples/outputs.yaml");
    let (code, run) = run_json(&ws, example.to_str().unwrap(), &["--param", "region=us"]);
    assert_eq!(code, Some(0), "{run}");
    let report = log(&ws, "1", "report");
    assert!(
        report.contains("region us\n10 rows\ntable sales_us\ndry run: false\nno note"),
        "{report}"
    );
    assert_eq!(run["params"]["region"], "us");
}

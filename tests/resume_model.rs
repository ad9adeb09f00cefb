//! The state of a run across rounds (issue 13), as a property: random DAGs with random triggers,
//! `continueOnError`, retries and an outcome per attempt, driven through the real binary by random
//! sequences of `resume`, `resume --failed-only` and `mark-success`, and checked after every step
//! against a reference model written here, apart from the engine (DESIGN 2.1 and 3.1), and against
//! invariants of what the binary reports:
//! - the verdict rule holds between the run's phase and its jobs;
//! - a job runs in a round exactly when the rules say so, with the attempts the model predicts;
//! - no job is left Skipped for a reason that no longer holds;
//! - a job never has two attempts running at once (a per-job `flock` in every attempt);
//! - the attempt counts of the live lines, the JSON and the table agree.
//!
//! `make test` runs a bounded number of cases; `make test-long` (EXECUTIONER_LONG_TESTS) many more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Workspace, json, text};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    AllSucceeded,
    AllDone,
    AllFailed,
    AnySucceeded,
    AnyFailed,
    NoneFailed,
    Always,
}

impl Trigger {
    fn spelled(self) -> &'static str {
        match self {
            Trigger::AllSucceeded => "allSucceeded",
            Trigger::AllDone => "allDone",
            Trigger::AllFailed => "allFailed",
            Trigger::AnySucceeded => "anySucceeded",
            Trigger::AnyFailed => "anyFailed",
            Trigger::NoneFailed => "noneFailed",
            Trigger::Always => "always",
        }
    }
}

#[derive(Debug, Clone)]
struct JobDef {
    deps: Vec<usize>,
    trigger: Trigger,
    continue_on_error: bool,
    retries: u32,
    /// Exit code of attempt number k + 1 (attempt numbers continue across rounds).
    outcomes: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    Resume,
    FailedOnly,
    /// Marks the jobs picked (modulo) among those not Succeeded.
    Mark(Vec<usize>),
}

/// A job's state as the model sees it: phase and reason, as the binary spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    phase: &'static str,
    reason: &'static str,
}

const SUCCEEDED: State = State {
    phase: "Succeeded",
    reason: "Completed",
};
const MARKED: State = State {
    phase: "Succeeded",
    reason: "MarkedSuccess",
};
const FAILED: State = State {
    phase: "Failed",
    reason: "ExitCode",
};

fn skipped(reason: &'static str) -> State {
    State {
        phase: "Skipped",
        reason,
    }
}

/// The reference model: what the rules of DESIGN 2.1 and 3.1 say, job by job.
struct Model {
    jobs: Vec<JobDef>,
    states: Vec<State>,
    attempts: Vec<usize>,
}

/// What a dependency's state means to the jobs after it.
fn succeeded_for_dependents(job: &JobDef, s: &State) -> bool {
    s.phase == "Succeeded"
        || (s.phase == "Failed" && job.continue_on_error)
        || (s.phase == "Skipped" && s.reason == "SkippedByUser")
}

fn failed_for_dependents(job: &JobDef, s: &State) -> bool {
    (s.phase == "Failed" && !job.continue_on_error) || s.phase == "Cancelled"
}

/// `None` when `job`'s trigger holds over `deps`, else the reason it is skipped.
fn trigger_verdict(jobs: &[JobDef], states: &[State], job: usize) -> Option<&'static str> {
    let def = &jobs[job];
    let total = def.deps.len();
    let ok = def
        .deps
        .iter()
        .filter(|&&d| succeeded_for_dependents(&jobs[d], &states[d]))
        .count();
    let failed = def
        .deps
        .iter()
        .filter(|&&d| failed_for_dependents(&jobs[d], &states[d]))
        .count();
    let blocked = def.deps.iter().any(|&d| {
        failed_for_dependents(&jobs[d], &states[d])
            || (states[d].phase == "Skipped"
                && matches!(
                    states[d].reason,
                    "UpstreamFailed" | "FailFast" | "Cancelled" | "RunTimeout"
                ))
    });
    let holds = match def.trigger {
        Trigger::AllSucceeded => ok == total,
        Trigger::AllDone | Trigger::Always => true,
        Trigger::AllFailed => failed == total,
        Trigger::AnySucceeded => ok > 0 || total == 0,
        Trigger::AnyFailed => failed > 0,
        Trigger::NoneFailed => failed == 0,
    };
    match (holds, def.trigger) {
        (true, _) => None,
        (false, Trigger::AllSucceeded | Trigger::NoneFailed) if blocked => Some("UpstreamFailed"),
        (false, _) => Some("TriggerNotMet"),
    }
}

impl Model {
    fn new(jobs: Vec<JobDef>) -> Model {
        let n = jobs.len();
        Model {
            jobs,
            states: vec![skipped("NotYet"); n],
            attempts: vec![0; n],
        }
    }

    /// The run's verdict (DESIGN 3.1).
    fn verdict(&self) -> (&'static str, &'static str) {
        let ok = |(def, s): (&JobDef, &State)| match s.phase {
            "Succeeded" => true,
            "Skipped" => matches!(s.reason, "SkippedByUser" | "TriggerNotMet"),
            "Failed" => def.continue_on_error,
            _ => false,
        };
        if self.jobs.iter().zip(&self.states).all(ok) {
            if self.states.contains(&MARKED) {
                ("Succeeded", "MarkedSucceeded")
            } else {
                ("Succeeded", "AllSucceeded")
            }
        } else {
            ("Failed", "JobsFailed")
        }
    }

    /// Which jobs a resume runs again; `None` for a succeeded run (nothing to do).
    fn resumed(&self, failed_only: bool) -> Option<Vec<bool>> {
        if self.verdict().0 == "Succeeded" {
            return None;
        }
        let n = self.jobs.len();
        if !failed_only {
            return Some(self.states.iter().map(|s| s.phase != "Succeeded").collect());
        }
        // Failed jobs, and what is downstream of them or of a job marked by hand, unless it
        // succeeded.
        let mut runs: Vec<bool> = self.states.iter().map(|s| s.phase == "Failed").collect();
        let mut reached: Vec<bool> = (0..n)
            .map(|i| runs[i] || self.states[i] == MARKED)
            .collect();
        // Dependencies come before their dependents, so one pass in order closes the set.
        for i in 0..n {
            if self.jobs[i].deps.iter().any(|&d| reached[d]) {
                reached[i] = true;
                if self.states[i].phase != "Succeeded" {
                    runs[i] = true;
                }
            }
        }
        Some(runs)
    }

    /// Plays one round; returns the attempts each job made in it.
    fn round(&mut self, runs: &[bool]) -> Vec<usize> {
        let mut made = vec![0; self.jobs.len()];
        for i in 0..self.jobs.len() {
            if !runs[i] {
                continue;
            }
            if let Some(reason) = trigger_verdict(&self.jobs, &self.states, i) {
                self.states[i] = skipped(reason);
                continue;
            }
            let def = &self.jobs[i];
            self.states[i] = FAILED;
            for _ in 0..=def.retries {
                let code = def.outcomes[self.attempts[i]];
                self.attempts[i] += 1;
                made[i] += 1;
                if code == 0 {
                    self.states[i] = SUCCEEDED;
                    break;
                }
            }
        }
        made
    }
}

fn id(i: usize) -> String {
    format!("j{i}")
}

/// The manifest (JSON, so no quoting games): each attempt writes `JOB ATTEMPT` to a ledger,
/// holds a per-job lock (a second live attempt writes CONFLICT), and exits with its outcome.
fn manifest(jobs: &[JobDef]) -> String {
    let command = "echo \"$EXECUTIONER_JOB_ID $EXECUTIONER_ATTEMPT\" >> ledger; \
                   exec 9>lock.$EXECUTIONER_JOB_ID; \
                   flock -n 9 || { echo CONFLICT $EXECUTIONER_JOB_ID >> ledger; exit 99; }; \
                   exit \"$(sed -n \"${EXECUTIONER_ATTEMPT}p\" outcomes.$EXECUTIONER_JOB_ID)\"";
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            serde_json::json!({
                "id": id(i),
                "command": command,
                "dependencies": j.deps.iter().map(|&d| id(d)).collect::<Vec<_>>(),
                "trigger": j.trigger.spelled(),
                "continueOnError": j.continue_on_error,
                "retry": {"limit": j.retries},
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "executioner.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "model"},
        "spec": {"jobs": jobs},
    })
    .to_string()
}

fn job_def(i: usize) -> impl Strategy<Value = JobDef> {
    let trigger = prop_oneof![
        4 => Just(Trigger::AllSucceeded),
        1 => Just(Trigger::AllDone),
        1 => Just(Trigger::AllFailed),
        1 => Just(Trigger::AnySucceeded),
        1 => Just(Trigger::AnyFailed),
        1 => Just(Trigger::NoneFailed),
        1 => Just(Trigger::Always),
    ];
    (
        proptest::collection::vec(proptest::bool::weighted(0.4), i),
        trigger,
        proptest::bool::weighted(0.2),
        0u32..=1,
        proptest::collection::vec(prop_oneof![3 => Just(0u8), 2 => Just(1u8)], MAX_ATTEMPTS),
    )
        .prop_map(
            |(edges, trigger, continue_on_error, retries, outcomes)| JobDef {
                deps: (0..edges.len()).filter(|&d| edges[d]).collect(),
                trigger,
                continue_on_error,
                retries,
                outcomes,
            },
        )
}

/// Enough outcomes for a first round and three resumes of two attempts each.
const MAX_ATTEMPTS: usize = 8;

fn scenario() -> impl Strategy<Value = (Vec<JobDef>, Vec<Op>)> {
    let jobs = (1usize..=6).prop_flat_map(|n| (0..n).map(job_def).collect::<Vec<_>>());
    let op = prop_oneof![
        2 => Just(Op::Resume),
        2 => Just(Op::FailedOnly),
        2 => proptest::collection::vec(0usize..8, 1..=2).prop_map(Op::Mark),
    ];
    (jobs, proptest::collection::vec(op, 1..=3))
}

/// What the binary reports of run 1: its phase and reason, and each job's phase and reason.
fn observed(ws: &Workspace) -> (String, String, Vec<(String, String, i64)>) {
    let out = ws.run(&["runs", "show", "1", "-o", "json"]);
    let run = json(&out);
    let jobs = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["phase"].as_str().unwrap_or_default().to_owned(),
                j["reason"].as_str().unwrap_or_default().to_owned(),
                j["attempts"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    (
        run["phase"].as_str().unwrap_or_default().to_owned(),
        run["reason"].as_str().unwrap_or_default().to_owned(),
        jobs,
    )
}

/// The words of a table line, without its borders.
fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .filter(|w| !w.chars().all(|c| "│┆|".contains(c)))
        .collect()
}

/// The ATTEMPTS column of the jobs table of `runs show 1`, by job.
fn table_attempts(ws: &Workspace, n: usize) -> BTreeMap<String, i64> {
    let out = ws.run(&["runs", "show", "1"]);
    let shown = text(&out.stdout);
    let mut lines = shown.lines();
    let header = lines
        .by_ref()
        .map(cells)
        .find(|c| c.first() == Some(&"JOB") && c.contains(&"ATTEMPTS"))
        .expect("a jobs table");
    let column = header.iter().position(|w| *w == "ATTEMPTS").unwrap();
    let mut counts = BTreeMap::new();
    for line in lines {
        let row = cells(line);
        if row.first() == Some(&"JOB") {
            break; // the next table
        }
        if let Some(first) = row.first()
            && (0..n).any(|i| *first == id(i))
            && row.len() > column
        {
            counts.insert((*first).to_owned(), row[column].parse().unwrap_or(-1));
        }
    }
    counts
}

/// The ledger of the attempts made since the last call: attempts per job, and any conflict.
fn take_ledger(ws: &Workspace) -> (BTreeMap<String, usize>, bool) {
    let path = ws.path().join("ledger");
    let ledger = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let mut counts = BTreeMap::new();
    for line in ledger.lines() {
        if let Some(job) = line.split_whitespace().next()
            && job != "CONFLICT"
        {
            *counts.entry(job.to_owned()).or_default() += 1;
        }
    }
    (counts, ledger.contains("CONFLICT"))
}

/// Live lines (`run`/`resume` on a pipe print one line per state change): attempts per job.
fn live_attempts(stderr: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in stderr.lines() {
        if line.contains("Running (attempt ") {
            let job = line
                .split(']')
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_default();
            *counts.entry(job.to_owned()).or_default() += 1;
        }
    }
    counts
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// Compares the binary with the model after a step, and checks the invariants on what it shows.
fn compare(
    ws: &Workspace,
    model: &Model,
    step: &str,
    made: Option<(&[usize], &std::process::Output)>,
) -> Result<(), TestCaseError> {
    let n = model.jobs.len();
    let (phase, reason, jobs) = observed(ws);
    let expected = model.verdict();
    check((phase.as_str(), reason.as_str()) == expected, || {
        format!(
            "{step}: run is {phase} ({reason}), the model says {expected:?}; jobs {jobs:?}, model {:?}",
            model.states
        )
    })?;
    for i in 0..n {
        let (p, r, _) = &jobs[i];
        let want = &model.states[i];
        check(p == want.phase && r == want.reason, || {
            format!(
                "{step}: {} is {p} ({r}), the model says {want:?}; all: {jobs:?}",
                id(i)
            )
        })?;
    }
    // The verdict rule over what the binary shows, whatever the model says.
    let shown: Vec<State> = jobs
        .iter()
        .map(|(p, r, _)| State {
            phase: leak(p),
            reason: leak(r),
        })
        .collect();
    let rule_ok = model.jobs.iter().zip(&shown).all(|(def, s)| match s.phase {
        "Succeeded" => true,
        "Skipped" => matches!(s.reason, "SkippedByUser" | "TriggerNotMet"),
        "Failed" => def.continue_on_error,
        _ => false,
    });
    check(rule_ok == (phase == "Succeeded"), || {
        format!("{step}: run {phase} disagrees with its jobs {jobs:?}")
    })?;
    // Attempt counts: the table and the JSON agree.
    let table = table_attempts(ws, n);
    for (i, (_, _, attempts)) in jobs.iter().enumerate() {
        check(table.get(&id(i)) == Some(attempts), || {
            format!("{step}: table says {table:?}, JSON {jobs:?}")
        })?;
    }
    let Some((made, out)) = made else {
        return Ok(());
    };
    // A round: exit code, who ran, how often, never twice at once, the live lines.
    let code = if expected.0 == "Succeeded" { 0 } else { 1 };
    check(out.status.code() == Some(code), || {
        format!(
            "{step}: exit {:?}, expected {code}; stderr:\n{}",
            out.status.code(),
            text(&out.stderr)
        )
    })?;
    let (ledger, conflict) = take_ledger(ws);
    check(!conflict, || {
        format!("{step}: two attempts of a job at once")
    })?;
    let predicted: BTreeMap<String, usize> = made
        .iter()
        .enumerate()
        .filter(|(_, m)| **m > 0)
        .map(|(i, m)| (id(i), *m))
        .collect();
    check(ledger == predicted, || {
        format!("{step}: attempts made {ledger:?}, the rules say {predicted:?}")
    })?;
    let live = live_attempts(&text(&out.stderr));
    check(live == predicted, || {
        format!("{step}: live lines show {live:?}, attempts made {predicted:?}")
    })?;
    // No job is left Skipped for a reason that no longer holds.
    for i in 0..n {
        if shown[i].phase == "Skipped" {
            let now = trigger_verdict(&model.jobs, &shown, i);
            check(now == Some(shown[i].reason), || {
                format!(
                    "{step}: {} is Skipped ({}) but its trigger now says {now:?}; jobs {jobs:?}",
                    id(i),
                    shown[i].reason
                )
            })?;
        }
    }
    Ok(())
}

/// Phase and reason names as `&'static str`, for comparing with the model's constants.
fn leak(s: &str) -> &'static str {
    for known in [
        "Pending",
        "Waiting",
        "Running",
        "Succeeded",
        "Failed",
        "Skipped",
        "Cancelled",
        "Lost",
        "Interrupted",
        "Completed",
        "ExitCode",
        "MarkedSuccess",
        "UpstreamFailed",
        "TriggerNotMet",
        "SkippedByUser",
        "FailFast",
        "RunTimeout",
    ] {
        if s == known {
            return known;
        }
    }
    "Other"
}

fn play(jobs: Vec<JobDef>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let ws = Workspace::new();
    for (i, def) in jobs.iter().enumerate() {
        let lines: Vec<String> = def.outcomes.iter().map(u8::to_string).collect();
        ws.write(&format!("outcomes.{}", id(i)), &(lines.join("\n") + "\n"));
    }
    ws.write("p.json", &manifest(&jobs));
    let mut model = Model::new(jobs);
    let all = vec![true; model.jobs.len()];
    let made = model.round(&all);
    let out = ws.run(&["run", "p.json", "--workers", "2"]);
    compare(&ws, &model, "run", Some((&made, &out)))?;
    for (k, op) in ops.iter().enumerate() {
        match op {
            Op::Resume | Op::FailedOnly => {
                let failed_only = matches!(op, Op::FailedOnly);
                let step = format!(
                    "step {k}: resume{}",
                    if failed_only { " --failed-only" } else { "" }
                );
                let mut args = vec!["resume", "1"];
                if failed_only {
                    args.push("--failed-only");
                }
                let out = ws.run(&args);
                match model.resumed(failed_only) {
                    Some(runs) => {
                        let made = model.round(&runs);
                        compare(&ws, &model, &step, Some((&made, &out)))?;
                    }
                    None => {
                        check(out.status.code() == Some(0), || {
                            format!(
                                "{step}: a succeeded run's resume exits {:?}",
                                out.status.code()
                            )
                        })?;
                        let (ledger, _) = take_ledger(&ws);
                        check(ledger.is_empty(), || format!("{step}: ran {ledger:?}"))?;
                        compare(&ws, &model, &step, None)?;
                    }
                }
            }
            Op::Mark(picks) => {
                let open: Vec<usize> = (0..model.jobs.len())
                    .filter(|&i| model.states[i].phase != "Succeeded")
                    .collect();
                if open.is_empty() {
                    continue;
                }
                let mut chosen: Vec<usize> = picks.iter().map(|p| open[p % open.len()]).collect();
                chosen.sort_unstable();
                chosen.dedup();
                let ids: Vec<String> = chosen.iter().map(|&i| id(i)).collect();
                let mut args = vec!["mark-success", "1"];
                args.extend(ids.iter().map(String::as_str));
                let out = ws.run(&args);
                let step = format!("step {k}: mark-success {}", ids.join(" "));
                check(out.status.code() == Some(0), || {
                    format!(
                        "{step}: exit {:?}: {}",
                        out.status.code(),
                        text(&out.stderr)
                    )
                })?;
                for &i in &chosen {
                    model.states[i] = MARKED;
                }
                compare(&ws, &model, &step, None)?;
            }
        }
    }
    Ok(())
}

#[test]
fn resume_and_mark_success_follow_the_rules() {
    let cases = if std::env::var_os("EXECUTIONER_LONG_TESTS").is_some() {
        256
    } else {
        24
    };
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&scenario(), |(jobs, ops)| play(jobs, ops));
    if let Err(e) = result {
        panic!("{e}");
    }
}

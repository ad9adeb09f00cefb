//! One run's scheduling decisions, as a pure state machine: which jobs are ready (event-driven
//! in-degree counting, O(V+E) over the whole run, declaration order among ready jobs), trigger rules,
//! `continueOnError`, fail-fast, `--skip`, and what is skipped and why.
//!
//! It never spawns, sleeps or touches the store: the engine asks it for the next job to start and
//! tells it how jobs ended; it answers with [`Decision`]s (past-tense facts for the engine to record).
//! Retries are below this level: the scheduler sees a job once, from start to its final outcome.

pub mod retry;

use std::collections::BTreeSet;

use crate::dag::{Dag, ReadyCounter};
use crate::spec::Trigger;
use crate::status::JobReason;

/// A job's final outcome, as its dependents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Failed; `ignored` when the job has `continueOnError` (then it counts as a success).
    Failed {
        ignored: bool,
    },
    /// Never ran; `satisfied` when that counts as success for dependents (`--skip`);
    /// `by_failure` when a failure is why (upstream failed, fail-fast, a cancellation or the run's
    /// timeout), as opposed to a trigger that legitimately did not hold.
    Skipped {
        satisfied: bool,
        by_failure: bool,
    },
    Cancelled,
}

impl Outcome {
    fn counts_as_success(self) -> bool {
        match self {
            Outcome::Succeeded
            | Outcome::Failed { ignored: true }
            | Outcome::Skipped {
                satisfied: true, ..
            } => true,
            Outcome::Failed { ignored: false }
            | Outcome::Skipped {
                satisfied: false, ..
            }
            | Outcome::Cancelled => false,
        }
    }

    /// What a job skipped for `reason` means to its dependents.
    pub fn skipped(reason: JobReason) -> Outcome {
        Outcome::Skipped {
            satisfied: reason == JobReason::SkippedByUser,
            by_failure: matches!(
                reason,
                JobReason::UpstreamFailed
                    | JobReason::FailFast
                    | JobReason::Cancelled
                    | JobReason::RunTimeout
            ),
        }
    }

    /// A failure, or a skip because of one: what makes a dependent's skip `UpstreamFailed`.
    fn blocks(self) -> bool {
        self.counts_as_failure()
            || matches!(
                self,
                Outcome::Skipped {
                    by_failure: true,
                    ..
                }
            )
    }

    fn counts_as_failure(self) -> bool {
        match self {
            Outcome::Failed { ignored: false } | Outcome::Cancelled => true,
            Outcome::Succeeded | Outcome::Failed { ignored: true } | Outcome::Skipped { .. } => {
                false
            }
        }
    }
}

/// How a job enters the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// To be run.
    Run,
    /// Named in `--skip`: recorded Skipped, satisfies its dependents.
    SkipByUser,
    /// Already terminal from an earlier round (resume): keeps this outcome.
    Keep(Outcome),
}

/// What the scheduler needs to know of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRules {
    pub trigger: Trigger,
    pub continue_on_error: bool,
    pub start: Start,
}

/// A fact the engine must record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The job will never start.
    Skipped { job: usize, reason: JobReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for dependencies.
    Blocked,
    /// Dependencies done and trigger holds; waiting for a worker.
    Ready,
    /// Handed to the engine (running, or between retries).
    Started,
    Done(Outcome),
}

/// The scheduling state of one run.
#[derive(Debug)]
pub struct Scheduler {
    dag: Dag,
    rules: Vec<JobRules>,
    state: Vec<State>,
    counter: ReadyCounter,
    ready: BTreeSet<usize>,
    fail_fast: bool,
    /// Set after the first unignored failure under fail-fast, or when the run is stopped.
    halted: Option<JobReason>,
    started: usize,
    done: usize,
}

impl Scheduler {
    /// Builds the schedule; the decisions are the skips known from the start.
    pub fn new(dag: Dag, rules: Vec<JobRules>, fail_fast: bool) -> (Scheduler, Vec<Decision>) {
        let n = dag.len();
        let counter = ReadyCounter::new(&dag);
        let mut s = Scheduler {
            dag,
            rules,
            state: vec![State::Blocked; n],
            counter,
            ready: BTreeSet::new(),
            fail_fast,
            halted: None,
            started: 0,
            done: 0,
        };
        let mut decisions = Vec::new();
        for i in s.counter.initially_ready() {
            s.release(i, &mut decisions);
        }
        (s, decisions)
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The next job to start (lowest declaration index among the ready ones), if any and not halted.
    pub fn next_ready(&mut self) -> Option<usize> {
        if self.halted.is_some() {
            return None;
        }
        let job = self.ready.pop_first()?;
        self.state[job] = State::Started;
        self.started += 1;
        Some(job)
    }

    /// Takes `job` out of the ready ones as started, when it is ready: a job whose attempt is
    /// already under way (a run continued by another controller adopts its queued attempts).
    /// Returns false when it is not ready.
    pub fn take(&mut self, job: usize) -> bool {
        if !self.ready.remove(&job) {
            return false;
        }
        self.state[job] = State::Started;
        self.started += 1;
        true
    }

    /// True when ready jobs wait for a worker.
    pub fn has_ready(&self) -> bool {
        self.halted.is_none() && !self.ready.is_empty()
    }

    /// True when every job has its final outcome.
    pub fn is_finished(&self) -> bool {
        self.done == self.state.len()
    }

    /// The outcome of a finished job, if finished.
    pub fn outcome(&self, job: usize) -> Option<Outcome> {
        match self.state[job] {
            State::Done(o) => Some(o),
            State::Blocked | State::Ready | State::Started => None,
        }
    }

    /// Records the final outcome of a started job and returns what that decides for the others.
    pub fn finished(&mut self, job: usize, outcome: Outcome) -> Vec<Decision> {
        let mut decisions = Vec::new();
        if self.state[job] != State::Started {
            return decisions;
        }
        self.complete(job, outcome, &mut decisions);
        if self.fail_fast && outcome.counts_as_failure() && self.halted.is_none() {
            self.halt(JobReason::FailFast, &mut decisions);
        }
        decisions
    }

    /// Stops scheduling: every job not started yet is skipped with `reason` (a run timeout, a
    /// cancellation). Jobs already started are left to the engine.
    pub fn halt_with(&mut self, reason: JobReason) -> Vec<Decision> {
        let mut decisions = Vec::new();
        if self.halted.is_none() {
            self.halt(reason, &mut decisions);
        }
        decisions
    }

    fn halt(&mut self, reason: JobReason, decisions: &mut Vec<Decision>) {
        self.halted = Some(reason);
        for job in 0..self.state.len() {
            if matches!(self.state[job], State::Blocked | State::Ready) {
                self.ready.remove(&job);
                self.state[job] = State::Done(Outcome::skipped(reason));
                self.done += 1;
                decisions.push(Decision::Skipped { job, reason });
            }
        }
    }

    fn complete(&mut self, job: usize, outcome: Outcome, decisions: &mut Vec<Decision>) {
        self.state[job] = State::Done(outcome);
        self.done += 1;
        for next in self.counter.finish(job) {
            self.release(next, decisions);
        }
    }

    /// Every dependency of `job` is terminal: start it, keep its earlier result, or skip it.
    fn release(&mut self, job: usize, decisions: &mut Vec<Decision>) {
        if self.state[job] != State::Blocked {
            return;
        }
        match self.rules[job].start {
            Start::Keep(outcome) => {
                self.complete(job, outcome, decisions);
                return;
            }
            Start::SkipByUser => {
                decisions.push(Decision::Skipped {
                    job,
                    reason: JobReason::SkippedByUser,
                });
                self.complete(job, Outcome::skipped(JobReason::SkippedByUser), decisions);
                return;
            }
            Start::Run => {}
        }
        if let Some(reason) = self.halted {
            decisions.push(Decision::Skipped { job, reason });
            self.complete(job, Outcome::skipped(reason), decisions);
            return;
        }
        match self.trigger_verdict(job) {
            None => {
                self.state[job] = State::Ready;
                self.ready.insert(job);
            }
            Some(reason) => {
                decisions.push(Decision::Skipped { job, reason });
                self.complete(job, Outcome::skipped(reason), decisions);
            }
        }
    }

    /// `None` when the trigger holds, else why the job is skipped.
    fn trigger_verdict(&self, job: usize) -> Option<JobReason> {
        let deps = self.dag.deps(job);
        let outcomes = deps.iter().filter_map(|d| self.outcome(*d));
        let (mut succeeded, mut failed, mut total, mut blocked) = (0usize, 0usize, 0usize, false);
        for o in outcomes {
            total += 1;
            if o.counts_as_success() {
                succeeded += 1;
            }
            if o.counts_as_failure() {
                failed += 1;
            }
            blocked |= o.blocks();
        }
        let holds = match self.rules[job].trigger {
            Trigger::AllSucceeded => succeeded == total,
            Trigger::AllDone | Trigger::Always => true,
            Trigger::AllFailed => failed == total,
            Trigger::AnySucceeded => succeeded > 0 || total == 0,
            Trigger::AnyFailed => failed > 0,
            Trigger::NoneFailed => failed == 0,
        };
        if holds {
            None
        } else {
            // `UpstreamFailed` only when something upstream failed (or was skipped because of a
            // failure); a dependency skipped by its own trigger passes that skip on.
            match self.rules[job].trigger {
                Trigger::AllSucceeded | Trigger::NoneFailed if blocked => {
                    Some(JobReason::UpstreamFailed)
                }
                Trigger::AllSucceeded | Trigger::NoneFailed => Some(JobReason::TriggerNotMet),
                Trigger::AllDone
                | Trigger::Always
                | Trigger::AllFailed
                | Trigger::AnySucceeded
                | Trigger::AnyFailed => Some(JobReason::TriggerNotMet),
            }
        }
    }

    /// Jobs started so far (each counted once, whatever its retries).
    pub fn started_count(&self) -> usize {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(n: usize) -> Vec<JobRules> {
        vec![
            JobRules {
                trigger: Trigger::AllSucceeded,
                continue_on_error: false,
                start: Start::Run,
            };
            n
        ]
    }

    /// Drives a schedule to the end, with `outcome_of` deciding each started job's outcome.
    fn drive(
        deps: Vec<Vec<usize>>,
        rules: Vec<JobRules>,
        fail_fast: bool,
        outcome_of: impl Fn(usize) -> Outcome,
    ) -> (Vec<usize>, Vec<(usize, JobReason)>) {
        let dag = Dag::new(deps).unwrap();
        let (mut s, decisions) = Scheduler::new(dag, rules, fail_fast);
        let mut skipped: Vec<(usize, JobReason)> = decisions
            .iter()
            .map(|Decision::Skipped { job, reason }| (*job, *reason))
            .collect();
        let mut order = Vec::new();
        while let Some(j) = s.next_ready() {
            order.push(j);
            for Decision::Skipped { job, reason } in s.finished(j, outcome_of(j)) {
                skipped.push((job, reason));
            }
        }
        assert!(s.is_finished());
        (order, skipped)
    }

    const FAIL: Outcome = Outcome::Failed { ignored: false };

    #[test]
    fn declaration_order_among_ready_jobs() {
        let (order, skipped) = drive(
            vec![vec![], vec![], vec![0], vec![]],
            rules(4),
            false,
            |_| Outcome::Succeeded,
        );
        assert_eq!(order, vec![0, 1, 2, 3]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn failure_skips_dependents_but_not_independent_branches() {
        // 0 fails; 1 depends on 0; 2 depends on 1; 3 independent.
        let (order, skipped) = drive(
            vec![vec![], vec![0], vec![1], vec![]],
            rules(4),
            false,
            |j| {
                if j == 0 { FAIL } else { Outcome::Succeeded }
            },
        );
        assert_eq!(order, vec![0, 3]);
        assert_eq!(
            skipped,
            vec![
                (1, JobReason::UpstreamFailed),
                (2, JobReason::UpstreamFailed)
            ]
        );
    }

    #[test]
    fn fail_fast_skips_everything_not_started() {
        let (order, skipped) = drive(vec![vec![], vec![0], vec![], vec![]], rules(4), true, |j| {
            if j == 0 { FAIL } else { Outcome::Succeeded }
        });
        assert_eq!(order, vec![0]);
        // The failed job's own dependent is skipped for that failure; the rest for fail-fast.
        assert_eq!(
            skipped,
            vec![
                (1, JobReason::UpstreamFailed),
                (2, JobReason::FailFast),
                (3, JobReason::FailFast)
            ]
        );
    }

    #[test]
    fn continue_on_error_counts_as_success() {
        let (order, _) = drive(vec![vec![], vec![0]], rules(2), true, |j| {
            if j == 0 {
                Outcome::Failed { ignored: true }
            } else {
                Outcome::Succeeded
            }
        });
        assert_eq!(order, vec![0, 1]);
    }

    #[test]
    fn skip_by_user_satisfies_dependents() {
        let mut r = rules(2);
        r[0].start = Start::SkipByUser;
        let (order, skipped) = drive(vec![vec![], vec![0]], r, false, |_| Outcome::Succeeded);
        assert_eq!(order, vec![1]);
        assert_eq!(skipped, vec![(0, JobReason::SkippedByUser)]);
    }

    #[test]
    fn every_trigger_rule() {
        // Jobs 0 (succeeds) and 1 (fails) feed job 2 with the trigger under test.
        let cases = [
            (
                Trigger::AllSucceeded,
                false,
                Some(JobReason::UpstreamFailed),
            ),
            (Trigger::AllDone, true, None),
            (Trigger::AllFailed, false, Some(JobReason::TriggerNotMet)),
            (Trigger::AnySucceeded, true, None),
            (Trigger::AnyFailed, true, None),
            (Trigger::NoneFailed, false, Some(JobReason::UpstreamFailed)),
            (Trigger::Always, true, None),
        ];
        for (trigger, runs, reason) in cases {
            let mut r = rules(3);
            r[2].trigger = trigger;
            let (order, skipped) = drive(vec![vec![], vec![], vec![0, 1]], r, false, |j| {
                if j == 1 { FAIL } else { Outcome::Succeeded }
            });
            assert_eq!(order.contains(&2), runs, "{trigger:?}");
            assert_eq!(skipped.first().map(|s| s.1), reason, "{trigger:?}");
        }
        // allFailed runs when all failed; noneFailed runs over skipped dependencies.
        let mut r = rules(3);
        r[2].trigger = Trigger::AllFailed;
        let (order, _) = drive(vec![vec![], vec![], vec![0, 1]], r, false, |_| FAIL);
        assert!(order.contains(&2));
        let mut r = rules(3);
        r[0].start = Start::SkipByUser;
        r[2].trigger = Trigger::NoneFailed;
        let (order, _) = drive(vec![vec![], vec![], vec![0, 1]], r, false, |_| {
            Outcome::Succeeded
        });
        assert!(order.contains(&2));
    }

    #[test]
    fn a_skip_by_trigger_is_passed_on_as_trigger_not_met() {
        // 0 succeeds; 1 (allFailed) is skipped by its trigger; 2 depends on 1. Nothing failed, so
        // 2 is not UpstreamFailed.
        let mut r = rules(3);
        r[1].trigger = Trigger::AllFailed;
        let (order, skipped) = drive(vec![vec![], vec![0], vec![1]], r, false, |_| {
            Outcome::Succeeded
        });
        assert_eq!(order, vec![0]);
        assert_eq!(
            skipped,
            vec![(1, JobReason::TriggerNotMet), (2, JobReason::TriggerNotMet)]
        );
        // Behind a failure, the same chain is UpstreamFailed.
        let (_, skipped) = drive(vec![vec![], vec![0], vec![1]], rules(3), false, |_| FAIL);
        assert_eq!(
            skipped,
            vec![
                (1, JobReason::UpstreamFailed),
                (2, JobReason::UpstreamFailed)
            ]
        );
    }

    #[test]
    fn kept_outcomes_release_dependents() {
        let mut r = rules(3);
        r[0].start = Start::Keep(Outcome::Succeeded);
        let (order, _) = drive(vec![vec![], vec![0], vec![1]], r, false, |_| {
            Outcome::Succeeded
        });
        assert_eq!(order, vec![1, 2]);
    }

    #[test]
    fn halt_skips_the_rest() {
        let dag = Dag::new(vec![vec![], vec![0], vec![]]).unwrap();
        let (mut s, _) = Scheduler::new(dag, rules(3), false);
        let first = s.next_ready();
        assert_eq!(first, Some(0));
        let d = s.halt_with(JobReason::RunTimeout);
        assert_eq!(d.len(), 2);
        assert_eq!(s.next_ready(), None);
        s.finished(0, Outcome::Cancelled);
        assert!(s.is_finished());
    }
}

//! The controller's Prometheus metrics (DESIGN 10, those that apply to one machine), kept up to
//! date from the controller's event stream (the engine's progress events it forwards, runs ending,
//! statuses built, reconcile passes), never by scanning the store when scraped, and encoded for
//! `/metrics`. Owns the registry and the little state events need to become gauges (which attempts
//! are open, each pipeline's last phase, which jobs of each running run are ready). Not the route
//! (`mod.rs`) nor the events themselves (`controller`).
//!
//! `executioner_ready_jobs` counts the jobs whose dependencies have ended and that have not
//! started: they wait only for a worker (or their pipeline's `maxParallel`). It is derived from the
//! run's dependencies (`RoundJobs`, with the run's start or resumption) and its jobs' ends and starts;
//! a job waiting out its retry delay is not counted (no event says when the delay is over).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::controller::ControllerEvent;
use crate::controller::leader::LeadershipChange;
use crate::engine::RunEvent;
use crate::status::file::PipelinePhase;
use crate::status::{JobPhase, JobReason};
use crate::store::{RunId, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PipelinePhaseLabels {
    pipeline: String,
    phase: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PipelineReasonLabels {
    pipeline: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// A job of a run whose first attempt started: whether an attempt of it is running.
#[derive(Debug, Clone, Copy)]
struct Started {
    attempt_open: bool,
}

/// What `executioner_ready_jobs` follows of one run.
#[derive(Debug)]
struct Readiness {
    /// Per job, its dependencies that have not ended yet; `None` once it started or ended (or
    /// when it does not run in this round).
    waiting_on: Vec<Option<usize>>,
    /// Per job, the jobs that depend on it.
    dependents: Vec<Vec<usize>>,
    ended: Vec<bool>,
    /// Jobs with `waiting_on == Some(0)`.
    ready: i64,
}

impl Readiness {
    fn new(dependencies: &[Vec<usize>], runs: &[bool]) -> Readiness {
        let n = dependencies.len();
        let mut dependents = vec![Vec::new(); n];
        for (job, deps) in dependencies.iter().enumerate() {
            for &d in deps.iter().filter(|&&d| d < n) {
                dependents[d].push(job);
            }
        }
        let ended: Vec<bool> = (0..n)
            .map(|i| !runs.get(i).copied().unwrap_or(true))
            .collect();
        let waiting_on: Vec<Option<usize>> = (0..n)
            .map(|i| {
                (!ended[i]).then(|| {
                    dependencies[i]
                        .iter()
                        .filter(|&&d| d < n && !ended[d])
                        .count()
                })
            })
            .collect();
        let ready = waiting_on.iter().filter(|w| **w == Some(0)).count() as i64;
        Readiness {
            waiting_on,
            dependents,
            ended,
            ready,
        }
    }

    /// Job `job` started: the change of the ready count.
    fn started(&mut self, job: usize) -> i64 {
        match self.waiting_on.get_mut(job).map(Option::take) {
            Some(Some(0)) => {
                self.ready -= 1;
                -1
            }
            Some(_) | None => 0,
        }
    }

    /// Job `job` ended (finished or skipped): the change of the ready count.
    fn ended(&mut self, job: usize) -> i64 {
        let mut change = self.started(job);
        if self.ended.get(job).is_none_or(|e| *e) {
            return change;
        }
        self.ended[job] = true;
        for &d in &self.dependents[job] {
            if let Some(left) = self.waiting_on[d].as_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.ready += 1;
                    change += 1;
                }
            }
        }
        change
    }

    fn all_ended(&self) -> bool {
        self.ended.iter().all(|e| *e)
    }
}

#[derive(Debug, Default)]
struct Tracking {
    started: HashMap<(RunId, usize), Started>,
    phases: HashMap<String, PipelinePhase>,
    readiness: HashMap<RunId, Readiness>,
}

/// The registry and its metrics; shared by the event tap (which updates it) and `/metrics`
/// (which encodes it).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<PipelinePhaseLabels, Counter>,
    jobs: Family<PipelinePhaseLabels, Counter>,
    attempts: Family<PipelineReasonLabels, Counter>,
    job_duration: Histogram,
    running_jobs: Gauge,
    ready_jobs: Gauge,
    pipelines: Family<PhaseLabels, Gauge>,
    reconcile_duration: Histogram,
    notifications_pending: Gauge,
    leader: Gauge,
    tracking: Mutex<Tracking>,
    folder_read: AtomicBool,
    /// With a shared store, while another controller leads (for `/readyz`).
    standby: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let runs = Family::<PipelinePhaseLabels, Counter>::default();
        let jobs = Family::<PipelinePhaseLabels, Counter>::default();
        let attempts = Family::<PipelineReasonLabels, Counter>::default();
        // 10 ms to ~5.8 h.
        let job_duration = Histogram::new(exponential_buckets(0.01, 4.0, 12));
        let running_jobs = Gauge::default();
        let ready_jobs = Gauge::default();
        let pipelines = Family::<PhaseLabels, Gauge>::default();
        // 100 us to ~6.5 s.
        let reconcile_duration = Histogram::new(exponential_buckets(0.0001, 3.0, 11));
        let notifications_pending = Gauge::default();
        let leader = Gauge::default();
        // A controller on its own store (SQLite) leads alone; a shared store's says otherwise
        // with its first election event.
        leader.set(1);
        registry.register(
            "executioner_runs",
            "Runs ended, by pipeline and phase",
            runs.clone(),
        );
        registry.register(
            "executioner_jobs",
            "Jobs ended, by pipeline and phase",
            jobs.clone(),
        );
        registry.register(
            "executioner_attempts",
            "Attempts ended, by pipeline and reason",
            attempts.clone(),
        );
        registry.register(
            "executioner_job_duration_seconds",
            "Time from a job's first attempt starting to the job ending, observed when its run ends",
            job_duration.clone(),
        );
        registry.register(
            "executioner_running_jobs",
            "Attempts running now",
            running_jobs.clone(),
        );
        registry.register(
            "executioner_ready_jobs",
            "Jobs whose dependencies have ended, waiting for a worker",
            ready_jobs.clone(),
        );
        registry.register(
            "executioner_pipelines",
            "Pipelines, by the phase of their status",
            pipelines.clone(),
        );
        registry.register(
            "executioner_reconcile_duration_seconds",
            "Time a reconcile pass took",
            reconcile_duration.clone(),
        );
        registry.register(
            "executioner_notifications_pending",
            "Notifications still to send after the last delivery pass",
            notifications_pending.clone(),
        );
        registry.register(
            "executioner_leader",
            "1 while this controller leads (decides), 0 while it stands by for another",
            leader.clone(),
        );
        Metrics {
            registry,
            runs,
            jobs,
            attempts,
            job_duration,
            running_jobs,
            ready_jobs,
            pipelines,
            reconcile_duration,
            notifications_pending,
            leader,
            tracking: Mutex::new(Tracking::default()),
            folder_read: AtomicBool::new(false),
            standby: AtomicBool::new(false),
        }
    }

    /// Whether a reconcile pass has read the manifests folder (for `/readyz`).
    pub fn folder_read(&self) -> bool {
        self.folder_read.load(Ordering::Relaxed)
    }

    /// Whether another controller leads (for `/readyz`).
    pub fn standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn tracking(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.tracking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Observes the durations of the jobs of run `run`, which just ended, from its stored
    /// times: read once per run, because progress events reach the controller in bursts, so
    /// their arrival says little about how long a job took. A job is counted in the round it
    /// ended in.
    pub async fn record_job_durations(&self, store: &Store, run: RunId) -> Result<(), StoreError> {
        let Some(row) = store.run(run).await? else {
            return Ok(());
        };
        let round_start = store
            .attempts(run)
            .await?
            .iter()
            .filter(|a| a.round == row.rounds)
            .map(|a| a.started_at)
            .min();
        for job in store.jobs(run).await? {
            if let (Some(start), Some(end)) = (job.started_at, job.finished_at)
                && round_start.is_none_or(|r| end >= r)
            {
                self.job_duration
                    .observe((end - start).as_seconds_f64().max(0.0));
            }
        }
        Ok(())
    }

    /// Takes one controller event into account.
    pub fn observe(&self, event: &ControllerEvent) {
        match event {
            ControllerEvent::RunProgress {
                pipeline,
                run,
                event,
            } => self.progress(pipeline, *run, event),
            ControllerEvent::RunFinished {
                pipeline,
                phase,
                run,
            } => {
                self.runs
                    .get_or_create(&PipelinePhaseLabels {
                        pipeline: pipeline.clone(),
                        phase: phase.as_str(),
                    })
                    .inc();
                // Its attempts are not forgotten here: the controller reports a run's end before
                // it has passed on the run's last progress events, which still close them. But
                // nothing of an ended run is ready, whatever events it did not send.
                self.forget_readiness(*run);
            }
            ControllerEvent::RunStarted {
                run,
                round: Some(round),
                ..
            }
            | ControllerEvent::RunResumed {
                run,
                round: Some(round),
                ..
            } => {
                let readiness = Readiness::new(&round.dependencies, &round.runs);
                let added = readiness.ready;
                let before = self.tracking().readiness.insert(*run, readiness);
                self.ready_jobs
                    .inc_by(added - before.map_or(0, |r| r.ready));
            }
            ControllerEvent::RunInterrupted { run, .. } => self.forget_run(*run),
            // Recovered (planned again) or left for the next start: nothing of it is ready here.
            ControllerEvent::RunFault { run, .. } => self.forget_readiness(*run),
            ControllerEvent::Reconciled { took } => {
                self.reconcile_duration.observe(took.as_secs_f64());
                self.folder_read.store(true, Ordering::Relaxed);
            }
            ControllerEvent::NotificationsPending { count } => {
                self.notifications_pending.set(*count);
            }
            ControllerEvent::StatusBuilt { pipeline, phase } => {
                let before = self.tracking().phases.insert(pipeline.clone(), *phase);
                self.move_pipeline(before, Some(*phase));
            }
            ControllerEvent::Deleted { pipeline } => {
                let before = self.tracking().phases.remove(pipeline);
                self.move_pipeline(before, None);
            }
            ControllerEvent::Leadership(change) => {
                let leading = match change {
                    LeadershipChange::Leading { .. } => true,
                    LeadershipChange::Standby { .. }
                    | LeadershipChange::Deposed { .. }
                    | LeadershipChange::Resigned { .. } => false,
                };
                self.leader.set(i64::from(leading));
                self.standby.store(!leading, Ordering::Relaxed);
            }
            ControllerEvent::Started { .. }
            | ControllerEvent::RunStarted { .. }
            | ControllerEvent::RunResumed { .. }
            | ControllerEvent::Cancelling { .. }
            | ControllerEvent::Interrupting { .. }
            | ControllerEvent::Invalid { .. }
            | ControllerEvent::HistoryPruned { .. }
            | ControllerEvent::TickSkipped { .. }
            | ControllerEvent::Warning(_)
            | ControllerEvent::Stopping => {}
        }
    }

    fn move_pipeline(&self, before: Option<PipelinePhase>, after: Option<PipelinePhase>) {
        if before == after {
            return;
        }
        if let Some(p) = before {
            self.pipelines
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .dec();
        }
        if let Some(p) = after {
            self.pipelines
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .inc();
        }
    }

    fn forget_readiness(&self, run: RunId) {
        if let Some(r) = self.tracking().readiness.remove(&run) {
            self.ready_jobs.dec_by(r.ready);
        }
    }

    /// Job `job` of `run` started or ended: its run's ready jobs change.
    fn readiness_moved(&self, run: RunId, job: usize, ended: bool) {
        let mut tracking = self.tracking();
        let Some(r) = tracking.readiness.get_mut(&run) else {
            return;
        };
        let change = if ended { r.ended(job) } else { r.started(job) };
        if r.all_ended() {
            tracking.readiness.remove(&run);
        }
        self.ready_jobs.inc_by(change);
    }

    /// A run was interrupted (the controller is stopping): its attempts still counted running
    /// are not, nor its jobs ready.
    fn forget_run(&self, run: RunId) {
        self.forget_readiness(run);
        let mut tracking = self.tracking();
        let before = tracking.started.len();
        let mut open = 0;
        tracking.started.retain(|(r, _), s| {
            let keep = *r != run;
            if !keep && s.attempt_open {
                open += 1;
            }
            keep
        });
        if tracking.started.len() != before {
            self.running_jobs.dec_by(open);
        }
    }

    fn attempt_ended(&self, pipeline: &str, reason: JobReason) {
        self.attempts
            .get_or_create(&PipelineReasonLabels {
                pipeline: pipeline.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
    }

    fn job_ended(&self, pipeline: &str, phase: JobPhase) {
        self.jobs
            .get_or_create(&PipelinePhaseLabels {
                pipeline: pipeline.to_owned(),
                phase: phase.as_str(),
            })
            .inc();
    }

    fn progress(&self, pipeline: &str, run: RunId, event: &RunEvent) {
        match event {
            RunEvent::AttemptStarted { job, .. } => {
                self.readiness_moved(run, *job, false);
                let mut tracking = self.tracking();
                let started = tracking.started.entry((run, *job)).or_insert(Started {
                    attempt_open: false,
                });
                if !started.attempt_open {
                    started.attempt_open = true;
                    self.running_jobs.inc();
                }
            }
            RunEvent::AttemptFailedWillRetry { job, reason, .. } => {
                if let Some(started) = self.tracking().started.get_mut(&(run, *job))
                    && std::mem::replace(&mut started.attempt_open, false)
                {
                    self.running_jobs.dec();
                }
                self.attempt_ended(pipeline, *reason);
            }
            RunEvent::JobFinished {
                job, phase, reason, ..
            } => {
                let started = self.tracking().started.remove(&(run, *job));
                if let Some(started) = started {
                    if started.attempt_open {
                        self.running_jobs.dec();
                    }
                    self.attempt_ended(pipeline, *reason);
                }
                self.job_ended(pipeline, *phase);
                self.readiness_moved(run, *job, true);
            }
            RunEvent::JobSkipped { job, .. } => {
                self.job_ended(pipeline, JobPhase::Skipped);
                self.readiness_moved(run, *job, true);
            }
            RunEvent::JobWaiting { .. }
            | RunEvent::SensorPassed { .. }
            | RunEvent::NoWorker { .. } => {}
        }
    }
}

/// How long a scrape may take before it is abandoned (it only encodes memory).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(run: i64, event: RunEvent) -> ControllerEvent {
        ControllerEvent::RunProgress {
            pipeline: "p".into(),
            run: RunId::from(run),
            event,
        }
    }

    #[test]
    fn events_move_the_counters_and_gauges() {
        let m = Metrics::new();
        m.observe(&progress(
            1,
            RunEvent::AttemptStarted { job: 0, attempt: 1 },
        ));
        m.observe(&progress(
            1,
            RunEvent::AttemptStarted { job: 1, attempt: 1 },
        ));
        assert_eq!(m.running_jobs.get(), 2);
        m.observe(&progress(
            1,
            RunEvent::AttemptFailedWillRetry {
                job: 0,
                attempt: 1,
                reason: JobReason::ExitCode,
                delay: Duration::ZERO,
            },
        ));
        assert_eq!(m.running_jobs.get(), 1);
        m.observe(&progress(
            1,
            RunEvent::JobFinished {
                job: 1,
                phase: JobPhase::Succeeded,
                reason: JobReason::Completed,
                exit_code: Some(0),
            },
        ));
        assert_eq!(m.running_jobs.get(), 0);
        m.observe(&progress(
            1,
            RunEvent::AttemptStarted { job: 0, attempt: 2 },
        ));
        // The run's end is reported before its last events: they still count.
        m.observe(&ControllerEvent::RunFinished {
            pipeline: "p".into(),
            run: RunId::from(1),
            phase: crate::status::RunPhase::Failed,
        });
        assert_eq!(m.running_jobs.get(), 1);
        m.observe(&progress(
            1,
            RunEvent::JobFinished {
                job: 0,
                phase: JobPhase::Failed,
                reason: JobReason::ExitCode,
                exit_code: Some(1),
            },
        ));
        assert_eq!(m.running_jobs.get(), 0);
        // An interrupted run leaves nothing running, whatever events it did not send.
        m.observe(&progress(
            2,
            RunEvent::AttemptStarted { job: 0, attempt: 1 },
        ));
        m.observe(&ControllerEvent::RunInterrupted {
            pipeline: "p".into(),
            run: RunId::from(2),
        });
        assert_eq!(m.running_jobs.get(), 0);
        m.observe(&ControllerEvent::StatusBuilt {
            pipeline: "p".into(),
            phase: PipelinePhase::Running,
        });
        m.observe(&ControllerEvent::StatusBuilt {
            pipeline: "p".into(),
            phase: PipelinePhase::Failed,
        });
        let text = m.encode();
        for line in [
            "executioner_runs_total{pipeline=\"p\",phase=\"Failed\"} 1",
            "executioner_jobs_total{pipeline=\"p\",phase=\"Succeeded\"} 1",
            "executioner_jobs_total{pipeline=\"p\",phase=\"Failed\"} 1",
            "executioner_attempts_total{pipeline=\"p\",reason=\"ExitCode\"} 2",
            "executioner_attempts_total{pipeline=\"p\",reason=\"Completed\"} 1",
            "executioner_pipelines{phase=\"Running\"} 0",
            "executioner_pipelines{phase=\"Failed\"} 1",
            "executioner_running_jobs 0",
            "executioner_ready_jobs 0",
            "executioner_leader 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn the_leader_gauge_and_standby_follow_the_election() {
        let m = Metrics::new();
        assert!(!m.standby(), "a controller on its own store leads alone");
        let change = |c| m.observe(&ControllerEvent::Leadership(c));
        change(LeadershipChange::Standby {
            leader: Some(("other:1".into(), 3)),
        });
        assert!(m.standby());
        assert!(m.encode().contains("executioner_leader 0"));
        change(LeadershipChange::Leading {
            holder: "me:2".into(),
            epoch: 4,
        });
        assert!(!m.standby());
        assert!(m.encode().contains("executioner_leader 1"));
        change(LeadershipChange::Deposed {
            epoch: 4,
            why: "taken over".into(),
        });
        assert!(m.standby());
        assert!(m.encode().contains("executioner_leader 0"));
    }

    fn started(run: i64, dependencies: Vec<Vec<usize>>, runs: Vec<bool>) -> ControllerEvent {
        ControllerEvent::RunStarted {
            pipeline: "p".into(),
            run: RunId::from(run),
            generation: 1,
            why: "test",
            round: Some(crate::controller::RoundJobs { dependencies, runs }),
        }
    }

    #[test]
    fn ready_jobs_follow_the_dependencies_of_each_run() {
        let m = Metrics::new();
        // 0 and 1 need nothing, 2 needs both, 3 needs 2; 4 keeps an earlier round's result.
        m.observe(&started(
            1,
            vec![vec![], vec![], vec![0, 1], vec![2], vec![]],
            vec![true, true, true, true, false],
        ));
        assert_eq!(m.ready_jobs.get(), 2);
        m.observe(&progress(
            1,
            RunEvent::AttemptStarted { job: 0, attempt: 1 },
        ));
        assert_eq!(m.ready_jobs.get(), 1);
        let finished = |job| RunEvent::JobFinished {
            job,
            phase: JobPhase::Succeeded,
            reason: JobReason::Completed,
            exit_code: Some(0),
        };
        m.observe(&progress(1, finished(0)));
        assert_eq!(m.ready_jobs.get(), 1, "2 still waits for 1");
        m.observe(&progress(
            1,
            RunEvent::AttemptStarted { job: 1, attempt: 1 },
        ));
        m.observe(&progress(1, finished(1)));
        assert_eq!(m.ready_jobs.get(), 1, "2 is ready");
        // Another run's jobs add up; a fault forgets them.
        m.observe(&started(2, vec![vec![], vec![]], vec![true, true]));
        assert_eq!(m.ready_jobs.get(), 3);
        m.observe(&ControllerEvent::RunFault {
            pipeline: "p".into(),
            run: RunId::from(2),
            fault: crate::controller::RunFault::Panicked("boom".into()),
            retry_in: None,
        });
        assert_eq!(m.ready_jobs.get(), 1);
        // Skipped before it started (its dependency failed): no longer ready, nor is 3.
        m.observe(&progress(
            1,
            RunEvent::JobSkipped {
                job: 2,
                reason: JobReason::UpstreamFailed,
            },
        ));
        m.observe(&progress(
            1,
            RunEvent::JobSkipped {
                job: 3,
                reason: JobReason::UpstreamFailed,
            },
        ));
        assert_eq!(m.ready_jobs.get(), 0);
        assert!(
            m.tracking().readiness.is_empty(),
            "an ended run is forgotten"
        );
        // A run that ends with jobs never started (no event for them) leaves none ready.
        m.observe(&started(3, vec![vec![], vec![0]], vec![true, true]));
        assert_eq!(m.ready_jobs.get(), 1);
        m.observe(&ControllerEvent::RunFinished {
            pipeline: "p".into(),
            run: RunId::from(3),
            phase: crate::status::RunPhase::Cancelled,
        });
        assert_eq!(m.ready_jobs.get(), 0);
    }
}

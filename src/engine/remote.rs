//! Attempts run by workers (DESIGN 9): with a shared (PostgreSQL) store the leading controller's
//! run loop queues each attempt in the commit that records it, and this file stands in for the
//! attempt's task: it waits for the worker's result (or the lease's expiry) and gives the loop the
//! same [`AttemptResult`] a local attempt would. [`Dispatch`] is the one listener per controller
//! that routes the results to the waiting attempts; [`run_claimed`] is the worker's side, which
//! runs a claimed attempt with the engine's own supervision and encodes its result.
//!
//! The result crosses the database as JSON text ([`Wire`]); the queue itself is the store's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::process::{ExitStatus, Exited, Usage};
use crate::scheduler::retry::Failure;
use crate::state_dir::{
    create_private_dir, job_log_path, job_output_path, run_log_dir, run_outputs_dir,
};
use crate::status::JobReason;
use crate::status::outputs::Outputs;
use crate::store::queue::DONE_CHANNEL;
use crate::store::{AttemptId, Claim, QueueEnd, Store, StoreError};

use super::attempt::{AttemptOutcome, AttemptResult, AttemptSpec, Spawned, run_attempt};
use super::{Plan, RunEvent};

/// How often the leader looks for results whose notification it missed, expired leases and
/// queued jobs no worker can take.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Ids notified before their waiter registered, remembered so that a result that beat the
/// registration is fetched at once rather than at the next sweep.
const EARLY_KEPT: usize = 4096;

/// An attempt's result as it crosses the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wire {
    pub outcome: WireOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<WireExit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// The job's process and group, when the worker did not record them on their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<(i32, i32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireOutcome {
    Succeeded,
    Failed,
    /// Stopped because its run was cancelled or timed out.
    Stopped,
    /// Stopped because its worker was stopping: neither a failure nor an end.
    Interrupted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireExit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
    #[serde(default)]
    pub max_rss_upper_bound: bool,
}

/// The result of an attempt stopped before any worker took it.
pub fn stopped_text() -> String {
    serde_json::json!({"outcome": "stopped"}).to_string()
}

impl Wire {
    fn encode(result: &AttemptResult, interrupted: bool) -> Wire {
        let (outcome, failure, reason, message) = match &result.outcome {
            AttemptOutcome::Succeeded => (WireOutcome::Succeeded, None, None, None),
            AttemptOutcome::Failed {
                failure,
                reason,
                message,
            } if !interrupted => (
                WireOutcome::Failed,
                Some(*failure),
                Some(reason.as_str().to_owned()),
                Some(message.clone()),
            ),
            AttemptOutcome::Failed { .. }
            | AttemptOutcome::Stopped
            | AttemptOutcome::Lost
            | AttemptOutcome::Detached
            | AttemptOutcome::Interrupted => {
                let outcome = if interrupted {
                    WireOutcome::Interrupted
                } else {
                    WireOutcome::Stopped
                };
                (outcome, None, None, None)
            }
        };
        Wire {
            outcome,
            failure,
            reason,
            message,
            exit: result.exit.as_ref().map(|e| {
                let (code, signal) = match e.status {
                    ExitStatus::Code(c) => (Some(c), None),
                    ExitStatus::Signal(s) => (None, Some(s)),
                };
                WireExit {
                    code,
                    signal,
                    user_us: micros(e.usage.user),
                    system_us: micros(e.usage.system),
                    max_rss_kib: e.usage.max_rss_kib,
                    max_rss_upper_bound: e.usage.max_rss_upper_bound,
                }
            }),
            spawn_error: result.spawn_error.clone(),
            outputs: result.outputs.clone(),
            pid: result.pid,
        }
    }

    /// The loop's view of a worker's result for attempt `attempt` (number `number` of `job`).
    fn decode(self, job: usize, attempt: AttemptId, number: i64) -> AttemptResult {
        let outcome = match self.outcome {
            WireOutcome::Succeeded => AttemptOutcome::Succeeded,
            WireOutcome::Failed => AttemptOutcome::Failed {
                failure: self.failure.unwrap_or(Failure::Spawn),
                reason: self
                    .reason
                    .as_deref()
                    .and_then(|r| r.parse::<JobReason>().ok())
                    .unwrap_or(JobReason::ExitCode),
                message: self.message.unwrap_or_default(),
            },
            WireOutcome::Stopped => AttemptOutcome::Stopped,
            WireOutcome::Interrupted => AttemptOutcome::Interrupted,
        };
        AttemptResult {
            job,
            attempt_id: attempt,
            pid: self.pid,
            number,
            outcome,
            exit: self.exit.map(|e| Exited {
                status: match (e.code, e.signal) {
                    (_, Some(s)) => ExitStatus::Signal(s),
                    (Some(c), None) => ExitStatus::Code(c),
                    (None, None) => ExitStatus::Code(-1),
                },
                usage: Usage {
                    user: Duration::from_micros(e.user_us),
                    system: Duration::from_micros(e.system_us),
                    max_rss_kib: e.max_rss_kib,
                    max_rss_upper_bound: e.max_rss_upper_bound,
                },
                captured: None,
            }),
            spawn_error: self.spawn_error,
            outputs: self.outputs,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Routes the queue's results to the attempts waiting for them, for every run of one controller:
/// one `LISTEN` connection, woken per result, with a sweep every second that fetches what a lost
/// notification would have brought, expires leases and shows jobs no worker can take.
#[derive(Debug, Clone)]
pub struct Dispatch {
    inner: Arc<DispatchInner>,
}

#[derive(Debug)]
struct DispatchInner {
    store: Store,
    waiting: Mutex<Waiting>,
    wake: mpsc::UnboundedSender<AttemptId>,
    /// How old a worker's heartbeat may be and still count as live (the lease TTL).
    worker_ttl: Duration,
}

#[derive(Debug, Default)]
struct Waiting {
    by_attempt: HashMap<AttemptId, oneshot::Sender<QueueEnd>>,
    /// Where each waiting attempt's run reports progress, and its job there.
    progress: HashMap<AttemptId, (usize, mpsc::UnboundedSender<RunEvent>)>,
    early: HashSet<AttemptId>,
    early_order: VecDeque<AttemptId>,
}

impl Dispatch {
    /// Starts the listener task (it ends with `stop`).
    pub async fn start(
        store: Store,
        worker_ttl: Duration,
        stop: CancellationToken,
    ) -> Result<Dispatch, StoreError> {
        let listener = store.listen(&[DONE_CHANNEL]).await?;
        let (wake, woken) = mpsc::unbounded_channel();
        let dispatch = Dispatch {
            inner: Arc::new(DispatchInner {
                store,
                waiting: Mutex::new(Waiting::default()),
                wake,
                worker_ttl,
            }),
        };
        let task = dispatch.clone();
        tokio::spawn(async move { task.serve(listener, woken, stop).await });
        Ok(dispatch)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Waits for attempt `attempt`'s end (of job `job`, whose run's progress goes to `events`).
    fn wait_for(
        &self,
        attempt: AttemptId,
        job: usize,
        events: &mpsc::UnboundedSender<RunEvent>,
    ) -> oneshot::Receiver<QueueEnd> {
        let (tx, rx) = oneshot::channel();
        let early = {
            let mut waiting = self.waiting();
            waiting.by_attempt.insert(attempt, tx);
            waiting.progress.insert(attempt, (job, events.clone()));
            waiting.early.remove(&attempt)
        };
        if early {
            let _ = self.inner.wake.send(attempt);
        }
        rx
    }

    fn forget(&self, attempt: AttemptId) {
        let mut waiting = self.waiting();
        waiting.by_attempt.remove(&attempt);
        waiting.progress.remove(&attempt);
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn serve(
        self,
        mut listener: sqlx::postgres::PgListener,
        mut woken: mpsc::UnboundedReceiver<AttemptId>,
        stop: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut due: Vec<AttemptId> = Vec::new();
            tokio::select! {
                () = stop.cancelled() => return,
                notified = listener.recv() => match notified {
                    Ok(n) => {
                        due.extend(n.payload().parse::<i64>().ok().map(AttemptId::from));
                        // What else has arrived joins this fetch.
                        while let Some(Ok(Some(n))) = futures_util::FutureExt::now_or_never(listener.try_recv()) {
                            due.extend(n.payload().parse::<i64>().ok().map(AttemptId::from));
                        }
                    }
                    Err(e) => {
                        tracing::warn!("queue notifications: {e}; the sweep covers them meanwhile");
                        tokio::time::sleep(SWEEP_EVERY).await;
                    }
                },
                Some(id) = woken.recv() => {
                    due.push(id);
                    while let Ok(id) = woken.try_recv() {
                        due.push(id);
                    }
                }
                _ = sweep.tick() => {
                    match self.inner.store.expire_leases().await {
                        Ok(lost) => due.extend(lost),
                        Err(e) => tracing::warn!("expiring leases: {e}"),
                    }
                    match self.inner.store.mark_no_worker(self.inner.worker_ttl).await {
                        Ok(changed) => {
                            let waiting = self.waiting();
                            for (attempt, now_waiting) in changed {
                                if let Some((job, events)) = waiting.progress.get(&attempt) {
                                    let _ = events.send(RunEvent::NoWorker { job: *job, waiting: now_waiting });
                                }
                            }
                        }
                        Err(e) => tracing::warn!("looking for workers: {e}"),
                    }
                    due.extend(self.waiting().by_attempt.keys().copied());
                }
            }
            self.deliver(due).await;
        }
    }

    /// Fetches the ends of those of `due` that someone waits for and hands them over; the others
    /// are remembered as early.
    async fn deliver(&self, due: Vec<AttemptId>) {
        if due.is_empty() {
            return;
        }
        let wanted: Vec<i64> = {
            let mut waiting = self.waiting();
            let mut wanted = Vec::with_capacity(due.len());
            for id in due {
                if waiting.by_attempt.contains_key(&id) {
                    wanted.push(id.get());
                } else if waiting.early.insert(id) {
                    waiting.early_order.push_back(id);
                    if waiting.early_order.len() > EARLY_KEPT
                        && let Some(old) = waiting.early_order.pop_front()
                    {
                        waiting.early.remove(&old);
                    }
                }
            }
            wanted
        };
        if wanted.is_empty() {
            return;
        }
        let ends = match self.inner.store.queue_ends(&wanted).await {
            Ok(ends) => ends,
            Err(e) => {
                tracing::warn!("reading the queue's results: {e}; trying again at the next sweep");
                return;
            }
        };
        let mut waiting = self.waiting();
        for end in ends {
            waiting.progress.remove(&end.attempt);
            if let Some(tx) = waiting.by_attempt.remove(&end.attempt) {
                let _ = tx.send(end);
            }
        }
    }
}

/// What the run loop gives a queued attempt's task.
pub(super) struct RemoteSpec {
    pub(super) dispatch: Dispatch,
    pub(super) job: usize,
    pub(super) number: i64,
    pub(super) recorded: oneshot::Receiver<AttemptId>,
    /// The run is cancelled or timed out: ask the worker to stop it.
    pub(super) cancel: CancellationToken,
    /// The controller is stopping: leave the attempt to its worker and the next leader.
    pub(super) interrupt: CancellationToken,
    pub(super) events: mpsc::UnboundedSender<RunEvent>,
}

/// A queued attempt, from the loop's side: waits for its end and says what it was.
pub(super) async fn remote_attempt(spec: RemoteSpec) -> AttemptResult {
    let RemoteSpec {
        dispatch,
        job,
        number,
        recorded,
        cancel,
        interrupt,
        events,
    } = spec;
    let Ok(attempt) = recorded.await else {
        return AttemptResult {
            job,
            attempt_id: AttemptId::from(0),
            pid: None,
            number,
            outcome: AttemptOutcome::Stopped,
            exit: None,
            spawn_error: None,
            outputs: None,
        };
    };
    let stop = Halting {
        cancel: &cancel,
        interrupt: &interrupt,
    };
    await_end(&dispatch, job, attempt, number, stop, &events).await
}

/// How the loop stops a queued attempt it waits for.
#[derive(Clone, Copy)]
pub(super) struct Halting<'a> {
    /// The run is cancelled or timed out: ask the worker to stop it.
    pub(super) cancel: &'a CancellationToken,
    /// The controller is stopping: leave it to its worker.
    pub(super) interrupt: &'a CancellationToken,
}

/// Waits for queued attempt `attempt`'s end (also for an attempt a new leader adopts).
pub(super) async fn await_end(
    dispatch: &Dispatch,
    job: usize,
    attempt: AttemptId,
    number: i64,
    stop: Halting<'_>,
    events: &mpsc::UnboundedSender<RunEvent>,
) -> AttemptResult {
    let Halting { cancel, interrupt } = stop;
    let detached = AttemptResult {
        job,
        attempt_id: attempt,
        pid: None,
        number,
        outcome: AttemptOutcome::Detached,
        exit: None,
        spawn_error: None,
        outputs: None,
    };
    let mut end = dispatch.wait_for(attempt, job, events);
    let mut asked = false;
    let end = loop {
        tokio::select! {
            biased;
            end = &mut end => break end,
            () = interrupt.cancelled() => {
                dispatch.forget(attempt);
                return detached;
            }
            () = cancel.cancelled(), if !asked => {
                asked = true;
                if let Err(e) = dispatch.store().cancel_queued(&[attempt.get()], &stopped_text()).await {
                    tracing::warn!("asking attempt {attempt}'s worker to stop it: {e}");
                }
            }
        }
    };
    let Ok(end) = end else {
        // The dispatch is gone (the controller is stopping).
        return detached;
    };
    match end.result {
        None => {
            // Its lease expired: recorded Lost now, as recovery records one.
            if let Err(e) = dispatch.store().mark_lost(&[attempt]).await {
                tracing::warn!("recording attempt {attempt} lost: {e}");
            }
            AttemptResult {
                outcome: AttemptOutcome::Lost,
                ..detached
            }
        }
        Some(text) => match serde_json::from_str::<Wire>(&text) {
            Ok(wire) => wire.decode(job, attempt, number),
            Err(e) => AttemptResult {
                outcome: AttemptOutcome::Failed {
                    failure: Failure::Spawn,
                    reason: JobReason::SpawnFailed,
                    message: format!("the worker's result cannot be read: {e}"),
                },
                ..detached
            },
        },
    }
}

/// What a worker needs to run one claimed attempt.
#[derive(Debug)]
pub struct ClaimedAttempt {
    pub store: Store,
    pub plan: Arc<Plan>,
    pub claim: Claim,
    /// This host's state folder (the job's log is written there, then shipped).
    pub state_dir: PathBuf,
    pub upstream: Vec<(usize, Arc<Outputs>)>,
    pub grace: Duration,
    pub plugin_dirs: Vec<PathBuf>,
    /// Stop the job (its run was cancelled, or the worker is stopping).
    pub cancel: CancellationToken,
    /// Kill the job's group at once (its lease is lost).
    pub kill_now: CancellationToken,
}

/// Runs a claimed attempt as the engine runs a local one (same supervision, log and markers),
/// records its process under the claim's token, and returns its result's text for the queue
/// (`interrupted`: the worker was stopping).
pub async fn run_claimed(attempt: ClaimedAttempt, interrupted: &CancellationToken) -> String {
    let ClaimedAttempt {
        store,
        plan,
        claim,
        state_dir,
        upstream,
        grace,
        plugin_dirs,
        cancel,
        kill_now,
    } = attempt;
    let Some(job) = plan.index_of(&claim.job) else {
        let wire = Wire {
            outcome: WireOutcome::Failed,
            failure: Some(Failure::Env),
            reason: Some(JobReason::InvalidEnv.as_str().to_owned()),
            message: Some(format!("job {} is not in the run's spec", claim.job)),
            exit: None,
            spawn_error: None,
            outputs: None,
            pid: None,
        };
        return serde_json::to_string(&wire).unwrap_or_default();
    };
    for dir in [
        run_log_dir(&state_dir, &plan.pipeline, claim.run),
        run_outputs_dir(&state_dir, &plan.pipeline, claim.run),
    ] {
        if let Err(e) = create_private_dir(&dir) {
            tracing::warn!("cannot create {}: {e}", dir.display());
        }
    }
    let (recorded_tx, recorded) = oneshot::channel();
    let _ = recorded_tx.send(claim.attempt);
    let (events, _) = mpsc::unbounded_channel::<RunEvent>();
    let (spawned, mut spawned_rx) = mpsc::unbounded_channel::<Spawned>();
    let job_id = &plan.jobs[job].id;
    let spec = AttemptSpec {
        store: store.clone(),
        plan: plan.clone(),
        run: claim.run,
        round: claim.round,
        job,
        recorded,
        number: claim.number,
        log_path: job_log_path(&state_dir, &plan.pipeline, claim.run, job_id),
        output_path: job_output_path(&state_dir, &plan.pipeline, claim.run, job_id, claim.number),
        upstream,
        grace,
        plugin_dirs,
        cancel,
        kill_now,
        events,
        spawned,
    };
    let token = claim.token;
    let recorder = tokio::spawn(async move {
        while let Some(s) = spawned_rx.recv().await {
            if let Err(e) = store
                .claimed_spawned(s.attempt, token, s.pid, s.pgid, s.start_time)
                .await
            {
                tracing::warn!("recording attempt {}'s process: {e}", s.attempt);
            }
        }
    });
    let result = run_attempt(spec).await;
    let _ = recorder.await;
    let wire = Wire::encode(&result, interrupted.is_cancelled());
    serde_json::to_string(&wire).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: AttemptOutcome, exit: Option<ExitStatus>) -> AttemptResult {
        AttemptResult {
            job: 2,
            attempt_id: AttemptId::from(7),
            pid: Some((100, 100)),
            number: 3,
            outcome,
            exit: exit.map(|status| Exited {
                status,
                usage: Usage {
                    user: Duration::from_millis(250),
                    system: Duration::from_micros(1500),
                    max_rss_kib: 4096,
                    max_rss_upper_bound: true,
                },
                captured: None,
            }),
            spawn_error: None,
            outputs: None,
        }
    }

    fn round_trip(r: &AttemptResult, interrupted: bool) -> AttemptResult {
        let text = serde_json::to_string(&Wire::encode(r, interrupted)).unwrap();
        serde_json::from_str::<Wire>(&text)
            .unwrap()
            .decode(r.job, r.attempt_id, r.number)
    }

    /// What the leader decides from a worker's result is what it would decide from the same
    /// attempt run locally: outcome, failure kind, exit status and usage cross the database.
    #[test]
    fn a_result_crosses_the_database_unchanged() {
        let failed = result(
            AttemptOutcome::Failed {
                failure: Failure::ExitCode(3),
                reason: JobReason::ExitCode,
                message: "exited with code 3".into(),
            },
            Some(ExitStatus::Code(3)),
        );
        let back = round_trip(&failed, false);
        match back.outcome {
            AttemptOutcome::Failed {
                failure, reason, ..
            } => {
                assert_eq!(failure, Failure::ExitCode(3));
                assert_eq!(reason, JobReason::ExitCode);
            }
            other => panic!("{other:?}"),
        }
        let exit = back.exit.unwrap();
        assert_eq!(exit.status, ExitStatus::Code(3));
        assert_eq!(exit.usage.user, Duration::from_millis(250));
        assert_eq!(exit.usage.system, Duration::from_micros(1500));
        assert_eq!(exit.usage.max_rss_kib, 4096);
        assert!(exit.usage.max_rss_upper_bound);
        assert_eq!(back.pid, Some((100, 100)));

        let mut succeeded = result(AttemptOutcome::Succeeded, Some(ExitStatus::Code(0)));
        succeeded.outputs = Some([("k".to_owned(), "v".to_owned())].into_iter().collect());
        let back = round_trip(&succeeded, false);
        assert!(matches!(back.outcome, AttemptOutcome::Succeeded));
        assert_eq!(back.outputs.unwrap()["k"], "v");

        let killed = result(AttemptOutcome::Stopped, Some(ExitStatus::Signal(15)));
        let back = round_trip(&killed, false);
        assert!(matches!(back.outcome, AttemptOutcome::Stopped));
        assert_eq!(back.exit.unwrap().status, ExitStatus::Signal(15));
    }

    /// A job its worker stopped because the worker was stopping is neither a failure nor a
    /// cancellation: the leader runs it again without counting it.
    #[test]
    fn a_job_stopped_by_its_stopping_worker_comes_back_interrupted() {
        let stopped = result(AttemptOutcome::Stopped, Some(ExitStatus::Signal(15)));
        assert!(matches!(
            round_trip(&stopped, true).outcome,
            AttemptOutcome::Interrupted
        ));
        let failed = result(
            AttemptOutcome::Failed {
                failure: Failure::Signal(15),
                reason: JobReason::Signaled,
                message: "killed by signal 15".into(),
            },
            Some(ExitStatus::Signal(15)),
        );
        assert!(matches!(
            round_trip(&failed, true).outcome,
            AttemptOutcome::Interrupted
        ));
        let text = stopped_text();
        let wire: Wire = serde_json::from_str(&text).unwrap();
        assert_eq!(wire.outcome, WireOutcome::Stopped);
    }
}

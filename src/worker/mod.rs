//! The worker (DESIGN 9): a process on any host that registers in the PostgreSQL database, claims
//! queued attempts whose placement its labels match, runs them with the engine's supervision,
//! holds a lease on each, and ships their output to the database. It decides nothing about runs:
//! the leading controller does (retries, timeouts of runs, what a result means).
//!
//! One loop owns the worker's state: claims when a slot is free (woken by `LISTEN`, with a slow
//! poll for a lost notification), renews every lease and its heartbeat every third of the TTL,
//! and stops a job whose lease it can no longer hold before the lease ends: at once (SIGKILL to
//! its group) when the database says the lease is gone, and when renewals have failed for two
//! thirds of the TTL. Each attempt is a task that runs the job and records its result under the
//! claim's fencing token (a result the token no longer covers is discarded by the database).

pub mod ship;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::engine::launch::PinnedPlan;
use crate::engine::remote::{ClaimedAttempt, run_claimed};
use crate::engine::{Plan, PlanError};
use crate::spec::Pinned;
use crate::store::queue::{CANCEL_CHANNEL, WORK_CHANNEL};
use crate::store::workers::WorkerInfo;
use crate::store::{AttemptId, Claim, RunId, Store, StoreError};

/// The longest pause between tries to record a result while the database is away: short, so
/// that a result is in before the leader can expire its lease once the database is back.
const MAX_RESULT_PAUSE: Duration = Duration::from_secs(1);
/// How often an idle worker looks for work whose notification it missed.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Plans of runs kept for their next attempts.
const PLANS_KEPT: usize = 64;
/// The first pause after the database failed; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// What a worker is.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub slots: usize,
    pub lease_ttl: Duration,
    /// This host's state folder: the jobs' logs are written there, then shipped.
    pub state_dir: PathBuf,
    pub shutdown_grace: Duration,
    pub plugin_dirs: Vec<PathBuf>,
}

/// What happened, for the log (only the CLI prints).
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    Registered {
        name: String,
        labels: BTreeMap<String, String>,
        slots: usize,
    },
    Started {
        attempt: AttemptId,
        run: RunId,
        job: String,
        number: i64,
    },
    Finished {
        attempt: AttemptId,
        job: String,
        /// The database took the result (false: the lease was no longer this worker's).
        recorded: bool,
    },
    /// The lease is gone (taken over, or not renewable in time): the job was killed.
    LeaseLost {
        attempt: AttemptId,
        job: String,
        why: &'static str,
    },
    /// Leftovers of an earlier worker of this name on this host, stopped at start.
    LeftoversKilled {
        groups: usize,
    },
    Warning(String),
    /// The database is back after failures.
    Reconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An attempt this worker runs.
struct Running {
    attempt: AttemptId,
    job: String,
    cancel: CancellationToken,
    kill_now: CancellationToken,
    /// Cancelled when the job is stopped for this worker's own reasons (it is stopping, or the
    /// lease is in doubt): its result then says interrupted, not stopped by its run.
    interrupted: CancellationToken,
    /// Set when the lease was taken over: its result is not written (the database would refuse
    /// it anyway).
    abandoned: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs the worker until `stop` (then its jobs are stopped, TERM → grace → KILL, and recorded
/// interrupted, so their runs go on elsewhere); `kill_now` skips the grace.
pub async fn serve(
    store: Store,
    opts: WorkerOptions,
    events: mpsc::UnboundedSender<WorkerEvent>,
    stop: CancellationToken,
    kill_now: CancellationToken,
) -> Result<(), WorkerError> {
    let pid = std::process::id();
    let info = WorkerInfo {
        name: opts.name.clone(),
        host: crate::process::hostname(),
        pid,
        labels: opts.labels.clone(),
        slots: u32::try_from(opts.slots).unwrap_or(u32::MAX),
    };
    match store.register_worker(&info, opts.lease_ttl).await {
        // A worker of this name on this host that is gone (killed, say): its name is ours again,
        // and what it left running is stopped below.
        Err(StoreError::WorkerNameTaken { host, pid: old, .. })
            if host == info.host
                && i32::try_from(old).is_ok_and(|old| !crate::process::pid_exists(old)) =>
        {
            let old = u32::try_from(old).ok();
            store
                .register_worker_replacing(&info, opts.lease_ttl, old)
                .await?;
        }
        other => other?,
    }
    let labels = serde_json::to_string(&opts.labels).unwrap_or_else(|_| "{}".into());
    let _ = events.send(WorkerEvent::Registered {
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        slots: opts.slots,
    });
    let killed = kill_leftovers(&store, &opts.name).await?;
    if killed > 0 {
        let _ = events.send(WorkerEvent::LeftoversKilled { groups: killed });
    }
    let mut listener = store.listen(&[WORK_CHANNEL, CANCEL_CHANNEL]).await?;

    let renew_every = opts.lease_ttl / 3;
    // Stop the jobs when renewals have failed this long, before a lease can end.
    let give_up_after = opts.lease_ttl - renew_every;
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_renewed = tokio::time::Instant::now();
    let mut running: HashMap<i64, Running> = HashMap::new();
    let mut tasks: JoinSet<i64> = JoinSet::new();
    let mut plans: HashMap<RunId, Arc<Plan>> = HashMap::new();
    let mut pause = FIRST_PAUSE;
    let mut paused_until: Option<tokio::time::Instant> = None;
    let mut failing = false;
    let interrupted = CancellationToken::new();
    let mut want_claim = true;
    // Results the attempts offer, recorded together with the next claim (one commit for both).
    let (offers, mut offered) = mpsc::unbounded_channel::<Offered>();
    let mut ctx = Starter {
        store: store.clone(),
        opts: opts.clone(),
        events: events.clone(),
        kill_now: kill_now.clone(),
        interrupted: interrupted.clone(),
        offers,
    };

    loop {
        let now = tokio::time::Instant::now();
        let can_claim = !stop.is_cancelled()
            && running.len() < opts.slots
            && paused_until.is_none_or(|t| t <= now);
        if want_claim && can_claim {
            let free = opts.slots - running.len();
            let began = tokio::time::Instant::now();
            match store.claim(&opts.name, &labels, free, opts.lease_ttl).await {
                Ok(claims) => {
                    if running.is_empty() && !claims.is_empty() {
                        // New leases, from the claim's start; nothing older is held.
                        last_renewed = began;
                    }
                    if failing {
                        failing = false;
                        let _ = events.send(WorkerEvent::Reconnected);
                    }
                    pause = FIRST_PAUSE;
                    paused_until = None;
                    // A full claim may have left more behind.
                    want_claim = claims.len() == free;
                    for claim in claims {
                        start_claim(&mut ctx, claim, &mut plans, &mut running, &mut tasks).await;
                    }
                }
                Err(e) => {
                    if !failing {
                        let _ = events.send(WorkerEvent::Warning(format!(
                            "claiming work: {}; trying again with backoff",
                            crate::error_chain::render(&e)
                        )));
                    }
                    failing = true;
                    paused_until = Some(now + pause);
                    pause = (pause * 2).min(MAX_PAUSE);
                    want_claim = true;
                }
            }
        }
        if stop.is_cancelled() && running.is_empty() {
            break;
        }
        let resume_at = paused_until.filter(|_| want_claim);
        tokio::select! {
            notified = listener.recv() => match notified {
                Ok(n) if n.channel() == CANCEL_CHANNEL => {
                    if let Ok(id) = n.payload().parse::<i64>()
                        && let Some(r) = running.values().find(|r| r.attempt.get() == id)
                    {
                        r.cancel.cancel();
                    }
                }
                Ok(_) => want_claim = true,
                Err(e) => {
                    // sqlx reconnects the listener; the poll covers what it missed.
                    if !failing {
                        let _ = events.send(WorkerEvent::Warning(format!("notifications: {e}")));
                    }
                    failing = true;
                    tokio::time::sleep(pause).await;
                    want_claim = true;
                }
            },
            Some(first) = offered.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = offered.try_recv() {
                    batch.push(more);
                }
                let busy = running.len().saturating_sub(batch.len());
                let free = if stop.is_cancelled() { 0 } else { opts.slots.saturating_sub(busy) };
                let results: Vec<crate::store::Finished<'_>> = batch
                    .iter()
                    .map(|o| crate::store::Finished {
                        attempt: o.attempt,
                        token: o.token,
                        result: o.text.as_str(),
                        last_chunk: o.last.as_ref().map(|c| (c.seq, c.data.as_slice())),
                    })
                    .collect();
                let began = tokio::time::Instant::now();
                match store
                    .finish_and_claim(&opts.name, &labels, &results, free, opts.lease_ttl)
                    .await
                {
                    Ok((accepted, claims)) => {
                        if busy == 0 && !claims.is_empty() {
                            last_renewed = began;
                        }
                        want_claim = claims.len() == free && free > 0;
                        for o in batch {
                            let _ = o.reply.send(Some(accepted.contains(&o.attempt.get())));
                        }
                        for claim in claims {
                            start_claim(&mut ctx, claim, &mut plans, &mut running, &mut tasks).await;
                        }
                    }
                    Err(e) => {
                        // Each attempt tries again on its own, with backoff.
                        tracing::debug!("recording results: {e}");
                        for o in batch {
                            let _ = o.reply.send(None);
                        }
                    }
                }
            }
            Some(joined) = tasks.join_next() => {
                if let Ok(token) = joined {
                    running.remove(&token);
                }
                want_claim = true;
            }
            _ = renew.tick() => {
                let tokens: Vec<i64> = running.keys().copied().collect();
                // The lease runs from the renewal's start (the server's now() is no earlier), and
                // a renewal that cannot finish before the give-up point is abandoned there: a
                // database refusing connections must not hold this loop past it.
                let began = tokio::time::Instant::now();
                let budget = (last_renewed + give_up_after)
                    .saturating_duration_since(began)
                    .min(renew_every)
                    .max(Duration::from_millis(50));
                let renewed = tokio::time::timeout(budget, async {
                    let held = if tokens.is_empty() {
                        Vec::new()
                    } else {
                        store.renew(&opts.name, &tokens, opts.lease_ttl).await?
                    };
                    store.worker_heartbeat(&opts.name, pid).await?;
                    Ok::<_, StoreError>(held)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Connect {
                        database: "the state database".into(),
                        detail: format!("no answer within {budget:?}"),
                    })
                });
                match renewed {
                    Ok(held) => {
                        last_renewed = began;
                        let held: HashMap<i64, bool> = held.into_iter().collect();
                        for (token, r) in &running {
                            match held.get(token) {
                                None => lose(r, Lease::TakenOver, &events),
                                Some(true) => r.cancel.cancel(),
                                Some(false) => {}
                            }
                        }
                    }
                    Err(e) => {
                        if !failing {
                            let _ = events.send(WorkerEvent::Warning(format!(
                                "renewing leases: {}",
                                crate::error_chain::render(&e)
                            )));
                        }
                        failing = true;
                        if last_renewed.elapsed() >= give_up_after {
                            for r in running.values() {
                                lose(r, Lease::InDoubt, &events);
                            }
                        }
                    }
                }
            }
            _ = poll.tick() => want_claim = true,
            () = sleep_until_opt(resume_at), if resume_at.is_some() => {}
            () = stop.cancelled(), if !interrupted.is_cancelled() => {
                interrupted.cancel();
                for r in running.values() {
                    r.cancel.cancel();
                }
            }
        }
        if plans.len() > PLANS_KEPT {
            plans.clear();
        }
    }
    if let Err(e) = store.worker_stopped(&opts.name, pid).await {
        let _ = events.send(WorkerEvent::Warning(format!(
            "recording this worker stopped: {}",
            crate::error_chain::render(&e)
        )));
    }
    Ok(())
}

/// Why a job's lease is no longer good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// The database says another holds it (or it was recorded Lost).
    TakenOver,
    /// Renewals failed for two thirds of the TTL: it may be about to end.
    InDoubt,
}

/// What starting a claimed attempt needs from the worker's loop.
struct Starter {
    store: Store,
    opts: WorkerOptions,
    events: mpsc::UnboundedSender<WorkerEvent>,
    kill_now: CancellationToken,
    interrupted: CancellationToken,
    offers: mpsc::UnboundedSender<Offered>,
}

/// A finished attempt's result, offered to the loop to record with its next claim.
struct Offered {
    attempt: AttemptId,
    token: i64,
    text: String,
    /// The attempt's last log chunk, stored in the same transaction.
    last: Option<ship::LastChunk>,
    /// Whether the database took it; `None`: not recorded (the attempt tries on its own).
    reply: oneshot::Sender<Option<bool>>,
}

/// Starts a claimed attempt: its run's plan, its upstream outputs, its task.
async fn start_claim(
    ctx: &mut Starter,
    claim: Claim,
    plans: &mut HashMap<RunId, Arc<Plan>>,
    running: &mut HashMap<i64, Running>,
    tasks: &mut JoinSet<i64>,
) {
    let plan = match plan_of(&ctx.store, plans, claim.run).await {
        Ok(plan) => plan,
        Err(e) => {
            let text = unplannable(&e);
            let _ = ctx
                .store
                .claimed_finished(claim.attempt, claim.token, &text)
                .await;
            return;
        }
    };
    let upstream = match upstream_of(&ctx.store, &plan, &claim).await {
        Ok(upstream) => upstream,
        Err(e) => {
            let _ = ctx.events.send(WorkerEvent::Warning(format!(
                "attempt {}: reading its upstream outputs: {e}",
                claim.attempt
            )));
            Vec::new()
        }
    };
    let _ = ctx.events.send(WorkerEvent::Started {
        attempt: claim.attempt,
        run: claim.run,
        job: claim.job.clone(),
        number: claim.number,
    });
    let entry = Running {
        attempt: claim.attempt,
        job: claim.job.clone(),
        cancel: CancellationToken::new(),
        kill_now: ctx.kill_now.child_token(),
        interrupted: ctx.interrupted.child_token(),
        abandoned: Arc::default(),
    };
    let work = ClaimedAttempt {
        store: ctx.store.clone(),
        plan,
        claim: claim.clone(),
        state_dir: ctx.opts.state_dir.clone(),
        upstream,
        grace: ctx.opts.shutdown_grace,
        plugin_dirs: ctx.opts.plugin_dirs.clone(),
        cancel: entry.cancel.clone(),
        kill_now: entry.kill_now.clone(),
    };
    tasks.spawn(attempt_task(
        ctx.store.clone(),
        work,
        entry.interrupted.clone(),
        entry.abandoned.clone(),
        ctx.events.clone(),
        ctx.offers.clone(),
    ));
    running.insert(claim.token, entry);
}

/// The job's lease is gone or in doubt: the job is killed at once (before the lease can end and
/// another worker start it). Its result is still offered while in doubt, as interrupted (the
/// database takes it only if the lease was never taken over); never after a takeover.
fn lose(r: &Running, lease: Lease, events: &mpsc::UnboundedSender<WorkerEvent>) {
    if r.kill_now.is_cancelled() && lease == Lease::InDoubt {
        return;
    }
    if lease == Lease::TakenOver && r.abandoned.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    r.interrupted.cancel();
    r.kill_now.cancel();
    r.cancel.cancel();
    let _ = events.send(WorkerEvent::LeaseLost {
        attempt: r.attempt,
        job: r.job.clone(),
        why: match lease {
            Lease::TakenOver => "its lease was taken over",
            Lease::InDoubt => "its lease could not be renewed in time",
        },
    });
}

/// One claimed attempt: runs it, then records its result under its token, retried with backoff
/// while the database is away (the loop renews the lease meanwhile, and abandons the attempt when
/// it cannot). Returns the token.
async fn attempt_task(
    store: Store,
    work: ClaimedAttempt,
    interrupted: CancellationToken,
    abandoned: Arc<std::sync::atomic::AtomicBool>,
    events: mpsc::UnboundedSender<WorkerEvent>,
    offers: mpsc::UnboundedSender<Offered>,
) -> i64 {
    let claim = work.claim.clone();
    // The attempt's part of the job's log (from where its opening marker will be written) goes
    // to the database as it grows, so `logs` works from any host.
    let shipper = work.plan.index_of(&claim.job).map(|job| {
        let log = crate::state_dir::job_log_path(
            &work.state_dir,
            &work.plan.pipeline,
            claim.run,
            &work.plan.jobs[job].id,
        );
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        ship::ShipHandle::start(
            store.clone(),
            claim.attempt,
            claim.token,
            log,
            offset,
            ship::DEFAULT_CAP,
        )
    });
    let text = run_claimed(work, &interrupted).await;
    // The log's last chunk goes with the result (one commit for both).
    let mut last = None;
    if let Some(shipper) = shipper {
        match shipper.finish_but_last().await {
            Ok((_, chunk)) => last = chunk,
            Err(e) => {
                let _ = events.send(WorkerEvent::Warning(format!(
                    "attempt {}: shipping the end of its log: {}",
                    claim.attempt,
                    crate::error_chain::render(&e)
                )));
            }
        }
    }
    let (reply, replied) = oneshot::channel();
    let offer = Offered {
        attempt: claim.attempt,
        token: claim.token,
        text: text.clone(),
        last: last.clone(),
        reply,
    };
    let first = if abandoned.load(std::sync::atomic::Ordering::SeqCst) {
        Some(false)
    } else if offers.send(offer).is_ok() {
        replied.await.ok().flatten()
    } else {
        None
    };
    let mut pause = FIRST_PAUSE;
    let recorded = loop {
        if let Some(recorded) = first {
            break recorded;
        }
        if abandoned.load(std::sync::atomic::Ordering::SeqCst) {
            break false;
        }
        // On its own: the log's last chunk first, while the claim still holds.
        if let Some(chunk) = &last {
            match store
                .append_log_chunk(claim.attempt, claim.token, chunk.seq, &chunk.data)
                .await
            {
                Ok(_) => last = None,
                Err(e) => {
                    tracing::debug!("attempt {}: shipping its last chunk: {e}", claim.attempt);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RESULT_PAUSE);
                    continue;
                }
            }
        }
        match store
            .claimed_finished(claim.attempt, claim.token, &text)
            .await
        {
            Ok(recorded) => break recorded,
            Err(e) => {
                tracing::debug!("attempt {}: recording its result: {e}", claim.attempt);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RESULT_PAUSE);
            }
        }
    };
    let _ = events.send(WorkerEvent::Finished {
        attempt: claim.attempt,
        job: claim.job.clone(),
        recorded,
    });
    claim.token
}

/// The plan of run `run`'s pinned spec, read once per run.
async fn plan_of(
    store: &Store,
    plans: &mut HashMap<RunId, Arc<Plan>>,
    run: RunId,
) -> Result<Arc<Plan>, String> {
    if let Some(plan) = plans.get(&run) {
        return Ok(plan.clone());
    }
    let row = store
        .run(run)
        .await
        .map_err(|e| crate::error_chain::render(&e))?
        .ok_or_else(|| format!("run {run} not found"))?;
    let pinned = Pinned::from_json(&row.spec_json).map_err(|e| e.to_string())?;
    let plan: Plan = pinned
        .plan()
        .map_err(|e: PlanError| crate::error_chain::render(&e))?;
    let plan = Arc::new(plan);
    plans.insert(run, plan.clone());
    Ok(plan)
}

/// The outputs of the upstream jobs the claimed job reads (committed before it was released).
async fn upstream_of(
    store: &Store,
    plan: &Plan,
    claim: &Claim,
) -> Result<Vec<(usize, Arc<crate::status::outputs::Outputs>)>, StoreError> {
    let Some(job) = plan.index_of(&claim.job) else {
        return Ok(Vec::new());
    };
    let reads = &plan.jobs[job].reads_outputs;
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    let stored = store.job_outputs(claim.run).await?;
    Ok(reads
        .iter()
        .filter_map(|&from| {
            stored
                .get(plan.jobs[from].id.as_str())
                .map(|o| (from, Arc::new(o.clone())))
        })
        .collect())
}

/// The result of an attempt whose run's spec cannot be planned on this host (a secret missing
/// here, say): a failure that retrying on this host would not mend.
fn unplannable(message: &str) -> String {
    let wire = crate::engine::remote::Wire {
        outcome: crate::engine::remote::WireOutcome::Failed,
        failure: Some(crate::scheduler::retry::Failure::Env),
        reason: Some(crate::status::JobReason::InvalidEnv.as_str().to_owned()),
        message: Some(format!("cannot plan the run on this worker: {message}")),
        exit: None,
        spawn_error: None,
        outputs: None,
        pid: None,
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

/// Stops what an earlier worker of this name left running on this host (its claimed attempts
/// whose recorded process group still exists with the same start time). Returns how many.
async fn kill_leftovers(store: &Store, name: &str) -> Result<usize, StoreError> {
    let groups = store.claimed_groups(name).await?;
    let killed = tokio::task::spawn_blocking(move || {
        groups
            .into_iter()
            .filter(|(pgid, start)| crate::process::kill_leftover_group(*pgid, *start))
            .count()
    })
    .await
    .unwrap_or(0);
    Ok(killed)
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

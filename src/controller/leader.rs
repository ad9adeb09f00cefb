//! Leader election among controllers sharing a PostgreSQL store (DESIGN 9): one controller leads,
//! through the lease row of `store/leader.rs`, and only the leader decides (reconciles, recovers,
//! ticks schedules, drives runs); the others stand by and take over within `lease_ttl`
//! once it stops renewing. This file owns the election task (standby tries every third of the
//! lease, the leader renews as often and steps down by itself when its renewals have failed for
//! two thirds of it, before any standby may take over), its [`Leadership`] watch, and the loop that
//! runs the controller's actor while leading: fence the store with the epoch, run, and on losing
//! the lead drop the actor (its run tasks are aborted, writing nothing more) and stand by again.
//! What the actor does while leading is `mod.rs`'s; the SQL is the store's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

use super::{ControllerError, ControllerEvent, ControllerOptions};

/// Whether this controller decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    Standby,
    Leading { epoch: i64 },
}

/// A change of this controller's leadership, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipChange {
    /// Another controller leads (or, `None`, none does and the lease could not be taken: the
    /// database did not answer).
    Standby { leader: Option<(String, i64)> },
    /// This controller took the lead with `epoch`.
    Leading { holder: String, epoch: i64 },
    /// This controller lost the lead of `epoch`: another took it over, or it stepped down after
    /// failing to renew it (`why`).
    Deposed { epoch: i64, why: String },
    /// This controller gave up the lead of `epoch` as it stopped.
    Resigned { epoch: i64 },
}

/// How often a standby tries, and a leader renews: a third of the lease.
fn period(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long after its last successful renewal a leader steps down: a third of the lease before
/// it expires, so that it has stopped deciding before any standby can take over (the lease is
/// measured by the database's clock from a moment after the renewal began here).
fn step_down_after(ttl: Duration) -> Duration {
    ttl - period(ttl)
}

/// This controller's name in the lease: host and pid (a restarted controller is a new holder
/// and gets a new epoch).
fn holder_name() -> String {
    format!("{}:{}", crate::process::hostname(), std::process::id())
}

/// Runs the controller on a shared store until `cancel`: standby until it leads, the actor while
/// it leads (its store fenced with the epoch), standby again when it loses the lead. On `cancel`
/// the actor stops as it always does (its writes still fenced by a lease renewed meanwhile), then
/// the lead is given up so a standby takes over at once.
pub async fn run_elected(
    opts: ControllerOptions,
    store: Store,
    events: mpsc::UnboundedSender<ControllerEvent>,
    cancel: CancellationToken,
    kill_now: CancellationToken,
) -> Result<bool, ControllerError> {
    let election = Election::start(store.clone(), opts.config.lease_ttl(), events.clone());
    let mut leadership = election.leadership.clone();
    let outcome = loop {
        let Some(epoch) = wait_to_lead(&mut leadership, &cancel).await else {
            break Ok(true);
        };
        store.fence(epoch)?;
        let lost = CancellationToken::new();
        let watcher = tokio::spawn(lost_when_not(leadership.clone(), epoch, lost.clone()));
        let leading = ControllerOptions {
            lead_lost: Some(lost.clone()),
            ..opts.clone()
        };
        let ran = super::run(
            leading,
            store.clone(),
            events.clone(),
            cancel.clone(),
            kill_now.clone(),
        )
        .await;
        watcher.abort();
        match ran {
            // A write found the lease taken over before the election did: the actor is gone
            // (dropped with its tasks); the election learns it at its next renewal, made now.
            Err(ControllerError::Store(StoreError::Deposed { .. })) if !cancel.is_cancelled() => {
                election.renew_now.notify_one();
                wait_not_leading(&mut leadership, epoch, &cancel).await;
            }
            Ok(_) if lost.is_cancelled() && !cancel.is_cancelled() => {}
            other => break other,
        }
    };
    election.stop().await;
    outcome
}

/// Waits until this controller leads (its epoch), or `None` once `cancel` fires.
async fn wait_to_lead(
    leadership: &mut watch::Receiver<Leadership>,
    cancel: &CancellationToken,
) -> Option<i64> {
    loop {
        if let Leadership::Leading { epoch } = *leadership.borrow_and_update() {
            return Some(epoch);
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            changed = leadership.changed() => changed.ok()?,
        }
    }
}

/// Waits until the election no longer says this controller leads with `epoch` (or `cancel`).
async fn wait_not_leading(
    leadership: &mut watch::Receiver<Leadership>,
    epoch: i64,
    cancel: &CancellationToken,
) {
    while *leadership.borrow_and_update() == (Leadership::Leading { epoch }) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = leadership.changed() => if changed.is_err() { return },
        }
    }
}

/// Cancels `lost` once the election says this controller no longer leads with `epoch`.
async fn lost_when_not(
    mut leadership: watch::Receiver<Leadership>,
    epoch: i64,
    lost: CancellationToken,
) {
    let never = CancellationToken::new();
    wait_not_leading(&mut leadership, epoch, &never).await;
    lost.cancel();
}

/// The election task while it runs: its [`Leadership`] watch, and how to stop it.
#[derive(Debug)]
pub struct Election {
    /// Standby until this controller leads; each change is also reported as a
    /// [`ControllerEvent::Leadership`].
    pub leadership: watch::Receiver<Leadership>,
    /// Renew (or try) now rather than at the next period.
    renew_now: Arc<Notify>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Starts electing on `store` (shared) with leases of `ttl`, as holder `HOST:PID`.
    pub fn start(
        store: Store,
        ttl: Duration,
        events: mpsc::UnboundedSender<ControllerEvent>,
    ) -> Election {
        let (tx, leadership) = watch::channel(Leadership::Standby);
        let stop = CancellationToken::new();
        let renew_now = Arc::new(Notify::new());
        let candidate = Candidate {
            store,
            holder: holder_name(),
            ttl,
            events,
            renew_now: renew_now.clone(),
        };
        let task = tokio::spawn(elect(candidate, tx, stop.clone()));
        Election {
            leadership,
            renew_now,
            stop,
            task,
        }
    }

    /// Stops electing; gives up the lead if this controller holds it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What the election task needs.
struct Candidate {
    store: Store,
    holder: String,
    ttl: Duration,
    events: mpsc::UnboundedSender<ControllerEvent>,
    renew_now: Arc<Notify>,
}

impl Candidate {
    fn report(&self, change: LeadershipChange) {
        let _ = self.events.send(ControllerEvent::Leadership(change));
    }

    fn warn(&self, what: &str, error: &StoreError) {
        let _ = self.events.send(ControllerEvent::Warning(format!(
            "leader election: {what}: {}",
            crate::error_chain::render(error)
        )));
    }
}

/// The election: tries to lead every period while standby, renews every period while leading,
/// and publishes each change on `leadership`. On `stop`, gives up the lead it holds.
async fn elect(e: Candidate, leadership: watch::Sender<Leadership>, stop: CancellationToken) {
    // The leader last reported while standby, so that the log says each leader once.
    let mut reported: Option<Option<(String, i64)>> = None;
    // While leading: when the last renewal that succeeded began.
    let mut renewed = Instant::now();
    loop {
        let state = *leadership.borrow();
        let mut next = Instant::now() + period(e.ttl);
        match state {
            Leadership::Standby => {
                let began = Instant::now();
                match e.store.try_lead(&e.holder, e.ttl).await {
                    Ok(Some(epoch)) => {
                        renewed = began;
                        reported = None;
                        leadership.send_replace(Leadership::Leading { epoch });
                        e.report(LeadershipChange::Leading {
                            holder: e.holder.clone(),
                            epoch,
                        });
                    }
                    Ok(None) => {
                        let leader = match e.store.leader().await {
                            Ok(row) => row.map(|r| (r.holder, r.epoch)),
                            Err(error) => {
                                e.warn("reading who leads", &error);
                                None
                            }
                        };
                        if reported.as_ref() != Some(&leader) {
                            e.report(LeadershipChange::Standby {
                                leader: leader.clone(),
                            });
                            reported = Some(leader);
                        }
                    }
                    Err(error) => {
                        e.warn("cannot take the lead", &error);
                        if reported.is_none() {
                            e.report(LeadershipChange::Standby { leader: None });
                            reported = Some(None);
                        }
                    }
                }
            }
            Leadership::Leading { epoch } => {
                let deadline = renewed + step_down_after(e.ttl);
                let began = Instant::now();
                // A renewal that hangs (the database unreachable) must not keep this controller
                // deciding past its deadline.
                let renewal =
                    tokio::time::timeout_at(deadline, e.store.renew_lead(&e.holder, epoch, e.ttl))
                        .await;
                let lost = match renewal {
                    Ok(Ok(true)) => {
                        renewed = began;
                        None
                    }
                    Ok(Ok(false)) => Some("another controller took the lease over".to_owned()),
                    Ok(Err(error)) if Instant::now() >= deadline => Some(format!(
                        "the lease could not be renewed for {:?}: {}",
                        step_down_after(e.ttl),
                        crate::error_chain::render(&error)
                    )),
                    Ok(Err(error)) => {
                        e.warn("cannot renew the lead (retrying)", &error);
                        None
                    }
                    Err(_) => Some(format!(
                        "the lease could not be renewed for {:?}: the database did not answer",
                        step_down_after(e.ttl)
                    )),
                };
                match lost {
                    Some(why) => {
                        leadership.send_replace(Leadership::Standby);
                        e.report(LeadershipChange::Deposed { epoch, why });
                        // Stand by at once: the standby's first try says who leads now.
                        next = Instant::now();
                    }
                    None => next = next.min(renewed + step_down_after(e.ttl)),
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
            _ = e.renew_now.notified() => {}
        }
    }
    let last = *leadership.borrow();
    if let Leadership::Leading { epoch } = last {
        match e.store.resign(&e.holder, epoch).await {
            Ok(()) => e.report(LeadershipChange::Resigned { epoch }),
            Err(error) => e.warn("cannot give up the lead (it expires by itself)", &error),
        }
    }
    leadership.send_replace(Leadership::Standby);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_steps_down_a_third_of_the_lease_before_it_expires() {
        let ttl = Duration::from_secs(15);
        assert_eq!(period(ttl), Duration::from_secs(5));
        assert_eq!(step_down_after(ttl), Duration::from_secs(10));
        // Two renewals fail before it steps down; the lease outlives the step-down.
        assert!(step_down_after(ttl) >= 2 * period(ttl));
        assert!(step_down_after(ttl) < ttl);
    }

    #[test]
    fn each_process_is_its_own_holder() {
        let name = holder_name();
        assert!(
            name.ends_with(&format!(":{}", std::process::id())),
            "{name}"
        );
    }
}

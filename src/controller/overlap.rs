//! Runs of a pipeline that another live process drives in the same state folder, for
//! `concurrencyPolicy` (DESIGN 11): finding them (a run whose owner is gone does not count: the
//! same pid + start time check as crash recovery), telling who owns one, and asking a foreground
//! `executioner run` to cancel its run (SIGTERM, which that process records as a user's cancel),
//! or the controller to cancel one of its runs (a `cancel-RUN` request file it watches).
//! What to do about them is decided in `reconcile` and in `cli/run.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::engine::resume::owner_alive;
use crate::store::{Owner, RunId, RunRow, Store, StoreError};

/// The controller of this state folder, if one is running: the pid its `controller.lock` names,
/// with that process's start time (a dead pid gives none). A pid reused since by a process that
/// owns no run matches no run.
pub fn live_controller(state_dir: &std::path::Path) -> Option<Owner> {
    let pid = super::lock::holder_pid(state_dir)?;
    let start_time = crate::process::read_start_time(i32::try_from(pid).ok()?)?;
    Some(Owner {
        pid,
        host: crate::process::hostname(),
        start_time: Some(start_time),
    })
}

/// Who drives a run in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// The live controller of this state folder.
    Controller,
    /// Any other process: an `executioner run`, or an `executioner resume` (of a foreground run
    /// or of a controller's: the process that resumed it drives it now).
    Foreground,
}

impl Driver {
    /// Who drives `run`, told by its owner (pid, start time, host) against `controller`, the
    /// live controller of this state folder if any ([`live_controller`], or this process in the
    /// controller). Not by its generation: a resumed controller's run keeps its generation but
    /// is driven by the process that resumed it.
    pub fn of(run: &RunRow, controller: Option<&Owner>) -> Driver {
        let owned_by = |c: &Owner| {
            run.owner_pid == Some(i64::from(c.pid))
                && c.start_time.is_some()
                && run.owner_start_time.and_then(|t| u64::try_from(t).ok()) == c.start_time
                && run.owner_host.as_deref().is_none_or(|h| h == c.host)
        };
        if controller.is_some_and(owned_by) {
            Driver::Controller
        } else {
            Driver::Foreground
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Controller => "the controller",
            Driver::Foreground => "a foreground `executioner run`",
        }
    }
}

/// The newest run of each pipeline recorded Running whose owner is alive and is not this
/// process, leaving out `ours` (the runs this process drives).
pub async fn running_elsewhere(
    store: &Store,
    ours: &HashSet<RunId>,
) -> Result<HashMap<String, RunId>, StoreError> {
    let me = crate::engine::launch::this_process();
    let mut out = HashMap::new();
    for run in store.running_runs_not_owned_by(me.pid, &me.host).await? {
        if ours.contains(&run.id) || !owner_alive(&run) {
            continue;
        }
        // Oldest first: the newest of a pipeline wins.
        out.insert(run.pipeline.to_string(), run.id);
    }
    Ok(out)
}

/// The live runs of `pipeline` (owner alive), newest first.
pub async fn live_runs_of(store: &Store, pipeline: &str) -> Result<Vec<RunRow>, StoreError> {
    let mut runs = store.running_runs_of(pipeline).await?;
    runs.retain(owner_alive);
    Ok(runs)
}

/// Asks the foreground process driving `run` to cancel it (SIGTERM: `executioner run` and
/// `executioner resume` record the run Cancelled, as on Ctrl-C). False when the run is not a
/// live foreground run: the controller's (`controller`, as for [`Driver::of`]) is never
/// signalled (that would stop the controller).
pub fn cancel_foreground(run: &RunRow, controller: Option<&Owner>) -> bool {
    if Driver::of(run, controller) != Driver::Foreground || !owner_alive(run) {
        return false;
    }
    let Some(pid) = run.owner_pid.and_then(|p| i32::try_from(p).ok()) else {
        return false;
    };
    if pid <= 1 || pid == std::process::id() as i32 {
        return false;
    }
    // A second SIGTERM makes `executioner run` kill its jobs at once: each run is asked once.
    static ASKED: Mutex<Vec<(i64, Option<i64>, RunId)>> = Mutex::new(Vec::new());
    let key = (i64::from(pid), run.owner_start_time, run.id);
    {
        let mut asked = ASKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if asked.contains(&key) {
            return true;
        }
        asked.push(key);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .is_ok()
}

/// Holds `STATE/locks/NAME.lock` (an OS lock, released when dropped or when the process dies)
/// while a foreground `run` checks for a run in the way and records its own: two `run` started
/// at the same instant cannot both see none.
pub fn lock_pipeline(
    state_dir: &std::path::Path,
    pipeline: &str,
) -> std::io::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = crate::state_dir::pipeline_lock_path(state_dir, pipeline);
    let file = crate::state_dir::open_lock_file(&path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))
}

/// [`lock_pipeline`] without waiting, for the controller's launch (its actor never blocks on a
/// foreground `run`): `None` while another process holds it.
pub fn try_lock_pipeline(
    state_dir: &std::path::Path,
    pipeline: &str,
) -> std::io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let path = crate::state_dir::pipeline_lock_path(state_dir, pipeline);
    let file = crate::state_dir::open_lock_file(&path)?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(std::io::Error::from(errno)),
    }
}

/// Waits until `run` is no longer Running (its owner cancelled it, or died), polling the store;
/// false when it still runs after `limit`.
pub async fn wait_ended(
    store: &Store,
    run: RunId,
    limit: std::time::Duration,
) -> Result<bool, StoreError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match store.run(run).await? {
            Some(row) if !row.phase.is_terminal() && owner_alive(&row) => {}
            Some(_) | None => return Ok(true),
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Asks the controller to cancel its run `run` (for `run` under `Replace`): an empty
/// `STATE/requests/cancel-RUN`, which wakes the controller; the requester removes it when the run
/// ended (a leftover names a run that ended, and run ids are never reused).
pub fn request_cancel(
    state_dir: &std::path::Path,
    run: RunId,
) -> std::io::Result<std::path::PathBuf> {
    let dir = crate::state_dir::requests_dir(state_dir);
    crate::state_dir::create_private_dir(&dir)?;
    let path = dir.join(format!("cancel-{run}"));
    std::fs::write(&path, b"")?;
    Ok(path)
}

/// The runs whose cancellation was asked for with [`request_cancel`].
pub fn cancel_requests(state_dir: &std::path::Path) -> HashSet<RunId> {
    let Ok(entries) = std::fs::read_dir(crate::state_dir::requests_dir(state_dir)) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("cancel-")?
                .parse::<RunId>()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_owned_by(owner: &Owner, generation: i64) -> RunRow {
        RunRow {
            id: RunId::from(1),
            pipeline: "a".parse().unwrap(),
            generation,
            spec_json: String::new(),
            spec_hash: String::new(),
            phase: crate::status::RunPhase::Running,
            reason: None,
            rounds: 1,
            owner_pid: Some(i64::from(owner.pid)),
            owner_host: Some(owner.host.clone()),
            owner_start_time: owner.start_time.map(|t| t as i64),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn the_driver_is_told_by_the_owner_not_the_generation() {
        let me = crate::engine::launch::this_process();
        let other = Owner {
            pid: me.pid + 1,
            ..me.clone()
        };
        // A controller's run (generation 3) resumed by another process is that process's.
        assert_eq!(
            Driver::of(&run_owned_by(&other, 3), Some(&me)),
            Driver::Foreground
        );
        // The controller's own run, and a foreground run (generation 0) seen with no controller.
        assert_eq!(
            Driver::of(&run_owned_by(&me, 3), Some(&me)),
            Driver::Controller
        );
        assert_eq!(Driver::of(&run_owned_by(&me, 0), None), Driver::Foreground);
        // The same pid started at another time (reused) is not the controller.
        let reused = Owner {
            start_time: me.start_time.map(|t| t + 1),
            ..me.clone()
        };
        assert_eq!(
            Driver::of(&run_owned_by(&reused, 3), Some(&me)),
            Driver::Foreground
        );
    }
}

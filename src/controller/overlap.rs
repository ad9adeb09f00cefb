//! Runs of a pipeline that another live process drives in the same state folder, for
//! `concurrencyPolicy` (DESIGN 11): finding them (a run whose owner is gone does not count: the
//! same pid + start time check as crash recovery), telling who owns one, and asking a foreground
//! `executioner run` to cancel its run (SIGTERM, which that process records as a user's cancel),
//! or the controller to cancel one of its runs (a `cancel-RUN` request file it watches).
//! What to do about them is decided in `reconcile` and in `cli/run.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::engine::resume::owner_alive;
use crate::store::{RunId, RunRow, Store, StoreError};

/// Who drives a run in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// A controller (runs of a generation).
    Controller,
    /// A foreground `executioner run` (generation 0).
    Foreground,
}

impl Driver {
    pub fn of(run: &RunRow) -> Driver {
        if run.generation == 0 {
            Driver::Foreground
        } else {
            Driver::Controller
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

/// Asks the foreground process driving `run` to cancel it (SIGTERM: `executioner run` records
/// the run Cancelled, as on Ctrl-C). False when the run is not a live foreground run: a
/// controller's run is never signalled (that would stop the controller).
pub fn cancel_foreground(run: &RunRow) -> bool {
    if Driver::of(run) != Driver::Foreground || !owner_alive(run) {
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

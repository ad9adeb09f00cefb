//! The controller's watcher: inotify on the manifests folder and on the requests folder
//! (`STATE/requests`), which of its events can mean a change, and the request files that
//! `executioner rerun` leaves there to wake a running controller. What a change means is not
//! decided here: the actor reads the folder (`folder`) and the store whatever woke it.

use std::path::Path;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use crate::store::{Store, StoreError};

use super::{ControllerEvent, ControllerOptions, Wake};

/// The watcher and the resync interval: the configured one, or, when the folders cannot be
/// watched (out of inotify watches), no watcher and a rescan every second, said as a warning.
pub(super) fn watch_or_rescan(
    opts: &ControllerOptions,
    wake: mpsc::UnboundedSender<Wake>,
    events: &mpsc::UnboundedSender<ControllerEvent>,
) -> (Option<notify::RecommendedWatcher>, Duration) {
    match watch(&opts.manifests_dir, &opts.state_dir, wake) {
        Ok(watcher) => {
            let resync = opts.config.resync_interval.as_std();
            (Some(watcher), resync.max(Duration::from_millis(100)))
        }
        Err(e) => {
            let _ = events.send(ControllerEvent::Warning(format!(
                "cannot watch {} ({e}); falling back to a rescan every second",
                opts.manifests_dir.display()
            )));
            (None, Duration::from_secs(1))
        }
    }
}

/// Watches the manifests folder and the requests folder (made if missing); every event becomes a
/// [`Wake`].
fn watch(
    manifests: &Path,
    state_dir: &Path,
    wake: mpsc::UnboundedSender<Wake>,
) -> notify::Result<notify::RecommendedWatcher> {
    let requests = crate::state_dir::requests_dir(state_dir);
    let _ = crate::state_dir::create_private_dir(&requests);
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = wake.send(Wake::Files(res));
    })?;
    if crate::failpoint::fails("watch") {
        // What running out of inotify watches looks like to us (tests only).
        return Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch));
    }
    watcher.watch(manifests, notify::RecursiveMode::NonRecursive)?;
    watcher.watch(&requests, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether a folder event can mean a changed manifest or request (reads and opens cannot).
pub(super) fn relevant(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// Asks a running controller for a new run of `name` (through the store and a request file the
/// controller watches). False when the pipeline is unknown.
pub async fn request_rerun(
    store: &Store,
    state_dir: &Path,
    name: &str,
    params: &indexmap::IndexMap<String, String>,
) -> Result<bool, StoreError> {
    if !store.request_rerun_with_params(name, params).await? {
        return Ok(false);
    }
    let dir = crate::state_dir::requests_dir(state_dir);
    let _ = crate::state_dir::create_private_dir(&dir);
    let _ = std::fs::write(dir.join(format!("rerun-{name}")), b"");
    Ok(true)
}

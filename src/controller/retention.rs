//! History retention as the controller applies it: after runs end, the history beyond each
//! pipeline's policy is pruned, at most once a minute, on a task of its own so that a long prune
//! never holds up the reconcile loop. Also where a pipeline's policy comes from ([`policies`]),
//! which `executioner gc` shares. The SQL, the file removal and the vacuum are
//! `store::retention`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::HistoryConfig;
use crate::spec::{History, Pinned};
use crate::store::retention::{Policies, PruneMode, RetentionPolicy};
use crate::store::{Store, StoreError};

use super::ControllerEvent;
use super::folder::Folder;

/// The shortest time between two prunes of the controller.
pub const PERIOD: Duration = Duration::from_secs(60);

/// What the manifests folder says about retention: each valid pipeline's `spec.history`, and the
/// names held by invalid manifests (a pipeline whose manifest is only being edited keeps the
/// policy it last ran with, and is not taken for deleted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FolderHistory {
    own: BTreeMap<String, Option<History>>,
    invalid: BTreeSet<String>,
}

impl FolderHistory {
    pub fn of(folder: &Folder) -> FolderHistory {
        FolderHistory {
            own: folder
                .desired
                .values()
                .map(|d| (d.name.clone(), d.manifest.spec.history))
                .collect(),
            invalid: folder
                .invalid
                .iter()
                .filter_map(|i| i.name.clone())
                .collect(),
        }
    }
}

/// Each pipeline's retention policy, every field its manifest's `spec.history` leaves out taken
/// from the configuration. The manifest is the one in the manifests folder; for a pipeline no
/// controller has seen (only run with `executioner run`) or whose manifest is invalid right now,
/// the one its latest run pinned. A pipeline whose manifest was deleted follows the
/// configuration alone.
pub async fn policies(
    store: &Store,
    config: &HistoryConfig,
    folder: &FolderHistory,
) -> Result<Policies, StoreError> {
    let managed: BTreeSet<String> = store
        .pipelines()
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut pipelines = BTreeMap::new();
    for run in store.latest_runs().await? {
        let name = run.pipeline.as_str();
        let deleted = managed.contains(name) && !folder.invalid.contains(name);
        if folder.own.contains_key(name) || deleted {
            continue;
        }
        // A pinned spec that no longer reads (written by another version) gets the default.
        if let Ok(pinned) = Pinned::from_json(&run.spec_json) {
            let history = pinned.manifest.spec.history;
            pipelines.insert(name.to_owned(), policy(config, history.as_ref()));
        }
    }
    for (name, history) in &folder.own {
        pipelines.insert(name.clone(), policy(config, history.as_ref()));
    }
    Ok(Policies {
        default: policy(config, None),
        pipelines,
    })
}

/// `spec.history` over the configuration's `history`.
fn policy(config: &HistoryConfig, own: Option<&History>) -> RetentionPolicy {
    RetentionPolicy {
        keep_runs: own.and_then(|h| h.keep_runs).unwrap_or(config.keep_runs),
        keep_for: own
            .and_then(|h| h.keep_for)
            .unwrap_or(config.keep_for)
            .as_std(),
    }
}

/// The controller's pruning task, fed after every run's end.
#[derive(Debug)]
pub(super) struct Pruner {
    wanted: watch::Sender<Option<FolderHistory>>,
    task: JoinHandle<()>,
}

impl Pruner {
    pub(super) fn start(
        store: Store,
        state_dir: PathBuf,
        config: HistoryConfig,
        events: mpsc::UnboundedSender<ControllerEvent>,
    ) -> Pruner {
        let (wanted, asked) = watch::channel(None);
        let task = tokio::spawn(throttled(asked, PERIOD, move |folder: FolderHistory| {
            let (store, state_dir, config, events) = (
                store.clone(),
                state_dir.clone(),
                config.clone(),
                events.clone(),
            );
            async move {
                let done = async {
                    let policies = policies(&store, &config, &folder).await?;
                    let now = time::OffsetDateTime::now_utc();
                    store
                        .prune_history(&state_dir, &policies, now, PruneMode::Delete)
                        .await
                };
                match done.await {
                    Ok(report) => {
                        for (dir, e) in &report.leftovers {
                            let _ = events.send(ControllerEvent::Warning(format!(
                                "history: cannot remove {} ({e})",
                                dir.display()
                            )));
                        }
                        if !report.runs.is_empty() {
                            let _ = events.send(ControllerEvent::HistoryPruned {
                                runs: report.runs.len(),
                                log_bytes: report.runs.iter().map(|r| r.log_bytes).sum(),
                            });
                        }
                    }
                    Err(e) => {
                        let _ = events.send(ControllerEvent::Warning(format!(
                            "history: cannot prune: {}",
                            crate::error_chain::render(&e)
                        )));
                    }
                }
            }
        }));
        Pruner { wanted, task }
    }

    /// A run ended: the history is pruned with the folder's policies now, or once a minute has
    /// passed since the last prune (a prune already waiting takes the newest folder).
    pub(super) fn run_ended(&self, folder: &Folder) {
        self.wanted.send_replace(Some(FolderHistory::of(folder)));
    }

    /// Lets a prune under way finish (its rows and files go together); one still waiting for its
    /// minute is dropped, the next run's end asks again.
    pub(super) async fn stop(self) {
        drop(self.wanted);
        let _ = self.task.await;
    }
}

/// Calls `pass` with the newest value each time one is sent, but never twice within `period`:
/// values sent meanwhile are folded into one call at the end of the period. Ends when the sender
/// is dropped, after the pass under way, without the one waiting.
async fn throttled<T, F, Fut>(mut asked: watch::Receiver<Option<T>>, period: Duration, mut pass: F)
where
    T: Clone,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut last: Option<Instant> = None;
    while asked.changed().await.is_ok() {
        if let Some(last) = last {
            let due = last + period;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    sent = asked.changed() => if sent.is_err() { return },
                }
            }
        }
        let Some(value) = asked.borrow_and_update().clone() else {
            continue;
        };
        last = Some(Instant::now());
        pass(value).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Runs ending in a burst cost one prune now and one at the end of the minute, with the newest
    /// value; a lone end after a quiet minute is pruned at once.
    #[tokio::test(start_paused = true)]
    async fn at_most_one_prune_a_minute() {
        let start = Instant::now();
        let passes: Arc<Mutex<Vec<(Duration, u32)>>> = Arc::default();
        let (tx, rx) = watch::channel(None);
        let seen = passes.clone();
        let task = tokio::spawn(throttled(rx, PERIOD, move |value: u32| {
            let seen = seen.clone();
            async move { seen.lock().unwrap().push((start.elapsed(), value)) }
        }));
        let at = |secs: u64| tokio::time::sleep_until(start + Duration::from_secs(secs));

        tx.send_replace(Some(1));
        at(1).await;
        tx.send_replace(Some(2));
        at(10).await;
        tx.send_replace(Some(3));
        at(59).await;
        assert_eq!(*passes.lock().unwrap(), [(Duration::ZERO, 1)]);
        at(61).await;
        assert_eq!(
            *passes.lock().unwrap(),
            [(Duration::ZERO, 1), (Duration::from_secs(60), 3)]
        );
        // Quiet for more than a minute: the next end is pruned at once.
        at(200).await;
        tx.send_replace(Some(4));
        at(201).await;
        assert_eq!(
            passes.lock().unwrap().last(),
            Some(&(Duration::from_secs(200), 4))
        );
        assert_eq!(passes.lock().unwrap().len(), 3);

        // A prune waiting for its minute is dropped with the sender.
        tx.send_replace(Some(5));
        at(210).await;
        drop(tx);
        task.await.unwrap();
        assert_eq!(passes.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_spec_field_left_out_takes_the_configuration() {
        let config = HistoryConfig::default();
        let own = History {
            keep_runs: Some(5),
            keep_for: None,
        };
        assert_eq!(
            policy(&config, Some(&own)),
            RetentionPolicy {
                keep_runs: 5,
                keep_for: config.keep_for.as_std()
            }
        );
        assert_eq!(
            policy(&config, None),
            RetentionPolicy {
                keep_runs: 100,
                keep_for: Duration::from_secs(30 * 24 * 3600)
            }
        );
    }
}

//! Writes the status files of the manifests folder (`.status/NAME.yaml`). A pipeline's status is
//! built from the store when its run starts, when its manifest or generation changes and after its
//! run ends (the store is the source of truth); while it runs, the engine's progress events
//! ([`RunEvent`]) are applied to the status in memory, and the file is rewritten once per burst
//! of events (coalesced), only when its text changed, by temp file and rename. Building a status
//! document is `observe`'s job; deciding when a pipeline's status may be stale is `reconcile`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::RunEvent;
use crate::status::file::{PipelinePhase, PipelineStatusDoc, Progress, status_path, write_atomic};
use crate::status::{JobPhase, format_time};
use crate::store::{RunId, RunRow, Store, StoreError};

use super::ControllerEvent;
use super::folder::Folder;
use super::observe::{self, Dirs};

/// How long the events of a running pipeline are gathered before its status file is rewritten:
/// a burst of events costs one write.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The inputs of a status file that can change while its pipeline is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusKey {
    generation: Option<i64>,
    run: Option<(RunId, PipelinePhase, Option<String>)>,
    invalid: Option<String>,
}

/// The key of a status document just built.
fn status_key(doc: &PipelineStatusDoc) -> StatusKey {
    let invalid = doc.invalid_message().map(str::to_owned);
    StatusKey {
        generation: Some(doc.metadata.generation).filter(|g| *g > 0),
        run: doc
            .status
            .run_id
            .map(|id| (id, doc.status.phase, doc.status.finished_at.clone())),
        invalid,
    }
}

/// The status of a pipeline that runs here.
#[derive(Debug)]
struct Live {
    run: RunId,
    /// The run's job ids, by the engine's job index.
    jobs: Vec<String>,
    /// Built from the store, then kept up to date from the run's events; `None` when it is to be
    /// built again from the store (not yet built, or built before the run had started).
    doc: Option<PipelineStatusDoc>,
    /// Events were applied since the file was last written.
    changed: bool,
}

#[derive(Debug)]
pub struct StatusWriter {
    manifests_dir: PathBuf,
    state_dir: PathBuf,
    events: mpsc::UnboundedSender<ControllerEvent>,
    /// What each status file was last written from, and its text.
    written: HashMap<String, (StatusKey, String)>,
    live: HashMap<String, Live>,
    /// When the events gathered are to be written.
    flush_at: Option<Instant>,
}

impl StatusWriter {
    pub fn new(
        manifests_dir: PathBuf,
        state_dir: PathBuf,
        events: mpsc::UnboundedSender<ControllerEvent>,
    ) -> Self {
        StatusWriter {
            manifests_dir,
            state_dir,
            events,
            written: HashMap::new(),
            live: HashMap::new(),
            flush_at: None,
        }
    }

    /// A run of `name` starts here: its events will reach its status.
    pub fn run_started(&mut self, name: &str, run: RunId, jobs: Vec<String>) {
        self.live.insert(
            name.to_owned(),
            Live {
                run,
                jobs,
                doc: None,
                changed: false,
            },
        );
    }

    /// The run of `name` ended here (or was interrupted): its status comes from the store again.
    pub fn run_ended(&mut self, name: &str) {
        self.live.remove(name);
    }

    /// When the events gathered are due to be written, if any are.
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Applies a progress event of run `run` of `name` to its status in memory.
    pub fn apply(&mut self, name: &str, run: RunId, event: &RunEvent) {
        let Some(live) = self.live.get_mut(name).filter(|l| l.run == run) else {
            // The run already ended: its status was built from the store.
            return;
        };
        live.changed = true;
        self.flush_at
            .get_or_insert_with(|| Instant::now() + COALESCE);
        let Some(doc) = live.doc.as_mut() else {
            return;
        };
        if doc.status.run_id != Some(run) || doc.status.phase != PipelinePhase::Running {
            // Built before the run had started: the store says when it did.
            live.doc = None;
            return;
        }
        let index = match event {
            RunEvent::JobSkipped { job, .. }
            | RunEvent::AttemptStarted { job, .. }
            | RunEvent::JobWaiting { job }
            | RunEvent::SensorPassed { job }
            | RunEvent::NoWorker { job, .. }
            | RunEvent::AttemptFailedWillRetry { job, .. }
            | RunEvent::JobFinished { job, .. } => *job,
        };
        let Some(job) = live
            .jobs
            .get(index)
            .and_then(|id| doc.status.jobs.get_mut(id))
        else {
            live.doc = None;
            return;
        };
        // The same changes as the store's (store/batch.rs), with this process's clock.
        let now = || format_time(time::OffsetDateTime::now_utc());
        match event {
            RunEvent::JobSkipped { .. } => {
                job.phase = JobPhase::Skipped;
                job.finished_at = Some(now());
            }
            RunEvent::AttemptStarted { .. } => {
                job.phase = JobPhase::Running;
                job.attempts += 1;
                job.exit_code = None;
                job.started_at.get_or_insert_with(now);
                job.finished_at = None;
            }
            RunEvent::JobWaiting { .. } => {
                job.phase = JobPhase::Waiting;
                job.started_at.get_or_insert_with(now);
                job.finished_at = None;
            }
            RunEvent::SensorPassed { .. } => job.phase = JobPhase::Running,
            RunEvent::NoWorker { waiting, .. } => {
                (job.phase, job.reason) = if *waiting {
                    (JobPhase::Pending, Some(crate::status::JobReason::NoWorker))
                } else {
                    (JobPhase::Running, None)
                };
            }
            // The job stays Running until its next attempt.
            RunEvent::AttemptFailedWillRetry { .. } => {}
            RunEvent::JobFinished {
                phase, exit_code, ..
            } => {
                job.phase = *phase;
                job.exit_code = exit_code.map(i64::from);
                job.finished_at = phase.is_terminal().then(now);
            }
        }
        let mut progress = Progress {
            total: doc.status.jobs.len(),
            ..Progress::default()
        };
        for j in doc.status.jobs.values() {
            observe::count_job(&mut progress, j.phase, j.reason);
        }
        doc.status.progress = progress;
        if progress.running + progress.pending == 0 {
            // Its last job ended: the run's end is what readers of the file wait for, so it is
            // written at once rather than with the burst.
            self.flush_at = Some(Instant::now());
        }
    }

    /// Writes the statuses the events gathered changed.
    pub async fn flush(&mut self, store: &Store, folder: &Folder) -> Result<(), StoreError> {
        self.flush_at = None;
        let mut names: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| l.changed)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        for name in names {
            let Some(live) = self.live.get_mut(&name) else {
                continue;
            };
            live.changed = false;
            if !folder.desired.contains_key(&name) && folder.invalid_named(&name).is_none() {
                // Its manifest is gone (the run is being cancelled): it has no status file.
                continue;
            }
            match &live.doc {
                Some(doc) => {
                    let (key, text) = (status_key(doc), doc.to_yaml());
                    self.put(&name, key, text);
                }
                None => self.write(store, folder, &name).await?,
            }
        }
        Ok(())
    }

    /// Rewrites the status file of `name` from the store when its content differs (so a file
    /// deleted or edited behind the controller's back is restored).
    pub async fn write(
        &mut self,
        store: &Store,
        folder: &Folder,
        name: &str,
    ) -> Result<(), StoreError> {
        let (source, invalid, suspended) = match folder.desired.get(name) {
            Some(d) => (d.source.clone(), None, d.manifest.spec.suspend),
            None => match folder.invalid_named(name) {
                Some(i) => (i.source.clone(), Some(i.clone()), false),
                None => return Ok(()),
            },
        };
        let row = store.pipeline(name).await?;
        let dirs = Dirs {
            state: &self.state_dir,
            manifests: &self.manifests_dir,
        };
        let doc = observe::pipeline_status(
            store,
            dirs,
            name,
            &source,
            row.as_ref(),
            invalid.as_ref(),
            suspended,
        )
        .await?;
        let _ = self.events.send(ControllerEvent::StatusBuilt {
            pipeline: name.to_owned(),
            phase: doc.status.phase,
        });
        let (key, text) = (status_key(&doc), doc.to_yaml());
        if let Some(live) = self.live.get_mut(name) {
            live.doc = Some(doc);
        }
        self.put(name, key, text);
        Ok(())
    }

    /// Every pipeline's status file, skipping (cheaply) those not running whose run, generation
    /// and validity are what was last written and whose file still holds that text.
    pub async fn write_all(
        &mut self,
        store: &Store,
        folder: &Folder,
        generations: &HashMap<String, i64>,
    ) -> Result<(), StoreError> {
        let mut names: Vec<String> = folder.desired.keys().cloned().collect();
        for n in folder.invalid.iter().filter_map(|i| i.name.as_ref()) {
            if !folder.desired.contains_key(n) && !names.contains(n) {
                names.push(n.clone());
            }
        }
        let latest: HashMap<String, RunRow> = store
            .latest_runs()
            .await?
            .into_iter()
            .map(|r| (r.pipeline.to_string(), r))
            .collect();
        for name in names {
            if !self.live.contains_key(&name)
                && let Some((key, text)) = self.written.get(&name)
                && *key == cheap_key(folder, generations, &name, latest.get(&name))
                && std::fs::read_to_string(status_path(&self.manifests_dir, &name))
                    .ok()
                    .as_deref()
                    == Some(text.as_str())
            {
                continue;
            }
            self.write(store, folder, &name).await?;
        }
        Ok(())
    }

    /// The pipeline is deleted: so is its status file.
    pub fn remove(&mut self, name: &str) {
        self.written.remove(name);
        self.live.remove(name);
        let _ = std::fs::remove_file(status_path(&self.manifests_dir, name));
    }

    /// Writes `text` to the status file of `name` unless it already holds it.
    fn put(&mut self, name: &str, key: StatusKey, text: String) {
        let path = status_path(&self.manifests_dir, name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str())
            && let Err(e) = write_atomic(&path, &text)
        {
            let _ = self.events.send(ControllerEvent::Warning(format!(
                "cannot write {}: {e}",
                path.display()
            )));
        }
        self.written.insert(name.to_owned(), (key, text));
    }
}

/// What decides a pipeline's status besides its run's jobs (which only change while it runs).
fn cheap_key(
    folder: &Folder,
    generations: &HashMap<String, i64>,
    name: &str,
    run: Option<&RunRow>,
) -> StatusKey {
    StatusKey {
        generation: generations.get(name).copied(),
        run: run.map(|r| {
            (
                r.id,
                r.phase.into(),
                r.finished_at.map(crate::status::format_time),
            )
        }),
        invalid: folder.invalid_named(name).map(|i| i.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::controller::permissions::Trust;
    use crate::status::JobReason;
    use crate::status::file::{JobStatus, PipelineStatus, StatusMetadata};
    use crate::store::Durability;
    use crate::validate::Options;

    fn running_doc(run: RunId, jobs: &[&str]) -> PipelineStatusDoc {
        let job = JobStatus {
            phase: JobPhase::Pending,
            reason: None,
            attempts: 0,
            exit_code: None,
            started_at: None,
            finished_at: None,
            log: None,
        };
        PipelineStatusDoc {
            api_version: crate::spec::API_VERSION.to_owned(),
            kind: "PipelineStatus".to_owned(),
            metadata: StatusMetadata {
                name: "p".into(),
                source: "p.yaml".into(),
                generation: 1,
                revision: None,
            },
            status: PipelineStatus {
                phase: PipelinePhase::Running,
                observed_generation: Some(1),
                run_id: Some(run),
                started_at: None,
                finished_at: None,
                progress: Progress {
                    total: jobs.len(),
                    pending: jobs.len(),
                    ..Progress::default()
                },
                conditions: Vec::new(),
                jobs: jobs
                    .iter()
                    .map(|j| ((*j).to_owned(), job.clone()))
                    .collect(),
            },
        }
    }

    /// Events are applied in memory and a burst of them costs one write, only of changed text.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_write_of_the_status_the_events_say() {
        let tmp = tempfile::tempdir().unwrap();
        let manifests = tmp.path().join("manifests");
        std::fs::create_dir_all(manifests.join(".status")).unwrap();
        let store = Store::open(&tmp.path().join("state"), Durability::Normal)
            .await
            .unwrap();
        let (events, _rx) = mpsc::unbounded_channel();
        let mut writer = StatusWriter::new(manifests.clone(), tmp.path().join("state"), events);
        std::fs::write(
            manifests.join("p.yaml"),
            "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: p\nspec:\n  jobs:\n    - {id: a, command: \"true\"}\n",
        )
        .unwrap();
        let trust = Trust::from_config(&crate::config::SecurityConfig::default()).unwrap();
        let folder = crate::controller::folder::read_folder(
            &manifests,
            &Options::default(),
            &trust,
            &HashMap::new(),
        )
        .unwrap();
        assert!(folder.desired.contains_key("p"));
        writer.run_started(
            "p",
            RunId::from(7),
            vec!["a".into(), "b".into(), "c".into()],
        );
        writer.live.get_mut("p").unwrap().doc = Some(running_doc(RunId::from(7), &["a", "b", "c"]));
        assert_eq!(writer.flush_at(), None);

        let due = Instant::now() + COALESCE;
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::AttemptStarted { job: 0, attempt: 1 },
        );
        tokio::time::advance(Duration::from_millis(40)).await;
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::JobFinished {
                job: 0,
                phase: JobPhase::Succeeded,
                reason: JobReason::Completed,
                exit_code: Some(0),
            },
        );
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::AttemptStarted { job: 1, attempt: 1 },
        );
        writer.apply("p", RunId::from(7), &RunEvent::JobWaiting { job: 1 });
        // Events of another run of the pipeline (one that already ended) change nothing.
        writer.apply(
            "p",
            RunId::from(6),
            &RunEvent::JobSkipped {
                job: 2,
                reason: JobReason::Completed,
            },
        );
        assert_eq!(
            writer.flush_at(),
            Some(due),
            "coalesced from the first event"
        );

        writer.flush(&store, &folder).await.unwrap();
        assert_eq!(writer.flush_at(), None);
        let path = status_path(&manifests, "p");
        let doc: PipelineStatusDoc =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let jobs = &doc.status.jobs;
        assert_eq!(jobs["a"].phase, JobPhase::Succeeded);
        assert_eq!((jobs["a"].attempts, jobs["a"].exit_code), (1, Some(0)));
        assert!(jobs["a"].finished_at.is_some());
        assert_eq!(jobs["b"].phase, JobPhase::Waiting);
        assert!(jobs["b"].started_at.is_some() && jobs["b"].finished_at.is_none());
        assert_eq!(jobs["c"].phase, JobPhase::Pending);
        let want = Progress {
            total: 3,
            succeeded: 1,
            running: 1,
            pending: 1,
            ..Progress::default()
        };
        assert_eq!(doc.status.progress, want);

        // An event that changes nothing of the text: no write.
        let inode = std::fs::metadata(&path).unwrap().ino();
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::AttemptFailedWillRetry {
                job: 1,
                attempt: 1,
                reason: JobReason::ExitCode,
                delay: Duration::from_secs(1),
            },
        );
        writer.flush(&store, &folder).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);

        // The last job ending is written at once, not with the burst.
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::JobFinished {
                job: 1,
                phase: JobPhase::Failed,
                reason: JobReason::ExitCode,
                exit_code: Some(3),
            },
        );
        assert_eq!(writer.flush_at(), Some(Instant::now() + COALESCE));
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::JobSkipped {
                job: 2,
                reason: JobReason::UpstreamFailed,
            },
        );
        assert_eq!(writer.flush_at(), Some(Instant::now()));
        writer.flush(&store, &folder).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("failed: 1") && text.contains("skipped: 1"),
            "{text}"
        );

        // The run ended: its events no longer reach the file (the store's view is written).
        writer.run_ended("p");
        writer.apply(
            "p",
            RunId::from(7),
            &RunEvent::JobSkipped {
                job: 2,
                reason: JobReason::Completed,
            },
        );
        assert_eq!(writer.flush_at(), None);

        // Deleted while its run is being cancelled: the events of the run write no file.
        writer.run_started(
            "p",
            RunId::from(8),
            vec!["a".into(), "b".into(), "c".into()],
        );
        writer.live.get_mut("p").unwrap().doc = Some(running_doc(RunId::from(8), &["a", "b", "c"]));
        writer.remove("p");
        assert!(!path.exists());
        writer.apply(
            "p",
            RunId::from(8),
            &RunEvent::AttemptStarted { job: 0, attempt: 1 },
        );
        writer.flush(&store, &Folder::default()).await.unwrap();
        assert!(!path.exists());
        // Nor does a flush of a pipeline its folder no longer has.
        writer.run_started(
            "p",
            RunId::from(9),
            vec!["a".into(), "b".into(), "c".into()],
        );
        writer.live.get_mut("p").unwrap().doc = Some(running_doc(RunId::from(9), &["a", "b", "c"]));
        writer.apply(
            "p",
            RunId::from(9),
            &RunEvent::AttemptStarted { job: 0, attempt: 1 },
        );
        writer.flush(&store, &Folder::default()).await.unwrap();
        assert!(!path.exists());
    }
}

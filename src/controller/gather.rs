//! What the actor gathers before each decision: the folder's specs recorded in the store (which
//! counts generations), the latest run of each pipeline's current generation, and this
//! controller's own runs as the decision sees them (each costs no store access when nothing
//! changed), and the verdict of a controller that stops. It neither decides (`reconcile`) nor
//! starts anything (`runs`).

use std::collections::HashMap;

use crate::status::RunPhase;
use crate::store::{PipelineRow, StoreError};

use super::Controller;
use super::folder::Folder;
use super::reconcile::{ActiveRun, LatestRun};

impl Controller {
    /// Tells the store each pipeline of the folder (it counts generations); an unchanged pipeline
    /// costs no write. Returns each one's current generation.
    pub(super) async fn record_specs(
        &mut self,
        folder: &Folder,
        rows: &HashMap<String, PipelineRow>,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let mut generations = HashMap::new();
        let mut revision = crate::revision::FolderRevision::new(&self.opts.manifests_dir);
        for d in folder.desired.values() {
            let known = self
                .observed
                .get(&d.name)
                .filter(|(hash, source, _)| *hash == d.spec_hash && *source == d.source)
                .map(|(_, _, g)| *g)
                .filter(|_| rows.get(&d.name).is_some_and(|r| !r.deleted));
            let generation = match known {
                Some(g) => g,
                None => {
                    let g = self
                        .store
                        .observe_pipeline(&d.name, &d.spec_hash, &d.source)
                        .await?;
                    if let Some(revision) = revision.get().await {
                        self.store.record_revision(&d.name, g, revision).await?;
                    }
                    self.observed
                        .insert(d.name.clone(), (d.spec_hash.clone(), d.source.clone(), g));
                    self.dirty.insert(d.name.clone());
                    g
                }
            };
            generations.insert(d.name.clone(), generation);
        }
        Ok(generations)
    }

    /// The latest run of the current generation of each pipeline not running here, except those
    /// already known to have a terminal one and with nothing asking for another (no rerun
    /// request, no schedule): those cost no query.
    pub(super) async fn latest_runs(
        &mut self,
        folder: &Folder,
        rows: &HashMap<String, PipelineRow>,
        generations: &HashMap<String, i64>,
    ) -> Result<HashMap<String, LatestRun>, StoreError> {
        let mut latest = HashMap::new();
        for d in folder.desired.values() {
            let Some(&generation) = generations.get(&d.name) else {
                continue;
            };
            let rerun_requested = rows.get(&d.name).is_some_and(|r| r.rerun_requested);
            if self.active.contains_key(&d.name)
                || self.faulted.contains_key(&d.name)
                || (self.settled.get(&d.name) == Some(&generation)
                    && !rerun_requested
                    && d.manifest.spec.schedule.is_none())
            {
                continue;
            }
            let run = self
                .store
                .latest_run_of_generation(&d.name, generation)
                .await?;
            let seen = match run {
                None => LatestRun::None,
                Some(r) if !r.phase.is_terminal() => LatestRun::Unfinished,
                Some(_) => {
                    self.settled.insert(d.name.clone(), generation);
                    LatestRun::Terminal
                }
            };
            latest.insert(d.name.clone(), seen);
        }
        Ok(latest)
    }

    /// This controller's runs, by pipeline: those executing and those waiting to be recovered
    /// after a fault (the decision starts no other run of their pipelines meanwhile).
    pub(super) fn own_runs(&self) -> HashMap<String, ActiveRun> {
        let executing = self.active.iter().map(|(name, a)| {
            let run = ActiveRun {
                run: a.run,
                generation: a.generation,
                cancelling: a.cancelling,
            };
            (name.clone(), run)
        });
        let faulted = self.faulted.iter().map(|(name, f)| {
            let run = ActiveRun {
                run: f.run,
                generation: f.generation,
                cancelling: false,
            };
            (name.clone(), run)
        });
        executing.chain(faulted).collect()
    }

    /// True when no manifest is invalid and every pipeline's latest run succeeded.
    pub(super) async fn all_succeeded(&self) -> Result<bool, StoreError> {
        let folder = self.reader.folder();
        if !folder.invalid.is_empty() {
            return Ok(false);
        }
        for name in folder.desired.keys() {
            match self.store.latest_run(name).await? {
                Some(r) if r.phase == RunPhase::Succeeded => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }
}

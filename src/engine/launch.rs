//! Creating runs and resume rounds, shared by `executioner run`, `resume` and the controller: the
//! pinned spec a run keeps, the first round of a new run, and the next round of an existing one
//! (after recovering attempts that an executioner left behind when it died).

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::scheduler::Start;
use crate::spec::Manifest;
use crate::status::RunPhase;
use crate::store::{NewJob, NewRun, Owner, RunRow, Store, StoreError};

use super::RunRequest;
use super::plan::{self, Plan, PlanError};
use super::resume;

/// What a run pins: the manifest, where its relative paths start, and the command-line layers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pinned {
    pub manifest: Manifest,
    pub base_dir: PathBuf,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub skip: Vec<String>,
}

impl Pinned {
    pub fn new(
        manifest: Manifest,
        base_dir: &Path,
        env: IndexMap<String, String>,
        skip: Vec<String>,
    ) -> Self {
        let base_dir = if base_dir.is_absolute() {
            base_dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|c| c.join(base_dir))
                .unwrap_or_else(|_| base_dir.to_path_buf())
        };
        Self {
            manifest,
            base_dir,
            env,
            skip,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a run's pinned spec back.
    pub fn from_run(run: &RunRow) -> Result<Pinned, serde_json::Error> {
        serde_json::from_str(&run.spec_json)
    }

    /// The plan of this spec, against the current process environment.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        let process_env: IndexMap<String, String> = std::env::vars().collect();
        Plan::new(
            &self.manifest,
            &self.base_dir,
            &process_env,
            self.env.clone(),
        )
    }
}

/// This process, as the owner of the runs it executes.
pub fn this_process() -> Owner {
    let pid = std::process::id();
    Owner {
        pid,
        host: resume::hostname(),
        start_time: crate::process::read_start_time(pid as i32),
    }
}

/// Records a new run of `plan` (all jobs Pending) and returns its first round.
pub async fn new_run(
    store: &Store,
    plan: &Plan,
    pinned: &Pinned,
    generation: i64,
    owner: &Owner,
) -> Result<RunRequest, StoreError> {
    // Log files live at logs/PIPELINE/RUN/JOB.log; the run id is the database's to allocate, so
    // the row keeps the file name and readers rebuild the path (engine::job_log_path).
    let files: Vec<String> = plan.jobs.iter().map(|j| format!("{}.log", j.id)).collect();
    let jobs: Vec<NewJob<'_>> = plan
        .jobs
        .iter()
        .zip(&files)
        .map(|(j, log)| NewJob {
            id: &j.id,
            log_path: log,
        })
        .collect();
    let run_id = store
        .create_run(&NewRun {
            pipeline: &plan.pipeline,
            generation,
            spec_json: &pinned.to_json(),
            spec_hash: &plan::spec_hash(&pinned.manifest),
            jobs: &jobs,
            owner,
        })
        .await?;
    let starts = plan
        .jobs
        .iter()
        .map(|j| {
            if pinned.skip.contains(&j.id) {
                Start::SkipByUser
            } else {
                Start::Run
            }
        })
        .collect();
    Ok(RunRequest {
        run_id,
        round: 1,
        starts,
        previous_attempts: vec![0; plan.jobs.len()],
        lost: vec![0; plan.jobs.len()],
    })
}

/// What asking for another round of a run decided.
#[derive(Debug)]
pub enum Round {
    /// A new round to execute; `lost` lists the jobs whose attempts were recovered as Lost.
    Next {
        request: RunRequest,
        rerun: Vec<String>,
        lost: Vec<String>,
    },
    /// The run already succeeded.
    AlreadySucceeded,
    /// Nothing is left to run again.
    NothingToDo,
    /// Another live process executes it.
    OwnedElsewhere { pid: i64, host: String },
}

/// Recovers a run left Running by a dead executioner (if so), then opens its next round.
pub async fn next_round(
    store: &Store,
    run: &RunRow,
    plan: &Plan,
    failed_only: bool,
    owner: &Owner,
) -> Result<Round, StoreError> {
    let mut lost = Vec::new();
    if run.phase == RunPhase::Running {
        if resume::owner_alive(run) {
            return Ok(Round::OwnedElsewhere {
                pid: run.owner_pid.unwrap_or_default(),
                host: run.owner_host.clone().unwrap_or_default(),
            });
        }
        lost = resume::recover(store, run).await?;
    } else if run.phase == RunPhase::Succeeded {
        return Ok(Round::AlreadySucceeded);
    }
    let rows = store.jobs(run.id).await?;
    let decided = resume::plan_resume(plan, &rows, failed_only);
    if decided.rerun.is_empty() {
        if run.phase == RunPhase::Running {
            // Everything had ended before the crash: close the run as its jobs say.
            let failed = rows
                .iter()
                .any(|r| r.phase == crate::status::JobPhase::Failed);
            let (phase, reason) = if failed {
                (RunPhase::Failed, crate::status::Reason::JobsFailed)
            } else {
                (RunPhase::Succeeded, crate::status::Reason::AllSucceeded)
            };
            store.finish_run(run.id, phase, Some(reason)).await?;
        }
        return Ok(Round::NothingToDo);
    }
    let rerun: Vec<&str> = decided.rerun.iter().map(String::as_str).collect();
    let round = store.begin_round(run.id, &rerun, owner).await?;
    let previous_attempts = resume::previous_attempts(store, run.id, plan).await?;
    let rows = store.jobs(run.id).await?;
    let lost_counts = plan
        .jobs
        .iter()
        .map(|j| rows.iter().find(|r| r.job_id == j.id).map_or(0, |r| r.lost))
        .collect();
    Ok(Round::Next {
        request: RunRequest {
            run_id: run.id,
            round,
            starts: decided.starts,
            previous_attempts,
            lost: lost_counts,
        },
        rerun: decided.rerun,
        lost,
    })
}

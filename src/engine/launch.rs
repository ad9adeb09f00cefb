//! Creating runs and resume rounds, shared by `executioner run`, `resume` and the controller: the
//! plan of the pinned spec a run keeps, the first round of a new run, and the next round of an existing one
//! (after recovering attempts that an executioner left behind when it died).

use std::collections::HashSet;

use indexmap::IndexMap;

use crate::scheduler::Start;
use crate::spec::{JobId, Pinned, spec_hash};
use crate::state_dir;
use crate::status::RunPhase;
use crate::store::{NewJob, NewRun, Owner, RoundChange, RunRow, Store, StoreError};

use super::RunRequest;
use super::plan::{Plan, PlanError};
use super::resume;

/// The plan of a pinned spec: the engine's reading of [`Pinned`] (spec knows nothing of plans).
pub trait PinnedPlan {
    /// The plan of this spec, against the current process environment.
    fn plan(&self) -> Result<Plan, PlanError>;
}

impl PinnedPlan for Pinned {
    fn plan(&self) -> Result<Plan, PlanError> {
        let process_env: IndexMap<String, String> = std::env::vars().collect();
        let mut plan = Plan::new(
            &self.manifest,
            &self.base_dir,
            &process_env,
            self.env.clone(),
        )?;
        plan.params = self.params.clone();
        Ok(plan)
    }
}

/// This process, as the owner of the runs it executes.
pub fn this_process() -> Owner {
    let pid = std::process::id();
    Owner {
        pid,
        host: crate::process::hostname(),
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
    // the row keeps the file name and readers rebuild the path (state_dir::job_log_path).
    let files: Vec<String> = plan
        .jobs
        .iter()
        .map(|j| state_dir::job_log_file(&j.id))
        .collect();
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
            spec_hash: &spec_hash(&pinned.manifest),
            jobs: &jobs,
            owner,
        })
        .await?;
    let starts = plan
        .jobs
        .iter()
        .map(|j| {
            if pinned.skip.iter().any(|s| j.id == s.as_str()) {
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
        adopt: Vec::new(),
    })
}

/// What asking for another round of a run decided.
#[derive(Debug)]
pub enum Round {
    /// A new round to execute; `lost` lists the jobs whose attempts were recovered as Lost.
    Next {
        request: RunRequest,
        rerun: Vec<JobId>,
        lost: Vec<JobId>,
    },
    /// The run already succeeded.
    AlreadySucceeded,
    /// Nothing is left to run again (the run was closed with its verdict if it was still open).
    NothingToDo,
    /// Another live process executes it.
    OwnedElsewhere { pid: i64, host: String },
}

/// Recovers a run left Running by a dead executioner (if so), then opens its next round under
/// `mode`. With `respec` (a changed manifest given to `run --resume-from`), `plan` is that spec's:
/// its new jobs run, the jobs it no longer has leave the run, and the run pins it from now on.
///
/// `leader`: the caller is the leading controller of a shared store, whose workers run the
/// attempts: it takes the run over whoever owned it (a deposed leader's writes fail by its epoch),
/// and the attempts queued by the earlier leader are adopted (waited for), not recorded Lost.
pub async fn next_round(
    store: &Store,
    run: &RunRow,
    plan: &Plan,
    mode: resume::ResumeMode,
    owner: &Owner,
    respec: Option<&Pinned>,
    leader: bool,
) -> Result<Round, StoreError> {
    let mut lost = Vec::new();
    let mut adopted = Vec::new();
    if run.phase == RunPhase::Running {
        // A run this process owns is asked for another round only when no task of it drives
        // the run any more (the controller recovering a run whose task failed).
        let ours = run.owner_pid == Some(i64::from(owner.pid))
            && run.owner_start_time.and_then(|t| u64::try_from(t).ok()) == owner.start_time;
        if resume::owner_alive(run) && !ours && !leader {
            return Ok(Round::OwnedElsewhere {
                pid: run.owner_pid.unwrap_or_default(),
                host: run.owner_host.clone().unwrap_or_default(),
            });
        }
        let recovered = resume::recover(store, run, leader).await?;
        lost = recovered.lost;
        adopted = recovered.adopted;
    }
    let rows = store.jobs(run.id).await?;
    let in_plan: HashSet<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    let known: HashSet<&str> = rows.iter().map(|r| r.job_id.as_str()).collect();
    let removed: Vec<&str> = rows
        .iter()
        .map(|r| r.job_id.as_str())
        .filter(|id| !in_plan.contains(id))
        .collect();
    let added_files: Vec<(JobId, String)> = plan
        .jobs
        .iter()
        .filter(|j| !known.contains(j.id.as_str()))
        .map(|j| (j.id.clone(), state_dir::job_log_file(&j.id)))
        .collect();
    if run.phase == RunPhase::Succeeded && added_files.is_empty() {
        return Ok(Round::AlreadySucceeded);
    }
    let decided = resume::plan_resume(plan, &rows, mode);
    let coe = plan.continue_on_error();
    if decided.rerun.is_empty() && removed.is_empty() {
        if run.phase == RunPhase::Running {
            // Everything had ended before the crash: close the run as its jobs say.
            store.close_run(run.id, &coe).await?;
        }
        return Ok(Round::NothingToDo);
    }
    let rerun: Vec<&str> = decided.rerun.iter().map(|id| id.as_str()).collect();
    let added: Vec<NewJob<'_>> = added_files
        .iter()
        .map(|(id, log)| NewJob { id, log_path: log })
        .collect();
    let order: Vec<&str> = plan.jobs.iter().map(|j| j.id.as_str()).collect();
    let spec = respec.map(|p| (p.to_json(), spec_hash(&p.manifest)));
    let change = RoundChange {
        rerun: &rerun,
        reset_lost: mode != resume::ResumeMode::Continue,
        owner_was: Some((run.owner_pid, run.owner_start_time)),
        added: &added,
        removed: &removed,
        spec: spec
            .as_ref()
            .map(|(json, hash)| (json.as_str(), hash.as_str(), order.as_slice())),
    };
    let round = match store.begin_round(run.id, &change, owner).await {
        Ok(round) => round,
        Err(StoreError::TakenOver { .. }) => {
            // Another process took it over between our look and now: it drives the run.
            let now = store.run(run.id).await?;
            return Ok(Round::OwnedElsewhere {
                pid: now.as_ref().and_then(|r| r.owner_pid).unwrap_or_default(),
                host: now.and_then(|r| r.owner_host).unwrap_or_default(),
            });
        }
        Err(e) => return Err(e),
    };
    if decided.rerun.is_empty() {
        // Only removals: the run is what its remaining jobs say.
        store.close_run(run.id, &coe).await?;
        return Ok(Round::NothingToDo);
    }
    let previous_attempts = resume::previous_attempts(store, run.id, plan).await?;
    let rows = store.jobs(run.id).await?;
    let lost_by_job: std::collections::HashMap<&str, i64> =
        rows.iter().map(|r| (r.job_id.as_str(), r.lost)).collect();
    let lost_counts = plan
        .jobs
        .iter()
        .map(|j| lost_by_job.get(j.id.as_str()).copied().unwrap_or(0))
        .collect();
    Ok(Round::Next {
        request: RunRequest {
            run_id: run.id,
            round,
            starts: decided.starts,
            previous_attempts,
            lost: lost_counts,
            adopt: adopted
                .iter()
                .filter_map(|a| {
                    Some(super::Adopted {
                        job: plan.index_of(&a.job)?,
                        attempt: a.attempt,
                        number: a.number,
                    })
                })
                .collect(),
        },
        rerun: decided.rerun,
        lost,
    })
}

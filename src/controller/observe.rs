//! Building each pipeline's status document from the store (observed state) and what the folder
//! says (read by `folder`). Pure of side effects, so `executioner status` and `wait` can use it
//! while no controller runs. Status times come from stored times only, so two reads of an
//! unchanged state agree. Writing the files is `status_writer`'s job.

use crate::status::JobReason;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::status::file::{
    Condition, ConditionReason, ConditionStatus, ConditionType, JobStatus, PipelinePhase,
    PipelineStatus, PipelineStatusDoc, Progress, StatusMetadata,
};
use crate::status::{JobPhase, format_time};
use crate::store::{PipelineRow, RunRow, Store, StoreError};
use crate::validate::Options;

use super::folder::{Invalid, InvalidReason, bound_sources, read_folder};
use super::permissions::Trust;

/// Position-free first line of an invalid manifest's message.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// A condition whose `lastTransitionTime` comes from stored times (a run's, the pipeline row's,
/// the manifest file's), never from the clock at read time: two reads of an unchanged state agree.
fn condition(
    kind: ConditionType,
    status: ConditionStatus,
    reason: ConditionReason,
    message: &str,
    at: String,
) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message: message.to_owned(),
        last_transition_time: at,
    }
}

/// The modification time of a manifest (when it last changed), or the epoch when it is gone.
fn file_time(manifests_dir: &Path, source: &str) -> String {
    let modified = std::fs::symlink_metadata(manifests_dir.join(source)).and_then(|m| m.modified());
    format_time(modified.map_or(time::OffsetDateTime::UNIX_EPOCH, time::OffsetDateTime::from))
}

/// Builds the status document of one pipeline from what the folder says and what the store says.
pub async fn pipeline_status(
    store: &Store,
    dirs: Dirs<'_>,
    name: &str,
    source: &str,
    row: Option<&PipelineRow>,
    invalid: Option<&Invalid>,
    suspended: bool,
) -> Result<PipelineStatusDoc, StoreError> {
    let generation = row.map_or(0, |r| r.generation);
    let revision = match row {
        Some(r) => store.revision(name, r.generation).await?,
        None => None,
    };
    let run: Option<RunRow> = store.latest_run(name).await?;
    let jobs = match &run {
        Some(r) => store.jobs(r.id).await?,
        None => Vec::new(),
    };
    let mut progress = Progress {
        total: jobs.len(),
        ..Progress::default()
    };
    let mut job_map = IndexMap::new();
    for j in &jobs {
        count_job(&mut progress, j.phase, j.reason);
        let log: Option<PathBuf> = run
            .as_ref()
            .map(|r| crate::state_dir::job_log_path(dirs.state, &r.pipeline, r.id, &j.job_id));
        job_map.insert(
            j.job_id.to_string(),
            JobStatus {
                phase: j.phase,
                reason: j.reason,
                attempts: j.attempts,
                exit_code: j.exit_code,
                started_at: j.started_at.map(format_time),
                finished_at: j.finished_at.map(format_time),
                log: log.map(|p| p.display().to_string()),
            },
        );
    }
    // A run left Running by a process that is gone (a `run` killed, a full disk) is not running.
    let interrupted = run
        .as_ref()
        .filter(|r| !r.phase.is_terminal() && !crate::engine::resume::owner_alive(r));
    let current_run = run.as_ref().filter(|r| r.generation == generation);
    let phase = if invalid.is_some() && run.as_ref().is_none_or(|r| r.phase.is_terminal()) {
        PipelinePhase::Invalid
    } else if interrupted.is_some() {
        PipelinePhase::Interrupted
    } else if suspended && run.as_ref().is_none_or(|r| r.phase.is_terminal()) {
        // A run going on finishes and shows Running; then nothing new starts.
        PipelinePhase::Suspended
    } else {
        match &run {
            Some(r) if !r.phase.is_terminal() => r.phase.into(),
            Some(r) if current_run.is_some() => r.phase.into(),
            Some(_) | None => PipelinePhase::Pending,
        }
    };
    let observed_at = || {
        row.map_or_else(
            || file_time(dirs.manifests, source),
            |r| format_time(r.updated_at),
        )
    };
    let valid = match invalid {
        Some(i) => condition(
            ConditionType::Valid,
            ConditionStatus::False,
            invalid_reason(i.reason),
            &i.message,
            file_time(dirs.manifests, &i.source),
        ),
        None => condition(
            ConditionType::Valid,
            ConditionStatus::True,
            ConditionReason::Validated,
            "",
            observed_at(),
        ),
    };
    let complete = match (interrupted, current_run) {
        (Some(r), _) => condition(
            ConditionType::Complete,
            ConditionStatus::Unknown,
            ConditionReason::Interrupted,
            &interrupted_hint(r),
            format_time(r.started_at.unwrap_or(r.created_at)),
        ),
        (None, Some(r)) if r.phase.is_terminal() => condition(
            ConditionType::Complete,
            ConditionStatus::True,
            r.phase.into(),
            r.reason.map_or("", |x| x.as_str()),
            format_time(r.finished_at.or(r.started_at).unwrap_or(r.created_at)),
        ),
        (None, Some(r)) => condition(
            ConditionType::Complete,
            ConditionStatus::Unknown,
            r.phase.into(),
            "",
            format_time(r.started_at.unwrap_or(r.created_at)),
        ),
        (None, None) => condition(
            ConditionType::Complete,
            ConditionStatus::Unknown,
            ConditionReason::Pending,
            "no run of this generation yet",
            observed_at(),
        ),
    };
    Ok(PipelineStatusDoc {
        api_version: crate::spec::API_VERSION.to_owned(),
        kind: "PipelineStatus".to_owned(),
        metadata: StatusMetadata {
            name: name.to_owned(),
            source: source.to_owned(),
            generation,
            revision,
        },
        status: PipelineStatus {
            phase,
            observed_generation: run.as_ref().map(|r| r.generation),
            run_id: run.as_ref().map(|r| r.id),
            started_at: run.as_ref().and_then(|r| r.started_at).map(format_time),
            finished_at: run.as_ref().and_then(|r| r.finished_at).map(format_time),
            progress,
            conditions: vec![valid, complete],
            jobs: job_map,
        },
    })
}

/// The reason of the `Valid: False` condition of a manifest invalid for `reason`.
fn invalid_reason(reason: InvalidReason) -> ConditionReason {
    match reason {
        InvalidReason::InvalidManifest => ConditionReason::InvalidManifest,
        InvalidReason::DuplicateName => ConditionReason::DuplicateName,
        InvalidReason::InsecurePermissions => ConditionReason::InsecurePermissions,
    }
}

/// Counts one job of a run in its progress.
pub fn count_job(progress: &mut Progress, phase: JobPhase, reason: Option<JobReason>) {
    if phase == JobPhase::Pending && reason == Some(JobReason::NoWorker) {
        progress.waiting_for_worker += 1;
    }
    match phase {
        JobPhase::Succeeded => progress.succeeded += 1,
        JobPhase::Failed | JobPhase::Lost => progress.failed += 1,
        JobPhase::Running | JobPhase::Waiting => progress.running += 1,
        JobPhase::Pending | JobPhase::Interrupted => progress.pending += 1,
        JobPhase::Skipped => progress.skipped += 1,
        JobPhase::Cancelled => progress.cancelled += 1,
    }
}

/// What to do about an interrupted run.
pub fn interrupted_hint(run: &RunRow) -> String {
    format!(
        "run {} was interrupted: the process running it is gone; a controller continues it when it \
         starts, or `executioner resume {}` runs again what did not succeed",
        run.id, run.id
    )
}

/// The state and manifests folders a status is built for.
#[derive(Debug, Clone, Copy)]
pub struct Dirs<'a> {
    pub state: &'a Path,
    pub manifests: &'a Path,
}

/// The status of a manifest that holds no pipeline: not readable, insecure, or a duplicate name.
fn invalid_doc(manifests_dir: &Path, name: &str, invalid: &Invalid) -> PipelineStatusDoc {
    PipelineStatusDoc {
        api_version: crate::spec::API_VERSION.to_owned(),
        kind: "PipelineStatus".to_owned(),
        metadata: StatusMetadata {
            name: name.to_owned(),
            source: invalid.source.clone(),
            generation: 0,
            revision: None,
        },
        status: PipelineStatus {
            phase: PipelinePhase::Invalid,
            observed_generation: None,
            run_id: None,
            started_at: None,
            finished_at: None,
            progress: Progress::default(),
            conditions: vec![condition(
                ConditionType::Valid,
                ConditionStatus::False,
                invalid_reason(invalid.reason),
                &invalid.message,
                file_time(manifests_dir, &invalid.source),
            )],
            jobs: IndexMap::new(),
        },
    }
}

/// Every pipeline's status, as `executioner status` shows it: the folder's manifests against the
/// store, without changing anything. A newcomer refused as a duplicate name has a row of its own,
/// after the pipeline's.
pub async fn snapshot(
    store: Option<&Store>,
    dirs: Dirs<'_>,
    options: &Options,
    trust: &Trust,
) -> Result<Vec<PipelineStatusDoc>, StoreError> {
    let rows: Vec<PipelineRow> = match store {
        Some(s) => s.pipelines().await?,
        None => Vec::new(),
    };
    let folder =
        read_folder(dirs.manifests, options, trust, &bound_sources(&rows)).unwrap_or_default();
    let mut out = Vec::new();
    let mut names: Vec<(String, String, Option<&Invalid>)> = folder
        .desired
        .values()
        .map(|d| (d.name.clone(), d.source.clone(), None))
        .collect();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for inv in &folder.invalid {
        if let Some(n) = &inv.name
            && !folder.desired.contains_key(n)
            && seen.insert(n.as_str())
            && let Some(first) = folder.invalid_named(n)
        {
            names.push((n.clone(), first.source.clone(), Some(first)));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, source, invalid) in names {
        let row = rows.iter().find(|r| r.name == name);
        match store {
            Some(store) if invalid.is_none_or(|i| i.reason != InvalidReason::DuplicateName) => {
                let suspended = folder
                    .desired
                    .get(&name)
                    .is_some_and(|d| d.manifest.spec.suspend);
                let doc = pipeline_status(store, dirs, &name, &source, row, invalid, suspended);
                out.push(doc.await?)
            }
            _ => match invalid {
                Some(i) => out.push(invalid_doc(dirs.manifests, &name, i)),
                None => {
                    let mut doc = invalid_doc(
                        dirs.manifests,
                        &name,
                        &Invalid {
                            name: Some(name.clone()),
                            source: source.clone(),
                            message: String::new(),
                            syntax: false,
                            reason: InvalidReason::InvalidManifest,
                        },
                    );
                    let suspended = folder
                        .desired
                        .get(&name)
                        .is_some_and(|d| d.manifest.spec.suspend);
                    doc.status.phase = if suspended {
                        PipelinePhase::Suspended
                    } else {
                        PipelinePhase::Pending
                    };
                    doc.status.conditions = vec![condition(
                        ConditionType::Valid,
                        ConditionStatus::True,
                        ConditionReason::Validated,
                        "",
                        file_time(dirs.manifests, &source),
                    )];
                    out.push(doc);
                }
            },
        }
        // Newcomers refused because this pipeline's name was taken.
        for dup in folder
            .duplicates()
            .filter(|d| d.name.as_deref() == Some(name.as_str()))
            .filter(|d| invalid.is_none_or(|i| !std::ptr::eq(*d, i)))
        {
            out.push(invalid_doc(dirs.manifests, &name, dup));
        }
    }
    Ok(out)
}

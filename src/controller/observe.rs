//! Reading the manifests folder (desired state) and building each pipeline's status from the
//! store (observed state). Pure of side effects, so `executioner status` can use it while no
//! controller runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::engine::plan;
use crate::spec::{LoadError, Manifest};
use crate::status::file::{
    Condition, JobStatus, PipelineStatus, PipelineStatusDoc, Progress, StatusMetadata,
};
use crate::status::{JobPhase, format_time};
use crate::store::{PipelineRow, RunRow, Store, StoreError};
use crate::validate::{self, Options, Severity};

/// A valid pipeline found in the folder.
#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    /// File name inside the manifests folder.
    pub source: String,
    pub manifest: Manifest,
    pub spec_hash: String,
}

/// A manifest (or document) that is not valid.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The pipeline name if it could be read, else the file stem when it is a valid name.
    pub name: Option<String>,
    pub source: String,
    /// `FILE:LINE:COL: message` lines.
    pub message: String,
    /// True for syntax errors (possibly a file still being written).
    pub syntax: bool,
    pub reason: &'static str,
}

/// What the folder says.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub desired: BTreeMap<String, Desired>,
    pub invalid: Vec<Invalid>,
}

/// Reads every manifest file of the folder (sorted by name; the first file to use a name keeps
/// it, later ones are Invalid with reason `DuplicateName`).
pub fn read_folder(dir: &Path, options: &Options) -> std::io::Result<Folder> {
    let mut folder = Folder::default();
    let files = match validate::manifest_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for file in files {
        read_file(&file, options, &mut folder);
    }
    Ok(folder)
}

/// Reads one manifest file into `folder`.
pub fn read_file(file: &Path, options: &Options, folder: &mut Folder) {
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem_name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::spec::PipelineName::parse(s).is_ok())
        .map(str::to_owned);
    let docs = match crate::spec::read_file(file) {
        Ok(docs) => docs,
        Err(e) => {
            let syntax = matches!(e, LoadError::Syntax { .. });
            folder.invalid.push(Invalid {
                name: stem_name,
                source,
                message: e.to_string(),
                syntax,
                reason: "InvalidManifest",
            });
            return;
        }
    };
    for doc in &docs {
        let name_guess = doc
            .value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .filter(|s| crate::spec::PipelineName::parse(s).is_ok())
            .map(str::to_owned)
            .or_else(|| stem_name.clone());
        match validate::validate_doc(doc, options) {
            Ok(valid) => {
                let name = valid.manifest.metadata.name.to_string();
                if let Some(first) = folder.desired.get(&name) {
                    let pos = doc.pos_of("/metadata/name");
                    folder.invalid.push(Invalid {
                        name: None,
                        source: source.clone(),
                        message: format!(
                            "{}:{pos}: pipeline name `{name}` is already used by {}",
                            file.display(),
                            first.source
                        ),
                        syntax: false,
                        reason: "DuplicateName",
                    });
                    continue;
                }
                let spec_hash = plan::spec_hash(&valid.manifest);
                folder.desired.insert(
                    name.clone(),
                    Desired {
                        name,
                        source: source.clone(),
                        manifest: valid.manifest,
                        spec_hash,
                    },
                );
            }
            Err(diagnostics) => {
                let message = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                folder.invalid.push(Invalid {
                    name: name_guess,
                    source: source.clone(),
                    message,
                    syntax: false,
                    reason: "InvalidManifest",
                });
            }
        }
    }
}

/// Position-free first line of an invalid manifest's message.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// Remembers when each condition last changed, so `lastTransitionTime` only moves on a change.
#[derive(Debug, Default, Clone)]
pub struct Transitions {
    seen: HashMap<(String, String), (String, String, String)>,
}

impl Transitions {
    fn condition(
        &mut self,
        pipeline: &str,
        kind: &str,
        status: &str,
        reason: &str,
        message: &str,
        at: Option<String>,
    ) -> Condition {
        let key = (pipeline.to_owned(), kind.to_owned());
        let now = at.unwrap_or_else(crate::status::now_rfc3339);
        let entry = self
            .seen
            .entry(key)
            .or_insert_with(|| (status.to_owned(), reason.to_owned(), now.clone()));
        if entry.0 != status || entry.1 != reason {
            *entry = (status.to_owned(), reason.to_owned(), now);
        }
        Condition {
            kind: kind.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: entry.2.clone(),
        }
    }
}

/// Builds the status document of one pipeline from what the folder says and what the store says.
pub async fn pipeline_status(
    store: &Store,
    state_dir: &Path,
    name: &str,
    source: &str,
    row: Option<&PipelineRow>,
    invalid: Option<&Invalid>,
    transitions: &mut Transitions,
) -> Result<PipelineStatusDoc, StoreError> {
    let generation = row.map_or(0, |r| r.generation);
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
        match j.phase {
            JobPhase::Succeeded => progress.succeeded += 1,
            JobPhase::Failed | JobPhase::Lost => progress.failed += 1,
            JobPhase::Running | JobPhase::Waiting => progress.running += 1,
            JobPhase::Pending | JobPhase::Interrupted => progress.pending += 1,
            JobPhase::Skipped | JobPhase::Cancelled => progress.skipped += 1,
        }
        let log: Option<PathBuf> = run
            .as_ref()
            .map(|r| crate::engine::job_log_path(state_dir, &r.pipeline, r.id, &j.job_id));
        job_map.insert(
            j.job_id.clone(),
            JobStatus {
                phase: j.phase.to_string(),
                attempts: j.attempts,
                exit_code: j.exit_code,
                started_at: j.started_at.map(format_time),
                finished_at: j.finished_at.map(format_time),
                log: log.map(|p| p.display().to_string()),
            },
        );
    }
    let current_run = run.as_ref().filter(|r| r.generation == generation);
    let phase = if invalid.is_some() && run.as_ref().is_none_or(|r| r.phase.is_terminal()) {
        "Invalid".to_owned()
    } else {
        match &run {
            Some(r) if !r.phase.is_terminal() => r.phase.to_string(),
            Some(r) if current_run.is_some() => r.phase.to_string(),
            _ => "Pending".to_owned(),
        }
    };
    let valid = match invalid {
        Some(i) => transitions.condition(name, "Valid", "False", i.reason, &i.message, None),
        None => transitions.condition(name, "Valid", "True", "Validated", "", None),
    };
    let complete = match current_run {
        Some(r) if r.phase.is_terminal() => transitions.condition(
            name,
            "Complete",
            "True",
            r.phase.as_str(),
            r.reason.map_or("", |x| x.as_str()),
            r.finished_at.map(format_time),
        ),
        Some(r) => transitions.condition(
            name,
            "Complete",
            "Unknown",
            r.phase.as_str(),
            "",
            r.started_at.map(format_time),
        ),
        None => transitions.condition(
            name,
            "Complete",
            "Unknown",
            "Pending",
            "no run of this generation yet",
            None,
        ),
    };
    Ok(PipelineStatusDoc {
        api_version: crate::spec::API_VERSION.to_owned(),
        kind: "PipelineStatus".to_owned(),
        metadata: StatusMetadata {
            name: name.to_owned(),
            source: source.to_owned(),
            generation,
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

/// Every pipeline's status, as `executioner status` shows it: the folder's manifests against the
/// store, without changing anything.
pub async fn snapshot(
    store: Option<&Store>,
    state_dir: &Path,
    manifests_dir: &Path,
    options: &Options,
) -> Result<Vec<PipelineStatusDoc>, StoreError> {
    let folder = read_folder(manifests_dir, options).unwrap_or_default();
    let rows: Vec<PipelineRow> = match store {
        Some(s) => s.pipelines().await?,
        None => Vec::new(),
    };
    let mut transitions = Transitions::default();
    let mut out = Vec::new();
    let mut names: Vec<(String, String, Option<&Invalid>)> = folder
        .desired
        .values()
        .map(|d| (d.name.clone(), d.source.clone(), None))
        .collect();
    for inv in &folder.invalid {
        if let Some(n) = &inv.name
            && !folder.desired.contains_key(n)
        {
            names.push((n.clone(), inv.source.clone(), Some(inv)));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, source, invalid) in names {
        let row = rows.iter().find(|r| r.name == name);
        match store {
            Some(store) => out.push(
                pipeline_status(
                    store,
                    state_dir,
                    &name,
                    &source,
                    row,
                    invalid,
                    &mut transitions,
                )
                .await?,
            ),
            None => out.push(PipelineStatusDoc {
                api_version: crate::spec::API_VERSION.to_owned(),
                kind: "PipelineStatus".to_owned(),
                metadata: StatusMetadata {
                    name: name.clone(),
                    source,
                    generation: 0,
                },
                status: PipelineStatus {
                    phase: if invalid.is_some() {
                        "Invalid".into()
                    } else {
                        "Pending".into()
                    },
                    observed_generation: None,
                    run_id: None,
                    started_at: None,
                    finished_at: None,
                    progress: Progress::default(),
                    conditions: vec![match invalid {
                        Some(i) => transitions
                            .condition(&name, "Valid", "False", i.reason, &i.message, None),
                        None => {
                            transitions.condition(&name, "Valid", "True", "Validated", "", None)
                        }
                    }],
                    jobs: IndexMap::new(),
                },
            }),
        }
    }
    Ok(out)
}

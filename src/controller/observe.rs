//! Reading the manifests folder (desired state) and building each pipeline's status from the
//! store (observed state). Pure of side effects, so `executioner status` and `wait` can use it
//! while no controller runs. Deciding which file holds a pipeline name (`bind`) lives here; whether
//! a file may be trusted at all is `permissions`' question. Status times come from stored times
//! only, so two reads of an unchanged state agree.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::spec::{LoadError, Manifest};
use crate::status::file::{
    Condition, JobStatus, PipelineStatus, PipelineStatusDoc, Progress, StatusMetadata,
};
use crate::status::{JobPhase, format_time};
use crate::store::{PipelineRow, RunRow, Store, StoreError};
use crate::validate::{self, Options, Severity};

use super::permissions::{InsecurePath, Trust};

/// A valid pipeline found in the folder.
#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    /// File name inside the manifests folder.
    pub source: String,
    pub manifest: Manifest,
    pub spec_hash: String,
    /// `FILE:LINE:COL` of its `metadata.name`, for the duplicate-name message.
    pub name_at: String,
}

/// Why a manifest (or document) is not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// It does not parse or does not validate.
    InvalidManifest,
    /// Another file already holds its `metadata.name`.
    DuplicateName,
    /// Writable by group or others, or owned by an untrusted user (see `permissions`).
    InsecurePermissions,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::InvalidManifest => "InvalidManifest",
            InvalidReason::DuplicateName => "DuplicateName",
            InvalidReason::InsecurePermissions => "InsecurePermissions",
        }
    }
}

/// A manifest (or document) that is not valid.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The pipeline name if it could be read, else the file stem when it is a valid name. For a
    /// `DuplicateName`, the name it wanted (the pipeline stays with the file it is bound to).
    pub name: Option<String>,
    pub source: String,
    /// `FILE:LINE:COL: message` lines.
    pub message: String,
    /// True for syntax errors (possibly a file still being written).
    pub syntax: bool,
    pub reason: InvalidReason,
}

/// What the folder says.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub desired: BTreeMap<String, Desired>,
    pub invalid: Vec<Invalid>,
}

impl Folder {
    /// Why pipeline `name` is invalid, when no valid manifest holds it: the problem of the file
    /// that holds (or would hold) the name, not of a newcomer refused as a duplicate.
    pub fn invalid_named(&self, name: &str) -> Option<&Invalid> {
        if self.desired.contains_key(name) {
            return None;
        }
        let named = || {
            self.invalid
                .iter()
                .filter(|i| i.name.as_deref() == Some(name))
        };
        named()
            .find(|i| i.reason != InvalidReason::DuplicateName)
            .or_else(|| named().next())
    }

    /// Newcomers refused because another file holds their name.
    pub fn duplicates(&self) -> impl Iterator<Item = &Invalid> {
        self.invalid
            .iter()
            .filter(|i| i.reason == InvalidReason::DuplicateName)
    }
}

/// Reads every manifest file of the folder and binds names to files (see [`bind`]): the store's
/// `bound` sources (name -> file name) keep their pipelines.
pub fn read_folder(
    dir: &Path,
    options: &Options,
    trust: &Trust,
    bound: &HashMap<String, String>,
) -> std::io::Result<Folder> {
    let files = match validate::manifest_files(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut read = Vec::with_capacity(files.len());
    for file in files {
        let mut one = Folder::default();
        read_file(&file, options, &mut one);
        let one = match trust.check_manifest_path(&file) {
            Ok(()) => one,
            Err(insecure) => mark_insecure(one, &insecure, &file),
        };
        read.push(one);
    }
    Ok(bind(read, bound))
}

/// Merges what each file says (in file-name order) into one view, deciding who holds each name:
/// the file the store has it bound to, while that file still declares it (even invalidly: a bad
/// edit does not hand the pipeline to another file); otherwise the first file, by name, that
/// declares it validly. Every other file declaring it is Invalid with reason `DuplicateName`.
pub fn bind(files: Vec<Folder>, bound: &HashMap<String, String>) -> Folder {
    let mut holder: HashMap<String, String> = HashMap::new();
    for one in &files {
        for d in one.desired.values() {
            if bound.get(&d.name) == Some(&d.source) {
                holder.insert(d.name.clone(), d.source.clone());
            }
        }
        for i in &one.invalid {
            if let Some(n) = &i.name
                && i.reason != InvalidReason::DuplicateName
                && bound.get(n) == Some(&i.source)
            {
                holder.entry(n.clone()).or_insert_with(|| i.source.clone());
            }
        }
    }
    for one in &files {
        for d in one.desired.values() {
            holder
                .entry(d.name.clone())
                .or_insert_with(|| d.source.clone());
        }
    }
    let mut folder = Folder::default();
    for one in files {
        for (name, d) in one.desired {
            let holds = holder.get(&name) == Some(&d.source);
            if holds && !folder.desired.contains_key(&name) {
                folder.desired.insert(name, d);
            } else {
                let by = holder.get(&name).cloned().unwrap_or_default();
                folder.invalid.push(Invalid {
                    name: Some(name.clone()),
                    source: d.source.clone(),
                    message: format!(
                        "{}: pipeline name `{name}` is already used by {by} (DuplicateName)",
                        d.name_at
                    ),
                    syntax: false,
                    reason: InvalidReason::DuplicateName,
                });
            }
        }
        folder.invalid.extend(one.invalid);
    }
    folder
}

/// What a file that fails the permission check says: each of its documents Invalid with reason
/// `InsecurePermissions` (names kept, so `status` shows the pipeline), nothing desired.
pub fn mark_insecure(one: Folder, insecure: &InsecurePath, file: &Path) -> Folder {
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut names: Vec<Option<String>> = one.desired.into_keys().map(Some).collect();
    names.extend(one.invalid.into_iter().map(|i| i.name));
    if names.is_empty() {
        names.push(None);
    }
    names.dedup();
    let message = insecure.to_string();
    Folder {
        desired: BTreeMap::new(),
        invalid: names
            .into_iter()
            .map(|name| Invalid {
                name,
                source: source.clone(),
                message: message.clone(),
                syntax: false,
                reason: InvalidReason::InsecurePermissions,
            })
            .collect(),
    }
}

/// Reads one manifest file into `folder` (a name used twice within the file: the later document
/// is Invalid with reason `DuplicateName`).
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
                reason: InvalidReason::InvalidManifest,
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
                let name_at = format!("{}:{}", file.display(), doc.pos_of("/metadata/name"));
                if let Some(first) = folder.desired.get(&name) {
                    folder.invalid.push(Invalid {
                        name: Some(name.clone()),
                        source: source.clone(),
                        message: format!(
                            "{name_at}: pipeline name `{name}` is already used by {} (DuplicateName)",
                            first.source
                        ),
                        syntax: false,
                        reason: InvalidReason::DuplicateName,
                    });
                    continue;
                }
                let spec_hash = crate::spec::spec_hash(&valid.manifest);
                folder.desired.insert(
                    name.clone(),
                    Desired {
                        name,
                        source: source.clone(),
                        manifest: valid.manifest,
                        spec_hash,
                        name_at,
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
                    reason: InvalidReason::InvalidManifest,
                });
            }
        }
    }
}

/// Position-free first line of an invalid manifest's message.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// A condition whose `lastTransitionTime` comes from stored times (a run's, the pipeline row's,
/// the manifest file's), never from the clock at read time: two reads of an unchanged state agree.
fn condition(kind: &str, status: &str, reason: &str, message: &str, at: String) -> Condition {
    Condition {
        kind: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
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
            JobPhase::Skipped => progress.skipped += 1,
            JobPhase::Cancelled => progress.cancelled += 1,
        }
        let log: Option<PathBuf> = run
            .as_ref()
            .map(|r| crate::state_dir::job_log_path(dirs.state, &r.pipeline, r.id, &j.job_id));
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
    // A run left Running by a process that is gone (a `run` killed, a full disk) is not running.
    let interrupted = run
        .as_ref()
        .filter(|r| !r.phase.is_terminal() && !crate::engine::resume::owner_alive(r));
    let current_run = run.as_ref().filter(|r| r.generation == generation);
    let phase = if invalid.is_some() && run.as_ref().is_none_or(|r| r.phase.is_terminal()) {
        "Invalid".to_owned()
    } else if interrupted.is_some() {
        INTERRUPTED.to_owned()
    } else {
        match &run {
            Some(r) if !r.phase.is_terminal() => r.phase.to_string(),
            Some(r) if current_run.is_some() => r.phase.to_string(),
            _ => "Pending".to_owned(),
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
            "Valid",
            "False",
            i.reason.as_str(),
            &i.message,
            file_time(dirs.manifests, &i.source),
        ),
        None => condition("Valid", "True", "Validated", "", observed_at()),
    };
    let complete = match (interrupted, current_run) {
        (Some(r), _) => condition(
            "Complete",
            "Unknown",
            INTERRUPTED,
            &interrupted_hint(r),
            format_time(r.started_at.unwrap_or(r.created_at)),
        ),
        (None, Some(r)) if r.phase.is_terminal() => condition(
            "Complete",
            "True",
            r.phase.as_str(),
            r.reason.map_or("", |x| x.as_str()),
            format_time(r.finished_at.or(r.started_at).unwrap_or(r.created_at)),
        ),
        (None, Some(r)) => condition(
            "Complete",
            "Unknown",
            r.phase.as_str(),
            "",
            format_time(r.started_at.unwrap_or(r.created_at)),
        ),
        (None, None) => condition(
            "Complete",
            "Unknown",
            "Pending",
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

/// The phase `status` shows for a run whose process is gone.
pub const INTERRUPTED: &str = "Interrupted";

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
        },
        status: PipelineStatus {
            phase: "Invalid".into(),
            observed_generation: None,
            run_id: None,
            started_at: None,
            finished_at: None,
            progress: Progress::default(),
            conditions: vec![condition(
                "Valid",
                "False",
                invalid.reason.as_str(),
                &invalid.message,
                file_time(manifests_dir, &invalid.source),
            )],
            jobs: IndexMap::new(),
        },
    }
}

/// The sources the store has each (not deleted) pipeline bound to.
pub fn bound_sources(rows: &[PipelineRow]) -> HashMap<String, String> {
    rows.iter()
        .filter(|r| !r.deleted)
        .map(|r| (r.name.clone(), r.source.clone()))
        .collect()
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
                out.push(pipeline_status(store, dirs, &name, &source, row, invalid).await?)
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
                    doc.status.phase = "Pending".into();
                    doc.status.conditions = vec![condition(
                        "Valid",
                        "True",
                        "Validated",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, files: &[(&str, &str)], bound: &[(&str, &str)]) -> Folder {
        for (file, name) in files {
            std::fs::write(
                dir.join(file),
                format!(
                    "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  jobs:\n    - {{id: a, command: \"true\"}}\n"
                ),
            )
            .unwrap();
        }
        let bound = bound
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect();
        let trust = Trust::from_config(&crate::config::SecurityConfig::default()).unwrap();
        read_folder(dir, &Options::default(), &trust, &bound).unwrap()
    }

    #[test]
    fn a_bound_name_stays_with_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [("a.yaml", "shared"), ("b.yaml", "shared")];
        // Unbound: the first file by name takes it.
        let folder = read(tmp.path(), &files, &[]);
        assert_eq!(folder.desired["shared"].source, "a.yaml");
        // Bound to b.yaml: a newcomer sorting first does not take it.
        let folder = read(tmp.path(), &files, &[("shared", "b.yaml")]);
        assert_eq!(folder.desired["shared"].source, "b.yaml");
        let dup: Vec<&Invalid> = folder.duplicates().collect();
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].source, "a.yaml");
        assert_eq!(dup[0].name.as_deref(), Some("shared"));
        assert!(dup[0].message.contains("a.yaml:4:"), "{}", dup[0].message);
        assert!(folder.invalid_named("shared").is_none());
        // The bound file broken: the pipeline is Invalid, not handed to the other file.
        std::fs::write(tmp.path().join("b.yaml"), "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: shared\nspec:\n  jobs: []\n  bogus: 1\n").unwrap();
        let folder = read(tmp.path(), &[("a.yaml", "shared")], &[("shared", "b.yaml")]);
        assert!(!folder.desired.contains_key("shared"));
        let invalid = folder.invalid_named("shared").unwrap();
        assert_eq!(invalid.source, "b.yaml");
        assert_eq!(invalid.reason, InvalidReason::InvalidManifest);
    }
}

//! The status file of a pipeline (`manifests/.status/NAME.yaml`): its types, and writing it
//! atomically (temp file, fsync, rename, fsync of the folder). No environment values or secrets
//! ever go in it: only phases, counts, times and paths.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{JobPhase, RunId, RunPhase};

/// `kind: PipelineStatus` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatusDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMetadata,
    pub status: PipelineStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusMetadata {
    pub name: String,
    /// The manifest file, relative to the manifests folder.
    pub source: String,
    pub generation: i64,
    /// The source revision its generation came from: the git commit of the manifests folder,
    /// with `-dirty` when it had uncommitted changes. Absent outside a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    pub phase: PipelinePhase,
    pub observed_generation: Option<i64>,
    #[schema(value_type = Option<i64>)]
    pub run_id: Option<RunId>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub progress: Progress,
    pub conditions: Vec<Condition>,
    pub jobs: IndexMap<String, JobStatus>,
}

/// Where a pipeline stands, as its status file and `executioner status` show it: its latest run's
/// phase, or what keeps it from having one. Serialized by variant name (`Running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum PipelinePhase {
    /// No run of its current generation yet.
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its manifest holds no valid pipeline, and no run of it goes on.
    Invalid,
    /// Its run was left Running by a process that is gone.
    Interrupted,
    /// `spec.suspend: true` and no run of it goes on: nothing new starts.
    Suspended,
}

impl PipelinePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelinePhase::Pending => "Pending",
            PipelinePhase::Running => "Running",
            PipelinePhase::Succeeded => "Succeeded",
            PipelinePhase::Failed => "Failed",
            PipelinePhase::Cancelled => "Cancelled",
            PipelinePhase::Invalid => "Invalid",
            PipelinePhase::Interrupted => "Interrupted",
            PipelinePhase::Suspended => "Suspended",
        }
    }
}

impl From<RunPhase> for PipelinePhase {
    fn from(phase: RunPhase) -> Self {
        match phase {
            RunPhase::Pending => PipelinePhase::Pending,
            RunPhase::Running => PipelinePhase::Running,
            RunPhase::Succeeded => PipelinePhase::Succeeded,
            RunPhase::Failed => PipelinePhase::Failed,
            RunPhase::Cancelled => PipelinePhase::Cancelled,
        }
    }
}

impl fmt::Display for PipelinePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a condition of a pipeline's status is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionType {
    /// Its manifest holds a valid pipeline.
    Valid,
    /// The run of its current generation ended.
    Complete,
}

/// Whether a condition holds (Kubernetes' `True`, `False`, `Unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Why a condition is what it is. Serialized by variant name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionReason {
    /// `Valid: True`: the manifest holds a valid pipeline.
    Validated,
    /// `Valid: False`: it does not parse or does not validate.
    InvalidManifest,
    /// `Valid: False`: another file already holds its `metadata.name`.
    DuplicateName,
    /// `Valid: False`: writable by group or others, or owned by an untrusted user.
    InsecurePermissions,
    /// `Complete`: the phase of the run of its current generation (`Pending` when it has none).
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// `Complete: Unknown`: its run was left Running by a process that is gone.
    Interrupted,
}

impl From<RunPhase> for ConditionReason {
    fn from(phase: RunPhase) -> Self {
        match phase {
            RunPhase::Pending => ConditionReason::Pending,
            RunPhase::Running => ConditionReason::Running,
            RunPhase::Succeeded => ConditionReason::Succeeded,
            RunPhase::Failed => ConditionReason::Failed,
            RunPhase::Cancelled => ConditionReason::Cancelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub running: usize,
    pub pending: usize,
    pub skipped: usize,
    /// Stopped by a user's cancellation (not counted as skipped).
    #[serde(default)]
    pub cancelled: usize,
    /// Of the pending jobs, those queued that no live worker can take (reason `NoWorker`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting_for_worker: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: ConditionStatus,
    pub reason: ConditionReason,
    pub message: String,
    pub last_transition_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// A job phase: `Pending`, `Waiting`, `Running`, `Succeeded`, `Failed`, `Skipped`, `Cancelled`,
    /// `Lost` or `Interrupted`.
    #[schema(value_type = String)]
    pub phase: JobPhase,
    /// Why it is in its phase (`NoWorker` while queued with no live worker to take it, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<crate::status::JobReason>,
    pub attempts: i64,
    pub exit_code: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub log: Option<String>,
}

/// The status file of pipeline `name` in a manifests folder.
pub fn status_path(manifests_dir: &Path, name: &str) -> PathBuf {
    manifests_dir.join(".status").join(format!("{name}.yaml"))
}

impl PipelineStatusDoc {
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// Why its manifest is invalid, when it is (the message of its `Valid: False` condition).
    pub fn invalid_message(&self) -> Option<&str> {
        self.condition(ConditionType::Valid)
            .filter(|c| c.status == ConditionStatus::False)
            .map(|c| c.message.as_str())
    }

    /// Its condition of type `kind`, if it has one.
    pub fn condition(&self, kind: ConditionType) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }
}

/// Writes `text` to `path` atomically: a hidden temp file in the same folder, fsync, rename,
/// fsync of the folder. The folder is created (0755) if missing; a symlink at `path` is replaced,
/// never written through (the rename replaces the link itself).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent folder"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("bad file name"))?;
    // 0644 less the umask, as for any file this process creates.
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The enums are written as the names the status file has always held (readers compare them
    /// as text), in YAML and in JSON, and read back.
    #[test]
    fn phases_and_conditions_are_written_by_name() {
        let condition = |kind, status| Condition {
            kind,
            status,
            reason: ConditionReason::Validated,
            message: String::new(),
            last_transition_time: "2026-01-01T00:00:00.000Z".into(),
        };
        let doc = PipelineStatusDoc {
            api_version: "executioner.dev/v1".into(),
            kind: "PipelineStatus".into(),
            metadata: StatusMetadata {
                name: "p".into(),
                source: "p.yaml".into(),
                generation: 1,
                revision: None,
            },
            status: PipelineStatus {
                phase: PipelinePhase::Interrupted,
                observed_generation: None,
                run_id: None,
                started_at: None,
                finished_at: None,
                progress: Progress::default(),
                conditions: vec![
                    condition(ConditionType::Valid, ConditionStatus::True),
                    condition(ConditionType::Complete, ConditionStatus::False),
                    condition(ConditionType::Complete, ConditionStatus::Unknown),
                ],
                jobs: [(
                    "a".to_owned(),
                    JobStatus {
                        phase: JobPhase::Waiting,
                        reason: None,
                        attempts: 0,
                        exit_code: None,
                        started_at: None,
                        finished_at: None,
                        log: None,
                    },
                )]
                .into_iter()
                .collect(),
            },
        };
        let json = serde_json::to_value(&doc).expect("json");
        assert_eq!(json["status"]["phase"], "Interrupted");
        assert_eq!(json["status"]["jobs"]["a"]["phase"], "Waiting");
        let conditions: Vec<(&str, &str)> = json["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            conditions,
            [
                ("Valid", "True"),
                ("Complete", "False"),
                ("Complete", "Unknown")
            ]
        );
        let yaml = doc.to_yaml();
        for line in [
            "  phase: Interrupted\n",
            "status: \"True\"",
            "status: \"False\"",
        ] {
            assert!(yaml.contains(line), "{line:?} in {yaml}");
        }
        let back: PipelineStatusDoc = serde_saphyr::from_str(&yaml).expect("read back");
        assert_eq!(back, doc);
        assert_eq!(back.invalid_message(), None);
        assert!(yaml.contains("reason: Validated\n"), "{yaml}");
        for phase in [RunPhase::Pending, RunPhase::Running, RunPhase::Cancelled] {
            assert_eq!(PipelinePhase::from(phase).as_str(), phase.as_str());
            let reason = serde_json::to_value(ConditionReason::from(phase)).expect("json");
            assert_eq!(reason, phase.as_str());
        }
    }

    /// Replaces the file, and a symlink by a file (the link's target untouched); leaves no temp
    /// file; 0644 less the umask.
    #[test]
    fn write_atomic_replaces_without_writing_through_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/a.status.yaml");
        write_atomic(&path, "one\n").expect("write");
        write_atomic(&path, "two\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        // Read-write for the owner, writable by no one else, executable by no one.
        assert_eq!(mode & 0o733, 0o600, "{mode:o}");

        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep\n").expect("write");
        let link = dir.path().join("sub/b.status.yaml");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        write_atomic(&link, "new\n").expect("write");
        assert!(!std::fs::symlink_metadata(&link).expect("stat").is_symlink());
        assert_eq!(std::fs::read_to_string(&outside).expect("read"), "keep\n");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}

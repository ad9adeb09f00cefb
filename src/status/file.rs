//! The status file of a pipeline (`manifests/.status/NAME.yaml`): its types, and writing it
//! atomically (temp file, fsync, rename, fsync of the folder). No environment values or secrets
//! ever go in it: only phases, counts, times and paths.

use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// `kind: PipelineStatus` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatusDoc {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMetadata,
    pub status: PipelineStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMetadata {
    pub name: String,
    /// The manifest file, relative to the manifests folder.
    pub source: String,
    pub generation: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// Pending | Running | Succeeded | Failed | Cancelled | Invalid
    pub phase: String,
    pub observed_generation: Option<i64>,
    pub run_id: Option<i64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub progress: Progress,
    pub conditions: Vec<Condition>,
    pub jobs: IndexMap<String, JobStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// "True" | "False" | "Unknown"
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub phase: String,
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

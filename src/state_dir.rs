//! The state folder's layout: where the database, the controller's lock, the request files and the
//! run logs live inside it, and how files and folders in it are created private (0600 and 0700,
//! symlinks refused). Paths only: what is written in those files belongs to their modules
//! (`store`, `controller::lock`, `engine`), and nothing here opens the database or takes the lock.
//!
//! ```text
//! STATE/executioner.db            the store (with its -wal and -shm files)
//! STATE/controller.lock           one controller per state folder
//! STATE/requests/                 files a running controller watches (`rerun-NAME`)
//! STATE/logs/PIPELINE/RUN/run.log the run's own event log
//! STATE/logs/PIPELINE/RUN/JOB.log each job's output, attempts one after another
//! STATE/logs/PIPELINE/RUN/outputs/JOB.N  attempt N's $EXECUTIONER_OUTPUT, while it runs
//! ```

use std::path::{Path, PathBuf};

use crate::status::RunId;

/// The database file inside the state folder.
pub const DB_FILE: &str = "executioner.db";

/// `STATE/executioner.db`.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

/// `STATE/controller.lock`.
pub fn controller_lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("controller.lock")
}

/// `STATE/locks/PIPELINE.lock`: held by a foreground `run` while it checks for an overlapping run
/// and records its own. Names are validated, so it stays inside.
pub fn pipeline_lock_path(state_dir: &Path, pipeline: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{pipeline}.lock"))
}

/// Opens (creating, mode 0600, never truncating, refusing symlinks) a file that is only ever
/// locked: the controller's and each pipeline's lock.
pub fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `STATE/http.addr`: the address the controller's HTTP server is bound to (so that a port 0
/// bind can be found).
pub fn http_addr_path(state_dir: &Path) -> PathBuf {
    state_dir.join("http.addr")
}

/// `STATE/requests`: a running controller watches it for requests made by other commands.
pub fn requests_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("requests")
}

/// Folder of a run's logs: `STATE/logs/PIPELINE/RUN`. Names are validated, so it stays inside.
pub fn run_log_dir(state_dir: &Path, pipeline: &str, run: RunId) -> PathBuf {
    state_dir.join("logs").join(pipeline).join(run.to_string())
}

/// `STATE/logs/PIPELINE/RUN/run.log`.
pub fn run_log_path(state_dir: &Path, pipeline: &str, run: RunId) -> PathBuf {
    run_log_dir(state_dir, pipeline, run).join("run.log")
}

/// `STATE/logs/PIPELINE/RUN/JOB.log`.
pub fn job_log_path(state_dir: &Path, pipeline: &str, run: RunId, job: &str) -> PathBuf {
    run_log_dir(state_dir, pipeline, run).join(job_log_file(job))
}

/// A job's log file name in its run's folder (`JOB.log`), as a job's row records it: the run id
/// is the database's to allocate, so the row keeps the name and readers rebuild the path.
pub fn job_log_file(job: &str) -> String {
    format!("{job}.log")
}

/// `STATE/logs/PIPELINE/RUN/outputs/`: the folder of the outputs files of a run's attempts, while
/// a round goes on (removed at its end). Not the log folder itself: the engine creates log files
/// there ahead of time, and looking up a name in a folder while another thread creates files in
/// it waits for that creation.
pub fn run_outputs_dir(state_dir: &Path, pipeline: &str, run: RunId) -> PathBuf {
    run_log_dir(state_dir, pipeline, run).join("outputs")
}

/// `STATE/logs/PIPELINE/RUN/outputs/JOB.N`: the file attempt `N` of a job writes its outputs to
/// (`$EXECUTIONER_OUTPUT`), created by the job when it writes. It may hold secrets, so the engine
/// removes it once the attempt has ended.
pub fn job_output_path(
    state_dir: &Path,
    pipeline: &str,
    run: RunId,
    job: &str,
    attempt: i64,
) -> PathBuf {
    run_outputs_dir(state_dir, pipeline, run).join(format!("{job}.{attempt}"))
}

/// Opens a file for appending with mode 0600, refusing symlinks.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates a folder (and parents) with mode 0700 for the parts it creates.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the module's table shows (other processes and older versions read these paths).
    #[test]
    fn layout() {
        let state = Path::new("/state");
        assert_eq!(db_path(state), Path::new("/state/executioner.db"));
        assert_eq!(
            controller_lock_path(state),
            Path::new("/state/controller.lock")
        );
        assert_eq!(requests_dir(state), Path::new("/state/requests"));
        assert_eq!(
            run_log_path(state, "etl", RunId::from(7)),
            Path::new("/state/logs/etl/7/run.log")
        );
        assert_eq!(
            job_log_path(state, "etl", RunId::from(7), "load"),
            Path::new("/state/logs/etl/7/load.log")
        );
    }
}

//! Shared helpers for the integration tests: run the real binary in a temporary folder.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// A temporary workspace with its own state folder.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// `executioner --state-dir STATE ARGS...` in this folder, bounded by `limit`.
    pub fn run_limited(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = std::process::Command::new(bin());
        cmd.current_dir(self.path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .env_remove("EXECUTIONER_STATE_DIR")
            .stdin(std::process::Stdio::null());
        run_with_timeout(cmd, limit)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_limited(args, Duration::from_secs(120))
    }
}

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_executioner"))
}

/// Runs a command, killing it (and failing the test) if it outlives `limit`.
pub fn run_with_timeout(mut cmd: std::process::Command, limit: Duration) -> Output {
    use std::io::Read;
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn executioner");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Root of the repository (for examples/, manifests/, schemas/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Pids of live processes whose environment contains `marker` (as `KEY=VALUE` text).
pub fn processes_with_marker(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            // Zombies are gone as far as jobs are concerned, but still report them: they mean
            // nobody reaped the process.
            found.push(pid);
        }
    }
    found
}

/// Waits until no process carries `marker`, up to `limit`; returns the survivors.
pub fn wait_no_marker(marker: &str, limit: Duration) -> Vec<i32> {
    let start = std::time::Instant::now();
    loop {
        let left = processes_with_marker(marker);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A unique marker for one test's jobs: `EXECUTIONER_TEST_MARKER=<name>-<pid>-<nanos>`.
pub fn marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "EXECUTIONER_TEST_MARKER={name}-{}-{nanos}",
        std::process::id()
    )
}

/// Parses `run -o json` / `runs show -o json` output.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// `(phase, reason, attempts)` of a job in a run object.
pub fn job_state(run: &serde_json::Value, id: &str) -> (String, String, i64) {
    let job = run["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("no job {id} in {run}"));
    (
        job["phase"].as_str().unwrap_or_default().to_owned(),
        job["reason"].as_str().unwrap_or_default().to_owned(),
        job["attempts"].as_i64().unwrap_or_default(),
    )
}

/// A v1 manifest with the given jobs YAML (indented under `jobs:`) and extra spec lines.
pub fn manifest(name: &str, spec_extra: &str, jobs: &str) -> String {
    format!(
        "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n{spec_extra}  jobs:\n{jobs}"
    )
}

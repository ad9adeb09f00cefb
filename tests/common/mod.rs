//! Shared helpers for the integration tests: run the real binary in a temporary folder.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod ca;
pub mod http;
pub mod pg_cluster;

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

    /// `executioner --state-dir STATE ARGS...` in this folder, in the background, output discarded.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(bin())
            .current_dir(self.path())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .env_remove("EXECUTIONER_STATE_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn executioner")
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
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

// ---------------------------------------------------------------------------------------------
// A controller process for end-to-end tests.

use std::path::PathBuf as ControllerPathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A controller running on `ws/manifests` for the life of the value.
pub struct Running {
    pub child: Option<Child>,
}

impl Running {
    pub fn start(ws: &Workspace, extra_env: &[(&str, &str)]) -> Running {
        std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.current_dir(ws.path())
            .args([
                "--state-dir",
                ws.state_dir().to_str().unwrap(),
                "controller",
                "--manifests",
                "manifests",
            ])
            .env("EXECUTIONER_RESYNC_INTERVAL", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(ws.path().join("controller.log"))
                    .unwrap(),
            ));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        // Wait until it holds its lock (it writes its pid there).
        let lock = ws.state_dir().join("controller.lock");
        let pid = child.id().to_string();
        let start = Instant::now();
        while !std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid) {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
                let log =
                    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let holder = std::fs::read_to_string(&lock).unwrap_or_default();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "controller {pid} did not take the lock within 20 s (exited: {exited:?}; \
                     lock file says {holder:?}); its log, last lines first:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Running { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn status_file(ws: &Workspace, name: &str) -> ControllerPathBuf {
    ws.path()
        .join("manifests/.status")
        .join(format!("{name}.yaml"))
}

/// `status NAME -o json` as a value (None while unknown).
pub fn status(ws: &Workspace, name: &str) -> Option<serde_json::Value> {
    let out = ws.run(&["status", name, "-o", "json", "--manifests", "manifests"]);
    if out.status.code() != Some(0) {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

pub fn wait_phase(ws: &Workspace, name: &str, phase: &str, generation: i64) -> serde_json::Value {
    let mut last = None;
    let start = Instant::now();
    loop {
        if let Some(s) = status(ws, name) {
            if s["status"]["phase"] == phase && s["status"]["observedGeneration"] == generation {
                return s;
            }
            last = Some(s);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never reached {phase}/{generation}: {last:?}\n{}",
            std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run_count(ws: &Workspace, name: &str) -> usize {
    let out = ws.run(&["runs", "--pipeline", name, "--limit", "1000", "-o", "json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// `n` jobs in 4 lanes (job i depends on i-4); every attempt holds a per-job `flock` for its whole
/// life and writes `start,JOB,ATTEMPT,PID` / `end,...` lines to `{dir}ledger`. A second attempt of a
/// job alive at the same time cannot take the lock and writes `CONFLICT JOB` instead (exit 99).
pub fn ledger_jobs(n: usize, dir: &str, sleep: &str) -> String {
    let mut jobs = String::new();
    for i in 0..n {
        let deps = if i >= 4 {
            format!(", dependencies: [j{}]", i - 4)
        } else {
            String::new()
        };
        jobs.push_str(&format!(
            "    - {{id: j{i}, command: \"exec 9>{dir}lock.$EXECUTIONER_JOB_ID; flock -n 9 || {{ echo CONFLICT $EXECUTIONER_JOB_ID >> {dir}ledger; exit 99; }}; echo start,$EXECUTIONER_JOB_ID,$EXECUTIONER_ATTEMPT,$$ >> {dir}ledger; sleep {sleep} & sleep {sleep}; wait; echo end,$EXECUTIONER_JOB_ID,$EXECUTIONER_ATTEMPT,$$ >> {dir}ledger\"{deps}}}\n"
        ));
    }
    jobs
}

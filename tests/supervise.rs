//! The per-job supervisor (`executioner __supervise FD -- PROGRAM ARGS...`, `process::supervise`)
//! with the real binary: it passes the job's exit code or signal through, lets a signal to its
//! group reach the job and reports the job's status, kills the job's whole tree (its group and a
//! `setsid` escapee) once the lifeline breaks, and leaves the job's CPU time and peak memory in
//! the `wait4` of its caller. The last tests go through `process::spawn` after
//! `supervise_jobs`, as a worker does, one of them in a process killed with SIGKILL. Events are ordered by files and /proc, with a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{PipeReader, PipeWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use executioner::process::{self, ExitStatus, Output, SpawnSpec, Stdin};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

const EXE: &str = env!("CARGO_BIN_EXE_executioner");
const PATIENCE: Duration = Duration::from_secs(10);
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A lifeline: the read end inheritable (the supervisor finds it by number), the write end
/// close-on-exec, held by the test until it drops it.
fn lifeline() -> (PipeReader, PipeWriter) {
    let (reader, writer) = std::io::pipe().unwrap();
    fcntl(&reader, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    (reader, writer)
}

/// `executioner __supervise FD -- sh -c SCRIPT` in `dir`, leading its own process group as
/// `process::spawn` makes it.
fn supervise(lifeline: &PipeReader, dir: &Path, script: &str) -> std::process::Child {
    Command::new(EXE)
        .arg("__supervise")
        .arg(lifeline.as_raw_fd().to_string())
        .args(["--", "sh", "-c", script])
        .current_dir(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn run_supervised(script: &str) -> std::process::ExitStatus {
    let dir = TempDir::new().unwrap();
    let (reader, _writer) = lifeline();
    supervise(&reader, dir.path(), script).wait().unwrap()
}

/// Polls `condition` until it holds; false if it did not within `PATIENCE`.
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// The pid in `dir/name`, once the job has written it (with its newline).
fn pid_file(dir: &Path, name: &str) -> i32 {
    let path = dir.join(name);
    let mut pid = None;
    assert!(
        eventually(|| {
            pid = std::fs::read_to_string(&path)
                .ok()
                .filter(|text| text.ends_with('\n'))
                .and_then(|text| text.trim().parse().ok());
            pid.is_some()
        }),
        "{name} was not written"
    );
    pid.unwrap()
}

/// Whether `pid` is gone (`kill(pid, 0)` fails) or only a zombie waiting for its parent.
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, None | Some("Z" | "X"))
}

/// A job with a background child in its group and a `setsid` grandchild outside it, each
/// writing its pid; it then waits for them.
const TREE: &str = "sleep 300 & echo $! > background.pid; setsid sleep 300 & echo $! > escaped.pid; echo $$ > job.pid; wait";

fn tree_pids(dir: &Path) -> [i32; 3] {
    ["job.pid", "background.pid", "escaped.pid"].map(|name| pid_file(dir, name))
}

fn assert_all_gone(pids: [i32; 3]) {
    for pid in pids {
        assert!(eventually(|| gone(pid)), "pid {pid} outlived the lifeline");
    }
}

#[test]
fn the_exit_code_passes_through() {
    assert_eq!(run_supervised("exit 0").code(), Some(0));
    assert_eq!(run_supervised("exit 3").code(), Some(3));
}

#[test]
fn the_signal_that_killed_the_job_passes_through() {
    // A real-time signal too (SIGRTMIN + 6), whose default action also terminates.
    for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGRTMIN() + 6] {
        let status = run_supervised(&format!("kill -{signal} $$"));
        assert_eq!(status.signal(), Some(signal), "{status:?}");
    }
}

#[test]
fn a_sigterm_to_the_group_reaches_the_job_and_the_supervisor_reports_its_status() {
    let dir = TempDir::new().unwrap();
    let (reader, _writer) = lifeline();
    let mut supervisor = supervise(
        &reader,
        dir.path(),
        "trap 'echo terminated > trapped; exit 7' TERM; echo $$ > job.pid; while :; do sleep 0.05; done",
    );
    pid_file(dir.path(), "job.pid");
    killpg(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM).unwrap();
    let status = supervisor.wait().unwrap();
    assert_eq!(status.code(), Some(7), "{status:?}");
    let trapped = std::fs::read_to_string(dir.path().join("trapped")).unwrap();
    assert_eq!(trapped, "terminated\n");

    // Without a trap the job dies of it, and so does the supervisor, by the same signal.
    let mut supervisor = supervise(&reader, dir.path(), "echo $$ > plain.pid; sleep 300");
    pid_file(dir.path(), "plain.pid");
    killpg(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM).unwrap();
    let status = supervisor.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

#[test]
fn a_closed_lifeline_kills_the_job_its_group_and_what_left_the_group() {
    let dir = TempDir::new().unwrap();
    let (reader, writer) = lifeline();
    let mut supervisor = supervise(&reader, dir.path(), TREE);
    let pids = tree_pids(dir.path());
    assert!(pids.iter().all(|&pid| !gone(pid)));
    drop(writer);
    let status = supervisor.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_all_gone(pids);
}

#[test]
fn a_lifeline_holder_killed_with_sigkill_takes_the_job_tree_with_it() {
    let dir = TempDir::new().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    // The holder keeps the write end as its stdout and hands the read end (its stdin) to the
    // supervisor as descriptor 3, with neither end anywhere else.
    let mut holder = Command::new("sh")
        .args([
            "-c",
            // (An asynchronous command's stdin is /dev/null before its redirections: hence fd 4.)
            r#"exec 4<&0; "$0" __supervise 3 -- sh -c "$1" 3<&4 4<&- </dev/null >/dev/null & wait"#,
            EXE,
            TREE,
        ])
        .current_dir(dir.path())
        .stdin(Stdio::from(OwnedFd::from(reader)))
        .stdout(Stdio::from(OwnedFd::from(writer)))
        .spawn()
        .unwrap();
    let pids = tree_pids(dir.path());
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_all_gone(pids);
}

#[test]
fn the_supervisors_wait4_reports_the_jobs_cpu_time() {
    let dir = TempDir::new().unwrap();
    let (reader, _writer) = lifeline();
    let before = children_user_time();
    // About 0.3 s of CPU in the shell itself (no child of its own).
    let mut supervisor = supervise(
        &reader,
        dir.path(),
        "i=0; while [ $i -lt 500000 ]; do i=$((i+1)); done",
    );
    let status = supervisor.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // Every child this test binary has waited for: at least the job's 0.3 s through the
    // supervisor (other tests' children only add).
    let user = children_user_time() - before;
    assert!(user >= Duration::from_millis(200), "user time {user:?}");
}

fn children_user_time() -> Duration {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let user = usage.user_time();
    Duration::from_secs(user.tv_sec() as u64) + Duration::from_micros(user.tv_usec() as u64)
}

/// `process::spawn` as a worker uses it: after `supervise_jobs` (through the real binary, this
/// test binary being a harness), in this whole test binary.
fn spawn_supervised(script: &str, output: Output) -> process::Child {
    spawn_supervised_in(Path::new("/"), script, output)
}

fn spawn_supervised_in(cwd: &Path, script: &str, output: Output) -> process::Child {
    process::supervise::supervise_jobs_through(EXE.into()).unwrap();
    process::spawn(SpawnSpec {
        program: "sh".into(),
        args: ["-c", script].iter().map(OsString::from).collect(),
        env: [("PATH", PATH)].into_iter().collect(),
        cwd: cwd.into(),
        stdin: Stdin::Null,
        output,
    })
    .unwrap()
}

/// Set for [`supervising_process`] by the test that runs it (and kills it).
const SUPERVISING_DIR: &str = "EXECUTIONER_TEST_SUPERVISING_DIR";

/// Not a test by itself: with `SUPERVISING_DIR` set it is a process that supervises its jobs, as
/// a worker does, starts `TREE` in that folder and waits forever, for the test below to kill.
#[tokio::test]
async fn supervising_process() {
    let Some(dir) = std::env::var_os(SUPERVISING_DIR) else {
        return;
    };
    let _child = spawn_supervised_in(Path::new(&dir), TREE, Output::Null);
    std::future::pending::<()>().await;
}

#[test]
fn a_process_supervising_its_jobs_killed_with_sigkill_takes_their_trees_with_it() {
    let dir = TempDir::new().unwrap();
    let mut supervising = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "supervising_process", "--test-threads=1"])
        .env(SUPERVISING_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pids = tree_pids(dir.path());
    supervising.kill().unwrap();
    supervising.wait().unwrap();
    assert_all_gone(pids);
}

#[tokio::test]
async fn spawn_runs_the_program_under_a_supervisor_leading_its_group() {
    let script = r#"echo "$0"; tr '\0' ' ' < /proc/$PPID/cmdline; echo; cut -d' ' -f5 /proc/$$/stat; [ -e /proc/$$/fd/3 ] && echo lifeline leaked || echo no lifeline; exit 3"#;
    let mut child = spawn_supervised(script, Output::Capture);
    let exited = child.wait().await.unwrap();
    assert_eq!(exited.status, ExitStatus::Code(3));
    let captured = String::from_utf8(exited.captured.unwrap()).unwrap();
    let lines: Vec<&str> = captured.lines().collect();
    assert_eq!(lines.len(), 4, "{captured}");
    assert_eq!(lines[0], "sh", "argv[0] is the program as given");
    assert!(
        lines[1].contains(" __supervise 3 --arg0 sh -- ") && lines[1].contains("/sh -c "),
        "{captured}"
    );
    assert_eq!(
        lines[2],
        child.pid().to_string(),
        "the job is in the supervisor's group"
    );
    assert_eq!(lines[3], "no lifeline");
}

#[tokio::test]
async fn stop_reaches_a_supervised_job_and_reports_its_status() {
    let dir = TempDir::new().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 7' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut child = spawn_supervised(&script, Output::Null);
    assert!(eventually(|| ready.exists()));
    let exited = child.stop(PATIENCE).await.unwrap();
    assert_eq!(exited.status, ExitStatus::Code(7));
}

#[tokio::test]
async fn a_supervised_jobs_cpu_time_and_peak_memory_are_the_jobs() {
    // CPU: about 0.3 s in the shell itself.
    let mut child = spawn_supervised(
        "i=0; while [ $i -lt 500000 ]; do i=$((i+1)); done",
        Output::Null,
    );
    let exited = child.wait().await.unwrap();
    assert!(
        exited.usage.user >= Duration::from_millis(200),
        "{exited:?}"
    );

    // Memory far above this process and the supervisor: the kernel's figure, the job's.
    let mut child = spawn_supervised(
        "x=$(head -c 100000000 /dev/zero | tr '\\0' x); echo ${#x}",
        Output::Capture,
    );
    let exited = child.wait().await.unwrap();
    assert_eq!(exited.captured.as_deref(), Some(&b"100000000\n"[..]));
    assert!(exited.usage.max_rss_kib >= 95_000, "{exited:?}");
}

#[tokio::test]
async fn a_small_supervised_jobs_peak_memory_is_its_own_not_the_supervisors() {
    // Long enough to be read while it runs; it prints its own high-water mark last (builtins
    // only: it starts no process, so its own reading stands for it).
    let script = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
                  while read -r key value unit; do [ \"$key\" = VmHWM: ] && echo $value; done < /proc/$$/status";
    let mut child = spawn_supervised(script, Output::Capture);
    let supervisor = child.pid();
    let mut supervisor_peak = None;
    assert!(eventually(|| {
        supervisor_peak = vm_hwm_kib(supervisor);
        supervisor_peak.is_some()
    }));
    let exited = child.wait().await.unwrap();
    let captured = String::from_utf8(exited.captured.clone().unwrap()).unwrap();
    let own: u64 = captured.trim().parse().unwrap();
    assert!(!exited.usage.max_rss_upper_bound, "{exited:?}");
    assert!(
        exited.usage.max_rss_kib <= own && exited.usage.max_rss_kib * 2 >= own,
        "job's own {own} KiB, supervisor's {supervisor_peak:?} KiB, reported {exited:?}"
    );
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

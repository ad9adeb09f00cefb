//! Tests with real processes. Events are ordered by waiting on files and /proc with a timeout,
//! never by sleeping in the test.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const PATIENCE: Duration = Duration::from_secs(10);

fn spec(program: &str, args: &[&str], output: Output) -> SpawnSpec {
    SpawnSpec {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        env: [("PATH", PATH)].into_iter().collect(),
        cwd: "/".into(),
        stdin: Stdin::Null,
        output,
    }
}

fn sh(script: &str, output: Output) -> SpawnSpec {
    spec("sh", &["-c", script], output)
}

fn log_file(dir: &TempDir) -> (File, std::path::PathBuf) {
    let path = dir.path().join("out.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open log");
    (file, path)
}

/// Whether `pid` is a live process (not gone, not a zombie waiting for its parent).
fn running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// Polls `condition` until it holds; false if it did not within `PATIENCE`.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

async fn run(spec: SpawnSpec) -> Exited {
    spawn(spec).expect("spawn").wait().await.expect("wait")
}

#[tokio::test]
async fn exit_code_is_propagated() {
    let exited = run(sh("exit 3", Output::Null)).await;
    assert_eq!(exited.status, ExitStatus::Code(3));
    assert!(exited.captured.is_none());
    assert!(run(spec("true", &[], Output::Null)).await.status.success());
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let exited = run(sh("kill -9 $$", Output::Null)).await;
    assert_eq!(exited.status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(exited.status.to_string(), "killed by SIGKILL");
}

#[tokio::test]
async fn file_output_is_complete_up_to_the_last_unterminated_line() {
    let dir = TempDir::new().expect("tempdir");
    let (file, path) = log_file(&dir);
    let script = r"printf 'a\n'; printf 'err\n' >&2; printf 'last'";
    let exited = run(sh(script, Output::File(file))).await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert_eq!(std::fs::read_to_string(path).expect("read"), "a\nerr\nlast");
}

#[tokio::test]
async fn fifty_megabytes_to_a_file_land_complete() {
    let dir = TempDir::new().expect("tempdir");
    let (file, path) = log_file(&dir);
    let exited = run(sh("head -c 50000000 /dev/zero", Output::File(file))).await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert_eq!(std::fs::metadata(path).expect("stat").len(), 50_000_000);
}

#[tokio::test]
async fn the_environment_is_exactly_the_one_given() {
    let mut spec = spec("env", &[], Output::Capture);
    spec.env.push("FOO", "replaced");
    spec.env.push("EMPTY", "");
    spec.env.push("FOO", "bar baz");
    let exited = run(spec).await;
    let text = String::from_utf8(exited.captured.expect("captured")).expect("utf-8");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["EMPTY=", "FOO=bar baz", &format!("PATH={PATH}")]);
}

#[tokio::test]
async fn a_shell_sees_only_our_variables_and_its_own() {
    let mut spec = sh("env", Output::Capture);
    spec.env.push("ONLY_THIS", "1");
    let exited = run(spec).await;
    let text = String::from_utf8(exited.captured.expect("captured")).expect("utf-8");
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or_default();
        assert!(
            ["PATH", "ONLY_THIS", "PWD", "SHLVL", "_", "OLDPWD"].contains(&key),
            "unexpected variable {line:?}"
        );
    }
    assert!(text.contains("ONLY_THIS=1\n"));
}

#[tokio::test]
async fn the_program_is_looked_up_in_the_childs_path() {
    let dir = TempDir::new().expect("tempdir");
    let script = dir.path().join("only-here");
    std::fs::write(&script, "#!/bin/sh\necho found\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut found = spec("only-here", &[], Output::Capture);
    found.env = [("PATH", format!("/nonexistent:{}", dir.path().display()))]
        .into_iter()
        .collect();
    assert_eq!(run(found).await.captured.as_deref(), Some(&b"found\n"[..]));

    // `sh` is in our PATH but not in the child's.
    let mut missing = spec("sh", &["-c", "true"], Output::Null);
    missing.env = [("PATH", "/nonexistent")].into_iter().collect();
    let error = spawn(missing).expect_err("must not find sh");
    assert!(
        matches!(&error, ProcessError::Spawn { source, .. } if source.kind() == ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn a_relative_program_path_is_taken_from_the_working_directory() {
    let dir = TempDir::new().expect("tempdir");
    let script = dir.path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\npwd\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut spec = spec("./run.sh", &[], Output::Capture);
    spec.cwd = dir.path().to_owned();
    let captured = run(spec).await.captured.expect("captured");
    let cwd = dir.path().canonicalize().expect("canonical");
    assert_eq!(captured, format!("{}\n", cwd.display()).into_bytes());
}

#[tokio::test]
async fn argv0_is_the_program_as_given() {
    let exited = run(sh("echo $0", Output::Capture)).await;
    assert_eq!(exited.captured.as_deref(), Some(&b"sh\n"[..]));
}

#[tokio::test]
async fn spawn_errors_say_what_is_wrong() {
    let error = spawn(spec("no-such-program-xyz", &[], Output::Null)).expect_err("missing");
    // What was being done, then the cause once (the chain adds it).
    assert_eq!(error.to_string(), "cannot start no-such-program-xyz");
    assert_eq!(
        crate::error_chain::render(&error),
        format!("cannot start no-such-program-xyz: not found in PATH ({PATH})")
    );
    assert!(
        matches!(error, ProcessError::Spawn { source, .. } if source.kind() == ErrorKind::NotFound)
    );

    let error = spawn(spec("/nonexistent/prog", &[], Output::Null)).expect_err("missing path");
    assert!(
        matches!(error, ProcessError::Spawn { source, .. } if source.kind() == ErrorKind::NotFound)
    );

    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("plain"), "echo hi\n").expect("write");
    let mut not_executable = spec("plain", &[], Output::Null);
    not_executable.env = [("PATH".to_owned(), dir.path().display().to_string())]
        .into_iter()
        .collect();
    let error = spawn(not_executable).expect_err("not executable");
    assert!(
        matches!(&error, ProcessError::Spawn { source, .. } if source.kind() == ErrorKind::PermissionDenied),
        "{error}"
    );

    let mut bad_cwd = spec("true", &[], Output::Null);
    bad_cwd.cwd = dir.path().join("missing");
    let error = spawn(bad_cwd).expect_err("missing cwd");
    let text = crate::error_chain::render(&error);
    assert!(text.contains("working directory"), "{text}");
}

#[tokio::test]
async fn a_nul_byte_in_the_environment_or_an_argument_is_a_spawn_error() {
    let mut bad_env = spec("true", &[], Output::Null);
    bad_env.env.push("BAD", "a\0b");
    let mut bad_arg = spec("echo", &["a\0b"], Output::Null);
    bad_arg.env.push("FINE", "1");
    for bad in [bad_env, bad_arg] {
        let error = spawn(bad).expect_err("NUL");
        assert!(
            matches!(&error, ProcessError::Spawn { source, .. } if source.kind() == ErrorKind::InvalidInput),
            "{error}"
        );
    }
}

/// Signal state in the child comes from the spawn, not from us: Rust ignores SIGPIPE in this
/// process and a thread may block signals, but a job must see neither (a `yes | head` pipeline
/// would otherwise print "Broken pipe" errors instead of ending quietly).
#[tokio::test]
async fn a_child_has_sigpipe_at_its_default_and_no_signal_blocked() {
    let mask_of = |status: &str, field: &str| {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("{field} in {status}"));
        u64::from_str_radix(line[field.len()..].trim(), 16).expect("hex mask")
    };
    const SIGPIPE_BIT: u64 = 1 << (libc::SIGPIPE - 1);
    let ours = std::fs::read_to_string("/proc/thread-self/status").expect("our status");
    assert_ne!(
        mask_of(&ours, "SigIgn:") & SIGPIPE_BIT,
        0,
        "the test needs SIGPIPE ignored here"
    );
    let mut blocked = nix::sys::signal::SigSet::empty();
    blocked.add(Signal::SIGUSR1);
    let mut previous = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&blocked),
        Some(&mut previous),
    )
    .expect("block SIGUSR1");
    let spawned = spawn(spec("cat", &["/proc/self/status"], Output::Capture));
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&previous),
        None,
    )
    .expect("restore the mask");
    let exited = spawned.expect("spawn").wait().await.expect("wait");
    let status = String::from_utf8(exited.captured.expect("captured")).expect("utf-8");
    assert_eq!(mask_of(&status, "SigIgn:") & SIGPIPE_BIT, 0, "{status}");
    assert_eq!(mask_of(&status, "SigBlk:"), 0, "{status}");

    let exited = run(sh("yes | head -n 1", Output::Capture)).await;
    assert_eq!(exited.captured.as_deref(), Some(&b"y\n"[..]));
}

#[tokio::test]
async fn a_child_given_no_input_reads_end_of_file_from_dev_null() {
    for _ in 0..2 {
        let exited = run(sh("cat; readlink /proc/self/fd/0", Output::Capture)).await;
        assert_eq!(exited.status, ExitStatus::Code(0));
        assert_eq!(exited.captured.as_deref(), Some(&b"/dev/null\n"[..]));
    }
}

#[tokio::test]
async fn stdin_bytes_reach_the_child() {
    let mut spec = spec("cat", &[], Output::Capture);
    spec.stdin = Stdin::Bytes(b"hello\nworld".to_vec());
    assert_eq!(
        run(spec).await.captured.as_deref(),
        Some(&b"hello\nworld"[..])
    );
}

#[tokio::test]
async fn a_child_that_reads_little_of_a_large_stdin_is_fine() {
    let mut spec = sh("head -c 5", Output::Capture);
    spec.stdin = Stdin::Bytes(vec![b'x'; 4 * 1024 * 1024]);
    let exited = run(spec).await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert_eq!(exited.captured.as_deref(), Some(&b"xxxxx"[..]));
}

#[tokio::test]
async fn capture_is_capped_and_the_child_is_not_blocked() {
    let exited = run(sh(
        "head -c 3000000 /dev/zero; head -c 1000 /dev/zero >&2",
        Output::Capture,
    ))
    .await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert_eq!(exited.captured.map(|c| c.len()), Some(CAPTURE_LIMIT));
}

#[tokio::test]
async fn stop_kills_the_whole_group() {
    let dir = TempDir::new().expect("tempdir");
    let (file, path) = log_file(&dir);
    let script = "sleep 100 & echo $!; sleep 100 & echo $!; wait";
    let mut child = spawn(sh(script, Output::File(file))).expect("spawn");
    assert!(eventually(|| pids_in(&path).len() == 2).await);
    let sleeps = pids_in(&path);
    assert!(sleeps.iter().all(|&pid| running(pid)));
    let start = child.start_time().expect("start");

    let exited = child.stop(PATIENCE).await.expect("stop");
    assert_eq!(exited.status, ExitStatus::Signal(libc::SIGTERM));
    assert!(!is_same_process(child.pid(), start));
    assert_eq!(
        child.start_time(),
        Some(start),
        "read once, kept after the reap"
    );
    assert!(eventually(|| sleeps.iter().all(|&pid| !running(pid))).await);
}

#[tokio::test]
async fn a_background_grandchild_does_not_outlive_a_successful_job() {
    let dir = TempDir::new().expect("tempdir");
    let (file, path) = log_file(&dir);
    let exited = run(sh("sleep 100 & echo $!", Output::File(file))).await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    let grandchild = pids_in(&path);
    assert_eq!(grandchild.len(), 1);
    assert!(eventually(|| !running(grandchild[0])).await);
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace() {
    let dir = TempDir::new().expect("tempdir");
    let (file, path) = log_file(&dir);
    let mut child = spawn(sh(
        "trap '' TERM; echo ready; sleep 100",
        Output::File(file),
    ))
    .expect("spawn");
    // Stop only once the trap is set, or the shell could die of SIGTERM before ignoring it.
    assert!(eventually(|| std::fs::read_to_string(&path).is_ok_and(|t| t == "ready\n")).await);
    let grace = Duration::from_millis(200);
    let started = Instant::now();
    let exited = child.stop(grace).await.expect("stop");
    assert_eq!(exited.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(started.elapsed() >= grace);
}

#[tokio::test]
async fn stop_after_the_leader_exited_just_reaps() {
    let mut child = spawn(sh("exit 7", Output::Null)).expect("spawn");
    let (pid, start) = (child.pid(), child.start_time().expect("start"));
    // A zombie now: exited, not reaped.
    assert!(eventually(|| !running(pid)).await);
    assert!(is_same_process(pid, start));
    let exited = child.stop(PATIENCE).await.expect("stop");
    assert_eq!(exited.status, ExitStatus::Code(7));
    assert!(!is_same_process(pid, start));
}

#[tokio::test]
async fn usage_is_reported() {
    let script = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
    let exited = run(sh(script, Output::Null)).await;
    assert_eq!(exited.status, ExitStatus::Code(0));
    assert!(exited.usage.user > Duration::ZERO, "{:?}", exited.usage);
    assert!(exited.usage.max_rss_kib > 0, "{:?}", exited.usage);
}

#[tokio::test]
async fn start_time_identifies_the_process_until_it_is_reaped() {
    let mut child = spawn(spec("sleep", &["100"], Output::Null)).expect("spawn");
    assert_eq!(child.pgid(), child.pid());
    let start = child.start_time().expect("start time");
    assert_eq!(read_start_time(child.pid()), Some(start));
    assert!(is_same_process(child.pid(), start));
    assert!(!is_same_process(child.pid(), start + 1));
    child.kill_group();
    let exited = child.wait().await.expect("wait");
    assert_eq!(exited.status, ExitStatus::Signal(libc::SIGKILL));
    assert!(!is_same_process(child.pid(), start));
}

#[tokio::test]
async fn wait_is_cancel_safe_and_repeatable() {
    let mut child = spawn(spec("sleep", &["100"], Output::Capture)).expect("spawn");
    tokio::select! {
        _ = child.wait() => panic!("sleep 100 ended early"),
        () = tokio::task::yield_now() => {}
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(20), child.wait())
            .await
            .is_err()
    );
    child.kill_group();
    let first = child.wait().await.expect("wait");
    let second = child.wait().await.expect("wait again");
    assert_eq!(first.status, ExitStatus::Signal(libc::SIGKILL));
    assert_eq!(second.status, first.status);
    assert_eq!(second.captured, Some(Vec::new()));
    // Reaped: signalling is a no-op now, whoever owns the pid.
    child.kill_group();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_children_at_once_all_complete() {
    let mut children = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut child = spawn(spec("true", &[], Output::Null)).expect("spawn");
        children.spawn(async move { child.wait().await });
    }
    let mut done = 0;
    while let Some(result) = children.join_next().await {
        let exited = result.expect("join").expect("wait");
        assert_eq!(exited.status, ExitStatus::Code(0));
        done += 1;
    }
    assert_eq!(done, 200);
}

#[tokio::test]
async fn dropping_a_running_child_kills_and_reaps_it() {
    let mut child = spawn(spec("sleep", &["100"], Output::Null)).expect("spawn");
    let (pid, start) = (child.pid(), child.start_time().expect("start"));
    drop(child);
    assert!(eventually(|| !is_same_process(pid, start)).await);
}

#[tokio::test]
async fn a_leftover_group_is_killed_only_if_its_leader_is_the_recorded_one() {
    let mut child = spawn(spec("sleep", &["100"], Output::Null)).expect("spawn");
    let start = child.start_time().expect("start");
    assert!(!kill_leftover_group(child.pgid(), start + 1));
    assert!(running(child.pid()));
    assert!(!kill_leftover_group(0, start));
    assert!(kill_leftover_group(child.pgid(), start));
    let exited = child.wait().await.expect("wait");
    assert_eq!(exited.status, ExitStatus::Signal(libc::SIGKILL));
}

#[test]
fn start_times_are_read_from_proc() {
    let ours = i32::try_from(std::process::id()).expect("pid");
    assert!(read_start_time(ours).is_some());
    assert_eq!(read_start_time(0), None);
    assert_eq!(read_start_time(-1), None);
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    assert!(matches!(
        spawn(spec("true", &[], Output::Null)),
        Err(ProcessError::Spawn { .. })
    ));
}

#[tokio::test]
async fn a_start_time_never_asked_for_before_the_reap_is_unknown() {
    // Once reaped, the pid may belong to another process: its start time must not be read.
    let mut child = spawn(spec("true", &[], Output::Null)).expect("spawn");
    child.wait().await.expect("wait");
    assert_eq!(child.start_time(), None);
}

#[tokio::test]
async fn a_remembered_program_that_has_gone_is_looked_up_again() {
    let dir = TempDir::new().expect("tempdir");
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    for bin in [&first, &second] {
        std::fs::create_dir(bin).expect("bin dir");
    }
    let tool = |bin: &Path, code: i32| {
        let path = bin.join("tool");
        std::fs::write(&path, format!("#!/bin/sh\nexit {code}\n")).expect("write tool");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    };
    let search = format!("{}:{}:{PATH}", first.display(), second.display());
    let run = || {
        let mut spec = spec("tool", &[], Output::Null);
        spec.env = [("PATH", search.as_str())].into_iter().collect();
        spawn(spec)
    };

    let later = tool(&second, 3);
    let exited = run().expect("spawn").wait().await.expect("wait");
    assert_eq!(
        exited.status,
        ExitStatus::Code(3),
        "found in the second entry"
    );
    // Within the remembered second, the tool moves to the first entry: the remembered path
    // fails once, and is forgotten.
    std::fs::remove_file(later).expect("remove");
    tool(&first, 4);
    assert!(run().is_err(), "the remembered path is gone");
    let exited = run().expect("spawn").wait().await.expect("wait");
    assert_eq!(exited.status, ExitStatus::Code(4), "looked up again");
}

/// A process killed and not yet reaped (a zombie) is gone: it owns no run and holds no name.
#[test]
fn a_killed_unreaped_process_does_not_exist() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    assert!(pid_exists(pid));
    let start = read_start_time(pid).expect("start time");
    child.kill().expect("kill");
    // Not reaped yet: the kernel keeps its entry (and start time) as a zombie.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pid_exists(pid) {
        assert!(std::time::Instant::now() < deadline, "{pid} still alive");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        is_same_process(pid, start),
        "a zombie keeps its pid and start time"
    );
    child.wait().expect("reap");
    assert!(!pid_exists(pid));
}

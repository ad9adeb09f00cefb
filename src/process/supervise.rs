//! The per-job supervisor, so that a job's whole process tree dies with the process that started
//! it, however that process dies (kill -9 included). [`supervise_jobs`] switches it on for this
//! process; from then on every child [`spawn`](super::spawn) starts is this executable run as
//! `executioner __supervise FD -- PROGRAM ARGS...` ([`supervise_main`]), which runs the program as
//! its own child and passes its exit on. It does not decide when a job stops (the caller's
//! [`Child`](super::Child) still times out, stops and reaps exactly as without it) and it knows
//! nothing of jobs, leases or the store.
//!
//! How it works:
//! - The *lifeline* is a pipe whose write end only this process holds (close-on-exec, never
//!   written). Each supervisor gets the read end as descriptor [`LIFELINE_FD`]. When this process
//!   dies the kernel closes the write end, every supervisor reads end of file, SIGKILLs every
//!   descendant it has (its process group, and those that left it: as a child subreaper it
//!   inherits the orphans, found through `/proc/PID/task/*/children`), and dies.
//! - The supervisor leads the process group `spawn` made and the job joins it, so a signal to the
//!   group (the caller's SIGTERM, grace, SIGKILL) reaches the job. It catches SIGTERM, SIGINT and
//!   SIGHUP with handlers that do nothing (not `SIG_IGN`: an ignored disposition would be
//!   inherited by the job, a handler is reset by `execve`), so it outlives the job to report it.
//! - It exits the way the job did: the same code, or the same signal re-raised at its default
//!   action, so the caller's wait sees what it would have seen without it. Before it exits it
//!   SIGKILLs what is left of its group (the caller would do it right after; doing it here closes
//!   the gap where the caller dies in between).
//! - Accounting: on Linux `wait4` on a process reports its own usage plus that of every child it
//!   waited for, and its peak memory as the larger of the two. The supervisor waits for the job, so
//!   the caller's `wait4` on the supervisor covers the job's CPU time (plus the supervisor's own,
//!   about 2 ms, most of it system time) and peak memory. The job starts as a `vfork` of the supervisor, so its
//!   kernel figure is never below the supervisor's own size (as the supervisor's is never below
//!   its caller's): while the job runs, the caller reads the job's own high-water mark (the job is
//!   the supervisor's first child) and the supervisor's, and keeps the kernel's figure only when
//!   it is above both (see `Readings`). A job that waits for processes after the last reading
//!   is not seen to have: its peak is then its own, without theirs.
//! - The supervisor waits on a pidfd of the job and the lifeline with one `poll`: one thread, no
//!   locks between "the job ended" and "the caller died".
//! - The price: about 2 ms of wall and CPU time more per job (a release build: spawn and wait of
//!   `true`, 2.5 ms instead of 0.5 ms), nearly all of it the kernel loading and tearing down this
//!   large executable, and ~12 MB of memory per running job in a debug build. Without
//!   [`supervise_jobs`], `spawn` pays one check of a `OnceLock`.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, getpid};

use super::sys;

/// The first argument that makes the executable a supervisor (see [`supervise_main`]).
pub const SUPERVISE_ARG: &str = "__supervise";

/// The descriptor `spawn` gives each supervisor the lifeline's read end as (the first after
/// stdin, stdout and stderr).
pub const LIFELINE_FD: RawFd = 3;

/// How long the supervisor keeps killing and reaping after the lifeline broke before it gives up
/// on descendants that will not die (a process in uninterruptible sleep dies when it wakes).
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// What [`supervise_jobs`] set up, for the life of the process.
#[derive(Debug)]
pub(super) struct Supervision {
    /// The supervisor's executable (this one).
    pub(super) exe: PathBuf,
    /// The lifeline's read end (close-on-exec, numbered above [`LIFELINE_FD`] so the spawn's
    /// `dup2` always makes a copy, which clears close-on-exec on the copy).
    lifeline: OwnedFd,
    /// The write end: held, never written; closed by the kernel when this process dies.
    _writer: OwnedFd,
}

static SUPERVISION: OnceLock<Supervision> = OnceLock::new();

/// Runs every child [`spawn`](super::spawn) starts from now on under a supervisor
/// (`executioner-supervise` beside this executable, or this executable), so the child's process
/// tree dies with this process. Call it once, at start, from
/// the binary (a test harness is not a supervisor); later calls do nothing.
pub fn supervise_jobs() -> io::Result<()> {
    let exe = std::env::current_exe()?;
    // The small `executioner-supervise` beside this executable when it is installed (it starts
    // in a fraction of the time), else this executable itself.
    let small = exe.with_file_name("executioner-supervise");
    let exe = if std::fs::metadata(&small).is_ok_and(|m| m.is_file()) {
        small
    } else {
        exe
    };
    supervise_jobs_through(exe)
}

/// [`supervise_jobs`] with the supervisor executable named: for tests, whose own executable is a
/// test harness rather than `executioner`.
#[doc(hidden)]
pub fn supervise_jobs_through(exe: PathBuf) -> io::Result<()> {
    if SUPERVISION.get().is_some() {
        return Ok(());
    }
    let (reader, writer) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let lifeline = sys::dup_cloexec_above(reader.as_fd(), LIFELINE_FD + 1)?;
    drop(reader);
    let _ = SUPERVISION.set(Supervision {
        exe,
        lifeline,
        _writer: writer,
    });
    Ok(())
}

/// The supervision set up by [`supervise_jobs`], if any: the only cost `spawn` pays without it.
pub(super) fn active() -> Option<&'static Supervision> {
    SUPERVISION.get()
}

impl Supervision {
    /// The lifeline's read end, to be given to the supervisor as [`LIFELINE_FD`].
    pub(super) fn lifeline(&'static self) -> BorrowedFd<'static> {
        self.lifeline.as_fd()
    }

    /// The supervisor's argv up to the job's arguments: `argv[0]`, `__supervise FD --arg0
    /// PROGRAM -- PATH`, so the job is executed from the `PATH` the caller resolved, with the
    /// `argv[0]` it was given (a shell shows it in its messages).
    pub(super) fn argv_head(&self, program: &OsStr, path: PathBuf) -> [OsString; 7] {
        [
            self.exe.clone().into_os_string(),
            SUPERVISE_ARG.into(),
            LIFELINE_FD.to_string().into(),
            "--arg0".into(),
            program.to_owned(),
            "--".into(),
            path.into_os_string(),
        ]
    }
}

/// The job a supervisor runs: its first child (the job is started before any orphan can be
/// handed to it). `None` before the job has started or when it cannot be read.
pub(super) fn job_pid(supervisor: i32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"));
    children.ok()?.split_whitespace().next()?.parse().ok()
}

/// What the caller's [`Child`](super::Child) reads of a supervisor and its job while they run, to
/// make the peak memory the job's (see the `process` module's notes).
#[derive(Debug, Default)]
pub(super) struct Readings {
    /// The supervisor's own high-water mark (KiB): the job's kernel figure starts from it.
    pub(super) supervisor_peak_kib: AtomicU64,
    /// The job was seen to have waited for processes of its own.
    pub(super) job_waited: AtomicBool,
}

/// What the supervisor's command line asks.
#[derive(Debug)]
struct Invocation {
    lifeline: RawFd,
    arg0: Option<OsString>,
    program: OsString,
    args: Vec<OsString>,
}

impl Invocation {
    /// `FD [--arg0 NAME] -- PROGRAM ARGS...` (what follows `__supervise`).
    fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, String> {
        let usage =
            || format!("usage: executioner {SUPERVISE_ARG} FD [--arg0 NAME] -- PROGRAM ARGS...");
        let mut args = args.into_iter();
        let lifeline = args
            .next()
            .and_then(|fd| fd.to_str()?.parse::<RawFd>().ok())
            .filter(|fd| *fd > 2)
            .ok_or_else(usage)?;
        let mut arg0 = None;
        loop {
            match args.next() {
                Some(flag) if flag == "--arg0" => arg0 = Some(args.next().ok_or_else(usage)?),
                Some(separator) if separator == "--" => break,
                Some(_) | None => return Err(usage()),
            }
        }
        let program = args.next().ok_or_else(usage)?;
        Ok(Invocation {
            lifeline,
            arg0,
            program,
            args: args.collect(),
        })
    }
}

/// The supervisor: runs the job given on the command line (what follows `__supervise`) and exits
/// as it did, or kills every descendant and dies when the lifeline breaks. Called by the binary
/// before anything else starts (no runtime, no logging: the supervisor is a plain process, and its
/// stdout and stderr are the job's).
pub fn supervise_main(args: impl IntoIterator<Item = OsString>) -> ! {
    let invocation = match Invocation::parse(args) {
        Ok(invocation) => invocation,
        Err(usage) => fail(2, &usage),
    };
    let lifeline = match sys::take_inherited_fd(invocation.lifeline) {
        Ok(fd) => fd,
        Err(error) => fail(
            2,
            &format!("lifeline descriptor {}: {error}", invocation.lifeline),
        ),
    };
    if let Err(errno) = nix::sys::prctl::set_child_subreaper(true) {
        fail(126, &format!("cannot become a child subreaper: {errno}"));
    }
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        if let Err(error) = sys::catch_and_do_nothing(signal) {
            fail(126, &format!("cannot catch {signal}: {error}"));
        }
    }
    // The job inherits stdio, environment, working directory and process group (ours, led by us);
    // std resets SIGPIPE and the signal mask for it.
    let mut command = std::process::Command::new(&invocation.program);
    command.args(&invocation.args);
    if let Some(arg0) = &invocation.arg0 {
        command.arg0(arg0);
    }
    let mut job = match command.spawn() {
        Ok(job) => job,
        Err(error) => {
            // As a shell reports a command it cannot run.
            let code = if error.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            fail(
                code,
                &format!("{}: {error}", invocation.program.to_string_lossy()),
            );
        }
    };
    let job_pid = i32::try_from(job.id()).unwrap_or(i32::MAX);
    let job_exited = match sys::PidFd::open(job_pid) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            kill_descendants();
            fail(126, &format!("cannot watch pid {job_pid}: {error}"));
        }
    };
    if !wait_for_exit_or_broken_lifeline(&job_exited, &lifeline) {
        kill_descendants_and_die();
    }
    let status = match job.wait() {
        Ok(status) => status,
        Err(error) => {
            kill_descendants();
            fail(126, &format!("waiting for pid {job_pid}: {error}"));
        }
    };
    // The caller may have died as the job ended: then nobody else will kill what is left.
    if lifeline_broken(&lifeline) {
        kill_descendants_and_die();
    }
    kill_rest_of_group();
    match (status.code(), status.signal()) {
        (Some(code), _) => std::process::exit(code),
        (None, Some(signal)) => die_by(signal),
        (None, None) => std::process::exit(126),
    }
}

/// Blocks until the job has exited (true) or the lifeline broke (false: end of file, or any error
/// reading it, since the supervisor can no longer tell whether its caller lives).
fn wait_for_exit_or_broken_lifeline(job_exited: &sys::PidFd, lifeline: &OwnedFd) -> bool {
    loop {
        let mut fds = [
            PollFd::new(job_exited.as_fd(), PollFlags::POLLIN),
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
        let [job, line] = fds.map(|fd| fd.revents().unwrap_or(PollFlags::empty()));
        if !job.is_empty() {
            return true;
        }
        if line.is_empty() {
            continue;
        }
        // Readable: end of file unless something was written (the caller never writes).
        let mut byte = [0u8; 1];
        match nix::unistd::read(lifeline, &mut byte) {
            Ok(0) => return false,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Whether the lifeline has broken already (without waiting).
fn lifeline_broken(lifeline: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().is_none_or(|events| !events.is_empty()),
        Err(_) => true,
    }
}

/// The lifeline broke: SIGKILL every descendant until none is left (reaping them, and the orphans
/// handed to us as their parents die), then the whole group if we lead it (as `spawn` makes us; a
/// group we do not lead is our caller's), which includes this process.
fn kill_descendants_and_die() -> ! {
    kill_descendants();
    let group = getpgrp();
    if group == getpid() {
        let _ = killpg(group, Signal::SIGKILL);
    }
    die_by(libc::SIGKILL)
}

/// SIGKILLs every descendant and reaps until this process has no child left (or
/// [`KILL_PATIENCE`] has passed). A descendant's children are handed to us before it can be
/// reaped, so once nothing is left to reap, nothing is left below us.
fn kill_descendants() {
    let start = Instant::now();
    loop {
        for pid in descendants() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
        }
        if start.elapsed() >= KILL_PATIENCE {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILLs the descendants still in our process group once the job has exited (those that left
/// it are left alone, as without a supervisor).
fn kill_rest_of_group() {
    let group = getpgrp().as_raw();
    for pid in descendants() {
        if process_group(pid) == Some(group) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Every live descendant of this process, parents before children, from the `children` lists of
/// `/proc` (the children of each thread).
fn descendants() -> Vec<i32> {
    let mut found = Vec::new();
    let mut next = 0;
    children_of(std::process::id() as i32, &mut found);
    while let Some(&pid) = found.get(next) {
        children_of(pid, &mut found);
        next += 1;
    }
    found
}

fn children_of(pid: i32, found: &mut Vec<i32>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        found.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
}

/// Field 5 of `/proc/PID/stat`.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses): state, ppid, pgrp.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(2)?.parse().ok()
}

/// Dies by `signal` at its default action, as the job did (no core dump: the job has dumped its
/// own). Exits 128 + `signal` if the signal does not kill.
fn die_by(signal: i32) -> ! {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    let _ = sys::raise_at_default_action(signal);
    std::process::exit(128 + signal)
}

/// Reports why the supervisor could not run the job and exits with `code`. Its stderr is the
/// job's output, the one place a reader of the job will look (as a shell reports a command it
/// cannot run); the supervisor has no other channel.
fn fail(code: i32, message: &str) -> ! {
    let _ = writeln!(io::stderr(), "executioner {SUPERVISE_ARG}: {message}");
    std::process::exit(code)
}

//! Supervision of one child process: start it in its own process group with exactly the
//! environment, working directory, stdin and output it is given; reap it with the kernel's
//! accounting (exit status, CPU time, peak memory); stop it (SIGTERM to the group, a grace period,
//! SIGKILL). It also answers crash recovery's question "is this recorded pid still that process?".
//!
//! It knows nothing of pipelines, jobs, retries, timeouts, specs or the store: callers decide when
//! to stop a child and what its outcome means.
//!
//! Choices worth knowing:
//! - Every child leads a new process group (pgid == pid), so stopping it reaches everything it
//!   started, however deep, unless a descendant deliberately left the group (`setsid`, `setpgid`).
//! - Reaping is per child: a pidfd (`pidfd_open`) watched by tokio, then `wait4` on that one pid,
//!   which also yields its rusage. There is no SIGCHLD handler and no `wait(-1)`, so other code in
//!   the process may spawn and reap its own children; `tokio::process` is not used because it
//!   reaps on its own and does not report rusage.
//! - When the leader exits, the rest of its group is SIGKILLed: a job is over when its command is,
//!   so background grandchildren (`sleep 100 &`) never outlive it. The group is signalled *before*
//!   the leader is reaped: an unreaped leader keeps its pid, hence the group id, from being reused,
//!   so the signal can never hit an unrelated group. For the same reason nothing is ever signalled
//!   after the leader has been reaped.
//! - Children start through glibc's `posix_spawn` (a `vfork`-style clone), with an
//!   [`Environment`] already laid out as the `KEY=VALUE` strings `execve` takes and one
//!   `/dev/null` opened for the whole process. std's `Command` copies the environment through two
//!   maps of owned strings and opens `/dev/null` again for every child: a fifth of the run loop's
//!   time per job in a thousand-job fan-out.
//! - [`Output::File`] hands the file itself to the child as stdout and stderr: the kernel writes,
//!   nothing is copied through us, so output is complete and memory flat at any volume.
//!   [`Output::Capture`] (for small check commands) reads both into memory, keeping the first
//!   [`CAPTURE_LIMIT`] bytes; once the leader has exited the pipe is drained for at most
//!   [`CAPTURE_DRAIN`], since a descendant that escaped the group could hold it open forever.
//! - Peak memory is the child's own. A `posix_spawn` child begins as a `vfork` of this process,
//!   and `execve` folds the address space it leaves (ours) into the child's `ru_maxrss`: the
//!   kernel's figure is never below our own high-water mark. So it is taken as the child's only
//!   when it is above ours (then it is exactly the child's, or a descendant's it waited for);
//!   otherwise the figure is the child's own `VmHWM` (from `/proc/PID/status`: a high-water mark,
//!   so a later reading covers every earlier moment), read at growing intervals while it runs,
//!   at least once a second (see [`PEAK_SAMPLES`]); growth after the last reading is not seen.
//!   When no reading can stand for the job (it ended before the first one, which a reading right
//!   after the spawn would not fix: it would catch the new image before it has loaded, a few
//!   KiB; or it waited for processes of its own, whose peaks only the kernel's figure holds:
//!   `/proc/PID/stat` of the exited leader tells) the kernel's figure is kept, marked
//!   [`Usage::max_rss_upper_bound`]. A job shorter than the first interval costs no `/proc` read.
//! - Dropping a [`Child`] that was not reaped SIGKILLs its group and reaps it on a detached task
//!   of the runtime it was spawned on (the one task without an owner: it ends when the kernel
//!   reports the exit, which SIGKILL makes prompt).
//! - After [`supervise_jobs`] (a worker calls it) every child is a per-job supervisor that runs
//!   the program and dies with its whole tree when this process dies (see [`supervise`]). The
//!   child's status and accounting are the program's; its own peak memory is read from the
//!   program (the supervisor's first child), with the supervisor's size as a second floor.

mod environment;
mod lookup;
pub mod supervise;
mod sys;

pub use environment::Environment;
pub use supervise::{SUPERVISE_ARG, supervise_jobs, supervise_main};

use std::ffi::{CString, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpgrp};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// At most this many bytes of [`Output::Capture`] output are kept; the rest is read and dropped.
pub const CAPTURE_LIMIT: usize = 1024 * 1024;

/// How long captured output is still read after the leader has exited.
pub const CAPTURE_DRAIN: Duration = Duration::from_secs(1);

/// When the child's own memory high-water mark is read while it runs: after the first interval,
/// then at intervals doubling up to the second.
pub const PEAK_SAMPLES: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// What the child reads on its standard input.
pub enum Stdin {
    /// `/dev/null`.
    Null,
    /// These bytes, written by a task, then end of file. A child that stops reading early is not
    /// an error.
    Bytes(Vec<u8>),
}

impl fmt::Debug for Stdin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stdin::Null => f.write_str("Null"),
            Stdin::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// Where the child's stdout and stderr go (both to the same place, interleaved as written).
#[derive(Debug)]
pub enum Output {
    /// Straight into this file (open it in append mode): the child writes to it directly.
    File(File),
    /// `/dev/null`.
    Null,
    /// Into memory, at most [`CAPTURE_LIMIT`] bytes; returned in [`Exited::captured`].
    Capture,
}

/// Everything needed to start one child.
#[derive(Debug)]
pub struct SpawnSpec {
    /// A path (with a slash: relative to `cwd`) or a name looked up in the `PATH` of `env`.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The complete environment: the child gets exactly this, nothing inherited.
    pub env: Environment,
    pub cwd: PathBuf,
    pub stdin: Stdin,
    pub output: Output,
}

/// How the leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(number) => match Signal::try_from(number) {
                Ok(signal) => write!(f, "killed by {signal}"),
                Err(_) => write!(f, "killed by signal {number}"),
            },
        }
    }
}

/// The kernel's accounting for the leader and the descendants it waited for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    /// The child's peak resident memory (see the module's notes on how it is measured).
    pub max_rss_kib: u64,
    /// `max_rss_kib` is only an upper bound: the kernel's figure, which starts from this
    /// process's own size, and no reading of the child's own could be made.
    pub max_rss_upper_bound: bool,
}

/// A reaped child.
#[derive(Debug, Clone)]
pub struct Exited {
    pub status: ExitStatus,
    pub usage: Usage,
    /// The captured output with [`Output::Capture`], else `None`.
    pub captured: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for pid {pid}")]
    Wait { pid: i32, source: std::io::Error },
}

/// A running (or exited, not yet reaped) child, leader of its own process group.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    start_time: Option<u64>,
    pidfd: AsyncFd<sys::PidFd>,
    /// The runtime whose reactor `pidfd` is registered with, for reaping on drop.
    runtime: Handle,
    state: State,
    stdin_writer: Option<JoinHandle<()>>,
    capture: Option<Capture>,
    /// The child's own `VmHWM` (KiB) as last read while it ran (when `peak_read`).
    peak_seen_kib: AtomicU64,
    peak_read: AtomicBool,
    /// When the child is a supervisor (see [`supervise`]): what was read of it and its job.
    supervisor: Option<supervise::Readings>,
}

#[derive(Debug)]
enum State {
    /// Not reaped: the pid and the group id are still ours.
    Running,
    /// Reaped; captured output may still be draining.
    Reaped {
        status: ExitStatus,
        usage: Usage,
        drain_until: Instant,
    },
    Finished(Exited),
}

/// The task reading [`Output::Capture`] output, and how to tell it to stop.
#[derive(Debug)]
struct Capture {
    reader: JoinHandle<Vec<u8>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Capture {
    /// The captured bytes once the pipe is closed, or whatever was read by `drain_until`.
    /// Cancel-safe.
    async fn collect(&mut self, drain_until: Instant) -> Vec<u8> {
        if let Ok(result) = tokio::time::timeout_at(drain_until, &mut self.reader).await {
            return result.unwrap_or_default();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.reader).await.unwrap_or_default()
    }
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Equal to [`Child::pid`]: the child leads its own group.
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    /// Field 22 of `/proc/PID/stat` (clock ticks since boot); with the pid it identifies the
    /// process across pid reuse (see [`is_same_process`]). Read on the first call, and only while
    /// the child is not reaped (its pid cannot belong to another process then); `None` after.
    pub fn start_time(&mut self) -> Option<u64> {
        if self.start_time.is_none() && matches!(self.state, State::Running) {
            self.start_time = read_start_time(self.pid);
        }
        self.start_time
    }

    /// Waits for the leader to exit, SIGKILLs what is left of its group, reaps the leader and
    /// returns its exit. Cancel-safe; once it has returned `Ok` it returns the same again.
    pub async fn wait(&mut self) -> Result<Exited, ProcessError> {
        loop {
            match &self.state {
                State::Finished(exited) => return Ok(exited.clone()),
                State::Running => {
                    let (status, usage) = self.reap().await?;
                    self.state = State::Reaped {
                        status,
                        usage,
                        drain_until: Instant::now() + CAPTURE_DRAIN,
                    };
                    if let Some(writer) = self.stdin_writer.take() {
                        writer.abort();
                    }
                }
                &State::Reaped {
                    status,
                    usage,
                    drain_until,
                } => {
                    let captured = match &mut self.capture {
                        Some(capture) => Some(capture.collect(drain_until).await),
                        None => None,
                    };
                    self.capture = None;
                    self.state = State::Finished(Exited {
                        status,
                        usage,
                        captured,
                    });
                }
            }
        }
    }

    /// SIGTERM (and SIGCONT, so a stopped group can act on it) to the whole group, wait up to
    /// `grace` for the leader to exit, then SIGKILL the group; returns the exit. A leader that has
    /// already exited is just reaped. Either way no member of the group is left.
    pub async fn stop(&mut self, grace: Duration) -> Result<Exited, ProcessError> {
        // If the leader cannot be asked about (only if someone else reaped it), signal nothing:
        // its group id may be another's by now; `wait` reports the error.
        if matches!(self.state, State::Running) && !self.leader_exited().unwrap_or(true) {
            self.signal_group(Signal::SIGTERM);
            self.signal_group(Signal::SIGCONT);
            if let Ok(result) = tokio::time::timeout(grace, self.wait()).await {
                return result;
            }
            self.signal_group(Signal::SIGKILL);
        }
        self.wait().await
    }

    /// SIGKILL to the whole group now; a no-op once the leader has been reaped.
    pub fn kill_group(&self) {
        self.signal_group(Signal::SIGKILL);
    }

    /// Signals the group unless the leader has been reaped (its id could then belong to another
    /// group). Failures are ignored: ESRCH means nobody is left, and there is no other to expect.
    fn signal_group(&self, signal: Signal) {
        if matches!(self.state, State::Running) {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }

    /// Whether the leader has exited (asking does not reap it).
    fn leader_exited(&self) -> io::Result<bool> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::PIDFd(self.pidfd.get_ref().as_fd()), flags) {
            Ok(WaitStatus::StillAlive) => Ok(false),
            Ok(_) => Ok(true),
            Err(errno) => Err(io::Error::from(errno)),
        }
    }

    async fn reap(&self) -> Result<(ExitStatus, Usage), ProcessError> {
        let (first, longest) = PEAK_SAMPLES;
        let mut interval = first;
        let mut next_sample = Instant::now() + interval;
        loop {
            let readable = tokio::select! {
                biased;
                readable = self.pidfd.readable() => readable,
                () = tokio::time::sleep_until(next_sample) => {
                    self.sample_peak();
                    interval = (interval * 2).min(longest);
                    next_sample = Instant::now() + interval;
                    continue;
                }
            };
            let mut ready = readable.map_err(|source| self.wait_error(source))?;
            if !self
                .leader_exited()
                .map_err(|source| self.wait_error(source))?
            {
                ready.clear_ready();
                continue;
            }
            // Still unreaped, so the group id cannot have been reused: safe to signal.
            self.signal_group(Signal::SIGKILL);
            // Unreaped, the pid is still this child's: ask whether it waited for processes (only
            // when a reading of its own could stand for the job: a short job costs no read).
            // A supervisor always waited for its job: ask of the job, as seen while it ran.
            let had_children = self.peak_read.load(Ordering::Relaxed)
                && match &self.supervisor {
                    Some(readings) => readings.job_waited.load(Ordering::Relaxed),
                    None => waited_for_children(self.pid),
                };
            match sys::wait4_nohang(self.pid).map_err(|source| self.wait_error(source))? {
                Some((status, rusage)) => {
                    let usage = self.own_usage(&rusage, had_children);
                    return Ok((self.exit_status(status)?, usage));
                }
                None => ready.clear_ready(),
            }
        }
    }

    /// Reads the child's own memory high-water mark. Only while it is not reaped: its pid cannot
    /// be another process's then (a zombie has no memory left to read, and is skipped).
    /// Under a supervisor the reading is of its job. (Were the job reaped and its pid reused
    /// between the two reads of `/proc`, the reading would be of a process just started: a few
    /// KiB, below the job's own high-water mark, and the maximum is what is kept.)
    fn sample_peak(&self) {
        let pid = match &self.supervisor {
            None => self.pid,
            Some(readings) => {
                // The supervisor's high-water mark only grows, so this reading covers the size
                // the job's kernel figure started from.
                if let Some(kib) = read_vm_hwm_kib(self.pid) {
                    readings
                        .supervisor_peak_kib
                        .fetch_max(kib, Ordering::Relaxed);
                }
                match supervise::job_pid(self.pid) {
                    Some(job) => job,
                    None => return,
                }
            }
        };
        if let Some(kib) = read_vm_hwm_kib(pid) {
            self.peak_seen_kib.fetch_max(kib, Ordering::Relaxed);
            self.peak_read.store(true, Ordering::Relaxed);
            if let Some(readings) = &self.supervisor
                && waited_for_children(pid)
            {
                readings.job_waited.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The kernel's accounting of the reaped child, with its peak memory made the child's own
    /// (see the module's notes); `had_children`: it waited for processes of its own.
    fn own_usage(&self, rusage: &libc::rusage, had_children: bool) -> Usage {
        let mut usage = usage_of(rusage);
        // Our own high-water mark now is at least what it was when the child executed.
        let ours = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_or(u64::MAX, |own| {
                u64::try_from(own.max_rss()).unwrap_or(u64::MAX)
            });
        // A supervisor's job starts from the supervisor's size as the supervisor does from ours:
        // its high-water mark is a floor too, and before it has been read any figure may be it.
        let floor = match &self.supervisor {
            Some(readings) => ours.max(readings.supervisor_peak_kib.load(Ordering::Relaxed)),
            None => ours,
        };
        let unread_supervisor =
            self.supervisor.is_some() && !self.peak_read.load(Ordering::Relaxed);
        if usage.max_rss_kib <= floor || unread_supervisor {
            if had_children || !self.peak_read.load(Ordering::Relaxed) {
                usage.max_rss_upper_bound = true;
            } else {
                let seen = self.peak_seen_kib.load(Ordering::Relaxed);
                usage.max_rss_kib = seen.min(usage.max_rss_kib);
            }
        }
        usage
    }

    fn exit_status(&self, raw: libc::c_int) -> Result<ExitStatus, ProcessError> {
        if libc::WIFEXITED(raw) {
            Ok(ExitStatus::Code(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Ok(ExitStatus::Signal(libc::WTERMSIG(raw)))
        } else {
            Err(self.wait_error(io::Error::other(format!("unexpected wait status {raw:#x}"))))
        }
    }

    fn wait_error(&self, source: io::Error) -> ProcessError {
        ProcessError::Wait {
            pid: self.pid,
            source,
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(writer) = self.stdin_writer.take() {
            writer.abort();
        }
        if let Some(capture) = self.capture.take() {
            capture.reader.abort();
        }
        if !matches!(self.state, State::Running) {
            return;
        }
        self.kill_group();
        if !matches!(sys::wait4_nohang(self.pid), Ok(None)) {
            return;
        }
        let Ok(pidfd) = self.pidfd.get_ref().try_clone() else {
            return;
        };
        let pid = self.pid;
        self.runtime.spawn(async move {
            let Ok(pidfd) = pidfd.watch() else {
                return;
            };
            while let Ok(mut ready) = pidfd.readable().await {
                match sys::wait4_nohang(pid) {
                    Ok(None) => ready.clear_ready(),
                    Ok(Some(_)) | Err(_) => return,
                }
            }
        });
    }
}

/// Starts `spec` as the leader of a new process group. Must be called inside a tokio runtime with
/// I/O enabled.
pub fn spawn(spec: SpawnSpec) -> Result<Child, ProcessError> {
    let program = spec.program.to_string_lossy().into_owned();
    let spawn_error = |source| ProcessError::Spawn {
        program: program.clone(),
        source,
    };
    let runtime = Handle::try_current().map_err(|_| {
        spawn_error(io::Error::other(
            "process::spawn must be called inside a tokio runtime",
        ))
    })?;
    let cwd = std::path::absolute(&spec.cwd).map_err(spawn_error)?;
    if !cwd.is_dir() {
        return Err(spawn_error(io::Error::new(
            io::ErrorKind::NotFound,
            format!("working directory {} does not exist", cwd.display()),
        )));
    }
    let search_path = spec.env.get("PATH");
    let path = lookup::resolve(&spec.program, search_path, &cwd).map_err(spawn_error)?;
    // Under `supervise_jobs` the child is the supervisor, which executes `path` as its own child.
    let supervision = supervise::active();
    let supervisor_head;
    let (path, argv_head) = match supervision {
        None => (path, std::slice::from_ref(&spec.program)),
        Some(supervision) => {
            supervisor_head = supervision.argv_head(&spec.program, path);
            (supervision.exe.clone(), &supervisor_head[..])
        }
    };
    let nul = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    };
    if spec.env.has_nul() {
        return Err(spawn_error(nul()));
    }
    let c_path = CString::new(path.into_os_string().into_vec()).map_err(|_| spawn_error(nul()))?;
    let c_cwd = CString::new(cwd.as_os_str().as_bytes()).map_err(|_| spawn_error(nul()))?;
    let mut argv_block = Vec::new();
    let mut argv_starts = Vec::with_capacity(spec.args.len() + 1);
    for arg in argv_head.iter().chain(&spec.args) {
        if arg.as_bytes().contains(&0) {
            return Err(spawn_error(nul()));
        }
        argv_starts.push(argv_block.len());
        argv_block.extend_from_slice(arg.as_bytes());
        argv_block.push(0);
    }
    let (env_block, env_starts) = spec.env.strings();
    let (Some(argv), Some(envp)) = (
        sys::CStrings::new(&argv_block, argv_starts),
        sys::CStrings::new(env_block, env_starts.collect()),
    ) else {
        return Err(spawn_error(io::Error::other("malformed argument strings")));
    };

    // The child's stdio. Our copies of the pipes' child ends are dropped right after the spawn:
    // the capture would never see end of file while we held the write end.
    let null = dev_null().map_err(spawn_error)?;
    let (stdin_pipe, stdin_bytes) = match spec.stdin {
        Stdin::Null => (None, None),
        Stdin::Bytes(bytes) => (Some(io::pipe().map_err(spawn_error)?), Some(bytes)),
    };
    let (output_file, capture_pipe) = match spec.output {
        Output::File(file) => (Some(OwnedFd::from(file)), None),
        Output::Null => (None, None),
        Output::Capture => {
            let (reader, writer) = io::pipe().map_err(spawn_error)?;
            (Some(OwnedFd::from(writer)), Some(reader))
        }
    };
    let stdin = stdin_pipe
        .as_ref()
        .map_or(null, |(reader, _)| reader.as_fd());
    let output = output_file.as_ref().map_or(null, AsFd::as_fd);
    let spawned = sys::posix_spawn(&sys::Spawn {
        path: &c_path,
        argv: &argv,
        envp: &envp,
        cwd: &c_cwd,
        stdin,
        stdout: output,
        stderr: output,
        inherit: supervision.map(|s| (s.lifeline(), supervise::LIFELINE_FD)),
    });
    drop(output_file);
    let pid = spawned.map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            lookup::forget(&spec.program, search_path, &cwd);
        }
        spawn_error(source)
    })?;
    // Without a pidfd (or a reader for the capture) the child cannot be supervised: do not leave
    // it running.
    let abandon = |error| {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        error
    };
    let pidfd = sys::PidFd::open(pid)
        .and_then(sys::PidFd::watch)
        .map_err(|source| abandon(spawn_error(source)))?;

    let stdin_writer = match (stdin_pipe, stdin_bytes) {
        (Some((_reader, writer)), Some(bytes)) if !bytes.is_empty() => {
            let sender = pipe::Sender::from_owned_fd(OwnedFd::from(writer));
            sender
                .ok()
                .map(|sender| runtime.spawn(write_stdin(sender, bytes)))
        }
        _ => None,
    };
    let capture = match capture_pipe {
        Some(reader) => {
            let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
                .map_err(|source| abandon(spawn_error(source)))?;
            let (stop, stopped) = oneshot::channel();
            Some(Capture {
                reader: runtime.spawn(read_capped(receiver, stopped)),
                stop: Some(stop),
            })
        }
        None => None,
    };
    let child = Child {
        pid,
        start_time: None,
        pidfd,
        runtime,
        state: State::Running,
        stdin_writer,
        capture,
        peak_seen_kib: AtomicU64::new(0),
        peak_read: AtomicBool::new(false),
        supervisor: supervision.map(|_| supervise::Readings::default()),
    };
    Ok(child)
}

/// `/dev/null`, opened once (read and write, close-on-exec) for every child that reads or writes
/// nothing.
fn dev_null() -> io::Result<BorrowedFd<'static>> {
    static NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_fd());
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(NULL.get_or_init(|| OwnedFd::from(file)).as_fd())
}

async fn write_stdin(mut sender: pipe::Sender, bytes: Vec<u8>) {
    // A child that exits or closes stdin before reading everything is its own business (EPIPE).
    let _ = sender.write_all(&bytes).await;
}

async fn read_capped(mut receiver: pipe::Receiver, mut stop: oneshot::Receiver<()>) -> Vec<u8> {
    let mut captured = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            read = receiver.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = CAPTURE_LIMIT.saturating_sub(captured.len());
                    captured.extend_from_slice(&chunk[..n.min(room)]);
                }
            },
        }
    }
    captured
}

fn usage_of(rusage: &libc::rusage) -> Usage {
    let duration = |tv: libc::timeval| {
        let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
        let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
        Duration::new(secs, 0) + Duration::from_micros(u64::from(micros))
    };
    Usage {
        user: duration(rusage.ru_utime),
        system: duration(rusage.ru_stime),
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
        max_rss_upper_bound: false,
    }
}

/// `VmHWM` of `/proc/PID/status` in KiB: the peak resident size of the process's own memory
/// since its last `execve`. `None` for a zombie (it has no memory left) or a process that is gone.
fn read_vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Whether the process waited for children of its own (the `cminflt`, `cmajflt`, `cutime` and
/// `cstime` fields of `/proc/PID/stat` are not all zero: any process that ran has faulted pages).
/// True when it cannot be told.
fn waited_for_children(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return true;
    };
    // Field 3 (the state) comes first: fields 11 and 13 (cminflt, cmajflt), 16 and 17 (cutime,
    // cstime) are at 8, 10, 13 and 14.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    [8, 10, 13, 14]
        .iter()
        .any(|&i| fields.get(i).is_none_or(|f| *f != "0"))
}

/// This machine's name, for run ownership.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot. `None` if
/// there is no such process.
pub fn read_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (the state) is the first after the name, so field 22 is the 20th.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a live process with this pid exists on this host (a zombie, killed and not yet
/// reaped, does not count).
pub fn pid_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state (field 3) follows the command name, which is in parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Whether a process with this pid exists (running or not yet reaped) and started at
/// `start_time`, so a reused pid is never mistaken for the recorded process.
pub fn is_same_process(pid: i32, start_time: u64) -> bool {
    read_start_time(pid) == Some(start_time)
}

/// SIGKILLs a process group left over by a dead executioner if its leader is still the recorded
/// process (see [`is_same_process`]); returns whether it signalled. Never signals our own group.
pub fn kill_leftover_group(pgid: i32, start_time: u64) -> bool {
    if pgid <= 1 || pgid == getpgrp().as_raw() || !is_same_process(pgid, start_time) {
        return false;
    }
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

/// Pids of live processes whose environment holds exactly `entry` (`KEY=VALUE`); only processes
/// whose environment we may read are seen (our own user's, or all as root).
pub fn pids_with_env(entry: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ"))
            && environ.split(|b| *b == 0).any(|kv| kv == entry.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// SIGKILLs every live process carrying `entry` in its environment, then waits (bounded) until
/// none is left; returns how many were signalled. Never signals this process.
pub fn kill_marked(entry: &str, limit: Duration) -> usize {
    let me = std::process::id() as i32;
    let start = std::time::Instant::now();
    let mut signalled = 0;
    loop {
        let pids: Vec<i32> = pids_with_env(entry)
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if pids.is_empty() || start.elapsed() >= limit {
            return signalled;
        }
        for pid in pids {
            if nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                signalled += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until no live (non-zombie) process is left in group `pgid`, up to `limit`; returns
/// whether the group is gone. SIGKILL is delivered asynchronously: until its members have exited
/// they still hold their files and locks, so a new attempt must not start before this returns.
pub fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        if !group_has_live_members(pgid) {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True when some process other than a zombie has process group `pgid` (from /proc/PID/stat).
fn group_has_live_members(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces and parentheses): state ppid pgrp ...
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if group == Some(pgid) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;

//! The unsafe calls supervision needs and neither std nor nix wraps safely: `posix_spawn` with an
//! environment we built, `pidfd_open`, registering a pidfd with tokio's reactor, `wait4` on one
//! pid with its resource usage, and for the per-job supervisor: owning a descriptor it inherited
//! or duplicated, and setting signal dispositions. Each is a small safe wrapper; this is the only
//! place in the `process` module that uses `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A pidfd: readable once the process has exited (it stays unreaped until `wait4`). It never
/// changes the descriptor it owns, which is what registering it with tokio requires.
#[derive(Debug)]
pub(super) struct PidFd(OwnedFd);

impl PidFd {
    pub(super) fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes two integers by value and reads or writes no memory of ours.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("pidfd_open: bad fd"))?;
        // SAFETY: the kernel has just created this descriptor (close-on-exec) for us alone, so
        // nothing else owns or will close it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn try_clone(&self) -> io::Result<PidFd> {
        self.0.try_clone().map(PidFd)
    }

    /// Registers with the current runtime's reactor (panics outside a runtime with I/O enabled).
    pub(super) fn watch(self) -> io::Result<AsyncFd<PidFd>> {
        // SAFETY: the descriptor is valid and open: `PidFd` owns it and only closes it when
        // dropped, which happens after the `AsyncFd` deregisters it; `as_raw_fd` always returns
        // that same descriptor, since nothing can replace the field of a `PidFd` outside this
        // module and this module never does.
        let registered = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) };
        registered.map_err(io::Error::from)
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// `wait4(pid, WNOHANG)`: `None` while the process has not exited, else its raw wait status and
/// resource usage (its own plus that of the descendants it waited for).
pub(super) fn wait4_nohang(pid: i32) -> io::Result<Option<(libc::c_int, libc::rusage)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers, for which all zero bytes is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers refer to live, writable locals that outlive the call; the kernel
        // writes at most one `c_int` and one `rusage` through them.
        let ret = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if ret == pid {
            return Ok(Some((status, rusage)));
        }
        if ret == 0 {
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A close-on-exec duplicate of `fd` numbered `lowest` or above (`F_DUPFD_CLOEXEC`).
pub(super) fn dup_cloexec_above(fd: BorrowedFd<'_>, lowest: RawFd) -> io::Result<OwnedFd> {
    let duplicate = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(lowest))?;
    // SAFETY: the kernel has just created this descriptor for this call alone, so nothing else
    // owns or will close it.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// Takes ownership of descriptor `fd`, which this process inherited at `execve` and nothing in it
/// has opened or claimed since (the supervisor calls this first thing), and makes it
/// close-on-exec so it goes no further. Fails if `fd` is not open.
pub(super) fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a bare number reads no memory of ours; it fails with EBADF if the number
    // is not an open descriptor, and then nothing is claimed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (above) and was inherited, not opened by any code of this process, so
    // no other owner exists to close it (the caller takes it once, before anything else runs).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

extern "C" fn do_nothing(_signal: libc::c_int) {}

/// Catches `signal` with a handler that does nothing (and restarts interrupted system calls): the
/// process survives it, while a program it executes starts with the default action, since
/// `execve` resets handlers (an ignored disposition would be inherited).
pub(super) fn catch_and_do_nothing(signal: Signal) -> io::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(do_nothing),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler touches nothing (it is async-signal-safe), and replacing a disposition
    // cannot break another handler: the supervisor installs no others.
    unsafe { sigaction(signal, &action) }?;
    Ok(())
}

/// Sends this process `signal` (any number, real-time ones included, which nix's `Signal` does
/// not name) at its default action.
pub(super) fn raise_at_default_action(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: `signal` is a plain integer (the kernel refuses a bad one); the default action runs
    // no code of ours, and `raise` reads no memory of ours. Setting the action fails only for
    // SIGKILL and SIGSTOP, which are always at their default action anyway.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        if libc::raise(signal) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `KEY=VALUE\0`-style strings in one buffer and the NULL-terminated array of pointers to them
/// that `posix_spawn` takes for `argv` and `envp`.
pub(super) struct CStrings<'a> {
    block: &'a [u8],
    starts: Vec<usize>,
}

impl<'a> CStrings<'a> {
    /// From `block` (NUL-terminated strings) and where each string starts; `None` if a start is
    /// out of range or some string lacks its terminating NUL.
    pub(super) fn new(block: &'a [u8], starts: Vec<usize>) -> Option<CStrings<'a>> {
        let terminated = |&s: &usize| block.get(s..).is_some_and(|rest| rest.contains(&0));
        starts
            .iter()
            .all(terminated)
            .then_some(CStrings { block, starts })
    }

    /// The strings' pointers, then NULL. Valid while `self` is neither changed nor dropped.
    fn pointers(&self) -> Vec<*const c_char> {
        let base = self.block.as_ptr();
        let mut pointers: Vec<*const c_char> = self
            .starts
            .iter()
            // SAFETY: every start is within `block` (checked in `new`).
            .map(|&s| unsafe { base.add(s) }.cast::<c_char>())
            .collect();
        pointers.push(std::ptr::null());
        pointers
    }
}

/// What [`posix_spawn`] starts: `path` (absolute, or relative to `cwd`) with `argv` and exactly
/// the environment `envp`, in working directory `cwd`, with these descriptors as its stdin,
/// stdout and stderr, as the leader of a new process group, with no signal blocked and SIGPIPE
/// back to its default action (Rust ignores it in this process). With `inherit`, also that
/// descriptor as that number.
pub(super) struct Spawn<'a> {
    pub path: &'a CStr,
    pub argv: &'a CStrings<'a>,
    pub envp: &'a CStrings<'a>,
    pub cwd: &'a CStr,
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    pub inherit: Option<(BorrowedFd<'a>, RawFd)>,
}

/// Starts `spawn` with glibc's `posix_spawn` (a `vfork`-style clone: the call returns once the
/// child has executed the program, or with the error `execve` gave it). Returns the child's pid.
/// Every other descriptor of ours must be close-on-exec (std and tokio open them so).
pub(super) fn posix_spawn(spawn: &Spawn<'_>) -> io::Result<i32> {
    let mut actions = FileActions::new()?;
    actions.dup2(spawn.stdin, 0)?;
    actions.dup2(spawn.stdout, 1)?;
    actions.dup2(spawn.stderr, 2)?;
    // After the standard three: their sources may have had this number.
    if let Some((fd, number)) = spawn.inherit {
        actions.dup2(fd, number)?;
    }
    actions.chdir(spawn.cwd)?;
    let attributes = Attributes::new()?;
    let argv = spawn.argv.pointers();
    let envp = spawn.envp.pointers();
    let mut pid: libc::pid_t = 0;
    // SAFETY: `pid` is a writable local; `path` and `cwd` are NUL-terminated; `argv` and `envp`
    // are NULL-terminated arrays of pointers to NUL-terminated strings that outlive the call
    // (`CStrings` checked the terminators); the actions and attributes are initialised. The
    // descriptors are borrowed, so they stay open during the call.
    let ret = unsafe {
        libc::posix_spawn(
            &mut pid,
            spawn.path.as_ptr(),
            &actions.0,
            &attributes.0,
            argv.as_ptr().cast::<*mut c_char>(),
            envp.as_ptr().cast::<*mut c_char>(),
        )
    };
    check(ret)?;
    Ok(pid)
}

/// `posix_spawn`'s functions return the error number instead of setting `errno`.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(ret))
    }
}

/// An initialised `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut actions = MaybeUninit::uninit();
        // SAFETY: the pointer is to writable memory of the right type; on success the value is
        // initialised, and only then is it taken (and so destroyed on drop). glibc keeps no
        // pointer to the value itself, so it may move.
        check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        Ok(FileActions(unsafe { actions.assume_init() }))
    }

    fn dup2(&mut self, fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
        // SAFETY: the actions are initialised; the call copies the two integers.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(&mut self.0, fd.as_raw_fd(), target)
        })
    }

    fn chdir(&mut self, dir: &CStr) -> io::Result<()> {
        // SAFETY: the actions are initialised; glibc copies the NUL-terminated path.
        check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut self.0, dir.as_ptr()) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once, here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// An initialised `posix_spawnattr_t` for a new process group led by the child, an empty
/// signal mask and SIGPIPE at its default action; destroyed on drop.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> io::Result<Attributes> {
        let mut attributes = MaybeUninit::uninit();
        // SAFETY: as for `FileActions::new`.
        check(unsafe { libc::posix_spawnattr_init(attributes.as_mut_ptr()) })?;
        let mut attributes = Attributes(unsafe { attributes.assume_init() });
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: the attributes are initialised; each signal set is initialised by
        // `sigemptyset` before it is read, and the setters copy what they are given.
        unsafe {
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigemptyset(pipe.as_mut_ptr());
            libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
            check(libc::posix_spawnattr_setpgroup(&mut attributes.0, 0))?;
            check(libc::posix_spawnattr_setsigmask(
                &mut attributes.0,
                empty.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut attributes.0,
                pipe.as_ptr(),
            ))?;
            check(libc::posix_spawnattr_setflags(
                &mut attributes.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attributes)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once, here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

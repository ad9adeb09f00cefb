//! The unsafe calls supervision needs and neither std nor nix wraps safely: `pidfd_open`,
//! registering a pidfd with tokio's reactor, and `wait4` on one pid with its resource usage. Each
//! is a small safe wrapper; this is the only place in the `process` module that uses `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

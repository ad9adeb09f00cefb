//! One controller per state folder: an OS file lock on `controller.lock`, released by the kernel
//! when the process dies, holding the owner's pid for the message a second controller prints.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct ControllerLock {
    _lock: Flock<std::fs::File>,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another controller (pid {pid}) holds {}", path.display())]
    Held { pid: String, path: PathBuf },
    #[error("cannot open {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Takes the lock without waiting.
pub fn acquire(state_dir: &Path) -> Result<ControllerLock, LockError> {
    let path = crate::state_dir::controller_lock_path(state_dir);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    let file = crate::state_dir::open_lock_file(&path).map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(io)?;
            lock.rewind().map_err(io)?;
            write!(lock, "{}", std::process::id()).map_err(io)?;
            lock.sync_all().map_err(io)?;
            Ok(ControllerLock { _lock: lock, path })
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(LockError::Held {
                pid: pid.trim().to_owned(),
                path,
            })
        }
    }
}

/// The pid the lock file names: the controller holding it, or the last one that did (a stale pid
/// once it stopped); `None` when no controller ever ran here.
pub fn holder_pid(state_dir: &Path) -> Option<u32> {
    let path = crate::state_dir::controller_lock_path(state_dir);
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

//! Finding the program to execute the way `execvp` would, but with the child's `PATH` and working
//! directory rather than ours, and with an error that says what was searched.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

/// What `execvp` uses when `PATH` is not set at all.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The path to execute for `program`: a name with a slash is taken relative to `cwd` (the child's
/// working directory, where a shell running in it would look); a bare name is searched in the
/// `PATH` of `env` (the last one wins, as it would in the child), entries relative to `cwd`.
pub(super) fn resolve(
    program: &OsStr,
    env: &[(String, String)],
    cwd: &Path,
) -> io::Result<PathBuf> {
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty program name",
        ));
    }
    if program.as_bytes().contains(&b'/') {
        return Ok(cwd.join(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(key, _)| key == "PATH")
        .map_or(DEFAULT_PATH, |(_, value)| value.as_str());
    let mut not_executable = None;
    for dir in path.split(':') {
        // An empty entry means the working directory, as in execvp.
        let candidate = cwd
            .join(if dir.is_empty() { "." } else { dir })
            .join(program);
        if !candidate.is_file() {
            continue;
        }
        if access(&candidate, AccessFlags::X_OK).is_ok() {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    Err(match not_executable {
        Some(candidate) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not executable", candidate.display()),
        ),
        None => io::Error::new(
            io::ErrorKind::NotFound,
            format!("not found in PATH ({path})"),
        ),
    })
}

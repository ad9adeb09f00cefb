//! Finding the program to execute the way `execvp` would, but with the child's `PATH` and working
//! directory rather than ours, and with an error that says what was searched.
//!
//! A program found is remembered for [`REMEMBER`] per (name, `PATH`, working directory): a
//! pipeline of a thousand shell jobs looks `sh` up once, not a thousand times through every `PATH`
//! entry. A name not found is never remembered, and a remembered path that has gone fails the
//! spawn, which forgets it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::unistd::{AccessFlags, access};

/// How long a program found stays remembered.
const REMEMBER: Duration = Duration::from_secs(1);
/// Entries kept at most (all are dropped when more would be).
const REMEMBERED_MAX: usize = 256;

type Key = (OsString, String, PathBuf);

static REMEMBERED: Mutex<Option<HashMap<Key, (PathBuf, Instant)>>> = Mutex::new(None);

/// Forgets `program` as found for this `PATH` and `cwd` (its path failed to execute).
pub(super) fn forget(program: &OsStr, search_path: Option<&str>, cwd: &Path) {
    let key = (
        program.to_owned(),
        search_path.unwrap_or(DEFAULT_PATH).to_owned(),
        cwd.to_owned(),
    );
    let mut remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(map) = remembered.as_mut() {
        map.remove(&key);
    }
}

/// What `execvp` uses when `PATH` is not set at all.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The path to execute for `program`: a name with a slash is taken relative to `cwd` (the child's
/// working directory, where a shell running in it would look); a bare name is searched in the
/// `search_path` (the child's `PATH`; `None` when it has none), entries relative to `cwd`.
pub(super) fn resolve(
    program: &OsStr,
    search_path: Option<&str>,
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
    let path = search_path.unwrap_or(DEFAULT_PATH);
    let key = (program.to_owned(), path.to_owned(), cwd.to_owned());
    let now = Instant::now();
    {
        let remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((found, at)) = remembered.as_ref().and_then(|map| map.get(&key))
            && now.duration_since(*at) < REMEMBER
        {
            return Ok(found.clone());
        }
    }
    let found = search(program, path, cwd)?;
    let mut remembered = REMEMBERED.lock().unwrap_or_else(PoisonError::into_inner);
    let map = remembered.get_or_insert_with(HashMap::new);
    if map.len() >= REMEMBERED_MAX {
        map.clear();
    }
    map.insert(key, (found.clone(), now));
    Ok(found)
}

/// Searches `path` (a `PATH` value) for `program` as `execvp` would.
fn search(program: &OsStr, path: &str, cwd: &Path) -> io::Result<PathBuf> {
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

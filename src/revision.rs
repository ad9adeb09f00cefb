//! The source revision of a manifests folder: the git commit its work tree is at (`git rev-parse
//! HEAD`), with `-dirty` appended when `git status --porcelain` lists a change under the folder.
//! It owns asking git (a child process with arguments, no shell, a timeout); it does not store
//! the revision (the store records one per generation) nor decide when to ask (the controller
//! asks once per pass that records a new spec, see [`FolderRevision`]).
//!
//! A revision is a nicety, never a condition: no `git` on the PATH, a folder outside a work tree,
//! a repository without commits, one git refuses (`safe.directory`), a timeout or any other failure
//! is no revision, silently.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// How long one git command may take before it is killed (and there is no revision).
pub const GIT_TIMEOUT: Duration = Duration::from_secs(3);

/// The suffix of a revision whose folder has uncommitted changes.
pub const DIRTY_SUFFIX: &str = "-dirty";

/// The revision of the manifests folder `dir`, or `None` when there is none to tell. Blocking:
/// up to two git commands, each bounded by [`GIT_TIMEOUT`].
pub fn of_folder(dir: &Path) -> Option<String> {
    let head = git(dir, &["rev-parse", "--verify", "--quiet", "HEAD"])?;
    let head = head.trim();
    // A commit id and nothing else (SHA-1 or SHA-256 repositories).
    if head.len() < 40 || !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Only changes under the folder count, and not its `.status/` files (the controller writes
    // them there; they are not the desired state).
    let changes = git(
        dir,
        &[
            "status",
            "--porcelain",
            "--untracked-files=normal",
            "--",
            ".",
            ":(exclude).status",
        ],
    )?;
    Some(if changes.trim().is_empty() {
        head.to_owned()
    } else {
        format!("{head}{DIRTY_SUFFIX}")
    })
}

/// Runs `git -C DIR ARGS...` and returns its standard output when it exits 0 within the timeout.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // The folder decides the repository, not an environment inherited from a git hook.
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        // `git status` would otherwise refresh the index and take its lock, and a user's own git
        // command at that moment would fail on it.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    // Read while it runs: a long `status` listing would fill the pipe and never exit.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    match child.wait_timeout(GIT_TIMEOUT) {
        Ok(Some(status)) if status.success() => reader.join().ok()?.ok(),
        Ok(Some(_)) => None,
        Ok(None) | Err(_) => {
            // The reader ends when the killed child's end of the pipe closes.
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// The revision of a folder asked of git at most once, on first use: a reconcile pass that
/// records several new specs asks once, and a pass that records none never asks.
#[derive(Debug)]
pub struct FolderRevision {
    dir: PathBuf,
    asked: Option<Option<String>>,
}

impl FolderRevision {
    pub fn new(dir: &Path) -> Self {
        FolderRevision {
            dir: dir.to_owned(),
            asked: None,
        }
    }

    /// The revision, asking git (off the async worker threads) the first time.
    pub async fn get(&mut self) -> Option<&str> {
        if self.asked.is_none() {
            let dir = self.dir.clone();
            let found = tokio::task::spawn_blocking(move || of_folder(&dir))
                .await
                .ok()
                .flatten();
            self.asked = Some(found);
        }
        self.asked.as_ref().and_then(Option::as_deref)
    }
}

/// A revision as a table shows it: the commit's first 12 characters, and `-dirty` if it is.
pub fn short(revision: &str) -> String {
    let (commit, dirty) = match revision.strip_suffix(DIRTY_SUFFIX) {
        Some(commit) => (commit, DIRTY_SUFFIX),
        None => (revision, ""),
    };
    let commit = commit.get(..12).unwrap_or(commit);
    format!("{commit}{dirty}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keeps_the_dirty_mark() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(short(sha), "0123456789ab");
        assert_eq!(short(&format!("{sha}-dirty")), "0123456789ab-dirty");
        assert_eq!(short("abc"), "abc");
    }

    /// A folder outside any work tree has no revision, and asking does not fail.
    #[test]
    fn no_work_tree_no_revision() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A repository around the temp folder (unlikely, but /tmp could be one) would make this
        // test meaningless, not wrong.
        let outside = git(tmp.path(), &["rev-parse", "--is-inside-work-tree"]).is_none();
        if outside {
            assert_eq!(of_folder(tmp.path()), None);
        }
        assert_eq!(of_folder(&tmp.path().join("missing")), None);
    }
}

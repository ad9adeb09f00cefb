//! Whether a manifest file or the manifests folder may be trusted, judged by owner and mode as
//! cron and sshd judge their files: a manifest is a program the controller runs as its own user,
//! so one that another user could have written is refused. A manifest must be owned by the
//! controller's user, root or a `security.trusted_owners` entry, and be writable by its owner
//! only; the folder must not be writable by others unless it has the sticky bit (then others can
//! add files, which they own and which are therefore refused, but not replace ours).
//!
//! This module only looks at metadata (`lstat`); it reads no file and decides nothing else.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{SecurityConfig, TrustedOwner};

/// Mode bits: writable by group, by others; the sticky bit.
const GROUP_WRITE: u32 = 0o020;
const OTHER_WRITE: u32 = 0o002;
const STICKY: u32 = 0o1000;

/// The owners whose manifests the controller runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    uids: Vec<u32>,
}

/// A file or folder that fails the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insecure {
    /// A manifest writable by group or others.
    Writable { mode: u32 },
    /// A manifest owned by a user who is not trusted.
    Owner { uid: u32, user: Option<String> },
    /// The folder is writable by others and has no sticky bit.
    OpenFolder { mode: u32 },
}

impl fmt::Display for Insecure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Insecure::Writable { mode } => write!(
                f,
                "writable by group or others (mode {:04o}): anyone who can write it could run \
                 commands as the controller's user; make it writable by its owner only \
                 (chmod go-w) (InsecurePermissions)",
                mode & 0o7777
            ),
            Insecure::Owner { uid, user } => write!(
                f,
                "owned by {}, not by the controller's user, root or a security.trusted_owners \
                 entry (InsecurePermissions)",
                user_label(*uid, user.as_deref())
            ),
            Insecure::OpenFolder { mode } => write!(
                f,
                "writable by others without the sticky bit (mode {:04o}): anyone could replace a \
                 manifest; run chmod o-w (or chmod +t) on it",
                mode & 0o7777
            ),
        }
    }
}

fn user_label(uid: u32, user: Option<&str>) -> String {
    match user {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// `security.trusted_owners` names a user that does not exist.
#[derive(Debug, Clone, thiserror::Error)]
#[error("security.trusted_owners: no user named `{name}` on this machine")]
pub struct UnknownOwner {
    pub name: String,
}

/// A path that failed the check, for messages.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct InsecurePath {
    pub path: PathBuf,
    pub problem: Insecure,
}

impl Trust {
    /// The process's effective user, root, and the configured trusted owners (names resolved).
    pub fn from_config(security: &SecurityConfig) -> Result<Trust, UnknownOwner> {
        let mut uids = vec![nix::unistd::geteuid().as_raw(), 0];
        for owner in &security.trusted_owners {
            let uid = match owner {
                TrustedOwner::Uid(uid) => *uid,
                TrustedOwner::Name(name) => match name.parse::<u32>() {
                    Ok(uid) => uid,
                    Err(_) => nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                        .ok_or_else(|| UnknownOwner { name: name.clone() })?,
                },
            };
            uids.push(uid);
        }
        Ok(Trust { uids })
    }

    /// Checks a manifest from its (`lstat`) metadata.
    pub fn check_manifest(&self, meta: &std::fs::Metadata) -> Result<(), Insecure> {
        let mode = meta.mode();
        if !self.uids.contains(&meta.uid()) {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
                .ok()
                .flatten()
                .map(|u| u.name);
            return Err(Insecure::Owner {
                uid: meta.uid(),
                user,
            });
        }
        if mode & (GROUP_WRITE | OTHER_WRITE) != 0 {
            return Err(Insecure::Writable { mode });
        }
        Ok(())
    }

    /// Checks the manifest at `path`; a file that cannot be stat'ed is left to the reader.
    pub fn check_manifest_path(&self, path: &Path) -> Result<(), InsecurePath> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => self.check_manifest(&meta).map_err(|problem| InsecurePath {
                path: path.to_owned(),
                problem,
            }),
            Err(_) => Ok(()),
        }
    }
}

/// Checks the manifests folder: refused when writable by others without the sticky bit. A folder
/// that does not exist (yet) passes.
pub fn check_folder(dir: &Path) -> Result<(), InsecurePath> {
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = meta.mode();
    if mode & OTHER_WRITE != 0 && mode & STICKY == 0 {
        return Err(InsecurePath {
            path: dir.to_owned(),
            problem: Insecure::OpenFolder { mode },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn trust() -> Trust {
        Trust::from_config(&SecurityConfig::default()).unwrap()
    }

    #[test]
    fn modes_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(&file, "x").unwrap();
        for (mode, ok) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(trust().check_manifest_path(&file).is_ok(), ok, "{mode:o}");
        }
        for (mode, ok) in [(0o755, true), (0o775, true), (0o777, false), (0o1777, true)] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_folder(dir.path()).is_ok(), ok, "{mode:o}");
        }
        let unknown = SecurityConfig {
            trusted_owners: vec![TrustedOwner::Name("no-such-user-here".into())],
            ..SecurityConfig::default()
        };
        assert!(Trust::from_config(&unknown).is_err());
    }
}

//! The one error type of the command line and the exit code each kind of failure means.
//!
//! Owns the mapping from the modules' errors to DESIGN section 3's exit codes and renders an
//! error with its `source()` chain (through [`crate::error_chain`], which the engine and the
//! controller use too); it does not print (the callers in `cli/` do) and it does not decide
//! messages of the modules' errors (their `#[error]` attributes do, without repeating their
//! source, which the chain prints once).

use crate::config::ConfigError;
use crate::controller::ControllerError;
use crate::controller::lock::LockError;
use crate::engine::EngineError;
use crate::notify::NotifyError;
use crate::store::{RunId, StoreError};

use super::Exit;

/// An error on its way to the user: a module's error as it is, or a message of the CLI's own.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A usage error, a missing file, unreadable state (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A pipeline or job failed, or validation failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The user stopped the command (exit 130).
    #[error("interrupted")]
    Interrupted,
    /// A run's pinned spec in the state database cannot be read back (exit 3, as corruption).
    #[error("run {run}: pinned spec unreadable")]
    PinnedSpec {
        run: RunId,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The exit code this error means (DESIGN section 3). Every variant is named: a new one must
    /// decide its code here.
    pub fn exit_code(&self) -> Exit {
        match self {
            CliError::Usage(_) => Exit::Usage,
            CliError::Failed(_) => Exit::Failed,
            CliError::Interrupted => Exit::Interrupted,
            CliError::PinnedSpec { .. } => Exit::Corrupt,
            CliError::Store(e) => store_exit(e),
            // Today's codes: a failing engine or controller is "unreadable state" (2), even when
            // the store below it failed.
            CliError::Config(_)
            | CliError::Engine(_)
            | CliError::Controller(_)
            | CliError::Lock(_)
            | CliError::Notify(_) => Exit::Usage,
        }
    }

    /// The message for the user: this error, then each of its sources once (`outer: inner`).
    pub fn render(&self) -> String {
        chain(self)
    }
}

/// Corruption and a newer schema are exit 3 (never silently recreated); anything else exit 2.
fn store_exit(e: &StoreError) -> Exit {
    if e.is_corruption() {
        Exit::Corrupt
    } else {
        Exit::Usage
    }
}

pub use crate::error_chain::render as chain;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "the disk said no")
    }

    fn sql() -> StoreError {
        StoreError::Direct {
            context: "reading runs",
            source: rusqlite::Error::InvalidQuery,
        }
    }

    #[test]
    fn every_variant_maps_to_its_exit_code() {
        let path = PathBuf::from("/state/executioner.db");
        let cases: Vec<(CliError, Exit)> = vec![
            (CliError::usage("bad flag"), Exit::Usage),
            (CliError::failed("job failed"), Exit::Failed),
            (CliError::Interrupted, Exit::Interrupted),
            (
                CliError::PinnedSpec {
                    run: RunId::from(4),
                    source: serde_json::from_str::<u8>("x").unwrap_err(),
                },
                Exit::Corrupt,
            ),
            (
                StoreError::Corrupt {
                    path: path.clone(),
                    detail: "bad page".into(),
                }
                .into(),
                Exit::Corrupt,
            ),
            (
                StoreError::NotFound {
                    what: "run 9".into(),
                }
                .into(),
                Exit::Usage,
            ),
            (
                ConfigError::Io {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::PermissionDenied),
                }
                .into(),
                Exit::Usage,
            ),
            (
                EngineError::Store {
                    run: 4.into(),
                    source: sql(),
                }
                .into(),
                Exit::Usage,
            ),
            (
                ControllerError::Folder {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::NotFound),
                }
                .into(),
                Exit::Usage,
            ),
            (
                LockError::Io {
                    path: path.clone(),
                    source: io(std::io::ErrorKind::PermissionDenied),
                }
                .into(),
                Exit::Usage,
            ),
            (
                NotifyError::RunNotFound { run: 4.into() }.into(),
                Exit::Usage,
            ),
        ];
        for (error, exit) in cases {
            assert_eq!(error.exit_code(), exit, "{error:?}");
        }
    }

    #[test]
    fn a_nested_source_is_printed_once() {
        let error = CliError::from(EngineError::Store {
            run: 4.into(),
            source: sql(),
        });
        let text = error.render();
        assert_eq!(
            text,
            format!(
                "recording run 4: state database failed while reading runs: {}",
                rusqlite::Error::InvalidQuery
            )
        );
        let config = CliError::from(ConfigError::Io {
            path: PathBuf::from("/etc/x.toml"),
            source: io(std::io::ErrorKind::PermissionDenied),
        });
        assert_eq!(
            config.render(),
            "/etc/x.toml: cannot read configuration: the disk said no"
        );
    }

    /// The errors whose messages used to repeat their source: rendered, the cause shows once.
    #[test]
    fn a_cause_is_rendered_once() {
        let cause = "the disk said no";
        let load = crate::spec::LoadError::Io {
            path: PathBuf::from("/m/etl.yaml"),
            source: io(std::io::ErrorKind::PermissionDenied),
        };
        let spawn = crate::process::ProcessError::Spawn {
            program: "etl".into(),
            source: io(std::io::ErrorKind::NotFound),
        };
        let wait = crate::process::ProcessError::Wait {
            pid: 42,
            source: io(std::io::ErrorKind::Interrupted),
        };
        let cases: [(&dyn std::error::Error, String); 3] = [
            (&load, format!("/m/etl.yaml: cannot read: {cause}")),
            (&spawn, format!("cannot start etl: {cause}")),
            (&wait, format!("waiting for pid 42: {cause}")),
        ];
        for (error, expected) in cases {
            assert_eq!(chain(error), expected);
            assert!(!error.to_string().contains(cause), "{error}");
        }

        let dag = crate::dag::DagError::SelfDependency(3);
        let dag_text = dag.to_string();
        let plan = crate::engine::PlanError::from(dag);
        let text = chain(&plan);
        assert_eq!(
            text,
            format!("cannot order the jobs by their dependencies: {dag_text}")
        );
        assert_eq!(text.matches(&dag_text).count(), 1);
    }
}

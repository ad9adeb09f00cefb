//! The command line: clap definitions, one file per command, rendering and exit codes.
//!
//! This is the only module that prints or decides an exit code. Library errors arrive here as
//! values and are rendered once, with their chain, by [`main`].

mod compat;
mod convert;
mod graph;
mod init;
mod schema;
mod validate;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit codes, as in DESIGN section 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// A pipeline or job failed, or validation failed.
    Failed = 1,
    /// Usage error, missing file, unreadable state.
    Usage = 2,
    /// The state database is corrupt or of a newer schema.
    Corrupt = 3,
    Interrupted = 130,
}

/// An error on its way to the user, with the exit code it means.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Renders an error and its sources once: `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

pub type CliResult = Result<Exit, CliError>;

#[derive(Debug, Parser)]
#[command(
    name = "executioner",
    version,
    about = "A declarative job orchestrator: DAGs of shell jobs with retries, timeouts, checks and a reconciling controller",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML or YAML); default ./executioner.toml when present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State folder (database, logs, lock). Default .executioner/ in the working directory.
    #[arg(long, global = true, value_name = "DIR", env = "EXECUTIONER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// More output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate manifests (files or folders): schema and semantic checks, every error as FILE:LINE:COL.
    Validate {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the Pipeline JSON Schema, or write pipeline.schema.json and config.schema.json to a folder.
    Schema {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the DAG of a manifest as Mermaid or Graphviz text.
    Graph {
        /// A manifest file, or the name of a pipeline in the manifests folder.
        target: String,
        #[arg(long, value_enum, default_value = "mermaid")]
        format: GraphFormat,
        /// Manifests folder used to find a pipeline by name.
        #[arg(long, value_name = "DIR", default_value = "manifests")]
        manifests: PathBuf,
    },
    /// Convert the original tool's JSON config to a v1 YAML manifest (printed).
    Convert { file: PathBuf },
    /// Write a commented sample manifest (pipeline.yaml) into DIR.
    Init {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the sample instead of writing it.
        #[arg(long)]
        print: bool,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// Entry point of the binary: returns the process exit code.
pub fn main() -> i32 {
    let args = compat::translate(std::env::args_os().collect());
    run(args) as i32
}

/// Parses `args` and runs the command, printing errors; returns the exit code.
pub fn run(args: Vec<OsString>) -> Exit {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit
        }
    }
}

fn dispatch(cli: Cli) -> CliResult {
    match cli.command {
        Command::Validate { paths } => validate::run(&paths, &cli.global),
        Command::Schema { out_dir } => schema::run(out_dir.as_deref()),
        Command::Graph {
            target,
            format,
            manifests,
        } => graph::run(&target, format, &manifests),
        Command::Convert { file } => convert::run(&file),
        Command::Init { dir, print } => init::run(&dir, print),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "executioner", &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

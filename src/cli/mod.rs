//! The command line: clap definitions, one file per command, rendering and exit codes.
//!
//! This is the only module that prints or decides an exit code. Library errors arrive here as
//! values, wrapped in [`CliError`] (`error.rs`), and are rendered once, with their chain, by [`run`].

mod apply;
mod compat;
mod controller;
mod convert;
mod diff;
mod error;
mod gc;
mod graph;
mod history;
mod init;
mod logging;
mod params;
mod prune;
mod render;
mod run;
mod schema;
mod shipped;
mod suspend;
mod validate;
mod wait;
mod worker;
mod workers;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::store::RunId;

pub use error::CliError;

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

pub type CliResult = Result<Exit, CliError>;

#[derive(Debug, Parser)]
#[command(
    name = "executioner",
    version,
    about = "A declarative job orchestrator: DAGs of shell jobs with retries, timeouts, checks and a reconciling controller",
    propagate_version = true,
    after_help = "Examples:
  executioner init && executioner run pipeline.yaml
  executioner controller --manifests manifests/
  executioner runs show 42
  executioner <COMMAND> --help    (each command's own examples)"
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
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// State database: a `postgres://` URL to share one among hosts (config `database.url`);
    /// absent: SQLite in the state folder.
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// More log output: -v debug, -vv trace (overrides log_level).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: errors only (log_level error).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
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
    #[command(after_help = "Examples:
  executioner validate pipeline.yaml
  executioner validate manifests/ other.toml")]
    Validate {
        /// Manifest files, or folders whose manifests are all validated.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the Pipeline JSON Schema, or write pipeline.schema.json and config.schema.json to a folder.
    #[command(after_help = "Examples:
  executioner schema > pipeline.schema.json
  executioner schema --out-dir schemas")]
    Schema {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print the DAG of a manifest as Mermaid or Graphviz text.
    #[command(after_help = "Examples:
  executioner graph pipeline.yaml
  executioner graph nightly-etl --format dot | dot -Tsvg > etl.svg")]
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
    #[command(after_help = "Examples:
  executioner convert jobs_config.json > pipeline.yaml")]
    Convert {
        /// The original tool's JSON config file.
        file: PathBuf,
    },
    /// Write a commented sample manifest (pipeline.yaml) into DIR.
    #[command(after_help = "Examples:
  executioner init
  executioner init manifests/
  executioner init --print > my-pipeline.yaml")]
    Init {
        /// The folder to write pipeline.yaml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the sample instead of writing it.
        #[arg(long)]
        print: bool,
        /// Overwrite an existing pipeline.yaml.
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  executioner completions bash > /etc/bash_completion.d/executioner
  executioner completions zsh > ~/.zfunc/_executioner")]
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
    },
    /// Run one pipeline in the foreground.
    #[command(after_help = "Examples:
  executioner run pipeline.yaml
  executioner run pipeline.yaml --workers 4 --env RUN_DATE=2026-11-26
  executioner run pipeline.yaml --dry-run
  executioner run pipeline.yaml --resume-from 42 --failed-only")]
    Run(run::RunArgs),
    /// Continue a run (same id, a new round) with the spec it was started with.
    #[command(after_help = "Examples:
  executioner resume 42
  executioner resume 42 --failed-only")]
    Resume {
        /// The run's id (as `executioner runs` lists it).
        run: RunId,
        /// Run again only the jobs that failed (or were lost) and what they kept from running.
        #[arg(long)]
        failed_only: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Run history, newest first; `runs show RUN` for one run.
    #[command(after_help = "Examples:
  executioner runs
  executioner runs --pipeline nightly-etl --limit 5
  executioner runs show 42 -o json")]
    Runs {
        #[command(subcommand)]
        show: Option<RunsCommand>,
        /// Only runs of this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// How many runs (the newest), at least 1.
        #[arg(long, default_value_t = 20, value_parser = at_least_one::<i64>)]
        limit: i64,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// A job's log, or the run's own log.
    #[command(after_help = "Examples:
  executioner logs 42
  executioner logs 42 extract
  executioner logs 42 extract --follow")]
    Logs {
        /// The run's id.
        run: RunId,
        /// A job of the run (default: the run's own log).
        job: Option<String>,
        /// Keep printing until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Workers registered in the PostgreSQL state database: labels, slots, running attempts,
    /// last heartbeat, state.
    #[command(after_help = "Examples:
  executioner workers
  executioner workers -o json | jq '.[] | select(.state == \"Live\")'")]
    Workers {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Watch a manifests folder and reconcile: every pipeline's current generation is run to a
    /// terminal state; status files go to MANIFESTS/.status/NAME.yaml.
    #[command(after_help = "Examples:
  executioner controller
  executioner controller --manifests /etc/executioner/manifests
  executioner controller --once")]
    Controller {
        /// Manifests folder (default: configuration manifests_dir, i.e. manifests/).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Reconcile until every current manifest's run is terminal, then exit.
        #[arg(long)]
        once: bool,
        /// Serve the JSON API, /metrics and health on ADDR (overrides config `http.listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// With a PostgreSQL database: attempts this controller runs itself, through its
        /// embedded worker (default: config `workers`; 0: none, only separate workers run jobs).
        #[arg(long, value_name = "N")]
        slots: Option<usize>,
    },
    /// Run jobs for the controllers of a PostgreSQL state database (DESIGN 9): claims queued
    /// attempts whose `runOn` labels match its own, with a lease on each.
    #[command(after_help = "Examples:
  executioner worker --database-url postgres://exe@db/executioner
  executioner worker --name gpu-1 --labels gpu=true,zone=eu --slots 4")]
    Worker {
        /// Unique among live workers (default: this host's name).
        #[arg(long)]
        name: Option<String>,
        /// Labels placement matches (`runOn`): KEY=VALUE,... (repeatable).
        #[arg(long, value_name = "K=V,...")]
        labels: Vec<String>,
        /// Attempts run at once (default: config `workers`, i.e. the number of CPUs).
        #[arg(long, value_name = "N")]
        slots: Option<usize>,
    },
    /// Validate manifests, then write them atomically into the manifests folder.
    #[command(after_help = "Examples:
  executioner apply -f pipeline.yaml
  executioner apply -f pipelines/ --wait --timeout 10m
  executioner apply -f pipeline.yaml --dry-run
  executioner apply -f pipelines/ --prune")]
    Apply(apply::ApplyArgs),
    /// Show what `apply -f PATH` would change, as a unified diff per pipeline: exit 0 no change, 1 changes, 2 error.
    #[command(after_help = "Examples:
  executioner diff -f pipelines/
  executioner diff -f pipelines/ --prune
  executioner diff -f pipelines/ > /dev/null || executioner apply -f pipelines/")]
    Diff(diff::DiffArgs),
    /// Remove a pipeline's manifest from the manifests folder; the controller cancels its run.
    #[command(after_help = "Examples:
  executioner delete nightly-etl")]
    Delete {
        /// The pipeline's name (metadata.name).
        name: String,
        /// Manifests folder (default: configuration manifests_dir, i.e. manifests/).
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
    },
    /// Pipelines: phase, generation, last run, job progress (works without a running controller).
    #[command(after_help = "Examples:
  executioner status
  executioner status nightly-etl -o yaml
  executioner status --watch")]
    Status {
        /// One pipeline's name (metadata.name); default: every pipeline.
        name: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: controller::StatusFormat,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        manifests: Option<PathBuf>,
    },
    /// Block until the current generation's run of NAME is terminal (0 Succeeded, 1 Failed, 2 timeout).
    #[command(after_help = "Examples:
  executioner wait nightly-etl
  executioner apply -f etl.yaml && executioner wait nightly-etl --timeout 30m")]
    Wait {
        /// The pipeline's name (metadata.name).
        name: String,
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Ask the controller for a new run of the current generation.
    #[command(after_help = "Examples:
  executioner rerun nightly-etl
  executioner rerun nightly-etl --param date=2026-11-30")]
    Rerun {
        /// The pipeline's name (metadata.name).
        name: String,
        /// A run parameter for the new run: `--param NAME=VALUE` (repeatable), checked against
        /// the pipeline's `spec.params`.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        param: Vec<String>,
    },
    /// Stop new runs of a pipeline: sets `spec.suspend: true` in its manifest (a run going on
    /// finishes).
    #[command(after_help = "Examples:
  executioner suspend nightly-etl
  executioner suspend nightly-etl --manifests /srv/manifests")]
    Suspend {
        /// The pipeline's name (metadata.name).
        name: String,
        /// Manifests folder (default: configuration manifests_dir, i.e. manifests/).
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
    },
    /// Resume new runs of a suspended pipeline: sets `spec.suspend: false` in its manifest.
    #[command(after_help = "Examples:
  executioner unsuspend nightly-etl")]
    Unsuspend {
        /// The pipeline's name (metadata.name).
        name: String,
        /// Manifests folder (default: configuration manifests_dir, i.e. manifests/).
        #[arg(long, value_name = "DIR")]
        manifests: Option<PathBuf>,
    },
    /// The effective configuration and where each value came from (secrets masked).
    #[command(after_help = "Examples:
  executioner config
  executioner --config /etc/executioner/config.toml config -o json")]
    Config {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Prune the run history beyond each pipeline's retention policy (spec.history, config
    /// history.*): finished runs with their logs; never a running run or a pipeline's latest.
    #[command(after_help = "Examples:
  executioner gc --dry-run
  executioner gc
  executioner gc -o json | jq .logBytes")]
    Gc(gc::GcArgs),
    /// Mark failed or skipped jobs of a finished run as succeeded (an audit event is recorded).
    #[command(after_help = "Examples:
  executioner mark-success 42 load --reason \"loaded by hand\"
  executioner mark-success 42 load,report && executioner resume 42")]
    MarkSuccess {
        /// The run's id.
        run: RunId,
        /// The jobs to mark (comma-separated or several arguments).
        #[arg(required = true, value_delimiter = ',')]
        jobs: Vec<String>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One run with every job: phase, reason, attempts, exit code, times, log path.
    #[command(after_help = "Examples:
  executioner runs show 42
  executioner runs show 42 -o json | jq '.jobs[] | select(.phase == \"Failed\")'")]
    Show {
        /// The run's id.
        run: RunId,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

/// A count flag that must be positive (`--workers`, `--limit`): zero is a usage error.
pub fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + From<u8> + PartialOrd,
{
    let value: T = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if value < T::from(1) {
        return Err("must be at least 1".into());
    }
    Ok(value)
}

/// Entry point of the binary: returns the process exit code.
pub fn main() -> i32 {
    quiet_broken_pipe();
    raise_fd_limit();
    let args = compat::translate(std::env::args_os().collect());
    run(args) as i32
}

/// `executioner runs | head` closes our stdout early: end quietly, as other CLI tools do, instead
/// of reporting a panic. (SIGPIPE stays ignored: the process writes to children's pipes.)
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Every running job holds a few descriptors (its pidfd, a log file while spawning): raise the
/// soft limit to the hard one so that a thousand parallel jobs do not hit EMFILE.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
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
    logging::init(&cli.global);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.render());
            e.exit_code()
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
        Command::Init { dir, print, force } => init::run(&dir, print, force),
        Command::Run(args) => run::run(args, &cli.global),
        Command::Resume {
            run,
            failed_only,
            output,
        } => run::resume(run, failed_only, output, &cli.global),
        Command::Runs {
            show: Some(RunsCommand::Show { run, output }),
            ..
        } => history::show(run, output, &cli.global),
        Command::Runs {
            show: None,
            pipeline,
            limit,
            output,
        } => history::list(pipeline.as_deref(), limit, output, &cli.global),
        Command::Logs { run, job, follow } => {
            history::logs(run, job.as_deref(), follow, &cli.global)
        }
        Command::Workers { output } => workers::run(output, &cli.global),
        Command::Controller {
            manifests,
            once,
            listen,
            slots,
        } => controller::run_controller(manifests.as_deref(), once, listen, slots, &cli.global),
        Command::Worker {
            name,
            labels,
            slots,
        } => worker::run_worker(name, &labels, slots, &cli.global),
        Command::Status {
            name,
            output,
            watch,
            manifests,
        } => controller::status(
            name.as_deref(),
            output,
            watch,
            manifests.as_deref(),
            &cli.global,
        ),
        Command::Wait { name, timeout } => wait::wait_for(&name, None, timeout, &cli.global),
        Command::Suspend { name, manifests } => {
            suspend::run(&name, true, manifests.as_deref(), &cli.global)
        }
        Command::Unsuspend { name, manifests } => {
            suspend::run(&name, false, manifests.as_deref(), &cli.global)
        }
        Command::Rerun { name, param } => controller::rerun(&name, &param, &cli.global),
        Command::Config { output } => {
            let loaded = load_config_layers(&cli.global)?;
            let rows = crate::config::Config::describe(&loaded);
            match output {
                OutputFormat::Json => {
                    let items: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(k, v, src)| serde_json::json!({"key": k, "value": serde_json::from_str::<serde_json::Value>(v).unwrap_or(serde_json::json!(v)), "source": src}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&items).unwrap_or_default()
                    );
                }
                OutputFormat::Table => {
                    for (k, v, src) in rows {
                        println!("{k} = {v}    # {src}");
                    }
                }
            }
            Ok(Exit::Success)
        }
        Command::Apply(args) => apply::run(&args, &cli.global),
        Command::Diff(args) => diff::run(&args, &cli.global),
        Command::Gc(args) => gc::run(&args, &cli.global),
        Command::Delete { name, manifests } => {
            apply::delete(&name, manifests.as_deref(), &cli.global)
        }
        Command::MarkSuccess { run, jobs, reason } => {
            history::mark_success(run, &jobs, reason.as_deref(), &cli.global)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "executioner", &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
}

/// A duration flag: `90s`, `1h30m` or seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::spec::Duration::parse(text).map(crate::spec::Duration::as_std)
}

/// The configuration, with the command-line flags that override it.
pub fn load_config(global: &GlobalArgs) -> Result<crate::config::Config, CliError> {
    load_config_layers(global).map(|l| l.config)
}

/// The configuration with the source of every value.
pub fn load_config_layers(global: &GlobalArgs) -> Result<crate::config::Loaded, CliError> {
    let mut flags: Vec<(&str, serde_json::Value, &str)> = Vec::new();
    if let Some(dir) = &global.state_dir {
        flags.push(("state_dir", serde_json::json!(dir), "--state-dir"));
    }
    if let Some(url) = &global.database_url {
        flags.push(("database.url", serde_json::json!(url), "--database-url"));
    }
    if let Some(format) = global.log_format {
        flags.push(("log_format", serde_json::json!(format), "--log-format"));
    }
    if let Some((level, flag)) = verbosity(global) {
        flags.push(("log_level", serde_json::json!(level), flag));
    }
    crate::config::Config::load_layers(global.config.as_deref(), &flags).map_err(CliError::from)
}

/// The log level `-q`, `-v` or `-vv` asks for and the flag's name, when one is given (`-q`
/// wins: less output).
fn verbosity(global: &GlobalArgs) -> Option<(&'static str, &'static str)> {
    match (global.quiet, global.verbose) {
        (true, _) => Some(("error", "-q")),
        (false, 0) => None,
        (false, 1) => Some(("debug", "-v")),
        (false, _) => Some(("trace", "-vv")),
    }
}

/// The state folder: the configuration's, which already holds `--state-dir` and
/// `EXECUTIONER_STATE_DIR` as its top layers.
pub fn state_dir(config: &crate::config::Config) -> PathBuf {
    absolute(&config.state_dir)
}

/// `path` made absolute against the working directory (paths are shown and pinned absolute).
pub fn absolute(path: &std::path::Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    }
}

/// The validation policy from the configuration's `security` section.
pub fn security_policy(config: &crate::config::Config) -> crate::validate::SecurityPolicy {
    crate::validate::SecurityPolicy::from_config(&config.security)
}

/// Opens (creating if needed) the state database: SQLite in the state folder, or the
/// PostgreSQL database `database.url` names.
pub async fn open_store(
    state_dir: &std::path::Path,
    config: &crate::config::Config,
) -> Result<crate::store::Store, CliError> {
    let store = match &config.database.url {
        Some(url) => crate::store::Store::connect(state_dir, url).await,
        None => crate::store::Store::open(state_dir, config.durability).await,
    };
    store.map_err(CliError::from)
}

/// Opens the state database if there is one (read commands never create a state folder's
/// database; a PostgreSQL database is always there to read).
pub async fn open_store_existing(
    state_dir: &std::path::Path,
    config: &crate::config::Config,
) -> Result<Option<crate::store::Store>, CliError> {
    if config.database.url.is_none() && !crate::state_dir::db_path(state_dir).exists() {
        return Ok(None);
    }
    open_store(state_dir, config).await.map(Some)
}

/// A multi-threaded tokio runtime for the commands that need one.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    build_runtime(tokio::runtime::Builder::new_multi_thread())
}

/// A single-threaded tokio runtime, for `run` and `resume`: one run's engine does little work per
/// job, and keeping its loop, its attempt tasks and the reactor on one thread spares every job the
/// cross-thread wake-ups between them (the jobs themselves are processes, as parallel as ever).
pub fn engine_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    build_runtime(tokio::runtime::Builder::new_current_thread())
}

fn build_runtime(
    mut builder: tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, CliError> {
    builder
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))
}

/// First SIGINT/SIGTERM cancels (graceful stop); a second one kills at once.
pub fn watch_signals(
    cancel: tokio_util::sync::CancellationToken,
    kill_now: tokio_util::sync::CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::usage(format!("cannot handle SIGINT: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::usage(format!("cannot handle SIGTERM: {e}")))?;
    Ok(tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 {
                tracing::warn!(
                    "stopping: jobs get SIGTERM, then SIGKILL after the grace period (signal again to kill at once)"
                );
                cancel.cancel();
            } else {
                kill_now.cancel();
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every subcommand (and sub-subcommand) has an "Examples:" block in its help, and every
    /// positional argument a description.
    #[test]
    fn every_subcommand_help_has_examples_and_described_positionals() {
        fn check(cmd: &mut clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let help = cmd.render_long_help().to_string();
            if !help.contains("Examples:") {
                missing.push(format!("{path}: no Examples"));
            }
            for arg in cmd.get_positionals() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: positional {} undescribed", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands_mut() {
                // clap's own `help` subcommand, which prints the others' help.
                if sub.get_name() != "help" {
                    check(sub, &path, missing);
                }
            }
        }
        let mut root = Cli::command();
        root.build();
        let mut missing = Vec::new();
        check(&mut root, "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// A run id on the command line is a whole number from 1: anything else names no run, so it
    /// is a usage error before the store is opened.
    #[test]
    fn a_run_argument_must_be_a_run_id() {
        let cli = Cli::try_parse_from(["executioner", "resume", "42"]).unwrap();
        assert!(matches!(cli.command, Command::Resume { run, .. } if run == RunId::from(42)));
        for args in [
            ["executioner", "runs", "show", "0"],
            ["executioner", "logs", "abc", "extract"],
            ["executioner", "mark-success", "1.5", "load"],
        ] {
            let error = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(
                error
                    .to_string()
                    .contains("is not a run id (a whole number, at least 1)"),
                "{error}"
            );
        }
    }
}

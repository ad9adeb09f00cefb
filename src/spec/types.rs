//! The v1 Pipeline manifest as the user writes it (desired state): plain data with serde and schemars.
//!
//! Nothing here runs, resolves or validates across fields; that is `validate` (semantic rules) and the
//! engine (meaning). Field docs become the descriptions an editor shows on hover, so they are written
//! for the manifest's author.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use super::names::{JobId, PipelineName};

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "executioner.dev/v1";

/// A Pipeline manifest: a DAG of shell jobs with dependencies, retries, timeouts, environment,
/// checks and notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "executioner Pipeline", example = example_manifest())]
pub struct Manifest {
    /// Optional path or URL of this schema, for editors (JSON has no comments for a modeline).
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Always `executioner.dev/v1`.
    pub api_version: ApiVersion,
    /// Always `Pipeline`.
    pub kind: Kind,
    /// Identity of the pipeline: its name, labels and annotations.
    pub metadata: Metadata,
    /// What the pipeline runs and how: the jobs, their schedule, environment and policies.
    pub spec: PipelineSpec,
}

/// The manifest's API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "executioner.dev/v1")]
    V1,
}

/// The manifest's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Pipeline,
}

/// Identity of the pipeline. Labels and annotations never start a new generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The pipeline's name, unique within the manifests folder; a lowercase DNS label.
    pub name: PipelineName,
    /// Free-form key/value pairs for humans and tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form notes for humans and tools.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the pipeline runs and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    /// What the pipeline is for, shown in status and notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Folder the jobs run in; left out, the manifest's folder, where a relative path starts too.
    /// `${VAR}` is interpolated from the pipeline environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "./work")]
    pub working_dir: Option<String>,
    /// Jobs of this pipeline running at once; left out, the controller's (or `run --workers`)
    /// worker count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_parallel: Option<u32>,
    /// Deadline for a whole run; jobs still running are stopped and the rest skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Pipeline-level environment, above the inherited one and below each job's. Values may use
    /// `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: EnvMap,
    /// Which variables of the executioner's own environment jobs inherit: `all` (default), `none`,
    /// `minimal` (PATH, HOME, USER, LANG, TZ, SHELL, TMPDIR) or a list of names.
    #[serde(default, skip_serializing_if = "InheritEnv::is_default")]
    #[schemars(extend("default" = "all"))]
    pub inherit_env: InheritEnv,
    /// Job fields applied to every job that leaves them out.
    #[serde(default, skip_serializing_if = "JobDefaults::is_empty")]
    pub defaults: JobDefaults,
    /// What a spec change does to a run in progress: `queue` (finish it, then run the new
    /// generation, the default) or `replace` (cancel it and start the new generation).
    #[serde(default, skip_serializing_if = "OnSpecChange::is_default")]
    #[schemars(extend("default" = "queue"))]
    pub on_spec_change: OnSpecChange,
    /// When true, no new job starts after the first failure; those left are skipped (`FailFast`).
    /// Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub fail_fast: bool,
    /// Where the jobs run when the state database is PostgreSQL and workers run them: only on a
    /// worker whose labels include all of these. A job's own `runOn` replaces it. Left out, any
    /// worker. Ignored by `executioner run` and with SQLite (jobs run where executioner runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_on: Option<RunOn>,
    /// Cron schedule: 5 fields (minute hour day-of-month month day-of-week) or one of `@yearly`,
    /// `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`; optionally prefixed
    /// `TZ=Area/City ` (UTC otherwise). One run per tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        example = "0 2 * * *",
        example = "TZ=Europe/Paris 30 6 * * 1-5",
        example = "@daily"
    )]
    pub schedule: Option<String>,
    /// What a new run does while another run of this pipeline (from the controller or an
    /// `executioner run` in the same state folder) is running: `Forbid` (the default: a second
    /// `run` is refused, a schedule tick is skipped), `Allow` (both run) or `Replace` (the running
    /// one is cancelled first).
    #[serde(default, skip_serializing_if = "ConcurrencyPolicy::is_default")]
    #[schemars(extend("default" = "Forbid"))]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Schedule ticks missed (the controller was down, or the pipeline suspended) that are older
    /// than this are not caught up; left out, any missed tick may be. At least 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "1h")]
    pub starting_deadline: Option<Duration>,
    /// Which missed schedule ticks start a run: `None` (only a tick seen on time), `One` (the
    /// default: one run for the latest missed tick) or `All` (one run per missed tick, within
    /// `startingDeadline` and at most 100).
    #[serde(default, skip_serializing_if = "Catchup::is_default")]
    #[schemars(extend("default" = "One"))]
    pub catchup: Catchup,
    /// When true, no new run starts (no schedule tick, no run of a new generation; a `rerun`
    /// waits for `unsuspend`); a run going on finishes. Not part of the generation: suspending
    /// and resuming a pipeline does not start a run by itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schemars(extend("default" = false))]
    pub suspend: bool,
    /// Notifications sent when a run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// How much run history to keep: finished runs beyond these limits are deleted with their
    /// logs, by the controller after runs end and by `executioner gc`. A running run and the
    /// latest run are always kept. A field left out takes the configuration's `history` value.
    /// Not part of the generation: changing it starts no run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// Run parameters, by name (`[A-Za-z_][A-Za-z0-9_]*`): given with `run --param NAME=VALUE` or
    /// `rerun NAME --param NAME=VALUE`, checked against their declaration, recorded with the run
    /// and used as `${params.NAME}` wherever `${VAR}` interpolation applies. A parameter without
    /// `default` must be given. Their values never change the generation.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, ParamSpec>,
    /// The jobs; the order breaks ties between jobs ready at the same moment.
    #[schemars(length(min = 1))]
    #[serde(deserialize_with = "exact_vec")]
    pub jobs: Vec<JobSpec>,
}

/// Run history retention of one pipeline (`spec.history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct History {
    /// How many of the newest runs are kept (at least 1). Left out, the configuration's
    /// `history.keep_runs` (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1), example = 20, extend("default" = 100))]
    pub keep_runs: Option<u32>,
    /// Finished runs that ended longer ago than this are deleted, even among the newest
    /// `keepRuns`. Left out, the configuration's `history.keep_for` (default 30d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "7d", extend("default" = "30d"))]
    pub keep_for: Option<Duration>,
}

/// Environment variables in declaration order (later keys may refer to earlier ones).
pub type EnvMap = IndexMap<String, EnvValue>;

/// One job: a command with its dependencies and policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// Unique within the pipeline: A-Z, a-z, 0-9, `_`, `.`, `-`.
    pub id: JobId,
    /// What the job does, for the manifest's readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A string runs under `sh -c` unchanged (the shell expands `$VAR` from the job's environment);
    /// an array is executed directly, each element interpolated and kept one argument.
    pub command: Command,
    /// Jobs that must be terminal before this one may start (see `trigger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<JobId>,
    /// When the job runs, given its dependencies' outcomes. Default `allSucceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "allSucceeded"))]
    pub trigger: Option<Trigger>,
    /// Folder the job runs in; relative to the pipeline's `workingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Deadline for one attempt; the job's whole process group is stopped when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Job-level environment, above the pipeline's.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: EnvMap,
    /// Retry policy for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Checks run before the command; a failure fails the attempt without running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_checks: Option<Vec<Check>>,
    /// Checks run after the command exits 0; a failure fails the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_checks: Option<Vec<Check>>,
    /// When true, this job's failure does not fail the run and counts as success for its dependents.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = false))]
    pub continue_on_error: Option<bool>,
    /// Notifications about this job alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// Where this job runs (workers with these labels), replacing the pipeline's `runOn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_on: Option<RunOn>,
}

/// Placement on workers (DESIGN 9): the labels a worker must have, each with this value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunOn {
    /// Label names and the value each must have on the worker (`executioner worker --labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Fields that jobs inherit when they leave them out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobDefaults {
    /// `timeout` of the jobs that leave it out: deadline for one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// `retry` of the jobs that leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// `trigger` of the jobs that leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// `preChecks` of the jobs that leave them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_checks: Option<Vec<Check>>,
    /// `postChecks` of the jobs that leave them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_checks: Option<Vec<Check>>,
    /// `continueOnError` of the jobs that leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
}

impl JobDefaults {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A command: a shell string or an argument vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Command {
    /// A string: run by `sh -c` as written.
    Shell(String),
    /// An array: executed directly, the first element is the program, no shell involved. Numbers and
    /// booleans are taken as their text (`[sleep, 1]` runs `sleep 1`).
    Exec(
        #[serde(deserialize_with = "argument_texts")]
        #[schemars(with = "Vec<Argument>")]
        Vec<String>,
    ),
}

/// One element of an array command, for the schema: a string, or a number or boolean taken as
/// its text.
struct Argument;

impl JsonSchema for Argument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Argument")
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "title": "Argument",
            "description": "One argument: a string, or a number or boolean taken as its text.",
            "type": ["string", "number", "boolean"],
        })
    }
}

/// Deserializes an argument vector whose elements may be strings, numbers or booleans.
fn argument_texts<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let args: Vec<ScalarValue> = Vec::deserialize(deserializer)?;
    Ok(args.iter().map(ScalarValue::to_text).collect())
}

/// Retry policy: how many more attempts, how long to wait, and which failures qualify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub limit: u32,
    /// Wait before the first retry. Default 0s.
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    #[schemars(extend("default" = "0s"))]
    pub delay: Duration,
    /// Multiplier applied to the delay after each retry (exponential backoff). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0), extend("default" = 1))]
    pub factor: Option<f64>,
    /// Upper bound of the computed delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
    /// Random spread applied to each delay, as a fraction: 0.2 = +-20%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: Option<f64>,
    /// Retry only when the command exits with one of these codes; left out, any non-zero exit
    /// code is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit_codes: Option<Vec<i32>>,
    /// Whether a timed-out attempt is retried. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub on_timeout: Option<bool>,
    /// Stop retrying once this much time has passed since the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
}

/// When a job runs, given the outcomes of its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// Every dependency succeeded (or failed with `continueOnError`). The default.
    #[default]
    AllSucceeded,
    /// Every dependency is terminal, whatever its outcome.
    AllDone,
    /// Every dependency failed.
    AllFailed,
    /// At least one dependency succeeded.
    AnySucceeded,
    /// At least one dependency failed.
    AnyFailed,
    /// No dependency failed (skipped ones are fine).
    NoneFailed,
    /// Always runs once its dependencies are terminal.
    Always,
}

/// A pre- or post-check: exactly one of the check kinds, optionally with `wait` (pre-checks only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Check {
    /// Passes when the file exists (and has at least `minSize` bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_exists: Option<FileExistsCheck>,
    /// Passes when the path does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_not_exists: Option<PathCheck>,
    /// Passes when this attempt's output matches the regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_contains: Option<PatternCheck>,
    /// Passes when this attempt's output does not match the regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_not_contains: Option<PatternCheck>,
    /// Passes when the command exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Passes when a TCP connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Passes when an HTTP GET answers with the expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Passes when that pipeline's latest run succeeded (within the given age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_succeeded: Option<PipelineSucceededCheck>,
    /// Runs `executioner-check-NAME` with the check's JSON context on stdin; exit 0 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginCheck>,
    /// Turns a pre-check into a sensor: polled until it passes or the timeout passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitPolicy>,
}

/// The check kinds, for messages and dispatch.
pub const CHECK_KINDS: [&str; 9] = [
    "fileExists",
    "fileNotExists",
    "logContains",
    "logNotContains",
    "command",
    "tcp",
    "http",
    "pipelineSucceeded",
    "plugin",
];

/// One check kind with its parameters, borrowed from a [`Check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckKind<'a> {
    FileExists(&'a FileExistsCheck),
    FileNotExists(&'a PathCheck),
    LogContains(&'a PatternCheck),
    LogNotContains(&'a PatternCheck),
    Command(&'a Command),
    Tcp(&'a TcpCheck),
    Http(&'a HttpCheck),
    PipelineSucceeded(&'a PipelineSucceededCheck),
    Plugin(&'a PluginCheck),
}

impl Check {
    /// Every kind set on this check (validation requires exactly one).
    pub fn kinds(&self) -> Vec<CheckKind<'_>> {
        let mut kinds = Vec::with_capacity(1);
        if let Some(c) = &self.file_exists {
            kinds.push(CheckKind::FileExists(c));
        }
        if let Some(c) = &self.file_not_exists {
            kinds.push(CheckKind::FileNotExists(c));
        }
        if let Some(c) = &self.log_contains {
            kinds.push(CheckKind::LogContains(c));
        }
        if let Some(c) = &self.log_not_contains {
            kinds.push(CheckKind::LogNotContains(c));
        }
        if let Some(c) = &self.command {
            kinds.push(CheckKind::Command(c));
        }
        if let Some(c) = &self.tcp {
            kinds.push(CheckKind::Tcp(c));
        }
        if let Some(c) = &self.http {
            kinds.push(CheckKind::Http(c));
        }
        if let Some(c) = &self.pipeline_succeeded {
            kinds.push(CheckKind::PipelineSucceeded(c));
        }
        if let Some(c) = &self.plugin {
            kinds.push(CheckKind::Plugin(c));
        }
        kinds
    }
}

impl CheckKind<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::FileExists(_) => "fileExists",
            CheckKind::FileNotExists(_) => "fileNotExists",
            CheckKind::LogContains(_) => "logContains",
            CheckKind::LogNotContains(_) => "logNotContains",
            CheckKind::Command(_) => "command",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::Http(_) => "http",
            CheckKind::PipelineSucceeded(_) => "pipelineSucceeded",
            CheckKind::Plugin(_) => "plugin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileExistsCheck {
    /// Path, relative to the job's working folder.
    pub path: String,
    /// Smallest acceptable size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathCheck {
    /// Path, relative to the job's working folder.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatternCheck {
    /// A regular expression (Rust `regex` syntax) matched against each line of this attempt's output.
    #[schemars(example = "ORA-[0-9]+")]
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpCheck {
    /// Host name or IP address to connect to.
    pub host: String,
    /// TCP port to connect to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Connect timeout. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "5s"))]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCheck {
    /// An `http://` or `https://` URL (HTTPS trusts the system's roots plus `EXECUTIONER_CA_FILE`).
    pub url: String,
    /// Expected status code of the answer after redirects (at most 10); left out, any 2xx passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: Option<u16>,
    /// Request timeout. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "10s"))]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSucceededCheck {
    /// The other pipeline's `metadata.name`.
    pub name: PipelineName,
    /// How recent its successful run must be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginCheck {
    /// Runs the executable `executioner-check-NAME`.
    pub name: JobId,
    /// Passed to the plugin in its JSON context.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Polling of a pre-check until it passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaitPolicy {
    /// Give up (reason `CheckTimeout`) after this long.
    pub timeout: Duration,
    /// Time between polls. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "10s"))]
    pub interval: Option<Duration>,
}

/// An environment value: a plain value, or a secret read when the job starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// A string (numbers and booleans are taken as their text).
    Plain(ScalarValue),
    /// A secret: injected into the job, shown as `***` everywhere.
    Secret(SecretSource),
}

/// The declaration of one run parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    /// The values it takes: `string` (default), `integer`, `number` or `boolean` (`true`/`false`).
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "ParamType::is_default"
    )]
    #[schemars(extend("default" = "string"))]
    pub kind: ParamType,
    /// The value when none is given; without one, the parameter must be given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ScalarValue>,
    /// The only values allowed.
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<ScalarValue>>,
    /// What the parameter means, for the people who set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The type of a run parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text.
    #[default]
    String,
    /// A whole number (64-bit).
    Integer,
    /// A finite decimal number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    pub fn is_default(&self) -> bool {
        *self == ParamType::String
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }
}

/// A scalar written in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ScalarValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl ScalarValue {
    pub fn to_text(&self) -> String {
        match self {
            ScalarValue::String(s) => s.clone(),
            ScalarValue::Integer(i) => i.to_string(),
            ScalarValue::Float(f) => f.to_string(),
            ScalarValue::Bool(b) => b.to_string(),
        }
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SecretSource {
    /// The named variable of the executioner's own environment.
    FromEnv(String),
    /// The contents of a file (a trailing newline is removed).
    FromFile(String),
}

/// Which inherited variables jobs see: `all`, `none`, `minimal`, or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum InheritEnv {
    Mode(InheritMode),
    /// A list of names: exactly these variables.
    Names(Vec<String>),
}

impl InheritEnv {
    pub fn is_default(&self) -> bool {
        *self == InheritEnv::Mode(InheritMode::All)
    }
}

impl Default for InheritEnv {
    fn default() -> Self {
        InheritEnv::Mode(InheritMode::All)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InheritMode {
    /// The whole environment (as the original tool).
    All,
    /// Nothing: jobs see only what the manifest sets.
    None,
    /// PATH, HOME, USER, LANG, TZ, SHELL and TMPDIR.
    Minimal,
}

/// What a spec change does to a run in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnSpecChange {
    /// Let the current run finish on its pinned spec, then run the new generation.
    #[default]
    Queue,
    /// Cancel the current run and start the new generation.
    Replace,
}

impl OnSpecChange {
    pub fn is_default(&self) -> bool {
        *self == OnSpecChange::Queue
    }
}

/// What a new run does while another run of the same pipeline is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Refuse the new run: `executioner run` exits 2 naming the running one; a schedule tick is
    /// skipped (recorded); a `rerun` waits for the running one to end.
    #[default]
    Forbid,
    /// Start it alongside (a tick or rerun during the controller's own run queues one run right
    /// after it: the controller drives one run of a pipeline at a time).
    Allow,
    /// Cancel the running one (recorded `Cancelled`, a user's action), then start the new one.
    Replace,
}

impl ConcurrencyPolicy {
    pub fn is_default(&self) -> bool {
        *self == ConcurrencyPolicy::Forbid
    }
}

/// Which missed schedule ticks start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Catchup {
    /// Nothing is caught up: a tick runs only when it is seen on time (within a minute, or
    /// `startingDeadline` when shorter) and no tick was missed before it.
    None,
    /// One run for the latest missed tick, however many were missed.
    #[default]
    One,
    /// One run per missed tick, oldest first, within `startingDeadline` and at most 100.
    All,
}

impl Catchup {
    pub fn is_default(&self) -> bool {
        *self == Catchup::One
    }
}

/// Notification channels.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    /// Sends an email through the `[smtp]` server of executioner.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailNotify>,
    /// Runs a program with the run summary as JSON on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandNotify>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailNotify {
    /// Recipients.
    #[schemars(length(min = 1))]
    pub to: Vec<String>,
    /// When to send. Default `[failure]`.
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandNotify {
    /// The program and its arguments (executed directly, no shell).
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// When to run it. Default `[failure]`.
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
}

fn default_notify_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Failure]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NotifyOn {
    Success,
    Failure,
    Always,
}

fn example_manifest() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Pipeline",
        "metadata": {"name": "nightly-etl"},
        "spec": {
            "jobs": [
                {"id": "extract", "command": "python extract.py"},
                {"id": "load", "command": ["psql", "-f", "load.sql"], "dependencies": ["extract"]}
            ]
        }
    })
}

/// Deserializes a sequence into a vector sized from the deserializer's length hint. serde's own
/// caps its first allocation at 1 MiB and doubles from there: for 10,000 jobs of ~500 bytes that
/// meant a 7.7 MiB buffer for 4.8 MiB of jobs, and both old and new buffers alive while it grew,
/// the largest part of a big run's peak memory. The hint is trusted up to 1,000,000 elements
/// (the document has already passed the size limits of the loader).
fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Exact<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Exact<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1_000_000));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_seq(Exact(std::marker::PhantomData))
}

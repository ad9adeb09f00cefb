//! From a validated manifest to what the engine executes: each job's command, environment layers,
//! working folder, timeout, retry policy, checks and trigger, with pipeline defaults applied.
//!
//! Environment values are resolved per attempt (the `EXECUTIONER_*` variables change), from layers
//! prepared once here. Secrets are read here, once per run, and listed for masking.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use crate::dag::Dag;
use crate::env::{self, EnvError};
use crate::spec::{
    Check, Command, Duration, EnvValue, InheritEnv, InheritMode, JobId, JobSpec, Manifest,
    PipelineName, RetryPolicy, SecretSource, Trigger,
};
use crate::status::RunId;
use crate::status::outputs::Outputs;

/// Default attempt timeout when neither the job nor `defaults` sets one (none: jobs may run long).
pub const NO_RETRY: RetryPolicy = RetryPolicy {
    limit: 0,
    delay: Duration::ZERO,
    factor: None,
    max_delay: None,
    jitter: None,
    on_exit_codes: None,
    on_timeout: None,
    deadline: None,
};

/// One job, ready to execute.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    pub id: JobId,
    pub command: Command,
    pub dependencies: Vec<usize>,
    pub trigger: Trigger,
    pub continue_on_error: bool,
    pub timeout: Option<std::time::Duration>,
    pub retry: RetryPolicy,
    pub pre_checks: Vec<Check>,
    pub post_checks: Vec<Check>,
    /// Job-level environment layer (templates).
    pub env: IndexMap<String, String>,
    /// The job's folder (absolute; may contain `${VAR}` until resolved per attempt).
    pub working_dir: String,
    /// The upstream jobs whose outputs its env or command refers to (`${jobs.ID.outputs.KEY}`).
    pub reads_outputs: Vec<usize>,
    /// Its placement on workers (`runOn`: the job's, else the pipeline's) as the JSON object of
    /// the labels a worker must have; `{}` for any worker.
    pub placement: Arc<str>,
}

/// A whole pipeline, ready to execute.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pipeline: PipelineName,
    pub jobs: Vec<PlannedJob>,
    pub dag: Dag,
    pub max_parallel: Option<usize>,
    pub timeout: Option<std::time::Duration>,
    pub fail_fast: bool,
    /// Inherited variables (after `inheritEnv` filtering), the lowest layer.
    pub inherited: IndexMap<String, String>,
    /// Pipeline layer (templates; secrets already read).
    pub pipeline_env: IndexMap<String, String>,
    /// Command-line layer (`--env`), the highest.
    pub cli_env: IndexMap<String, String>,
    /// Values that must never be shown (secrets), for masking.
    pub secrets: Vec<String>,
    /// The run's parameters (checked, defaults filled in), looked up as `${params.NAME}`.
    pub params: IndexMap<String, String>,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot order the jobs by their dependencies")]
    Dag(#[from] crate::dag::DagError),
    #[error("secret {name}: {message}")]
    Secret { name: String, message: String },
}

impl Plan {
    /// Ids of the jobs that may fail without failing the run (`continueOnError`).
    pub fn continue_on_error(&self) -> Vec<&str> {
        self.jobs
            .iter()
            .filter(|j| j.continue_on_error)
            .map(|j| j.id.as_str())
            .collect()
    }

    /// Resolves `manifest` whose file lives in `base_dir`, with the given process environment and
    /// `--env` values.
    pub fn new(
        manifest: &Manifest,
        base_dir: &Path,
        process_env: &IndexMap<String, String>,
        cli_env: IndexMap<String, String>,
    ) -> Result<Plan, PlanError> {
        let spec = &manifest.spec;
        let index: IndexMap<&str, usize> = spec
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.as_str(), i))
            .collect();
        let deps: Vec<Vec<usize>> = spec
            .jobs
            .iter()
            .map(|j| {
                j.dependencies
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect()
            })
            .collect();
        let dag = Dag::new(deps.clone())?;

        let mut inherited = inherited_env(&spec.inherit_env, process_env);
        // Those names are the engine's, for parameters and outputs (see `env::is_qualified`).
        inherited.retain(|name, _| !env::is_qualified(name));
        let mut secrets = Vec::new();
        let pipeline_env = layer(&spec.env, process_env, &mut secrets)?;
        let base_dir = absolute(base_dir);
        let pipeline_dir = match &spec.working_dir {
            Some(wd) => join_template(&base_dir, wd),
            None => base_dir.to_string_lossy().into_owned(),
        };

        let mut jobs = Vec::with_capacity(spec.jobs.len());
        for (i, job) in spec.jobs.iter().enumerate() {
            let mut planned = plan_job(
                job,
                deps[i].clone(),
                manifest,
                &pipeline_dir,
                process_env,
                &mut secrets,
            )?;
            planned.reads_outputs = outputs_read(&planned, &index);
            jobs.push(planned);
        }
        secrets.retain(|s| !s.is_empty());
        Ok(Plan {
            pipeline: manifest.metadata.name.clone(),
            jobs,
            dag,
            max_parallel: spec.max_parallel.map(|m| m as usize),
            timeout: spec.timeout.map(Duration::as_std),
            fail_fast: spec.fail_fast,
            inherited,
            pipeline_env,
            cli_env,
            secrets,
            params: IndexMap::new(),
        })
    }

    /// The complete environment of one attempt of job `index`, given the outputs of the upstream
    /// jobs it reads (see [`PlannedJob::reads_outputs`]). Parameters and outputs are in it under
    /// their qualified names, which are not exported (see [`env::is_qualified`]).
    pub fn job_env(
        &self,
        index: usize,
        run_id: RunId,
        attempt: i64,
        upstream: &[(usize, Arc<Outputs>)],
    ) -> Result<IndexMap<String, String>, EnvError> {
        let job = &self.jobs[index];
        let mut base = self.inherited.clone();
        for (name, value) in &self.params {
            base.insert(env::param_name(name), value.clone());
        }
        for (from, outputs) in upstream {
            let from = self.jobs[*from].id.as_str();
            for (key, value) in outputs.iter() {
                base.insert(env::output_name(from, key), value.clone());
            }
        }
        base.insert("EXECUTIONER_RUN_ID".into(), run_id.to_string());
        base.insert(
            "EXECUTIONER_PIPELINE".into(),
            self.pipeline.as_str().to_owned(),
        );
        base.insert("EXECUTIONER_JOB_ID".into(), job.id.as_str().to_owned());
        base.insert("EXECUTIONER_ATTEMPT".into(), attempt.to_string());
        let mut full = base;
        for layer in [&self.pipeline_env, &job.env, &self.cli_env] {
            // An empty layer changes nothing; skipping it spares a copy of the whole map.
            if !layer.is_empty() {
                full = env::apply_layer(&full, layer)?;
            }
        }
        // The run's identity cannot be overridden by a layer.
        full.insert("EXECUTIONER_RUN_ID".into(), run_id.to_string());
        full.insert(
            "EXECUTIONER_PIPELINE".into(),
            self.pipeline.as_str().to_owned(),
        );
        full.insert("EXECUTIONER_JOB_ID".into(), job.id.as_str().to_owned());
        full.insert("EXECUTIONER_ATTEMPT".into(), attempt.to_string());
        Ok(full)
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.jobs.iter().position(|j| j.id == id)
    }
}

/// The jobs whose outputs `job`'s env values and array-command elements refer to. Validation has
/// checked that they are upstream; a template that does not mention `${jobs.` costs one search.
fn outputs_read(job: &PlannedJob, index: &IndexMap<&str, usize>) -> Vec<usize> {
    let exec_args = match &job.command {
        Command::Exec(args) => args.as_slice(),
        Command::Shell(_) => &[],
    };
    let mut read = Vec::new();
    for template in job.env.values().chain(exec_args) {
        if !template.contains("${jobs.") {
            continue;
        }
        for (name, _) in env::references(template).unwrap_or_default() {
            if let Some(env::Qualified::Output { job: from, .. }) = env::qualified(&name)
                && let Some(&from) = index.get(from)
                && !read.contains(&from)
            {
                read.push(from);
            }
        }
    }
    read
}

fn plan_job(
    job: &JobSpec,
    deps: Vec<usize>,
    manifest: &Manifest,
    pipeline_dir: &str,
    process_env: &IndexMap<String, String>,
    secrets: &mut Vec<String>,
) -> Result<PlannedJob, PlanError> {
    let defaults = &manifest.spec.defaults;
    let labels = job
        .run_on
        .as_ref()
        .or(manifest.spec.run_on.as_ref())
        .map(|r| &r.labels);
    let placement: Arc<str> = match labels {
        Some(labels) if !labels.is_empty() => serde_json::to_string(labels)
            .unwrap_or_else(|_| "{}".into())
            .into(),
        Some(_) | None => "{}".into(),
    };
    let working_dir = match &job.working_dir {
        Some(wd) => join_template(Path::new(pipeline_dir), wd),
        None => pipeline_dir.to_owned(),
    };
    Ok(PlannedJob {
        id: job.id.clone(),
        command: job.command.clone(),
        dependencies: deps,
        trigger: job.trigger.or(defaults.trigger).unwrap_or_default(),
        continue_on_error: job
            .continue_on_error
            .or(defaults.continue_on_error)
            .unwrap_or(false),
        timeout: job.timeout.or(defaults.timeout).map(Duration::as_std),
        retry: job
            .retry
            .clone()
            .or_else(|| defaults.retry.clone())
            .unwrap_or(NO_RETRY),
        pre_checks: job
            .pre_checks
            .clone()
            .or_else(|| defaults.pre_checks.clone())
            .unwrap_or_default(),
        post_checks: job
            .post_checks
            .clone()
            .or_else(|| defaults.post_checks.clone())
            .unwrap_or_default(),
        env: layer(&job.env, process_env, secrets)?,
        working_dir,
        reads_outputs: Vec::new(),
        placement,
    })
}

/// A layer's templates; secrets are read now, escaped (`$` -> `$$`) so that they are taken as
/// written, and remembered for masking.
fn layer(
    values: &IndexMap<String, EnvValue>,
    process_env: &IndexMap<String, String>,
    secrets: &mut Vec<String>,
) -> Result<IndexMap<String, String>, PlanError> {
    let mut out = IndexMap::with_capacity(values.len());
    for (name, value) in values {
        let text = match value {
            EnvValue::Plain(v) => v.to_text(),
            EnvValue::Secret(source) => {
                let secret = read_secret(name, source, process_env)?;
                secrets.push(secret.clone());
                secret.replace('$', "$$")
            }
        };
        out.insert(name.clone(), text);
    }
    Ok(out)
}

fn read_secret(
    name: &str,
    source: &SecretSource,
    process_env: &IndexMap<String, String>,
) -> Result<String, PlanError> {
    match source {
        SecretSource::FromEnv(var) => {
            process_env
                .get(var)
                .cloned()
                .ok_or_else(|| PlanError::Secret {
                    name: name.to_owned(),
                    message: format!("environment variable {var} is not set"),
                })
        }
        SecretSource::FromFile(path) => std::fs::read_to_string(path)
            .map(|s| s.strip_suffix('\n').unwrap_or(&s).to_owned())
            .map_err(|e| PlanError::Secret {
                name: name.to_owned(),
                message: format!("cannot read {path}: {e}"),
            }),
    }
}

/// The inherited layer, per `inheritEnv`.
pub fn inherited_env(
    mode: &InheritEnv,
    process_env: &IndexMap<String, String>,
) -> IndexMap<String, String> {
    match mode {
        InheritEnv::Mode(InheritMode::All) => process_env.clone(),
        InheritEnv::Mode(InheritMode::None) => IndexMap::new(),
        InheritEnv::Mode(InheritMode::Minimal) => env::MINIMAL_INHERITED
            .iter()
            .filter_map(|n| process_env.get(*n).map(|v| ((*n).to_owned(), v.clone())))
            .collect(),
        InheritEnv::Names(names) => names
            .iter()
            .filter_map(|n| process_env.get(n).map(|v| (n.clone(), v.clone())))
            .collect(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}

/// Joins a possibly relative, possibly templated folder onto `base` (absolute templates stay).
fn join_template(base: &Path, dir: &str) -> String {
    if dir.starts_with('/') || dir.starts_with("${") {
        dir.to_owned()
    } else {
        base.join(dir).to_string_lossy().into_owned()
    }
}

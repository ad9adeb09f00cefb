//! The executioner's own configuration (not a pipeline's): state folder, workers, timings, SMTP and
//! the security policy, with its generated JSON Schema.
//!
//! Layering, lowest to highest: defaults < `/etc/executioner/config.toml` < `./executioner.toml`
//! (or `--config FILE`, TOML or YAML) < `EXECUTIONER_*` environment (nested keys with `__`) < CLI flags.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::spec::Duration;

/// The executioner configuration file (`executioner.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(title = "executioner configuration")]
pub struct Config {
    /// State folder: database, logs, controller lock. Relative paths start at the working directory.
    pub state_dir: PathBuf,
    /// Folder the controller watches.
    pub manifests_dir: PathBuf,
    /// Jobs running at once across all pipelines. Default: the number of CPUs.
    #[schemars(range(min = 1, max = 100000))]
    pub workers: Option<u32>,
    /// Full rescan period of the controller, whatever the file events say.
    pub resync_interval: Duration,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    pub shutdown_grace: Duration,
    /// `normal` (WAL, synchronous=NORMAL) or `full` (sync every commit).
    pub durability: Durability,
    pub log_format: LogFormatConfig,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Folders searched for `executioner-check-NAME` plugins before PATH.
    pub plugin_dirs: Vec<PathBuf>,
    pub smtp: SmtpConfig,
    pub security: SecurityConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatConfig {
    #[default]
    Pretty,
    Json,
}

/// Outgoing mail for `notify.email`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    /// Name of the environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    pub from: String,
    /// Connection and command timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// What manifests may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// When false, string commands (run by `sh -c`) are rejected; only arrays are allowed.
    pub allow_shell: bool,
    /// Program names or paths (glob allowed) that commands may start; empty allows any.
    pub allowed_commands: Vec<String>,
    /// When false, the controller refuses to run as root.
    pub allow_root: bool,
    /// Users (names or uids) besides the controller's own user and root who may own a manifest
    /// the controller runs, e.g. the user of a git sync. A manifest owned by anyone else, or
    /// writable by group or others, is `Invalid` (`InsecurePermissions`).
    pub trusted_owners: Vec<TrustedOwner>,
}

/// A user named in `security.trusted_owners`: a uid, or a user name (a string of digits is a uid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TrustedOwner {
    Uid(u32),
    Name(String),
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(".executioner"),
            manifests_dir: PathBuf::from("manifests"),
            workers: None,
            resync_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            durability: Durability::Normal,
            log_format: LogFormatConfig::Pretty,
            log_level: "info".into(),
            plugin_dirs: Vec::new(),
            smtp: SmtpConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password_env: None,
            from: "executioner@localhost".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            allow_shell: true,
            allowed_commands: Vec::new(),
            allow_root: true,
            trusted_owners: Vec::new(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read configuration: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A loaded configuration and where each value came from (`state_dir` -> `env EXECUTIONER_STATE_DIR`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: std::collections::BTreeMap<String, String>,
}

impl Config {
    /// Loads defaults < system file < project file (or `explicit`) < `EXECUTIONER_*` environment.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_layers(explicit, &[]).map(|l| l.config)
    }

    /// Loads every layer, then the command-line `flags` (key path, value, flag name) on top; only
    /// flags actually given are passed, so an absent flag never overrides a file.
    pub fn load_layers(
        explicit: Option<&Path>,
        flags: &[(&str, serde_json::Value, &str)],
    ) -> Result<Loaded, ConfigError> {
        let mut value = serde_json::to_value(Config::default()).unwrap_or_default();
        let mut sources = std::collections::BTreeMap::new();
        record_sources(&value, "", "default", &mut sources);
        let mut apply = |value: &mut serde_json::Value, layer: serde_json::Value, source: &str| {
            record_sources(&layer, "", source, &mut sources);
            merge(value, layer);
        };
        // EXECUTIONER_SYSTEM_CONFIG moves the system file (for tests and unusual installs).
        let system = std::env::var_os("EXECUTIONER_SYSTEM_CONFIG").map_or_else(
            || PathBuf::from("/etc/executioner/config.toml"),
            PathBuf::from,
        );
        if system.is_file() {
            apply(
                &mut value,
                read_file(&system)?,
                &system.display().to_string(),
            );
        }
        match explicit {
            Some(path) => apply(&mut value, read_file(path)?, &path.display().to_string()),
            None => {
                let local = Path::new("executioner.toml");
                if local.is_file() {
                    apply(&mut value, read_file(local)?, "executioner.toml");
                }
            }
        }
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        vars.sort();
        for (key, raw) in vars {
            let Some(rest) = key.strip_prefix("EXECUTIONER_") else {
                continue;
            };
            let path: Vec<String> = rest
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_owned)
                .collect();
            if !is_known_key(&path) {
                continue;
            }
            let parsed = toml::from_str::<toml::Value>(&format!("v = {raw}"))
                .ok()
                .and_then(|t| t.get("v").cloned())
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(serde_json::Value::String(raw));
            let mut layer = serde_json::Value::Object(serde_json::Map::new());
            set_path(&mut layer, &path, parsed);
            let mut probe = value.clone();
            merge(&mut probe, layer.clone());
            serde_json::from_value::<Config>(probe).map_err(|e| ConfigError::Invalid {
                path: PathBuf::from(format!("environment {key}")),
                message: e.to_string(),
            })?;
            apply(&mut value, layer, &format!("env {key}"));
        }
        for (key, flag_value, flag) in flags {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let mut layer = serde_json::Value::Object(serde_json::Map::new());
            set_path(&mut layer, &path, flag_value.clone());
            apply(&mut value, layer, &format!("flag {flag}"));
        }
        let config = serde_json::from_value(value).map_err(|e| ConfigError::Invalid {
            path: PathBuf::from("<command line>"),
            message: e.to_string(),
        })?;
        Ok(Loaded { config, sources })
    }

    /// The effective configuration as `key = value` lines with their sources; secrets masked.
    pub fn describe(loaded: &Loaded) -> Vec<(String, String, String)> {
        let value = serde_json::to_value(&loaded.config).unwrap_or_default();
        let mut leaves = std::collections::BTreeMap::new();
        record_sources(&value, "", "", &mut leaves);
        leaves
            .keys()
            .map(|key| {
                let v = key
                    .split('.')
                    .try_fold(&value, |node, part| node.get(part))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                let shown = if key.contains("password") && !key.ends_with("password_env") {
                    "***".to_owned()
                } else {
                    v.to_string()
                };
                let source = loaded
                    .sources
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| "default".into());
                (key.clone(), shown, source)
            })
            .collect()
    }

    /// Worker count: configured, or the number of CPUs.
    pub fn workers(&self) -> usize {
        self.workers
            .map(|w| w as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

/// Records `source` for every leaf of `layer` (arrays are leaves).
fn record_sources(
    layer: &serde_json::Value,
    prefix: &str,
    source: &str,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match layer {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                record_sources(v, &key, source, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), source.to_owned());
        }
    }
}

fn is_known_key(path: &[String]) -> bool {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut node = &defaults;
    for part in path {
        match node.get(part) {
            Some(n) => node = n,
            None => return false,
        }
    }
    true
}

fn set_path(value: &mut serde_json::Value, path: &[String], new: serde_json::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for part in parents {
        if !node.get(part).is_some_and(serde_json::Value::is_object) {
            node[part.as_str()] = serde_json::Value::Object(serde_json::Map::new());
        }
        node = &mut node[part.as_str()];
    }
    node[last.as_str()] = new;
}

fn read_file(path: &Path) -> Result<serde_json::Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let value: serde_json::Value = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => {
            serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?
        }
        _ => {
            let t: toml::Value = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            serde_json::to_value(t).map_err(|e| invalid(e.to_string()))?
        }
    };
    // Check keys and types against the schema now, so the message names the file.
    let mut probe = serde_json::to_value(Config::default()).unwrap_or_default();
    merge(&mut probe, value.clone());
    serde_json::from_value::<Config>(probe).map_err(|e| invalid(e.to_string()))?;
    Ok(value)
}

fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// The JSON Schema of `executioner.toml`.
pub fn config_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<Config>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            serde_json::Value::from("https://executioner.dev/schemas/config.schema.json"),
        );
    }
    schema
}

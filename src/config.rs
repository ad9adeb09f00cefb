//! The executioner's own configuration (not a pipeline's): state folder, workers, timings, SMTP,
//! the security policy and history retention, with its generated JSON Schema.
//!
//! Layering, lowest to highest: defaults < `/etc/executioner/config.toml` < `./executioner.toml`
//! (or `--config FILE`, TOML or YAML) < `EXECUTIONER_*` environment (nested keys with `__`) < CLI flags,
//! merged by figment, whose metadata names the source of every value for `executioner config`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
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
    pub log_format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Folders searched for `executioner-check-NAME` plugins before PATH.
    pub plugin_dirs: Vec<PathBuf>,
    pub smtp: SmtpConfig,
    pub security: SecurityConfig,
    pub history: HistoryConfig,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    /// With a PostgreSQL database: how long a lease lasts unrenewed (renewed every third of it),
    /// the leading controller's (a standby takes over within it of the leader stopping) and a
    /// worker's on each attempt it runs (a worker that cannot renew stops its jobs before it
    /// ends; an attempt whose lease ended is recorded `Lost`). At least 1s. Unused on SQLite.
    pub lease_ttl: Duration,
}

/// Where the state database lives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Absent: SQLite, `executioner.db` in the state folder (the one-machine default).
    /// `postgres://USER@HOST:PORT/DB?sslmode=require`: PostgreSQL, shared by controllers and
    /// workers on several hosts (a password in the URL is never shown; prefer `PGPASSWORD` or
    /// `~/.pgpass`).
    pub url: Option<String>,
}

/// The controller's web API and metrics (`controller --listen`); off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the controller serves the JSON API, `/metrics` and health on, e.g.
    /// `127.0.0.1:8080` (port 0 picks a free port, written to `STATE/http.addr`).
    pub listen: Option<String>,
    /// Name of the environment variable holding the bearer token that enables the API's `POST`
    /// requests (never the token itself). Without it the API is read-only.
    pub token_env: Option<String>,
}

/// The store's own knob: the configuration names it, the store acts on it.
pub use crate::store::Durability;

/// How log lines are written (`log_format`, `--log-format`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "LogFormatConfig")]
pub enum LogFormat {
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

/// How much run history is kept, for pipelines whose `spec.history` leaves a field out (and
/// for pipelines whose manifest was deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// How many of the newest runs of each pipeline are kept.
    #[schemars(range(min = 1))]
    pub keep_runs: u32,
    /// Finished runs that ended longer ago than this are deleted.
    pub keep_for: Duration,
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
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            plugin_dirs: Vec::new(),
            smtp: SmtpConfig::default(),
            security: SecurityConfig::default(),
            history: HistoryConfig::default(),
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            lease_ttl: Duration::from_secs(15),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            keep_runs: 100,
            keep_for: Duration::from_secs(30 * 24 * 3600),
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
    #[error("{}: cannot read configuration", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// figment's message names the key and the layer it came from (file, variable or flag).
    #[error("{0}")]
    Invalid(Box<figment::Error>),
}

/// The system file, unless `EXECUTIONER_SYSTEM_CONFIG` moves it (for tests and unusual installs).
const SYSTEM_FILE: &str = "/etc/executioner/config.toml";
/// The project file, read from the working directory when no `--config` is given.
const PROJECT_FILE: &str = "executioner.toml";
const ENV_PREFIX: &str = "EXECUTIONER_";
/// The name of the environment layer; its values are shown as `env VARIABLE`.
const ENV_LAYER: &str = "environment";

/// A loaded configuration and the figment it was extracted from, whose metadata says where each
/// value came from (`state_dir` -> `env EXECUTIONER_STATE_DIR`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    figment: Figment,
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
        let mut figment = Figment::from(Layer::named(
            "default",
            Serialized::defaults(Config::default()),
        ));
        let system = std::env::var_os("EXECUTIONER_SYSTEM_CONFIG")
            .map_or_else(|| PathBuf::from(SYSTEM_FILE), PathBuf::from);
        if system.is_file() {
            figment = merge_file(figment, &system);
        }
        match explicit {
            Some(path) => {
                // figment would report a missing file as a bare OS error.
                std::fs::metadata(path).map_err(|source| ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                figment = merge_file(figment, path);
            }
            None if Path::new(PROJECT_FILE).is_file() => {
                figment = merge_file(figment, Path::new(PROJECT_FILE));
            }
            None => {}
        }
        figment = figment.merge(environment());
        for (key, value, flag) in flags {
            figment = figment.merge(Layer::named(
                format!("flag {flag}"),
                Serialized::default(key, value),
            ));
        }
        let config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        Ok(Loaded { config, figment })
    }

    /// The effective configuration as `key = value` lines with their sources; secrets masked.
    pub fn describe(loaded: &Loaded) -> Vec<(String, String, String)> {
        let value = serde_json::to_value(&loaded.config).unwrap_or_default();
        let mut rows = Vec::new();
        leaves(&value, "", &mut |key, v| {
            let shown = if key.contains("password") && !key.ends_with("password_env") {
                "***".to_owned()
            } else if key == "database.url" {
                v.as_str().map_or_else(
                    || v.to_string(),
                    |url| serde_json::Value::from(redact_url(url)).to_string(),
                )
            } else {
                v.to_string()
            };
            rows.push((key.to_owned(), shown, loaded.source_of(key)));
        });
        rows.sort();
        rows
    }

    /// The lease TTL (`lease_ttl`), at least 1 s.
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl
            .as_std()
            .max(std::time::Duration::from_secs(1))
    }

    /// Worker count: configured, or the number of CPUs.
    pub fn workers(&self) -> usize {
        self.workers
            .map(|w| w as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

/// Query parameters of a database URL that carry a secret (sqlx-postgres reads `password`).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword"];

/// `url` without its secrets: the password of its user part (`postgres://u:***@host/db`) and the
/// values of its `password`-like query parameters. Text that is not a URL is shown as it is,
/// unless it holds an `@` or `password` (then it is hidden whole).
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return if url.contains('@') || url.contains("password") {
            "***".into()
        } else {
            url.into()
        };
    };
    let secret_query = parsed
        .query_pairs()
        .any(|(key, _)| SECRET_PARAMS.contains(&key.as_ref()));
    if parsed.password().is_none() && !secret_query {
        return url.into();
    }
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a password, and this one has one.
        let _ = parsed.set_password(Some("***"));
    }
    if secret_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if SECRET_PARAMS.contains(&key.as_ref()) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string().into()
}

/// `text` (a driver's message, say) with every secret of `url` replaced by `***`: the password of
/// its user part, raw and percent-decoded, and its `password`-like query values.
pub fn redact_secrets(text: &str, url: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    if let Ok(parsed) = url::Url::parse(url) {
        if let Some(raw) = parsed.password() {
            secrets.push(raw.to_owned());
            // The driver sends the password decoded, and may quote it so.
            if let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() {
                secrets.push(decoded.into_owned());
            }
        }
        for (key, value) in parsed.query_pairs() {
            if SECRET_PARAMS.contains(&key.as_ref()) {
                secrets.push(value.into_owned());
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret.as_str(), "***")
    })
}

impl Loaded {
    /// Where the value at the dotted `key` came from: `default`, a file as it was named,
    /// `env VARIABLE` or `flag --name`.
    fn source_of(&self, key: &str) -> String {
        let Some(metadata) = self.figment.find_metadata(key) else {
            // A value no layer holds (an unset option) is the default's.
            return "default".into();
        };
        if let Some(Source::File(path)) = &metadata.source {
            // As named (figment's own rendering shortens paths against the working directory).
            return path.display().to_string();
        }
        if metadata.name == ENV_LAYER {
            let path: Vec<&str> = key.split('.').collect();
            return format!("env {}", metadata.interpolate(&Profile::Default, &path));
        }
        metadata.name.to_string()
    }
}

/// Calls `visit` with every leaf of `value` and its dotted key (arrays are leaves).
fn leaves(
    value: &serde_json::Value,
    prefix: &str,
    visit: &mut impl FnMut(&str, &serde_json::Value),
) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, visit);
            }
        }
        leaf => visit(prefix, leaf),
    }
}

/// A file layer: YAML by its extension, TOML otherwise. Its keys are shown without figment's
/// profile (`workers`, not `default.workers`).
fn merge_file(figment: Figment, path: &Path) -> Figment {
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let kind = if yaml { "YAML file" } else { "TOML file" };
    let metadata =
        Metadata::from(kind, Source::File(path.to_owned())).interpolater(|_, key| key.join("."));
    if yaml {
        figment.merge(Layer {
            metadata,
            inner: serde_saphyr::figment::Yaml::file_exact(path),
        })
    } else {
        figment.merge(Layer {
            metadata,
            inner: Toml::file_exact(path),
        })
    }
}

/// `EXECUTIONER_*` with `__` nesting. Only names of configuration keys are read: the prefix
/// is shared with variables that are not settings (`EXECUTIONER_SYSTEM_CONFIG`,
/// `EXECUTIONER_FAILPOINT`, ...).
fn environment() -> Layer<Env> {
    let env = Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(|key| is_known_key(&key.as_str().to_ascii_lowercase()));
    Layer {
        metadata: Metadata::named(ENV_LAYER).interpolater(|_, path| {
            format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
        }),
        inner: env,
    }
}

/// Whether the dotted `key` names a setting (or a section) of [`Config`].
fn is_known_key(key: &str) -> bool {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    key.split('.')
        .try_fold(&defaults, |node, part| node.get(part))
        .is_some()
}

/// A provider under the name `executioner config` and error messages show for its values.
struct Layer<P> {
    metadata: Metadata,
    inner: P,
}

impl<P> Layer<P> {
    fn named(name: impl Into<String>, inner: P) -> Self {
        Layer {
            metadata: Metadata::named(name.into()),
            inner,
        }
    }
}

impl<P: Provider> Provider for Layer<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// TOML files for figment, through the `toml` crate the manifests already use (figment's own
/// `toml` feature would build a second, older one).
struct Toml;

impl Format for Toml {
    type Error = toml::de::Error;

    const NAME: &'static str = "TOML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        toml::from_str(text)
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

#[cfg(test)]
mod tests {
    use super::{redact_secrets, redact_url};

    #[test]
    fn database_url_secrets_are_masked_wherever_the_driver_reads_them() {
        assert_eq!(
            redact_url("postgres://ops:hunter2@db:5432/exe?sslmode=require"),
            "postgres://ops:***@db:5432/exe?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://ops@db/exe?sslmode=require&password=s3cret"),
            "postgres://ops@db/exe?sslmode=require&password=***"
        );
        assert_eq!(redact_url("postgres://ops@db/exe"), "postgres://ops@db/exe");
        // An `@` in the password: the user part ends at the last one.
        let url = "postgres://ops:p%40ss@db/exe";
        assert!(!redact_url(url).contains("ss@"), "{}", redact_url(url));
        assert_eq!(redact_url("not a url with user@host"), "***");
        assert_eq!(
            redact_secrets(
                "auth failed for p@ss and s3cret",
                "postgres://o:p%40ss@h/d?password=s3cret"
            ),
            "auth failed for *** and ***"
        );
        assert_eq!(
            redact_secrets("no secret here", "postgres://o@h/d"),
            "no secret here"
        );
    }
}

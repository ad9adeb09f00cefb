//! The original Python tool's JSON format: detection and conversion to a v1 Pipeline document.
//!
//! Keys keep their meaning; where the original's code and documentation disagree (default timeout,
//! retry delay, backoff, jitter, max retry time), the documented value is used. What the original
//! got wrong is not reproduced (see README "Compatibility"): `retry_on_exit_codes` really filters,
//! unknown keys are reported instead of ignored, and the conversion is fail-fast (`failFast: true`)
//! as the original behaves. This module produces a JSON value; validation judges it like any other.

use serde_json::{Map, Value, json};

/// Documented default of `default_timeout` (the code says 10800; the docs say 3600).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// What the original substitutes for an invalid job timeout.
pub const INVALID_TIMEOUT_SECS: u64 = 600;

/// Variables passed by the original's `inherit_shell_env: "default"`.
pub const DEFAULT_INHERITED: [&str; 18] = [
    "PATH",
    "LD_LIBRARY_PATH",
    "HOME",
    "USER",
    "SHELL",
    "HOSTNAME",
    "TERM",
    "DISPLAY",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "JAVA_HOME",
    "PYTHON_HOME",
    "NODE_PATH",
];

const APP_KEYS: &[&str] = &[
    "$schema",
    "working_dir",
    "jobs",
    "application_name",
    "log_dir",
    "parallel",
    "max_workers",
    "env_variables",
    "inherit_shell_env",
    "default_timeout",
    "default_max_retries",
    "default_retry_delay",
    "default_retry_backoff",
    "default_retry_jitter",
    "default_max_retry_time",
    "default_retry_on_exit_codes",
    "email_address",
    "email_on_success",
    "email_on_failure",
    "smtp_server",
    "smtp_port",
    "smtp_user",
    "smtp_password",
    "dependency_plugins",
    "allow_shell",
    "security_policy",
    "security_level",
    "command_whitelist",
    "workspace_paths",
    "command_allowlist_patterns",
];

const JOB_KEYS: &[&str] = &[
    "id",
    "command",
    "description",
    "dependencies",
    "timeout",
    "env_variables",
    "max_retries",
    "retry_delay",
    "retry_backoff",
    "retry_jitter",
    "max_retry_time",
    "retry_on_exit_codes",
    "retry_on_status",
    "pre_checks",
    "post_checks",
    "log_dir",
];

/// A converted document and the remarks made on the way (keyed by the original's JSON pointer).
#[derive(Debug, Clone)]
pub struct Converted {
    pub value: Value,
    pub warnings: Vec<(String, String)>,
}

/// True for a document in the original's format: an object with `jobs` and no v1 envelope.
pub fn is_legacy(value: &Value) -> bool {
    let Some(obj) = value.as_object() else {
        return false;
    };
    obj.contains_key("jobs")
        && !obj.contains_key("apiVersion")
        && !obj.contains_key("kind")
        && !obj.contains_key("spec")
}

/// Maps a pointer into the converted v1 document back to the original document's pointer.
pub fn source_pointer(v1: &str) -> String {
    const PREFIXES: &[(&str, &str)] = &[
        ("/spec/jobs", "/jobs"),
        ("/spec/env", "/env_variables"),
        ("/spec/workingDir", "/working_dir"),
        ("/spec/inheritEnv", "/inherit_shell_env"),
        ("/spec/maxParallel", "/max_workers"),
        ("/spec/notify", "/email_address"),
        ("/metadata/name", "/application_name"),
    ];
    for (new, old) in PREFIXES {
        if let Some(rest) = v1.strip_prefix(new) {
            // Inside a job, field names differ; the job object itself is the closest position.
            if *new == "/spec/jobs" {
                let mut parts = rest.splitn(3, '/');
                parts.next();
                if let Some(index) = parts.next() {
                    let field = parts.next().unwrap_or("");
                    let mapped = match field.split('/').next().unwrap_or("") {
                        "id" => "/id",
                        "command" => "/command",
                        "dependencies" => "/dependencies",
                        "timeout" => "/timeout",
                        "env" => "/env_variables",
                        "preChecks" => "/pre_checks",
                        "postChecks" => "/post_checks",
                        _ => "",
                    };
                    let tail = field.split_once('/').map(|(_, t)| t).unwrap_or("");
                    let tail = if mapped.is_empty() || tail.is_empty() {
                        String::new()
                    } else {
                        format!("/{tail}")
                    };
                    return format!("/jobs/{index}{mapped}{tail}");
                }
                return "/jobs".into();
            }
            return format!("{old}{rest}");
        }
    }
    String::new()
}

/// Converts the original's document. Never fails: whatever cannot be converted is carried over
/// in a form that validation rejects with a clear message, or reported as a warning.
pub fn convert(src: &Value, file_stem: &str) -> Converted {
    let mut warnings = Vec::new();
    let empty = Map::new();
    let app = src.as_object().unwrap_or(&empty);

    for key in app.keys() {
        if !APP_KEYS.contains(&key.as_str()) {
            let note = match key.as_str() {
                "name" => {
                    "key `name` is ignored (the original ignores it too); use `application_name`"
                        .to_owned()
                }
                k if k.starts_with('_') => {
                    format!("key `{k}` is ignored (disabled with a leading underscore)")
                }
                k if JOB_KEYS.contains(&k)
                    && APP_KEYS.contains(&format!("default_{k}").as_str()) =>
                {
                    format!(
                        "key `{k}` is ignored at the top level: the default for every job is `default_{k}` (or set `{k}` in a job)"
                    )
                }
                k => format!("unknown key `{k}` is ignored"),
            };
            warnings.push((format!("/{key}"), note));
        }
    }
    for (key, note) in [
        (
            "log_dir",
            "`log_dir` is ignored: logs go to the state folder (logs/PIPELINE/RUN/JOB.log)",
        ),
        (
            "dependency_plugins",
            "`dependency_plugins` is ignored (the original loads them but never uses them)",
        ),
        (
            "smtp_server",
            "SMTP settings belong in executioner.toml ([smtp] host, port, tls, username, password_env)",
        ),
        (
            "smtp_password",
            "`smtp_password` is not carried over: put the password in an environment variable named by smtp.password_env",
        ),
        (
            "allow_shell",
            "`allow_shell` belongs in executioner.toml as security.allow_shell",
        ),
        (
            "security_policy",
            "security settings belong in executioner.toml ([security])",
        ),
    ] {
        if app.contains_key(key) {
            warnings.push((format!("/{key}"), note.to_owned()));
        }
    }

    let name = app
        .get("application_name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| file_stem.to_owned());
    let dns_name = to_dns_label(&name);
    if dns_name != name {
        warnings.push((
            "/application_name".into(),
            format!("application name {name:?} becomes the pipeline name {dns_name:?}"),
        ));
    }

    let mut spec = Map::new();
    if let Some(wd) = app.get("working_dir") {
        spec.insert("workingDir".into(), wd.clone());
    }
    let parallel = app
        .get("parallel")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let workers = app
        .get("max_workers")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .unwrap_or(1);
    spec.insert(
        "maxParallel".into(),
        json!(if parallel { workers } else { 1 }),
    );
    if let Some(env) = app.get("env_variables") {
        spec.insert("env".into(), stringify_env(env));
    }
    match app.get("inherit_shell_env") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            spec.insert("inheritEnv".into(), json!("none"));
        }
        Some(Value::String(s)) if s == "default" => {
            spec.insert("inheritEnv".into(), json!(DEFAULT_INHERITED));
        }
        Some(other) => {
            spec.insert("inheritEnv".into(), other.clone());
        }
    }
    spec.insert("failFast".into(), json!(true));

    let mut defaults = Map::new();
    let default_timeout = app
        .get("default_timeout")
        .and_then(Value::as_f64)
        .filter(|t| *t > 0.0)
        .map(|t| t.ceil() as u64)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    defaults.insert("timeout".into(), json!(default_timeout));
    spec.insert("defaults".into(), Value::Object(defaults));

    if let Some(notify) = convert_email(app) {
        spec.insert("notify".into(), notify);
    }

    let jobs = match app.get("jobs") {
        Some(Value::Array(jobs)) => Value::Array(
            jobs.iter()
                .enumerate()
                .map(|(i, job)| convert_job(app, job, i, &mut warnings))
                .collect(),
        ),
        Some(other) => other.clone(),
        None => Value::Array(Vec::new()),
    };
    spec.insert("jobs".into(), jobs);

    Converted {
        value: json!({
            "apiVersion": super::API_VERSION,
            "kind": "Pipeline",
            "metadata": {"name": dns_name},
            "spec": Value::Object(spec),
        }),
        warnings,
    }
}

fn to_dns_label(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out.trim_matches('-').chars().take(63).collect();
    let trimmed = trimmed.trim_end_matches('-').to_owned();
    if trimmed.is_empty() {
        "pipeline".into()
    } else {
        trimmed
    }
}

fn stringify_env(env: &Value) -> Value {
    match env {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => Value::String(s.clone()),
                        Value::Null => Value::String(String::new()),
                        other => Value::String(other.to_string()),
                    };
                    (k.clone(), text)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn convert_email(app: &Map<String, Value>) -> Option<Value> {
    let recipients: Vec<String> = match app.get("email_address")? {
        Value::String(s) => s
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|a| a.trim().to_owned())
            .collect(),
        _ => Vec::new(),
    };
    if !recipients.iter().any(|a| a.contains('@')) {
        return None;
    }
    let on_success = app
        .get("email_on_success")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let on_failure = app
        .get("email_on_failure")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let on: Vec<&str> = match (on_success, on_failure) {
        (true, true) => vec!["always"],
        (true, false) => vec!["success"],
        (false, true) => vec!["failure"],
        (false, false) => return None,
    };
    Some(json!({"email": {"to": recipients, "on": on}}))
}

fn retry_value<'a>(
    app: &'a Map<String, Value>,
    job: &'a Map<String, Value>,
    key: &str,
) -> Option<&'a Value> {
    job.get(key).or_else(|| app.get(&format!("default_{key}")))
}

fn convert_job(
    app: &Map<String, Value>,
    job: &Value,
    index: usize,
    warnings: &mut Vec<(String, String)>,
) -> Value {
    let Some(job) = job.as_object() else {
        return job.clone();
    };
    let at = |key: &str| format!("/jobs/{index}/{key}");
    for key in job.keys() {
        if !JOB_KEYS.contains(&key.as_str()) {
            warnings.push((at(key), format!("unknown job key `{key}` is ignored")));
        }
    }
    if job.contains_key("log_dir") {
        warnings.push((
            at("log_dir"),
            "`log_dir` is ignored: logs go to the state folder".into(),
        ));
    }

    let mut out = Map::new();
    if let Some(id) = job.get("id") {
        out.insert("id".into(), id.clone());
    }
    if let Some(d) = job.get("description") {
        out.insert("description".into(), d.clone());
    }
    match job.get("command") {
        // The original treats an empty command as an immediate success.
        Some(Value::String(c)) if c.trim().is_empty() => {
            out.insert("command".into(), json!("true"));
        }
        Some(c) => {
            out.insert("command".into(), c.clone());
        }
        None => {}
    }
    if let Some(deps) = job.get("dependencies") {
        out.insert("dependencies".into(), deps.clone());
    }
    match job.get("timeout") {
        None => {}
        Some(t) => match t.as_f64() {
            Some(secs) if secs > 0.0 => {
                out.insert("timeout".into(), json!(secs.ceil() as u64));
            }
            _ => {
                warnings.push((
                    at("timeout"),
                    format!(
                        "invalid timeout {t}: replaced with {INVALID_TIMEOUT_SECS} seconds, as the original does"
                    ),
                ));
                out.insert("timeout".into(), json!(INVALID_TIMEOUT_SECS));
            }
        },
    }
    if let Some(env) = job.get("env_variables") {
        out.insert("env".into(), stringify_env(env));
    }

    let limit = retry_value(app, job, "max_retries")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if limit > 0 {
        let mut retry = Map::new();
        retry.insert("limit".into(), json!(limit));
        // Documented defaults: delay 60 s, backoff 1.0, jitter 0, max retry time 0 (unlimited).
        let delay = retry_value(app, job, "retry_delay")
            .and_then(Value::as_f64)
            .unwrap_or(60.0);
        retry.insert(
            "delay".into(),
            json!(format!("{}ms", (delay * 1000.0).round() as u64)),
        );
        if let Some(f) = retry_value(app, job, "retry_backoff").and_then(Value::as_f64)
            && f != 1.0
        {
            retry.insert("factor".into(), json!(f));
        }
        if let Some(j) = retry_value(app, job, "retry_jitter").and_then(Value::as_f64)
            && j > 0.0
        {
            retry.insert("jitter".into(), json!(j));
        }
        if let Some(t) = retry_value(app, job, "max_retry_time").and_then(Value::as_f64)
            && t > 0.0
        {
            retry.insert("deadline".into(), json!(t.ceil() as u64));
        }
        if let Some(codes) = retry_value(app, job, "retry_on_exit_codes") {
            retry.insert("onExitCodes".into(), codes.clone());
        }
        if let Some(statuses) = job.get("retry_on_status").and_then(Value::as_array) {
            let on_timeout = statuses.iter().any(|s| s.as_str() == Some("TIMEOUT"));
            retry.insert("onTimeout".into(), json!(on_timeout));
        }
        out.insert("retry".into(), Value::Object(retry));
    }

    for (old, new) in [("pre_checks", "preChecks"), ("post_checks", "postChecks")] {
        if let Some(checks) = job.get(old) {
            let converted = match checks {
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(k, c)| convert_check(c, &format!("{}/{k}", at(old)), warnings))
                        .collect(),
                ),
                other => other.clone(),
            };
            out.insert(new.into(), converted);
        }
    }
    Value::Object(out)
}

fn convert_check(check: &Value, pointer: &str, warnings: &mut Vec<(String, String)>) -> Value {
    let name = check.get("name").and_then(Value::as_str).unwrap_or("");
    let params = check.get("params").cloned().unwrap_or(json!({}));
    let param = |key: &str| params.get(key).and_then(Value::as_str).map(str::to_owned);
    match name {
        "check_file_exists" => json!({"fileExists": {"path": param("path").unwrap_or_default()}}),
        "check_no_ora_errors" => match param("log_file") {
            // The file name (a glob) is an argument of a fixed script, never spliced into it.
            Some(file) => json!({"command": [
                "sh", "-c",
                "set -- $1; [ -e \"$1\" ] && ! grep -q 'ORA-' \"$@\"",
                "check_no_ora_errors", file
            ]}),
            None => json!({"logNotContains": {"pattern": "ORA-"}}),
        },
        "check_no_ora_or_sp2_errors" => match param("log_file") {
            Some(file) => json!({"command": [
                "sh", "-c",
                "[ -r \"$1\" ] && ! grep -qE 'ORA-|SP2-' \"$1\"",
                "check_no_ora_or_sp2_errors", file
            ]}),
            None => json!({"logNotContains": {"pattern": "ORA-|SP2-"}}),
        },
        other => {
            warnings.push((
                pointer.to_owned(),
                format!("unknown check {other:?}: the original fails such a check; it is kept as a failing command"),
            ));
            json!({"command": ["false"]})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_legacy_documents() {
        assert!(is_legacy(&json!({"working_dir": "/x", "jobs": []})));
        assert!(!is_legacy(
            &json!({"apiVersion": "executioner.dev/v1", "kind": "Pipeline", "spec": {"jobs": []}})
        ));
        assert!(!is_legacy(&json!([1, 2])));
    }

    #[test]
    fn converts_retries_env_checks_and_email() {
        let src = json!({
            "application_name": "Nightly ETL",
            "working_dir": "/srv/etl",
            "parallel": true,
            "max_workers": 3,
            "env_variables": {"A": 1, "B": "${A}/x"},
            "inherit_shell_env": "default",
            "default_retry_delay": 2,
            "email_address": "ops@example.com, dev@example.com",
            "email_on_success": true,
            "jobs": [
                {"id": "a", "command": "echo a", "max_retries": 2, "retry_backoff": 2.0,
                 "retry_on_exit_codes": [1, 75], "retry_on_status": ["FAILED"],
                 "pre_checks": [{"name": "check_file_exists", "params": {"path": "in.txt"}}],
                 "post_checks": [{"name": "check_no_ora_errors", "params": {"log_file": "*.log"}}]},
                {"id": "b", "command": "", "dependencies": ["a"], "timeout": -1}
            ]
        });
        let c = convert(&src, "file");
        let v = &c.value;
        assert_eq!(v["metadata"]["name"], "nightly-etl");
        assert_eq!(v["spec"]["maxParallel"], 3);
        assert_eq!(v["spec"]["failFast"], true);
        assert_eq!(v["spec"]["env"]["A"], "1");
        assert_eq!(v["spec"]["inheritEnv"][0], "PATH");
        assert_eq!(v["spec"]["defaults"]["timeout"], DEFAULT_TIMEOUT_SECS);
        assert_eq!(v["spec"]["notify"]["email"]["on"][0], "always");
        assert_eq!(v["spec"]["notify"]["email"]["to"][1], "dev@example.com");
        let a = &v["spec"]["jobs"][0];
        assert_eq!(a["retry"]["limit"], 2);
        assert_eq!(a["retry"]["delay"], "2000ms");
        assert_eq!(a["retry"]["factor"], 2.0);
        assert_eq!(a["retry"]["onExitCodes"], json!([1, 75]));
        assert_eq!(a["retry"]["onTimeout"], false);
        assert_eq!(a["preChecks"][0]["fileExists"]["path"], "in.txt");
        assert_eq!(a["postChecks"][0]["command"][4], "*.log");
        let b = &v["spec"]["jobs"][1];
        assert_eq!(b["command"], "true");
        assert_eq!(b["timeout"], INVALID_TIMEOUT_SECS);
        assert!(c.warnings.iter().any(|(p, _)| p == "/jobs/1/timeout"));
    }

    #[test]
    fn pointers_map_back_to_the_original() {
        assert_eq!(
            source_pointer("/spec/jobs/3/dependencies/1"),
            "/jobs/3/dependencies/1"
        );
        assert_eq!(
            source_pointer("/spec/jobs/3/env/X"),
            "/jobs/3/env_variables/X"
        );
        assert_eq!(source_pointer("/spec/jobs/3/retry/limit"), "/jobs/3");
        assert_eq!(source_pointer("/spec/env/A"), "/env_variables/A");
    }
}

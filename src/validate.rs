//! Manifest validation: JSON Schema (generated from the spec types) plus semantic rules, turned into
//! diagnostics that point at the offending node as `FILE:LINE:COL: message`.
//!
//! Every problem is reported, not just the first: the schema pass and the semantic pass both run on
//! the generic document, so a type error in one job does not hide a cycle between two others. Only
//! when both passes are clean is the document turned into a typed [`Manifest`].

mod data;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use indexmap::IndexMap;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use crate::dag::{self, Dag};
use crate::env;
use crate::spec::source::push_pointer;
use crate::spec::{self, JobId, LoadError, Manifest, Pos, RawDoc};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}:{}: {prefix}{}",
            self.file.display(),
            self.pos,
            self.message
        )
    }
}

/// Command restrictions from the configuration's `security` section.
#[derive(Debug, Clone, Default)]
pub struct SecurityPolicy {
    /// When false, string (shell) commands are rejected.
    pub allow_shell: bool,
    /// Program names or paths (globs allowed); empty means any.
    pub allowed_commands: Vec<String>,
}

impl SecurityPolicy {
    /// The policy of the configuration's `security` section.
    pub fn from_config(security: &crate::config::SecurityConfig) -> Self {
        Self {
            allow_shell: security.allow_shell,
            allowed_commands: security.allowed_commands.clone(),
        }
    }

    pub fn permissive() -> Self {
        Self {
            allow_shell: true,
            allowed_commands: Vec::new(),
        }
    }
}

/// What validation needs from outside the manifest.
#[derive(Debug, Clone)]
pub struct Options {
    /// The environment jobs would inherit (before `inheritEnv` filtering).
    pub process_env: IndexMap<String, String>,
    /// Variables given on the command line (`run --env`), the highest layer.
    pub cli_env: IndexMap<String, String>,
    pub security: SecurityPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            process_env: std::env::vars().collect(),
            cli_env: IndexMap::new(),
            security: SecurityPolicy::permissive(),
        }
    }
}

/// A manifest that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub file: PathBuf,
    pub index: usize,
    pub legacy: bool,
    pub manifest: Manifest,
    pub warnings: Vec<Diagnostic>,
}

/// The outcome for one file.
#[derive(Debug)]
pub enum FileOutcome {
    /// The file could not be read (exit 2).
    Unreadable(LoadError),
    /// Every document of the file, valid or not.
    Docs(Vec<Result<Validated, Vec<Diagnostic>>>),
}

/// Reads and validates one file.
pub fn validate_file(path: &Path, options: &Options) -> FileOutcome {
    match spec::read_file(path) {
        Err(e) if e.is_unreadable() => FileOutcome::Unreadable(e),
        Err(e) => {
            let (pos, message) = match &e {
                LoadError::Syntax { pos, message, .. } => (*pos, message.clone()),
                LoadError::TooLarge { .. } => (
                    Pos::START,
                    format!(
                        "larger than {} MiB, refused",
                        spec::source::MAX_FILE_BYTES / 1024 / 1024
                    ),
                ),
                LoadError::Io { .. } | LoadError::UnknownFormat { .. } => {
                    (Pos::START, crate::error_chain::render(&e))
                }
            };
            FileOutcome::Docs(vec![Err(vec![Diagnostic {
                file: path.to_owned(),
                pos,
                severity: Severity::Error,
                message,
            }])])
        }
        Ok(docs) => FileOutcome::Docs(docs.iter().map(|d| validate_doc(d, options)).collect()),
    }
}

/// Lists the manifest files of a folder (not recursive): `*.yaml|*.yml|*.toml|*.json`, skipping
/// hidden files, editor swap/backup/lock files and symlinks. Sorted by name.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if !file_type.is_file() {
            continue;
        }
        let path = entry.path();
        if is_manifest_name(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// True for names the controller and `validate DIR` read: not hidden, not an editor's temporary
/// file, not a schema (`*.schema.json`, as `init` writes beside the manifest), and with a
/// manifest extension.
pub fn is_manifest_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || name.to_ascii_lowercase().ends_with(".schema.json")
    {
        return false;
    }
    spec::Format::from_path(path).is_some()
}

/// Validates one parsed document.
pub fn validate_doc(doc: &RawDoc, options: &Options) -> Result<Validated, Vec<Diagnostic>> {
    let mut found = Vec::new();
    schema_errors(doc, &mut found);
    semantic_errors(doc, options, &mut found);
    let warnings: Vec<Diagnostic> = doc
        .warnings
        .iter()
        .map(|(pos, message)| Diagnostic {
            file: doc.file.clone(),
            pos: *pos,
            severity: Severity::Warning,
            message: message.clone(),
        })
        .collect();
    let mut errors: Vec<Diagnostic> = found
        .into_iter()
        .map(|(pos, message)| Diagnostic {
            file: doc.file.clone(),
            pos,
            severity: Severity::Error,
            message,
        })
        .collect();
    if errors.is_empty() {
        // From the borrowed document: a copy of a 10,000-job document would double the peak.
        match <Manifest as serde::Deserialize>::deserialize(&doc.value) {
            Ok(manifest) => {
                return Ok(Validated {
                    file: doc.file.clone(),
                    index: doc.index,
                    legacy: doc.legacy,
                    manifest,
                    warnings,
                });
            }
            Err(e) => errors.push(Diagnostic {
                file: doc.file.clone(),
                pos: doc.pos_of(""),
                severity: Severity::Error,
                message: e.to_string(),
            }),
        }
    }
    errors.sort_by_key(|d| d.pos);
    errors.dedup();
    errors.extend(warnings);
    Err(errors)
}

// ---------------------------------------------------------------------------------------------
// Schema pass

fn schema() -> &'static (Value, jsonschema::Validator) {
    static SCHEMA: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let schema = spec::pipeline_schema();
        // The schema is generated from our own types; failing to compile it is a build defect.
        #[allow(clippy::expect_used)]
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(false)
            .build(&schema)
            .expect("generated pipeline schema compiles");
        (schema, validator)
    })
}

fn schema_errors(doc: &RawDoc, out: &mut Vec<(Pos, String)>) {
    let (root, validator) = schema();
    for error in validator.iter_errors(&doc.value) {
        let pointer = error.instance_path().as_str().to_owned();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_properties(root, &doc.value, &pointer);
                for key in unexpected {
                    let child = push_pointer(&pointer, key);
                    let mut message = format!("unknown field `{key}`{}", where_suffix(&pointer));
                    if let Some(s) = did_you_mean(key, allowed.iter().map(String::as_str)) {
                        message.push_str(&format!(", did you mean `{s}`?"));
                    } else if !allowed.is_empty() {
                        message.push_str(&format!(" (expected one of: {})", allowed.join(", ")));
                    }
                    out.push((doc.key_pos_of(&child), message));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push((
                    doc.pos_of(&pointer),
                    format!("missing required field `{name}`{}", where_suffix(&pointer)),
                ));
            }
            _ => {
                let (deepest, message) = describe(&error);
                let pointer = if deepest.is_empty() { pointer } else { deepest };
                out.push((doc.pos_of(&pointer), message));
            }
        }
    }
}

fn where_suffix(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!(" in {}", display_path(pointer))
    }
}

/// `/spec/jobs/2/retry` as `spec.jobs[2].retry`.
pub fn display_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// The most specific message for a schema error, with the pointer it is about.
fn describe(error: &jsonschema::ValidationError<'_>) -> (String, String) {
    let pointer = error.instance_path().as_str().to_owned();
    let instance = error.instance();
    let field = display_path(&pointer);
    let at = if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    };
    if error.schema_path().as_str().starts_with(DURATION_SCHEMA) {
        return (pointer, format!("{at}{}", duration_message(instance)));
    }
    let message = match error.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let firsts: Vec<&jsonschema::ValidationError<'_>> =
                context.iter().filter_map(|branch| branch.first()).collect();
            // The branch whose error reaches deepest into the value says the most.
            let best = firsts
                .iter()
                .max_by_key(|e| e.instance_path().as_str().len());
            if let Some(e) = best
                && e.instance_path().as_str().len() > pointer.len()
            {
                return describe(e);
            }
            // A branch that failed on something other than the value's type wanted this kind
            // of value (a string that is not one of the names, say): it says what is wrong. The
            // branches that wanted another type are named as the alternatives.
            let others: Vec<String> = firsts
                .iter()
                .filter_map(|e| wanted_types(e))
                .flatten()
                .collect();
            match firsts.iter().find(|e| wanted_types(e).is_none()) {
                Some(e) => match e.kind() {
                    ValidationErrorKind::Enum { options } => {
                        enum_message(&at, instance, options, &others)
                    }
                    _ => return describe(e),
                },
                None => type_message(&at, &others, instance),
            }
        }
        ValidationErrorKind::Type { kind } => type_message(&at, &[type_names(kind)], instance),
        ValidationErrorKind::Enum { options } => enum_message(&at, instance, options, &[]),
        ValidationErrorKind::Constant { expected_value } => {
            format!("{at}must be {expected_value}, found {}", short(instance))
        }
        ValidationErrorKind::Pattern { pattern } => {
            format!("{at}{}", pattern_message(pattern, instance))
        }
        ValidationErrorKind::Minimum { limit } => {
            format!(
                "{at}{} is less than the minimum of {limit}",
                short(instance)
            )
        }
        ValidationErrorKind::Maximum { limit } => {
            format!(
                "{at}{} is greater than the maximum of {limit}",
                short(instance)
            )
        }
        ValidationErrorKind::MinItems { limit } => {
            format!("{at}must have at least {limit} item(s)")
        }
        ValidationErrorKind::MinLength { limit } => {
            format!("{at}must be at least {limit} character(s) long")
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("{at}must be at most {limit} characters long")
        }
        _ => format!("{at}{}", error.masked()),
    };
    (pointer, message)
}

/// Where the schema's Duration definition starts, as jsonschema reports schema locations.
const DURATION_SCHEMA: &str = "/$defs/Duration/";

/// What is wrong with a value given for a duration.
fn duration_message(instance: &Value) -> String {
    const EXAMPLES: &str = "examples: 90s, 10m, 1h30m, or an integer number of seconds";
    match instance {
        Value::Null => "no value given: write a duration or leave the field out".to_owned(),
        Value::String(text) => format!("invalid duration {text:?} ({EXAMPLES})"),
        Value::Number(n) if n.as_f64().is_some_and(|f| f < 0.0) => {
            format!("invalid duration {n}: it must not be negative ({EXAMPLES})")
        }
        other => format!("invalid duration {} ({EXAMPLES})", short(other)),
    }
}

/// `VALUE is not one of: a, b, c` with the other accepted shapes and a did-you-mean.
fn enum_message(at: &str, instance: &Value, options: &Value, others: &[String]) -> String {
    let choices: Vec<String> = options
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut m = format!(
        "{at}{} is not one of: {}",
        short(instance),
        choices.join(", ")
    );
    for other in others {
        m.push_str(&format!(", or {}", a_type(other)));
    }
    if let Some(text) = instance.as_str()
        && let Some(s) = did_you_mean(text, choices.iter().map(String::as_str))
    {
        m.push_str(&format!(" (did you mean `{s}`?)"));
    }
    m
}

/// The types a failed schema wanted, when it failed only because the value had another type.
fn wanted_types(error: &jsonschema::ValidationError<'_>) -> Option<Vec<String>> {
    match error.kind() {
        ValidationErrorKind::Type { kind } => Some(vec![type_names(kind)]),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            let mut all = Vec::new();
            for branch in context {
                let first = branch.first()?;
                if first.instance_path() != error.instance_path() {
                    return None;
                }
                all.extend(wanted_types(first)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// `expected X or Y, found Z`; null is never what a field expects (leaving it out is).
fn type_message(at: &str, types: &[String], instance: &Value) -> String {
    if instance.is_null() {
        return format!("{at}no value given: write one or leave the field out");
    }
    let mut names: Vec<&str> = Vec::new();
    for name in types.iter().flat_map(|t| t.split(" or ")) {
        if name != "null" && !names.contains(&name) {
            names.push(name);
        }
    }
    if names.contains(&"number") {
        names.retain(|n| *n != "integer");
    }
    let wanted: Vec<String> = names.into_iter().map(a_type).collect();
    if wanted.is_empty() {
        format!("{at}{} is not a valid value here", short(instance))
    } else {
        format!(
            "{at}expected {}, found {}",
            wanted.join(" or "),
            json_type(instance)
        )
    }
}

/// A JSON Schema type name with its article: `an array`, `a string`.
fn a_type(name: &str) -> String {
    match name {
        "array" | "object" | "integer" => format!("an {name}"),
        "null" => "null".to_owned(),
        other => format!("a {other}"),
    }
}

fn pattern_message(pattern: &str, instance: &Value) -> String {
    let text = instance.as_str().unwrap_or_default();
    if pattern == spec::duration::DURATION_PATTERN {
        duration_message(instance)
    } else if pattern == JobId::PATTERN {
        JobId::parse(text)
            .err()
            .map_or_else(|| format!("invalid job id {text:?}"), |e| e.to_string())
    } else if pattern == spec::PipelineName::PATTERN {
        spec::PipelineName::parse(text)
            .err()
            .map_or_else(|| format!("invalid name {text:?}"), |e| e.to_string())
    } else {
        format!("{} does not match {pattern}", short(instance))
    }
}

fn type_names(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(t) => t.to_string(),
        TypeKind::Multiple(set) => set
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

/// The property names the schema allows for the object at `pointer` of `instance`.
fn allowed_properties(root: &Value, instance: &Value, pointer: &str) -> Vec<String> {
    let mut node = root;
    let mut value = instance;
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        node = object_schema(root, node, value);
        let next = if let Some(props) = node.get("properties").and_then(|p| p.get(&seg)) {
            props
        } else if let Some(items) = node.get("items") {
            items
        } else if let Some(additional) = node.get("additionalProperties") {
            additional
        } else {
            return Vec::new();
        };
        node = next;
        value = match value {
            Value::Object(m) => m.get(&seg).unwrap_or(&Value::Null),
            Value::Array(a) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .unwrap_or(&Value::Null),
            _ => &Value::Null,
        };
    }
    let node = object_schema(root, node, value);
    node.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Follows `$ref` and picks, among `anyOf`/`oneOf` branches, the one that describes objects.
fn object_schema<'a>(root: &'a Value, mut node: &'a Value, value: &Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix('#').and_then(|p| root.pointer(p)) {
                Some(target) => {
                    node = target;
                    continue;
                }
                None => return node,
            }
        }
        let branches = node
            .get("anyOf")
            .or_else(|| node.get("oneOf"))
            .and_then(Value::as_array);
        if let Some(branches) = branches {
            let wanted = if value.is_array() { "array" } else { "object" };
            let pick = branches.iter().find(|b| {
                let b = resolve_ref(root, b);
                b.get("type").and_then(Value::as_str) == Some(wanted)
                    || (wanted == "object" && b.get("properties").is_some())
            });
            match pick {
                Some(b) => {
                    node = b;
                    continue;
                }
                None => return node,
            }
        }
        return node;
    }
    node
}

fn resolve_ref<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    node.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| root.pointer(p))
        .unwrap_or(node)
}

/// The closest candidate by edit distance (case-insensitive), if close enough to be a plausible
/// typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| {
            *d <= (c.len().max(word.len()) / 3).max(1) && *d > 0 || (*d == 0 && *c != word)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Semantic pass (on the generic document: tolerant of shapes the schema pass already reported)

fn semantic_errors(doc: &RawDoc, options: &Options, out: &mut Vec<(Pos, String)>) {
    let Some(spec) = doc.value.get("spec").and_then(Value::as_object) else {
        return;
    };
    let jobs: Vec<&Value> = spec
        .get("jobs")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();

    // Job ids: duplicates.
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut id_list: Vec<Option<String>> = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let id = job.get("id").and_then(Value::as_str).map(str::to_owned);
        // `.` and `..` match the schema's character class; the type refuses them.
        if let Some(id) = &id
            && !id.is_empty()
            && id.len() <= crate::spec::names::MAX_NAME_LEN
            && JobId::allowed_chars(id)
            && let Err(e) = JobId::parse(id)
        {
            out.push((doc.pos_of(&format!("/spec/jobs/{i}/id")), e.to_string()));
        }
        if let Some(id) = &id {
            if let Some(first) = ids.get(id) {
                out.push((
                    doc.pos_of(&format!("/spec/jobs/{i}/id")),
                    format!("duplicate job id `{id}` (first defined by spec.jobs[{first}])"),
                ));
            } else {
                ids.insert(id.clone(), i);
            }
        }
        id_list.push(id);
    }

    // Dependencies: unknown ids (with did-you-mean), self references; then cycles.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        let Some(deps) = job.get("dependencies").and_then(Value::as_array) else {
            continue;
        };
        for (k, dep) in deps.iter().enumerate() {
            let Some(dep) = dep.as_str() else { continue };
            let pointer = format!("/spec/jobs/{i}/dependencies/{k}");
            match ids.get(dep) {
                Some(&j) if j == i => out.push((
                    doc.pos_of(&pointer),
                    format!("job `{dep}` depends on itself"),
                )),
                Some(&j) => edges[i].push(j),
                None => {
                    let mut message = format!(
                        "job `{}` depends on unknown job `{dep}`",
                        id_list[i].as_deref().unwrap_or("?")
                    );
                    if let Some(s) = did_you_mean(dep, ids.keys().map(String::as_str)) {
                        message.push_str(&format!(", did you mean `{s}`?"));
                    }
                    out.push((doc.pos_of(&pointer), message));
                }
            }
        }
    }
    if let Ok(graph) = Dag::new(edges)
        && let Some(cycle) = graph.find_cycle()
    {
        let name = |i: usize| id_list[i].clone().unwrap_or_else(|| format!("#{i}"));
        let first = cycle[0];
        out.push((
            doc.pos_of(&format!("/spec/jobs/{first}/dependencies")),
            format!("dependency cycle: {}", dag::format_cycle(&cycle, name)),
        ));
    }

    // Durations that must be positive.
    let check_positive = |out: &mut Vec<(Pos, String)>, pointer: String, value: Option<&Value>| {
        if let Some(v) = value
            && let Ok(d) = serde_json::from_value::<spec::Duration>(v.clone())
            && d.is_zero()
        {
            out.push((
                doc.pos_of(&pointer),
                format!("{} must be greater than zero", display_path(&pointer)),
            ));
        }
    };
    check_positive(out, "/spec/timeout".into(), spec.get("timeout"));
    let defaults = spec.get("defaults");
    check_positive(
        out,
        "/spec/defaults/timeout".into(),
        defaults.and_then(|d| d.get("timeout")),
    );
    let mut retry_owners: Vec<(String, &Value)> = Vec::new();
    if let Some(r) = defaults.and_then(|d| d.get("retry")) {
        retry_owners.push(("/spec/defaults/retry".into(), r));
    }
    for (i, job) in jobs.iter().enumerate() {
        check_positive(out, format!("/spec/jobs/{i}/timeout"), job.get("timeout"));
        if let Some(r) = job.get("retry") {
            retry_owners.push((format!("/spec/jobs/{i}/retry"), r));
        }
    }
    for (base, retry) in &retry_owners {
        check_positive(out, format!("{base}/deadline"), retry.get("deadline"));
        check_positive(out, format!("{base}/maxDelay"), retry.get("maxDelay"));
    }

    // Checks: exactly one kind, `wait` only on pre-checks, valid regexes, positive waits.
    let mut check_lists: Vec<(String, &Value, bool)> = Vec::new();
    for (list, pre) in [("preChecks", true), ("postChecks", false)] {
        if let Some(v) = defaults.and_then(|d| d.get(list)) {
            check_lists.push((format!("/spec/defaults/{list}"), v, pre));
        }
        for (i, job) in jobs.iter().enumerate() {
            if let Some(v) = job.get(list) {
                check_lists.push((format!("/spec/jobs/{i}/{list}"), v, pre));
            }
        }
    }
    for (base, list, pre) in check_lists {
        let Some(items) = list.as_array() else {
            continue;
        };
        for (k, check) in items.iter().enumerate() {
            let pointer = format!("{base}/{k}");
            let Some(obj) = check.as_object() else {
                continue;
            };
            let kinds: Vec<&String> = obj
                .keys()
                .filter(|key| spec::CHECK_KINDS.contains(&key.as_str()))
                .collect();
            match kinds.len() {
                0 => out.push((
                    doc.pos_of(&pointer),
                    format!("a check needs one of: {}", spec::CHECK_KINDS.join(", ")),
                )),
                1 => {}
                _ => out.push((
                    doc.key_pos_of(&push_pointer(&pointer, kinds[1])),
                    format!(
                        "a check has exactly one kind; found {}",
                        kinds
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                )),
            }
            if let Some(wait) = obj.get("wait") {
                if !pre {
                    out.push((
                        doc.key_pos_of(&format!("{pointer}/wait")),
                        "`wait` turns a pre-check into a sensor; it is not allowed on post-checks"
                            .into(),
                    ));
                }
                check_positive(out, format!("{pointer}/wait/timeout"), wait.get("timeout"));
                check_positive(
                    out,
                    format!("{pointer}/wait/interval"),
                    wait.get("interval"),
                );
            }
            for kind in ["logContains", "logNotContains"] {
                if let Some(p) = obj
                    .get(kind)
                    .and_then(|c| c.get("pattern"))
                    .and_then(Value::as_str)
                    && let Err(e) = regex::Regex::new(p)
                {
                    let first = e.to_string();
                    let first = first.lines().last().unwrap_or("invalid regex").trim();
                    out.push((
                        doc.pos_of(&format!("{pointer}/{kind}/pattern")),
                        format!("invalid regex {p:?}: {first}"),
                    ));
                }
            }
        }
    }

    // Schedule.
    if let Some(s) = spec.get("schedule").and_then(Value::as_str)
        && let Err(message) = crate::schedule::Schedule::parse(s)
    {
        out.push((doc.pos_of("/spec/schedule"), message));
    }
    // A tick is acted on milliseconds after its time, seconds on a busy machine: a shorter
    // deadline would miss ticks at random.
    if let Some(v) = spec.get("startingDeadline")
        && let Ok(d) = serde_json::from_value::<spec::Duration>(v.clone())
        && d.as_std() < crate::schedule::MIN_STARTING_DEADLINE
    {
        out.push((
            doc.pos_of("/spec/startingDeadline"),
            format!(
                "startingDeadline must be at least {}s (a tick may be acted on a few seconds after its time)",
                crate::schedule::MIN_STARTING_DEADLINE.as_secs()
            ),
        ));
    }

    env_errors(doc, spec, &jobs, options, out);
    data::data_errors(doc, spec, &jobs, out);
    security_errors(doc, &jobs, &options.security, out);
}

fn env_layer(value: Option<&Value>) -> IndexMap<String, (String, bool)> {
    let mut layer = IndexMap::new();
    if let Some(map) = value.and_then(Value::as_object) {
        for (k, v) in map {
            let (text, secret) = match v {
                Value::String(s) => (s.clone(), false),
                Value::Number(n) => (n.to_string(), false),
                Value::Bool(b) => (b.to_string(), false),
                // A secret's value is not known before the run; it counts as defined.
                Value::Object(_) => (String::new(), true),
                _ => continue,
            };
            layer.insert(k.clone(), (text, secret));
        }
    }
    layer
}

fn env_errors(
    doc: &RawDoc,
    spec: &serde_json::Map<String, Value>,
    jobs: &[&Value],
    options: &Options,
    out: &mut Vec<(Pos, String)>,
) {
    let inherited: HashSet<String> = match spec.get("inheritEnv") {
        None => options.process_env.keys().cloned().collect(),
        Some(Value::String(mode)) => match mode.as_str() {
            "none" => HashSet::new(),
            "minimal" => env::MINIMAL_INHERITED
                .iter()
                .filter(|n| options.process_env.contains_key(**n))
                .map(|n| (*n).to_owned())
                .collect(),
            _ => options.process_env.keys().cloned().collect(),
        },
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .filter(|n| options.process_env.contains_key(*n))
            .map(str::to_owned)
            .collect(),
        Some(_) => HashSet::new(),
    };
    let builtin = [
        "EXECUTIONER_RUN_ID",
        "EXECUTIONER_PIPELINE",
        "EXECUTIONER_JOB_ID",
        "EXECUTIONER_ATTEMPT",
        "EXECUTIONER_OUTPUT",
    ];

    let pipeline_layer = env_layer(spec.get("env"));
    for (key, _) in &pipeline_layer {
        if !env::is_valid_name(key) {
            out.push((
                doc.key_pos_of(&push_pointer("/spec/env", key)),
                format!(
                    "invalid environment variable name {key:?} (expected [A-Za-z_][A-Za-z0-9_]*)"
                ),
            ));
        }
    }
    // Parameters and outputs are checked by `data`.
    let base_pipeline = |name: &str| {
        inherited.contains(name) || builtin.contains(&name) || env::qualified(name).is_some()
    };
    let pipeline_templates: IndexMap<String, String> = pipeline_layer
        .iter()
        .filter(|(_, (_, secret))| !secret)
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    let secret_names: HashSet<&String> = pipeline_layer
        .iter()
        .filter(|(_, (_, secret))| *secret)
        .map(|(k, _)| k)
        .collect();
    let lower_for_pipeline =
        |name: &str| base_pipeline(name) || secret_names.contains(&name.to_owned());
    for e in env::check_layer(&lower_for_pipeline, &pipeline_templates) {
        let key = env_error_key(&e);
        out.push((
            doc.pos_of(&push_pointer("/spec/env", &key)),
            format!("spec.env.{e}"),
        ));
    }

    for (i, job) in jobs.iter().enumerate() {
        let job_id = job.get("id").and_then(Value::as_str).unwrap_or("?");
        let layer = env_layer(job.get("env"));
        let base = format!("/spec/jobs/{i}/env");
        for (key, _) in &layer {
            if !env::is_valid_name(key) {
                out.push((
                    doc.key_pos_of(&push_pointer(&base, key)),
                    format!("job `{job_id}`: invalid environment variable name {key:?} (expected [A-Za-z_][A-Za-z0-9_]*)"),
                ));
            }
        }
        let templates: IndexMap<String, String> = layer
            .iter()
            .filter(|(_, (_, secret))| !secret)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let job_secrets: HashSet<&String> = layer
            .iter()
            .filter(|(_, (_, secret))| *secret)
            .map(|(k, _)| k)
            .collect();
        let lower = |name: &str| {
            lower_for_pipeline(name)
                || pipeline_layer.contains_key(name)
                || job_secrets.contains(&name.to_owned())
        };
        for e in env::check_layer(&lower, &templates) {
            let key = env_error_key(&e);
            out.push((
                doc.pos_of(&push_pointer(&base, &key)),
                format!("job `{job_id}`: {e}"),
            ));
        }
        // Array commands are interpolated element by element against the job's environment.
        if let Some(Value::Array(argv)) = job.get("command") {
            for (k, arg) in argv.iter().enumerate() {
                let Some(arg) = arg.as_str() else { continue };
                match env::references(arg) {
                    Err(message) => out.push((
                        doc.pos_of(&format!("/spec/jobs/{i}/command/{k}")),
                        format!("job `{job_id}`: command[{k}]: {message}"),
                    )),
                    Ok(refs) => {
                        for (name, has_default) in refs {
                            if !has_default
                                && !lower(&name)
                                && !layer.contains_key(&name)
                                && !options.cli_env.contains_key(&name)
                            {
                                out.push((
                                    doc.pos_of(&format!("/spec/jobs/{i}/command/{k}")),
                                    format!("job `{job_id}`: command[{k}]: undefined variable ${{{name}}} (give a default with ${{{name}:-...}})"),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn env_error_key(e: &env::EnvError) -> String {
    match e {
        env::EnvError::Undefined { key, .. }
        | env::EnvError::Cycle { key, .. }
        | env::EnvError::Syntax { key, .. } => key.clone(),
    }
}

fn security_errors(
    doc: &RawDoc,
    jobs: &[&Value],
    policy: &SecurityPolicy,
    out: &mut Vec<(Pos, String)>,
) {
    for (i, job) in jobs.iter().enumerate() {
        let job_id = job.get("id").and_then(Value::as_str).unwrap_or("?");
        let pointer = format!("/spec/jobs/{i}/command");
        let program = match job.get("command") {
            Some(Value::String(cmd)) => {
                if !policy.allow_shell {
                    out.push((
                        doc.pos_of(&pointer),
                        format!("job `{job_id}`: shell commands are not allowed (security.allow_shell = false); write the command as an array"),
                    ));
                }
                cmd.split_whitespace().next().unwrap_or("").to_owned()
            }
            Some(Value::Array(argv)) => argv
                .first()
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            _ => continue,
        };
        if !policy.allowed_commands.is_empty()
            && !command_allowed(&program, &policy.allowed_commands)
        {
            out.push((
                doc.pos_of(&pointer),
                format!("job `{job_id}`: command `{program}` is not in security.allowed_commands"),
            ));
        }
    }
}

/// True when `program` matches an allowed name or path. Each pattern is a glob (globset: `*` and
/// `?` match any characters, `/` included, and `[...]`, `{a,b}` work); one without `/` is matched
/// against the program's file name. A pattern that is not a valid glob matches only itself.
pub fn command_allowed(program: &str, allowed: &[String]) -> bool {
    let base = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    allowed.iter().any(|pattern| {
        let target = if pattern.contains('/') { program } else { base };
        match globset::Glob::new(pattern) {
            Ok(glob) => glob.compile_matcher().is_match(target),
            Err(_) => pattern == target,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_typos() {
        assert_eq!(
            did_you_mean("dependecies", ["dependencies", "description"]),
            Some("dependencies".into())
        );
        assert_eq!(did_you_mean("zzz", ["dependencies"]), None);
        assert_eq!(did_you_mean("Timeout", ["timeout"]), Some("timeout".into()));
    }

    #[test]
    fn globs() {
        assert!(command_allowed("/usr/bin/psql", &["psql".into()]));
        assert!(command_allowed("python3", &["python*".into()]));
        assert!(command_allowed("/opt/x/run", &["/opt/*/run".into()]));
        assert!(!command_allowed("rm", &["psql".into(), "python*".into()]));
        // `*` crosses `/`, as it always did; alternatives and classes are globs too.
        assert!(command_allowed("/opt/a/b/run", &["/opt/*/run".into()]));
        assert!(command_allowed("pg_dump", &["{psql,pg_dump}".into()]));
        assert!(command_allowed("tool2", &["tool[0-9]".into()]));
        assert!(!command_allowed("toolx", &["tool[0-9]".into()]));
        // Not a glob (an unclosed class): only the same name matches.
        assert!(command_allowed("odd[", &["odd[".into()]));
        assert!(!command_allowed("oddx", &["odd[".into()]));
    }

    #[test]
    fn display_paths() {
        assert_eq!(display_path("/spec/jobs/2/retry"), "spec.jobs[2].retry");
        assert_eq!(display_path(""), "");
    }
}

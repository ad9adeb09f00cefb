//! Validation of the data a run hands around: the `spec.params` declarations (defaults and `enum`
//! entries of their type) and every `${params.NAME}` and `${jobs.ID.outputs.KEY}` reference
//! (a declared parameter; a job upstream of the one that reads it, directly or not). Outputs may
//! only be read in a job's own `env` and array `command`.
//!
//! It does not check values given on the command line (that is `spec::params::resolve`, at run
//! time) nor whether an upstream job will produce a key (only its run can tell: `MissingOutput`).

use std::collections::HashMap;

use serde_json::Value;

use super::did_you_mean;
use crate::env::{self, Qualified};
use crate::spec::source::push_pointer;
use crate::spec::{ParamSpec, Pos, RawDoc, ScalarValue, params};

/// Appends every problem with parameters and references to `out`.
pub(super) fn data_errors(
    doc: &RawDoc,
    spec: &serde_json::Map<String, Value>,
    jobs: &[&Value],
    out: &mut Vec<(Pos, String)>,
) {
    let declared: Vec<String> = spec
        .get("params")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    param_errors(doc, spec, out);

    let ids: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| j.get("id").and_then(Value::as_str).map(|id| (id, i)))
        .collect();
    let deps: Vec<Vec<usize>> = jobs
        .iter()
        .map(|j| {
            j.get("dependencies")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .filter_map(Value::as_str)
                        .filter_map(|d| ids.get(d).copied())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();

    // The pipeline's templates: parameters only.
    let mut pipeline_templates: Vec<(String, &str)> = Vec::new();
    if let Some(env) = spec.get("env").and_then(Value::as_object) {
        for (key, value) in env {
            if let Some(text) = value.as_str() {
                pipeline_templates.push((push_pointer("/spec/env", key), text));
            }
        }
    }
    if let Some(dir) = spec.get("workingDir").and_then(Value::as_str) {
        pipeline_templates.push(("/spec/workingDir".to_owned(), dir));
    }
    for (pointer, template) in pipeline_templates {
        for (name, job, key) in qualified_refs(template) {
            match job {
                None => check_param(doc, &pointer, &name, &declared, out),
                Some(job) => out.push((
                    doc.pos_of(&pointer),
                    format!(
                        "${{{name}}}: the outputs of job `{job}` (key {key}) can only be read in the env or array command of a job that depends on it"
                    ),
                )),
            }
        }
    }

    for (i, job) in jobs.iter().enumerate() {
        let job_id = job.get("id").and_then(Value::as_str).unwrap_or("?");
        let mut templates: Vec<(String, &str, bool)> = Vec::new();
        if let Some(env) = job.get("env").and_then(Value::as_object) {
            for (key, value) in env {
                if let Some(text) = value.as_str() {
                    templates.push((
                        push_pointer(&format!("/spec/jobs/{i}/env"), key),
                        text,
                        true,
                    ));
                }
            }
        }
        if let Some(Value::Array(argv)) = job.get("command") {
            for (k, arg) in argv.iter().enumerate() {
                if let Some(text) = arg.as_str() {
                    templates.push((format!("/spec/jobs/{i}/command/{k}"), text, true));
                }
            }
        }
        if let Some(dir) = job.get("workingDir").and_then(Value::as_str) {
            templates.push((format!("/spec/jobs/{i}/workingDir"), dir, false));
        }
        // `sh` would refuse `${params.x}` as a bad substitution: say how to pass it instead.
        if let Some(Value::String(command)) = job.get("command")
            && let Some(name) = qualified_refs(command)
                .first()
                .map(|(name, _, _)| name.clone())
        {
            out.push((
                doc.pos_of(&format!("/spec/jobs/{i}/command")),
                format!(
                    "job `{job_id}`: a string command goes to sh unchanged, which cannot expand ${{{name}}}: set it in the job's env (e.g. VALUE: \"${{{name}}}\") and use $VALUE"
                ),
            ));
        }
        let mut upstream: Option<Vec<bool>> = None;
        for (pointer, template, outputs_allowed) in &templates {
            for (name, from, _) in qualified_refs(template) {
                let Some(from) = from else {
                    check_param(doc, pointer, &name, &declared, out);
                    continue;
                };
                if !outputs_allowed {
                    out.push((
                        doc.pos_of(pointer),
                        format!("job `{job_id}`: ${{{name}}}: outputs can only be read in a job's env and array command"),
                    ));
                    continue;
                }
                let above = upstream.get_or_insert_with(|| ancestors(&deps, i));
                match ids.get(from.as_str()) {
                    Some(&j) if above[j] => {}
                    found => {
                        // A typo of an upstream job, or of any job when it is unknown.
                        let candidates = ids
                            .iter()
                            .filter(|&(_, &j)| above[j] || found.is_none())
                            .map(|(id, _)| *id);
                        let mut message = match found {
                            Some(_) => format!(
                                "job `{job_id}`: ${{{name}}} reads job `{from}`, which is not upstream of it (add it to dependencies)"
                            ),
                            None => {
                                format!("job `{job_id}`: ${{{name}}} reads unknown job `{from}`")
                            }
                        };
                        if let Some(s) = did_you_mean(&from, candidates) {
                            message.push_str(&format!(", did you mean `{s}`?"));
                        }
                        out.push((doc.pos_of(pointer), message));
                    }
                }
            }
        }
    }
}

/// The qualified references of a template: (name, the job for an output, its key). A template
/// that does not parse is reported by the environment checks.
fn qualified_refs(template: &str) -> Vec<(String, Option<String>, String)> {
    if !template.contains("${params.") && !template.contains("${jobs.") {
        return Vec::new();
    }
    let Ok(refs) = env::references(template) else {
        return Vec::new();
    };
    refs.into_iter()
        .filter_map(|(name, _)| {
            let (job, key) = match env::qualified(&name)? {
                Qualified::Param(p) => (None, p.to_owned()),
                Qualified::Output { job, key } => (Some(job.to_owned()), key.to_owned()),
            };
            Some((name, job, key))
        })
        .collect()
}

fn check_param(
    doc: &RawDoc,
    pointer: &str,
    name: &str,
    declared: &[String],
    out: &mut Vec<(Pos, String)>,
) {
    let Some(Qualified::Param(param)) = env::qualified(name) else {
        return;
    };
    if declared.iter().any(|d| d == param) {
        return;
    }
    let mut message = format!("${{{name}}}: parameter `{param}` is not declared in spec.params");
    if let Some(s) = did_you_mean(param, declared.iter().map(String::as_str)) {
        message.push_str(&format!(", did you mean `{s}`?"));
    }
    out.push((doc.pos_of(pointer), message));
}

/// Which jobs are upstream of `job` (its dependencies, theirs, and so on).
fn ancestors(deps: &[Vec<usize>], job: usize) -> Vec<bool> {
    let mut seen = vec![false; deps.len()];
    let mut stack: Vec<usize> = deps[job].clone();
    while let Some(j) = stack.pop() {
        if !std::mem::replace(&mut seen[j], true) {
            stack.extend(&deps[j]);
        }
    }
    seen
}

/// Parameter names, and defaults and `enum` entries that do not fit their type.
fn param_errors(doc: &RawDoc, spec: &serde_json::Map<String, Value>, out: &mut Vec<(Pos, String)>) {
    let Some(declared) = spec.get("params").and_then(Value::as_object) else {
        return;
    };
    for (name, value) in declared {
        let pointer = push_pointer("/spec/params", name);
        if !env::is_valid_name(name) {
            out.push((
                doc.key_pos_of(&pointer),
                format!("invalid parameter name {name:?} (expected [A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        // A shape the schema pass refuses is reported there.
        let Ok(param) = serde_json::from_value::<ParamSpec>(value.clone()) else {
            continue;
        };
        let bare = ParamSpec {
            allowed: None,
            ..param.clone()
        };
        for (k, entry) in param.allowed.iter().flatten().enumerate() {
            if let Err(e) = params::check(name, &bare, &entry.to_text()) {
                out.push((doc.pos_of(&format!("{pointer}/enum/{k}")), e.to_string()));
            }
        }
        if let Some(default) = &param.default
            && let Err(e) = params::check(name, &param, &ScalarValue::to_text(default))
        {
            out.push((
                doc.pos_of(&format!("{pointer}/default")),
                format!("default: {e}"),
            ));
        }
    }
}

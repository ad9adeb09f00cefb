//! Environment layering and `${}` interpolation: turns the layers of a job's environment into one
//! map of finished values, and expands templates (array-command elements, `workingDir`, check
//! parameters) against it.
//!
//! This module owns only the string rules below. It does not read the process environment, pick
//! the inherited variables (`inheritEnv`), add the `EXECUTIONER_*` variables or touch a string
//! `command` (that one goes to `sh -c` unchanged and the shell expands it).
//!
//! # Layers
//! Lowest to highest: inherited environment < pipeline `env` < job `env` < CLI `--env`. Each layer
//! is applied on top of the merged result of the layers below it with [`apply_layer`]; a key of a
//! higher layer overrides the same key below.
//!
//! # Template syntax
//! - `${NAME}` is the value of `NAME`. `NAME` matches `[A-Za-z_][A-Za-z0-9_]*`.
//! - `${NAME:-default}` is the value of `NAME`, or `default` when `NAME` is undefined **or
//!   empty** (as POSIX `:-`). The default is itself a template (`${A:-${B}/x}`); it ends at the
//!   first `}` that does not close a reference nested in it, and it is only expanded when used.
//! - `${params.NAME}` is the run parameter `NAME`, `${jobs.ID.outputs.KEY}` the output `KEY`
//!   of upstream job `ID` (see [`qualified`]); both take `:-` defaults like any reference. They
//!   are looked up in the lowest layer, where the engine puts them under these names (see
//!   [`is_qualified`]); a layer cannot define them, since its keys are plain names.
//! - `$$` is one literal `$`.
//! - Any other `$` stays as it is: `$HOME`, `$1`, a trailing `$` are copied unchanged (the shell
//!   may expand them later, we do not). A `}` outside a default is literal too.
//! - `${` followed by an invalid name, by anything but `}` or `:-` after the name, or never
//!   closed, is an [`EnvError::Syntax`].
//!
//! # Resolution within a layer
//! For the value of key `K` in layer `L`, a reference `${NAME}`:
//! - with `NAME != K` looks `NAME` up in `L` first (resolving its value on demand, so both earlier
//!   and later keys of the layer can be used), else in the merged lower layers;
//! - with `NAME == K` means the lower layers' `K`, so `PATH: /opt/bin:${PATH}` extends the
//!   inherited `PATH`.
//!
//! An undefined reference without default is [`EnvError::Undefined`]; keys that reach each other
//! through their values (`A: ${B}`, `B: ${A}`) are an [`EnvError::Cycle`] naming the chain.
//!
//! # Cost
//! A qualified name is scanned once, like a plain one (its split is a suffix search), so
//! parsing and expanding are linear in the size of the template and of the values it pulls in,
//! each key of a layer is resolved once, and no step recurses (deeply nested defaults or long
//! reference chains cannot overflow the stack). Doubling chains (`A: ${B}${B}`, `B: ${C}${C}`, …)
//! would still grow exponentially, so any value longer than [`MAX_VALUE_LEN`] after
//! interpolation is an [`EnvError::Syntax`].

use std::collections::HashSet;

use indexmap::IndexMap;

/// The variables inherited with `inheritEnv: minimal`.
pub const MINIMAL_INHERITED: [&str; 7] = ["PATH", "HOME", "USER", "LANG", "TZ", "SHELL", "TMPDIR"];

/// The longest value (in bytes) interpolation may produce: 1 MiB.
pub const MAX_VALUE_LEN: usize = 1024 * 1024;

const TOO_LONG: &str = "value longer than 1 MiB after interpolation";

/// Why an environment layer or a template could not be resolved. `key` is the variable (or the
/// template's label, for [`interpolate`]) whose value holds the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{key}: undefined variable ${{{name}}} (give a default with ${{{name}:-...}})")]
    Undefined { key: String, name: String },
    #[error("{key}: variable reference cycle {chain}")]
    Cycle { key: String, chain: String },
    #[error("{key}: {message}")]
    Syntax { key: String, message: String },
}

/// Whether `name` is a variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b == b'_' || b.is_ascii_alphabetic() => {}
        _ => return false,
    }
    bytes.all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphanumeric()
}

/// The first words of the qualified names.
const QUALIFIERS: [&str; 2] = ["params", "jobs"];

/// A qualified name's meaning: a run parameter or an upstream job's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualified<'a> {
    /// `params.NAME`
    Param(&'a str),
    /// `jobs.ID.outputs.KEY`
    Output { job: &'a str, key: &'a str },
}

/// Reads `name` as a qualified name (`params.NAME`, `jobs.ID.outputs.KEY`); `None` for any other.
pub fn qualified(name: &str) -> Option<Qualified<'_>> {
    if let Some(param) = name.strip_prefix("params.") {
        return is_valid_name(param).then_some(Qualified::Param(param));
    }
    let rest = name.strip_prefix("jobs.")?;
    let (job, key) = rest.rsplit_once(".outputs.")?;
    let job_ok = !job.is_empty()
        && job
            .bytes()
            .all(|c| is_name_byte(c) || c == b'.' || c == b'-');
    (job_ok && is_valid_name(key)).then_some(Qualified::Output { job, key })
}

/// Whether a variable of a finished environment is a qualified name: the engine puts parameters
/// and outputs in the lowest layer under these names for interpolation, and never exports them.
pub fn is_qualified(name: &str) -> bool {
    name.starts_with("params.") || name.starts_with("jobs.")
}

/// The name under which a parameter's value is looked up.
pub fn param_name(name: &str) -> String {
    format!("params.{name}")
}

/// The name under which an upstream job's output is looked up.
pub fn output_name(job: &str, key: &str) -> String {
    format!("jobs.{job}.outputs.{key}")
}

/// One step of a parsed template. A template is a flat list of ops: the default of a reference is
/// the `default` ops that follow it, so expanding needs no recursion and skipping an unused
/// default is a jump.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Literal(String),
    Ref {
        name: String,
        /// Number of ops after this one that form the default; `None` without `:-`.
        default: Option<usize>,
    },
}

/// Parses a template into ops; the error is the message of an [`EnvError::Syntax`].
fn parse(template: &str) -> Result<Vec<Op>, String> {
    let bytes = template.as_bytes();
    let mut ops = Vec::new();
    let mut literal = String::new();
    // Defaults not closed yet: (index of their `Ref` op, byte offset of their `${`).
    let mut open: Vec<(usize, usize)> = Vec::new();
    // Every special byte is ASCII, so slicing at their offsets stays on char boundaries.
    let mut copied_up_to = 0;
    let mut i = 0;

    fn flush(literal: &mut String, ops: &mut Vec<Op>) {
        if !literal.is_empty() {
            ops.push(Op::Literal(std::mem::take(literal)));
        }
    }

    while let Some(&b) = bytes.get(i) {
        match b {
            b'$' => match bytes.get(i + 1) {
                Some(b'$') => {
                    // Keep the first `$`, drop the second.
                    literal.push_str(&template[copied_up_to..=i]);
                    i += 2;
                    copied_up_to = i;
                }
                Some(b'{') => {
                    literal.push_str(&template[copied_up_to..i]);
                    let start = i;
                    let name_start = i + 2;
                    let mut end = name_start;
                    while bytes.get(end).is_some_and(|&c| is_name_byte(c)) {
                        end += 1;
                    }
                    // A qualified name goes on over the job id's characters (`.` and `-`).
                    if bytes.get(end) == Some(&b'.')
                        && QUALIFIERS.contains(&&template[name_start..end])
                    {
                        while bytes
                            .get(end)
                            .is_some_and(|&c| is_name_byte(c) || c == b'.' || c == b'-')
                        {
                            end += 1;
                        }
                        let name = &template[name_start..end];
                        if qualified(name).is_none() {
                            return Err(format!(
                                "invalid reference `{name}` at byte {start} (expected params.NAME or jobs.ID.outputs.KEY)"
                            ));
                        }
                    }
                    let name = &template[name_start..end];
                    if name.is_empty() {
                        return Err(match bytes.get(end) {
                            None => format!("unclosed `${{` at byte {start}"),
                            Some(b'}') => format!("empty variable name `${{}}` at byte {start}"),
                            Some(_) => {
                                format!("expected a variable name after `${{` at byte {start}")
                            }
                        });
                    }
                    if !is_valid_name(name) && qualified(name).is_none() {
                        return Err(format!(
                            "invalid variable name `{name}` at byte {start} (names match [A-Za-z_][A-Za-z0-9_]*)"
                        ));
                    }
                    match bytes.get(end) {
                        Some(b'}') => {
                            flush(&mut literal, &mut ops);
                            ops.push(Op::Ref {
                                name: name.to_owned(),
                                default: None,
                            });
                            i = end + 1;
                        }
                        Some(b':') if bytes.get(end + 1) == Some(&b'-') => {
                            flush(&mut literal, &mut ops);
                            open.push((ops.len(), start));
                            ops.push(Op::Ref {
                                name: name.to_owned(),
                                default: Some(0),
                            });
                            i = end + 2;
                        }
                        Some(_) => {
                            return Err(format!(
                                "expected `}}` or `:-` after `${{{name}` at byte {start}"
                            ));
                        }
                        None => return Err(format!("unclosed `${{{name}` at byte {start}")),
                    }
                    copied_up_to = i;
                }
                _ => i += 1,
            },
            b'}' => {
                if let Some((at, _)) = open.pop() {
                    literal.push_str(&template[copied_up_to..i]);
                    flush(&mut literal, &mut ops);
                    let len = ops.len() - at - 1;
                    if let Some(Op::Ref { default, .. }) = ops.get_mut(at) {
                        *default = Some(len);
                    }
                    i += 1;
                    copied_up_to = i;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    if let Some(&(_, start)) = open.first() {
        return Err(format!(
            "unclosed `${{...:-` default starting at byte {start}"
        ));
    }
    literal.push_str(&template[copied_up_to..]);
    flush(&mut literal, &mut ops);
    Ok(ops)
}

fn syntax(key: &str, message: impl Into<String>) -> EnvError {
    EnvError::Syntax {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Appends `text` to a value being built, enforcing [`MAX_VALUE_LEN`].
fn append(out: &mut String, text: &str, key: &str) -> Result<(), EnvError> {
    if out.len().saturating_add(text.len()) > MAX_VALUE_LEN {
        return Err(syntax(key, TOO_LONG));
    }
    out.push_str(text);
    Ok(())
}

/// Expands the `Ref` at `*pc` once the value of its name (if defined) is known: appends the value
/// and jumps over the default, or steps into the default, or fails.
fn expand_ref(
    key: &str,
    name: &str,
    default: Option<usize>,
    value: Option<&str>,
    pc: &mut usize,
    out: &mut String,
) -> Result<(), EnvError> {
    match (value, default) {
        (Some(value), Some(len)) if !value.is_empty() => {
            append(out, value, key)?;
            *pc += 1 + len;
        }
        (Some(value), None) => {
            append(out, value, key)?;
            *pc += 1;
        }
        // Undefined or empty: the default's ops follow, run them in place.
        (_, Some(_)) => *pc += 1,
        (None, None) => {
            return Err(EnvError::Undefined {
                key: key.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Interpolates one template (e.g. an array-command element or a check parameter) against a
/// finished environment. `key` is only used in error messages.
pub fn interpolate(
    key: &str,
    template: &str,
    env: &IndexMap<String, String>,
) -> Result<String, EnvError> {
    let ops = parse(template).map_err(|message| syntax(key, message))?;
    let mut out = String::new();
    let mut pc = 0;
    while let Some(op) = ops.get(pc) {
        match op {
            Op::Literal(text) => {
                append(&mut out, text, key)?;
                pc += 1;
            }
            Op::Ref { name, default } => {
                let value = env.get(name).map(String::as_str);
                expand_ref(key, name, *default, value, &mut pc, &mut out)?;
            }
        }
    }
    Ok(out)
}

/// Resolution state of one key of the layer being applied.
#[derive(Debug)]
enum Slot {
    Pending,
    /// Being resolved: its frame is on the stack, so meeting it again is a cycle.
    Active,
    Done(String),
}

/// A value being expanded, suspended while a key it refers to is resolved.
#[derive(Debug)]
struct Frame {
    index: usize,
    pc: usize,
    out: String,
}

/// Resolves one layer on top of `base` and returns base+layer merged (layer keys override base
/// keys; insertion order: base order, then new keys in layer order). Layer values are templates;
/// `base` values are final and are not interpolated again.
///
/// The first error met is returned: syntax errors first (in key order), then errors met while
/// resolving keys in declaration order. Use [`check_layer`] to list every error.
pub fn apply_layer(
    base: &IndexMap<String, String>,
    layer: &IndexMap<String, String>,
) -> Result<IndexMap<String, String>, EnvError> {
    let keys: Vec<&str> = layer.keys().map(String::as_str).collect();
    let parsed = layer
        .iter()
        .map(|(key, template)| parse(template).map_err(|message| syntax(key, message)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut slots: Vec<Slot> = (0..keys.len()).map(|_| Slot::Pending).collect();

    for first in 0..keys.len() {
        if !matches!(slots[first], Slot::Pending) {
            continue;
        }
        slots[first] = Slot::Active;
        let mut stack = vec![Frame {
            index: first,
            pc: 0,
            out: String::new(),
        }];
        while let Some(frame) = stack.last_mut() {
            let key = keys[frame.index];
            let Some(op) = parsed[frame.index].get(frame.pc) else {
                let index = frame.index;
                let value = std::mem::take(&mut frame.out);
                stack.pop();
                slots[index] = Slot::Done(value);
                continue;
            };
            match op {
                Op::Literal(text) => {
                    append(&mut frame.out, text, key)?;
                    frame.pc += 1;
                }
                Op::Ref { name, default } => {
                    let in_layer = if name == key {
                        None
                    } else {
                        layer.get_index_of(name.as_str())
                    };
                    let value = match in_layer {
                        None => base.get(name).map(String::as_str),
                        Some(other) => match &slots[other] {
                            Slot::Done(value) => Some(value.as_str()),
                            Slot::Active => {
                                return Err(cycle_error(&keys, &stack, other));
                            }
                            Slot::Pending => {
                                // Resolve `other` first, then come back to this same op.
                                slots[other] = Slot::Active;
                                stack.push(Frame {
                                    index: other,
                                    pc: 0,
                                    out: String::new(),
                                });
                                continue;
                            }
                        },
                    };
                    expand_ref(key, name, *default, value, &mut frame.pc, &mut frame.out)?;
                }
            }
        }
    }

    let mut merged = base.clone();
    for (key, slot) in keys.into_iter().zip(slots) {
        if let Slot::Done(value) = slot {
            merged.insert(key.to_owned(), value);
        }
    }
    Ok(merged)
}

/// The cycle that closes when the top frame refers back to `target` (which is on the stack).
fn cycle_error(keys: &[&str], stack: &[Frame], target: usize) -> EnvError {
    let start = stack
        .iter()
        .position(|frame| frame.index == target)
        .unwrap_or(0);
    let chain: Vec<&str> = stack[start..]
        .iter()
        .map(|frame| keys[frame.index])
        .chain(std::iter::once(keys[target]))
        .collect();
    EnvError::Cycle {
        key: keys[target].to_owned(),
        chain: chain.join(" -> "),
    }
}

/// The names a template refers to (for validation), in order of appearance, each with whether a
/// missing value is tolerated on its own: `true` when the reference has a `:-` default or sits
/// inside another reference's default (then it is needed only when the outer name is unset).
/// References inside defaults are listed after the reference that owns the default.
pub fn references(template: &str) -> Result<Vec<(String, bool)>, String> {
    let ops = parse(template)?;
    let mut found = Vec::new();
    // End (exclusive op index) of every default we are inside.
    let mut inside: Vec<usize> = Vec::new();
    for (pc, op) in ops.iter().enumerate() {
        while inside.last().is_some_and(|&end| end <= pc) {
            inside.pop();
        }
        if let Op::Ref { name, default } = op {
            found.push((name.clone(), default.is_some() || !inside.is_empty()));
            if let Some(len) = default {
                inside.push(pc + 1 + len);
            }
        }
    }
    Ok(found)
}

/// Returns every error of a layer, not just the first (validation wants all of them), without
/// knowing the lower layers' values: `base_names` says which names the lower layers define.
///
/// A defined name is assumed non-empty, so the default of a reference to it is not checked.
/// Reported, in this order: syntax and undefined-variable errors key by key (each undefined name
/// once per key), then every cycle a depth-first walk over the keys in declaration order meets.
/// The 1 MiB limit depends on values and is only enforced by [`apply_layer`].
pub fn check_layer(
    base_names: &dyn Fn(&str) -> bool,
    layer: &IndexMap<String, String>,
) -> Vec<EnvError> {
    let keys: Vec<&str> = layer.keys().map(String::as_str).collect();
    let mut errors = Vec::new();
    // edges[k]: the layer keys the value of key k refers to, in order, without duplicates.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); keys.len()];
    let mut edge_stamp = vec![usize::MAX; keys.len()];

    for (index, (key, template)) in layer.iter().enumerate() {
        let ops = match parse(template) {
            Ok(ops) => ops,
            Err(message) => {
                errors.push(syntax(key, message));
                continue;
            }
        };
        let mut reported: HashSet<&str> = HashSet::new();
        let mut pc = 0;
        while let Some(op) = ops.get(pc) {
            let Op::Ref { name, default } = op else {
                pc += 1;
                continue;
            };
            let in_layer = if name == key {
                None
            } else {
                layer.get_index_of(name.as_str())
            };
            if let Some(other) = in_layer
                && edge_stamp[other] != index
            {
                edge_stamp[other] = index;
                edges[index].push(other);
            }
            let defined = in_layer.is_some() || base_names(name);
            match (defined, default) {
                (true, Some(len)) => pc += 1 + len,
                (true, None) | (false, Some(_)) => pc += 1,
                (false, None) => {
                    if reported.insert(name.as_str()) {
                        errors.push(EnvError::Undefined {
                            key: key.clone(),
                            name: name.clone(),
                        });
                    }
                    pc += 1;
                }
            }
        }
    }

    errors.extend(all_cycles(&keys, &edges));
    errors
}

/// One [`EnvError::Cycle`] per back edge of an iterative depth-first walk in declaration order.
fn all_cycles(keys: &[&str], edges: &[Vec<usize>]) -> Vec<EnvError> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut errors = Vec::new();
    let mut mark = vec![Mark::Unvisited; keys.len()];
    let mut position = vec![0usize; keys.len()];
    let mut path: Vec<(usize, usize)> = Vec::new();
    for root in 0..keys.len() {
        if mark[root] != Mark::Unvisited {
            continue;
        }
        mark[root] = Mark::OnPath;
        position[root] = 0;
        path.push((root, 0));
        while let Some(top) = path.last_mut() {
            let node = top.0;
            let next = edges[node].get(top.1).copied();
            top.1 += 1;
            match next {
                None => {
                    mark[node] = Mark::Done;
                    path.pop();
                }
                Some(other) => match mark[other] {
                    Mark::Unvisited => {
                        mark[other] = Mark::OnPath;
                        position[other] = path.len();
                        path.push((other, 0));
                    }
                    Mark::OnPath => {
                        let chain: Vec<&str> = path[position[other]..]
                            .iter()
                            .map(|&(k, _)| keys[k])
                            .chain(std::iter::once(keys[other]))
                            .collect();
                        errors.push(EnvError::Cycle {
                            key: keys[other].to_owned(),
                            chain: chain.join(" -> "),
                        });
                    }
                    Mark::Done => {}
                },
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn apply(
        base: &[(&str, &str)],
        layer: &[(&str, &str)],
    ) -> Result<IndexMap<String, String>, EnvError> {
        apply_layer(&map(base), &map(layer))
    }

    fn interp(template: &str, env: &[(&str, &str)]) -> Result<String, EnvError> {
        interpolate("T", template, &map(env))
    }

    fn undefined(key: &str, name: &str) -> EnvError {
        EnvError::Undefined {
            key: key.to_owned(),
            name: name.to_owned(),
        }
    }

    fn cycle(key: &str, chain: &str) -> EnvError {
        EnvError::Cycle {
            key: key.to_owned(),
            chain: chain.to_owned(),
        }
    }

    fn syntax_message(result: Result<String, EnvError>) -> String {
        match result {
            Err(EnvError::Syntax { key, message }) => {
                assert_eq!(key, "T");
                message
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn valid_names() {
        for name in ["A", "_", "_a1", "PATH", "x_Y_9"] {
            assert!(is_valid_name(name), "{name}");
        }
        for name in ["", "1A", "A-B", "A.B", "é", "A B", "$A"] {
            assert!(!is_valid_name(name), "{name}");
        }
        assert!(MINIMAL_INHERITED.iter().all(|n| is_valid_name(n)));
    }

    #[test]
    fn layers_override_lower_layers_in_order() {
        let inherited = map(&[
            ("A", "inherited"),
            ("B", "inherited"),
            ("C", "inherited"),
            ("D", "inherited"),
        ]);
        let pipeline = map(&[
            ("B", "pipeline"),
            ("C", "pipeline"),
            ("D", "pipeline"),
            ("P", "p"),
        ]);
        let job = map(&[("C", "job"), ("D", "job"), ("J", "j")]);
        let cli = map(&[("D", "cli")]);
        let env = apply_layer(&inherited, &pipeline).expect("pipeline");
        let env = apply_layer(&env, &job).expect("job");
        let env = apply_layer(&env, &cli).expect("cli");
        assert_eq!(
            env,
            map(&[
                ("A", "inherited"),
                ("B", "pipeline"),
                ("C", "job"),
                ("D", "cli"),
                ("P", "p"),
                ("J", "j"),
            ])
        );
        let order: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(order, ["A", "B", "C", "D", "P", "J"]);
    }

    #[test]
    fn higher_layer_sees_lower_layer_values() {
        let env = apply(&[("ROOT", "/srv")], &[("DATA", "${ROOT}/data")]).expect("ok");
        assert_eq!(env["DATA"], "/srv/data");
    }

    #[test]
    fn earlier_and_later_keys_both_resolve() {
        let env = apply(
            &[],
            &[("A", "a"), ("B", "${A}b"), ("C", "${D}c"), ("D", "${B}d")],
        )
        .expect("ok");
        assert_eq!(env["B"], "ab");
        assert_eq!(env["D"], "abd");
        assert_eq!(env["C"], "abdc");
        let order: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(order, ["A", "B", "C", "D"]);
    }

    #[test]
    fn same_layer_key_shadows_lower_layer() {
        let env = apply(&[("A", "low")], &[("B", "${A}"), ("A", "high")]).expect("ok");
        assert_eq!(env["B"], "high");
    }

    #[test]
    fn self_reference_means_the_lower_layer() {
        let env = apply(&[("PATH", "/usr/bin")], &[("PATH", "/x:${PATH}")]).expect("ok");
        assert_eq!(env["PATH"], "/x:/usr/bin");
        // Another key referring to PATH sees the new value.
        let env = apply(
            &[("PATH", "/usr/bin")],
            &[("P2", "${PATH}"), ("PATH", "/x:${PATH}")],
        )
        .expect("ok");
        assert_eq!(env["P2"], "/x:/usr/bin");
        assert_eq!(
            apply(&[], &[("PATH", "/x:${PATH}")]),
            Err(undefined("PATH", "PATH"))
        );
        let env = apply(&[], &[("PATH", "/x${PATH:-}")]).expect("ok");
        assert_eq!(env["PATH"], "/x");
    }

    #[test]
    fn default_applies_when_undefined_or_empty() {
        assert_eq!(interp("${A:-d}", &[]).as_deref(), Ok("d"));
        assert_eq!(interp("${A:-d}", &[("A", "")]).as_deref(), Ok("d"));
        assert_eq!(interp("${A:-d}", &[("A", "v")]).as_deref(), Ok("v"));
        assert_eq!(interp("${A}", &[("A", "")]).as_deref(), Ok(""));
        assert_eq!(interp("${A:-}", &[]).as_deref(), Ok(""));
    }

    #[test]
    fn default_may_hold_references() {
        let env = [("HOME", "/home/u"), ("X", "x")];
        assert_eq!(
            interp("${CFG:-${HOME}/.cfg}", &env).as_deref(),
            Ok("/home/u/.cfg")
        );
        assert_eq!(interp("${A:-${B:-${X}!}}", &env).as_deref(), Ok("x!"));
        assert_eq!(interp("<${A:-a$$b}>", &env).as_deref(), Ok("<a$b>"));
        // An unused default is not expanded, so its undefined reference is no error.
        assert_eq!(interp("${X:-${NOPE}}", &env).as_deref(), Ok("x"));
        assert_eq!(interp("${A:-${NOPE}}", &env), Err(undefined("T", "NOPE")));
        // In a layer, a default may use keys of the same layer.
        let layer = apply(&[], &[("OUT", "${TARGET:-${BASE}/out}"), ("BASE", "/b")]).expect("ok");
        assert_eq!(layer["OUT"], "/b/out");
    }

    #[test]
    fn dollar_rules() {
        assert_eq!(interp("$$", &[]).as_deref(), Ok("$"));
        assert_eq!(interp("a$$b", &[]).as_deref(), Ok("a$b"));
        assert_eq!(interp("$$$$", &[]).as_deref(), Ok("$$"));
        assert_eq!(interp("$$$", &[]).as_deref(), Ok("$$"));
        assert_eq!(interp("$${A}", &[]).as_deref(), Ok("${A}"));
        assert_eq!(interp("$$$${A}", &[("A", "a")]).as_deref(), Ok("$${A}"));
        assert_eq!(interp("$$${A}", &[("A", "a")]).as_deref(), Ok("$a"));
        assert_eq!(
            interp("$HOME/x", &[("HOME", "/h")]).as_deref(),
            Ok("$HOME/x")
        );
        assert_eq!(interp("cost: 5$", &[]).as_deref(), Ok("cost: 5$"));
        assert_eq!(interp("$1 $@ $( $", &[]).as_deref(), Ok("$1 $@ $( $"));
        assert_eq!(interp("a}b{c", &[]).as_deref(), Ok("a}b{c"));
        assert_eq!(interp("", &[]).as_deref(), Ok(""));
    }

    #[test]
    fn non_ascii_text_is_kept() {
        let env = [("A", "ä")];
        assert_eq!(
            interp("héllo ${A} wörld $ ✓", &env).as_deref(),
            Ok("héllo ä wörld $ ✓")
        );
        assert_eq!(interp("${B:-ü}€", &env).as_deref(), Ok("ü€"));
    }

    #[test]
    fn undefined_variable_is_an_error() {
        let err = interp("x${MISSING}y", &[]).expect_err("undefined");
        assert_eq!(err, undefined("T", "MISSING"));
        assert_eq!(
            err.to_string(),
            "T: undefined variable ${MISSING} (give a default with ${MISSING:-...})"
        );
        assert_eq!(
            apply(&[], &[("A", "ok"), ("B", "${NOPE}")]),
            Err(undefined("B", "NOPE"))
        );
        // The key named is the one whose value holds the reference.
        assert_eq!(
            apply(&[], &[("A", "${B}"), ("B", "${NOPE}")]),
            Err(undefined("B", "NOPE"))
        );
    }

    #[test]
    fn reference_cycles_are_errors_naming_the_chain() {
        let err = apply(&[("A", "base")], &[("A", "${B}"), ("B", "${A}")]).expect_err("cycle");
        assert_eq!(err, cycle("A", "A -> B -> A"));
        assert_eq!(err.to_string(), "A: variable reference cycle A -> B -> A");
        assert_eq!(
            apply(
                &[],
                &[("X", "${A}"), ("A", "${B}"), ("B", "${C}"), ("C", "x${A}")]
            ),
            Err(cycle("A", "A -> B -> C -> A"))
        );
        // A default is part of the chain when it is used...
        let env = apply(&[], &[("A", "${B:-${A}}"), ("B", "b${A:-z}")]);
        assert_eq!(env, Err(cycle("A", "A -> B -> A")));
        let env = apply(&[], &[("A", "a${E:-${B}}"), ("B", "${A}")]);
        assert_eq!(env, Err(cycle("A", "A -> B -> A")));
        // ...and not when it is skipped.
        let env = apply(&[], &[("A", "a${B:-${C}}"), ("B", "b"), ("C", "${A}")]).expect("ok");
        assert_eq!(env["A"], "ab");
        assert_eq!(env["C"], "ab");
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(syntax_message(interp("${", &[])), "unclosed `${` at byte 0");
        assert_eq!(
            syntax_message(interp("ab${}", &[])),
            "empty variable name `${}` at byte 2"
        );
        assert_eq!(
            syntax_message(interp("${-x}", &[])),
            "expected a variable name after `${` at byte 0"
        );
        assert_eq!(
            syntax_message(interp("${1A}", &[])),
            "invalid variable name `1A` at byte 0 (names match [A-Za-z_][A-Za-z0-9_]*)"
        );
        assert_eq!(
            syntax_message(interp("${AB", &[])),
            "unclosed `${AB` at byte 0"
        );
        assert_eq!(
            syntax_message(interp("${A-b}", &[])),
            "expected `}` or `:-` after `${A` at byte 0"
        );
        assert_eq!(
            syntax_message(interp("${A.B}", &[])),
            "expected `}` or `:-` after `${A` at byte 0"
        );
        assert_eq!(
            syntax_message(interp("${params.1}", &[])),
            "invalid reference `params.1` at byte 0 (expected params.NAME or jobs.ID.outputs.KEY)"
        );
        assert_eq!(
            syntax_message(interp("${jobs.a.output.K}", &[])),
            "invalid reference `jobs.a.output.K` at byte 0 (expected params.NAME or jobs.ID.outputs.KEY)"
        );
        assert_eq!(
            syntax_message(interp("${A:-x", &[])),
            "unclosed `${...:-` default starting at byte 0"
        );
        assert_eq!(
            syntax_message(interp("${A:-${B:-y}", &[])),
            "unclosed `${...:-` default starting at byte 0"
        );
        let err = apply(&[], &[("A", "fine"), ("B", "${")]).expect_err("syntax");
        assert_eq!(err.to_string(), "B: unclosed `${` at byte 0");
    }

    #[test]
    fn exponential_growth_is_capped() {
        // K0 = ${K1}${K1}, K1 = ${K2}${K2}, ..., K40 = x: 2^40 bytes if unchecked.
        let mut layer = IndexMap::new();
        for i in 0..40 {
            layer.insert(format!("K{i}"), format!("${{K{n}}}${{K{n}}}", n = i + 1));
        }
        layer.insert("K40".to_owned(), "x".to_owned());
        let err = apply_layer(&IndexMap::new(), &layer).expect_err("too long");
        match err {
            EnvError::Syntax { message, .. } => assert_eq!(message, TOO_LONG),
            other => panic!("unexpected {other:?}"),
        }

        let big = "y".repeat(MAX_VALUE_LEN / 2 + 1);
        let env = [("BIG", big.as_str())];
        assert_eq!(interp("${BIG}", &env).map(|s| s.len()), Ok(big.len()));
        assert_eq!(interp("${BIG}${BIG}", &env), Err(syntax("T", TOO_LONG)));
        let exact = "z".repeat(MAX_VALUE_LEN);
        assert_eq!(interp(&exact, &[]).map(|s| s.len()), Ok(MAX_VALUE_LEN));
        assert_eq!(
            interp(&format!("{exact}z"), &[]),
            Err(syntax("T", TOO_LONG))
        );
    }

    #[test]
    fn deep_nesting_and_long_chains_do_not_overflow() {
        const N: usize = 100_000;
        let template = format!("{}x{}", "${A:-".repeat(N), "}".repeat(N));
        assert_eq!(interp(&template, &[]).as_deref(), Ok("x"));
        let refs = references(&template).expect("valid");
        assert_eq!(refs.len(), N);
        assert!(refs.iter().all(|(name, optional)| name == "A" && *optional));

        // K0 = ${K1}, K1 = ${K2}, ..., resolved on demand from K0.
        const KEYS: usize = 20_000;
        let mut layer = IndexMap::new();
        for i in 0..KEYS {
            layer.insert(format!("K{i}"), format!("${{K{}}}", i + 1));
        }
        layer.insert(format!("K{KEYS}"), "end".to_owned());
        let env = apply_layer(&IndexMap::new(), &layer).expect("ok");
        assert_eq!(env["K0"], "end");
        assert!(check_layer(&|_| false, &layer).is_empty());

        layer.insert(format!("K{KEYS}"), "${K0}".to_owned());
        let err = apply_layer(&IndexMap::new(), &layer).expect_err("cycle");
        assert!(matches!(&err, EnvError::Cycle { key, .. } if key == "K0"));
        assert_eq!(check_layer(&|_| false, &layer), vec![err]);
    }

    #[test]
    fn qualified_names_are_looked_up_in_the_base() {
        let env = [
            ("params.date", "2026-11-30"),
            ("jobs.ex-tract.v2.outputs.FILE", "/tmp/f"),
        ];
        assert_eq!(
            interp("${params.date}/${jobs.ex-tract.v2.outputs.FILE}", &env).as_deref(),
            Ok("2026-11-30//tmp/f")
        );
        assert_eq!(
            interp("${jobs.a.outputs.K:-none}", &env).as_deref(),
            Ok("none")
        );
        assert_eq!(
            interp("${params.nope}", &env),
            Err(undefined("T", "params.nope"))
        );
        assert_eq!(
            qualified("jobs.a.outputs.b.outputs.K"),
            Some(Qualified::Output {
                job: "a.outputs.b",
                key: "K"
            })
        );
        assert_eq!(qualified("params.x"), Some(Qualified::Param("x")));
        assert_eq!(qualified("PATH"), None);
        assert_eq!(qualified("jobs..outputs.K"), None);
        // Plain dotted names stay a syntax error.
        assert!(matches!(
            interp("${a.b}", &[]),
            Err(EnvError::Syntax { .. })
        ));
        let layer = apply(
            &[("params.p", "v")],
            &[("A", "${params.p}-${B}"), ("B", "b")],
        )
        .expect("ok");
        assert_eq!(layer["A"], "v-b");
        assert_eq!(
            references("${params.p}${jobs.j.outputs.K:-x}"),
            Ok(vec![
                ("params.p".to_owned(), false),
                ("jobs.j.outputs.K".to_owned(), true)
            ])
        );
    }

    #[test]
    fn references_lists_names_in_order() {
        assert_eq!(
            references("${A}/$HOME/${B:-${C}}${D}$${E}"),
            Ok(vec![
                ("A".to_owned(), false),
                ("B".to_owned(), true),
                ("C".to_owned(), true),
                ("D".to_owned(), false),
            ])
        );
        assert_eq!(references("plain"), Ok(vec![]));
        assert_eq!(references("${"), Err("unclosed `${` at byte 0".to_owned()));
    }

    #[test]
    fn check_layer_reports_every_error() {
        let layer = map(&[
            ("OK", "${HOME}/${LATER}"),
            ("LATER", "x"),
            ("U", "${NOPE}${NOPE}${ALSO:-${GONE}}${HOME:-${IGNORED}}"),
            ("S", "${1}"),
            ("PATH", "/x:${PATH}"),
            ("SELF", "${SELF}"),
            ("A", "${B}"),
            ("B", "${A}${C}"),
            ("C", "${B}"),
        ]);
        let base = |name: &str| matches!(name, "HOME" | "PATH");
        let errors = check_layer(&base, &layer);
        assert_eq!(
            errors,
            vec![
                undefined("U", "NOPE"),
                undefined("U", "GONE"),
                syntax(
                    "S",
                    "invalid variable name `1` at byte 0 (names match [A-Za-z_][A-Za-z0-9_]*)"
                ),
                undefined("SELF", "SELF"),
                cycle("A", "A -> B -> A"),
                cycle("B", "B -> C -> B"),
            ]
        );
        // apply_layer stops at the first of them.
        let first =
            apply_layer(&map(&[("HOME", "/h"), ("PATH", "/p")]), &layer).expect_err("invalid");
        assert_eq!(
            first,
            syntax(
                "S",
                "invalid variable name `1` at byte 0 (names match [A-Za-z_][A-Za-z0-9_]*)"
            )
        );
        assert!(check_layer(&base, &map(&[("A", "${HOME}"), ("PATH", "${PATH}:/y")])).is_empty());
    }

    /// Layers over a small pool of names, built from pieces that may reference each other,
    /// with defaults, escapes, stray `$` and the occasional syntax error.
    fn piece() -> impl Strategy<Value = String> {
        let name = prop_oneof![Just("A"), Just("B"), Just("C"), Just("D"), Just("E")];
        let leaf = prop_oneof![
            2 => "[a-z/]{0,2}",
            4 => name.clone().prop_map(|n| format!("${{{n}}}")),
            1 => Just("$$".to_owned()),
            1 => Just("$".to_owned()),
            1 => Just("}".to_owned()),
        ];
        prop_oneof![
            16 => leaf.clone(),
            6 => (name, proptest::collection::vec(leaf, 0..3))
                .prop_map(|(n, inner)| format!("${{{n}:-{}}}", inner.concat())),
            1 => Just("${".to_owned()),
        ]
    }

    fn layer_strategy() -> impl Strategy<Value = (Vec<&'static str>, Vec<(&'static str, String)>)> {
        let names = ["A", "B", "C", "D", "E"];
        (
            proptest::sample::subsequence(names.to_vec(), 0..=5),
            proptest::sample::subsequence(names.to_vec(), 0..=5).prop_shuffle(),
            proptest::collection::vec(proptest::collection::vec(piece(), 0..4), 5),
        )
            .prop_map(|(base, keys, templates)| {
                // Every value starts with a letter, so no value is ever empty.
                let layer = keys
                    .into_iter()
                    .zip(templates)
                    .map(|(k, pieces)| (k, format!("v{}", pieces.concat())))
                    .collect();
                (base, layer)
            })
    }

    proptest! {
        #[test]
        fn text_without_dollar_is_unchanged(text in "[^$]{0,64}") {
            prop_assert_eq!(interp(&text, &[("A", "a")]), Ok(text.clone()));
            prop_assert_eq!(references(&text), Ok(vec![]));
        }

        #[test]
        fn any_input_gives_a_value_or_an_error(text in "[${}:\\-AB_1é]{0,40}") {
            // Never panics, and parsing decides syntax errors the same way everywhere.
            let result = interp(&text, &[("A", "a"), ("B", "")]);
            let is_syntax = matches!(result, Err(EnvError::Syntax { .. }));
            prop_assert_eq!(references(&text).is_err(), is_syntax);
            let layer = map(&[("A", text.as_str()), ("B", "${A}")]);
            let checked = check_layer(&|_| true, &layer);
            let applied = apply(&[("A", "x")], &[("A", text.as_str()), ("B", "${A}")]);
            if let Err(first @ EnvError::Syntax { .. }) = applied {
                prop_assert!(checked.contains(&first));
            }
        }

        #[test]
        fn escaped_dollars_round_trip(text in "(\\PC|\\$|\\{|\\}|[A-Z_]){0,64}") {
            let escaped = text.replace('$', "$$");
            prop_assert_eq!(interp(&escaped, &[("A", "a"), ("B", "b")]), Ok(text.clone()));
        }

        #[test]
        fn check_layer_agrees_with_apply_layer((base, layer) in layer_strategy()) {
            let base_env: IndexMap<String, String> =
                base.iter().map(|&n| (n.to_owned(), format!("base-{n}"))).collect();
            let layer_env: IndexMap<String, String> =
                layer.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
            let errors = check_layer(&|name| base.contains(&name), &layer_env);
            match apply_layer(&base_env, &layer_env) {
                Ok(merged) => {
                    prop_assert!(errors.is_empty(), "check_layer found {:?}", errors);
                    for (key, value) in &merged {
                        if !layer_env.contains_key(key) {
                            prop_assert_eq!(Some(value), base_env.get(key));
                        }
                    }
                    prop_assert_eq!(merged.len(), base_env.len() + layer_env.keys().filter(|k| !base_env.contains_key(*k)).count());
                }
                Err(first) => prop_assert!(errors.contains(&first), "{:?} not in {:?}", first, errors),
            }
        }

        #[test]
        fn references_agree_with_undefined_errors(pieces in proptest::collection::vec(piece(), 0..6)) {
            let template = pieces.concat();
            let Ok(refs) = references(&template) else {
                let is_syntax = matches!(interp(&template, &[]), Err(EnvError::Syntax { .. }));
                prop_assert!(is_syntax);
                return Ok(());
            };
            // Everything defined and non-empty: no error.
            let all: Vec<(&str, &str)> = refs.iter().map(|(n, _)| (n.as_str(), "x")).collect();
            prop_assert!(interp(&template, &all).is_ok());
            // Nothing defined: a reference without fallback always fails, and any failure
            // names a listed reference.
            match interp(&template, &[]) {
                Ok(_) => prop_assert!(refs.iter().all(|(_, optional)| *optional)),
                Err(EnvError::Undefined { name, .. }) => {
                    prop_assert!(refs.iter().any(|(n, _)| *n == name));
                }
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

//! `executioner suspend NAME` and `executioner unsuspend NAME`: set `spec.suspend` in the
//! pipeline's manifest file in the manifests folder, atomically (temp file, fsync, rename), in the
//! file's own format. The edit is textual and minimal (the `suspend` value replaced, or one line
//! inserted at the head of `spec`), so comments and layout stay; the result is parsed back and
//! must equal the old document with only `spec.suspend` changed, else (an unusual layout) a
//! single-document file is written again from its parsed value, without its comments, and the
//! command says so (that rewrite is checked the same way, and refused if it differs). The folder
//! is the one the controller of the state folder watches (`--manifests` else the recorded one,
//! as `status` reads it). A rewritten file keeps its mode and owner (`apply::write_atomic`), and
//! an `apply --prune` inventory entry that matched the old bytes follows to the new ones. What a suspended pipeline does is the controller's (`reconcile`).

use std::path::Path;

use serde_json::Value;

use crate::config::Config;
use crate::spec::source::{self, Pos};
use crate::spec::{Format, PipelineName};
use crate::store::Store;

use super::{CliError, CliResult, Exit, GlobalArgs};

/// The new text of a manifest file, or none when `spec.suspend` already is what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edited {
    Unchanged,
    Text {
        text: String,
        /// False when the file was written again from its parsed value (comments are lost).
        layout_kept: bool,
    },
}

/// `suspend` (`on` true) or `unsuspend` (`on` false) of pipeline `name`.
pub fn run(name: &str, on: bool, manifests: Option<&Path>, global: &GlobalArgs) -> CliResult {
    let name = PipelineName::parse(name).map_err(|e| CliError::usage(e.to_string()))?;
    let config = super::load_config(global)?;
    let runtime = super::runtime()?;
    let store = runtime.block_on(super::open_store_existing(
        &super::state_dir(&config),
        &config,
    ))?;
    let edited = runtime.block_on(edit(&name, on, manifests, store.as_ref(), &config, global));
    if let Some(store) = store {
        runtime.block_on(store.close());
    }
    edited
}

/// The edit itself, in the folder the controller of `store` watches (see `run`).
async fn edit(
    name: &PipelineName,
    on: bool,
    manifests: Option<&Path>,
    store: Option<&Store>,
    config: &Config,
    global: &GlobalArgs,
) -> CliResult {
    // The folder the controller of this state folder watches, as status and wait read it.
    let dir = super::controller::watched_dir(manifests, store, config).await?;
    let parsed = crate::controller::folder::parse_all(&dir).map_err(|e| {
        CliError::usage(format!(
            "{}: cannot read the manifests folder: {e}",
            dir.display()
        ))
    })?;
    let mut found = Vec::new();
    for (path, docs) in &parsed {
        let Ok(docs) = docs else { continue };
        for doc in docs {
            if doc.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()) {
                found.push((path, doc.legacy));
            }
        }
    }
    let (file, legacy) = match found.as_slice() {
        [] => {
            return Err(CliError::usage(format!(
                "pipeline/{name} not found in {}",
                dir.display()
            )));
        }
        [one] => *one,
        several => {
            let list: Vec<String> = several
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            return Err(CliError::failed(format!(
                "pipeline/{name} is defined more than once in the manifests folder ({}); fix that first",
                list.join(", ")
            )));
        }
    };
    if legacy {
        return Err(CliError::failed(format!(
            "pipeline/{name}: {} is in the original tool's format, which has no suspend; convert it first (`executioner convert`)",
            file.display()
        )));
    }
    let cannot = |e: String| CliError::usage(format!("{}: {e}", file.display()));
    let format = Format::from_path(file).ok_or_else(|| cannot("not a manifest file".into()))?;
    let bytes = std::fs::read(file).map_err(|e| cannot(e.to_string()))?;
    let text = source::decode(&bytes).map_err(|e| cannot(e.to_string()))?;
    let word = if on { "suspended" } else { "unsuspended" };
    match set_suspend(text, format, name.as_str(), on).map_err(CliError::failed)? {
        Edited::Unchanged => {
            if !global.quiet {
                println!("pipeline/{name} unchanged");
            }
        }
        Edited::Text { text, layout_kept } => {
            super::apply::write_atomic(&dir, file, text.as_bytes(), true)
                .map_err(|e| cannot(format!("cannot write: {e}")))?;
            if let Some(store) = store
                && let Err(e) =
                    super::prune::rewritten(store, &dir, file, &bytes, text.as_bytes()).await
            {
                eprintln!(
                    "warning: pipeline/{name}: the inventory of apply --prune was not updated (the file is no longer pruned by its source): {}",
                    e.render()
                );
            }
            if !layout_kept {
                eprintln!(
                    "note: {} was written again from its parsed content: its comments and layout were not kept",
                    file.display()
                );
            }
            if !global.quiet {
                println!("pipeline/{name} {word}");
            }
        }
    }
    Ok(Exit::Success)
}

/// Sets `spec.suspend` of the document named `name` in `text` (see the module's comment).
pub fn set_suspend(text: &str, format: Format, name: &str, on: bool) -> Result<Edited, String> {
    let docs = source::parse(text, format).map_err(|e| e.to_string())?;
    let index = docs
        .iter()
        .position(|d| d.value.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| format!("no document named {name}"))?;
    let doc = &docs[index];
    let Some(spec) = doc.value.get("spec").and_then(Value::as_object) else {
        return Err(format!("pipeline/{name} has no spec to edit"));
    };
    let current = spec
        .get("suspend")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if current == on {
        return Ok(Edited::Unchanged);
    }
    let mut expected: Vec<Value> = docs.iter().map(|d| d.value.clone()).collect();
    if let Some(spec) = expected[index]
        .get_mut("spec")
        .and_then(Value::as_object_mut)
    {
        spec.insert("suspend".into(), Value::Bool(on));
    }
    let same = |candidate: &str| {
        source::parse(candidate, format).is_ok_and(|parsed| {
            parsed.len() == expected.len()
                && parsed.iter().zip(&expected).all(|(p, e)| p.value == *e)
        })
    };
    if let Some(candidate) = minimal_edit(text, format, doc, spec, on)
        && same(&candidate)
    {
        return Ok(Edited::Text {
            text: candidate,
            layout_kept: true,
        });
    }
    let [value] = expected.as_slice() else {
        return Err(format!(
            "pipeline/{name}: cannot edit its file in place (it holds {} documents); set spec.suspend by hand",
            expected.len()
        ));
    };
    let text = match format {
        Format::Yaml => serde_saphyr::to_string(value).map_err(|e| e.to_string())?,
        Format::Toml => toml::to_string(value).map_err(|e| e.to_string())?,
        Format::Json => serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n",
    };
    // Checked like the textual edit: a rendering that does not read back as the document with
    // only `spec.suspend` changed is never written.
    if !same(&text) {
        return Err(format!(
            "pipeline/{name}: its file cannot be written again without changing more than spec.suspend; set spec.suspend by hand"
        ));
    }
    Ok(Edited::Text {
        text,
        layout_kept: false,
    })
}

/// The textual edit: the `suspend` literal replaced, or a `suspend` entry inserted before the
/// first entry of `spec` (as a line of its own when that entry starts a line). `None` when the
/// positions do not lead anywhere sensible; the caller checks the result anyway.
fn minimal_edit(
    text: &str,
    format: Format,
    doc: &source::SourceDoc,
    spec: &serde_json::Map<String, Value>,
    on: bool,
) -> Option<String> {
    let literal = if on { "true" } else { "false" };
    if spec.contains_key("suspend") {
        let at = offset(text, doc.positions.of_value("/spec/suspend"))?;
        let old = ["true", "false"]
            .into_iter()
            .find(|w| text[at..].starts_with(w))?;
        return Some(format!(
            "{}{literal}{}",
            &text[..at],
            &text[at + old.len()..]
        ));
    }
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    if format == Format::Toml {
        // `[spec]` on a line of its own: the entry goes right under it.
        let mut start = 0;
        for line in text.split_inclusive('\n') {
            let bare = line.split('#').next().unwrap_or("").trim();
            if bare == "[spec]" {
                let end = start + line.len();
                let sep = if line.ends_with('\n') { "" } else { newline };
                return Some(format!(
                    "{}{sep}suspend = {literal}{newline}{}",
                    &text[..end],
                    &text[end..]
                ));
            }
            start += line.len();
        }
    }
    let first = spec.keys().next()?;
    let at = offset(text, doc.positions.of_key(&format!("/spec/{first}")))?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent = &text[line_start..at];
    let entry = match format {
        Format::Yaml => format!("suspend: {literal}"),
        Format::Toml => format!("suspend = {literal}"),
        Format::Json => format!("\"suspend\": {literal}"),
    };
    let edited = if indent.chars().all(|c| c == ' ' || c == '\t') {
        let sep = match format {
            Format::Json => ",",
            Format::Yaml | Format::Toml => "",
        };
        // Right under `spec:` (or `"spec": {`) when that opens a block, so that a comment over
        // the first entry stays with it; else just before that entry.
        let spec_at = offset(text, doc.positions.of_key("/spec"))?;
        let spec_end = text[spec_at..]
            .find('\n')
            .map_or(text.len(), |i| spec_at + i + 1);
        let opener = text[spec_at..spec_end]
            .split('#')
            .next()
            .unwrap_or("")
            .trim();
        let opens_block = matches!(opener, "spec:" | "\"spec\": {" | "\"spec\":{");
        let at = if opens_block && spec_end <= line_start {
            spec_end
        } else {
            line_start
        };
        format!(
            "{}{indent}{entry}{sep}{newline}{}",
            &text[..at],
            &text[at..]
        )
    } else {
        // Inline (`spec: {jobs: ...}`): before the first entry, on the same line.
        format!("{}{entry}, {}", &text[..at], &text[at..])
    };
    Some(edited)
}

/// The byte offset of a 1-based line and column (in characters).
fn offset(text: &str, pos: Pos) -> Option<usize> {
    let mut start = 0;
    for _ in 1..pos.line {
        start += text[start..].find('\n')? + 1;
    }
    let line = &text[start..];
    let col = line
        .char_indices()
        .nth(pos.col.checked_sub(1)?)
        .map_or(line.len(), |(i, _)| i);
    Some(start + col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(text: &str, format: Format, on: bool) -> (String, bool) {
        match set_suspend(text, format, "a", on).expect("edit") {
            Edited::Text { text, layout_kept } => (text, layout_kept),
            Edited::Unchanged => panic!("unchanged"),
        }
    }

    const YAML: &str = "# the nightly\napiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: a\nspec:\n  # when\n  schedule: \"@daily\"   # at midnight\n  jobs:\n    - {id: x, command: \"true\"}\n";

    #[test]
    fn yaml_gets_one_line_and_keeps_its_comments_and_a_round_trip_restores_the_value() {
        let (on, kept) = edited(YAML, Format::Yaml, true);
        assert!(kept);
        assert_eq!(
            on,
            YAML.replace("spec:\n", "spec:\n  suspend: true\n"),
            "{on}"
        );
        assert_eq!(
            set_suspend(&on, Format::Yaml, "a", true).unwrap(),
            Edited::Unchanged
        );
        let (off, kept) = edited(&on, Format::Yaml, false);
        assert!(kept);
        assert_eq!(off, YAML.replace("spec:\n", "spec:\n  suspend: false\n"));
        assert_eq!(
            set_suspend(YAML, Format::Yaml, "a", false).unwrap(),
            Edited::Unchanged
        );
    }

    #[test]
    fn yaml_in_flow_style_and_in_a_file_of_several_documents() {
        let flow = "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {name: a}\nspec: {jobs: [{id: x, command: \"true\"}]}\n";
        let (on, kept) = edited(flow, Format::Yaml, true);
        assert!(kept, "{on}");
        assert!(on.contains("spec: {suspend: true, jobs:"), "{on}");
        let two = format!("{}---\n{}", YAML.replace("name: a", "name: b"), YAML);
        let (on, kept) = edited(&two, Format::Yaml, true);
        assert!(kept);
        let docs = source::parse(&on, Format::Yaml).unwrap();
        assert_eq!(docs[0].value.pointer("/spec/suspend"), None);
        assert_eq!(
            docs[1].value.pointer("/spec/suspend"),
            Some(&Value::Bool(true))
        );
    }

    #[test]
    fn toml_gets_a_line_under_its_spec_table() {
        let toml = "# nightly\napiVersion = \"executioner.dev/v1\"\nkind = \"Pipeline\"\n\n[metadata]\nname = \"a\"\n\n[spec]\nschedule = \"@daily\" # midnight\n\n[[spec.jobs]]\nid = \"x\"\ncommand = \"true\"\n";
        let (on, kept) = edited(toml, Format::Toml, true);
        assert!(kept);
        assert_eq!(on, toml.replace("[spec]\n", "[spec]\nsuspend = true\n"));
        let (off, kept) = edited(&on, Format::Toml, false);
        assert!(kept);
        assert_eq!(off, toml.replace("[spec]\n", "[spec]\nsuspend = false\n"));
    }

    #[test]
    fn json_gets_an_entry_at_the_head_of_spec() {
        let json = "{\n  \"apiVersion\": \"executioner.dev/v1\",\n  \"kind\": \"Pipeline\",\n  \"metadata\": {\"name\": \"a\"},\n  \"spec\": {\n    \"jobs\": [{\"id\": \"x\", \"command\": \"true\"}]\n  }\n}\n";
        let (on, kept) = edited(json, Format::Json, true);
        assert!(kept, "{on}");
        assert!(
            on.contains("\"spec\": {\n    \"suspend\": true,\n    \"jobs\""),
            "{on}"
        );
        let (off, _) = edited(&on, Format::Json, false);
        assert!(off.contains("\"suspend\": false,"), "{off}");
    }

    #[test]
    fn an_unknown_name_is_an_error() {
        assert!(set_suspend(YAML, Format::Yaml, "zz", true).is_err());
    }
}

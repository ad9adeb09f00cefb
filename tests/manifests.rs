//! Integration tests of the manifest commands (issue 2): validate, schema, convert, graph, init,
//! completions, against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Workspace, repo, text};

/// (line, message fragment) of each of the six mistakes in tests/fixtures/invalid/five-mistakes.*
fn expected(format: &str) -> Vec<(usize, &'static str)> {
    match format {
        "yaml" => vec![
            (8, "undefined variable ${NOPE}"),
            (12, "unknown field `dependecies`"),
            (15, "dependency cycle: b -> c -> b"),
            (18, "unknown job `extrct`"),
            (19, "duplicate job id `a`"),
            (21, "greater than the maximum"),
        ],
        "json" => vec![
            (7, "undefined variable ${NOPE}"),
            (9, "unknown field `dependecies`"),
            (10, "dependency cycle: b -> c -> b"),
            (11, "unknown job `extrct`"),
            (12, "duplicate job id `a`"),
            (12, "greater than the maximum"),
        ],
        _ => vec![
            (9, "undefined variable ${NOPE}"),
            (14, "unknown field `dependecies`"),
            (19, "dependency cycle: b -> c -> b"),
            (24, "unknown job `extrct`"),
            (27, "duplicate job id `a`"),
            (29, "greater than the maximum"),
        ],
    }
}

#[test]
fn validate_reports_every_mistake_with_its_position_in_each_format() {
    let ws = Workspace::new();
    for format in ["yaml", "json", "toml"] {
        let file = repo().join(format!("tests/fixtures/invalid/five-mistakes.{format}"));
        let out = ws.run(&["validate", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{format}");
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        let want = expected(format);
        assert_eq!(lines.len(), want.len(), "{format}: {stdout}");
        for (line, (want_line, fragment)) in lines.iter().zip(want) {
            let prefix = format!("{}:{want_line}:", file.display());
            assert!(
                line.starts_with(&prefix),
                "{format}: {line} should start with {prefix}"
            );
            assert!(
                line.contains(fragment),
                "{format}: {line} should say {fragment}"
            );
        }
        assert!(stdout.contains("did you mean `dependencies`?"), "{stdout}");
    }
}

#[test]
fn validate_accepts_folders_and_reports_duplicate_names() {
    let ws = Workspace::new();
    let body = |name: &str| {
        format!(
            "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {{name: {name}}}\nspec:\n  jobs: [{{id: a, command: \"true\"}}]\n"
        )
    };
    ws.write("m/one.yaml", &body("same"));
    ws.write("m/two.yml", &body("same"));
    ws.write("m/.hidden.yaml", "garbage: [");
    ws.write("m/notes.txt", "not a manifest");
    let out = ws.run(&["validate", "m"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("DuplicateName"),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_file(ws.path().join("m/two.yml")).unwrap();
    let out = ws.run(&["validate", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn validate_exit_codes() {
    let ws = Workspace::new();
    let out = ws.run(&["validate", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    ws.write("x.txt", "a: 1");
    assert_eq!(ws.run(&["validate", "x.txt"]).status.code(), Some(2));
    let ok = repo().join("examples/sample.yaml");
    assert_eq!(
        ws.run(&["validate", ok.to_str().unwrap()]).status.code(),
        Some(0)
    );
    assert_eq!(ws.run(&["validate"]).status.code(), Some(2));
}

#[test]
fn multi_document_yaml_validates_each_document() {
    let ws = Workspace::new();
    ws.write(
        "multi.yaml",
        "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {name: one}\nspec:\n  jobs: [{id: a, command: \"true\"}]\n---\napiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata: {name: two}\nspec:\n  jobs: [{id: a, command: \"true\", timeout: 0}]\n",
    );
    let out = ws.run(&["validate", "multi.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("pipeline/one is valid"), "{stdout}");
    assert!(stdout.contains("multi.yaml:11:"), "{stdout}");
    assert!(stdout.contains("must be greater than zero"), "{stdout}");
}

#[test]
fn schema_command_equals_committed_schemas() {
    let ws = Workspace::new();
    let out = ws.run(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap();
    assert_eq!(
        text(&out.stdout),
        committed,
        "schemas/ drifted from the types: run `make schemas` and commit"
    );
    let out = ws.run(&["schema", "--out-dir", "s"]);
    assert_eq!(out.status.code(), Some(0));
    for name in ["pipeline.schema.json", "config.schema.json"] {
        let fresh = std::fs::read_to_string(ws.path().join("s").join(name)).unwrap();
        let committed = std::fs::read_to_string(repo().join("schemas").join(name)).unwrap();
        assert_eq!(
            fresh, committed,
            "schemas/{name} drifted: run `make schemas` and commit"
        );
    }
}

/// Every v1 file in manifests/ and examples/ has a schema modeline and validates against the
/// committed schema with the jsonschema crate, and with `executioner validate`.
#[test]
fn examples_and_manifests_validate_against_the_committed_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("committed schema compiles");
    let ws = Workspace::new();
    let mut checked = 0;
    for folder in ["manifests", "examples"] {
        for entry in std::fs::read_dir(repo().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let Some(format) = executioner::spec::Format::from_path(&path) else {
                continue;
            };
            let raw = std::fs::read_to_string(&path).unwrap();
            let first = raw.lines().next().unwrap_or_default();
            let modeline = match format {
                executioner::spec::Format::Yaml => {
                    first.starts_with("# yaml-language-server: $schema=")
                }
                executioner::spec::Format::Toml => first.starts_with("#:schema "),
                executioner::spec::Format::Json => raw.contains("\"$schema\""),
            };
            // The original tool's JSON is not a Pipeline: the Pipeline schema would flag it all.
            let legacy = executioner::spec::source::parse(&raw, format)
                .unwrap()
                .iter()
                .all(|d| executioner::spec::legacy::is_legacy(&d.value));
            assert!(
                modeline != legacy,
                "{}: {}",
                path.display(),
                if legacy {
                    "original format with a Pipeline $schema"
                } else {
                    "no schema modeline"
                }
            );
            let out = ws.run(&["validate", path.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out.stdout)
            );
            for doc in executioner::spec::source::parse(&raw, format).unwrap() {
                if executioner::spec::legacy::is_legacy(&doc.value) {
                    continue;
                }
                let errors: Vec<String> = validator
                    .iter_errors(&doc.value)
                    .map(|e| e.to_string())
                    .collect();
                assert!(errors.is_empty(), "{}: {errors:?}", path.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} documents checked");
}

#[test]
fn convert_turns_the_original_format_into_a_valid_manifest() {
    let ws = Workspace::new();
    // A copy: convert writes the schema next to the file it converts.
    let original = ws.path().join("old/original.json");
    std::fs::create_dir_all(original.parent().unwrap()).unwrap();
    std::fs::copy(repo().join("examples/original.json"), &original).unwrap();
    let out = ws.run(&["convert", original.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(yaml.starts_with("# yaml-language-server: $schema="));
    for fragment in [
        "name: legacy-report",
        "maxParallel: 2",
        "failFast: true",
        "REPORT_DIR: /tmp/legacy-report",
        "limit: 2",
        "factor: 2.0",
        "onExitCodes:",
        "fileExists:",
        "ops@example.com",
        "timeout: 10m",
    ] {
        assert!(yaml.contains(fragment), "missing {fragment:?} in\n{yaml}");
    }
    ws.write("converted.yaml", &yaml);
    let out = ws.run(&["validate", "converted.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // `validate` also takes the original format directly.
    let out = ws.run(&["validate", original.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("original format"));
}

#[test]
fn hostile_inputs_fail_fast_and_cleanly() {
    let ws = Workspace::new();
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.yaml", Vec::new()),
        (
            "binary.yaml",
            (0..2048u32).map(|i| (i * 7 % 256) as u8).collect(),
        ),
        ("huge.yaml", "# padding\n".repeat(1_200_000).into_bytes()),
        ("bomb.yaml", bomb.into_bytes()),
        (
            "deep.yaml",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        (
            "deep.json",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        (
            "deep.toml",
            format!("a = {}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        ("dupkey.yaml", b"apiVersion: a\napiVersion: b\n".to_vec()),
        ("dupkey.json", b"{\"kind\": 1, \"kind\": 2}".to_vec()),
        ("badutf8.yaml", b"apiVersion: \xff\xfe\n".to_vec()),
        (
            "crlf.yaml",
            b"apiVersion: executioner.dev/v1\r\nkind: Nope\r\n".to_vec(),
        ),
    ];
    for (name, bytes) in &cases {
        let path = ws.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = ws.run_limited(&["validate", name], Duration::from_secs(10));
        let code = out.status.code();
        assert!(matches!(code, Some(1) | Some(2)), "{name}: exit {code:?}");
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            stdout.contains(name) || stderr.contains(name),
            "{name}: the message names the file: {stdout}{stderr}"
        );
    }
    // A BOM and CRLF line ends are fine in a valid manifest.
    ws.write(
        "bom.yaml",
        "\u{feff}apiVersion: executioner.dev/v1\r\nkind: Pipeline\r\nmetadata: {name: x}\r\nspec:\r\n  jobs: [{id: a, command: \"true\"}]\r\n",
    );
    assert_eq!(ws.run(&["validate", "bom.yaml"]).status.code(), Some(0));
}

#[test]
fn graph_init_and_completions() {
    let ws = Workspace::new();
    let triggers = repo().join("examples/triggers.yaml");
    let out = ws.run(&["graph", triggers.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let mermaid = text(&out.stdout);
    assert!(mermaid.starts_with("flowchart TD"));
    assert!(mermaid.contains("j_ok --> j_needs_hall"), "{mermaid}");
    let out = ws.run(&["graph", triggers.to_str().unwrap(), "--format", "dot"]);
    let dot = text(&out.stdout);
    assert!(dot.contains("\"broken\" -> \"on-failure\";"), "{dot}");

    // By name, from the manifests folder.
    std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
    std::fs::copy(&triggers, ws.path().join("manifests/t.yaml")).unwrap();
    let out = ws.run(&["graph", "example-triggers"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = ws.run(&["init", "new"]);
    assert_eq!(out.status.code(), Some(0));
    let out = ws.run(&["validate", "new/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Never overwrites.
    assert_eq!(ws.run(&["init", "new"]).status.code(), Some(2));

    for shell in ["bash", "zsh", "fish"] {
        let out = ws.run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("executioner"));
    }
}

/// Issue 13, 12: a folder without a manifest is a usage error that says so.
#[test]
fn validate_of_a_folder_without_manifests_exits_2_and_says_so() {
    let ws = Workspace::new();
    ws.write("empty/notes.txt", "not a manifest");
    let out = ws.run(&["validate", "empty"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no manifests in empty"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 13, 12: the original's per-job key at the top level hints at its `default_` twin.
#[test]
fn legacy_top_level_max_retries_hints_at_default_max_retries() {
    let ws = Workspace::new();
    ws.write(
        "legacy.json",
        r#"{"application_name": "old", "max_retries": 3, "jobs": [{"id": "a", "command": "true"}]}"#,
    );
    let out = ws.run(&["validate", "legacy.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    let hint = stdout
        .lines()
        .find(|l| l.contains("`max_retries`"))
        .unwrap_or_else(|| panic!("no hint in {stdout}"));
    assert!(hint.starts_with("legacy.json:1:"), "{hint}");
    assert!(hint.contains("warning: "), "{hint}");
    assert!(hint.contains("`default_max_retries`"), "{hint}");
}

/// Issue 13, 12: `init` over an existing file names it and suggests `--force`, which overwrites.
#[test]
fn init_names_an_existing_file_and_overwrites_it_with_force() {
    let ws = Workspace::new();
    ws.write("p/pipeline.yaml", "mine\n");
    let out = ws.run(&["init", "p"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("p/pipeline.yaml already exists"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("p/pipeline.yaml")).unwrap(),
        "mine\n"
    );
    let out = ws.run(&["init", "p", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = ws.run(&["validate", "p/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

/// Issue 13, 8: numbers and booleans in an array command are arguments, in the binary and in the
/// committed schema.
#[test]
fn array_commands_take_numbers_and_booleans_as_arguments() {
    let ws = Workspace::new();
    let manifest = common::manifest(
        "argv",
        "",
        "  - id: a\n    command: [sh, -c, 'echo \"$1 $2 $3\" > out.txt', sh, 1, true, 2.5]\n",
    );
    ws.write("argv.yaml", &manifest);
    let out = ws.run(&["validate", "argv.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = ws.run(&["run", "argv.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out.txt")).unwrap(),
        "1 true 2.5\n"
    );
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let doc = executioner::spec::source::parse(&manifest, executioner::spec::Format::Yaml)
        .unwrap()
        .remove(0);
    let errors: Vec<String> = validator
        .iter_errors(&doc.value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

/// Issue 13, 6: a bad value of an optional field is described in the user's terms: the allowed
/// names with a did-you-mean, "invalid duration" with examples, never "expected null".
#[test]
fn optional_fields_with_bad_values_say_what_is_allowed() {
    let ws = Workspace::new();
    ws.write(
        "bad.yaml",
        &common::manifest(
            "bad",
            "  inheritEnv: minimum\n  onSpecChange: replac\n  timeout: soon\n",
            "  - id: a\n    command: \"true\"\n    trigger: allSucceed\n    timeout: -5\n    retry: {limit: 1, delay: true}\n    description:\n",
        ),
    );
    let out = ws.run(&["validate", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    for (at, fragment) in [
        (
            "bad.yaml:6:15:",
            "spec.inheritEnv: \"minimum\" is not one of: all, none, minimal, or an array (did you mean `minimal`?)",
        ),
        (
            "bad.yaml:7:17:",
            "spec.onSpecChange: \"replac\" is not one of: queue, replace (did you mean `replace`?)",
        ),
        (
            "bad.yaml:8:12:",
            "spec.timeout: invalid duration \"soon\" (examples: 90s, 10m, 1h30m",
        ),
        (
            "bad.yaml:12:14:",
            "spec.jobs[0].trigger: \"allSucceed\" is not one of: allSucceeded, allDone, allFailed, anySucceeded, anyFailed, noneFailed, always (did you mean `allSucceeded`?)",
        ),
        (
            "bad.yaml:13:14:",
            "spec.jobs[0].timeout: invalid duration -5: it must not be negative",
        ),
        (
            "bad.yaml:14:30:",
            "spec.jobs[0].retry.delay: invalid duration true",
        ),
        (
            "bad.yaml:15:16:",
            "spec.jobs[0].description: no value given: write one or leave the field out",
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(at) && l.contains(fragment)),
            "no `{at} ...{fragment}` in\n{stdout}"
        );
    }
    assert!(!stdout.contains("expected null"), "{stdout}");
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
}

/// Issue 13, 6: a tab in YAML indentation is reported at the tab, not where the parser stopped.
#[test]
fn a_tab_in_indentation_points_at_the_tab() {
    let ws = Workspace::new();
    ws.write(
        "tab.yaml",
        &common::manifest("tab", "", "  - id: a\n\tcommand: x\n"),
    );
    let out = ws.run(&["validate", "tab.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout).trim_end(),
        "tab.yaml:8:1: a tab in YAML indentation: indent with spaces"
    );
}

/// Issue 13, 15: the committed schema reads well in an editor: every definition has a title,
/// every property its own description (not only its type's), and a property whose description
/// states a default carries it as `default`.
#[test]
fn the_committed_schema_has_titles_descriptions_and_defaults() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap(),
    )
    .unwrap();
    let mut problems = Vec::new();
    assert!(schema["title"].is_string(), "the root has no title");
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut objects: Vec<(String, &serde_json::Value)> = vec![("(root)".into(), &schema)];
    for (name, def) in defs {
        if !def["title"].is_string() {
            problems.push(format!("definition {name} has no title"));
        }
        objects.push((name.clone(), def));
    }
    // A word "default" outside `code` spans (so `${NAME:-default}` does not count).
    let states_a_default = |text: &str| {
        text.split('`').step_by(2).any(|plain| {
            plain
                .split(|c: char| !c.is_ascii_alphabetic())
                .any(|w| w.eq_ignore_ascii_case("default"))
        })
    };
    // Objects nested in definitions (`oneOf` variants such as `fromEnv`) count too.
    let mut i = 0;
    while i < objects.len() {
        let (owner, object) = (objects[i].0.clone(), objects[i].1);
        for keyword in ["anyOf", "oneOf"] {
            for (k, branch) in object[keyword].as_array().into_iter().flatten().enumerate() {
                objects.push((format!("{owner}.{keyword}[{k}]"), branch));
            }
        }
        i += 1;
    }
    for (owner, object) in objects {
        let Some(properties) = object["properties"].as_object() else {
            continue;
        };
        for (name, property) in properties {
            match property["description"].as_str() {
                None => problems.push(format!("{owner}.{name} has no description")),
                Some(text) if states_a_default(text) && property.get("default").is_none() => {
                    problems.push(format!(
                        "{owner}.{name} states a default but has no `default`: {text:?}"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Hovering `trigger:` shows what the field is; the values keep their own docs.
    let trigger = &defs["JobSpec"]["properties"]["trigger"];
    assert!(
        trigger["description"]
            .as_str()
            .unwrap()
            .starts_with("When the job runs"),
        "{trigger}"
    );
    assert!(trigger.get("anyOf").is_none(), "{trigger}");
    assert_eq!(
        defs["Trigger"]["enum"].as_array().map(Vec::len),
        defs["Trigger"]["markdownEnumDescriptions"]
            .as_array()
            .map(Vec::len)
    );
}

/// The `$schema=` target of a YAML modeline, if the text starts with one.
fn modeline_target(yaml: &str) -> Option<String> {
    yaml.lines()
        .next()?
        .strip_prefix("# yaml-language-server: $schema=")
        .map(str::to_owned)
}

/// Issue 13, 14: `init` and `convert` write a modeline that resolves to the current schema on
/// this machine (not an address that is not served), and the schema file does not count as a
/// manifest of the folder.
#[test]
fn init_and_convert_modelines_resolve_to_the_schema() {
    let ws = Workspace::new();
    let committed = std::fs::read_to_string(repo().join("schemas/pipeline.schema.json")).unwrap();

    let out = ws.run(&["init", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let yaml = std::fs::read_to_string(ws.path().join("m/pipeline.yaml")).unwrap();
    let target = modeline_target(&yaml).expect("init writes a modeline");
    assert!(!target.contains("://"), "{target}");
    let schema = ws.path().join("m").join(&target);
    assert_eq!(
        std::fs::read_to_string(&schema).unwrap(),
        committed,
        "{target}"
    );
    let out = ws.run(&["validate", "m"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );

    ws.write(
        "legacy/old.json",
        r#"{"application_name": "old", "jobs": [{"id": "a", "command": "true"}]}"#,
    );
    let out = ws.run(&["convert", "legacy/old.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let target = modeline_target(&text(&out.stdout)).expect("convert writes a modeline");
    let schema = std::path::Path::new(&target);
    assert!(
        schema.is_absolute(),
        "{target}: resolves wherever the output is saved"
    );
    assert_eq!(
        std::fs::read_to_string(schema).unwrap(),
        committed,
        "{target}"
    );

    let original = std::fs::read_to_string(repo().join("examples/original.json")).unwrap();
    assert!(!original.contains("\"$schema\""), "{original}");
}

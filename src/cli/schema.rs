//! `executioner schema [--out-dir DIR]`: the generated JSON Schemas.

use std::path::Path;

use super::{CliError, CliResult, Exit};

/// The schema files and their contents, as committed in `schemas/`.
pub fn schema_files() -> Vec<(&'static str, String)> {
    vec![
        ("pipeline.schema.json", pipeline_schema_text()),
        (
            "config.schema.json",
            pretty(&crate::config::config_schema()),
        ),
        // The HTTP API's OpenAPI document, generated from the same types as `-o json`.
        ("openapi.json", crate::http::api::document()),
    ]
}

/// The Pipeline schema as `schema` prints it and `init` and `convert` write it.
pub fn pipeline_schema_text() -> String {
    pretty(&crate::spec::pipeline_schema())
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

pub fn run(out_dir: Option<&Path>) -> CliResult {
    match out_dir {
        None => {
            print!("{}", pipeline_schema_text());
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::usage(format!("{}: {e}", dir.display())))?;
            for (name, text) in schema_files() {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(Exit::Success)
}

/// Writes the Pipeline schema into `dir` as `pipeline.schema.json` unless the same text is there
/// (for editors' modelines); returns its absolute path, or a note saying why it could not.
pub fn write_beside(dir: &Path) -> Result<std::path::PathBuf, String> {
    let path = super::absolute(dir).join(super::init::SCHEMA_FILE);
    let text = pipeline_schema_text();
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(path);
    }
    std::fs::write(&path, &text).map_err(|e| {
        format!(
            "no schema for editors: cannot write {}: {e} (`executioner schema --out-dir DIR` writes it elsewhere)",
            path.display()
        )
    })?;
    eprintln!("wrote {} (for editors)", path.display());
    Ok(path)
}

//! `executioner convert FILE`: the original tool's JSON as a v1 YAML manifest.
//!
//! The YAML is printed; its schema modeline is the absolute path of a `pipeline.schema.json`
//! written next to FILE (when missing or outdated), so that it resolves wherever the output is saved.

use std::path::{Path, PathBuf};

use crate::validate::Options;

use super::{CliError, CliResult, Exit};

pub fn run(file: &Path) -> CliResult {
    let valid = super::validate::load_one(file, &Options::default())?;
    let yaml = serde_saphyr::to_string(&valid.manifest)
        .map_err(|e| CliError::failed(format!("cannot render YAML: {e}")))?;
    let mut out = String::new();
    let dir = super::absolute(file)
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    match super::schema::write_beside(&dir) {
        Ok(schema) => out.push_str(&format!(
            "# yaml-language-server: $schema={}\n",
            schema.display()
        )),
        Err(note) => eprintln!("note: {note}"),
    }
    if valid.legacy {
        out.push_str(&format!(
            "# Converted from {} (original format).\n",
            file.display()
        ));
    }
    for w in &valid.warnings {
        out.push_str(&format!("# note: {}\n", w.message));
    }
    out.push_str(&yaml);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    print!("{out}");
    Ok(Exit::Success)
}

//! `executioner convert FILE`: the original tool's JSON as a v1 YAML manifest.

use std::path::Path;

use crate::validate::Options;

use super::{CliError, CliResult, Exit};

pub fn run(file: &Path) -> CliResult {
    let valid = super::validate::load_one(file, &Options::default())?;
    let yaml = serde_saphyr::to_string(&valid.manifest)
        .map_err(|e| CliError::failed(format!("cannot render YAML: {e}")))?;
    let mut out = String::from(
        "# yaml-language-server: $schema=https://executioner.dev/schemas/pipeline.schema.json\n",
    );
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

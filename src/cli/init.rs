//! `executioner init [DIR]`: a commented sample manifest to start from, with the schema beside it
//! so that the editor modeline resolves.

use std::path::Path;

use super::{CliError, CliResult, Exit};

/// The sample written by `init`; a test checks that it validates.
pub const SAMPLE: &str = include_str!("../../examples/sample.yaml");

/// The modeline of the sample in this repository (examples/ next to schemas/).
const REPO_MODELINE: &str = "# yaml-language-server: $schema=../schemas/pipeline.schema.json";

/// The schema file `init` writes next to the manifest (manifest listings skip `*.schema.json`).
pub const SCHEMA_FILE: &str = "pipeline.schema.json";

pub fn run(dir: &Path, print: bool, force: bool) -> CliResult {
    if print {
        print!("{SAMPLE}");
        return Ok(Exit::Success);
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::usage(format!("{}: {e}", dir.display())))?;
    let path = dir.join("pipeline.yaml");
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(!force)
        .create(force)
        .truncate(force)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CliError::usage(format!(
                "{} already exists; not overwritten (use --force to replace it)",
                path.display()
            )));
        }
        Err(e) => return Err(CliError::usage(format!("{}: {e}", path.display()))),
    };
    let text = SAMPLE.replace(
        REPO_MODELINE,
        &format!("# yaml-language-server: $schema={SCHEMA_FILE}"),
    );
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    let schema_path = dir.join(SCHEMA_FILE);
    std::fs::write(&schema_path, super::schema::pipeline_schema_text())
        .map_err(|e| CliError::usage(format!("{}: {e}", schema_path.display())))?;
    println!("wrote {}", path.display());
    println!(
        "wrote {} (for editors: completion and hover docs)",
        schema_path.display()
    );
    println!(
        "next: executioner validate {0} && executioner run {0}",
        path.display()
    );
    Ok(Exit::Success)
}

//! `executioner init [DIR]`: a commented sample manifest to start from.

use std::path::Path;

use super::{CliError, CliResult, Exit};

/// The sample written by `init`; a test checks that it validates.
pub const SAMPLE: &str = include_str!("../../examples/sample.yaml");

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
        "../schemas/pipeline.schema.json",
        "https://executioner.dev/schemas/pipeline.schema.json",
    );
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    println!(
        "next: executioner validate {0} && executioner run {0}",
        path.display()
    );
    Ok(Exit::Success)
}

//! `executioner graph FILE|NAME [--format mermaid|dot]`: the DAG as text for a picture.

use std::path::{Path, PathBuf};

use crate::spec::Manifest;
use crate::validate::{self, FileOutcome, Options};

use super::{CliError, CliResult, Exit, GraphFormat};

pub fn run(target: &str, format: GraphFormat, manifests: &Path) -> CliResult {
    let options = Options::default();
    let path = PathBuf::from(target);
    let manifest = if path.is_file()
        || target.contains('/')
        || crate::spec::Format::from_path(&path).is_some()
    {
        super::validate::load_one(&path, &options)?.manifest
    } else {
        find_by_name(target, manifests, &options)?
    };
    print!("{}", render(&manifest, format));
    Ok(Exit::Success)
}

fn find_by_name(name: &str, dir: &Path, options: &Options) -> Result<Manifest, CliError> {
    let files = validate::manifest_files(dir).map_err(|e| {
        CliError::usage(format!(
            "{}: cannot read manifests folder: {e}",
            dir.display()
        ))
    })?;
    for file in files {
        if let FileOutcome::Docs(docs) = validate::validate_file(&file, options) {
            for doc in docs.into_iter().flatten() {
                if doc.manifest.metadata.name.as_str() == name {
                    return Ok(doc.manifest);
                }
            }
        }
    }
    Err(CliError::usage(format!(
        "no file {name:?} and no valid pipeline named {name:?} in {}",
        dir.display()
    )))
}

/// Mermaid or DOT text; edges go from a dependency to its dependent.
pub fn render(manifest: &Manifest, format: GraphFormat) -> String {
    let jobs = &manifest.spec.jobs;
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart TD\n");
            for job in jobs {
                out.push_str(&format!(
                    "    {}[\"{}\"]\n",
                    mermaid_id(job.id.as_str()),
                    job.id
                ));
            }
            for job in jobs {
                for dep in &job.dependencies {
                    out.push_str(&format!(
                        "    {} --> {}\n",
                        mermaid_id(dep.as_str()),
                        mermaid_id(job.id.as_str())
                    ));
                }
            }
        }
        GraphFormat::Dot => {
            out.push_str(&format!(
                "digraph \"{}\" {{\n    rankdir=LR;\n",
                manifest.metadata.name
            ));
            for job in jobs {
                out.push_str(&format!("    \"{}\";\n", job.id));
            }
            for job in jobs {
                for dep in &job.dependencies {
                    out.push_str(&format!("    \"{dep}\" -> \"{}\";\n", job.id));
                }
            }
            out.push_str("}\n");
        }
    }
    out
}

/// Job ids may hold `.` and `-`, which Mermaid node ids do not accept.
fn mermaid_id(id: &str) -> String {
    let mut out = String::from("j_");
    for c in id.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => out.push(c),
            '.' => out.push_str("_d"),
            _ => out.push_str("_h"),
        }
    }
    out
}

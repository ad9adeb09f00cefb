//! `executioner validate PATH...`, and the manifest loading shared by the commands that take a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::validate::{self, Diagnostic, FileOutcome, Options, Severity, Validated};

use super::{CliError, CliResult, Exit, GlobalArgs};

pub fn run(paths: &[PathBuf], global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let options = Options {
        security: super::security_policy(&config),
        ..Options::default()
    };
    let mut files = Vec::new();
    let mut unreadable = false;
    for path in paths {
        if path.is_dir() {
            match validate::manifest_files(path) {
                Ok(found) if found.is_empty() => {
                    eprintln!(
                        "no manifests in {} (expected *.yaml, *.yml, *.toml or *.json)",
                        path.display()
                    );
                    unreadable = true;
                }
                Ok(found) => files.extend(found),
                Err(e) => {
                    eprintln!("{}: cannot read folder: {e}", path.display());
                    unreadable = true;
                }
            }
        } else {
            files.push(path.clone());
        }
    }

    let mut invalid = false;
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let trust = super::controller::trust(&config)?;
    for file in &files {
        // What the controller would refuse to run (InsecurePermissions).
        if let Err(insecure) = trust.check_manifest_path(file) {
            println!("{insecure}");
            invalid = true;
            continue;
        }
        match validate::validate_file(file, &options) {
            FileOutcome::Unreadable(e) => {
                eprintln!("error: {}", super::error::chain(&e));
                unreadable = true;
            }
            FileOutcome::Docs(docs) => {
                for doc in docs {
                    match doc {
                        Ok(valid) => {
                            print_diagnostics(&valid.warnings);
                            let name = valid.manifest.metadata.name.to_string();
                            if let Some(first) = names.get(&name) {
                                invalid = true;
                                println!(
                                    "{}:1:1: pipeline name `{name}` is already used by {} (DuplicateName)",
                                    valid.file.display(),
                                    first.display()
                                );
                            } else {
                                names.insert(name.clone(), valid.file.clone());
                                if !global.quiet {
                                    println!(
                                        "{}: pipeline/{name} is valid ({} job{}{})",
                                        valid.file.display(),
                                        valid.manifest.spec.jobs.len(),
                                        if valid.manifest.spec.jobs.len() == 1 {
                                            ""
                                        } else {
                                            "s"
                                        },
                                        if valid.legacy {
                                            ", original format"
                                        } else {
                                            ""
                                        }
                                    );
                                }
                            }
                        }
                        Err(diagnostics) => {
                            invalid = true;
                            print_diagnostics(&diagnostics);
                        }
                    }
                }
            }
        }
    }
    Ok(if unreadable {
        Exit::Usage
    } else if invalid {
        Exit::Failed
    } else {
        Exit::Success
    })
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        println!("{d}");
    }
}

/// Loads the one pipeline a command works on: the file must hold exactly one valid manifest.
/// Diagnostics are printed; the error carries the exit code.
pub fn load_one(path: &Path, options: &Options) -> Result<Validated, CliError> {
    match validate::validate_file(path, options) {
        FileOutcome::Unreadable(e) => Err(CliError::usage(super::error::chain(&e))),
        FileOutcome::Docs(mut docs) => {
            if docs.len() != 1 {
                return Err(CliError::usage(format!(
                    "{}: holds {} manifests; this command takes a file with one",
                    path.display(),
                    docs.len()
                )));
            }
            match docs.remove(0) {
                Ok(valid) => {
                    for w in &valid.warnings {
                        eprintln!("{w}");
                    }
                    Ok(valid)
                }
                Err(diagnostics) => {
                    let errors = diagnostics
                        .iter()
                        .filter(|d| d.severity == Severity::Error)
                        .count();
                    for d in &diagnostics {
                        eprintln!("{d}");
                    }
                    Err(CliError::failed(format!(
                        "{}: invalid manifest ({errors} error{})",
                        path.display(),
                        if errors == 1 { "" } else { "s" }
                    )))
                }
            }
        }
    }
}

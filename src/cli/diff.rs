//! `executioner diff -f PATH`: what `apply -f PATH` would change in the manifests folder, as a
//! unified diff per pipeline. It reads what apply reads and decides with apply's own plan, so the
//! two never disagree; it writes nothing, creates no state and needs no controller.
//!
//! Choices:
//! - Compared: what apply compares, the typed manifest in the folder against the typed document
//!   applied, both rendered as YAML the way apply writes a new file (the schema's field order,
//!   comments, layout and quoting left out, defaults not filled in). So a change of comments or
//!   layout alone is no change, exactly as apply says `unchanged`. A folder file that does not
//!   fit the manifest types is shown as its text.
//! - Output, as kubectl's: for each pipeline apply would create or configure, a
//!   `diff -u -N live/NAME merged/NAME` line, then `--- live/NAME`, `+++ merged/NAME` and the
//!   hunks (3 lines of context). A new pipeline's live side is empty, a pruned one's merged side.
//!   Nothing else goes to standard output; diagnostics and warnings go to standard error.
//! - `--prune` (and `--allow-empty`) as for apply: also the pipelines `apply --prune` would delete,
//!   from the inventory in the state, only read (no state folder: nothing to prune).
//! - Exit codes (kubectl's, flux's): 0 no change, 1 changes, 2 any error, invalid documents
//!   included (each diagnostic first, as `FILE:LINE:COL: message`, as `validate` prints them).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use similar::TextDiff;

use crate::spec::{Format, Manifest};

use super::apply::{self, Action};
use super::prune::{self, Inventory};
use super::{CliError, CliResult, Exit, GlobalArgs};

/// The arguments of `diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// File, folder or `-` (stdin, YAML), as for apply
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub file: PathBuf,
    /// Manifests folder (default: config manifests_dir, i.e. manifests/)
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Also show what `apply --prune` would delete.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: let PATH hold no manifest, as for apply.
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
}

pub fn run(args: &DiffArgs, global: &GlobalArgs) -> CliResult {
    // Whatever keeps the comparison from being made is exit 2, an invalid manifest included
    // (apply says 1 for that: there it is the outcome, here it is why there is no answer).
    compare(args, global).map_err(|e| {
        if e.exit_code() == Exit::Failed {
            CliError::usage(e.render())
        } else {
            e
        }
    })
}

fn compare(args: &DiffArgs, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let (dir, options) = apply::target(args.manifests.as_deref(), &config);
    let source = prune::source_key(&args.file)?;
    prune::check_source(source.as_deref(), args.prune)?;
    let sources = apply::read_sources(&args.file, args.prune)?;
    let incoming = apply::validate_all(&sources, &options, global.quiet)
        .map_err(|_| CliError::usage("invalid manifests; nothing to compare"))?;
    prune::check_not_empty(&args.file, incoming.len(), args.prune, args.allow_empty)?;
    let folder = apply::Folder::scan_warning(&dir, global.quiet)?;
    let plan =
        apply::plan(&incoming, &folder).map_err(|_| CliError::usage("nothing to compare"))?;
    let prunable = match source.filter(|_| args.prune) {
        Some(source) => {
            let state_dir = super::state_dir(&config);
            let keep: HashSet<&str> = incoming.iter().map(|d| d.name().as_str()).collect();
            super::runtime()?.block_on(async {
                match Inventory::open(&config, &state_dir, source, &dir, false).await? {
                    Some(inventory) => {
                        let prunable = inventory.prunable(&keep, true, global.quiet).await;
                        inventory.close().await;
                        prunable
                    }
                    None => Ok(Vec::new()),
                }
            })?
        }
        None => Vec::new(),
    };

    let applied: HashMap<&str, &Manifest> = incoming
        .iter()
        .map(|d| (d.name().as_str(), &d.manifest))
        .collect();
    let mut out = String::new();
    for step in &plan {
        let name = step.name.as_str();
        let Some(merged) = applied.get(name) else {
            continue;
        };
        let live = match &step.action {
            Action::Keep { .. } => continue,
            Action::Create { .. } => String::new(),
            Action::Replace { path, .. } => {
                let existing = folder
                    .definitions(name)
                    .find_map(|(_, _, d)| d.manifest.as_ref());
                live_text(existing, path)?
            }
        };
        write_diff(&mut out, name, &live, &canonical(merged)?);
    }
    for file in &prunable {
        let existing = folder
            .definitions(&file.pipeline)
            .find(|(f, _, _)| f.path == file.path)
            .and_then(|(_, _, d)| d.manifest.as_ref());
        write_diff(
            &mut out,
            &file.pipeline,
            &live_text(existing, &file.path)?,
            "",
        );
    }
    print!("{out}");
    Ok(if out.is_empty() {
        Exit::Success
    } else {
        Exit::Failed
    })
}

/// A manifest in the form both sides are compared in.
fn canonical(manifest: &Manifest) -> Result<String, CliError> {
    apply::render(manifest, Format::Yaml)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|e| {
            CliError::usage(format!(
                "pipeline/{}: cannot render the manifest: {e}",
                manifest.metadata.name
            ))
        })
}

/// The live side: the folder's typed manifest, or the file's text when it has none.
fn live_text(manifest: Option<&Manifest>, path: &Path) -> Result<String, CliError> {
    match manifest {
        Some(m) => canonical(m),
        None => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", path.display()))),
    }
}

/// Appends the unified diff of one pipeline, unless both sides are the same text.
fn write_diff(out: &mut String, name: &str, live: &str, merged: &str) {
    if live == merged {
        return;
    }
    let (old, new) = (format!("live/{name}"), format!("merged/{name}"));
    let diff = TextDiff::from_lines(live, merged);
    let _ = writeln!(out, "diff -u -N {old} {new}");
    let _ = write!(out, "{}", diff.unified_diff().header(&old, &new));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_has_kubectl_headers_and_hunks() {
        let mut out = String::new();
        write_diff(&mut out, "p", "a: 1\nb: 2\n", "a: 1\nb: 3\n");
        assert_eq!(
            out,
            "diff -u -N live/p merged/p\n--- live/p\n+++ merged/p\n@@ -1,2 +1,2 @@\n a: 1\n-b: 2\n+b: 3\n"
        );
        let mut same = String::new();
        write_diff(&mut same, "p", "a: 1\n", "a: 1\n");
        assert!(same.is_empty());
        let mut created = String::new();
        write_diff(&mut created, "p", "", "a: 1\n");
        assert!(created.ends_with("@@ -0,0 +1 @@\n+a: 1\n"), "{created}");
    }
}

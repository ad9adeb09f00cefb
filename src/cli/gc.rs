//! `executioner gc [--dry-run] [-o json]`: prunes the run history beyond each pipeline's retention
//! policy now, as the controller does after runs end, and says what it removed (or would).
//!
//! Needs no controller and works beside a running one (the database is shared in WAL mode; the
//! controller's lock is not taken to prune). The policies are `controller::retention::policies`';
//! the pruning and the sweep of log folders left without their run are `store::retention`'s; this
//! file reads the manifests folder, prints, and converts a database made before retention existed
//! to incremental vacuum once, when no run is running and no controller is: the rewrite holds the
//! write lock longer than a controller's writes wait, so gc holds the controller's lock meanwhile.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::controller::folder;
use crate::controller::retention::{FolderHistory, policies};
use crate::store::retention::{AutoVacuum, PruneMode, PruneReport, SweepReport};
use crate::store::{RunId, Store};
use crate::validate::Options;

use super::{CliError, CliResult, Exit, GlobalArgs, OutputFormat};

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Manifests folder whose `spec.history` applies (default: the one the controller of this
    /// state folder recorded, else configuration manifests_dir).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<std::path::PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// What `gc -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GcSummary {
    dry_run: bool,
    /// Per pipeline, by name.
    pipelines: Vec<PipelinePruned>,
    runs: usize,
    log_bytes: u64,
    database_bytes_freed: u64,
    /// Log folders whose runs were pruned but which could not be removed.
    leftovers: Vec<String>,
    /// Log folders found without their run (an earlier prune stopped between the rows and the
    /// files), removed (or, dry, that would be).
    orphaned_log_folders: Vec<String>,
    orphaned_log_bytes: u64,
    /// A database made before retention was (or, dry, would be) rewritten for incremental vacuum.
    converted: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PipelinePruned {
    pipeline: String,
    runs: Vec<RunId>,
    log_bytes: u64,
}

pub fn run(args: &GcArgs, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let state_dir = super::state_dir(&config);
    let options = Options {
        security: super::security_policy(&config),
        ..Options::default()
    };
    let trust = super::controller::trust(&config)?;
    let mode = if args.dry_run {
        PruneMode::DryRun
    } else {
        PruneMode::Delete
    };
    let summary = super::runtime()?.block_on(async {
        // No state folder, no history: nothing to create either.
        let Some(store) = super::open_store_existing(&state_dir, &config).await? else {
            let nothing = (PruneReport::default(), SweepReport::default());
            return Ok::<_, CliError>(summarize(nothing, mode, false));
        };
        let dir = super::controller::watched_dir(args.manifests.as_deref(), Some(&store), &config)
            .await?;
        let rows = store.pipelines().await?;
        let read = folder::read_folder(&dir, &options, &trust, &folder::bound_sources(&rows))
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", dir.display())))?;
        let policies = policies(&store, &config.history, &FolderHistory::of(&read)).await?;
        let now = time::OffsetDateTime::now_utc();
        let report = store
            .prune_history(&state_dir, &policies, now, mode)
            .await?;
        let swept = store.sweep_log_folders(&state_dir, mode).await?;
        let converted = convert_old_database(&store, &state_dir, mode).await?;
        store.close().await;
        Ok(summarize((report, swept), mode, converted))
    })?;
    for leftover in &summary.leftovers {
        tracing::warn!("cannot remove {leftover}");
    }
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        ),
        OutputFormat::Table => print!("{}", table(&summary)),
    }
    Ok(Exit::Success)
}

/// A database with `auto_vacuum = NONE` is rewritten once, when no run is running and no
/// controller is (the rewrite holds the write lock until it is done, longer than an idle
/// controller's writes wait: the controller would stop); true when it was (or, dry, would be).
/// The controller's lock is held for the rewrite, so none starts meanwhile. A dry run takes no
/// lock (taking it writes the lock file): it says what gc would do if no controller were running.
async fn convert_old_database(
    store: &Store,
    state_dir: &std::path::Path,
    mode: PruneMode,
) -> Result<bool, CliError> {
    if store.auto_vacuum().await? != AutoVacuum::None {
        return Ok(false);
    }
    let skipped = |why: &str| {
        tracing::warn!(
            "the database predates incremental vacuum: its free pages are reused but not given \
             back; conversion skipped: {why}"
        );
        Ok(false)
    };
    let _lock = match mode {
        PruneMode::DryRun => None,
        PruneMode::Delete => match crate::controller::lock::acquire(state_dir) {
            Ok(lock) => Some(lock),
            Err(crate::controller::lock::LockError::Held { .. }) => {
                return skipped("a controller is running; stop it to convert");
            }
            Err(e) => return skipped(&crate::error_chain::render(&e)),
        },
    };
    // Under the lock: a run started since the prune is seen.
    if !store.unfinished_runs().await?.is_empty() {
        return skipped("a run is running; `executioner gc` converts it when none is");
    }
    match mode {
        PruneMode::DryRun => Ok(true),
        PruneMode::Delete => {
            store.convert_to_incremental_vacuum().await?;
            Ok(true)
        }
    }
}

fn summarize(
    (report, swept): (PruneReport, SweepReport),
    mode: PruneMode,
    converted: bool,
) -> GcSummary {
    let mut by_pipeline: BTreeMap<String, PipelinePruned> = BTreeMap::new();
    for run in &report.runs {
        let entry = by_pipeline
            .entry(run.pipeline.as_str().to_owned())
            .or_insert_with(|| PipelinePruned {
                pipeline: run.pipeline.as_str().to_owned(),
                runs: Vec::new(),
                log_bytes: 0,
            });
        entry.runs.push(run.run);
        entry.log_bytes += run.log_bytes;
    }
    GcSummary {
        dry_run: mode == PruneMode::DryRun,
        runs: report.runs.len(),
        log_bytes: report.runs.iter().map(|r| r.log_bytes).sum(),
        database_bytes_freed: report.db_bytes_freed,
        leftovers: report
            .leftovers
            .iter()
            .chain(&swept.leftovers)
            .map(|(dir, e)| format!("{} ({e})", dir.display()))
            .collect(),
        orphaned_log_folders: swept
            .folders
            .iter()
            .map(|(dir, _)| dir.display().to_string())
            .collect(),
        orphaned_log_bytes: swept.folders.iter().map(|(_, bytes)| bytes).sum(),
        pipelines: by_pipeline.into_values().collect(),
        converted,
    }
}

fn table(summary: &GcSummary) -> String {
    let verb = if summary.dry_run {
        "would prune"
    } else {
        "pruned"
    };
    let mut out = String::new();
    for p in &summary.pipelines {
        out.push_str(&format!(
            "pipeline/{}: {verb} {} (runs {}), {} of logs\n",
            p.pipeline,
            plural(p.runs.len(), "run"),
            ranges(&p.runs),
            bytes(p.log_bytes)
        ));
    }
    if summary.pipelines.is_empty() {
        out.push_str("nothing to prune\n");
    } else {
        out.push_str(&format!(
            "total: {verb} {}, {} of logs",
            plural(summary.runs, "run"),
            bytes(summary.log_bytes)
        ));
        if summary.database_bytes_freed > 0 {
            out.push_str(&format!(
                "; the database gave back {}",
                bytes(summary.database_bytes_freed)
            ));
        }
        out.push('\n');
    }
    if !summary.orphaned_log_folders.is_empty() {
        let verb = if summary.dry_run {
            "would remove"
        } else {
            "removed"
        };
        out.push_str(&format!(
            "{verb} {} without a run, {}\n",
            plural(summary.orphaned_log_folders.len(), "orphaned log folder"),
            bytes(summary.orphaned_log_bytes)
        ));
    }
    if summary.converted {
        out.push_str(if summary.dry_run {
            "would convert the database to incremental vacuum (a one-time rewrite)\n"
        } else {
            "converted the database to incremental vacuum (a one-time rewrite)\n"
        });
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Run ids (ascending) as ranges: `1-40, 42, 45-47`.
fn ranges(ids: &[RunId]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = ids.iter().map(|r| r.get()).peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(", ")
}

/// `512 B`, `12.3 KiB`, `4.0 MiB`, `1.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_print_as_ranges() {
        let ids: Vec<RunId> = [1, 2, 3, 5, 7, 8].into_iter().map(RunId::from).collect();
        assert_eq!(ranges(&ids), "1-3, 5, 7-8");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}

//! `executioner gc [--dry-run] [-o json]`: prunes the run history beyond each pipeline's retention
//! policy now, as the controller does after runs end, and says what it removed (or would).
//!
//! Needs no controller and works beside a running one (the database is shared in WAL mode; the
//! controller's lock is not taken). The policies are `controller::retention::policies`'; the
//! pruning is `store::retention`'s; this file reads the manifests folder, prints, and converts a
//! database made before retention existed to incremental vacuum once, when no run is running.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::controller::folder;
use crate::controller::retention::{FolderHistory, policies};
use crate::store::retention::{AutoVacuum, PruneMode, PruneReport};
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
            return Ok::<_, CliError>(summarize(PruneReport::default(), mode, false));
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
        let converted = convert_old_database(&store, mode).await?;
        store.close().await;
        Ok(summarize(report, mode, converted))
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

/// A database with `auto_vacuum = NONE` is rewritten once, when no run is running (the rewrite
/// holds the write lock until it is done); true when it was (or, dry, would be).
async fn convert_old_database(store: &Store, mode: PruneMode) -> Result<bool, CliError> {
    if store.auto_vacuum().await? != AutoVacuum::None {
        return Ok(false);
    }
    if !store.unfinished_runs().await?.is_empty() {
        tracing::warn!(
            "the database predates incremental vacuum: its free pages are reused but not given \
             back; `executioner gc` converts it when no run is running"
        );
        return Ok(false);
    }
    match mode {
        PruneMode::DryRun => Ok(true),
        PruneMode::Delete => {
            store.convert_to_incremental_vacuum().await?;
            Ok(true)
        }
    }
}

fn summarize(report: PruneReport, mode: PruneMode, converted: bool) -> GcSummary {
    let mut by_pipeline: BTreeMap<String, PipelinePruned> = BTreeMap::new();
    for run in &report.runs {
        let entry = by_pipeline
            .entry(run.pipeline.clone())
            .or_insert_with(|| PipelinePruned {
                pipeline: run.pipeline.clone(),
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
            .map(|(dir, e)| format!("{} ({e})", dir.display()))
            .collect(),
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

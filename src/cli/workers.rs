//! `executioner workers [-o json]`: the workers registered in a PostgreSQL state database, with
//! their labels, slots, the attempts they hold and how long ago each sent its heartbeat. Reading
//! only; what makes a worker Live, Stale or Stopped is the store's (`store/workers.rs`), by the
//! database's clock. On SQLite there are no workers: a usage error (exit 2) says why.

use std::collections::BTreeMap;

use crate::status::format_time;
use crate::store::workers::{WorkerRow, WorkerState};

use super::{CliError, CliResult, Exit, GlobalArgs, OutputFormat, render};

/// One worker as `-o json` shows it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerView<'a> {
    name: &'a str,
    host: &'a str,
    pid: i64,
    labels: &'a BTreeMap<String, String>,
    slots: i64,
    running: i64,
    started_at: String,
    heartbeat_at: String,
    /// By the database's clock, as the state is.
    heartbeat_age_seconds: f64,
    state: WorkerState,
}

pub fn run(output: OutputFormat, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    if config.database.url.is_none() {
        // Checked before opening anything: a SQLite state folder is not created to say this.
        return Err(CliError::usage(
            "workers need a PostgreSQL database (set database.url or --database-url); with SQLite, jobs run in the controller's or `run`'s own process",
        ));
    }
    let state_dir = super::state_dir(&config);
    super::runtime()?.block_on(async {
        let store = super::open_store(&state_dir, &config).await?;
        let workers = store.workers(config.lease_ttl()).await?;
        match output {
            OutputFormat::Json => {
                let views: Vec<WorkerView<'_>> = workers.iter().map(view).collect();
                render::print_json(&views);
            }
            OutputFormat::Table if workers.is_empty() => {
                println!("no workers registered (start one with `executioner worker`)");
            }
            OutputFormat::Table => println!("{}", table(&workers)),
        }
        Ok(Exit::Success)
    })
}

fn view(row: &WorkerRow) -> WorkerView<'_> {
    WorkerView {
        name: &row.name,
        host: &row.host,
        pid: row.pid,
        labels: &row.labels,
        slots: row.slots,
        running: row.running,
        started_at: format_time(row.started_at),
        heartbeat_at: format_time(row.heartbeat_at),
        heartbeat_age_seconds: heartbeat_age(row).as_seconds_f64(),
        state: row.state,
    }
}

/// How long before the read the worker's last heartbeat was (never negative).
fn heartbeat_age(row: &WorkerRow) -> time::Duration {
    (row.read_at - row.heartbeat_at).max(time::Duration::ZERO)
}

fn table(workers: &[WorkerRow]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header([
        "NAME",
        "HOST",
        "LABELS",
        "SLOTS",
        "RUNNING",
        "HEARTBEAT",
        "STATE",
    ]);
    for row in workers {
        let labels = if row.labels.is_empty() {
            "-".to_owned()
        } else {
            row.labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        table.add_row([
            row.name.clone(),
            format!("{} (pid {})", row.host, row.pid),
            labels,
            row.slots.to_string(),
            row.running.to_string(),
            format!("{} ago", render::span_text(heartbeat_age(row))),
            row.state.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(labels: &[(&str, &str)], age_ms: i64, state: WorkerState) -> WorkerRow {
        let read_at = time::macros::datetime!(2026-12-01 12:00:00 UTC);
        WorkerRow {
            name: "w1".to_owned(),
            host: "h1".to_owned(),
            pid: 42,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            slots: 4,
            running: 1,
            started_at: read_at - time::Duration::hours(1),
            heartbeat_at: read_at - time::Duration::milliseconds(age_ms),
            state,
            read_at,
        }
    }

    #[test]
    fn the_table_shows_labels_heartbeat_age_and_state() {
        let text = table(&[
            row(&[("gpu", "a100"), ("zone", "eu")], 2_500, WorkerState::Live),
            row(&[], 90_000, WorkerState::Stale),
        ])
        .to_string();
        for column in [
            "NAME",
            "HOST",
            "LABELS",
            "SLOTS",
            "RUNNING",
            "HEARTBEAT",
            "STATE",
        ] {
            assert!(text.contains(column), "{text}");
        }
        assert!(text.contains("gpu=a100,zone=eu"), "{text}");
        assert!(text.contains("h1 (pid 42)"), "{text}");
        assert!(text.contains("2.500s ago"), "{text}");
        assert!(text.contains("Stale"), "{text}");
    }

    #[test]
    fn json_names_fields_in_camel_case() {
        let row = row(&[("gpu", "a100")], 1_000, WorkerState::Live);
        let json = serde_json::to_value(view(&row)).unwrap();
        assert_eq!(json["state"], "Live");
        assert_eq!(json["labels"]["gpu"], "a100");
        assert_eq!(json["heartbeatAgeSeconds"], 1.0);
        assert_eq!(json["heartbeatAt"], "2026-12-01T11:59:59.000Z");
    }
}

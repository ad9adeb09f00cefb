//! The web pages, rendered on the server with maud (every value escaped by the template): `/`
//! (the pipelines), `/pipelines/{name}` (its runs), `/runs/{id}` (the DAG picture, the jobs and
//! attempts tables, the selected job's log), and their two assets, embedded in the binary. A page
//! is complete as loaded, without JavaScript; `ui.js` then keeps it current from the streams of
//! `live`. The data are the `-o json` objects of `crate::views` and `controller::observe`. Not
//! the streams (`live`), the picture (`dag_svg`) nor the JSON API (`api`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::dag::Dag;
use crate::spec::JobId;
use crate::status::JobPhase;
use crate::status::file::PipelineStatusDoc;
use crate::store::RunId;
use crate::views::{JobView, RunDetail, RunView};

use super::api::{job_id, path, pipeline_name, run_id};
use super::{ApiError, App};

/// The page routes (not API: the OpenAPI document does not describe them).
pub const PAGES: &[&str] = &[
    "/",
    "/pipelines/{name}",
    "/runs/{id}",
    "/assets/ui.css",
    "/assets/ui.js",
];

const UI_CSS: &str = include_str!("assets/ui.css");
const UI_JS: &str = include_str!("assets/ui.js");

/// The most of a job's log a page holds when it loads (its end); the rest is one link away.
pub const LOG_TAIL: u64 = 256 * 1024;
/// The runs a pipeline's page lists (the newest).
const RUNS_LISTED: i64 = 100;

/// The routes of the pages and their assets.
pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route(PAGES[0], get(index))
        .route(PAGES[1], get(pipeline))
        .route(PAGES[2], get(run))
        .route(PAGES[3], get(css))
        .route(PAGES[4], get(js))
}

/// Scripts only from this server, no inline script, no request beyond it; inline styles for
/// the SVG's own `<style>` and the phase colours.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn html_response(status: StatusCode, page: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page.into_string(),
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", UI_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", UI_JS)
}

fn asset(kind: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        text,
    )
        .into_response()
}

/// A page that could not be shown: the API's error, as a page.
#[derive(Debug)]
pub struct PageError(ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.0.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            h1 { (title) }
            p.error { (self.0.message) }
            p { a href="/" { "All pipelines" } }
        };
        html_response(self.0.status, layout(title, Live::None, body))
    }
}

/// Which change notices a page follows (the `data-*` of its `<body>`, read by `ui.js`).
#[derive(Debug, Clone, Copy)]
enum Live<'a> {
    /// An error page: nothing to follow.
    None,
    Everything,
    Pipeline(&'a str),
    Run(&'a str, RunId),
}

/// The phase colours of the pictures, as classes for the tables' badges (one palette, in
/// `dag_svg`). Built from constants only, never from a value of a request.
fn phase_style() -> String {
    let mut css = String::new();
    for phase in JobPhase::ALL {
        let (fill, text) = super::dag_svg::phase_colours(*phase);
        css.push_str(&format!(
            ".badge.phase-{}{{background:{fill};color:{text}}}",
            phase.as_str()
        ));
    }
    css
}

fn layout(title: &str, live: Live<'_>, body: Markup) -> Markup {
    let (page, pipeline, run) = match live {
        Live::None => ("error", None, None),
        Live::Everything => ("pipelines", None, None),
        Live::Pipeline(name) => ("pipeline", Some(name), None),
        Live::Run(name, id) => ("run", Some(name), Some(id.to_string())),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No icon: without this a browser asks for /favicon.ico (a 404 in its console).
                link rel="icon" href="data:,";
                title { (title) " · executioner" }
                link rel="stylesheet" href="/assets/ui.css";
                style { (PreEscaped(phase_style())) }
                script src="/assets/ui.js" defer {}
            }
            body data-page=(page) data-pipeline=[pipeline] data-run=[run] {
                header {
                    a.home href="/" { "executioner" }
                    span #live-state .live-state aria-live="polite" {}
                }
                main { (body) }
            }
        }
    }
}

fn badge(phase: &str) -> Markup {
    html! { span class={ "badge phase-" (phase) } { (phase) } }
}

fn or_dash(value: Option<&str>) -> Markup {
    html! {
        @match value {
            Some(v) => (v),
            None => span.none { "—" },
        }
    }
}

/// A duration as people read it: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn duration_text(d: time::Duration) -> String {
    let ms = d.whole_milliseconds().max(0);
    match ms {
        ..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

fn run_duration(
    run: &crate::store::RunRow,
    attempts: &[crate::store::AttemptRow],
) -> Option<String> {
    let spans = crate::views::round_spans(run, attempts);
    crate::views::run_duration(&spans).map(duration_text)
}

/// The next tick of each scheduled pipeline of the folder, by name (`None` when suspended).
fn next_ticks(app: &App, rows: &[crate::store::PipelineRow]) -> HashMap<String, Option<String>> {
    let bound = crate::controller::folder::bound_sources(rows);
    let Ok(folder) = crate::controller::folder::read_folder(
        &app.manifests_dir,
        &app.options,
        &app.trust,
        &bound,
    ) else {
        return HashMap::new();
    };
    let now = chrono::Utc::now();
    folder
        .desired
        .values()
        .filter_map(|d| {
            let schedule =
                crate::schedule::Schedule::parse(d.manifest.spec.schedule.as_deref()?).ok()?;
            let next = match d.manifest.spec.suspend {
                true => None,
                false => schedule
                    .next_tick(now)
                    .map(|(_, at)| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            };
            Some((d.name.clone(), next))
        })
        .collect()
}

async fn index(State(app): State<Arc<App>>) -> Result<Response, PageError> {
    let dirs = crate::controller::observe::Dirs {
        state: &app.state_dir,
        manifests: &app.manifests_dir,
    };
    let docs: Vec<PipelineStatusDoc> =
        crate::controller::observe::snapshot(Some(&app.store), dirs, &app.options, &app.trust)
            .await?;
    let rows = app.store.pipelines().await?;
    let ticks = next_ticks(&app, &rows);
    let body = html! {
        h1 { "Pipelines" }
        div #pipelines data-live="1" {
            @if docs.is_empty() {
                p.none { "No pipelines in " (app.manifests_dir.display()) "." }
            } @else {
                table.list {
                    thead { tr {
                        th { "Pipeline" } th { "Phase" } th { "Generation" } th { "Last run" }
                        th { "Progress" } th { "Next tick" } th { "Revision" }
                    } }
                    tbody {
                        @for doc in &docs {
                            @let name = &doc.metadata.name;
                            @let p = &doc.status.progress;
                            tr data-pipeline=(name) {
                                td { a href={ "/pipelines/" (name) } { (name) } }
                                td { (badge(doc.status.phase.as_str())) }
                                td.num { (doc.metadata.generation) }
                                td {
                                    @match doc.status.run_id {
                                        Some(id) => a href={ "/runs/" (id) } { "#" (id) },
                                        None => span.none { "—" },
                                    }
                                }
                                td.num {
                                    @if p.total > 0 {
                                        (p.succeeded + p.failed + p.skipped + p.cancelled) "/" (p.total) " ended"
                                        @if p.failed > 0 { " · " (p.failed) " failed" }
                                        @if p.running > 0 { " · " (p.running) " running" }
                                    } @else { span.none { "—" } }
                                }
                                td {
                                    @match ticks.get(name) {
                                        Some(Some(at)) => time { (at) },
                                        Some(None) => span.none { "suspended" },
                                        None => span.none { "not scheduled" },
                                    }
                                }
                                td { code { (or_dash(doc.metadata.revision.as_deref())) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout("Pipelines", Live::Everything, body),
    ))
}

async fn pipeline(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, PageError> {
    let name = pipeline_name(&path(name)?)?;
    let runs = app.store.runs(Some(name.as_str()), RUNS_LISTED).await?;
    // A pipeline only ever run in the foreground (`executioner run`) has runs but no row.
    if runs.is_empty() && app.store.pipeline(name.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("pipeline/{name} not found")).into());
    }
    let mut rows: Vec<(RunView, Option<String>)> = Vec::with_capacity(runs.len());
    for run in &runs {
        let attempts = app.store.attempts(run.id).await?;
        rows.push((
            crate::views::run_view(run, &attempts),
            run_duration(run, &attempts),
        ));
    }
    let title = format!("pipeline/{name}");
    let body = html! {
        p.crumbs { a href="/" { "Pipelines" } " / " (name) }
        h1 { (title) }
        div #runs data-live="1" {
            @if rows.is_empty() {
                p.none { "No runs yet." }
            } @else {
                table.list {
                    thead { tr {
                        th { "Run" } th { "Phase" } th { "Reason" } th { "Started" }
                        th { "Duration" } th { "Generation" }
                    } }
                    tbody {
                        @for (run, duration) in &rows {
                            tr data-run=(run.id) {
                                td { a href={ "/runs/" (run.id) } { "#" (run.id) } }
                                td { (badge(run.phase)) }
                                td { (or_dash(run.reason)) }
                                td { (or_dash(run.started_at.as_deref())) }
                                td.num { (or_dash(duration.as_deref())) }
                                td.num { (run.generation) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&title, Live::Pipeline(name.as_str()), body),
    ))
}

/// `/runs/{id}?job=ID`.
#[derive(Debug, Deserialize)]
pub struct RunQuery {
    job: Option<String>,
}

/// The job graph of a run as its pinned spec declares it: the picture's jobs in spec order with
/// their phase (from the run's rows) and description; `None` when the spec cannot be read.
fn dag_picture(run: &crate::store::RunRow, detail: &RunDetail) -> Option<String> {
    let pinned = crate::spec::Pinned::from_json(&run.spec_json).ok()?;
    let jobs = &pinned.manifest.spec.jobs;
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();
    let deps = jobs
        .iter()
        .map(|j| {
            j.dependencies
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    let dag = Dag::new(deps).ok()?;
    let phases: HashMap<&str, &str> = detail
        .jobs
        .iter()
        .map(|j| (j.id.as_str(), j.phase))
        .collect();
    let picture: Vec<super::dag_svg::DagJob<'_>> = jobs
        .iter()
        .map(|j| super::dag_svg::DagJob {
            id: &j.id,
            phase: phases
                .get(j.id.as_str())
                .and_then(|p| p.parse().ok())
                .unwrap_or(JobPhase::Pending),
            label: j.description.as_deref(),
        })
        .collect();
    super::dag_svg::render(&picture, &dag).ok()
}

/// What a page shows of a job's log: its end (at most [`LOG_TAIL`] bytes, from a line's
/// start), up to its last complete line while the job runs, and the offset just after it.
struct LogTail {
    text: String,
    /// Where the stream goes on from.
    offset: u64,
    /// Bytes before the tail that the page does not hold.
    skipped: u64,
    exists: bool,
}

async fn log_tail(file: &std::path::Path, running: bool) -> Result<LogTail, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = match tokio::fs::File::open(file).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(LogTail {
                text: String::new(),
                offset: 0,
                skipped: 0,
                exists: false,
            });
        }
        Err(e) => return Err(ApiError::internal(format!("cannot read the log: {e}"))),
    };
    let read = async {
        let len = f.metadata().await?.len();
        let start = len.saturating_sub(LOG_TAIL);
        f.seek(std::io::SeekFrom::Start(start)).await?;
        let mut bytes = Vec::with_capacity((len - start) as usize);
        (&mut f).take(len - start).read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>((start, bytes))
    };
    let (mut start, mut bytes) = read
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    if start > 0 {
        // Cut in a line: begin at the next one.
        let cut = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..cut);
        start += cut as u64;
    }
    if running {
        // The last line may be half written: the stream sends it once it is whole.
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(keep);
    }
    Ok(LogTail {
        offset: start + bytes.len() as u64,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        skipped: start,
        exists: true,
    })
}

fn job_phase(job: &JobView) -> JobPhase {
    job.phase.parse().unwrap_or(JobPhase::Pending)
}

async fn run(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<RunQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let id = run_id(&path(id)?)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wanted: Option<JobId> = query.job.as_deref().map(job_id).transpose()?;
    let row = super::api::known_run(&app, id).await?;
    let detail = crate::views::load_run_detail(&app.store, &row, &app.state_dir, true).await?;
    let selected: Option<&JobView> = match &wanted {
        Some(job) => Some(
            detail
                .jobs
                .iter()
                .find(|j| j.id == job.as_str())
                .ok_or_else(|| ApiError::not_found(format!("run {id} has no job {job}")))?,
        ),
        // What an operator opens a run for: the job running now, else the first that failed.
        None => [JobPhase::Running, JobPhase::Failed]
            .into_iter()
            .find_map(|phase| detail.jobs.iter().find(|j| job_phase(j) == phase)),
    };
    let log = match selected {
        Some(job) => {
            let running = !job_phase(job).is_terminal();
            let file = crate::state_dir::job_log_path(&app.state_dir, &row.pipeline, id, &job.id);
            Some((job, running, log_tail(&file, running).await?))
        }
        None => None,
    };
    let picture = dag_picture(&row, &detail);
    let attempts = app.store.attempts(id).await?;
    let duration = run_duration(&row, &attempts);
    let pipeline = row.pipeline.as_str();
    let title = format!("run {id} of {pipeline}");
    let run = &detail.run;
    let body = html! {
        p.crumbs {
            a href="/" { "Pipelines" } " / "
            a href={ "/pipelines/" (pipeline) } { (pipeline) } " / run " (id)
        }
        h1 { "Run #" (id) " of " (pipeline) }
        div #summary data-live="1" {
            dl.summary {
                dt { "Phase" } dd { (badge(run.phase)) }
                dt { "Reason" } dd { (or_dash(run.reason)) }
                dt { "Generation" } dd { (run.generation) }
                dt { "Started" } dd { (or_dash(run.started_at.as_deref())) }
                dt { "Finished" } dd { (or_dash(run.finished_at.as_deref())) }
                dt { "Duration" } dd { (or_dash(duration.as_deref())) }
                dt { "Rounds" } dd { (run.rounds) }
                dt { "Revision" } dd { code { (or_dash(detail.revision.as_deref())) } }
                @for (k, v) in &detail.params {
                    dt { "param " code { (k) } } dd { code { (v) } }
                }
            }
        }
        h2 { "Graph" }
        div #dag .dag data-live="1" {
            @match &picture {
                Some(svg) => (PreEscaped(svg)),
                None => p.none { "The run's spec cannot be read: no picture." },
            }
        }
        section #log-section {
            h2 #log { "Log" }
            @match &log {
                None => p.none { "Select a job (in the picture or the table) to see its log." },
                Some((job, running, tail)) => {
                    p.log-head {
                        "Job " code { (job.id) } " "
                        span #log-state { @if *running { "live" } @else { (job.phase) } }
                        " · " a href={ "/api/v1/runs/" (id) "/jobs/" (job.id) "/log" } { "whole log (text)" }
                    }
                    @if tail.skipped > 0 {
                        p.none { "The first " (tail.skipped) " bytes are left out here." }
                    }
                    @if !tail.exists && !*running {
                        p.none { "No log: the job did not start." }
                    }
                    pre #log-text .log
                        data-stream=[running.then(|| format!("/api/v1/runs/{id}/jobs/{}/log/stream", job.id))]
                        data-offset=(tail.offset) { (tail.text) }
                }
            }
        }
        h2 { "Jobs" }
        div #jobs data-live="1" {
            table.list {
                thead { tr {
                    th { "Job" } th { "Phase" } th { "Reason" } th { "Attempts" } th { "Exit" }
                    th { "Started" } th { "Finished" }
                } }
                tbody {
                    @for job in &detail.jobs {
                        @let chosen = selected.is_some_and(|s| s.id == job.id);
                        tr data-job=(job.id) class=[chosen.then_some("selected")] {
                            td { a href={ "?job=" (job.id) "#log" } { (job.id) } }
                            td { (badge(job.phase)) }
                            td { (or_dash(job.reason)) }
                            td.num { (job.attempts) }
                            td.num { (or_dash(job.exit_code.map(|c| c.to_string()).as_deref())) }
                            td { (or_dash(job.started_at.as_deref())) }
                            td { (or_dash(job.finished_at.as_deref())) }
                        }
                    }
                }
            }
        }
        h2 { "Attempts" }
        div #attempts data-live="1" {
            table.list {
                thead { tr {
                    th { "Job" } th { "#" } th { "Round" } th { "Phase" } th { "Reason" }
                    th { "Exit" } th { "Signal" } th { "Started" } th { "Finished" } th { "Message" }
                } }
                tbody {
                    @for job in &detail.jobs {
                        @for a in &job.attempt_list {
                            tr {
                                td { (job.id) }
                                td.num { (a.attempt) }
                                td.num { (a.round) }
                                td { (badge(a.phase)) }
                                td { (or_dash(a.reason)) }
                                td.num { (or_dash(a.exit_code.map(|c| c.to_string()).as_deref())) }
                                td.num { (or_dash(a.signal.map(|s| s.to_string()).as_deref())) }
                                td { (a.started_at) }
                                td { (or_dash(a.finished_at.as_deref())) }
                                td { (or_dash(a.message.as_deref())) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&title, Live::Run(pipeline, id), body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration_text(time::Duration::milliseconds(850)), "850ms");
        assert_eq!(duration_text(time::Duration::milliseconds(12_340)), "12.3s");
        assert_eq!(duration_text(time::Duration::seconds(245)), "4m05s");
        assert_eq!(duration_text(time::Duration::minutes(123)), "2h03m");
    }

    #[test]
    fn values_are_escaped_by_the_templates() {
        let page = layout(
            "<script>t</script>",
            Live::Pipeline("p"),
            html! { (or_dash(Some("<script>alert(1)</script>"))) },
        )
        .into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("<title>&lt;script&gt;t&lt;/script&gt; · executioner</title>"));
    }

    #[test]
    fn every_phase_has_a_badge_colour() {
        let css = phase_style();
        for phase in JobPhase::ALL {
            assert!(css.contains(&format!(".badge.phase-{}{{", phase.as_str())));
        }
    }
}

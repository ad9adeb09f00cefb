//! The JSON API under `/api/v1` (the same objects as the CLI's `-o json`, built by
//! `crate::views` and `controller::observe`), health, and the OpenAPI document generated from
//! those types by utoipa. Every path parameter is parsed as a `PipelineName`, `RunId` or `JobId`
//! before anything reads the store or a file. Not the router, limits and errors (`mod.rs`), nor
//! the token check (`auth`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::spec::{JobId, PipelineName};
use crate::status::file::PipelineStatusDoc;
use crate::store::RunId;
use crate::views::{RunDetail, RunView};

use super::{ApiError, App, auth};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The body of `/healthz` and `/readyz` when all is well.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The body of an accepted `POST`: what was requested.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// `rerun` or `cancel`.
    pub requested: &'static str,
    pub pipeline: Option<String>,
    #[schema(value_type = Option<i64>)]
    pub run: Option<RunId>,
}

/// `GET /api/v1/runs` query.
#[derive(Debug, Deserialize)]
pub struct RunsQuery {
    pipeline: Option<String>,
    limit: Option<i64>,
}

/// The newest runs listed when no `limit` is given (as `executioner runs`).
const DEFAULT_LIMIT: i64 = 20;
/// The most runs one request lists.
const MAX_LIMIT: i64 = 1000;

pub(super) fn path<T>(given: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    given
        .map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

pub(super) fn pipeline_name(given: &str) -> Result<PipelineName, ApiError> {
    PipelineName::parse(given).map_err(|e| ApiError::bad_request(e.to_string()))
}

pub(super) fn run_id(given: &str) -> Result<RunId, ApiError> {
    given
        .parse::<RunId>()
        .map_err(|_| ApiError::bad_request(format!("{given:?} is not a run id")))
}

pub(super) fn job_id(given: &str) -> Result<JobId, ApiError> {
    JobId::parse(given).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn statuses(app: &App) -> Result<Vec<PipelineStatusDoc>, ApiError> {
    let dirs = crate::controller::observe::Dirs {
        state: &app.state_dir,
        manifests: &app.manifests_dir,
    };
    Ok(
        crate::controller::observe::snapshot(Some(&app.store), dirs, &app.options, &app.trust)
            .await?,
    )
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "The store answers and the manifests folder was read", body = Health),
        (status = 503, description = "Not ready yet, or standby (another controller leads)", body = ErrorBody)))]
pub async fn readyz(State(app): State<Arc<App>>) -> Result<Json<Health>, ApiError> {
    if app.metrics.standby() {
        return Err(ApiError::unavailable(
            "standby: another controller leads and decides; this one takes over if it stops",
        ));
    }
    app.store.pipelines().await.map_err(|e| {
        ApiError::unavailable(format!(
            "the store does not answer: {}",
            crate::error_chain::render(&e)
        ))
    })?;
    if !app.metrics.folder_read() {
        return Err(ApiError::unavailable(
            "the manifests folder was not read yet",
        ));
    }
    Ok(Json(Health { status: "ready" }))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text)", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "api",
    responses((status = 200, description = "This document", body = Object)))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "api",
    responses((status = 200, description = "Every pipeline's status (`status -o json`)", body = Vec<PipelineStatusDoc>)))]
pub async fn pipelines(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<PipelineStatusDoc>>, ApiError> {
    Ok(Json(statuses(&app).await?))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "api",
    params(("name" = String, Path, description = "A pipeline name (a lowercase DNS label)", min_length = 1, max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
    responses(
        (status = 200, description = "One pipeline's status (`status NAME -o json`)", body = PipelineStatusDoc),
        (status = 400, description = "Not a pipeline name", body = ErrorBody),
        (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn pipeline(
    State(app): State<Arc<App>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<PipelineStatusDoc>, ApiError> {
    let name = pipeline_name(&path(name)?)?;
    statuses(&app)
        .await?
        .into_iter()
        .find(|d| d.metadata.name == name.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("pipeline/{name} not found")))
}

#[utoipa::path(get, path = "/api/v1/runs", tag = "api",
    params(
        ("pipeline" = Option<String>, Query, description = "Only runs of this pipeline", min_length = 1, max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        ("limit" = Option<i64>, Query, description = "How many runs, the newest (default 20, at most 1000)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, description = "Runs, newest first (`runs -o json`)", body = Vec<RunView>),
        (status = 400, description = "A bad pipeline name or limit", body = ErrorBody)))]
pub async fn runs(
    State(app): State<Arc<App>>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let pipeline = query.pipeline.as_deref().map(pipeline_name).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let runs = app
        .store
        .runs(pipeline.as_ref().map(PipelineName::as_str), limit)
        .await?;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let attempts = app.store.attempts(run.id).await?;
        out.push(crate::views::run_view(&run, &attempts));
    }
    Ok(Json(out))
}

pub(super) async fn known_run(app: &App, id: RunId) -> Result<crate::store::RunRow, ApiError> {
    app.store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} does not exist")))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "api",
    params(("id" = i64, Path, description = "A run id", minimum = 1)),
    responses(
        (status = 200, description = "A run with its jobs (`runs show ID -o json`)", body = RunDetail),
        (status = 400, description = "Not a run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody)))]
pub async fn run(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RunDetail>, ApiError> {
    let id = run_id(&path(id)?)?;
    let run = known_run(&app, id).await?;
    let detail = crate::views::load_run_detail(&app.store, &run, &app.state_dir, true).await?;
    Ok(Json(detail))
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/jobs/{job}/log", tag = "api",
    params(("id" = i64, Path, description = "A run id", minimum = 1), ("job" = String, Path, description = "A job id (A-Z, a-z, 0-9, `_`, `.`, `-`; not `.` or `..`)", min_length = 1, max_length = 63, pattern = "^([A-Za-z0-9_-][A-Za-z0-9_.-]*|\\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\\.\\.[A-Za-z0-9_.-]+)$")),
    responses(
        (status = 200, description = "The job's log as written (secrets masked), as plain text", content_type = "text/plain", body = String),
        (status = 400, description = "Not a run id or job id", body = ErrorBody),
        (status = 404, description = "No such run or job, or the job has no log", body = ErrorBody)))]
pub async fn log(
    State(app): State<Arc<App>>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, job) = path(ids)?;
    let (id, job) = (run_id(&id)?, job_id(&job)?);
    let run = known_run(&app, id).await?;
    if !app.store.jobs(id).await?.iter().any(|j| j.job_id == job) {
        return Err(ApiError::not_found(format!("run {id} has no job {job}")));
    }
    // Every part of the path is a validated name or id: it stays inside the state folder.
    let file = crate::state_dir::job_log_path(&app.state_dir, &run.pipeline, run.id, &job);
    let text = match tokio::fs::read(&file).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "job {job} of run {id} has no log (it has not started)"
            )));
        }
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read the log of job {job}: {e}"
            )));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/pipelines/{name}/rerun", tag = "api",
    params(("name" = String, Path, description = "A pipeline name (a lowercase DNS label)", min_length = 1, max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A rerun is requested (`executioner rerun NAME`)", body = Accepted),
        (status = 400, description = "Not a pipeline name", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Read-only: no token is configured", body = ErrorBody),
        (status = 404, description = "No such pipeline", body = ErrorBody)))]
pub async fn rerun(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    auth::authorize(app.token.as_ref(), &headers)?;
    let name = pipeline_name(&path(name)?)?;
    let requested = crate::controller::request_rerun(
        &app.store,
        &app.state_dir,
        name.as_str(),
        &indexmap::IndexMap::new(),
    )
    .await?;
    if !requested {
        return Err(ApiError::not_found(format!("pipeline/{name} not found")));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            requested: "rerun",
            pipeline: Some(name.to_string()),
            run: None,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "api",
    params(("id" = i64, Path, description = "A run id", minimum = 1)),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The controller is asked to cancel the run", body = Accepted),
        (status = 400, description = "Not a run id", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 403, description = "Read-only: no token is configured", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run already ended", body = ErrorBody)))]
pub async fn cancel(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    auth::authorize(app.token.as_ref(), &headers)?;
    let id = run_id(&path(id)?)?;
    let run = known_run(&app, id).await?;
    if run.phase.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {id} already ended ({})", run.phase),
        ));
    }
    crate::controller::overlap::request_cancel(&app.state_dir, id)
        .map_err(|e| ApiError::internal(format!("cannot request the cancellation: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            requested: "cancel",
            pipeline: Some(run.pipeline.to_string()),
            run: Some(id),
        }),
    ))
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "executioner",
        description = "The controller's JSON API (the objects of `-o json`), health and metrics."
    ),
    paths(healthz, readyz, metrics, openapi, pipelines, pipeline, rerun, runs, run, cancel, log,
        super::live::log_stream, super::live::events),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The OpenAPI document of this API, pretty-printed (committed as `docs/openapi.json`).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate's version would make the committed copy drift at every release.
    doc.info.version = "v1".into();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_every_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for route in super::super::ROUTES {
            assert!(paths.contains_key(*route), "{route}");
        }
        assert_eq!(paths.len(), super::super::ROUTES.len());
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "unresolved {name}");
        }
    }

    /// schemathesis sends what the document says is valid and expects it accepted: the
    /// document's patterns and lengths agree with the parsers of names and ids.
    #[test]
    fn the_documented_names_and_ids_are_what_the_parsers_accept() {
        let doc: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
        let schema = |path: &str, name: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["schema"].clone())
                .expect(name)
        };
        let documented = |schema: &serde_json::Value, text: &str| {
            let pattern =
                regex::Regex::new(schema["pattern"].as_str().expect("pattern")).expect("regex");
            let len = text.chars().count() as u64;
            pattern.is_match(text)
                && schema["minLength"].as_u64().is_some_and(|m| len >= m)
                && schema["maxLength"].as_u64().is_some_and(|m| len <= m)
        };
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let candidates = [
            "a", "a-b", "-a", "a-", "A", "a.b", ".", "..", "...", ".a", "..a", "a..b", "a_b",
            "a/b", "", "\u{e9}", "x\u{1f}", "0", "9-9", &long, &too_long,
        ];
        let name = schema("/api/v1/pipelines/{name}", "name");
        let filter = schema("/api/v1/runs", "pipeline");
        let job = schema("/api/v1/runs/{id}/jobs/{job}/log", "job");
        for text in candidates {
            let valid = PipelineName::parse(text).is_ok();
            assert_eq!(documented(&name, text), valid, "pipeline name {text:?}");
            assert_eq!(documented(&filter, text), valid, "pipeline filter {text:?}");
            assert_eq!(
                documented(&job, text),
                JobId::parse(text).is_ok(),
                "job id {text:?}"
            );
        }
        for path in ["/api/v1/runs/{id}", "/api/v1/runs/{id}/jobs/{job}/log"] {
            assert_eq!(schema(path, "id")["minimum"], 1, "{path}");
        }
        let limit = schema("/api/v1/runs", "limit");
        assert_eq!(
            (limit["minimum"].clone(), limit["maximum"].clone()),
            (1.into(), MAX_LIMIT.into())
        );
    }
}

//! The controller's HTTP server (DESIGN 10): the router of the JSON API, health and `/metrics`,
//! its limits (URL length, request size, time per request), the JSON error body every failure
//! gets, and serving on its own tokio task so that no request ever holds up the reconcile loop.
//! It reads through the `Store` API only and changes nothing but through the controller's own
//! request mechanisms (a rerun request, a cancel request). Owns neither the handlers (`api`), the
//! metrics (`metrics`) nor the token (`auth`); the CLI binds it and feeds the metrics. The
//! connections, their timeouts and the limits of a request head are `conn`'s.

pub mod api;
pub mod auth;
pub mod conn;
pub mod dag_svg;
pub mod live;
pub mod metrics;
pub mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::controller::permissions::Trust;
use crate::store::{Store, StoreError};
use crate::validate::Options;

/// The longest URL (path and query) served; a longer one is a 414.
pub const MAX_URL: usize = 8 * 1024;
/// The largest request body accepted (no request needs one); a larger one is a 413.
pub const MAX_BODY: u64 = 64 * 1024;
/// How long one request may take before it is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    pub store: Store,
    pub state_dir: PathBuf,
    pub manifests_dir: PathBuf,
    /// How the folder's manifests are validated (as the controller does).
    pub options: Options,
    pub trust: Trust,
    pub metrics: Arc<metrics::Metrics>,
    /// When set, the `POST` requests are enabled for whoever presents it.
    pub token: Option<auth::Token>,
    /// Where the controller's events are published to the pages' live streams.
    pub changes: live::Changes,
}

/// An error answer: its status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(format!("store: {}", crate::error_chain::render(&e)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(api::ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Refuses what is too big before any handler sees it, and bounds the time of the rest: every
/// answer of this layer is JSON too.
async fn limits(request: Request, next: Next) -> Response {
    let url = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if url > MAX_URL {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the URL is longer than {MAX_URL} bytes"),
        )
        .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY)
        || request.headers().contains_key(header::TRANSFER_ENCODING)
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY} bytes (no request needs one)"),
        )
        .into_response();
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable("the request took too long").into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /api/v1/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Every route of the server (each is described in the OpenAPI document; a test checks).
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/pipelines",
    "/api/v1/pipelines/{name}",
    "/api/v1/pipelines/{name}/rerun",
    "/api/v1/runs",
    "/api/v1/runs/{id}",
    "/api/v1/runs/{id}/cancel",
    "/api/v1/runs/{id}/jobs/{job}/log",
    "/api/v1/runs/{id}/jobs/{job}/log/stream",
    "/api/v1/events",
];

/// The router of the API, health and metrics.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(ROUTES[0], get(api::healthz))
        .route(ROUTES[1], get(api::readyz))
        .route(ROUTES[2], get(api::metrics))
        .route(ROUTES[3], get(api::openapi))
        .route(ROUTES[4], get(api::pipelines))
        .route(ROUTES[5], get(api::pipeline))
        .route(ROUTES[6], post(api::rerun))
        .route(ROUTES[7], get(api::runs))
        .route(ROUTES[8], get(api::run))
        .route(ROUTES[9], post(api::cancel))
        .route(ROUTES[10], get(api::log))
        .route(ROUTES[11], get(live::log_stream))
        .route(ROUTES[12], get(live::events))
        .merge(pages::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(limits))
        .with_state(app)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {0:?} is not an address (HOST:PORT, e.g. 127.0.0.1:8080)")]
    BadAddress(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    AddressFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound listener, before it serves.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    /// The address it is bound to (the port chosen when 0 was asked for).
    pub addr: SocketAddr,
}

/// Binds `listen` and records the bound address in `STATE/http.addr` (so that a port 0 bind
/// can be found).
pub async fn bind(listen: &str, state_dir: &std::path::Path) -> Result<Bound, HttpError> {
    let wanted: SocketAddr = listen
        .parse()
        .map_err(|_| HttpError::BadAddress(listen.to_owned()))?;
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .map_err(|source| HttpError::Bind {
            addr: wanted,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: wanted,
        source,
    })?;
    let path = crate::state_dir::http_addr_path(state_dir);
    let file = tempfile::NamedTempFile::new_in(state_dir).and_then(|mut f| {
        std::io::Write::write_all(&mut f, format!("{addr}\n").as_bytes())?;
        f.persist(&path).map_err(|e| e.error)
    });
    file.map_err(|source| HttpError::AddressFile { path, source })?;
    Ok(Bound { listener, addr })
}

/// Serves `app` on `bound` until `stop`; connections in flight are let finish. Through
/// `conn` rather than `axum::serve`: that one sets no header read timeout, and a head too big
/// for hyper would get hyper's bodyless 414/431 instead of our JSON error.
pub async fn serve(bound: Bound, app: Arc<App>, stop: CancellationToken) -> std::io::Result<()> {
    conn::serve(bound.listener, router(app), stop).await
}

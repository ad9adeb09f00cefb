//! The web pages (placeholder until the pages land).

use std::sync::Arc;

use axum::Router;

use super::App;

/// The routes of the pages and their assets.
pub fn router() -> Router<Arc<App>> {
    Router::new()
}

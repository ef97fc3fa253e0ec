//! `GET /healthz` (200 while Redis answers, else 503) and `GET /metrics` (Prometheus).

use crate::app::App;
use crate::http::metrics::Metrics;
use crate::http::problem::Problem;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

pub async fn healthz(State(app): State<Arc<App>>) -> Result<Response, Problem> {
    app.redis.ping().await.map_err(|error| app.failed(&error))?;
    Ok(Json(serde_json::json!({ "status": "ok" })).into_response())
}

pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(error) => {
            Problem::plain(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
        }
    }
}

//! The per-request budget: a request that has not been answered in time gets a 503 with
//! `Retry-After`, whatever it was waiting for.

use super::problem::Problem;
use crate::config::Limits;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub async fn deadline(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit = ?limits.request_timeout, "request timed out");
            Problem::unavailable(
                format!("no answer within {:?}", limits.request_timeout),
                limits.retry_after_secs,
            )
            .into_response()
        }
    }
}

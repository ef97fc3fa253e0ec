//! The routes, and the middleware every route goes through (metrics outermost, then the
//! request deadline, then the body limit).

mod ceiling;
mod coupon;
mod holders;
mod issue;
mod ops;

use crate::app::App;
use crate::config::Limits;
use crate::http::deadline::DeadlineLayer;
use crate::http::metrics::{Metrics, TrackLayer};
use crate::http::problem::Problem;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use axum::Router;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use std::sync::Arc;

/// A request body is `{"user": "…"}`: a few hundred bytes at most.
const MAX_BODY_BYTES: usize = 4 * 1024;

/// The service.
pub fn service(app: Arc<App>) -> Router {
    let (metrics, limits) = (app.metrics.clone(), app.limits);
    let routes = Router::new()
        .route("/coupons/{coupon}/issue", post(issue::issue))
        .route(
            "/coupons/{coupon}/holders/{user}",
            get(holders::check).delete(holders::revoke),
        )
        .route("/coupons/{coupon}", get(coupon::info))
        .route("/healthz", get(ops::healthz))
        .with_state(app);
    with_middleware(routes, metrics, limits)
}

/// The benchmark's ceiling: the issue route answers a constant body, nothing else changes.
pub fn ceiling(metrics: Arc<Metrics>, limits: Limits) -> Router {
    let routes = Router::new()
        .route("/coupons/{coupon}/issue", post(ceiling::issue))
        .route("/healthz", get(ceiling::healthz));
    with_middleware(routes, metrics, limits)
}

fn with_middleware(routes: Router, metrics: Arc<Metrics>, limits: Limits) -> Router {
    metrics
        .request_timeout
        .set(limits.request_timeout.as_secs_f64());
    routes
        .merge(
            Router::new()
                .route("/metrics", get(ops::metrics))
                .with_state(metrics.clone()),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(DeadlineLayer::new(limits))
        .layer(TrackLayer::new(metrics))
}

async fn not_found(uri: Uri) -> Problem {
    Problem::plain(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take this method", uri.path()),
    )
}

/// What a path segment must escape (RFC 3986: everything but unreserved characters and
/// sub-delimiters, `:` and `@`).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `/coupons/{coupon}/holders/{user}`, escaped: the `Location` of an issued coupon.
pub fn holder_path(coupon: &str, user: &str) -> String {
    format!(
        "/coupons/{}/holders/{}",
        utf8_percent_encode(coupon, SEGMENT),
        utf8_percent_encode(user, SEGMENT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_paths_escape_what_a_segment_cannot_hold() {
        assert_eq!(
            holder_path("sale:1", "alice"),
            "/coupons/sale:1/holders/alice"
        );
        assert_eq!(
            holder_path("shop{7}:sale", "a b/c?é"),
            "/coupons/shop%7B7%7D:sale/holders/a%20b%2Fc%3F%C3%A9"
        );
    }
}

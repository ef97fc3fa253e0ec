//! The benchmark's ceiling (`--ceiling`): the same router, middleware and server answering the
//! issue route with a constant JSON body, touching no Redis. What the real service measures
//! below this is what the SDK, Redis and the outcome's answer cost.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const BODY: &str = r#"{"coupon":"ceiling","user":"ceiling","outcome":"issued","seq":1}"#;

pub async fn issue() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        BODY,
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "{\"status\":\"ok\"}"
}

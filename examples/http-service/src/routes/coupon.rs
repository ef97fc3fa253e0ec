//! `GET /coupons/{coupon}`: the campaign and its counters.

use crate::app::App;
use crate::http::problem::Problem;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Serialize)]
struct CouponView<'a> {
    coupon: &'a str,
    stock: u64,
    /// Users holding it now.
    issued: u64,
    /// Stock left: revoked coupons come back.
    remaining: u64,
    revoked: u64,
    last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<WindowView>,
}

#[derive(Debug, Serialize)]
struct WindowView {
    starts: String,
    ends: String,
}

pub async fn info(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    let Path(coupon) = path.map_err(Problem::bad_path)?;
    let campaign = app.campaign(&coupon)?;
    let info = app
        .redis
        .pick()
        .info(&campaign.coupon)
        .await
        .map_err(|error| app.failed(&error))?;
    let at = |ms: u64| {
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    Ok(Json(CouponView {
        coupon: &campaign.coupon,
        stock: campaign.stock,
        issued: info.issued,
        remaining: campaign.stock.saturating_sub(info.issued),
        revoked: info.revoked,
        last_seq: info.last_seq,
        window: campaign.window.map(|w| WindowView {
            starts: at(w.start_ms),
            ends: at(w.end_ms),
        }),
    })
    .into_response())
}

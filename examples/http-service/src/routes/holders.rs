//! `GET /coupons/{coupon}/holders/{user}`: the seq the user holds (200) or 404.
//! `DELETE /coupons/{coupon}/holders/{user}`: revoke, 204, or 404 if they held none.

use crate::app::{valid_user, App};
use crate::http::problem::Problem;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub struct Holder<'a> {
    coupon: &'a str,
    user: &'a str,
    seq: u64,
}

pub async fn check(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, Problem> {
    let Path((coupon, user)) = path.map_err(Problem::bad_path)?;
    let campaign = app.campaign(&coupon)?;
    let user = valid_user(&user)?;
    match app.redis.pick().check(&campaign.coupon, user).await {
        Ok(Some(seq)) => Ok(Json(Holder {
            coupon: &campaign.coupon,
            user,
            seq,
        })
        .into_response()),
        Ok(None) => Err(Problem::not_a_holder(&campaign.coupon, user)),
        Err(error) => Err(app.failed(&error)),
    }
}

/// Not retried on a timeout, unlike issue: if the first revoke went through, a second one
/// answers "not a holder", which would be a wrong 404. The client gets a 503 and decides.
pub async fn revoke(
    State(app): State<Arc<App>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path((coupon, user)) = path.map_err(Problem::bad_path)?;
    let campaign = app.campaign(&coupon)?;
    let user = valid_user(&user)?;
    match app.redis.pick().revoke(&campaign.coupon, user).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(Problem::not_a_holder(&campaign.coupon, user)),
        Err(error) => Err(app.failed(&error)),
    }
}

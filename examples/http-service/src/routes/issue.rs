//! `POST /coupons/{coupon}/issue` with `{"user": "…"}`: 201 issued now, 200 already held
//! (same seq), 409 sold out, 403 outside the sale window.

use crate::app::{valid_user, App};
use crate::config::Campaign;
use crate::http::problem::Problem;
use crate::routes::holder_path;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use coupon_sdk::Outcome;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct IssueRequest {
    user: String,
}

/// The body of a 200 or 201.
#[derive(Debug, Serialize)]
pub struct Holding<'a> {
    pub coupon: &'a str,
    pub user: &'a str,
    pub outcome: &'static str,
    pub seq: u64,
}

pub async fn issue(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<IssueRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Path(coupon) = path.map_err(Problem::bad_path)?;
    let campaign = app.campaign(&coupon)?;
    let Json(request) = body.map_err(Problem::bad_body)?;
    let user = valid_user(&request.user)?;
    let outcome = app.issue(campaign, user).await?;
    let label = match outcome {
        Outcome::Issued { .. } => "issued",
        Outcome::AlreadyIssued { .. } => "already_issued",
        Outcome::SoldOut => "sold_out",
        Outcome::NotStarted => "not_started",
        Outcome::Ended => "ended",
    };
    app.metrics
        .outcomes
        .with_label_values(&[campaign.coupon.as_str(), label])
        .inc();
    answer(campaign, user, outcome, label)
}

fn answer(
    campaign: &Campaign,
    user: &str,
    outcome: Outcome,
    label: &'static str,
) -> Result<Response, Problem> {
    let holding = |seq| Holding {
        coupon: &campaign.coupon,
        user,
        outcome: label,
        seq,
    };
    let location = || {
        HeaderValue::try_from(holder_path(&campaign.coupon, user))
            .map_err(|_| Problem::plain(StatusCode::INTERNAL_SERVER_ERROR, "unencodable user"))
    };
    Ok(match outcome {
        Outcome::Issued { seq } => (
            StatusCode::CREATED,
            [(header::LOCATION, location()?)],
            Json(holding(seq)),
        )
            .into_response(),
        Outcome::AlreadyIssued { seq } => (
            StatusCode::OK,
            [(header::CONTENT_LOCATION, location()?)],
            Json(holding(seq)),
        )
            .into_response(),
        Outcome::SoldOut => Problem::sold_out(campaign).into_response(),
        Outcome::NotStarted => Problem::not_on_sale(campaign, false).into_response(),
        Outcome::Ended => Problem::not_on_sale(campaign, true).into_response(),
    })
}

//! Every error answer is an RFC 9457 problem document (`application/problem+json`): a client
//! reads `status` and `type` to decide, `detail` to explain. Answers that are outcomes of an
//! issue (sold out, not on sale) carry the `outcome` too, like the successful ones.

use crate::config::Campaign;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use coupon_sdk::Error;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// Problem types are tag URIs (RFC 4151): names, not pages to fetch.
const TYPE_PREFIX: &str = "tag:coupon.example,2026:";

/// A problem document; boxed, as it travels in every handler's `Err` and is rarely built.
#[derive(Debug, Clone)]
pub struct Problem(Box<Document>);

#[derive(Debug, Clone, Serialize)]
struct Document {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    #[serde(serialize_with = "as_u16")]
    status: StatusCode,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

fn as_u16<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    /// A problem with no more meaning than its status (`type` `about:blank`).
    pub fn plain(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem(Box::new(Document {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error"),
            status,
            detail: detail.into(),
            coupon: None,
            outcome: None,
            retry_after_secs: None,
        }))
    }

    fn typed(status: StatusCode, slug: &str, title: &'static str, detail: String) -> Self {
        let mut problem = Problem::plain(status, detail);
        problem.0.kind = format!("{TYPE_PREFIX}{slug}");
        problem.0.title = title;
        problem
    }

    fn about(mut self, coupon: &str) -> Self {
        self.0.coupon = Some(coupon.to_string());
        self
    }

    fn outcome(mut self, outcome: &'static str) -> Self {
        self.0.outcome = Some(outcome);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn unknown_campaign(coupon: &str) -> Self {
        Problem::typed(
            StatusCode::NOT_FOUND,
            "unknown-coupon",
            "No such coupon on sale",
            format!("this service sells no coupon {coupon:?}"),
        )
        .about(coupon)
    }

    pub fn not_a_holder(coupon: &str, user: &str) -> Self {
        Problem::typed(
            StatusCode::NOT_FOUND,
            "not-a-holder",
            "The user holds no such coupon",
            format!("{user:?} holds no coupon {coupon:?}"),
        )
        .about(coupon)
    }

    pub fn sold_out(campaign: &Campaign) -> Self {
        Problem::typed(
            StatusCode::CONFLICT,
            "sold-out",
            "Sold out",
            format!("all {} coupons are taken", campaign.stock),
        )
        .about(&campaign.coupon)
        .outcome("sold_out")
    }

    /// Outside the sale window: 403, the same for "not yet" and "no longer", told apart by
    /// `outcome`.
    pub fn not_on_sale(campaign: &Campaign, started: bool) -> Self {
        let at = |ms: u64| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        };
        let (slug, title, outcome, detail) = match (campaign.window, started) {
            (Some(w), false) => (
                "not-started",
                "The sale has not started",
                "not_started",
                format!("the sale opens at {}", at(w.start_ms)),
            ),
            (Some(w), true) => (
                "ended",
                "The sale has ended",
                "ended",
                format!("the sale closed at {}", at(w.end_ms)),
            ),
            (None, false) => (
                "not-started",
                "The sale has not started",
                "not_started",
                "the sale has not opened".into(),
            ),
            (None, true) => (
                "ended",
                "The sale has ended",
                "ended",
                "the sale has closed".into(),
            ),
        };
        Problem::typed(StatusCode::FORBIDDEN, slug, title, detail)
            .about(&campaign.coupon)
            .outcome(outcome)
    }

    pub fn bad_user(detail: &str) -> Self {
        Problem::typed(
            StatusCode::BAD_REQUEST,
            "bad-user",
            "Bad user",
            detail.to_string(),
        )
    }

    /// A body that is not the JSON expected. Axum says 422 for well-formed JSON of the wrong
    /// shape; to a client it is the same mistake as malformed JSON, so both are 400.
    pub fn bad_body(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        Problem::typed(
            status,
            "bad-body",
            "Bad request body",
            rejection.body_text(),
        )
    }

    pub fn bad_path(rejection: PathRejection) -> Self {
        Problem::plain(StatusCode::BAD_REQUEST, rejection.body_text())
    }

    /// Redis failed, did not answer in time, or the request's own budget ran out: 503 with
    /// `Retry-After`, as the client can safely try again (an issue retried answers the seq
    /// the user got).
    pub fn unavailable(detail: String, retry_after_secs: u64) -> Self {
        let mut problem = Problem::typed(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Coupon store unavailable",
            detail,
        );
        problem.0.retry_after_secs = Some(retry_after_secs);
        problem
    }

    /// What an SDK error means to the client.
    pub fn from_sdk(error: &Error, retry_after_secs: u64) -> Self {
        match error {
            // Written but not yet on enough replicas: a retry is safe and waits again.
            Error::Timeout(_) | Error::Connection(_) | Error::NotReplicated { .. } => {
                Problem::unavailable(error.to_string(), retry_after_secs)
            }
            // Redis is there but cannot serve now (loading, failing over, out of memory…).
            Error::Server(e)
                if matches!(
                    e.code(),
                    Some(
                        "LOADING"
                            | "BUSY"
                            | "TRYAGAIN"
                            | "MASTERDOWN"
                            | "CLUSTERDOWN"
                            | "READONLY"
                            | "OOM"
                    )
                ) =>
            {
                Problem::unavailable(error.to_string(), retry_after_secs)
            }
            Error::InvalidInput(why) => Problem::plain(StatusCode::BAD_REQUEST, *why),
            Error::Server(_) | Error::UnexpectedReply(_) => {
                Problem::plain(StatusCode::INTERNAL_SERVER_ERROR, "the coupon store failed")
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.0) {
            Ok(body) => body,
            Err(_) => return self.0.status.into_response(),
        };
        let mut response = (
            self.0.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.0.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_have_the_rfc_9457_members() {
        let campaign: Campaign = "sale=1000".parse().unwrap();
        let value = serde_json::to_value(Problem::sold_out(&campaign).0).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "tag:coupon.example,2026:sold-out",
                "title": "Sold out",
                "status": 409,
                "detail": "all 1000 coupons are taken",
                "coupon": "sale",
                "outcome": "sold_out",
            })
        );
        let response = Problem::unavailable("down".into(), 3).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn sdk_errors_map_to_what_a_client_can_do() {
        let status = |e: Error| Problem::from_sdk(&e, 1).status();
        assert_eq!(
            status(Error::Timeout(None)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let loading = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
            "loading",
        ));
        assert_eq!(
            status(Error::Server(loading)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let failed = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "failed",
        ));
        assert_eq!(
            status(Error::Server(failed)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(Error::InvalidInput("empty")),
            StatusCode::BAD_REQUEST
        );
    }
}

//! What every handler shares: the campaigns, the Redis connections, the metrics, the limits.

use crate::config::{Campaign, Campaigns, Limits};
use crate::http::metrics::Metrics;
use crate::http::problem::Problem;
use crate::pool::RedisPool;
use coupon_sdk::{Error, Outcome};
use std::sync::Arc;

pub struct App {
    pub campaigns: Campaigns,
    pub redis: RedisPool,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

impl App {
    /// The campaign a URL names, or 404.
    pub fn campaign(&self, coupon: &str) -> Result<&Campaign, Problem> {
        self.campaigns
            .get(coupon)
            .ok_or_else(|| Problem::unknown_campaign(coupon))
    }

    /// Issues `campaign` to `user`. A Redis call that timed out is sent again (up to
    /// `--issue-retries` times): if the first did get through, the retry answers
    /// `AlreadyIssued` with the seq it gave, so nothing is issued twice. Connection errors are
    /// not retried here: Redis is down, and the client's own retry after `Retry-After` is the
    /// better one.
    pub async fn issue(&self, campaign: &Campaign, user: &str) -> Result<Outcome, Problem> {
        let mut retries = self.limits.issue_retries;
        loop {
            let coupons = self.redis.pick();
            let (coupon, stock) = (campaign.coupon.as_bytes(), campaign.stock);
            let result = match campaign.window {
                None => coupons.issue(coupon, user, stock).await,
                Some(window) => coupons.issue_in_window(coupon, user, stock, window).await,
            };
            match result {
                Err(error @ Error::Timeout(_)) if retries > 0 => {
                    retries -= 1;
                    self.metrics.redis_error(&error);
                    self.metrics.issue_retries.inc();
                    tracing::info!(coupon = %campaign.coupon, user, %error, "issue timed out; sending it again");
                }
                Err(error) => return Err(self.failed(&error)),
                Ok(outcome) => return Ok(outcome),
            }
        }
    }

    /// The answer to a failed Redis call, counted and logged.
    pub fn failed(&self, error: &Error) -> Problem {
        self.metrics.redis_error(error);
        let problem = Problem::from_sdk(error, self.limits.retry_after_secs);
        if problem.status().is_server_error() {
            tracing::warn!(%error, status = problem.status().as_u16(), "Redis call failed");
        }
        problem
    }
}

/// The user of a request: not empty, and short enough to be a user id rather than a payload.
pub fn valid_user(user: &str) -> Result<&str, Problem> {
    const MAX_USER_BYTES: usize = 256;
    if user.is_empty() {
        Err(Problem::bad_user("user must not be empty"))
    } else if user.len() > MAX_USER_BYTES {
        Err(Problem::bad_user("user must be at most 256 bytes"))
    } else {
        Ok(user)
    }
}

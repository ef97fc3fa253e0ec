//! What every handler shares: the campaigns, the Redis connections, the metrics, the limits.

use crate::config::{Campaign, Campaigns, Limits};
use crate::http::metrics::Metrics;
use crate::http::problem::Problem;
use crate::pool::RedisPool;
use coupon_sdk::{Error, Outcome};
use std::sync::Arc;
use std::time::Duration;

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

    /// Keeps the stock gauges: each campaign's stock, and what is left of it as Redis answers
    /// every `every` — off the request path, so `/metrics` never waits on Redis. One
    /// `info` per campaign and tick: the work grows with the campaigns this service sells, not
    /// with the requests. A failed read keeps the last figure (and is logged at debug: the
    /// requests' own failures are what count as Redis errors).
    pub async fn watch_stock(self: Arc<Self>, every: Duration) {
        for campaign in self.campaigns.iter() {
            let stock = i64::try_from(campaign.stock).unwrap_or(i64::MAX);
            self.metrics
                .stock
                .with_label_values(&[campaign.coupon.as_str()])
                .set(stock);
        }
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut counted_locally = 0;
        loop {
            ticks.tick().await;
            if let Some(local) = self.redis.local_answers() {
                let answered = local.stats().answered_locally;
                let metric = &self.metrics.answered_locally;
                metric.inc_by(answered.saturating_sub(counted_locally));
                counted_locally = answered;
            }
            for campaign in self.campaigns.iter() {
                match self.redis.pick().info(&campaign.coupon).await {
                    Ok(info) => {
                        let left = campaign.stock.saturating_sub(info.issued);
                        self.metrics
                            .remaining
                            .with_label_values(&[campaign.coupon.as_str()])
                            .set(i64::try_from(left).unwrap_or(i64::MAX));
                    }
                    Err(error) => {
                        tracing::debug!(coupon = %campaign.coupon, %error, "reading the stock failed")
                    }
                }
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

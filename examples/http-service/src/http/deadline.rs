//! The per-request budget: a request not answered in time gets a 503 with `Retry-After`,
//! whatever it was waiting for (Redis, or a client that sends its body slowly).
//!
//! A plain tower layer rather than `axum::middleware::from_fn`: it wraps the inner future in
//! place, where `from_fn` boxes it and clones the inner service on every request, which
//! profiling showed to cost about as much as the rest of the routing.

use super::problem::Problem;
use crate::config::Limits;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    limits: Limits,
}

impl DeadlineLayer {
    pub fn new(limits: Limits) -> Self {
        DeadlineLayer { limits }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limits: self.limits,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limits: Limits,
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        DeadlineFuture {
            inner: self.inner.call(request),
            sleep: tokio::time::sleep(self.limits.request_timeout),
            limits: self.limits,
        }
    }
}

pin_project! {
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        limits: Limits,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        ready!(this.sleep.poll(cx));
        let limit = this.limits.request_timeout;
        tracing::warn!(?limit, "request timed out");
        let problem = Problem::unavailable(
            format!("no answer within {limit:?}"),
            this.limits.retry_after_secs,
        );
        Poll::Ready(Ok(problem.into_response()))
    }
}

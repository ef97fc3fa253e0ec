//! The rules every stage follows, each its own small type: when to retry, and when to stop.

pub mod retry;
pub mod shutdown;

pub use retry::{Backoff, Failure, RetryPolicy, Stopped, Until, Verdict};
pub use shutdown::{Shutdown, Trigger};

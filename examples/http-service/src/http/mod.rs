//! HTTP plumbing shared by every route: problem documents, metrics, the request deadline and
//! the listening socket.

pub mod deadline;
pub mod listener;
pub mod metrics;
pub mod problem;

//! The example HTTP service (`examples/http-service`) under test: the process, a small client,
//! the load tools with the shipped scripts, and the spike benchmark.

mod client;
mod service;
pub mod spike;
mod tools;

pub use client::{request, send_raw, HttpResponse};
pub use service::HttpService;
pub use tools::{locust_file, on_path, run_locust, tool_or_skip, wrk_script, LoadRun, Wrk};

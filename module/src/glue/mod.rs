//! The Redis side: argument access, the low-level key API, the one write path, replies.

mod boundary;
mod changes;
mod cluster;
mod commands;
mod eviction;
mod ffi;
pub mod register;
mod reply;
mod stats;
mod store;
mod words;
mod write;

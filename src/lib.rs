//! Spoke: a small, fast service-mesh sidecar proxy. The library holds every part so tests
//! can start them in-process on port 0; `main.rs` only parses the CLI and calls in.

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod ca;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod drain;
pub mod inject;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod redirect;
pub mod rest;
pub mod snapshot;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod watch;
pub mod workers;

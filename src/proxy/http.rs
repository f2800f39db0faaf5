//! HTTP proxying: downstream servers (HTTP/1.1 behind a framing guard, HTTP/2), routing,
//! the upstream connection pool, retries and timeouts, and the responses the proxy makes
//! itself.

pub mod app_ports;
pub mod attempt;
pub mod body;
pub mod forward;
pub mod framer;
pub mod guard;
pub mod headers;
pub mod pool;
pub mod preface;
pub mod retry;
pub mod route;
pub mod server;

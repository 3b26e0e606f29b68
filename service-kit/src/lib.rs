//! What every Jiangwanli service process needs around its domain code: a Postgres pool per
//! schema ([`db`]), the HTTP edge with problem details, JWT auth, request ids, health, readiness
//! and metrics ([`http`], [`problem`], [`extract`], [`auth`]), the OpenAPI document
//! ([`openapi`]), tracing setup ([`telemetry`]), tunables ([`config`]), a circuit breaker with
//! dynamic thresholds ([`breaker`]) and the [`ServiceContext`] handed to each service.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod context;
pub mod db;
pub mod extract;
pub mod http;
pub mod openapi;
pub mod problem;
pub mod telemetry;

pub use config::{ConsolePeers, Settings};
pub use context::ServiceContext;
pub use problem::{ApiError, ApiResult};

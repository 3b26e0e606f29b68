//! RFC 9457 problem details: the one error type of every HTTP handler ([`ApiError`]) and its
//! `application/problem+json` rendering (`{type, title, status, detail[, field]}`).
//!
//! `type` is always `https://jiangwanli.dev/problems/<kind>` where `<kind>` is the kebab-case
//! name of the status ([`problem_type`]). Internal errors are logged with their full cause chain
//! but only a generic detail reaches the client.

use std::error::Error as StdError;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Boxed error carried by [`ApiError::Internal`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result type of HTTP handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type` URI.
pub const PROBLEM_TYPE_BASE: &str = "https://jiangwanli.dev/problems/";

/// `Retry-After` (seconds) sent when the database is momentarily unreachable or saturated.
const DB_RETRY_AFTER_SECS: u64 = 1;

/// An error a handler returns; renders as a problem-details response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `field` is the JSON path / parameter at fault, if one is.
    #[error("bad request: {detail}")]
    BadRequest {
        field: Option<String>,
        detail: String,
    },
    /// 413: the body exceeds the edge's limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: the body is not of a media type the endpoint accepts.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 401: no, malformed or expired credentials (adds `WWW-Authenticate: Bearer`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 403: authenticated, but not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409: the resource's state does not allow this (e.g. cancelling a terminal order).
    #[error("conflict: {0}")]
    Conflict(String),
    /// 422: well-formed but semantically refused (e.g. an idempotency key reused with another body).
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    /// 429 with `Retry-After`: the caller sends faster than the service accepts.
    #[error("too many requests: {detail}")]
    TooManyRequests {
        retry_after_secs: u64,
        detail: String,
    },
    /// 503 with `Retry-After`: the database cannot be reached right now. The response carries
    /// the [`DatabaseFailure`] extension, which the ingest breaker counts.
    #[error("the database is temporarily unavailable")]
    DatabaseUnavailable,
    /// 503 with `Retry-After`.
    #[error("unavailable: {detail}")]
    Unavailable {
        retry_after_secs: u64,
        detail: String,
    },
    /// 500: logged with its cause chain; the client only sees a generic detail.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

/// Marks a response that failed because the database could not be reached (set by
/// [`ApiError::DatabaseUnavailable`]; read by the ingest breaker).
#[derive(Debug, Clone, Copy)]
pub struct DatabaseFailure;

impl ApiError {
    /// 400 naming the field (JSON path or parameter name) at fault.
    pub fn bad_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.into()),
            detail: detail.into(),
        }
    }

    /// 400 not tied to one field.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: None,
            detail: detail.into(),
        }
    }

    /// 500 from any error or message (`ApiError::internal("…")`, `ApiError::internal(err)`).
    pub fn internal(error: impl Into<BoxError>) -> Self {
        Self::Internal(error.into())
    }

    /// 503 with the given `Retry-After`.
    pub fn unavailable(retry_after_secs: u64, detail: impl Into<String>) -> Self {
        Self::Unavailable {
            retry_after_secs,
            detail: detail.into(),
        }
    }

    /// The HTTP status this error renders with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } | Self::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    /// Connection-level trouble (pool timeout, I/O, closed pool, Postgres refusing connections,
    /// serialization failures) is worth retrying → 503; anything else is a bug → 500.
    fn from(error: sqlx::Error) -> Self {
        if is_transient_db_error(&error) {
            tracing::warn!(error = %error, "database unavailable");
            Self::DatabaseUnavailable
        } else {
            Self::Internal(Box::new(error))
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        Self::Internal(error.into())
    }
}

/// True for database errors that say "try again shortly" rather than "this is wrong".
pub(crate) fn is_transient_db_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs that mean "the server cannot serve you right now": connection exceptions (08),
/// insufficient resources (53), operator intervention (57P0x), serialization failure and deadlock.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// The `type` URI of a problem with this status (`…/problems/not-found`, …).
pub fn problem_type(status: StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("error");
    let kebab: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ' || *c == '-')
        .map(|c| {
            if c == ' ' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!("{PROBLEM_TYPE_BASE}{kebab}")
}

/// The JSON body of a problem response (RFC 9457).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://jiangwanli.dev/problems/<kebab-case status name>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The status's name (`Bad Request`).
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a human.
    pub detail: String,
    /// The input field at fault (JSON path or parameter name), for some `400`/`413`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Problem {
    /// A problem for `status` with the given human-readable detail.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            type_uri: problem_type(status),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        // Serializing this struct cannot fail (strings and integers only); fall back to a
        // minimal body rather than panicking if it ever did.
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            Self::BadRequest { field, detail } => Problem::new(status, detail)
                .with_field(field)
                .into_response(),
            Self::PayloadTooLarge => {
                Problem::new(status, "the request body is larger than the server accepts")
                    .into_response()
            }
            Self::Unauthorized(detail) => {
                let mut response = Problem::new(status, detail).into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"jwl\""),
                );
                response
            }
            Self::TooManyRequests {
                retry_after_secs,
                detail,
            }
            | Self::Unavailable {
                retry_after_secs,
                detail,
            } => {
                let mut response = Problem::new(status, detail).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            Self::DatabaseUnavailable => {
                let mut response =
                    Problem::new(status, "the database is temporarily unavailable").into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(DB_RETRY_AFTER_SECS));
                response.extensions_mut().insert(DatabaseFailure);
                response
            }
            Self::Internal(error) => {
                tracing::error!(error = %ErrorChain(error.as_ref()), "internal error");
                Problem::new(status, "an internal error occurred").into_response()
            }
            Self::UnsupportedMediaType(detail)
            | Self::Forbidden(detail)
            | Self::NotFound(detail)
            | Self::Conflict(detail)
            | Self::Unprocessable(detail) => Problem::new(status, detail).into_response(),
        }
    }
}

/// Displays an error followed by its `source()` chain: `outer: middle: root`.
struct ErrorChain<'a>(&'a (dyn StdError + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_type_is_kebab_case_of_the_status() {
        assert_eq!(
            problem_type(StatusCode::NOT_FOUND),
            "https://jiangwanli.dev/problems/not-found"
        );
        assert_eq!(
            problem_type(StatusCode::PAYLOAD_TOO_LARGE),
            "https://jiangwanli.dev/problems/payload-too-large"
        );
        assert_eq!(
            problem_type(StatusCode::INTERNAL_SERVER_ERROR),
            "https://jiangwanli.dev/problems/internal-server-error"
        );
    }

    #[test]
    fn transient_database_errors_are_unavailable() {
        assert_eq!(
            ApiError::from(sqlx::Error::PoolTimedOut).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(sqlx::Error::PoolClosed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            ApiError::from(sqlx::Error::Io(io)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn sqlstates_are_classified() {
        assert!(is_transient_sqlstate("08006"));
        assert!(is_transient_sqlstate("53300"));
        assert!(is_transient_sqlstate("57P03"));
        assert!(is_transient_sqlstate("40001"));
        assert!(!is_transient_sqlstate("23505"));
        assert!(!is_transient_sqlstate("42P01"));
    }
}

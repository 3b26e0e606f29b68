//! Axum extractors whose rejections are problem details naming the field at fault:
//! [`Json`] (body) and [`Path`] (URL parameters).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON request body (requires `Content-Type: application/json` or `…+json`) or response.
///
/// Rejections: wrong/missing content type → 415; body over the edge limit → 413; malformed JSON
/// or a value of the wrong type → 400 whose `field` is the JSON path (`items[0].qty`).
/// Unknown fields are ignored unless the target type denies them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected a request body with `Content-Type: application/json`".to_owned(),
            ));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&body).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Deserializes `body`, naming the JSON path of the first value that does not fit `T`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    Ok(value)
}

fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    let parent = (path != "." && !path.is_empty()).then_some(path);
    // For a missing field serde reports the enclosing object's path; name the field itself.
    let message = inner.to_string();
    let field = match missing_field_name(&message) {
        Some(name) => {
            Some(parent.map_or_else(|| name.to_owned(), |parent| format!("{parent}.{name}")))
        }
        None => parent,
    };
    let detail = match inner.classify() {
        serde_json::error::Category::Data => match &field {
            Some(field) => format!("`{field}`: {message}"),
            None => message,
        },
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("invalid JSON: {message}")
        }
        serde_json::error::Category::Io => format!("could not read the body: {message}"),
    };
    ApiError::BadRequest { field, detail }
}

/// `qty` from serde's "missing field `qty` at line 1 column 9".
fn missing_field_name(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split_once('`')
        .map(|(name, _)| name)
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::bad_request(rejection.body_text())
    }
}

/// `application/json` or any `application/<x>+json`, with or without parameters.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// URL path parameters; a value that does not parse → 400 whose `field` is the parameter name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => {
                let only_param = RawPathParams::from_request_parts(parts, state)
                    .await
                    .ok()
                    .and_then(|params| single_param_name(&params));
                Err(path_error(rejection, only_param))
            }
        }
    }
}

fn single_param_name(params: &RawPathParams) -> Option<String> {
    let mut names = params.iter().map(|(name, _)| name);
    match (names.next(), names.next()) {
        (Some(name), None) => Some(name.to_owned()),
        _ => None,
    }
}

fn path_error(rejection: PathRejection, only_param: Option<String>) -> ApiError {
    use axum::extract::path::ErrorKind;
    match rejection {
        PathRejection::FailedToDeserializePathParams(error) => {
            if error.status().is_server_error() {
                return ApiError::internal(error.body_text());
            }
            let field = match error.kind() {
                ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                _ => only_param,
            };
            let detail = match &field {
                Some(name) => format!("invalid path parameter `{name}`: {}", error.kind()),
                None => format!("invalid path parameter: {}", error.kind()),
            };
            ApiError::BadRequest { field, detail }
        }
        // A handler extracting `Path` on a route without parameters: a programming error.
        other => ApiError::internal(other.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!has_json_content_type(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(has_json_content_type(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(has_json_content_type(&headers));
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!has_json_content_type(&headers));
    }
}

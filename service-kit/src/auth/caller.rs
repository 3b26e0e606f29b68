//! [`Caller`]: the authenticated subject of a request, taken from its `Authorization: Bearer` token.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};

use super::keys::{AuthError, JwtKeys};
use super::scope::Scope;
use crate::problem::ApiError;

/// Who is calling and with which scopes.
///
/// As an extractor it reads the [`JwtKeys`] that [`crate::http::edge`] puts into the request
/// extensions; a missing, malformed, wrongly signed or expired token → 401 problem. A `Caller`
/// already in the extensions (put there by a middleware that authenticated the request) is
/// taken as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`.
    pub subject: String,
    /// The known scopes the token carries.
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Whether the caller holds `scope` (an admin holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.is_admin() || self.scopes.contains(&scope)
    }

    /// `Ok` if the caller holds `scope`, else a 403 problem.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this requires the `{scope}` scope"
            )))
        }
    }

    /// `Ok` if the caller is `owner` (e.g. the customer who placed an order, the courier in the
    /// path) or an admin, else a 403 problem.
    pub fn require_owner_or_admin(&self, owner: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.subject == owner {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this belongs to another subject".to_owned(),
            ))
        }
    }

    /// Whether the token carries the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// Authenticates a raw `Authorization` header value.
    pub fn from_authorization(keys: &JwtKeys, authorization: &str) -> Result<Caller, ApiError> {
        let token = bearer_token(authorization).ok_or_else(|| {
            ApiError::Unauthorized("expected `Authorization: Bearer <token>`".to_owned())
        })?;
        let claims = keys.verify(token).map_err(|error| match error {
            AuthError::Expired => ApiError::Unauthorized("the bearer token has expired".to_owned()),
            _ => ApiError::Unauthorized("the bearer token is invalid".to_owned()),
        })?;
        let scopes = claims.scopes();
        Ok(Caller {
            subject: claims.sub,
            scopes,
        })
    }
}

/// The token of a `Bearer` credential (scheme case-insensitive), if that is what this is.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // already authenticated by a middleware (e.g. the ingest limiter)
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let keys = parts.extensions.get::<JwtKeys>().ok_or_else(|| {
            ApiError::internal(
                "JwtKeys missing from the request extensions (route not behind http::edge)",
            )
        })?;
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing bearer token".to_owned()))?
            .to_str()
            .map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not valid text".to_owned())
            })?;
        Caller::from_authorization(keys, authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn admin_satisfies_every_scope() {
        let admin = Caller {
            subject: "ops".into(),
            scopes: vec![Scope::Admin],
        };
        for scope in Scope::ALL {
            assert!(admin.require(scope).is_ok());
        }
        let customer = Caller {
            subject: "c1".into(),
            scopes: vec![Scope::OrdersWrite],
        };
        assert!(customer.require(Scope::OrdersWrite).is_ok());
        assert!(!customer.is_admin());
        assert!(customer.require_owner_or_admin("c1").is_ok());
        assert!(customer.require_owner_or_admin("c2").is_err());
        assert!(admin.require_owner_or_admin("c2").is_ok());
        assert_eq!(
            customer.require(Scope::CouriersWrite).unwrap_err().status(),
            axum::http::StatusCode::FORBIDDEN
        );
    }
}

/// A caller holding the `admin` scope. As an extractor: 401 without a valid token, 403 without
/// the scope — checked before the path and body of the request are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(Scope::Admin)?;
        Ok(Admin(caller))
    }
}

//! [`JwtKeys`]: issue and verify HS256 bearer tokens with `sub`, `scope`, `iat` and `exp`
//! (and `nbf`, honoured when present).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::scope::Scope;

/// Clock skew tolerated when checking `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The shortest secret a deployment may configure: HS256 is as strong as its key, and RFC 7518
/// asks for a key at least as long as the hash (32 bytes).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a token could not be issued or was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// Malformed, wrongly signed, wrong algorithm, or missing a required claim.
    #[error("the token is invalid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    /// `issue` was given an empty subject.
    #[error("a token subject must not be empty")]
    EmptySubject,
    /// Signing failed.
    #[error("could not sign the token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The claims of a Jiangwanli token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the caller is (customer id, courier id, operator name).
    pub sub: String,
    /// Space-separated scope names.
    #[serde(default)]
    pub scope: String,
    /// Issued at (Unix seconds).
    #[serde(default)]
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
}

impl Claims {
    /// The known scopes in `scope`; unknown names are ignored.
    pub fn scopes(&self) -> Vec<Scope> {
        self.scope
            .split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect()
    }
}

/// The HS256 signing and verification keys of one deployment; cheap to clone.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<KeysInner>,
}

struct KeysInner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(HS256, <secret>)")
    }
}

impl JwtKeys {
    /// Keys for the shared `secret` (`JWL_JWT_SECRET`).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            inner: Arc::new(KeysInner {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
                validation,
            }),
        }
    }

    /// A token for `sub` carrying `scopes`, valid for `ttl` from now.
    pub fn issue(&self, sub: &str, scopes: &[Scope], ttl: Duration) -> Result<String, AuthError> {
        if sub.trim().is_empty() {
            return Err(AuthError::EmptySubject);
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            scope: scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .map_err(AuthError::Sign)
    }

    /// The claims of `token` if it is signed with this secret (HS256 only) and not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(error),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct WithNbf<'a> {
        sub: &'a str,
        exp: u64,
        nbf: u64,
    }

    #[test]
    fn a_token_not_valid_before_a_later_time_is_refused_until_then() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let keys = JwtKeys::new(secret);
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |nbf: u64| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &WithNbf {
                    sub: "cust-1",
                    exp: now + 600,
                    nbf,
                },
                &EncodingKey::from_secret(secret),
            )
            .unwrap()
        };
        assert!(matches!(
            keys.verify(&sign(now + 120)),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(keys.verify(&sign(now)).unwrap().sub, "cust-1");
    }
}

//! [`JwtKeys`]: issue and verify HS256 bearer tokens with `sub`, `scope`, `iat` and `exp`
//! (and `nbf`, honoured when present), and `iss` / `aud` when the deployment names an issuer or
//! an audience ([`JwtKeys::with_issuer`], [`JwtKeys::with_audience`]): then they are set on
//! every token issued and required, with that value, on every token verified.

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
    /// Who issued the token (`JWL_JWT_ISSUER`), when the deployment names an issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whom the token is meant for (`JWL_JWT_AUDIENCE`), when the deployment names an audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
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

#[derive(Clone)]
struct KeysInner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
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
                issuer: None,
                audience: None,
            }),
        }
    }

    /// Issues tokens with `iss` = `issuer` and accepts only tokens carrying exactly that `iss`
    /// (`JWL_JWT_ISSUER`). Without it, `iss` is neither set nor checked.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        let inner = Arc::make_mut(&mut self.inner);
        inner.validation.set_issuer(&[issuer.as_str()]);
        inner.issuer = Some(issuer);
        inner.require_claims();
        self
    }

    /// Issues tokens with `aud` = `audience` and accepts only tokens whose `aud` is (or lists
    /// only) that audience (`JWL_JWT_AUDIENCE`). Without it, a token carrying any `aud` is
    /// refused (RFC 7519: a recipient not named by the audience must reject the token).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        let inner = Arc::make_mut(&mut self.inner);
        inner.validation.set_audience(&[audience.as_str()]);
        inner.audience = Some(audience);
        inner.require_claims();
        self
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
            iss: self.inner.issuer.clone(),
            aud: self.inner.audience.clone(),
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

impl KeysInner {
    /// `exp` and `sub` always; `iss` and `aud` once configured (a token without them is refused).
    fn require_claims(&mut self) {
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        self.validation.set_required_spec_claims(&required);
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

    #[test]
    fn issuer_and_audience_are_set_and_required_once_configured() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let plain = JwtKeys::new(secret);
        let ours = JwtKeys::new(secret)
            .with_issuer("https://auth.jwl.example")
            .with_audience("jwl-api");
        let hour = Duration::from_secs(3600);

        let token = ours.issue("cust-1", &[], hour).unwrap();
        let claims = ours.verify(&token).unwrap();
        assert_eq!(claims.iss.as_deref(), Some("https://auth.jwl.example"));
        assert_eq!(claims.aud.as_deref(), Some("jwl-api"));

        // same secret, but no iss/aud: refused where they are configured
        let bare = plain.issue("cust-1", &[], hour).unwrap();
        assert!(matches!(ours.verify(&bare), Err(AuthError::Invalid(_))));

        let wrong_issuer = JwtKeys::new(secret)
            .with_issuer("https://elsewhere.example")
            .with_audience("jwl-api")
            .issue("cust-1", &[], hour)
            .unwrap();
        assert!(matches!(
            ours.verify(&wrong_issuer),
            Err(AuthError::Invalid(_))
        ));
        let wrong_audience = JwtKeys::new(secret)
            .with_issuer("https://auth.jwl.example")
            .with_audience("another-api")
            .issue("cust-1", &[], hour)
            .unwrap();
        assert!(matches!(
            ours.verify(&wrong_audience),
            Err(AuthError::Invalid(_))
        ));

        // without configuration nothing is set, and an issuer is not checked
        let claims = plain.verify(&bare).unwrap();
        assert_eq!((claims.iss, claims.aud), (None, None));
        let issued_elsewhere = JwtKeys::new(secret)
            .with_issuer("https://auth.jwl.example")
            .issue("cust-1", &[], hour)
            .unwrap();
        assert!(plain.verify(&issued_elsewhere).is_ok());
    }
}

//! Bearer tokens for the test callers, minted in-process with the system's HS256 secret.

use std::time::Duration;

use anyhow::Context;
use jwl_service_kit::auth::{JwtKeys, Scope};

/// Validity of every minted token: longer than any test.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Mints tokens signed with one system's `JWL_JWT_SECRET`.
#[derive(Clone, Debug)]
pub struct Tokens {
    keys: JwtKeys,
}

impl Tokens {
    /// Tokens for the deployment whose secret is `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            keys: JwtKeys::new(secret.as_bytes()),
        }
    }

    /// A customer who places and reads their own orders (`orders:write orders:read`).
    pub fn customer(&self, customer_id: &str) -> anyhow::Result<String> {
        self.issue(customer_id, &[Scope::OrdersWrite, Scope::OrdersRead])
    }

    /// A courier reporting its location and deliveries (`couriers:write`, `sub` = courier id).
    pub fn courier(&self, courier_id: &str) -> anyhow::Result<String> {
        self.issue(courier_id, &[Scope::CouriersWrite])
    }

    /// An operator with every permission (`admin`).
    pub fn admin(&self) -> anyhow::Result<String> {
        self.issue("e2e-operator", &[Scope::Admin])
    }

    /// A token for `subject` with exactly `scopes`.
    pub fn issue(&self, subject: &str, scopes: &[Scope]) -> anyhow::Result<String> {
        self.keys
            .issue(subject, scopes, TOKEN_TTL)
            .with_context(|| format!("minting a token for {subject}"))
    }
}

//! [`Scope`]: the permissions a token can carry.

use std::fmt;
use std::str::FromStr;

/// A permission carried in a token's space-separated `scope` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Place and cancel one's own orders (`orders:write`).
    OrdersWrite,
    /// Read one's own orders (`orders:read`).
    OrdersRead,
    /// Report a courier's location and deliveries (`couriers:write`).
    CouriersWrite,
    /// Everything (`admin`).
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [
        Scope::OrdersWrite,
        Scope::OrdersRead,
        Scope::CouriersWrite,
        Scope::Admin,
    ];

    /// The wire name (`"orders:write"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::OrdersWrite => "orders:write",
            Scope::OrdersRead => "orders:read",
            Scope::CouriersWrite => "couriers:write",
            Scope::Admin => "admin",
        }
    }

    /// The scope with this wire name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one of [`Scope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope `{0}` (expected one of: orders:write, orders:read, couriers:write, admin)")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s).ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert_eq!(
            "orders:delete".parse::<Scope>(),
            Err(UnknownScope("orders:delete".into()))
        );
    }
}

//! Bearer-token authentication: scopes ([`Scope`]), HS256 token issue/verify ([`JwtKeys`]) and
//! the [`Caller`] extractor handlers use to learn who is calling and check what they may do.

mod caller;
mod keys;
mod scope;

pub use caller::{Admin, Caller};
pub use keys::{AuthError, Claims, JwtKeys, MIN_SECRET_BYTES};
pub use scope::{Scope, UnknownScope};

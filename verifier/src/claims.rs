//! What a token says: its kind (the `typ` header) and its claims.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TokenId, UserId};

/// The two token kinds; each has its own `typ` header, and one is never
/// accepted where the other is expected (RFC 8725 §3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Short-lived bearer token for resource servers (`typ: at+jwt`, the
    /// media type of RFC 9068).
    Access,
    /// Long-lived token accepted only by the auth server's Refresh and
    /// Logout (`typ: rt+jwt`).
    Refresh,
}

impl TokenKind {
    /// The JOSE `typ` header value of this kind.
    pub fn typ(self) -> &'static str {
        match self {
            Self::Access => "at+jwt",
            Self::Refresh => "rt+jwt",
        }
    }
}

/// The claims of both token kinds. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer (`AUTH_ISSUER`).
    pub iss: String,
    /// Audience (`AUTH_AUDIENCE`); a single string, never a list.
    pub aud: String,
    /// The user id.
    pub sub: UserId,
    /// The session id (the refresh-token family).
    pub sid: SessionId,
    /// The token id; for refresh tokens, what the session row stores.
    pub jti: TokenId,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// The claims of an access token (the name downstream services used first).
pub type AccessClaims = Claims;

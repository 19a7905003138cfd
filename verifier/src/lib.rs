//! The RealChat Auth token rules, in one place: the auth server mints and
//! verifies its tokens through this crate, and downstream services verify
//! access tokens with it, offline, against the JWK Set the auth server
//! publishes at `GET /.well-known/jwks.json` on its HTTP port.
//!
//! ```text
//! let jwks = fetch("http://auth:9464/.well-known/jwks.json")?; // any HTTP client
//! let verifier = Verifier::from_jwks(&jwks, "realchat-auth", "realchat")?;
//! let claims = verifier.verify(bearer_token)?;   // claims.sub is the user id
//! ```
//!
//! - [`Verifier`]: the acceptance rules (RFC 8725, RFC 9068, RFC 7515
//!   §4.1.11), listed on the type.
//! - [`VerificationKey`]: a public key with its `kid` (RFC 7638 thumbprint)
//!   and the one algorithm it allows (EdDSA for Ed25519, ES256 for P-256).
//! - [`Claims`], [`TokenKind`]: what a token says, and its `typ`.
//! - [`UserId`], [`SessionId`], [`TokenId`]: typed ids (with the `sqlx`
//!   feature, storable as `uuid` columns).
//!
//! Re-fetch the set when a token names an unknown `kid` (a new key was
//! published) and at the `max-age` the server sends.

mod claims;
mod ids;
mod keys;
mod verify;

pub use claims::{AccessClaims, Claims, TokenKind};
pub use ids::{SessionId, TokenId, UserId};
pub use jsonwebtoken::Algorithm;
pub use keys::VerificationKey;
pub use verify::Verifier;

/// Why a JWK Set or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The JWK Set is not JSON of the expected shape, or holds no usable key.
    #[error("unusable JWK Set: {0}")]
    Jwks(String),
    /// The token was refused: bad header, unknown `kid`, algorithm not
    /// allowed for the key, a `crit` header, bad signature, or claims out
    /// of bounds. The reason is for logs only.
    #[error("token refused: {0}")]
    Token(String),
}

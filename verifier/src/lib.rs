//! Verify RealChat Auth access tokens in a downstream service, offline,
//! against the JWK Set the auth server publishes at
//! `GET /.well-known/jwks.json` on its HTTP port.
//!
//! ```text
//! let jwks = fetch("http://auth:9464/.well-known/jwks.json")?; // any HTTP client
//! let verifier = Verifier::from_jwks(&jwks, "realchat-auth", "realchat")?;
//! let claims = verifier.verify(bearer_token)?;   // claims.sub is the user id
//! ```
//!
//! Verification follows RFC 8725 and RFC 9068: the header must say `typ:
//! at+jwt` (so a refresh token is refused), name a `kid` of the set, and use
//! the algorithm that key allows (EdDSA for Ed25519 keys, ES256 for P-256
//! keys; never `none` or HMAC); `exp`, `iat`, `iss`, `aud` and `sub` are
//! required, `iss` and `aud` must match, and `exp` gets a small leeway
//! (default 30 s). Re-fetch the set when a token names an unknown `kid` (a
//! new key was published) and at the `max-age` the server sends.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The claims of a RealChat access token. Times are seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id (UUID).
    pub sub: String,
    /// The session id (UUID).
    pub sid: String,
    /// The token id (UUID).
    pub jti: String,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
}

/// Why a JWK Set or a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The JWK Set is not JSON of the expected shape, or holds no usable key.
    #[error("unusable JWK Set: {0}")]
    Jwks(String),
    /// The token was refused: bad header, unknown `kid`, algorithm not
    /// allowed for the key, bad signature, or claims out of bounds.
    #[error("token refused: {0}")]
    Token(String),
}

struct Key {
    kid: String,
    alg: Algorithm,
    decoding: DecodingKey,
}

/// Verifies access tokens with the keys of one JWK Set.
pub struct Verifier {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl Verifier {
    /// Builds a verifier from a JWK Set document (RFC 7517 §5). Keys other
    /// than Ed25519 (OKP) and P-256 (EC) ones, and keys without a `kid`,
    /// are ignored.
    ///
    /// # Errors
    /// [`VerifyError::Jwks`] when the document is not a JWK Set or has no
    /// usable key.
    pub fn from_jwks(
        jwks: &str,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, VerifyError> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| VerifyError::Jwks(e.to_string()))?;
        let keys: Vec<Key> = set.keys.iter().filter_map(key).collect();
        if keys.is_empty() {
            return Err(VerifyError::Jwks("no usable key".into()));
        }
        Ok(Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 30,
        })
    }

    /// Sets the clock skew tolerated on `exp`, seconds (default 30).
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway_secs = secs;
        self
    }

    /// The `kid`s of the usable keys.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.kid.as_str())
    }

    /// Verifies an access token and returns its claims.
    ///
    /// # Errors
    /// [`VerifyError::Token`] for anything but a valid access token of this
    /// issuer and audience signed by a key of the set.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, VerifyError> {
        let refuse = |why: String| VerifyError::Token(why);
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(e.to_string()))?;
        if header.typ.as_deref() != Some("at+jwt") {
            return Err(refuse(format!("typ {:?} is not at+jwt", header.typ)));
        }
        let key = self
            .keys
            .iter()
            .find(|k| Some(k.kid.as_str()) == header.kid.as_deref())
            .ok_or_else(|| refuse(format!("unknown kid {:?}", header.kid)))?;
        if header.alg != key.alg {
            return Err(refuse(format!(
                "algorithm {:?} not allowed for this key",
                header.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map_err(|e| refuse(e.to_string()))?
            .claims;
        // `iat` ahead of our clock by more than the leeway: refused.
        let latest = jsonwebtoken::get_current_timestamp().saturating_add(self.leeway_secs);
        if u64::try_from(claims.iat).is_ok_and(|iat| iat > latest) {
            return Err(refuse("iat is in the future beyond the leeway".into()));
        }
        // A token issued before 1970 or after it expires is no real token.
        if claims.iat < 0 || claims.iat > claims.exp {
            return Err(refuse("iat is negative or after exp".into()));
        }
        Ok(claims)
    }
}

/// The key of a JWK, with the one algorithm it allows.
fn key(jwk: &Jwk) -> Option<Key> {
    let kid = jwk.kid.clone()?;
    let (alg, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("OKP", Some("Ed25519")) => (
            Algorithm::EdDSA,
            DecodingKey::from_ed_components(jwk.x.as_deref()?).ok()?,
        ),
        ("EC", Some("P-256")) => (
            Algorithm::ES256,
            DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?).ok()?,
        ),
        _ => return None,
    };
    // A key that names another algorithm than its type allows is unusable.
    let named = match alg {
        Algorithm::EdDSA => "EdDSA",
        _ => "ES256",
    };
    if jwk.alg.as_deref().is_some_and(|a| a != named) {
        return None;
    }
    Some(Key { kid, alg, decoding })
}

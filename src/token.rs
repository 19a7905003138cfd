//! Minting tokens: the signing key, the claims of each kind, and the pair a
//! Login or Refresh returns. The acceptance rules are not here: they are the
//! verifier crate's ([`Verifier`]), the one implementation the server and
//! every downstream service share.
//!
//! Tokens are signed with Ed25519 (`alg: EdDSA`, RFC 8037; the default) or
//! P-256 (`alg: ES256`) and carry the key's `kid` (its RFC 7638 JWK
//! thumbprint) and the `typ` of their kind (`at+jwt` per RFC 9068,
//! `rt+jwt`).

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
pub use realchat_auth_verifier::{Claims, TokenKind};
use realchat_auth_verifier::{SessionId, TokenId, UserId, VerificationKey, Verifier, VerifyError};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

/// Why a token could not be minted or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Signature, header, claims or lifetime are not acceptable. The detail is
    /// for logs only; clients get UNAUTHENTICATED without it.
    #[error("token refused: {0}")]
    Invalid(String),
    /// Signing failed (a bug or a broken key).
    #[error("token signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Why a signing key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file cannot be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file named in `AUTH_SIGNING_KEY_FILE`.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The key file is not a usable key in PEM.
    #[error("key file {path} is not usable: {reason}")]
    Parse {
        /// The file named in `AUTH_SIGNING_KEY_FILE`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The system RNG failed.
    #[error("cannot generate an Ed25519 key: {0}")]
    Generate(String),
}

/// Loads a key that only verifies (a previous or next key during rotation)
/// from a PEM file: a PKCS#8 Ed25519 or P-256 private key (`PRIVATE KEY`)
/// or its public key (`PUBLIC KEY`, as `openssl pkey -pubout` writes).
///
/// # Errors
/// [`KeyError::Read`] or [`KeyError::Parse`].
pub fn verification_key_from_pem_file(path: &Path) -> Result<VerificationKey, KeyError> {
    let (pem, parse) = read_pem(path)?;
    match pem.tag() {
        "PRIVATE KEY" => Ok(SigningKey::from_pkcs8(pem.contents())
            .ok_or_else(|| parse("not a PKCS#8 Ed25519 or P-256 key".into()))?
            .public),
        "PUBLIC KEY" => VerificationKey::from_spki_der(pem.contents())
            .ok_or_else(|| parse("not an Ed25519 or P-256 public key".into())),
        other => Err(parse(format!(
            "expected a PRIVATE KEY or PUBLIC KEY block, found {other}"
        ))),
    }
}

/// A signing key (Ed25519 by default, or P-256) with its public half.
pub struct SigningKey {
    encoding: EncodingKey,
    public: VerificationKey,
}

/// Reads a PEM file; returns it and a constructor of parse errors naming
/// the file.
fn read_pem(path: &Path) -> Result<(pem::Pem, impl Fn(String) -> KeyError), KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let parse = move |reason: String| KeyError::Parse {
        path: shown.clone(),
        reason,
    };
    let mut blocks = pem::parse_many(text).map_err(|e| parse(e.to_string()))?;
    if blocks.len() != 1 {
        return Err(parse(format!(
            "expected one PEM block, found {}",
            blocks.len()
        )));
    }
    let pem = blocks.remove(0);
    Ok((pem, parse))
}

impl SigningKey {
    /// Loads a PKCS#8 private key from a PEM file: Ed25519 (`openssl genpkey
    /// -algorithm ed25519`, signs with EdDSA) or P-256 (`openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256`, signs with ES256).
    ///
    /// # Errors
    /// [`KeyError::Read`] or [`KeyError::Parse`].
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let (pem, parse) = read_pem(path)?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(parse(format!(
                "expected a PRIVATE KEY block, found {}",
                pem.tag()
            )));
        }
        Self::from_pkcs8(pem.contents())
            .ok_or_else(|| parse("not a PKCS#8 Ed25519 or P-256 key".into()))
    }

    /// Generates a fresh Ed25519 key. Tokens signed with it do not survive a
    /// restart.
    ///
    /// # Errors
    /// [`KeyError::Generate`] when the system RNG fails.
    pub fn generate() -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_pkcs8(pkcs8.as_ref()).ok_or_else(|| KeyError::Generate("key rejected".into()))
    }

    fn from_pkcs8(der: &[u8]) -> Option<Self> {
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Some(Self {
                encoding: EncodingKey::from_ed_der(der),
                public: VerificationKey::ed25519(pair.public_key().as_ref()),
            });
        }
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).ok()?;
        Some(Self {
            encoding: EncodingKey::from_ec_der(der),
            public: VerificationKey::p256(pair.public_key().as_ref())?,
        })
    }

    /// The key id: the RFC 7638 JWK thumbprint (SHA-256, base64url) of the
    /// public key.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// Access-token lifetime (whole seconds).
    pub access_ttl: Duration,
    /// Refresh-token lifetime (whole seconds; each rotation starts a new one).
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on exp, nbf and iat (whole seconds).
    pub leeway: Duration,
}

/// A freshly issued access token and refresh token.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// The access token (JWT, `typ: at+jwt`).
    pub access_token: String,
    /// The refresh token (JWT, `typ: rt+jwt`).
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub access_expires_in: i64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
}

/// Mints tokens with the active signing key and verifies them, through the
/// verifier crate, with it or with any verification-only key (the previous
/// and next keys of a rotation).
pub struct TokenService {
    key: SigningKey,
    verifier: Verifier,
    settings: TokenSettings,
}

impl TokenService {
    /// A token service signing with `key` and accepting no other key.
    pub fn new(key: SigningKey, settings: TokenSettings) -> Self {
        Self::with_verification_keys(key, Vec::new(), settings)
    }

    /// A token service signing with `key` that also accepts tokens signed
    /// by `verification_only` (keys equal to `key` are dropped).
    pub fn with_verification_keys(
        key: SigningKey,
        verification_only: Vec<VerificationKey>,
        settings: TokenSettings,
    ) -> Self {
        let mut seen = std::collections::HashSet::new();
        let keys = std::iter::once(key.public.clone())
            .chain(verification_only)
            .filter(|k| seen.insert(k.kid().to_owned()))
            .collect();
        let verifier = Verifier::new(keys, &settings.issuer, &settings.audience)
            .with_leeway(settings.leeway.as_secs());
        Self {
            key,
            verifier,
            settings,
        }
    }

    /// The public keys that verify tokens, the signing key first, as a JWK
    /// Set (RFC 7517 §5): `{"keys": [...]}`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .verifier
            .keys()
            .iter()
            .map(VerificationKey::jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Builds the claims of a token of `kind` issued at `iat` (seconds).
    pub fn claims(
        &self,
        kind: TokenKind,
        sub: UserId,
        sid: SessionId,
        jti: TokenId,
        iat: i64,
    ) -> Claims {
        let ttl = match kind {
            TokenKind::Access => self.settings.access_ttl,
            TokenKind::Refresh => self.settings.refresh_ttl,
        };
        Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub,
            sid,
            jti,
            iat,
            // The settings bound lifetimes to a year: no overflow.
            exp: iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        }
    }

    /// Signs `claims` as a token of `kind`. Ed25519 signatures are
    /// deterministic, so the same claims give the same token string.
    ///
    /// # Errors
    /// [`TokenError::Sign`].
    pub fn mint(&self, kind: TokenKind, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(self.key.public.algorithm());
        header.typ = Some(kind.typ().to_owned());
        header.kid = Some(self.key.kid().to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.key.encoding)?)
    }

    /// Mints `refresh` and a new access token of the same session, issued
    /// at `now` (seconds): one clock reading for the pair, so `expires_in`
    /// is exactly the configured lifetime.
    ///
    /// # Errors
    /// [`TokenError::Sign`].
    pub fn pair(&self, refresh: &Claims, now: i64) -> Result<TokenPair, TokenError> {
        let access = self.claims(
            TokenKind::Access,
            refresh.sub,
            refresh.sid,
            TokenId::new_random(),
            now,
        );
        Ok(TokenPair {
            access_token: self.mint(TokenKind::Access, &access)?,
            refresh_token: self.mint(TokenKind::Refresh, refresh)?,
            access_expires_in: access.exp - now,
            refresh_expires_in: (refresh.exp - now).max(0),
        })
    }

    /// Verifies a token of `kind` and returns its claims, by the verifier
    /// crate's rules.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] with the rule the token breaks.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<Claims, TokenError> {
        self.verifier.verify_as(kind, token).map_err(|e| match e {
            VerifyError::Token(why) | VerifyError::Jwks(why) => TokenError::Invalid(why),
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;

    use super::*;

    fn service_with_leeway(leeway_secs: u64) -> TokenService {
        TokenService::new(
            SigningKey::generate().unwrap(),
            TokenSettings {
                issuer: "iss".into(),
                audience: "aud".into(),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
                leeway: Duration::from_secs(leeway_secs),
            },
        )
    }

    fn service() -> TokenService {
        service_with_leeway(0)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn ids() -> (UserId, SessionId, TokenId) {
        (UserId::new_v7(), SessionId::new_v7(), TokenId::new_random())
    }

    #[test]
    fn round_trip_and_kinds_do_not_mix() {
        let tokens = service();
        let (sub, sid, jti) = ids();
        let claims = tokens.claims(TokenKind::Refresh, sub, sid, jti, now());
        let token = tokens.mint(TokenKind::Refresh, &claims).unwrap();
        assert_eq!(tokens.verify(TokenKind::Refresh, &token).unwrap(), claims);
        assert!(tokens.verify(TokenKind::Access, &token).is_err());
        // Deterministic signatures: re-minting gives the same string.
        assert_eq!(tokens.mint(TokenKind::Refresh, &claims).unwrap(), token);
    }

    #[test]
    fn another_key_and_expired_are_refused() {
        let (a, b) = (service(), service());
        let (sub, sid, jti) = ids();
        let claims = a.claims(TokenKind::Access, sub, sid, jti, now());
        let token = a.mint(TokenKind::Access, &claims).unwrap();
        assert!(b.verify(TokenKind::Access, &token).is_err());
        let old = a.claims(TokenKind::Access, sub, sid, jti, now() - 10_000);
        let expired = a.mint(TokenKind::Access, &old).unwrap();
        assert!(a.verify(TokenKind::Access, &expired).is_err());
    }

    #[test]
    fn iat_slightly_ahead_is_accepted_and_nbf_ahead_is_not() {
        // Replicas' clocks differ a little: a token "issued" 20 s from now
        // by a fast clock still verifies within the leeway (30 s here; RFC
        // 8725 leaves iat to policy).
        let tokens = service_with_leeway(30);
        let (sub, sid, jti) = ids();
        let ahead = tokens.claims(TokenKind::Access, sub, sid, jti, now() + 20);
        let token = tokens.mint(TokenKind::Access, &ahead).unwrap();
        assert!(tokens.verify(TokenKind::Access, &token).is_ok());
        // Further ahead than the leeway: refused.
        let far = tokens.claims(TokenKind::Access, sub, sid, jti, now() + 40);
        let token = tokens.mint(TokenKind::Access, &far).unwrap();
        assert!(tokens.verify(TokenKind::Access, &token).is_err());
        // A token that says it is not valid yet is refused.
        let mut claims = serde_json::to_value(&ahead).unwrap();
        claims["nbf"] = (now() + 3600).into();
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(tokens.key.kid().to_owned());
        let early = jsonwebtoken::encode(&header, &claims, &tokens.key.encoding).unwrap();
        assert!(tokens.verify(TokenKind::Access, &early).is_err());
    }

    #[test]
    fn a_bad_key_file_names_itself() {
        let missing = Path::new("/nonexistent/key.pem");
        assert!(matches!(
            SigningKey::from_pem_file(missing),
            Err(KeyError::Read { .. })
        ));
        let path = std::env::temp_dir().join(format!("rc-bad-key-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let error = SigningKey::from_pem_file(&path).err().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(error, KeyError::Parse { .. }));
        assert!(error.to_string().contains(&path.display().to_string()));
    }
}

//! JWT mint and verify: the signing key, the claims and the two token kinds.
//!
//! Tokens are signed with Ed25519 (`alg: EdDSA`, RFC 8037; the default) or
//! P-256 (`alg: ES256`) and carry the key's `kid` (its RFC 7638 JWK
//! thumbprint). Verification follows RFC 8725: the `kid` must be the signing
//! key's or a verification-only key's, the algorithm must be that key's one,
//! the `typ` header must name the expected kind (`at+jwt` for access tokens
//! per RFC 9068, `rt+jwt` for refresh tokens), and exp, iat, iss, aud and sub
//! are required; `iat` may be ahead of our clock by the leeway at most.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

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

/// The two token kinds; each has its own `typ` header, and one is never
/// accepted where the other is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Short-lived bearer token for resource servers (RFC 9068).
    Access,
    /// Long-lived token accepted only by Refresh and Logout.
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
    pub sub: Uuid,
    /// The session id (the refresh-token family).
    pub sid: Uuid,
    /// The token id; for refresh tokens, what the session row stores.
    pub jti: Uuid,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// A public key that verifies tokens, with its `kid` and the one algorithm
/// it allows (RFC 8725 §3.1: an algorithm allow-list per key).
pub struct VerificationKey {
    kid: String,
    alg: Algorithm,
    jwk: serde_json::Value,
    decoding: DecodingKey,
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key
/// follows it.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480); the 65-byte
/// uncompressed point follows it.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl VerificationKey {
    /// An Ed25519 key (EdDSA) from its 32 public bytes.
    fn ed25519(public: &[u8]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public);
        Self::from_jwk_members(
            Algorithm::EdDSA,
            "EdDSA",
            // RFC 7638 members in lexicographic order (RFC 8037 §2).
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            DecodingKey::from_ed_der(public),
        )
    }

    /// A P-256 key (ES256) from its 65-byte uncompressed point.
    fn p256(point: &[u8]) -> Option<Self> {
        if point.len() != 65 || point[0] != 0x04 {
            return None;
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        let decoding = DecodingKey::from_ec_components(&x, &y).ok()?;
        Some(Self::from_jwk_members(
            Algorithm::ES256,
            "ES256",
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
            decoding,
        ))
    }

    fn from_jwk_members(
        alg: Algorithm,
        alg_name: &str,
        thumbprint_input: String,
        mut jwk: serde_json::Value,
        decoding: DecodingKey,
    ) -> Self {
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            thumbprint_input.as_bytes(),
        ));
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = alg_name.into();
        jwk["use"] = "sig".into();
        Self {
            kid,
            alg,
            jwk,
            decoding,
        }
    }

    /// Loads a key that only verifies (a previous or next key during
    /// rotation) from a PEM file: a PKCS#8 Ed25519 or P-256 private key
    /// (`PRIVATE KEY`) or its public key (`PUBLIC KEY`, as `openssl pkey
    /// -pubout` writes).
    ///
    /// # Errors
    /// [`KeyError::Read`] or [`KeyError::Parse`].
    pub fn from_pem_file(path: &Path) -> Result<Self, KeyError> {
        let (pem, parse) = read_pem(path)?;
        match pem.tag() {
            "PRIVATE KEY" => Ok(SigningKey::from_pkcs8(pem.contents())
                .ok_or_else(|| parse("not a PKCS#8 Ed25519 or P-256 key".into()))?
                .public),
            "PUBLIC KEY" => {
                let der = pem.contents();
                if let Some(public) = der.strip_prefix(&ED25519_SPKI_PREFIX[..])
                    && public.len() == 32
                {
                    return Ok(Self::ed25519(public));
                }
                der.strip_prefix(&P256_SPKI_PREFIX[..])
                    .and_then(Self::p256)
                    .ok_or_else(|| parse("not an Ed25519 or P-256 public key".into()))
            }
            other => Err(parse(format!(
                "expected a PRIVATE KEY or PUBLIC KEY block, found {other}"
            ))),
        }
    }

    /// The key id: the RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (RFC 7517; RFC 8037 for Ed25519) with `kid`,
    /// `alg` (EdDSA or ES256) and `use` sig.
    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
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
        &self.public.kid
    }
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// Access-token lifetime, seconds.
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime, seconds (each rotation starts a new one).
    pub refresh_ttl_secs: i64,
    /// Clock skew tolerated on exp, seconds.
    pub leeway_secs: u64,
}

/// Mints tokens with the active signing key and verifies them with it or
/// with any verification-only key (the previous and next keys of a
/// rotation).
pub struct TokenService {
    key: SigningKey,
    verification_only: Vec<VerificationKey>,
    settings: TokenSettings,
    validation: Validation,
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
        mut verification_only: Vec<VerificationKey>,
        settings: TokenSettings,
    ) -> Self {
        let mut seen = std::collections::HashSet::from([key.public.kid.clone()]);
        verification_only.retain(|k| seen.insert(k.kid.clone()));
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = settings.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            key,
            verification_only,
            settings,
            validation,
        }
    }

    /// The public keys that verify tokens, the signing key first, as a JWK
    /// Set (RFC 7517 §5): `{"keys": [...]}`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = std::iter::once(&self.key.public)
            .chain(&self.verification_only)
            .map(VerificationKey::jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Builds the claims of a token of `kind` issued at `iat` (seconds).
    pub fn claims(&self, kind: TokenKind, sub: Uuid, sid: Uuid, jti: Uuid, iat: i64) -> Claims {
        let ttl = match kind {
            TokenKind::Access => self.settings.access_ttl_secs,
            TokenKind::Refresh => self.settings.refresh_ttl_secs,
        };
        Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub,
            sid,
            jti,
            iat,
            exp: iat + ttl,
        }
    }

    /// Signs `claims` as a token of `kind`. Ed25519 signatures are
    /// deterministic, so the same claims give the same token string.
    ///
    /// # Errors
    /// [`TokenError::Sign`].
    pub fn mint(&self, kind: TokenKind, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(self.key.public.alg);
        header.typ = Some(kind.typ().to_owned());
        header.kid = Some(self.key.public.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key.encoding)?)
    }

    /// Verifies a token of `kind` and returns its claims.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for any header, signature or claim problem:
    /// `alg` other than the key's (including `none`), wrong `typ`, unknown
    /// `kid`, bad signature, wrong iss/aud, missing claims, expired, not yet
    /// valid (`nbf`), or `iat` further ahead than the leeway.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<Claims, TokenError> {
        let invalid = |why: String| TokenError::Invalid(why);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if header.typ.as_deref() != Some(kind.typ()) {
            return Err(invalid(format!(
                "typ {:?} is not {}",
                header.typ,
                kind.typ()
            )));
        }
        let key = std::iter::once(&self.key.public)
            .chain(&self.verification_only)
            .find(|k| Some(k.kid.as_str()) == header.kid.as_deref())
            .ok_or_else(|| invalid(format!("unknown kid {:?}", header.kid)))?;
        // The one algorithm this key allows: never `none`, HMAC or another
        // key type's algorithm under this kid.
        if header.alg != key.alg {
            return Err(invalid(format!(
                "algorithm {:?} not allowed for this key",
                header.alg
            )));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.alg];
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        // `iat` a little ahead (another replica's clock) is fine; further
        // ahead than the leeway, the token was not made by a sane issuer.
        let latest = jsonwebtoken::get_current_timestamp().saturating_add(validation.leeway);
        if u64::try_from(data.claims.iat).is_ok_and(|iat| iat > latest) {
            return Err(invalid("iat is in the future beyond the leeway".into()));
        }
        // Nothing we mint is issued before 1970 or after it expires.
        if data.claims.iat < 0 || data.claims.iat > data.claims.exp {
            return Err(invalid("iat is negative or after exp".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new(
            SigningKey::generate().unwrap(),
            TokenSettings {
                issuer: "iss".into(),
                audience: "aud".into(),
                access_ttl_secs: 900,
                refresh_ttl_secs: 3600,
                leeway_secs: 0,
            },
        )
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn round_trip_and_kinds_do_not_mix() {
        let tokens = service();
        let claims = tokens.claims(
            TokenKind::Refresh,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            now(),
        );
        let token = tokens.mint(TokenKind::Refresh, &claims).unwrap();
        assert_eq!(tokens.verify(TokenKind::Refresh, &token).unwrap(), claims);
        assert!(tokens.verify(TokenKind::Access, &token).is_err());
        // Deterministic signatures: re-minting gives the same string.
        assert_eq!(tokens.mint(TokenKind::Refresh, &claims).unwrap(), token);
    }

    #[test]
    fn another_key_and_expired_are_refused() {
        let (a, b) = (service(), service());
        let claims = a.claims(
            TokenKind::Access,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            now(),
        );
        let token = a.mint(TokenKind::Access, &claims).unwrap();
        assert!(b.verify(TokenKind::Access, &token).is_err());
        let old = a.claims(
            TokenKind::Access,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            now() - 10_000,
        );
        let expired = a.mint(TokenKind::Access, &old).unwrap();
        assert!(a.verify(TokenKind::Access, &expired).is_err());
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint() {
        // RFC 8037 Appendix A.3: thumbprint of the example Ed25519 key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            VerificationKey::ed25519(&x).kid(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn iat_slightly_ahead_is_accepted_and_nbf_ahead_is_not() {
        // Replicas' clocks differ a little: a token "issued" 20 s from now
        // by a fast clock still verifies within the leeway (30 s here; RFC
        // 8725 leaves iat to policy).
        let mut tokens = service();
        tokens.validation.leeway = 30;
        let ahead = tokens.claims(
            TokenKind::Access,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            now() + 20,
        );
        let token = tokens.mint(TokenKind::Access, &ahead).unwrap();
        assert!(tokens.verify(TokenKind::Access, &token).is_ok());
        // Further ahead than the leeway: refused.
        let far = tokens.claims(
            TokenKind::Access,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            now() + 40,
        );
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
        let missing = std::path::Path::new("/nonexistent/key.pem");
        assert!(matches!(
            SigningKey::from_pem_file(missing),
            Err(KeyError::Read { .. })
        ));
        let path = std::env::temp_dir().join(format!("rc-bad-key-{}.pem", Uuid::new_v4()));
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

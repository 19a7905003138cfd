//! The acceptance rules of a token, the one implementation of them: the
//! auth server verifies refresh tokens (and, later, access tokens) through
//! it, and downstream services verify access tokens through it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use serde::Deserialize;

use crate::VerifyError;
use crate::claims::{Claims, TokenKind};
use crate::keys::{Jwk, VerificationKey};

/// Verifies tokens of one issuer and audience with a set of keys.
///
/// A token is accepted only when (RFC 8725, RFC 9068, RFC 7515):
/// - its header's `typ` names the expected kind (`at+jwt`, `rt+jwt`);
/// - its `kid` is one of the set's, and its `alg` is the one that key
///   allows (so `none`, HMAC and another key type's algorithm are refused);
/// - it has no `crit` header, whatever its value (`null` included): it
///   would name extensions we do not understand, which RFC 7515 §4.1.11
///   says to refuse;
/// - the signature verifies, and `exp`, `iat`, `iss`, `aud` and `sub` are
///   present, `iss` and `aud` (one string) match;
/// - it has not expired and is not before its `nbf`, each with the leeway;
/// - its `iat` is not further ahead of our clock than the leeway, not
///   negative, and not after its `exp`.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<VerificationKey>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The header members that jsonwebtoken's `Header` does not carry.
#[derive(Deserialize)]
struct Critical {
    /// Whether the header has a `crit` member, whatever its value: RFC 7515
    /// §4.1.11 turns on the member's presence, and `Option` would read
    /// `"crit": null` as absent.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// Skips a member's value, of any JSON type (null included), and records
/// that the member was there.
fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(value).map(|_| true)
}

impl Verifier {
    /// A verifier accepting tokens of `issuer` for `audience` signed by any
    /// of `keys`, with a leeway of 30 s.
    pub fn new(
        keys: Vec<VerificationKey>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: 30,
        }
    }

    /// Builds a verifier from a JWK Set document (RFC 7517 §5), as the auth
    /// server publishes it at `GET /.well-known/jwks.json`. Keys other than
    /// Ed25519 (OKP) and P-256 (EC) ones, keys without a `kid`, and keys
    /// naming another algorithm than their type allows are ignored.
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
        let keys: Vec<_> = set
            .keys
            .iter()
            .filter_map(VerificationKey::from_jwk)
            .collect();
        if keys.is_empty() {
            return Err(VerifyError::Jwks("no usable key".into()));
        }
        Ok(Self::new(keys, issuer, audience))
    }

    /// Sets the clock skew tolerated on `exp`, `nbf` and `iat`, seconds
    /// (default 30).
    #[must_use]
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway_secs = secs;
        self
    }

    /// The keys, in the order given.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// The `kid`s of the keys.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(VerificationKey::kid)
    }

    /// Verifies an access token and returns its claims.
    ///
    /// # Errors
    /// [`VerifyError::Token`] for anything but a valid access token of this
    /// issuer and audience signed by a key of the set.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verify_as(TokenKind::Access, token)
    }

    /// Verifies a token of `kind` and returns its claims.
    ///
    /// # Errors
    /// [`VerifyError::Token`] naming the first rule the token breaks (see
    /// [`Verifier`]); the reason is for logs, not for the token's holder.
    pub fn verify_as(&self, kind: TokenKind, token: &str) -> Result<Claims, VerifyError> {
        let refuse = |why: String| VerifyError::Token(why);
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(e.to_string()))?;
        if header.typ.as_deref() != Some(kind.typ()) {
            return Err(refuse(format!(
                "typ {:?} is not {}",
                header.typ,
                kind.typ()
            )));
        }
        if has_crit(token) {
            return Err(refuse(
                "crit header names extensions this verifier does not understand".into(),
            ));
        }
        let key = self
            .keys
            .iter()
            .find(|k| Some(k.kid()) == header.kid.as_deref())
            .ok_or_else(|| refuse(format!("unknown kid {:?}", header.kid)))?;
        if header.alg != key.algorithm() {
            return Err(refuse(format!(
                "algorithm {:?} not allowed for this key",
                header.alg
            )));
        }
        let mut validation = Validation::new(key.algorithm());
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, key.decoding(), &validation)
            .map_err(|e| refuse(e.to_string()))?
            .claims;
        // `iat` a little ahead (another replica's clock) is fine; further
        // ahead than the leeway, the token was not made by a sane issuer.
        let latest = jsonwebtoken::get_current_timestamp().saturating_add(self.leeway_secs);
        if u64::try_from(claims.iat).is_ok_and(|iat| iat > latest) {
            return Err(refuse("iat is in the future beyond the leeway".into()));
        }
        // Nothing we mint is issued before 1970 or after it expires.
        if claims.iat < 0 || claims.iat > claims.exp {
            return Err(refuse("iat is negative or after exp".into()));
        }
        Ok(claims)
    }
}

/// Whether the token's (already decodable) header has a `crit` member.
fn has_crit(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|header| URL_SAFE_NO_PAD.decode(header).ok())
        .and_then(|json| serde_json::from_slice::<Critical>(&json).ok())
        // A header that decoded once cannot fail here; if it did, refuse.
        .is_none_or(|header| header.crit)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
    use uuid::Uuid;

    use super::*;

    const ISS: &str = "realchat-auth";
    const AUD: &str = "realchat";

    /// A signing key and the verifier of its public half.
    struct Keys {
        der: Vec<u8>,
        kid: String,
        verifier: Verifier,
    }

    fn key_pair() -> Keys {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&der).unwrap();
        let public = VerificationKey::ed25519(pair.public_key().as_ref());
        let kid = public.kid().to_owned();
        Keys {
            der,
            kid,
            verifier: Verifier::new(vec![public], ISS, AUD).with_leeway(30),
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims() -> serde_json::Value {
        let iat = now();
        serde_json::json!({
            "iss": ISS, "aud": AUD,
            "sub": Uuid::now_v7(), "sid": Uuid::now_v7(), "jti": Uuid::new_v4(),
            "iat": iat, "exp": iat + 900,
        })
    }

    /// A token of `keys`' key with `header` and `claims` as given.
    fn sign(keys: &Keys, header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_ed_der(&keys.der)).unwrap()
    }

    fn header(keys: &Keys, typ: &str) -> Header {
        let mut h = Header::new(Algorithm::EdDSA);
        h.typ = Some(typ.into());
        h.kid = Some(keys.kid.clone());
        h
    }

    fn b64(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn a_token_of_the_expected_kind_is_accepted_with_its_claims() {
        let keys = key_pair();
        let c = claims();
        let token = sign(&keys, &header(&keys, "at+jwt"), &c);
        let got = keys.verifier.verify(&token).unwrap();
        assert_eq!(serde_json::to_value(&got).unwrap(), c);
        let refresh = sign(&keys, &header(&keys, "rt+jwt"), &c);
        assert!(
            keys.verifier
                .verify_as(TokenKind::Refresh, &refresh)
                .is_ok()
        );
    }

    /// Every refusal, each against a token that differs from an accepted
    /// one in that one respect.
    #[test]
    fn every_rule_refuses_the_token_that_breaks_it() {
        let keys = key_pair();
        let other = key_pair();
        let now = now();
        let at = header(&keys, "at+jwt");
        let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims();
            edit(&mut c);
            sign(&keys, &at, &c)
        };
        let with_header = |edit: &dyn Fn(&mut Header)| {
            let mut h = at.clone();
            edit(&mut h);
            sign(&keys, &h, &claims())
        };
        let p256 = {
            let rng = ring::rand::SystemRandom::new();
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let mut h = at.clone();
            h.alg = Algorithm::ES256;
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_ec_der(der.as_ref())).unwrap()
        };
        let hs256 = {
            let mut h = at.clone();
            h.alg = Algorithm::HS256;
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"guess")).unwrap()
        };
        let alg_none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": keys.kid})),
            b64(&claims())
        );
        let with_crit = |crit: serde_json::Value| {
            let token = sign(&keys, &at, &claims());
            let (_, rest) = token.split_once('.').unwrap();
            let h = serde_json::json!({
                "alg": "EdDSA", "typ": "at+jwt", "kid": keys.kid, "crit": crit, "exp": now
            });
            // Re-signed, so only the crit header differs from a good token.
            let payload = rest.split('.').next().unwrap();
            let input = format!("{}.{payload}", b64(&h));
            let pair = Ed25519KeyPair::from_pkcs8(&keys.der).unwrap();
            let sig = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref());
            format!("{input}.{sig}")
        };
        let changed_payload = {
            let token = sign(&keys, &at, &claims());
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = b64(&claims());
            parts[1] = &forged;
            parts.join(".")
        };
        // (case, a fragment of the reason it must be refused for, token)
        let cases: Vec<(&str, &str, String)> = vec![
            ("alg none", "unknown variant `none`", alg_none),
            (
                "alg HS256 under our kid",
                "algorithm HS256 not allowed",
                hs256,
            ),
            (
                "alg ES256 under an Ed25519 kid",
                "algorithm ES256 not allowed",
                p256,
            ),
            (
                "unknown kid",
                "unknown kid",
                with_header(&|h| h.kid = Some("no-such-kid".into())),
            ),
            ("no kid", "unknown kid None", with_header(&|h| h.kid = None)),
            (
                "another key under our kid",
                "InvalidSignature",
                sign(&other, &at, &claims()),
            ),
            ("changed payload", "InvalidSignature", changed_payload),
            (
                "typ rt+jwt as access",
                "is not at+jwt",
                with_header(&|h| h.typ = Some("rt+jwt".into())),
            ),
            (
                "typ JWT",
                "is not at+jwt",
                with_header(&|h| h.typ = Some("JWT".into())),
            ),
            ("no typ", "typ None", with_header(&|h| h.typ = None)),
            ("crit", "crit header", with_crit(serde_json::json!(["exp"]))),
            // RFC 7515 §4.1.11: the member's presence is what counts.
            (
                "crit null",
                "crit header",
                with_crit(serde_json::Value::Null),
            ),
            (
                "crit empty",
                "crit header",
                with_crit(serde_json::json!([])),
            ),
            (
                "wrong iss",
                "InvalidIssuer",
                edited(&|c| c["iss"] = "https://evil.example".into()),
            ),
            (
                "no iss",
                "missing field `iss`",
                edited(&|c| drop(c.as_object_mut().unwrap().remove("iss"))),
            ),
            (
                "wrong aud",
                "InvalidAudience",
                edited(&|c| c["aud"] = "billing".into()),
            ),
            (
                "aud as a list",
                "expected a string",
                edited(&|c| c["aud"] = serde_json::json!([AUD, "x"])),
            ),
            (
                "no aud",
                "missing field `aud`",
                edited(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
            ),
            (
                "expired",
                "ExpiredSignature",
                edited(&|c| {
                    c["iat"] = (now - 7200).into();
                    c["exp"] = (now - 3600).into();
                }),
            ),
            (
                "no exp",
                "missing field `exp`",
                edited(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            ),
            (
                "nbf ahead",
                "ImmatureSignature",
                edited(&|c| c["nbf"] = (now + 3600).into()),
            ),
            (
                "iat beyond the leeway",
                "iat is in the future",
                edited(&|c| c["iat"] = (now + 60).into()),
            ),
            (
                "iat negative",
                "iat is negative",
                edited(&|c| c["iat"] = (-1).into()),
            ),
            (
                "iat after exp",
                "after exp",
                edited(&|c| {
                    c["iat"] = (now - 10).into();
                    // Not yet expired (15 s ago, within the leeway), but issued later.
                    c["exp"] = (now - 15).into();
                }),
            ),
            (
                "no iat",
                "missing field `iat`",
                edited(&|c| drop(c.as_object_mut().unwrap().remove("iat"))),
            ),
            (
                "sub not a uuid",
                "UUID parsing failed",
                edited(&|c| c["sub"] = "alice".into()),
            ),
            ("garbage", "Base64", "not.a.jwt".into()),
        ];
        for (name, reason, token) in cases {
            match keys.verifier.verify(&token) {
                Err(VerifyError::Token(why)) => {
                    assert!(why.contains(reason), "{name}: refused for {why:?}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn iat_and_nbf_within_the_leeway_are_accepted() {
        let keys = key_pair();
        let at = header(&keys, "at+jwt");
        let mut c = claims();
        // Another replica's clock 20 s ahead, within the 30 s leeway.
        c["iat"] = (now() + 20).into();
        c["nbf"] = (now() + 20).into();
        assert!(keys.verifier.verify(&sign(&keys, &at, &c)).is_ok());
    }

    #[test]
    fn a_jwks_without_a_usable_key_is_refused() {
        for jwks in [
            "not json",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "RSA", "kid": "r", "n": "x", "e": "AQAB"}]}"#,
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        ] {
            assert!(
                matches!(
                    Verifier::from_jwks(jwks, ISS, AUD),
                    Err(VerifyError::Jwks(_))
                ),
                "{jwks}"
            );
        }
    }
}

//! Public keys that verify tokens, each with its `kid` and the ONE
//! algorithm it allows (RFC 8725 §3.1: an algorithm allow-list per key):
//! Ed25519 keys allow EdDSA (RFC 8037), P-256 keys ES256; never `none`,
//! HMAC or another key type's algorithm.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// A public key that verifies tokens, with its `kid`, its one algorithm
/// and its JWK (RFC 7517) form.
#[derive(Clone)]
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

/// The members of a JWK this crate reads; others are ignored.
#[derive(Deserialize)]
pub(crate) struct Jwk {
    kty: String,
    kid: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl VerificationKey {
    /// An Ed25519 key (EdDSA) from its 32 public bytes; its `kid` is its
    /// RFC 7638 thumbprint.
    pub fn ed25519(public: &[u8]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public);
        Self::with_thumbprint(
            Algorithm::EdDSA,
            // RFC 7638 members in lexicographic order (RFC 8037 §2).
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            DecodingKey::from_ed_der(public),
        )
    }

    /// A P-256 key (ES256) from its 65-byte uncompressed point; its `kid`
    /// is its RFC 7638 thumbprint. `None` when `point` is no such point.
    pub fn p256(point: &[u8]) -> Option<Self> {
        if point.len() != 65 || point[0] != 0x04 {
            return None;
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        let decoding = DecodingKey::from_ec_components(&x, &y).ok()?;
        Some(Self::with_thumbprint(
            Algorithm::ES256,
            format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
            decoding,
        ))
    }

    /// An Ed25519 or P-256 key from its SubjectPublicKeyInfo DER (a `PUBLIC
    /// KEY` PEM block's contents, as `openssl pkey -pubout` writes); `None`
    /// for anything else.
    pub fn from_spki_der(der: &[u8]) -> Option<Self> {
        if let Some(public) = der.strip_prefix(&ED25519_SPKI_PREFIX[..])
            && public.len() == 32
        {
            return Some(Self::ed25519(public));
        }
        der.strip_prefix(&P256_SPKI_PREFIX[..]).and_then(Self::p256)
    }

    /// A key of a JWK Set: an Ed25519 (`OKP`) or P-256 (`EC`) key with a
    /// `kid`. `None` for other key types, a missing `kid`, bad coordinates,
    /// or an `alg` other than the one its type allows.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Option<Self> {
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
        if jwk.alg.as_deref().is_some_and(|a| a != alg_name(alg)) {
            return None;
        }
        let mut value = serde_json::json!({ "kty": jwk.kty, "crv": jwk.crv, "x": jwk.x });
        if let Some(y) = &jwk.y {
            value["y"] = y.clone().into();
        }
        Some(Self::described(kid, alg, value, decoding))
    }

    fn with_thumbprint(
        alg: Algorithm,
        thumbprint_input: String,
        jwk: serde_json::Value,
        decoding: DecodingKey,
    ) -> Self {
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            thumbprint_input.as_bytes(),
        ));
        Self::described(kid, alg, jwk, decoding)
    }

    fn described(
        kid: String,
        alg: Algorithm,
        mut jwk: serde_json::Value,
        decoding: DecodingKey,
    ) -> Self {
        jwk["kid"] = kid.clone().into();
        jwk["alg"] = alg_name(alg).into();
        jwk["use"] = "sig".into();
        Self {
            kid,
            alg,
            jwk,
            decoding,
        }
    }

    /// The key id: for keys made here, the RFC 7638 JWK thumbprint
    /// (SHA-256, base64url); for keys of a JWK Set, its `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The one algorithm this key verifies (and, for a signing key's public
    /// half, signs) with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The public key as a JWK (RFC 7517; RFC 8037 for Ed25519) with `kid`,
    /// `alg` (EdDSA or ES256) and `use` sig.
    pub fn jwk(&self) -> serde_json::Value {
        self.jwk.clone()
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }
}

/// The JOSE name of the algorithms a key here can allow.
fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        _ => "ES256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_jwk_naming_another_algorithm_than_its_type_allows_is_unusable() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let jwk = |alg: &str| -> Jwk {
            serde_json::from_value(serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "kid": "k", "alg": alg, "x": x
            }))
            .unwrap()
        };
        assert!(VerificationKey::from_jwk(&jwk("EdDSA")).is_some());
        assert!(VerificationKey::from_jwk(&jwk("ES256")).is_none());
        assert!(VerificationKey::from_jwk(&jwk("HS256")).is_none());
    }
}

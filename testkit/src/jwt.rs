//! Taking JWTs apart and putting forged ones together.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The decoded JSON of a JWT's header and payload.
pub fn parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let mut it = token.split('.').map(|part| {
        serde_json::from_slice::<serde_json::Value>(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    });
    (it.next().unwrap(), it.next().unwrap())
}

/// `bytes` as a JWT part: base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `value`'s JSON as a JWT part.
pub fn b64_json(value: &serde_json::Value) -> String {
    b64(&serde_json::to_vec(value).unwrap())
}

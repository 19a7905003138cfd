//! The credentials of an AccountApi call: the `authorization` metadata in
//! the form RFC 6750 §2.1 gives it, `Bearer <token>`.

use std::fmt;

use secrecy::{ExposeSecret as _, SecretString};

/// The access token of an `authorization: Bearer <token>` field, not yet
/// verified. Its `Debug` shows nothing of the token.
pub struct BearerToken(SecretString);

/// Why the `authorization` metadata holds no bearer token. The text is for
/// logs and never quotes the header; every case is one answer to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No `authorization` field.
    #[error("no authorization metadata")]
    Missing,
    /// More than one `authorization` field: which one counts would be a
    /// guess (HTTP allows one; RFC 9110 §11.6.2).
    #[error("more than one authorization field")]
    Repeated,
    /// Another scheme (`Basic …`), or no credentials after `Bearer`.
    #[error("authorization scheme is not Bearer, or has no token")]
    NotBearer,
    /// The credentials are not an RFC 6750 `b64token` (non-ASCII bytes,
    /// spaces inside, characters outside its alphabet).
    #[error("bearer token is not a b64token")]
    Malformed,
}

impl BearerToken {
    /// The bearer token of the `authorization` field values of one request:
    /// exactly one field, `Bearer` (any case, RFC 9110 §11.1) and one or
    /// more spaces, then a `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_"
    /// / "~" / "+" / "/" ) *"="` (RFC 6750 §2.1). A JWT is one.
    ///
    /// # Errors
    /// [`BearerError`] saying what is wrong, for logs.
    pub fn parse(values: &[&[u8]]) -> Result<Self, BearerError> {
        let value = match values {
            [] => return Err(BearerError::Missing),
            [value] => *value,
            _ => return Err(BearerError::Repeated),
        };
        let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(BearerError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(BearerError::NotBearer);
        }
        let token = token.trim_start_matches(' ');
        if token.is_empty() {
            return Err(BearerError::NotBearer);
        }
        let body = token.trim_end_matches('=');
        let b64token = !body.is_empty()
            && body.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
            });
        if !b64token {
            return Err(BearerError::Malformed);
        }
        Ok(Self(SecretString::from(token)))
    }

    /// The token, for verification only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> Result<String, BearerError> {
        let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        BearerToken::parse(&bytes).map(|t| t.expose().to_owned())
    }

    #[test]
    fn bearer_in_any_case_with_one_or_more_spaces() {
        assert_eq!(parse(&["Bearer a.b-c_d"]).unwrap(), "a.b-c_d");
        assert_eq!(parse(&["bearer a.b.c"]).unwrap(), "a.b.c");
        assert_eq!(parse(&["BEARER   a.b.c"]).unwrap(), "a.b.c");
        assert_eq!(parse(&["Bearer abc+/~=="]).unwrap(), "abc+/~==");
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        assert_eq!(parse(&[]), Err(BearerError::Missing));
        assert_eq!(parse(&["Bearer a", "Bearer a"]), Err(BearerError::Repeated));
        for not_bearer in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic dXNlcjpwYXNz",
            "Bearera.b.c",
            "Token a.b.c",
            "Bearer\ta.b.c",
        ] {
            assert_eq!(
                parse(&[not_bearer]),
                Err(BearerError::NotBearer),
                "{not_bearer:?}"
            );
        }
        for malformed in [
            "Bearer a b",
            "Bearer a.b.c ",
            "Bearer ===",
            "Bearer a=b",
            "Bearer é",
            "Bearer a,b",
            "Bearer a\0b",
        ] {
            assert_eq!(
                parse(&[malformed]),
                Err(BearerError::Malformed),
                "{malformed:?}"
            );
        }
        assert_eq!(
            BearerToken::parse(&[b"Bearer \xff"]).err(),
            Some(BearerError::Malformed)
        );
    }

    #[test]
    fn debug_shows_no_token() {
        let token = BearerToken::parse(&[b"Bearer secret.token.here"]).unwrap();
        assert!(!format!("{token:?}").contains("secret"));
    }
}

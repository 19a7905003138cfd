use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::{MAX_RAW_FIELD_BYTES, has_control_char, nfkc};

/// Longest accepted email address, in UTF-8 bytes (RFC 5321 §4.5.3.1.3 path
/// limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// An email address in its normalised form: trimmed, NFKC, lower-cased, at
/// most [`MAX_EMAIL_BYTES`] bytes, and accepted by the `email_address` crate
/// (RFC 5322 addr-spec). Two inputs that differ only in case, surrounding
/// whitespace or Unicode normalisation form parse to equal values, which is
/// what the `users.email` unique index compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email must not be empty")]
    Empty,
    #[error("email must not contain NUL or control characters")]
    ControlCharacter,
    #[error("email must not contain invisible formatting characters")]
    FormatCharacter,
    #[error("email must be at most {MAX_EMAIL_BYTES} bytes")]
    TooLong,
    #[error("email is not a valid address")]
    Invalid,
}

impl Email {
    /// Normalises and validates `raw`.
    ///
    /// # Errors
    /// [`EmailError`] naming the first rule `raw` breaks. A control character
    /// anywhere, even in leading or trailing whitespace, is refused, and so
    /// is an invisible format character (Unicode category Cf: zero-width
    /// space, soft hyphen, BOM, bidirectional overrides), which would let
    /// look-alike addresses register as separate accounts.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        if raw.len() > MAX_RAW_FIELD_BYTES {
            return Err(EmailError::TooLong);
        }
        if has_control_char(raw) {
            return Err(EmailError::ControlCharacter);
        }
        if raw
            .chars()
            .any(|c| c.general_category() == GeneralCategory::Format)
        {
            return Err(EmailError::FormatCharacter);
        }
        // Lower-casing can leave a string that is not NFKC (e.g. U+0130), so
        // normalise on both sides to reach a fixed point.
        let normalised = nfkc(&nfkc(raw.trim()).to_lowercase());
        if normalised.is_empty() {
            return Err(EmailError::Empty);
        }
        if normalised.len() > MAX_EMAIL_BYTES {
            return Err(EmailError::TooLong);
        }
        if has_control_char(&normalised) || !email_address::EmailAddress::is_valid(&normalised) {
            return Err(EmailError::Invalid);
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_whitespace_and_compatibility_forms_normalise_to_one_address() {
        let plain = Email::parse("alice@example.com").unwrap();
        assert_eq!(Email::parse("  ALICE@Example.COM ").unwrap(), plain);
        // Fullwidth letters (compatibility characters) fold under NFKC.
        assert_eq!(Email::parse("ａｌｉｃｅ@example.com").unwrap(), plain);
    }

    #[test]
    fn refuses_empty_control_long_and_malformed() {
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        assert_eq!(
            Email::parse("a\0@example.com"),
            Err(EmailError::ControlCharacter)
        );
        assert_eq!(
            Email::parse("a@example.com\n"),
            Err(EmailError::ControlCharacter)
        );
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
        assert_eq!(Email::parse(&"a".repeat(1 << 20)), Err(EmailError::TooLong));
        for invisible in ["\u{200b}", "\u{ad}", "\u{feff}", "\u{202e}"] {
            assert_eq!(
                Email::parse(&format!("ali{invisible}ce@example.com")),
                Err(EmailError::FormatCharacter)
            );
        }
        assert_eq!(Email::parse("not-an-email"), Err(EmailError::Invalid));
        assert_eq!(Email::parse("a@@example.com"), Err(EmailError::Invalid));
    }
}

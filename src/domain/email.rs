use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::{MAX_RAW_FIELD_BYTES, has_control_char, nfkc};

/// Longest accepted email address, in UTF-8 bytes (RFC 5321 §4.5.3.1.3 path
/// limit less the angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// An email address in its normalised form: trimmed, NFKC, lower-cased, at
/// most [`MAX_EMAIL_BYTES`] bytes, and a bare mailbox as the `email_address`
/// crate parses it (RFC 5322 addr-spec, with RFC 6531 non-ASCII), less the
/// forms no user needs: display names, quoted local parts, domain literals
/// and single-label domains. Two inputs that differ only in case, surrounding
/// whitespace or Unicode normalisation form parse to equal values, which is
/// what the `users.email` unique index compares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why a string is not an [`Email`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Nothing left after trimming.
    #[error("email must not be empty")]
    Empty,
    /// NUL or another control character (Cc), anywhere.
    #[error("email must not contain NUL or control characters")]
    ControlCharacter,
    /// An invisible format character (Cf), anywhere.
    #[error("email must not contain invisible formatting characters")]
    FormatCharacter,
    /// Over [`MAX_EMAIL_BYTES`] after normalisation, or over
    /// [`MAX_RAW_FIELD_BYTES`] before it.
    #[error("email must be at most {MAX_EMAIL_BYTES} bytes")]
    TooLong,
    /// Not a bare mailbox address.
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
        // A bare mailbox only: no display name ("Eve <bob@…>"), no quoted
        // local part, no domain literal ("bob@[127.0.0.1]"), and a domain
        // with a top-level label — forms that would let one mailbox hold
        // several accounts or be no public address at all.
        let options = email_address::Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        if has_control_char(&normalised)
            || normalised.contains('"')
            || email_address::EmailAddress::parse_with_options(&normalised, options).is_err()
        {
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
        for other_form in [
            "Eve <bob@example.com>",
            "\"bob\"@example.com",
            "bob@[127.0.0.1]",
            "bob@localhost",
        ] {
            assert_eq!(
                Email::parse(other_form),
                Err(EmailError::Invalid),
                "{other_form}"
            );
        }
    }
}

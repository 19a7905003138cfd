use secrecy::{ExposeSecret, SecretString};

use super::{MAX_RAW_FIELD_BYTES, has_control_char, nfkc};

/// Fewest characters (Unicode scalar values) in a new password, as NIST SP
/// 800-63B §3.1.1.2 requires for user-chosen secrets.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Most UTF-8 bytes in a password: bcrypt reads at most 72 bytes, and a longer
/// password is refused rather than silently truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why a string is not an acceptable password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// NUL or another control character (Cc), anywhere.
    #[error("password must not contain NUL or control characters")]
    ControlCharacter,
    /// Fewer than [`MIN_PASSWORD_CHARS`] characters after NFKC.
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Over [`MAX_PASSWORD_BYTES`] bytes after NFKC (never truncated).
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")]
    TooLong,
}

/// A password that satisfies the registration policy: NFKC-normalised, no
/// control characters, at least [`MIN_PASSWORD_CHARS`] characters and at most
/// [`MAX_PASSWORD_BYTES`] bytes. No composition rules (NIST SP 800-63B).
/// The value is a [`SecretString`], so it cannot be logged by accident.
#[derive(Debug)]
pub struct NewPassword(SecretString);

impl NewPassword {
    /// Normalises and checks `raw` against the policy.
    ///
    /// # Errors
    /// [`PasswordError`] naming the first rule `raw` breaks.
    pub fn parse(raw: &str) -> Result<Self, PasswordError> {
        if raw.len() > MAX_RAW_FIELD_BYTES {
            return Err(PasswordError::TooLong);
        }
        let normalised = PasswordAttempt::parse(raw)?;
        let value = normalised.0.expose_secret();
        if value.chars().count() < MIN_PASSWORD_CHARS {
            return Err(PasswordError::TooShort);
        }
        if value.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        Ok(Self(normalised.0))
    }

    /// The normalised password, for hashing.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A password presented at login: NFKC-normalised, free of control
/// characters, and otherwise unchecked, so that a policy change never locks
/// out an existing account and a wrong guess costs the same as a right one.
/// An attempt over [`MAX_RAW_FIELD_BYTES`] is kept unnormalised (it cannot
/// match any password, and normalising it would cost more than verifying).
#[derive(Debug)]
pub struct PasswordAttempt(SecretString);

impl PasswordAttempt {
    /// Normalises `raw`.
    ///
    /// # Errors
    /// [`PasswordError::ControlCharacter`] when `raw` holds NUL or another
    /// control character.
    pub fn parse(raw: &str) -> Result<Self, PasswordError> {
        if has_control_char(raw) {
            return Err(PasswordError::ControlCharacter);
        }
        if raw.len() > MAX_RAW_FIELD_BYTES {
            return Ok(Self(SecretString::from(raw)));
        }
        Ok(Self(SecretString::from(nfkc(raw))))
    }

    /// The normalised password, for verification.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_bytes_after_nfkc() {
        assert!(NewPassword::parse(&"A".repeat(72)).is_ok());
        assert_eq!(
            NewPassword::parse(&format!("{}x", "A".repeat(72))).err(),
            Some(PasswordError::TooLong)
        );
        // 24 × '€' is 72 bytes, 25 is 75.
        assert!(NewPassword::parse(&"€".repeat(24)).is_ok());
        assert_eq!(
            NewPassword::parse(&"€".repeat(25)).err(),
            Some(PasswordError::TooLong)
        );
        // 'ﬁ' (U+FB01) is 3 bytes but NFKC-expands to "fi": 24 of them are 48 bytes.
        assert_eq!(
            NewPassword::parse(&"ﬁ".repeat(24)).unwrap().expose(),
            "fi".repeat(24)
        );
    }

    #[test]
    fn refuses_short_and_control_characters() {
        assert_eq!(
            NewPassword::parse("1234567").err(),
            Some(PasswordError::TooShort)
        );
        assert!(NewPassword::parse("12345678").is_ok());
        assert_eq!(
            NewPassword::parse("correct\0horse").err(),
            Some(PasswordError::ControlCharacter)
        );
        assert_eq!(
            PasswordAttempt::parse("x\u{7f}").err(),
            Some(PasswordError::ControlCharacter)
        );
    }
}

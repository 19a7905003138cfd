use std::collections::HashSet;
use std::sync::LazyLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_segmentation::UnicodeSegmentation as _;

use super::{MAX_RAW_FIELD_BYTES, has_control_char, nfkc};

/// The 10,000 most common passwords (`common-passwords.txt`, from zxcvbn's
/// frequency list), loaded once.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// Fewest characters in a new password, as NIST SP 800-63B §3.1.1.2
/// requires for user-chosen secrets, counted as a person sees them:
/// extended grapheme clusters (UAX #29), so a letter with eight combining
/// marks is one character, not nine. Both what was typed and its NFKC form
/// must reach it: `ﷺ` (U+FDFA), which NFKC expands to 18 characters, is
/// still one character typed; composed and decomposed forms count alike.
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
    /// Fewer than [`MIN_PASSWORD_CHARS`] user-perceived characters
    /// (extended grapheme clusters) as typed, or after NFKC.
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Over [`MAX_PASSWORD_BYTES`] bytes after NFKC (never truncated).
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes in UTF-8")]
    TooLong,
    /// On the list of the most common (breached) passwords.
    #[error("password is one of the most commonly used passwords; choose another")]
    Common,
    /// The account's email address or its local part.
    #[error("password must not be the email address or part of it")]
    MatchesEmail,
    /// Nothing but whitespace and invisible characters: the first guess.
    #[error("password must contain more than spaces and invisible characters")]
    Blank,
}

/// A password that satisfies the registration policy: NFKC-normalised, no
/// control characters, at least [`MIN_PASSWORD_CHARS`] characters (as typed
/// and after NFKC) and at most [`MAX_PASSWORD_BYTES`] bytes. No composition
/// rules (NIST SP 800-63B).
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
        // As typed, so a compatibility character NFKC expands is one; after
        // NFKC, so what is hashed is as long too.
        if raw.graphemes(true).count() < MIN_PASSWORD_CHARS
            || value.graphemes(true).count() < MIN_PASSWORD_CHARS
        {
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

    /// Refuses a password that is easy to guess for the account of `email`
    /// (NIST SP 800-63B §3.1.1.2: compare against breached and common
    /// values and context-specific words), compared case-insensitively.
    /// `email` is the account's normalised address: an
    /// [`Email`](super::Email)'s `as_str` at Register, the stored one at ChangePassword
    /// (which may predate today's parsing rules, so it is not re-parsed).
    ///
    /// # Errors
    /// [`PasswordError::Blank`] for whitespace only;
    /// [`PasswordError::Common`] for one of the 10,000 most common
    /// passwords; [`PasswordError::MatchesEmail`] for the email address or
    /// its local part.
    pub fn check_not_guessable(&self, email: &str) -> Result<(), PasswordError> {
        let folded = skeleton(self.expose());
        if folded.is_empty() {
            return Err(PasswordError::Blank);
        }
        if COMMON_PASSWORDS.contains(folded.as_str()) {
            return Err(PasswordError::Common);
        }
        let local = email.rsplit_once('@').map_or("", |(local, _)| local);
        if folded == skeleton(email) || folded == skeleton(local) {
            return Err(PasswordError::MatchesEmail);
        }
        Ok(())
    }
}

/// What a password looks like to a guesser, for the blocklist comparison
/// only (the password itself is hashed as given): lower-cased, decomposed,
/// without combining marks, invisible format characters, blank letters or
/// whitespace — so
/// " password", "pass\u{200b}word" and "İloveyou" are caught.
fn skeleton(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    text.to_lowercase()
        .nfkd()
        .filter(|c| {
            !c.is_whitespace()
                && !BLANK_LETTERS.contains(c)
                && !matches!(
                    c.general_category(),
                    GeneralCategory::NonspacingMark | GeneralCategory::Format
                )
        })
        .collect()
}

/// Characters that are letters or symbols by category but print as nothing:
/// the Hangul fillers (Unicode's default-ignorable letters) and the blank
/// Braille pattern.
const BLANK_LETTERS: [char; 5] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

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
    use crate::domain::Email;

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
    fn common_passwords_and_the_email_are_guessable() {
        let email = Email::parse("Jane.Doe@example.com").unwrap();
        let check = |p: &str| {
            NewPassword::parse(p)
                .unwrap()
                .check_not_guessable(email.as_str())
        };
        assert_eq!(COMMON_PASSWORDS.len(), 10_000);
        for common in [
            "password",
            "12345678",
            "PASSWORD1",
            "iloveyou",
            "qwertyuiop",
        ] {
            assert_eq!(check(common), Err(PasswordError::Common), "{common}");
        }
        assert_eq!(
            check("jane.doe@example.com"),
            Err(PasswordError::MatchesEmail)
        );
        assert_eq!(check("JANE.DOE"), Err(PasswordError::MatchesEmail));
        for disguised in [
            " password",
            "password\u{a0}",
            "pass\u{200b}word",
            "pass\u{ad}word",
            "İloveyou1",
        ] {
            assert_eq!(
                check(disguised),
                Err(PasswordError::Common),
                "{disguised:?}"
            );
        }
        assert_eq!(check(" jane.doe"), Err(PasswordError::MatchesEmail));
        assert_eq!(check("correct horse battery staple"), Ok(()));
        assert_eq!(check("jane.doe.2026!"), Ok(()));
    }

    #[test]
    fn length_is_counted_in_user_perceived_characters_after_nfkc() {
        // A letter and eight combining marks: nine scalar values, eight
        // after NFKC composes the first mark, one character on screen.
        let marks = "\u{301}\u{302}\u{303}\u{304}\u{306}\u{307}\u{308}\u{30a}";
        assert_eq!(
            NewPassword::parse(&format!("a{marks}")).err(),
            Some(PasswordError::TooShort)
        );
        // A family emoji is five scalar values joined by ZWJ: one character.
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}";
        assert_eq!(
            NewPassword::parse(&format!("{family}abcdef")).err(),
            Some(PasswordError::TooShort)
        );
        assert!(NewPassword::parse(&format!("{family}abcdefg")).is_ok());
        // Eight letters each with a mark are eight characters (in 16 or
        // more bytes); decomposed, NFKC composes them alike.
        assert!(NewPassword::parse(&"e\u{301}".repeat(8)).is_ok());
        assert!(NewPassword::parse(&"\u{1e09}".repeat(8)).is_ok());
    }

    #[test]
    fn length_is_counted_as_typed_as_well_as_after_nfkc() {
        // U+FDFA is one character that NFKC expands to 18.
        assert_eq!(
            NewPassword::parse("\u{fdfa}").err(),
            Some(PasswordError::TooShort)
        );
        assert_eq!(
            NewPassword::parse(&format!("\u{fdfa}{}", "x".repeat(6))).err(),
            Some(PasswordError::TooShort)
        );
        assert!(NewPassword::parse(&format!("\u{fdfa}{}", "x".repeat(7))).is_ok());
        // Four ligatures are four characters typed, eight after NFKC.
        assert_eq!(
            NewPassword::parse(&"\u{fb01}".repeat(4)).err(),
            Some(PasswordError::TooShort)
        );
        assert!(NewPassword::parse(&"\u{fb01}".repeat(8)).is_ok());
        // Composed and decomposed forms count the same either way.
        assert!(NewPassword::parse(&"\u{e9}".repeat(8)).is_ok());
        assert!(NewPassword::parse(&"e\u{301}".repeat(8)).is_ok());
        assert_eq!(
            NewPassword::parse(&"e\u{301}".repeat(7)).err(),
            Some(PasswordError::TooShort)
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

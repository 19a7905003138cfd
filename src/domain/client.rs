//! What a session records about the client that started or refreshed it:
//! the name the user gave the device, and the `user-agent` it sent. Both are
//! shown back to the user in ListSessions, next to their other sessions, so
//! neither may hide characters that make one entry look like another.

use std::fmt;

use unicode_segmentation::UnicodeSegmentation as _;

use super::{MAX_RAW_FIELD_BYTES, has_control_char, invisible_or_separator};

/// Most characters in a device name, counted as a person counts them
/// (extended grapheme clusters, UAX #29): a flag or a letter with accents
/// is one.
pub const MAX_DEVICE_NAME_CHARS: usize = 64;

/// Most UTF-8 bytes of the `user-agent` kept for a session; the rest is cut
/// at a character boundary. Real user agents fit; the header itself may be
/// up to the metadata limit (16 KiB).
pub const MAX_USER_AGENT_BYTES: usize = 256;

/// The `device_name` of a LoginRequest: trimmed of ASCII spaces, at most
/// [`MAX_DEVICE_NAME_CHARS`] characters, with no control character and no
/// invisible or separator character other than the ASCII space
/// (`invisible_or_separator`), anywhere, ends included. Not normalised:
/// it is the user's label, shown as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceName(String);

/// Why a `device_name` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceNameError {
    /// NUL or another control character (Cc), anywhere.
    #[error("device_name must not contain NUL or control characters")]
    ControlCharacter,
    /// A character that prints as nothing or as blank space (a
    /// Default_Ignorable_Code_Point, a separator other than the ASCII
    /// space, the blank Braille pattern), anywhere.
    #[error("device_name must not contain invisible or separator characters other than spaces")]
    InvisibleOrSeparator,
    /// Over [`MAX_DEVICE_NAME_CHARS`] characters after trimming, or over
    /// [`MAX_RAW_FIELD_BYTES`] bytes before it.
    #[error("device_name must be at most {MAX_DEVICE_NAME_CHARS} characters")]
    TooLong,
}

impl DeviceName {
    /// Parses a `device_name` field. `Ok(None)` when nothing is left after
    /// trimming: no name was given.
    ///
    /// # Errors
    /// [`DeviceNameError`] naming the first rule `raw` breaks.
    pub fn parse(raw: &str) -> Result<Option<Self>, DeviceNameError> {
        // Bounded before counting graphemes, so a huge field costs a length
        // check only (64 clusters of several code points each fit easily).
        if raw.len() > MAX_RAW_FIELD_BYTES {
            return Err(DeviceNameError::TooLong);
        }
        if has_control_char(raw) {
            return Err(DeviceNameError::ControlCharacter);
        }
        if raw.chars().any(invisible_or_separator) {
            return Err(DeviceNameError::InvisibleOrSeparator);
        }
        let trimmed = raw.trim_matches(' ');
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.graphemes(true).count() > MAX_DEVICE_NAME_CHARS {
            return Err(DeviceNameError::TooLong);
        }
        Ok(Some(Self(trimmed.to_owned())))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `user-agent` metadata of a Login or Refresh, as a session keeps it:
/// decoded as UTF-8 (invalid bytes become U+FFFD), without control
/// characters or invisible and separator characters other than the ASCII
/// space (so a right-to-left override cannot disguise it where it is
/// shown), trimmed of spaces, and cut to at most [`MAX_USER_AGENT_BYTES`]
/// bytes at a character boundary. It is whatever the client says it is:
/// for display only, never for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAgent(String);

impl UserAgent {
    /// Cleans a raw `user-agent` header value; `None` when nothing is left.
    pub fn from_header(raw: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(raw);
        let mut kept = String::with_capacity(raw.len().min(MAX_USER_AGENT_BYTES));
        for c in text
            .chars()
            .filter(|&c| !c.is_control() && !invisible_or_separator(c))
        {
            if kept.len() + c.len_utf8() > MAX_USER_AGENT_BYTES {
                break;
            }
            kept.push(c);
        }
        let kept = kept.trim_matches(' ');
        (!kept.is_empty()).then(|| Self(kept.to_owned()))
    }

    /// The cleaned value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_name_is_trimmed_and_empty_is_none() {
        assert_eq!(
            DeviceName::parse("  Alice's phone ")
                .unwrap()
                .unwrap()
                .as_str(),
            "Alice's phone"
        );
        assert_eq!(DeviceName::parse("").unwrap(), None);
        assert_eq!(DeviceName::parse("   ").unwrap(), None);
    }

    #[test]
    fn a_device_name_is_counted_in_grapheme_clusters() {
        assert!(DeviceName::parse(&"a".repeat(64)).unwrap().is_some());
        assert_eq!(
            DeviceName::parse(&"a".repeat(65)),
            Err(DeviceNameError::TooLong)
        );
        // 64 flags (two code points each) and 64 accented letters (a base
        // and two combining marks) are 64 characters.
        assert!(DeviceName::parse(&"🇫🇷".repeat(64)).unwrap().is_some());
        assert!(
            DeviceName::parse(&"e\u{301}\u{302}".repeat(64))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            DeviceName::parse(&"🇫🇷".repeat(65)),
            Err(DeviceNameError::TooLong)
        );
        // The spaces trimmed do not count.
        assert!(
            DeviceName::parse(&format!("  {}  ", "a".repeat(64)))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            DeviceName::parse(&"a".repeat(2000)),
            Err(DeviceNameError::TooLong)
        );
    }

    #[test]
    fn a_device_name_refuses_control_and_invisible_characters_even_at_the_ends() {
        for c in ['\0', '\t', '\n', '\r', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert_eq!(
                DeviceName::parse(&format!("phone{c}")),
                Err(DeviceNameError::ControlCharacter),
                "U+{:04X}",
                c as u32
            );
        }
        for c in [
            '\u{200b}', '\u{200d}', '\u{202e}', '\u{feff}', '\u{a0}', '\u{3000}', '\u{2028}',
            '\u{3164}', '\u{2800}',
        ] {
            assert_eq!(
                DeviceName::parse(&format!("{c}phone")),
                Err(DeviceNameError::InvisibleOrSeparator),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn a_user_agent_is_cleaned_and_cut_at_a_character_boundary() {
        assert_eq!(
            UserAgent::from_header(b"grpc-go/1.70 (linux)")
                .unwrap()
                .as_str(),
            "grpc-go/1.70 (linux)"
        );
        assert_eq!(UserAgent::from_header(b""), None);
        assert_eq!(UserAgent::from_header(b" \t "), None);
        assert_eq!(
            UserAgent::from_header("a\u{202e}b\u{200b}c\x7fd".as_bytes())
                .unwrap()
                .as_str(),
            "abcd"
        );
        // Invalid UTF-8 is replaced, not refused.
        assert_eq!(
            UserAgent::from_header(b"caf\xe9").unwrap().as_str(),
            "caf\u{fffd}"
        );
        let long = "é".repeat(200);
        let kept = UserAgent::from_header(long.as_bytes()).unwrap();
        assert_eq!(kept.as_str().len(), MAX_USER_AGENT_BYTES);
        let odd = format!("x{long}");
        let kept = UserAgent::from_header(odd.as_bytes()).unwrap();
        assert_eq!(kept.as_str().len(), MAX_USER_AGENT_BYTES - 1);
        assert!(kept.as_str().starts_with('x'));
    }
}

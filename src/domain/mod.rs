//! Domain types that parse: once a value of these types exists it is valid, so
//! the service and the store never check it again.
//!
//! - [`Email`]: the normalised, validated form of an email address.
//! - [`NewPassword`]: a password that satisfies the registration policy.
//! - [`PasswordAttempt`]: a password presented at login (normalised only).
//! - [`DeviceName`] and [`UserAgent`]: what a session records about its
//!   client, shown back to the user by ListSessions.
//! - [`BearerToken`]: the `authorization: Bearer …` credentials of an
//!   AccountApi call (RFC 6750), before verification.
//! - [`SessionCursor`] and [`page_size`]: ListSessions paging (AIP-158).
//! - the events of the `user` aggregate ([`UserEvent`]): [`UserRegistered`],
//!   [`SessionStarted`], [`SessionRevoked`] (with its [`RevokeReason`]),
//!   [`PasswordChanged`], [`UserDeleted`].
//! - [`UserId`], [`SessionId`], [`TokenId`]: typed ids, so a store call
//!   cannot take one for another (defined with the token claims in the
//!   verifier crate, which downstream services share).

mod bearer;
mod client;
mod email;
mod event;
mod page;
mod password;

pub use bearer::{BearerError, BearerToken};
pub use client::{
    DeviceName, DeviceNameError, MAX_DEVICE_NAME_CHARS, MAX_USER_AGENT_BYTES, UserAgent,
};
pub use email::{Email, EmailError, MAX_EMAIL_BYTES};
pub use event::{
    PasswordChanged, RevokeReason, SessionRevoked, SessionStarted, USER_AGGREGATE, UserDeleted,
    UserEvent, UserRegistered,
};
pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageError, SessionCursor, page_size};
pub use password::{
    MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, NewPassword, PasswordAttempt, PasswordError,
};
pub use realchat_auth_verifier::{SessionId, TokenId, UserId};

use icu_properties::CodePointSetData;
use icu_properties::props::DefaultIgnorableCodePoint;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A rule broken by one request field, reported to clients as a
/// `google.rpc.BadRequest.FieldViolation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, as named in the proto (`email`, `password`, …).
    pub field: &'static str,
    /// Why the value was refused, written for the caller.
    pub description: String,
}

/// Most UTF-8 bytes of a raw email or password that is normalised at all.
/// NFKC can shrink text about threefold (Hangul jamo compose), so anything
/// longer could never fit the 254- and 72-byte limits; refusing it before
/// normalising keeps a huge field from costing more than a length check.
/// A device name is bounded by it too, before its characters are counted.
pub const MAX_RAW_FIELD_BYTES: usize = 1024;

/// True when `s` holds a NUL or any other Unicode control character (Cc).
pub(crate) fn has_control_char(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// True when `c` prints as nothing or as blank space, so that two
/// identifiers differing only in it look the same: every
/// Default_Ignorable_Code_Point (UAX #44; Hangul fillers, variation
/// selectors, the combining grapheme joiner, Khmer inherent vowels, and the
/// zero-width and bidirectional format characters), every separator (UAX
/// #44 general categories Zs, Zl, Zp: no-break and ideographic spaces, line
/// and paragraph separators), and U+2800 BRAILLE PATTERN BLANK, which Unicode
/// files as a symbol but which prints blank. U+0020 SPACE is not included:
/// each field decides whether it trims or refuses it, or (a device name)
/// allows it. The one rule for every identifier-like field.
pub(crate) fn invisible_or_separator(c: char) -> bool {
    if c == ' ' {
        return false;
    }
    CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || matches!(
            c.general_category(),
            GeneralCategory::SpaceSeparator
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
        || c == '\u{2800}'
}

/// NFKC-normalises `s` (Unicode Standard Annex #15).
pub(crate) fn nfkc(s: &str) -> String {
    s.nfkc().collect()
}

//! Paging of ListSessions (AIP-158): the page size a request asks for, and
//! the opaque `page_token` that carries where the previous page ended.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::SessionId;

/// Sessions in a page when the request leaves `page_size` at 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most sessions in a page; a larger `page_size` is lowered to it (AIP-158:
/// coerce, do not refuse).
pub const MAX_PAGE_SIZE: usize = 100;

/// Why a paging field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `page_size` below zero.
    #[error("page_size must not be negative")]
    NegativeSize,
    /// A `page_token` not in the form this server issues (or a damaged one).
    #[error("page_token is not a token this server issued")]
    BadToken,
}

/// The page size for a requested `page_size`: 0 is [`DEFAULT_PAGE_SIZE`],
/// above [`MAX_PAGE_SIZE`] is the maximum.
///
/// # Errors
/// [`PageError::NegativeSize`].
pub fn page_size(requested: i32) -> Result<usize, PageError> {
    match usize::try_from(requested) {
        Err(_) => Err(PageError::NegativeSize),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

/// Where a page of sessions (newest first) ended: the last session's
/// creation time and id, its sort key. The next page starts strictly after
/// it, so sessions started meanwhile never shift a page (keyset paging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCursor {
    /// The last session's `created_at` (PostgreSQL keeps microseconds).
    pub created_at: DateTime<Utc>,
    /// The last session's id, which breaks ties between equal times.
    pub id: SessionId,
}

/// The first byte of a token: its layout, so a later layout can be told
/// apart from this one.
const VERSION: u8 = 1;
/// The latest `created_at` a cursor may hold: 9999-12-31T23:59:59.999999Z,
/// microseconds since the epoch.
const MAX_MICROS: i64 = 253_402_300_799_999_999;

/// Version, microseconds since the epoch (big-endian i64), the UUID.
const TOKEN_BYTES: usize = 1 + 8 + 16;

impl SessionCursor {
    /// Parses a `page_token`: `Ok(None)` for the empty token (the first
    /// page).
    ///
    /// # Errors
    /// [`PageError::BadToken`] for anything [`SessionCursor::encode`] does
    /// not produce (the unpadded URL-safe base64 alphabet only, canonical
    /// trailing bits, the exact length and version, a time from the epoch to
    /// year 9999). The token is not signed: a well-formed token the server
    /// did not issue is a cursor like any other and pages from there, which
    /// shows the caller nothing but its own sessions.
    pub fn parse(token: &str) -> Result<Option<Self>, PageError> {
        if token.is_empty() {
            return Ok(None);
        }
        // Checked before decoding, so a huge token costs a length check.
        if token.len() > TOKEN_BYTES.div_ceil(3) * 4 {
            return Err(PageError::BadToken);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageError::BadToken)?;
        let [VERSION, rest @ ..] = bytes.as_slice() else {
            return Err(PageError::BadToken);
        };
        let (micros, id) = rest.split_at_checked(8).ok_or(PageError::BadToken)?;
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| PageError::BadToken)?);
        let id = Uuid::from_slice(id).map_err(|_| PageError::BadToken)?;
        // A session's `created_at` is between the epoch and year 10000;
        // outside it the time is no cursor we issued, and PostgreSQL would
        // refuse it as out of range (an INTERNAL, were it sent).
        if !(0..=MAX_MICROS).contains(&micros) {
            return Err(PageError::BadToken);
        }
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(PageError::BadToken)?;
        Ok(Some(Self {
            created_at,
            id: id.into(),
        }))
    }

    /// The `next_page_token` that resumes after this session: opaque to
    /// clients (URL-safe base64, 34 characters).
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_BYTES);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.id.as_uuid().as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(1), Ok(1));
        assert_eq!(page_size(100), Ok(100));
        assert_eq!(page_size(101), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(i32::MAX), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1), Err(PageError::NegativeSize));
        assert_eq!(page_size(i32::MIN), Err(PageError::NegativeSize));
    }

    #[test]
    fn a_cursor_round_trips_to_the_microsecond() {
        let created_at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        let cursor = SessionCursor {
            created_at,
            id: SessionId::new_v7(),
        };
        let token = cursor.encode();
        assert_eq!(token.len(), 34);
        assert_eq!(SessionCursor::parse(&token), Ok(Some(cursor)));
        assert_eq!(SessionCursor::parse(""), Ok(None));
    }

    #[test]
    fn anything_else_is_a_bad_token() {
        let good = SessionCursor {
            created_at: Utc::now(),
            id: SessionId::new_v7(),
        }
        .encode();
        let mut other_version = URL_SAFE_NO_PAD.decode(&good).unwrap();
        other_version[0] = 2;
        let short = URL_SAFE_NO_PAD.encode([1u8; 24]);
        // Times PostgreSQL cannot hold (year -5000), or before the epoch.
        let mut ancient = URL_SAFE_NO_PAD.decode(&good).unwrap();
        ancient[1..9].copy_from_slice(&(-220_000_000_000_000_000_i64).to_be_bytes());
        let mut before_epoch = ancient.clone();
        before_epoch[1..9].copy_from_slice(&(-1_i64).to_be_bytes());
        for bad in [
            "garbage!".to_owned(),
            "AAAA".to_owned(),
            format!("{good}="),
            format!("{good}A"),
            good[..33].to_owned(),
            format!("+{}", &good[1..]),
            format!(" {good}"),
            URL_SAFE_NO_PAD.encode(other_version),
            short,
            URL_SAFE_NO_PAD.encode(ancient),
            URL_SAFE_NO_PAD.encode(before_epoch),
            "A".repeat(60_000),
            "\0".into(),
        ] {
            assert_eq!(
                SessionCursor::parse(&bad),
                Err(PageError::BadToken),
                "{bad:.40}"
            );
        }
    }
}

//! Refresh-token rotation with reuse detection (RFC 9700 §4.14.2), as a
//! pure decision over the session row: no I/O, so every case is unit-tested
//! here; `sessions.rs` reads the locked row, asks, and carries it out.

use chrono::{DateTime, Utc};

use crate::store::sessions::Session;
use crate::token::Claims;

/// What a Refresh with a verified refresh token does to its session.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// The session's current token: a new refresh token replaces it.
    Rotate(Session),
    /// The token retired by the latest rotation, within the grace window
    /// (concurrent tabs, a retried request): the session's current refresh
    /// token again, so the session never forks.
    ReturnCurrent(Session),
    /// Any other token of the session (retired earlier, or the previous one
    /// after the grace window): presumed stolen, so the whole session is
    /// revoked and its newest token stops working too.
    Reuse(Session),
    /// No such session for this user, or it is revoked: the token is
    /// refused. The reason is for logs.
    Refuse(&'static str),
}

/// Decides what the refresh token of `claims` does to `session` (the row of
/// `claims.sid`, if any) at `now`, with a reuse grace window of `grace`.
pub fn decide(
    session: Option<Session>,
    claims: &Claims,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Decision {
    let Some(session) = session.filter(|s| s.user_id == claims.sub) else {
        return Decision::Refuse("no such session");
    };
    if session.revoked_at.is_some() {
        return Decision::Refuse("session revoked");
    }
    if claims.jti == session.current_jti {
        return Decision::Rotate(session);
    }
    let within_grace = session.previous_jti == Some(claims.jti)
        && session.rotated_at.is_some_and(|at| now - at <= grace);
    if within_grace {
        Decision::ReturnCurrent(session)
    } else {
        Decision::Reuse(session)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::{SessionId, TokenId, UserId};

    const GRACE: Duration = Duration::seconds(10);

    /// A session rotated once, 5 s before `now()`: `current` is live,
    /// `previous` was retired by that rotation.
    fn session() -> Session {
        let now = now();
        Session {
            id: SessionId::new_v7(),
            user_id: UserId::new_v7(),
            current_jti: TokenId::new_random(),
            current_issued_at: now - Duration::seconds(5),
            previous_jti: Some(TokenId::new_random()),
            rotated_at: Some(now - Duration::seconds(5)),
            expires_at: now + Duration::days(30),
            revoked_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    /// The claims of a token of `session` with `jti`.
    fn presenting(session: &Session, jti: TokenId) -> Claims {
        Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: session.user_id,
            sid: session.id,
            jti,
            iat: 0,
            exp: 0,
        }
    }

    #[test]
    fn the_current_token_rotates() {
        let s = session();
        let claims = presenting(&s, s.current_jti);
        assert_eq!(
            decide(Some(s.clone()), &claims, now(), GRACE),
            Decision::Rotate(s)
        );
    }

    #[test]
    fn the_previous_token_within_grace_returns_the_current_one() {
        let s = session();
        let claims = presenting(&s, s.previous_jti.unwrap());
        assert_eq!(
            decide(Some(s.clone()), &claims, now(), GRACE),
            Decision::ReturnCurrent(s.clone())
        );
        // At the window's last instant still; a moment later, reuse.
        let edge = s.rotated_at.unwrap() + GRACE;
        assert!(matches!(
            decide(Some(s.clone()), &claims, edge, GRACE),
            Decision::ReturnCurrent(_)
        ));
        let after = edge + Duration::milliseconds(1);
        assert_eq!(
            decide(Some(s.clone()), &claims, after, GRACE),
            Decision::Reuse(s)
        );
    }

    #[test]
    fn an_older_token_is_reuse_even_within_grace_and_with_no_grace_the_previous_too() {
        let s = session();
        let older = presenting(&s, TokenId::new_random());
        assert_eq!(
            decide(Some(s.clone()), &older, now(), GRACE),
            Decision::Reuse(s.clone())
        );
        let previous = presenting(&s, s.previous_jti.unwrap());
        assert_eq!(
            decide(Some(s.clone()), &previous, now(), Duration::zero()),
            Decision::Reuse(s)
        );
    }

    #[test]
    fn a_revoked_missing_or_foreign_session_is_refused() {
        let s = session();
        let claims = presenting(&s, s.current_jti);
        let revoked = Session {
            revoked_at: Some(now()),
            ..s.clone()
        };
        assert_eq!(
            decide(Some(revoked), &claims, now(), GRACE),
            Decision::Refuse("session revoked")
        );
        assert_eq!(
            decide(None, &claims, now(), GRACE),
            Decision::Refuse("no such session")
        );
        let foreign = Claims {
            sub: UserId::new_v7(),
            ..claims
        };
        assert_eq!(
            decide(Some(s), &foreign, now(), GRACE),
            Decision::Refuse("no such session")
        );
    }
}

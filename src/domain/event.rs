use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Email, SessionId, UserId};

/// The `UserRegistered` event, written to the outbox in the `Register`
/// transaction and published by the relay to the user topic.
///
/// Payload (JSON, fields are only ever added):
/// `{"event_id": uuid, "user_id": uuid, "email": string,
///   "registered_at": RFC 3339 UTC timestamp}`.
#[derive(Debug, Clone, Serialize)]
pub struct UserRegistered {
    /// The event id: the outbox row's `id` and the `ce_id` header.
    pub event_id: Uuid,
    /// The new user's id (the aggregate id, and the Kafka key).
    pub user_id: UserId,
    /// The normalised email.
    pub email: String,
    /// When the user was created, RFC 3339 with microseconds, UTC.
    pub registered_at: String,
}

impl UserEvent for UserRegistered {
    const EVENT_TYPE: &'static str = "UserRegistered";
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn user_id(&self) -> UserId {
        self.user_id
    }
}

impl UserRegistered {
    /// The event for a user created at `at`, with a fresh (v7) event id.
    pub fn new(user_id: UserId, email: &Email, at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            email: email.as_str().to_owned(),
            registered_at: rfc3339(at),
        }
    }
}

/// Why a session ended, as `SessionRevoked.reason` says it (and as the
/// `sessions.revoke_reason` column stores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// Logout of this session (scope `SESSION`).
    Logout,
    /// Logout of every session of the user (scope `ALL`).
    LogoutAll,
    /// Logout of every other session of the user (scope `OTHERS`).
    LogoutOthers,
    /// `RevokeSession` by the user.
    RevokedByUser,
    /// A retired refresh token presented after the grace window
    /// (RFC 9700 §4.14.2 reuse detection).
    ReuseDetected,
    /// `ChangePassword` ended the user's other sessions.
    PasswordChanged,
}

impl RevokeReason {
    /// The reason as the event and the database spell it (`logout_all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::LogoutOthers => "logout_others",
            Self::RevokedByUser => "revoked_by_user",
            Self::ReuseDetected => "reuse_detected",
            Self::PasswordChanged => "password_changed",
        }
    }
}

/// An event of the `user` aggregate: written to the outbox in the
/// transaction of its change, published to the user topic with the user id
/// as the key, so one consumer sees one user's history in order.
pub trait UserEvent: Serialize {
    /// Outbox `type` and the `ce_type` header.
    const EVENT_TYPE: &'static str;
    /// The event id: the outbox row's `id` and the `ce_id` header.
    fn event_id(&self) -> Uuid;
    /// The user it is about: the aggregate id and the Kafka key.
    fn user_id(&self) -> UserId;
}

/// Outbox `aggregatetype` of user events; the relay publishes them to the
/// topic named after it.
pub const USER_AGGREGATE: &str = "user";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `SessionStarted`: a Login started a session.
///
/// Payload: `{"event_id": uuid, "user_id": uuid, "session_id": uuid,
///   "started_at": RFC 3339 UTC, "device_name": string or null}`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionStarted {
    /// The event id.
    pub event_id: Uuid,
    /// The session's user.
    pub user_id: UserId,
    /// The new session (the tokens' `sid`).
    pub session_id: SessionId,
    /// When it started, RFC 3339 with microseconds, UTC.
    pub started_at: String,
    /// The LoginRequest's `device_name`, or `null`.
    pub device_name: Option<String>,
}

impl SessionStarted {
    /// The event for a session started at `at`, with a fresh (v7) event id.
    pub fn new(
        user_id: UserId,
        session_id: SessionId,
        device_name: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            session_id,
            started_at: rfc3339(at),
            device_name: device_name.map(str::to_owned),
        }
    }
}

impl UserEvent for SessionStarted {
    const EVENT_TYPE: &'static str = "SessionStarted";
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn user_id(&self) -> UserId {
        self.user_id
    }
}

/// `SessionRevoked`: a live session ended (one event per session that a
/// change actually ended; none for one already revoked).
///
/// Payload: `{"event_id": uuid, "user_id": uuid, "session_id": uuid,
///   "revoked_at": RFC 3339 UTC, "reason": "logout" | "logout_all" |
///   "logout_others" | "revoked_by_user" | "reuse_detected" |
///   "password_changed"}`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRevoked {
    /// The event id.
    pub event_id: Uuid,
    /// The session's user.
    pub user_id: UserId,
    /// The session that ended.
    pub session_id: SessionId,
    /// When, RFC 3339 with microseconds, UTC.
    pub revoked_at: String,
    /// Why.
    pub reason: RevokeReason,
}

impl SessionRevoked {
    /// The event for a session revoked at `at`, with a fresh (v7) event id.
    pub fn new(
        user_id: UserId,
        session_id: SessionId,
        reason: RevokeReason,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            session_id,
            revoked_at: rfc3339(at),
            reason,
        }
    }
}

impl UserEvent for SessionRevoked {
    const EVENT_TYPE: &'static str = "SessionRevoked";
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn user_id(&self) -> UserId {
        self.user_id
    }
}

/// `PasswordChanged`: the user's password was changed. Carries no
/// password, hash or token.
///
/// Payload: `{"event_id": uuid, "user_id": uuid, "changed_at": RFC 3339 UTC}`.
#[derive(Debug, Clone, Serialize)]
pub struct PasswordChanged {
    /// The event id.
    pub event_id: Uuid,
    /// The user.
    pub user_id: UserId,
    /// When, RFC 3339 with microseconds, UTC.
    pub changed_at: String,
}

impl PasswordChanged {
    /// The event for a change at `at`, with a fresh (v7) event id.
    pub fn new(user_id: UserId, at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            changed_at: rfc3339(at),
        }
    }
}

impl UserEvent for PasswordChanged {
    const EVENT_TYPE: &'static str = "PasswordChanged";
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn user_id(&self) -> UserId {
        self.user_id
    }
}

/// `UserDeleted`: the account is gone, and with it every session (no
/// `SessionRevoked` follows). Carries no personal data.
///
/// Payload: `{"event_id": uuid, "user_id": uuid, "deleted_at": RFC 3339 UTC}`.
#[derive(Debug, Clone, Serialize)]
pub struct UserDeleted {
    /// The event id.
    pub event_id: Uuid,
    /// The deleted user.
    pub user_id: UserId,
    /// When, RFC 3339 with microseconds, UTC.
    pub deleted_at: String,
}

impl UserDeleted {
    /// The event for a deletion at `at`, with a fresh (v7) event id.
    pub fn new(user_id: UserId, at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            deleted_at: rfc3339(at),
        }
    }
}

impl UserEvent for UserDeleted {
    const EVENT_TYPE: &'static str = "UserDeleted";
    fn event_id(&self) -> Uuid {
        self.event_id
    }
    fn user_id(&self) -> UserId {
        self.user_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload matches the published JSON Schema: every required field
    /// present, of its type and format, and nothing the schema lacks.
    #[test]
    fn payload_follows_the_published_schema() {
        let schema: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/schemas/user-registered.v1.schema.json"
        ))
        .unwrap();
        let email = Email::parse("alice@example.com").unwrap();
        let payload =
            serde_json::to_value(UserRegistered::new(UserId::new_v7(), &email, Utc::now()))
                .unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for field in schema["required"].as_array().unwrap() {
            let field = field.as_str().unwrap();
            assert!(
                payload[field].is_string(),
                "{field} missing or not a string"
            );
        }
        for (field, value) in payload.as_object().unwrap() {
            let spec = properties
                .get(field)
                .unwrap_or_else(|| panic!("{field} not in the schema"));
            let text = value.as_str().unwrap();
            match spec["format"].as_str() {
                Some("uuid") => assert!(Uuid::parse_str(text).is_ok(), "{field}"),
                Some("date-time") => assert!(DateTime::parse_from_rfc3339(text).is_ok(), "{field}"),
                _ => {}
            }
        }
    }
}

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

/// Implements [`UserEvent`] for event structs with `event_id` and `user_id`
/// fields, the type name being the event type.
macro_rules! user_events {
    ($($event:ident),* $(,)?) => {$(
        impl UserEvent for $event {
            const EVENT_TYPE: &'static str = stringify!($event);
            fn event_id(&self) -> Uuid {
                self.event_id
            }
            fn user_id(&self) -> UserId {
                self.user_id
            }
        }
    )*};
}

user_events!(
    UserRegistered,
    SessionStarted,
    SessionRevoked,
    PasswordChanged,
    UserDeleted
);

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every reason, each checked against the schema.
    fn every_reason() -> [RevokeReason; 6] {
        use RevokeReason as R;
        // The match is exhaustive on purpose: a new reason does not compile
        // until it is named here, a reminder to list it and document it.
        [
            R::Logout,
            R::LogoutAll,
            R::LogoutOthers,
            R::RevokedByUser,
            R::ReuseDetected,
            R::PasswordChanged,
        ]
        .map(|reason| match reason {
            R::Logout
            | R::LogoutAll
            | R::LogoutOthers
            | R::RevokedByUser
            | R::ReuseDetected
            | R::PasswordChanged => reason,
        })
    }

    /// One serialized payload of every event type (and of every variant of
    /// the fields that vary: a device name or none, each revoke reason),
    /// with the schema it is published under.
    fn every_payload() -> Vec<(&'static str, &'static str, Value)> {
        fn json(event: impl UserEvent) -> Value {
            serde_json::to_value(event).unwrap()
        }
        let (user, session, now) = (UserId::new_v7(), SessionId::new_v7(), Utc::now());
        let email = Email::parse("alice@example.com").unwrap();
        let mut payloads = vec![
            (
                UserRegistered::EVENT_TYPE,
                include_str!("../../docs/schemas/user-registered.v1.schema.json"),
                json(UserRegistered::new(user, &email, now)),
            ),
            (
                SessionStarted::EVENT_TYPE,
                include_str!("../../docs/schemas/session-started.v1.schema.json"),
                json(SessionStarted::new(
                    user,
                    session,
                    Some("Alice's phone"),
                    now,
                )),
            ),
            (
                SessionStarted::EVENT_TYPE,
                include_str!("../../docs/schemas/session-started.v1.schema.json"),
                json(SessionStarted::new(user, session, None, now)),
            ),
            (
                PasswordChanged::EVENT_TYPE,
                include_str!("../../docs/schemas/password-changed.v1.schema.json"),
                json(PasswordChanged::new(user, now)),
            ),
            (
                UserDeleted::EVENT_TYPE,
                include_str!("../../docs/schemas/user-deleted.v1.schema.json"),
                json(UserDeleted::new(user, now)),
            ),
        ];
        for reason in every_reason() {
            payloads.push((
                SessionRevoked::EVENT_TYPE,
                include_str!("../../docs/schemas/session-revoked.v1.schema.json"),
                json(SessionRevoked::new(user, session, reason, now)),
            ));
        }
        payloads
    }

    /// Whether `value` is of the JSON Schema `type` named `name`.
    fn is_of_type(value: &Value, name: &str) -> bool {
        match name {
            "string" => value.is_string(),
            "null" => value.is_null(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            other => panic!("type {other} unknown to this test"),
        }
    }

    /// Every payload matches its published JSON Schema: titled by its
    /// `ce_type`, every required field present, each field of its type,
    /// format and enum, and no field the schema lacks (nor a property the
    /// event never sends), so docs/schemas cannot drift from the code.
    #[test]
    fn payload_follows_the_published_schema() {
        for (event_type, schema, payload) in every_payload() {
            let schema: Value = serde_json::from_str(schema).unwrap();
            assert_eq!(schema["title"], event_type, "schema of {event_type}");
            let payload = payload.as_object().unwrap();
            let properties = schema["properties"].as_object().unwrap();
            for field in schema["required"].as_array().unwrap() {
                let field = field.as_str().unwrap();
                assert!(payload.contains_key(field), "{event_type}.{field} missing");
            }
            for field in properties.keys() {
                assert!(
                    payload.contains_key(field),
                    "{event_type}.{field} in the schema but never sent"
                );
            }
            for (field, value) in payload {
                let spec = properties
                    .get(field)
                    .unwrap_or_else(|| panic!("{event_type}.{field} not in the schema"));
                let types: Vec<&str> = match &spec["type"] {
                    Value::String(name) => vec![name.as_str()],
                    Value::Array(names) => names.iter().map(|n| n.as_str().unwrap()).collect(),
                    other => panic!("{event_type}.{field}: type {other}"),
                };
                assert!(
                    types.iter().any(|name| is_of_type(value, name)),
                    "{event_type}.{field} = {value} is not {types:?}"
                );
                if let Some(max) = spec["maxLength"].as_u64() {
                    let chars = value.as_str().map_or(0, |text| text.chars().count());
                    assert!(chars as u64 <= max, "{event_type}.{field} too long");
                }
                if let Some(allowed) = spec["enum"].as_array() {
                    assert!(
                        allowed.contains(value),
                        "{event_type}.{field} = {value} not in {allowed:?}"
                    );
                }
                let Some(text) = value.as_str() else {
                    continue;
                };
                match spec["format"].as_str() {
                    Some("uuid") => {
                        assert!(Uuid::parse_str(text).is_ok(), "{event_type}.{field}");
                    }
                    Some("date-time") => assert!(
                        DateTime::parse_from_rfc3339(text).is_ok(),
                        "{event_type}.{field}"
                    ),
                    None => {}
                    Some(other) => panic!("format {other} unknown to this test"),
                }
            }
        }
    }

    /// The schema's reasons are exactly the code's, spelt as the event and
    /// the `sessions.revoke_reason` column spell them.
    #[test]
    fn revoke_reasons_are_the_schemas() {
        let schema: Value = serde_json::from_str(include_str!(
            "../../docs/schemas/session-revoked.v1.schema.json"
        ))
        .unwrap();
        let documented: Vec<&str> = schema["properties"]["reason"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let reasons = every_reason();
        let spelt: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
        assert_eq!(documented, spelt);
        for reason in reasons {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}

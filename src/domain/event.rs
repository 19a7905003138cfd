use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Email, UserId};

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
    /// Outbox `aggregatetype` of user events; the relay publishes them to the
    /// topic named after it.
    pub const AGGREGATE_TYPE: &'static str = "user";
    /// Outbox `type` of this event.
    pub const EVENT_TYPE: &'static str = "UserRegistered";

    /// The event for a user created at `at`, with a fresh (v7) event id.
    pub fn new(user_id: UserId, email: &Email, at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            user_id,
            email: email.as_str().to_owned(),
            registered_at: at.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
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

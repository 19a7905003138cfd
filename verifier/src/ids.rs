//! Typed ids (lldap's `UserId`): a user id, a session id and a token id are
//! all UUIDs, and as bare `Uuid`s one is easily passed where another is
//! meant; as types they cannot be swapped. On the wire (JSON, tokens) each
//! is its UUID string.

use std::fmt;

use uuid::Uuid;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(Uuid);

        impl $name {
            /// The id as a UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id!(
    /// A user (the `sub` claim, the outbox's aggregate id, the Kafka key).
    /// New ones are UUID v7, so they sort by creation.
    UserId
);
id!(
    /// A session: one login, one refresh-token family (the `sid` claim).
    /// New ones are UUID v7.
    SessionId
);
id!(
    /// One token (the `jti` claim); a session row stores its refresh
    /// tokens' ids, never the tokens. New ones are UUID v4 (random).
    TokenId
);

impl UserId {
    /// A new user id (UUID v7).
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl SessionId {
    /// A new session id (UUID v7).
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl TokenId {
    /// A new, unguessable token id (UUID v4).
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

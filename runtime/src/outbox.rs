//! The outbox's wake-up: the server queues `NOTIFY` on this channel in the
//! transaction that writes outbox rows (PostgreSQL delivers it on commit),
//! and the relay `LISTEN`s on it. It carries no payload: it only wakes the
//! relay, which then claims whatever is unpublished.

/// The PostgreSQL `NOTIFY`/`LISTEN` channel of the outbox.
pub const NOTIFY_CHANNEL: &str = "outbox";

-- The Profile service's own tables (its own database, not the auth one).
CREATE TABLE profiles (
    user_id    uuid        PRIMARY KEY,
    email      text        NOT NULL,
    created_at timestamptz NOT NULL
);

-- Inbox: one row per event id handled, written in the same transaction as
-- the profile, so a redelivered event is recognised and changes nothing.
CREATE TABLE inbox (
    event_id    uuid        PRIMARY KEY,
    event_type  text        NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    -- How many times the event was delivered (1 = never redelivered).
    deliveries  integer     NOT NULL DEFAULT 1
);

-- Users: one row per account. `email` holds the normalised form (trimmed, NFKC,
-- lower-cased), so the unique index is the one arbiter of "already registered".
CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Sessions: one per login, i.e. one refresh-token family (RFC 9700 §4.14.2).
-- Only token ids (jti) are stored, never tokens.
CREATE TABLE sessions (
    id                uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- jti of the one refresh token that may be rotated now.
    current_jti       uuid        NOT NULL,
    -- iat of the current refresh token (whole seconds): with current_jti and
    -- expires_at it lets the grace window hand out the same token again.
    current_issued_at timestamptz NOT NULL,
    -- jti retired by the latest rotation, and when; reuse within the grace
    -- window is a benign race, after it a replay.
    previous_jti      uuid,
    rotated_at        timestamptz,
    -- exp of the current refresh token.
    expires_at        timestamptz NOT NULL,
    revoked_at        timestamptz,
    revoke_reason     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_refreshed_at timestamptz
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- Transactional outbox. Column names follow Debezium's Outbox Event Router
-- defaults (id, aggregatetype, aggregateid, type, payload), so the same table
-- can be handed to Debezium unchanged.
CREATE TABLE outbox (
    id            uuid        PRIMARY KEY,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb       NOT NULL,
    -- Claim order. Assigned before commit, so it is never used as a cursor.
    seq           bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- NULL until the broker acknowledged the event.
    published_at  timestamptz
);
-- The relay's claim query: unpublished rows in seq order.
CREATE INDEX outbox_unpublished_idx ON outbox (seq) WHERE published_at IS NULL;

-- What a session records about its client, shown to the user by
-- ListSessions: the LoginRequest's device name, and the `user-agent` and
-- client address of its last Login or Refresh. NULL when none was given or
-- known (and for every session started before this migration).
ALTER TABLE sessions
    ADD COLUMN device_name text,
    ADD COLUMN user_agent  text,
    ADD COLUMN ip_address  text;

-- ListSessions reads one user's sessions newest first and resumes a page
-- after the (created_at, id) of the previous page's last row: this index
-- serves both, so a page costs the rows it returns (plus the revoked and
-- expired ones it skips) instead of a sort of all the user's sessions. Its
-- leading column also serves everything the plain user_id index did (the
-- user's sessions for Logout and ChangePassword, ON DELETE CASCADE), so that
-- one goes: one index less to maintain on every Login. Not partial on
-- `revoked_at IS NULL`: revocation and the cascade must find revoked rows
-- too. None of the columns a Refresh updates is indexed, so rotations can
-- stay heap-only updates.
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at DESC, id DESC);
DROP INDEX sessions_user_id_idx;

-- DeleteAccount deletes the user's published outbox rows (they may carry
-- the email) by aggregate; without an index that is a scan of the whole
-- outbox (a week of every user's events) per deletion.
CREATE INDEX outbox_aggregate_idx ON outbox (aggregatetype, aggregateid);

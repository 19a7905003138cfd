-- Look-alike addresses are one account: `email_key` is the address as it
-- looks (`Email::lookalike_key`: every non-ASCII character replaced by its
-- UTS #39 confusable prototype, ASCII kept), so an all-Cyrillic `аррӏе@…`
-- cannot register beside `apple@…`. Register inserts it; its unique index is
-- a second arbiter beside `users.email`, and a conflict on either is
-- ALREADY_EXISTS.
ALTER TABLE users ADD COLUMN email_key text;

-- SQL cannot compute prototypes, so existing rows take their email as key.
-- For an all-ASCII email that is exactly its key (ASCII is kept as it is).
-- An older non-ASCII email keeps itself as key, so a new look-alike of it is
-- not caught by this index until the application recomputes that key (and
-- settles any older pair of look-alikes that would then collide). Rows
-- stored with an `xn--` domain are ASCII, but their address is now stored
-- with the Unicode domain: they need the same recomputation. The keys are
-- unique here because the emails are.
UPDATE users SET email_key = email;

ALTER TABLE users ALTER COLUMN email_key SET NOT NULL;
CREATE UNIQUE INDEX users_email_key_idx ON users (email_key);

-- Login throttling state, shared by every replica. One row per key:
-- 'account:<normalised email>' or 'client:<address>'. `failures` counts
-- failed logins since `window_start`; a window older than the configured
-- length starts over at the next failure.
CREATE TABLE login_throttle (
    key          text        PRIMARY KEY,
    failures     integer     NOT NULL,
    window_start timestamptz NOT NULL
);

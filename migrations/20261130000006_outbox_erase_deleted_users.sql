-- A deleted user's events leave the database once they are delivered.
-- DeleteAccount deletes the user's published outbox rows in its own
-- transaction, but rows still waiting for the relay then (a UserRegistered
-- carrying the email) must still be delivered, in order, and are published
-- later. Per-user order puts the user's UserDeleted after every earlier
-- event of the user, so when the relay marks the UserDeleted published, the
-- user's other rows are published too: delete them then, in the relay's
-- marking transaction. The UserDeleted row itself carries no personal data
-- and goes with the relay's retention.
CREATE FUNCTION outbox_erase_deleted_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM outbox
     WHERE aggregatetype = NEW.aggregatetype
       AND aggregateid = NEW.aggregateid
       AND published_at IS NOT NULL
       AND id <> NEW.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_erase_deleted_user
    AFTER UPDATE OF published_at ON outbox
    FOR EACH ROW
    WHEN (NEW.type = 'UserDeleted' AND NEW.aggregatetype = 'user'
          AND OLD.published_at IS NULL AND NEW.published_at IS NOT NULL)
    EXECUTE FUNCTION outbox_erase_deleted_user();

-- Run once by the postgres image on a fresh volume (compose.yaml mounts it
-- into /docker-entrypoint-initdb.d): the Profile example's own database.
CREATE DATABASE realchat_profile;

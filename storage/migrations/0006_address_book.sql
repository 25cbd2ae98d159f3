-- Issue 7: the chat address book. One row per (platform, user id): the email that joins the
-- user to PagerDuty (stored lower-cased), a display name, and the platform's conversation data
-- (opaque JSON, e.g. a Teams conversation reference) so Ackgate can message them proactively.

CREATE TABLE chat_address_book (
    platform      TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    email         TEXT NOT NULL DEFAULT '',
    display_name  TEXT NOT NULL DEFAULT '',
    conversation  TEXT NOT NULL DEFAULT '',
    updated_at    {timestamp} NOT NULL,
    PRIMARY KEY (platform, user_id)
);
CREATE INDEX chat_address_book_by_email ON chat_address_book (email);

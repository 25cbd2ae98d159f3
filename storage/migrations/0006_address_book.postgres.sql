-- Issue 7: the chat address book. One row per (platform, user id): the email that joins the
-- user to PagerDuty (stored lower-cased), a display name, and the platform's conversation data
-- (opaque JSON, e.g. a Teams conversation reference) so Ackgate can message them proactively.

CREATE TABLE chat_address_book (
    platform      text NOT NULL,
    user_id       text NOT NULL,
    email         text NOT NULL DEFAULT '',
    display_name  text NOT NULL DEFAULT '',
    conversation  text NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (platform, user_id)
);
CREATE INDEX chat_address_book_by_email ON chat_address_book (email);

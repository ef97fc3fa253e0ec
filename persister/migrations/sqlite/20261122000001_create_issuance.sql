-- Same schema as migrations/mysql, in SQLite's types; re-runnable like it.
CREATE TABLE IF NOT EXISTS coupon_issuance (
    coupon BLOB NOT NULL,
    seq INTEGER NOT NULL,
    user BLOB NOT NULL,
    issued_at_ms INTEGER NULL,
    issue_entry_id TEXT NULL,
    revoked_at_ms INTEGER NULL,
    revoke_entry_id TEXT NULL,
    PRIMARY KEY (coupon, seq)
);
CREATE INDEX IF NOT EXISTS coupon_issuance_user ON coupon_issuance (coupon, user);

CREATE TABLE IF NOT EXISTS coupon_checkpoint (
    consumer_group TEXT NOT NULL,
    stream BLOB NOT NULL,
    last_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, stream)
);

-- Written to be re-run: a first start killed half-way through it is repaired by running it
-- again (see src/db/migrate.rs).
-- One row per (coupon, seq): issued when the issue event landed, revoked when the revoke did.
-- Times are unix milliseconds from the Redis server's clock (the entries' IDs).
CREATE TABLE IF NOT EXISTS coupon_issuance (
    coupon VARBINARY(512) NOT NULL,
    seq BIGINT NOT NULL,
    user VARBINARY(512) NOT NULL,
    issued_at_ms BIGINT NULL,
    issue_entry_id VARCHAR(41) NULL,
    revoked_at_ms BIGINT NULL,
    revoke_entry_id VARCHAR(41) NULL,
    PRIMARY KEY (coupon, seq),
    KEY coupon_issuance_user (coupon, user)
) ENGINE = InnoDB;

-- The highest stream entry ID committed, per consumer group and stream.
CREATE TABLE IF NOT EXISTS coupon_checkpoint (
    consumer_group VARCHAR(255) NOT NULL,
    stream VARBINARY(600) NOT NULL,
    last_ms BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, stream)
) ENGINE = InnoDB;

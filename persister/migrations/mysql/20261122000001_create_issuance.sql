-- One row per (coupon, seq): issued when the issue event landed, revoked when the revoke did.
-- A revoke that lands first creates the row with only its revoke columns set; the issue event
-- fills in the rest. Times are unix milliseconds from the Redis server's clock.
CREATE TABLE coupon_issuance (
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
CREATE TABLE coupon_checkpoint (
    consumer_group VARCHAR(255) NOT NULL,
    stream VARBINARY(600) NOT NULL,
    last_ms BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, stream)
) ENGINE = InnoDB;

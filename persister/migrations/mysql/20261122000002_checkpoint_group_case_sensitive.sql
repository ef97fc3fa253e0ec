-- Consumer groups are compared as Redis compares them: byte for byte, so "Persister" and
-- "persister" (two groups in Redis) keep two checkpoints. utf8mb4 also holds any group name.
ALTER TABLE coupon_checkpoint
    MODIFY consumer_group VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;

/*
 * src/idempotency.sql — the idempotency journal: one row per transfer, keyed by
 * (principal, idempotency_key), kept for the life of the transfer.
 * See src/idempotency.c and docs/idempotency.md.
 */
CREATE TABLE fintx.idempotency_keys (
    principal       text        COLLATE "C" NOT NULL,
    idempotency_key text        COLLATE "C" NOT NULL,
    fingerprint     bytea       NOT NULL,
    -- not UNIQUE: nothing looks a record up by its transfer, and the index entry was one of
    -- the nine a transfer writes; fintx.reconcile() reports a transfer with several records
    transfer_id     bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (principal, idempotency_key)
);
COMMENT ON TABLE fintx.idempotency_keys IS 'idempotency journal: (principal, key) -> request fingerprint and transfer';
-- No planner statistics for columns nothing filters on (hashes, JSON bodies): autovacuum's
-- ANALYZE of these fast-growing tables then skips sorting and detoasting them.
ALTER TABLE fintx.idempotency_keys ALTER COLUMN fingerprint SET STATISTICS 0;

-- SHA-256 fingerprint of a transfer request in the canonical encoding of docs/idempotency.md.
CREATE FUNCTION fintx.request_fingerprint(from_account text, to_account text, amount bigint,
                                          metadata jsonb DEFAULT '{}', pending boolean DEFAULT false,
                                          timeout interval DEFAULT NULL)
RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_request_fingerprint'
LANGUAGE C IMMUTABLE;

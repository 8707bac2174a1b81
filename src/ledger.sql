/*
 * src/ledger.sql — accounts, transfers, two-phase holds and the functions that move money.
 * The functions are implemented in C (src/ledger.c); see docs/ledger.md.
 */

CREATE TABLE fintx.accounts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code            text        COLLATE "C" NOT NULL UNIQUE,
    currency        text        NOT NULL REFERENCES fintx.currencies (code),
    allow_negative  boolean     NOT NULL,
    allow_positive  boolean     NOT NULL,
    metadata        jsonb       NOT NULL,
    debits_posted   bigint      NOT NULL DEFAULT 0,
    credits_posted  bigint      NOT NULL DEFAULT 0,
    debits_pending  bigint      NOT NULL DEFAULT 0,
    credits_pending bigint      NOT NULL DEFAULT 0,
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    closed_at       timestamptz
) WITH (fillfactor = 70);
COMMENT ON TABLE fintx.accounts IS 'ledger accounts; balance = credits - debits, in minor units';

-- The hot-path tables carry no CHECK constraints: the C code validates every value
-- before writing and fintx.reconcile() verifies the invariants (counters >= 0, statuses,
-- amounts, distinct accounts) afterwards; PostgreSQL re-reads CHECK expressions on every
-- statement, which would cost about a tenth of a transfer.
-- Immutable rows. A hold (status 'pending') is resolved by at most one later row whose
-- pending_id points at it: 'posted' (post_pending), 'voided' or 'expired'.
CREATE TABLE fintx.transfers (
    id            bigint      PRIMARY KEY,
    status        text        NOT NULL,
    from_account  bigint      NOT NULL,
    to_account    bigint      NOT NULL,
    amount        bigint      NOT NULL,
    pending_id    bigint,
    timeout_at    timestamptz,
    metadata      jsonb       NOT NULL,
    from_balance  bigint      NOT NULL,
    to_balance    bigint      NOT NULL,
    entry_hash    bytea,
    principal     text        NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX transfers_resolution_once ON fintx.transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_from_account ON fintx.transfers (from_account);
CREATE INDEX transfers_to_account ON fintx.transfers (to_account);
COMMENT ON TABLE fintx.transfers IS 'immutable transfer rows; never updated or deleted';
-- No planner statistics for columns nothing filters on (hashes, JSON bodies): autovacuum's
-- ANALYZE of these fast-growing tables then skips sorting and detoasting them.
ALTER TABLE fintx.transfers ALTER COLUMN metadata SET STATISTICS 0, ALTER COLUMN entry_hash SET STATISTICS 0;

-- CACHE: each session takes ids 32 at a time; ids are unique, not gap-free or time-ordered.
CREATE SEQUENCE fintx.transfer_id_seq AS bigint CACHE 32;

-- Open holds only: inserted with the hold, deleted by its single resolution.
CREATE TABLE fintx.pending_holds (
    transfer_id bigint      PRIMARY KEY,
    timeout_at  timestamptz
);
CREATE INDEX pending_holds_timeout ON fintx.pending_holds (timeout_at) WHERE timeout_at IS NOT NULL;

CREATE TYPE fintx.transfer_result AS (
    transfer_id  bigint,
    status       text,
    replayed     boolean,
    from_balance bigint,
    to_balance   bigint,
    entry_hash   bytea,
    created_at   timestamptz
);

CREATE FUNCTION fintx.open_account(code text, currency text,
                                   allow_negative boolean DEFAULT false,
                                   allow_positive boolean DEFAULT true,
                                   metadata jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_open_account'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.close_account(code text)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_close_account'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.transfer(idempotency_key text, from_account text, to_account text,
                               amount bigint, metadata jsonb DEFAULT '{}',
                               pending boolean DEFAULT false, timeout interval DEFAULT NULL)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_transfer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.post_pending(idempotency_key text, transfer_id bigint, amount bigint DEFAULT NULL)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_post_pending'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.void_pending(idempotency_key text, transfer_id bigint)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_void_pending'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.transfer_batch(requests jsonb)
RETURNS SETOF fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_transfer_batch'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- The batch queue (fintx.max_active_batches, src/gate.c): the limit, batches running and
-- waiting now, batches admitted and admitted after fintx.batch_queue_timeout since the server
-- started; NULLs without shared_preload_libraries.
CREATE FUNCTION fintx.batch_queue(OUT max_active integer, OUT active integer, OUT waiting bigint,
                                  OUT admitted bigint, OUT timed_out bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'fintx_batch_queue'
LANGUAGE C VOLATILE;

CREATE FUNCTION fintx.expire_pending(max_holds integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'fintx_expire_pending'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE VIEW fintx.account_balances AS
SELECT a.code,
       a.currency,
       a.credits_posted OPERATOR(pg_catalog.-) a.debits_posted AS posted,
       a.debits_pending  AS pending_debits,
       a.credits_pending AS pending_credits,
       a.credits_posted OPERATOR(pg_catalog.-) a.debits_posted OPERATOR(pg_catalog.-) a.debits_pending AS available
  FROM fintx.accounts a;
COMMENT ON VIEW fintx.account_balances IS 'posted balance, open holds and available balance per account';

-- Holds that are still open, with the time they expire.
CREATE VIEW fintx.open_holds AS
SELECT t.id AS transfer_id, fa.code AS from_account, ta.code AS to_account, t.amount,
       fa.currency, t.created_at, h.timeout_at,
       (h.timeout_at IS NOT NULL AND h.timeout_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS expired
  FROM fintx.pending_holds h
  JOIN fintx.transfers t ON t.id OPERATOR(pg_catalog.=) h.transfer_id
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account;

-- Every transfer with account codes, for reporting.
CREATE VIEW fintx.transfer_history AS
SELECT t.id AS transfer_id, t.status, t.pending_id, fa.code AS from_account, ta.code AS to_account,
       t.amount, fa.currency, t.metadata, t.from_balance, t.to_balance, t.principal, t.created_at,
       t.timeout_at
  FROM fintx.transfers t
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account;

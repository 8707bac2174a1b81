/*
 * src/authz.sql — services, permissions with risk limits, maker-checker approvals, the
 * access log and signed requests. Implemented in C (src/authz.c, src/denials.c); see
 * docs/authorization.md.
 */

-- A service is a PostgreSQL role registered under a name, with an optional Ed25519 key
-- (raw 32 bytes) that verifies the requests it signs.
CREATE TABLE fintx.services (
    name          text        COLLATE "C" PRIMARY KEY,
    role          oid         NOT NULL,
    role_name     text        NOT NULL UNIQUE,  -- services are found by role name (stable across dump/restore)
    public_key    bytea,
    registered_by text        NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE fintx.services IS 'registered services: a name, the role that authenticates as it, its request-signing key';

-- One grant: operation × account pattern (SQL LIKE, escape \) × currency (NULL: any), with
-- optional limits per transfer, per UTC calendar day, and a maker-checker threshold.
CREATE TABLE fintx.permissions (
    service         text        COLLATE "C" NOT NULL REFERENCES fintx.services (name),
    operation       text        NOT NULL,
    account_pattern text        COLLATE "C" NOT NULL,
    currency        text        REFERENCES fintx.currencies (code),
    max_amount      bigint,
    daily_limit     bigint,
    approval_above  bigint,
    granted_by      text        NOT NULL,
    granted_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE NULLS NOT DISTINCT (service, operation, account_pattern, currency)
);
COMMENT ON TABLE fintx.permissions IS 'grants: what each service may do, on which accounts, within which limits';

-- Amount used per grant, currency and UTC day; the row lock serializes racing sessions.
CREATE TABLE fintx.limit_usage (
    service         text   COLLATE "C" NOT NULL,
    operation       text   NOT NULL,
    account_pattern text   COLLATE "C" NOT NULL,
    currency        text   NOT NULL,
    day             date   NOT NULL,
    used            bigint NOT NULL,
    PRIMARY KEY (service, operation, account_pattern, currency, day)
);

-- Maker-checker: a transfer above a grant's approval_above waits here (its row in
-- fintx.transfers has status 'awaiting_approval' and moves no money) until a different
-- service approves or rejects it, once.
CREATE TABLE fintx.approvals (
    transfer_id        bigint      PRIMARY KEY,
    maker_service      text        NOT NULL,
    maker_role         text        NOT NULL,
    maker_session_user text        NOT NULL,
    from_account       text        NOT NULL,
    to_account         text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    metadata           jsonb       NOT NULL,
    pending            boolean     NOT NULL,
    timeout            interval,
    status             text        NOT NULL DEFAULT 'awaiting_approval',
    requested_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_by_service text,
    decided_by_role    text,
    decided_at         timestamptz,
    reason             text,
    result_transfer_id bigint
);
CREATE INDEX approvals_awaiting ON fintx.approvals (requested_at) WHERE status = 'awaiting_approval';

-- Every access decision, allowed and denied (PCI DSS 10.2.2 fields). Allowed decisions are
-- written in the caller's transaction; denials by the background worker in its own.
CREATE TABLE fintx.access_log_entries (
    at               timestamptz NOT NULL,
    service          text,
    role             text        NOT NULL,
    session_user_name text       NOT NULL,
    operation        text        NOT NULL,
    object           text,
    amount           bigint,
    currency         text,
    allowed          boolean     NOT NULL,
    reason           text        NOT NULL,
    rule             text,
    client_addr      inet,
    application_name text,
    backend_pid      integer     NOT NULL,
    recorded_by      text        NOT NULL
);
CREATE INDEX access_log_entries_at ON fintx.access_log_entries USING brin (at);
CREATE INDEX access_log_entries_denied ON fintx.access_log_entries (at) WHERE NOT allowed;
COMMENT ON TABLE fintx.access_log_entries IS 'access decisions; insert-only';

-- Signed requests (non-repudiation): the request as received, the signature and the key
-- that verified it, and the transfers it produced.
CREATE TABLE fintx.signed_requests (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service      text        NOT NULL,
    public_key   bytea       NOT NULL,
    request      jsonb       NOT NULL,
    message      bytea       NOT NULL,
    signature    bytea       NOT NULL,
    transfer_ids bigint[]    NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX signed_requests_transfer_ids ON fintx.signed_requests USING gin (transfer_ids);
COMMENT ON TABLE fintx.signed_requests IS 'signed requests with their Ed25519 signatures; insert-only';

-- Direct changes to services or grants (a restore, a manual fix) reach every session's cache.
CREATE FUNCTION fintx.grants_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'fintx_grants_changed'
LANGUAGE C;
CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fintx.services
    FOR EACH STATEMENT EXECUTE FUNCTION fintx.grants_changed();
CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON fintx.permissions
    FOR EACH STATEMENT EXECUTE FUNCTION fintx.grants_changed();

-- UPDATE, DELETE and TRUNCATE refused for everyone, as for the audit tables.
SELECT fintx.append_only('fintx.access_log_entries');
SELECT fintx.append_only('fintx.signed_requests');

CREATE VIEW fintx.access_log AS
SELECT at, service, role, operation, object, amount, allowed, reason, client_addr, application_name,
       currency, rule, session_user_name, backend_pid, recorded_by
  FROM fintx.access_log_entries;
COMMENT ON VIEW fintx.access_log IS 'every access decision, allowed and denied, with PCI DSS 10.2.2 fields';

CREATE FUNCTION fintx.register_service(name text, role regrole, public_key text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_register_service'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.set_service_key(name text, public_key text)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_set_service_key'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.grant_permission(service text, operation text, account_pattern text,
                                       max_amount bigint DEFAULT NULL, daily_limit bigint DEFAULT NULL,
                                       currency text DEFAULT NULL, approval_above bigint DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_grant_permission'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.revoke_permission(service text, operation text, account_pattern text)
RETURNS integer
AS 'MODULE_PATHNAME', 'fintx_revoke_permission'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.approve_transfer(transfer_id bigint)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_approve_transfer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.reject_transfer(transfer_id bigint, reason text DEFAULT NULL)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_reject_transfer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.transfer_signed(request jsonb, signature bytea)
RETURNS fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_transfer_signed'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.transfer_batch_signed(requests jsonb, signature bytea)
RETURNS SETOF fintx.transfer_result
AS 'MODULE_PATHNAME', 'fintx_transfer_batch_signed'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- The bytes a service signs for fintx.transfer_signed / transfer_batch_signed (docs/authorization.md).
CREATE FUNCTION fintx.signing_message(service text, requests jsonb)
RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_signing_message'
LANGUAGE C STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- RLS predicate: may the calling role see rows of this account?
CREATE FUNCTION fintx.account_visible(code text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_account_visible'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.transfer_visible(from_id bigint, to_id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_transfer_visible'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.event_visible(aggregatetype text, aggregateid text, payload jsonb)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_event_visible'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.consumer_visible(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_consumer_visible'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.account_id_visible(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_account_id_visible'
LANGUAGE C STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Shared-memory denial queue counters.
CREATE FUNCTION fintx.denial_queue_stats(OUT queued bigint, OUT written bigint, OUT dropped bigint,
                                         OUT pending integer)
RETURNS record
AS 'MODULE_PATHNAME', 'fintx_denial_queue_stats'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE VIEW fintx.pending_approvals AS
SELECT transfer_id, maker_service, maker_role, from_account, to_account, amount, currency,
       metadata, pending, timeout, requested_at
  FROM fintx.approvals WHERE status OPERATOR(pg_catalog.=) 'awaiting_approval';

-- Row security: services see only the accounts their grants cover (any operation);
-- admins, auditors and the owner (fintx's SECURITY DEFINER functions) see everything.
ALTER TABLE fintx.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.transfers ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.pending_holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.approvals ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.access_log_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE fintx.signed_requests ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff ON fintx.accounts FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY service ON fintx.accounts FOR SELECT TO fintx_service USING (fintx.account_visible(code));
CREATE POLICY staff ON fintx.transfers FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY service ON fintx.transfers FOR SELECT TO fintx_service
    USING (fintx.account_id_visible(from_account) OR fintx.account_id_visible(to_account));
CREATE POLICY staff ON fintx.pending_holds FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY service ON fintx.pending_holds FOR SELECT TO fintx_service
    USING (EXISTS (SELECT FROM fintx.transfers t WHERE t.id OPERATOR(pg_catalog.=) transfer_id));
CREATE POLICY staff ON fintx.approvals FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY service ON fintx.approvals FOR SELECT TO fintx_service
    USING (fintx.account_visible(from_account) OR fintx.account_visible(to_account));
CREATE POLICY staff ON fintx.idempotency_keys FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY staff ON fintx.access_log_entries FOR SELECT TO fintx_admin, fintx_auditor USING (true);
CREATE POLICY staff ON fintx.signed_requests FOR SELECT TO fintx_admin, fintx_auditor USING (true);

-- account_balances and pending_approvals read with the caller's rights, so the policies
-- above apply to services. transfer_history and open_holds show both accounts of a transfer:
-- they read as their owner and keep the transfers the caller may see (transfer_visible), so
-- a service sees its transfers with their counterparty's code.
ALTER VIEW fintx.account_balances SET (security_invoker = true);
ALTER VIEW fintx.pending_approvals SET (security_invoker = true);
CREATE OR REPLACE VIEW fintx.open_holds WITH (security_barrier) AS
SELECT t.id AS transfer_id, fa.code AS from_account, ta.code AS to_account, t.amount,
       fa.currency, t.created_at, h.timeout_at,
       (h.timeout_at IS NOT NULL AND h.timeout_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS expired
  FROM fintx.pending_holds h
  JOIN fintx.transfers t ON t.id OPERATOR(pg_catalog.=) h.transfer_id
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account
 WHERE fintx.transfer_visible(t.from_account, t.to_account);
CREATE OR REPLACE VIEW fintx.transfer_history WITH (security_barrier) AS
SELECT t.id AS transfer_id, t.status, t.pending_id, fa.code AS from_account, ta.code AS to_account,
       t.amount, fa.currency, t.metadata,
       CASE WHEN fintx.transfer_visible(t.from_account, t.from_account) THEN t.from_balance END AS from_balance,
       CASE WHEN fintx.transfer_visible(t.to_account, t.to_account) THEN t.to_balance END AS to_balance,
       t.principal, t.created_at, t.timeout_at
  FROM fintx.transfers t
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account
 WHERE fintx.transfer_visible(t.from_account, t.to_account);

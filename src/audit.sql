/*
 * src/audit.sql — the tamper-evident audit log (src/audit.c, src/sequencer.c, src/merkle.c).
 *
 *   audit_entries  one row per state change, written in the caller's transaction with the
 *                  SHA-256 leaf hash of its canonical bytes (docs/audit-format.md)
 *   audit_leaf_runs  leaf indexes -> entries, assigned by the sequencer after commit, one row
 *                  per run of consecutive leaves holding consecutive entry ids (the leaf hash
 *                  is the entry's entry_hash); the view audit_leaves lists one row per leaf
 *   audit_nodes    hashes of the complete Merkle subtrees of 16 leaves and more (levels >= 4);
 *                  the levels below are recomputed from at most 8 leaf hashes when needed
 *   audit_blocks   one per sealing pass: tree size, RFC 6962 tree head, hash chain, signature
 * All four tables are insert-only: UPDATE, DELETE and TRUNCATE are refused by triggers for every
 * role; fintx.verify_audit() catches whoever disables the triggers.
 */
-- CACHE: each session takes ids 256 at a time (no sequence lock per entry); ids stay unique,
-- their order across sessions is not commit order (leaf indexes are). A session's ids are
-- consecutive within its cached block, so a batch's entries form one or two runs (one
-- audit_leaf_runs row and one txid index entry per run, below); a session that ends leaves
-- the rest of its block unused (gaps in entry ids are harmless).
CREATE SEQUENCE fintx.audit_entry_id_seq AS bigint CACHE 256;

CREATE TABLE fintx.audit_entries (
    entry_id     bigint      PRIMARY KEY,
    txid         xid8        NOT NULL,
    recorded_at  timestamptz NOT NULL,
    actor        text        NOT NULL,
    session_role text        NOT NULL,
    action       text        NOT NULL,
    object_type  text        NOT NULL,
    object_id    text        NOT NULL,
    details      jsonb       NOT NULL,
    entry_hash   bytea       NOT NULL,
    -- Not a fact of the entry (not in its canonical bytes): how sealing finds it. Set on the
    -- first entry of each run of consecutive entry ids that one fintx call wrote in one
    -- (sub)transaction, to the run's length; NULL on the others. A sealing pass finds the
    -- runs' first entries of newly committed transactions through the partial txid index
    -- below and reads the rest of each run by entry id: a batch of 100 transfers adds a few
    -- txid index entries, not 100.
    run_length   integer     DEFAULT 1
);
CREATE INDEX audit_entries_txid ON fintx.audit_entries (txid) WHERE run_length IS NOT NULL;
COMMENT ON TABLE fintx.audit_entries IS 'audit entries, one per state change; insert-only';
-- No planner statistics for columns nothing filters on (hashes, JSON bodies): autovacuum's
-- ANALYZE of these fast-growing tables then skips sorting and detoasting them.
ALTER TABLE fintx.audit_entries ALTER COLUMN details SET STATISTICS 0, ALTER COLUMN entry_hash SET STATISTICS 0;

-- Leaves first_leaf .. first_leaf + leaf_count - 1 hold entries first_entry .. first_entry +
-- leaf_count - 1. A sealing pass gives its entries the next leaf indexes in entry-id order and
-- writes one row per run of consecutive entry ids, not one per leaf: entry ids are dense
-- within a session's cached block of the sequence, so a run covers tens of entries. Runs never
-- overlap, in leaves or in entries (fintx.verify_audit() checks both).
CREATE TABLE fintx.audit_leaf_runs (
    first_leaf  bigint  PRIMARY KEY,
    first_entry bigint  NOT NULL UNIQUE,
    leaf_count  integer NOT NULL CHECK (leaf_count OPERATOR(pg_catalog.>) 0),
    block_id    bigint  NOT NULL,
    -- the last leaf and entry of a run are bigints: readers add leaf_count without overflow
    CHECK (first_leaf OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) leaf_count)
           AND first_entry OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) leaf_count))
);
COMMENT ON TABLE fintx.audit_leaf_runs IS 'Merkle leaf indexes of sealed audit entries, one row per run of consecutive entry ids; insert-only';

CREATE TABLE fintx.audit_nodes (
    level smallint NOT NULL,
    idx   bigint   NOT NULL,
    hash  bytea    NOT NULL,
    PRIMARY KEY (level, idx)
);
COMMENT ON TABLE fintx.audit_nodes IS 'hashes of complete Merkle subtrees of 16 leaves and more (levels 4 and up); insert-only';
-- No planner statistics for columns nothing filters on (hashes, JSON bodies): autovacuum's
-- ANALYZE of these fast-growing tables then skips sorting and detoasting them.
ALTER TABLE fintx.audit_nodes ALTER COLUMN hash SET STATISTICS 0;

CREATE TABLE fintx.audit_blocks (
    block_id        bigint       PRIMARY KEY,
    tree_size       bigint       NOT NULL,
    root_hash       bytea        NOT NULL,
    prev_block_hash bytea        NOT NULL,
    block_hash      bytea        NOT NULL,
    snapshot        pg_snapshot  NOT NULL,
    sealed_at       timestamptz  NOT NULL,
    origin          text         NOT NULL,
    key_name        text,
    signature       bytea
);
COMMENT ON TABLE fintx.audit_blocks IS 'one block per sealing pass, hash-chained and signed; insert-only';

CREATE FUNCTION fintx.refuse_change() RETURNS trigger
AS 'MODULE_PATHNAME', 'fintx_refuse_change'
LANGUAGE C;

DO $immutable$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_entries', 'audit_leaf_runs', 'audit_nodes', 'audit_blocks'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_update_delete BEFORE UPDATE OR DELETE ON fintx.%I'
                                  ' FOR EACH ROW EXECUTE FUNCTION fintx.refuse_change()', t);
        EXECUTE pg_catalog.format('CREATE TRIGGER refuse_truncate BEFORE TRUNCATE ON fintx.%I'
                                  ' FOR EACH STATEMENT EXECUTE FUNCTION fintx.refuse_change()', t);
    END LOOP;
END
$immutable$;

-- A block (or outbox batch) whose snapshot reaches transaction ids this cluster has not
-- assigned was sealed elsewhere (a dump restored into a cluster whose ids are behind): the
-- next pass would skip this cluster's transactions below it for good. Refused on insert,
-- so such a restore fails loudly (docs/operations.md, "Backup and restore").
CREATE FUNCTION fintx.refuse_foreign_snapshot() RETURNS trigger
AS 'MODULE_PATHNAME', 'fintx_refuse_foreign_snapshot'
LANGUAGE C;
CREATE TRIGGER refuse_foreign_snapshot BEFORE INSERT ON fintx.audit_blocks
    FOR EACH ROW EXECUTE FUNCTION fintx.refuse_foreign_snapshot();

CREATE FUNCTION fintx.seal() RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_seal'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.tree_size() RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_tree_size'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.root_hash(tree_size bigint) RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_root_hash'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.leaf_data(leaf_index bigint) RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_leaf_data'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.inclusion_proof(leaf_index bigint, tree_size bigint) RETURNS bytea[]
AS 'MODULE_PATHNAME', 'fintx_inclusion_proof'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.consistency_proof(first_size bigint, second_size bigint) RETURNS bytea[]
AS 'MODULE_PATHNAME', 'fintx_consistency_proof'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.checkpoint() RETURNS text
AS 'MODULE_PATHNAME', 'fintx_checkpoint'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.public_key() RETURNS text
AS 'MODULE_PATHNAME', 'fintx_public_key'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.verify_audit(from_leaf bigint DEFAULT 0, to_leaf bigint DEFAULT NULL)
RETURNS TABLE (ok boolean, entries_checked bigint, first_bad_leaf bigint, detail text)
AS 'MODULE_PATHNAME', 'fintx_verify_audit'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- RFC 6962 hashing of arbitrary data, for auditors' own checks and known-answer tests.
CREATE FUNCTION fintx.merkle_leaf_hash(data bytea) RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_merkle_leaf_hash'
LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION fintx.merkle_tree_head(leaves bytea[]) RETURNS bytea
AS 'MODULE_PATHNAME', 'fintx_merkle_tree_head'
LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION fintx.merkle_inclusion_proof(leaves bytea[], leaf_index bigint, tree_size bigint) RETURNS bytea[]
AS 'MODULE_PATHNAME', 'fintx_merkle_inclusion_proof_data'
LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION fintx.merkle_consistency_proof(leaves bytea[], first_size bigint, second_size bigint) RETURNS bytea[]
AS 'MODULE_PATHNAME', 'fintx_merkle_consistency_proof_data'
LANGUAGE C IMMUTABLE STRICT;

-- The leaf of an entry: the run that starts at the largest first_entry <= entry_id, if the
-- entry lies inside it (one index probe per entry).
CREATE VIEW fintx.audit_log AS
SELECT e.entry_id, l.leaf_index, e.recorded_at, e.actor, e.action, e.object_type, e.object_id,
       e.details, e.entry_hash
  FROM fintx.audit_entries e
  LEFT JOIN LATERAL (
        SELECT r.first_leaf OPERATOR(pg_catalog.+) (e.entry_id OPERATOR(pg_catalog.-) r.first_entry) AS leaf_index
          FROM (SELECT first_leaf, first_entry, leaf_count FROM fintx.audit_leaf_runs
                 WHERE first_entry OPERATOR(pg_catalog.<=) e.entry_id
                 ORDER BY first_entry DESC LIMIT 1) r
         WHERE e.entry_id OPERATOR(pg_catalog.<) (r.first_entry OPERATOR(pg_catalog.+) r.leaf_count)) l ON true;
COMMENT ON VIEW fintx.audit_log IS 'every audit entry; leaf_index is NULL until the entry is sealed';

-- One row per sealed leaf, as its run states it: the leaf index, the entry it holds, the block
-- that sealed it and its leaf hash (the entry's stored entry_hash, NULL if that entry is
-- missing; fintx.verify_audit() recomputes it from the facts). Expands every run: to find the
-- leaf of one entry, read fintx.audit_log.
CREATE VIEW fintx.audit_leaves AS
SELECT r.first_leaf OPERATOR(pg_catalog.+) g.i AS leaf_index,
       r.first_entry OPERATOR(pg_catalog.+) g.i AS entry_id, r.block_id, e.entry_hash AS leaf_hash
  FROM fintx.audit_leaf_runs r
 CROSS JOIN LATERAL pg_catalog.generate_series(0::bigint, r.leaf_count OPERATOR(pg_catalog.-) 1::bigint) g(i)
  LEFT JOIN fintx.audit_entries e ON e.entry_id OPERATOR(pg_catalog.=) (r.first_entry OPERATOR(pg_catalog.+) g.i);
COMMENT ON VIEW fintx.audit_leaves IS 'Merkle leaf index, block and leaf hash of each sealed audit entry';

-- Every entry that concerns an account: its own events and the transfers that touched it.
CREATE VIEW fintx.audit_account_trail AS
SELECT a.code AS account, l.entry_id, l.leaf_index, l.recorded_at, l.actor, l.action,
       l.object_type, l.object_id, l.details, l.entry_hash
  FROM fintx.audit_log l
  JOIN fintx.accounts a
    ON (l.object_type OPERATOR(pg_catalog.=) 'account' AND l.object_id OPERATOR(pg_catalog.=) a.code)
    OR (l.object_type OPERATOR(pg_catalog.=) 'transfer'
        AND (l.details OPERATOR(pg_catalog.->>) 'from_account' OPERATOR(pg_catalog.=) a.code
             OR l.details OPERATOR(pg_catalog.->>) 'to_account' OPERATOR(pg_catalog.=) a.code));

-- What each actor did, per action.
CREATE VIEW fintx.audit_actor_activity AS
SELECT actor, action, pg_catalog.count(*) AS entries,
       pg_catalog.min(recorded_at) AS first_at, pg_catalog.max(recorded_at) AS last_at
  FROM fintx.audit_entries
 GROUP BY actor, action;

-- The history of signed tree heads.
CREATE VIEW fintx.audit_checkpoints AS
SELECT block_id, tree_size, root_hash, block_hash, prev_block_hash, sealed_at, origin, key_name,
       signature IS NOT NULL AS signed
  FROM fintx.audit_blocks;

-- Not SECURITY DEFINER: the row image is built with to_jsonb(), which calls a user-defined
-- cast to json of a column's type; as the extension owner that cast would run as a superuser
-- (the owner of an audited table could add such a column). The entry is written with the
-- access methods (direct.c), which need no privilege of the caller.
-- The settings that change how values print are pinned: a row image must not depend on the
-- writer's session (extra_float_digits < 1 rounded 149.999 to 100, DateStyle made two
-- different ranges one image).
CREATE FUNCTION fintx.audit_row() RETURNS trigger
AS 'MODULE_PATHNAME', 'fintx_audit_row'
LANGUAGE C SET search_path = pg_catalog, pg_temp SET extra_float_digits = 1 SET DateStyle = 'ISO, YMD'
    SET IntervalStyle = 'postgres' SET TimeZone = 'UTC' SET bytea_output = 'hex'
    SET quote_all_identifiers = off SET lc_monetary = 'C';

CREATE FUNCTION fintx.audit_table(tbl regclass) RETURNS void
AS 'MODULE_PATHNAME', 'fintx_audit_table'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.append_only(tbl regclass) RETURNS void
AS 'MODULE_PATHNAME', 'fintx_append_only'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Export for the offline verifier (fintx-verify, docs/audit-format.md): one line per sealed
-- leaf, "leaf_index <TAB> hex(canonical bytes)", in leaf order.
CREATE FUNCTION fintx.audit_export(from_leaf bigint DEFAULT 0, to_leaf bigint DEFAULT NULL)
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'fintx_audit_export'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

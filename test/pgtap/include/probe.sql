-- Included by test/pgtap/003 and 004 (\ir); needs pg_temp.ledger_state() and the accounts
-- probe.from (allow_negative) and probe.to.
-- The probe: one transfer between two accounts kept for it, in a subtransaction that is rolled
-- back; returns the ledger's state as the probe sees it (without the probe's own accounts,
-- transfers and keys) and how many rows the probe added to the transfers, the journal, the
-- audit entries, the outbox and the open holds (1,1,1,1,0 for a transfer). A rejected call
-- must leave nothing behind that a later call would write: PostgreSQL rolls back what the
-- call wrote, not rows or counters kept in session memory and flushed by the next call; the
-- probe is that next call.
CREATE FUNCTION pg_temp.row_counts() RETURNS bigint[] LANGUAGE sql AS $$
SELECT ARRAY[(SELECT count(*) FROM fintx.transfers), (SELECT count(*) FROM fintx.idempotency_keys),
             (SELECT count(*) FROM fintx.audit_entries), (SELECT count(*) FROM fintx.outbox),
             (SELECT count(*) FROM fintx.pending_holds)]
$$;
CREATE FUNCTION pg_temp.probe() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c0 bigint[] := pg_temp.row_counts();
    c1 bigint[];
    res text;
BEGIN
    BEGIN
        PERFORM fintx.transfer('probe-' || pg_catalog.clock_timestamp()::text, 'probe.from', 'probe.to', 1);
        c1 := pg_temp.row_counts();
        res := pg_temp.ledger_state() || format(' + probe rows %s,%s,%s,%s,%s',
                   c1[1] - c0[1], c1[2] - c0[2], c1[3] - c0[3], c1[4] - c0[4], c1[5] - c0[5]);
        RAISE EXCEPTION USING ERRCODE = 'P0004', MESSAGE = 'roll the probe back';
    EXCEPTION WHEN assert_failure THEN
        NULL;
    END;
    RETURN res;
END
$$;

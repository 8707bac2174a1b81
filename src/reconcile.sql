/*
 * src/reconcile.sql — fintx.reconcile(): recompute the ledger from its immutable transfers
 * and report every discrepancy. No rows means the ledger is consistent.
 */
CREATE FUNCTION fintx.reconcile()
RETURNS TABLE (check_name text, object text, expected text, actual text)
-- jit off: the query's cost estimate (two dozen checks, full scans) crosses the JIT
-- thresholds on any sizeable ledger, and compiling it took seconds longer than running it.
-- enable_nestloop off: every check reads whole tables, which hash joins do in one pass; on
-- tables without statistics (freshly written, not yet analyzed) the planner chose nested
-- loops over sequential scans, quadratic (pgTAP 004: 65 s, 1.8 s with hash joins)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off SET enable_nestloop = off
AS $reconcile$
WITH effects AS (
    -- posted effect and pending effect of every transfer row, per side
    SELECT t.from_account AS account_id,
           CASE WHEN t.status OPERATOR(pg_catalog.=) 'posted' THEN t.amount ELSE 0 END AS debit_posted,
           0::numeric AS credit_posted,
           CASE WHEN t.status OPERATOR(pg_catalog.=) 'pending' THEN t.amount::numeric
                WHEN t.pending_id IS NOT NULL THEN (0 OPERATOR(pg_catalog.-) p.amount)::numeric
                ELSE 0 END AS debit_pending,
           0::numeric AS credit_pending
      FROM fintx.transfers t
      LEFT JOIN fintx.transfers p ON p.id OPERATOR(pg_catalog.=) t.pending_id
    UNION ALL
    SELECT t.to_account,
           0,
           CASE WHEN t.status OPERATOR(pg_catalog.=) 'posted' THEN t.amount ELSE 0 END,
           0,
           CASE WHEN t.status OPERATOR(pg_catalog.=) 'pending' THEN t.amount::numeric
                WHEN t.pending_id IS NOT NULL THEN (0 OPERATOR(pg_catalog.-) p.amount)::numeric
                ELSE 0 END
      FROM fintx.transfers t
      LEFT JOIN fintx.transfers p ON p.id OPERATOR(pg_catalog.=) t.pending_id
),
sums AS (
    SELECT account_id,
           pg_catalog.sum(debit_posted) AS dp, pg_catalog.sum(credit_posted) AS cp,
           pg_catalog.sum(debit_pending) AS dpe, pg_catalog.sum(credit_pending) AS cpe
      FROM effects GROUP BY account_id
),
acct AS (
    SELECT a.id, a.code, a.currency, a.allow_negative, a.allow_positive,
           a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending,
           COALESCE(s.dp, 0) AS dp, COALESCE(s.cp, 0) AS cp,
           COALESCE(s.dpe, 0) AS dpe, COALESCE(s.cpe, 0) AS cpe
      FROM fintx.accounts a LEFT JOIN sums s ON s.account_id OPERATOR(pg_catalog.=) a.id
)
SELECT 'account_debits_posted', code, dp::text, debits_posted::text
  FROM acct WHERE dp OPERATOR(pg_catalog.<>) debits_posted
UNION ALL
SELECT 'account_credits_posted', code, cp::text, credits_posted::text
  FROM acct WHERE cp OPERATOR(pg_catalog.<>) credits_posted
UNION ALL
SELECT 'account_debits_pending', code, dpe::text, debits_pending::text
  FROM acct WHERE dpe OPERATOR(pg_catalog.<>) debits_pending
UNION ALL
SELECT 'account_credits_pending', code, cpe::text, credits_pending::text
  FROM acct WHERE cpe OPERATOR(pg_catalog.<>) credits_pending
UNION ALL
SELECT 'account_balance_rule', code, 'debits_posted + debits_pending <= credits_posted',
       pg_catalog.format('debits_posted=%s credits_posted=%s debits_pending=%s credits_pending=%s',
                         debits_posted, credits_posted, debits_pending, credits_pending)
  FROM acct
 WHERE NOT allow_negative
   AND debits_posted::numeric OPERATOR(pg_catalog.+) debits_pending OPERATOR(pg_catalog.>) credits_posted
UNION ALL
SELECT 'account_balance_rule', code, 'credits_posted + credits_pending <= debits_posted',
       pg_catalog.format('debits_posted=%s credits_posted=%s debits_pending=%s credits_pending=%s',
                         debits_posted, credits_posted, debits_pending, credits_pending)
  FROM acct
 WHERE NOT allow_positive
   AND credits_posted::numeric OPERATOR(pg_catalog.+) credits_pending OPERATOR(pg_catalog.>) debits_posted
UNION ALL
SELECT 'currency_debits_equal_credits', currency,
       pg_catalog.sum(debits_posted::numeric)::text, pg_catalog.sum(credits_posted::numeric)::text
  FROM acct GROUP BY currency
HAVING pg_catalog.sum(debits_posted::numeric) OPERATOR(pg_catalog.<>) pg_catalog.sum(credits_posted::numeric)
UNION ALL
SELECT 'currency_pending_debits_equal_credits', currency,
       pg_catalog.sum(debits_pending::numeric)::text, pg_catalog.sum(credits_pending::numeric)::text
  FROM acct GROUP BY currency
HAVING pg_catalog.sum(debits_pending::numeric) OPERATOR(pg_catalog.<>) pg_catalog.sum(credits_pending::numeric)
UNION ALL
SELECT 'account_counter_negative', code, 'all counters >= 0',
       pg_catalog.format('debits_posted=%s credits_posted=%s debits_pending=%s credits_pending=%s',
                         debits_posted, credits_posted, debits_pending, credits_pending)
  FROM acct
 WHERE debits_posted OPERATOR(pg_catalog.<) 0 OR credits_posted OPERATOR(pg_catalog.<) 0
    OR debits_pending OPERATOR(pg_catalog.<) 0 OR credits_pending OPERATOR(pg_catalog.<) 0
UNION ALL
SELECT 'transfer_invalid', 'transfer ' OPERATOR(pg_catalog.||) t.id::text,
       'valid status, amount > 0, distinct accounts',
       pg_catalog.format('status=%s amount=%s from=%s to=%s pending_id=%s',
                         t.status, t.amount, t.from_account, t.to_account, t.pending_id)
  FROM fintx.transfers t
 WHERE t.status IS DISTINCT FROM 'posted' AND t.status IS DISTINCT FROM 'pending'
   AND t.status IS DISTINCT FROM 'voided' AND t.status IS DISTINCT FROM 'expired'
   AND t.status IS DISTINCT FROM 'awaiting_approval'
    OR t.amount OPERATOR(pg_catalog.<=) 0
    OR t.from_account OPERATOR(pg_catalog.=) t.to_account
    OR (t.status OPERATOR(pg_catalog.=) 'pending' AND t.pending_id IS NOT NULL)
    OR (t.status OPERATOR(pg_catalog.<>) 'pending' AND t.status OPERATOR(pg_catalog.<>) 'posted'
        AND t.status OPERATOR(pg_catalog.<>) 'awaiting_approval' AND t.pending_id IS NULL)
    OR (t.status OPERATOR(pg_catalog.=) 'awaiting_approval' AND t.pending_id IS NOT NULL)
UNION ALL
SELECT 'journal_invalid_fingerprint',
       pg_catalog.format('key %L of %L', j.idempotency_key, j.principal), '32 bytes',
       pg_catalog.length(j.fingerprint)::text OPERATOR(pg_catalog.||) ' bytes'
  FROM fintx.idempotency_keys j
 WHERE pg_catalog.length(j.fingerprint) OPERATOR(pg_catalog.<>) 32
UNION ALL
SELECT 'transfer_without_journal', 'transfer ' OPERATOR(pg_catalog.||) t.id::text, '1 journal record', '0'
  FROM fintx.transfers t
 WHERE NOT EXISTS (SELECT FROM fintx.idempotency_keys j WHERE j.transfer_id OPERATOR(pg_catalog.=) t.id)
UNION ALL
SELECT 'transfer_with_several_journal_records', 'transfer ' OPERATOR(pg_catalog.||) j.transfer_id::text,
       '1 journal record', pg_catalog.count(*)::text
  FROM fintx.idempotency_keys j
 GROUP BY j.transfer_id
HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1
UNION ALL
SELECT 'journal_without_transfer',
       pg_catalog.format('key %L of %L', j.idempotency_key, j.principal),
       'transfer ' OPERATOR(pg_catalog.||) j.transfer_id::text, 'missing'
  FROM fintx.idempotency_keys j
 WHERE NOT EXISTS (SELECT FROM fintx.transfers t WHERE t.id OPERATOR(pg_catalog.=) j.transfer_id)
UNION ALL
-- a journal record names the transfer its request made: the same principal, and the key the
-- transfer's audit entry recorded when it was written (a record re-pointed at another
-- transfer would replay that transfer's result for this key)
SELECT 'journal_transfer_mismatch', pg_catalog.format('key %L of %L', j.idempotency_key, j.principal),
       'transfer ' OPERATOR(pg_catalog.||) j.transfer_id::text OPERATOR(pg_catalog.||) ' made by this key',
       pg_catalog.format('transfer of %L under key %L', t.principal, e.k)
  FROM fintx.idempotency_keys j
  JOIN fintx.transfers t ON t.id OPERATOR(pg_catalog.=) j.transfer_id
  -- one hash join: each transfer row has one entry that records its key
  LEFT JOIN (SELECT object_id, details OPERATOR(pg_catalog.->>) 'idempotency_key' AS k FROM fintx.audit_entries
              WHERE object_type OPERATOR(pg_catalog.=) 'transfer' AND details OPERATOR(pg_catalog.?) 'idempotency_key') e
         ON e.object_id OPERATOR(pg_catalog.=) t.id::text
 WHERE t.principal OPERATOR(pg_catalog.<>) j.principal OR e.k OPERATOR(pg_catalog.<>) j.idempotency_key
UNION ALL
-- every transfer row is a state change with its audit entry: a row written behind the API
-- (with its journal record and matching counters) would otherwise pass every check above
SELECT 'transfer_without_audit_entry', 'transfer ' OPERATOR(pg_catalog.||) t.id::text, '1 audit entry', '0'
  FROM fintx.transfers t
 WHERE NOT EXISTS (SELECT FROM fintx.audit_entries e
                    WHERE e.object_type OPERATOR(pg_catalog.=) 'transfer'
                      AND e.object_id OPERATOR(pg_catalog.=) t.id::text)
UNION ALL
-- ... and that entry (the one its entry_hash names) recorded the row as it is: a row deleted
-- or rewritten behind the API, with counters moved to match, passes the balance checks; the
-- immutable audit log still holds what happened
SELECT 'transfer_audit_mismatch', 'transfer ' OPERATOR(pg_catalog.||) t.id::text,
       CASE WHEN e.entry_id IS NULL THEN 'an audit entry with its entry_hash'
            ELSE pg_catalog.format('%s %s from %s to %s', e.details OPERATOR(pg_catalog.->>) 'status',
                                   e.details OPERATOR(pg_catalog.->>) 'amount', e.details OPERATOR(pg_catalog.->>) 'from_account',
                                   e.details OPERATOR(pg_catalog.->>) 'to_account') END,
       pg_catalog.format('%s %s from %s to %s', t.status, t.amount, fa.code, ta.code)
  FROM fintx.transfers t
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account
  LEFT JOIN fintx.audit_entries e ON e.entry_hash OPERATOR(pg_catalog.=) t.entry_hash
 WHERE (e.entry_id IS NULL
        -- (no entry at all is transfer_without_audit_entry)
        AND EXISTS (SELECT FROM fintx.audit_entries x WHERE x.object_type OPERATOR(pg_catalog.=) 'transfer'
                       AND x.object_id OPERATOR(pg_catalog.=) t.id::text))
    OR (e.entry_id IS NOT NULL
        AND (e.object_type OPERATOR(pg_catalog.<>) 'transfer' OR e.object_id OPERATOR(pg_catalog.<>) t.id::text
             OR e.details OPERATOR(pg_catalog.->>) 'status' IS DISTINCT FROM t.status
             OR e.details OPERATOR(pg_catalog.->>) 'amount' IS DISTINCT FROM t.amount::text
             OR e.details OPERATOR(pg_catalog.->>) 'from_account' IS DISTINCT FROM fa.code
             OR e.details OPERATOR(pg_catalog.->>) 'to_account' IS DISTINCT FROM ta.code))
UNION ALL
-- a ledger audit entry whose transfer row is gone (deleted behind the API)
SELECT 'audit_entry_without_transfer', 'audit entry ' OPERATOR(pg_catalog.||) e.entry_id::text,
       'transfer ' OPERATOR(pg_catalog.||) e.object_id, 'missing'
  FROM fintx.audit_entries e
 WHERE e.object_type OPERATOR(pg_catalog.=) 'transfer'
   AND e.action OPERATOR(pg_catalog.=) ANY ('{transfer.posted,transfer.pending,transfer.pending_posted,transfer.voided,transfer.expired,transfer.awaiting_approval}'::text[])
   AND NOT EXISTS (SELECT FROM fintx.transfers t WHERE t.entry_hash OPERATOR(pg_catalog.=) e.entry_hash)
UNION ALL
-- maker-checker: an approval decides the request recorded with the transfer that awaits it, and
-- an approved one moved exactly that money (approve_transfer reads fintx.approvals)
SELECT 'approval_mismatch', 'transfer ' OPERATOR(pg_catalog.||) COALESCE(t.id, a.transfer_id)::text,
       CASE WHEN t.id IS NULL THEN 'a transfer awaiting approval'
            ELSE pg_catalog.format('%s %s from %s to %s', t.amount, fa.currency, fa.code, ta.code) END,
       CASE WHEN a.transfer_id IS NULL THEN 'no approval request'
            ELSE pg_catalog.format('%s %s from %s to %s', a.amount, a.currency, a.from_account, a.to_account) END
  FROM (SELECT * FROM fintx.transfers WHERE status OPERATOR(pg_catalog.=) 'awaiting_approval') t
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account
  FULL JOIN fintx.approvals a ON a.transfer_id OPERATOR(pg_catalog.=) t.id
 WHERE t.id IS NULL OR a.transfer_id IS NULL
    OR a.amount OPERATOR(pg_catalog.<>) t.amount OR a.currency OPERATOR(pg_catalog.<>) fa.currency
    OR a.from_account OPERATOR(pg_catalog.<>) fa.code OR a.to_account OPERATOR(pg_catalog.<>) ta.code
UNION ALL
SELECT 'approval_result_mismatch', 'transfer ' OPERATOR(pg_catalog.||) a.transfer_id::text,
       pg_catalog.format('a %s transfer of %s from %s to %s', CASE WHEN a.pending THEN 'held' ELSE 'posted' END,
                         a.amount, a.from_account, a.to_account),
       CASE WHEN r.id IS NULL THEN 'result transfer ' OPERATOR(pg_catalog.||) COALESCE(a.result_transfer_id::text, 'not recorded') OPERATOR(pg_catalog.||) ' missing'
            ELSE pg_catalog.format('transfer %s: %s %s from %s to %s', r.id, r.status, r.amount, fa.code, ta.code) END
  FROM fintx.approvals a
  LEFT JOIN fintx.transfers r ON r.id OPERATOR(pg_catalog.=) a.result_transfer_id
  LEFT JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) r.from_account
  LEFT JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) r.to_account
 WHERE a.status OPERATOR(pg_catalog.=) 'approved'
   AND (r.id IS NULL OR r.amount OPERATOR(pg_catalog.<>) a.amount
        OR fa.code OPERATOR(pg_catalog.<>) a.from_account OR ta.code OPERATOR(pg_catalog.<>) a.to_account
        OR r.status OPERATOR(pg_catalog.<>) CASE WHEN a.pending THEN 'pending' ELSE 'posted' END)
UNION ALL
SELECT 'transfer_unknown_account', 'transfer ' OPERATOR(pg_catalog.||) t.id::text,
       'existing accounts', pg_catalog.format('from %s to %s', t.from_account, t.to_account)
  FROM fintx.transfers t
 WHERE NOT EXISTS (SELECT FROM fintx.accounts a WHERE a.id OPERATOR(pg_catalog.=) t.from_account)
    OR NOT EXISTS (SELECT FROM fintx.accounts a WHERE a.id OPERATOR(pg_catalog.=) t.to_account)
UNION ALL
SELECT 'transfer_currency_mismatch', 'transfer ' OPERATOR(pg_catalog.||) t.id::text, fa.currency, ta.currency
  FROM fintx.transfers t
  JOIN fintx.accounts fa ON fa.id OPERATOR(pg_catalog.=) t.from_account
  JOIN fintx.accounts ta ON ta.id OPERATOR(pg_catalog.=) t.to_account
 WHERE fa.currency OPERATOR(pg_catalog.<>) ta.currency
UNION ALL
SELECT 'resolution_mismatch', 'transfer ' OPERATOR(pg_catalog.||) r.id::text,
       'same accounts as hold ' OPERATOR(pg_catalog.||) r.pending_id::text,
       CASE WHEN p.id IS NULL THEN 'hold missing' WHEN p.status OPERATOR(pg_catalog.<>) 'pending' THEN 'not a hold'
            WHEN r.amount OPERATOR(pg_catalog.>) p.amount AND r.status OPERATOR(pg_catalog.=) 'posted' THEN 'posted more than held'
            WHEN r.status OPERATOR(pg_catalog.<>) 'posted' AND r.amount OPERATOR(pg_catalog.<>) p.amount
                 THEN pg_catalog.format('%s %s of a hold of %s', r.status, r.amount, p.amount)
            ELSE 'different accounts' END
  FROM fintx.transfers r
  LEFT JOIN fintx.transfers p ON p.id OPERATOR(pg_catalog.=) r.pending_id
 WHERE r.pending_id IS NOT NULL
   AND (p.id IS NULL OR p.status OPERATOR(pg_catalog.<>) 'pending' OR p.pending_id IS NOT NULL
        OR p.from_account OPERATOR(pg_catalog.<>) r.from_account OR p.to_account OPERATOR(pg_catalog.<>) r.to_account
        OR r.amount OPERATOR(pg_catalog.>) p.amount
        -- a void or an expiry releases the whole hold
        OR (r.status OPERATOR(pg_catalog.<>) 'posted' AND r.amount OPERATOR(pg_catalog.<>) p.amount))
UNION ALL
SELECT 'open_hold_tracking', 'transfer ' OPERATOR(pg_catalog.||) p.id::text,
       CASE WHEN h.transfer_id IS NULL THEN 'tracked as open' ELSE 'not tracked (resolved)' END,
       CASE WHEN h.transfer_id IS NULL THEN 'not tracked' ELSE 'tracked as open' END
  FROM fintx.transfers p
  LEFT JOIN fintx.pending_holds h ON h.transfer_id OPERATOR(pg_catalog.=) p.id
 WHERE p.status OPERATOR(pg_catalog.=) 'pending'
   AND (h.transfer_id IS NULL) OPERATOR(pg_catalog.=)
       (NOT EXISTS (SELECT FROM fintx.transfers r WHERE r.pending_id OPERATOR(pg_catalog.=) p.id))
UNION ALL
-- expiry finds holds by the timeout in the open-hold row; post_pending and reports read the hold's
SELECT 'hold_timeout_mismatch', 'transfer ' OPERATOR(pg_catalog.||) p.id::text,
       COALESCE(p.timeout_at::text, 'no timeout'), COALESCE(h.timeout_at::text, 'no timeout')
  FROM fintx.pending_holds h
  JOIN fintx.transfers p ON p.id OPERATOR(pg_catalog.=) h.transfer_id
 WHERE h.timeout_at IS DISTINCT FROM p.timeout_at
UNION ALL
-- an account is closed only with nothing on it, and closed accounts take no transfers
SELECT 'closed_account_not_empty', code, 'zero balance, no holds',
       pg_catalog.format('debits_posted=%s credits_posted=%s debits_pending=%s credits_pending=%s',
                         debits_posted, credits_posted, debits_pending, credits_pending)
  FROM fintx.accounts
 WHERE closed_at IS NOT NULL
   AND (debits_posted OPERATOR(pg_catalog.<>) credits_posted
        OR debits_pending OPERATOR(pg_catalog.<>) 0 OR credits_pending OPERATOR(pg_catalog.<>) 0)
UNION ALL
SELECT 'open_hold_tracking', 'transfer ' OPERATOR(pg_catalog.||) h.transfer_id::text, 'a pending transfer', 'missing'
  FROM fintx.pending_holds h
 WHERE NOT EXISTS (SELECT FROM fintx.transfers p WHERE p.id OPERATOR(pg_catalog.=) h.transfer_id
                      AND p.status OPERATOR(pg_catalog.=) 'pending')
$reconcile$;

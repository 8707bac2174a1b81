-- reconcile: zero rows on a consistent ledger, one row per discrepancy otherwise
\set VERBOSITY terse
SELECT * FROM fintx.reconcile();
-- tamper behind the API (as superuser) inside a transaction that is rolled back
BEGIN;
UPDATE fintx.accounts SET credits_posted = credits_posted + 1 WHERE code = 't:a';
SELECT * FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
BEGIN;
UPDATE fintx.accounts SET debits_pending = debits_pending + 5 WHERE code = 'p:a';
SELECT * FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
BEGIN;
DELETE FROM fintx.idempotency_keys WHERE idempotency_key = 't-1';
SELECT check_name, expected, actual FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
BEGIN;
DELETE FROM fintx.transfers WHERE id = (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'i-2');
SELECT check_name, expected, actual FROM fintx.reconcile() ORDER BY 1, 2, 3;
ROLLBACK;
BEGIN;
UPDATE fintx.transfers SET amount = amount + 1 WHERE id = (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'i-2');
SELECT * FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
BEGIN;
DELETE FROM fintx.pending_holds;
SELECT check_name, expected, actual FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
-- two journal records swap their transfers: a retry of either key would replay the other's
BEGIN;
SELECT transfer_id AS swap_a FROM fintx.idempotency_keys WHERE idempotency_key = 't-1' \gset
SELECT transfer_id AS swap_b FROM fintx.idempotency_keys WHERE idempotency_key = 'i-2' \gset
UPDATE fintx.idempotency_keys SET transfer_id = -1 WHERE idempotency_key = 't-1';
UPDATE fintx.idempotency_keys SET transfer_id = :swap_a WHERE idempotency_key = 'i-2';
UPDATE fintx.idempotency_keys SET transfer_id = :swap_b WHERE idempotency_key = 't-1';
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
-- a transfer forged behind the API with its journal record and counters: only its missing
-- audit entry shows
BEGIN;
SELECT max(id) + 1000 AS forged_id FROM fintx.transfers \gset
INSERT INTO fintx.transfers (id, status, from_account, to_account, amount, pending_id, timeout_at, metadata,
                             from_balance, to_balance, entry_hash, principal, created_at)
SELECT :forged_id, status, from_account, to_account, 1, NULL, NULL, '{}', from_balance, to_balance, NULL, principal, created_at
  FROM fintx.transfers WHERE id = (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 't-1');
INSERT INTO fintx.idempotency_keys (principal, idempotency_key, fingerprint, transfer_id, created_at)
SELECT principal, 'forged', fingerprint, :forged_id, created_at FROM fintx.idempotency_keys WHERE idempotency_key = 't-1';
UPDATE fintx.accounts SET debits_posted = debits_posted + 1
 WHERE id = (SELECT from_account FROM fintx.transfers WHERE id = :forged_id);
UPDATE fintx.accounts SET credits_posted = credits_posted + 1
 WHERE id = (SELECT to_account FROM fintx.transfers WHERE id = :forged_id);
SELECT check_name, expected, actual FROM fintx.reconcile() WHERE check_name <> 'account_balance_rule' ORDER BY 1, 2;
ROLLBACK;
BEGIN;
INSERT INTO fintx.idempotency_keys (principal, idempotency_key, fingerprint, transfer_id, created_at)
SELECT principal, 't-1-copy', fingerprint, transfer_id, created_at FROM fintx.idempotency_keys WHERE idempotency_key = 't-1';
SELECT check_name, expected, actual FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
-- a journal record moved to another principal
BEGIN;
UPDATE fintx.idempotency_keys SET principal = 'mallory' WHERE idempotency_key = 't-1';
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
-- an open hold's timeout changed behind the API
BEGIN;
UPDATE fintx.pending_holds SET timeout_at = COALESCE(timeout_at, now()) + interval '1 hour'
 WHERE transfer_id = (SELECT min(transfer_id) FROM fintx.pending_holds);
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
-- an account with money on it marked closed
BEGIN;
UPDATE fintx.accounts SET closed_at = now() WHERE code = 't:a';
SELECT check_name, object, expected FROM fintx.reconcile() ORDER BY 1, 2;
ROLLBACK;
-- a posted transfer deleted behind the API with its journal record, the counters moved back:
-- the balances add up, the audit log still records it
BEGIN;
SELECT t.id AS gone, t.amount AS gone_amount, t.from_account AS gone_from, t.to_account AS gone_to
  FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id WHERE j.idempotency_key = 't-1' \gset
DELETE FROM fintx.idempotency_keys WHERE transfer_id = :gone;
DELETE FROM fintx.transfers WHERE id = :gone;
UPDATE fintx.accounts SET debits_posted = debits_posted - :gone_amount WHERE id = :gone_from;
UPDATE fintx.accounts SET credits_posted = credits_posted - :gone_amount WHERE id = :gone_to;
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
-- the same transfer rewritten (a smaller amount), counters and balances to match
BEGIN;
UPDATE fintx.transfers SET amount = amount - 1, from_balance = from_balance + 1, to_balance = to_balance - 1 WHERE id = :gone;
UPDATE fintx.accounts SET debits_posted = debits_posted - 1 WHERE id = :gone_from;
UPDATE fintx.accounts SET credits_posted = credits_posted - 1 WHERE id = :gone_to;
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
-- a void that records less than the hold it released
BEGIN;
UPDATE fintx.transfers SET amount = 1 WHERE id = (SELECT max(id) FROM fintx.transfers WHERE status = 'voided');
SELECT check_name, expected, actual FROM fintx.reconcile() WHERE check_name = 'resolution_mismatch';
SELECT check_name, count(*) FROM fintx.reconcile() GROUP BY 1 ORDER BY 1;
ROLLBACK;
SELECT * FROM fintx.reconcile();

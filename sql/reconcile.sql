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
SELECT * FROM fintx.reconcile();

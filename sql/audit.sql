-- audit: every ledger change writes one audit entry in the same transaction
\set VERBOSITY terse
SELECT fintx.open_account('a:bank', 'EUR', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('a:x', 'EUR') > 0 AS ok;
CREATE TEMP TABLE r AS SELECT * FROM fintx.transfer('a-1', 'a:bank', 'a:x', 500, '{"ref": "A1"}');
-- the result carries the entry's hash; the entry holds the full facts
SELECT l.action, l.object_type, l.actor = current_user AS by_me,
       l.details - 'transfer_id' AS details, l.entry_hash = r.entry_hash AS same_hash
  FROM fintx.audit_log l, r
 WHERE l.object_type = 'transfer' AND l.object_id = r.transfer_id::text;
-- a replay returns the same hash and writes nothing
SELECT r2.entry_hash = r.entry_hash AS same_hash, r2.replayed
  FROM fintx.transfer('a-1', 'a:bank', 'a:x', 500, '{"ref": "A1"}') r2, r;
SELECT count(*) AS entries_for_transfer FROM fintx.audit_log l, r
 WHERE l.object_type = 'transfer' AND l.object_id = r.transfer_id::text;
-- holds: pending, then posted; account opened and closed
CREATE TEMP TABLE h AS SELECT * FROM fintx.transfer('a-2', 'a:x', 'a:bank', 100, pending => true);
SELECT status FROM fintx.post_pending('a-3', (SELECT transfer_id FROM h), 60);
SELECT fintx.open_account('a:tmp', 'EUR') > 0 AS ok;
SELECT fintx.close_account('a:tmp');
SELECT action, object_type, object_id LIKE 'a:%' OR object_type = 'transfer' AS ok
  FROM fintx.audit_log
 WHERE (object_type = 'account' AND object_id LIKE 'a:%')
    OR (object_type = 'transfer' AND details->>'from_account' LIKE 'a:%')
 ORDER BY entry_id;
-- a rolled-back transfer leaves no entry
BEGIN;
SELECT status FROM fintx.transfer('a-4', 'a:bank', 'a:x', 1);
ROLLBACK;
SELECT count(*) AS entries FROM fintx.audit_log WHERE details->>'idempotency_key' = 'a-4';
-- sealing assigns leaf indexes; the log verifies; leaf data hashes to the entry hash
SELECT fintx.seal() >= 8 AS sealed;
SELECT count(*) AS unsealed FROM fintx.audit_log WHERE leaf_index IS NULL;
SELECT ok, first_bad_leaf FROM fintx.verify_audit();
SELECT bool_and(sha256('\x00'::bytea || fintx.leaf_data(leaf_index)) = entry_hash) AS leaf_hashes_match
  FROM fintx.audit_log;
-- the audit tables are append-only, for the superuser too
UPDATE fintx.audit_entries SET actor = 'mallory';
DELETE FROM fintx.audit_leaf_runs;
TRUNCATE fintx.audit_blocks;
-- auditor views
SELECT account, action FROM fintx.audit_account_trail WHERE account = 'a:x' ORDER BY entry_id;
SELECT action, entries FROM fintx.audit_actor_activity WHERE actor = current_user AND action LIKE 'transfer.%' ORDER BY action;
SELECT count(*) > 0 AS has_checkpoints, bool_and(tree_size > 0) AS sizes FROM fintx.audit_checkpoints;
-- audit_table: row images and TRUNCATE of a user table, in the same transaction
CREATE TABLE public.audit_notes (id int PRIMARY KEY, note text);
SELECT fintx.audit_table('public.audit_notes');
INSERT INTO public.audit_notes VALUES (1, 'first'), (2, 'second');
UPDATE public.audit_notes SET note = 'changed' WHERE id = 1;
DELETE FROM public.audit_notes WHERE id = 2;
TRUNCATE public.audit_notes;
SELECT action, details - 'table' AS details FROM fintx.audit_log
 WHERE object_id = 'public.audit_notes' ORDER BY entry_id;
-- append_only: inserts only
CREATE TABLE public.audit_ledger_copy (id int);
SELECT fintx.append_only('public.audit_ledger_copy');
INSERT INTO public.audit_ledger_copy VALUES (1);
UPDATE public.audit_ledger_copy SET id = 2;
DELETE FROM public.audit_ledger_copy;
TRUNCATE public.audit_ledger_copy;
SELECT count(*) AS rows_kept FROM public.audit_ledger_copy;
SELECT ok, detail LIKE 'verified % entries and % block%' AS detail_ok FROM fintx.verify_audit();

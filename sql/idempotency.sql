-- idempotency: replays return the original result, reuse with another request is refused
\set VERBOSITY terse
-- transfer ids in messages below start from a known value
SELECT setval('fintx.transfer_id_seq', 3000) AS first_id_base;
SELECT fintx.open_account('i:bank', 'GBP', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('i:a', 'GBP') > 0 AS ok;
SELECT fintx.open_account('i:b', 'GBP') > 0 AS ok;

CREATE TEMP TABLE first AS SELECT * FROM fintx.transfer('i-1', 'i:bank', 'i:a', 1000, '{"n": 1}');
SELECT status, replayed, from_balance, to_balance FROM first;
-- balances move on...
SELECT from_balance, to_balance FROM fintx.transfer('i-2', 'i:a', 'i:b', 300);
-- ...but a retry of i-1 gets the ORIGINAL answer, and nothing is applied twice
SELECT r.transfer_id = f.transfer_id AS same_id, r.replayed, r.from_balance, r.to_balance,
       r.created_at = f.created_at AS same_time
  FROM fintx.transfer('i-1', 'i:bank', 'i:a', 1000, '{"n": 1}') r, first f;
-- metadata key order and whitespace do not change the request (jsonb is canonical)
SELECT replayed FROM fintx.transfer('i-3', 'i:a', 'i:b', 1, '{"a": 1, "b": [1, 2]}');
SELECT replayed FROM fintx.transfer('i-3', 'i:a', 'i:b', 1, '{ "b":[1,2], "a":1 }');
-- explicit defaults are the same request as omitted ones
SELECT replayed FROM fintx.transfer('i-4', 'i:a', 'i:b', 1);
SELECT replayed FROM fintx.transfer('i-4', 'i:a', 'i:b', 1, '{}', false, NULL);
SELECT replayed FROM fintx.transfer('i-4', 'i:a', 'i:b', 1, NULL, false, NULL);
SELECT code, posted FROM fintx.account_balances WHERE code LIKE 'i:%' ORDER BY code;

-- same key, any field different: 23505 naming the key
SELECT fintx.transfer('i-1', 'i:bank', 'i:a', 1001, '{"n": 1}');
SELECT fintx.transfer('i-1', 'i:bank', 'i:b', 1000, '{"n": 1}');
SELECT fintx.transfer('i-1', 'i:bank', 'i:a', 1000, '{"n": 2}');
SELECT fintx.transfer('i-1', 'i:bank', 'i:a', 1000, '{"n": 1}', true);
\set VERBOSITY default
SELECT fintx.transfer('i-1', 'i:bank', 'i:a', 1000);
\set VERBOSITY terse
-- a key used by a transfer cannot be reused for a post or void either
SELECT fintx.void_pending('i-1', (SELECT transfer_id FROM first));

-- a failed request leaves no journal entry: the retry is evaluated afresh
SELECT fintx.transfer('i-5', 'i:b', 'i:a', 100000);
SELECT count(*) AS journal_rows FROM fintx.idempotency_keys WHERE idempotency_key = 'i-5';
SELECT status, replayed FROM fintx.transfer('i-5', 'i:bank', 'i:a', 100000);

-- a rolled-back transfer releases its key
BEGIN;
SELECT status, replayed FROM fintx.transfer('i-6', 'i:bank', 'i:a', 5);
ROLLBACK;
SELECT status, replayed FROM fintx.transfer('i-6', 'i:bank', 'i:a', 7);

-- keys are scoped per principal (the role in effect): another role may use the same key
CREATE ROLE fintx_regress_other;
GRANT fintx_admin TO fintx_regress_other;
SET ROLE fintx_regress_other;
SELECT status, replayed FROM fintx.transfer('i-1', 'i:bank', 'i:a', 1);
RESET ROLE;
SELECT principal, count(*) FROM fintx.idempotency_keys WHERE idempotency_key = 'i-1'
 GROUP BY principal ORDER BY principal;
DROP OWNED BY fintx_regress_other;
DROP ROLE fintx_regress_other;

-- the fingerprint is a SHA-256 of the canonical request, exposed for clients
SELECT length(fintx.request_fingerprint('i:a', 'i:b', 1)) AS bytes;
SELECT fintx.request_fingerprint('i:a', 'i:b', 1) = fingerprint AS matches_journal
  FROM fintx.idempotency_keys WHERE idempotency_key = 'i-4';
SELECT fintx.request_fingerprint('i:a', 'i:b', 1) <> fintx.request_fingerprint('i:a', 'i:b', 2) AS differs;
SELECT fintx.request_fingerprint('i:a', 'i:b', 1, pending => true, timeout => '1 day')
    <> fintx.request_fingerprint('i:a', 'i:b', 1, pending => true, timeout => '24 hours') AS interval_fields_kept;
SELECT fintx.request_fingerprint(NULL, 'i:b', 1);

-- every transfer has exactly one journal record
SELECT count(*) = (SELECT count(*) FROM fintx.transfers) AS one_to_one FROM fintx.idempotency_keys;
SELECT * FROM fintx.reconcile();
-- NULL metadata is the same request as {}
SELECT fintx.request_fingerprint('i:a', 'i:b', 1, NULL) = fintx.request_fingerprint('i:a', 'i:b', 1, '{}') AS null_is_empty;
-- in a batch, a reused key is reported with its position
\set VERBOSITY default
\set SHOW_CONTEXT always
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "i-new", "from_account": "i:bank", "to_account": "i:a", "amount": 1},
                                     {"idempotency_key": "i-1", "from_account": "i:bank", "to_account": "i:a", "amount": 2}]');
\set SHOW_CONTEXT errors
\set VERBOSITY terse

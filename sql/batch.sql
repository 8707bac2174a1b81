-- batch: transfer_batch applies an array of requests atomically, results in request order
\set VERBOSITY terse
-- transfer ids in messages below start from a known value
SELECT setval('fintx.transfer_id_seq', 5000) AS first_id_base;
SELECT fintx.open_account('b:bank', 'EUR', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('b:a', 'EUR') > 0 AS ok;
SELECT fintx.open_account('b:b', 'EUR') > 0 AS ok;
SELECT fintx.open_account('b:c', 'EUR') > 0 AS ok;

SELECT status, replayed, from_balance, to_balance FROM fintx.transfer_batch('[
  {"idempotency_key": "b-1", "from_account": "b:bank", "to_account": "b:a", "amount": 1000},
  {"idempotency_key": "b-2", "from_account": "b:a", "to_account": "b:b", "amount": 400, "metadata": {"memo": "rent"}},
  {"idempotency_key": "b-3", "from_account": "b:b", "to_account": "b:c", "amount": "150"},
  {"idempotency_key": "b-4", "from_account": "b:a", "to_account": "b:c", "amount": 100, "pending": true, "timeout": "1 hour"},
  {"idempotency_key": "b-1", "from_account": "b:bank", "to_account": "b:a", "amount": 1000}
]');
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'b:%' ORDER BY code;
-- a single transfer and a batch share the journal: the batch replays b-2, applies b-5
SELECT status, replayed, from_balance, to_balance FROM fintx.transfer('b-2', 'b:a', 'b:b', 400, '{"memo": "rent"}');
SELECT status, replayed, from_balance, to_balance FROM fintx.transfer_batch('[
  {"idempotency_key": "b-5", "from_account": "b:c", "to_account": "b:a", "amount": 1},
  {"idempotency_key": "b-2", "from_account": "b:a", "to_account": "b:b", "amount": 400, "metadata": {"memo": "rent"}}
]');

-- atomic: one failing element (insufficient funds at index 1) applies nothing
SELECT * FROM fintx.transfer_batch('[
  {"idempotency_key": "b-6", "from_account": "b:bank", "to_account": "b:c", "amount": 5},
  {"idempotency_key": "b-7", "from_account": "b:c", "to_account": "b:a", "amount": 999999}
]');
SELECT count(*) AS journal_rows FROM fintx.idempotency_keys WHERE idempotency_key IN ('b-6', 'b-7');
-- same key twice in one batch with different requests: 23505
SELECT * FROM fintx.transfer_batch('[
  {"idempotency_key": "b-8", "from_account": "b:bank", "to_account": "b:c", "amount": 5},
  {"idempotency_key": "b-8", "from_account": "b:bank", "to_account": "b:c", "amount": 6}
]');
-- key reused from an earlier call with a different request: 23505
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "b-1", "from_account": "b:bank", "to_account": "b:a", "amount": 1}]');

-- malformed requests: 22023 (or 22003 for amounts), with the failing index in the context
SELECT * FROM fintx.transfer_batch(NULL);
SELECT * FROM fintx.transfer_batch('{"idempotency_key": "x"}');
SELECT * FROM fintx.transfer_batch('"text"');
SELECT * FROM fintx.transfer_batch('[1]');
SELECT * FROM fintx.transfer_batch('[[]]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b"}]');
SELECT * FROM fintx.transfer_batch('[{"from_account": "b:a", "to_account": "b:b", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "to_account": "b:b", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1, "ammount": 2}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1.5}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": "1e3"}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": true}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 0}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": -3}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 9223372036854775808}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": "99999999999999999999"}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": 7, "from_account": "b:a", "to_account": "b:b", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1, "metadata": [1]}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1, "pending": "yes"}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1, "timeout": "1 hour"}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:a", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:nobody", "amount": 1}]');
SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "x", "from_account": "x''; DROP TABLE fintx.transfers; --", "to_account": "b:a", "amount": 1}]');
SELECT * FROM fintx.transfer_batch(('[' || repeat('{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1},', 10000)
                                    || '{"idempotency_key": "x", "from_account": "b:a", "to_account": "b:b", "amount": 1}]')::jsonb);
-- an empty batch returns no rows
SELECT count(*) FROM fintx.transfer_batch('[]');

-- a large batch: 2,000 transfers in one call
SELECT count(*) AS applied, bool_and(NOT replayed) AS all_new FROM fintx.transfer_batch(
  (SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'bulk-' || i, 'from_account', 'b:bank',
                                       'to_account', CASE WHEN i % 2 = 0 THEN 'b:a' ELSE 'b:b' END,
                                       'amount', i))
     FROM generate_series(1, 2000) i));
-- and its replay
SELECT count(*) AS replayed FROM fintx.transfer_batch(
  (SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'bulk-' || i, 'from_account', 'b:bank',
                                       'to_account', CASE WHEN i % 2 = 0 THEN 'b:a' ELSE 'b:b' END,
                                       'amount', i))
     FROM generate_series(1, 2000) i)) WHERE replayed;
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'b:%' ORDER BY code;
SELECT * FROM fintx.reconcile();

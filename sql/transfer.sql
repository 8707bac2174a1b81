-- transfer: moving money, balance rules, bad inputs
\set VERBOSITY terse
-- transfer ids in messages below start from a known value
SELECT setval('fintx.transfer_id_seq', 2000) AS first_id_base;
SELECT fintx.open_account('t:bank', 'USD', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('t:a', 'USD') > 0 AS ok;
SELECT fintx.open_account('t:b', 'USD') > 0 AS ok;
SELECT fintx.open_account('t:eur', 'EUR') > 0 AS ok;
SELECT fintx.open_account('t:limit', 'USD', allow_positive => false) > 0 AS ok;
SELECT fintx.open_account('t:max', 'USD', allow_negative => true) > 0 AS ok;

-- happy path: both balances after the transfer are returned
SELECT status, replayed, from_balance, to_balance, length(entry_hash) AS entry_hash_bytes,
       created_at = now() AS in_this_txn
  FROM fintx.transfer('t-1', 't:bank', 't:a', 10000);
SELECT status, replayed, from_balance, to_balance
  FROM fintx.transfer('t-2', 't:a', 't:b', 2500, metadata => '{"reference": "invoice 42"}');
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 't:%' ORDER BY code;
SELECT status, from_account, to_account, amount, metadata, from_balance, to_balance
  FROM fintx.transfer_history WHERE from_account LIKE 't:%' ORDER BY transfer_id;

-- spending the exact available balance is allowed, one unit more is not (FX001)
SELECT from_balance, to_balance FROM fintx.transfer('t-3', 't:a', 't:b', 7500);
SELECT fintx.transfer('t-4', 't:a', 't:b', 1);
SELECT fintx.transfer('t-5', 't:b', 't:a', 10001);
-- allow_positive = false: credit beyond its debits is refused (FX002)
SELECT fintx.transfer('t-6', 't:bank', 't:limit', 1);
-- amounts: zero, negative -> 22003
SELECT fintx.transfer('t-7', 't:bank', 't:a', 0);
SELECT fintx.transfer('t-8', 't:bank', 't:a', -5);
-- overflow of a balance counter -> 22003
SELECT status FROM fintx.transfer('t-9', 't:max', 't:bank', 9223372036854775807);
SELECT fintx.transfer('t-10', 't:max', 't:bank', 1);
-- same account, currency mismatch, unknown accounts -> 22023
SELECT fintx.transfer('t-11', 't:a', 't:a', 1);
SELECT fintx.transfer('t-12', 't:b', 't:eur', 1);
SELECT fintx.transfer('t-13', 't:nobody', 't:a', 1);
SELECT fintx.transfer('t-14', 't:a', 't:nobody', 1);
-- NULLs -> 22023
SELECT fintx.transfer(NULL, 't:a', 't:b', 1);
SELECT fintx.transfer('t-15', NULL, 't:b', 1);
SELECT fintx.transfer('t-15', 't:a', NULL, 1);
SELECT fintx.transfer('t-15', 't:a', 't:b', NULL);
SELECT fintx.transfer('t-15', 't:a', 't:b', 1, pending => NULL);
-- keys: empty, too long, control characters -> 22023; hostile but valid keys are plain data
SELECT fintx.transfer('', 't:b', 't:a', 1);
SELECT fintx.transfer(repeat('k', 256), 't:b', 't:a', 1);
SELECT fintx.transfer(E'line\nbreak', 't:b', 't:a', 1);
SELECT status FROM fintx.transfer('''); DELETE FROM fintx.transfers; --', 't:b', 't:a', 1);
SELECT status FROM fintx.transfer('ключ-🔑', 't:b', 't:a', 1);
SELECT status FROM fintx.transfer(repeat('k', 255), 't:b', 't:a', 1);
-- hostile account codes -> 22023
SELECT fintx.transfer('t-16', 't:a''; --', 't:b', 1);
-- metadata: must be an object
SELECT fintx.transfer('t-17', 't:b', 't:a', 1, metadata => '[]');
SELECT status FROM fintx.transfer('t-18', 't:b', 't:a', 1, metadata => NULL);
-- timeout only for pending transfers, and positive
SELECT fintx.transfer('t-19', 't:b', 't:a', 1, timeout => '1 hour');
SELECT fintx.transfer('t-20', 't:b', 't:a', 1, pending => true, timeout => '0 seconds');
SELECT fintx.transfer('t-21', 't:b', 't:a', 1, pending => true, timeout => '-1 hour');

-- nothing of the failed calls was applied
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 't:%' ORDER BY code;
SELECT count(*) AS transfers FROM fintx.transfer_history WHERE from_account LIKE 't:%';
SELECT * FROM fintx.reconcile();

-- pending: two-phase transfers (holds), post, partial post, void, expiry
\set VERBOSITY terse
-- transfer ids in messages below start from a known value
SELECT setval('fintx.transfer_id_seq', 4000) AS first_id_base;
SELECT fintx.open_account('p:bank', 'CHF', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('p:a', 'CHF') > 0 AS ok;
SELECT fintx.open_account('p:b', 'CHF') > 0 AS ok;
SELECT status FROM fintx.transfer('p-0', 'p:bank', 'p:a', 1000);

-- a hold reserves: posted unchanged, available drops on the debit side
CREATE TEMP TABLE h1 AS SELECT * FROM fintx.transfer('p-1', 'p:a', 'p:b', 600, pending => true);
SELECT status, replayed, from_balance, to_balance FROM h1;
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'p:%' ORDER BY code;
-- holds count against the balance rules: only 400 is left
SELECT fintx.transfer('p-2', 'p:a', 'p:b', 401);
SELECT fintx.transfer('p-3', 'p:a', 'p:b', 401, pending => true);
SELECT transfer_id = (SELECT transfer_id FROM h1) AS listed, from_account, to_account, amount, expired
  FROM fintx.open_holds;
-- partial post: 250 moves, the remaining 350 is released
SELECT status, replayed, from_balance, to_balance FROM fintx.post_pending('p-4', (SELECT transfer_id FROM h1), 250);
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'p:%' ORDER BY code;
SELECT count(*) AS open_holds FROM fintx.open_holds;
-- at most once: a second post or a void is 55000; the replay of p-4 returns the original
SELECT fintx.post_pending('p-5', (SELECT transfer_id FROM h1));
SELECT fintx.void_pending('p-6', (SELECT transfer_id FROM h1));
SELECT status, replayed, from_balance, to_balance FROM fintx.post_pending('p-4', (SELECT transfer_id FROM h1), 250);
SELECT fintx.post_pending('p-4', (SELECT transfer_id FROM h1), 251);

-- full post (amount omitted) and void
CREATE TEMP TABLE h2 AS SELECT * FROM fintx.transfer('p-7', 'p:a', 'p:b', 100, pending => true);
SELECT status, from_balance, to_balance FROM fintx.post_pending('p-8', (SELECT transfer_id FROM h2));
CREATE TEMP TABLE h3 AS SELECT * FROM fintx.transfer('p-9', 'p:a', 'p:b', 100, pending => true);
SELECT status, from_balance, to_balance FROM fintx.void_pending('p-10', (SELECT transfer_id FROM h3));
SELECT status, replayed FROM fintx.void_pending('p-10', (SELECT transfer_id FROM h3));
SELECT fintx.post_pending('p-11', (SELECT transfer_id FROM h3));
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'p:%' ORDER BY code;

-- bad inputs
CREATE TEMP TABLE h4 AS SELECT * FROM fintx.transfer('p-12', 'p:a', 'p:b', 50, pending => true);
SELECT fintx.post_pending('p-13', (SELECT transfer_id FROM h4), 51);
SELECT fintx.post_pending('p-13', (SELECT transfer_id FROM h4), 0);
SELECT fintx.post_pending('p-13', (SELECT transfer_id FROM h4), -1);
SELECT fintx.post_pending('p-13', 999999999);
SELECT fintx.post_pending('p-13', (SELECT transfer_id FROM fintx.transfer('p-0', 'p:bank', 'p:a', 1000)));
SELECT fintx.post_pending(NULL, (SELECT transfer_id FROM h4));
SELECT fintx.post_pending('p-13', NULL);
SELECT fintx.void_pending(NULL, (SELECT transfer_id FROM h4));
SELECT fintx.void_pending('p-13', NULL);
SELECT fintx.void_pending('', (SELECT transfer_id FROM h4));

-- expiry: a hold past its timeout can no longer be posted; expire_pending releases it
CREATE TEMP TABLE h5 AS SELECT * FROM fintx.transfer('p-14', 'p:a', 'p:b', 70, pending => true, timeout => '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT fintx.post_pending('p-15', (SELECT transfer_id FROM h5));
SELECT expired FROM fintx.open_holds WHERE transfer_id = (SELECT transfer_id FROM h5);
SELECT fintx.expire_pending() >= 1 AS released;
SELECT status, amount, principal FROM fintx.transfer_history WHERE pending_id = (SELECT transfer_id FROM h5);
SELECT fintx.void_pending('p-16', (SELECT transfer_id FROM h5));
SELECT fintx.expire_pending(0);
SELECT fintx.expire_pending(NULL);
-- h4 has no timeout and stays open
SELECT count(*) AS open_holds FROM fintx.open_holds;
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances WHERE code LIKE 'p:%' ORDER BY code;
SELECT * FROM fintx.reconcile();

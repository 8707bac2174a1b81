-- accounts: open_account and close_account, happy paths and every bad input
\set VERBOSITY terse
-- transfer ids in messages below start from a known value
SELECT setval('fintx.transfer_id_seq', 1000) AS first_id_base;
SELECT fintx.open_account('bank:cash', 'EUR', allow_negative => true) > 0 AS opened;
SELECT fintx.open_account('acct:alice', 'EUR') > 0 AS opened;
SELECT fintx.open_account('acct:bob', 'EUR', metadata => '{"owner": "Bob", "kyc": true}') > 0 AS opened;
SELECT fintx.open_account('acct:yen', 'JPY') > 0 AS opened;
SELECT fintx.open_account('acct:nopos', 'EUR', allow_negative => false, allow_positive => false) > 0 AS opened;
SELECT code, currency, allow_negative, allow_positive, metadata, created_by = current_user AS by_me
  FROM fintx.accounts ORDER BY id;
SELECT * FROM fintx.account_balances ORDER BY code;

-- duplicate code: 23505
SELECT fintx.open_account('acct:alice', 'EUR');
SELECT fintx.open_account('acct:alice', 'USD');
-- NULL arguments: 22023
SELECT fintx.open_account(NULL, 'EUR');
SELECT fintx.open_account('x', NULL);
SELECT fintx.open_account('x', 'EUR', NULL);
SELECT fintx.open_account('x', 'EUR', false, NULL);
-- NULL metadata means {}
SELECT fintx.open_account('acct:nullmeta', 'EUR', metadata => NULL) > 0 AS opened;
-- unknown or malformed currency: 22023
SELECT fintx.open_account('x', 'eur');
SELECT fintx.open_account('x', 'XXX');
SELECT fintx.open_account('x', '');
SELECT fintx.open_account('x', 'EURO');
-- invalid codes and hostile strings: 22023, nothing stored
SELECT fintx.open_account('', 'EUR');
SELECT fintx.open_account(repeat('a', 65), 'EUR');
SELECT fintx.open_account('''; DROP TABLE fintx.accounts; --', 'EUR');
SELECT fintx.open_account('bob smith', 'EUR');
SELECT fintx.open_account(E'tab\there', 'EUR');
SELECT fintx.open_account('ünïcode', 'EUR');
SELECT fintx.open_account('%', 'EUR');
SELECT fintx.open_account(repeat('a', 64), 'EUR') > 0 AS longest_code_ok;
-- metadata must be an object
SELECT fintx.open_account('x', 'EUR', metadata => '[1,2]');
SELECT fintx.open_account('x', 'EUR', metadata => '"text"');
SELECT fintx.open_account('x', 'EUR', metadata => 'null');
SELECT fintx.open_account('x', 'EUR', metadata => jsonb_build_object('blob', repeat('x', 70000)));
SELECT count(*) AS accounts FROM fintx.accounts;

-- close_account
SELECT fintx.open_account('acct:temp', 'EUR') > 0 AS opened;
SELECT fintx.close_account('acct:temp');
SELECT code, closed_at IS NOT NULL AS closed FROM fintx.accounts WHERE code = 'acct:temp';
SELECT fintx.close_account('acct:temp');
SELECT fintx.close_account('acct:nobody');
SELECT fintx.close_account(NULL);
SELECT fintx.close_account('bad code');
-- transfers to or from a closed account: 55000
SELECT status FROM fintx.transfer('close-1', 'bank:cash', 'acct:temp', 100);
SELECT status FROM fintx.transfer('close-2', 'acct:temp', 'bank:cash', 100);
-- an account with a balance or an open hold cannot be closed
SELECT status FROM fintx.transfer('close-3', 'bank:cash', 'acct:alice', 500);
SELECT fintx.close_account('acct:alice');
SELECT status FROM fintx.transfer('close-4', 'acct:alice', 'bank:cash', 500, pending => true);
SELECT fintx.close_account('acct:alice');
SELECT fintx.close_account('bank:cash');
SELECT status FROM fintx.void_pending('close-5', (SELECT transfer_id FROM fintx.open_holds));
SELECT status FROM fintx.transfer('close-6', 'acct:alice', 'bank:cash', 500);
SELECT fintx.close_account('acct:alice');
SELECT * FROM fintx.reconcile();

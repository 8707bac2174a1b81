\pset footer off
\set VERBOSITY default
\set SHOW_CONTEXT never
\echo '== 1. Install the extension'
CREATE EXTENSION fintx;

\echo '== 2. Open accounts (amounts are integers in minor units: cents for EUR)'
SELECT fintx.open_account('bank:settlement', 'EUR', allow_negative => true) AS settlement_id,
       fintx.open_account('customer:alice',  'EUR') AS alice_id,
       fintx.open_account('customer:bob',    'EUR') AS bob_id,
       fintx.open_account('merchant:shop',   'EUR') AS shop_id;

\echo '== 3. Fund Alice with EUR 500.00 and pay Bob EUR 120.00'
SELECT transfer_id, status, replayed, from_balance, to_balance
  FROM fintx.transfer('deposit-0001', 'bank:settlement', 'customer:alice', 50000,
                      '{"channel": "SEPA", "reference": "top-up"}');
SELECT transfer_id, status, replayed, from_balance, to_balance
  FROM fintx.transfer('payment-0001', 'customer:alice', 'customer:bob', 12000);

\echo '== 4. The client times out and retries payment-0001: the ORIGINAL result comes back, replayed = true'
SELECT transfer_id, status, replayed, from_balance, to_balance
  FROM fintx.transfer('payment-0001', 'customer:alice', 'customer:bob', 12000);

\echo '== 5. The same key with a different amount is refused (SQLSTATE 23505)'
SELECT fintx.transfer('payment-0001', 'customer:alice', 'customer:bob', 99999);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE

\echo '== 6. An overdraft is refused (SQLSTATE FX001) and changes nothing'
SELECT fintx.transfer('payment-0002', 'customer:bob', 'customer:alice', 1000000);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE

\echo '== 7. Two-phase: hold EUR 80.00 for the shop (expires in 7 days), then capture EUR 75.00'
SELECT transfer_id AS hold_id, status, from_balance, to_balance
  FROM fintx.transfer('card-auth-77', 'customer:alice', 'merchant:shop', 8000,
                      pending => true, timeout => '7 days') \gset
\echo 'hold' :hold_id 'placed, status' :status
\echo 'while the hold is open, Alice''s available balance is reduced:'
SELECT code, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances ORDER BY code;
SELECT transfer_id, status, replayed, from_balance, to_balance
  FROM fintx.post_pending('card-capture-77', :hold_id, 7500);
\echo 'a second capture of the same hold is refused (SQLSTATE 55000):'
SELECT fintx.post_pending('card-capture-78', :hold_id);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE

\echo '== 8. A batch of transfers, applied atomically'
SELECT transfer_id, status, replayed, from_balance, to_balance
  FROM fintx.transfer_batch('[
    {"idempotency_key": "payroll-1", "from_account": "bank:settlement", "to_account": "customer:bob",   "amount": 250000},
    {"idempotency_key": "payroll-2", "from_account": "bank:settlement", "to_account": "customer:alice", "amount": 180000}
  ]');

\echo '== 9. Balances'
SELECT code, currency, posted, pending_debits, pending_credits, available
  FROM fintx.account_balances ORDER BY code;

\echo '== 10. Reconciliation: no rows means every balance equals the sum of its transfers'
SELECT * FROM fintx.reconcile();
SELECT CASE WHEN count(*) = 0 THEN 'ledger is consistent' ELSE count(*) || ' discrepancies' END AS reconcile
  FROM fintx.reconcile();

\echo '== 11. Every change above is in the audit log, written in the same transaction'
SELECT entry_id, action, object_id, actor, pg_catalog.left(encode(entry_hash, 'hex'), 16) || '...' AS entry_hash
  FROM fintx.audit_log ORDER BY entry_id;

\echo '== 12. The worker seals entries into an RFC 6962 Merkle log; the head is signed (C2SP checkpoint)'
SELECT fintx.seal() AS tree_size;
SELECT fintx.checkpoint();
SELECT fintx.public_key();

\echo '== 13. Prove that the payment is in the log: its leaf, the inclusion proof, the signed root'
SELECT l.leaf_index, fintx.tree_size() AS tree_size, array_length(fintx.inclusion_proof(l.leaf_index, fintx.tree_size()), 1) AS proof_hashes
  FROM fintx.audit_log l WHERE l.details->>'idempotency_key' = 'payment-0001';

\echo '== 14. Verify the whole log: entries, Merkle tree, block chain and signatures'
SELECT * FROM fintx.verify_audit();

\echo '== 15. Nobody may rewrite history, not even a superuser'
UPDATE fintx.audit_entries SET actor = 'mallory';
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE

\echo '== 16. Services: a role registered as a service may do only what it was granted'
DROP ROLE IF EXISTS demo_pay;
DROP ROLE IF EXISTS demo_risk;
CREATE ROLE demo_pay LOGIN;
CREATE ROLE demo_risk LOGIN;
SELECT fintx.register_service('payments', 'demo_pay');
SELECT fintx.register_service('risk', 'demo_risk');
SELECT fintx.grant_permission('payments', 'transfer', 'customer:%', max_amount => 50000,
                              daily_limit => 200000, currency => 'EUR', approval_above => 30000);
SELECT fintx.grant_permission('risk', 'transfer.approve', 'customer:%');
SET ROLE demo_pay;
\echo '   payments pays 120.00 EUR from a customer account it is granted:'
SELECT transfer_id, status, from_balance, to_balance FROM fintx.transfer('svc-0001', 'customer:alice', 'merchant:shop', 12000);
\echo '   payments tries to debit the merchant (no grant covers merchant:%) -> refused:'
SELECT * FROM fintx.transfer('svc-0002', 'merchant:shop', 'customer:alice', 100);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE
\echo '   payments tries 600.00 EUR (over its per-transfer limit of 500.00) -> refused:'
SELECT * FROM fintx.transfer('svc-0003', 'customer:alice', 'merchant:shop', 60000);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE
\echo '   payments asks for 400.00 EUR (over its approval threshold of 300.00) -> awaits approval:'
SELECT transfer_id, status FROM fintx.transfer('svc-0004', 'customer:alice', 'merchant:shop', 40000) \gset big_
SELECT :big_transfer_id AS transfer_id, :'big_status' AS status;
\echo '   payments cannot approve its own transfer (segregation of duties):'
SELECT * FROM fintx.approve_transfer(:big_transfer_id);
\echo '   -> SQLSTATE' :LAST_ERROR_SQLSTATE
\echo '   payments sees only the accounts its grants cover:'
SELECT code, posted FROM fintx.account_balances ORDER BY code;
RESET ROLE;
SET ROLE demo_risk;
\echo '   risk, a different service with transfer.approve, approves it:'
SELECT transfer_id, status, from_balance, to_balance FROM fintx.approve_transfer(:big_transfer_id);
RESET ROLE;

\echo '== 17. Every decision is in the access log, denials included (written by the worker, they survive the abort)'
SELECT pg_sleep(0.2);
SELECT service, role, operation, object, amount, allowed, reason
  FROM fintx.access_log WHERE role IN ('demo_pay', 'demo_risk') ORDER BY at;

\echo '== 18. Every change also produced an outbox event, in the same transaction; a consumer reads them in commit order'
SELECT fintx.create_consumer('demo-consumer');
SELECT fintx.seal() IS NOT NULL AS sequenced;
SELECT position, aggregatetype, aggregateid, type FROM fintx.poll('demo-consumer', 8);
SELECT fintx.ack('demo-consumer', (SELECT max(position) FROM fintx.poll('demo-consumer', 8)));
\echo '   after ack, poll() continues after the acknowledged position:'
SELECT position, type FROM fintx.poll('demo-consumer', 3);

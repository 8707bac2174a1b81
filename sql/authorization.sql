-- authorization: services, grants with limits, maker-checker, row security, the access log
CREATE ROLE fintx_regress_pay;
CREATE ROLE fintx_regress_risk;
SELECT fintx.open_account('az:ops', 'EUR', allow_negative => true) > 0 AS opened;
SELECT fintx.open_account('az:cust', 'EUR') > 0 AS opened;
SELECT fintx.open_account('az:usd', 'USD', allow_negative => true) > 0 AS opened;
SELECT fintx.open_account('bz:other', 'EUR', allow_negative => true) > 0 AS opened;
SELECT fintx.register_service('az-pay', 'fintx_regress_pay');
SELECT fintx.register_service('az-risk', 'fintx_regress_risk', 'Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=');
SELECT fintx.grant_permission('az-pay', 'transfer', 'az:%', 1000, 1500, 'EUR', 500);
SELECT fintx.grant_permission('az-pay', 'hold.resolve', 'az:%');
SELECT fintx.grant_permission('az-risk', 'transfer.approve', 'az:%');
SELECT service, operation, account_pattern, currency, max_amount, daily_limit, approval_above
  FROM fintx.permissions WHERE service LIKE 'az-%' ORDER BY 1, 2;

SET ROLE fintx_regress_pay;
SELECT status, replayed, from_balance, to_balance FROM fintx.transfer('az-1', 'az:ops', 'az:cust', 100);
SELECT status, replayed FROM fintx.transfer('az-1', 'az:ops', 'az:cust', 100);
SELECT status FROM fintx.transfer('az-2', 'bz:other', 'az:cust', 1);
-- an account that does not exist is refused in the same words (the currency would tell it exists)
SELECT status FROM fintx.transfer('az-2b', 'bz:none', 'az:cust', 1);
SELECT status FROM fintx.transfer('az-3', 'az:ops', 'az:cust', 1001);
SELECT status FROM fintx.transfer('az-4', 'az:usd', 'az:cust', 1);
SELECT status FROM fintx.transfer('az-5', 'az:ops', 'az:cust', 700);
SELECT status FROM fintx.transfer('az-6', 'az:ops', 'az:cust', 800);
SELECT status FROM fintx.transfer('az-7', 'az:ops', 'az:cust', 90, pending => true);
SELECT status FROM fintx.void_pending('az-8', (SELECT transfer_id FROM fintx.transfer_history WHERE status = 'pending' AND amount = 90));
SELECT code, posted, pending_debits, available FROM fintx.account_balances ORDER BY code;
SELECT fintx.approve_transfer((SELECT transfer_id FROM fintx.pending_approvals));
UPDATE fintx.accounts SET credits_posted = 0;
SELECT fintx.grant_permission('az-pay', 'transfer', '%');
RESET ROLE;

SET ROLE fintx_regress_risk;
SELECT maker_service, from_account, to_account, amount FROM fintx.pending_approvals;
SELECT status, replayed FROM fintx.approve_transfer((SELECT transfer_id FROM fintx.pending_approvals));
SELECT status, replayed FROM fintx.approve_transfer((SELECT transfer_id FROM fintx.approvals WHERE maker_service = 'az-pay'));
SELECT status FROM fintx.transfer_signed('{"idempotency_key": "az-s", "from_account": "az:ops", "to_account": "az:cust", "amount": 1}',
                                         decode(repeat('00', 64), 'hex'));
RESET ROLE;

SELECT code, posted FROM fintx.account_balances WHERE code LIKE 'az:%' ORDER BY code;
SELECT service, role, operation, object, amount, currency, allowed, reason, rule
  FROM fintx.access_log WHERE service LIKE 'az-%' AND allowed ORDER BY at, operation;
SELECT action, object_type FROM fintx.audit_log
 WHERE action IN ('service.registered', 'permission.granted', 'transfer.awaiting_approval', 'transfer.approved')
   AND (details->>'service' LIKE 'az-%' OR details->>'maker_service' LIKE 'az-%' OR details->>'idempotency_key' LIKE 'az-%')
 ORDER BY entry_id;
-- a service reads a counterparty's balance as null everywhere: not in fintx.transfers's
-- balance columns, and as null in the transfer events poll() gives it
SELECT fintx.grant_permission('az-pay', 'event.consume', 'az-pay-%');
SET ROLE fintx_regress_pay;
SELECT fintx.create_consumer('az-pay-c');
RESET ROLE;
SELECT fintx.transfer('az-in', 'bz:other', 'az:cust', 5) IS NOT NULL AS moved;
SELECT fintx.seal() > 0 AS sealed;
SET ROLE fintx_regress_pay;
SELECT payload->>'from_account' AS from_account, payload->'from_balance' AS from_balance,
       payload->>'to_account' AS to_account, jsonb_typeof(payload->'to_balance') AS to_balance,
       payload->'metadata' AS metadata
  FROM fintx.poll('az-pay-c', 100) WHERE payload->>'idempotency_key' = 'az-in';
SELECT from_balance FROM fintx.transfers LIMIT 1;
SELECT count(amount) > 0 AS reads_the_other_columns FROM fintx.transfers;
RESET ROLE;
-- nor another service's grant (its limits) in the events of that service's transfers; its own it sees
SELECT fintx.grant_permission('az-risk', 'transfer', 'bz:%', max_amount => 777777);
SET ROLE fintx_regress_risk;
SELECT fintx.transfer('az-in-risk', 'bz:other', 'az:cust', 3) IS NOT NULL AS moved;
RESET ROLE;
SELECT fintx.seal() > 0 AS sealed;
SET ROLE fintx_regress_pay;
SELECT payload->>'idempotency_key' AS key, payload->>'service' AS service, payload->'authorized_by' AS authorized_by
  FROM fintx.poll('az-pay-c', 100) WHERE payload->>'idempotency_key' IN ('az-in-risk', 'az-1') ORDER BY 1;
RESET ROLE;
-- a service that sees every event (audit.read on '%', as a relay's) reads the audit entries
-- anyway: its events keep the rule
SELECT fintx.grant_permission('az-pay', 'audit.read', '%');
SET ROLE fintx_regress_pay;
SELECT payload->>'service' AS service, payload->'authorized_by' IS NOT NULL AND payload->'authorized_by' <> 'null' AS rule_shown
  FROM fintx.poll('az-pay-c', 10000) WHERE payload->>'idempotency_key' = 'az-in-risk';
RESET ROLE;
SELECT fintx.revoke_permission('az-pay', 'audit.read', '%');
SELECT fintx.revoke_permission('az-risk', 'transfer', 'bz:%');
SELECT fintx.revoke_permission('az-pay', 'transfer', 'az:%');
SELECT * FROM fintx.reconcile();

-- 006_authorization: services, grants, limits, maker-checker, row security, the access log
-- and signed-request inputs, against the contract in DESIGN.md and docs/authorization.md.
-- Denials written by the background worker are checked by test/t/012_attack_matrix.pl
-- (this file runs inside one transaction in a database the worker does not serve).
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(226);

CREATE FUNCTION pg_temp.run_as(r text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    PERFORM pg_catalog.set_config('role', r, true);
    EXECUTE q INTO v;
    PERFORM pg_catalog.set_config('role', 'none', true);
    RETURN v;
EXCEPTION WHEN OTHERS THEN
    PERFORM pg_catalog.set_config('role', 'none', true);
    RAISE;
END
$$;

CREATE ROLE t6_pay LOGIN;
CREATE ROLE t6_risk LOGIN;
CREATE ROLE t6_other LOGIN;
CREATE ROLE t6_plain LOGIN;
CREATE ROLE t6_admin LOGIN IN ROLE fintx_admin;
CREATE ROLE t6_auditor LOGIN IN ROLE fintx_auditor;

SELECT fintx.open_account('pay:ops', 'EUR', true);
SELECT fintx.open_account('pay:cust:1', 'EUR');
SELECT fintx.open_account('pay:cust:2', 'EUR');
SELECT fintx.open_account('pay:usd', 'USD', true);
SELECT fintx.open_account('pay:usd2', 'USD');
SELECT fintx.open_account('risk:pool', 'EUR', true);
SELECT fintx.open_account('lit_1', 'EUR', true);
SELECT fintx.open_account('litX1', 'EUR', true);

-- ===========================================================================
-- 1. register_service
-- ===========================================================================
SELECT lives_ok($$SELECT fintx.register_service('payments', 't6_pay')$$, 'register a service without a key');
SELECT is(pg_has_role('t6_pay', 'fintx_service', 'MEMBER'), true, 'registration grants fintx_service to the role');
SELECT lives_ok($$SELECT fintx.register_service('risk', 't6_risk', 'Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=')$$,
                'register a service with a base64 raw Ed25519 key');
SELECT throws_ok($$SELECT fintx.register_service('other', 't6_other', 'MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=')$$,
                 '22023', 'invalid public key', 'base64 of a DER key (not 32 bytes) is refused');
SELECT throws_ok($$SELECT fintx.register_service('other', 't6_other', 'not a key')$$, '22023', 'invalid public key',
                 'a malformed key is refused');
SELECT throws_ok($$SELECT fintx.register_service('other', 't6_other', 'AAAA')$$, '22023', 'invalid public key',
                 'a key of the wrong length is refused');
SELECT throws_ok($$SELECT fintx.register_service('other', 't6_other', '-----BEGIN PUBLIC KEY-----
MCowBQYDK2VuAyEAhSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=
-----END PUBLIC KEY-----')$$, '22023', 'invalid public key', 'a PEM key that is not Ed25519 (X25519) is refused');
SELECT lives_ok($$SELECT fintx.register_service('other', 't6_other', '-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----')$$, 'a PEM Ed25519 key is accepted');
SELECT is((SELECT encode(public_key, 'base64') FROM fintx.services WHERE name = 'other'),
          'Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=', 'the raw 32-byte key is stored');
-- whether set_service_key refuses key k as an invalid public key (the change rolled back either way)
CREATE FUNCTION pg_temp.key_refused(k text) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM fintx.set_service_key('other', k);
  RAISE EXCEPTION 'accepted';
EXCEPTION WHEN OTHERS THEN
  -- NULL (the test fails) for any other error
  RETURN CASE SQLERRM WHEN 'invalid public key' THEN true WHEN 'accepted' THEN false END;
END $f$;
SELECT is(pg_temp.key_refused('Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE='), false, 'a sound key is accepted');
SELECT is(pg_temp.key_refused(E'  Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n'), false, 'white space around a key is ignored');
-- the points of small order (their five y coordinates, either sign of x) and the encodings of y >= p:
-- under such a key a constant signature (R the identity, S = 0) verifies many or all requests
SELECT is((SELECT count(*)::int
             FROM (VALUES ('0000000000000000000000000000000000000000000000000000000000000000'),
                          ('0100000000000000000000000000000000000000000000000000000000000000'),
                          ('26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05'),
                          ('c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a'),
                          ('ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'),
                          ('edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'),
                          ('eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f'),
                          ('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f')) k(hex),
                  LATERAL (VALUES (decode(hex, 'hex')),
                                  (set_byte(decode(hex, 'hex'), 31, get_byte(decode(hex, 'hex'), 31) | 128))) b(key)
            WHERE pg_temp.key_refused(encode(b.key, 'base64'))), 16,
          'small-order and non-canonical keys are refused (16 encodings)');
SELECT is(pg_temp.key_refused(E'-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n-----END PUBLIC KEY-----\n'),
          true, 'the identity point as PEM is refused');
SELECT is(pg_temp.key_refused(E'-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\ngarbage'),
          true, 'a PEM block followed by other text is refused');
SELECT is(pg_temp.key_refused(E'-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----'),
          true, 'a PEM block followed by other text and another END line is refused');
SELECT is(pg_temp.key_refused(E'-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----'),
          true, 'two PEM blocks are refused');
SELECT is(pg_temp.key_refused('Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuF='), true,
          'base64 with stray bits in its last character is refused (one encoding per key)');
SELECT throws_ok($$SELECT fintx.register_service('payments', 't6_plain')$$, '23505', NULL, 'a service name is unique');
SELECT throws_ok($$SELECT fintx.register_service('payments2', 't6_pay')$$, '23505', NULL, 'a role is one service');
SELECT throws_ok($$SELECT fintx.register_service(NULL, 't6_plain')$$, '22023', 'name must not be null', 'NULL name');
SELECT throws_ok($$SELECT fintx.register_service('x', NULL)$$, '22023', 'role must not be null', 'NULL role');
SELECT throws_ok($$SELECT fintx.register_service('bad name', 't6_plain')$$, '22023', 'invalid service name', 'space in name');
SELECT throws_ok($$SELECT fintx.register_service(repeat('a', 65), 't6_plain')$$, '22023', 'invalid service name', 'name too long');
SELECT throws_ok($$SELECT fintx.register_service('x''; DROP TABLE fintx.accounts; --', 't6_plain')$$, '22023',
                 'invalid service name', 'hostile name refused');
SELECT throws_ok($$SELECT fintx.register_service('su', 'postgres')$$, '22023', NULL, 'a superuser is not a service');
SELECT throws_ok($$SELECT fintx.register_service('grp', 'fintx_admin')$$, '22023', NULL, 'fintx roles are not services');
SELECT throws_ok($$SELECT fintx.register_service('pgr', 'pg_monitor')$$, '22023', NULL, 'predefined roles are not services');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.register_service(''me2'', ''t6_plain'')')$$,
                 '42501', NULL, 'a service cannot register services');
CREATE ROLE t6_adm_svc LOGIN;
SELECT lives_ok($$SELECT pg_temp.run_as('t6_admin', 'SELECT fintx.register_service(''adm-made'', ''t6_adm_svc'')')$$,
                'a fintx_admin member registers services');

-- ===========================================================================
-- 2. grant_permission / revoke_permission inputs
-- ===========================================================================
SELECT throws_ok($$SELECT fintx.grant_permission('nobody', 'transfer', '%')$$, '22023', 'service "nobody" does not exist', 'unknown service');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'steal', '%')$$, '22023', 'unknown operation "steal"', 'unknown operation');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', '')$$, '22023', 'invalid account pattern', 'empty pattern');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'a b')$$, '22023', 'invalid account pattern', 'space in pattern');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay\')$$, '22023', 'invalid account pattern', 'trailing escape');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', repeat('%', 129))$$, '22023', 'invalid account pattern', 'pattern too long');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', 0)$$, '22003', 'max_amount must be greater than zero', 'zero max_amount');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', NULL, -5)$$, '22003', 'daily_limit must be greater than zero', 'negative daily limit');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', NULL, NULL, NULL, -1)$$, '22003', 'approval_above must be greater than zero', 'negative approval threshold');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', NULL, NULL, 'XXX')$$, '22023', 'unknown currency "XXX"', 'unknown currency');
SELECT throws_ok($$SELECT fintx.grant_permission(NULL, 'transfer', 'pay:%')$$, '22023', 'service must not be null', 'NULL service');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', NULL, 'pay:%')$$, '22023', 'operation must not be null', 'NULL operation');
SELECT throws_ok($$SELECT fintx.grant_permission('payments', 'transfer', NULL)$$, '22023', 'account_pattern must not be null', 'NULL pattern');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.grant_permission(''payments'', ''transfer'', ''%'')')$$,
                 '42501', NULL, 'a service cannot grant itself permissions');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', 'SELECT fintx.grant_permission(''payments'', ''transfer'', ''%'')')$$,
                 '42501', NULL, 'an unregistered role cannot grant');
SELECT lives_ok($$SELECT pg_temp.run_as('t6_admin', 'SELECT fintx.grant_permission(''payments'', ''account.open'', ''pay:%'')')$$,
                'a fintx_admin member grants permissions');

SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', 1000, 2500);
SELECT fintx.grant_permission('payments', 'transfer', 'pay:ops', 5000, NULL, 'EUR', 3000);
SELECT fintx.grant_permission('payments', 'transfer', 'pay:usd%', 100, NULL, 'USD');
SELECT fintx.grant_permission('payments', 'hold.resolve', 'pay:%');
SELECT fintx.grant_permission('payments', 'account.close', 'pay:cust:%');
SELECT fintx.grant_permission('payments', 'transfer', 'lit\_1');
SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:%', 4000);
SELECT fintx.grant_permission('risk', 'audit.read', '%');
SELECT fintx.grant_permission('other', 'transfer.approve', 'risk:%');

SELECT is((SELECT count(*)::int FROM fintx.permissions WHERE service = 'payments'), 7, 'grants are stored');
SELECT lives_ok($$SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', 1000, 2500)$$, 'granting again replaces');
SELECT is((SELECT count(*)::int FROM fintx.permissions WHERE service = 'payments'), 7, 'a re-grant does not duplicate');
SELECT is((SELECT count(*)::int FROM fintx.audit_log WHERE action = 'permission.granted'), 11,
          'every grant enters the audit log');
SELECT is((SELECT count(*)::int FROM fintx.audit_log WHERE action = 'service.registered'), 4,
          'every registration enters the audit log');

-- ===========================================================================
-- 3. scope: the debited account decides; least privilege by default
-- ===========================================================================
SELECT fintx.transfer('seed-1', 'pay:ops', 'pay:cust:1', 100);  -- admin seeds
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('p-1', 'pay:ops', 'pay:cust:2', 10)$q$),
          'posted', 'a service moves money from an account its grant covers');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''p-2'', ''risk:pool'', ''pay:cust:1'', 10)')$$,
                 '42501', 'permission denied for transfer on "risk:pool"', 'debiting another service''s account is refused');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''p-3'', ''nosuch'', ''pay:cust:1'', 10)')$$,
                 '42501', NULL, 'an account outside the grants is refused whether or not it exists');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''p-3b'', ''pay:nosuch'', ''pay:cust:1'', 10)')$$,
                 '22023', 'account "pay:nosuch" does not exist', 'inside its grants a service learns an account is missing');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', 'SELECT status FROM fintx.transfer(''p-4'', ''pay:ops'', ''pay:cust:1'', 10)')$$,
                 '42501', NULL, 'a role that is not a service cannot move money');
GRANT fintx_service TO t6_plain;
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', 'SELECT status FROM fintx.transfer(''p-5'', ''pay:ops'', ''pay:cust:1'', 10)')$$,
                 '42501', 'permission denied for transfer on "pay:ops"', 'membership in fintx_service without registration is refused');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', 'SELECT status FROM fintx.void_pending(''p-5b'', 1)')$$,
                 '42501', 'permission denied for hold.resolve on "transfer 1"', 'an unregistered role cannot resolve holds');
REVOKE fintx_service FROM t6_plain;
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('p-6', 'lit_1', 'pay:cust:1', 1)$q$),
          'posted', 'an escaped % matches a literal %');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''p-7'', ''litX1'', ''pay:cust:1'', 1)')$$,
                 '42501', NULL, 'an escaped % is not a wildcard');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_risk', 'SELECT status FROM fintx.transfer(''r-1'', ''pay:ops'', ''pay:cust:1'', 1)')$$,
                 '42501', NULL, 'transfer.approve does not allow transfer');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.open_account(''risk:new'', ''EUR'')')$$,
                 '42501', 'permission denied for account.open on "risk:new"', 'account.open is scoped by pattern');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT fintx.open_account('pay:new', 'EUR') > 0$q$)::boolean, true,
          'account.open within the pattern');
SELECT lives_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.transfer(''p-8'', ''pay:ops'', ''pay:new'', 5)')$$, 'fund pay:new');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.close_account(''pay:new'')')$$,
                 '42501', 'permission denied for account.close on "pay:new"', 'account.close needs its own grant');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.close_account(''pay:cust:9'')')$$,
                 '22023', 'account "pay:cust:9" does not exist', 'close within the grant reaches the ledger checks');

-- ===========================================================================
-- 4. limits: per transfer, per currency, per day (also split into small transfers)
-- ===========================================================================
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''l-1'', ''pay:cust:1'', ''pay:cust:2'', 1001)')$$,
                 '42501', NULL, 'amount above max_amount is refused');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('l-2', 'pay:ops', 'pay:cust:1', 2500)$q$),
          'posted', 'the more specific EUR grant on pay:ops (max 5000) decides for pay:ops');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''l-3'', ''pay:usd'', ''pay:usd2'', 101)')$$,
                 '42501', NULL, 'the USD grant limits USD transfers to 100');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('l-4', 'pay:usd', 'pay:usd2', 100)$q$),
          'posted', 'a USD transfer within its limit');
-- daily limit 2500 on pay:% (EUR): pay:cust:1 holds 2601 now; split into small transfers
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT string_agg(status, ',') FROM generate_series(1, 5) g,
          LATERAL fintx.transfer('d-' || g, 'pay:cust:1', 'pay:cust:2', 500) $q$),
          'posted,posted,posted,posted,posted', 'five transfers of 500 use the daily limit of 2500');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''d-6'', ''pay:cust:1'', ''pay:cust:2'', 1)')$$,
                 '42501', NULL, 'the sixth small transfer is over the daily limit');
SELECT is((SELECT used FROM fintx.limit_usage WHERE service = 'payments' AND account_pattern = 'pay:%' AND currency = 'EUR'),
          2500::bigint, 'the day''s usage is exactly the limit');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT replayed::text FROM fintx.transfer('d-1', 'pay:cust:1', 'pay:cust:2', 500)$q$),
          'true', 'a replay is not counted again and not refused');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT count(*) FROM fintx.transfer_batch(''[{"idempotency_key":"b-1","from_account":"pay:cust:1","to_account":"pay:cust:2","amount":1}]'')')$$,
                 '42501', NULL, 'a batch is held to the same daily limit');
SELECT is((SELECT count(*)::int FROM fintx.transfers WHERE principal = 't6_pay' AND amount = 1 AND from_account = (SELECT id FROM fintx.accounts WHERE code = 'pay:cust:1')),
          0, 'nothing of a refused batch was applied');

-- ===========================================================================
-- 5. holds: hold.resolve is scoped by the debited account
-- ===========================================================================
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('h-1', 'pay:ops', 'pay:cust:1', 7, pending => true)$q$),
          'pending', 'a service places a hold');
SELECT is(pg_temp.run_as('t6_pay', format('SELECT status FROM fintx.post_pending(%L, %s)', 'h-2',
          (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'h-1'))), 'posted', 'and posts it');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT p.status FROM fintx.transfer('h-5', 'pay:ops', 'pay:cust:1', 4, pending => true) h,
                                       LATERAL fintx.post_pending('h-6', h.transfer_id) p$q$),
          'posted', 'a hold placed and posted in one statement is found (not refused as unknown)');
SELECT fintx.transfer('h-3', 'risk:pool', 'pay:cust:1', 3, pending => true);
SELECT throws_ok(format($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.void_pending(''h-4'', %s)')$$,
                 (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'h-3')),
                 '42501', 'permission denied for hold.resolve on "transfer ' || (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'h-3') || '"',
                 'a service cannot void another service''s hold, and is not told whose account it debits');

-- ===========================================================================
-- 6. maker-checker
-- ===========================================================================
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status || ':' || from_balance FROM fintx.transfer('m-1', 'pay:ops', 'pay:cust:2', 3500, '{"why": "big"}')$q$),
          'awaiting_approval:' || (SELECT posted FROM fintx.account_balances WHERE code = 'pay:ops'),
          'above approval_above the transfer awaits approval and moves no money');
SELECT is((SELECT count(*)::int FROM fintx.pending_approvals), 1, 'it is listed in pending_approvals');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status || ':' || replayed FROM fintx.transfer('m-1', 'pay:ops', 'pay:cust:2', 3500, '{"why": "big"}')$q$),
          'awaiting_approval:true', 'a retry gets the original answer');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', format('SELECT status FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.pending_approvals)))$$,
                 '42501', NULL, 'the maker cannot approve its own transfer');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_other', format('SELECT status FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.pending_approvals)))$$,
                 '42501', 'permission denied for transfer.approve on "transfer ' || (SELECT transfer_id FROM fintx.pending_approvals) || '"',
                 'a checker without transfer.approve on the account cannot approve, and is not told which account');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_other', 'SELECT status FROM fintx.reject_transfer(987654321)')$$,
                 '42501', 'permission denied for transfer.approve on "transfer 987654321"',
                 'an id that awaits nothing is refused in the same words (no oracle for awaiting ids)');
-- a role in fintx_service that is no registered service: the same refusal for every id
GRANT fintx_service TO t6_plain;
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', format('SELECT status FROM fintx.reject_transfer(%s)', (SELECT transfer_id FROM fintx.pending_approvals)))$$,
                 '42501', 'permission denied for transfer.approve on "transfer ' || (SELECT transfer_id FROM fintx.pending_approvals) || '"',
                 'an unregistered role cannot reject an awaiting transfer, and is not told its account');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_plain', 'SELECT status FROM fintx.approve_transfer(987654321)')$$,
                 '42501', 'permission denied for transfer.approve on "transfer 987654321"',
                 'an unregistered role gets the same refusal for an id that awaits nothing');
REVOKE fintx_service FROM t6_plain;
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.pending_approvals))),
          'posted', 'a different service holding transfer.approve approves: the money moves');
SELECT is((SELECT status || ':' || decided_by_service FROM fintx.approvals WHERE maker_service = 'payments' AND amount = 3500),
          'approved:risk', 'the decision is recorded');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT replayed::text FROM fintx.approve_transfer(%s)',
          (SELECT transfer_id FROM fintx.approvals WHERE amount = 3500))), 'true', 'the approver''s retry replays');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT from_balance || '':'' || to_balance FROM fintx.approve_transfer(%s)',
          (SELECT transfer_id FROM fintx.approvals WHERE amount = 3500))),
          (SELECT from_balance || ':' || to_balance FROM fintx.transfers
            WHERE id = (SELECT result_transfer_id FROM fintx.approvals WHERE amount = 3500)),
          'the approver''s retry returns the balances of the first answer');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_risk', format('SELECT status FROM fintx.reject_transfer(%s)', (SELECT transfer_id FROM fintx.approvals WHERE amount = 3500)))$$,
                 '55000', NULL, 'an approved transfer cannot be rejected');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('m-2', 'pay:ops', 'pay:cust:2', 3100)$q$),
          'awaiting_approval', 'another transfer awaits approval');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status FROM fintx.reject_transfer(%s, %L)',
          (SELECT transfer_id FROM fintx.pending_approvals), 'no invoice')), 'rejected', 'the checker rejects it');
-- a rejection moves no money: it does not use up the checker's daily limit (5000 here)
SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:%', 4000, 5000);
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT string_agg(status, ',') FROM (SELECT (fintx.transfer('m-r' || g, 'pay:ops', 'pay:cust:2', 3000 + g)).status FROM generate_series(1, 2) g) x$q$),
          'awaiting_approval,awaiting_approval', 'two more transfers (3001, 3002) await approval');
SELECT is(pg_temp.run_as('t6_risk', $q$SELECT string_agg(status, ',' ORDER BY transfer_id) FROM (SELECT (fintx.reject_transfer(transfer_id, 'no')).* FROM fintx.pending_approvals WHERE amount IN (3001, 3002)) x$q$),
          'rejected,rejected', 'the checker rejects both, 6003 in all against a daily limit of 5000');
SELECT is((SELECT coalesce(sum(used), 0)::int FROM fintx.limit_usage WHERE service = 'risk' AND operation = 'transfer.approve'), 0,
          'rejections count nothing against the daily limit');
SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:%', 4000);
SELECT throws_ok($$SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:%', NULL, NULL, NULL, 100)$$,
                 '22023', 'approval_above applies to transfer grants only, not to transfer.approve',
                 'approval_above on a grant other than transfer is refused');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_risk', format('SELECT status FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.approvals WHERE amount = 3100)))$$,
                 '55000', NULL, 'a rejected transfer cannot be approved');
SELECT throws_ok($$SELECT fintx.approve_transfer(-1)$$, '22023', NULL, 'approving an unknown transfer');
SELECT throws_ok($$SELECT fintx.approve_transfer(NULL)$$, '22023', 'transfer_id must not be null', 'NULL transfer id');
SELECT throws_ok($$SELECT fintx.reject_transfer(1, repeat('x', 1001))$$, '22023', 'reason is too long', 'reason too long');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT count(*) FROM fintx.transfer_batch(''[{"idempotency_key":"mb-1","from_account":"pay:ops","to_account":"pay:cust:2","amount":3200},{"idempotency_key":"mb-2","from_account":"pay:ops","to_account":"pay:cust:2","amount":1}]'')')$$,
                 '42501', NULL, 'a batch cannot carry a transfer that needs approval');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT count(*) FROM fintx.transfer_batch(''[{"idempotency_key":"mb-3","from_account":"pay:ops","to_account":"pay:cust:2","amount":3200}]'')')$$,
                 '42501', NULL, 'nor can a batch of one');
SELECT is(pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer_batch(''[{"idempotency_key":"mb-2","from_account":"pay:ops","to_account":"pay:cust:2","amount":1}]'')'),
          'posted', 'the small transfer of the refused batch, sent alone, is applied');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT count(*) FROM fintx.transfer_batch(''[{"idempotency_key":"mb-1","from_account":"pay:ops","to_account":"pay:cust:2","amount":3200},{"idempotency_key":"mb-2","from_account":"pay:ops","to_account":"pay:cust:2","amount":1}]'')')$$,
                 '42501', NULL, 'the refused batch sent again is refused again: its replayed element does not make the other one alone');
SELECT is((SELECT count(*)::int FROM fintx.reconcile()), 0, 'the ledger reconciles with awaiting and approved transfers');

-- ===========================================================================
-- 7. row security and the auditor
-- ===========================================================================
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT string_agg(code, ',' ORDER BY code) FROM fintx.account_balances$q$),
          'lit_1,pay:cust:1,pay:cust:2,pay:new,pay:ops,pay:usd,pay:usd2', 'a service sees only the accounts its grants cover');
SELECT fintx.open_account('ext:shop', 'EUR');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('x-1', 'pay:ops', 'ext:shop', 3)$q$), 'posted',
          'a service may credit an account outside its grants');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT to_account || ':' || amount FROM fintx.transfer_history WHERE to_account = 'ext:shop'$q$),
          'ext:shop:3', 'it sees its transfer with the counterparty in transfer_history');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT coalesce(to_balance::text, 'hidden') || '/' || (from_balance IS NOT NULL) FROM fintx.transfer_history WHERE to_account = 'ext:shop'$q$),
          'hidden/true', 'but not the counterparty''s balance in the history');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT coalesce(to_balance::text, 'hidden') || '/' || (from_balance IS NOT NULL) FROM fintx.transfer('x-1', 'pay:ops', 'ext:shop', 3)$q$),
          'hidden/true', 'nor in the transfer''s result (here a replay)');
-- nor through an error's detail: a refused credit to an account outside the grants does not
-- tell the account's counters (an administrator's error does)
SELECT fintx.open_account('ext:loan', 'EUR', allow_negative => true, allow_positive => false);
SELECT fintx.transfer('loan-0', 'ext:loan', 'pay:ops', 50);
CREATE FUNCTION pg_temp.t6_detail(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
    EXECUTE q;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || coalesce(d, '');
END $$;
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT pg_temp.t6_detail('SELECT fintx.transfer(''loan-1'', ''pay:ops'', ''ext:loan'', 100)')$q$),
          'FX002: The account was opened with allow_positive = false.',
          'a refused credit to a hidden account does not show its counters');
SELECT is(pg_temp.t6_detail($q$SELECT fintx.transfer('loan-2', 'pay:ops', 'ext:loan', 100)$q$),
          'FX002: The account was opened with allow_positive = false; its posted debits are 50 and its credits, posted and pending, would be 100.',
          'an administrator is told them');
-- nor the currency of an account outside the grants, in a currency mismatch
SELECT fintx.open_account('ext:usd', 'USD');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT pg_temp.t6_detail('SELECT fintx.transfer(''usd-1'', ''pay:ops'', ''ext:usd'', 1)')$q$),
          '22023: Account "pay:ops" holds EUR; account "ext:usd" holds another currency.',
          'a currency mismatch with a hidden account does not name its currency');
SELECT is(pg_temp.t6_detail($q$SELECT fintx.transfer('usd-2', 'pay:ops', 'ext:usd', 1)$q$),
          '22023: Account "pay:ops" holds EUR; account "ext:usd" holds USD.', 'an administrator is told it');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT count(*)::text FROM fintx.account_balances WHERE code = 'ext:shop'$q$),
          '0', 'but not the counterparty''s balance');
SELECT is(pg_temp.run_as('t6_other', $q$SELECT count(*)::text FROM fintx.transfer_history WHERE from_account LIKE 'pay:%' AND to_account LIKE 'pay:%'$q$),
          '0', 'another service sees none of those transfers');
SELECT is(pg_temp.run_as('t6_other', $q$SELECT count(*)::text FROM fintx.transfers$q$),
          (SELECT count(*)::text FROM fintx.transfers t JOIN fintx.accounts a ON a.id IN (t.from_account, t.to_account) WHERE a.code LIKE 'risk:%'),
          'reading the table directly gives the same rows as its grants');
SELECT is(pg_temp.run_as('t6_auditor', $q$SELECT (count(*) > 0)::text FROM fintx.access_log$q$), 'true', 'the auditor reads the access log');
SELECT is(pg_temp.run_as('t6_auditor', $q$SELECT count(*)::text FROM fintx.account_balances$q$),
          (SELECT count(*)::text FROM fintx.accounts), 'the auditor reads every balance');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_auditor', 'SELECT status FROM fintx.transfer(''a-1'', ''pay:ops'', ''pay:cust:1'', 1)')$$,
                 '42501', NULL, 'the auditor cannot move money');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT count(*) FROM fintx.access_log')$$,
                 '42501', NULL, 'a service cannot read the access log');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'INSERT INTO fintx.access_log_entries (at, role, session_user_name, operation, allowed, reason, backend_pid, recorded_by) VALUES (now(), ''x'', ''x'', ''x'', true, ''x'', 1, ''x'')')$$,
                 '42501', NULL, 'a service cannot forge access-log rows');
SELECT throws_ok($$DELETE FROM fintx.access_log_entries$$, '42501', NULL, 'access-log rows cannot be deleted, even by a superuser');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.verify_audit()')$$, '42501', NULL,
                 'audit.read is needed for audit functions');
SELECT is(pg_temp.run_as('t6_risk', $q$SELECT (fintx.tree_size() >= 0)::text$q$), 'true', 'a service with audit.read may read the audit log');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT (fintx.seal() >= 0)::text$q$), 'true', 'sealing needs no audit.read (it reveals only the tree size)');
-- staff reads of the audit log are logged too (PCI DSS 10.2.1.3)
SELECT is(pg_temp.run_as('t6_auditor', $q$SELECT (fintx.tree_size() >= 0)::text$q$), 'true', 'the auditor reads the tree size');
SELECT is((SELECT operation || ' ' || object || ' ' || allowed || ' ' || reason || ' ' || rule FROM fintx.access_log
            WHERE role = 't6_auditor' AND operation = 'audit.read' ORDER BY at DESC LIMIT 1),
          'audit.read audit log true auditor member of fintx_auditor', 'and that read is in the access log');
SELECT is((SELECT count(*)::int FROM (SELECT fintx.verify_audit()) v), 1, 'an administrator verifies the audit log');
SELECT is((SELECT reason || ' ' || rule FROM fintx.access_log
            WHERE role = current_user AND operation = 'audit.read' ORDER BY at DESC LIMIT 1),
          'administrator superuser', 'and that read is in the access log as well');

-- ===========================================================================
-- 8. the access log holds every allowed decision, with the PCI DSS fields
-- ===========================================================================
SELECT is((SELECT count(*)::int FROM fintx.access_log WHERE service = 'payments' AND allowed AND operation = 'transfer' AND object = 'pay:ops' AND amount = 10),
          1, 'an allowed transfer has its access-log row');
SELECT is((SELECT rule FROM fintx.access_log WHERE service = 'payments' AND allowed AND amount = 2500 AND object = 'pay:ops'),
          'grant transfer on ''pay:ops'' in EUR max_amount=5000 approval_above=3000', 'the deciding rule is named');
SELECT is((SELECT reason FROM fintx.access_log WHERE service = 'payments' AND amount = 3500 AND object = 'pay:ops' AND operation = 'transfer'),
          'allowed, awaiting approval', 'a transfer sent for approval is logged as such');
SELECT is((SELECT count(*)::int FROM fintx.access_log WHERE role = 'postgres' AND reason = 'administrator' AND rule = 'superuser'),
          (SELECT count(*)::int FROM fintx.access_log WHERE role = 'postgres'), 'superuser decisions are logged as administrator');
SELECT is((SELECT details->>'service' || ' / ' || (details->>'authorized_by') FROM fintx.audit_log
            WHERE details->>'idempotency_key' = 'p-1' AND action = 'transfer.posted'),
          'payments / grant transfer on ''pay:ops'' in EUR max_amount=5000 approval_above=3000',
          'the audit entry of a service''s transfer names the service and the grant that allowed it');
SELECT is((SELECT details ? 'authorized_by' FROM fintx.audit_log WHERE details->>'idempotency_key' = 'seed-1'),
          false, 'an administrator''s transfer carries no grant (its actor is the role)');
SELECT is((SELECT count(*)::int FROM fintx.access_log WHERE at IS NULL OR role IS NULL OR operation IS NULL OR reason IS NULL OR application_name IS NULL),
          0, 'every row has time, role, operation, reason and application_name');

-- ===========================================================================
-- 9. revoke, fail closed
-- ===========================================================================
SELECT is(fintx.revoke_permission('payments', 'transfer', 'lit\_1'), 1, 'revoke returns how many grants it removed');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''v-1'', ''lit_1'', ''pay:cust:1'', 1)')$$,
                 '42501', NULL, 'after revoke the transfer is refused in the same transaction');
SELECT is(fintx.revoke_permission('payments', 'transfer', 'lit\_1'), 0, 'revoking again removes nothing');
SELECT throws_ok($$SELECT fintx.revoke_permission('payments', 'nope', '%')$$, '22023', NULL, 'revoke with an unknown operation');
SELECT throws_ok($$SELECT fintx.revoke_permission('paymnets', 'transfer', '%')$$, '22023', 'service "paymnets" does not exist',
                 'revoke for a misspelled service is an error, not "nothing to revoke"');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT fintx.revoke_permission(''risk'', ''transfer.approve'', ''pay:%'')')$$,
                 '42501', NULL, 'a service cannot revoke another''s grants');
ALTER TABLE fintx.permissions RENAME TO permissions_gone;
SELECT throws_ok($$SELECT pg_temp.run_as('t6_risk', 'SELECT status FROM fintx.transfer(''fc-1'', ''pay:ops'', ''pay:cust:1'', 1)')$$,
                 '42P01', NULL, 'if the grants cannot be read the call fails (fails closed)');
ALTER TABLE fintx.permissions_gone RENAME TO permissions;

-- ===========================================================================
-- 10. signed requests: inputs (signatures themselves: test/t/013_signed_requests.pl)
-- ===========================================================================
SELECT throws_ok($$SELECT fintx.transfer_signed(NULL, '\x00')$$, '22023', 'request must not be null', 'NULL request');
SELECT throws_ok($$SELECT fintx.transfer_signed('{}', NULL)$$, '22023', 'signature must not be null', 'NULL signature');
SELECT throws_ok($$SELECT fintx.transfer_signed('{}', '\x0011')$$, '22023', 'signature must be 64 bytes (Ed25519)', 'short signature');
SELECT throws_ok($$SELECT fintx.transfer_signed('[]', decode(repeat('00', 64), 'hex'))$$, '22023', 'request must be a JSON object', 'array to transfer_signed');
SELECT throws_ok($$SELECT fintx.transfer_signed('{"idempotency_key":"s","from_account":"pay:ops","to_account":"pay:cust:1","amount":1}', decode(repeat('00', 64), 'hex'))$$,
                 '42501', NULL, 'a superuser is not a service and cannot sign');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', $s$SELECT status FROM fintx.transfer_signed('{"idempotency_key":"s","from_account":"pay:ops","to_account":"pay:cust:1","amount":1}', decode(repeat('00', 64), 'hex'))$s$)$$,
                 '42501', NULL, 'a service without a key cannot sign');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_risk', $s$SELECT status FROM fintx.transfer_signed('{"idempotency_key":"s","from_account":"pay:ops","to_account":"pay:cust:1","amount":1}', decode(repeat('00', 64), 'hex'))$s$)$$,
                 '42501', NULL, 'a forged (zero) signature is refused');
SELECT throws_ok($$SELECT count(*) FROM fintx.transfer_batch_signed('[]', decode(repeat('00', 64), 'hex'))$$, '22023', NULL, 'an empty signed batch');
SELECT is(length(fintx.signing_message('payments', '{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}')) > 23, true,
          'signing_message returns the bytes to sign');
SELECT is(fintx.signing_message('payments', '{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}'),
          fintx.signing_message('payments', '{"amount":1,"to_account":"b","from_account":"a","idempotency_key":"k"}'),
          'the message does not depend on field order');
SELECT isnt(fintx.signing_message('payments', '{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}'),
            fintx.signing_message('risk', '{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}'),
            'the message names the service');
SELECT isnt(fintx.signing_message('payments', '{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}'),
            fintx.signing_message('payments', '[{"idempotency_key":"k","from_account":"a","to_account":"b","amount":1}]'),
            'a single request and a batch of one are different messages');

-- ===========================================================================
-- 11. more inputs and paths
-- ===========================================================================
GRANT EXECUTE ON FUNCTION fintx.register_service(text, regrole, text) TO t6_other;
SELECT throws_ok($$SELECT pg_temp.run_as('t6_other', 'SELECT fintx.register_service(''x2'', ''t6_plain'')')$$,
                 '42501', 'permission denied for fintx.admin on "x2"', 'EXECUTE granted by mistake still does not make a service an administrator');
REVOKE EXECUTE ON FUNCTION fintx.register_service(text, regrole, text) FROM t6_other;
SELECT throws_ok($$SELECT fintx.register_service('ghost', 999999::oid::regrole)$$, '22023', 'role with OID 999999 does not exist', 'a dropped role');
SELECT throws_ok($$SELECT fintx.register_service('longkey', 't6_plain', repeat('A', 100))$$, '22023', 'invalid public key', 'an overlong key');
SELECT throws_ok($$SELECT fintx.set_service_key(NULL, 'x')$$, '22023', 'name must not be null', 'set_service_key: NULL name');
SELECT throws_ok($$SELECT fintx.set_service_key('nobody', NULL)$$, '22023', 'service "nobody" does not exist', 'set_service_key: unknown service');
SELECT throws_ok($$SELECT fintx.set_service_key('other', 'bad key')$$, '22023', 'invalid public key', 'set_service_key: malformed key');
SELECT lives_ok($$SELECT fintx.set_service_key('other', NULL)$$, 'set_service_key(NULL) removes the key');
SELECT is((SELECT public_key IS NULL FROM fintx.services WHERE name = 'other'), true, 'the key is gone');
SELECT is((SELECT count(*)::int FROM fintx.audit_log WHERE action = 'service.key_changed'), 1, 'a key change is audited');
SELECT throws_ok($$SELECT fintx.revoke_permission(NULL, 'transfer', '%')$$, '22023', 'service must not be null', 'revoke: NULL service');
SELECT throws_ok($$SELECT fintx.revoke_permission('payments', NULL, '%')$$, '22023', 'operation must not be null', 'revoke: NULL operation');
SELECT throws_ok($$SELECT fintx.revoke_permission('payments', 'transfer', NULL)$$, '22023', 'account_pattern must not be null', 'revoke: NULL pattern');
SELECT throws_ok($$SELECT fintx.reject_transfer(NULL)$$, '22023', 'transfer_id must not be null', 'reject: NULL transfer id');
SELECT throws_ok($$SELECT count(*) FROM fintx.transfer_batch_signed(NULL, decode(repeat('00', 64), 'hex'))$$, '22023', 'requests must not be null', 'signed batch: NULL requests');
SELECT throws_ok($$SELECT fintx.signing_message(NULL, '{}')$$, '22023', 'service must not be null', 'signing_message: NULL service');
SELECT throws_ok($$SELECT fintx.signing_message('s', NULL)$$, '22023', 'requests must not be null', 'signing_message: NULL requests');
SELECT is(pg_temp.run_as('t6_pay', 'SELECT fintx.account_id_visible(-1)::text'), 'false', 'an unknown account id is not visible');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT fintx.account_visible('risk:pool')::text$q$), 'false', 'an account outside the grants is not visible');

-- a hold outside the grants is refused before it is read: no existence or state leaks
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.void_pending(''h-9'', -42)')$$,
                 '42501', 'permission denied for hold.resolve on "transfer -42"', 'an unknown hold id is 42501 for a service, not 22023');
-- administrators' management calls are in the access log
SELECT cmp_ok((SELECT count(*)::int FROM fintx.access_log WHERE operation = 'fintx.admin' AND allowed AND role = 'postgres'), '>=', 10,
              'grants and registrations by an administrator are logged');
-- and so are their other changes that no grant covers, one row per call
CREATE TABLE public.t6_audited (id int);
SELECT lives_ok($$SELECT fintx.expire_pending(5)$$, 'an administrator releases expired holds');
SELECT lives_ok($$SELECT fintx.audit_table('public.t6_audited')$$, 'audits a table');
SELECT lives_ok($$SELECT fintx.append_only('public.t6_audited')$$, 'makes it append-only');
SELECT lives_ok($$SELECT fintx.create_consumer('t6-admin')$$, 'creates a consumer');
SELECT lives_ok($$SELECT fintx.drop_consumer('t6-admin')$$, 'drops it');
SELECT set_eq($$SELECT operation || ' ' || object || ' ' || reason || ' ' || rule FROM fintx.access_log
                 WHERE role = 'postgres' AND object IN ('expire_pending', 'audit_table(public.t6_audited)',
                       'append_only(public.t6_audited)', 'create_consumer(t6-admin)', 'drop_consumer(t6-admin)')$$,
              ARRAY['fintx.admin expire_pending administrator superuser',
                    'fintx.admin audit_table(public.t6_audited) administrator superuser',
                    'fintx.admin append_only(public.t6_audited) administrator superuser',
                    'event.consume create_consumer(t6-admin) administrator superuser',
                    'event.consume drop_consumer(t6-admin) administrator superuser'],
              'each of these calls by an administrator is in the access log');
-- EXECUTE granted by mistake does not let anyone else release holds or attach triggers
GRANT EXECUTE ON FUNCTION fintx.expire_pending(integer), fintx.audit_table(regclass) TO t6_other;
SELECT throws_ok($$SELECT pg_temp.run_as('t6_other', 'SELECT fintx.expire_pending(5)')$$,
                 '42501', 'permission denied for fintx.admin on "expire_pending"', 'expire_pending by a non-administrator is refused');
SELECT throws_ok($$SELECT pg_temp.run_as('t6_other', 'SELECT fintx.audit_table(''public.t6_audited'')')$$,
                 '42501', 'permission denied for fintx.admin on "audit_table(public.t6_audited)"', 'and so is audit_table');
REVOKE EXECUTE ON FUNCTION fintx.expire_pending(integer), fintx.audit_table(regclass) FROM t6_other;
-- fintx's own event types cannot be emitted, in any letter case
SELECT throws_ok($$SELECT fintx.emit('Transfer', 'x', 'order.created', '{}')$$, '42501', NULL, 'aggregate type Transfer is reserved');
SELECT throws_ok($$SELECT fintx.emit('order', 'x', 'transfer.posted', '{}')$$, '42501', NULL, 'event type transfer.posted is reserved');

-- event grants name consumers and aggregate types, not accounts: they make no account visible
CREATE ROLE t6_events;
SELECT fintx.register_service('events-only', 't6_events');
SELECT fintx.grant_permission('events-only', 'event.consume', '%');
SELECT fintx.grant_permission('events-only', 'event.emit', '%');
SELECT is(pg_temp.run_as('t6_events', $q$SELECT count(*)::text FROM fintx.account_balances$q$), '0',
          'a service with only event grants sees no account');
-- a direct change to the grant tables (a restore, a manual fix) reaches the session's cache
INSERT INTO fintx.permissions (service, operation, account_pattern, granted_by) VALUES ('events-only', 'transfer', 'pay:ops', 'manual');
SELECT is(pg_temp.run_as('t6_events', $q$SELECT count(*)::text FROM fintx.account_balances$q$), '1',
          'a grant inserted directly takes effect at once');
DELETE FROM fintx.permissions WHERE service = 'events-only' AND operation = 'transfer';

-- an approver's retry is not counted against its daily limit again
SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:ops', NULL, 3200);
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('m-5', 'pay:ops', 'pay:cust:2', 3100)$q$),
          'awaiting_approval', 'a transfer awaits approval');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.approvals WHERE amount = 3100 AND status = 'awaiting_approval'))),
          'posted', 'the checker approves 3100 of its 3200 daily limit');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status || '':'' || replayed FROM fintx.approve_transfer(%s)', (SELECT transfer_id FROM fintx.approvals WHERE amount = 3100 AND status = 'approved'))),
          'posted:true', 'its retry replays without counting the amount again');
SELECT is((SELECT used FROM fintx.limit_usage WHERE service = 'risk' AND operation = 'transfer.approve' AND account_pattern = 'pay:ops'),
          3100::bigint, 'the approver''s daily usage counts the approval once');
SELECT fintx.revoke_permission('risk', 'transfer.approve', 'pay:ops');

-- a service is found by its role's name: renaming the role detaches it (fail closed)
SELECT is(pg_temp.run_as('t6_other', $q$SELECT fintx.account_visible('risk:pool')::text$q$), 'true', 'before a rename the service sees its accounts');
ALTER ROLE t6_other RENAME TO t6_other_renamed;
SELECT is(pg_temp.run_as('t6_other_renamed', $q$SELECT fintx.account_visible('risk:pool')::text$q$), 'false', 'after renaming its role it is no longer that service');
ALTER ROLE t6_other_renamed RENAME TO t6_other;

-- a checker retries its rejection; an administrator approves (no service of its own)
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('m-3', 'pay:ops', 'pay:cust:2', 3050)$q$),
          'awaiting_approval', 'a third transfer awaits approval');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status || '':'' || replayed FROM fintx.reject_transfer(%s)', (SELECT transfer_id FROM fintx.pending_approvals))),
          'rejected:false', 'rejected');
SELECT is(pg_temp.run_as('t6_risk', format('SELECT status || '':'' || replayed FROM fintx.reject_transfer(%s)', (SELECT transfer_id FROM fintx.approvals WHERE amount = 3050))),
          'rejected:true', 'the checker''s retry replays the rejection');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('m-4', 'pay:ops', 'pay:cust:2', 3060)$q$),
          'awaiting_approval', 'a fourth transfer awaits approval');
SELECT is((SELECT status FROM fintx.approve_transfer((SELECT transfer_id FROM fintx.pending_approvals))), 'posted',
          'an administrator may approve');
SELECT is((SELECT details->>'decided_by_service' FROM fintx.audit_log WHERE action = 'transfer.approved' ORDER BY entry_id DESC LIMIT 1),
          NULL, 'the audit entry of an administrator''s approval names no service');

-- which grant decides: exact currency first, then the most specific pattern, then pattern order
SELECT fintx.grant_permission('payments', 'transfer', 'pay:cust:%', 1, NULL, 'GBP');
SELECT fintx.grant_permission('payments', 'transfer', 'pay:cust:_', 9);
SELECT fintx.grant_permission('payments', 'transfer', 'pay:cus_:2', 7);
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''g-1'', ''pay:cust:2'', ''pay:cust:1'', 8)')$$,
                 '42501', 'permission denied for transfer on "pay:cust:2"', 'of two equally specific patterns the first in byte order decides');
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('g-2', 'pay:cust:2', 'pay:cust:1', 7)$q$),
          'posted', 'within that grant''s limit the transfer passes (the GBP grant does not apply to EUR)');
SELECT fintx.grant_permission('payments', 'transfer', 'pay:cust:2', NULL, 50);
SELECT throws_ok($$SELECT pg_temp.run_as('t6_pay', 'SELECT status FROM fintx.transfer(''g-3'', ''pay:cust:2'', ''pay:cust:1'', 60)')$$,
                 '42501', 'permission denied for transfer on "pay:cust:2"', 'an amount above the daily limit is refused at once');

-- a retried hold resolution replays: authorized and counted against the daily limit once,
-- like a retried transfer (the key is looked up before the grant is checked)
CREATE ROLE t6_hold LOGIN;
SELECT fintx.register_service('holds', 't6_hold');
SELECT fintx.open_account('hold:a', 'EUR', true);
SELECT fintx.open_account('hold:b', 'EUR');
SELECT fintx.grant_permission('holds', 'transfer', 'hold:%');
SELECT fintx.grant_permission('holds', 'hold.resolve', 'hold:%', NULL, 1000);
-- status:replayed of fintx.<fn>(key, hold) called by the service
CREATE FUNCTION pg_temp.t6_resolve(fn text, key text, hold bigint) RETURNS text LANGUAGE sql AS $$
  SELECT pg_temp.run_as('t6_hold', format('SELECT concat_ws('':'', status, replayed::text, coalesce(from_balance::text, ''hidden''), coalesce(to_balance::text, ''hidden'')) FROM fintx.%I(%L, %s)', fn, key, hold))
$$;
CREATE TEMP TABLE t6_h AS
  SELECT pg_temp.run_as('t6_hold', $q$SELECT transfer_id FROM fintx.transfer('hh-1', 'hold:a', 'hold:b', 600, pending => true)$q$)::bigint AS h1,
         pg_temp.run_as('t6_hold', $q$SELECT transfer_id FROM fintx.transfer('hh-2', 'hold:a', 'hold:b', 300, pending => true)$q$)::bigint AS h2;
SELECT is(pg_temp.t6_resolve('post_pending', 'hp-1', (SELECT h1 FROM t6_h)),
          'posted:false:-600:600', 'a service posts a hold of 600 under a daily hold.resolve limit of 1000');
SELECT is(pg_temp.t6_resolve('post_pending', 'hp-1', (SELECT h1 FROM t6_h)),
          'posted:true:-600:600', 'its retry replays with the same balances (it is not refused for a limit the first call used)');
SELECT is((SELECT used FROM fintx.limit_usage WHERE service = 'holds' AND operation = 'hold.resolve'), 600::bigint,
          'the limit counts the post once');
SELECT is(pg_temp.t6_resolve('void_pending', 'hv-1', (SELECT h2 FROM t6_h)),
          'voided:false:-600:600', 'a service voids the second hold (300)');
SELECT is(pg_temp.t6_resolve('void_pending', 'hv-1', (SELECT h2 FROM t6_h)),
          'voided:true:-600:600', 'and its retry replays with the same balances');
SELECT is((SELECT used FROM fintx.limit_usage WHERE service = 'holds' AND operation = 'hold.resolve'), 600::bigint,
          'a void moves no money: the daily limit does not count it (as a rejection counts nothing)');
SELECT is((SELECT count(*)::int FROM fintx.access_log WHERE service = 'holds' AND operation = 'hold.resolve' AND allowed),
          2, 'the access log holds one allowed decision per resolution, none for the replays');
-- a void is still bounded by max_amount (a release of a reservation is a decision on its amount)
SELECT fintx.open_account('hold:big', 'EUR', true);
SELECT fintx.grant_permission('holds', 'hold.resolve', 'hold:big', 100);
CREATE TEMP TABLE t6_big AS
  SELECT pg_temp.run_as('t6_hold', $q$SELECT transfer_id FROM fintx.transfer('hh-3', 'hold:big', 'hold:b', 700, pending => true)$q$)::bigint AS h;
SELECT throws_ok(format($$SELECT pg_temp.run_as('t6_hold', 'SELECT status FROM fintx.void_pending(''hv-3'', %s)')$$,
                        (SELECT h FROM t6_big)),
                 '42501', 'permission denied for hold.resolve on "hold:big"', 'a void above the grant''s max_amount is refused');
SELECT fintx.revoke_permission('holds', 'hold.resolve', 'hold:big');
SELECT fintx.revoke_permission('holds', 'hold.resolve', 'hold:%');
SELECT is(pg_temp.t6_resolve('post_pending', 'hp-1', (SELECT h1 FROM t6_h)),
          'posted:true:-600:600', 'after the grant is revoked a retry still gets the original answer, as a transfer''s does');
SELECT throws_ok(format($$SELECT pg_temp.run_as('t6_hold', 'SELECT status FROM fintx.post_pending(''hp-2'', %s)')$$, (SELECT h1 FROM t6_h)),
                 '42501', 'permission denied for hold.resolve on "transfer ' || (SELECT h1 FROM t6_h) || '"',
                 'a new key is refused: no grant covers the hold any more');

-- an approval needs the maker to still hold its transfer grant: withdrawn (a compromised
-- service, say), its requests awaiting approval can no longer be executed
SELECT is(pg_temp.run_as('t6_pay', $q$SELECT status FROM fintx.transfer('m-revoked', 'pay:ops', 'pay:cust:2', 3400)$q$),
          'awaiting_approval', 'a transfer above the threshold awaits approval');
SELECT fintx.revoke_permission('payments', 'transfer', 'pay:ops'), fintx.revoke_permission('payments', 'transfer', 'pay:%');
SELECT is(pg_temp.t6_detail(format('SELECT fintx.approve_transfer(%s)',
                        (SELECT transfer_id FROM fintx.approvals WHERE amount = 3400 AND status = 'awaiting_approval'))),
          '42501: the maker, service "payments", no longer holds a transfer grant that covers "pay:ops" in EUR',
          'after the maker''s grant is revoked, not even an administrator can approve it');
SELECT is((SELECT count(*)::int FROM fintx.transfers t JOIN fintx.approvals a ON a.result_transfer_id = t.id WHERE a.amount = 3400), 0,
          'no money moved');

-- every approval decision is a change consumers learn of: one outbox event each
SELECT is((SELECT count(*)::int FROM fintx.outbox WHERE type IN ('transfer.approved', 'transfer.rejected')),
          (SELECT count(*)::int FROM fintx.approvals WHERE status IN ('approved', 'rejected')),
          'one outbox event per approval decision');
SELECT is((SELECT count(*)::int FROM fintx.outbox o JOIN fintx.approvals a ON o.aggregateid = a.transfer_id::text
            WHERE o.type = 'transfer.' || a.status AND o.aggregatetype = 'transfer'
              AND o.payload->>'from_account' = a.from_account AND o.payload->>'to_account' = a.to_account
              AND (o.payload->>'amount')::bigint = a.amount AND o.payload->>'currency' = a.currency
              AND o.payload->>'maker_service' = a.maker_service
              AND o.payload->>'decided_by_role' = a.decided_by_role
              AND o.payload->>'result_transfer_id' IS NOT DISTINCT FROM a.result_transfer_id::text
              AND o.payload->>'reason' IS NOT DISTINCT FROM a.reason),
          (SELECT count(*)::int FROM fintx.approvals WHERE status IN ('approved', 'rejected')),
          'each names the awaiting transfer, its accounts and amount, the maker, the checker and the outcome');
SELECT is((SELECT count(*)::int FROM fintx.outbox o JOIN fintx.audit_log l
             ON l.action = o.type AND l.object_id = o.aggregateid AND l.details = o.payload
            WHERE o.type IN ('transfer.approved', 'transfer.rejected')),
          (SELECT count(*)::int FROM fintx.approvals WHERE status IN ('approved', 'rejected')),
          'its payload is the decision''s audit entry');
SELECT is((SELECT count(*)::int FROM fintx.outbox o JOIN fintx.audit_log l
             ON l.entry_id = (o.headers->>'audit_entry_id')::bigint AND l.action = o.type AND l.details = o.payload
            WHERE o.type IN ('transfer.approved', 'transfer.rejected')),
          (SELECT count(*)::int FROM fintx.approvals WHERE status IN ('approved', 'rejected')),
          'and its audit_entry_id header names that entry, as for the other transfer events');

-- reconcile() checks maker-checker: approve_transfer() moves what fintx.approvals says
SELECT is((SELECT count(*)::int FROM fintx.reconcile()), 0, 'the ledger with its approvals reconciles');
SAVEPOINT tamper;
UPDATE fintx.approvals SET amount = amount + 1
 WHERE transfer_id = (SELECT min(transfer_id) FROM fintx.approvals WHERE status = 'awaiting_approval');
SELECT is((SELECT string_agg(check_name, ',' ORDER BY check_name) FROM fintx.reconcile()), 'approval_mismatch',
          'a request awaiting approval changed behind the API: approval_mismatch');
ROLLBACK TO tamper;
UPDATE fintx.approvals SET to_account = 'pay:ops'
 WHERE transfer_id = (SELECT min(transfer_id) FROM fintx.approvals WHERE status = 'approved');
SELECT is((SELECT string_agg(check_name, ',' ORDER BY check_name) FROM fintx.reconcile()),
          'approval_mismatch,approval_result_mismatch',
          'an approved request changed: it no longer matches its transfer nor the transfer it made');
ROLLBACK TO tamper;
DELETE FROM fintx.approvals WHERE transfer_id = (SELECT min(transfer_id) FROM fintx.approvals WHERE status = 'awaiting_approval');
SELECT is((SELECT string_agg(check_name || ':' || actual, ',') FROM fintx.reconcile()), 'approval_mismatch:no approval request',
          'a transfer awaiting approval without its request: reported');
ROLLBACK TO tamper;
SELECT * FROM finish();
ROLLBACK;

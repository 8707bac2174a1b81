-- 002_security: SECURITY DEFINER hygiene, no PUBLIC grants, role separation (42501),
-- immunity to a hostile search_path, and pg_dump registration of user data.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(107);

-- Runs q as role r (SET LOCAL ROLE for the duration of q) and returns its first column.
-- An error propagates, and the subtransaction that catches it also undoes the role switch.
CREATE FUNCTION pg_temp.run_as(r text, q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    PERFORM pg_catalog.set_config('role', r, true);
    EXECUTE q INTO v;
    PERFORM pg_catalog.set_config('role', 'none', true);
    RETURN v;
END
$$;

-- ===========================================================================
-- 1. every SECURITY DEFINER function pins search_path = pg_catalog, pg_temp
-- ===========================================================================
SELECT cmp_ok((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'fintx'::regnamespace AND prosecdef),
              '>=', 8, 'the walk sees the SECURITY DEFINER functions of fintx (at least 8)');
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text, p.proconfig::text
        FROM pg_proc p
       WHERE p.pronamespace = 'fintx'::regnamespace AND p.prosecdef
         AND p.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, pg_temp']
         -- reconcile() also turns JIT off (compiling its large query cost seconds)
         AND (p.oid <> 'fintx.reconcile()'::regprocedure
              OR p.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, pg_temp', 'jit=off', 'enable_nestloop=off'])$$,
    'every SECURITY DEFINER function in fintx has proconfig exactly {search_path=pg_catalog, pg_temp} (reconcile: and jit=off)');
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text
        FROM pg_proc p
       WHERE p.pronamespace = 'fintx'::regnamespace AND p.prosecdef
         AND p.prolang NOT IN (SELECT oid FROM pg_language WHERE lanname IN ('c', 'sql', 'plpgsql'))$$,
    'SECURITY DEFINER functions are written in C, SQL or PL/pgSQL only');
SELECT is(p.proconfig[1], 'search_path=pg_catalog, pg_temp',
          'search_path pinned on ' || p.oid::regprocedure::text)
  FROM (VALUES ('fintx.open_account(text, text, boolean, boolean, jsonb)'),
               ('fintx.close_account(text)'),
               ('fintx.transfer(text, text, text, bigint, jsonb, boolean, interval)'),
               ('fintx.post_pending(text, bigint, bigint)'),
               ('fintx.void_pending(text, bigint)'),
               ('fintx.transfer_batch(jsonb)'),
               ('fintx.expire_pending(integer)'),
               ('fintx.reconcile()')) AS f(sig)
  JOIN pg_proc p ON p.oid = f.sig::regprocedure
 ORDER BY f.sig;
SELECT ok(p.prosecdef, 'SECURITY DEFINER: ' || p.oid::regprocedure::text)
  FROM (VALUES ('fintx.open_account(text, text, boolean, boolean, jsonb)'),
               ('fintx.transfer(text, text, text, bigint, jsonb, boolean, interval)'),
               ('fintx.post_pending(text, bigint, bigint)'),
               ('fintx.void_pending(text, bigint)'),
               ('fintx.transfer_batch(jsonb)'),
               ('fintx.reconcile()')) AS f(sig)
  JOIN pg_proc p ON p.oid = f.sig::regprocedure
 ORDER BY f.sig;

-- ===========================================================================
-- 2. nothing in fintx is granted to PUBLIC
-- ===========================================================================
SELECT cmp_ok((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'fintx'::regnamespace), '>=', 9,
              'the walk sees the functions of fintx');
SELECT cmp_ok((SELECT count(*)::int FROM pg_class WHERE relnamespace = 'fintx'::regnamespace
                  AND relkind IN ('r', 'p', 'v', 'm', 'S', 'f')), '>=', 10,
              'the walk sees the tables, views and sequences of fintx');
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text, a.privilege_type
        FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
       WHERE p.pronamespace = 'fintx'::regnamespace AND a.grantee = 0$$,
    'no function in fintx grants anything to PUBLIC (ACL, defaults included)');
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text FROM pg_proc p
       WHERE p.pronamespace = 'fintx'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')$$,
    'has_function_privilege(public, ..., EXECUTE) is false for every fintx function');
SELECT is_empty(
    $$SELECT c.oid::regclass::text, a.privilege_type
        FROM pg_class c,
             aclexplode(coalesce(c.relacl, acldefault((CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a
       WHERE c.relnamespace = 'fintx'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
         AND a.grantee = 0$$,
    'no table, view or sequence in fintx grants anything to PUBLIC');
SELECT is_empty(
    $$SELECT c.oid::regclass::text FROM pg_class c
       WHERE c.relnamespace = 'fintx'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
         AND CASE WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f')
                  THEN has_table_privilege('public', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') END$$,
    'has_table_privilege(public, ...) is false for every fintx table and view');
SELECT is_empty(
    $$SELECT c.oid::regclass::text FROM pg_class c
       WHERE c.relnamespace = 'fintx'::regnamespace AND c.relkind = 'S'
         AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege('public', c.oid, 'USAGE, SELECT, UPDATE') END$$,
    'has_sequence_privilege(public, ...) is false for every fintx sequence');
SELECT is_empty(
    $$SELECT c.oid::regclass::text, at.attname
        FROM pg_class c JOIN pg_attribute at ON at.attrelid = c.oid, aclexplode(at.attacl) a
       WHERE c.relnamespace = 'fintx'::regnamespace AND a.grantee = 0$$,
    'no column of a fintx relation is granted to PUBLIC');
SELECT is(has_schema_privilege('public', 'fintx', 'USAGE'), false, 'PUBLIC has no USAGE on schema fintx');
SELECT is(has_schema_privilege('public', 'fintx', 'CREATE'), false, 'PUBLIC has no CREATE on schema fintx');

-- what the three roles get, exactly
SELECT function_privs_are('fintx', 'transfer', ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                          'fintx_service', ARRAY['EXECUTE'], 'fintx_service may execute transfer');
SELECT function_privs_are('fintx', 'transfer_batch', ARRAY['jsonb'], 'fintx_service', ARRAY['EXECUTE'],
                          'fintx_service may execute transfer_batch');
SELECT function_privs_are('fintx', 'open_account', ARRAY['text', 'text', 'boolean', 'boolean', 'jsonb'],
                          'fintx_service', ARRAY['EXECUTE'], 'fintx_service may execute open_account (its grants decide)');
SELECT function_privs_are('fintx', 'reconcile', ARRAY[]::text[], 'fintx_auditor', ARRAY['EXECUTE'],
                          'fintx_auditor may execute reconcile');
SELECT function_privs_are('fintx', 'transfer', ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                          'fintx_auditor', ARRAY[]::text[], 'fintx_auditor may not execute transfer');
SELECT function_privs_are('fintx', 'batch_queue', ARRAY[]::text[], 'fintx_admin', ARRAY['EXECUTE'],
                          'fintx_admin may execute batch_queue');
SELECT function_privs_are('fintx', 'batch_queue', ARRAY[]::text[], 'fintx_service', ARRAY[]::text[],
                          'fintx_service may not execute batch_queue');
SELECT table_privs_are('fintx', 'accounts', 'fintx_service', ARRAY['SELECT'],
                       'fintx_service may only SELECT fintx.accounts (rows limited by RLS)');
SELECT table_privs_are('fintx', 'account_balances', 'fintx_service', ARRAY['SELECT'],
                       'fintx_service may only SELECT account_balances');
SELECT table_privs_are('fintx', 'accounts', 'fintx_admin', ARRAY['SELECT'],
                       'fintx_admin may SELECT (not write) fintx.accounts');

-- ===========================================================================
-- 3. a hostile search_path changes nothing (first fintx calls of the session)
-- ===========================================================================
CREATE SCHEMA tap002_evil;
CREATE TABLE tap002_evil.accounts (LIKE fintx.accounts);
INSERT INTO tap002_evil.accounts (id, code, currency, allow_negative, allow_positive, metadata,
                                  debits_posted, credits_posted, debits_pending, credits_pending, created_by, created_at)
VALUES (1, 'sec.alice', 'EUR', true, true, '{}', 0, 999999, 0, 0, 'evil', now()),
       (2, 'sec.bob', 'EUR', true, true, '{}', 0, 999999, 0, 0, 'evil', now());
CREATE TABLE tap002_evil.transfers (LIKE fintx.transfers);
CREATE TABLE tap002_evil.idempotency_keys (LIKE fintx.idempotency_keys);
CREATE TABLE tap002_evil.pending_holds (LIKE fintx.pending_holds);
CREATE TABLE tap002_evil.currencies (LIKE fintx.currencies);
CREATE TEMP TABLE accounts (LIKE fintx.accounts);
CREATE TEMP TABLE transfers (LIKE fintx.transfers);
CREATE FUNCTION tap002_evil.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT '2000-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT '2001-01-01 00:00:00+00'::timestamptz$$;
CREATE FUNCTION tap002_evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS $$SELECT 1::bigint$$;
CREATE FUNCTION tap002_evil.texteq(text, text) RETURNS boolean LANGUAGE sql AS $$SELECT true$$;
CREATE OPERATOR tap002_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = tap002_evil.texteq);
CREATE FUNCTION tap002_evil.int8eq(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$SELECT true$$;
CREATE OPERATOR tap002_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = tap002_evil.int8eq);
CREATE FUNCTION tap002_evil.int8mi(bigint, bigint) RETURNS bigint LANGUAGE sql AS $$SELECT 42::bigint$$;
CREATE OPERATOR tap002_evil.- (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = tap002_evil.int8mi);
CREATE FUNCTION tap002_evil.sum(bigint) RETURNS bigint LANGUAGE sql AS $$SELECT 0::bigint$$;
CREATE FUNCTION tap002_evil.unnest(text[]) RETURNS SETOF text LANGUAGE sql AS $$SELECT 'sec.alice'$$;

SET LOCAL search_path = pg_temp, tap002_evil, public, pg_catalog;
-- proof that the hostile path is live for ordinary SQL
SELECT now() AS evil_now, ('a'::text = 'b'::text) AS evil_eq, (5::bigint - 3::bigint) AS evil_minus \gset
-- the API under the hostile path; these are the first fintx calls of this session, so
-- every internal statement is also prepared under the hostile path
SELECT fintx.open_account('sec.h.world', 'EUR', true, false) AS hworld_id \gset
SELECT fintx.open_account('sec.alice', 'EUR') AS halice_id \gset
SELECT fintx.open_account('sec.carol', 'EUR') AS carol_id \gset
SELECT fintx.open_account('sec.dave', 'EUR') AS dave_id \gset
SELECT r.transfer_id AS seed_id FROM fintx.transfer('sec-hseed', 'sec.h.world', 'sec.alice', 10000) AS r \gset
SELECT r.* FROM fintx.transfer('sec-h1', 'sec.alice', 'sec.carol', 700) AS r \gset h1_
SELECT r.replayed AS h1_replay FROM fintx.transfer('sec-h1', 'sec.alice', 'sec.carol', 700) AS r \gset
SELECT r.transfer_id AS h2_id FROM fintx.transfer('sec-h2', 'sec.carol', 'sec.dave', 300, pending => true) AS r \gset
SELECT r.* FROM fintx.post_pending('sec-h3', :h2_id, 120) AS r \gset h3_
SELECT string_agg(b.from_balance || '/' || b.to_balance, ' ' ORDER BY b.ord) AS hb
  FROM fintx.transfer_batch('[{"idempotency_key": "sec-h4", "from_account": "sec.carol", "to_account": "sec.dave", "amount": 80},
                              {"idempotency_key": "sec-h5", "from_account": "sec.dave", "to_account": "sec.alice", "amount": 50}]')
       WITH ORDINALITY AS b(transfer_id, status, replayed, from_balance, to_balance, entry_hash, created_at, ord) \gset
SELECT count(*) AS hostile_reconcile FROM fintx.reconcile() \gset
SELECT fintx.expire_pending() AS hostile_expired \gset
RESET search_path;

SELECT is(:'evil_now'::timestamptz, '2000-01-01 00:00:00+00'::timestamptz,
          'sanity: under the hostile path now() resolves to the shadowing function');
SELECT is(:'evil_eq'::boolean, true, 'sanity: under the hostile path text = text resolves to the shadowing operator');
SELECT is(:'evil_minus'::bigint, 42::bigint, 'sanity: under the hostile path bigint - bigint is shadowed');
SELECT results_eq(format('SELECT code COLLATE "default" FROM fintx.accounts WHERE id IN (%s, %s, %s, %s) ORDER BY id',
                          :hworld_id, :halice_id, :carol_id, :dave_id),
                  $$VALUES ('sec.h.world'::text), ('sec.alice'), ('sec.carol'), ('sec.dave')$$,
                  'open_account under a hostile path creates the accounts in fintx.accounts with distinct ids');
SELECT is(:'h1_status'::text, 'posted', 'transfer under a hostile path posts');
SELECT is(:'h1_replayed'::boolean, false, 'transfer under a hostile path is not wrongly replayed');
SELECT is(:h1_from_balance::bigint, 10000::bigint - 700, 'from_balance under a hostile path is correct');
SELECT is(:h1_to_balance::bigint, 700::bigint, 'to_balance under a hostile path is correct');
SELECT is(:'h1_created_at'::timestamptz, now(), 'created_at comes from pg_catalog.now(), not a shadow');
SELECT is(:'h1_replay'::boolean, true, 'replay under a hostile path finds the journal row');
SELECT is(:h3_from_balance::bigint, 580::bigint, 'post_pending under a hostile path: from_balance');
SELECT is(:h3_to_balance::bigint, 120::bigint, 'post_pending under a hostile path: to_balance');
SELECT is(:'hb'::text, format('%s/%s %s/%s', 500, 200, 150, 10000::bigint - 700 + 50),
          'transfer_batch under a hostile path: balances in request order');
SELECT is(:hostile_reconcile::int, 0, 'reconcile under a hostile path finds a consistent ledger');
SELECT is(:hostile_expired::int, 0, 'expire_pending under a hostile path releases nothing');
SELECT results_eq(
    $$SELECT code COLLATE "default", posted, pending_debits, pending_credits, available FROM fintx.account_balances
       WHERE code IN ('sec.carol', 'sec.dave') ORDER BY code$$,
    $$VALUES ('sec.carol'::text, 500::bigint, 0::bigint, 0::bigint, 500::bigint), ('sec.dave', 150, 0, 0, 150)$$,
    'balances after the hostile-path session are exactly the API''s arithmetic');
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'the ledger is consistent after the hostile-path session');
SELECT is((SELECT count(*)::int FROM fintx.transfers WHERE created_at <> now()), 0,
          'every stored transfer has created_at = pg_catalog.now()');
SELECT is((SELECT s.is_called AND s.last_value >= (SELECT max(j.transfer_id) FROM fintx.idempotency_keys j
                                                    WHERE j.idempotency_key LIKE 'sec-h%')
             FROM fintx.transfer_id_seq s), true,
          'transfer ids under the hostile path were issued by fintx.transfer_id_seq (it was called and reached them), not by the shadowing nextval()');
SELECT cmp_ok((SELECT count(*)::int FROM fintx.idempotency_keys WHERE idempotency_key LIKE 'sec-h%'), '>=', 3,
              'the hostile-path session made its transfers');
SELECT results_eq($$SELECT code COLLATE "default", credits_posted FROM tap002_evil.accounts ORDER BY id$$,
                  $$VALUES ('sec.alice'::text, 999999::bigint), ('sec.bob', 999999)$$,
                  'the shadowing tap002_evil.accounts table was neither read into nor written');
SELECT is((SELECT count(*)::int FROM tap002_evil.transfers) + (SELECT count(*)::int FROM tap002_evil.idempotency_keys)
          + (SELECT count(*)::int FROM tap002_evil.pending_holds), 0,
          'the shadowing transfers/journal/holds tables stay empty');
SELECT is((SELECT count(*)::int FROM pg_temp.accounts) + (SELECT count(*)::int FROM pg_temp.transfers), 0,
          'temporary tables named like fintx tables stay empty');

-- ===========================================================================
-- 4. roles: without grants nothing works; the fintx roles get exactly their share
-- ===========================================================================
CREATE ROLE tap002_nobody LOGIN;
CREATE ROLE tap002_service LOGIN IN ROLE fintx_service;
CREATE ROLE tap002_auditor LOGIN IN ROLE fintx_auditor;
CREATE ROLE tap002_admin LOGIN IN ROLE fintx_admin;
SELECT fintx.register_service('tap002-svc', 'tap002_service');
SELECT fintx.grant_permission('tap002-svc', 'transfer', 'sec.alice');
SELECT fintx.grant_permission('tap002-svc', 'hold.resolve', 'sec.alice');

SELECT lives_ok($$SELECT fintx.open_account('sec.bob', 'EUR')$$, 'superuser opens sec.bob');

-- a role with no grants at all
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT fintx.transfer(''sec-n1'', ''sec.alice'', ''sec.bob'', 1)')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot execute fintx.transfer');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.accounts')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot select fintx.accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.transfer_batch(''[]'')')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot execute fintx.transfer_batch');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT fintx.open_account(''sec.x'', ''EUR'')')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot open accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.account_balances')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot read balances');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.reconcile()')$$,
                 '42501', 'permission denied for schema fintx', 'ungranted role cannot reconcile');
-- even with USAGE on the schema, no EXECUTE/SELECT is inherited from PUBLIC
GRANT USAGE ON SCHEMA fintx TO tap002_nobody;
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT fintx.transfer(''sec-n2'', ''sec.alice'', ''sec.bob'', 1)')$$,
                 '42501', 'permission denied for function transfer', 'schema usage alone does not allow fintx.transfer');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.accounts')$$,
                 '42501', 'permission denied for table accounts', 'schema usage alone does not allow reading fintx.accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT nextval(''fintx.transfer_id_seq'')')$$,
                 '42501', 'permission denied for sequence transfer_id_seq', 'schema usage alone does not allow the id sequence');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_nobody', 'SELECT count(*) FROM fintx.transfer_batch(''[]'')')$$,
                 '42501', 'permission denied for function transfer_batch', 'schema usage alone does not allow transfer_batch');
REVOKE USAGE ON SCHEMA fintx FROM tap002_nobody;

-- a service: moves money, cannot touch tables or administrative functions
SELECT is(pg_temp.run_as('tap002_service', $q$SELECT (fintx.transfer('sec-s1', 'sec.alice', 'sec.bob', 100)).status$q$),
          'posted', 'fintx_service member can execute transfer');
SELECT is((SELECT t.principal FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id
            WHERE j.idempotency_key = 'sec-s1'), 'tap002_service',
          'the principal of a transfer is the calling role, not the function owner');
SELECT is(pg_temp.run_as('tap002_service', $q$SELECT (fintx.transfer('sec-s1', 'sec.alice', 'sec.bob', 100)).replayed::text$q$),
          'true', 'the service replays its own key');
SELECT is(pg_temp.run_as('tap002_service', $q$SELECT string_agg(code || '=' || posted, ',') FROM fintx.account_balances$q$),
          'sec.alice=9250', 'fintx_service reads account_balances, only for accounts its grants cover');
SELECT is(pg_temp.run_as('tap002_service',
          $q$SELECT string_agg(status, ',') FROM fintx.transfer_batch('[{"idempotency_key": "sec-s2", "from_account": "sec.alice", "to_account": "sec.bob", "amount": 1}]')$q$),
          'posted', 'fintx_service can execute transfer_batch');
SELECT is(pg_temp.run_as('tap002_service',
          $q$SELECT (fintx.transfer('sec-s3', 'sec.alice', 'sec.bob', 5, pending => true)).status$q$),
          'pending', 'fintx_service can place a hold');
SELECT is(pg_temp.run_as('tap002_service',
          format('SELECT (fintx.void_pending(%L, %s)).status', 'sec-s4',
                 (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'sec-s3'))),
          'voided', 'fintx_service can void its hold');
SELECT is(pg_temp.run_as('tap002_service', 'SELECT string_agg(code, '','' ORDER BY code) FROM fintx.accounts'),
          'sec.alice', 'fintx_service sees only the accounts its grants cover in fintx.accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'SELECT count(*) FROM fintx.idempotency_keys')$$,
                 '42501', 'permission denied for table idempotency_keys', 'fintx_service cannot read the journal');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'UPDATE fintx.accounts SET credits_posted = 0')$$,
                 '42501', 'permission denied for table accounts', 'fintx_service cannot update balances behind the API');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'DELETE FROM fintx.idempotency_keys')$$,
                 '42501', 'permission denied for table idempotency_keys', 'fintx_service cannot delete journal rows');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'INSERT INTO fintx.pending_holds VALUES (1, NULL)')$$,
                 '42501', 'permission denied for table pending_holds', 'fintx_service cannot insert holds');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'SELECT fintx.open_account(''sec.s'', ''EUR'')')$$,
                 '42501', 'permission denied for account.open on "sec.s"', 'fintx_service without a grant cannot open accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'SELECT fintx.close_account(''sec.bob'')')$$,
                 '42501', 'permission denied for account.close on "sec.bob"', 'fintx_service without a grant cannot close accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'SELECT fintx.expire_pending()')$$,
                 '42501', 'permission denied for function expire_pending', 'fintx_service cannot run expiry');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_service', 'SELECT count(*) FROM fintx.reconcile()')$$,
                 '42501', 'permission denied for function reconcile', 'fintx_service cannot reconcile');

-- idempotency keys are per principal: the same key under another role is another request
SELECT is((fintx.transfer('sec-s1', 'sec.alice', 'sec.bob', 100)).replayed, false,
          'the superuser using the service''s key gets a fresh transfer (journal is per principal)');
SELECT is((SELECT count(*)::int FROM fintx.idempotency_keys WHERE idempotency_key = 'sec-s1'), 2,
          'two journal rows for one key under two principals');

-- an auditor: reads and reconciles, moves nothing
SELECT is(pg_temp.run_as('tap002_auditor', 'SELECT count(*)::text FROM fintx.reconcile()'), '0',
          'fintx_auditor can execute reconcile');
SELECT is(pg_temp.run_as('tap002_auditor', $q$SELECT posted::text FROM fintx.account_balances WHERE code = 'sec.alice'$q$),
          '9149', 'fintx_auditor can read account_balances');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_auditor', 'SELECT fintx.transfer(''sec-a1'', ''sec.alice'', ''sec.bob'', 1)')$$,
                 '42501', 'permission denied for function transfer', 'fintx_auditor cannot execute transfer');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_auditor', 'SELECT fintx.post_pending(''sec-a2'', 1)')$$,
                 '42501', 'permission denied for function post_pending', 'fintx_auditor cannot post holds');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_auditor', 'UPDATE fintx.accounts SET closed_at = now()')$$,
                 '42501', 'permission denied for table accounts', 'fintx_auditor cannot write fintx.accounts');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_auditor', 'DELETE FROM fintx.transfers')$$,
                 '42501', 'permission denied for table transfers', 'fintx_auditor cannot write fintx.transfers');

-- an admin: may do everything through the API, still no direct writes
SELECT lives_ok($$SELECT pg_temp.run_as('tap002_admin', 'SELECT fintx.open_account(''sec.adm'', ''EUR'')')$$,
                'fintx_admin can open accounts');
SELECT is(pg_temp.run_as('tap002_admin', 'SELECT count(*)::text FROM fintx.accounts WHERE code = ''sec.adm'''), '1',
          'fintx_admin can read fintx.accounts');
SELECT is(pg_temp.run_as('tap002_admin', 'SELECT fintx.expire_pending()::text'), '0', 'fintx_admin can run expiry');
SELECT throws_ok($$SELECT pg_temp.run_as('tap002_admin', 'UPDATE fintx.accounts SET credits_posted = 0')$$,
                 '42501', 'permission denied for table accounts', 'fintx_admin cannot write balances behind the API');
SELECT is(current_user::text, 'postgres', 'the role switches above did not leak');

-- ===========================================================================
-- 5. user data is registered for pg_dump
-- ===========================================================================
SELECT ok((SELECT 'fintx.accounts'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'fintx'),
          'fintx.accounts is in pg_extension.extconfig');
SELECT ok((SELECT 'fintx.transfers'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'fintx'),
          'fintx.transfers is in pg_extension.extconfig');
SELECT ok((SELECT 'fintx.idempotency_keys'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'fintx'),
          'fintx.idempotency_keys is in pg_extension.extconfig');
SELECT ok((SELECT 'fintx.pending_holds'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'fintx'),
          'fintx.pending_holds is in pg_extension.extconfig');
SELECT ok((SELECT 'fintx.transfer_id_seq'::regclass::oid = ANY (extconfig) FROM pg_extension WHERE extname = 'fintx'),
          'fintx.transfer_id_seq is in pg_extension.extconfig (ids survive dump/restore)');
SELECT is_empty(
    $$SELECT c, cond FROM pg_extension e, unnest(e.extconfig::regclass[], e.extcondition) AS u(c, cond)
       WHERE e.extname = 'fintx' AND cond <> ''$$,
    'every registered table is dumped in full (empty condition)');
SELECT is((SELECT cardinality(extconfig) = cardinality(extcondition) FROM pg_extension WHERE extname = 'fintx'), true,
          'extconfig and extcondition have one entry per table');

SELECT * FROM finish();
ROLLBACK;

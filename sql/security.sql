-- security: nothing for PUBLIC, definer functions pin search_path, hostile search_path is harmless
\set VERBOSITY terse
SELECT p.proname, p.proconfig
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'fintx' AND p.prosecdef
   AND (p.proconfig IS NULL OR NOT p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp']);
SELECT count(*) > 0 AS has_definer_functions
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'fintx' AND p.prosecdef;
-- no privilege of PUBLIC on any fintx object
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'fintx' AND c.relkind IN ('r', 'v', 'S')
   AND (has_table_privilege('public', c.oid, 'SELECT') OR has_table_privilege('public', c.oid, 'INSERT'));
SELECT p.oid::regprocedure FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'fintx' AND has_function_privilege('public', p.oid, 'EXECUTE');

-- a role with no grant can do nothing
CREATE ROLE fintx_regress_nobody;
SET ROLE fintx_regress_nobody;
SELECT fintx.transfer('s-1', 't:bank', 't:a', 1);
SELECT * FROM fintx.accounts;
SELECT * FROM fintx.account_balances;
RESET ROLE;
-- services may call the API but not write the tables directly
CREATE ROLE fintx_regress_svc;
SELECT fintx.register_service('regress-svc', 'fintx_regress_svc');
SELECT fintx.grant_permission('regress-svc', 'transfer', 't:bank', 1000);
SET ROLE fintx_regress_svc;
SELECT status FROM fintx.transfer('s-2', 't:bank', 't:a', 1);
UPDATE fintx.accounts SET credits_posted = 0;
INSERT INTO fintx.transfers DEFAULT VALUES;
DELETE FROM fintx.idempotency_keys;
SELECT fintx.open_account('s:new', 'EUR');
RESET ROLE;

-- hostile search_path: shadowing tables, functions and operators change nothing
CREATE SCHEMA evil;
CREATE TABLE evil.accounts (id bigint, code text);
CREATE TABLE evil.transfers (id bigint);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
CREATE FUNCTION evil.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE sql AS $$ SELECT NULL $$;
CREATE FUNCTION evil.int8eq_evil(bigint, bigint) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.int8eq_evil);
SET search_path = evil, public;
SELECT status, from_balance, to_balance, created_at > '2001-01-01' AS real_clock
  FROM fintx.transfer('s-3', 't:bank', 't:b', 2);
SELECT count(*) AS evil_rows FROM evil.accounts;
SELECT * FROM fintx.reconcile();
RESET search_path;
DROP SCHEMA evil CASCADE;
DROP OWNED BY fintx_regress_nobody, fintx_regress_svc;
DELETE FROM fintx.permissions WHERE service = 'regress-svc';
DELETE FROM fintx.services WHERE name = 'regress-svc';
DROP ROLE fintx_regress_nobody;
DROP ROLE fintx_regress_svc;

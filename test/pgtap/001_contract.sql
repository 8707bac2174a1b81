-- 001_contract: the public SQL contract of the ledger (DESIGN.md "Public SQL contract"):
-- names, argument names/types/order, defaults, result types, the transfer_result type
-- and the account_balances view; and that the documented defaults really apply when
-- the functions are called with named arguments only.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(109);

-- ---------------------------------------------------------------------------
-- extension, schema, roles
-- ---------------------------------------------------------------------------
SELECT has_extension('fintx', 'fintx is installed');
SELECT has_schema('fintx', 'schema fintx exists');
SELECT is((SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
            WHERE e.extname = 'fintx'), 'fintx', 'the extension lives in schema fintx');
SELECT is((SELECT extrelocatable FROM pg_extension WHERE extname = 'fintx'), false,
          'the extension is not relocatable');
SELECT has_role('fintx_admin', 'role fintx_admin exists');
SELECT has_role('fintx_service', 'role fintx_service exists');
SELECT has_role('fintx_auditor', 'role fintx_auditor exists');

-- ---------------------------------------------------------------------------
-- open_account(code text, currency text, allow_negative boolean DEFAULT false,
--              allow_positive boolean DEFAULT true, metadata jsonb DEFAULT '{}') -> bigint
-- ---------------------------------------------------------------------------
SELECT has_function('fintx', 'open_account', ARRAY['text', 'text', 'boolean', 'boolean', 'jsonb'],
                    'open_account(text, text, boolean, boolean, jsonb) exists');
SELECT function_returns('fintx', 'open_account', ARRAY['text', 'text', 'boolean', 'boolean', 'jsonb'],
                        'bigint', 'open_account returns bigint');
SELECT is((SELECT proargnames FROM pg_proc
            WHERE oid = 'fintx.open_account(text, text, boolean, boolean, jsonb)'::regprocedure),
          ARRAY['code', 'currency', 'allow_negative', 'allow_positive', 'metadata'],
          'open_account argument names follow the contract');
SELECT is(pg_get_function_arguments('fintx.open_account(text, text, boolean, boolean, jsonb)'::regprocedure),
          'code text, currency text, allow_negative boolean DEFAULT false, allow_positive boolean DEFAULT true, metadata jsonb DEFAULT ''{}''::jsonb',
          'open_account defaults: allow_negative false, allow_positive true, metadata {}');
SELECT is_definer('fintx', 'open_account', ARRAY['text', 'text', 'boolean', 'boolean', 'jsonb'],
                  'open_account is SECURITY DEFINER');
SELECT volatility_is('fintx', 'open_account', ARRAY['text', 'text', 'boolean', 'boolean', 'jsonb'],
                     'volatile', 'open_account is volatile');
SELECT is((SELECT count(*)::int FROM pg_proc
            WHERE pronamespace = 'fintx'::regnamespace AND proname = 'open_account'), 1,
          'open_account is not overloaded');

-- ---------------------------------------------------------------------------
-- transfer(idempotency_key text, from_account text, to_account text, amount bigint,
--          metadata jsonb DEFAULT '{}', pending boolean DEFAULT false,
--          timeout interval DEFAULT NULL) -> transfer_result
-- ---------------------------------------------------------------------------
SELECT has_function('fintx', 'transfer',
                    ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                    'transfer(text, text, text, bigint, jsonb, boolean, interval) exists');
SELECT function_returns('fintx', 'transfer',
                        ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                        'fintx.transfer_result', 'transfer returns fintx.transfer_result');
SELECT is((SELECT proargnames FROM pg_proc
            WHERE oid = 'fintx.transfer(text, text, text, bigint, jsonb, boolean, interval)'::regprocedure),
          ARRAY['idempotency_key', 'from_account', 'to_account', 'amount', 'metadata', 'pending', 'timeout'],
          'transfer argument names follow the contract');
SELECT is(pg_get_function_arguments('fintx.transfer(text, text, text, bigint, jsonb, boolean, interval)'::regprocedure),
          'idempotency_key text, from_account text, to_account text, amount bigint, metadata jsonb DEFAULT ''{}''::jsonb, pending boolean DEFAULT false, timeout interval DEFAULT NULL::interval',
          'transfer defaults: metadata {}, pending false, timeout NULL');
SELECT is_definer('fintx', 'transfer', ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                  'transfer is SECURITY DEFINER');
SELECT volatility_is('fintx', 'transfer', ARRAY['text', 'text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                     'volatile', 'transfer is volatile');
SELECT is((SELECT count(*)::int FROM pg_proc
            WHERE pronamespace = 'fintx'::regnamespace AND proname = 'transfer'), 1,
          'transfer is not overloaded');

-- ---------------------------------------------------------------------------
-- post_pending(idempotency_key text, transfer_id bigint, amount bigint DEFAULT NULL)
-- void_pending(idempotency_key text, transfer_id bigint)
-- ---------------------------------------------------------------------------
SELECT has_function('fintx', 'post_pending', ARRAY['text', 'bigint', 'bigint'],
                    'post_pending(text, bigint, bigint) exists');
SELECT function_returns('fintx', 'post_pending', ARRAY['text', 'bigint', 'bigint'],
                        'fintx.transfer_result', 'post_pending returns fintx.transfer_result');
SELECT is(pg_get_function_arguments('fintx.post_pending(text, bigint, bigint)'::regprocedure),
          'idempotency_key text, transfer_id bigint, amount bigint DEFAULT NULL::bigint',
          'post_pending argument names and default amount NULL');
SELECT is_definer('fintx', 'post_pending', ARRAY['text', 'bigint', 'bigint'], 'post_pending is SECURITY DEFINER');

SELECT has_function('fintx', 'void_pending', ARRAY['text', 'bigint'], 'void_pending(text, bigint) exists');
SELECT function_returns('fintx', 'void_pending', ARRAY['text', 'bigint'],
                        'fintx.transfer_result', 'void_pending returns fintx.transfer_result');
SELECT is(pg_get_function_arguments('fintx.void_pending(text, bigint)'::regprocedure),
          'idempotency_key text, transfer_id bigint',
          'void_pending argument names follow the contract');
SELECT is_definer('fintx', 'void_pending', ARRAY['text', 'bigint'], 'void_pending is SECURITY DEFINER');

-- ---------------------------------------------------------------------------
-- transfer_batch(requests jsonb) -> SETOF transfer_result
-- ---------------------------------------------------------------------------
SELECT has_function('fintx', 'transfer_batch', ARRAY['jsonb'], 'transfer_batch(jsonb) exists');
SELECT function_returns('fintx', 'transfer_batch', ARRAY['jsonb'],
                        'setof fintx.transfer_result', 'transfer_batch returns setof fintx.transfer_result');
SELECT is(pg_get_function_arguments('fintx.transfer_batch(jsonb)'::regprocedure),
          'requests jsonb', 'transfer_batch argument is named requests');
SELECT is_definer('fintx', 'transfer_batch', ARRAY['jsonb'], 'transfer_batch is SECURITY DEFINER');

-- ---------------------------------------------------------------------------
-- reconcile() -> TABLE(check_name text, object text, expected text, actual text)
-- ---------------------------------------------------------------------------
SELECT has_function('fintx', 'reconcile', ARRAY[]::text[], 'reconcile() exists');
SELECT function_returns('fintx', 'reconcile', ARRAY[]::text[], 'setof record', 'reconcile returns a set');
SELECT is(pg_get_function_result('fintx.reconcile()'::regprocedure),
          'TABLE(check_name text, object text, expected text, actual text)',
          'reconcile returns TABLE(check_name text, object text, expected text, actual text)');
SELECT results_eq(
    $$SELECT a.name::text COLLATE "default", format_type(a.typ, NULL), a.mode::text
        FROM pg_proc p, unnest(p.proargnames, p.proallargtypes, p.proargmodes) WITH ORDINALITY AS a(name, typ, mode, n)
       WHERE p.oid = 'fintx.reconcile()'::regprocedure ORDER BY a.n$$,
    $$VALUES ('check_name', 'text', 't'), ('object', 'text', 't'), ('expected', 'text', 't'), ('actual', 'text', 't')$$,
    'reconcile output columns in order, all text');
SELECT is_definer('fintx', 'reconcile', ARRAY[]::text[], 'reconcile is SECURITY DEFINER');

-- helper functions beyond the contract, as shipped
SELECT has_function('fintx', 'close_account', ARRAY['text'], 'close_account(text) exists');
SELECT function_returns('fintx', 'close_account', ARRAY['text'], 'void', 'close_account returns void');
SELECT has_function('fintx', 'expire_pending', ARRAY['integer'], 'expire_pending(integer) exists');
SELECT function_returns('fintx', 'expire_pending', ARRAY['integer'], 'integer', 'expire_pending returns integer');
SELECT has_function('fintx', 'request_fingerprint',
                    ARRAY['text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                    'request_fingerprint(text, text, bigint, jsonb, boolean, interval) exists');
SELECT function_returns('fintx', 'request_fingerprint',
                        ARRAY['text', 'text', 'bigint', 'jsonb', 'boolean', 'interval'],
                        'bytea', 'request_fingerprint returns bytea');

-- ---------------------------------------------------------------------------
-- transfer_result = (transfer_id bigint, status text, replayed boolean, from_balance bigint,
--                    to_balance bigint, entry_hash bytea, created_at timestamptz)
-- ---------------------------------------------------------------------------
SELECT has_composite('fintx', 'transfer_result', 'composite type fintx.transfer_result exists');
SELECT results_eq(
    $$SELECT a.attname::text COLLATE "default", format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
       WHERE a.attrelid = 'fintx.transfer_result'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       ORDER BY a.attnum$$,
    $$VALUES ('transfer_id', 'bigint'), ('status', 'text'), ('replayed', 'boolean'),
             ('from_balance', 'bigint'), ('to_balance', 'bigint'), ('entry_hash', 'bytea'),
             ('created_at', 'timestamp with time zone')$$,
    'transfer_result attributes: names, types and order');

-- ---------------------------------------------------------------------------
-- VIEW account_balances(code, currency, posted, pending_debits, pending_credits, available)
-- ---------------------------------------------------------------------------
SELECT has_view('fintx', 'account_balances', 'view fintx.account_balances exists');
SELECT results_eq(
    $$SELECT a.attname::text COLLATE "default", format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
       WHERE a.attrelid = 'fintx.account_balances'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       ORDER BY a.attnum$$,
    $$VALUES ('code', 'text'), ('currency', 'text'), ('posted', 'bigint'), ('pending_debits', 'bigint'),
             ('pending_credits', 'bigint'), ('available', 'bigint')$$,
    'account_balances columns: names, types and order');
SELECT col_type_is('fintx', 'account_balances', 'posted', 'bigint', 'account_balances.posted is bigint');
SELECT col_type_is('fintx', 'account_balances', 'available', 'bigint', 'account_balances.available is bigint');

-- tables behind the contract
SELECT has_table('fintx', 'accounts', 'table fintx.accounts exists');
SELECT has_table('fintx', 'transfers', 'table fintx.transfers exists');
SELECT has_table('fintx', 'idempotency_keys', 'table fintx.idempotency_keys exists');
SELECT has_table('fintx', 'pending_holds', 'table fintx.pending_holds exists');
SELECT has_table('fintx', 'currencies', 'table fintx.currencies exists');
SELECT col_is_pk('fintx', 'idempotency_keys', ARRAY['principal', 'idempotency_key'],
                 'idempotency journal is keyed by (principal, idempotency_key)');
SELECT ok((SELECT count(*) >= 150 FROM fintx.currencies), 'the ISO 4217 table is complete (>= 150 codes)');
SELECT results_eq(
    $$SELECT code, numeric_code::int, exponent::int FROM fintx.currencies
       WHERE code IN ('EUR', 'JPY', 'KWD', 'CLF') ORDER BY code$$,
    $$VALUES ('CLF', 990, 4), ('EUR', 978, 2), ('JPY', 392, 0), ('KWD', 414, 3)$$,
    'ISO 4217 numeric codes and exponents');

-- ---------------------------------------------------------------------------
-- defaults, exercised through named arguments only
-- ---------------------------------------------------------------------------
SELECT ok(fintx.open_account(code => 'c001.world', currency => 'EUR',
                             allow_negative => true, allow_positive => false) > 0,
          'open_account with named arguments returns a positive id');
SELECT ok(fintx.open_account(currency => 'EUR', code => 'c001.alice') > 0,
          'open_account with only code and currency (named, reordered) works');
SELECT ok(fintx.open_account('c001.bob', 'EUR') > 0, 'open_account positional with defaults works');
SELECT fintx.open_account('c001.carol', 'EUR', metadata => '{"tier": "gold"}') AS carol_id \gset
SELECT is((SELECT id FROM fintx.accounts WHERE code = 'c001.carol'), :carol_id::bigint,
          'open_account returns the id of the new row');
SELECT row_eq(
    $$SELECT allow_negative, allow_positive, metadata, currency, closed_at IS NULL,
             debits_posted, credits_posted, debits_pending, credits_pending
        FROM fintx.accounts WHERE code = 'c001.alice'$$,
    ROW(false, true, '{}'::jsonb, 'EUR'::text, true, 0::bigint, 0::bigint, 0::bigint, 0::bigint),
    'open_account defaults applied: allow_negative false, allow_positive true, metadata {}, zero counters');
SELECT row_eq(
    $$SELECT allow_negative, allow_positive FROM fintx.accounts WHERE code = 'c001.world'$$,
    ROW(true, false), 'explicit named allow_negative/allow_positive are stored');
SELECT is((SELECT metadata FROM fintx.accounts WHERE code = 'c001.carol'), '{"tier": "gold"}'::jsonb,
          'named metadata is stored');
SELECT is((SELECT created_by FROM fintx.accounts WHERE code = 'c001.alice'), current_user::text,
          'created_by records the calling role');
SELECT ok((SELECT a.id < b.id FROM fintx.accounts a, fintx.accounts b
            WHERE a.code = 'c001.world' AND b.code = 'c001.alice'),
          'account ids increase');

-- transfer with named arguments, out of order, defaults for metadata/pending/timeout
SELECT r.* FROM fintx.transfer(amount => 1000, to_account => 'c001.alice',
                               from_account => 'c001.world', idempotency_key => 'c001-k1') AS r
\gset t1_
SELECT ok(:t1_transfer_id > 0, 'transfer (named args) returns a transfer id');
SELECT is(:'t1_status'::text, 'posted', 'transfer defaults to pending => false: status posted');
SELECT is(:'t1_replayed'::boolean, false, 'a first transfer is not replayed');
SELECT is(:t1_from_balance::bigint, -1000::bigint, 'from_balance is the posted balance of the debited account');
SELECT is(:t1_to_balance::bigint, 1000::bigint, 'to_balance is the posted balance of the credited account');
SELECT is(:'t1_created_at'::timestamptz, now(), 'created_at is the transaction timestamp');
SELECT row_eq(
    format('SELECT status, amount, metadata, pending_id, timeout_at, principal FROM fintx.transfers WHERE id = %s',
           :t1_transfer_id),
    ROW('posted'::text, 1000::bigint, '{}'::jsonb, NULL::bigint, NULL::timestamptz, current_user::text COLLATE "default"),
    'stored transfer: metadata {} and no timeout by default, principal is the caller');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds), 0, 'a default transfer places no hold');

-- the composite really has the contract's types
SELECT results_eq(
    $$SELECT pg_typeof(r.transfer_id)::text, pg_typeof(r.status)::text, pg_typeof(r.replayed)::text,
             pg_typeof(r.from_balance)::text, pg_typeof(r.to_balance)::text, pg_typeof(r.entry_hash)::text,
             pg_typeof(r.created_at)::text
        FROM fintx.transfer('c001-k2', 'c001.world', 'c001.bob', 5) AS r$$,
    $$VALUES ('bigint', 'text', 'boolean', 'bigint', 'bigint', 'bytea', 'timestamp with time zone')$$,
    'transfer_result values have the contract types');
SELECT is(pg_typeof(fintx.transfer('c001-k3', 'c001.world', 'c001.bob', 5))::text, 'fintx.transfer_result',
          'transfer() yields a fintx.transfer_result value');

-- pending with named arguments
SELECT r.* FROM fintx.transfer(idempotency_key => 'c001-h1', from_account => 'c001.alice',
                               to_account => 'c001.bob', amount => 300, pending => true,
                               metadata => '{"order": 17}') AS r
\gset h1_
SELECT is(:'h1_status'::text, 'pending'::text, 'named pending => true places a hold');
SELECT is((SELECT timeout_at FROM fintx.pending_holds WHERE transfer_id = :h1_transfer_id), NULL,
          'timeout defaults to NULL: the hold never expires');
SELECT is((SELECT metadata FROM fintx.transfers WHERE id = :h1_transfer_id), '{"order": 17}'::jsonb,
          'named metadata is stored on the transfer');
SELECT results_eq(
    $$SELECT code COLLATE "default", currency, posted, pending_debits, pending_credits, available
        FROM fintx.account_balances WHERE code IN ('c001.alice', 'c001.bob') ORDER BY code$$,
    $$VALUES ('c001.alice'::text, 'EUR'::text, 1000::bigint, 300::bigint, 0::bigint, 700::bigint),
             ('c001.bob', 'EUR', 10, 0, 300, 10)$$,
    'account_balances: posted, pending_debits, pending_credits, available = posted - pending_debits');

-- post_pending with the default amount (NULL: the full held amount)
SELECT r.* FROM fintx.post_pending(transfer_id => :h1_transfer_id, idempotency_key => 'c001-p1') AS r
\gset p1_
SELECT is(:'p1_status'::text, 'posted', 'post_pending (named, default amount) posts');
SELECT is((SELECT amount FROM fintx.transfers WHERE id = :p1_transfer_id), 300::bigint,
          'post_pending without amount posts the full held amount');
SELECT is((SELECT pending_id FROM fintx.transfers WHERE id = :p1_transfer_id), :h1_transfer_id::bigint,
          'the posting row points at its hold');
SELECT is(:p1_from_balance::bigint, 700::bigint, 'post_pending from_balance');
SELECT is(:p1_to_balance::bigint, 310::bigint, 'post_pending to_balance');

-- post_pending with an explicit named amount, void_pending with named arguments
SELECT transfer_id AS h2 FROM fintx.transfer('c001-h2', 'c001.alice', 'c001.bob', 50, pending => true) \gset
SELECT is((fintx.post_pending(idempotency_key => 'c001-p2', transfer_id => :h2, amount => 20)).status, 'posted',
          'post_pending with named amount');
SELECT is((SELECT amount FROM fintx.transfers WHERE pending_id = :h2), 20::bigint,
          'the named amount is what is posted');
SELECT transfer_id AS h3 FROM fintx.transfer('c001-h3', 'c001.alice', 'c001.bob', 40, pending => true,
                                             timeout => '1 hour') \gset
SELECT ok((SELECT timeout_at BETWEEN now() + interval '59 minutes' AND clock_timestamp() + interval '1 hour'
             FROM fintx.pending_holds WHERE transfer_id = :h3),
          'named timeout => 1 hour sets the hold to expire in an hour');
SELECT is((fintx.void_pending(transfer_id => :h3, idempotency_key => 'c001-v3')).status, 'voided',
          'void_pending with named arguments voids');
SELECT results_eq(
    $$SELECT posted, pending_debits, pending_credits, available
        FROM fintx.account_balances WHERE code = 'c001.alice'$$,
    $$VALUES (680::bigint, 0::bigint, 0::bigint, 680::bigint)$$,
    'after post 300, post 20 of 50, void 40: alice has 680 and nothing held');

-- transfer_batch: the contract fields; metadata optional
SELECT results_eq(
    $$SELECT status, replayed, from_balance, to_balance
        FROM fintx.transfer_batch('[{"idempotency_key": "c001-b1", "from_account": "c001.alice",
                                     "to_account": "c001.bob", "amount": 80, "metadata": {"n": 1}},
                                    {"idempotency_key": "c001-b2", "from_account": "c001.bob",
                                     "to_account": "c001.alice", "amount": 10}]')$$,
    $$VALUES ('posted'::text, false, 600::bigint, 410::bigint), ('posted', false, 400, 610)$$,
    'transfer_batch with {idempotency_key, from_account, to_account, amount, metadata}');

-- request_fingerprint: deterministic, independent of the key, sensitive to every field
SELECT is(length(fintx.request_fingerprint('a', 'b', 1)), 32, 'request_fingerprint is 32 bytes (SHA-256)');
SELECT is(fintx.request_fingerprint('a', 'b', 1), fintx.request_fingerprint('a', 'b', 1, '{}', false, NULL),
          'request_fingerprint defaults are metadata {}, pending false, timeout NULL');
SELECT isnt(fintx.request_fingerprint('a', 'b', 1), fintx.request_fingerprint('a', 'b', 2),
            'request_fingerprint depends on the amount');
SELECT isnt(fintx.request_fingerprint('a', 'b', 1), fintx.request_fingerprint('b', 'a', 1),
            'request_fingerprint depends on the direction');
SELECT isnt(fintx.request_fingerprint('a', 'b', 1, pending => true),
            fintx.request_fingerprint('a', 'b', 1, pending => true, timeout => '1 hour'),
            'request_fingerprint depends on the timeout');
SELECT isnt(fintx.request_fingerprint('a', 'b', 1, '{"x": 1}'), fintx.request_fingerprint('a', 'b', 1),
            'request_fingerprint depends on the metadata');

-- the canonical request encoding of docs/idempotency.md, recomputed independently in SQL:
-- prefix, then tagged fields: tag byte, 32-bit big-endian length (0xFFFFFFFF for NULL), bytes
CREATE FUNCTION pg_temp.fp_field(tag text, v bytea) RETURNS bytea LANGUAGE sql AS $$
    SELECT convert_to(tag, 'UTF8') || CASE WHEN v IS NULL THEN '\xffffffff'::bytea ELSE int4send(length(v)) || v END
$$;
CREATE FUNCTION pg_temp.fp_journal(k text) RETURNS bytea LANGUAGE sql AS $$
    SELECT fingerprint FROM fintx.idempotency_keys WHERE idempotency_key = k AND principal = current_user
$$;
SELECT is(encode(fintx.request_fingerprint('customer:alice', 'merchant:shop', 4000,
                                           metadata => '{"channel": "web", "order": "2001"}',
                                           pending => true, timeout => '15 minutes'), 'hex'),
          'c70ac2bbce4b328431ac09e0411fcb123af590d7c7bf5abee43aef8aff1cffc1',
          'request_fingerprint reproduces the worked example of docs/idempotency.md');
SELECT is(pg_temp.fp_journal('c001-h1'),
          fintx.request_fingerprint('c001.alice', 'c001.bob', 300, '{"order": 17}', true, NULL),
          'the journal stores request_fingerprint() of the request');
SELECT is(pg_temp.fp_journal('c001-k1'),
          sha256('fintx.request.v1'::bytea
                 || pg_temp.fp_field('o', 'transfer'::bytea) || pg_temp.fp_field('f', 'c001.world'::bytea)
                 || pg_temp.fp_field('t', 'c001.alice'::bytea) || pg_temp.fp_field('a', int8send(1000))
                 || pg_temp.fp_field('m', '{}'::bytea) || pg_temp.fp_field('p', '\x00'::bytea)
                 || pg_temp.fp_field('x', NULL)),
          'transfer fingerprint = SHA-256 of the documented encoding (recomputed in SQL)');
SELECT is(pg_temp.fp_journal('c001-p1'),
          sha256('fintx.request.v1'::bytea || pg_temp.fp_field('o', 'post'::bytea)
                 || pg_temp.fp_field('h', int8send(:h1_transfer_id)) || pg_temp.fp_field('a', NULL)),
          'post_pending fingerprint without amount = SHA-256 of the documented encoding');
SELECT is(pg_temp.fp_journal('c001-p2'),
          sha256('fintx.request.v1'::bytea || pg_temp.fp_field('o', 'post'::bytea)
                 || pg_temp.fp_field('h', int8send(:h2)) || pg_temp.fp_field('a', int8send(20))),
          'post_pending fingerprint with amount = SHA-256 of the documented encoding');
SELECT is(pg_temp.fp_journal('c001-v3'),
          sha256('fintx.request.v1'::bytea || pg_temp.fp_field('o', 'void'::bytea)
                 || pg_temp.fp_field('h', int8send(:h3))),
          'void_pending fingerprint = SHA-256 of the documented encoding');

-- reconcile with defaults: consistent ledger -> no rows
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'reconcile() reports nothing on a consistent ledger');

-- close_account / expire_pending contract basics
SELECT lives_ok($$SELECT fintx.open_account('c001.empty', 'USD')$$, 'open a USD account');
SELECT lives_ok($$SELECT fintx.close_account('c001.empty')$$, 'close_account on a zero balance');
SELECT isnt((SELECT closed_at FROM fintx.accounts WHERE code = 'c001.empty'), NULL,
            'close_account sets closed_at');
SELECT is(fintx.expire_pending(), 0, 'expire_pending() with its default releases nothing when no hold expired');

SELECT * FROM finish();
ROLLBACK;

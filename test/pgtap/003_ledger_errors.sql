-- 003_ledger_errors: every bad input of the ledger functions and every contract SQLSTATE
-- (22023, 22003, 23505, 55000, FX001, FX002), each followed by a check that nothing in the
-- ledger changed (accounts with all counters, transfers, journal, open holds).
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(315);

-- A fingerprint of the whole ledger but the probe's accounts and rows (below): counts, and a
-- hash over every row of every table.
CREATE FUNCTION pg_temp.ledger_state() RETURNS text LANGUAGE sql AS $$
WITH a AS (SELECT * FROM fintx.accounts WHERE code NOT LIKE 'probe.%'),
     t AS (SELECT * FROM fintx.transfers WHERE from_account IN (SELECT id FROM a)),
     j AS (SELECT * FROM fintx.idempotency_keys WHERE idempotency_key NOT LIKE 'probe-%')
SELECT format('%s accounts, %s transfers, %s keys, %s holds, sum(credits-debits)=%s, hash %s',
       (SELECT count(*) FROM a), (SELECT count(*) FROM t),
       (SELECT count(*) FROM j), (SELECT count(*) FROM fintx.pending_holds),
       (SELECT sum(credits_posted::numeric - debits_posted) FROM a),
       md5(concat_ws('|',
           (SELECT string_agg(a::text, ',' ORDER BY a.id) FROM a),
           (SELECT string_agg(t::text, ',' ORDER BY t.id) FROM t),
           (SELECT string_agg(j::text, ',' ORDER BY j.transfer_id) FROM j),
           (SELECT string_agg(h::text, ',' ORDER BY h.transfer_id) FROM fintx.pending_holds h))))
$$;
CREATE TEMP TABLE baseline (state text);
CREATE FUNCTION pg_temp.snapshot() RETURNS void LANGUAGE sql AS $$
    DELETE FROM baseline; INSERT INTO baseline SELECT pg_temp.ledger_state();
$$;
\ir include/probe.sql
-- throws_ok with exact SQLSTATE and message, then: the next transfer (the probe) writes its
-- own rows and nothing else, on a ledger exactly as before.
CREATE FUNCTION pg_temp.rejects(q text, code text, msg text, descr text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    RETURN NEXT throws_ok(q, code, msg, descr);
    RETURN NEXT is(pg_temp.probe(), (SELECT state FROM baseline) || ' + probe rows 1,1,1,1,0',
                   descr || ' - nothing left behind: the next transfer writes only its own rows');
END
$$;
-- The full error of a statement as 'SQLSTATE|message|detail|hint' (NULL if it succeeds;
-- an absent detail or hint is an empty field).
CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hin text;
BEGIN
    EXECUTE q;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hin = PG_EXCEPTION_HINT;
    RETURN format('%s|%s|%s|%s', st, msg, det, hin);
END
$$;

-- ---------------------------------------------------------------------------
-- setup
-- ---------------------------------------------------------------------------
-- the probe's accounts (pg_temp.probe)
SELECT fintx.open_account('probe.from', 'EUR', true, true) IS NOT NULL AS ok \gset
SELECT fintx.open_account('probe.to', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.world', 'EUR', true, false) IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.alice', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.bob', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.carol', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.usd', 'USD') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.cap', 'EUR', false, false) IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.closed', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.close_account('e.closed');
SELECT fintx.open_account('e.ovsrc', 'EUR', true, true) IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.ovdst', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.cap2', 'EUR', true, false) IS NOT NULL AS ok \gset
SELECT fintx.open_account('e.sink', 'EUR') IS NOT NULL AS ok \gset

SELECT is((fintx.transfer('e-fund', 'e.world', 'e.alice', 1000)).status, 'posted', 'fund e.alice with 1000');
SELECT is((fintx.transfer('e-fund-c', 'e.world', 'e.carol', 50)).status, 'posted', 'fund e.carol with 50');
SELECT is((fintx.transfer('e-cap2', 'e.cap2', 'e.sink', 5)).from_balance, -5::bigint,
          'e.cap2 (allow_positive = false) owes 5');
SELECT is((fintx.transfer('e-hold', 'e.alice', 'e.bob', 100, pending => true)).status, 'pending',
          'hold 100 from e.alice to e.bob');
SELECT is((fintx.transfer('e-used', 'e.alice', 'e.bob', 10, '{"ref": "A-1"}')).status, 'posted',
          'e-used: 10 from e.alice to e.bob');
SELECT is((fintx.transfer('e-ov1', 'e.ovsrc', 'e.ovdst', 9223372036854775000)).to_balance, 9223372036854775000,
          'e.ovdst near the top of bigint');
SELECT is((fintx.transfer('e-ov2', 'e.ovsrc', 'e.ovdst', 807)).to_balance, 9223372036854775807,
          'e.ovdst exactly at 9223372036854775807 (the limit itself is allowed)');
SELECT is((fintx.transfer('e-ov2', 'e.ovsrc', 'e.ovdst', 807)).from_balance, -9223372036854775807,
          'e.ovsrc exactly at -9223372036854775807');

-- ---------------------------------------------------------------------------
-- inputs at the edge of validity are accepted
-- ---------------------------------------------------------------------------
SELECT is((fintx.transfer(repeat('k', 255), 'e.alice', 'e.bob', 1)).status, 'posted',
          'a 255-byte idempotency key is accepted');
SELECT is((fintx.transfer(repeat('é', 127) || 'x', 'e.alice', 'e.bob', 1)).status, 'posted',
          'a 255-byte multibyte key is accepted (the limit is in bytes)');
SELECT is((fintx.transfer('ключ-€-1', 'e.alice', 'e.bob', 1)).replayed, false, 'a unicode key is accepted');
SELECT is((fintx.transfer('ключ-€-1', 'e.alice', 'e.bob', 1)).replayed, true, 'a unicode key replays');
SELECT is((fintx.transfer('''; DROP TABLE fintx.accounts; --', 'e.alice', 'e.bob', 1)).status, 'posted',
          'a key that looks like SQL injection is just a key');
SELECT is((SELECT count(*)::int FROM fintx.idempotency_keys WHERE idempotency_key = '''; DROP TABLE fintx.accounts; --'), 1,
          'the hostile key is stored verbatim');
SELECT has_table('fintx', 'accounts', 'fintx.accounts still exists');
SELECT is((fintx.transfer('e-nullmd', 'e.alice', 'e.bob', 1, NULL)).status, 'posted', 'metadata NULL is accepted');
SELECT is((SELECT t.metadata FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id
            WHERE j.idempotency_key = 'e-nullmd'), '{}'::jsonb, 'metadata NULL is stored as {}');
SELECT is(pg_column_size(jsonb_build_object('b', repeat('x', 65519))), 65536, 'this metadata takes exactly 65,536 bytes');
SELECT is((fintx.transfer('e-md-max', 'e.world', 'e.sink', 1, jsonb_build_object('b', repeat('x', 65519)))).status, 'posted',
          'metadata of exactly 65,536 bytes is accepted');
SELECT is((fintx.transfer('order 42 / retry #1', 'e.world', 'e.sink', 1)).status, 'posted',
          'a key with spaces and punctuation is accepted');
SELECT ok(fintx.open_account(repeat('a', 64), 'EUR') > 0, 'a 64-character account code is accepted');
SELECT ok(fintx.open_account('AZaz09_.:/@-', 'EUR') > 0, 'every allowed character class in an account code');
SELECT ok(fintx.open_account('e.nullmd', 'EUR', metadata => NULL) > 0, 'open_account with metadata NULL');
SELECT is((SELECT metadata FROM fintx.accounts WHERE code = 'e.nullmd'), '{}'::jsonb, 'account metadata NULL is stored as {}');
SELECT is((fintx.transfer('e-exact', 'e.carol', 'e.bob', 50)).from_balance, 0::bigint,
          'spending exactly the available balance is allowed');
SELECT is((SELECT available FROM fintx.account_balances WHERE code = 'e.alice'), 885::bigint,
          'e.alice: 1000 - 10 - 5 posted, 100 held -> 885 available');
SELECT is((SELECT available FROM fintx.account_balances WHERE code = 'e.bob'), 65::bigint,
          'e.bob: 65 available; its 100 of pending credits are not available');

SELECT pg_temp.snapshot();

-- ---------------------------------------------------------------------------
-- NULL for each required argument: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(NULL, 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency_key must not be null', 'transfer: NULL idempotency_key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-n', NULL, 'e.bob', 1)$$,
       '22023', 'from_account must not be null', 'transfer: NULL from_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-n', 'e.alice', NULL, 1)$$,
       '22023', 'to_account must not be null', 'transfer: NULL to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-n', 'e.alice', 'e.bob', NULL)$$,
       '22023', 'amount must not be null', 'transfer: NULL amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-n', 'e.alice', 'e.bob', 1, '{}', NULL)$$,
       '22023', 'pending must not be null', 'transfer: NULL pending');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account(NULL, 'EUR')$$,
       '22023', 'code must not be null', 'open_account: NULL code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.n', NULL)$$,
       '22023', 'currency must not be null', 'open_account: NULL currency');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.n', 'EUR', NULL)$$,
       '22023', 'allow_negative must not be null', 'open_account: NULL allow_negative');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.n', 'EUR', false, NULL)$$,
       '22023', 'allow_positive must not be null', 'open_account: NULL allow_positive');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending(NULL, 1)$$,
       '22023', 'idempotency_key must not be null', 'post_pending: NULL idempotency_key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('e-n', NULL)$$,
       '22023', 'transfer_id must not be null', 'post_pending: NULL transfer_id');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending(NULL, 1)$$,
       '22023', 'idempotency_key must not be null', 'void_pending: NULL idempotency_key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending('e-n', NULL)$$,
       '22023', 'transfer_id must not be null', 'void_pending: NULL transfer_id');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch(NULL)$$,
       '22023', 'requests must not be null', 'transfer_batch: NULL requests');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account(NULL)$$,
       '22023', 'code must not be null', 'close_account: NULL code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.expire_pending(NULL)$$,
       '22023', 'max_holds must not be null', 'expire_pending: NULL max_holds');

-- ---------------------------------------------------------------------------
-- idempotency keys: empty, too long, control characters: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not be empty', 'transfer: empty key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(repeat('k', 256), 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key is too long', 'transfer: 256-byte key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(repeat('é', 128), 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key is too long', 'transfer: 128 two-byte characters = 256 bytes');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(repeat('k', 100000), 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key is too long', 'transfer: 100000-byte key');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer(repeat('k', 256), 'e.alice', 'e.bob', 1)$$),
          '22023|idempotency key is too long|The key is 256 bytes long; the limit is 255 bytes.|',
          'too-long key: the detail names the length and the limit');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'a\nb', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: newline in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'\t', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: tab as key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'key\r', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: trailing CR in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'k\x01', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: 0x01 in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'k\x1b[31m', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: ANSI escape in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer(E'k\x7f', 'e.alice', 'e.bob', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'transfer: DEL in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('', 1)$$,
       '22023', 'idempotency key must not be empty', 'post_pending: empty key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending(E'p\n', 1)$$,
       '22023', 'idempotency key must not contain control characters', 'post_pending: control character in key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending(repeat('v', 256), 1)$$,
       '22023', 'idempotency key is too long', 'void_pending: 256-byte key');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending('', 1)$$,
       '22023', 'idempotency key must not be empty', 'void_pending: empty key');

-- ---------------------------------------------------------------------------
-- account codes: invalid and hostile strings: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', '', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: empty from_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e.alice', '', 1)$$,
       '22023', 'invalid account code in to_account', 'transfer: empty to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', repeat('a', 65), 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: 65-character from_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e.alice', repeat('a', 65), 1)$$,
       '22023', 'invalid account code in to_account', 'transfer: 65-character to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', '''; DROP TABLE fintx.accounts; --', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: SQL injection as from_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e.alice', 'e.bob'' OR ''1''=''1', 1)$$,
       '22023', 'invalid account code in to_account', 'transfer: quote injection as to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e alice', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: space in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'ålice', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: non-ASCII letter in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'е.alice', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: Cyrillic homoglyph in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', E'e.alice\n', 'e.bob', 1)$$,
       '22023', 'invalid account code in from_account', 'transfer: trailing newline in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e.alice', 'e.%', 1)$$,
       '22023', 'invalid account code in to_account', 'transfer: LIKE wildcard in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-c', 'e.alice', 'e.bob;', 1)$$,
       '22023', 'invalid account code in to_account', 'transfer: semicolon in account code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('', 'EUR')$$,
       '22023', 'invalid account code', 'open_account: empty code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account(repeat('a', 65), 'EUR')$$,
       '22023', 'invalid account code', 'open_account: 65-character code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('''; DROP TABLE fintx.accounts; --', 'EUR')$$,
       '22023', 'invalid account code', 'open_account: SQL injection as code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('kønto', 'EUR')$$,
       '22023', 'invalid account code', 'open_account: unicode code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account(E'a\tb', 'EUR')$$,
       '22023', 'invalid account code', 'open_account: control character in code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('x y')$$,
       '22023', 'invalid account code', 'close_account: invalid code');
SELECT is(pg_temp.error_of($$SELECT fintx.open_account(repeat('a', 65), 'EUR')$$),
          '22023|invalid account code|Account codes are 1 to 64 characters from A-Z, a-z, 0-9 and _ . : / @ -.|',
          'invalid code: the detail states the rule');

-- ---------------------------------------------------------------------------
-- unknown accounts: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-u', 'e.nobody', 'e.bob', 1)$$,
       '22023', 'account "e.nobody" does not exist', 'transfer: unknown from_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-u', 'e.alice', 'e.nobody', 1)$$,
       '22023', 'account "e.nobody" does not exist', 'transfer: unknown to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-u', 'e.ghost1', 'e.ghost2', 1)$$,
       '22023', 'account "e.ghost1" does not exist', 'transfer: both unknown, from_account reported');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-u', 'E.ALICE', 'e.bob', 1)$$,
       '22023', 'account "E.ALICE" does not exist', 'transfer: account codes are case-sensitive');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-u', 'e.alice', '../e.bob', 1)$$,
       '22023', 'account "../e.bob" does not exist', 'transfer: path-like code is only a code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('e.nobody')$$,
       '22023', 'account "e.nobody" does not exist', 'close_account: unknown account');

-- ---------------------------------------------------------------------------
-- currencies: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'eur')$$,
       '22023', 'unknown currency "eur"', 'open_account: lowercase eur');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'XYZ')$$,
       '22023', 'unknown currency "XYZ"', 'open_account: unknown code XYZ');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'XAU')$$,
       '22023', 'unknown currency "XAU"', 'open_account: XAU has no minor unit and is not listed');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'EURO')$$,
       '22023', 'unknown currency "EURO"', 'open_account: four letters');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', ' EUR')$$,
       '22023', 'unknown currency " EUR"', 'open_account: leading space');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', '')$$,
       '22023', 'unknown currency ""', 'open_account: empty currency');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'EUR''; DROP TABLE fintx.accounts; --')$$,
       '22023', 'unknown currency "EUR''; DROP TABLE..."', 'open_account: injection as currency (echo clipped to 16 bytes, marked with ...)');
SELECT is(pg_temp.error_of($$SELECT fintx.open_account('e.x', 'eur')$$),
          '22023|unknown currency "eur"||Use an ISO 4217 alphabetic code listed in fintx.currencies, such as "EUR".',
          'unknown currency: the hint names the table');

-- ---------------------------------------------------------------------------
-- duplicate account code: 23505
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.alice', 'EUR')$$,
       '23505', 'account "e.alice" already exists', 'open_account: duplicate code');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.alice', 'USD', true, false, '{"x": 1}')$$,
       '23505', 'account "e.alice" already exists', 'open_account: duplicate code with other attributes');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.closed', 'EUR')$$,
       '23505', 'account "e.closed" already exists', 'open_account: the code of a closed account stays taken');

-- ---------------------------------------------------------------------------
-- amounts: zero and negative: 22003
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-a', 'e.alice', 'e.bob', 0)$$,
       '22003', 'amount must be greater than zero', 'transfer: zero amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-a', 'e.alice', 'e.bob', -1)$$,
       '22003', 'amount must be greater than zero', 'transfer: negative amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-a', 'e.alice', 'e.bob', '-9223372036854775808'::bigint)$$,
       '22003', 'amount must be greater than zero', 'transfer: minimum bigint amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-a', 'e.bob', 'e.alice', -50)$$,
       '22003', 'amount must be greater than zero', 'transfer: a negative amount cannot reverse direction');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-a', 'e.alice', 'e.bob', 0, pending => true)$$,
       '22003', 'amount must be greater than zero', 'transfer: zero pending amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('e-a', 1, 0)$$,
       '22003', 'amount must be greater than zero', 'post_pending: zero amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('e-a', 1, -5)$$,
       '22003', 'amount must be greater than zero', 'post_pending: negative amount');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-a', 'e.alice', 'e.bob', -7)$$),
          '22003|amount must be greater than zero|The amount given was -7.|',
          'non-positive amount: the detail echoes the amount');

-- ---------------------------------------------------------------------------
-- balance overflow near 9223372036854775807: 22003
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-o', 'e.world', 'e.ovdst', 1)$$,
       '22003', 'balance of account "e.ovdst" would be out of range', 'credit beyond 9223372036854775807');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-o', 'e.ovsrc', 'e.bob', 1)$$,
       '22003', 'balance of account "e.ovsrc" would be out of range', 'debit counter beyond 9223372036854775807');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-o', 'e.world', 'e.alice', 9223372036854775807)$$,
       '22003', 'balance of account "e.world" would be out of range', 'maximum amount from an account with debits');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-o', 'e.world', 'e.alice', 9223372036854775807, pending => true)$$,
       '22003', 'balance of account "e.world" would be out of range', 'a hold whose available balance would be out of range');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-o', 'e.ovsrc', 'e.bob', 2, pending => true)$$,
       '22003', 'balance of account "e.ovsrc" would be out of range', 'available balance below -9223372036854775808');
SELECT * FROM pg_temp.rejects(
       $$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "e-ob1", "from_account": "e.ovdst", "to_account": "e.bob", "amount": 1},
                                              {"idempotency_key": "e-ob2", "from_account": "e.world", "to_account": "e.ovdst", "amount": 2}]')$$,
       '22003', 'balance of account "e.ovdst" would be out of range', 'batch: overflow in a later element undoes the earlier one');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-o', 'e.world', 'e.ovdst', 5)$$),
          '22003|balance of account "e.ovdst" would be out of range|Adding 5 overflows a 64-bit counter of the account.|',
          'overflow: the detail names the amount');

-- ---------------------------------------------------------------------------
-- self transfer and currency mismatch: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-s', 'e.alice', 'e.alice', 1)$$,
       '22023', 'cannot transfer from account "e.alice" to itself', 'transfer: self transfer');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-s', 'e.nobody', 'e.nobody', 1)$$,
       '22023', 'cannot transfer from account "e.nobody" to itself', 'transfer: self transfer is refused before lookup');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-s', 'e.alice', 'e.alice', 1, pending => true)$$,
       '22023', 'cannot transfer from account "e.alice" to itself', 'transfer: pending self transfer');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-m', 'e.alice', 'e.usd', 1)$$,
       '22023', 'currency mismatch between accounts "e.alice" and "e.usd"', 'transfer: EUR to USD');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-m', 'e.usd', 'e.alice', 1)$$,
       '22023', 'currency mismatch between accounts "e.usd" and "e.alice"', 'transfer: USD to EUR');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-m', 'e.alice', 'e.usd', 1, pending => true)$$,
       '22023', 'currency mismatch between accounts "e.alice" and "e.usd"', 'transfer: pending EUR to USD');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-m', 'e.alice', 'e.usd', 1)$$),
          '22023|currency mismatch between accounts "e.alice" and "e.usd"|Account "e.alice" holds EUR; account "e.usd" holds USD.|',
          'currency mismatch: the detail names both currencies');

-- ---------------------------------------------------------------------------
-- closed accounts: 55000
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-x', 'e.alice', 'e.closed', 1)$$,
       '55000', 'account "e.closed" is closed', 'transfer to a closed account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-x', 'e.closed', 'e.alice', 1)$$,
       '55000', 'account "e.closed" is closed', 'transfer from a closed account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-x', 'e.alice', 'e.closed', 1, pending => true)$$,
       '55000', 'account "e.closed" is closed', 'hold to a closed account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('e.closed')$$,
       '55000', 'account "e.closed" is already closed', 'close_account twice');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('e.alice')$$,
       '55000', 'account "e.alice" has open holds', 'close_account with an open hold (debit side)');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('e.bob')$$,
       '55000', 'account "e.bob" has open holds', 'close_account with an open hold (credit side)');
SELECT * FROM pg_temp.rejects($$SELECT fintx.close_account('e.world')$$,
       '55000', 'account "e.world" has a nonzero balance', 'close_account with a nonzero balance');

-- ---------------------------------------------------------------------------
-- insufficient funds: FX001; credit limit (allow_positive = false): FX002
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.alice', 'e.bob', 886)$$,
       'FX001', 'insufficient funds in account "e.alice"', 'one more than available (held funds are not available)');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.alice', 'e.bob', 886, pending => true)$$,
       'FX001', 'insufficient funds in account "e.alice"', 'a hold larger than available');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.bob', 'e.alice', 66)$$,
       'FX001', 'insufficient funds in account "e.bob"', 'pending credits cannot be spent');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.carol', 'e.bob', 1)$$,
       'FX001', 'insufficient funds in account "e.carol"', 'an emptied account cannot pay');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.cap', 'e.bob', 1)$$,
       'FX001', 'insufficient funds in account "e.cap"', 'a fresh account cannot pay');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.cap', 'e.bob', 9223372036854775807)$$,
       'FX001', 'insufficient funds in account "e.cap"', 'maximum amount from an empty account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-f', 'e.alice', 'e.bob', 9223372036854775807)$$,
       '22003', 'balance of account "e.alice" would be out of range', 'maximum amount from an account with debits overflows its debit counter');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-f', 'e.alice', 'e.bob', 886)$$),
          'FX001|insufficient funds in account "e.alice"|The available balance is 885; the transfer needs 886.|',
          'insufficient funds: the detail states available and needed');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-p', 'e.world', 'e.cap', 1)$$,
       'FX002', 'credit would give account "e.cap" a positive balance', 'credit to an allow_positive = false account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-p', 'e.alice', 'e.cap', 1, pending => true)$$,
       'FX002', 'credit would give account "e.cap" a positive balance', 'pending credit to an allow_positive = false account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-p', 'e.alice', 'e.cap2', 6)$$,
       'FX002', 'credit would give account "e.cap2" a positive balance', 'allow_positive = false: repaying more than owed');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-p', 'e.alice', 'e.cap2', 6, pending => true)$$,
       'FX002', 'credit would give account "e.cap2" a positive balance', 'allow_positive = false: a pending repayment of more than owed');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-p', 'e.world', 'e.cap', 3)$$),
          'FX002|credit would give account "e.cap" a positive balance|The account was opened with allow_positive = false; its posted debits are 0 and its credits, posted and pending, would be 3.|',
          'credit limit: the detail states debits and credits');
SELECT is(pg_temp.error_of($q$DO $do$ BEGIN
              PERFORM fintx.transfer('e-p-hold', 'e.world', 'e.cap2', 3, pending => true);
              PERFORM fintx.transfer('e-p-post', 'e.world', 'e.cap2', 3);
          END $do$$q$),
          'FX002|credit would give account "e.cap2" a positive balance|The account was opened with allow_positive = false; its posted debits are 5 and its credits, posted and pending, would be 6.|',
          'credit limit: the detail of a posted credit counts the pending credits too (3 held + 3 posted > 5 owed)');

-- ---------------------------------------------------------------------------
-- metadata: not an object, too large: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, '[]')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata empty array');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, '[{"a": 1}]')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata array of objects');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, '42')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata number');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, '"text"')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata string');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, 'true')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata boolean');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, 'null')$$,
       '22023', 'metadata must be a JSON object', 'transfer: metadata JSON null');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, jsonb_build_object('b', repeat('x', 65520)))$$,
       '22023', 'metadata is too large', 'transfer: metadata of 65,537 bytes');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-md', 'e.alice', 'e.bob', 1, jsonb_build_object('blob', repeat('x', 70000)))$$,
       '22023', 'metadata is too large', 'transfer: metadata over 64 KiB');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.md', 'EUR', metadata => '[]')$$,
       '22023', 'metadata must be a JSON object', 'open_account: metadata array');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.md', 'EUR', metadata => '1')$$,
       '22023', 'metadata must be a JSON object', 'open_account: metadata scalar');
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.md', 'EUR', metadata => jsonb_build_object('blob', repeat('x', 70000)))$$,
       '22023', 'metadata is too large', 'open_account: metadata over 64 KiB');

-- ---------------------------------------------------------------------------
-- timeouts: only with pending, only positive: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, timeout => '1 hour')$$,
       '22023', 'timeout is only valid for a pending transfer', 'transfer: timeout without pending');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => false, timeout => '1 second')$$,
       '22023', 'timeout is only valid for a pending transfer', 'transfer: timeout with pending => false');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '0 seconds')$$,
       '22023', 'timeout must be a positive interval', 'transfer: zero timeout');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '-1 second')$$,
       '22023', 'timeout must be a positive interval', 'transfer: negative timeout');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '1 month -31 days')$$,
       '22023', 'timeout must be a positive interval', 'transfer: timeout that is negative in total');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '-1 microsecond')$$,
       '22023', 'timeout must be a positive interval', 'transfer: -1 microsecond timeout');
-- positive when a month counts 30 days, 23 hours in the past by the calendar (4 years hold a 29 February)
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '-4 years 1460 days 1 hour')$$,
       '22023', 'timeout must be a positive interval', 'transfer: a timeout that ends in the past by the calendar');
SELECT alike(pg_temp.error_of($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '-4 years 1460 days 1 hour')$$),
            '22023|timeout must be a positive interval|now() + timeout is %, not later than now(): months and days count by the calendar.|',
            'transfer: the detail says when the timeout would end and why');
-- documented in docs/errors.md: PostgreSQL's own 22008 when now() + timeout is not a timestamp
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-t', 'e.alice', 'e.bob', 1, pending => true, timeout => '300000 years')$$,
       '22008', 'timestamp out of range', 'transfer: a timeout beyond the timestamptz range');

-- ---------------------------------------------------------------------------
-- key reuse with a different request: 23505 (same key, same request replays)
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 11, '{"ref": "A-1"}')$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: different amount');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.carol', 10, '{"ref": "A-1"}')$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: different to_account');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.bob', 'e.alice', 10, '{"ref": "A-1"}')$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: reversed direction');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 10, '{"ref": "A-2"}')$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: different metadata');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 10)$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: metadata omitted');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 10, '{"ref": "A-1"}', true)$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: pending instead of posted');
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-hold', 'e.alice', 'e.bob', 100, pending => true, timeout => '1 day')$$,
       '23505', 'idempotency key "e-hold" was already used for a different request', 'reuse: timeout added');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'e-used',
                                     (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'e-hold')),
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: a transfer key for post_pending');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'e-used',
                                     (SELECT transfer_id FROM fintx.idempotency_keys WHERE idempotency_key = 'e-hold')),
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: a transfer key for void_pending');
SELECT * FROM pg_temp.rejects(
       $$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "e-used", "from_account": "e.alice", "to_account": "e.bob", "amount": 12}]')$$,
       '23505', 'idempotency key "e-used" was already used for a different request', 'reuse: in a batch');
SELECT is(pg_temp.error_of($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 11)$$),
          '23505|idempotency key "e-used" was already used for a different request|Key "e-used" identifies an earlier request whose fingerprint differs from this one.|Use a new idempotency key for a new request, or resend the original request unchanged.',
          'key reuse: detail and hint');
SELECT is((fintx.transfer('e-used', 'e.alice', 'e.bob', 10, '{"ref": "A-1"}')).replayed, true,
          'the identical request with the same key replays');
SELECT is(pg_temp.ledger_state(), (SELECT state FROM baseline), 'a replay changes nothing');
-- validation comes before the journal: an invalid request never reaches a stored key
SELECT * FROM pg_temp.rejects($$SELECT fintx.transfer('e-used', 'e.alice', 'e.bob', 0, '{"ref": "A-1"}')$$,
       '22003', 'amount must be greater than zero', 'a reused key with an invalid amount reports the amount');

-- ---------------------------------------------------------------------------
-- expire_pending bounds: 22023
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.expire_pending(0)$$,
       '22023', 'max_holds must be between 1 and 10000', 'expire_pending(0)');
SELECT * FROM pg_temp.rejects($$SELECT fintx.expire_pending(-1)$$,
       '22023', 'max_holds must be between 1 and 10000', 'expire_pending(-1)');
SELECT * FROM pg_temp.rejects($$SELECT fintx.expire_pending(10001)$$,
       '22023', 'max_holds must be between 1 and 10000', 'expire_pending(10001)');

-- ---------------------------------------------------------------------------
-- after all of the above
-- ---------------------------------------------------------------------------
SELECT results_eq(
    $$SELECT code COLLATE "default", posted, pending_debits, pending_credits, available FROM fintx.account_balances
       WHERE code IN ('e.alice', 'e.bob', 'e.carol', 'e.cap', 'e.closed', 'e.usd') ORDER BY code$$,
    $$VALUES ('e.alice'::text, 985::bigint, 100::bigint, 0::bigint, 885::bigint),
             ('e.bob', 65, 0, 100, 65),
             ('e.cap', 0, 0, 0, 0),
             ('e.carol', 0, 0, 0, 0),
             ('e.closed', 0, 0, 0, 0),
             ('e.usd', 0, 0, 0, 0)$$,
    'balances after every rejected request are the balances before them');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds), 1, 'still exactly one open hold');
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'the ledger reconciles after every rejected request');

-- ---------------------------------------------------------------------------
-- regressions: defects found by this suite, fixed
-- ---------------------------------------------------------------------------
SELECT * FROM pg_temp.rejects($$SELECT fintx.open_account('e.x', 'a' || repeat('é', 10))$$,
       '22023', NULL, 'open_account: non-ASCII currency is 22023');
SELECT lives_ok($$SELECT convert_to(pg_temp.error_of($q$SELECT fintx.open_account('e.x', 'a' || repeat('é', 10))$q$), 'UTF8')$$,
                'the error message for a non-ASCII unknown currency is valid UTF-8');

-- docs/ledger.md: "Since the hold already reserved the amount, posting cannot fail". A hold on
-- a payee whose credits_posted is at the bigint limit must therefore be refused up front, or
-- be postable; today it is accepted and every post of it fails with 22003.
CREATE FUNCTION pg_temp.hold_is_honoured() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    hold bigint;
BEGIN
    BEGIN
        hold := (fintx.transfer('e-unpostable', 'e.world', 'e.ovdst', 1, pending => true)).transfer_id;
    EXCEPTION WHEN SQLSTATE '22003' THEN
        RETURN true;            -- refused up front: fine
    END;
    BEGIN
        PERFORM fintx.post_pending('e-unpostable-p', hold);
    EXCEPTION WHEN OTHERS THEN
        RETURN false;           -- accepted but not postable
    END;
    RETURN true;
END
$$;
SELECT ok(pg_temp.hold_is_honoured(), 'a hold is either refused (22003) or can be posted');

SELECT * FROM finish();
ROLLBACK;

-- 004_holds_and_batch: two-phase transfers (reserve, post fully or partly, void, expire,
-- at most one resolution), transfer_batch (atomic, ordered, deduplicated, strict JSON),
-- and reconcile() on a clean ledger and on a ledger tampered with behind the API.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(266);

-- A fingerprint of the whole ledger but the probe's accounts and rows (below): counts, and a
-- hash over every row of every table.
CREATE FUNCTION pg_temp.ledger_state() RETURNS text LANGUAGE sql AS $$
WITH a AS (SELECT * FROM fintx.accounts WHERE code NOT LIKE 'probe.%'),
     t AS (SELECT * FROM fintx.transfers WHERE from_account IN (SELECT id FROM a)),
     j AS (SELECT * FROM fintx.idempotency_keys WHERE idempotency_key NOT LIKE 'probe-%')
SELECT format('%s accounts, %s transfers, %s keys, %s holds, hash %s',
       (SELECT count(*) FROM a), (SELECT count(*) FROM t),
       (SELECT count(*) FROM j), (SELECT count(*) FROM fintx.pending_holds),
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
    PERFORM pg_temp.snapshot();
    RETURN NEXT throws_ok(q, code, msg, descr);
    RETURN NEXT is(pg_temp.probe(), (SELECT state FROM baseline) || ' + probe rows 1,1,1,1,0',
                   descr || ' - nothing left behind: the next transfer writes only its own rows');
END
$$;
-- 'SQLSTATE|message|detail|hint' of a failing statement (NULL if it succeeds), and its context.
CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text; hin text; ctx text;
BEGIN
    EXECUTE q;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL,
                            hin = PG_EXCEPTION_HINT, ctx = PG_EXCEPTION_CONTEXT;
    RETURN format('%s|%s|%s|%s', st, msg, det, hin);
END
$$;
CREATE FUNCTION pg_temp.error_context(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    ctx text;
BEGIN
    EXECUTE q;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS ctx = PG_EXCEPTION_CONTEXT;
    RETURN ctx;
END
$$;
-- balances of one account as 'posted/pending_debits/pending_credits/available'
CREATE FUNCTION pg_temp.bal(c text) RETURNS text LANGUAGE sql AS $$
    SELECT format('%s/%s/%s/%s', posted, pending_debits, pending_credits, available)
      FROM fintx.account_balances WHERE code = c
$$;

-- ---------------------------------------------------------------------------
-- setup
-- ---------------------------------------------------------------------------
-- the probe's accounts (pg_temp.probe)
SELECT fintx.open_account('probe.from', 'EUR', true, true) IS NOT NULL AS ok \gset
SELECT fintx.open_account('probe.to', 'EUR') IS NOT NULL AS ok \gset
SELECT fintx.open_account('h.world', 'EUR', true, false) AS world_id \gset
SELECT fintx.open_account('h.alice', 'EUR') AS alice_id \gset
SELECT fintx.open_account('h.bob', 'EUR') AS bob_id \gset
SELECT fintx.open_account('h.carol', 'EUR') AS carol_id \gset
SELECT fintx.open_account('h.dave', 'EUR') AS dave_id \gset
SELECT fintx.open_account('h.usd', 'USD') AS usd_id \gset
SELECT fintx.open_account('h.cap', 'EUR', false, false) AS cap_id \gset
SELECT transfer_id AS fund_id FROM fintx.transfer('h-fund', 'h.world', 'h.alice', 10000) \gset
SELECT is(pg_temp.bal('h.alice'), '10000/0/0/10000', 'h.alice funded with 10000');

-- ===========================================================================
-- two-phase transfers
-- ===========================================================================
-- a hold reserves: available drops, posted does not move
SELECT r.* FROM fintx.transfer('h-1', 'h.alice', 'h.bob', 1000, pending => true) AS r \gset h1_
SELECT is(:'h1_status'::text, 'pending', 'pending => true returns status pending');
SELECT is(:'h1_replayed'::boolean, false, 'a new hold is not replayed');
SELECT is(:h1_from_balance::bigint, 10000::bigint, 'a hold leaves the posted balance of the payer (from_balance)');
SELECT is(:h1_to_balance::bigint, 0::bigint, 'a hold leaves the posted balance of the payee (to_balance)');
SELECT is(pg_temp.bal('h.alice'), '10000/1000/0/9000', 'hold: payer posted unchanged, 1000 pending debit, available 9000');
SELECT is(pg_temp.bal('h.bob'), '0/0/1000/0', 'hold: payee posted unchanged, 1000 pending credit, nothing available');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds WHERE transfer_id = :h1_transfer_id), 1, 'the hold is tracked as open');
SELECT results_eq(format('SELECT from_account COLLATE "default", to_account COLLATE "default", amount FROM fintx.open_holds WHERE transfer_id = %s', :h1_transfer_id),
                  $$VALUES ('h.alice'::text, 'h.bob'::text, 1000::bigint)$$, 'open_holds lists the hold');
SELECT throws_ok($$SELECT fintx.transfer('h-1x', 'h.alice', 'h.carol', 9001)$$, 'FX001',
                 'insufficient funds in account "h.alice"', 'reserved funds cannot be spent twice');
SELECT throws_ok($$SELECT fintx.transfer('h-1y', 'h.bob', 'h.carol', 1)$$, 'FX001',
                 'insufficient funds in account "h.bob"', 'pending credits cannot be spent before posting');

-- full post
SELECT r.* FROM fintx.post_pending('h-1p', :h1_transfer_id) AS r \gset p1_
SELECT is(:'p1_status'::text, 'posted', 'post_pending posts');
SELECT isnt(:p1_transfer_id::bigint, :h1_transfer_id::bigint, 'the posting is a new transfer row');
SELECT is(:p1_from_balance::bigint, 9000::bigint, 'full post: payer posted balance 9000');
SELECT is(:p1_to_balance::bigint, 1000::bigint, 'full post: payee posted balance 1000');
SELECT is(pg_temp.bal('h.alice'), '9000/0/0/9000', 'full post: nothing pending on the payer');
SELECT is(pg_temp.bal('h.bob'), '1000/0/0/1000', 'full post: nothing pending on the payee, 1000 available');
SELECT row_eq(format('SELECT status, amount, pending_id FROM fintx.transfers WHERE id = %s', :p1_transfer_id),
              ROW('posted'::text, 1000::bigint, :h1_transfer_id::bigint), 'the posting row: posted, full amount, points at the hold');
SELECT is((SELECT status FROM fintx.transfers WHERE id = :h1_transfer_id), 'pending', 'the hold row itself is immutable');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds WHERE transfer_id = :h1_transfer_id), 0, 'a posted hold is no longer open');

-- partial post releases the rest
SELECT transfer_id AS h2 FROM fintx.transfer('h-2', 'h.alice', 'h.bob', 500, pending => true) \gset
SELECT is(pg_temp.bal('h.alice'), '9000/500/0/8500', 'second hold of 500');
SELECT r.* FROM fintx.post_pending('h-2p', :h2, 200) AS r \gset p2_
SELECT is(:'p2_status'::text, 'posted', 'partial post posts');
SELECT is(pg_temp.bal('h.alice'), '8800/0/0/8800', 'partial post of 200: 200 debited, 300 released');
SELECT is(pg_temp.bal('h.bob'), '1200/0/0/1200', 'partial post of 200: 200 credited, nothing pending');
SELECT is((SELECT amount FROM fintx.transfers WHERE id = :p2_transfer_id), 200::bigint, 'the posting row records 200');

-- void
SELECT transfer_id AS h3 FROM fintx.transfer('h-3', 'h.alice', 'h.carol', 300, pending => true) \gset
SELECT is(pg_temp.bal('h.carol'), '0/0/300/0', 'third hold of 300 to h.carol');
SELECT r.* FROM fintx.void_pending('h-3v', :h3) AS r \gset v3_
SELECT is(:'v3_status'::text, 'voided', 'void_pending voids');
SELECT is(:v3_from_balance::bigint, 8800::bigint, 'void: payer posted balance unchanged');
SELECT is(:v3_to_balance::bigint, 0::bigint, 'void: payee posted balance unchanged');
SELECT is(pg_temp.bal('h.alice'), '8800/0/0/8800', 'void: the payer gets its 300 back');
SELECT is(pg_temp.bal('h.carol'), '0/0/0/0', 'void: the payee''s pending credit is gone');
SELECT row_eq(format('SELECT status, amount, pending_id FROM fintx.transfers WHERE id = %s', :v3_transfer_id),
              ROW('voided'::text, 300::bigint, :h3::bigint), 'the void row: voided, the held amount, points at the hold');

-- a hold is resolved at most once: 55000, in every order
SELECT pg_temp.snapshot();
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-1p2', :h1_transfer_id),
       '55000', format('pending transfer %s is already resolved', :h1_transfer_id), 'post after post');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-1v', :h1_transfer_id),
       '55000', format('pending transfer %s is already resolved', :h1_transfer_id), 'void after post');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-3p', :h3),
       '55000', format('pending transfer %s is already resolved', :h3), 'post after void');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-3v2', :h3),
       '55000', format('pending transfer %s is already resolved', :h3), 'void after void');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s, 100)', 'h-2p2', :h2),
       '55000', format('pending transfer %s is already resolved', :h2), 'the released rest of a partial post cannot be posted later');
SELECT is(pg_temp.error_of(format('SELECT fintx.void_pending(%L, %s)', 'h-1v', :h1_transfer_id)),
          format('55000|pending transfer %s is already resolved|The hold was already posted; a hold is posted, voided or expired at most once.|',
                 :h1_transfer_id),
          'already resolved: the detail says how (posted)');
SELECT is(pg_temp.error_of(format('SELECT fintx.post_pending(%L, %s)', 'h-3p', :h3)),
          format('55000|pending transfer %s is already resolved|The hold was already voided; a hold is posted, voided or expired at most once.|', :h3),
          'already resolved: the detail says how (voided)');

-- posting more than held: 22003, and the hold stays open
SELECT transfer_id AS h4 FROM fintx.transfer('h-4', 'h.alice', 'h.bob', 400, pending => true) \gset
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s, 401)', 'h-4p', :h4),
       '22003', 'amount exceeds the pending amount', 'post more than held');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s, 9223372036854775807)', 'h-4p', :h4),
       '22003', 'amount exceeds the pending amount', 'post the maximum bigint against a small hold');
SELECT is(pg_temp.error_of(format('SELECT fintx.post_pending(%L, %s, 401)', 'h-4p', :h4)),
          format('22003|amount exceeds the pending amount|Transfer %s holds 400; 401 cannot be posted.|', :h4),
          'post more than held: the detail names hold and amount');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds WHERE transfer_id = :h4), 1, 'the hold survives a rejected post');
SELECT is((fintx.post_pending('h-4p', :h4, 400)).status, 'posted', 'posting exactly the held amount works');
SELECT is(pg_temp.bal('h.alice'), '8400/0/0/8400', 'after posting 400');

-- not a hold, unknown ids: 22023
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-np', :fund_id),
       '22023', format('transfer %s is not a pending transfer', :fund_id), 'post a posted (non-pending) transfer');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-np', :fund_id),
       '22023', format('transfer %s is not a pending transfer', :fund_id), 'void a posted (non-pending) transfer');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-np', :p1_transfer_id),
       '22023', format('transfer %s is not a pending transfer', :p1_transfer_id), 'post a posting row');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-np', :v3_transfer_id),
       '22023', format('transfer %s is not a pending transfer', :v3_transfer_id), 'void a void row');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('h-unk', 999999999)$$,
       '22023', 'transfer 999999999 does not exist', 'post an unknown transfer id');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending('h-unk', 999999999)$$,
       '22023', 'transfer 999999999 does not exist', 'void an unknown transfer id');
SELECT * FROM pg_temp.rejects($$SELECT fintx.post_pending('h-unk', -1)$$,
       '22023', 'transfer -1 does not exist', 'post a negative transfer id');
SELECT * FROM pg_temp.rejects($$SELECT fintx.void_pending('h-unk', 0)$$,
       '22023', 'transfer 0 does not exist', 'void transfer id 0');
SELECT is(pg_temp.error_of(format('SELECT fintx.post_pending(%L, %s)', 'h-np', :fund_id)),
          format('22023|transfer %s is not a pending transfer||Only a transfer made with pending => true can be posted or voided.', :fund_id),
          'not a pending transfer: the hint explains');

-- replays of post/void keys return the original result, replayed = true
SELECT r.* FROM fintx.post_pending('h-1p', :h1_transfer_id) AS r \gset rp1_
SELECT is(:rp1_transfer_id::bigint, :p1_transfer_id::bigint, 'replayed post: same transfer id');
SELECT is(:'rp1_status'::text, 'posted', 'replayed post: same status');
SELECT is(:'rp1_replayed'::boolean, true, 'replayed post: replayed = true');
SELECT is(:rp1_from_balance::bigint, 9000::bigint, 'replayed post: the original from_balance, not today''s');
SELECT is(:rp1_to_balance::bigint, 1000::bigint, 'replayed post: the original to_balance');
SELECT is(:'rp1_created_at'::timestamptz, :'p1_created_at'::timestamptz, 'replayed post: the original created_at');
SELECT r.* FROM fintx.void_pending('h-3v', :h3) AS r \gset rv3_
SELECT is(:rv3_transfer_id::bigint, :v3_transfer_id::bigint, 'replayed void: same transfer id');
SELECT is(:'rv3_status'::text, 'voided', 'replayed void: same status');
SELECT is(:'rv3_replayed'::boolean, true, 'replayed void: replayed = true');
SELECT is((fintx.post_pending('h-2p', :h2, 200)).replayed, true, 'replayed partial post with the same amount');
SELECT r.* FROM fintx.transfer('h-1', 'h.alice', 'h.bob', 1000, pending => true) AS r \gset rh1_
SELECT is(:'rh1_status'::text, 'pending', 'replaying the hold''s own key returns its original result (pending)');
SELECT is(:'rh1_replayed'::boolean, true, 'replaying the hold''s own key: replayed = true');
SELECT is(:rh1_transfer_id::bigint, :h1_transfer_id::bigint, 'replaying the hold''s own key: same id');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-2p', :h2),
       '23505', 'idempotency key "h-2p" was already used for a different request', 'post key replayed without its amount');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s, 199)', 'h-2p', :h2),
       '23505', 'idempotency key "h-2p" was already used for a different request', 'post key replayed with another amount');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-1p', :h1_transfer_id),
       '23505', 'idempotency key "h-1p" was already used for a different request', 'post key reused for a void');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-3v', :h2),
       '23505', 'idempotency key "h-3v" was already used for a different request', 'void key reused for another hold');

-- expiry: expire_pending() releases holds whose timeout passed
SELECT transfer_id AS h5 FROM fintx.transfer('h-5', 'h.alice', 'h.dave', 50, pending => true, timeout => '1 millisecond') \gset
SELECT transfer_id AS h6 FROM fintx.transfer('h-6', 'h.alice', 'h.dave', 60, pending => true, timeout => '1 hour') \gset
SELECT transfer_id AS h7 FROM fintx.transfer('h-7', 'h.alice', 'h.dave', 70, pending => true, timeout => '1 millisecond') \gset
SELECT transfer_id AS h8 FROM fintx.transfer('h-8', 'h.alice', 'h.dave', 80, pending => true, timeout => '2 milliseconds') \gset
SELECT is(pg_temp.bal('h.alice'), '8400/260/0/8140', 'four holds with timeouts reserve 260');
SELECT ok((SELECT timeout_at >= now() + interval '1 millisecond' AND timeout_at <= clock_timestamp() + interval '1 millisecond'
             FROM fintx.pending_holds WHERE transfer_id = :h5),
          'a 1 ms timeout is set relative to the clock');
SELECT 1 AS slept FROM pg_sleep(0.05) \gset
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-7p', :h7),
       '55000', format('pending transfer %s has expired', :h7), 'a hold past its timeout cannot be posted, even before expiry runs');
SELECT is(fintx.expire_pending(1), 1, 'expire_pending(1) releases one expired hold');
SELECT is(fintx.expire_pending(), 2, 'expire_pending() releases the other two expired holds in one call');
SELECT is(fintx.expire_pending(), 0, 'nothing is left to expire; the 1 hour hold is not touched');
SELECT is(pg_temp.bal('h.alice'), '8400/60/0/8340', 'expired holds release their reservation; only the 1 hour hold remains');
SELECT is(pg_temp.bal('h.dave'), '0/0/60/0', 'the payee keeps only the pending credit of the open hold');
SELECT results_eq(format('SELECT pending_id, status, amount, principal COLLATE "default" FROM fintx.transfers WHERE pending_id IN (%s, %s, %s) ORDER BY pending_id', :h5, :h7, :h8),
                  format('VALUES (%s::bigint, %L::text, 50::bigint, %L::text), (%s, %L, 70, %L), (%s, %L, 80, %L)',
                         :h5, 'expired', 'pg_fintx', :h7, 'expired', 'pg_fintx', :h8, 'expired', 'pg_fintx'),
                  'each expired hold gets an expired row by the system principal');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds WHERE transfer_id IN (:h5, :h7, :h8)), 0, 'expired holds are no longer open');
SELECT is((SELECT count(*)::int FROM fintx.pending_holds WHERE transfer_id = :h6), 1, 'the unexpired hold is still open');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.post_pending(%L, %s)', 'h-5p', :h5),
       '55000', format('pending transfer %s is already resolved', :h5), 'posting an expired hold afterwards');
SELECT * FROM pg_temp.rejects(format('SELECT fintx.void_pending(%L, %s)', 'h-5v', :h5),
       '55000', format('pending transfer %s is already resolved', :h5), 'voiding an expired hold afterwards');
SELECT is(pg_temp.error_of(format('SELECT fintx.post_pending(%L, %s)', 'h-5p', :h5)),
          format('55000|pending transfer %s is already resolved|The hold was already expired; a hold is posted, voided or expired at most once.|', :h5),
          'already resolved: the detail says how (expired)');
SELECT is((fintx.post_pending('h-6p', :h6, 10)).status, 'posted', 'the unexpired hold can still be posted (partly)');
SELECT is(pg_temp.bal('h.alice'), '8390/0/0/8390', 'after the last partial post');
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'the two-phase section leaves a consistent ledger');

-- ===========================================================================
-- transfer_batch
-- ===========================================================================
-- results come back in request order, applied in request order
CREATE TEMP TABLE b1 AS
SELECT r.* FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-b-z", "from_account": "h.alice", "to_account": "h.carol", "amount": 1},
      {"idempotency_key": "h-b-a", "from_account": "h.alice", "to_account": "h.carol", "amount": 2},
      {"idempotency_key": "h-b-m", "from_account": "h.carol", "to_account": "h.dave", "amount": 3}]')
  WITH ORDINALITY AS r(transfer_id, status, replayed, from_balance, to_balance, entry_hash, created_at, n);
SELECT results_eq(
    $$SELECT b.n::int, j.idempotency_key COLLATE "default", t.amount, b.status, b.replayed, b.from_balance, b.to_balance
        FROM b1 b JOIN fintx.transfers t ON t.id = b.transfer_id
        JOIN fintx.idempotency_keys j ON j.transfer_id = b.transfer_id ORDER BY b.n$$,
    $$VALUES (1, 'h-b-z'::text, 1::bigint, 'posted'::text, false, 8389::bigint, 1::bigint),
             (2, 'h-b-a', 2, 'posted', false, 8387, 3),
             (3, 'h-b-m', 3, 'posted', false, 0, 13)$$,
    'batch results are in request order and balances show sequential application');
SELECT is((SELECT count(DISTINCT transfer_id)::int FROM b1), 3, 'three distinct transfers');
SELECT is((SELECT count(DISTINCT created_at)::int FROM b1), 1, 'one created_at for the whole batch (one transaction)');

-- replay of a whole batch
SELECT results_eq(
    $$SELECT transfer_id, status, replayed, from_balance, to_balance, created_at FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-b-z", "from_account": "h.alice", "to_account": "h.carol", "amount": 1},
      {"idempotency_key": "h-b-a", "from_account": "h.alice", "to_account": "h.carol", "amount": 2},
      {"idempotency_key": "h-b-m", "from_account": "h.carol", "to_account": "h.dave", "amount": 3}]')$$,
    $$SELECT transfer_id, status, true, from_balance, to_balance, created_at FROM b1 ORDER BY n$$,
    'replaying a whole batch returns the original results with replayed = true');
SELECT is(pg_temp.bal('h.alice') || ' ' || pg_temp.bal('h.carol') || ' ' || pg_temp.bal('h.dave'),
          '8387/0/0/8387 0/0/0/0 13/0/0/13', 'the replayed batch moved no money');
-- a batch mixing a replayed key and a new one
SELECT results_eq(
    $$SELECT status, replayed, from_balance, to_balance FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-b-new", "from_account": "h.alice", "to_account": "h.carol", "amount": 5},
      {"idempotency_key": "h-b-a", "from_account": "h.alice", "to_account": "h.carol", "amount": 2}]')$$,
    $$VALUES ('posted'::text, false, 8382::bigint, 5::bigint), ('posted', true, 8387, 3)$$,
    'new keys apply, old keys replay, each in its position');
-- a single transfer() can be replayed through a batch and vice versa
SELECT is((fintx.transfer('h-b-new', 'h.alice', 'h.carol', 5)).replayed, true, 'a batch key replays through transfer()');
SELECT is((SELECT replayed FROM fintx.transfer_batch('[{"idempotency_key": "h-fund", "from_account": "h.world", "to_account": "h.alice", "amount": 10000}]')),
          true, 'a transfer() key replays through a batch');

-- duplicate keys inside one batch
CREATE TEMP TABLE b2 AS
SELECT r.* FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-b-dup", "from_account": "h.alice", "to_account": "h.bob", "amount": 7},
      {"idempotency_key": "h-b-dup", "from_account": "h.alice", "to_account": "h.bob", "amount": 7, "metadata": {}}]')
  WITH ORDINALITY AS r(transfer_id, status, replayed, from_balance, to_balance, entry_hash, created_at, n);
SELECT results_eq($$SELECT n::int, replayed FROM b2 ORDER BY n$$, $$VALUES (1, false), (2, true)$$,
                  'same key, same request twice in a batch: the second is replayed');
SELECT is((SELECT count(DISTINCT transfer_id)::int FROM b2), 1, 'both results name the same transfer');
SELECT is((SELECT count(*)::int FROM fintx.idempotency_keys WHERE idempotency_key = 'h-b-dup'), 1, 'one journal row');
SELECT is(pg_temp.bal('h.alice'), '8375/0/0/8375', 'the money moved once');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-b-dup2", "from_account": "h.alice", "to_account": "h.bob", "amount": 7},
      {"idempotency_key": "h-b-dup2", "from_account": "h.alice", "to_account": "h.bob", "amount": 8}]')$$,
    '23505', 'idempotency key "h-b-dup2" was already used for a different request',
    'same key, different request in one batch');

-- atomic: one bad element and nothing is applied
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-at-2", "from_account": "h.bob", "to_account": "h.carol", "amount": 5},
      {"idempotency_key": "h-at-3", "from_account": "h.carol", "to_account": "h.dave", "amount": 100000}]')$$,
    'FX001', 'insufficient funds in account "h.carol"', 'batch: the last element lacks funds');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-at-2", "from_account": "h.alice", "to_account": "h.nobody", "amount": 5}]')$$,
    '22023', 'account "h.nobody" does not exist', 'batch: an unknown account in the second element');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-at-2", "from_account": "h.alice", "to_account": "h.usd", "amount": 5}]')$$,
    '22023', 'currency mismatch between accounts "h.alice" and "h.usd"', 'batch: a currency mismatch in the second element');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-at-2", "from_account": "h.world", "to_account": "h.cap", "amount": 5}]')$$,
    'FX002', 'credit would give account "h.cap" a positive balance', 'batch: a credit limit in the second element');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-at-2", "from_account": "h.alice", "to_account": "h.bob", "amount": 5, "amout": 5}]')$$,
    '22023', 'unknown field "amout" in transfer request', 'batch: a typo in a field name of the second element');
SELECT * FROM pg_temp.rejects(
    $$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-1", "from_account": "h.alice", "to_account": "h.bob", "amount": 10},
      {"idempotency_key": "h-fund", "from_account": "h.alice", "to_account": "h.bob", "amount": 10}]')$$,
    '23505', 'idempotency key "h-fund" was already used for a different request', 'batch: a reused key in the second element');
SELECT is((fintx.transfer('h-at-1', 'h.alice', 'h.bob', 99)).replayed, false,
          'keys of a rejected batch were never claimed');
SELECT ok(pg_temp.error_context($$SELECT * FROM fintx.transfer_batch(
    '[{"idempotency_key": "h-at-9", "from_account": "h.alice", "to_account": "h.bob", "amount": 1},
      {"idempotency_key": "h-at-10", "from_account": "h.alice", "to_account": "h.bob", "amount": 1},
      {"idempotency_key": "h-at-11", "from_account": "h.alice", "to_account": "h.nobody", "amount": 1}]')$$)
      LIKE '%transfer request at index 2 of the batch%',
   'the error context names the index of the failing element');

-- malformed requests: 22023 / 22003
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('{}')$$,
       '22023', 'requests must be a JSON array of transfer requests', 'batch: an object instead of an array');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1}')$$,
       '22023', 'requests must be a JSON array of transfer requests', 'batch: a single request not wrapped in an array');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('"[]"')$$,
       '22023', 'requests must be a JSON array of transfer requests', 'batch: a JSON string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('42')$$,
       '22023', 'requests must be a JSON array of transfer requests', 'batch: a JSON number');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('null')$$,
       '22023', 'requests must be a JSON array of transfer requests', 'batch: JSON null');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[1]')$$,
       '22023', 'each transfer request must be a JSON object', 'batch: element is a number');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('["h-m"]')$$,
       '22023', 'each transfer request must be a JSON object', 'batch: element is a string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[null]')$$,
       '22023', 'each transfer request must be a JSON object', 'batch: element is null');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1}]]')$$,
       '22023', 'each transfer request must be a JSON object', 'batch: element is a nested array');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1}, 7]')$$,
       '22023', 'each transfer request must be a JSON object', 'batch: a valid element followed by a bad one');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "currency": "EUR"}]')$$,
       '22023', 'unknown field "currency" in transfer request', 'batch: unknown field');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"from_account": "h.alice", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'idempotency_key must not be null', 'batch: missing idempotency_key');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'from_account must not be null', 'batch: missing from_account');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "amount": 1}]')$$,
       '22023', 'to_account must not be null', 'batch: missing to_account');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob"}]')$$,
       '22023', 'amount must not be null', 'batch: missing amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{}]')$$,
       '22023', 'idempotency_key must not be null', 'batch: empty object');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": 17, "from_account": "h.alice", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'field "idempotency_key" must be a string', 'batch: numeric idempotency_key');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": null, "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'field "from_account" must be a string', 'batch: from_account null');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": ["h.bob"], "amount": 1}]')$$,
       '22023', 'field "to_account" must be a string', 'batch: to_account array');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1.5}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: amount 1.5');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": "1.5"}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: amount "1.5"');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": "abc"}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: amount "abc"');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": ""}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: amount ""');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": " 5"}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: amount with a leading space');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": "0x10"}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: hexadecimal amount string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": true}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: boolean amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": null}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: null amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": {"value": 1}}]')$$,
       '22023', 'field "amount" must be an integer number of minor units', 'batch: object amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 9223372036854775808}]')$$,
       '22003', 'bigint out of range', 'batch: amount 2^63 as a number');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": "9223372036854775808"}]')$$,
       '22003', 'value "9223372036854775808" is out of range for type bigint', 'batch: amount 2^63 as a string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1e30}]')$$,
       '22003', 'bigint out of range', 'batch: amount 1e30');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 0}]')$$,
       '22003', 'amount must be greater than zero', 'batch: zero amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": -5}]')$$,
       '22003', 'amount must be greater than zero', 'batch: negative amount');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": "-5"}]')$$,
       '22003', 'amount must be greater than zero', 'batch: negative amount string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "metadata": [1]}]')$$,
       '22023', 'field "metadata" must be a JSON object', 'batch: metadata array');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "metadata": "x"}]')$$,
       '22023', 'field "metadata" must be a JSON object', 'batch: metadata string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": "true"}]')$$,
       '22023', 'field "pending" must be a boolean', 'batch: pending as a string');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": 60}]')$$,
       '22023', 'field "timeout" must be a string', 'batch: timeout as a number');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "timeout": "1 hour"}]')$$,
       '22023', 'timeout is only valid for a pending transfer', 'batch: timeout without pending');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "-1 hour"}]')$$,
       '22023', 'timeout must be a positive interval', 'batch: negative timeout');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m0", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "1 hour"}, {"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "-4 years 1460 days 1 hour"}]')$$,
       '22023', 'timeout must be a positive interval', 'batch: a timeout that ends in the past by the calendar rejects the whole batch');
-- documented in docs/errors.md: an unparsable timeout string is PostgreSQL's 22007
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "soon"}]')$$,
       '22007', 'invalid input syntax for type interval: "soon"', 'batch: unparsable timeout');
-- and PostgreSQL's 22008 / 22015 for a timeout string beyond the interval type (docs/errors.md)
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "1000000000 years"}]')$$,
       '22008', 'interval out of range', 'batch: a timeout beyond the interval range');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "9223372036854775808"}]')$$,
       '22015', 'interval field value out of range: "9223372036854775808"', 'batch: a timeout field beyond its range');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "", "from_account": "h.alice", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'idempotency key must not be empty', 'batch: empty key');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "a\nb", "from_account": "h.alice", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'idempotency key must not contain control characters', 'batch: control character in key');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice; --", "to_account": "h.bob", "amount": 1}]')$$,
       '22023', 'invalid account code in from_account', 'batch: invalid from_account');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch('[{"idempotency_key": "h-m", "from_account": "h.alice", "to_account": "h.alice", "amount": 1}]')$$,
       '22023', 'cannot transfer from account "h.alice" to itself', 'batch: self transfer');
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch((SELECT jsonb_agg('{}'::jsonb) FROM generate_series(1, 10001)))$$,
       '22023', 'too many transfer requests in one batch', 'batch: 10001 elements');
SELECT is(pg_temp.error_of($$SELECT * FROM fintx.transfer_batch((SELECT jsonb_agg('{}'::jsonb) FROM generate_series(1, 10001)))$$),
          '22023|too many transfer requests in one batch|The batch has 10001 requests; the limit is 10000.|',
          'too many requests: the detail names count and limit');

-- accepted shapes
SELECT is((SELECT to_balance FROM fintx.transfer_batch('[{"idempotency_key": "h-s1", "from_account": "h.alice", "to_account": "h.carol", "amount": "100"}]')),
          105::bigint, 'amount as the string "100" is accepted');
SELECT is((SELECT amount FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id WHERE j.idempotency_key = 'h-s1'),
          100::bigint, 'the string amount is stored as 100');
SELECT is((SELECT replayed FROM fintx.transfer_batch('[{"idempotency_key": "h-s1", "from_account": "h.alice", "to_account": "h.carol", "amount": 100}]')),
          true, 'amount 100 and amount "100" are the same request');
SELECT is((SELECT status FROM fintx.transfer_batch('[{"idempotency_key": "h-s2", "from_account": "h.alice", "to_account": "h.carol", "amount": 2.0, "metadata": null}]')),
          'posted', 'an integral number written as 2.0 and metadata null are accepted');
SELECT is((SELECT status FROM fintx.transfer_batch('[{"idempotency_key": "h-s3", "from_account": "h.alice", "to_account": "h.carol", "amount": 30, "pending": true, "timeout": "1 hour", "metadata": {"k": "v"}}]')),
          'pending', 'a batch element can be a hold with a timeout');
SELECT ok((SELECT h.timeout_at > now() + interval '59 minutes' FROM fintx.pending_holds h
             JOIN fintx.idempotency_keys j ON j.transfer_id = h.transfer_id WHERE j.idempotency_key = 'h-s3'),
          'the batch hold expires in an hour');
SELECT is((SELECT t.metadata FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id WHERE j.idempotency_key = 'h-s3'),
          '{"k": "v"}'::jsonb, 'batch metadata is stored');
SELECT is_empty($$SELECT * FROM fintx.transfer_batch('[]')$$, 'an empty array returns zero rows');
SELECT transfer_id AS s4 FROM fintx.transfer_batch('[{"idempotency_key": "h-s4", "from_account": "h.world", "to_account": "h.bob", "amount": 1, "pending": true, "timeout": "15 minutes"}]') \gset
SELECT is((fintx.transfer('h-s4', 'h.world', 'h.bob', 1, pending => true, timeout => '15 minutes')).transfer_id, :s4::bigint,
          'a batch hold with timeout "15 minutes" replays through transfer(timeout => ''15 minutes'')');
SELECT is((fintx.void_pending('h-s4v', :s4)).status, 'voided', 'a batch hold can be voided');

SELECT is(pg_temp.bal('h.carol'), '107/0/30/107', 'h.carol after the accepted shapes');
SELECT is((SELECT count(*)::int FROM fintx.transfer_batch(
              (SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'h-big-' || g, 'from_account', 'h.world',
                                                   'to_account', 'h.dave', 'amount', 1))
                 FROM generate_series(1, 10000) g))), 10000,
          'a batch of exactly 10000 requests is accepted');
SELECT is(pg_temp.bal('h.dave'), '10013/0/0/10013', 'all 10000 requests were applied');

-- regression: the echoed field name is cut at 64 bytes, possibly inside a UTF-8 character
SELECT * FROM pg_temp.rejects($$SELECT * FROM fintx.transfer_batch(jsonb_build_array(jsonb_build_object('a' || repeat('é', 40), 1)))$$,
       '22023', NULL, 'batch: unknown non-ASCII field name');
SELECT lives_ok($$SELECT convert_to(pg_temp.error_of($q$SELECT * FROM fintx.transfer_batch(jsonb_build_array(jsonb_build_object('a' || repeat('é', 40), 1)))$q$), 'UTF8')$$,
                'the error message for an unknown non-ASCII field name is valid UTF-8');

-- ===========================================================================
-- reconcile
-- ===========================================================================
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'reconcile() finds a consistent ledger after all of the above');

SELECT credits_posted AS bob_cp FROM fintx.accounts WHERE code = 'h.bob' \gset
SELECT sum(debits_posted) AS eur_dp FROM fintx.accounts WHERE currency = 'EUR' \gset
UPDATE fintx.accounts SET credits_posted = credits_posted + 7 WHERE code = 'h.bob';
SELECT set_eq('SELECT * FROM fintx.reconcile()',
              format('VALUES (%L, %L, %L, %L), (%L, %L, %L, %L)',
                     'account_credits_posted', 'h.bob', :bob_cp, :bob_cp + 7,
                     'currency_debits_equal_credits', 'EUR', :eur_dp, :eur_dp + 7),
              'credits inflated behind the API: account_credits_posted and currency_debits_equal_credits');
UPDATE fintx.accounts SET debits_posted = debits_posted + 7 WHERE code = 'h.carol';
SELECT set_eq('SELECT check_name, object FROM fintx.reconcile()',
              $$VALUES ('account_credits_posted', 'h.bob'), ('account_debits_posted', 'h.carol')$$,
              'two tampered accounts: one row per discrepancy (the currency totals balance again)');
UPDATE fintx.accounts SET credits_posted = credits_posted - 7 WHERE code = 'h.bob';
UPDATE fintx.accounts SET debits_posted = debits_posted - 7 WHERE code = 'h.carol';
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'undoing the tampering makes reconcile() clean again');

UPDATE fintx.accounts SET debits_pending = debits_pending + 5 WHERE code = 'h.alice';
SELECT set_eq('SELECT check_name, object, expected, actual FROM fintx.reconcile()',
              $$VALUES ('account_debits_pending', 'h.alice', '30', '35'),
                       ('currency_pending_debits_equal_credits', 'EUR', '35', '30')$$,
              'a phantom pending debit is reported on the account and the currency');
UPDATE fintx.accounts SET debits_pending = debits_pending - 5 WHERE code = 'h.alice';

CREATE TEMP TABLE saved_key AS SELECT * FROM fintx.idempotency_keys WHERE idempotency_key = 'h-fund';
DELETE FROM fintx.idempotency_keys WHERE idempotency_key = 'h-fund';
SELECT set_eq('SELECT * FROM fintx.reconcile()',
              format('VALUES (%L, %L, %L, %L)', 'transfer_without_journal', 'transfer ' || :fund_id, '1 journal record', '0'),
              'a deleted journal row: transfer_without_journal');
INSERT INTO fintx.idempotency_keys SELECT * FROM saved_key;
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'restoring the journal row makes reconcile() clean again');

SELECT h.transfer_id AS s3_id FROM fintx.pending_holds h JOIN fintx.idempotency_keys j ON j.transfer_id = h.transfer_id
 WHERE j.idempotency_key = 'h-s3' \gset
DELETE FROM fintx.pending_holds WHERE transfer_id = :s3_id;
SELECT set_eq('SELECT * FROM fintx.reconcile()',
              format('VALUES (%L, %L, %L, %L)', 'open_hold_tracking', 'transfer ' || :s3_id, 'tracked as open', 'not tracked'),
              'an open hold missing from pending_holds: open_hold_tracking');
INSERT INTO fintx.pending_holds SELECT id, timeout_at FROM fintx.transfers WHERE id = :s3_id;

UPDATE fintx.accounts SET credits_posted = 5 WHERE code = 'h.cap';
SELECT set_eq('SELECT check_name, object FROM fintx.reconcile()',
              $$VALUES ('account_credits_posted', 'h.cap'), ('account_balance_rule', 'h.cap'),
                       ('currency_debits_equal_credits', 'EUR')$$,
              'a positive balance on an allow_positive = false account breaks the balance rule');
SELECT is((SELECT expected FROM fintx.reconcile() WHERE check_name = 'account_balance_rule' AND object = 'h.cap'),
          'credits_posted + credits_pending <= debits_posted',
          'account_balance_rule names the rule that is broken');
UPDATE fintx.accounts SET credits_posted = 0 WHERE code = 'h.cap';
SELECT is_empty('SELECT * FROM fintx.reconcile()', 'reconcile() is clean at the end');

-- a batch's timeout string means one interval whatever the session's IntervalStyle: under
-- sql_standard a leading '-' applies to every field, and a retry would be another request
SET IntervalStyle = 'sql_standard';
SELECT is((SELECT status FROM fintx.transfer_batch('[{"idempotency_key": "b-style", "from_account": "h.alice", "to_account": "h.dave", "amount": 1, "pending": true, "timeout": "-1 26:00:00"}]')),
          'pending', 'a batch timeout of "-1 26:00:00" under IntervalStyle sql_standard is read as -1 day +26 hours');
RESET IntervalStyle;
SELECT is((SELECT replayed FROM fintx.transfer_batch('[{"idempotency_key": "b-style", "from_account": "h.alice", "to_account": "h.dave", "amount": 1, "pending": true, "timeout": "-1 26:00:00"}]')),
          true, 'and its retry under the default style is a replay');
SELECT * FROM finish();
ROLLBACK;

-- 007_outbox: the outbox API inside one transaction (sequencing after commit is covered by
-- sql/outbox.sql and test/t/016_outbox_sequencing.pl):
--   1. bad inputs of every outbox function: NULLs, unknown consumer, negative or huge
--      max_events, malformed and hostile names, ack backwards or beyond the sequenced tail
--   2. emit() and the ledger write events in the caller's transaction; a transaction does not
--      see its own events in poll() (they are sequenced after commit)
--   3. inbox_accept(): true once, false after, a rolled-back accept does not count
--   4. privileges: a registered service with event.emit / event.consume grants may emit and
--      use its consumers, others may not; SECURITY
--      DEFINER with a pinned search_path
\set ON_ERROR_STOP 1
\set QUIET 1
\pset format unaligned
\pset tuples_only true
\pset pager off

BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION fintx;
SELECT plan(99);

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

-- 1. bad inputs
SELECT ok(fintx.create_consumer('t6'), 'create_consumer creates');
SELECT ok(NOT fintx.create_consumer('t6'), 'create_consumer again returns false');
SELECT throws_ok($$SELECT fintx.create_consumer('tg', 2, NULL, NULL, NULL, 5)$$, '22023', 'group_member must not be null', 'NULL group_member');
SELECT throws_ok($$SELECT fintx.create_consumer('tg', 1, 0, NULL, NULL, NULL)$$, '22023', 'max_retries must not be null', 'NULL max_retries');
SELECT throws_ok($$SELECT fintx.create_consumer('tg', 1, 0, ARRAY[['a', 'b'], ['c', 'd']], NULL, 5)$$, '22023', 'aggregate type must be a one-dimensional array', 'two-dimensional filter');
SELECT throws_ok($$SELECT fintx.emit('order', 'o-9', 'order.created', '{}', jsonb_build_object('big', repeat('x', 70000)))$$, '22023', 'headers are too large', 'oversized headers');
SAVEPOINT null_headers;
SELECT fintx.emit('order', 'o-8', 'order.created', '{}', NULL) AS o8_id \gset
SELECT is((SELECT headers - 'actor' FROM fintx.outbox WHERE id = :'o8_id'), '{}'::jsonb, 'NULL headers are stored as {} (plus the actor)');
ROLLBACK TO SAVEPOINT null_headers;
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6', NULL, 1)$$, '22023', 'up_to_position must not be null', 'relay_checkpoint: NULL position');
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6', 0, NULL)$$, '22023', 'stream_sequence must not be null', 'relay_checkpoint: NULL sequence');
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6', -1, 0)$$, '22023', 'positions and sequences must not be negative', 'relay_checkpoint: negative');
SELECT lives_ok($$SELECT fintx.relay_checkpoint('t6', 0, 5)$$, 'relay_checkpoint records a stream sequence');
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6', 0, 4)$$, '55000', NULL, 'relay_checkpoint: the stream sequence cannot move back');
SELECT ctid AS t6_ctid FROM fintx.outbox_consumers WHERE name = 't6' \gset
SELECT fintx.relay_checkpoint('t6', 0, 5);
SELECT is((SELECT ctid::text FROM fintx.outbox_consumers WHERE name = 't6'), :'t6_ctid',
          'relay_checkpoint with the stored position and sequence writes nothing');
SELECT throws_ok($$SELECT fintx.create_consumer(NULL)$$, '22023', 'consumer must not be null', 'create_consumer(NULL)');
SELECT throws_ok($$SELECT fintx.create_consumer('')$$, '22023', 'invalid consumer name', 'empty consumer name');
SELECT throws_ok($$SELECT fintx.create_consumer('x''; DROP TABLE fintx.outbox; --')$$, '22023', 'invalid consumer name',
                 'hostile consumer name');
SELECT throws_ok($$SELECT fintx.create_consumer(repeat('a', 65))$$, '22023', 'invalid consumer name', 'too long a name');
SELECT throws_ok($$SELECT fintx.create_consumer('-x')$$, '22023', 'invalid consumer name', 'name must start alphanumeric');
SELECT throws_ok($$SELECT fintx.create_consumer(E'a\nb')$$, '22023', 'invalid consumer name', 'control characters');
SELECT throws_ok($$SELECT fintx.create_consumer('g', 0, 0)$$, '22023', 'group_size must be between 1 and 1024', 'group_size 0');
SELECT throws_ok($$SELECT fintx.create_consumer('g', 2, -1)$$, '22023', NULL, 'negative group_member');
SELECT throws_ok($$SELECT fintx.create_consumer('g', NULL, 0)$$, '22023', 'group_size must not be null', 'NULL group_size');
SELECT throws_ok($$SELECT fintx.create_consumer('g', 1, 0, ARRAY[NULL]::text[])$$, '22023', NULL, 'NULL in filter');
SELECT throws_ok($$SELECT fintx.create_consumer('g', 1, 0, NULL, '{"a b"}')$$, '22023', 'invalid event type', 'bad type in filter');
SELECT throws_ok($$SELECT fintx.create_consumer('g', 1, 0, max_retries => 0)$$, '22023', NULL, 'max_retries 0');
SELECT throws_ok($$SELECT * FROM fintx.poll('nobody')$$, '22023', 'consumer "nobody" does not exist', 'poll unknown consumer');
SELECT throws_ok($$SELECT * FROM fintx.poll(NULL)$$, '22023', 'consumer must not be null', 'poll NULL consumer');
SELECT throws_ok($$SELECT * FROM fintx.poll('t6', NULL)$$, '22023', 'max_events must not be null', 'poll NULL max_events');
SELECT throws_ok($$SELECT * FROM fintx.poll('t6', -1)$$, '22023', 'max_events must be between 0 and 10000', 'poll negative max_events');
SELECT throws_ok($$SELECT * FROM fintx.poll('t6', 10001)$$, '22023', 'max_events must be between 0 and 10000', 'poll huge max_events');
SELECT is((SELECT count(*)::int FROM fintx.poll('t6', 0)), 0, 'poll with max_events 0 returns nothing');
SELECT throws_ok($$SELECT * FROM fintx.poll('t6%')$$, '22023', 'invalid consumer name', 'LIKE pattern as a name');
SELECT throws_ok($$SELECT fintx.ack('nobody', 0)$$, '22023', 'consumer "nobody" does not exist', 'ack unknown consumer');
SELECT throws_ok($$SELECT fintx.ack('t6', NULL)$$, '22023', 'up_to_position must not be null', 'ack NULL position');
SELECT throws_ok($$SELECT fintx.ack(NULL, 1)$$, '22023', 'consumer must not be null', 'ack NULL consumer');
SELECT throws_ok($$SELECT fintx.ack('t6', -1)$$, '22023', 'up_to_position must not be negative', 'ack negative');
SELECT throws_ok(format('SELECT fintx.ack(%L, %s)', 't6', fintx.outbox_tail() + 1), '22023',
                 format('position %s is beyond the sequenced tail', fintx.outbox_tail() + 1), 'ack beyond the tail');
SELECT lives_ok(format('SELECT fintx.ack(%L, %s)', 't6', fintx.outbox_tail()), 'ack up to the tail');
SELECT throws_ok($$SELECT fintx.inbox_accept('nobody', gen_random_uuid())$$, '22023', NULL, 'inbox_accept unknown consumer');
SELECT throws_ok($$SELECT fintx.inbox_accept('t6', NULL)$$, '22023', 'event_id must not be null', 'inbox_accept NULL id');
SELECT throws_ok($$SELECT fintx.reject('t6', NULL)$$, '22023', 'event_position must not be null', 'reject NULL position');
SELECT throws_ok($$SELECT fintx.reject('t6', 0)$$, '22023', NULL, 'reject an acknowledged position');
SELECT throws_ok($$SELECT fintx.emit(NULL, 'a', 't', '{}')$$, '22023', 'aggregatetype must not be null', 'emit NULL aggregatetype');
SELECT throws_ok($$SELECT fintx.emit('o', NULL, 't', '{}')$$, '22023', 'aggregateid must not be null', 'emit NULL aggregateid');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', NULL, '{}')$$, '22023', 'type must not be null', 'emit NULL type');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', 't', NULL)$$, '22023', 'payload must not be null', 'emit NULL payload');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', 't', '{}', '"x"')$$, '22023', 'headers must be a JSON object', 'headers not an object');
SELECT throws_ok($$SELECT fintx.emit('o*', 'a', 't', '{}')$$, '22023', 'invalid aggregate type', 'wildcard in aggregate type');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', 'x..y', '{}')$$, '22023', 'invalid event type', 'empty subject token');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', 't>', '{}')$$, '22023', 'invalid event type', '> in event type');
SELECT throws_ok($$SELECT fintx.emit('o', repeat('a', 256), 't', '{}')$$, '22023', NULL, 'aggregate id too long');
SELECT throws_ok($$SELECT fintx.emit('o', E'order-1\r\nX-Evil: yes', 't', '{}')$$, '22023',
                 'aggregate id must not contain control characters', 'an aggregate id with CR/LF (it becomes a message header)');
SELECT throws_ok($$SELECT fintx.emit('o', E'a\x01b', 't', '{}')$$, '22023', NULL, 'or another control character');
SELECT throws_ok($$SELECT fintx.emit('account', 'a', 'account.opened', '{}')$$, '42501', NULL, 'account events cannot be forged');
SELECT throws_ok($$SELECT fintx.emit('fintx.x', 'a', 't', '{}')$$, '42501', NULL, 'fintx* aggregate types are reserved');
SELECT throws_ok($$SELECT fintx.emit('o', 'a', 't', (SELECT jsonb_agg(repeat('x', 1000)) FROM generate_series(1, 1100)))$$,
                 '22023', 'payload is too large', 'payload over 1 MiB');

-- 2. events in the caller's transaction
SELECT isa_ok(fintx.emit('order', 'o-1', 'order.created', '{"n": 1}'), 'uuid', 'emit returns a uuid');
SELECT is((SELECT count(*)::int FROM fintx.outbox WHERE aggregateid = 'o-1' AND txid = pg_current_xact_id()), 1,
          'the event is in fintx.outbox with the caller''s transaction id');
SELECT is((SELECT substr(id::text, 15, 1) FROM fintx.outbox WHERE aggregateid = 'o-1'), '7', 'event ids are UUIDv7');
\o /dev/null
SELECT fintx.open_account('t6:bank', 'EUR', allow_negative => true);
\o
\o /dev/null
SELECT fintx.open_account('t6:a', 'EUR');
\o
\o /dev/null
SELECT fintx.transfer('t6-1', 't6:bank', 't6:a', 10);
\o
SELECT is((SELECT string_agg(type, ',' ORDER BY event_no) FROM fintx.outbox WHERE txid = pg_current_xact_id()),
          'order.created,account.opened,account.opened,transfer.posted', 'ledger changes emit their events in order');
SELECT is((SELECT count(*)::int FROM fintx.poll('t6', 100) WHERE txid = pg_current_xact_id()), 0,
          'a transaction does not get its own events sequenced');
SAVEPOINT s;
\o /dev/null
SELECT fintx.emit('order', 'o-2', 'order.created', '{}');
\o
ROLLBACK TO SAVEPOINT s;
SELECT is((SELECT count(*)::int FROM fintx.outbox WHERE aggregateid = 'o-2'), 0, 'a rolled-back emit leaves nothing');

-- 3. inbox
SELECT ok(fintx.inbox_accept('t6', '11111111-1111-7111-8111-111111111111'), 'first accept is true');
SELECT ok(NOT fintx.inbox_accept('t6', '11111111-1111-7111-8111-111111111111'), 'second accept is false');
SAVEPOINT s2;
SELECT ok(fintx.inbox_accept('t6', '22222222-2222-7222-8222-222222222222'), 'accept in a subtransaction');
ROLLBACK TO SAVEPOINT s2;
SELECT ok(fintx.inbox_accept('t6', '22222222-2222-7222-8222-222222222222'), 'a rolled-back accept does not count');
SELECT is(fintx.inbox_prune('t6', '1 hour'), 0::bigint, 'inbox_prune keeps rows younger than older_than');
SELECT is(fintx.inbox_prune('t6', '0'), 0::bigint, 'rows accepted in this transaction are not older than now()');
UPDATE fintx.inbox SET accepted_at = now() - interval '2 days' WHERE consumer = 't6' AND event_id = '11111111-1111-7111-8111-111111111111';
SELECT is(fintx.inbox_prune('t6', '1 day'), 1::bigint, 'inbox_prune deletes rows older than older_than');
SELECT ok(fintx.inbox_accept('t6', '11111111-1111-7111-8111-111111111111'), 'a pruned event id is accepted again');
SELECT throws_ok($$SELECT fintx.inbox_prune('t6', NULL)$$, '22023', 'older_than must not be null', 'inbox_prune: NULL interval');
SELECT throws_ok($$SELECT fintx.inbox_prune('t6', '-1 day')$$, '22023', 'older_than must not be negative', 'inbox_prune: negative interval');
SELECT throws_ok($$SELECT fintx.inbox_prune('nosuch', '1 day')$$, '22023', NULL, 'inbox_prune: unknown consumer');

-- 4. privileges
CREATE ROLE tap006_service;
CREATE ROLE tap006_auditor IN ROLE fintx_auditor;
SELECT fintx.register_service('tap006-svc', 'tap006_service');
SELECT fintx.grant_permission('tap006-svc', 'event.emit', 'order');
SELECT fintx.grant_permission('tap006-svc', 'event.consume', 't6');
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT fintx.emit(''invoice'', ''i-1'', ''invoice.created'', ''{}'')')$$,
                 '42501', 'permission denied for event.emit on "invoice"', 'a service may emit only the aggregate types it was granted');
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT fintx.inbox_accept(''t7'', gen_random_uuid())')$$,
                 '42501', 'permission denied for event.consume on "t7"', 'a service may use only the consumers it was granted');
SELECT ok(pg_temp.run_as('tap006_service', $q$SELECT fintx.emit('order', 'o-3', 'order.created', '{}')::text$q$) IS NOT NULL,
          'fintx_service may emit');
SELECT is((SELECT headers->>'actor' FROM fintx.outbox WHERE aggregateid = 'o-3'), 'tap006_service',
          'the emitting role is recorded as actor in the headers');
SELECT is(pg_temp.run_as('tap006_service', $q$SELECT fintx.inbox_accept('t6', gen_random_uuid())::text$q$), 'true',
          'fintx_service may use the inbox');
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_auditor', 'SELECT fintx.emit(''o'', ''a'', ''t'', ''{}'')')$$,
                 '42501', NULL, 'fintx_auditor may not emit');
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT count(*) FROM fintx.outbox')$$,
                 '42501', NULL, 'fintx_service cannot read the outbox table directly');
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT fintx.outbox_rotate()')$$,
                 '42501', NULL, 'fintx_service cannot rotate');
-- outbox_lag: a service sees the consumers its event.consume grants cover; an auditor every one
SELECT ok(fintx.create_consumer('t7-not-granted'), 'a consumer the service may not poll');
SELECT is(pg_temp.run_as('tap006_service', 'SELECT string_agg(consumer, '','' ORDER BY consumer) FROM fintx.outbox_lag'), 't6',
          'outbox_lag shows a service only the consumers it may poll');
SELECT is(pg_temp.run_as('tap006_auditor', 'SELECT count(*)::text FROM fintx.outbox_lag'),
          (SELECT count(*)::text FROM fintx.outbox_consumers), 'outbox_lag shows an auditor every consumer');
-- relay_checkpoint(): only for a consumer that receives every event, by a role that sees every event
SELECT throws_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT fintx.relay_checkpoint(''t6'', 0, 5)::text')$$,
                 '42501', 'role "tap006_service" does not see every event of the outbox',
                 'relay_checkpoint: a service that sees only some accounts is refused');
SELECT fintx.grant_permission('tap006-svc', 'audit.read', '%');
SELECT lives_ok($$SELECT pg_temp.run_as('tap006_service', 'SELECT fintx.relay_checkpoint(''t6'', 0, 5)::text')$$,
                'relay_checkpoint: audit.read on ''%'' shows the service every event');
SELECT fintx.revoke_permission('tap006-svc', 'audit.read', '%');
SELECT fintx.create_consumer('t6-orders', 1, 0, aggregatetypes => '{order}');
SELECT fintx.create_consumer('t6-group', 2, 1);
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6-orders', 0, 0)$$, '55000',
                 'consumer "t6-orders" does not receive every event', 'relay_checkpoint: a filtered consumer is refused');
SELECT throws_ok($$SELECT fintx.relay_checkpoint('t6-group', 0, 0)$$, '55000',
                 'consumer "t6-group" does not receive every event', 'relay_checkpoint: a group member is refused');
SELECT is_empty($$SELECT p.oid::regprocedure::text FROM pg_proc p
                   WHERE p.pronamespace = 'fintx'::regnamespace
                     AND p.proname IN ('emit', 'poll', 'ack', 'inbox_accept', 'create_consumer', 'reject', 'outbox_rotate')
                     AND (NOT p.prosecdef OR p.proconfig IS DISTINCT FROM ARRAY['search_path=pg_catalog, pg_temp'])$$,
                'outbox functions are SECURITY DEFINER with a pinned search_path');

-- events are routed to the outbox slot of their event number, also when one call's events
-- straddle two slots
SELECT fintx.open_account('slot:a', 'EUR', allow_negative => true);
SELECT fintx.open_account('slot:b', 'EUR');
SELECT setval('fintx.outbox_event_no_seq', 2 * 1048576 - 3);
SELECT is((SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
              'idempotency_key', 'slot-' || i, 'from_account', 'slot:a', 'to_account', 'slot:b', 'amount', 1))
            FROM generate_series(1, 5) i))), 5::bigint, 'a batch whose events cross a slot boundary');
SELECT is((SELECT array_agg(event_no ORDER BY event_no) FROM fintx.outbox_1 WHERE aggregateid IN
             (SELECT id::text FROM fintx.transfers WHERE from_account = (SELECT id FROM fintx.accounts WHERE code = 'slot:a'))),
          ARRAY[2 * 1048576 - 2, 2 * 1048576 - 1]::bigint[], 'its first events are in slot 1');
SELECT is((SELECT array_agg(event_no ORDER BY event_no) FROM fintx.outbox_2 WHERE aggregateid IN
             (SELECT id::text FROM fintx.transfers WHERE from_account = (SELECT id FROM fintx.accounts WHERE code = 'slot:a'))),
          ARRAY[2 * 1048576, 2 * 1048576 + 1, 2 * 1048576 + 2]::bigint[], 'the rest in slot 2');
-- SQLSTATE and message of stmt run after setup, both rolled back afterwards
CREATE FUNCTION pg_temp.error_after(setup text, stmt text) RETURNS text LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN
    EXECUTE setup;
    EXECUTE stmt;
    RAISE EXCEPTION 'no error';
  EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
  END;
END $f$;
-- a missing slot partition: the write fails whole (23514), nothing is left behind
SELECT is(pg_temp.error_after('ALTER TABLE fintx.outbox DETACH PARTITION fintx.outbox_2',
                              $$SELECT fintx.transfer('slot-x', 'slot:a', 'slot:b', 1)$$),
          '23514 no partition of relation "fintx.outbox" found for row',
          'an event without a slot partition fails the transfer with 23514');
SELECT is((SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key = 'slot-x'), 0::bigint,
          'the failed transfer left no key');
-- a table whose columns are not the ones fintx writes: refused, not written into wrong columns
SELECT is(pg_temp.error_after('ALTER TABLE fintx.transfers ADD COLUMN note text',
                              $$SELECT fintx.transfer('slot-y', 'slot:a', 'slot:b', 1)$$),
          '55000 table "fintx.transfers" does not have the columns fintx writes',
          'a changed table layout fails the transfer with 55000');
SELECT is(pg_temp.error_after('ALTER TABLE fintx.audit_entries RENAME TO audit_entries_moved',
                              $$SELECT fintx.transfer('slot-w', 'slot:a', 'slot:b', 1)$$),
          '42P01 relation "fintx.audit_entries" does not exist',
          'a missing fintx table fails the transfer with 42P01');
-- another unique index on the journal's key (one added by hand, or REINDEX CONCURRENTLY's
-- copy): a retry still replays, it is not a 23505
CREATE FUNCTION pg_temp.replay_with_second_key_index() RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
  r text;
BEGIN
  BEGIN
    CREATE UNIQUE INDEX t007_second_key ON fintx.idempotency_keys (principal, idempotency_key);
    PERFORM fintx.transfer('slot-dup', 'slot:a', 'slot:b', 1);
    SELECT replayed::text INTO r FROM fintx.transfer('slot-dup', 'slot:a', 'slot:b', 1);
    RAISE EXCEPTION 'replayed %', r;
  EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ' ' || SQLERRM;
  END;
END $f$;
SELECT is(pg_temp.replay_with_second_key_index(), 'P0001 replayed true',
          'with a second unique index on the key, a retry replays');
-- a CHECK constraint added to the accounts holds for fintx's updates too
SELECT is(pg_temp.error_after('ALTER TABLE fintx.accounts ADD CONSTRAINT t007_cap CHECK (debits_posted <= 1000000)',
                              $$SELECT fintx.transfer('slot-cap', 'slot:a', 'slot:b', 2000000)$$),
          '23514 new row for relation "accounts" violates check constraint "t007_cap"',
          'a CHECK constraint on fintx.accounts is enforced on the balance update');
SELECT is(pg_temp.error_after('SELECT 1', $$SELECT fintx.transfer('slot-z', 'slot:a', 'slot:b', 1)$$),
          'P0001 no error', 'the same transfer without the change succeeds');

SELECT * FROM finish();
ROLLBACK;

-- outbox: ledger events and emit() in the caller's transaction, commit-ordered positions,
-- poll/ack, filters, groups, dead letters, inbox
\set VERBOSITY terse
-- fintx.seal() sequences committed events now (poll() does so itself only without a worker)
SELECT fintx.seal() IS NOT NULL AS sealed;   -- the worker may not have sealed yet
-- a consumer that starts at the current tail, so earlier suites do not show up
SELECT fintx.create_consumer('reg') AS created;
SELECT fintx.create_consumer('reg') AS created_again;
SELECT fintx.ack('reg', fintx.outbox_tail());
SELECT fintx.outbox_tail() AS base \gset
SELECT fintx.open_account('o:bank', 'EUR', allow_negative => true) > 0 AS ok;
SELECT fintx.open_account('o:x', 'EUR') > 0 AS ok;
SELECT status FROM fintx.transfer('o-1', 'o:bank', 'o:x', 500, '{"ref": "O1"}');
-- a replay writes no event
SELECT replayed FROM fintx.transfer('o-1', 'o:bank', 'o:x', 500, '{"ref": "O1"}');
CREATE TEMP TABLE h AS SELECT * FROM fintx.transfer('o-2', 'o:x', 'o:bank', 100, pending => true);
SELECT status FROM fintx.post_pending('o-3', (SELECT transfer_id FROM h), 60);
CREATE TEMP TABLE h2 AS SELECT * FROM fintx.transfer('o-4', 'o:x', 'o:bank', 10, pending => true);
SELECT status FROM fintx.void_pending('o-5', (SELECT transfer_id FROM h2));
SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "o-6", "from_account": "o:bank", "to_account": "o:x", "amount": 7},
                                            {"idempotency_key": "o-7", "from_account": "o:bank", "to_account": "o:x", "amount": 8}]');
SELECT fintx.open_account('o:tmp', 'EUR') > 0 AS ok;
SELECT fintx.close_account('o:tmp');
-- an application event, and one in a transaction that rolls back
SELECT fintx.emit('order', 'ord-1', 'order.created', '{"total": 42}', '{"trace": "t-1"}') IS NOT NULL AS emitted;
BEGIN;
SELECT fintx.emit('order', 'ord-2', 'order.created', '{"total": 1}') IS NOT NULL AS emitted;
SELECT status FROM fintx.transfer('o-8', 'o:bank', 'o:x', 1);
ROLLBACK;
SELECT fintx.seal() IS NOT NULL AS sealed;   -- the worker may not have sealed yet
-- every committed change, in commit order, gap-free; nothing from the rolled-back transaction
SELECT position - :base AS pos, aggregatetype, type,
       CASE WHEN aggregatetype = 'transfer' THEN payload->>'status' || ' ' || (payload->>'amount')
            ELSE (payload - 'account_id')::text END AS what,
       headers->>'actor' = current_user AS actor_ok, headers - 'actor' - 'audit_entry_id' AS headers
  FROM fintx.poll('reg', 100) ORDER BY position;
-- the transfer payload (documented schema)
SELECT payload - 'transfer_id' AS payload FROM fintx.poll('reg', 100) WHERE type = 'transfer.posted' LIMIT 1;
-- the event of a transfer links to its audit entry
SELECT count(*) AS linked FROM fintx.poll('reg', 100) o JOIN fintx.audit_entries e
    ON e.entry_id = (o.headers->>'audit_entry_id')::bigint AND e.object_id = o.aggregateid
 WHERE o.aggregatetype = 'transfer';
-- poll is repeatable until ack; ack moves the offset
SELECT count(*) FROM fintx.poll('reg', 3);
SELECT count(*) FROM fintx.poll('reg', 3);
SELECT fintx.ack('reg', :base + 3);
SELECT min(position) - :base AS first_after_ack FROM fintx.poll('reg', 100);
SELECT fintx.ack('reg', :base + 3);   -- the same offset again: no-op
-- SQLSTATE of a statement (messages name absolute positions)
CREATE FUNCTION pg_temp.sqlstate(q text) RETURNS text LANGUAGE plpgsql AS
$$BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || regexp_replace(SQLERRM, '[0-9]+', 'N', 'g'); END$$;
SELECT pg_temp.sqlstate(format('SELECT fintx.ack(%L, %s)', 'reg', :base + 2)) AS backwards;
SELECT pg_temp.sqlstate(format('SELECT fintx.ack(%L, %s)', 'reg', fintx.outbox_tail() + 1)) AS beyond_tail;
SELECT pg_temp.sqlstate(format('SELECT fintx.reject(%L, %s)', 'reg', fintx.outbox_tail() + 1)) AS reject_beyond_tail;
SELECT fintx.ack('reg', fintx.outbox_tail());
SELECT count(*) AS left_over FROM fintx.poll('reg');
SELECT consumer, lag_events, dead_letters FROM fintx.outbox_lag WHERE consumer = 'reg';
-- filters and groups: per type, and two members that split aggregates by hash
SELECT fintx.create_consumer('reg-orders', 1, 0, aggregatetypes => '{order}');
SELECT fintx.create_consumer('reg-g0', 2, 0, types => '{order.created}');
SELECT fintx.create_consumer('reg-g1', 2, 1, types => '{order.created}');
SELECT fintx.ack(c, :base) FROM unnest('{reg-orders,reg-g0,reg-g1}'::text[]) c;
SELECT count(fintx.emit('order', 'ord-' || i, 'order.created', jsonb_build_object('i', i))) AS emitted
  FROM generate_series(3, 12) i;
SELECT fintx.seal() IS NOT NULL AS sealed;   -- the worker may not have sealed yet
SELECT aggregateid FROM fintx.poll('reg-orders', 100) ORDER BY position;
SELECT (SELECT count(*) FROM fintx.poll('reg-g0', 100)) + (SELECT count(*) FROM fintx.poll('reg-g1', 100)) AS split_total,
       (SELECT count(*) FROM fintx.poll('reg-g0', 100) a JOIN fintx.poll('reg-g1', 100) b USING (id)) AS overlap;
-- a window with nothing for a filtered consumer moves its offset past it
SELECT fintx.create_consumer('reg-none', 1, 0, types => '{no.such.type}');
SELECT count(*) FROM fintx.poll('reg-none');
SELECT committed_position = fintx.outbox_tail() AS skipped_to_tail FROM fintx.outbox_lag WHERE consumer = 'reg-none';
-- retry limit and dead letter
SELECT fintx.create_consumer('reg-dl', 1, 0, max_retries => 2);
SELECT fintx.ack('reg-dl', fintx.outbox_tail());
SELECT fintx.emit('order', 'poison', 'order.created', '{"bad": true}') IS NOT NULL AS emitted;
SELECT fintx.emit('order', 'fine', 'order.created', '{"bad": false}') IS NOT NULL AS emitted;
SELECT fintx.seal() IS NOT NULL AS sealed;   -- the worker may not have sealed yet
SELECT position AS poison FROM fintx.poll('reg-dl', 1) \gset
SELECT fintx.reject('reg-dl', :poison, 'cannot parse') AS dead;
SELECT aggregateid FROM fintx.poll('reg-dl', 1);
SELECT fintx.reject('reg-dl', :poison, 'cannot parse again') AS dead;
SELECT aggregateid FROM fintx.poll('reg-dl', 1);
SELECT attempts, last_error FROM fintx.outbox_dead_letters WHERE consumer = 'reg-dl';
SELECT dead_letters FROM fintx.outbox_lag WHERE consumer = 'reg-dl';
-- the dead letter keeps the event itself (the outbox rotates it away once every consumer is past it)
SELECT d.aggregatetype, d.aggregateid, d.type, d.payload, d.headers = o.headers AS same_headers
  FROM fintx.outbox_dead_letters d JOIN fintx.outbox o ON o.id = d.event_id WHERE d.consumer = 'reg-dl';
-- rejected again: still a dead letter (true), not counted again
SELECT fintx.reject('reg-dl', :poison, 'third time') AS still_dead;
SELECT attempts, last_error FROM fintx.outbox_dead_letters WHERE consumer = 'reg-dl';
-- a read-only transaction: a window with nothing for a filtered consumer leaves its offset
-- where it is (no write; the next poll() elsewhere moves it)
SELECT fintx.emit('order', 'ro', 'order.created', '{}') IS NOT NULL AS emitted;
SELECT fintx.seal() IS NOT NULL AS sealed;
SELECT committed_position AS none_before FROM fintx.outbox_consumers WHERE name = 'reg-none' \gset
BEGIN READ ONLY;
SET LOCAL client_min_messages = warning;  -- (the NOTICE that it cannot seal counts all entries so far)
SELECT count(*) AS read_only_poll FROM fintx.poll('reg-none');
COMMIT;
SELECT committed_position = :none_before AS offset_kept FROM fintx.outbox_consumers WHERE name = 'reg-none';
SELECT count(*) AS poll FROM fintx.poll('reg-none');
SELECT committed_position = fintx.outbox_tail() AS moved_now FROM fintx.outbox_consumers WHERE name = 'reg-none';
-- inbox: true once; a rolled-back accept does not count
SELECT fintx.inbox_accept('reg', '00000000-0000-7000-8000-000000000001') AS first;
SELECT fintx.inbox_accept('reg', '00000000-0000-7000-8000-000000000001') AS second;
BEGIN;
SELECT fintx.inbox_accept('reg', '00000000-0000-7000-8000-000000000002') AS in_rolled_back;
ROLLBACK;
SELECT fintx.inbox_accept('reg', '00000000-0000-7000-8000-000000000002') AS after_rollback;
SELECT fintx.inbox_accept('reg-g0', '00000000-0000-7000-8000-000000000001') AS other_consumer;
-- bad input
SELECT fintx.poll('nobody');
SELECT fintx.poll('reg', -1);
SELECT fintx.poll(NULL);
SELECT fintx.poll('bad name; DROP TABLE x');
SELECT fintx.ack('reg', NULL);
SELECT fintx.inbox_accept('nobody', gen_random_uuid());
SELECT fintx.emit('transfer', '1', 'transfer.posted', '{}');
SELECT fintx.emit('order', 'x', 'bad type', '{}');
SELECT fintx.emit('order', '', 'order.created', '{}');
SELECT fintx.emit('order', 'x', 'order.created', NULL);
SELECT fintx.emit('order', 'x', 'order.created', '{}', '[1]');
SELECT fintx.create_consumer('g', 2, 2);
SELECT fintx.create_consumer('g', 1, 0, types => '{}');
-- the outbox table is insert-only in the transfer path: stored rows carry no position
SELECT count(*) AS stored_with_position FROM fintx.outbox WHERE position IS NOT NULL;
-- rotation keeps everything not yet acknowledged and younger than the retention
SELECT fintx.outbox_rotate() AS slots_removed;
-- not under REPEATABLE READ or SERIALIZABLE: its snapshot would miss events committed meanwhile
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT fintx.outbox_rotate();
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT fintx.outbox_rotate();
ROLLBACK;
SELECT fintx.drop_consumer(c) FROM unnest('{reg-orders,reg-g0,reg-g1,reg-none,reg-dl}'::text[]) c;

/*
 * src/outbox.sql — the transactional outbox (src/outbox.c; positions from src/sequencer.c).
 *
 *   outbox             one row per event, inserted in the producer's transaction (insert-only;
 *                      Debezium outbox-router columns). Partitioned into three slots by
 *                      event_no (1,048,576 events per slot, round robin) so that old events
 *                      are removed by TRUNCATE of a whole slot (fintx.outbox_rotate()), never
 *                      by per-row DELETE. The stored "position" is always NULL: positions are
 *                      assigned after commit and kept in outbox_position_runs; poll() returns
 *                      rows with the position filled in.
 *   outbox_position_runs  positions -> event_nos, written by the sealing pass: one row per run
 *                      of consecutive positions holding consecutive event numbers of one slot
 *                      (insert-only, partitioned like outbox and rotated with it); the view
 *                      outbox_positions lists one row per position
 *   outbox_batches     one row per sealing pass that sequenced events: its MVCC snapshot and
 *                      the positions it assigned (PgQ-style snapshot batching)
 *   outbox_consumers   one row per consumer: committed offset, filters, group, retry limit,
 *                      relay bookkeeping (last JetStream sequence)
 *   outbox_attempts    rejected deliveries per consumer and position (retry counter)
 *   outbox_dead_letters events a consumer rejected max_retries times; poll() skips them
 *   inbox              (consumer, event_id) accepted by inbox_accept()
 */
-- No CACHE: event_no order must follow lock order, so that two transactions that touch the
-- same aggregate and land in one sealing batch keep their order (docs/outbox.md).
CREATE SEQUENCE fintx.outbox_event_no_seq AS bigint MINVALUE 1;

CREATE TABLE fintx.outbox (
    id            uuid        NOT NULL,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    payload       jsonb       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}',
    position      bigint,
    txid          xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event_no      bigint      NOT NULL DEFAULT pg_catalog.nextval('fintx.outbox_event_no_seq'::pg_catalog.regclass)
) PARTITION BY LIST (((event_no OPERATOR(pg_catalog./) 1048576) OPERATOR(pg_catalog.%) 3));
CREATE TABLE fintx.outbox_0 PARTITION OF fintx.outbox FOR VALUES IN (0);
CREATE TABLE fintx.outbox_1 PARTITION OF fintx.outbox FOR VALUES IN (1);
CREATE TABLE fintx.outbox_2 PARTITION OF fintx.outbox FOR VALUES IN (2);
CREATE INDEX outbox_txid ON fintx.outbox (txid);
CREATE INDEX outbox_event_no ON fintx.outbox (event_no);
COMMENT ON TABLE fintx.outbox IS 'outbox events, one per state change, in the producer''s transaction; insert-only; position is assigned after commit (see poll())';
-- No planner statistics for columns nothing filters on (hashes, JSON bodies): autovacuum's
-- ANALYZE of these fast-growing tables then skips sorting and detoasting them.
ALTER TABLE fintx.outbox ALTER COLUMN payload SET STATISTICS 0, ALTER COLUMN headers SET STATISTICS 0;

-- Positions first_position .. first_position + event_count - 1 are events first_event_no ..
-- first_event_no + event_count - 1. A sealing pass numbers its events in event_no order after
-- the last position and writes one row per run of consecutive event numbers (event_no has no
-- sequence cache: a run breaks only where an event of an open or aborted transaction lies, or
-- at a slot boundary), not one per event.
CREATE TABLE fintx.outbox_position_runs (
    first_position bigint  NOT NULL,
    first_event_no bigint  NOT NULL,
    event_count    integer NOT NULL CHECK (event_count OPERATOR(pg_catalog.>) 0),
    batch_id       bigint  NOT NULL,
    -- the last position and event number of a run are bigints
    CHECK (first_position OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) event_count)
           AND first_event_no OPERATOR(pg_catalog.<=) (9223372036854775807 OPERATOR(pg_catalog.-) event_count))
) PARTITION BY LIST (((first_event_no OPERATOR(pg_catalog./) 1048576) OPERATOR(pg_catalog.%) 3));
CREATE TABLE fintx.outbox_position_runs_0 PARTITION OF fintx.outbox_position_runs FOR VALUES IN (0);
CREATE TABLE fintx.outbox_position_runs_1 PARTITION OF fintx.outbox_position_runs FOR VALUES IN (1);
CREATE TABLE fintx.outbox_position_runs_2 PARTITION OF fintx.outbox_position_runs FOR VALUES IN (2);
CREATE INDEX outbox_position_runs_first_position ON fintx.outbox_position_runs (first_position);
COMMENT ON TABLE fintx.outbox_position_runs IS 'commit-ordered, gap-free positions of sequenced outbox events, one row per run of consecutive event numbers; insert-only';

-- One row per sequenced event: its position, event number and sealing batch.
CREATE VIEW fintx.outbox_positions AS
SELECT r.first_position OPERATOR(pg_catalog.+) g.i AS position,
       r.first_event_no OPERATOR(pg_catalog.+) g.i AS event_no, r.batch_id
  FROM fintx.outbox_position_runs r
 CROSS JOIN LATERAL pg_catalog.generate_series(0::bigint, r.event_count OPERATOR(pg_catalog.-) 1::bigint) g(i);
COMMENT ON VIEW fintx.outbox_positions IS 'commit-ordered, gap-free position of each sequenced outbox event';

CREATE TABLE fintx.outbox_batches (
    batch_id       bigint      PRIMARY KEY,
    snapshot       pg_snapshot NOT NULL,
    first_position bigint      NOT NULL,
    last_position  bigint      NOT NULL,
    sealed_at      timestamptz NOT NULL
);
CREATE INDEX outbox_batches_last_position ON fintx.outbox_batches (last_position);
CREATE TRIGGER refuse_foreign_snapshot BEFORE INSERT ON fintx.outbox_batches
    FOR EACH ROW EXECUTE FUNCTION fintx.refuse_foreign_snapshot();
COMMENT ON TABLE fintx.outbox_batches IS 'one row per sealing pass that sequenced outbox events; old rows are pruned by outbox_rotate()';

CREATE TABLE fintx.outbox_consumers (
    name               text        PRIMARY KEY,
    committed_position bigint      NOT NULL DEFAULT 0,
    group_size         integer     NOT NULL DEFAULT 1,
    group_member       integer     NOT NULL DEFAULT 0,
    aggregatetypes     text[],
    types              text[],
    max_retries        integer     NOT NULL DEFAULT 5,
    stream_sequence    bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    acked_at           timestamptz,
    CHECK (group_size OPERATOR(pg_catalog.>=) 1 AND group_member OPERATOR(pg_catalog.>=) 0
           AND group_member OPERATOR(pg_catalog.<) group_size),
    CHECK (max_retries OPERATOR(pg_catalog.>=) 1)
);
COMMENT ON TABLE fintx.outbox_consumers IS 'outbox consumers and their committed offsets';

CREATE TABLE fintx.outbox_attempts (
    consumer text   NOT NULL REFERENCES fintx.outbox_consumers (name) ON DELETE CASCADE,
    position bigint NOT NULL,
    attempts integer NOT NULL,
    last_error text,
    PRIMARY KEY (consumer, position)
);

CREATE TABLE fintx.outbox_dead_letters (
    consumer    text        NOT NULL REFERENCES fintx.outbox_consumers (name) ON DELETE CASCADE,
    position    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text,
    dead_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- the event itself: the outbox rotates it away once every consumer is past it
    aggregatetype text      NOT NULL,
    aggregateid text        NOT NULL,
    type        text        NOT NULL,
    payload     jsonb       NOT NULL,
    headers     jsonb       NOT NULL,
    PRIMARY KEY (consumer, position)
);
COMMENT ON TABLE fintx.outbox_dead_letters IS 'events a consumer rejected max_retries times; poll() skips them for that consumer';

CREATE TABLE fintx.inbox (
    consumer    text        NOT NULL REFERENCES fintx.outbox_consumers (name) ON DELETE CASCADE,
    event_id    uuid        NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (consumer, event_id)
);
COMMENT ON TABLE fintx.inbox IS 'events accepted by inbox_accept(), per consumer (deduplication)';

CREATE FUNCTION fintx.emit(aggregatetype text, aggregateid text, type text, payload jsonb,
                           headers jsonb DEFAULT '{}')
RETURNS uuid
AS 'MODULE_PATHNAME', 'fintx_emit'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.create_consumer(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_create_consumer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.create_consumer(name text, group_size integer, group_member integer,
                                      aggregatetypes text[] DEFAULT NULL, types text[] DEFAULT NULL,
                                      max_retries integer DEFAULT 5)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_create_consumer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.drop_consumer(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_drop_consumer'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.poll(consumer text, max_events integer DEFAULT 100)
RETURNS SETOF fintx.outbox
AS 'MODULE_PATHNAME', 'fintx_poll'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.ack(consumer text, up_to_position bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_ack'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.reject(consumer text, event_position bigint, error text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_reject'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Deletes a consumer's inbox rows accepted longer ago than older_than; returns how many.
CREATE FUNCTION fintx.inbox_prune(consumer text, older_than interval)
RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_inbox_prune'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.inbox_accept(consumer text, event_id uuid)
RETURNS boolean
AS 'MODULE_PATHNAME', 'fintx_inbox_accept'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Sequences committed outbox events without sealing the audit log (the worker's pass when
-- committed events wake it); returns the number of events sequenced.
CREATE FUNCTION fintx.sequence_outbox()
RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_sequence_outbox'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.outbox_tail()
RETURNS bigint
AS 'MODULE_PATHNAME', 'fintx_outbox_tail'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- fintx-relay's bookkeeping: the last JetStream sequence stored with the offset, atomically.
CREATE FUNCTION fintx.relay_checkpoint(consumer text, up_to_position bigint, stream_sequence bigint)
RETURNS void
AS 'MODULE_PATHNAME', 'fintx_relay_checkpoint'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION fintx.consumer_state(consumer text,
                                     OUT committed_position bigint, OUT stream_sequence bigint,
                                     OUT tail_position bigint)
AS 'MODULE_PATHNAME', 'fintx_consumer_state'
LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Lag per consumer: events sequenced but not acknowledged, and how old the oldest one is.
CREATE VIEW fintx.outbox_lag WITH (security_barrier) AS
SELECT c.name AS consumer,
       c.committed_position,
       t.tail AS tail_position,
       GREATEST(t.tail OPERATOR(pg_catalog.-) c.committed_position, 0) AS lag_events,
       (SELECT pg_catalog.now() OPERATOR(pg_catalog.-) b.sealed_at
          FROM fintx.outbox_batches b
         WHERE b.last_position OPERATOR(pg_catalog.>) c.committed_position
         ORDER BY b.last_position LIMIT 1) AS lag_time,
       (SELECT pg_catalog.count(*) FROM fintx.outbox_dead_letters d
         WHERE d.consumer OPERATOR(pg_catalog.=) c.name) AS dead_letters,
       c.acked_at
  FROM fintx.outbox_consumers c,
       LATERAL (SELECT COALESCE((SELECT b.last_position FROM fintx.outbox_batches b
                                  ORDER BY b.batch_id DESC LIMIT 1), 0) AS tail) t
 -- a service sees the consumers its event.consume grants cover
 WHERE fintx.consumer_visible(c.name);
COMMENT ON VIEW fintx.outbox_lag IS 'per consumer: committed offset, sequenced tail, lag in events and time, dead letters';

-- Removes whole slots of old events (TRUNCATE, no per-row DELETE) once every consumer has
-- acknowledged them and they are older than fintx.outbox_retention. Returns the slots removed.
CREATE FUNCTION fintx.outbox_rotate()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $rotate$
DECLARE
    cur_slot  integer;
    min_off   bigint;
    retention interval;
    removed   integer := 0;
    bad       boolean;
BEGIN
    -- the checks below must see every event committed before the slot lock: a snapshot taken
    -- before it (REPEATABLE READ, SERIALIZABLE) would miss one, and TRUNCATE would remove it
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) ALL ('{read committed,read uncommitted}'::text[]) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = pg_catalog.format('outbox_rotate() must run at isolation level READ COMMITTED, not %s',
                                        pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))),
            DETAIL = 'Its snapshot would miss events committed while it waits for a slot, and remove them.',
            HINT = 'Call it in a transaction of its own, or after SET TRANSACTION ISOLATION LEVEL READ COMMITTED.';
    END IF;
    retention := COALESCE(NULLIF(pg_catalog.current_setting('fintx.outbox_retention', true), ''), '1 day')::interval;
    SELECT ((s.last_value OPERATOR(pg_catalog./) 1048576) OPERATOR(pg_catalog.%) 3)::integer INTO cur_slot
      FROM fintx.outbox_event_no_seq s;
    SELECT COALESCE(pg_catalog.min(c.committed_position),
                    (SELECT b.last_position FROM fintx.outbox_batches b ORDER BY b.batch_id DESC LIMIT 1), 0)
      INTO min_off FROM fintx.outbox_consumers c;
    FOR s IN 0..2 LOOP
        CONTINUE WHEN s OPERATOR(pg_catalog.=) cur_slot;
        BEGIN
            -- no transaction can still be inserting into the slot once we hold this lock
            EXECUTE pg_catalog.format('LOCK TABLE fintx.%I, fintx.%I IN ACCESS EXCLUSIVE MODE NOWAIT',
                                      'outbox_' || s, 'outbox_position_runs_' || s);
            -- every event of the slot has its position (each has exactly one: as many
            -- positions as events), every position is acknowledged, every event is old
            EXECUTE pg_catalog.format(
                'SELECT (SELECT pg_catalog.count(*) FROM fintx.%1$I)'
                '       OPERATOR(pg_catalog.<>) (SELECT COALESCE(pg_catalog.sum(p.event_count), 0) FROM fintx.%2$I p)'
                ' OR EXISTS (SELECT 1 FROM fintx.%2$I p WHERE p.first_position OPERATOR(pg_catalog.+) p.event_count'
                '                                             OPERATOR(pg_catalog.-) 1 OPERATOR(pg_catalog.>) $1)'
                ' OR EXISTS (SELECT 1 FROM fintx.%1$I o WHERE o.created_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) $2))'
                ' OR NOT EXISTS (SELECT 1 FROM fintx.%1$I)',
                'outbox_' || s, 'outbox_position_runs_' || s) INTO bad USING min_off, retention;
            IF NOT bad THEN
                EXECUTE pg_catalog.format('TRUNCATE fintx.%I, fintx.%I', 'outbox_' || s, 'outbox_position_runs_' || s);
                removed := removed OPERATOR(pg_catalog.+) 1;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            NULL;   -- busy: next time
        END;
    END LOOP;
    -- batch rows every consumer has passed, except the last (the sequencer's snapshot)
    DELETE FROM fintx.outbox_batches b
     WHERE b.last_position OPERATOR(pg_catalog.<=) min_off
       AND b.sealed_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) retention)
       AND b.batch_id OPERATOR(pg_catalog.<) (SELECT pg_catalog.max(x.batch_id) FROM fintx.outbox_batches x);
    RETURN removed;
END
$rotate$;

# Outbox positions from the sealing pass (PgQ-style snapshot batching): a late commit joins a
# later batch and is never skipped, an aborted transaction never appears, a transaction left
# open across several sealing passes is sequenced after it commits, a crash between commit
# and sequencing loses nothing, a transaction that seals after emitting gets its own events
# sequenced later, the worker sequences on its own and NOTIFYs fintx_outbox, and a consumer
# sees every committed event once, in position order.
#   invariants: every committed event has exactly one position, positions are dense 1..n,
#   no position points at an event that is not committed, batches cover [first, last]
#   without gaps or overlap.
use strict;
use warnings;
use FintxTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# no wake-up by committed events either: sealing happens only when the test calls seal()
my $node = fintx_node('outbox_seq', "fintx.seal_interval = '1h'", "fintx.expire_interval = '1h'",
	"fintx.outbox_wakeup = 0");

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub seal { return sql('SELECT fintx.seal()'); }
sub emit { return sql("SELECT fintx.emit('job', '$_[0]', 'job.created', '{}')"); }

# Violated invariants, one line each ('' when all hold). Seals first.
sub invariants
{
	seal();
	return sql(q{
	SELECT 'events without a position: ' || count(*) FROM fintx.outbox o
	 WHERE NOT EXISTS (SELECT 1 FROM fintx.outbox_positions p WHERE p.event_no = o.event_no) HAVING count(*) > 0
	UNION ALL
	SELECT 'positions without a committed event: ' || count(*) FROM fintx.outbox_positions p
	 WHERE NOT EXISTS (SELECT 1 FROM fintx.outbox o WHERE o.event_no = p.event_no) HAVING count(*) > 0
	UNION ALL
	SELECT 'event ' || event_no || ' has ' || count(*) || ' positions' FROM fintx.outbox_positions
	 GROUP BY event_no HAVING count(*) > 1
	UNION ALL
	SELECT 'position ' || position || ' used ' || count(*) || ' times' FROM fintx.outbox_positions
	 GROUP BY position HAVING count(*) > 1
	UNION ALL
	SELECT 'positions are not dense: ' || count(*) || ' positions, ' || min(position) || '..' || max(position)
	  FROM fintx.outbox_positions HAVING count(*) > 0 AND (min(position) <> 1 OR max(position) <> count(*))
	UNION ALL
	SELECT 'batch ' || b.batch_id || ' does not hold exactly ' || b.first_position || '..' || b.last_position
	  FROM (SELECT batch_id, first_position, last_position,
	               lag(last_position, 1, 0::bigint) OVER (ORDER BY batch_id) AS prev FROM fintx.outbox_batches) b
	 WHERE b.first_position <> b.prev + 1
	    OR (SELECT count(*) FROM fintx.outbox_positions p WHERE p.batch_id = b.batch_id) <> b.last_position - b.first_position + 1
	UNION ALL
	SELECT 'tail ' || fintx.outbox_tail() || ' but ' || count(*) || ' positions' FROM fintx.outbox_positions
	HAVING count(*) <> fintx.outbox_tail()
	});
}

# position of the event with aggregateid $id: number, '-' unsequenced, 'absent'
sub position_of
{
	return sql("SELECT coalesce(string_agg(coalesce(p.position::text, '-'), ','), 'absent')
	              FROM fintx.outbox o LEFT JOIN fintx.outbox_positions p USING (event_no)
	             WHERE o.aggregateid = '$_[0]'");
}

is(invariants(), '', 'invariants hold on an empty outbox');

# 1. late commit and a long-open transaction across several passes
my $late = quiet_session($node);
quiet_safe($late, "BEGIN; SELECT fintx.emit('job', 'late', 'job.created', '{}');");
emit('early');
seal();
is(position_of('early'), '1', 'a committed event is sequenced by the next pass');
is(position_of('late'), 'absent', 'the open transaction\'s event is not visible yet');
for my $i (1 .. 3)
{
	emit("mid$i");
	seal();
}
is(position_of('mid3'), '4', 'three more passes sequence the later commits');
quiet_safe($late, 'COMMIT');
is(position_of('late'), '-', 'after the late commit its event is not sequenced before the next pass');
seal();
is(position_of('late'), '5', 'the late commit joins the next batch, after everything sequenced before');
is(invariants(), '', 'invariants hold after a late commit');

# 2. aborts, in a transaction and in a subtransaction
my $ab = quiet_session($node);
quiet_safe($ab, "BEGIN; SELECT fintx.emit('job', 'aborted', 'job.created', '{}');");
emit('beside-abort');
quiet_safe($ab, 'ROLLBACK');
quiet_safe($ab, "BEGIN; SAVEPOINT s; SELECT fintx.emit('job', 'sub-aborted', 'job.created', '{}');"
	  . " ROLLBACK TO SAVEPOINT s; SELECT fintx.emit('job', 'sub-kept', 'job.created', '{}'); COMMIT;");
seal();
is(position_of('aborted'), 'absent', 'an aborted event never appears');
is(position_of('sub-aborted'), 'absent', 'an event of a rolled-back subtransaction never appears');
is(position_of('beside-abort'), '6', 'the concurrent committed event is sequenced');
is(position_of('sub-kept'), '7', 'the surviving event of that transaction is sequenced');
is(invariants(), '', 'invariants hold after aborts');

# 3. a transaction that seals after emitting: its own events go to a later batch
quiet_safe($ab, "BEGIN; SELECT fintx.emit('job', 'own', 'job.created', '{}'); SELECT fintx.seal();"
	  . " SELECT fintx.emit('job', 'own2', 'job.created', '{}'); COMMIT;");
is(position_of('own') . ' ' . position_of('own2'), '- -', 'a sealing transaction does not sequence its own events');
seal();
is(position_of('own') . ' ' . position_of('own2'), '8 9', 'the next pass after its commit takes both, in order');

# 4. many interleaved late committers across passes
my @s = map { quiet_session($node) } 1 .. 4;
for my $round (1 .. 3)
{
	for my $i (0 .. $#s)
	{
		quiet_safe($s[$i], "BEGIN; SELECT fintx.emit('job', 'r$round-s$i', 'job.created', '{}');");
	}
	for my $i (reverse 0 .. $#s)
	{
		quiet_safe($s[$i], $i % 2 ? 'ROLLBACK' : 'COMMIT');
		seal() if $i == 2;
		emit("r$round-x$i");
	}
}
is(sql("SELECT count(*) FROM fintx.outbox WHERE aggregateid ~ '^r[0-9]-s[13]\$'"), '0', 'rolled-back interleaved events are gone');
is(invariants(), '', 'invariants hold after interleaved commits, aborts and passes');
$_->quit for @s, $late, $ab;

# 5. crash between commit and sequencing
emit('pre-crash-1');
emit('pre-crash-2');
my $before = position_of('pre-crash-1');
is($before, '-', 'committed but not yet sequenced when the server crashes');
$node->stop('immediate');
$node->start;
is(invariants(), '', 'after crash recovery every committed event is sequenced exactly once');
like(position_of('pre-crash-1') . ' ' . position_of('pre-crash-2'), qr/^\d+ \d+$/, 'both pre-crash events have positions');

# 6. a consumer sees every event once, in order; ack; positions match the table
sql("SELECT fintx.create_consumer('t12')");
my $all = sql("SELECT string_agg(position::text, ',' ORDER BY position) FROM fintx.poll('t12', 10000)");
my $expect = sql("SELECT string_agg(g::text, ',') FROM generate_series(1, fintx.outbox_tail()) g");
is($all, $expect, 'poll returns positions 1..tail with no gap');
sql("SELECT fintx.ack('t12', 10)");
is(sql("SELECT min(position) FROM fintx.poll('t12', 10000)"), '11', 'after ack poll continues at the next position');

# 7. the worker sequences on its own and notifies fintx_outbox
$node->append_conf('postgresql.conf', "fintx.seal_interval = '50ms'");
$node->reload;
my $listener = quiet_session($node);
my $watcher = quiet_session($node);
quiet_safe($listener, 'LISTEN fintx_outbox');
emit('by-worker');
my ($ok, $secs) = poll_until($watcher, "SELECT count(*) FROM fintx.outbox_positions p JOIN fintx.outbox o USING (event_no) WHERE o.aggregateid = 'by-worker'", '1', 20);
ok($ok, "the worker sequenced the event (after ${secs}s)");
my $tail = sql('SELECT fintx.outbox_tail()');
my $heard = quiet_query($listener, 'SELECT 1');
like($heard, qr/Asynchronous notification "fintx_outbox" with payload "$tail" received/,
	'the sealing pass NOTIFYs fintx_outbox with the new tail');
$watcher->quit;
$listener->quit;
is(invariants(), '', 'invariants hold with the worker sealing');

# 8. wake-up: with passes only every hour, a committed event wakes the worker
$node->append_conf('postgresql.conf', "fintx.seal_interval = '1h'\nfintx.outbox_wakeup = '30ms'");
$node->reload;
usleep(300_000);
sql("SELECT fintx.open_account('woken', 'EUR')");    # an audit entry and an event
my $w = quiet_session($node);
my ($woke, $after) = poll_until($w, "SELECT count(*) FROM fintx.outbox_positions p JOIN fintx.outbox o USING (event_no) WHERE o.aggregateid = 'woken'", '1', 10);
ok($woke, "a committed event wakes the worker, which sequences it (after ${after}s; the interval is 1 h)");
is(sql("SELECT count(*) FROM fintx.audit_entries e WHERE e.object_id = 'woken'
          AND NOT EXISTS (SELECT 1 FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id)"), '1',
	'the wake-up pass sequences the outbox only: the audit entry waits for the seal interval');
$node->append_conf('postgresql.conf', "fintx.outbox_wakeup = 0");
$node->reload;
usleep(300_000);
emit('not-woken');
usleep(1_500_000);
is(quiet_query($w, "SELECT count(*) FROM fintx.outbox_positions p JOIN fintx.outbox o USING (event_no) WHERE o.aggregateid = 'not-woken'"),
	'0', 'with fintx.outbox_wakeup = 0 the event waits for the next interval');
$w->quit;
seal();

# 9. rotation: whole slots are truncated once every consumer has passed them and they are
#    older than fintx.outbox_retention; positions continue after the tail
is(sql('SELECT fintx.outbox_rotate()'), '0', 'no rotation while the current slot is the only one with events');
sql("SELECT setval('fintx.outbox_event_no_seq', 1048576)");    # the next event goes to slot 1
emit('slot1-a');
seal();
is(sql('SELECT fintx.outbox_rotate()'), '0', 'no rotation while consumer t12 has not passed slot 0');
sql("SELECT fintx.ack('t12', fintx.outbox_tail())");
is(sql('SELECT fintx.outbox_rotate()'), '0', 'no rotation while the events are younger than the retention');
$node->append_conf('postgresql.conf', "fintx.outbox_retention = 0");
$node->reload;
usleep(200_000);
my $tail_before = sql('SELECT fintx.outbox_tail()');
my $slot0 = sql('SELECT count(*) FROM fintx.outbox_0');
cmp_ok($slot0, '>', 10, "slot 0 holds $slot0 events");
is(sql('SELECT fintx.outbox_rotate()'), '1', 'slot 0 is truncated once acknowledged and old enough');
is(sql('SELECT count(*) FROM fintx.outbox_0') . ' ' . sql('SELECT count(*) FROM fintx.outbox_position_runs_0'), '0 0',
	'slot 0 of the outbox and of the positions is empty');
is(sql('SELECT fintx.outbox_tail()'), $tail_before, 'the tail is unchanged by rotation');
is(sql("SELECT aggregateid FROM fintx.outbox"), 'slot1-a', 'the event in the current slot is kept');
emit('after-rotate');
seal();
is(position_of('after-rotate'), $tail_before + 1, 'the next event gets the next position');
is(sql("SELECT string_agg(aggregateid, ',' ORDER BY position) FROM fintx.poll('t12', 100)"), 'after-rotate',
	'the consumer continues after rotation');
sql("SELECT fintx.create_consumer('late-joiner')");
is(sql("SELECT committed_position FROM fintx.consumer_state('late-joiner')"), position_of('slot1-a') - 1,
	'a consumer created after a rotation starts right before the oldest retained position (fintx-relay needs no gap)');
is(sql("SELECT string_agg(aggregateid, ',' ORDER BY position) FROM fintx.poll('late-joiner', 100)"), 'slot1-a,after-rotate',
	'a new consumer starts at the oldest retained event');
# a rotation can leave no sequenced position at all (the current slot holds none yet): a new
# consumer then starts at the tail, not at 0
sql("SELECT count(fintx.ack(name, fintx.outbox_tail())) FROM fintx.outbox_consumers");
sql("SELECT setval('fintx.outbox_event_no_seq', 2 * 1048576)");
is(sql('SELECT fintx.outbox_rotate()'), '1', 'slot 1 is truncated');
is(sql('SELECT count(*) FROM fintx.outbox_position_runs'), '0', 'no sequenced position is left');
my $tail_empty = sql('SELECT fintx.outbox_tail()');
sql("SELECT fintx.create_consumer('after-empty')");
is(sql("SELECT committed_position FROM fintx.consumer_state('after-empty')"), $tail_empty,
	'a consumer created then starts at the tail');
emit('after-empty-1');
seal();
is(sql("SELECT position || ':' || aggregateid FROM fintx.poll('after-empty', 100)"), ($tail_empty + 1) . ':after-empty-1',
	'and its first event is right after its offset');


# A consumer that fintx-relay feeds to a stream (it has published for it: stream_sequence > 0)
# moves only by what a role that sees every event does. A service with event.consume on its
# name but no account grant polls nothing from a window of ledger events: for its own
# consumer that moves the offset past them (it will never see them), for the relay's it must
# not (the relay would never publish them); its ack() and reject() are refused there.
sql(q{CREATE ROLE peek; SELECT fintx.register_service('peek', 'peek');
      SELECT fintx.grant_permission('peek', 'event.consume', '%');
      SELECT fintx.open_account('pk:bank', 'EUR', allow_negative => true);
      SELECT fintx.open_account('pk:a', 'EUR')});
seal();
sql("SELECT fintx.create_consumer('relayed'), fintx.create_consumer('peek-own')");
my $t0 = sql('SELECT fintx.outbox_tail()');
sql("SELECT fintx.relay_checkpoint('relayed', $t0, 7)");
sql("SELECT fintx.ack('peek-own', $t0)");
sql(q{SELECT fintx.transfer('pk-1', 'pk:bank', 'pk:a', 5)});
seal();
my $t1 = sql('SELECT fintx.outbox_tail()');
cmp_ok($t1, '>', $t0, 'the transfer was sequenced');
is(sql("SET ROLE peek; SELECT count(*) FROM fintx.poll('relayed', 10)"), '0', 'the service polls nothing it may see');
is(sql("SELECT committed_position FROM fintx.consumer_state('relayed')"), $t0, 'and the relayed consumer did not move');
is(sql("SET ROLE peek; SELECT count(*) FROM fintx.poll('peek-own', 10)"), '0', 'from its own consumer neither');
is(sql("SELECT committed_position FROM fintx.consumer_state('peek-own')"), $t1, 'which moves past what it cannot see');
my ($ret, $out, $err) = $node->psql('postgres', "SET ROLE peek; SELECT fintx.ack('relayed', $t1)");
like($err, qr/ERROR:  consumer "relayed" feeds a stream \(fintx-relay\): only a role that sees every event may move it/,
	"the service's ack() of the relayed consumer is refused");
($ret, $out, $err) = $node->psql('postgres', "SET ROLE peek; SELECT fintx.reject('relayed', $t1, 'no')");
like($err, qr/feeds a stream/, 'and so is its reject()');
is(sql("SELECT count(*) FROM fintx.poll('relayed', 10)"), $t1 - $t0, 'the relay (a role that sees every event) still gets every event');
sql("SELECT fintx.ack('relayed', $t1)");
is(sql("SELECT committed_position FROM fintx.consumer_state('relayed')"), $t1, 'and moves the consumer');


# pg_restore copies the outbox's slots before outbox_batches and the sequence, each table in a
# transaction of its own: a pass in between must not number the copied events (they would
# get positions of their own, and the restored ones would clash with them)
$node->safe_psql('postgres', 'CREATE DATABASE restoring');
$node->safe_psql('restoring', 'CREATE EXTENSION fintx');
$node->safe_psql('restoring', q{INSERT INTO fintx.outbox (id, aggregatetype, aggregateid, type, payload, event_no)
	VALUES (gen_random_uuid(), 'job', 'copied', 'job.created', '{}', 4711)});
($ret, $out, $err) = $node->psql('restoring', 'SELECT fintx.seal()');
like($err, qr/ERROR:  the outbox holds restored events or positions but no outbox batch/,
	'a pass refuses to number events copied in before their batches');
is($node->safe_psql('restoring', 'SELECT count(*) FROM fintx.outbox_position_runs'), '0', 'and gives them no position');
$node->safe_psql('restoring', q{SELECT setval('fintx.outbox_event_no_seq', 4711)});
# a parallel restore (-j) may set the sequence before outbox_batches is loaded: the restored
# positions and consumers still show the pass that it must wait
$node->safe_psql('restoring', q{INSERT INTO fintx.outbox_position_runs VALUES (1, 4711, 1, 1)});
($ret, $out, $err) = $node->psql('restoring', 'SELECT fintx.sequence_outbox()');
like($err, qr/ERROR:  the outbox holds restored events or positions but no outbox batch/, 'so does a restored position');
$node->safe_psql('restoring', q{DELETE FROM fintx.outbox_position_runs; SELECT fintx.create_consumer('restored');
	UPDATE fintx.outbox_consumers SET committed_position = 1 WHERE name = 'restored'});
($ret, $out, $err) = $node->psql('restoring', 'SELECT fintx.sequence_outbox()');
like($err, qr/ERROR:  the outbox holds restored events or positions but no outbox batch/, 'and a restored consumer that had moved');
$node->safe_psql('restoring', q{UPDATE fintx.outbox_consumers SET committed_position = 0 WHERE name = 'restored'});
is($node->safe_psql('restoring', 'SELECT fintx.sequence_outbox()'), '1', 'once the sequence is restored too, they are sequenced');
is($node->safe_psql('restoring', q{SELECT fintx.emit('job', 'new', 'job.created', '{}') IS NOT NULL}), 't', 'and new events');
is($node->safe_psql('restoring', 'SELECT fintx.sequence_outbox()'), '1', 'follow');

done_testing();

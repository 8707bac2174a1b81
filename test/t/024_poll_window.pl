# Copyright fintx contributors
#
# 024_poll_window.pl — a consumer that has caught up never skips an event.
#
# When poll() finds nothing for a consumer in the window it scanned, it moves
# the consumer's offset past that window. The window must be the one the poll
# read: under READ COMMITTED two queries would see two snapshots, and a
# sealing pass committing between them made the offset jump over positions
# the consumer never received. Here a producer commits one event at a time
# while the worker sequences every 10 ms and a consumer polls in a tight loop,
# mostly finding nothing new; every position must reach it exactly once. (The race is
# probabilistic: without the fix this test failed in every run made, not by construction.)

use strict;
use warnings;
use FintxTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = fintx_node('poll_window', "fintx.seal_interval = '10ms'", "fintx.outbox_wakeup = '1ms'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE TABLE seen (position bigint NOT NULL, polled_empty boolean NOT NULL);
	CREATE TABLE stop_flag (stop boolean NOT NULL);
	INSERT INTO stop_flag VALUES (false);
	SELECT fintx.create_consumer('tight');
	CREATE PROCEDURE consume() LANGUAGE plpgsql AS $$
	DECLARE
		last bigint;
		n int;
	BEGIN
		LOOP
			last := NULL;
			n := 0;
			FOR last IN SELECT position FROM fintx.poll('tight', 1000) LOOP
				INSERT INTO seen VALUES (last, false);
				n := n + 1;
			END LOOP;
			IF n > 0 THEN
				PERFORM fintx.ack('tight', last);
			END IF;
			COMMIT;
			EXIT WHEN n = 0 AND (SELECT stop FROM stop_flag);
		END LOOP;
	END $$;
});

my $events = 6000;
my $producer = psql_start($node, 'producer', qq{
DO \$\$
BEGIN
	FOR i IN 1 .. $events LOOP
		PERFORM fintx.emit('job', 'j' || i, 'job.created', pg_catalog.jsonb_build_object('i', i));
		COMMIT;
		IF i % 10 = 0 THEN PERFORM pg_catalog.pg_sleep(0.001); END IF;
	END LOOP;
END \$\$;
});
my $consumer = psql_start($node, 'consumer', "CALL consume();\n");

my $p = psql_finish($producer);
is($p->{err}, '', 'the producer committed its events one transaction at a time');
# let the worker sequence the last events, then tell the consumer to finish once it is empty
my $watch = quiet_session($node);
ok((poll_until($watch, qq{SELECT fintx.outbox_tail() >= $events}, 't', 60))[0], 'every event is sequenced');
$watch->quit;
sql('UPDATE stop_flag SET stop = true');
my $c = psql_finish($consumer);
is($c->{err}, '', 'the consumer ran without an error');

is(sql('SELECT fintx.outbox_tail()'), $events, "$events positions were assigned");
is(sql('SELECT count(*) FROM seen'), $events, 'the consumer received as many events as were sequenced');
is(sql(qq{SELECT count(*) FROM generate_series(1, $events) g WHERE NOT EXISTS (SELECT FROM seen s WHERE s.position = g)}),
	0, 'no position was skipped');
is(sql('SELECT count(*) FROM (SELECT position FROM seen GROUP BY position HAVING count(*) > 1) d'),
	0, 'no position was received twice');
is(sql(q{SELECT committed_position FROM fintx.consumer_state('tight')}), $events,
	'the committed offset is the last position');

# In a database no worker seals, poll() seals in the caller's transaction. In a transaction
# block it hands out only positions whose sealing pass has committed: rolled back, its own
# pass's positions would go to other events, and the consumer would have been given a
# position that later names another event.
sql('CREATE DATABASE nw');
sub nw { return $node->safe_psql('nw', $_[0]); }
nw(q{CREATE EXTENSION fintx; SELECT fintx.create_consumer('ru');});
my $x = quiet_session($node);
$x->query_safe(q{\c nw});
$x->query_safe(q{BEGIN; SELECT fintx.emit('order', 'A', 'order.created', '{}')});
nw(q{SELECT fintx.emit('order', 'B', 'order.created', '{}')});
my $c = quiet_session($node);
$c->query_safe(q{\c nw});
$c->query_safe('BEGIN');
is($c->query_safe(q{SELECT count(*) FROM fintx.poll('ru')}), '0',
	'no worker, transaction block: poll() hands out no position its own (uncommitted) pass assigned');
$c->query_safe('ROLLBACK');
$x->query_safe('COMMIT');
my $ru = q{SELECT string_agg(position || ':' || aggregateid, ' ' ORDER BY position) FROM fintx.poll('ru')};
is(nw($ru) // '', '', 'a poll that is its own transaction does not hand out what its own pass sequenced either (a pipeline or a procedure may go on and roll back)');
is(nw($ru), '1:A 2:B', 'the next poll does: after the rollback and the commit of A, positions follow commit order, A got 1, B never had it');
nw(q{SELECT fintx.ack('ru', 2); SELECT fintx.emit('order', 'C', 'order.created', '{}')});
$c->query_safe('BEGIN');
is($c->query_safe(q{SELECT count(*) FROM fintx.poll('ru')}), '0', 'a transaction block whose pass assigns C does not hand it out');
$c->query_safe('COMMIT');
is(nw($ru), '3:C', 'once that pass has committed C is delivered: the offset did not move past it');
nw(q{SELECT fintx.ack('ru', 3); SELECT fintx.emit('order', 'D', 'order.created', '{}'); SELECT fintx.seal();});
$c->query_safe('BEGIN');
is($c->query_safe($ru), '4:D', 'a position sealed by a committed pass is handed out in a transaction block');
$c->query_safe('COMMIT');
$c->quit;
$x->quit;
# under REPEATABLE READ a pass cannot run (its snapshot could be stale): said, not silent
my (undef, undef, $rrerr) = $node->psql('nw', q{SELECT fintx.emit('order', 'E', 'order.created', '{}');
	BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM fintx.poll('ru'); SELECT fintx.sequence_outbox(); COMMIT;});
like($rrerr, qr/NOTICE:  fintx: a REPEATABLE READ or SERIALIZABLE transaction cannot seal the audit log or sequence the outbox; the answer covers/,
	'no worker, REPEATABLE READ: poll() says in a NOTICE that it cannot sequence');
like($rrerr, qr/NOTICE:  fintx: a REPEATABLE READ or SERIALIZABLE transaction cannot sequence the outbox\n/,
	'and sequence_outbox() too');
is(nw($ru), '4:D', 'a READ COMMITTED poll sequences E');
is(nw($ru), '4:D 5:E', 'and the next one delivers it (after D, polled but not acknowledged)');

# in the worker's database the worker sequences: no NOTICE under REPEATABLE READ
my (undef, undef, $wrr) = $node->psql('postgres',
	q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT fintx.sequence_outbox(); SELECT fintx.seal(); COMMIT;});
unlike($wrr, qr/NOTICE/, 'the worker\'s database, REPEATABLE READ: sequence_outbox() and seal() raise no NOTICE');

# The worker seals and sequences in READ COMMITTED transactions whatever the server's
# default: with SERIALIZABLE (a common choice for a ledger) it must not stop.
sql(q{ALTER SYSTEM SET default_transaction_isolation = 'serializable'; SELECT pg_reload_conf();});
is(sql('SHOW default_transaction_isolation'), 'serializable', 'the server defaults to SERIALIZABLE');
sql(q{SELECT fintx.emit('job', 'after-serializable', 'job.created', '{}'); SELECT fintx.open_account('ser:1', 'EUR');});
my $w2 = quiet_session($node);
ok((poll_until($w2, 'SELECT fintx.outbox_tail() >= ' . ($events + 2), 't', 30))[0],
	'the worker still sequences the outbox');
ok((poll_until($w2, 'SELECT (SELECT max(tree_size) FROM fintx.audit_blocks) = (SELECT count(*) FROM fintx.audit_entries)', 't', 30))[0],
	'and seals the audit log');
$w2->quit;

$node->stop;
done_testing();

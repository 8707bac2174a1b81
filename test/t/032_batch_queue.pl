# Copyright fintx contributors
#
# 032_batch_queue.pl — fintx.max_active_batches: batches wait their turn.
# With a limit of 1 and the one admitted batch held on a row lock:
#   - the next batches wait (wait event Extension; fintx.batch_queue() counts
#     them), single transfers do not; they are admitted one at a time, first
#     come first served, each when the one before it is done;
#   - a waiting batch in the middle of the queue that is cancelled leaves it
#     at once (its session goes on), no batch is admitted past the limit, and
#     the others run as soon as the slot is free, not after the queue timeout;
#     a registered service's batch queues like the others;
#   - a batch in a transaction that has already written does not queue (it may
#     hold the row locks the admitted batch waits for);
#   - a backend terminated while it holds the slot gives it back;
#   - a batch that fails gives its slot back (its session goes on);
#   - a batch that has waited fintx.batch_queue_timeout runs anyway (counted);
#   - with the limit 0 nothing waits; without shared_preload_libraries the
#     queue does not exist (fintx.batch_queue() answers NULLs) and batches run.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FintxTest;

my $node = fintx_node('queue', 'fintx.max_active_batches = 1', "fintx.batch_queue_timeout = '60s'");
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql(q{
	SELECT fintx.open_account('q:a', 'EUR');
	SELECT fintx.open_account('q:poor', 'EUR');
	SELECT fintx.open_account('q:s' || i, 'EUR', allow_negative => true) FROM generate_series(0, 9) i;
	SELECT fintx.open_account('q:d' || i, 'EUR') FROM generate_series(0, 9) i;
});
my $ctl = quiet_session($node, on_error_stop => 0);
my $start;
my $mon = quiet_session($node);

# a batch of two transfers from q:s<src> (one to $to), then the time it ended
my $seq = 0;
sub batch_script
{
	my ($src, $to) = @_;
	$seq++;
	return qq{SELECT 'R', count(*) FROM fintx.transfer_batch('[
		{"idempotency_key": "q-$seq-1", "from_account": "q:s$src", "to_account": "$to", "amount": 1},
		{"idempotency_key": "q-$seq-2", "from_account": "q:s$src", "to_account": "q:d$src", "amount": 1}]');
};
}
sub queue { return quiet_query($mon, 'SELECT max_active, active, waiting, timed_out FROM fintx.batch_queue()'); }
sub wait_event
{
	my ($app, $event_type) = @_;
	my ($ok) = poll_until($mon, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app' AND wait_event_type = '$event_type'", '1', 30);
	return $ok;
}
sub hold_a { quiet_safe($ctl, q{BEGIN; SELECT 1 FROM fintx.accounts WHERE code = 'q:a' FOR UPDATE;}); }
sub release_a { quiet_safe($ctl, 'COMMIT;'); }
sub ended_ok
{
	my ($r, $name) = @_;
	is($r->{err}, '', "$name: no error");
	like($r->{out}, qr/^R\|2$/m, "$name: its two transfers applied");
	return;
}

is(queue(), '1|0|0|0', 'the queue is empty');

# --- 1. the admitted batch waits for a row lock; the others queue, in order.
# Each queued batch also needs an account another session holds, so that the
# one admitted next shows itself: it leaves the queue and waits for that lock.
my @holders = map { quiet_session($node) } 1 .. 3;
sub hold { quiet_safe($_[0], qq{BEGIN; SELECT 1 FROM fintx.accounts WHERE code = '$_[1]' FOR UPDATE;}); }
hold_a();
hold($holders[ $_ - 1 ], "q:d$_") for 1 .. 3;
my $a = psql_start($node, 'q-a', batch_script(0, 'q:a'));
ok(wait_event('q-a', 'Lock'), 'the first batch is admitted and waits for the row lock');
is(queue(), '1|1|0|0', 'one batch running, none waiting');
my @w;
for my $i (1 .. 3)
{
	push @w, psql_start($node, "q-w$i", batch_script($i, "q:d$i"));
	ok(wait_event("q-w$i", 'Extension'), "batch $i waits its turn (wait event Extension)");
}
is(queue(), '1|1|3|0', 'fintx.batch_queue(): one running, three waiting');
is(sql(q{SELECT status FROM fintx.transfer('q-single', 'q:s9', 'q:d9', 1)}), 'posted',
	'a single transfer does not wait in the queue');
usleep(300_000);
is(queue(), '1|1|3|0', 'the waiting batches stay queued while the admitted one is held');
release_a();
ended_ok(psql_finish($a), 'the admitted batch');
for my $i (1 .. 3)
{
	my $want = join(' ', map { $_ < $i ? () : $_ == $i ? "q-w$_:Lock" : "q-w$_:Extension" } 1 .. 3);
	my ($ok, $last) = poll_until($mon, q{SELECT string_agg(application_name || ':' || wait_event_type, ' ' ORDER BY application_name)
		FROM pg_stat_activity WHERE application_name LIKE 'q-w%'}, $want, 30);
	ok($ok, "batch $i is admitted next, the later ones still wait ($want)") or diag("last: $last");
	quiet_safe($holders[ $i - 1 ], 'COMMIT;');
	ended_ok(psql_finish($w[ $i - 1 ]), "queued batch $i");
}
is(queue(), '1|0|0|0', 'the queue is empty again');

# --- 2. a waiting batch in the middle of the queue is cancelled: its session goes
# on, nobody is admitted past the limit, and the batches around it run in turn. The
# last one is a registered service's (its grant check writes nothing before it queues).
sql(q{CREATE ROLE q_svc LOGIN;
      SELECT fintx.register_service('qsvc', 'q_svc');
      SELECT fintx.grant_permission('qsvc', 'transfer', 'q:%');});
hold_a();
$a = psql_start($node, 'q-a2', batch_script(0, 'q:a'));
ok(wait_event('q-a2', 'Lock'), 'the admitted batch waits for the row lock');
my $c = psql_start($node, 'q-c', batch_script(1, 'q:d1'));
ok(wait_event('q-c', 'Extension'), 'a second batch waits its turn');
my $cw = quiet_session($node, on_error_stop => 0);
my $cpid = quiet_safe($cw, 'SELECT pg_backend_pid()');
$cw->query_until(qr/started/, "\\echo started\n" . batch_script(5, 'q:d5') . "\n");
my ($waits) = poll_until($mon, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $cpid", 'Extension', 30);
ok($waits, 'a third batch waits behind it');
my $d = psql_start($node, 'q-d', "SET ROLE q_svc;\n" . batch_script(2, 'q:d2'));
ok(wait_event('q-d', 'Extension'), "a service's batch waits behind them");
is(queue(), '1|1|3|0', 'one running, three waiting');
quiet_safe($mon, "SELECT pg_cancel_backend($cpid)");
is(quiet_query($cw, q{SELECT 'alive'}), 'alive', 'the cancelled session goes on');
like($cw->{stderr}, qr/canceling statement due to user request/, 'its batch was cancelled');
is(queue(), '1|1|2|0', 'the cancelled batch left the queue; nobody was admitted past the limit');
my $released = time;
release_a();
ended_ok(psql_finish($a), 'the admitted batch');
ended_ok(psql_finish($c), 'the batch before the cancelled one');
ended_ok(psql_finish($d), "the service's batch after it");
cmp_ok(time - $released, '<', 20, 'they ran when the slot was free, not after the 60 s timeout');
is(sql(q{SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key LIKE 'q-' || } . ($seq - 1) . q{ || '-%'}), '0',
	'the cancelled batch applied nothing');
$cw->quit;

# --- 2b. a transaction that has already written does not queue: its row locks may be
# what the admitted batch waits for (a wait PostgreSQL's deadlock detector cannot see)
my $tx = quiet_session($node);
quiet_safe($tx, 'BEGIN;');
like(quiet_safe($tx, batch_script(7, 'q:d7')), qr/^R\|2$/m, 'a transaction runs a batch and keeps its row locks');
$a = psql_start($node, 'q-a2b', batch_script(8, 'q:d7'));
ok(wait_event('q-a2b', 'Lock'), 'the next batch is admitted and waits for those locks');
$start = time;
like(quiet_safe($tx, batch_script(7, 'q:d7')), qr/^R\|2$/m, 'the same transaction runs a second batch without waiting for a turn');
cmp_ok(time - $start, '<', 20, '... at once, not after the 60 s timeout');
quiet_safe($tx, 'COMMIT;');
ended_ok(psql_finish($a), 'the admitted batch');
is(queue(), '1|0|0|0', 'the queue is empty again');
$tx->quit;

# --- 3. the backend holding the slot is terminated
hold_a();
$a = psql_start($node, 'q-a3', batch_script(0, 'q:a'));
ok(wait_event('q-a3', 'Lock'), 'the admitted batch waits for the row lock');
my $e = psql_start($node, 'q-e', batch_script(3, 'q:d3'));
ok(wait_event('q-e', 'Extension'), 'a second batch waits its turn');
quiet_safe($mon, q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'q-a3'});
my $rc = psql_finish($a);
isnt($rc->{rc}, 0, 'the terminated session ends');
ended_ok(psql_finish($e), 'the batch behind it runs while the row lock is still held');
is(queue(), '1|0|0|0', 'the terminated backend gave its slot back');
release_a();

# --- 4. a batch that fails gives its slot back (its session goes on)
quiet_query($ctl, q{SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "q-poor", "from_account": "q:poor", "to_account": "q:a", "amount": 5}]')});
like($ctl->{stderr}, qr/insufficient funds/, 'a batch fails (insufficient funds)');
$ctl->{stderr} = '';
is(queue(), '1|0|0|0', 'it gave its slot back');
like(sql(batch_script(4, 'q:d4')), qr/^R\|2$/m, 'the next batch runs at once');

# --- 5. the queue timeout: a batch that waited that long runs anyway
$node->append_conf('postgresql.conf', "fintx.batch_queue_timeout = '300ms'");
$node->reload;
poll_until($mon, 'SHOW fintx.batch_queue_timeout', '300ms', 30);
hold_a();
$a = psql_start($node, 'q-a5', batch_script(0, 'q:a'));
ok(wait_event('q-a5', 'Lock'), 'the admitted batch waits for the row lock');
$start = time;
like(sql(batch_script(5, 'q:d5')), qr/^R\|2$/m, 'a batch behind it runs after the timeout');
cmp_ok(time - $start, '>=', 0.29, '... having waited the timeout');
is(queue(), '1|1|0|1', 'it is counted as timed out; the admitted batch still runs');
release_a();
ended_ok(psql_finish($a), 'the admitted batch');

# --- 6. limit 0: nothing waits
$node->append_conf('postgresql.conf', "fintx.max_active_batches = 0\nfintx.batch_queue_timeout = '60s'");
$node->reload;
poll_until($mon, 'SHOW fintx.max_active_batches', '0', 30);
hold_a();
$a = psql_start($node, 'q-a6', batch_script(0, 'q:a'));
ok(wait_event('q-a6', 'Lock'), 'a batch waits for the row lock');
like(sql(batch_script(6, 'q:d6')), qr/^R\|2$/m, 'with the limit 0 another batch runs at once');
is(queue(), '0|0|0|1', 'nothing is queued or counted');
release_a();
ended_ok(psql_finish($a), 'the batch held by the row lock');
is(reconcile_rows($node), '', 'reconcile() is clean');
# admitted: 4 (1.), 3 (2.: not the cancelled one), 2 (2b.: the transaction's first batch,
# before it had written, and the other; not its second), 2 (3.), 2 (4.), 1 (5.: not the one
# that timed out), none with the limit 0
is(sql(q{SELECT admitted FROM fintx.batch_queue()}), '14', 'every batch that ran under the limit was admitted once, the cancelled one not');

# --- 7. without shared_preload_libraries
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->append_conf('postgresql.conf', 'fintx.max_active_batches = 1');
$plain->start;
$plain->safe_psql('postgres', q{
	CREATE EXTENSION fintx;
	SELECT fintx.open_account('p:s', 'EUR', allow_negative => true);
	SELECT fintx.open_account('p:d', 'EUR');
});
is($plain->safe_psql('postgres', q{SELECT max_active, active IS NULL, waiting IS NULL, admitted IS NULL, timed_out IS NULL FROM fintx.batch_queue()}),
	'0|t|t|t|t', 'without preload fintx.batch_queue() answers NULLs and the limit 0');
is($plain->safe_psql('postgres', q{SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "p-1", "from_account": "p:s", "to_account": "p:d", "amount": 1}]')}),
	'1', 'and batches run');

$_->quit for $ctl, $mon, @holders;
done_testing();

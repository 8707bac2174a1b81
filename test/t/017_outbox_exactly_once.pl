# Exactly-once effects with the outbox and the inbox: four producers commit or roll back at
# random while a consumer processes events in its own transactions and "crashes" at random
# (rolls back its processing, or commits it and dies before the ack, or loses its session).
# With inbox_accept() in the processing transaction every committed event has its effect
# exactly once, and nothing of a rolled-back producer transaction has any effect.
use strict;
use warnings;
use FintxTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = fintx_node('outbox_once', "fintx.seal_interval = '20ms'", "fintx.expire_interval = '1h'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE TABLE produced (event_id uuid PRIMARY KEY, n int NOT NULL);
	CREATE TABLE effects (event_id uuid NOT NULL, n int NOT NULL);
	CREATE TABLE totals (total bigint NOT NULL, applied bigint NOT NULL);
	INSERT INTO totals VALUES (0, 0);
	SELECT fintx.create_consumer('svc');
});

# producers: transactions of 1-3 events, about a third rolled back
srand(12345);
my @producers;
for my $w (1 .. 4)
{
	my $script = '';
	for my $t (1 .. 120)
	{
		$script .= "BEGIN;\n";
		for my $e (1 .. 1 + int(rand(3)))
		{
			my $n = 1 + int(rand(1000));
			$script .= "INSERT INTO produced SELECT fintx.emit('job', 'w$w-t$t', 'job.created', '{\"n\": $n}'), $n;\n";
		}
		$script .= "SELECT pg_sleep(0.002);\n" if rand() < 0.3;
		$script .= (rand() < 0.33 ? "ROLLBACK;\n" : "COMMIT;\n");
	}
	push @producers, psql_start($node, "producer$w", $script);
}

my $consume = q{
	WITH ev AS (SELECT id, position, (payload->>'n')::int AS n FROM fintx.poll('svc', 10)),
	     acc AS (SELECT id, position, n, fintx.inbox_accept('svc', id) AS first FROM ev),
	     eff AS (INSERT INTO effects SELECT id, n FROM acc WHERE first RETURNING 1),
	     tot AS (UPDATE totals SET total = total + (SELECT coalesce(sum(n), 0) FROM acc WHERE first),
	                               applied = applied + (SELECT count(*) FROM acc WHERE first) RETURNING 1)
	SELECT coalesce(max(position), 0) || ' ' || count(*) || ' ' || count(*) FILTER (WHERE NOT first) FROM acc;
};

my %stats = (rolled_back => 0, no_ack => 0, lost_session => 0, redelivered => 0, acked => 0, rounds => 0);
my $session = quiet_session($node);
my $producers_done = 0;
my $idle = 0;
my $deadline = time + 240;
while (time < $deadline)
{
	$stats{rounds}++;
	my $roll = rand();
	quiet_safe($session, 'BEGIN');
	my ($max, $count, $dups) = split / /, quiet_safe($session, $consume);
	$stats{redelivered} += $dups;
	if ($roll < 0.15)
	{
		quiet_safe($session, 'ROLLBACK');    # crash before the processing commits
		$stats{rolled_back}++;
	}
	elsif ($roll < 0.22)
	{
		$session->quit;                        # the consumer process dies mid-transaction
		$session = quiet_session($node);
		$stats{lost_session}++;
	}
	else
	{
		quiet_safe($session, 'COMMIT');
		if ($roll < 0.45)
		{
			$stats{no_ack}++;                  # processed, died before the ack
		}
		elsif ($max > 0)
		{
			quiet_safe($session, "SELECT fintx.ack('svc', $max)");
			$stats{acked}++;
		}
	}
	if (!$producers_done && !grep { $_->{h}->pumpable } @producers)
	{
		$producers_done = 1;
	}
	if ($producers_done && $count == 0)
	{
		# caught up only if nothing is left after the worker's next pass
		last if ++$idle >= 5;
		usleep(50_000);
	}
	else
	{
		$idle = 0;
	}
}
$session->quit;
my @errs = grep { $_->{err} =~ /ERROR/ } map { psql_finish($_) } @producers;
is(scalar(@errs), 0, 'producers ran without errors') or diag(join "\n", map { $_->{err} } @errs);
note(join ', ', map { "$_=$stats{$_}" } sort keys %stats);

cmp_ok($stats{rolled_back}, '>', 0, 'some processing transactions rolled back');
cmp_ok($stats{no_ack}, '>', 0, 'some consumers died between processing and ack');
cmp_ok($stats{lost_session}, '>', 0, 'some consumer sessions were lost mid-transaction');
cmp_ok($stats{redelivered}, '>', 0, 'events were redelivered and refused by the inbox');

my $produced = sql('SELECT count(*) FROM produced');
cmp_ok($produced, '>', 300, "producers committed $produced events");
is(sql('SELECT count(*) FROM fintx.outbox WHERE aggregatetype = \'job\''), $produced,
	'the outbox holds exactly the events of committed producer transactions');
is(sql('SELECT count(*) - count(DISTINCT event_id) FROM effects'), '0', 'no event had its effect twice');
is(sql('SELECT count(*) FROM effects e WHERE NOT EXISTS (SELECT 1 FROM produced p WHERE p.event_id = e.event_id)'),
	'0', 'no effect from a rolled-back producer transaction');
is(sql('SELECT count(*) FROM produced p WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.event_id = p.event_id)'),
	'0', 'every committed event had its effect');
is(sql('SELECT total || \'/\' || applied FROM totals'), sql('SELECT sum(n) || \'/\' || count(*) FROM produced'),
	'the running total equals the sum over committed events (effects applied exactly once)');
is(sql('SELECT count(*) FROM fintx.inbox WHERE consumer = \'svc\''), $produced, 'the inbox holds each event once');
is(sql("SELECT string_agg(position::text, ',' ORDER BY position) = (SELECT string_agg(g::text, ',') FROM generate_series(1, fintx.outbox_tail()) g)
          FROM fintx.outbox_positions"), 't', 'positions are gap-free');

# inbox_accept() waiting on a concurrent drop_consumer(): the consumer is gone, 22023 (not the
# inbox's foreign key, 23503)
sql(q{SELECT fintx.create_consumer('dropped')});
my $dropper = quiet_session($node);
quiet_safe($dropper, q{BEGIN; SELECT fintx.drop_consumer('dropped');});
my $acceptor = FintxTest::Client->new($node, 'inbox_vs_drop');
$acceptor->send(qq{SELECT fintx.inbox_accept('dropped', '00000000-0000-7000-8000-00000000d0d0');\n});
my $waited = 0;
for (1 .. 600)
{
	$waited = sql(q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'inbox_vs_drop'
	                  AND wait_event_type = 'Lock'});
	last if $waited eq '1';
	usleep(50_000);
}
is($waited, '1', 'inbox_accept() waits for the transaction dropping its consumer');
quiet_safe($dropper, 'COMMIT');
my $err = $acceptor->finish;
is(first_sqlstate($err), '22023', 'then finds the consumer gone: 22023');
$dropper->quit;

done_testing();

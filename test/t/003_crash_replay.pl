
# Copyright fintx contributors
#
# 003_crash_replay.pl — a crash between apply and reply is safe: the retry
# replays (DESIGN.md, idempotency journal).
#
# Eight clients send transfers of random amounts into one destination, one
# statement at a time, each under key 'k<client>-<counter>'. The load
# generator records every key and its request BEFORE sending it, and records
# every result the server acknowledged. Two more clients make transfers whose
# commit record is already flushed but whose reply never comes: the node has
# synchronous_standby_names set to a standby that does not exist, and only
# those two sessions use synchronous_commit = on, so they wait in SyncRep
# after committing locally — the "applied, not answered" case, made certain.
# Mid-load the postmaster gets SIGQUIT (what pg_ctl stop -m immediate sends:
# no shutdown checkpoint, crash recovery on restart); the clients keep sending
# until their connections die. After the restart every recorded key is retried
# with its original request:
#   * a key whose result had been acknowledged must replay it exactly;
#   * the two SyncRep keys must replay (they committed before the crash);
#   * any other key either replays (committed) or is applied now (lost);
#   * afterwards each destination holds exactly the sum of its recorded
#     amounts, there is one transfer and one journal row per key, and
#     reconcile() is clean.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FintxTest;

my $C = 8;                 # load clients
my $U = 2;                 # clients whose reply is held back by SyncRep
my $CRASH_AFTER = 1500;    # acknowledged transfers before the crash ...
my $CRASH_DEADLINE = 6;    # ... or seconds of load, whichever comes first

# wal_level = replica so that synchronous replication can be requested
my $node = fintx_node('crash', { allows_streaming => 1 },
	"synchronous_standby_names = 'nobody'",
	"synchronous_commit = local");
$node->safe_psql('postgres',
	"SELECT fintx.open_account('dst', 'EUR');\n"
	  . join('', map { "SELECT fintx.open_account('src-$_', 'EUR', allow_negative => true);\n" } 0 .. $C - 1)
	  . join('', map {
		"SELECT fintx.open_account('src-u$_', 'EUR', allow_negative => true), fintx.open_account('dst-u$_', 'EUR');\n"
	  } 0 .. $U - 1));

my (%rec, %ack, @inflight, @seq, @clients);
my $crashed;

# Records the request under its key, then sends it on client $c.
sub send_request
{
	my ($c, $key, $from, $to, $amount) = @_;
	$rec{$key} = { from => $from, to => $to, amount => $amount };
	$inflight[$c] = $key;
	$clients[$c]->send("SELECT 'R', '$key', t.* FROM fintx.transfer('$key', '$from', '$to', $amount) t;\n"
		  . "\\echo D|$key\n");
}

# Next request of load client $c.
sub send_next
{
	my ($c) = @_;
	send_request($c, "k$c-" . $seq[$c]++, "src-$c", 'dst', 1 + int(rand(1000)));
}

# Collects acknowledgements and completion markers of client $c.
sub collect
{
	my ($c) = @_;
	for my $line ($clients[$c]->lines)
	{
		if ($line =~ /^R\|/)
		{
			my @f = split /\|/, $line, -1;
			# key => (transfer_id, status, replayed, from_balance, to_balance, entry_hash, created_at)
			$ack{ $f[1] } = join('|', @f[ 2 .. 8 ]);
		}
		elsif ($line =~ /^D\|(.*)$/)
		{
			$inflight[$c] = undef if defined $inflight[$c] && $inflight[$c] eq $1;
		}
	}
}

# --- the two held-back replies ---------------------------------------------------
my @held;
for my $u (0 .. $U - 1)
{
	my $c = $C + $u;
	$clients[$c] = FintxTest::Client->new($node, "held-$u");
	$clients[$c]->send("SET synchronous_commit = on;\n");
	send_request($c, "u$u-0", "src-u$u", "dst-u$u", 500 + $u);
	push @held, "u$u-0";
}
my $mon = quiet_session($node);
my ($ok, $info) = poll_until($mon,
	"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'held-%' AND wait_event = 'SyncRep'",
	$U, 30);
ok($ok, "$U transfers committed locally and wait for a standby: applied, reply held back")
  or diag("sessions in SyncRep: $info");
collect($_) for $C .. $C + $U - 1;
is(scalar(grep { exists $ack{$_} } @held), 0, 'no reply arrived for the held-back transfers');
$mon->quit;

# --- load, then crash --------------------------------------------------------------
$clients[$_] = FintxTest::Client->new($node, "load-$_") for 0 .. $C - 1;
my $t0 = time;
send_next($_) for 0 .. $C - 1;
my ($postmaster) = split /\n/, slurp_file($node->data_dir . '/postmaster.pid');
while (time - $t0 < 60)
{
	my $alive = 0;
	for my $c (0 .. $#clients)
	{
		collect($c);
		next unless $clients[$c]->alive;
		$alive++;
		# keep the load on, also while the server goes down
		send_next($c) if $c < $C && !defined $inflight[$c];
	}
	if (!$crashed && (keys(%ack) >= $CRASH_AFTER || time - $t0 > $CRASH_DEADLINE))
	{
		# what "pg_ctl stop -m immediate" does, without waiting, so that the
		# clients keep sending while the server dies
		kill 'QUIT', $postmaster;
		$crashed = time;
		note "sent SIGQUIT to postmaster $postmaster";
	}
	last if $crashed && !$alive;
	last if $crashed && time - $crashed > 20;
	usleep(200);
}
ok($crashed, 'the server was stopped in immediate mode (SIGQUIT to the postmaster) while the load ran');
my $stragglers = grep { $_->alive } @clients;
is($stragglers, 0, 'every client lost its connection at the crash');
my @errs = map { $_->finish } @clients;
my @sql_errors = grep { /ERROR:/ } map { split /\n/ } @errs;
is(scalar(@sql_errors), 0, 'no transfer failed with an ERROR before the crash')
  or diag(join("\n", @sql_errors[ 0 .. ($#sql_errors < 9 ? $#sql_errors : 9) ]));
my $down = time;
usleep(50_000) while kill(0, $postmaster) && time - $down < 30;
ok(!kill(0, $postmaster), 'the postmaster exited');
# tell the Cluster object that the node is down (pg_ctl finds no server: fail_ok)
$node->stop('immediate', fail_ok => 1);

my @keys = sort keys %rec;
my @unacked = grep { !exists $ack{$_} } @keys;
my $bad_acks = grep { (split /\|/, $ack{$_})[2] ne 'f' } keys %ack;
is($bad_acks, 0, 'every result acknowledged before the crash was a fresh application (replayed = false)');
cmp_ok(scalar(keys %ack), '>=', 100, 'at least 100 transfers were acknowledged before the crash');
cmp_ok(scalar(@unacked), '>', $U, 'load requests were recorded by their clients without a reply when the server went down'
	  . ' (some may never have reached the server; the committed-but-unanswered case is the SyncRep sessions\')');
diag(sprintf('load ran %.1f s: %d keys recorded, %d acknowledged, %d without reply (%d of them held back by SyncRep)',
	$crashed - $t0, scalar(@keys), scalar(keys %ack), scalar(@unacked), $U));

# --- restart: crash recovery ------------------------------------------------------
$node->start;
ok($node->log_contains('database system was not properly shut down; automatic recovery in progress'),
	'the restart ran crash recovery');

# --- retry every recorded key with its original request ---------------------------
my $script = join('', map {
	"SELECT 'R', '$_', t.* FROM fintx.transfer('$_', '$rec{$_}{from}', '$rec{$_}{to}', $rec{$_}{amount}) t;\n"
} @keys);
my $retry = psql_finish(psql_start($node, 'retry', $script));
is($retry->{err}, '', 'retrying every recorded key raised no error');
my %again = map { $_->[1] => join('|', @$_[ 2 .. 8 ]) } @{ psql_result_rows($retry->{out}, 'R') };
is(scalar(keys %again), scalar(@keys), 'every recorded key got a result on retry');

my ($replayed, $applied, $acked_ok, $acked_bad, $lost, $committed_unacked) = (0) x 6;
my @mismatch;
for my $k (@keys)
{
	my $r = $again{$k} // next;
	my @f = split /\|/, $r, -1;
	$f[2] eq 't' ? $replayed++ : $applied++;
	if (exists $ack{$k})
	{
		# the replay must be the acknowledged result, replayed flag aside
		my @a = split /\|/, $ack{$k}, -1;
		$a[2] = 't';
		if (join('|', @a) eq $r) { $acked_ok++ }
		else { $acked_bad++; push @mismatch, "$k: acked $ack{$k} retry $r" if @mismatch < 5 }
	}
	else
	{
		$f[2] eq 't' ? $committed_unacked++ : $lost++;
	}
}
diag("retry: $replayed replayed (committed before the crash), $applied applied now (lost in the crash);"
	  . " of the " . scalar(@unacked) . " unanswered requests $committed_unacked had committed and $lost were lost");
is($acked_bad, 0, 'every acknowledged transfer replayed with its original transfer_id, balances and created_at')
  or diag(join("\n", @mismatch));
is($acked_ok, scalar(keys %ack), 'all acknowledged transfers were replayed');
is(join(',', map { (split /\|/, $again{$_} // '||x')[2] } @held), join(',', ('t') x $U),
	'the transfers committed before the crash but never answered replay (replayed = true)');
is($replayed + $applied, scalar(@keys), 'every retry either replayed or applied');
is($applied, $lost, 'only requests that never got a reply were applied on retry');

# --- exact end state --------------------------------------------------------------
my (%to, %from);
for my $k (@keys)
{
	$to{ $rec{$k}{to} } += $rec{$k}{amount};
	$from{ $rec{$k}{from} } += $rec{$k}{amount};
}
my $balances = $node->safe_psql('postgres',
	"SELECT string_agg(code || '=' || posted, ' ' ORDER BY code) FROM fintx.account_balances");
my %exp = (%to, map { $_ => -$from{$_} } keys %from);
is($balances, join(' ', map { "$_=$exp{$_}" } sort keys %exp),
	'every destination holds exactly the sum of its recorded amounts, every source the negative');
is( $node->safe_psql('postgres',
		'SELECT (SELECT count(*) FROM fintx.transfers) || \'/\' || (SELECT count(*) FROM fintx.idempotency_keys)'),
	scalar(@keys) . '/' . scalar(@keys),
	'one transfer and one journal row per recorded key');
is(reconcile_rows($node), '', 'reconcile() reports no discrepancy after recovery and retry');

# a second retry round replays everything and moves nothing
my $values = join(",\n", map { "('$_', '$rec{$_}{from}', '$rec{$_}{to}', $rec{$_}{amount})" } @keys);
is( $node->safe_psql('postgres', qq{
	SELECT count(*) FILTER (WHERE (r).replayed) || '/' || count(*)
	  FROM (SELECT fintx.transfer(k, f, t, a::bigint) AS r FROM (VALUES $values) v(k, f, t, a)) s}),
	scalar(@keys) . '/' . scalar(@keys),
	'a second retry of every key replays all of them');
is( $node->safe_psql('postgres',
		"SELECT string_agg(code || '=' || posted, ' ' ORDER BY code) FROM fintx.account_balances"),
	$balances, 'balances unchanged by the second retry');

$node->stop;
done_testing();

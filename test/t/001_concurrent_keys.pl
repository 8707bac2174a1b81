
# Copyright fintx contributors
#
# 001_concurrent_keys.pl — sessions racing on one idempotency key.
#
# Contract (DESIGN.md, idempotency journal): same key + same request → the
# original result with replayed = true; same key + different request → 23505;
# two sessions racing on one key: one applies, the other waits and replays; if
# the first aborts, a waiter's claim wins.
#
# Every race uses barrier_race(): 16 psql sessions are released at once and
# the test observes the 15 losers blocked on the winner's still-open
# transaction before it lets the winner commit, so the race is real.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $N = 16;
my $node = fintx_node('keys');
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('dst_same', 'EUR');
	SELECT fintx.open_account('dst_diff', 'EUR');
	SELECT fintx.open_account('dst_abort', 'EUR');
	SELECT fintx.open_account('dst_batch', 'EUR');
});
my $ctl = quiet_session($node);

sub posted
{
	my ($code) = @_;
	return $node->safe_psql('postgres',
		"SELECT posted FROM fintx.account_balances WHERE code = '$code'");
}

# Checks a same-request race: one R row per session, exactly one applied,
# every result identical apart from "replayed".
sub check_same_request_race
{
	my ($label, $res, $amount) = @_;
	my @rows;
	my @bad;
	for my $s (@{ $res->{sessions} })
	{
		my $r = psql_result_rows($s->{out}, 'R');
		push @bad, "$s->{app}: rc=$s->{rc} rows=" . scalar(@$r) . " err=$s->{err}"
		  if $s->{rc} != 0 || $s->{err} =~ /ERROR/ || @$r != 1;
		push @rows, @$r;
	}
	is(scalar(@bad), 0, "$label: every session got exactly one result and no error")
	  or diag(join("\n", @bad));
	my @applied = grep { $_->[3] eq 'f' } @rows;
	my @replayed = grep { $_->[3] eq 't' } @rows;
	is(scalar(@applied), 1, "$label: exactly one session applied the transfer (replayed = false)");
	is(scalar(@replayed), $N - 1, "$label: the other " . ($N - 1) . " sessions got replayed = true");

	# (transfer_id, status, from_balance, to_balance, entry_hash, created_at)
	my %distinct = map { join('|', @$_[ 1, 2, 4, 5, 6, 7 ]) => 1 } @rows;
	is(scalar(keys %distinct), 1,
		"$label: all $N results carry the same transfer_id, status, balances and created_at")
	  or diag(explain [ keys %distinct ]);
	my $first = $rows[0] // [];
	is($first->[2], 'posted', "$label: status is posted");
	is($first->[5], $amount, "$label: to_balance in the result is $amount");
	return $first->[1];
}

# ---------------------------------------------------------------------------
# 1. Same key, same request, 16 sessions at once.
# ---------------------------------------------------------------------------
my $res = barrier_race($node, $ctl,
	name => 'same',
	n => $N,
	stmt => sub {
		"SELECT 'R', t.* FROM fintx.transfer('race-same', 'src', 'dst_same', 1000, '{\"n\": 1}') t;";
	});
my $tid = check_same_request_race('same key, same request', $res, 1000);
is(posted('dst_same'), 1000, 'same key, same request: destination moved exactly once (1000)');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM fintx.transfers t JOIN fintx.accounts a ON a.id = t.to_account"
		  . " WHERE a.code = 'dst_same'"),
	1,
	'same key, same request: exactly one transfer row');
is( $node->safe_psql('postgres',
		"SELECT count(*) || '/' || min(transfer_id) FROM fintx.idempotency_keys"
		  . " WHERE idempotency_key = 'race-same'"),
	"1/$tid",
	'same key, same request: one journal row pointing at the applied transfer');
is( $node->safe_psql('postgres',
		"SELECT transfer_id || '|' || replayed FROM fintx.transfer('race-same', 'src', 'dst_same', 1000, '{\"n\": 1}')"),
	"$tid|true",
	'same key, same request: a later sequential retry replays the same transfer');

# ---------------------------------------------------------------------------
# 2. Same key, 16 different amounts: exactly one applies, 15 get 23505.
# ---------------------------------------------------------------------------
$res = barrier_race($node, $ctl,
	name => 'diff',
	n => $N,
	stmt => sub {
		my $amount = 101 + $_[0];
		"SELECT 'R', t.* FROM fintx.transfer('race-diff', 'src', 'dst_diff', $amount) t;";
	});
my (@winners, @codes);
for my $i (0 .. $N - 1)
{
	my $s = $res->{sessions}[$i];
	my $r = psql_result_rows($s->{out}, 'R');
	if (@$r == 1 && $s->{err} !~ /ERROR/)
	{
		push @winners, [ $i, $r->[0] ];
	}
	else
	{
		push @codes, first_sqlstate($s->{err}) // "none (rows=" . scalar(@$r) . " err=$s->{err})";
	}
}
is(scalar(@winners), 1, 'same key, different amounts: exactly one session succeeded');
is_deeply(\@codes, [ ('23505') x ($N - 1) ],
	'same key, different amounts: the other 15 failed with SQLSTATE 23505');
my ($wi, $wrow) = @{ $winners[0] // [ -1, [] ] };
my $wamount = 101 + $wi;
is($wrow->[3], 'f', 'same key, different amounts: the winner was applied, not replayed');
is(posted('dst_diff'), $wamount,
	"same key, different amounts: destination holds exactly the winner's amount");
note "winning amount: $wamount";
is( $node->safe_psql('postgres',
		"SELECT count(*) || '/' || sum(amount) FROM fintx.transfers t JOIN fintx.accounts a"
		  . " ON a.id = t.to_account WHERE a.code = 'dst_diff'"),
	"1/$wamount",
	'same key, different amounts: one transfer row with the winning amount');
is( $node->safe_psql('postgres',
		"SELECT j.fingerprint = fintx.request_fingerprint('src', 'dst_diff', $wamount)"
		  . " FROM fintx.idempotency_keys j WHERE j.idempotency_key = 'race-diff'"),
	't',
	"same key, different amounts: the journal stores the winner's fingerprint");
is( $node->safe_psql('postgres',
		"SELECT transfer_id || '|' || replayed FROM fintx.transfer('race-diff', 'src', 'dst_diff', $wamount)"),
	"$wrow->[1]|true",
	"same key, different amounts: retrying the winner's request replays it");
my $loser_amount = $wi == 0 ? 102 : 101;
my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY sqlstate\nSELECT fintx.transfer('race-diff', 'src', 'dst_diff', $loser_amount)");
is(first_sqlstate($err), '23505', "same key, different amounts: retrying a loser's request still gives 23505");

# ---------------------------------------------------------------------------
# 3. The key's first claimer aborts: one of the 16 waiters applies, 15 replay.
# ---------------------------------------------------------------------------
$res = barrier_race($node, $ctl,
	name => 'abort',
	n => $N,
	stmt => sub {
		"SELECT 'R', t.* FROM fintx.transfer('race-abort', 'src', 'dst_abort', 700) t;";
	},
	before_release => sub {
		quiet_safe($ctl, "BEGIN; SELECT fintx.transfer('race-abort', 'src', 'dst_abort', 700)");
	},
	after_release => sub {
		my ($mon) = @_;
		my ($ok, $info) = poll_until($mon,
			"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'abort-%'"
			  . " AND wait_event = 'transactionid'", $N, 30);
		ok($ok, "aborted claimer: all $N sessions wait for the uncommitted first claim of the key")
		  or diag("waiting: $info");
		quiet_safe($ctl, 'ROLLBACK');
	});
check_same_request_race('aborted claimer', $res, 700);
is(posted('dst_abort'), 700, 'aborted claimer: destination moved exactly once (700)');

# ---------------------------------------------------------------------------
# 4. Eight batches with the same five requests in different orders: keys are
#    claimed in one global order, so no deadlock; one batch applies all five.
# ---------------------------------------------------------------------------
my @reqs = map {
	{ k => "batch-$_", a => 10 * $_ }
} 1 .. 5;
my @orders = ([0,1,2,3,4], [4,3,2,1,0], [2,0,4,1,3], [3,4,0,2,1],
	[1,3,0,4,2], [4,0,3,1,2], [0,2,4,3,1], [3,1,4,0,2]);
$res = barrier_race($node, $ctl,
	name => 'batch',
	n => scalar(@orders),
	stmt => sub {
		my $json = '[' . join(', ', map {
			sprintf('{"idempotency_key": "%s", "from_account": "src", "to_account": "dst_batch", "amount": %d}',
				$reqs[$_]{k}, $reqs[$_]{a})
		} @{ $orders[ $_[0] ] }) . ']';
		"SELECT 'R', t.* FROM fintx.transfer_batch('$json') t;";
	});
my (%by_tid, @bad, %kinds);
for my $s (@{ $res->{sessions} })
{
	my $r = psql_result_rows($s->{out}, 'R');
	push @bad, "$s->{app}: rows=" . scalar(@$r) . " err=$s->{err}"
	  if $s->{err} =~ /ERROR/ || @$r != 5;
	my %replayed = map { $_->[3] => 1 } @$r;
	$kinds{ join('', sort keys %replayed) }++;
	$by_tid{ $_->[1] }++ for @$r;
}
is(scalar(@bad), 0, 'batches: no session failed (no deadlock), each got five results')
  or diag(join("\n", @bad));
is_deeply(\%kinds, { f => 1, t => scalar(@orders) - 1 },
	'batches: one batch applied all five requests, every other batch replayed all five');
is_deeply([ sort values %by_tid ], [ (scalar(@orders)) x 5 ],
	'batches: five transfer ids, each returned to all eight sessions');
is(posted('dst_batch'), 150, 'batches: destination moved exactly once per request (150)');

# ---------------------------------------------------------------------------
# Whole ledger
# ---------------------------------------------------------------------------
is( $node->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM fintx.transfers) || '/' || (SELECT count(*) FROM fintx.idempotency_keys)"),
	'8/8',
	'ledger: 8 transfers and 8 journal rows in total');
is(posted('src'), -(1000 + $wamount + 700 + 150), 'ledger: source debited by exactly the applied transfers');
is(reconcile_rows($node), '', 'ledger: reconcile() reports no discrepancy');
ok(!$node->log_contains('deadlock detected'), 'server log: no deadlock detected');

$ctl->quit;
$node->stop;
done_testing();


# Copyright fintx contributors
#
# 004_holds.pl — two-phase holds under concurrency, expiry and crash.
#
# Contract (DESIGN.md, ledger): a hold reserves, then posts (fully or partly)
# or voids, at most once, or expires at its timeout; resolving it again is
# SQLSTATE 55000. The background worker (fintx.expire_interval, in database
# fintx.database) releases expired holds as status 'expired' by itself.
#
#  1. 12 sessions post (fully or partly) or void one hold at once, each under
#     its own key: exactly one succeeds, 11 get 55000, the ledger shows that
#     one resolution and nothing else.
#  2. A hold with timeout '1 second' reserves funds, stays open until its
#     timeout and is released by the worker within a few seconds without any
#     call; the funds are available again; posting or voiding it is 55000.
#  3. A hold past its timeout that the worker has not released yet (its row is
#     locked, the worker skips it) cannot be posted either: 55000 "has expired".
#     A post_pending that claimed a hold before its timeout but could only
#     apply it after the timeout (it waited for an account lock) is refused
#     too, and the worker expires the hold afterwards.
#  4. Posters race the worker on 40 holds expiring over one second: each hold
#     is resolved exactly once, either posted or expired, and every failed
#     post is 55000.
#  5. Crash (immediate stop) with open holds and an uncommitted post_pending:
#     after restart the worker still releases the timed holds, the holds
#     without timeout stay open, the uncommitted post left no trace.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FintxTest;

my $node = fintx_node('holds', "fintx.expire_interval = '100ms'");
my $setup = q{SELECT fintx.open_account('mint', 'EUR', allow_negative => true);};
for my $a (qw(race payer late slow poster crash))
{
	$setup .= "SELECT fintx.open_account('$a', 'EUR'), fintx.open_account('$a-to', 'EUR');\n"
	  . "SELECT fintx.transfer('fund-$a', 'mint', '$a', 10000);\n";
}
$node->safe_psql('postgres', $setup);

sub q1 { return $node->safe_psql('postgres', $_[0]); }

sub balance
{
	my ($code) = @_;
	return q1("SELECT posted || '/' || pending_debits || '/' || pending_credits || '/' || available"
		  . " FROM fintx.account_balances WHERE code = '$code'");
}

# Runs one statement in its own psql; returns the SQLSTATE of its error or 'ok'.
sub outcome
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $rc == 0 ? 'ok' : (first_sqlstate($err) // "rc=$rc $err");
}

# Creates a hold and returns its transfer id.
sub hold
{
	my ($key, $from, $to, $amount, $timeout) = @_;
	my $t = defined $timeout ? ", timeout => '$timeout'" : '';
	return q1("SELECT transfer_id FROM fintx.transfer('$key', '$from', '$to', $amount, pending => true$t)");
}

# ---------------------------------------------------------------------------
# 1. Twelve sessions resolve one hold at once.
# ---------------------------------------------------------------------------
my $h1 = hold('h1', 'race', 'race-to', 500);
is(balance('race'), '10000/500/0/9500', 'race: the hold reserves 500 of the payer');
my @ops = map {
	$_ % 3 == 0 ? [ "post-$_", "fintx.post_pending('post-$_', $h1)", 'posted', 500 ]
	  : $_ % 3 == 1 ? [ "part-$_", "fintx.post_pending('part-$_', $h1, " . (100 + $_) . ")", 'posted', 100 + $_ ]
	  : [ "void-$_", "fintx.void_pending('void-$_', $h1)", 'voided', 0 ]
} 0 .. 11;
my $ctl = quiet_session($node);
my $res = barrier_race($node, $ctl,
	name => 'resolve',
	n => scalar(@ops),
	stmt => sub { "SELECT 'R', t.* FROM $ops[$_[0]][1] t;" });
my (@win, @codes);
for my $i (0 .. $#ops)
{
	my $s = $res->{sessions}[$i];
	my $r = psql_result_rows($s->{out}, 'R');
	if (@$r == 1 && $s->{err} !~ /ERROR/) { push @win, [ $i, $r->[0] ] }
	else { push @codes, first_sqlstate($s->{err}) // "none: $s->{err}" }
}
is(scalar(@win), 1, 'race: exactly one of 12 resolutions succeeded');
is_deeply(\@codes, [ ('55000') x 11 ], 'race: the other 11 failed with SQLSTATE 55000');
my ($wi, $wrow) = @{ $win[0] // [ 0, [] ] };
my (undef, undef, $wstatus, $wposted) = @{ $ops[$wi] };
note "race winner: $ops[$wi][1]";
is($wrow->[2], $wstatus, "race: the winner's result has the status its operation gives (posted or voided)");
is( q1("SELECT count(*) || '/' || min(status) || '/' || min(amount) FROM fintx.transfers WHERE pending_id = $h1"),
	"1/$wstatus/" . ($wstatus eq 'voided' ? 500 : $wposted),
	'race: exactly one resolution row for the hold');
is(balance('race'), (10000 - $wposted) . "/0/0/" . (10000 - $wposted),
	'race: payer debited by exactly the posted amount, nothing held any more');
is(balance('race-to'), "$wposted/0/0/$wposted", 'race: payee credited by exactly the posted amount');
is( q1("SELECT transfer_id || '/' || replayed FROM $ops[$wi][1]"),
	"$wrow->[1]/true", "race: retrying the winner's key replays its result");
my $li = $wi == 0 ? 1 : 0;
is(outcome("SELECT $ops[$li][1]"), '55000', "race: retrying a loser's key is still 55000");
is(outcome("SELECT fintx.void_pending('void-again', $h1)"), '55000', 'race: a new void of the resolved hold is 55000');
is(outcome("SELECT fintx.post_pending('post-again', $h1)"), '55000', 'race: a new post of the resolved hold is 55000');

# ---------------------------------------------------------------------------
# 2. The worker releases a 1-second hold by itself.
# ---------------------------------------------------------------------------
my $mon = quiet_session($node);
my $t0 = time;
my $h2 = hold('h2', 'payer', 'payer-to', 6000, '1 second');
is(balance('payer'), '10000/6000/0/4000', 'expiry: the hold reserves 6000, 4000 available');
is(balance('payer-to'), '0/0/6000/0', 'expiry: the payee sees 6000 pending credit');
is(outcome("SELECT fintx.transfer('too-much', 'payer', 'mint', 5000)"), 'FX001',
	'expiry: reserved funds cannot be spent (FX001)');
usleep(1_000_000 * (0.5 - (time - $t0))) if time - $t0 < 0.5;
my $open_mid = quiet_query($mon, "SELECT count(*) FROM fintx.open_holds WHERE transfer_id = $h2 AND NOT expired");
SKIP:
{
	skip 'machine too slow to look at the hold before its timeout', 1 if time - $t0 > 0.95;
	is($open_mid, '1', 'expiry: half a second after creation the hold is still open');
}
my ($ok, $waited) = poll_until($mon,
	"SELECT count(*) FROM fintx.transfer_history WHERE pending_id = $h2 AND status = 'expired'", '1', 15);
my $after = time - $t0;
ok($ok, 'expiry: the worker released the hold as status expired without any call');
diag(sprintf('expiry: released %.2f s after creation', $after));
cmp_ok($after, '<=', 4, 'expiry: released within 4 s of creation (timeout 1 s, interval 100 ms)');
is( q1("SELECT e.amount || '/' || e.principal || '/' || (e.created_at >= h.timeout_at - interval '50 ms')"
		  . " FROM fintx.transfers e JOIN fintx.transfers h ON h.id = e.pending_id WHERE e.pending_id = $h2"),
	'6000/pg_fintx/true',
	'expiry: the expired row releases the full 6000, by the system principal, at the timeout');
is(balance('payer'), '10000/0/0/10000', 'expiry: the funds are available again');
is(balance('payer-to'), '0/0/0/0', 'expiry: the payee has no pending credit left');
is(q1("SELECT count(*) FROM fintx.open_holds WHERE transfer_id = $h2"), '0', 'expiry: no longer an open hold');
is(outcome("SELECT fintx.post_pending('post-h2', $h2)"), '55000', 'expiry: posting the expired hold is 55000');
is(outcome("SELECT fintx.void_pending('void-h2', $h2)"), '55000', 'expiry: voiding the expired hold is 55000');
is(outcome("SELECT fintx.transfer('spend', 'payer', 'mint', 10000)"), 'ok',
	'expiry: the whole balance can be spent again');

# ---------------------------------------------------------------------------
# 3. Past its timeout but not yet released (row locked, the worker skips it).
# ---------------------------------------------------------------------------
my $h3 = hold('h3', 'late', 'late-to', 300, '1 second');
my $late = quiet_session($node, on_error_stop => 0);
quiet_query($late, "\\set VERBOSITY verbose");
quiet_query($late, "BEGIN; SELECT transfer_id FROM fintx.pending_holds WHERE transfer_id = $h3 FOR SHARE");
usleep(1_500_000);
is(quiet_query($mon, "SELECT count(*) FROM fintx.open_holds WHERE transfer_id = $h3 AND expired"), '1',
	'late post: 1.5 s later the hold is past its timeout and still open (the worker skipped the locked row)');
quiet_query($late, "SELECT fintx.post_pending('post-h3', $h3)");
like($late->{stderr}, qr/ERROR:\s+55000: pending transfer $h3 has expired/,
	'late post: posting a hold past its timeout is 55000 (has expired)');
quiet_query($late, 'ROLLBACK');
$late->quit;
($ok) = poll_until($mon,
	"SELECT count(*) FROM fintx.transfer_history WHERE pending_id = $h3 AND status = 'expired'", '1', 10);
ok($ok, 'late post: once unlocked, the worker releases it as expired');
is(balance('late'), '10000/0/0/10000', 'late post: nothing was posted');

# A post that starts before the timeout but can only apply after it.
# post_pending claims the hold (deletes its open-hold row, so the worker skips
# it), then waits for the payer's account lock held by another transaction;
# the hold's timeout passes during the wait. ApplyNew() reads the clock it
# compares timeout_at with *before* ClaimHolds/LockAccounts wait, so the post
# still succeeds and commits a posting of a hold that had expired.
my $t3 = time;
my $h3b = hold('h3b', 'slow', 'slow-to', 100, '2 seconds');
my $locker = quiet_session($node);
quiet_safe($locker, "BEGIN; SELECT fintx.transfer('lock-slow', 'mint', 'slow', 1)");
my $poster = FintxTest::Client->new($node, 'slow-post');
$poster->send("SELECT 'R', t.status FROM fintx.post_pending('post-h3b', $h3b) t;\n\\echo D\n");
($ok) = poll_until($mon, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'slow-post'"
	  . " AND wait_event = 'transactionid'", '1', 10);
my $claimed_at = time - $t3;
note sprintf('slow post: waiting for the payer lock %.2f s after the hold was made', $claimed_at);
ok($ok && $claimed_at < 2, 'slow post: post_pending claimed the hold before its timeout and waits for the payer lock');
usleep(1_000_000 * (2.6 - (time - $t3))) if time - $t3 < 2.6;
quiet_safe($locker, 'COMMIT');
$locker->quit;
my @slow;
my $slow_deadline = time + 10;
while (time < $slow_deadline)
{
	push @slow, $poster->lines;
	last if grep { $_ eq 'D' } @slow;
	usleep(20_000);
}
my $slow_err = $poster->finish;
($ok) = poll_until($mon, "SELECT count(*) FROM fintx.pending_holds WHERE transfer_id = $h3b", '0', 10);
is(q1("SELECT count(*) FROM fintx.transfers WHERE pending_id = $h3b"), '1',
	'slow post: the hold is resolved exactly once');
{
	# regression: the clock used to be read before waiting for the account locks
	is(first_sqlstate($slow_err) // 'ok', '55000',
		'slow post: a post applied 0.6 s after the timeout is refused with 55000');
	is(q1("SELECT status FROM fintx.transfers WHERE pending_id = $h3b"), 'expired',
		'slow post: the hold ends expired, not posted after its timeout');
}

# ---------------------------------------------------------------------------
# 4. Posters race the worker on 40 holds expiring over one second.
# ---------------------------------------------------------------------------
my $NH = 40;
my @h4 = split /\n/, q1(join(" UNION ALL ", map {
	sprintf("SELECT transfer_id FROM fintx.transfer('h4-%d', 'poster', 'poster-to', %d, pending => true, timeout => '%d ms')",
		$_, 10 + $_, 800 + 25 * $_)
} 0 .. $NH - 1));
is(scalar(@h4), $NH, "posters: $NH holds created, timeouts 0.8 s to 1.8 s");
my @posters;
for my $c (0 .. 3)
{
	my @order = map { $_->[1] } sort { $a->[0] <=> $b->[0] } map { [ rand(), $_ ] } 0 .. $NH - 1;
	my $script = "SELECT pg_sleep(0.9);\n" . join('', map {
		"SELECT 'R', $_, t.status FROM fintx.post_pending('p$c-$_', $h4[$_]) t;\nSELECT pg_sleep(0.03);\n"
	} @order);
	push @posters, psql_start($node, "poster-$c", $script);
}
my @pres = map { psql_finish($_) } @posters;
my $posted_ok = 0;
my %post_codes;
for my $p (@pres)
{
	$posted_ok += scalar(@{ psql_result_rows($p->{out}, 'R') });
	$post_codes{$_}++ for @{ all_sqlstates($p->{err}) };
}
($ok) = poll_until($mon, "SELECT count(*) FROM fintx.pending_holds WHERE transfer_id IN (" . join(',', @h4) . ")", '0', 10);
ok($ok, 'posters: every hold is resolved in the end');
my $state = q1("SELECT count(*) FILTER (WHERE n = 1) || '/' || count(*) FILTER (WHERE n <> 1)"
	  . " || '/' || coalesce(sum(n) FILTER (WHERE st = 'posted'), 0) || '/' || coalesce(sum(n) FILTER (WHERE st = 'expired'), 0)"
	  . " FROM (SELECT h.id, count(r.id) AS n, min(r.status) AS st FROM fintx.transfers h"
	  . " LEFT JOIN fintx.transfers r ON r.pending_id = h.id WHERE h.id IN (" . join(',', @h4) . ") GROUP BY h.id) s");
my ($once, $not_once, $n_posted, $n_expired) = split m{/}, $state;
is("$once/$not_once", "$NH/0", "posters: each of the $NH holds has exactly one resolution");
is($n_posted, $posted_ok, 'posters: posted resolutions = successful post_pending calls');
is($n_posted + $n_expired, $NH, 'posters: every hold is either posted or expired');
cmp_ok($n_expired, '>', 0, 'posters: the worker expired some holds (those due before the posters began)');
cmp_ok($n_posted, '>', 0, 'posters: the posters posted some holds before their timeout');
is_deeply([ sort keys %post_codes ], ['55000'], 'posters: every failed post_pending was 55000');
is(4 * $NH - $posted_ok, $post_codes{'55000'} // 0, 'posters: every post_pending call either succeeded or got 55000');
my $sum_posted = q1("SELECT coalesce(sum(amount), 0) FROM fintx.transfers WHERE status = 'posted' AND pending_id IN ("
	  . join(',', @h4) . ")");
is(balance('poster-to'), "$sum_posted/0/0/$sum_posted", 'posters: payee holds exactly the posted amounts');
diag("posters vs worker: $n_posted holds posted, $n_expired expired, "
	  . ($post_codes{'55000'} // 0) . " post attempts got 55000");

# ---------------------------------------------------------------------------
# 5. Crash with open holds and an uncommitted post.
# ---------------------------------------------------------------------------
my @timed = map { hold("h5-$_", 'crash', 'crash-to', 100, '4 seconds') } 0 .. 9;
my @untimed = map { hold("h5-forever-$_", 'crash', 'crash-to', 100) } 0 .. 1;
my $inflight = FintxTest::Client->new($node, 'inflight');
$inflight->send("BEGIN;\nSELECT 'R', t.status FROM fintx.post_pending('inflight-post', $timed[0]) t;\n");
($ok) = poll_until($mon, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'inflight'"
	  . " AND state = 'idle in transaction' AND backend_xid IS NOT NULL", '1', 10);
ok($ok, 'crash: a post_pending of a timed hold is applied but not committed');
is(q1("SELECT count(*) FROM fintx.open_holds WHERE NOT expired AND from_account = 'crash'"), '12',
	'crash: 12 holds open before the crash (10 expire in 4 s, 2 never)');
is(balance('crash'), '10000/1200/0/8800', 'crash: 1200 reserved before the crash');
$mon->quit;
$ctl->quit;
$node->stop('immediate');
$inflight->finish;
my $t5 = time;
$node->start;
ok($node->log_contains('database system was not properly shut down; automatic recovery in progress'),
	'crash: the restart ran crash recovery');
$mon = quiet_session($node);
is(q1("SELECT count(*) FROM fintx.open_holds WHERE transfer_id IN (" . join(',', @timed) . ")"), '10',
	'crash: right after the restart the 10 timed holds are open again (the post was lost)');
($ok, $waited) = poll_until($mon,
	"SELECT count(*) FROM fintx.transfers WHERE status = 'expired' AND pending_id IN (" . join(',', @timed) . ")",
	'10', 15);
ok($ok, 'crash: after restart the worker released all 10 timed holds as expired');
diag(sprintf('crash: timed holds released %.1f s after the restart began', time - $t5));
usleep(500_000);   # five more worker passes
is(q1("SELECT count(*) FROM fintx.open_holds WHERE transfer_id IN (" . join(',', @untimed) . ")"), '2',
	'crash: the holds without timeout are still open');
is(q1("SELECT count(*) FROM fintx.transfers WHERE pending_id = $timed[0]") . '/'
	  . q1("SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key = 'inflight-post'"),
	'1/0', 'crash: the uncommitted post left no transfer and no journal row; the hold expired instead');
is(balance('crash'), '10000/200/0/9800', 'crash: only the two untimed holds still reserve funds');
is(outcome("SELECT fintx.post_pending('inflight-post', $timed[0])"), '55000',
	'crash: retrying the lost post after expiry is 55000');
is(outcome("SELECT fintx.post_pending('post-forever', $untimed[0])"), 'ok', 'crash: an untimed hold can still be posted');
is(outcome("SELECT fintx.void_pending('void-forever', $untimed[1])"), 'ok', 'crash: an untimed hold can still be voided');
is(balance('crash'), '9900/0/0/9900', 'crash: final payer balance 9900');
is(balance('crash-to'), '100/0/0/100', 'crash: final payee balance 100');

# ---------------------------------------------------------------------------
# 6. REPEATABLE READ: a hold made after the transaction's snapshot is 40001 (retry), not
#    22023 (does not exist): the same answer as for a key claimed after the snapshot.
# ---------------------------------------------------------------------------
my $rr = quiet_session($node, on_error_stop => 0);
quiet_safe($rr, "\\set VERBOSITY verbose\nBEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;");
my $h6 = hold('h6', 'crash', 'crash-to', 10);
quiet_query($rr, "SELECT fintx.post_pending('h6-post', $h6)");
like($rr->{stderr}, qr/40001: could not serialize access to transfer $h6/,
	'REPEATABLE READ: posting a hold made after the snapshot is a serialization failure');
quiet_query($rr, 'ROLLBACK');
$rr->{stderr} = '';
quiet_query($rr, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT fintx.post_pending('h6-missing', 999999999)");
like($rr->{stderr}, qr/22023: transfer 999999999 does not exist/, 'REPEATABLE READ: an id nobody made is still 22023');
quiet_query($rr, 'ROLLBACK');
$rr->quit;
is(outcome("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT fintx.post_pending('h6-post', $h6); COMMIT;"), 'ok',
	'REPEATABLE READ: the retry in a new transaction posts the hold');
is(balance('crash-to'), '110/0/0/110', 'REPEATABLE READ: posted once');

is(reconcile_rows($node), '', 'reconcile() reports no discrepancy');
$mon->quit;
$node->stop;
done_testing();

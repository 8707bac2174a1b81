# Copyright fintx contributors
#
# 013_denial_crash.pl — denials survive the abort of the denied transaction
# and a crash right after a burst of them.
#
# A service makes a burst of refused transfers (each in its own statement,
# each aborted). With fintx.denial_wait on (the default), a denied call
# returns its error only after the worker has committed the access-log row,
# so every error the client received must be in fintx.access_log after the
# postmaster is killed (SIGQUIT: immediate shutdown, crash recovery on
# restart). The same burst with fintx.denial_wait = 0 measures what can be
# lost without the wait; its figure is reported, not asserted. Also: a
# clean shutdown writes what is still queued.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FintxTest;

my $N = 300;
my $node = fintx_node('denials', "fintx.expire_interval = '1h'", "synchronous_commit = on", "fsync = on");
$node->safe_psql('postgres', q{
	CREATE ROLE burst LOGIN;
	SELECT fintx.open_account('b:1', 'EUR', true);
	SELECT fintx.open_account('x:1', 'EUR', true);
	SELECT fintx.register_service('burst', 'burst');
	SELECT fintx.grant_permission('burst', 'transfer', 'b:%', 10);
});

sub denied_rows
{
	my ($app) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM fintx.access_log WHERE NOT allowed AND application_name = '$app'");
}

# Runs the burst in the background as role burst; kills the postmaster once
# $kill_after errors have been received (0: let it finish, then kill).
sub burst_then_crash
{
	my ($app, $kill_after) = @_;
	my $script = join('', map { "SELECT fintx.transfer('$app-$_', 'x:1', 'b:1', 1);\n" } 1 .. $N);
	my $p;
	{
		local $ENV{PGUSER} = 'burst';
		$p = psql_start($node, $app, $script);
	}
	my $start = time;
	if ($kill_after > 0)
	{
		while (time - $start < 60)
		{
			my $err = -e "$p->{base}.err" ? slurp_file("$p->{base}.err") : '';
			last if scalar(@{ all_sqlstates($err) }) >= $kill_after;
			usleep(2_000);
		}
	}
	else
	{
		psql_finish($p);
	}
	my $elapsed = time - $start;
	$node->stop('immediate');
	my $r = psql_finish($p);
	my $received = scalar grep { $_ eq '42501' } @{ all_sqlstates($r->{err}) };
	$node->start;
	my $rows = denied_rows($app);
	return ($received, $rows, $elapsed);
}

my ($received, $rows, $elapsed) = burst_then_crash('full', 0);
is($received, $N, "all $N denials reached the client");
is($rows, $N, "after a crash right after the burst, all $N denials are in the access log");
diag(sprintf('denial_wait=1s, crash after the burst: %d of %d denials received, %d survived (%.0f denials/s)',
	$received, $N, $rows, $N / $elapsed));

($received, $rows) = burst_then_crash('mid', 100);
cmp_ok($rows, '>=', $received, "crash mid-burst: every denial the client saw survived ($rows rows >= $received received)");
diag("denial_wait=1s, crash mid-burst: $received denials received by the client, $rows in the access log");

$node->safe_psql('postgres', 'ALTER ROLE burst SET fintx.denial_wait = 0');
($received, $rows) = burst_then_crash('nowait', 150);
cmp_ok($received, '>=', 150, 'without the wait the burst runs until the crash');
cmp_ok($rows, '<=', $N, 'without the wait no denial is written twice');
diag("denial_wait=0, crash mid-burst: $received denials received by the client, $rows in the access log, "
	  . ($received > $rows ? $received - $rows : 0) . ' lost');

# a clean (fast) shutdown flushes the queue; denials also enter the audit log
my $script = join('', map { "SELECT fintx.transfer('clean-$_', 'x:1', 'b:1', 1);\n" } 1 .. 50);
{
	local $ENV{PGUSER} = 'burst';
	psql_finish(psql_start($node, 'clean', $script));
}
$node->stop('fast');
$node->start;
is(denied_rows('clean'), 50, 'a fast shutdown right after a burst (without the wait) loses nothing');
# the worker cannot write (the table is gone): denials stay queued, the ring overflows into
# the server log, and once the table is back every queued denial is written
$node->safe_psql('postgres', 'ALTER TABLE fintx.access_log_entries RENAME TO access_log_broken');
$script = join('', map { "SELECT fintx.transfer('ovf-$_', 'x:1', 'b:1', 1);\n" } 1 .. 1100);
{
	local $ENV{PGUSER} = 'burst';
	psql_finish(psql_start($node, 'overflow', $script));
}
is($node->safe_psql('postgres', 'SELECT pending || \' \' || dropped FROM fintx.denial_queue_stats()'),
	'1024 76', 'while the worker cannot write, the ring holds 1024 denials and 76 overflow to the server log');
like(slurp_file($node->logfile), qr/fintx denial queue is full/, 'the overflow is reported in the server log');
$node->safe_psql('postgres', 'ALTER TABLE fintx.access_log_broken RENAME TO access_log_entries');
my ($done) = poll_until(quiet_session($node), "SELECT count(*) FROM fintx.access_log WHERE application_name = 'overflow'",
	'1024', 30);
ok($done, 'once the table is back the worker writes all 1024 queued denials');
is($node->safe_psql('postgres', 'SELECT pending FROM fintx.denial_queue_stats()'), '0', 'the ring is empty again');

is($node->safe_psql('postgres',
	q{SELECT count(*) FROM fintx.audit_log WHERE action = 'access.denied' AND details->>'application_name' = 'full'}),
	$N, 'each denial also entered the audit log');
is($node->safe_psql('postgres', 'SELECT ok FROM fintx.verify_audit()'), 't', 'the audit log verifies after the crashes');
is(reconcile_rows($node), '', 'no denied transfer moved money');
$node->stop;
done_testing();

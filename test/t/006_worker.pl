# The background worker: restarts after being terminated, survives errors in a pass,
# and follows fintx.database to another database on reload.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('worker');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'fintx'
fintx.database = 'postgres'
fintx.expire_interval = '100ms'
});
$node->start;

# Polls $sql until it returns $want (at most $secs seconds); returns the last value.
sub wait_for
{
	my ($db, $sql, $want, $secs) = @_;
	my $got;
	for (1 .. $secs * 10)
	{
		$got = $node->safe_psql($db, $sql);
		return $got if $got eq $want;
		usleep(100_000);
	}
	return $got;
}

my $worker_pid_sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'fintx worker'";
my $pid1 = wait_for('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker'", '1', 10);
is($pid1, '1', 'one fintx worker runs when preloaded');
$pid1 = $node->safe_psql('postgres', $worker_pid_sql);

# a ledger in each of two databases
$node->safe_psql('postgres', 'CREATE DATABASE other');
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{
		CREATE EXTENSION fintx;
		SELECT fintx.open_account('w:bank', 'EUR', allow_negative => true);
		SELECT fintx.open_account('w:a', 'EUR');
		SELECT fintx.open_account('w:b', 'EUR');
		SELECT fintx.transfer('w-fund', 'w:bank', 'w:a', 1000);
	});
}

sub hold
{
	my ($db, $key) = @_;
	return $node->safe_psql($db,
		"SELECT transfer_id FROM fintx.transfer('$key', 'w:a', 'w:b', 10, pending => true, timeout => '300 milliseconds')");
}
my $released_sql = sub { my $h = shift; "SELECT count(*) FROM fintx.transfers WHERE pending_id = $h AND status = 'expired'" };

my $h = hold('postgres', 'w-h1');
is(wait_for('postgres', $released_sql->($h), '1', 10), '1', 'worker releases an expired hold');

# terminated: the postmaster restarts it (bgw_restart_time = 5 s) and it works again
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
my $n = wait_for('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker' AND pid <> $pid1", '1', 20);
is($n, '1', 'a terminated worker is restarted');
$h = hold('postgres', 'w-h2');
is(wait_for('postgres', $released_sql->($h), '1', 10), '1', 'the restarted worker releases holds');

# an error in a pass is logged and the worker goes on (same process)
my $pid2 = $node->safe_psql('postgres', $worker_pid_sql);
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', q{
	ALTER EXTENSION fintx DROP FUNCTION fintx.expire_pending(integer);
	ALTER FUNCTION fintx.expire_pending(integer) RENAME TO expire_pending_hidden;
});
$h = hold('postgres', 'w-h3');
sleep(1);
is($node->safe_psql('postgres', $released_sql->($h)), '0', 'nothing released while the pass fails');
like(slurp_file($node->logfile, $log_offset), qr/function fintx\.expire_pending\(integer\) does not exist/,
	'the failing pass is logged');
is($node->safe_psql('postgres', $worker_pid_sql), $pid2, 'the worker survived the error');
$node->safe_psql('postgres', q{
	ALTER FUNCTION fintx.expire_pending_hidden(integer) RENAME TO expire_pending;
	ALTER EXTENSION fintx ADD FUNCTION fintx.expire_pending(integer);
});
is(wait_for('postgres', $released_sql->($h), '1', 10), '1', 'released once the pass succeeds again');
# a cancel (monitoring scripts cancel long-running backends) does not end the worker
$node->safe_psql('postgres', "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'fintx worker'") for 1 .. 3;
usleep(500_000);
is($node->safe_psql('postgres', $worker_pid_sql), $pid2, 'pg_cancel_backend() does not end the worker');
# an administrator's expire_pending() is in the access log; the worker's passes (one a second) are not
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.access_log WHERE object = 'expire_pending'}), '0',
	"the worker's expire passes are not in the access log");
$node->safe_psql('postgres', 'SELECT fintx.expire_pending(5)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.access_log WHERE object = 'expire_pending'}), '1',
	"an administrator's call is");

# reload with another database: the worker moves there
my $o = hold('other', 'w-o1');
sleep(1);
is($node->safe_psql('other', $released_sql->($o)), '0', 'the worker does not serve another database');
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "fintx.database = 'other'\n");
$node->reload;
is(wait_for('other', $released_sql->($o), '1', 20), '1', 'after reload the worker serves the new database');
like(slurp_file($node->logfile, $log_offset), qr/fintx worker restarting to move from database "postgres" to "other"/,
	'the move is logged');
is($node->safe_psql('other', 'SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile clean (other)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile clean (postgres)');

# times in audit entries are UTC, whatever the TimeZone of the session that writes them:
# the worker writes denials (the server's timezone), a caller its hold's timeout
$node->safe_psql('postgres', "ALTER SYSTEM SET timezone = 'Asia/Kolkata'");
$node->reload;
$node->safe_psql('other', 'CREATE ROLE tz_nobody');
$node->psql('other', "SET ROLE tz_nobody; SELECT fintx.transfer('tz-d', 'w:a', 'w:b', 1)");
is(wait_for('other', q{SELECT count(*) FROM fintx.audit_entries WHERE action = 'access.denied' AND details->>'role' = 'tz_nobody'}, '1', 10),
	'1', 'the worker wrote the denial');
like($node->safe_psql('other', q{SELECT details->>'at' FROM fintx.audit_entries WHERE action = 'access.denied' AND details->>'role' = 'tz_nobody'}),
	qr/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00$/, "its time is in UTC under the server's timezone Asia/Kolkata");

$node->stop;
done_testing();

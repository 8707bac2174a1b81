# Copyright fintx contributors
#
# 026_limit_order.pl — two batches of one service whose transfers count against the
# same two daily-limit rows in opposite orders do not deadlock.
#
# A service's grant with a daily limit keeps one usage row per currency. A batch counts
# each transfer against its row in the batch's order; fintx locks the rows a batch
# needs in one fixed order first. The scenario is forced with two sessions that hold the
# rows: B2 ([USD, EUR]) and then B1 ([EUR, USD]) start while both rows are held; the EUR
# row is freed first, then the USD row. Counting in the batches' own orders, B1 would
# hold EUR and wait for USD while B2 held USD and waited for EUR: 40P01.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FintxTest;

my $node = fintx_node('limits', "fintx.expire_interval = '1h'", "deadlock_timeout = '100ms'");
$node->safe_psql('postgres', q{
	CREATE ROLE lim_svc LOGIN;
	SELECT fintx.register_service('lim', 'lim_svc');
	SELECT fintx.grant_permission('lim', 'transfer', 'l:%', NULL, 1000000);
	SELECT fintx.open_account(code, currency, allow_negative => code LIKE '%src%')
	  FROM (VALUES ('l:src:e1', 'EUR'), ('l:src:e2', 'EUR'), ('l:dst:e1', 'EUR'), ('l:dst:e2', 'EUR'),
	               ('l:src:u1', 'USD'), ('l:src:u2', 'USD'), ('l:dst:u1', 'USD'), ('l:dst:u2', 'USD')) a(code, currency);
	SET ROLE lim_svc;
	SELECT fintx.transfer('seed-e', 'l:src:e1', 'l:dst:e1', 1);
	SELECT fintx.transfer('seed-u', 'l:src:u1', 'l:dst:u1', 1);
});
is($node->safe_psql('postgres', q{SELECT string_agg(currency || '=' || used, ',' ORDER BY currency) FROM fintx.limit_usage}),
	'EUR=1,USD=1', 'one usage row per currency');

my $poll = quiet_session($node);
sub waiting
{
	my ($app) = @_;
	my ($ok) = poll_until($poll,
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app' AND wait_event_type = 'Lock'", '1', 20);
	return $ok;
}

sub holder
{
	my ($currency) = @_;
	my $s = quiet_session($node);
	quiet_safe($s, 'BEGIN');
	quiet_safe($s, "SELECT 1 FROM fintx.limit_usage WHERE currency = '$currency' FOR UPDATE");
	return $s;
}

sub batch
{
	my ($app, @reqs) = @_;
	my $json = join(', ', map {
		qq({"idempotency_key": "$app-$_->[0]", "from_account": "l:src:$_->[0]", "to_account": "l:dst:$_->[0]", "amount": $_->[1]})
	} @reqs);
	return psql_start($node, $app, "SET ROLE lim_svc;\nSELECT count(*) FROM fintx.transfer_batch('[$json]');\n");
}

my $usd = holder('USD');
my $eur = holder('EUR');
my $b2 = batch('b2', [ 'u2', 20 ], [ 'e2', 10 ]);
ok(waiting('b2'), 'B2 (USD, then EUR) waits for a usage row');
my $b1 = batch('b1', [ 'e1', 100 ], [ 'u1', 200 ]);
ok(waiting('b1'), 'B1 (EUR, then USD) waits for a usage row');
quiet_safe($eur, 'COMMIT');
usleep(300_000);    # B1 (or B2) takes the EUR row and goes on to the USD row
quiet_safe($usd, 'COMMIT');
my $r1 = psql_finish($b1);
my $r2 = psql_finish($b2);
is("$r1->{out}|$r1->{err}", "2\n|", 'B1 applied both transfers, no deadlock') or diag($r1->{err});
is("$r2->{out}|$r2->{err}", "2\n|", 'B2 applied both transfers, no deadlock') or diag($r2->{err});
is($node->safe_psql('postgres', q{SELECT string_agg(currency || '=' || used, ',' ORDER BY currency) FROM fintx.limit_usage}),
	'EUR=111,USD=221', 'each transfer counted once against its currency');
unlike(slurp_file($node->logfile), qr/deadlock detected/, 'no deadlock in the server log');

# a batch within one usage row counts both; one over the limit in its second row counts nothing
is($node->safe_psql('postgres', q{SET ROLE lim_svc;
	SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "one-1", "from_account": "l:src:e1", "to_account": "l:dst:e1", "amount": 5},
	                                            {"idempotency_key": "one-2", "from_account": "l:src:e2", "to_account": "l:dst:e2", "amount": 6}]')}),
	'2', 'a batch counting against one row');
is($node->safe_psql('postgres', q{SELECT used FROM fintx.limit_usage WHERE currency = 'EUR'}), '122', 'counts both');
my ($ret, $out, $err) = $node->psql('postgres', q{SET ROLE lim_svc;
	SELECT count(*) FROM fintx.transfer_batch('[{"idempotency_key": "over-1", "from_account": "l:src:u1", "to_account": "l:dst:u1", "amount": 5},
	                                            {"idempotency_key": "over-2", "from_account": "l:src:e1", "to_account": "l:dst:e1", "amount": 999900}]')},
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
is(first_sqlstate($err), '42501', 'a batch over the limit in its second row is refused');
is($node->safe_psql('postgres', q{SELECT string_agg(currency || '=' || used, ',' ORDER BY currency) FROM fintx.limit_usage}),
	'EUR=122,USD=221', 'and counts nothing');

$poll->quit;
$node->stop;
done_testing();

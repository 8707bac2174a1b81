# Copyright fintx contributors
#
# 028_limit_midnight.pl — a daily limit counts against the UTC day of the call, not of
# the transaction's start.
#
# The server runs under libfaketime with its wall clock read from a file, so the test
# can move it over midnight. A service with a daily limit of 1,000 spends 600 just
# before midnight. A transaction opened before midnight and still open after it spends
# 1,000: that counts against the new day (fresh limit), not against yesterday's (where
# it would have been refused); and a second transfer of 1 on the new day is refused.
# Counting by the transaction's start (now()) instead let a transaction left open over
# midnight spend yesterday's unused limit today, on top of today's.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $libfaketime = '/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1';
plan skip_all => "libfaketime is not installed ($libfaketime; apt-get install libfaketime)"
  unless -e $libfaketime;

my $clock = "${PostgreSQL::Test::Utils::tmp_check}/fake_clock";
my $day = 1938729600;    # 2031-06-09 00:00:00 UTC, a day boundary
sub clock_at
{
	my ($epoch) = @_;
	append_to_file("$clock.new", sprintf("%+d\n", $epoch - time()));
	rename("$clock.new", $clock) or die "rename: $!";
	chmod 0644, $clock;
}
clock_at($day - 120);    # 23:58:00 on 2031-06-08

my $node;
{
	local $ENV{LD_PRELOAD} = $libfaketime;
	local $ENV{FAKETIME_TIMESTAMP_FILE} = $clock;
	local $ENV{FAKETIME_NO_CACHE} = '1';
	local $ENV{DONT_FAKE_MONOTONIC} = '1';    # timeouts and latches keep real time
	$node = fintx_node('midnight', "fintx.expire_interval = '1h'");
}

my $utc_day = q{SELECT (pg_catalog.clock_timestamp() AT TIME ZONE 'UTC')::date};
is($node->safe_psql('postgres', $utc_day), '2031-06-08', 'the server runs on the faked clock');

$node->safe_psql('postgres', q{
	CREATE ROLE mid_svc LOGIN;
	SELECT fintx.register_service('mid', 'mid_svc');
	SELECT fintx.grant_permission('mid', 'transfer', 'm:%', NULL, 1000);
	SELECT fintx.open_account('m:src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('m:dst', 'EUR');
	SET ROLE mid_svc;
	SELECT fintx.transfer('before-midnight', 'm:src', 'm:dst', 600);
});

my $usage = q{SELECT string_agg(day || '=' || used, ',' ORDER BY day) FROM fintx.limit_usage};
is($node->safe_psql('postgres', $usage), '2031-06-08=600', '600 counted on the day before');

my $open = quiet_session($node);
quiet_safe($open, 'SET ROLE mid_svc');
quiet_safe($open, 'BEGIN');
is(quiet_safe($open, q{SELECT (now() AT TIME ZONE 'UTC')::date}), '2031-06-08',
	'a transaction opened before midnight');

clock_at($day + 30);    # 00:00:30 on 2031-06-09
is($node->safe_psql('postgres', $utc_day), '2031-06-09', 'the clock has passed midnight');

my $out = quiet_query($open, q{SELECT status FROM fintx.transfer('after-midnight', 'm:src', 'm:dst', 1000)});
is("$out|$open->{stderr}", 'posted|', 'the open transaction spends the new day\'s limit of 1,000');
quiet_safe($open, 'COMMIT');
$open->quit;

my ($rc, $stdout, $stderr) = $node->psql('postgres',
	q{SET ROLE mid_svc; SELECT fintx.transfer('one-more', 'm:src', 'm:dst', 1)}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/42501: permission denied for transfer on "m:src".*would exceed the daily limit 1000 for EUR today \(UTC\)/s,
	'a transfer of 1 more on the new day is refused');
is($node->safe_psql('postgres', $usage), '2031-06-08=600,2031-06-09=1000',
	'the open transaction counted on the day it spent, not the day it began');
is($node->safe_psql('postgres', q{SELECT sum(amount) FROM fintx.transfers}), '1600', 'money moved: 600 + 1000');
is(reconcile_rows($node), '', 'reconcile() is clean');

$node->stop;
done_testing();

# Copyright fintx contributors
#
# 020_memory.pl — fintx.keep_freed_memory. A batch allocates megabytes and
# frees them at its end; with glibc's defaults the backend hands that memory
# back to the kernel and the next batch page-faults all of it in again. With
# the default (64MB) a backend keeps it: three more batches of 1,000 in the
# same session take a fraction of the page faults they take with the setting
# at 0 (glibc's defaults). The setting is fixed at server start (55P02 on SET).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

plan skip_all => 'needs /proc/<pid>/stat (Linux)' unless -r "/proc/$$/stat";

# minor page faults of a process so far (field 10 of /proc/<pid>/stat)
sub minor_faults
{
	my ($pid) = @_;
	open my $fh, '<', "/proc/$pid/stat" or die "cannot read /proc/$pid/stat: $!";
	my $line = <$fh>;
	close $fh;
	$line =~ s/^.*\) //;		# fields from 3 (state) on
	return (split ' ', $line)[7];
}

my $batch = q{SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
	'idempotency_key', 'KEY-' || i, 'from_account', 'a' || (1 + i % 31),
	'to_account', 'a' || (1 + (i + 1) % 31), 'amount', 1, 'metadata', jsonb_build_object('n', i)))
	FROM generate_series(1, 1000) i))};

my %faults;
for my $case ([ 'default', undef, '64MB' ], [ 'zero', '0', '0' ])
{
	my ($name, $setting, $shown) = @$case;
	my $node = fintx_node("memory_$name", "fintx.expire_interval = '1h'",
		defined $setting ? ("fintx.keep_freed_memory = '$setting'") : ());
	is($node->safe_psql('postgres', 'SHOW fintx.keep_freed_memory'), $shown,
		"fintx.keep_freed_memory is $shown ($name)");
	$node->safe_psql('postgres', q{
		SELECT count(fintx.open_account('a' || i, 'EUR', allow_negative => true)) FROM generate_series(1, 31) i});
	my $s = quiet_session($node);
	my $pid = quiet_safe($s, 'SELECT pg_backend_pid()');
	is(quiet_safe($s, $batch =~ s/KEY/warm/r), '1000', "a first batch of 1,000 ($name)");
	my $before = minor_faults($pid);
	is(quiet_safe($s, $batch =~ s/KEY/b$_/r), '1000', "batch $_ of 1,000 ($name)") for 1 .. 3;
	$faults{$name} = minor_faults($pid) - $before;
	note("$name: $faults{$name} minor page faults in three batches of 1,000");
	if ($name eq 'default')
	{
		my ($rc, $out, $err) = $node->psql('postgres', q{SET fintx.keep_freed_memory = '1MB'},
			extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
		is(first_sqlstate($err), '55P02', 'SET fintx.keep_freed_memory: 55P02 (needs a restart)');
	}
	is(reconcile_rows($node), '', "reconcile() is clean ($name)");
	$s->quit;
	$node->stop;
}
cmp_ok($faults{zero}, '>', 3 * $faults{default},
	"keeping freed memory: more than 3 x fewer page faults ($faults{default} against $faults{zero})");

done_testing();

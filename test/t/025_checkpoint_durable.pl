# Copyright fintx contributors
#
# 025_checkpoint_durable.pl — checkpoint() signs only a tree head that a crash
# cannot take back.
#
# With synchronous_commit = off, a commit is visible before its WAL is flushed:
# a sealing pass's block (and the transfers in it) can be read, and signed, and
# then be lost in a crash. The log would then grow again under another head
# for the same size, which an auditor holding the signed checkpoint reads as a
# fork. checkpoint() flushes the WAL of everything it signs first.
#
# The WAL writer is stopped (SIGSTOP) so that nothing but checkpoint() itself
# can flush: a transfer commits asynchronously, the worker seals it (another
# asynchronous commit), checkpoint() signs the head, and the WAL writer is
# killed (SIGKILL: the postmaster restarts every process and recovers from the
# WAL on disk). The signed size and root must still be in the log.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use FintxTest;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $key = "$dir/signing.pem";
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key);

my $node = fintx_node('durable', "synchronous_commit = off", "fsync = on", "wal_writer_delay = '10s'",
	"bgwriter_lru_maxpages = 0", "checkpoint_timeout = '1h'", "restart_after_crash = on",
	"fintx.seal_interval = '50ms'", "fintx.signing_key_file = '$key'");
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('d:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('d:a', 'EUR');
	SELECT fintx.transfer('d-0', 'd:bank', 'd:a', 100);
	SELECT fintx.seal();
	CHECKPOINT;
});

# The signed head after one more asynchronously committed transfer, with the WAL
# writer stopped; then a crash. Returns (size, base64 root) of the checkpoint.
sub checkpoint_then_crash
{
	my ($key_suffix) = @_;
	my $walwriter = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
	ok($walwriter =~ /^\d+$/ && kill('STOP', $walwriter), 'the WAL writer is stopped');
	$node->safe_psql('postgres', "SELECT fintx.transfer('d-$key_suffix', 'd:bank', 'd:a', 7)");
	my (undef, $size, $root) = split /\n/, $node->safe_psql('postgres', 'SELECT fintx.checkpoint()');
	kill 'KILL', $walwriter;
	kill 'CONT', $walwriter;
	# the postmaster notices the death, ends every backend and recovers
	my $t0 = time;
	usleep(100_000) while time - $t0 < 60
	  && !(eval { $node->safe_psql('postgres', 'SELECT pg_is_in_recovery()') eq 'f' });
	return ($size, $root);
}

my ($size, $root) = checkpoint_then_crash('1');
like($size, qr/^\d+$/, "checkpoint() signed a head of $size entries");
is($node->safe_psql('postgres',
		"SELECT encode(root_hash, 'base64') FROM fintx.audit_blocks WHERE tree_size = $size"),
	$root, 'after the crash the log still has a block of that size with the signed root');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.transfers t
		JOIN fintx.idempotency_keys k ON k.transfer_id = t.id WHERE k.idempotency_key = 'd-1'}),
	'1', 'and the transfer it covers');
like(slurp_file($node->logfile), qr/terminated by signal 9/, 'the server went through crash recovery');
is($node->safe_psql('postgres', 'SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile() is clean');
is($node->safe_psql('postgres', 'SELECT ok FROM fintx.verify_audit()'), 't', 'verify_audit() is clean');

$node->stop;
done_testing();

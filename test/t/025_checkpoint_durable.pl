# Copyright fintx contributors
#
# 025_checkpoint_durable.pl — checkpoint() signs only a tree head that a crash
# cannot take back.
#
# With synchronous_commit = off, a commit is visible before its WAL is flushed:
# a sealing pass's block (and the transfers in it) can be read, and signed, and
# then be lost in a crash. The log would then grow again under another head
# for the same size, which an auditor holding the signed checkpoint reads as a
# fork. A sealing pass therefore commits synchronously (its block is flushed, with every
# commit before it, before anyone can see it), and checkpoint() signs only committed blocks.
#
# The WAL writer is stopped (SIGSTOP) so that nothing but a synchronous commit can
# flush: a transfer commits asynchronously, a sealing pass (the worker's, or a seal()
# without a worker) seals it, checkpoint() signs the head, and the WAL writer is
# killed (SIGKILL: the postmaster restarts every process and recovers from the
# WAL on disk). The signed size and root must still be in the log. (A process crash
# keeps WAL that was written but not fsynced; what the test shows is that the block's
# commit was flushed, which is what fsync = on then makes durable.)

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

$node->safe_psql('postgres', 'CREATE DATABASE lazy');
$node->safe_psql('lazy', q{CREATE EXTENSION fintx;
	SELECT fintx.open_account('d:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('d:a', 'EUR');
	SELECT fintx.seal();
	CHECKPOINT;
});

# Kills the stopped WAL writer $walwriter: the postmaster notices the death, ends every backend
# and recovers from the WAL on disk. Waits for a new WAL writer.
sub crash_walwriter
{
	my ($walwriter, $what) = @_;
	kill 'KILL', $walwriter;
	kill 'CONT', $walwriter;
	my $t0 = time;
	my $now = '';
	while (time - $t0 < 60)
	{
		$now = eval {
			$node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'})
		} // '';
		last if $now =~ /^\d+$/ && $now != $walwriter;
		usleep(100_000);
	}
	ok($now =~ /^\d+$/ && $now != $walwriter, "$what: the server recovered with a new WAL writer");
	return;
}

# In database $db, with the WAL writer stopped: one more asynchronously committed transfer
# ($key), the statements @seal, then checkpoint(); then the WAL writer is killed and the
# server recovers. Checks that the signed head, the block holding it and the transfer
# survived.
sub checkpoint_then_crash
{
	my ($db, $key, @seal) = @_;
	my $walwriter = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
	ok($walwriter =~ /^\d+$/ && kill('STOP', $walwriter), "$db: the WAL writer is stopped");
	$node->safe_psql($db, "SELECT fintx.transfer('$key', 'd:bank', 'd:a', 7)");
	$node->safe_psql($db, $_) for @seal;
	my (undef, $size, $root) = split /\n/, $node->safe_psql($db, 'SELECT fintx.checkpoint()');
	my $block = $node->safe_psql($db,
		"SELECT block_id || ' ' || encode(block_hash, 'hex') FROM fintx.audit_blocks WHERE tree_size = $size");
	like($size, qr/^\d+$/, "$db: checkpoint() signed a head of $size entries");
	is($node->safe_psql($db,
			"SELECT count(*) FROM fintx.audit_log WHERE details->>'idempotency_key' = '$key' AND leaf_index < $size"),
		'1', "$db: the head covers the new transfer");
	crash_walwriter($walwriter, $db);
	# read without sealing: the block itself, as it was before the crash
	is($node->safe_psql($db,
			"SELECT block_id || ' ' || encode(block_hash, 'hex') FROM fintx.audit_blocks WHERE tree_size = $size"),
		$block, "$db: after the crash the block of the signed size is the one signed") or diag("size $size");
	is($node->safe_psql($db, "SELECT encode(root_hash, 'base64') FROM fintx.audit_blocks WHERE tree_size = $size"),
		$root, "$db: with the signed root");
	is($node->safe_psql($db, "SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key = '$key'"),
		'1', "$db: and the transfer it covers");
	return;
}

# the worker seals (it commits its pass synchronously whatever synchronous_commit says)
checkpoint_then_crash('postgres', 'd-1');
# no worker: seal() in a transaction of its own, then checkpoint() signs that committed pass
checkpoint_then_crash('lazy', 'd-2', 'SELECT fintx.seal()');

# outbox positions, the same way: an event committed asynchronously, given a position by the
# worker's pass and read by a consumer, must survive the crash at that position (a pass that
# sequences events commits synchronously); otherwise the position goes to another event
$node->safe_psql('postgres', q{SELECT fintx.create_consumer('durable-c'); SELECT fintx.outbox_tail()});
$node->safe_psql('postgres', q{SELECT count(*) FROM fintx.poll('durable-c', 1000)});
{
	my $walwriter = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'});
	ok($walwriter =~ /^\d+$/ && kill('STOP', $walwriter), 'outbox: the WAL writer is stopped');
	$node->safe_psql('postgres', q{SELECT fintx.emit('order', 'durable-o1', 'order.created', '{}')});
	my $pos = '';
	my $t0 = time;
	while (time - $t0 < 30 && $pos eq '')
	{
		$pos = $node->safe_psql('postgres',
			q{SELECT position FROM fintx.poll('durable-c', 1000) WHERE aggregateid = 'durable-o1'});
		usleep(50_000) if $pos eq '';
	}
	like($pos, qr/^\d+$/, 'outbox: the worker gave the event a position and a consumer read it');
	crash_walwriter($walwriter, 'outbox');
	is($node->safe_psql('postgres',
			q{SELECT position FROM fintx.poll('durable-c', 1000) WHERE aggregateid = 'durable-o1'}),
		$pos, 'outbox: after the crash the event is still there, at the position the consumer read');
}
like(slurp_file($node->logfile), qr/terminated by signal 9/, 'the server went through crash recovery');
for my $db ('postgres', 'lazy')
{
	is($node->safe_psql($db, 'SELECT count(*) FROM fintx.reconcile()'), '0', "$db: reconcile() is clean");
	is($node->safe_psql($db, 'SELECT ok FROM fintx.verify_audit()'), 't', "$db: verify_audit() is clean");
}

$node->stop;
done_testing();

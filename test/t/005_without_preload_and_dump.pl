# fintx without shared_preload_libraries (everything but the worker works, expiry runs on
# demand), and a pg_dump / pg_restore round trip that keeps every balance, transfer and
# idempotency key, so retries after a restore still replay.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION fintx');

is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker'"),
	'0', 'no background worker without preload');

$node->safe_psql('postgres', q{
	SELECT fintx.open_account('np:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('np:a', 'EUR');
	SELECT fintx.open_account('np:b', 'EUR');
});
is($node->safe_psql('postgres',
		"SELECT status || ' ' || replayed || ' ' || to_balance FROM fintx.transfer('np-1', 'np:bank', 'np:a', 1000)"),
	'posted false 1000', 'transfer works without preload');
is($node->safe_psql('postgres',
		"SELECT status || ' ' || replayed || ' ' || to_balance FROM fintx.transfer('np-1', 'np:bank', 'np:a', 1000)"),
	'posted true 1000', 'replay works without preload');

# a hold that expires is not released by anyone until expire_pending() runs
my $hold = $node->safe_psql('postgres',
	"SELECT transfer_id FROM fintx.transfer('np-2', 'np:a', 'np:b', 300, pending => true, timeout => '200 milliseconds')");
sleep(1);
is($node->safe_psql('postgres', "SELECT available FROM fintx.account_balances WHERE code = 'np:a'"),
	'700', 'expired hold still reserved before expire_pending');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT fintx.post_pending('np-3', $hold)");
like($err, qr/pending transfer \d+ has expired/, 'posting an expired hold is refused');
is($node->safe_psql('postgres', 'SELECT fintx.expire_pending()'), '1', 'expire_pending releases it');
is($node->safe_psql('postgres', "SELECT available FROM fintx.account_balances WHERE code = 'np:a'"),
	'1000', 'funds available again');
is($node->safe_psql('postgres', "SELECT status FROM fintx.transfers WHERE pending_id = $hold"),
	'expired', 'the release is recorded as an expired transfer');
is($node->safe_psql('postgres', 'SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile clean');

# the outbox without a worker: outbox_tail() and poll() sequence what was committed themselves
$node->safe_psql('postgres', q{SELECT fintx.create_consumer('np-consumer')});
$node->safe_psql('postgres', q{SELECT fintx.emit('order', 'np-o1', 'order.created', '{"n": 1}')});
is($node->safe_psql('postgres', q{SELECT fintx.outbox_tail() = (SELECT count(*) FROM fintx.outbox)}),
	't', 'outbox_tail() gives every committed event a position without a worker');
$node->safe_psql('postgres', q{SELECT fintx.emit('order', 'np-o2', 'order.created', '{"n": 2}')});
is($node->safe_psql('postgres',
		q{SELECT count(*) = (SELECT count(*) FROM fintx.outbox) FROM fintx.poll('np-consumer', 1000)}),
	't', 'poll() delivers every committed event without a worker, the one committed just before included');

# pg_dump / pg_restore round trip
$node->safe_psql('postgres', q{
	SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
		'idempotency_key', 'dump-' || i, 'from_account', 'np:bank', 'to_account', 'np:b', 'amount', i))
		FROM generate_series(1, 500) i));
	SELECT fintx.transfer('dump-hold', 'np:a', 'np:b', 5, pending => true);
});
my $before = $node->safe_psql('postgres',
	'SELECT string_agg(code || ' . "'='" . ' || posted || \'/\' || pending_debits || \'/\' || pending_credits, \',\' ORDER BY code) FROM fintx.account_balances');
my $dump = $node->basedir . '/fintx.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored',
		'SELECT string_agg(code || ' . "'='" . ' || posted || \'/\' || pending_debits || \'/\' || pending_credits, \',\' ORDER BY code) FROM fintx.account_balances'),
	$before, 'balances survive dump and restore');
is($node->safe_psql('restored', 'SELECT count(*) FROM fintx.transfers'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM fintx.transfers'), 'transfers survive');
is($node->safe_psql('restored', 'SELECT count(*) FROM fintx.idempotency_keys'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM fintx.idempotency_keys'), 'idempotency keys survive');
is($node->safe_psql('restored',
		"SELECT replayed FROM fintx.transfer('dump-250', 'np:bank', 'np:b', 250)"),
	't', 'a retry after restore replays');
is($node->safe_psql('restored',
		"SELECT status || ' ' || replayed FROM fintx.transfer('after-restore', 'np:bank', 'np:b', 1)"),
	'posted false', 'new transfers get fresh ids after restore');
is($node->safe_psql('restored',
		"SELECT status FROM fintx.post_pending('post-restored-hold', (SELECT transfer_id FROM fintx.open_holds))"),
	'posted', 'an open hold survives and can be posted');
is($node->safe_psql('restored', 'SELECT count(*) FROM fintx.reconcile()'), '0', 'restored ledger reconciles');

$node->stop;
done_testing();

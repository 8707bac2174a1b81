# fintx without shared_preload_libraries (everything but the worker works, expiry runs on
# demand), and a pg_dump / pg_restore round trip that keeps every balance, transfer and
# idempotency key, so retries after a restore still replay.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('nopreload');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION fintx');

# the audit log is verified offline as UTF-8: other database encodings are refused up front
$node->safe_psql('postgres', q{CREATE DATABASE latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
my (undef, undef, $enc_err) = $node->psql('latin1', 'CREATE EXTENSION fintx');
like($enc_err, qr/ERROR:  fintx needs a UTF8 database, not LATIN1/, 'CREATE EXTENSION refuses a LATIN1 database');
$node->safe_psql('postgres', q{CREATE DATABASE sqlascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
(undef, undef, $enc_err) = $node->psql('sqlascii', 'CREATE EXTENSION fintx');
like($enc_err, qr/ERROR:  fintx needs a UTF8 database, not SQL_ASCII/, 'and a SQL_ASCII one');
is($node->safe_psql('sqlascii', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'fintx'}), '0', 'leaving nothing behind');

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
		q{SELECT count(*) = (SELECT count(*) FROM fintx.outbox) - 1 FROM fintx.poll('np-consumer', 1000)}),
	't', 'poll() without a worker delivers what committed passes sequenced; its own pass sequences the event just committed');
is($node->safe_psql('postgres',
		q{SELECT count(*) = (SELECT count(*) FROM fintx.outbox) FROM fintx.poll('np-consumer', 1000)}),
	't', 'and the next poll() delivers it too: every committed event');

# Loaded on first use inside a SECURITY DEFINER function, fintx cannot tell whether the
# session's role or the function's owner is calling (its hook did not see the function
# start): it refuses in that transaction instead of guessing. A guess put a retry of the same
# request under another principal, and the money moved twice.
$node->safe_psql('postgres', q{
	CREATE ROLE np_svc NOLOGIN;
	SELECT fintx.register_service('np-svc', 'np_svc');
	SELECT fintx.grant_permission('np-svc', 'transfer', 'np:%');
	SELECT fintx.transfer('np-fund', 'np:bank', 'np:a', 5000);
	CREATE FUNCTION public.np_pay(k text, amt bigint) RETURNS fintx.transfer_result
	  LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
	  AS $$ SELECT * FROM fintx.transfer(k, 'np:a', 'np:b', amt) $$;
	ALTER FUNCTION public.np_pay(text, bigint) OWNER TO np_svc;
});
my $pay = q{SELECT replayed FROM public.np_pay('np-w1', 250)};
my $rc;
($rc, $out, $err) = $node->psql('postgres', "$pay; $pay; $pay", on_error_stop => 0);
like($err, qr/ERROR:  fintx cannot identify its caller in this statement/,
	'first use inside a SECURITY DEFINER function: refused, not guessed');
is($out, "f\nt", 'the next transactions know the caller: applied once, then replayed');
# the refusal lasts for the statement that loaded fintx, not for its transaction: a later
# statement calling fintx directly (not through a function it saw start) is not refused
my $pay2 = q{SELECT replayed FROM public.np_pay('np-w2', 1)};
($rc, $out, $err) = $node->psql('postgres',
	"BEGIN; SAVEPOINT s; $pay2; ROLLBACK TO s; SELECT replayed FROM fintx.transfer('np-w3', 'np:bank', 'np:a', 1); $pay2; COMMIT;",
	on_error_stop => 0);
like($err, qr/cannot identify its caller in this statement/, 'inside a transaction: the loading statement is refused');
is($out, "f\nf", 'and the next statements of the same transaction apply, directly and through the function');
($rc, $out, $err) = $node->psql('postgres', "$pay; $pay", on_error_stop => 0);
like($err, qr/cannot identify its caller/, 'a retry on a new connection is refused again, not applied');
is($out, 't', 'and then replays the original');
is($node->safe_psql('postgres', "SELECT fintx.merkle_leaf_hash('\\x00') IS NOT NULL; $pay"), "t\nt",
	'loaded outside the function first, the first call through it replays');
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET session_preload_libraries = 'fintx'});
is($node->safe_psql('postgres', $pay), 't', 'with session_preload_libraries the first call through it replays');
$node->safe_psql('postgres', q{ALTER DATABASE postgres RESET session_preload_libraries});
is($node->safe_psql('postgres', q{SELECT string_agg(principal, ',') FROM fintx.idempotency_keys
	WHERE idempotency_key = 'np-w1'}), 'np_svc', 'one journal record, under the function owner');
is($node->safe_psql('postgres', q{SELECT posted FROM fintx.account_balances WHERE code = 'np:b'}),
	'251', 'the money moved once (250, and 1 in the transaction)');

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


# a restore into another cluster: the blocks and outbox batches carry MVCC snapshots of the
# source, whose transaction ids may be ahead of the target's. Sealed there, the target's
# passes would skip every entry of its own transactions below them, for good: the restore
# is refused until the target's ids are past the source's, and then new entries are sealed.
$node->safe_psql('postgres', q{
	DO $$ BEGIN FOR i IN 1 .. 3000 LOOP PERFORM pg_catalog.pg_current_xact_id(); COMMIT; END LOOP; END $$;
	SELECT fintx.transfer('ahead-1', 'np:bank', 'np:b', 1);
	SELECT fintx.emit('order', 'ahead-o1', 'order.created', '{}');
	SELECT fintx.seal();
});
my $source_next = $node->safe_psql('postgres', 'SELECT pg_current_xact_id()');
my $dump2 = $node->basedir . '/fintx-ahead.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump2 ], 'pg_dump of a log sealed at high transaction ids');
my $behind = PostgreSQL::Test::Cluster->new('behind');
$behind->init;
$behind->start;
$behind->safe_psql('postgres', 'CREATE DATABASE ledger');
my ($rrc, $rout, $rerr) = ('', '', '');
IPC::Run::run([ 'pg_restore', '--no-owner', '-d', $behind->connstr('ledger'), $dump2 ], '>', \$rout, '2>', \$rerr);
like($rerr, qr/a row of fintx\.audit_blocks was sealed in a cluster whose transaction ids are ahead of this one's/,
	'restoring into a cluster whose transaction ids are behind is refused');
like($rerr, qr/a row of fintx\.outbox_batches was sealed in a cluster whose transaction ids are ahead/,
	'for the outbox batches too');
# restored with the triggers disabled (a data-only restore), the first sealing pass refuses instead
$behind->safe_psql('postgres', 'CREATE DATABASE ledger2');
$behind->safe_psql('ledger2', 'CREATE EXTENSION fintx');
IPC::Run::run([ 'pg_restore', '--data-only', '--disable-triggers', '-d', $behind->connstr('ledger2'), $dump2 ],
	'>', \$rout, '2>', \$rerr);
$behind->safe_psql('ledger2', q{SELECT fintx.transfer('after-move', 'np:bank', 'np:b', 1)});
(undef, undef, $rerr) = $behind->psql('ledger2', 'SELECT fintx.seal()');
like($rerr, qr/ERROR:  audit block \d+ was sealed in a cluster whose transaction ids are ahead of this one's/,
	'restored with triggers disabled, sealing refuses (the entries wait, none is skipped)');
$behind->safe_psql('postgres', qq{
	DO \$\$ BEGIN WHILE pg_catalog.pg_current_xact_id()::text::bigint < $source_next LOOP COMMIT; END LOOP; END \$\$;
	DROP DATABASE ledger; CREATE DATABASE ledger});
$behind->command_ok([ 'pg_restore', '--no-owner', '-d', $behind->connstr('ledger'), $dump2 ], 'with its ids past the source, the restore succeeds');
is($behind->safe_psql('ledger', q{
	SELECT fintx.transfer('after-move', 'np:bank', 'np:b', 1) IS NOT NULL;
	SELECT fintx.emit('order', 'after-move-o', 'order.created', '{}') IS NOT NULL;
	SELECT fintx.seal() > 0;
	SELECT count(*) FROM fintx.audit_log WHERE leaf_index IS NULL;
	SELECT fintx.outbox_tail() = (SELECT count(*) FROM fintx.outbox);
	SELECT ok FROM fintx.verify_audit()}), "t\nt\nt\n0\nt\nt",
	'new entries and events are sealed after the move, and the log verifies');
$behind->stop;
$node->stop;
done_testing();

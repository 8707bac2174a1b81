# Copyright fintx contributors
#
# 015_denials_without_preload.pl — authorization without shared_preload_libraries:
# grants are enforced and allowed decisions logged as with preload; a denial
# cannot be queued (no shared memory), so it is recorded as a non-transactional
# logical decoding message (wal_level = logical) that survives the abort, and
# in the server log; denial_queue_stats() says what is missing.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nopreload_authz');
$node->init(allows_streaming => 'logical');
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION fintx;
	CREATE ROLE pay LOGIN;
	SELECT fintx.open_account('pay:ops', 'EUR', true);
	SELECT fintx.open_account('pay:cust', 'EUR');
	SELECT fintx.open_account('other:1', 'EUR', true);
	SELECT fintx.register_service('payments', 'pay');
	SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', 100);
	SELECT pg_create_logical_replication_slot('denials', 'test_decoding');
});

my ($rc, $out, $err) = $node->psql('postgres', q{SELECT status FROM fintx.transfer('np-1', 'pay:ops', 'pay:cust', 10)},
	extra_params => [ '-U', 'pay' ]);
is($out, 'posted', 'a granted transfer works without preload');
($rc, $out, $err) = $node->psql('postgres', q{SELECT status FROM fintx.transfer('np-2', 'other:1', 'pay:cust', 10)},
	extra_params => [ '-U', 'pay' ]);
like($err, qr/permission denied for transfer on "other:1"/, 'a transfer outside the grants is refused');

my $msgs = $node->safe_psql('postgres',
	q{SELECT data FROM pg_logical_slot_get_changes('denials', NULL, NULL) WHERE data LIKE 'message:%'});
like($msgs, qr/transactional: 0 prefix: fintx\.access_denied/, 'the denial is a non-transactional logical message');
like($msgs, qr/"role": "pay".*"operation": "transfer".*"object": "other:1"/, 'the message names role, operation and account');
like(slurp_file($node->logfile), qr/ERROR:  permission denied for transfer on "other:1"/, 'and it is in the server log');
is($node->safe_psql('postgres', q{SELECT string_agg(operation || ':' || allowed, ',') FROM fintx.access_log WHERE role = 'pay'}),
	'transfer:true', 'the allowed decision is in the access log');
($rc, $out, $err) = $node->psql('postgres', 'SELECT * FROM fintx.denial_queue_stats()');
like($err, qr/the fintx denial queue needs shared memory/, 'denial_queue_stats() names the missing preload');

# A hot standby writes no WAL: a denial there is still 42501, recorded in the
# standby's server log (not an internal error from the WAL message).
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('nopreload_authz_standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
($rc, $out, $err) = $standby->psql('postgres', 'SELECT fintx.tree_size()',
	extra_params => [ '-U', 'pay', '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  42501: permission denied for audit.read on "audit log"/,
	'a denial on a hot standby is 42501 (no WAL message is attempted)');
($rc, $out, $err) = $standby->psql('postgres', q{SELECT count(*) FROM fintx.poll('feed', 1)},
	extra_params => [ '-U', 'pay', '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  42501: permission denied for event.consume on "feed"/, 'so is a refused poll()');
like(slurp_file($standby->logfile), qr/ERROR:  permission denied for audit.read on "audit log"/,
	'and the denial is in the standby\'s server log');
($rc, $out, $err) = $standby->psql('postgres', q{SELECT status FROM fintx.transfer('np-s', 'pay:ops', 'pay:cust', 10)},
	extra_params => [ '-U', 'pay', '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  25006: /, 'a transfer on the standby is refused as read-only');
$standby->stop;
$node->stop;
done_testing();

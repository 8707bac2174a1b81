# Copyright fintx contributors
#
# 019_direct_writes.pl — the ledger writes its rows with the table and index
# access methods (src/direct.c), not SQL statements. What SQL would have
# guaranteed must still hold:
#   - a read-only transaction (and a hot standby's) refuses a transfer: 25006;
#   - an account deleted or renamed behind the API while a transfer waits for
#     its row lock is gone for that transfer (READ COMMITTED: "does not
#     exist"; REPEATABLE READ: 40001), as SELECT ... FOR UPDATE would decide;
#   - REPEATABLE READ: an account changed after the snapshot → 40001;
#     an idempotency key claimed by a transaction the snapshot cannot see → 40001;
#   - nothing is half-written: the ledger reconciles after every case;
#   - rows buffered and written 1,000 at a time (table_multi_insert) land
#     once each, and every index entry points at its row;
#   - a session that has written before sees a table renamed, re-created or
#     changed by another session since (direct.c keeps the relations it found
#     and the layouts it checked until a relcache invalidation).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FintxTest;

my $node = fintx_node('direct');
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql(q{
	SELECT fintx.open_account('src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('dst', 'EUR');
	SELECT fintx.open_account('gone', 'EUR', allow_negative => true);
	SELECT fintx.open_account('gone_rr', 'EUR', allow_negative => true);
	SELECT fintx.open_account('old_name', 'EUR', allow_negative => true);
});

# psql -c with terse errors: returns (stdout, sqlstate or '')
sub run_sql
{
	my ($q) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	return ($out, first_sqlstate($err) // '');
}

# waits until the session with application_name $app waits for a lock
sub wait_for_lock
{
	my ($app) = @_;
	for (1 .. 600)
	{
		return 1 if sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app'"
			  . " AND wait_event_type = 'Lock'") eq '1';
		usleep(50_000);
	}
	return 0;
}

# runs $blocked in an async client after $holder (a BackgroundPsql) took its
# locks, commits $holder once the client waits, returns the client's stderr
sub blocked_by
{
	my ($holder, $hold_sql, $app, $blocked) = @_;
	quiet_safe($holder, $hold_sql);
	my $c = FintxTest::Client->new($node, $app);
	$c->send($blocked);
	ok(wait_for_lock($app), "$app waits for the row lock");
	quiet_safe($holder, 'COMMIT');
	return $c->finish;
}

my ($out, $state);

# --- read-only transactions
($out, $state) = run_sql(q{BEGIN READ ONLY; SELECT fintx.transfer('ro-1', 'src', 'dst', 1); COMMIT;});
is($state, '25006', 'a transfer in a read-only transaction fails with 25006');
($out, $state) = run_sql(q{BEGIN READ ONLY; SELECT fintx.transfer_batch('[{"idempotency_key": "ro-2", "from_account": "src", "to_account": "dst", "amount": 1}]'); COMMIT;});
is($state, '25006', 'a batch in a read-only transaction fails with 25006');
is(sql(q{SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key LIKE 'ro-%'}), '0',
	'no key was claimed');

my $holder = quiet_session($node);

# --- READ COMMITTED: the account is deleted while the transfer waits for it
my $err = blocked_by($holder, q{BEGIN; DELETE FROM fintx.accounts WHERE code = 'gone';},
	'rc_deleted', qq{SELECT fintx.transfer('rc-del', 'gone', 'dst', 5);\n});
is(first_sqlstate($err), '22023', 'deleted while waiting: 22023 (the account does not exist)');

# --- READ COMMITTED: the account is renamed while the transfer waits for it
$err = blocked_by($holder, q{BEGIN; UPDATE fintx.accounts SET code = 'new_name' WHERE code = 'old_name';},
	'rc_renamed', qq{SELECT fintx.transfer('rc-ren', 'old_name', 'dst', 5);\n});
is(first_sqlstate($err), '22023',
	'renamed while waiting: 22023 (the newest version no longer has the code asked for)');
is(sql(q{SELECT count(*) FROM fintx.transfers t JOIN fintx.accounts a ON a.id = t.from_account
          WHERE a.code IN ('new_name', 'gone')}), '0', 'nothing moved from the deleted or renamed account');

# --- REPEATABLE READ: deleted after the snapshot, while waiting
$err = blocked_by($holder, q{BEGIN; DELETE FROM fintx.accounts WHERE code = 'gone_rr';},
	'rr_deleted', qq{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;\n}
	  . qq{SELECT fintx.transfer('rr-del', 'gone_rr', 'dst', 5);\nCOMMIT;\n});
is(first_sqlstate($err), '40001', 'REPEATABLE READ, deleted while waiting: 40001');

# --- REPEATABLE READ: the account changed after the snapshot was taken
my $rr = quiet_session($node, on_error_stop => 0);
quiet_safe($rr, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;');
sql(q{SELECT fintx.transfer('rc-1', 'src', 'dst', 7)});
quiet_query($rr, q{SELECT fintx.transfer('rr-upd', 'src', 'dst', 5);});
like($rr->{stderr}, qr/could not serialize access due to concurrent update/,
	'REPEATABLE READ, account updated after the snapshot: serialization failure');
quiet_query($rr, 'ROLLBACK');
$rr->{stderr} = '';

# --- REPEATABLE READ: the key was claimed by a transaction the snapshot cannot see
quiet_safe($rr, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;');
sql(q{SELECT fintx.transfer('rr-key', 'src', 'dst', 3)});
quiet_query($rr, q{SELECT fintx.transfer('rr-key', 'src', 'dst', 3);});
like($rr->{stderr}, qr/could not serialize access/,
	'REPEATABLE READ, key claimed after the snapshot: serialization failure');
quiet_query($rr, 'ROLLBACK');
$rr->{stderr} = '';
# a key committed before the snapshot was taken replays in REPEATABLE READ
quiet_safe($rr, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;');
is(quiet_safe($rr, q{SELECT replayed FROM fintx.transfer('rc-1', 'src', 'dst', 7);}), 't',
	'REPEATABLE READ, key committed before the snapshot: replayed');
quiet_safe($rr, 'COMMIT');
# the same retry in a new transaction replays
is(sql(q{SELECT replayed FROM fintx.transfer('rr-key', 'src', 'dst', 3)}), 't',
	'retried in a new transaction, the key replays');

# --- the money moved exactly by the transfers that succeeded
is(sql(q{SELECT posted FROM fintx.account_balances WHERE code = 'dst'}), '10', 'dst got 7 + 3');
is(sql(q{SELECT count(*) FROM fintx.transfers}), '2', 'two transfers');
is(reconcile_rows($node), '', 'reconcile() is clean');

# --- rows are buffered and written up to 1,000 at a time (table_multi_insert,
# src/direct.c): a batch of 2,345 transfers, every third one held, crosses the
# buffer twice in each table it writes. Every row lands exactly once and every
# index entry points at its row: reading through each index (no sequential or
# bitmap scans) gives the same rows as reading the heap.
sql(q{SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
		'idempotency_key', 'mi-' || i, 'from_account', 'src', 'to_account', 'dst', 'amount', i,
		'pending', i % 3 = 0, 'timeout', CASE WHEN i % 3 = 0 THEN '1 hour' END,
		'metadata', jsonb_build_object('n', i))) FROM generate_series(1, 2345) i))});
is(sql(q{SELECT count(*), sum(amount), count(*) FILTER (WHERE status = 'pending')
		   FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id
		  WHERE j.idempotency_key LIKE 'mi-%'}),
	'2345|2750685|781', 'a batch of 2,345: every transfer once (781 held)');
is(sql(q{SELECT count(*) FROM fintx.pending_holds h JOIN fintx.idempotency_keys j ON j.transfer_id = h.transfer_id
		  WHERE j.idempotency_key LIKE 'mi-%'}), '781', 'one hold row per held transfer');
is(sql(q{SELECT posted FROM fintx.account_balances WHERE code = 'dst'}),
	10 + 2750685 - (3 * 781 * 782 / 2), 'dst got the posted amounts');
my $through_heap = q{SELECT md5(string_agg(t.id || ':' || t.amount || ':' || t.metadata::text, ',' ORDER BY t.id))
	FROM fintx.transfers t};
my $heap = sql("SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off; $through_heap");
for my $where ('t.id > 0', 't.from_account > 0', 't.to_account > 0')
{
	is(sql("SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off; $through_heap WHERE $where"),
		$heap, "reading transfers through the index on ($where) gives the rows of the heap");
}
is(sql(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		 SELECT count(*) FROM fintx.idempotency_keys j, fintx.transfers t
		  WHERE t.id = j.transfer_id AND j.idempotency_key LIKE 'mi-%'}), '2345',
	'each journal record finds its transfer through the index');
is(sql(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		 SELECT count(*) FROM fintx.audit_entries WHERE entry_id > 0 AND details->>'idempotency_key' LIKE 'mi-%'}),
	'2345', 'one audit entry per transfer, found through the entry index');
is(sql(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		 SELECT count(*) FROM fintx.outbox WHERE event_no > 0 AND payload->>'idempotency_key' LIKE 'mi-%'}),
	'2345', 'one outbox event per transfer, found through the event index');
is(sql(q{SELECT fintx.seal() >= 2345, (SELECT ok FROM fintx.verify_audit())}), 't|t',
	'the log seals (2,345 leaves written in one pass) and verifies');
is(sql(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		 SELECT count(*) FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id)
		  WHERE l.leaf_index >= 0 AND e.details->>'idempotency_key' LIKE 'mi-%'}), '2345',
	'every entry has one leaf');
is(sql(q{SET enable_seqscan = off; SET enable_bitmapscan = off;
		 SELECT count(*) FROM fintx.audit_entries e
		  WHERE e.details->>'idempotency_key' LIKE 'mi-%'
		    AND EXISTS (SELECT FROM fintx.audit_leaf_runs r
		                 WHERE r.first_entry <= e.entry_id AND e.entry_id < r.first_entry + r.leaf_count
		                   AND r.first_entry = (SELECT max(first_entry) FROM fintx.audit_leaf_runs
		                                         WHERE first_entry <= e.entry_id))}), '2345',
	'every entry\'s leaf run is found through the run index on first_entry');
is(reconcile_rows($node), '', 'reconcile() is clean after the large batch');

# --- another session changes what this one has written to: it is seen at the next call
my $w = quiet_session($node, on_error_stop => 0);
# runs a transfer in $w, returns 'ok' or the error's first line
sub w_transfer
{
	my ($key) = @_;
	$w->{stderr} = '';
	my $out = quiet_query($w, qq{SELECT replayed FROM fintx.transfer('$key', 'src', 'dst', 1);});
	return $out eq 'f' ? 'ok' : ($w->{stderr} =~ /ERROR:\s+(.*)/ ? $1 : "output '$out' stderr '$w->{stderr}'");
}
is(w_transfer('inv-1'), 'ok', 'a session writes (and keeps what it found)');
sql(q{ALTER TABLE fintx.audit_entries RENAME TO audit_entries_moved});
is(w_transfer('inv-2'), 'relation "fintx.audit_entries" does not exist',
	'a table renamed by another session is not written through the old name: 42P01');
sql(q{CREATE TABLE fintx.audit_entries (entry_id bigint)});
is(w_transfer('inv-3'), 'table "fintx.audit_entries" does not have the columns fintx writes',
	'a table re-created under the name is the one opened, and its layout checked');
sql(q{DROP TABLE fintx.audit_entries; ALTER TABLE fintx.audit_entries_moved RENAME TO audit_entries});
is(w_transfer('inv-4'), 'ok', 'renamed back: written again');
sql(q{ALTER TABLE fintx.transfers RENAME COLUMN principal TO principal_renamed});
is(w_transfer('inv-5'), 'table "fintx.transfers" does not have the columns fintx writes',
	'a column renamed by another session: the layout is checked again (55000)');
sql(q{ALTER TABLE fintx.transfers RENAME COLUMN principal_renamed TO principal});
is(w_transfer('inv-6'), 'ok', 'changed back: written again');
# ... also inside a transaction opened before the change: the name is looked up again once
# the lock is taken (a rename committed meanwhile is seen, as SQL would see it). The journal
# is the first table a transfer locks: no earlier lock has taken in the invalidation.
quiet_safe($w, 'BEGIN; SELECT 1;');
sql(q{ALTER TABLE fintx.idempotency_keys RENAME TO idempotency_keys_moved});
is(w_transfer('inv-7'), 'relation "fintx.idempotency_keys" does not exist',
	'a transaction open across a rename does not write into the renamed table: 42P01');
quiet_query($w, 'ROLLBACK');
$w->{stderr} = '';
quiet_safe($w, 'BEGIN; SELECT 1;');
sql(q{CREATE TABLE fintx.idempotency_keys (principal text)});
is(w_transfer('inv-8'), 'table "fintx.idempotency_keys" does not have the columns fintx writes',
	'nor into the old table once another has the name: the new one is opened (55000)');
quiet_query($w, 'ROLLBACK');
$w->{stderr} = '';
sql(q{DROP TABLE fintx.idempotency_keys; ALTER TABLE fintx.idempotency_keys_moved RENAME TO idempotency_keys});
sql(q{ALTER TABLE fintx.audit_entries RENAME TO audit_entries_moved});
# a table of another kind under the name: refused, not written as a plain table
sql(q{CREATE TABLE fintx.audit_entries (LIKE fintx.audit_entries_moved) PARTITION BY RANGE (entry_id);
	  CREATE TABLE fintx.audit_entries_p0 PARTITION OF fintx.audit_entries DEFAULT});
is(w_transfer('inv-9'), 'relation "fintx.audit_entries" is not the kind of table fintx writes',
	'a partitioned table where fintx writes a plain one: 55000, not a crash');
sql(q{DROP TABLE fintx.audit_entries; ALTER TABLE fintx.audit_entries_moved RENAME TO audit_entries});
# an index of another table under the name of one fintx reads through
sql(q{ALTER INDEX fintx.accounts_code_key RENAME TO accounts_code_key_moved;
	  CREATE INDEX accounts_code_key ON fintx.transfers (principal)});
is(w_transfer('inv-10'), 'index "fintx.accounts_code_key" is not an index of table "fintx.accounts"',
	'an index of another table under the name: 55000');
sql(q{DROP INDEX fintx.accounts_code_key; ALTER INDEX fintx.accounts_code_key_moved RENAME TO accounts_code_key});
is(w_transfer('inv-11'), 'ok', 'everything back: written again');
is(sql(q{SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM fintx.idempotency_keys
		  WHERE idempotency_key LIKE 'inv-%'}), 'inv-1,inv-11,inv-4,inv-6', 'only the calls that succeeded left a key');
is(sql(q{SELECT count(*) FROM fintx.audit_entries e JOIN fintx.idempotency_keys j
		   ON e.details->>'idempotency_key' = j.idempotency_key WHERE j.idempotency_key LIKE 'inv-%'}), '4',
	'each has its audit entry in fintx.audit_entries');
is(sql(q{SELECT ok FROM fintx.verify_audit()}), 't', 'the log verifies');
is(reconcile_rows($node), '', 'reconcile() is clean');
# a batch's 40001 on a key claimed after its snapshot names the request, as its other errors do
quiet_safe($rr, 'BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1;');
sql(q{SELECT fintx.transfer('rr-bkey', 'src', 'dst', 1)});
quiet_query($rr, q{SELECT count(*) FROM fintx.transfer_batch('[
	{"idempotency_key": "rr-b0", "from_account": "src", "to_account": "dst", "amount": 1},
	{"idempotency_key": "rr-bkey", "from_account": "src", "to_account": "dst", "amount": 1}]');});
like($rr->{stderr}, qr/could not serialize access.*\nCONTEXT:  transfer request at index 1 of the batch/s,
	'REPEATABLE READ, a batch\'s key claimed after the snapshot: 40001 with the index of its request');
quiet_query($rr, 'ROLLBACK');
$rr->{stderr} = '';
$w->quit;
$rr->quit;
$holder->quit;
$node->stop;
done_testing();

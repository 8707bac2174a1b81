# Copyright fintx contributors
#
# 021_multi_insert.pl — adversarial checks of the buffered direct
# inserts (src/direct.c FlushLeaf / table_multi_insert):
#   - TOASTed metadata (62 kB, incompressible) in a batch and alone round-trips
#     into transfers, audit entries and outbox payloads; a retry replays the
#     original results; the log seals and verifies;
#   - outbox events and positions of one batch crossing slot partitions land
#     in the partition of their slot;
#   - rows written by one call are seen by later statements of the same
#     transaction (pending then post_pending, SQL reads);
#   - a unique violation raised while flushing (a user unique index, dups in
#     one flush and across flushes) rolls back cleanly inside a plpgsql
#     exception block; a deferrable unique constraint is refused; a sealing
#     pass failing (23505 on audit_leaf_runs) inside verify_audit's
#     subtransaction leaves no leak warnings;
#   - a streaming standby replays the multi-insert WAL to identical tables.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('multi', { allows_streaming => 'logical' },
	"fintx.expire_interval = '1h'", "fintx.seal_interval = '1h'", "fintx.outbox_wakeup = 0");
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('multi_standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub run_sql
{
	my ($q) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	return ($out, first_sqlstate($err) // '', $err);
}

sql(q{
	SELECT fintx.open_account('src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('dst', 'EUR');
	CREATE TABLE review_in AS
	  SELECT i, jsonb_build_object('i', i, 'blob',
	         (SELECT string_agg(md5(random()::text || i || g), '') FROM generate_series(1, 1950) g)) AS m
	    FROM generate_series(1, 30) i;
});

sql(q{SELECT pg_create_logical_replication_slot('review_slot', 'test_decoding')});

# --- TOASTed metadata: a batch of 30 (heap_multi_insert) and a single transfer (heap_insert)
my $batch = q{SELECT transfer_id, status, from_balance, to_balance, encode(entry_hash, 'hex'), created_at
	FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object('idempotency_key', 'big-' || i,
	  'from_account', 'src', 'to_account', 'dst', 'amount', i, 'metadata', m) ORDER BY i) FROM review_in))};
my $first = sql($batch);
is(scalar(split /\n/, $first), 30, 'a batch of 30 transfers with 62 kB metadata');
my $single = q{SELECT transfer_id, status, from_balance, to_balance, encode(entry_hash, 'hex'), created_at
	FROM fintx.transfer('big-single', 'src', 'dst', 1000, (SELECT m FROM review_in WHERE i = 1))};
my $first_single = sql($single);
is(sql(q{SELECT count(*) FROM pg_class c WHERE c.oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'fintx.transfers'::regclass)
	AND (SELECT count(*) FROM pg_toast.pg_toast_} . sql(q{SELECT 'fintx.transfers'::regclass::oid}) . q{) > 0}), '1',
	'the metadata went to the TOAST table');
is(sql(q{SELECT count(*) FROM review_in r JOIN fintx.idempotency_keys j ON j.idempotency_key = 'big-' || r.i
	JOIN fintx.transfers t ON t.id = j.transfer_id
	JOIN fintx.audit_entries a ON a.object_id = t.id::text AND a.object_type = 'transfer'
	JOIN fintx.outbox o ON o.aggregateid = t.id::text AND o.aggregatetype = 'transfer'
	WHERE t.metadata = r.m AND a.details->'metadata' = r.m AND o.payload->'metadata' = r.m}), '30',
	'metadata identical in transfers, audit details and outbox payloads');
is(sql($batch =~ s/encode\(entry_hash, 'hex'\), created_at/encode(entry_hash, 'hex'), created_at, replayed/r),
	join("\n", map { "$_|t" } split /\n/, $first), 'the batch retried: the same results, replayed');
is(sql(q{SELECT replayed FROM fintx.transfer('big-single', 'src', 'dst', 1000, (SELECT m FROM review_in WHERE i = 1))}),
	't', 'the single transfer replays');

# logical decoding (Debezium reads fintx.outbox through pgoutput) decodes the
# multi-insert records with their TOASTed values
is(sql(q{SELECT string_agg(t || ':' || n, ',' ORDER BY t) FROM (SELECT substring(data from '^table ([a-z_.0-9]+): INSERT') t, count(*) n
	FROM pg_logical_slot_get_changes('review_slot', NULL, NULL)
	WHERE data ~ '^table fintx\.(transfers|audit_entries|outbox_[0-9]): INSERT:' AND EXISTS (SELECT 1 FROM review_in r WHERE strpos(data, r.m->>'blob') > 0)
	  AND data NOT LIKE '%unchanged-toast-datum%' GROUP BY 1) s}),
	'fintx.audit_entries:31,fintx.outbox_0:31,fintx.transfers:31',
	'logical decoding: every transfer, audit entry and outbox row with its full TOASTed value');
sql(q{SELECT pg_drop_replication_slot('review_slot')});

# --- outbox partitions: events of one batch cross slot 0 -> 1 and 2 -> 0
for my $start (1048576 - 10, 3 * 1048576 - 10)
{
	sql("SELECT setval('fintx.outbox_event_no_seq', $start)");
	is(sql(qq{SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
		'idempotency_key', 'part-$start-' || i, 'from_account', 'src', 'to_account', 'dst', 'amount', 1)) FROM generate_series(1, 25) i))}),
		'25', "a batch of 25 from event_no $start");
}
is(sql(q{SELECT string_agg(tableoid::regclass::text || ':' || n, ',' ORDER BY tableoid::regclass::text) FROM
	(SELECT tableoid, count(*) n FROM fintx.outbox WHERE event_no >= 1048576 - 10 GROUP BY tableoid) s}),
	'fintx.outbox_0:25,fintx.outbox_1:16,fintx.outbox_2:9', 'the crossing events spread over three partitions');
is(sql(q{SELECT count(*) FROM fintx.outbox WHERE tableoid <> ('fintx.outbox_' || ((event_no / 1048576) % 3))::regclass}),
	'0', 'every event is in the partition of its slot');
sql(q{SELECT fintx.sequence_outbox()});
is(sql(q{SELECT fintx.outbox_tail() = (SELECT count(*) FROM fintx.outbox)}), 't', 'every event is sequenced');
is(sql(q{SELECT count(*) FROM fintx.outbox_position_runs
          WHERE tableoid <> ('fintx.outbox_position_runs_' || ((first_event_no / 1048576) % 3))::regclass
             OR (first_event_no + event_count - 1) / 1048576 <> first_event_no / 1048576}),
	'0', 'every run of positions is in the partition of its slot and ends in it');
cmp_ok(sql(q{SELECT count(*) FROM fintx.outbox_position_runs WHERE first_event_no % 1048576 = 0}), '>=', 2,
	'the runs break at the slot boundaries the batches crossed');
is(sql(q{SELECT count(*) = max(position) AND count(DISTINCT event_no) = count(*) FROM fintx.outbox_positions}), 't',
	'positions are gap-free and one per event');
is(sql(q{SELECT count(*) FROM fintx.outbox o LEFT JOIN fintx.outbox_positions p USING (event_no) WHERE p.event_no IS NULL}),
	'0', 'every event has its position');

# --- same transaction: later statements see the rows
my ($out, $state, $err) = run_sql(q{
	BEGIN;
	CREATE TEMP TABLE h AS SELECT transfer_id FROM fintx.transfer('tx-hold', 'src', 'dst', 5, pending => true);
	SELECT count(*) FROM fintx.transfers WHERE id = (SELECT transfer_id FROM h);
	SELECT count(*) FROM fintx.pending_holds WHERE transfer_id = (SELECT transfer_id FROM h);
	SELECT status FROM fintx.post_pending('tx-post', (SELECT transfer_id FROM h));
	SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
		'idempotency_key', 'tx-b-' || i, 'from_account', 'src', 'to_account', 'dst', 'amount', 1)) FROM generate_series(1, 1500) i));
	SELECT count(*) FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id WHERE j.idempotency_key LIKE 'tx-%';
	SELECT count(*) FROM fintx.audit_entries WHERE details->>'idempotency_key' LIKE 'tx-%';
	SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
		'idempotency_key', 'tx-b-' || i, 'from_account', 'src', 'to_account', 'dst', 'amount', 1)) FROM generate_series(1, 1500) i)) WHERE replayed;
	COMMIT;});
is($state, '', 'no error in the same-transaction script') or diag($err);
is($out, "1\n1\nposted\n1500\n1502\n1502\n1500", 'each statement sees the rows of the previous ones');

# --- errors raised while flushing, caught in a plpgsql block (a subtransaction)
sql(q{CREATE UNIQUE INDEX review_u ON fintx.transfers ((metadata->>'u'))});
my $log_offset = -s $node->logfile;
for my $case ([ 'same flush', '3, 4' ], [ 'across flushes', '1, 1500' ], [ 'last flush', '1999, 2000' ])
{
	my ($name, $dups) = @$case;
	($out, $state, $err) = run_sql(qq{
		DO \$\$
		BEGIN
			PERFORM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
				'idempotency_key', 'dup-' || i, 'from_account', 'src', 'to_account', 'dst', 'amount', 1,
				'metadata', jsonb_build_object('u', CASE WHEN i IN ($dups) THEN 'x' ELSE i::text END)))
				FROM generate_series(1, 2000) i));
			RAISE EXCEPTION 'no error';
		EXCEPTION WHEN unique_violation THEN
			PERFORM set_config('review.msg', SQLERRM, false);
		END \$\$;
		SELECT 'caught ' || current_setting('review.msg');
		SELECT fintx.transfer('after-dup-' || md5('$name'), 'src', 'dst', 1);
	});
	is($state, '', "duplicate ($name): 23505 caught, the transaction goes on") or diag($err);
	like($out, qr/caught duplicate key value violates unique constraint "review_u"/, "duplicate ($name): 23505 from review_u");
}
sql(q{DROP INDEX fintx.review_u});
is(sql(q{SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key LIKE 'dup-%'}), '0', 'no key of a failed batch stayed');
is(sql(q{SELECT count(*) FROM fintx.transfers WHERE metadata ? 'u'}), '0', 'no transfer of a failed batch stayed');

sql(q{ALTER TABLE fintx.pending_holds ADD CONSTRAINT review_d UNIQUE (timeout_at) DEFERRABLE});
($out, $state, $err) = run_sql(q{SELECT fintx.transfer_batch('[{"idempotency_key": "defer-1", "from_account": "src", "to_account": "dst", "amount": 1, "pending": true, "timeout": "1 hour"},
	{"idempotency_key": "defer-2", "from_account": "src", "to_account": "dst", "amount": 1, "pending": true, "timeout": "1 hour"}]')});
is($state, '0A000', 'a deferrable unique constraint is refused (0A000)');
my (undef, undef, $named) = $node->psql('postgres', q{SELECT fintx.transfer('defer-3', 'src', 'dst', 1, pending => true)});
like($named, qr/deferrable constraints on "fintx.pending_holds" are not supported\nDETAIL:  Index "review_d" is deferrable/,
	'refused when the table is opened, without a conflict, naming the table and the index');
sql(q{ALTER TABLE fintx.pending_holds DROP CONSTRAINT review_d});

# the journal's speculative insert refuses one too (a new database: the constraint needs a
# journal without two records of one timestamp); unchecked, the batch would commit two
$node->safe_psql('postgres', 'CREATE DATABASE defer');
$node->safe_psql('defer', q{CREATE EXTENSION fintx;
	SELECT fintx.open_account('src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('dst', 'EUR');
	ALTER TABLE fintx.idempotency_keys ADD CONSTRAINT review_dk UNIQUE (created_at) DEFERRABLE INITIALLY DEFERRED});
my ($drc, $dout, $derr) = $node->psql('defer', q{SELECT count(*) FROM fintx.transfer_batch('[
	{"idempotency_key": "dk-1", "from_account": "src", "to_account": "dst", "amount": 1},
	{"idempotency_key": "dk-2", "from_account": "src", "to_account": "dst", "amount": 2}]')},
	extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
is(first_sqlstate($derr) // '', '0A000', 'a deferrable unique constraint on the journal is refused (0A000)') or diag($derr);
is($node->safe_psql('defer', 'SELECT count(*) FROM fintx.idempotency_keys'), '0', 'and none of its records stays');

# sealing fails writing audit_leaf_runs (the next pass's first leaf index taken behind fintx's back):
# XX001 from the pass, which verify_audit (sealing in a subtransaction) reports as damage
my $size = sql(q{SELECT fintx.seal()});
sql(q{SELECT fintx.transfer('seal-' || i, 'src', 'dst', 1) FROM generate_series(1, 5) i});
sql(qq{INSERT INTO fintx.audit_leaf_runs VALUES ($size, -1, 1, 0)});
($out, $state, $err) = run_sql(q{SELECT ok FROM fintx.verify_audit()});
is("$state|$out", '|f', 'verify_audit: sealing hits the planted leaf; reported as damage (ok = false), not raised');
($out, $state, $err) = run_sql(q{SELECT fintx.seal()});
is($state, 'XX001', 'seal(): XX001 for the planted leaf, not the unique violation') or diag($err);
($out, $state, $err) = run_sql(q{
	DO $$ BEGIN PERFORM fintx.seal(); EXCEPTION WHEN data_corrupted THEN RAISE NOTICE 'caught'; END $$;
	SELECT fintx.transfer('after-seal-fail', 'src', 'dst', 1);});
is($state, '', 'the failed seal caught in plpgsql, the transaction goes on') or diag($err);
sql(q{SET session_replication_role = replica; DELETE FROM fintx.audit_leaf_runs WHERE first_entry = -1});
is(sql(q{SELECT ok FROM fintx.verify_audit()}), 't', 'with the planted leaf removed the log seals and verifies');

my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/WARNING/, 'no WARNING (leaked slot, tuple descriptor or relation) in the server log');
note(join "\n", grep { /WARNING/ } split /\n/, $log);

# --- the standby replays the multi-insert WAL
sql(q{SELECT fintx.seal()});
$node->wait_for_catchup($standby, 'replay', $node->lsn('insert'));
for my $q (
	q{SELECT count(*), md5(string_agg(t::text, ',' ORDER BY id)) FROM fintx.transfers t},
	q{SELECT count(*), md5(string_agg(a::text, ',' ORDER BY entry_id)) FROM fintx.audit_entries a},
	q{SELECT count(*), md5(string_agg(o::text, ',' ORDER BY event_no)) FROM fintx.outbox o},
	q{SELECT count(*), md5(string_agg(p::text, ',' ORDER BY position)) FROM fintx.outbox_positions p},
	q{SELECT count(*), md5(string_agg(l::text, ',' ORDER BY leaf_index)) FROM fintx.audit_leaves l},
	q{SELECT count(*), md5(string_agg(h::text, ',' ORDER BY transfer_id)) FROM fintx.pending_holds h},
	q{SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM fintx.transfers WHERE id > 0})
{
	is($standby->safe_psql('postgres', $q), sql($q), "standby equals primary: $q");
}
is($standby->safe_psql('postgres', q{SELECT count(*) FROM fintx.reconcile()}), '0', 'reconcile() on the standby is clean');
# a read on the standby answers what the primary had sealed, and its hint says why
my ($sret, $sout, $serr) = $standby->psql('postgres', 'SELECT fintx.tree_size()');
like($serr, qr/HINT:  This server is a standby: the primary seals/, 'tree_size() on a standby: the hint names the standby, not preload');
is($sout, $standby->safe_psql('postgres', 'SELECT coalesce(max(tree_size), 0) FROM fintx.audit_blocks'),
	'and the size is that of the latest block it replayed');
is(reconcile_rows($node), '', 'reconcile() on the primary is clean');
is(sql(q{SELECT ok FROM fintx.verify_audit()}), 't', 'verify_audit() on the primary');

$standby->stop;
$node->stop;
done_testing();

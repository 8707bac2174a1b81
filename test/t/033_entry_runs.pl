# Copyright fintx contributors
#
# 033_entry_runs.pl — a sealing pass finds the audit entries of newly committed
# transactions through the first entry of each run of consecutive entry ids that
# one call wrote (run_length set, the only rows in the txid index), and reads the
# rest of the run by entry id. What scanning every entry by txid gave must still
# hold, with runs that break where a session's cached block of ids ends and
# another session's block lies between:
#   - every committed entry is sealed exactly once, none of an aborted
#     transaction or of a rolled-back savepoint, whose entries lie between the
#     committed ones of the same transaction;
#   - a transaction open across a pass is sealed, whole, by the pass after its
#     commit;
#   - the runs cover every entry exactly once (sum of run_length = entries);
#   - a batch of 100 transfers puts at most two of its entries in the txid index.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('entry_runs', "fintx.seal_interval = '1h'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	SELECT fintx.open_account('src-' || s, 'EUR', allow_negative => true) FROM unnest('{a1,a2,a3,b1,c1,d,e}'::text[]) s;
	SELECT fintx.open_account('dst-' || s, 'EUR') FROM unnest('{a1,a2,a3,b1,c1,d,e}'::text[]) s;
	SELECT fintx.seal();
});
my $size0 = sql('SELECT fintx.tree_size()');

# a batch of $n transfers under keys "$prefix-1" .. "$prefix-$n", between accounts of its
# own (sessions that stay open must not hold row locks another session's batch waits for)
sub batch
{
	my ($prefix, $n) = @_;
	return "SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object("
	  . "'idempotency_key', '$prefix-' || i, 'from_account', 'src-$prefix', 'to_account', 'dst-$prefix', 'amount', i))"
	  . " FROM generate_series(1, $n) i))";
}

my %s = map { $_ => quiet_session($node) } qw(A B C D);
sub on { my ($name, $q) = @_; return quiet_safe($s{$name}, $q); }

# A takes two blocks of 256 ids and stays open; B and C take theirs after it; A's rolled-back
# savepoint uses ids between its committed batches; A's last batch runs past its block, so
# its entries break into two runs with B's and C's ids between them.
on('A', 'BEGIN');
is(on('A', batch('a1', 300)), '300', 'A: a batch of 300 in an open transaction');
on('B', 'BEGIN');
is(on('B', batch('b1', 300)), '300', 'B: a batch of 300');
on('C', 'BEGIN');
is(on('C', batch('c1', 300)), '300', 'C: a batch of 300 (to be rolled back)');
on('A', 'SAVEPOINT s');
is(on('A', batch('a2', 200)), '200', 'A: a batch of 200 in a savepoint (to be rolled back)');
on('A', 'ROLLBACK TO SAVEPOINT s');
is(on('A', batch('a3', 150)), '150', 'A: a batch of 150 after the rollback');
on('D', 'BEGIN');
# single transfers in savepoints, every other one rolled back: runs of one entry each
for my $i (1 .. 6)
{
	on('D', "SAVEPOINT d$i; SELECT fintx.transfer('d-$i', 'src-d', 'dst-d', $i)");
	on('D', "ROLLBACK TO SAVEPOINT d$i") if $i % 2 == 0;
}
on('B', 'COMMIT');
on('C', 'ROLLBACK');

my $size1 = sql('SELECT fintx.seal()');
is($size1 - $size0, 300, 'pass 1: the 300 entries of committed B, none of open A and D or aborted C');
is(sql(q{SELECT count(*) FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id)
          WHERE e.details->>'idempotency_key' LIKE 'b1-%'}), '300', 'pass 1 sealed B\'s 300 entries');

on('A', 'COMMIT');
on('D', 'COMMIT');
my $size2 = sql('SELECT fintx.seal()');
is($size2 - $size1, 453, 'pass 2: A\'s 300 + 150 and D\'s 3 committed transfers');

# every committed transfer's entry at exactly one leaf, nothing else
is(sql(q{SELECT string_agg(k || ':' || n, ' ' ORDER BY k) FROM (
           SELECT split_part(e.details->>'idempotency_key', '-', 1) AS k, count(*) AS n
             FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id)
            WHERE e.object_type = 'transfer' GROUP BY 1) q}),
	'a1:300 a3:150 b1:300 d:3', 'sealed: a1 300, a3 150, b1 300, d 3; no entry of c1 or a2');
is(sql(q{SELECT string_agg(e.details->>'idempotency_key', ',' ORDER BY e.entry_id)
           FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id)
          WHERE e.details->>'idempotency_key' LIKE 'd-%'}), 'd-1,d-3,d-5', 'D: the transfers outside rolled-back savepoints');
is(sql('SELECT count(*) - count(DISTINCT entry_id) FROM fintx.audit_leaves'), '0', 'no entry at two leaves');
is(sql(q{SELECT count(*) FROM fintx.audit_entries e WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id)}),
	'0', 'every committed entry has a leaf');
is(sql('SELECT fintx.tree_size() = (SELECT count(*) FROM fintx.audit_entries)'), 't', 'tree size = committed entries');

# the runs: they cover every entry once; A's last batch broke at the end of its block
is(sql(q{SELECT sum(run_length) = count(*) FROM fintx.audit_entries}), 't', 'the runs cover every entry (sum of run_length)');
is(sql(q{SELECT count(*) FROM fintx.audit_entries a
          WHERE (SELECT count(*) FROM fintx.audit_entries m
                  WHERE m.run_length IS NOT NULL AND m.txid = a.txid
                    AND a.entry_id >= m.entry_id AND a.entry_id < m.entry_id + m.run_length) <> 1}),
	'0', 'each entry lies in exactly one run of its own transaction');
is(sql(q{SELECT count(*) FROM fintx.audit_entries WHERE run_length IS NOT NULL AND details->>'idempotency_key' LIKE 'a3-%'}),
	'2', 'A\'s batch of 150 that crossed its block\'s end: two runs');
is(sql(q{SELECT count(*) FROM fintx.audit_entries WHERE run_length IS NOT NULL AND details->>'idempotency_key' LIKE 'd-%'}),
	'3', 'single transfers: a run each');

# a batch of 100 in a new session: at most two entries in the txid index
sql(batch('e', 100));
is(sql(q{SELECT count(*) <= 2 AND sum(run_length) = 100 FROM fintx.audit_entries
          WHERE run_length IS NOT NULL AND details->>'idempotency_key' LIKE 'e-%'}), 't',
	'a batch of 100: at most two runs, covering its 100 entries');
is(sql(q{SELECT pg_get_indexdef('fintx.audit_entries_txid'::regclass) LIKE '%WHERE (run_length IS NOT NULL)'}), 't',
	'the txid index holds the first entries of runs only');
is(sql('SELECT fintx.seal() - ' . $size2), '100', 'the batch sealed');

is(sql('SELECT ok FROM fintx.verify_audit()'), 't', 'verify_audit() ok');
is(sql('SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile() clean');
$_->quit for values %s;
done_testing();

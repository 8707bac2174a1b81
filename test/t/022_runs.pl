# Copyright fintx contributors
#
# 022_runs.pl — sealing records leaf indexes (fintx.audit_leaf_runs) and outbox
# positions (fintx.outbox_position_runs) as runs of consecutive ids, not one
# row per entry or event. What one row per leaf or position gave must still hold:
#   - every entry has exactly one leaf and every event one position, dense,
#     in the order sealing assigned them, with interleaved sessions whose ids
#     are not consecutive (runs break) and a batch whose ids are (runs are long);
#   - fintx.audit_log, fintx.audit_leaves, leaf_data(), audit_export() and the
#     proofs agree about every leaf, at run boundaries too;
#   - poll() in windows smaller and larger than a run returns every position
#     once, in order; reject() finds the event of a position inside a run;
#   - a pass plans its queries with JIT off and leaves the caller's setting;
#   - the sealing pass, the proofs, leaf_data() and poll() read the fast-growing
#     tables through their indexes even when the planner's statistics say the
#     tables are tiny (plans are kept for the session: a plan made on a small
#     table must not go on scanning it whole once it has grown).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('runs', "fintx.seal_interval = '1h'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	SELECT fintx.open_account('src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('dst-' || i, 'EUR') FROM generate_series(1, 3) i;
	SELECT fintx.seal();
	SELECT fintx.create_consumer('c7');
	SELECT fintx.create_consumer('c500');
	SELECT fintx.create_consumer('rej', 1, 0, max_retries => 1);
});
my $size0 = sql('SELECT fintx.tree_size()');

# three sessions interleave single transfers (each session draws entry ids from its own
# cached block, so sealing sees ids out of step), then one batch of 700
my @s = map { $node->background_psql('postgres') } 1 .. 3;
for my $round (1 .. 20)
{
	for my $i (0 .. 2)
	{
		quiet_safe($s[$i], "SELECT fintx.transfer('s$i-$round', 'src', 'dst-" . ($i + 1) . "', $round)");
	}
}
$_->quit for @s;
is(sql(q{SELECT count(*) FROM fintx.transfer_batch((SELECT jsonb_agg(jsonb_build_object(
	'idempotency_key', 'b-' || i, 'from_account', 'src', 'to_account', 'dst-1', 'amount', 1))
	FROM generate_series(1, 700) i))}), '700', 'a batch of 700');
my $size = sql('SELECT fintx.seal()');
is($size - $size0, 760, '760 new leaves sealed in one pass');

# --- leaves
my ($runs, $leaves) = split /\|/, sql("SELECT count(*), sum(leaf_count) FROM fintx.audit_leaf_runs WHERE first_leaf >= $size0");
is($leaves, 760, 'the runs of the pass cover its 760 leaves');
cmp_ok($runs, '>', 3, "the interleaved sessions' entries break into runs ($runs)");
cmp_ok($runs, '<', 100, 'but far fewer runs than leaves');
is(sql(q{SELECT count(*) = max(leaf_index) + 1 AND count(DISTINCT leaf_index) = count(*) AND count(DISTINCT entry_id) = count(*)
          FROM fintx.audit_leaves}), 't', 'leaf indexes are dense, each once, each entry once');
is(sql(q{SELECT count(*) FROM fintx.audit_entries e
          WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id)}), '0', 'every entry has a leaf');
is(sql(q{SELECT count(*) FROM fintx.audit_log a JOIN fintx.audit_leaves l USING (entry_id)
          WHERE a.leaf_index IS DISTINCT FROM l.leaf_index}), '0', 'audit_log and audit_leaves agree on every leaf');
is(sql(q{SELECT count(*) FROM fintx.audit_leaves l JOIN fintx.audit_entries e USING (entry_id)
          WHERE l.leaf_hash IS DISTINCT FROM e.entry_hash}), '0', 'the leaf hash is the entry hash');
# entry-id order within the pass, and the leaf of each run's first and last entry
is(sql(qq{SELECT bool_and(entry_id > prev) FROM (SELECT entry_id, lag(entry_id) OVER (ORDER BY leaf_index) AS prev
            FROM fintx.audit_leaves WHERE leaf_index >= $size0) q WHERE prev IS NOT NULL}), 't',
	'the pass gave its leaves in entry-id order');
my $edges = sql(qq{SELECT string_agg(i::text, ',') FROM (SELECT first_leaf AS i FROM fintx.audit_leaf_runs WHERE first_leaf >= $size0
                    UNION SELECT first_leaf + leaf_count - 1 FROM fintx.audit_leaf_runs WHERE first_leaf >= $size0) q});
is(sql(qq{SELECT count(*) FROM unnest('{$edges}'::bigint[]) i JOIN fintx.audit_leaves l ON l.leaf_index = i
          WHERE fintx.merkle_leaf_hash(fintx.leaf_data(i)) <> l.leaf_hash}), '0',
	'leaf_data() at every run boundary hashes to that leaf\'s entry hash');
is(sql(qq{SELECT count(*) FROM fintx.audit_export($size0, $size - 1)}), 760, 'audit_export() of the pass: 760 lines');
is(sql(qq{SELECT bool_and(split_part(l, E'\\t', 1)::bigint = o + $size0 - 1) FROM fintx.audit_export($size0, $size - 1)
            WITH ORDINALITY AS x(l, o)}), 't', '  in leaf order, one per leaf');
is(sql(qq{SELECT count(*) FROM fintx.audit_export($size - 5, $size + 1000)}), 5, 'audit_export() past the end stops at the last leaf');
is(sql(q{SELECT count(*) FROM fintx.audit_export(5, 4)}), '0', 'an empty range exports nothing');
my $v = sql(q{SELECT ok || ' ' || entries_checked FROM fintx.verify_audit()});
is($v, "true $size", 'verify_audit() checks every leaf');
is(sql(qq{SELECT count(*) FROM fintx.verify_audit($size0 + 3, $size - 2) WHERE ok}), '1', 'and a range that starts and ends inside runs');

# --- positions
my ($pruns, $events) = split /\|/, sql('SELECT count(*), sum(event_count) FROM fintx.outbox_position_runs');
is($events, sql('SELECT count(*) FROM fintx.outbox'), 'the position runs cover every event');
cmp_ok($pruns, '<', $events / 5, "in $pruns runs");
my $tail = sql('SELECT fintx.outbox_tail()');
is($tail, $events, 'the tail is the number of events');
for my $c ([ 'c7', 7 ], [ 'c500', 500 ])
{
	my ($name, $window) = @$c;
	my @got;
	for (1 .. 1000)
	{
		my $rows = sql("SELECT string_agg(position || ':' || event_no, ',' ORDER BY position) FROM fintx.poll('$name', $window)");
		last if $rows eq '';
		my @p = split /,/, $rows;
		push @got, @p;
		my ($last) = split /:/, $p[-1];
		sql("SELECT fintx.ack('$name', $last)");
	}
	is(scalar @got, $tail, "$name: polling $window at a time returns $tail events");
	is(join(',', map { (split /:/)[0] } @got), join(',', 1 .. $tail), "$name: positions 1 .. $tail, once each, in order");
	is(join(',', map { (split /:/)[1] } @got), sql('SELECT string_agg(event_no::text, \',\' ORDER BY position) FROM fintx.outbox_positions'),
		"$name: each with the event of its position");
}
# a position in the middle of a run: reject() dead-letters exactly that event
my ($mid, $mid_id) = split /\|/, sql(q{SELECT p.position, o.id FROM fintx.outbox_position_runs r, fintx.outbox_positions p
                                        JOIN fintx.outbox o USING (event_no)
                                       WHERE r.event_count >= 3 AND p.position = r.first_position + 1 LIMIT 1});
ok($mid ne '', "position $mid lies inside a run");
is(sql("SELECT fintx.reject('rej', $mid, 'bad')"), 't', 'reject() with max_retries 1 dead-letters it');
is(sql("SELECT event_id FROM fintx.outbox_dead_letters WHERE consumer = 'rej' AND position = $mid"), $mid_id,
	'the dead letter holds the event of that position');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT fintx.reject('rej', $tail + 1, 'bad')");
like($err, qr/is not an unacknowledged event/, 'a position past the tail is refused');

# --- event ids: UUIDv7, unique, time-ordered, random bits drawn in bulk but never reused
is(sql(q{SELECT count(DISTINCT id) = count(*) AND bool_and(substr(id::text, 15, 1) = '7')
               AND bool_and(substr(id::text, 20, 1) IN ('8', '9', 'a', 'b')) FROM fintx.outbox}), 't',
	'every event id is a distinct UUIDv7 with the RFC 9562 variant');
is(sql(q{SELECT bool_and(substr(id::text, 1, 13) >= prev) FROM (SELECT id, lag(substr(id::text, 1, 13)) OVER (ORDER BY event_no) AS prev
          FROM fintx.outbox o WHERE payload->>'idempotency_key' LIKE 'b-%') q WHERE prev IS NOT NULL}), 't',
	'the millisecond prefix of the ids of one call never goes back');
is(sql(q{SELECT count(DISTINCT substr(id::text, 20)) FROM fintx.outbox}), sql('SELECT count(*) FROM fintx.outbox'),
	'no two events share their random part (700 from one call: more than the 64 drawn at a time)');

($ret, $out, $err) = $node->psql('postgres', q{SET session_replication_role = replica;
	INSERT INTO fintx.outbox_position_runs VALUES (9223372036854775800, 1, 10, 0)});
like($err, qr/violates check constraint/, 'a run of positions past the largest bigint is refused, triggers off or not');

# --- JIT: off for the pass, the caller's setting restored
is(sql(q{SET jit = on; SET jit_above_cost = 0; SELECT fintx.transfer('jit-1', 'src', 'dst-2', 1) IS NOT NULL;
         SELECT fintx.seal() > 0; SELECT count(*) >= 0 FROM fintx.poll('c7', 10); SHOW jit;}), "t\nt\nt\non",
	'seal() and poll() with jit on and jit_above_cost 0 work and leave jit on');
# ... and the queries fintx runs inside those calls are not JIT-compiled: auto_explain logs
# every nested statement's plan with its JIT summary; the calls themselves (top level) are
# compiled, which shows that JIT is available and the check can fail
my $log_offset = -s $node->logfile;
sql(q{LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
      SET jit = on; SET jit_above_cost = 0; SET jit_optimize_above_cost = -1; SET jit_inline_above_cost = -1;
      SELECT fintx.transfer('jit-2', 'src', 'dst-2', 1) IS NOT NULL; SELECT fintx.seal();
      SELECT count(*) FROM fintx.poll('c7', 10); SELECT fintx.inclusion_proof(3, fintx.tree_size());
      SELECT fintx.leaf_data(5); SELECT ok FROM fintx.verify_audit(20, 30); SELECT count(*) FROM fintx.audit_export(0, 40)});
my @plans = grep { /Query Text:/ } split /LOG:  duration: /, slurp_file($node->logfile, $log_offset);
my @top = grep { /Query Text: SELECT fintx\./ || /Query Text: SELECT count\(\*\) FROM fintx\./ || /Query Text: SELECT ok FROM/ } @plans;
# (every fintx call first looks its caller up among the services, a unique-index probe on a
# table of a few rows that no real jit_above_cost reaches: left out of the check)
my @nested = grep { !(/Query Text: SELECT fintx\./ || /Query Text: SELECT count\(\*\) FROM fintx\./ || /Query Text: SELECT ok FROM/
                     || /Query Text: SELECT name, public_key FROM fintx\.services WHERE role_name = \$1/) } @plans;
cmp_ok(scalar(grep { /JIT:/ } @top), '>', 0, 'control: the top-level calls were JIT-compiled (jit_above_cost 0)');
cmp_ok(scalar(@nested), '>', 5, 'fintx\'s own queries inside them were logged (' . scalar(@nested) . ')');
is(join("\n", map { (/Query Text: ([^\n]{0,120})/)[0] } grep { /JIT:/ } @nested), "", 'none of fintx\'s own queries was JIT-compiled');
is(sql('SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile() clean');
is(sql('SELECT ok FROM fintx.verify_audit()'), 't', 'verify_audit() ok');

# Plans made while the tables were small: a second cluster without autovacuum, its tables
# analyzed when they held a few dozen rows (a page each, where a sequential scan is the
# cheapest plan). Every nested query of a sealing pass, of the proofs, leaf_data(), poll(),
# checkpoint(), a replayed transfer and the resolution of holds must still read the
# fast-growing tables through an index.
my $small = fintx_node('plans', "fintx.seal_interval = '1h'", 'autovacuum = off');
sub ssql { return $small->safe_psql('postgres', $_[0]); }
ssql(q{
	SELECT fintx.open_account('a', 'EUR', allow_negative => true);
	SELECT fintx.open_account('b', 'EUR');
	SELECT fintx.create_consumer('p');
	SELECT count(fintx.transfer('small-' || i, 'a', 'b', 1)) FROM generate_series(1, 40) i;
	SELECT count(fintx.transfer('small-hold-' || i, 'a', 'b', 5, pending => true)) FROM generate_series(1, 3) i;
	SELECT fintx.seal();
	SELECT count(*) FROM fintx.poll('p', 5);
});
ssql('ANALYZE');
# a signing key, so that public_key() can be the session's first call: the latest-block
# lookup it makes is kept for the session and shared with the sealing pass (and so is
# outbox_tail()'s latest-batch lookup, shared with the outbox's sequencing)
my $small_key = $small->data_dir . '/fintx_audit_key.pem';
system('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $small_key) == 0 or BAIL_OUT('openssl genpkey failed');
ssql("ALTER SYSTEM SET fintx.signing_key_file = '$small_key'");
$small->reload;
$log_offset = -s $small->logfile;
ssql(q{SELECT fintx.public_key() IS NOT NULL; SELECT fintx.outbox_tail() > 0;
       LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;
       SELECT count(fintx.transfer('small-more-' || i, 'a', 'b', 1)) FROM generate_series(1, 60) i;
       SELECT fintx.seal();
       SELECT count(fintx.transfer('small-last-' || i, 'a', 'b', 1)) FROM generate_series(1, 9) i;
       SELECT fintx.seal();
       SELECT count(fintx.inclusion_proof(i, fintx.tree_size())) FROM generate_series(0, 100, 7) i;
       SELECT count(fintx.consistency_proof(i, fintx.tree_size())) FROM generate_series(1, 100, 9) i;
       SELECT fintx.root_hash(77); SELECT fintx.leaf_data(50);
       SELECT count(*) FROM fintx.poll('p', 30); SELECT count(*) FROM fintx.poll('p', 30);
       SELECT fintx.checkpoint() IS NOT NULL;
       SELECT count(fintx.transfer('small-' || i, 'a', 'b', 1)) FROM generate_series(1, 8) i;
       SELECT (fintx.post_pending('small-post', (SELECT min(id) FROM fintx.transfers WHERE status = 'pending'))).status;
       SELECT (fintx.void_pending('small-void', (SELECT max(id) FROM fintx.transfers WHERE status = 'pending'))).status});
my @small_plans = grep { /Query Text:/ } split /LOG:  duration: /, slurp_file($small->logfile, $log_offset);
my @small_nested = grep { !/Query Text: (SELECT fintx\.|SELECT count\()/ } @small_plans;
cmp_ok(scalar(@small_nested), '>', 20, 'the nested queries of seal, proofs, leaf_data, poll and checkpoint were logged (' . scalar(@small_nested) . ')');
cmp_ok(scalar(grep { /Index (Only )?Scan .*on (audit_nodes|audit_leaf_runs|audit_entries)/ } @small_nested), '>', 0,
	'control: they read the audit tables');
is(join("\n", map { (/(Seq Scan on \S+)/)[0] . ' in: ' . (/Query Text: ([^\n]{0,100})/)[0] }
		grep { /Seq Scan on (audit_|outbox_\d|outbox_position_runs_\d|transfers|idempotency_keys|pending_holds)/ } @small_nested), '',
	'none of them scans an audit, outbox, transfer, journal or hold table whole');
is(ssql(q{SELECT count(*) FROM fintx.transfers WHERE status IN ('posted', 'voided') AND pending_id IS NOT NULL}), '2',
	'the two holds were resolved');
is(ssql('SELECT count(*) FROM fintx.reconcile()'), '0', 'reconcile() clean on the small cluster');
is(ssql('SELECT ok FROM fintx.verify_audit()'), 't', 'verify_audit() ok on the small cluster');

done_testing();

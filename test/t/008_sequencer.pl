# The audit sequencer (PgQ-style snapshot batching): commit order, aborts, long-open
# transactions across several sealing passes, concurrent sealers, a crash between commit
# and sealing, the worker sealing on its own, and a transaction that calls seal() after
# writing entries itself. Entries come from a table audited with fintx.audit_table(); every check is on
# invariants, never on how many entries something else (the ledger) writes.
#   invariants: every committed entry has exactly one leaf, leaf indexes are dense 0..n-1,
#   no leaf points at an entry that is not committed, block b holds exactly the leaves
#   [size(b-1), size(b)), the last block's size is the leaf count, verify_audit() is ok.
use strict;
use warnings;
use FintxTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = fintx_node('sequencer', "fintx.seal_interval = '1h'", "fintx.expire_interval = '1h'");
my $t_start = time;

sub sql { return $node->safe_psql('postgres', $_[0]); }

# An audited table ev in database $db, and evlog: its entries with their leaves and blocks.
sub ev_setup
{
	my ($db) = @_;
	$node->safe_psql($db, q{
	CREATE TABLE ev (id bigserial PRIMARY KEY, who text NOT NULL);
	SELECT fintx.audit_table('ev');
	CREATE VIEW evlog AS
	SELECT e.entry_id, l.leaf_index, l.block_id, e.details->'new'->>'who' AS who
	  FROM fintx.audit_entries e LEFT JOIN fintx.audit_leaves l USING (entry_id)
	 WHERE e.object_id = 'public.ev';
	});
}
ev_setup('postgres');

# Violated invariants, one line each ('' when all hold). Seals first.
sub invariants
{
	my ($db) = @_;
	$db //= 'postgres';
	$node->safe_psql($db, 'SELECT fintx.seal()');
	return $node->safe_psql($db, q{
	SELECT 'entries without a leaf: ' || count(*) FROM fintx.audit_entries e
	 WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id) HAVING count(*) > 0
	UNION ALL
	SELECT 'leaves whose entry is not committed: ' || count(*) FROM fintx.audit_leaves l
	 WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_entries e WHERE e.entry_id = l.entry_id) HAVING count(*) > 0
	UNION ALL
	SELECT 'entry ' || entry_id || ' has ' || count(*) || ' leaves' FROM fintx.audit_leaves GROUP BY entry_id HAVING count(*) > 1
	UNION ALL
	SELECT 'leaf indexes are not dense: ' || count(*) || ' leaves, ' || min(leaf_index) || '..' || max(leaf_index)
	  FROM fintx.audit_leaves HAVING count(*) > 0 AND (min(leaf_index) <> 0 OR max(leaf_index) <> count(*) - 1)
	UNION ALL
	SELECT 'last block has size ' || max(tree_size) || ' for ' || (SELECT count(*) FROM fintx.audit_leaves) || ' leaves'
	  FROM fintx.audit_blocks HAVING max(tree_size) IS DISTINCT FROM (SELECT count(*) FROM fintx.audit_leaves)
	UNION ALL
	SELECT 'block ids are not 1..n' FROM fintx.audit_blocks HAVING count(*) <> max(block_id)
	UNION ALL
	SELECT 'block ' || b.block_id || ' does not hold exactly leaves ' || b.prev || '..' || b.tree_size - 1
	  FROM (SELECT block_id, tree_size, lag(tree_size, 1, 0::bigint) OVER (ORDER BY block_id) AS prev
	          FROM fintx.audit_blocks) b
	 WHERE b.tree_size <= b.prev
	    OR (SELECT count(*) FROM fintx.audit_leaves l WHERE l.block_id = b.block_id) <> b.tree_size - b.prev
	    OR EXISTS (SELECT 1 FROM fintx.audit_leaves l
	                WHERE l.block_id = b.block_id AND (l.leaf_index < b.prev OR l.leaf_index >= b.tree_size))
	UNION ALL
	SELECT 'verify_audit: ' || detail FROM fintx.verify_audit() WHERE NOT ok
	});
}

# "who:leaf" for each name: '-' unsealed, 'absent' no committed entry.
sub status
{
	my @who = @_;
	return join(' ', map {
		my $w = $_;
		my $r = sql("SELECT coalesce(string_agg(coalesce(leaf_index::text, '-'), ','), 'absent') FROM evlog WHERE who = '$w'");
		"$w:" . ($r =~ /^\d+$/ ? 'sealed' : $r)
	} @who);
}
sub leaf  { return sql("SELECT leaf_index FROM evlog WHERE who = '$_[0]'"); }
sub block { return sql("SELECT block_id FROM evlog WHERE who = '$_[0]'"); }
sub seal  { return sql('SELECT fintx.seal()'); }

# A session that stays open between statements; dies on error.
my %s = map { $_ => quiet_session($node) } qw(A B C L);
sub on { my ($name, $q) = @_; return quiet_safe($s{$name}, $q); }
# inserts a row for $who in session $name; returns the entry id
sub ins_in
{
	my ($name, $who) = @_;
	return on($name, "INSERT INTO ev (who) VALUES ('$who'); SELECT currval('fintx.audit_entry_id_seq')");
}

# ---------------------------------------------------------------------------
# 1. out-of-order commits, aborts, a transaction open across four sealing passes
# ---------------------------------------------------------------------------
on('L', 'BEGIN');
my $id_l1 = ins_in('L', 'L1');
on('A', 'BEGIN');
my $id_a1 = ins_in('A', 'A1');
on('B', 'BEGIN');
my $id_b1 = ins_in('B', 'B1');
on('C', 'BEGIN');
my $id_c1 = ins_in('C', 'C1');
ok($id_l1 < $id_a1 && $id_a1 < $id_b1 && $id_b1 < $id_c1, 'entry ids follow insert order L1 < A1 < B1 < C1');
on('B', 'COMMIT');
seal();    # pass 1
is(status(qw(B1 A1 C1 L1)), 'B1:sealed A1:absent C1:absent L1:absent',
	'pass 1 seals B1, committed first though inserted after A1; open A1, C1, L1 are invisible');
on('C', 'ROLLBACK');
my $id_a2 = ins_in('A', 'A2');
on('A', 'COMMIT');
sql("INSERT INTO ev (who) VALUES ('S1')");
seal();    # pass 2
is(status(qw(A1 A2 S1 C1 L1)), 'A1:sealed A2:sealed S1:sealed C1:absent L1:absent',
	'pass 2 seals A1, A2 (committed after B1) and S1; aborted C1 never appears');
cmp_ok(leaf('A1'), '>', leaf('B1'), 'A1 was inserted before B1 but committed after it: later leaf');
cmp_ok(block('A1'), '>', block('B1'), 'and a later block');
ins_in('L', 'L2');
sql("INSERT INTO ev (who) VALUES ('S2')");
seal();    # pass 3
sql("INSERT INTO ev (who) VALUES ('S3')");
seal();    # pass 4
is(status(qw(S2 S3 L1 L2)), 'S2:sealed S3:sealed L1:absent L2:absent',
	'L stays open across passes 1-4: none of its entries is sealed');
cmp_ok(sql('SELECT count(*) FROM fintx.audit_blocks'), '>=', 4, 'four passes appended at least four blocks');
on('L', 'SAVEPOINT sp');
my $id_lx = ins_in('L', 'Lx');
on('L', 'ROLLBACK TO SAVEPOINT sp');
ins_in('L', 'L3');
on('L', 'COMMIT');
seal();    # pass 5
is(status(qw(L1 L2 L3 Lx)), 'L1:sealed L2:sealed L3:sealed Lx:absent',
	'after L commits, pass 5 seals L1, L2, L3; the rolled-back savepoint row Lx never appears');
ok($id_l1 < $id_b1, 'L1 was the very first entry written');
cmp_ok(sql("SELECT min(block_id) FROM evlog WHERE who IN ('L1', 'L2', 'L3')"), '>',
	sql("SELECT max(block_id) FROM evlog WHERE who LIKE 'S%' OR who IN ('A1', 'A2', 'B1')"), 'the long-open transaction is sealed in a later block than every entry committed while it was open');
is(sql("SELECT min(leaf_index) FROM evlog WHERE who LIKE 'L%'") - 1, sql("SELECT max(leaf_index) FROM evlog WHERE who NOT LIKE 'L%'"),
	'its leaves follow every leaf of those entries');
is(sql("SELECT count(*) FROM fintx.audit_leaves WHERE entry_id IN ($id_c1, $id_lx)"), '0',
	'no leaf for the ids of the aborted entries (C1, Lx)');
is(sql("SELECT count(*) FROM fintx.audit_entries WHERE entry_id IN ($id_c1, $id_lx)"), '0', 'aborted entries are not visible');
is(sql("SELECT string_agg(who, ',' ORDER BY leaf_index) FROM evlog"), 'B1,A1,A2,S1,S2,S3,L1,L2,L3',
	'leaf order is commit order across batches, entry order within a batch');
is(invariants(), '', 'invariants hold after out-of-order, aborted and long-open transactions');
$_->quit for values %s;

# ---------------------------------------------------------------------------
# 2. concurrent sealers
# ---------------------------------------------------------------------------
# a) a session that seals inside a transaction it keeps open holds no lock: the worker runs
#    the pass it asks for in a transaction of its own, so other sessions (and the worker)
#    go on sealing; a read-only transaction can ask for a pass too
my $open = quiet_session($node);
quiet_safe($open, 'BEGIN; SELECT fintx.seal(); SELECT fintx.tree_size();');
my $open_pid = quiet_query($open, 'SELECT pg_backend_pid()');
is(sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $open_pid"), '0',
	'an open transaction that called seal() and tree_size() holds no sealing lock');
sql("INSERT INTO ev (who) VALUES ('O1')");
my (undef, $sealed_meanwhile) = $node->psql('postgres', "SET statement_timeout = '10s'; SELECT fintx.seal()");
is($sealed_meanwhile, sql('SELECT count(*) FROM fintx.audit_entries'),
	'another session seals what committed meanwhile, while that transaction stays open (does not wait for it)');
is(status('O1'), 'O1:sealed', 'O1 is sealed');
sql("INSERT INTO ev (who) VALUES ('O2')");
is(quiet_query($open, 'SELECT fintx.seal()'), sql('SELECT count(*) FROM fintx.audit_entries'),
	'the open transaction seals again (READ COMMITTED: a new snapshot sees the new block)');
quiet_safe($open, 'COMMIT');
is(status('O2'), 'O2:sealed', 'O2 is sealed');
sql("INSERT INTO ev (who) VALUES ('O3')");
is($node->safe_psql('postgres', 'BEGIN READ ONLY; SELECT fintx.seal(); COMMIT;'),
	sql('SELECT count(*) FROM fintx.audit_entries'), 'a read-only transaction gets its entries sealed by the worker');
is(status('O3'), 'O3:sealed', 'O3 is sealed');
$open->quit;

# b) sealing is serialized, and never blocks writers: a transaction holding the sealing
#    lock (as a session that seals on its own does where the worker does not seal) makes
#    the worker give up the pass, and a seal() then waits for the lock
my $holder = quiet_session($node);
quiet_safe($holder, "BEGIN; SELECT pg_advisory_xact_lock(" . seal_lock_key() . ");");
my $waiter = psql_start($node, 'sealer-waiting', "SELECT 'size', fintx.seal();\n");
my $mon = quiet_session($node);
my ($ok, $info) = poll_until($mon,
	"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sealer-waiting'"
	  . " AND wait_event_type = 'Lock' AND wait_event = 'advisory'", '1', 30);
ok($ok, 'a second seal() waits on the sealing lock while the first transaction holds it') or diag("waiting: $info");
my $t = time;
sql("INSERT INTO ev (who) VALUES ('W1')");
cmp_ok(time - $t, '<', 5, 'an audited write commits while a sealer holds the lock');
is(status('W1'), 'W1:-', 'W1 is committed but not sealed yet');
quiet_safe($holder, 'COMMIT');
my $w = psql_finish($waiter);
is($w->{err}, '', 'the waiting seal() completes without error once the lock is free');
is($w->{out} =~ s/\s+\z//r, 'size|' . sql('SELECT count(*) FROM fintx.audit_leaves'), 'and it sealed everything committed, W1 included');
is(status('W1'), 'W1:sealed', 'W1 sealed by the waiting sealer');
$holder->quit;

# c) 4 writers and 4 sealers at once
my ($writers, $txns) = (4, 40);
my ($expected, @ps) = (0);
for my $wn (1 .. $writers)
{
	my $script = '';
	for my $tx (1 .. $txns)
	{
		if ($tx % 7 == 0)
		{
			$script .= "BEGIN; INSERT INTO ev (who) VALUES ('abort-$wn-$tx'); ROLLBACK;\n";
			next;
		}
		my $rows = $tx % 3 == 0 ? 2 : 1;
		$expected += $rows;
		$script .= "BEGIN;\n"
		  . join('', map { "INSERT INTO ev (who) VALUES ('w$wn-$tx-$_');\n" } 1 .. $rows)
		  . ($tx % 5 == 0 ? "SELECT pg_sleep(0.02);\n" : '')
		  . "COMMIT;\n";
	}
	push @ps, psql_start($node, "writer-$wn", $script);
}
for my $sn (1 .. 4)
{
	my $call = $sn == 4 ? 'fintx.tree_size()' : 'fintx.seal()';
	push @ps, psql_start($node, "sealer-$sn", join('', map { "SELECT $call;\nSELECT pg_sleep(0.003);\n" } 1 .. 40));
}
my @res = map { psql_finish($_) } @ps;
is_deeply([ map { "$_->{app}: $_->{err}" } grep { $_->{err} ne '' || $_->{rc} != 0 } @res ], [],
	'no writer or sealer reported an error (no duplicate leaf, no lock error)');
is(sql("SELECT count(*) FROM evlog WHERE who LIKE 'w%'"), $expected, "all $expected committed writer rows have entries");
is(sql("SELECT count(*) FROM fintx.audit_entries WHERE details->'new'->>'who' LIKE 'abort-%'"), '0', 'aborted writer rows have none');
cmp_ok(sql('SELECT count(*) FROM fintx.audit_blocks'), '>', 8, 'the concurrent sealers appended many blocks');
is(invariants(), '', 'invariants hold after concurrent writers and sealers');
is(sql("SELECT count(*) FROM evlog WHERE who LIKE 'w%' AND leaf_index IS NOT NULL"), $expected, 'every writer row sealed exactly once');

# ---------------------------------------------------------------------------
# 3. crash between commit and sealing, with a sealing pass open at the crash
# ---------------------------------------------------------------------------
# In 'postgres' seal() has the worker run the pass and commit it in its own transaction, so a
# pass cannot be held open there: this part runs in a database the worker does not serve,
# where seal() runs the pass in the caller's transaction (docs/audit.md).
sub csql { return $node->safe_psql('crashdb', $_[0]); }
sql('CREATE DATABASE crashdb');
csql('CREATE EXTENSION fintx');
ev_setup('crashdb');
csql(q{INSERT INTO ev (who) VALUES ('before'); SELECT fintx.seal();});
my $blocks_before = csql('SELECT count(*) FROM fintx.audit_blocks');
my $leaves_before = csql('SELECT count(*) FROM fintx.audit_leaves');
is("$blocks_before/$leaves_before", '1/1', 'crashdb: one block of one leaf before the crash');
csql(join('', map { "INSERT INTO ev (who) SELECT 'crash-$_-' || g FROM generate_series(1, 2) g;\n" } 1 .. 10));
is(csql("SELECT count(*) || '/' || count(leaf_index) FROM evlog WHERE who LIKE 'crash-%'"), '20/0',
	'20 entries committed and not sealed before the crash');
my $inflight = $node->background_psql('crashdb');
quiet_safe($inflight, "BEGIN; INSERT INTO ev (who) VALUES ('inflight');");
my $id_inflight = quiet_safe($inflight, "SELECT currval('fintx.audit_entry_id_seq')");
my $sealing = $node->background_psql('crashdb');
my $sealed_uncommitted = quiet_safe($sealing, 'BEGIN; SELECT fintx.seal();');
is($sealed_uncommitted, $leaves_before + 20, 'a sealing pass in the caller\'s transaction has sealed them');
is(csql("SELECT (SELECT count(*) FROM fintx.audit_blocks) || '/' || count(leaf_index) FROM evlog WHERE who LIKE 'crash-%'"),
	"$blocks_before/0", 'the pass has not committed when the server crashes: no new block, no leaf visible');
$node->stop('immediate');
eval { $_->quit } for ($inflight, $sealing, $mon);
$node->start;
is(csql("SELECT count(*) || '/' || count(leaf_index) FROM evlog WHERE who LIKE 'crash-%'"), '20/0',
	'after restart the 20 entries are there, none sealed (the open pass was lost with the crash)');
is(csql('SELECT fintx.seal()'), $leaves_before + 20, 'a pass after restart seals them');
is(csql("SELECT count(*) || '/' || max(tree_size) FROM fintx.audit_blocks WHERE block_id > $blocks_before"),
	'1/' . ($leaves_before + 20), 'in one new block');
is(csql("SELECT count(*) || '/' || count(leaf_index) || '/' || count(DISTINCT leaf_index) FROM evlog WHERE who LIKE 'crash-%'"),
	'20/20/20', 'every one of the 20 entries has exactly one leaf');
is(csql("SELECT count(*) FROM fintx.audit_leaves WHERE entry_id = $id_inflight"), '0',
	'the transaction in flight at the crash never appears');
is(csql("SELECT count(*) FROM fintx.audit_leaves"), $leaves_before + 20, 'nothing lost, nothing sealed twice');
is(invariants('crashdb'), '', 'invariants hold after the crash');
is(invariants(), '', 'and in the worker\'s database');

# ---------------------------------------------------------------------------
# 4. the worker seals on its own every fintx.seal_interval
# ---------------------------------------------------------------------------
sql("ALTER SYSTEM SET fintx.seal_interval = '100ms'");
$node->reload;
$mon = quiet_session($node);
my $long = quiet_session($node);
quiet_safe($long, "BEGIN; INSERT INTO ev (who) VALUES ('worker-long');");
sql(join('', map { "INSERT INTO ev (who) VALUES ('worker-$_');\n" } 1 .. 10)
	  . "BEGIN; INSERT INTO ev (who) VALUES ('worker-aborted'); ROLLBACK;\n");
# evlog does not seal: only the worker can assign these leaves
($ok, $info) = poll_until($mon, "SELECT count(leaf_index) FROM evlog WHERE who ~ '^worker-[0-9]+\$'", '10', 15);
ok($ok, 'the worker seals committed entries without any seal() call') or diag("sealed: $info");
usleep(300_000);
is(sql('SELECT count(*) FROM fintx.audit_leaves l WHERE NOT EXISTS (SELECT 1 FROM fintx.audit_entries e WHERE e.entry_id = l.entry_id)'),
	'0', 'after several worker passes no leaf points at the open or the aborted transaction');
is(status('worker-long'), 'worker-long:absent', 'the open transaction is not sealed');
quiet_safe($long, 'COMMIT');
($ok, $info) = poll_until($mon, "SELECT count(leaf_index) FROM evlog WHERE who = 'worker-long'", '1', 15);
ok($ok, 'the worker seals the long transaction once it commits') or diag("sealed: $info");
cmp_ok(block('worker-long'), '>', sql("SELECT max(block_id) FROM evlog WHERE who ~ '^worker-[0-9]+\$'"),
	'in a later block than the entries committed while it was open');
is(invariants(), '', 'invariants hold with the worker sealing');
$long->quit;
$mon->quit;
sql("ALTER SYSTEM SET fintx.seal_interval = '1h'");
$node->reload;

# ---------------------------------------------------------------------------
# 5. seal() called by a transaction that has written entries itself (separate databases)
# ---------------------------------------------------------------------------
# Its own entries are not committed yet, so the pass must leave them to a later pass (and
# never mark them sealed): otherwise the next pass either seals them again (23505 on
# audit_leaf_runs_first_entry_key, for ever, or two leaves for one entry) or never seals what
# the transaction writes after it.
for my $db ('selfseal_newest', 'selfseal_older')
{
	sql("CREATE DATABASE $db");
	$node->safe_psql($db, q{
		CREATE EXTENSION fintx;
		CREATE TABLE ev (id bigserial PRIMARY KEY, who text NOT NULL);
		SELECT fintx.audit_table('ev');
		INSERT INTO ev (who) VALUES ('before');
		SELECT fintx.seal();
		CREATE VIEW evlog AS
		SELECT e.details->'new'->>'who' AS who, l.leaf_index
		  FROM fintx.audit_entries e LEFT JOIN fintx.audit_leaves l USING (entry_id);
	});
}
my $who_sql = "SELECT string_agg(who || ':' || coalesce(leaf_index::text, '-'), ' ' ORDER BY who) FROM evlog";
# a) the sealing transaction's xid is the newest one
is($node->safe_psql('selfseal_newest',
		"BEGIN; INSERT INTO ev (who) VALUES ('own'); SELECT fintx.seal(); $who_sql; COMMIT;"),
	"1\nbefore:0 own:-", 'seal() in a transaction that wrote an entry does not seal that entry');
my ($ret, $out, $err) = $node->psql('selfseal_newest', "INSERT INTO ev (who) VALUES ('next'); SELECT fintx.seal();");
is($err, '', 'after it commits, sealing goes on without error');
is($node->safe_psql('selfseal_newest', $who_sql), 'before:0 next:2 own:1', 'its entry is sealed once by a later pass');
is(invariants('selfseal_newest'), '', 'invariants hold');
# b) a newer transaction committed before the pass; the transaction writes again after it
{
	my $sess = $node->background_psql('selfseal_older');
	quiet_safe($sess, "BEGIN; INSERT INTO ev (who) VALUES ('own-1');");
	$node->safe_psql('selfseal_older', "INSERT INTO ev (who) VALUES ('newer-committed')");
	is(quiet_safe($sess, "SELECT fintx.seal(); $who_sql;"), "2\nbefore:0 newer-committed:1 own-1:-",
		'seal() in a writing transaction seals the entries others committed, not its own');
	quiet_safe($sess, "INSERT INTO ev (who) VALUES ('own-2'); COMMIT;");
	$sess->quit;
}
$node->safe_psql('selfseal_older', 'SELECT fintx.seal()');
is($node->safe_psql('selfseal_older', $who_sql), 'before:0 newer-committed:1 own-1:2 own-2:3',
	'after it commits, both its entries (written before and after its seal()) are sealed once');
is(invariants('selfseal_older'), '', 'invariants hold');

note(sprintf('008 ran in %.1f s', time - $t_start));
$node->stop;
done_testing();

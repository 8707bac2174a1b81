# Damage that verify_audit() must name (blocks removed or unchained, malformed hashes, tree
# nodes missing or without leaves) and signing-key files that cannot be used.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest qw(remap_leaves_sql);

my $node = PostgreSQL::Test::Cluster->new('damage');
$node->init;
my $key = $node->data_dir . '/audit.pem';
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key);
chmod 0600, $key;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'fintx'
fintx.database = 'postgres'
fintx.seal_interval = '1h'
fintx.signing_key_file = '$key'
});
$node->start;

# one database per scenario, each with a log of 3 blocks (14 + 14 + 14 entries: two stored
# subtrees of 16 leaves, one of 32)
sub fresh
{
	my ($db) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION fintx; CREATE TABLE t (id int); SELECT fintx.audit_table(\'t\')');
	for my $b (1 .. 3)
	{
		$node->safe_psql($db, "INSERT INTO t SELECT g FROM generate_series(1, 14) g");
		$node->safe_psql($db, 'SELECT fintx.seal()');
	}
	is($node->safe_psql($db, 'SELECT ok FROM fintx.verify_audit()'), 't', "$db: intact log verifies");
}
sub tamper
{
	my ($db, $sql) = @_;
	$node->safe_psql($db, "SET session_replication_role = replica; $sql");
}
# rewrites the leaf -> entry map (FintxTest::remap_leaves_sql)
sub remap { my ($db, $change) = @_; tamper($db, remap_leaves_sql($change)); }
sub verdict
{
	my ($db) = @_;
	return $node->safe_psql($db, q{SELECT ok || '|' || coalesce(first_bad_leaf::text, '') || '|' || detail
	                                  FROM fintx.verify_audit()});
}
sub psql_err
{
	my ($db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, "\\set VERBOSITY verbose\n$sql");
	return $err;
}

fresh('gap');
tamper('gap', 'DELETE FROM fintx.audit_blocks WHERE block_id = 2');
like(verdict('gap'), qr/^false\|.*block 3 follows block 1: blocks are missing/, 'a removed block is named');

fresh('chain');
tamper('chain', q{UPDATE fintx.audit_blocks SET prev_block_hash = sha256('x') WHERE block_id = 3});
like(verdict('chain'), qr/^false\|.*block 3 does not chain to block 2/, 'a broken hash chain is named');

fresh('malformed');
tamper('malformed', q{UPDATE fintx.audit_blocks SET root_hash = '\x0102' WHERE block_id = 2});
like(verdict('malformed'), qr/^false\|.*block 2 has a malformed hash/, 'a malformed block hash is named');

fresh('size');
tamper('size', q{UPDATE fintx.audit_blocks SET tree_size = 2 WHERE block_id = 3});
like(verdict('size'), qr/^false\|2\|block 3 has tree size 2, not more than block 2/, 'a block whose tree size goes backwards is refused');

# the leaf hash is the entry's stored entry_hash
fresh('leafhash');
tamper('leafhash', q{UPDATE fintx.audit_entries SET entry_hash = sha256('x')
                      WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 5)});
like(verdict('leafhash'), qr/^false\|5\|entry \d+ at leaf 5 does not match its hash/,
	'a changed leaf hash (the stored entry hash) is named at its leaf');

fresh('leafhash2');
tamper('leafhash2', q{UPDATE fintx.audit_entries SET entry_hash = '\x0102'
                       WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 6)});
like(verdict('leafhash2'), qr/^false\|6\|entry \d+ at leaf 6 does not match its hash/,
	'a malformed leaf hash is named at its leaf');

fresh('node');
tamper('node', 'DELETE FROM fintx.audit_nodes WHERE level = 4 AND idx = 1');
like(verdict('node'), qr/^false\|16\|the tree node at level 4, index 1 is missing/,
	'a missing stored subtree is named at its first leaf');
like(psql_err('node', 'SELECT fintx.inclusion_proof(5, 40)'), qr/ERROR:  XX001: audit tree node at level 4, index 1 is missing/,
	'a proof that needs the missing subtree fails with XX001');

fresh('nodes');
tamper('nodes', 'DELETE FROM fintx.audit_nodes WHERE level = 4');
like(verdict('nodes'), qr/^false\|0\|the tree nodes at level 4, indexes 0 to 1 are missing/,
	'missing subtrees in a row are named together');

fresh('node5');
tamper('node5', q{UPDATE fintx.audit_nodes SET hash = sha256('x') WHERE level = 5 AND idx = 0});
like(verdict('node5'), qr/^false\|0\|the tree node at level 5, index 0 does not match its leaves/,
	'a changed stored subtree is named');

fresh('lowlevel');
tamper('lowlevel', q{INSERT INTO fintx.audit_nodes VALUES (2, 1, sha256('x'))});
like(verdict('lowlevel'), qr/^false\|\|the tree holds a node at level 2, index 1, a level fintx does not store/,
	'a node below the stored levels is reported');

# damage that stops sealing (the next pass needs the leaf hashes of the last partial tile,
# leaves 32..41) does not stop verify_audit(), which names it
fresh('tailleaf');
remap('tailleaf', 'DELETE FROM m WHERE leaf_index = 35');
$node->safe_psql('tailleaf', 'INSERT INTO t VALUES (1), (2)');
like(psql_err('tailleaf', 'SELECT fintx.seal()'), qr/ERROR:  XX001: audit leaf 35 is missing/,
	'sealing stops at a leaf removed from the last partial tile (XX001)');
like(verdict('tailleaf'), qr/^false\|35\|leaf 35 is missing from fintx.audit_leaf_runs/,
	'verify_audit() still runs and names the removed leaf');

fresh('tailhash');
tamper('tailhash', q{UPDATE fintx.audit_entries SET entry_hash = '\x0102'
                      WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 36)});
$node->safe_psql('tailhash', 'INSERT INTO t VALUES (1)');
like(psql_err('tailhash', 'SELECT fintx.seal()'), qr/ERROR:  XX001: the leaf hash of audit leaf 36 is not 32 bytes/,
	'sealing names a malformed leaf hash in the last partial tile (XX001)');
like(verdict('tailhash'), qr/^false\|36\|entry \d+ at leaf 36 does not match its hash/,
	'verify_audit() still runs and names it');

# verifying a prefix of an intact log checks the subtrees inside it and no others
fresh('prefix');
is($node->safe_psql('prefix', q{SELECT string_agg(t || ':' || (SELECT ok FROM fintx.verify_audit(0, t)), ',' ORDER BY t)
                                  FROM unnest(ARRAY[0, 5, 15, 16, 20, 31, 32, 41]) t}),
	'0:true,5:true,15:true,16:true,20:true,31:true,32:true,41:true', 'every prefix of an intact log verifies');
tamper('prefix', q{UPDATE fintx.audit_nodes SET hash = sha256('x') WHERE level = 4 AND idx = 1});
is($node->safe_psql('prefix', q{SELECT string_agg(t || ':' || (SELECT ok || '/' || coalesce(first_bad_leaf::text, '') FROM fintx.verify_audit(0, t)), ',' ORDER BY t)
                                  FROM unnest(ARRAY[15, 30, 31, 41]) t}),
	'15:false/,30:false/16,31:false/16,41:false/16',
	'a changed subtree is found by every prefix: named by those that hold its tile, through the signed head by a shorter one');

# a read-only transaction cannot seal (no worker seals this database): verify_audit()
# checks the log sealed so far instead of failing with 25006
$node->safe_psql('prefix', 'INSERT INTO t VALUES (1)');
{
	my ($ro_ret, $ro_out, $ro_err) = $node->psql('prefix',
		q{BEGIN READ ONLY; SELECT ok || '|' || coalesce(first_bad_leaf::text, '') FROM fintx.verify_audit(); COMMIT;});
	like($ro_out, qr/^false\|16$/, 'verify_audit() in a read-only transaction with entries to seal checks the sealed log (no 25006)');
	like($ro_err, qr/NOTICE:  fintx: a read-only transaction cannot seal the audit log or sequence the outbox; the answer covers the 42 entries sealed so far/,
		'and says in a NOTICE that it covers the log as sealed');
}

fresh('extra');
tamper('extra', q{INSERT INTO fintx.audit_nodes VALUES (6, 7, sha256('x'))});
like(verdict('extra'), qr/^false\|.*node at level 6, index 7 that no sealed leaves support/,
	'an interior node that no leaves support is named');

# the latest block removed: the next pass would seal its entries again at leaves that exist
fresh('lastblock');
tamper('lastblock', 'DELETE FROM fintx.audit_blocks WHERE block_id = 3');
like(verdict('lastblock'), qr/^false\|\|the tree holds a node at level 4, index 1 that no sealed leaves support/,
	'a removed latest block is reported by verify_audit() (its leaves\' node outlives it), not raised as a unique violation');
like(psql_err('lastblock', 'SELECT fintx.seal()'),
	qr/ERROR:  XX001: fintx.audit_leaf_runs already holds rows that the next block would add after block 2\nDETAIL:  duplicate key value violates unique constraint/,
	'seal() refuses with XX001 and names the conflict');
like(psql_err('lastblock', 'SELECT fintx.checkpoint()'), qr/ERROR:  XX001: /, 'checkpoint() too');
# a node added ahead of the log: reported at once, and still reported (not 23505) once the
# entries its position covers are written and sealing reaches it
fresh('ahead');
tamper('ahead', q{INSERT INTO fintx.audit_nodes VALUES (4, 2, sha256('x'))});
like(verdict('ahead'), qr/^false\|.*node at level 4, index 2 that no sealed leaves support/, 'a node ahead of the log is named');
$node->safe_psql('ahead', 'INSERT INTO t SELECT g FROM generate_series(1, 16) g');
like(verdict('ahead'), qr/^false\|\|the tree holds a node at level 4, index 2 that no sealed leaves support/,
	'once sealing reaches it, verify_audit() still reports it, not a unique violation');
like(psql_err('ahead', 'SELECT fintx.seal()'), qr/ERROR:  XX001: fintx.audit_nodes already holds rows/,
	'and seal() refuses with XX001');

# leaf indexes up to 2^63 - 1 where entry ids run ahead of leaf indexes (ids are not gap-free:
# each session takes a cached block): out of range or no rows, never 22003 'bigint out of range'
fresh('bigleaf');
$node->safe_psql('bigleaf', q{SELECT setval('fintx.audit_entry_id_seq', 100000)});
$node->safe_psql('bigleaf', 'INSERT INTO t VALUES (1); SELECT fintx.seal()');
is($node->safe_psql('bigleaf', 'SELECT max(first_entry - first_leaf) >= 99000 FROM fintx.audit_leaf_runs'), 't',
	'bigleaf: a leaf run whose entry ids are far ahead of its leaf indexes');
like(psql_err('bigleaf', 'SELECT fintx.leaf_data(9223372036854775806)'),
	qr/ERROR:  22023: leaf index 9223372036854775806 is out of range/, 'leaf_data(2^63 - 2) is 22023 out of range');
is($node->safe_psql('bigleaf', 'SELECT count(*) FROM fintx.audit_export(9223372036854775807)'), '0',
	'audit_export(2^63 - 1) gives no rows');
is($node->safe_psql('bigleaf', 'SELECT count(*) FROM fintx.audit_export(9223372036854775800, 9223372036854775807)'), '0',
	'audit_export(2^63 - 8, 2^63 - 1) gives no rows');
is($node->safe_psql('bigleaf', q{SELECT count(*) || '/' || bool_and(fintx.leaf_data(42) IS NOT NULL) FROM fintx.audit_export(42)}), '1/true',
	'the entry past the jump is read and exported at leaf 42');
like(verdict('bigleaf'), qr/^true\|\|verified 43 entries/, 'and the log verifies');

fresh('leafgap');
remap('leafgap', 'DELETE FROM m WHERE leaf_index >= 10');
like(verdict('leafgap'), qr/^false\|10\|leaves 10 to 41 are missing from fintx.audit_leaf_runs/,
	'leaves cut off the end are reported from the first missing one');
like($node->safe_psql('leafgap', q{SELECT ok || '|' || coalesce(first_bad_leaf::text, '') || '|' || entries_checked || '|' || detail FROM fintx.verify_audit(33, 34)}),
	qr/^false\|32\|0\|leaves 32 to 41 are missing from fintx.audit_leaf_runs/, 'a range whose tile has no leaves left names them');
like(psql_err('leafgap', 'SELECT fintx.root_hash(42)'), qr/ERROR:  XX001: audit leaf 32 is missing/,
	'a tree head that needs leaf hashes of removed leaves fails with XX001, naming the first one');

fresh('dangling');
remap('dangling', 'UPDATE m SET entry_id = 999999 WHERE leaf_index = 41');
like(verdict('dangling'), qr/^false\|41\|the entry of leaf 41 is missing from fintx.audit_entries/,
	'a leaf whose entry is gone is named');

# runs that break the mapping itself: overlapping runs, an entry at two leaves, leaves of a
# block out of entry-id order, a run of no leaves, a run beyond what the blocks sealed
fresh('overlap');
tamper('overlap', q{UPDATE fintx.audit_leaf_runs SET leaf_count = leaf_count + 3
                     WHERE first_leaf = (SELECT max(first_leaf) FROM fintx.audit_leaf_runs WHERE first_leaf < 14)});
like(verdict('overlap'), qr/^false\|14\|leaf 14 is in more than one run of fintx.audit_leaf_runs/,
	'a run that reaches into the next one is named at the first leaf in both');

fresh('nested');
tamper('nested', q{INSERT INTO fintx.audit_leaf_runs
                   SELECT 15, first_entry + 1, 1, block_id FROM fintx.audit_leaf_runs WHERE first_leaf = 14});
like(verdict('nested'), qr/^false\|15\|leaf 15 is in more than one run of fintx.audit_leaf_runs/,
	'a run inside another one is named');

fresh('hugerun');
like(psql_err('hugerun', q{SET session_replication_role = replica;
                           UPDATE fintx.audit_leaf_runs SET first_entry = 9223372036854775800 WHERE first_leaf = 14}),
	qr/23514/, 'a run whose entry ids would pass the largest bigint is refused by a CHECK, triggers off or not');
tamper('hugerun', q{ALTER TABLE fintx.audit_leaf_runs DROP CONSTRAINT audit_leaf_runs_check;
                    UPDATE fintx.audit_leaf_runs SET first_entry = 9223372036854775800 WHERE first_leaf = 14});
like(verdict('hugerun'), qr/^false\|14\|the run of leaves at 14 in fintx.audit_leaf_runs is malformed/,
	'a run whose entries would pass the largest bigint is named');

# a range check (from_leaf > 0) checks the 16-leaf tiles that hold the range against the tree:
# an entry rewritten with a matching entry_hash is found even when only its leaf is asked for
fresh('range');
is($node->safe_psql('range', q{SELECT ok || '|' || entries_checked FROM fintx.verify_audit(5, 8)}), 'true|4',
	'an intact range verifies and counts only its own entries');
for my $leaf (20, 36)
{
	fresh("range$leaf");
	tamper("range$leaf", qq{
		UPDATE fintx.audit_entries SET details = jsonb_set(details, '{new,id}', '999')
		 WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = $leaf);
		UPDATE fintx.audit_entries SET entry_hash = fintx.merkle_leaf_hash(fintx.leaf_data($leaf))
		 WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = $leaf);});
	like($node->safe_psql("range$leaf", "SELECT ok || '|' || coalesce(first_bad_leaf::text, '') || '|' || detail FROM fintx.verify_audit($leaf, $leaf)"),
		$leaf == 20 ? qr/^false\|16\|the tree node at level 4, index 1 does not match its leaves/
		            : qr/^false\|32\|block 3 records a tree head for size 42 that leaves 32 to 41 and the stored tree apart from them do not produce/,
		"leaf $leaf rewritten with its entry hash: verify_audit($leaf, $leaf) names its tile");
}

# ... and with the stored node above the leaf rewritten to match too, a range is still checked
# against the signed tree head, through the subtrees that hold it: every range holding the
# leaf fails, and an intact log passes every range (a range check used to stop at the stored
# node of the leaf's tile, and a prefix at the subtrees inside it)
fresh('rangeok');
is($node->safe_psql('rangeok', q{SELECT string_agg(f || '-' || t || ':' || v.ok, ',' ORDER BY f, t)
                                   FROM (VALUES (1, 1), (17, 20), (0, 20), (5, 41), (33, 33), (16, 31), (0, 15)) r(f, t),
                                        LATERAL fintx.verify_audit(f, t) v}),
	'0-15:true,0-20:true,1-1:true,5-41:true,16-31:true,17-20:true,33-33:true', 'an intact log passes every range');
fresh('rangenode');
tamper('rangenode', q{
	UPDATE fintx.audit_entries SET details = jsonb_set(details, '{new,id}', '999')
	 WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 20);
	UPDATE fintx.audit_entries SET entry_hash = fintx.merkle_leaf_hash(fintx.leaf_data(20))
	 WHERE entry_id = (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = 20);
	UPDATE fintx.audit_nodes SET hash = fintx.merkle_tree_head(ARRAY(SELECT fintx.leaf_data(g) FROM generate_series(16, 31) g))
	 WHERE level = 4 AND idx = 1;});
is($node->safe_psql('rangenode', q{SELECT string_agg(f || '-' || t || ':' || v.ok, ',' ORDER BY f, t)
                                     FROM (VALUES (20, 20), (16, 40), (1, 41), (0, 20), (0, 41), (18, 25)) r(f, t),
                                          LATERAL fintx.verify_audit(f, t) v}),
	'0-20:false,0-41:false,1-41:false,16-40:false,18-25:false,20-20:false',
	'leaf 20 and the stored node of its tile rewritten: every range holding the leaf fails');

# checkpoint() signs only a head the log backs. No trigger stops a superuser's INSERT into
# audit_blocks: a block added for the current size with another root, chained and hashed
# correctly, was signed by the next checkpoint() - a fork for every auditor holding one.
fresh('forged');
# a block after the latest one, for the same size with another root, chained and hashed right
my $forge = q{
	INSERT INTO fintx.audit_blocks (block_id, tree_size, root_hash, prev_block_hash, block_hash, snapshot, sealed_at, origin)
	SELECT b.block_id + 1, b.tree_size, sha256('forged'), b.block_hash,
	       sha256('fintx.block.v1'::bytea || int8send(b.block_id + 1) || int8send(b.tree_size) || sha256('forged')
	              || b.block_hash || int8send((extract(epoch FROM b.sealed_at) * 1000000)::bigint)),
	       b.snapshot, b.sealed_at, b.origin
	  FROM fintx.audit_blocks b ORDER BY b.block_id DESC LIMIT 1};
$node->safe_psql('forged', $forge);
like(psql_err('forged', 'SELECT fintx.checkpoint()'),
	qr/ERROR:  XX001: audit block 4 cannot be signed: it does not extend the block before it/,
	'checkpoint() refuses to sign a block added for the same size');
$node->safe_psql('forged', 'INSERT INTO t VALUES (1)');
like(psql_err('forged', 'SELECT fintx.seal()'), qr/ERROR:  XX001: .*no longer produce the tree head of block 4/,
	'and sealing refuses to extend it');
# the latest block rewritten in place: chained and hashed right, another root
fresh('forged2');
tamper('forged2', q{UPDATE fintx.audit_blocks
	SET root_hash = sha256('forged'),
	    block_hash = sha256('fintx.block.v1'::bytea || int8send(block_id) || int8send(tree_size) || sha256('forged')
	                        || prev_block_hash || int8send((extract(epoch FROM sealed_at) * 1000000)::bigint))
	WHERE block_id = 3});
like(psql_err('forged2', 'SELECT fintx.checkpoint()'),
	qr/ERROR:  XX001: audit block 3 cannot be signed: the audit log does not produce its tree head/,
	'checkpoint() refuses to sign a block whose tree head the log does not produce');
like(verdict('forged2'), qr/^false\|28\|block 3 records a tree head for size 42 that the entries do not produce/,
	'verify_audit() names the same block');

# the same for a block that ends a tile (no partial tile to read back): sealing checks the
# previous head through the stored tree
$node->safe_psql('postgres', 'CREATE DATABASE aligned');
$node->safe_psql('aligned', 'CREATE EXTENSION fintx; CREATE TABLE t (id int); SELECT fintx.audit_table(\'t\'); SELECT fintx.seal()');
$node->safe_psql('aligned', q{INSERT INTO t SELECT g FROM generate_series(1, 32 - fintx.tree_size()) g; SELECT fintx.seal()});
is($node->safe_psql('aligned', 'SELECT tree_size FROM fintx.audit_blocks ORDER BY block_id DESC LIMIT 1'), '32', 'aligned: 32 leaves');
$node->safe_psql('aligned', $forge);
$node->safe_psql('aligned', 'INSERT INTO t VALUES (1)');
like(psql_err('aligned', 'SELECT fintx.seal()'), qr/ERROR:  XX001: the audit log does not produce the tree head of block \d+/,
	'sealing refuses to extend a forged block that ends a tile');

# block times are in the block hashes, but the chain is not keyed and the signatures do not
# cover them: rewritten with the chain recomputed, only their order can be checked
my $rechain = q{
	DO $$
	DECLARE r record; prev bytea := decode(repeat('00', 32), 'hex'); h bytea;
	BEGIN
	  FOR r IN SELECT * FROM fintx.audit_blocks ORDER BY block_id LOOP
	    h := sha256('fintx.block.v1'::bytea || int8send(r.block_id) || int8send(r.tree_size) || r.root_hash || prev
	                || int8send((extract(epoch FROM r.sealed_at) * 1000000)::bigint));
	    UPDATE fintx.audit_blocks SET prev_block_hash = prev, block_hash = h WHERE block_id = r.block_id;
	    prev := h;
	  END LOOP;
	END $$;};
fresh('times');
tamper('times', "UPDATE fintx.audit_blocks SET sealed_at = '2025-01-01 00:00:00+00' WHERE block_id = 2; $rechain");
like(verdict('times'), qr/^false\|14\|block 2 was sealed at 2025-01-01 .*, before block 1 /,
	'a block time moved before the previous block is named');
# an honest log whose clock stepped back (here: the latest block a day ahead) stays valid: a
# new block is never stamped before the one it follows
fresh('clockback');
tamper('clockback', "UPDATE fintx.audit_blocks SET sealed_at = sealed_at + interval '1 day' WHERE block_id = 3; $rechain");
$node->safe_psql('clockback', 'INSERT INTO t VALUES (1); SELECT fintx.seal()');
like(verdict('clockback'), qr/^true\|/, 'after the clock stepped back, the next block keeps the time order and the log verifies');

# the next sealing pass reads leaves 32..41 back to extend their partial tile: with leaf 36
# rewritten together with its hash it must refuse to sign over them, not seal a new block
$node->safe_psql('range36', 'INSERT INTO t VALUES (1)');
like(psql_err('range36', 'SELECT fintx.seal()'),
	qr/ERROR:  XX001: audit leaves 32 to 41 no longer produce the tree head of block 3/,
	'sealing refuses to extend a partial tile whose entries changed since they were sealed (XX001)');
is($node->safe_psql('range36', 'SELECT max(tree_size) FROM fintx.audit_blocks'), '42', 'and no block was added');

tamper('range', 'DELETE FROM fintx.audit_nodes WHERE level = 4 AND idx = 1');
like($node->safe_psql('range', "SELECT ok || '|' || coalesce(first_bad_leaf::text, '') || '|' || detail FROM fintx.verify_audit(20, 21)"),
	qr/^false\|16\|the tree node at level 4, index 1 is missing/, 'a range whose tile lost its stored node says so');

fresh('twice');
remap('twice', 'UPDATE m SET entry_id = (SELECT entry_id FROM m WHERE leaf_index = 20) WHERE leaf_index = 30');
like(verdict('twice'), qr/^false\|29\|leaves 29 and 30 of block 3 are not in entry-id order/,
	'a leaf that repeats an earlier entry is named (it breaks its block\'s entry order)');

fresh('reorder');
remap('reorder', q{UPDATE m SET entry_id = CASE leaf_index WHEN 5 THEN (SELECT entry_id FROM m WHERE leaf_index = 6)
                                                       ELSE (SELECT entry_id FROM m WHERE leaf_index = 5) END
                  WHERE leaf_index IN (5, 6)});
is($node->safe_psql('reorder', 'SELECT count(*) FROM fintx.audit_leaf_runs WHERE first_leaf IN (5, 6) AND leaf_count = 1'), '2',
	'leaves 5 and 6 now hold each other\'s entries, one run each');
like(verdict('reorder'), qr/^false\|5\|leaves 5 and 6 of block 1 are not in entry-id order/,
	'two leaves of a block swapped are named');

fresh('emptyrun');
tamper('emptyrun', q{ALTER TABLE fintx.audit_leaf_runs DROP CONSTRAINT audit_leaf_runs_leaf_count_check;
                     UPDATE fintx.audit_leaf_runs SET leaf_count = 0 WHERE first_leaf = 0});
like(verdict('emptyrun'), qr/^false\|0\|the run of leaves at 0 in fintx.audit_leaf_runs is malformed/,
	'a run of no leaves is named');
like(psql_err('emptyrun', 'SELECT fintx.leaf_data(0)'), qr/ERROR:  22023: leaf index 0 is out of range/,
	'and leaf_data() finds no entry at its leaves');

# signing-key files that cannot be used: 55000, and sealing reports the error
my ($ret, $out, $err);
$node->append_conf('postgresql.conf', "fintx.signing_key_file = '/nonexistent/key.pem'\n");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('fintx.signing_key_file') = '/nonexistent/key.pem'");
($ret, $out, $err) = $node->psql('gap', 'SELECT fintx.checkpoint()');
like($err, qr/could not read signing key file/, 'a missing key file: checkpoint() fails with a clear error');
my $bad = $node->data_dir . '/not-a-key.pem';
system_or_bail('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024', '-out', $bad);
chmod 0600, $bad;
$node->append_conf('postgresql.conf', "fintx.signing_key_file = '$bad'\n");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('fintx.signing_key_file') LIKE '%not-a-key.pem'");
($ret, $out, $err) = $node->psql('gap', 'SELECT fintx.public_key()');
like($err, qr/does not hold an Ed25519 private key/, 'an RSA key is refused');
$node->safe_psql('chain', 'INSERT INTO t VALUES (99)');
($ret, $out, $err) = $node->psql('chain', 'SELECT fintx.seal()');
like($err, qr/does not hold an Ed25519 private key/, 'sealing with an unusable key fails (entries wait)');
# only data damage (XX001) is carried past: other sealing errors still stop verify_audit()
like(psql_err('prefix', 'SELECT * FROM fintx.verify_audit()'), qr/does not hold an Ed25519 private key/,
	'verify_audit() with entries to seal and an unusable key stops with the key error');
# a new key at the same path is picked up without a restart
$node->append_conf('postgresql.conf', "fintx.signing_key_file = '$key'\n");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('fintx.signing_key_file') LIKE '%audit.pem'");
like($node->safe_psql('chain', 'SELECT fintx.public_key()'), qr/\+[0-9a-f]{8}\+/, 'the good key works again');
$node->append_conf('postgresql.conf', "fintx.checkpoint_origin = 'bank.example/ledger'\n");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('fintx.checkpoint_origin') = 'bank.example/ledger'");
$node->safe_psql('postgres', 'CREATE DATABASE named');
$node->safe_psql('named', 'CREATE EXTENSION fintx');
like($node->safe_psql('named', 'SELECT fintx.checkpoint()'), qr/^bank\.example\/ledger\n0\n/,
	'fintx.checkpoint_origin names the log');

$node->stop;
done_testing();

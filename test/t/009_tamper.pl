# Tamper evidence. With an Ed25519 signing key, each scenario builds its own log (40
# entries in 5 signed blocks, one database per scenario so each assertion stands alone),
# then a superuser bypasses the immutability triggers (session_replication_role = replica):
#   a) a changed field (every column the entry hash covers), also with the entry hash and
#      the leaf node recomputed  -> verify_audit() names that leaf
#   b) a deleted entry row, a deleted leaf row                -> detected at that leaf
#   c) a reordered pair of leaves (inside a block, across blocks) -> detected
#   d) a truncated tail, later regrown with other entries     -> the checkpoint saved before
#      cannot be proven: the log is shorter, then the consistency proof fails in the RFC 9162
#      verifier written here
#   e) a forged block signature -> verify_audit() reports it; a signed note with a forged
#      signature, or signed by another key, does not verify with public_key(); key rotation
#   f) a full rewrite of a block (every hash recomputed, signature relabelled or removed)
#      -> verify_audit() refuses it; a checkpoint saved before catches it too
# Checkpoints (C2SP signed notes) and signatures are checked here with the openssl CLI.
use strict;
use warnings;
use FintxTest;
use Digest::SHA qw(sha256);
use MIME::Base64 qw(decode_base64 encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $t_start = time;
my $node = fintx_node('tamper', "fintx.seal_interval = '1h'", "fintx.expire_interval = '1h'");
my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $key1 = $node->data_dir . '/fintx_audit_key.pem';
my $key2 = "$tmp/other_key.pem";
for my $k ($key1, $key2)
{
	system('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $k) == 0 or BAIL_OUT("openssl genpkey failed for $k");
}
$node->safe_psql('postgres', "ALTER SYSTEM SET fintx.signing_key_file = '$key1'");
$node->reload;

# ---------------------------------------------------------------------------
# Ed25519 (openssl CLI), C2SP signed notes, RFC 9162 consistency
# ---------------------------------------------------------------------------
my $seq = 0;
sub spew { my ($path, $data) = @_; open my $fh, '>:raw', $path or die "$path: $!"; print $fh $data; close $fh; return; }
sub slurp_raw { my ($path) = @_; open my $fh, '<:raw', $path or die "$path: $!"; local $/; my $d = <$fh>; close $fh; return $d; }

sub ed25519_verify
{
	my ($pub, $msg, $sig) = @_;
	return 0 unless length($pub) == 32 && length($sig) == 64;
	my $b = "$tmp/ed-" . ++$seq;
	spew("$b.pub", pack('H*', '302a300506032b6570032100') . $pub);    # SubjectPublicKeyInfo, Ed25519
	spew("$b.msg", $msg);
	spew("$b.sig", $sig);
	return system("openssl pkeyutl -verify -pubin -inkey $b.pub -keyform DER -rawin -in $b.msg -sigfile $b.sig >/dev/null 2>&1") == 0 ? 1 : 0;
}

sub ed25519_sign
{
	my ($keyfile, $msg) = @_;
	my $b = "$tmp/ed-" . ++$seq;
	spew("$b.msg", $msg);
	system("openssl pkeyutl -sign -inkey $keyfile -rawin -in $b.msg -out $b.sig") == 0 or die 'openssl pkeyutl -sign failed';
	return slurp_raw("$b.sig");
}

# the raw Ed25519 public key of a PEM private key (last 32 bytes of its DER public key)
sub ed25519_public
{
	my ($keyfile) = @_;
	my $b = "$tmp/ed-" . ++$seq;
	system("openssl pkey -in $keyfile -pubout -outform DER -out $b.der") == 0 or die 'openssl pkey failed';
	return substr(slurp_raw("$b.der"), -32);
}

# C2SP signed-note key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]
sub key_id { my ($name, $pub) = @_; return substr(sha256("$name\n\x01$pub"), 0, 4); }

# "name+hex(id)+base64(0x01 || key)"
sub parse_vkey
{
	my ($v) = @_;
	my ($name, $hash, $kd) = $v =~ /\A([^+\s]+)\+([0-9a-f]{8})\+(\S+)\z/ or return undef;
	my $k = decode_base64($kd);
	return { name => $name, id => pack('H*', $hash), alg => ord($k), pub => substr($k, 1) };
}

# "origin\nsize\nbase64(root)\n" "\n" then "— name base64(id || signature)\n" lines
sub parse_checkpoint
{
	my ($note) = @_;
	my ($text, $sigs) = $note =~ /\A(.*?\n)\n(.*)\z/s or return undef;
	my ($origin, $size, $root64) = split /\n/, $text;
	return undef unless defined $root64 && $size =~ /\A[0-9]+\z/;
	my $root = decode_base64($root64);
	return undef unless length($root) == 32;
	my @sigs = map { /\A\x{e2}\x{80}\x{94} (\S+) (\S+)\z/ ? { name => $1, blob => decode_base64($2) } : () } split /\n/, $sigs;
	return { text => $text, origin => $origin, size => $size, root => $root, sigs => \@sigs };
}

# True if the note carries a valid signature by the verifier key $vkey.
sub verify_checkpoint
{
	my ($note, $vkey) = @_;
	my $c = parse_checkpoint($note) or return 0;
	my $k = parse_vkey($vkey) or return 0;
	return 0 unless $k->{alg} == 1 && length($k->{pub}) == 32 && key_id($k->{name}, $k->{pub}) eq $k->{id};
	for my $s (@{ $c->{sigs} })
	{
		next unless $s->{name} eq $k->{name} && length($s->{blob}) == 68 && substr($s->{blob}, 0, 4) eq $k->{id};
		return 1 if ed25519_verify($k->{pub}, $c->{text}, substr($s->{blob}, 4));
	}
	return 0;
}

sub node_hash { return sha256("\x01" . $_[0] . $_[1]); }
sub leaf_hash { return sha256("\x00" . $_[0]); }
sub mth
{
	my @h = @_;
	return sha256('') if @h == 0;
	return $h[0] if @h == 1;
	my $k = 1;
	$k <<= 1 while ($k << 1) < @h;
	return node_hash(mth(@h[0 .. $k - 1]), mth(@h[$k .. $#h]));
}

# RFC 9162 section 2.1.4.2
sub verify_consistency
{
	my ($first, $second, $first_hash, $second_hash, $proof) = @_;
	return 0 if $first < 1 || $first > $second;
	return (@$proof == 0 && $first_hash eq $second_hash) ? 1 : 0 if $first == $second;
	return 0 if @$proof == 0 || grep { length($_) != 32 } @$proof;
	my @path = @$proof;
	unshift @path, $first_hash if ($first & ($first - 1)) == 0;
	my ($fn, $sn) = ($first - 1, $second - 1);
	while ($fn & 1) { $fn >>= 1; $sn >>= 1; }
	my ($fr, $sr) = ($path[0], $path[0]);
	for my $c (@path[ 1 .. $#path ])
	{
		return 0 if $sn == 0;
		if (($fn & 1) || $fn == $sn)
		{
			$fr = node_hash($c, $fr);
			$sr = node_hash($c, $sr);
			until (($fn & 1) || $fn == 0) { $fn >>= 1; $sn >>= 1; }
		}
		else
		{
			$sr = node_hash($sr, $c);
		}
		$fn >>= 1;
		$sn >>= 1;
	}
	return ($fr eq $first_hash && $sr eq $second_hash && $sn == 0) ? 1 : 0;
}

# ---------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------
sub dbq { my ($db, $sql) = @_; return $node->safe_psql($db, $sql); }
# runs $sql as a superuser with every ordinary trigger disabled
sub tamper { my ($db, $sql) = @_; return $node->safe_psql($db, "SET session_replication_role = replica;\n$sql"); }

# A fresh database with 40 entries sealed in 5 blocks of 8.
sub build_log
{
	my ($db) = @_;
	dbq('postgres', "CREATE DATABASE $db");
	dbq($db, q{
		CREATE EXTENSION fintx;
		CREATE TABLE ev (id serial PRIMARY KEY, who text NOT NULL, amount bigint NOT NULL);
		SELECT fintx.audit_table('ev');
	});
	for my $b (1 .. 5)
	{
		dbq($db, "INSERT INTO ev (who, amount) SELECT 'b$b-' || g, g * 100 + $b FROM generate_series(1, 4) g;\n"
			  . "UPDATE ev SET amount = amount + 1 WHERE who IN ('b$b-1', 'b$b-2');\n"
			  . "INSERT INTO ev (who, amount) VALUES ('b$b-5', 5), ('b$b-6', 6);\n"
			  . "SELECT fintx.seal();");
	}
	return dbq($db, 'SELECT fintx.tree_size()');
}

# verify_audit() as [ok, entries_checked, first_bad_leaf ('' if none), detail]
sub verify
{
	my ($db) = @_;
	return [ split /\|/, dbq($db, q{SELECT ok || '|' || entries_checked || '|' || coalesce(first_bad_leaf::text, '') || '|' || detail
	                               FROM fintx.verify_audit()}), 4 ];
}
sub entry_at { my ($db, $leaf) = @_; return dbq($db, "SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index = $leaf"); }
sub leaves_of { my ($db) = @_; return map { pack('H*', (split /\t/)[1]) } split /\n/, dbq($db, 'SELECT l FROM fintx.audit_export() l'); }
sub hashes { my ($s) = @_; return [ map { pack('H*', $_) } grep { $_ ne '' } split /,/, $s ]; }

# verify_audit() must fail and name $leaf as first_bad_leaf, with a detail that says why.
sub detected_at
{
	my ($db, $leaf, $what, $detail_re) = @_;
	my $v = verify($db);
	is($v->[0], 'false', "$what: verify_audit() is not ok");
	is($v->[2], $leaf, "$what: first_bad_leaf = $leaf");
	like($v->[3], $detail_re, "$what: the detail names it");
	return $v;
}

# ---------------------------------------------------------------------------
# 0. an intact signed log
# ---------------------------------------------------------------------------
is(build_log('intact'), '40', 'intact: 40 entries sealed');
my $vkey = dbq('intact', 'SELECT fintx.public_key()');
my $k = parse_vkey($vkey);
ok($k && $k->{alg} == 1 && key_id($k->{name}, $k->{pub}) eq $k->{id}, "public_key() is a C2SP Ed25519 verifier key: $vkey");
is(unpack('H*', $k->{pub}), unpack('H*', ed25519_public($key1)), 'public_key() holds the public half of fintx.signing_key_file');
my $cp = dbq('intact', 'SELECT fintx.checkpoint()');
my $c = parse_checkpoint($cp);
ok($c, 'checkpoint() is a C2SP signed note') or diag($cp);
is("$c->{origin}|$c->{size}", "$k->{name}|40", 'checkpoint origin is the key name, size 40');
is(unpack('H*', $c->{root}), unpack('H*', mth(map { leaf_hash($_) } leaves_of('intact'))),
	'checkpoint root = RFC 6962 tree head computed here from leaf_data');
ok(verify_checkpoint($cp, $vkey), 'the checkpoint verifies with public_key()');
my @blocks = map { [ split /\|/ ] } split /\n/,
  dbq('intact', "SELECT block_id, tree_size, encode(root_hash, 'base64'), origin, encode(signature, 'hex') FROM fintx.audit_blocks ORDER BY block_id");
is(scalar @blocks, 5, 'five blocks');
is_deeply([ map { $_->[0] } grep { !ed25519_verify($k->{pub}, "$_->[3]\n$_->[1]\n$_->[2]\n", pack('H*', $_->[4])) } @blocks ], [],
	'every block signature verifies here over "origin\nsize\nroot\n"');
my $v = verify('intact');
is("$v->[0]|$v->[1]|$v->[2]", 'true|40|', 'verify_audit() is ok on the intact log');
like($v->[3], qr/signatures checked/, 'verify_audit() checked the signatures');

# ---------------------------------------------------------------------------
# a) a changed field
# ---------------------------------------------------------------------------
build_log('field');
my @fields = (
	[ 'details',      3,  q{jsonb_set(details, '{new,amount}', '999999')} ],
	[ 'actor',        11, q{'mallory'} ],
	[ 'session_role', 17, q{'mallory'} ],
	[ 'action',       22, q{'row.deleted'} ],
	[ 'object_type',  29, q{'view'} ],
	[ 'object_id',    33, q{'public.elsewhere'} ],
	[ 'recorded_at',  38, q{recorded_at + interval '1 microsecond'} ]);
for my $f (@fields)
{
	my ($col, $leaf, $expr) = @$f;
	my $id = entry_at('field', $leaf);
	my $restore = dbq('field', "SELECT format('UPDATE fintx.audit_entries SET %I = %L::%s WHERE entry_id = %s', '$col', $col,"
		  . " pg_typeof($col), entry_id) FROM fintx.audit_entries WHERE entry_id = $id");
	tamper('field', "UPDATE fintx.audit_entries SET $col = $expr WHERE entry_id = $id");
	detected_at('field', $leaf, "changed $col of the entry at leaf $leaf", qr/at leaf $leaf does not match its hash/);
	tamper('field', $restore);
	is(verify('field')->[0], 'true', "  restoring $col makes the log verify again");
}
# the entry hash recomputed too (it is the leaf hash): the stored subtree above the leaf and
# the tree head of the block that sealed it no longer match
my $id = entry_at('field', 7);
my $saved = dbq('field', "SELECT details::text || '|' || encode(entry_hash, 'hex') FROM fintx.audit_entries WHERE entry_id = $id");
my ($saved_details, $saved_hash) = split /\|/, $saved;
tamper('field', qq{
	UPDATE fintx.audit_entries SET details = jsonb_set(details, '{new,who}', '"mallory"') WHERE entry_id = $id;
	UPDATE fintx.audit_entries SET entry_hash = fintx.merkle_leaf_hash(fintx.leaf_data(7)) WHERE entry_id = $id;
});
$v = verify('field');
is($v->[0], 'false', 'changed details with a recomputed entry hash: verify_audit() is not ok');
is($v->[2], '0', '  first_bad_leaf = 0: the first leaf of block 1 (leaves 0..7) and of the stored subtree (0..15) that hold leaf 7');
like($v->[3], qr/tree node at level 4, index 0 does not match its leaves|block 1 records a tree head/, '  the detail names the subtree or the block')
  or diag(join('|', @$v));
tamper('field', qq{UPDATE fintx.audit_entries SET details = '$saved_details'::jsonb, entry_hash = '\\x$saved_hash' WHERE entry_id = $id;});
is(verify('field')->[0], 'true', '  restored: the log verifies again');

# ---------------------------------------------------------------------------
# b) a deleted entry row, a deleted leaf row
# ---------------------------------------------------------------------------
build_log('deleted');
$id = entry_at('deleted', 13);
tamper('deleted', "CREATE TABLE saved_entry AS SELECT * FROM fintx.audit_entries WHERE entry_id = $id;\n"
	  . "DELETE FROM fintx.audit_entries WHERE entry_id = $id;");
detected_at('deleted', 13, 'deleted entry row of leaf 13', qr/entry of leaf 13 is missing/);
tamper('deleted', 'INSERT INTO fintx.audit_entries SELECT * FROM saved_entry');
is(verify('deleted')->[0], 'true', '  re-inserted: the log verifies again');
tamper('deleted', 'CREATE TABLE saved_runs AS SELECT * FROM fintx.audit_leaf_runs;'
	  . remap_leaves_sql('DELETE FROM m WHERE leaf_index = 21'));
detected_at('deleted', 21, 'leaf 21 cut out of its run', qr/leaf 21 is missing/);
tamper('deleted', 'DELETE FROM fintx.audit_leaf_runs; INSERT INTO fintx.audit_leaf_runs SELECT * FROM saved_runs');
is(verify('deleted')->[0], 'true', '  re-inserted: the log verifies again');

# ---------------------------------------------------------------------------
# c) a reordered pair
# ---------------------------------------------------------------------------
build_log('reorder');
# swaps the entries of two leaves (rewriting the runs that map leaves to entries)
sub swap_leaves
{
	my ($db, $x, $y) = @_;
	my ($ex, $ey) = (entry_at($db, $x), entry_at($db, $y));
	tamper($db, remap_leaves_sql("UPDATE m SET entry_id = CASE leaf_index WHEN $x THEN $ey ELSE $ex END"
		  . " WHERE leaf_index IN ($x, $y)"));
	return;
}
swap_leaves('reorder', 5, 6);
is(dbq('reorder', "SELECT count(*) FROM fintx.audit_log WHERE leaf_index IN (5, 6)"), '2', 'leaves 5 and 6 swapped their entries');
detected_at('reorder', 5, 'leaves 5 and 6 reordered (same block)', qr/leaves 5 and 6 of block 1 are not in entry-id order/);
swap_leaves('reorder', 5, 6);
is(verify('reorder')->[0], 'true', '  swapped back: the log verifies again');
swap_leaves('reorder', 15, 16);
# across blocks each block's leaves stay in entry-id order: the tree shows it, in the stored
# subtree of leaves 0..15 and the tree head of block 2 (leaves 8..15)
$v = verify('reorder');
ok($v->[0] eq 'false' && $v->[2] ne '' && $v->[2] <= 15, "leaves 15 and 16 reordered (across blocks): detected (first bad leaf $v->[2])")
  or diag(join('|', @$v));
like($v->[3], qr/does not match its leaves|records a tree head/, '  the detail names the subtree or the block');
swap_leaves('reorder', 15, 16);
is(verify('reorder')->[0], 'true', '  swapped back: the log verifies again');

# ---------------------------------------------------------------------------
# d) a truncated tail, detected against a checkpoint saved before
# ---------------------------------------------------------------------------
build_log('truncated');
my $cp24_db = dbq('truncated', 'SELECT fintx.root_hash(24)');
my $cp40 = dbq('truncated', 'SELECT fintx.checkpoint()');
my $c40 = parse_checkpoint($cp40);
my $vk = dbq('truncated', 'SELECT fintx.public_key()');
ok(verify_checkpoint($cp40, $vk) && $c40->{size} == 40, 'an auditor saved the signed checkpoint of size 40');
my $root24 = pack('H*', substr($cp24_db, 2));
# control: the untouched log proves 24 -> 40
ok(verify_consistency(24, 40, $root24, $c40->{root}, hashes(dbq('truncated',
	"SELECT array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.consistency_proof(24, 40)) h), ',')"))),
	'control: before tampering the log proves consistency 24 -> 40');
# the attacker removes the last block (leaves 32..39) and everything under it
tamper('truncated', q{
	DELETE FROM fintx.audit_entries WHERE entry_id IN (SELECT entry_id FROM fintx.audit_leaves WHERE leaf_index >= 32);
	DELETE FROM fintx.audit_leaf_runs WHERE first_leaf >= 32;
	DELETE FROM fintx.audit_nodes WHERE (idx + 1) << level > 32;
	DELETE FROM fintx.audit_blocks WHERE tree_size > 32;
});
is(dbq('truncated', 'SELECT fintx.tree_size()'), '32', 'the truncated log has 32 leaves');
note('verify_audit() on the truncated log: ' . join('|', @{ verify('truncated') }));
my $cp32 = dbq('truncated', 'SELECT fintx.checkpoint()');
ok(verify_checkpoint($cp32, $vk), 'the truncated log still signs a valid checkpoint (size 32)');
cmp_ok(parse_checkpoint($cp32)->{size}, '<', $c40->{size}, 'detected: the log is now shorter than a checkpoint it signed');
my ($ret, $out, $err) = $node->psql('truncated', 'SELECT fintx.consistency_proof(40, 32)');
like($err, qr/out of range/, 'and it cannot produce a consistency proof from the saved size 40');
($ret, $out, $err) = $node->psql('truncated', 'SELECT fintx.root_hash(40)');
like($err, qr/out of range/, 'nor the tree head of size 40');
# the attacker regrows the log past the saved size with other entries
dbq('truncated', "INSERT INTO ev (who, amount) SELECT 'forged-' || g, g FROM generate_series(1, 10) g; SELECT fintx.seal();");
my $cp42 = dbq('truncated', 'SELECT fintx.checkpoint()');
my $c42 = parse_checkpoint($cp42);
ok(verify_checkpoint($cp42, $vk) && $c42->{size} == 42, 'the regrown log signs a valid checkpoint of size 42');
my $proof = hashes(dbq('truncated',
	"SELECT array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.consistency_proof(40, 42)) h), ',')"));
ok(!verify_consistency(40, 42, $c40->{root}, $c42->{root}, $proof),
	'detected: the consistency proof 40 -> 42 does not verify against the saved checkpoint');
my @now = map { leaf_hash($_) } leaves_of('truncated');
isnt(unpack('H*', mth(@now[ 0 .. 39 ])), unpack('H*', $c40->{root}),
	'detected: the first 40 leaves of the log, hashed here, do not give the saved root');
ok(verify_consistency(24, 42, $root24, $c42->{root}, hashes(dbq('truncated',
	"SELECT array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.consistency_proof(24, 42)) h), ',')"))),
	'the untouched prefix still proves consistent (24 -> 42): the check is precise');

# ---------------------------------------------------------------------------
# e) forged signatures, another key
# ---------------------------------------------------------------------------
build_log('forged');
$vk = dbq('forged', 'SELECT fintx.public_key()');
my $random = unpack('H*', join('', map { chr(int(rand(256))) } 1 .. 64));
my $sig3 = dbq('forged', "SELECT encode(signature, 'hex') FROM fintx.audit_blocks WHERE block_id = 3");
tamper('forged', "UPDATE fintx.audit_blocks SET signature = '\\x$random' WHERE block_id = 3");
$v = verify('forged');
is("$v->[0]|$v->[2]", 'false|16', 'forged signature of block 3: verify_audit() fails at the start of the block (leaf 16)');
like($v->[3], qr/signature of block 3 does not verify/, "  detail: $v->[3]");
tamper('forged', "UPDATE fintx.audit_blocks SET signature = '\\x$sig3' WHERE block_id = 3");
is(verify('forged')->[0], 'true', '  restored: the log verifies again');
# the signed note of a block as anyone can rebuild it from audit_blocks
sub block_note
{
	my ($db, $bid, $vkey) = @_;
	my ($origin, $size, $root64, $sighex) = split /\|/,
	  dbq($db, "SELECT origin, tree_size, encode(root_hash, 'base64'), encode(signature, 'hex') FROM fintx.audit_blocks WHERE block_id = $bid");
	return "$origin\n$size\n$root64\n\n\x{e2}\x{80}\x{94} $origin "
	  . encode_base64(parse_vkey($vkey)->{id} . pack('H*', $sighex), '') . "\n";
}
my $sig5 = dbq('forged', "SELECT encode(signature, 'hex') FROM fintx.audit_blocks WHERE block_id = 5");
ok(verify_checkpoint(block_note('forged', 5, $vk), $vk), 'control: the signed note of block 5, rebuilt from audit_blocks, verifies');
tamper('forged', "UPDATE fintx.audit_blocks SET signature = '\\x$random' WHERE block_id = 5");
ok(!verify_checkpoint(block_note('forged', 5, $vk), $vk), 'detected: with the forged signature it does not verify with public_key()');
$v = verify('forged');
like("$v->[0]|$v->[3]", qr/^false\|.*signature of block 5/, 'and verify_audit() reports block 5');
tamper('forged', "UPDATE fintx.audit_blocks SET signature = '\\x$sig5' WHERE block_id = 5");

# a checkpoint signed with a different key, under the same name and key ID
my $body = parse_checkpoint(dbq('forged', 'SELECT fintx.checkpoint()'))->{text};
my $k1 = parse_vkey($vk);
my $pub2 = ed25519_public($key2);
my $sig2 = ed25519_sign($key2, $body);
ok(ed25519_verify($pub2, $body, $sig2), 'control: a signature by the other key verifies with the other public key');
my $impostor = "$body\n\x{e2}\x{80}\x{94} $k1->{name} " . encode_base64($k1->{id} . $sig2, '') . "\n";
ok(!verify_checkpoint($impostor, $vk), 'a checkpoint signed by another key (claiming our key ID) does not verify with public_key()');
my $vk2 = "$k1->{name}+" . unpack('H*', key_id($k1->{name}, $pub2)) . '+' . encode_base64("\x01$pub2", '');
my $other = "$body\n\x{e2}\x{80}\x{94} $k1->{name} " . encode_base64(key_id($k1->{name}, $pub2) . $sig2, '') . "\n";
ok(verify_checkpoint($other, $vk2), 'control: with its own key ID it verifies with the other key');
ok(!verify_checkpoint($other, $vk), 'but not with public_key()');

# the server switches to the other key
my $vk_forged_old = dbq('forged', 'SELECT fintx.public_key()');
$node->safe_psql('postgres', "ALTER SYSTEM SET fintx.signing_key_file = '$key2'");
$node->reload;
my $vk_new = dbq('forged', 'SELECT fintx.public_key()');
is($vk_new, $vk2, 'after switching fintx.signing_key_file, public_key() is the other key');
my $cp_rot = dbq('forged', 'SELECT fintx.checkpoint()');
ok(verify_checkpoint($cp_rot, $vk_new), 'right after a key change, checkpoint() verifies with the new public_key()');
ok(!verify_checkpoint($cp_rot, $vk), 'and not with the old one');
dbq('forged', "INSERT INTO ev (who, amount) VALUES ('after-rotation', 1); SELECT fintx.seal();");
my $cp_new = dbq('forged', 'SELECT fintx.checkpoint()');
ok(verify_checkpoint($cp_new, $vk_new), 'a block sealed under the new key: its checkpoint verifies with the new public_key()');
ok(!verify_checkpoint($cp_new, $vk), 'and not with the old one');
my $v_rot = verify('forged');
like($v_rot->[3], qr/neither the configured key nor in fintx\.trusted_keys/,
	'after a key change, blocks of the old key are refused until the old key is trusted');
$node->safe_psql('postgres', "ALTER SYSTEM SET fintx.trusted_keys = '$vk_forged_old'");
$node->reload;
$node->poll_query_until('forged', "SELECT current_setting('fintx.trusted_keys') <> ''") or die 'reload';
$v_rot = verify('forged');
note("verify_audit() with the old key trusted: " . join("|", @$v_rot));
is($v_rot->[0], 'true', 'with the old verifier key in fintx.trusted_keys, the log verifies again');
like($v_rot->[3], qr/\(\d+ with keys from fintx\.trusted_keys\)/, 'and the old blocks were checked with the trusted key');
$node->safe_psql('postgres', "ALTER SYSTEM RESET fintx.trusted_keys");
$node->reload;

# ---------------------------------------------------------------------------
# f) a full rewrite: entry, entry hash, subtree hashes, tree head and block hash recomputed,
#    the block's signature replaced and labelled as made by some other key (or removed)
# ---------------------------------------------------------------------------
build_log('rewritten');
$vk = dbq('rewritten', 'SELECT fintx.public_key()');
my $saved40 = parse_checkpoint(dbq('rewritten', 'SELECT fintx.checkpoint()'));
$id = entry_at('rewritten', 37);
tamper('rewritten', qq{
	UPDATE fintx.audit_entries SET details = jsonb_set(details, '{new,amount}', '1') WHERE entry_id = $id;
	UPDATE fintx.audit_entries SET entry_hash = fintx.merkle_leaf_hash(fintx.leaf_data(37)) WHERE entry_id = $id;
	-- leaf 37 of 40 lies in the last, incomplete tile of 16 leaves: no stored subtree covers it
	UPDATE fintx.audit_blocks SET root_hash = fintx.root_hash(40) WHERE block_id = 5;
	UPDATE fintx.audit_blocks
	   SET block_hash = sha256('fintx.block.v1'::bytea || int8send(block_id) || int8send(tree_size) || root_hash
	                           || prev_block_hash || int8send((extract(epoch FROM sealed_at) * 1000000)::bigint)),
	       signature = decode(repeat('00', 64), 'hex'), key_name = origin || '+00000000'
	 WHERE block_id = 5;
});
$v = verify('rewritten');
note('verify_audit() after the rewrite: ' . join('|', @$v));
{
	# regression: verify_audit() accepts a block whose key_name names an unknown key, without checking its signature
	is($v->[0], 'false', 'a rewritten block relabelled as signed by another key is not accepted by verify_audit()');
}
tamper('rewritten', 'UPDATE fintx.audit_blocks SET signature = NULL, key_name = NULL WHERE block_id = 5');
$v = verify('rewritten');
note('verify_audit() with the signature removed: ' . join('|', @$v));
{
	# regression: verify_audit() accepts an unsigned block that follows signed ones while a key is configured
	is($v->[0], 'false', 'a rewritten block with its signature removed is not accepted by verify_audit()');
}
my $now40 = parse_checkpoint(dbq('rewritten', 'SELECT fintx.checkpoint()'));
ok(verify_checkpoint(dbq('rewritten', 'SELECT fintx.checkpoint()'), $vk) && $now40->{size} == 40,
	'the rewritten log gets a validly signed checkpoint of size 40');
isnt(unpack('H*', $now40->{root}), unpack('H*', $saved40->{root}),
	'detected by the checkpoint saved before: two signed heads of size 40 that differ');
is(unpack('H*', mth(map { leaf_hash($_) } leaves_of('rewritten'))), unpack('H*', $now40->{root}),
	'(the rewrite is internally consistent: the leaves hash to the new head)');

note(sprintf('009 ran in %.1f s', time - $t_start));
$node->stop;
done_testing();

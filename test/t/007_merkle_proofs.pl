# RFC 9162 proofs checked by an independent verifier written here from the RFC text
# (Digest::SHA only): inclusion (section 2.1.3.2) and consistency (section 2.1.4.2).
#   1. the verifier itself: CT reference vectors accepted, mutations rejected
#   2. fintx.merkle_* over 64 leaves: tree heads of every prefix, every inclusion proof
#      (1 <= n <= 64, i < n) and every consistency proof (1 <= m <= n <= 64) verify and equal
#      the RFC's PATH / SUBPROOF; for a sample, wrong index, flipped bit, truncated or
#      extended proof, wrong size and wrong root are rejected
#   3. the real log: 88 entries sealed in 9 blocks; leaf hashes from leaf_data(), tree heads,
#      inclusion proofs for every leaf in every block size and every tree size, consistency
#      proofs between all block sizes and from every size to the latest
use strict;
use warnings;
use FintxTest;
use Digest::SHA qw(sha256);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# ---------------------------------------------------------------------------
# RFC 6962 / RFC 9162, independently of fintx
# ---------------------------------------------------------------------------
sub leaf_hash { return sha256("\x00" . $_[0]); }
sub node_hash { return sha256("\x01" . $_[0] . $_[1]); }

# largest power of two strictly below $n (n >= 2)
sub split_point
{
	my ($n) = @_;
	my $k = 1;
	$k <<= 1 while ($k << 1) < $n;
	return $k;
}

# MTH over leaf hashes (RFC 9162 section 2.1.1)
sub mth
{
	my @h = @_;
	return sha256('') if @h == 0;
	return $h[0] if @h == 1;
	my $k = split_point(scalar @h);
	return node_hash(mth(@h[0 .. $k - 1]), mth(@h[$k .. $#h]));
}

# PATH(m, D[n]) over leaf hashes (section 2.1.3.1)
sub path
{
	my ($m, @h) = @_;
	return () if @h <= 1;
	my $k = split_point(scalar @h);
	return $m < $k
	  ? (path($m, @h[0 .. $k - 1]), mth(@h[$k .. $#h]))
	  : (path($m - $k, @h[$k .. $#h]), mth(@h[0 .. $k - 1]));
}

# SUBPROOF(m, D[n], b) over leaf hashes (section 2.1.4.1)
sub subproof
{
	my ($m, $b, @h) = @_;
	my $n = @h;
	return $b ? () : (mth(@h)) if $m == $n;
	my $k = split_point($n);
	return $m <= $k
	  ? (subproof($m, $b, @h[0 .. $k - 1]), mth(@h[$k .. $n - 1]))
	  : (subproof($m - $k, 0, @h[$k .. $n - 1]), mth(@h[0 .. $k - 1]));
}

# Verifies an inclusion proof (RFC 9162 section 2.1.3.2).
sub verify_inclusion
{
	my ($index, $size, $leaf, $proof, $root) = @_;
	return 0 if $index < 0 || $index >= $size;
	my ($fn, $sn) = ($index, $size - 1);
	my $r = $leaf;
	for my $p (@$proof)
	{
		return 0 if length($p) != 32;
		return 0 if $sn == 0;
		if (($fn & 1) || $fn == $sn)
		{
			$r = node_hash($p, $r);
			until (($fn & 1) || $fn == 0) { $fn >>= 1; $sn >>= 1; }
		}
		else
		{
			$r = node_hash($r, $p);
		}
		$fn >>= 1;
		$sn >>= 1;
	}
	return $sn == 0 && $r eq $root ? 1 : 0;
}

# Verifies a consistency proof (RFC 9162 section 2.1.4.2); first == second needs an
# empty proof and equal roots.
sub verify_consistency
{
	my ($first, $second, $first_hash, $second_hash, $proof) = @_;
	return 0 if $first < 1 || $first > $second;
	return (@$proof == 0 && $first_hash eq $second_hash) ? 1 : 0 if $first == $second;
	return 0 if @$proof == 0;
	return 0 if grep { length($_) != 32 } @$proof;
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

sub hex_list { return join(',', map { unpack('H*', $_) } @_); }
sub unhex_list { my ($s) = @_; return [ map { pack('H*', $_) } grep { $_ ne '' } split /,/, ($s // '') ]; }

# flips bit $bit of byte $byte of a hash
sub flip
{
	my ($h, $byte, $bit) = @_;
	substr($h, $byte, 1) = chr(ord(substr($h, $byte, 1)) ^ (1 << $bit));
	return $h;
}

# Every way to get an inclusion proof wrong that the verifier must reject.
# $root_of->($size) gives the true root of a size.
sub inclusion_mutations
{
	my ($i, $n, $leaf, $proof, $root_of, $other_leaf) = @_;
	my @m;
	my $root = $root_of->($n);
	push @m, [ "index $i+1", $i + 1, $n, $leaf, $proof, $root ];
	push @m, [ "index $i-1", $i - 1, $n, $leaf, $proof, $root ] if $i > 0;
	push @m, [ 'index i^1', $i ^ 1, $n, $leaf, $proof, $root ] if ($i ^ 1) != $i + 1 && ($i ^ 1) < $n;
	push @m, [ 'other leaf', $i, $n, $other_leaf, $proof, $root ];
	for my $k (0 .. $#$proof)
	{
		my @p = @$proof;
		$p[$k] = flip($p[$k], ($k * 7) % 32, $k % 8);
		push @m, [ "flipped bit in proof[$k]", $i, $n, $leaf, \@p, $root ];
	}
	if (@$proof)
	{
		push @m, [ 'truncated (last dropped)', $i, $n, $leaf, [ @$proof[ 0 .. $#$proof - 1 ] ], $root ];
		push @m, [ 'truncated (first dropped)', $i, $n, $leaf, [ @$proof[ 1 .. $#$proof ] ], $root ];
		push @m, [ 'proof element shortened', $i, $n, $leaf, [ substr($proof->[0], 0, 31), @$proof[ 1 .. $#$proof ] ], $root ];
	}
	push @m, [ 'extended (hash appended)', $i, $n, $leaf, [ @$proof, $root ], $root ];
	push @m, [ 'extended (hash prepended)', $i, $n, $leaf, [ $leaf, @$proof ], $root ];
	push @m, [ 'wrong size n+1', $i, $n + 1, $leaf, $proof, $root_of->($n + 1) ] if defined $root_of->($n + 1);
	push @m, [ 'wrong size n-1', $i, $n - 1, $leaf, $proof, $root_of->($n - 1) ] if $n - 1 > $i;
	push @m, [ 'wrong root (flipped bit)', $i, $n, $leaf, $proof, flip($root, 31, 0) ];
	push @m, [ 'wrong root (empty tree)', $i, $n, $leaf, $proof, sha256('') ];
	return @m;
}

sub consistency_mutations
{
	my ($m, $n, $proof, $root_of) = @_;
	my ($r1, $r2) = ($root_of->($m), $root_of->($n));
	my @x;
	push @x, [ 'first size m+1', $m + 1, $n, $root_of->($m + 1), $r2, $proof ] if $m + 1 <= $n;
	push @x, [ 'first size m-1', $m - 1, $n, $root_of->($m - 1), $r2, $proof ] if $m > 1;
	push @x, [ 'second size n+1', $m, $n + 1, $r1, $root_of->($n + 1), $proof ] if defined $root_of->($n + 1);
	push @x, [ 'second size n-1', $m, $n - 1, $r1, $root_of->($n - 1), $proof ] if $n - 1 >= $m;
	for my $k (0 .. $#$proof)
	{
		my @p = @$proof;
		$p[$k] = flip($p[$k], ($k * 11) % 32, ($k + 3) % 8);
		push @x, [ "flipped bit in proof[$k]", $m, $n, $r1, $r2, \@p ];
	}
	if (@$proof)
	{
		push @x, [ 'truncated (last dropped)', $m, $n, $r1, $r2, [ @$proof[ 0 .. $#$proof - 1 ] ] ];
		push @x, [ 'truncated (first dropped)', $m, $n, $r1, $r2, [ @$proof[ 1 .. $#$proof ] ] ];
	}
	push @x, [ 'extended (hash appended)', $m, $n, $r1, $r2, [ @$proof, $r1 ] ];
	push @x, [ 'extended (hash prepended)', $m, $n, $r1, $r2, [ $r1, @$proof ] ];
	push @x, [ 'wrong first root', $m, $n, flip($r1, 0, 7), $r2, $proof ];
	push @x, [ 'wrong second root', $m, $n, $r1, flip($r2, 5, 2), $proof ];
	push @x, [ 'roots swapped', $m, $n, $r2, $r1, $proof ] if $m != $n;
	return @x;
}

# Runs the mutations; returns the names of those the verifier accepted.
sub accepted_inclusion { return map { $_->[0] } grep { verify_inclusion(@$_[ 1 .. 5 ]) } @_; }
sub accepted_consistency { return map { $_->[0] } grep { verify_consistency(@$_[ 1 .. 5 ]) } @_; }

# ---------------------------------------------------------------------------
# 1. the verifier against the Certificate Transparency reference vectors
# ---------------------------------------------------------------------------
my @ct = map { pack('H*', $_) } ('', '00', '10', '2021', '3031', '40414243', '5051525354555657',
	'606162636465666768696a6b6c6d6e6f');
my @ct_leaf = map { leaf_hash($_) } @ct;
is(unpack('H*', mth(@ct_leaf)), '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
	'reference MTH of the 8 CT inputs');
is(unpack('H*', mth()), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', 'reference MTH of the empty tree');
my $ct_root = sub { my ($s) = @_; return $s >= 0 && $s <= 8 ? mth(@ct_leaf[ 0 .. $s - 1 ]) : undef; };
my %ct_incl = (
	'0/8' => '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7,5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4',
	'5/8' => 'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b,ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0,d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
	'2/3' => 'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
	'1/5' => '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d,5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b',
	'0/1' => '');
for my $key (sort keys %ct_incl)
{
	my ($i, $n) = split m{/}, $key;
	my $proof = unhex_list($ct_incl{$key});
	is(hex_list(path($i, @ct_leaf[ 0 .. $n - 1 ])), $ct_incl{$key}, "reference PATH($i, D[$n]) = CT vector");
	ok(verify_inclusion($i, $n, $ct_leaf[$i], $proof, $ct_root->($n)), "verifier accepts the CT inclusion vector $i/$n");
	is_deeply([ accepted_inclusion(inclusion_mutations($i, $n, $ct_leaf[$i], $proof, $ct_root, leaf_hash('x'))) ], [],
		"verifier rejects every mutation of the CT inclusion vector $i/$n");
}
my %ct_cons = (
	'1/1' => '',
	'1/8' => '96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7,5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4',
	'6/8' => '0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a,ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0,d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
	'2/5' => '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e,bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b');
for my $key (sort keys %ct_cons)
{
	my ($m, $n) = split m{/}, $key;
	my $proof = unhex_list($ct_cons{$key});
	is(hex_list(subproof($m, 1, @ct_leaf[ 0 .. $n - 1 ])), $ct_cons{$key}, "reference SUBPROOF($m, D[$n], true) = CT vector");
	ok(verify_consistency($m, $n, $ct_root->($m), $ct_root->($n), $proof), "verifier accepts the CT consistency vector $m/$n");
	is_deeply([ accepted_consistency(consistency_mutations($m, $n, $proof, $ct_root)) ], [],
		"verifier rejects every mutation of the CT consistency vector $m/$n");
}

# ---------------------------------------------------------------------------
# 2. fintx.merkle_* over 64 leaves of varied length (empty ones included)
# ---------------------------------------------------------------------------
my $node = fintx_node('merkle', "fintx.seal_interval = '1h'");
my $t0 = time;
my $N = 64;
my @data = map { substr(sha256("fintx leaf $_") x 3, 0, ($_ * 7) % 45) } 0 .. $N - 1;
my @lh = map { leaf_hash($_) } @data;
$node->safe_psql('postgres',
	"CREATE TABLE kat (i int PRIMARY KEY, data bytea NOT NULL);\n"
	  . "INSERT INTO kat VALUES "
	  . join(', ', map { "($_, '\\x" . unpack('H*', $data[$_]) . "')" } 0 .. $N - 1) . ";\n"
	  . "CREATE VIEW kat_leaves AS SELECT array_agg(data ORDER BY i) AS a FROM kat;");

# leaf hashes and every prefix's tree head
my %sql_head;
for (split /\n/, $node->safe_psql('postgres',
		"SELECT n, encode(fintx.merkle_tree_head(a[1:n]), 'hex') FROM kat_leaves, generate_series(0, $N) n"))
{
	my ($n, $h) = split /\|/;
	$sql_head{$n} = pack('H*', $h);
}
my @bad_heads = grep { !defined $sql_head{$_} || $sql_head{$_} ne mth(@lh[ 0 .. $_ - 1 ]) } 0 .. $N;
is_deeply(\@bad_heads, [], "merkle_tree_head of every prefix 0..$N equals the reference MTH");
is($node->safe_psql('postgres',
		"SELECT count(*) FROM kat WHERE fintx.merkle_leaf_hash(data) <> sha256('\\x00'::bytea || data)"),
	'0', 'merkle_leaf_hash = SHA-256(0x00 || data) for all 64 leaves');
my @bad_leaf = grep {
	$node->safe_psql('postgres', "SELECT encode(fintx.merkle_leaf_hash(data), 'hex') FROM kat WHERE i = $_") ne unpack('H*', $lh[$_])
} (0, 1, 31, 63);
is_deeply(\@bad_leaf, [], 'merkle_leaf_hash agrees with Digest::SHA on a sample');
my $root_of = sub { my ($s) = @_; return ($s >= 0 && $s <= $N) ? $sql_head{$s} : undef; };

# every inclusion proof, one query
my (%incl, %cons);
for (split /\n/, $node->safe_psql('postgres',
		"SELECT n, i, array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.merkle_inclusion_proof(a, i, n))"
		  . " WITH ORDINALITY u(h, o) ORDER BY o), ',')"
		  . " FROM kat_leaves, generate_series(1, $N) n, generate_series(0, n - 1) i"))
{
	my ($n, $i, $p) = split /\|/, $_, -1;
	$incl{"$i/$n"} = unhex_list($p);
}
is(scalar keys %incl, $N * ($N + 1) / 2, 'one query returned all 2080 inclusion proofs');
for my $n (1 .. $N)
{
	my @bad = grep { !verify_inclusion($_, $n, $lh[$_], $incl{"$_/$n"} // [], $sql_head{$n}) } 0 .. $n - 1;
	is_deeply(\@bad, [], "tree size $n: inclusion proof of every leaf verifies against merkle_tree_head");
}
my @not_rfc = grep {
	my ($i, $n) = split m{/};
	hex_list(@{ $incl{$_} }) ne hex_list(path($i, @lh[ 0 .. $n - 1 ]))
} sort keys %incl;
is_deeply(\@not_rfc, [], 'every inclusion proof is exactly RFC 9162 PATH(m, D[n])');

# every consistency proof, one query
for (split /\n/, $node->safe_psql('postgres',
		"SELECT m, n, array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.merkle_consistency_proof(a, m, n))"
		  . " WITH ORDINALITY u(h, o) ORDER BY o), ',')"
		  . " FROM kat_leaves, generate_series(1, $N) n, generate_series(1, n) m"))
{
	my ($m, $n, $p) = split /\|/, $_, -1;
	$cons{"$m/$n"} = unhex_list($p);
}
is(scalar keys %cons, $N * ($N + 1) / 2, 'one query returned all 2080 consistency proofs');
for my $n (1 .. $N)
{
	my @bad = grep { !verify_consistency($_, $n, $sql_head{$_}, $sql_head{$n}, $cons{"$_/$n"} // []) } 1 .. $n;
	is_deeply(\@bad, [], "tree size $n: consistency proof from every size 1..$n verifies");
}
@not_rfc = grep {
	my ($m, $n) = split m{/};
	hex_list(@{ $cons{$_} }) ne hex_list(subproof($m, 1, @lh[ 0 .. $n - 1 ]))
} sort keys %cons;
is_deeply(\@not_rfc, [], 'every consistency proof is exactly RFC 9162 SUBPROOF(m, D[n], true)');

# negative cases for a sample
my @sizes = (1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 63, 64);
my ($tried, @accepted) = (0);
for my $n (@sizes)
{
	for my $i (sort { $a <=> $b } keys %{ { map { $_ => 1 } (0, int($n / 2), $n - 1) } })
	{
		my @mut = inclusion_mutations($i, $n, $lh[$i], $incl{"$i/$n"}, $root_of, $lh[ ($i + 1) % $N ]);
		$tried += @mut;
		push @accepted, map { "$i/$n: $_" } accepted_inclusion(@mut);
	}
}
cmp_ok($tried, '>', 500, "inclusion: $tried mutated proofs tried");
is_deeply(\@accepted, [], 'inclusion: wrong index, other leaf, flipped bit, truncated, extended, wrong size and wrong root all rejected');
($tried, @accepted) = (0);
for my $n (@sizes)
{
	for my $m (sort { $a <=> $b } keys %{ { map { $_ => 1 } (1, int(($n + 1) / 2), $n - 1 || 1, $n) } })
	{
		my @mut = consistency_mutations($m, $n, $cons{"$m/$n"}, $root_of);
		$tried += @mut;
		push @accepted, map { "$m/$n: $_" } accepted_consistency(@mut);
	}
}
cmp_ok($tried, '>', 400, "consistency: $tried mutated proofs tried");
is_deeply(\@accepted, [], 'consistency: wrong sizes, flipped bit, truncated, extended, wrong and swapped roots all rejected');
note(sprintf('data proofs: %.1f s', time - $t0));

# ---------------------------------------------------------------------------
# 3. the real log: 88 entries sealed in blocks of 1, 1, 2, 3, 5, 8, 13, 21, 34
# ---------------------------------------------------------------------------
$t0 = time;
$node->safe_psql('postgres', q{
	CREATE TABLE ev (id serial PRIMARY KEY, batch int, payload text);
	SELECT fintx.audit_table('ev');
});
my ($batch, $total, @block_sizes) = (0, 0);
for my $k (1, 1, 2, 3, 5, 8, 13, 21, 34)
{
	$batch++;
	$total += $k;
	# a few transactions per batch, some with several rows
	my $sql = '';
	for (my $done = 0; $done < $k;)
	{
		my $rows = $k - $done >= 3 ? 3 : 1;
		$sql .= "INSERT INTO ev (batch, payload) SELECT $batch, md5(g::text) || repeat('é', g % 5)"
		  . " FROM generate_series($done, $done + $rows - 1) g;\n";
		$done += $rows;
	}
	$node->safe_psql('postgres', $sql);
	my $sealed = $node->safe_psql('postgres', 'SELECT fintx.seal()');
	push @block_sizes, $sealed;
}
my $log_n = $block_sizes[-1];
cmp_ok($log_n, '>=', 64, "the log holds at least 64 entries ($log_n)");
is_deeply(\@block_sizes, [ 1, 2, 4, 7, 12, 20, 33, 54, 88 ], 'one block per sealing pass, sizes are the running totals')
  or diag("other entries were sealed too: @block_sizes");
is($node->safe_psql('postgres', 'SELECT string_agg(tree_size::text, \',\' ORDER BY block_id) FROM fintx.audit_blocks'),
	join(',', @block_sizes), 'audit_blocks records the same sizes');

# leaves from leaf_data(), hashed here
my @ld = map { pack('H*', (split /\t/)[1]) } split /\n/,
  $node->safe_psql('postgres', 'SELECT l FROM fintx.audit_export() l');
is(scalar @ld, $log_n, 'audit_export returns every leaf');
my @llh = map { leaf_hash($_) } @ld;
my %stored_entry_hash = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', "SELECT leaf_index, encode(entry_hash, 'hex') FROM fintx.audit_log WHERE leaf_index IS NOT NULL");
is_deeply([ grep { ($stored_entry_hash{$_} // '') ne unpack('H*', $llh[$_]) } 0 .. $log_n - 1 ], [],
	'SHA-256(0x00 || leaf_data(i)) equals entry_hash for every leaf');

# what the sealing passes stored: the leaf hash with each leaf, and exactly the complete
# subtrees of 16 leaves and more (docs/audit.md#sealing), each the MTH of its leaves
is($node->safe_psql('postgres', "SELECT count(*) FROM fintx.audit_leaves l JOIN fintx.audit_log e USING (leaf_index)"
		. " WHERE l.leaf_hash IS DISTINCT FROM e.entry_hash"), '0', 'every leaf stores its entry hash as its leaf hash');
{
	my @want;
	for (my $lv = 4; ($log_n >> $lv) > 0; $lv++)
	{
		push @want, map { "$lv|$_|" . unpack('H*', mth(@llh[ ($_ << $lv) .. (($_ + 1) << $lv) - 1 ])) } 0 .. ($log_n >> $lv) - 1;
	}
	is($node->safe_psql('postgres', "SELECT string_agg(level || '|' || idx || '|' || encode(hash, 'hex'), E'\\n' ORDER BY level, idx)"
			. " FROM fintx.audit_nodes"), join("\n", @want),
		'audit_nodes holds exactly the complete subtrees of 16 leaves and more (' . scalar(@want) . '), each the MTH of its leaves');
}

my %log_root;
for (split /\n/, $node->safe_psql('postgres',
		"SELECT n, encode(fintx.root_hash(n), 'hex') FROM generate_series(0, $log_n) n"))
{
	my ($n, $h) = split /\|/;
	$log_root{$n} = pack('H*', $h);
}
is_deeply([ grep { ($log_root{$_} // '') ne mth(@llh[ 0 .. $_ - 1 ]) } 0 .. $log_n ], [],
	"root_hash(n) equals the MTH computed here from leaf_data, for every n in 0..$log_n");
my %block_root = map { my ($s, $h) = split /\|/; ($s => pack('H*', $h)) } split /\n/,
  $node->safe_psql('postgres', "SELECT tree_size, encode(root_hash, 'hex') FROM fintx.audit_blocks");
is_deeply([ grep { $block_root{$_} ne mth(@llh[ 0 .. $_ - 1 ]) } @block_sizes ], [],
	'every block records the MTH of its tree size');
my $log_root_of = sub { my ($s) = @_; return ($s >= 0 && $s <= $log_n) ? $log_root{$s} : undef; };

# inclusion proofs of every leaf for every tree size (block sizes among them), one query
my %lincl;
for (split /\n/, $node->safe_psql('postgres',
		"SELECT n, i, array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.inclusion_proof(i, n))"
		  . " WITH ORDINALITY u(h, o) ORDER BY o), ',')"
		  . " FROM generate_series(1, $log_n) n, generate_series(0, n - 1) i"))
{
	my ($n, $i, $p) = split /\|/, $_, -1;
	$lincl{"$i/$n"} = unhex_list($p);
}
is(scalar keys %lincl, $log_n * ($log_n + 1) / 2, 'one query returned every inclusion proof of the log');
for my $n (@block_sizes)
{
	my @bad = grep { !verify_inclusion($_, $n, $llh[$_], $lincl{"$_/$n"} // [], $log_root{$n}) } 0 .. $n - 1;
	is_deeply(\@bad, [], "block size $n: inclusion_proof(i, $n) of every leaf verifies against root_hash($n)");
}
my @bad_all = grep {
	my ($i, $n) = split m{/};
	!verify_inclusion($i, $n, $llh[$i], $lincl{$_}, $log_root{$n})
} keys %lincl;
is_deeply(\@bad_all, [], 'every inclusion proof for every tree size 1..' . $log_n . ' verifies');
my @wrong_leaf = grep { verify_inclusion($_, $log_n, leaf_hash($ld[$_] . 'x'), $lincl{"$_/$log_n"}, $log_root{$log_n}) }
  0 .. $log_n - 1;
is_deeply(\@wrong_leaf, [], 'no proof verifies for leaf data with a byte appended');
($tried, @accepted) = (0);
for my $n (@block_sizes)
{
	for my $i (0, int($n / 3), $n - 1)
	{
		my @mut = inclusion_mutations($i, $n, $llh[$i], $lincl{"$i/$n"}, $log_root_of, $llh[ ($i + 1) % $log_n ]);
		$tried += @mut;
		push @accepted, map { "$i/$n: $_" } accepted_inclusion(@mut);
	}
}
is_deeply(\@accepted, [], "log inclusion proofs: all $tried mutations rejected");

# consistency proofs between all block sizes and from every size to the latest, one query
my %lcons;
my $pairs = "SELECT a.tree_size AS m, b.tree_size AS n FROM fintx.audit_blocks a JOIN fintx.audit_blocks b ON a.tree_size <= b.tree_size"
  . " UNION SELECT m, $log_n FROM generate_series(1, $log_n) m";
for (split /\n/, $node->safe_psql('postgres',
		"SELECT m, n, array_to_string(ARRAY(SELECT encode(h, 'hex') FROM unnest(fintx.consistency_proof(m, n))"
		  . " WITH ORDINALITY u(h, o) ORDER BY o), ',') FROM ($pairs) p"))
{
	my ($m, $n, $p) = split /\|/, $_, -1;
	$lcons{"$m/$n"} = unhex_list($p);
}
my $nblocks = scalar @block_sizes;
is(scalar(grep { my ($m, $n) = split m{/}; exists $block_root{$m} && exists $block_root{$n} } keys %lcons),
	$nblocks * ($nblocks + 1) / 2, 'a consistency proof for every pair of block sizes');
@bad_all = grep {
	my ($m, $n) = split m{/};
	!verify_consistency($m, $n, $log_root{$m}, $log_root{$n}, $lcons{$_})
} sort keys %lcons;
is_deeply(\@bad_all, [], 'every consistency proof between block sizes and to the latest size verifies');
@bad_all = grep {
	my ($m, $n) = split m{/};
	exists $block_root{$m} && exists $block_root{$n}
	  && !verify_consistency($m, $n, $block_root{$m}, $block_root{$n}, $lcons{$_})
} sort keys %lcons;
is_deeply(\@bad_all, [], 'consistency proofs between blocks verify against the tree heads the blocks recorded');
($tried, @accepted) = (0);
for my $key (grep { my ($m, $n) = split m{/}; exists $block_root{$m} && exists $block_root{$n} } sort keys %lcons)
{
	my ($m, $n) = split m{/}, $key;
	my @mut = consistency_mutations($m, $n, $lcons{$key}, $log_root_of);
	$tried += @mut;
	push @accepted, map { "$key: $_" } accepted_consistency(@mut);
}
is_deeply(\@accepted, [], "log consistency proofs: all $tried mutations rejected");
my ($v) = $node->safe_psql('postgres', 'SELECT ok || \'|\' || entries_checked FROM fintx.verify_audit()');
is($v, "true|$log_n", 'verify_audit() ok over the whole log');
note(sprintf('log proofs: %.1f s', time - $t0));

$node->stop;
done_testing();

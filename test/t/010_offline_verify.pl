# The offline verifier, fintx-verify: an export, a signed checkpoint and the verifier key are
# checked without PostgreSQL; every kind of tampering (a changed byte, a deleted, reordered or
# missing leaf, a forged or re-signed checkpoint, the wrong key) is caught; a consistency proof
# between a checkpoint saved earlier and a later one verifies, a tampered proof does not.
use strict;
use warnings;
use Digest::SHA qw(sha256 sha256_hex);
use Cwd ();
use File::Basename ();
use File::Path ();
use File::Spec;
use IPC::Run;
use MIME::Base64 qw(encode_base64 decode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# The program: $FINTX_VERIFY, the copy built in the source tree ($FINTX_ROOT), or the
# installed one on PATH (make install puts it in pg_config --bindir).
sub find_verifier
{
	return $ENV{FINTX_VERIFY} if $ENV{FINTX_VERIFY};
	if ($ENV{FINTX_ROOT})
	{
		for my $p ("$ENV{FINTX_ROOT}/fintx-verify", "$ENV{FINTX_ROOT}/tools/fintx-verify")
		{
			return $p if -x $p;
		}
	}
	for my $dir (File::Spec->path)
	{
		my $p = "$dir/fintx-verify";
		return $p if -x $p && !-d $p;
	}
	die "fintx-verify not found: build it with make (or set FINTX_VERIFY)";
}
my $verifier = find_verifier();
note("verifier: $verifier");

my $node = PostgreSQL::Test::Cluster->new('offline_verify');
$node->init;
my $key_file = $node->data_dir . '/fintx_signing.pem';
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key_file);
chmod 0600, $key_file;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'fintx'
fintx.database = 'postgres'
fintx.signing_key_file = '$key_file'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION fintx');

my $dir = PostgreSQL::Test::Utils::tempdir;

# Runs psql -XAt -c $sql with its output in $file, as an auditor would.
sub psql_to_file
{
	my ($sql, $file) = @_;
	my ($out, $err);
	my $ok = IPC::Run::run([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
			'-c', $sql, '-o', $file ], '>', \$out, '2>', \$err);
	die "psql failed: $err" unless $ok;
}

sub write_file
{
	my ($file, $content) = @_;
	open(my $fh, '>:raw', $file) or die "could not write $file: $!";
	print $fh $content;
	close($fh);
}

sub read_file
{
	return PostgreSQL::Test::Utils::slurp_file($_[0]);
}

# Runs fintx-verify; returns (exit status, stdout, stderr).
sub run_verifier
{
	my @args = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $verifier, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# One check: the exit status and a pattern on stdout (status 0) or stderr (otherwise).
sub verifier_is
{
	my ($name, $want_rc, $re, @args) = @_;
	my ($rc, $out, $err) = run_verifier(@args);
	is($rc, $want_rc, "$name: exit status $want_rc");
	like($want_rc == 0 ? $out : $err, $re, "$name: message");
	diag("stdout: $out\nstderr: $err") if $rc != $want_rc;
	return $out;
}

# ---------------------------------------------------------------------------
# entries: audited table rows, accounts and transfers
# ---------------------------------------------------------------------------
$node->safe_psql('postgres', q{
	CREATE TABLE public.t (id int PRIMARY KEY, v text, j jsonb);
	SELECT fintx.audit_table('public.t');
	INSERT INTO public.t VALUES (1, 'one', '{"b": 1, "aa": [1, 2.50, "x\ny"], "é": null}'),
	                            (2, E'tab\there', '"str"');
	UPDATE public.t SET v = 'uno' WHERE id = 1;
	DELETE FROM public.t WHERE id = 2;
	-- nested deeper than 10,000 levels: jsonb accepts it (within max_stack_depth), so must the verifier
	INSERT INTO public.t VALUES (100, 'deep', (repeat('[', 11000) || '1' || repeat(']', 11000))::jsonb);
	SELECT fintx.open_account('ov:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('ov:a', 'EUR');
	SELECT fintx.transfer('ov-1', 'ov:bank', 'ov:a', 1000);
});

# a checkpoint saved now, to be checked against a later one
my $cp1 = "$dir/checkpoint1.txt";
psql_to_file('SELECT fintx.checkpoint()', $cp1);
my ($size1) = read_file($cp1) =~ /\A[^\n]+\n(\d+)\n/;
ok($size1 >= 5, "first checkpoint covers the first entries (size $size1)");

for my $i (3 .. 12)
{
	$node->safe_psql('postgres', "INSERT INTO public.t VALUES ($i, 'row $i', '{\"i\": $i}')");
}
$node->safe_psql('postgres', q{
	UPDATE public.t SET j = j || '{"k": [true, false, null]}' WHERE id > 8;
	SELECT fintx.transfer('ov-2', 'ov:a', 'ov:bank', 250);
});

# checkpoint first, then the export: the export then holds at least the checkpoint's leaves
my $cp   = "$dir/checkpoint.txt";
my $keyf = "$dir/key.txt";
my $exp  = "$dir/export.tsv";
psql_to_file('SELECT fintx.checkpoint()', $cp);
psql_to_file('SELECT fintx.public_key()', $keyf);
psql_to_file('SELECT * FROM fintx.audit_export()', $exp);
my ($size) = read_file($cp) =~ /\A[^\n]+\n(\d+)\n/;
my @lines = split /\n/, read_file($exp);
is(scalar(@lines), $size, "the export has the checkpoint's $size leaves");
cmp_ok($size, '>', $size1, 'the log grew after the first checkpoint');
my $key = read_file($keyf);
chomp $key;

# ---------------------------------------------------------------------------
# the format, checked independently of fintx-verify (docs/audit-format.md)
# ---------------------------------------------------------------------------
{
	my ($idx, $hex) = split /\t/, $lines[2];
	my $bytes = pack('H*', $hex);
	my $hash = $node->safe_psql('postgres', "SELECT encode(entry_hash, 'hex') FROM fintx.audit_log WHERE leaf_index = 2");
	is(sha256_hex("\x00" . $bytes), $hash, 'leaf hash = SHA-256(0x00 || canonical bytes) = audit_log.entry_hash');
	is(substr($bytes, 0, 14, ''), 'fintx.audit.v1', 'entry starts with the magic');
	my %f;
	for my $tag (qw(i t a s c o k d))
	{
		my ($t, $len) = unpack('a N', substr($bytes, 0, 5, ''));
		is($t, $tag, "field '$tag' in its place");
		$f{$t} = substr($bytes, 0, $len, '');
	}
	is($bytes, '', 'nothing after the details');
	my $row = $node->safe_psql('postgres', q{
		SELECT entry_id || '|' || (extract(epoch FROM recorded_at) * 1000000)::bigint || '|' || actor || '|'
		       || action || '|' || object_type || '|' || object_id || '|' || details::text
		  FROM fintx.audit_log WHERE leaf_index = 2});
	is(join('|', unpack('q>', $f{i}), unpack('q>', $f{t}), @f{qw(a c o k d)}), $row,
		'fields decode to the audit_log row (details = jsonb text output)');
}

# the checkpoint is a signed note over "origin\nsize\nbase64(root)\n"
# (psql writes one more newline after the text)
like(read_file($cp), qr/\A([^\n]+)\n\d+\n[A-Za-z0-9+\/]{43}=\n\n\x{e2}\x{80}\x{94} \1 [A-Za-z0-9+\/]{91}=\n\n\z/,
	'checkpoint is a C2SP signed note');
like($key, qr/\A[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+\/]{44}\z/, 'public key is a C2SP verifier key');

# ---------------------------------------------------------------------------
# verification passes
# ---------------------------------------------------------------------------
verifier_is('intact log', 0, qr/^OK: $size leaves verified/, '--export', $exp, '--checkpoint', $cp,
	'--key', $keyf);
verifier_is('key given inline', 0, qr/^OK: /, '--export', $exp, '--checkpoint', $cp, '--key', $key);
my $printed = verifier_is('--print', 0, qr/^OK: /m, '--print', '--export', $exp, '--checkpoint', $cp,
	'--key', $keyf);
my @printed = split /\n/, $printed;
is(scalar(@printed), $size + 1, '--print writes one line per leaf and the summary');
like($printed[2], qr/^2\t\d+\t\d{4}-\d\d-\d\dT[\d:.]+Z\t[^\t]+\t[^\t]+\trow\.updated\ttable\tpublic\.t\t\{"new": /,
	'--print decodes the fields');
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $verifier, '--export', '-', '--checkpoint', $cp, '--key', $keyf ],
		'<', $exp, '>', \$out, '2>', \$err);
	is($? >> 8, 0, 'export read from standard input');
}

# ---------------------------------------------------------------------------
# a tampered export fails
# ---------------------------------------------------------------------------
sub export_variant
{
	my ($name, @l) = @_;
	my $f = "$dir/export-$name.tsv";
	write_file($f, join('', map { "$_\n" } @l));
	return $f;
}

# one flipped byte in the details of a row entry: still a well-formed entry, a different tree head
{
	my @l = @lines;
	my $marker = unpack('H*', '"table": "public.t"');
	my ($n) = grep { $l[$_] =~ /$marker/ } 1 .. $#l;
	my ($i, $hex) = split /\t/, $l[$n];
	my $pos = index($hex, $marker) + 2 * length('"table": "');    # the 'p' of public.t becomes 'q'
	substr($hex, $pos, 2) = sprintf('%02x', hex(substr($hex, $pos, 2)) ^ 0x01);
	$l[$n] = "$i\t$hex";
	verifier_is('flipped byte in one entry', 1, qr/tree head mismatch/, '--export', export_variant('flip', @l),
		'--checkpoint', $cp, '--key', $keyf);
}
# a flipped byte that breaks the encoding is reported with its leaf
{
	my @l = @lines;
	$l[4] =~ s/\t66/\t67/;    # 'f' of the magic becomes 'g'
	verifier_is('broken magic', 1, qr/leaf 4: malformed entry: it does not start with "fintx\.audit\.v1"/,
		'--export', export_variant('magic', @l), '--checkpoint', $cp, '--key', $keyf);
}
# a field length that runs past the end
{
	my @l = @lines;
	my ($i, $hex) = split /\t/, $l[1];
	$l[1] = "$i\t" . substr($hex, 0, length($hex) - 2);
	verifier_is('truncated entry', 1, qr/leaf 1: malformed entry: field 'd' \(details\) claims \d+ bytes/,
		'--export', export_variant('short', @l), '--checkpoint', $cp, '--key', $keyf);
}
{
	my @l = @lines;
	splice(@l, 5, 1);
	verifier_is('deleted line', 1, qr/line 6: leaf 5 is missing/, '--export', export_variant('deleted', @l),
		'--checkpoint', $cp, '--key', $keyf);
}
{
	# a stray byte at the end of a line (a space, a lone carriage return) is named
	my @l = @lines;
	$l[2] .= ' ';
	verifier_is('trailing space', 1, qr/leaf 2: byte 0x20 at position \d+ of its hex digits is not a hex digit \(a stray space, carriage return or other byte in the line\)/,
		'--export', export_variant('space', @l), '--checkpoint', $cp, '--key', $keyf);
	@l = @lines;
	$l[2] .= "\r\r";
	verifier_is('two carriage returns', 1, qr/leaf 2: byte 0x0d at position/,
		'--export', export_variant('crcr', @l), '--checkpoint', $cp, '--key', $keyf);
}
{
	my @l = @lines;
	my $last = $#l;
	pop @l;
	verifier_is('last line cut off', 1, qr/the checkpoint covers $size: leaf $last is missing$/m,
		'--export', export_variant('cut', @l), '--checkpoint', $cp, '--key', $keyf);
}
{
	# a tree size past 2^63 - 1 is refused as out of range (the signature is not reached)
	my $text = read_file($cp);
	$text =~ s/\A([^\n]+)\n\d+\n/$1\n9223372036854775808\n/;
	write_file("$dir/cp-huge.txt", $text);
	verifier_is('tree size 2^63', 1, qr/line 2 \(tree size\) is not a decimal number from 0 to 9223372036854775807: "9223372036854775808"/,
		'--export', $exp, '--checkpoint', "$dir/cp-huge.txt", '--key', $keyf);
}
{
	my @l = @lines;
	@l[3, 4] = @l[4, 3];
	verifier_is('two swapped lines', 1, qr/line 4: leaf 3 is missing \(the line holds leaf 4\)/,
		'--export', export_variant('swapped', @l), '--checkpoint', $cp, '--key', $keyf);
}
{
	# swapped entries under unchanged leaf indexes
	my @l = @lines;
	my ($i3, $h3) = split /\t/, $l[3];
	my ($i4, $h4) = split /\t/, $l[4];
	@l[3, 4] = ("$i3\t$h4", "$i4\t$h3");
	verifier_is('two swapped entries', 1, qr/tree head mismatch/, '--export', export_variant('reordered', @l),
		'--checkpoint', $cp, '--key', $keyf);
}
{
	my @l = @lines;
	$l[7] = $l[6] =~ s/^6\t/7\t/r;
	verifier_is('duplicated entry', 1, qr/leaves 6 and 7 hold the same entry/, '--export',
		export_variant('dup', @l), '--checkpoint', $cp, '--key', $keyf);
}
verifier_is('truncated export', 1, qr/the export has ${\($size - 2)} leaves but the checkpoint covers $size/,
	'--export', export_variant('truncated', @lines[ 0 .. $size - 3 ]), '--checkpoint', $cp, '--key', $keyf);
verifier_is('empty export', 1, qr/the export has 0 leaves/, '--export', export_variant('empty'),
	'--checkpoint', $cp, '--key', $keyf);

# ---------------------------------------------------------------------------
# a tampered checkpoint or the wrong key fails
# ---------------------------------------------------------------------------
my $note = read_file($cp) =~ s/\n+\z/\n/r;
my ($body, $sigline) = $note =~ /\A(.*?\n)\n(.*\n)\z/s;
my ($signame, $sigb64) = $sigline =~ /\A\x{e2}\x{80}\x{94} (\S+) (\S+)\n\z/;
my $sigblob = decode_base64($sigb64);
is(length($sigblob), 68, 'signature line holds key id and a 64-byte signature');
{
	my $blob = $sigblob;
	substr($blob, 20, 1) = chr(ord(substr($blob, 20, 1)) ^ 0x01);
	my $f = "$dir/cp-flipped-sig.txt";
	write_file($f, "$body\n\x{e2}\x{80}\x{94} $signame " . encode_base64($blob, '') . "\n");
	verifier_is('flipped signature byte', 1, qr/signature by key \S+ does not verify/, '--export', $exp,
		'--checkpoint', $f, '--key', $keyf);
}
{
	my $f = "$dir/cp-other-root.txt";
	my $b = $body =~ s/\n(\d+)\n/"\n" . ($1 - 1) . "\n"/er;
	write_file($f, "$b\n$sigline");
	verifier_is('altered checkpoint body', 1, qr/does not verify/, '--export', $exp, '--checkpoint', $f,
		'--key', $keyf);
}

# a second key re-signs the same body
my $other_key = "$dir/other.pem";
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $other_key);
write_file("$dir/body.txt", $body);
system_or_bail('openssl', 'pkeyutl', '-sign', '-rawin', '-inkey', $other_key, '-in', "$dir/body.txt",
	'-out', "$dir/body.sig");
my $other_sig = read_file("$dir/body.sig");
is(length($other_sig), 64, 'openssl made an Ed25519 signature');
{
	# the genuine key's name and id, the other key's signature
	my $f = "$dir/cp-resigned.txt";
	write_file($f, "$body\n\x{e2}\x{80}\x{94} $signame " . encode_base64(substr($sigblob, 0, 4) . $other_sig, '') . "\n");
	verifier_is('checkpoint signed by another key', 1, qr/does not verify/, '--export', $exp, '--checkpoint', $f,
		'--key', $keyf);
}
# the other key's verifier key (same name)
my ($other_pub) = do
{
	my $der;
	IPC::Run::run([ 'openssl', 'pkey', '-in', $other_key, '-pubout', '-outform', 'DER' ], '>', \$der)
	  or die 'openssl pkey failed';
	substr($der, -32);
};
my $other_id = substr(sha256($signame . "\n\x01" . $other_pub), 0, 4);
my $other_vkey = "$signame+" . unpack('H*', $other_id) . '+' . encode_base64("\x01" . $other_pub, '');
{
	my $f = "$dir/cp-other-key.txt";
	write_file($f, "$body\n\x{e2}\x{80}\x{94} $signame " . encode_base64($other_id . $other_sig, '') . "\n");
	verifier_is('checkpoint of another key, genuine verifier key', 1,
		qr/has no signature by key \Q$signame\E\+[0-9a-f]{8} \(1 signature by other keys\)/, '--export', $exp,
		'--checkpoint', $f, '--key', $keyf);
	verifier_is('the other key verifies its own signature', 0, qr/^OK: /, '--export', $exp, '--checkpoint', $f,
		'--key', $other_vkey);
}
verifier_is('wrong verifier key', 1, qr/has no signature by key \Q$signame\E\+[0-9a-f]{8}/, '--export', $exp,
	'--checkpoint', $cp, '--key', $other_vkey);
{
	# a verifier key whose id does not match its name and public key
	my $bad = $key;
	$bad =~ s/\+([0-9a-f])/'+' . ($1 eq '0' ? '1' : '0')/e;
	verifier_is('verifier key with a wrong key id', 1, qr/key id does not match/, '--export', $exp,
		'--checkpoint', $cp, '--key', $bad);
}
{
	# A verifier key is also a relative path. A file planted under the genuine key's name in
	# the directory the auditor runs in, holding the other key, must not replace the key typed:
	# the genuine checkpoint verifies, the other key's does not.
	my ($gid) = $key =~ /\+([0-9a-f]{8})\+/;
	my $plant = "$dir/plant";
	File::Path::make_path(File::Basename::dirname("$plant/$key"));
	write_file("$plant/$key", "$other_vkey\n");
	my $cwd = Cwd::getcwd();
	chdir($plant) or die "chdir $plant: $!";
	verifier_is('a file named like the key typed does not replace it', 0,
		qr/^OK: .* signed by \Q$signame\E\+$gid$/m, '--export', $exp, '--checkpoint', $cp, '--key', $key);
	verifier_is('so the other key\'s checkpoint fails there', 1,
		qr/has no signature by key \Q$signame\E\+$gid/, '--export', $exp, '--checkpoint',
		"$dir/cp-other-key.txt", '--key', $key);
	chdir($cwd) or die "chdir $cwd: $!";
}
# inputs that never end: refused, not read until memory runs out (under a 400 MB limit here,
# so that a regression fails instead of eating the machine's memory)
sub limited_verifier
{
	my ($script, @args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'sh', '-c', "ulimit -v 400000; $script", 'sh', $verifier, @args ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}
for my $opt ('--checkpoint', '--key')
{
	my %a = ('--export' => $exp, '--checkpoint' => $cp, '--key' => $keyf, $opt => '/dev/zero');
	my ($rc, $out, $err) = limited_verifier('exec "$@"', map { ($_, $a{$_}) } sort keys %a);
	is($rc, 1, "$opt /dev/zero: exit status 1");
	like($err, qr{could not read .*"/dev/zero": File too large}, "$opt /dev/zero: refused as too large");
}
{
	# getline() runs out of memory on a huge line: an error, not the end of the export (the
	# lines after it were never checked and the log passed)
	my ($rc, $out, $err) = limited_verifier(
		'v=$1; shift; { cat "$1"; head -c 600000000 /dev/zero; printf "\n9999\tgarbage\n"; } | "$v" --export - --checkpoint "$2" --key "$3"',
		$exp, $cp, $keyf);
	is($rc, 1, 'memory running out in the export: exit status 1');
	like($err, qr/could not read export "-": Cannot allocate memory/, 'memory running out in the export: named');
}
verifier_is('missing --key', 2, qr/--key are required/, '--export', $exp, '--checkpoint', $cp);
verifier_is('unknown option', 2, qr/unknown argument/, '--export', $exp, '--checkpoint', $cp, '--key', $keyf,
	'--bogus');

# ---------------------------------------------------------------------------
# consistency between the saved checkpoint and the later one
# ---------------------------------------------------------------------------
my $proof = "$dir/proof.txt";
psql_to_file("SELECT encode(h, 'hex') FROM unnest(fintx.consistency_proof($size1, $size)) h", $proof);
my @proof = split /\n/, read_file($proof);
ok(@proof >= 1, 'consistency proof has ' . scalar(@proof) . ' hashes');
verifier_is('consistency proof', 0, qr/previous checkpoint size $size1 is a prefix \(consistency proof verified\)/,
	'--export', $exp, '--checkpoint', $cp, '--key', $keyf, '--previous-checkpoint', $cp1,
	'--consistency-proof', $proof);
verifier_is('previous checkpoint without a proof', 0, qr/previous checkpoint size $size1 is a prefix/,
	'--export', $exp, '--checkpoint', $cp, '--key', $keyf, '--previous-checkpoint', $cp1);
{
	my @p = @proof;
	substr($p[0], 10, 1) = substr($p[0], 10, 1) eq '0' ? '1' : '0';
	my $f = "$dir/proof-tampered.txt";
	write_file($f, join('', map { "$_\n" } @p));
	verifier_is('tampered consistency proof', 1, qr/consistency proof from tree size $size1 to $size .* does not verify/,
		'--export', $exp, '--checkpoint', $cp, '--key', $keyf, '--previous-checkpoint', $cp1,
		'--consistency-proof', $f);
	$f = "$dir/proof-short.txt";
	write_file($f, join('', map { "$_\n" } @proof[ 0 .. $#proof - 1 ]));
	verifier_is('truncated consistency proof', 1, qr/does not verify/, '--export', $exp, '--checkpoint', $cp,
		'--key', $keyf, '--previous-checkpoint', $cp1, '--consistency-proof', $f);
}
verifier_is('checkpoints in the wrong order', 1, qr/previous checkpoint has tree size $size, more than/,
	'--export', $exp, '--checkpoint', $cp1, '--key', $keyf, '--previous-checkpoint', $cp);
{
	# history rewritten before the old checkpoint, consistent with the new root: caught by the prefix
	my @l = @lines;
	@l[0, 1] = ("0\t" . (split /\t/, $lines[1])[1], "1\t" . (split /\t/, $lines[0])[1]);
	verifier_is('rewritten history before the saved checkpoint', 1,
		qr/the first $size1 leaves of the export hash to \S+, not to the root of the previous checkpoint/,
		'--export', export_variant('rewritten', @l), '--checkpoint', $cp, '--key', $keyf,
		'--previous-checkpoint', $cp1);
}
# the saved checkpoint still verifies against the (longer) export
verifier_is('old checkpoint, longer export', 0, qr/^OK: $size1 leaves verified.*; ${\($size - $size1)} more exported leaves/,
	'--export', $exp, '--checkpoint', $cp1, '--key', $keyf);

# ---------------------------------------------------------------------------
# an empty log
# ---------------------------------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE empty_log');
$node->safe_psql('empty_log', 'CREATE EXTENSION fintx');
{
	my ($out, $err);
	IPC::Run::run([ 'psql', '-XAtq', '-d', $node->connstr('empty_log'), '-c', 'SELECT fintx.checkpoint()',
			'-o', "$dir/cp-empty.txt" ], '>', \$out, '2>', \$err) or die "psql: $err";
	write_file("$dir/export-none.tsv", '');
	# each database signs under its own name (fintx.local/<system id>/<database>)
	write_file("$dir/key-empty.txt", $node->safe_psql('empty_log', 'SELECT fintx.public_key()'));
	verifier_is('empty log', 0, qr/^OK: 0 leaves verified/, '--export', "$dir/export-none.tsv", '--checkpoint',
		"$dir/cp-empty.txt", '--key', "$dir/key-empty.txt");
	verifier_is('another database\'s key does not verify this log', 1, qr/has no signature by key \Q$signame\E\+[0-9a-f]{8}/, '--export', "$dir/export-none.tsv",
		'--checkpoint', "$dir/cp-empty.txt", '--key', $keyf);

	# One key file signs for every database of the server. Relabelled with the first
	# database's key name and id, the other log's signature verifies with the first
	# database's key: the origin, which the signature covers, gives it away.
	my $other_note = read_file("$dir/cp-empty.txt") =~ s/\n+\z/\n/r;
	my ($other_body, $other_line) = $other_note =~ /\A(.*?\n)\n(.*\n)\z/s;
	my ($other_b64) = $other_line =~ /\A\x{e2}\x{80}\x{94} \S+ (\S+)\n\z/;
	my $relabelled = "$dir/cp-relabelled.txt";
	write_file($relabelled, "$other_body\n\x{e2}\x{80}\x{94} $signame "
		  . encode_base64(substr($sigblob, 0, 4) . substr(decode_base64($other_b64), 4), '') . "\n");
	my ($other_origin) = $other_body =~ /\A([^\n]+)\n/;
	isnt($other_origin, $signame, 'the two databases have different origins');
	verifier_is('another log\'s checkpoint relabelled with this log\'s key name', 1,
		qr/is of log "\Q$other_origin\E", not of log "\Q$signame\E" that the verifier key names/,
		'--export', "$dir/export-none.tsv", '--checkpoint', $relabelled, '--key', $keyf);
}

# a co-signature of any length by another key (a witness, say) is ignored
{
	my $f = "$dir/cp-cosigned.txt";
	write_file($f, "$body\n$sigline\x{e2}\x{80}\x{94} witness.example/w1 " . encode_base64('w' x 200, '') . "\n");
	verifier_is('a long signature line of another key', 0, qr/^OK: $size leaves verified/, '--export', $exp,
		'--checkpoint', $f, '--key', $keyf);
}

# --print lists only what the checkpoint covers, not the leaves exported after it
{
	my $out = verifier_is('--print, old checkpoint, longer export', 0, qr/^OK: $size1 leaves verified/m, '--print',
		'--export', $exp, '--checkpoint', $cp1, '--key', $keyf);
	my @rows = grep { !/^OK: / } split /\n/, $out;
	is(scalar(@rows), $size1, "--print prints the $size1 covered entries, not the " . ($size - $size1) . ' after them');
	is((split /\t/, $rows[-1])[0], $size1 - 1, 'the last printed leaf is the last covered one');
}

# --print shows what an export holds without letting it drive the auditor's terminal: a C1
# control (U+009B, CSI) in audited text, which jsonb prints raw, comes out escaped
{
	$node->safe_psql('postgres', q{INSERT INTO public.t VALUES (9001, E'\u009b31m red', '{}')});
	my ($cpc, $expc) = ("$dir/cp-c1.txt", "$dir/export-c1.tsv");
	psql_to_file('SELECT fintx.checkpoint()', $cpc);
	psql_to_file('SELECT * FROM fintx.audit_export()', $expc);
	my $out = verifier_is('--print, C1 control in an entry', 0, qr/^OK: /m, '--print', '--export', $expc,
		'--checkpoint', $cpc, '--key', $keyf);
	like($out, qr/\Q\xc2\x9b\E31m red/, 'the control is printed as \xNN escapes');
	unlike($out, qr/\x{c2}\x{9b}/, 'and never raw');
}

$node->stop;
done_testing();

# Copyright fintx contributors
#
# 031_doc_references.pl — the reference implementations printed in docs/ are
# run as they stand on the page (Python 3, standard library) against fintx:
#   - docs/idempotency.md, request fingerprint: the program prints exactly the
#     output the page shows; over requests with awkward metadata (key order,
#     duplicate keys, escapes, non-ASCII text, surrogate pairs, numbers in
#     every notation, nesting), amounts, holds and timeouts it computes the
#     fingerprint fintx.request_fingerprint() returns; for post and void it
#     computes the fingerprint fintx journals for a real post_pending and
#     void_pending;
#   - docs/authorization.md, the signed message: signing_message() of the page,
#     with the fingerprint code above, gives the bytes fintx.signing_message()
#     returns, for one request and for a batch;
#   - docs/audit-format.md, the export checker: on a real export and signed
#     checkpoint it prints every entry as fintx-verify --print does and finds
#     the tree head matching; an export with one changed entry, or one leaf
#     missing, is refused (exit status not 0).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use File::Spec;
use FintxTest;
use DocTest;

# the pages: a copy make check makes (FINTX_DOCS), or the source tree's
my $docs = $ENV{FINTX_DOCS} // ($ENV{FINTX_ROOT} ? "$ENV{FINTX_ROOT}/docs" : undef)
  or plan skip_all => 'neither FINTX_DOCS nor FINTX_ROOT is set';
my ($python) = grep { -x $_ && !-d $_ } map { "$_/python3" } File::Spec->path;
# make check installs python3 (test/scripts/bootstrap.sh); a run without it must not pass silently
BAIL_OUT('python3 is not installed (test/scripts/bootstrap.sh installs it)') unless $python;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $key_file = "$dir/signing.pem";
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key_file);
chmod 0600, $key_file;
my $node = fintx_node('docref', "fintx.signing_key_file = '$key_file'");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sub write_file
{
	my ($file, $content) = @_;
	open(my $fh, '>:raw', $file) or die "could not write $file: $!";
	print $fh $content;
	close($fh);
}

# Runs a program; returns (exit status, stdout, stderr).
sub run
{
	my ($out, $err) = ('', '');
	IPC::Run::run([@_], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# ---------------------------------------------------------------------------
# docs/idempotency.md: the request fingerprint
# ---------------------------------------------------------------------------
my $idem = "$docs/idempotency.md";
write_file("$dir/fintx_fingerprint.py", doc_find($idem, qr/\A#!\/usr\/bin\/env python3\n"""Reference implementation of the fintx request fingerprint/));
my ($rc, $out, $err) = run($python, "$dir/fintx_fingerprint.py");
is($rc, 0, 'idempotency.md: the reference implementation runs') or diag($err);
my $shown = doc_find($idem, qr/\A\$ python3 fintx_fingerprint\.py\n/) =~ s/\A[^\n]*\n//r;
is($out, $shown, 'idempotency.md: it prints what the page shows');

# requests: from, to, amount, metadata (JSON text), pending, timeout (SQL) and (months, days, us)
my @requests = (
	[ 'a', 'b', 1, '{}', 0, undef, undef ],
	[ 'customer:alice', 'merchant:shop', 4000, '{"channel": "web", "order": "2001"}', 1, '15 minutes', [ 0, 0, 900000000 ] ],
	[ 'x.y/z@q-1', 'w_2', '9223372036854775807', '{"b": 1, "a": 2, "aa": 3, "ab": {"zz": [1, 2.50, "x"], "y": null}}', 0, undef, undef ],
	[ 'a', 'b', 7, '{"é": "ü", "emoji": "😀", "ctl": "\u0001\u001f\u007f", "esc": "a\"b\\\\c\n\t\r\b\f/"}', 0, undef, undef ],
	[ 'a', 'b', 7, '{"n": [1e3, 1.5e-3, -0, 0.0, -0.0, 1E+2, 123456789012345678901234567890, 0.000001, -12.340, 1e-20]}', 0, undef, undef ],
	[ 'a', 'b', 7, '{"a": 1, "a": 2, "b": {"c": 1, "c": [3]}}', 0, undef, undef ],
	[ 'a', 'b', 7, '{"t": true, "f": false, "z": null, "": "empty key", " ": 1}', 1, undef, undef ],
	[ 'a', 'b', 7, '{"deep": [[[[{"k": [[]]}]]]], "o": {}, "s": "\u00e9 \ud83d\ude00"}', 1, '1 mon 2 days 03:00:00.5', [ 1, 2, 10800500000 ] ],
	[ 'a', 'b', 7, '{}', 1, '2 days', [ 0, 2, 0 ] ],
	[ 'a', 'b', 7, '{}', 1, '48:00:00', [ 0, 0, 172800000000 ] ],
	[ 'a', 'b', 7, '{"k": "line\u2028sep", "long": "' . ('x' x 3000) . '"}', 0, '-1 years', [ -12, 0, 0 ] ],
);
my $driver = <<'PY';
import json, sys
sys.path.insert(0, sys.argv[1])
import fintx_fingerprint as f
for line in sys.stdin:
    r = json.loads(line)
    print(f.fingerprint(f.transfer_encoding(r[0], r[1], int(r[2]), metadata=r[3], pending=bool(r[4]),
                                            timeout=None if r[5] is None else tuple(r[5]))))
PY
write_file("$dir/driver.py", $driver);
my $input = '';
my @sql_rows;
for my $r (@requests)
{
	my ($f, $t, $a, $m, $p, $x, $xt) = @$r;
	# the metadata text goes to Python as it is (a JSON string of it)
	(my $mj = $m) =~ s/(["\\])/\\$1/g;
	$mj =~ s/\n/\\n/g;
	$input .= '["' . $f . '", "' . $t . '", "' . $a . '", "' . $mj . '", ' . $p . ', '
	  . ($xt ? '[' . join(', ', @$xt) . ']' : 'null') . "]\n";
	push @sql_rows, "encode(fintx.request_fingerprint('$f', '$t', $a, \$m\$$m\$m\$::jsonb, " . ($p ? 'true' : 'false')
	  . ', ' . (defined $x ? "'$x'::interval" : 'NULL') . "), 'hex')";
}
my ($py_out, $py_err) = ('', '');
IPC::Run::run([ $python, "$dir/driver.py", $dir ], '<', \$input, '>', \$py_out, '2>', \$py_err);
is($py_err, '', 'idempotency.md: the reference implementation takes every request');
my @py = split /\n/, $py_out;
my @pg = split /\n/, sql(join(";\n", map { "SELECT $_" } @sql_rows));
is(scalar @py, scalar @requests, 'one fingerprint per request from the reference');
for my $i (0 .. $#requests)
{
	is($py[$i], $pg[$i], "idempotency.md: request " . ($i + 1) . ": the reference computes fintx's fingerprint");
}

# post and void: the fingerprints fintx journals for them
sql(q{
	SELECT fintx.open_account('ref:src', 'EUR', allow_negative => true);
	SELECT fintx.open_account('ref:dst', 'EUR');
	SELECT fintx.transfer('ref-h1', 'ref:src', 'ref:dst', 500, pending => true);
	SELECT fintx.transfer('ref-h2', 'ref:src', 'ref:dst', 600, pending => true);
	SELECT fintx.transfer('ref-h3', 'ref:src', 'ref:dst', 700, pending => true);
});
my ($h1, $h2, $h3) = split /\n/, sql(q{SELECT transfer_id FROM fintx.idempotency_keys
	WHERE idempotency_key IN ('ref-h1', 'ref-h2', 'ref-h3') ORDER BY idempotency_key});
sql("SELECT fintx.post_pending('ref-p1', $h1, 123); SELECT fintx.post_pending('ref-p2', $h2); SELECT fintx.void_pending('ref-v3', $h3);");
my @journal = split /\n/, sql(q{SELECT encode(fingerprint, 'hex') FROM fintx.idempotency_keys
	WHERE idempotency_key IN ('ref-p1', 'ref-p2', 'ref-v3') ORDER BY idempotency_key});
write_file("$dir/driver2.py", <<"PY");
import sys
sys.path.insert(0, sys.argv[1])
import fintx_fingerprint as f
print(f.fingerprint(f.post_encoding($h1, 123)))
print(f.fingerprint(f.post_encoding($h2)))
print(f.fingerprint(f.void_encoding($h3)))
PY
($rc, $out, $err) = run($python, "$dir/driver2.py", $dir);
is_deeply([ split /\n/, $out ], \@journal, 'idempotency.md: the reference computes the journaled fingerprints of a partial post, a full post and a void');

# ---------------------------------------------------------------------------
# docs/authorization.md: the signed message
# ---------------------------------------------------------------------------
my $signing = doc_find("$docs/authorization.md", qr/\Aimport hashlib, struct\n.*def signing_message/s);
write_file("$dir/signing.py", <<"PY");
import sys
sys.path.insert(0, sys.argv[1])
from fintx_fingerprint import field, transfer_encoding
$signing
print(msg.hex())
batch = signing_message("payments", "postgres",
                        [("sig-2", transfer_encoding("pay:ops", "pay:cust:1", 40)),
                         ("sig-3", transfer_encoding("pay:ops", "pay:cust:1", 60, metadata='{"r": "é"}',
                                                     pending=True, timeout=(0, 0, 900000000)))], batch=True)
print(batch.hex())
PY
($rc, $out, $err) = run($python, "$dir/signing.py", $dir);
is($rc, 0, 'authorization.md: signing_message() runs') or diag($err);
my ($one, $many) = split /\n/, $out;
is($one, sql(q{SELECT encode(fintx.signing_message('payments',
	'{"idempotency_key": "sig-1", "from_account": "pay:ops", "to_account": "pay:cust:1", "amount": 25}'), 'hex')}),
	"authorization.md: the page's signed message of one request is fintx's");
is($many, sql(q{SELECT encode(fintx.signing_message('payments',
	'[{"idempotency_key": "sig-2", "from_account": "pay:ops", "to_account": "pay:cust:1", "amount": 40},
	  {"idempotency_key": "sig-3", "from_account": "pay:ops", "to_account": "pay:cust:1", "amount": 60,
	   "metadata": {"r": "é"}, "pending": true, "timeout": "15 minutes"}]'), 'hex')}),
	"authorization.md: the page's signed message of a batch is fintx's");

# ---------------------------------------------------------------------------
# docs/audit-format.md: the export checker
# ---------------------------------------------------------------------------
sql(q{
	CREATE TABLE public.t (id int PRIMARY KEY, v text, j jsonb);
	SELECT fintx.audit_table('public.t');
	INSERT INTO public.t VALUES (1, E'tab\there\\back', '{"b": 1, "aa": [1, 2.50, "x\ny"], "é": null, "c1": "\u0085"}'),
	                            (2, 'two', '"str"');
	UPDATE public.t SET v = 'uno' WHERE id = 1;
	DELETE FROM public.t WHERE id = 2;
	SELECT fintx.transfer_batch('[{"idempotency_key": "ref-b1", "from_account": "ref:src", "to_account": "ref:dst", "amount": 5},
	                              {"idempotency_key": "ref-b2", "from_account": "ref:src", "to_account": "ref:dst", "amount": 6}]');
});
my ($exp, $cp) = ("$dir/export.tsv", "$dir/checkpoint.txt");
write_file($cp, sql('SELECT fintx.checkpoint()') . "\n");
write_file($exp, sql('SELECT * FROM fintx.audit_export()') . "\n");
write_file("$dir/fintx.pub", sql('SELECT fintx.public_key()') . "\n");
my ($size) = PostgreSQL::Test::Utils::slurp_file($cp) =~ /\A[^\n]+\n(\d+)\n/;
is($size, sql('SELECT count(*) FROM fintx.audit_entries'), "the checkpoint covers every entry ($size)");
write_file("$dir/fintx_audit_ref.py", doc_find("$docs/audit-format.md", qr/\A#!\/usr\/bin\/env python3\n"""fintx_audit_ref\.py/));
($rc, $out, $err) = run($python, "$dir/fintx_audit_ref.py", $exp, $cp);
is($rc, 0, 'audit-format.md: the reference accepts the export') or diag($err);
my @ref = split /\n/, $out;
like($ref[-1] // '', qr/^tree head of $size leaves matches the checkpoint of /, 'audit-format.md: the tree head matches the checkpoint');
my ($vrc, $vout, $verr) = run('fintx-verify', '--export', $exp, '--checkpoint', $cp, '--key', "$dir/fintx.pub", '--print');
is($vrc, 0, 'fintx-verify accepts the same export') or diag($verr);
my @ver = split /\n/, $vout;
is(scalar(@ref), $size + 1, 'the reference prints one line per leaf and the verdict');
is_deeply([ @ref[ 0 .. $#ref - 1 ] ], [ @ver[ 0 .. $#ver - 1 ] ], 'audit-format.md: it prints every entry as fintx-verify --print does');

# a changed entry that is still well-formed: the value "uno" of the UPDATE's row image
# becomes "unn"; then one that is not: its last byte (the closing brace of the details)
my @lines = split /\n/, PostgreSQL::Test::Utils::slurp_file($exp);
my ($uno) = grep { $lines[$_] =~ /22756e6f22/ } 0 .. $#lines;
ok(defined $uno, 'the export holds the updated row image');
my @bad = @lines;
$bad[$uno] =~ s/22756e6f22/22756e6e22/;
write_file("$dir/changed.tsv", join("\n", @bad) . "\n");
($rc, $out, $err) = run($python, "$dir/fintx_audit_ref.py", "$dir/changed.tsv", $cp);
is($rc, 1, 'audit-format.md: an export with a changed value fails the check');
like($out, qr/^tree head of $size leaves DOES NOT match/m, '... the tree head does not match');
@bad = @lines;
$bad[$uno] =~ s/([0-9a-f]{2})$/ sprintf('%02x', hex($1) ^ 1) /e;
write_file("$dir/broken.tsv", join("\n", @bad) . "\n");
($rc, $out, $err) = run($python, "$dir/fintx_audit_ref.py", "$dir/broken.tsv", $cp);
isnt($rc, 0, 'audit-format.md: an export with a malformed entry is refused');
like($err, qr/fintx_audit_ref: export line @{[ $uno + 1 ]}: /, '... naming the line');
# one leaf left out: the next one's index no longer follows
my @gap = @lines[ 0 .. 1, 3 .. $#lines ];
write_file("$dir/gap.tsv", join("\n", @gap) . "\n");
($rc, $out, $err) = run($python, "$dir/fintx_audit_ref.py", "$dir/gap.tsv", $cp);
isnt($rc, 0, 'audit-format.md: an export with a leaf missing is refused');
like($err, qr/fintx_audit_ref: export line 3: not leaf 2/, '... naming the line');

done_testing();

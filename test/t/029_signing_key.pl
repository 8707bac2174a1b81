# Copyright fintx contributors
#
# 029_signing_key.pl — the signing key file, mistakes with it, and delivery
# while sealing fails:
#   - a FIFO, a directory, an encrypted key or a key that is too large: 55000
#     at once (a FIFO used to block the worker and checkpoint() in open(),
#     unkillable; an encrypted key prompted on the postmaster's terminal);
#   - a key file replaced within the same second, its modification time kept
#     (cp -p, mv): the new key is used, also by a session that cached the old;
#   - fintx.signing_key_file cleared by mistake after signed blocks: sealing
#     refuses (55000) instead of writing an unsigned block that
#     verify_audit() would report as forged for ever;
#   - while sealing fails (the two cases above), the worker still sequences
#     the outbox: every event is delivered, even with fintx.outbox_wakeup = 0.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use POSIX qw(mkfifo);
use FintxTest;

my $dir = PostgreSQL::Test::Utils::tempdir;
my ($key, $key_a, $key_b) = ("$dir/signing.pem", "$dir/a.pem", "$dir/b.pem");
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key_a);
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key_b);
system_or_bail('cp', '-p', $key_a, $key);

my $node = fintx_node('keys', "fintx.seal_interval = '50ms'", "fintx.outbox_wakeup = 0",
	"fintx.signing_key_file = '$key'");
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql(q{SELECT fintx.open_account('k:bank', 'EUR', allow_negative => true);
	  SELECT fintx.open_account('k:a', 'EUR');
	  SELECT fintx.create_consumer('keys');});

# psql -c with terse errors and a time limit: (stdout, sqlstate or '', stderr)
sub try_sql
{
	my ($q) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', $q, extra_params => [ '-v', 'VERBOSITY=verbose' ],
		timeout => 30);
	return ($out, first_sqlstate($err) // '', $err);
}

# sets fintx.signing_key_file and reloads; waits until a new session sees it
sub set_key_file
{
	my ($path) = @_;
	sql("ALTER SYSTEM SET fintx.signing_key_file = '$path'");
	sql('SELECT pg_reload_conf()');
	for (1 .. 100)
	{
		last if sql('SHOW fintx.signing_key_file') eq $path;
		usleep(50_000);
	}
}

# waits until the outbox is sequenced up to every event written; returns whether it was
sub all_sequenced
{
	for (1 .. 100)
	{
		return 1 if sql('SELECT fintx.outbox_tail() = (SELECT count(*) FROM fintx.outbox)') eq 't';
		usleep(50_000);
	}
	return 0;
}

my ($out, $state, $err);
sql(q{SELECT fintx.transfer('k-1', 'k:bank', 'k:a', 1)});
($out, $state) = try_sql('SELECT fintx.seal() >= 0, fintx.checkpoint() IS NOT NULL');
is("$out|$state", 't|t|', 'a key file: the log seals and checkpoint() signs');

# --- files that are not a key: refused at once
mkfifo("$dir/fifo", 0600) or die "mkfifo: $!";
mkdir("$dir/keydir") or die "mkdir: $!";
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-aes256', '-pass', 'pass:secret',
	'-out', "$dir/encrypted.pem");
open(my $big, '>', "$dir/big.pem") or die;
print $big ('x' x 70000);
close $big;
for my $case ([ 'fifo', 'is not a regular file' ], [ 'keydir', 'is not a regular file' ],
	[ 'encrypted.pem', 'does not hold an Ed25519 private key' ],
	[ 'big.pem', 'is too large to be a key file' ])
{
	my ($file, $msg) = @$case;
	set_key_file("$dir/$file");
	my $t0 = time;
	($out, $state, $err) = try_sql('SELECT fintx.checkpoint()');
	is($state, '55000', "checkpoint() with $file as the key file: 55000");
	like($err, qr/\Q$msg\E/, "... saying it $msg");
	ok(time - $t0 < 10, '... at once (the worker and the call do not block in open)');
	# the worker's sealing passes fail the same way; the outbox is sequenced all the same
	sql(qq{SELECT fintx.transfer('k-$file', 'k:bank', 'k:a', 1)});
	ok(all_sequenced(), "... and the outbox is still sequenced (outbox_wakeup = 0)");
}

# --- a key file replaced within one second, its modification time kept
set_key_file($key);
my $session = quiet_session($node);
my $pub_a = quiet_safe($session, 'SELECT fintx.public_key()');
my $stat_before = join(',', (stat $key)[9]);
system_or_bail('cp', '-p', $key_b, "$dir/new.pem");
utime((stat $key)[8], (stat $key)[9], "$dir/new.pem");
rename("$dir/new.pem", $key) or die "rename: $!";
is(join(',', (stat $key)[9]), $stat_before, 'the new key file has the old modification time');
my $pub_b = quiet_safe($session, 'SELECT fintx.public_key()');
isnt($pub_b, $pub_a, 'a session that had read the old key reads the new one');
is(sql('SELECT fintx.public_key()'), $pub_b, 'as a new session does');
sql(q{SELECT fintx.transfer('k-2', 'k:bank', 'k:a', 1)});
like(quiet_safe($session, 'SELECT fintx.seal() >= 0, fintx.checkpoint()'), qr/^t\|/, 'the log seals under the new key');
$session->quit;
# the blocks signed with the first key stay verifiable through fintx.trusted_keys
sql("ALTER SYSTEM SET fintx.trusted_keys = '$pub_a'");
sql('SELECT pg_reload_conf()');

# --- the key file cleared by mistake after signed blocks
set_key_file('');
sql(q{SELECT fintx.transfer('k-3', 'k:bank', 'k:a', 1)});
($out, $state, $err) = try_sql('SELECT fintx.seal()');
is($state, '55000', 'sealing without a key after signed blocks: 55000');
like($err, qr/cannot seal audit block \d+ without a signing key: block \d+ is signed/, '... naming the blocks');
ok(all_sequenced(), 'the worker still sequences the outbox');
is(sql(q{SELECT count(*) FROM fintx.audit_blocks WHERE signature IS NULL}), '0', 'no unsigned block was written');
$node->wait_for_log(qr/cannot seal audit block \d+ without a signing key/);
# a key again (the trusted old one is not needed: the new key signs, verify_audit trusts the configured key)
set_key_file($key);
($out, $state) = try_sql(q{SELECT fintx.seal() >= 0, (SELECT ok FROM fintx.verify_audit())});
is("$out|$state", 't|t|', 'with the key back the log seals again');
is(sql(q{SELECT count(*) FROM fintx.audit_entries e WHERE e.details->>'idempotency_key' = 'k-3'
		   AND EXISTS (SELECT FROM fintx.audit_leaves l WHERE l.entry_id = e.entry_id)}), '1',
	'and the entry written meanwhile is in it');

# --- every event reached the consumer once, in order
my $events = sql(q{SELECT count(*), count(DISTINCT position), min(position), max(position)
					 FROM fintx.poll('keys', 10000)});
my $total = sql('SELECT count(*) FROM fintx.outbox');
is($events, "$total|$total|1|$total", "the consumer gets all $total events once");
is(reconcile_rows($node), '', 'reconcile() is clean');
$node->stop;
done_testing();

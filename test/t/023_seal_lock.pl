# A session that seals in a transaction it keeps open holds no sealing lock (the worker
# seals for it); the sealing lock held by a transaction: the worker does not wait for it
# (holds still expire), and seals once the lock is free; a
# checkpoint() that waited for the lock while the signing key file changed signs with the
# key it reports; without a worker, outbox_tail() sees the batch its own call sequenced;
# verify_audit() refuses a start beyond an empty log; checkpoint origins hold no spaces or "+"
# (they are C2SP key names): the setting refuses them, the default origin escapes them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(decode_base64);
use Time::HiRes qw(time usleep);
use FintxTest;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $key = "$dir/signing.pem";
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', $key);
system_or_bail('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', "$dir/other.pem");

my $node = fintx_node('seal_lock', "fintx.seal_interval = '50ms'", "fintx.expire_interval = '100ms'",
	"max_prepared_transactions = 5",
	"fintx.signing_key_file = '$key'");
my $poll = quiet_session($node);

# Polls $sql in database postgres until it returns $want (at most $secs seconds); returns the last value.
sub wait_for
{
	my ($sql, $want, $secs) = @_;
	my ($ok, $got) = poll_until($poll, $sql, $want, $secs);
	return $ok ? $want : $got;
}

is(wait_for("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker'", '1', 10),
	'1', 'the worker runs');
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('s:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('s:a', 'EUR');
	SELECT fintx.open_account('s:b', 'EUR');
	SELECT fintx.transfer('s-fund', 's:bank', 's:a', 1000);
});
my $all_sealed = q{SELECT coalesce((SELECT tree_size FROM fintx.audit_blocks ORDER BY block_id DESC LIMIT 1), 0) = (SELECT count(*) FROM fintx.audit_entries)};
is(wait_for($all_sealed, 't', 10), 't', 'the worker seals what was committed');
my $worker_lock_waits = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker' AND wait_event_type = 'Lock'};

# A session with an open transaction that ran $sql.
sub open_session
{
	my ($sql) = @_;
	my $session = quiet_session($node);
	quiet_safe($session, 'BEGIN');
	quiet_safe($session, $sql);
	return $session;
}

# seal() in $session (a new connection if undef) must seal everything committed
# (test $name); returns how many seconds it took.
sub timed_seal_all
{
	my ($session, $name) = @_;
	my $sql = q{SELECT fintx.seal() = (SELECT count(*) FROM fintx.audit_entries)};
	my $t0 = time;
	is(defined $session ? quiet_query($session, $sql) : $node->safe_psql('postgres', $sql), 't', $name);
	return time - $t0;
}

# A session that seals inside a transaction it keeps open (an auditor's psql with
# autocommit off, say): the worker runs the passes it asks for in transactions of its own,
# so the session holds no sealing lock, and sealing and the outbox's positions go on.
my $open = quiet_session($node);
quiet_safe($open, 'BEGIN');
is(quiet_query($open, 'SELECT fintx.seal() = fintx.tree_size()'), 't', 'seal() and tree_size() in an open transaction');
like(quiet_query($open, 'SELECT fintx.checkpoint()'), qr/^\S+\n\d+\n/, 'checkpoint() in the open transaction');
like(quiet_query($open, 'SELECT fintx.inclusion_proof(0, fintx.tree_size())::text'), qr/^\{/,
	'inclusion_proof() in the open transaction');
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-o1', 's:a', 's:b', 1)});
is(wait_for($all_sealed, 't', 10), 't', 'the worker seals a transfer committed while that transaction stays open');
is(wait_for(q{SELECT fintx.outbox_tail() = (SELECT count(*) FROM fintx.outbox)}, 't', 10), 't',
	'and gives its outbox event a position');
my $open_pid = quiet_query($open, 'SELECT pg_backend_pid()');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $open_pid}), '0',
	'the open transaction holds no sealing lock');
quiet_safe($open, 'COMMIT');
$open->quit;

# A session keeps an account row locked while a hold on that account expires: the worker
# skips the hold in its batch, and waits for the row at most 200 ms at a time once the
# hold is overdue by a second, so it goes on sealing.
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('s:c', 'EUR');
	SELECT fintx.transfer('s-busy-h', 's:b', 's:a', 1, pending => true, timeout => '1 second');
});
my $busy = open_session(q{SELECT fintx.transfer('s-busy', 's:a', 's:b', 1)});
# sample the worker's lock waits for 3 s (the hold is overdue after 2 s): the longest
my ($longest, $stretch, $t_prev) = (0, 0, time);
for (1 .. 150)
{
	my $now = time;
	$stretch = quiet_query($poll, $worker_lock_waits) eq '1' ? $stretch + ($now - $t_prev) : 0;
	$longest = $stretch if $stretch > $longest;
	$t_prev = $now;
	usleep(20_000);
}
ok($longest > 0 && $longest < 0.6, "the worker waits for the row the open transaction locked, but never long (longest wait $longest s)");
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.transfers WHERE status = 'expired'}), '0',
	'it skips the hold whose account is locked');
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-busy-2', 's:bank', 's:c', 1)});
is(wait_for(q{SELECT count(*) FROM fintx.audit_log WHERE details->>'idempotency_key' = 's-busy-2' AND leaf_index IS NOT NULL}, '1', 10),
	'1', 'and seals a transfer committed meanwhile');
quiet_safe($busy, 'COMMIT');
$busy->quit;
is(wait_for(q{SELECT count(*) FROM fintx.transfers WHERE status = 'expired'}, '1', 10), '1',
	'once the row is free the worker releases the hold');
is(wait_for($all_sealed, 't', 10), 't', 'and seals the rest');

# An account that is locked at nearly every moment (a transaction after another, as an
# account that takes transfer after transfer): a batch that skips locked rows would never
# release a hold on it; the worker queues for the row once the hold is overdue.
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('s:hot', 'EUR');
	SELECT fintx.transfer('s-hot-fund', 's:bank', 's:hot', 100);
	SELECT fintx.transfer('s-hot-h', 's:hot', 's:a', 1, pending => true, timeout => '1 second');
});
my $hot_locker = psql_start($node, 'locker',
	join('', map { "BEGIN; SELECT 1 FROM fintx.accounts WHERE code = 's:hot' FOR UPDATE; SELECT pg_sleep(0.15); COMMIT;\n" } 1 .. 60));
my $t_hot = time;
my ($hot_ok, $hot_wait) = poll_until($poll,
	q{SELECT count(*) FROM fintx.transfers t JOIN fintx.idempotency_keys k ON k.transfer_id = t.pending_id
	   WHERE k.idempotency_key = 's-hot-h' AND t.status = 'expired'}, '1', 8);
my $hot_elapsed = time - $t_hot;
my $lr = psql_finish($hot_locker);
ok($hot_ok && $hot_elapsed < 7, "a hold on an account locked at nearly every moment is released ($hot_elapsed s)");
is($lr->{err}, '', 'the locking transactions all went through');
is(wait_for(q{SELECT available FROM fintx.account_balances WHERE code = 's:hot'}, '100', 10), '100', 'its money is available again');

# Round robin: the oldest overdue hold sits on an account another session keeps locked;
# the worker gives up on it after 200 ms and tries the next one at the next pass, so a
# younger hold on a busy account is still released.
$node->safe_psql('postgres', q{
	SELECT fintx.open_account('s:stuck', 'EUR');
	SELECT fintx.transfer('s-stuck-fund', 's:bank', 's:stuck', 100);
	SELECT fintx.transfer('s-stuck-h', 's:stuck', 's:a', 1, pending => true, timeout => '1 second');
	SELECT fintx.transfer('s-hot-h2', 's:hot', 's:a', 1, pending => true, timeout => '1 second');
});
my $stuck = open_session(q{SELECT 1 FROM fintx.accounts WHERE code = 's:stuck' FOR UPDATE});
my $locker2 = psql_start($node, 'locker2',
	join('', map { "BEGIN; SELECT 1 FROM fintx.accounts WHERE code = 's:hot' FOR UPDATE; SELECT pg_sleep(0.15); COMMIT;\n" } 1 .. 60));
my $expired_of = sub {
	my ($key) = @_;
	return qq{SELECT count(*) FROM fintx.transfers t JOIN fintx.idempotency_keys k ON k.transfer_id = t.pending_id
	           WHERE k.idempotency_key = '$key' AND t.status = 'expired'};
};
$t_hot = time;
($hot_ok) = poll_until($poll, $expired_of->('s-hot-h2'), '1', 8);
$hot_elapsed = time - $t_hot;
psql_finish($locker2);
ok($hot_ok && $hot_elapsed < 7,
	"a younger hold on a busy account is released while an older one waits for a row held for good ($hot_elapsed s)");
is($node->safe_psql('postgres', $expired_of->('s-stuck-h')), '0', 'the older one is still open');
quiet_safe($stuck, 'COMMIT');
$stuck->quit;
is(wait_for($expired_of->('s-stuck-h'), '1', 10), '1', 'and released once its account is free');


# The worker waits, before its pass, for a lock the asking session holds (here a table lock
# that its hold expiry needs): the session sees that it blocks the worker and seals on its
# own at once.
my $busy2 = open_session('LOCK TABLE fintx.pending_holds IN ACCESS EXCLUSIVE MODE');
is(wait_for($worker_lock_waits,
		'1', 10), '1', 'the worker waits for the table the open transaction locked');
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-busy-3', 's:bank', 's:c', 1)});
my $waited = timed_seal_all($busy2, 'seal() then seals on its own: everything committed');
ok($waited < 0.9, "at once: the worker waits for this session ($waited s), so it does not wait for the worker");
quiet_safe($busy2, 'COMMIT');
$busy2->quit;

# Queued behind this session: it reads pending_holds (ACCESS SHARE), a maintenance session
# queues for ACCESS EXCLUSIVE behind it, and the worker's hold expiry queues behind that. The
# session blocks the worker through the waiting session (pg_blocking_pids(), followed) and
# seals on its own at once; without that it would wait for a worker that waits for it.
my $reader = open_session('SELECT count(*) FROM fintx.pending_holds');
my $maint = psql_start($node, 'maint', "SET lock_timeout = '20s';\nBEGIN;\nLOCK TABLE fintx.pending_holds IN ACCESS EXCLUSIVE MODE;\nCOMMIT;\n");
is(wait_for($worker_lock_waits,
		'1', 10), '1', 'the worker queues behind the maintenance session');
$waited = timed_seal_all($reader, 'the reading session seals on its own');
ok($waited < 0.9, "at once: it blocks the worker through the queued session ($waited s)");
quiet_safe($reader, 'COMMIT');
$reader->quit;
is(psql_finish($maint)->{err}, '', 'the maintenance session gets its lock once the reader has committed');

# Stuck on another session: a session that holds nothing the worker waits for waits a
# second for the worker (stuck on the same lock all along), then seals on its own.
my $holder_t = open_session('LOCK TABLE fintx.pending_holds IN ACCESS EXCLUSIVE MODE');
is(wait_for($worker_lock_waits,
		'1', 10), '1', 'the worker waits for the table another session locked');
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-stuck', 's:bank', 's:c', 1)});
$waited = timed_seal_all(undef, 'a session that does not block the worker gets everything sealed');
ok($waited >= 1 && $waited < 5, "after waiting a second for the stuck worker ($waited s)");
quiet_safe($holder_t, 'COMMIT');
$holder_t->quit;

# The worker's pass waits for a lock that the asking transaction holds: the session seals
# on its own, waits for the sealing lock the pass holds, and the deadlock detector ends one
# of the two instead of both waiting for ever: usually the worker's pass (it waited first;
# logged, retried), and seal() then returns; otherwise seal() fails with 40P01.
my $locker = quiet_session($node, on_error_stop => 0);
quiet_safe($locker, "SET statement_timeout = '30s'");
quiet_safe($locker, 'BEGIN');
quiet_safe($locker, 'LOCK TABLE fintx.audit_blocks IN ACCESS EXCLUSIVE MODE');
my $t0 = time;
my $locker_out = quiet_query($locker, 'SELECT fintx.seal()');
my $locker_err = $locker->{stderr} // '';
ok(($locker_err eq '' && $locker_out =~ /^\d+$/) || $locker_err =~ /deadlock detected/,
	'seal() while holding a lock its pass needs: a size or 40P01, not a hang')
	or diag("out: $locker_out\nstderr: $locker_err");
note($locker_err eq '' ? 'the worker\'s pass was the deadlock victim' : 'the session was the deadlock victim');
cmp_ok(time - $t0, '<', 15, 'within seconds (the statement timeout is 30 s)');
$locker->quit;
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-lock-1', 's:bank', 's:c', 1)});
is(wait_for($all_sealed, 't', 10), 't', 'the worker seals again once that transaction has ended');

# A transaction that holds the sealing lock itself (as a session sealing on its own does
# where no worker seals for it): the worker does not wait for it.
my $a = open_session("SELECT pg_advisory_xact_lock(" . seal_lock_key() . ")");

# meanwhile: a hold that expires, and more entries to seal
my $hold = $node->safe_psql('postgres',
	q{SELECT transfer_id FROM fintx.transfer('s-h', 's:a', 's:b', 10, pending => true, timeout => '200 milliseconds')});
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-t2', 's:a', 's:b', 5)});
is(wait_for("SELECT count(*) FROM fintx.transfers WHERE pending_id = $hold AND status = 'expired'", '1', 15),
	'1', 'while a session holds the sealing lock, the worker still releases an expired hold');
is($node->safe_psql('postgres',
		$worker_lock_waits),
	'0', 'the worker does not wait for the sealing lock');
my $sealed_while_held = $node->safe_psql('postgres',
	q{SELECT (SELECT tree_size FROM fintx.audit_blocks ORDER BY block_id DESC LIMIT 1) < (SELECT count(*) FROM fintx.audit_entries)});
is($sealed_while_held, 't', 'entries committed meanwhile wait for the lock');

# session B asks for a checkpoint: it waits for the lock; the key file changes meanwhile
my $vkey_old = $node->safe_psql('postgres', 'SELECT fintx.public_key()');
my $b = psql_start($node, 'ckpt', "SELECT fintx.checkpoint();\n");
is(wait_for(
		q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ckpt' AND wait_event_type = 'Lock'}, '1', 10),
	'1', 'checkpoint() waits for the sealing lock');
rename("$dir/other.pem", $key) or die "rename: $!";
utime(time + 10, time + 10, $key) or die "utime: $!";
quiet_safe($a, 'COMMIT');
$a->quit;
my $r = psql_finish($b);
# it sealed on its own (the worker could not: the lock was taken), so it signs the head
# committed before its pass and says so; no error
like($r->{err}, qr/\A(?:psql:\S+ NOTICE:  00000\n)?\z/, 'checkpoint() returns once the lock is free, without an error')
  or diag($r->{err});
my $note = $r->{out};
my $vkey = $node->safe_psql('postgres', 'SELECT fintx.public_key()');
my ($key_id) = $vkey =~ /\+([0-9a-f]{8})\+/;
my ($sig) = $note =~ /\S+ ([A-Za-z0-9+\/=]+)\s*$/;
ok(defined $key_id && defined $sig, 'a verifier key and a signature line') or diag("key: $vkey\nnote: $note");
is(unpack('H8', decode_base64($sig // '')), $key_id // 'none',
	'the checkpoint is signed by the key public_key() reports (the new file), not a freed one');
$node->safe_psql('postgres', q{SELECT fintx.transfer('s-t3', 's:a', 's:b', 5)});
is(wait_for($all_sealed, 't', 10), 't', 'once the lock is free the worker seals again');
isnt($vkey, $vkey_old, 'public_key() is the new key');
# the blocks signed before the change carry the old key: trusted, they verify
$node->safe_psql('postgres', "ALTER SYSTEM SET fintx.trusted_keys = '$vkey_old'");
$node->reload;
my ($ok, $detail) = split /\|/, $node->safe_psql('postgres', q{SELECT ok || '|' || detail FROM fintx.verify_audit()}), 2;
is($ok, 'true', 'verify_audit() is clean (the old key trusted)') or diag($detail);

# a database without the worker: lazy sealing
$node->safe_psql('postgres', 'CREATE DATABASE lazy');
$node->safe_psql('lazy', 'CREATE EXTENSION fintx');
is($node->safe_psql('lazy', 'SELECT fintx.tree_size()'), '0', 'a new database starts with an empty log');
my (undef, undef, $err) = $node->psql('lazy', 'SELECT * FROM fintx.verify_audit(5)');
like($err, qr/leaf range 5 to -1 is out of range/, 'verify_audit(5) on an empty log is 22023, not "verified 0 entries"');
$node->safe_psql('lazy', q{SELECT fintx.emit('order', 'o1', 'order.created', '{}')});
my $t1 = $node->safe_psql('lazy', 'SELECT fintx.outbox_tail()');
is($t1, '1', 'outbox_tail() sees the event its own call sequenced');
$node->safe_psql('lazy', q{SELECT fintx.emit('order', 'o2', 'order.created', '{}')});
is($node->safe_psql('lazy', 'SELECT fintx.outbox_tail()'), '2', 'and the next one');
# verify_audit(from_leaf > 0) seals first: what it checks must include what that pass wrote
# (a complete 16-leaf tile's node, the block of the last, incomplete tile)
$node->safe_psql('lazy', q{SELECT count(fintx.open_account('lz:' || g, 'EUR')) FROM generate_series(1, 21) g});
my $v = $node->safe_psql('lazy',
	q{SELECT ok::text || ' ' || coalesce(first_bad_leaf::text, '-') || ' ' || detail FROM fintx.verify_audit(1)});
like($v, qr/^true - /, 'verify_audit(1) over entries its own sealing pass sequenced is clean') or diag($v);

# checkpoint() never signs a head that a rollback can take back. Without a worker the
# caller's own pass writes the block, which exists only if the caller's transaction
# commits; nothing inside it can tell whether it will (an exception block, a procedure's
# ROLLBACK, a later failing statement in a pipeline). So the checkpoint signs the last
# committed head instead (a later pass after a rollback could sign another head for the
# same size: a fork to an auditor), and says so.
$node->safe_psql('lazy', 'SELECT fintx.seal()');
my $committed = $node->safe_psql('lazy', 'SELECT fintx.tree_size()');
my $notice = sub {
	my ($signed, $own) = @_;
	return qr/NOTICE:  the checkpoint signs the $signed entries sealed before this transaction; the $own sealed in it are signed by a checkpoint\(\) after it commits/;
};
$node->safe_psql('lazy', q{SELECT fintx.open_account('lz:cp1', 'EUR')});
my ($cret, $cout, $cerr) = $node->psql('lazy', 'BEGIN; SELECT fintx.seal(); SELECT fintx.checkpoint(); ROLLBACK;');
my @cl = split /\n/, $cout;
is($cl[0], $committed + 1, 'a transaction that seals on its own seals the committed entry');
is($cl[2], $committed, 'its checkpoint() signs the size committed before it, not its own pass');
is($cl[3], $node->safe_psql('lazy', "SELECT encode(fintx.root_hash($committed), 'base64')"),
	'with the root the log still has after the rollback');
like($cerr, $notice->($committed, 1), 'and a NOTICE says so') or diag($cerr);
# (root_hash() sealed the entry in a pass of its own, committed)
# a pass in a released savepoint is this transaction's too
$node->safe_psql('lazy', q{SELECT fintx.open_account('lz:cp2', 'EUR')});
($cret, $cout, $cerr) = $node->psql('lazy',
	'BEGIN; SAVEPOINT a; SELECT fintx.seal(); RELEASE a; SELECT fintx.checkpoint(); COMMIT;');
@cl = split /\n/, $cout;
is("$cl[0] $cl[2]", ($committed + 2) . ' ' . ($committed + 1), 'a pass in a subtransaction is not signed before the commit either')
  or diag("$cout\n$cerr");
# an exception block rolls back the pass the checkpoint() inside it made, and the
# statement then commits: what it returns must be a committed head
$node->safe_psql('lazy', q{CREATE FUNCTION cp_then_fail() RETURNS text LANGUAGE plpgsql AS $$
	DECLARE c text;
	BEGIN
		BEGIN
			c := fintx.checkpoint();
			RAISE EXCEPTION 'roll back the pass';
		EXCEPTION WHEN raise_exception THEN
			RETURN c;
		END;
	END $$});
$node->safe_psql('lazy', q{SELECT fintx.open_account('lz:cp3', 'EUR')});
($cret, $cout, $cerr) = $node->psql('lazy', 'SELECT cp_then_fail()');
@cl = split /\n/, $cout;
is($cl[1], $committed + 2, 'a checkpoint() whose pass an exception block rolls back signs the committed head');
is($cl[2], $node->safe_psql('lazy', "SELECT encode(fintx.root_hash($committed + 2), 'base64')"),
	'with the root the log has');
# (root_hash() sealed lz:cp3 in a pass of its own, committed)
# the same call alone, outside a transaction block, cannot know either: the head its own
# pass sealed is signed by the next call
$node->safe_psql('lazy', q{SELECT fintx.open_account('lz:cp4', 'EUR')});
($cret, $cout, $cerr) = $node->psql('lazy', 'SELECT fintx.checkpoint()');
is((split /\n/, $cout)[1], $committed + 3, 'checkpoint() alone signs the committed head, not its own pass');
like($cerr, $notice->($committed + 3, 1), 'with the NOTICE') or diag($cerr);
($cret, $cout, $cerr) = $node->psql('lazy', 'SELECT fintx.checkpoint()');
is((split /\n/, $cout)[1], $committed + 4, 'the next call signs the head the previous one sealed');
is($cerr, '', 'without a NOTICE: it had nothing to seal');
# seal() in a statement of its own first, then checkpoint(): the fresh head at once
$node->safe_psql('lazy', q{SELECT fintx.open_account('lz:cp5', 'EUR')});
$node->safe_psql('lazy', 'SELECT fintx.seal()');
($cret, $cout, $cerr) = $node->psql('lazy', 'BEGIN; SELECT fintx.checkpoint(); COMMIT;');
is((split /\n/, $cout)[1], $committed + 5, 'after seal() in its own transaction, checkpoint() signs the fresh head');
is($cerr, '', 'without a NOTICE');

# expire_pending() called by a user, without a worker (database lazy): a statement timeout
# during the wait for an overdue hold's account ends the statement and nothing else (the
# session is usable, no transaction is left open); under REPEATABLE READ it does not wait.
$node->safe_psql('lazy', q{
	SELECT fintx.open_account('lz:h1', 'EUR', allow_negative => true);
	SELECT fintx.open_account('lz:h2', 'EUR');
	SELECT fintx.transfer('lz-h', 'lz:h1', 'lz:h2', 5, pending => true, timeout => '1 second');
});
my $lz_lock = $node->background_psql('lazy');
$lz_lock->query_safe('BEGIN');
$lz_lock->query_safe(q{SELECT 1 FROM fintx.accounts WHERE code = 'lz:h1' FOR UPDATE});
sleep 2;    # overdue
my (undef, $xout, $xerr) = $node->psql('lazy', q{
	SET statement_timeout = '100ms';
	SELECT fintx.expire_pending(10);
	RESET statement_timeout;
	SELECT 'after: ' || count(*) FROM fintx.pending_holds;
	ROLLBACK;
}, on_error_stop => 0);
like($xerr, qr/canceling statement due to statement timeout/, 'a statement timeout during the wait ends expire_pending()');
like($xout, qr/^after: 1$/m, 'the session goes on, the hold still open');
unlike($xerr, qr/FATAL|unexpected state|terminat/, 'no transaction was left open') or diag($xerr);
like($xerr, qr/WARNING:  there is no transaction in progress/, '(ROLLBACK only warns)');
my $t_rr = time;
is($node->safe_psql('lazy', q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT fintx.expire_pending(10); COMMIT;}),
	'0', 'under REPEATABLE READ expire_pending() skips the hold whose account is locked');
my $rr_elapsed = time - $t_rr;
ok($rr_elapsed < 0.15, "without waiting for it ($rr_elapsed s)");
$t_rr = time;
is($node->safe_psql('lazy', 'SELECT fintx.expire_pending(10)'), '0', 'READ COMMITTED: waits 200 ms, gives up, returns 0');
$rr_elapsed = time - $t_rr;
ok($rr_elapsed >= 0.2 && $rr_elapsed < 2, "it waited for the account, 200 ms ($rr_elapsed s)");
$lz_lock->query_safe('COMMIT');
$lz_lock->quit;
is($node->safe_psql('lazy', 'SELECT fintx.expire_pending(1)'), '1', 'and releases it once the account is free (the overdue step, max_holds 1)');

# the origin is also the key name: no spaces, no '+', printable ASCII (C2SP signed notes)
my @bad = ([ 'a space', q{'a b'} ], [ 'a +', q{'a+b'} ], [ 'a tab', q{E'a\tb'} ],
	[ 'a newline', q{E'line1\nline2'} ], [ 'a non-ASCII byte', "'caf\xc3\xa9'" ]);
for my $case (@bad)
{
	my ($ret, $out, $err) = $node->psql('postgres', "SET fintx.checkpoint_origin = $case->[1]");
	like($err, qr/invalid value for parameter "fintx.checkpoint_origin"/, "checkpoint_origin refuses $case->[0]");
}
is($node->safe_psql('postgres', q{SET fintx.checkpoint_origin = 'ledger.example.com/fintx'; SHOW fintx.checkpoint_origin}),
	'ledger.example.com/fintx', 'a host/path origin is accepted');
# the default origin of a database whose name holds a space and a '+'
$node->safe_psql('postgres', q{CREATE DATABASE "ledger prod+eu"});
$node->safe_psql('ledger prod+eu', q{CREATE EXTENSION fintx; SELECT fintx.open_account('o:a', 'EUR')});
my $sysid = $node->safe_psql('ledger prod+eu', 'SELECT system_identifier FROM pg_control_system()');
my ($origin) = split /\n/, $node->safe_psql('ledger prod+eu', 'SELECT fintx.checkpoint()');
is($origin, "fintx.local/$sysid/ledger%20prod%2Beu", 'the default origin writes the space and the + of the database name as %XX');
# name+keyid+base64(key): the name holds no '+', so the first two '+' split it (base64 may hold '+')
my @vk = split /\+/, $node->safe_psql('ledger prod+eu', 'SELECT fintx.public_key()'), 3;
is($vk[0], $origin, 'its verifier key is named after the origin');
like($vk[1] // '', qr/^[0-9a-f]{8}$/, 'and the next field is the 8-hex-digit key id');
# '%' is escaped too: "a b" and "a%20b" are two databases and must be two origins
$node->safe_psql('postgres', q{CREATE DATABASE "a%20b"});
$node->safe_psql('a%20b', q{CREATE EXTENSION fintx; SELECT fintx.open_account('o:a', 'EUR')});
my ($origin2) = split /\n/, $node->safe_psql('a%20b', 'SELECT fintx.checkpoint()');
is($origin2, "fintx.local/$sysid/a%2520b", 'the default origin writes a % of the database name as %25');
$node->safe_psql('postgres', q{CREATE DATABASE "a b"});
$node->safe_psql('a b', q{CREATE EXTENSION fintx; SELECT fintx.open_account('o:a', 'EUR')});
my ($origin3) = split /\n/, $node->safe_psql('a b', 'SELECT fintx.checkpoint()');
is($origin3, "fintx.local/$sysid/a%20b", 'and a space as %20: the two databases sign under two names');

# A per-database origin (ALTER DATABASE ... SET, then a reload, as docs/audit.md says) names
# the worker's next block: a reload does not apply changed database settings to a running
# session, so the worker restarts when they changed, and only then.
my $worker_pid = q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'fintx worker'};
my $pid1 = $node->safe_psql('postgres', $worker_pid);
$node->reload;
sleep(2);
is($node->safe_psql('postgres', $worker_pid), $pid1, 'a reload that changes no database setting does not restart the worker');
# Runs $alter and reloads; the worker must restart (a pid not in @$old), seal the next
# transfer ($key) and sign its block under an origin matching $origin_re.
sub origin_change
{
	my ($alter, $old, $key, $origin_re, $what) = @_;
	$node->safe_psql('postgres', $alter);
	$node->reload;
	my $others = join ', ', @$old;
	is(wait_for("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'fintx worker' AND pid NOT IN ($others)", '1', 30),
		'1', "after $what and a reload the worker restarts");
	$node->safe_psql('postgres', qq{SELECT fintx.transfer('$key', 's:bank', 's:a', 1)});
	is(wait_for($all_sealed, 't', 30), 't', 'the restarted worker seals');
	like($node->safe_psql('postgres', 'SELECT origin FROM fintx.audit_checkpoints ORDER BY block_id DESC LIMIT 1'),
		$origin_re, "and signs the next block under the database's origin");
	return $node->safe_psql('postgres', $worker_pid);
}
my $log_offset = -s $node->logfile;
my $pid2 = origin_change(q{ALTER DATABASE postgres SET fintx.checkpoint_origin = 'db.example/ledger'}, [$pid1], 's-origin',
	qr{^db\.example/ledger$}, 'ALTER DATABASE ... SET');
like($node->safe_psql('postgres', 'SELECT fintx.checkpoint()'), qr{^db\.example/ledger\n}, 'and so is the checkpoint');
like(slurp_file($node->logfile, $log_offset),
	qr{WARNING:  audit block \d+ is signed under origin "db\.example/ledger", block \d+ under "fintx\.local/\d+/postgres"},
	'the change of origin is logged as a warning (checkpoints of the two cannot be linked)');
origin_change(q{ALTER DATABASE postgres RESET fintx.checkpoint_origin}, [$pid1, $pid2], 's-origin-2',
	qr{^fintx\.local/\d+/postgres$}, 'RESET');

# two-phase commit: a transaction that sealed on its own (no worker seals 'ledger prod+eu'),
# or called sequence_outbox(), cannot be prepared (it would hold the sealing lock and stop
# every pass until COMMIT/ROLLBACK PREPARED); an ordinary transfer can
for my $case (['ledger prod+eu', 'SELECT fintx.tree_size()', 'a transaction that sealed on its own'],
	['postgres', 'SELECT fintx.sequence_outbox()', 'one that called sequence_outbox() in the worker database'])
{
	my ($ret2, $out2, $err2) = $node->psql($case->[0], "BEGIN; $case->[1]; PREPARE TRANSACTION 'fx-2pc'");
	like($err2, qr/ERROR:  cannot PREPARE a transaction that sealed the audit log or sequenced the outbox/,
		"PREPARE TRANSACTION is refused for $case->[2]");
	my $prepared = $node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts');
	is($prepared, '0', 'and nothing stays prepared');
	$node->safe_psql($case->[0], "ROLLBACK PREPARED 'fx-2pc'") if $prepared ne '0';	# it would hold the lock
}
is($node->safe_psql('ledger prod+eu', 'SELECT fintx.seal() >= 0'), 't', 'sealing goes on');
# a seal in a savepoint rolled back since released the lock with it: PREPARE is fine then
$node->safe_psql('ledger prod+eu', q{BEGIN; SAVEPOINT s; SELECT fintx.seal(); ROLLBACK TO SAVEPOINT s;
	PREPARE TRANSACTION 'fx-sp'});
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'fx-sp'}), '1',
	'a transaction whose seal was rolled back with its savepoint can be prepared');
$node->safe_psql('ledger prod+eu', q{ROLLBACK PREPARED 'fx-sp'});
$node->safe_psql('postgres', q{BEGIN; SELECT fintx.transfer('s-2pc', 's:bank', 's:a', 3); PREPARE TRANSACTION 'fx-ok'});
$node->safe_psql('postgres', q{COMMIT PREPARED 'fx-ok'});
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.transfers t JOIN fintx.idempotency_keys k ON k.transfer_id = t.id WHERE k.idempotency_key = 's-2pc'}),
	'1', 'a transfer in a prepared transaction commits with COMMIT PREPARED');
is(wait_for($all_sealed, 't', 30), 't', 'and is sealed by the worker');

$poll->quit;
$node->stop;
done_testing();

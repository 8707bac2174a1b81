# Copyright fintx contributors
#
# 012_attack_matrix.pl — the authorization attack matrix, run as real login
# roles over their own connections (issue: service authorization).
#
# Two services (pay, risk) and an auditor are registered. Each attack is run
# by the attacking role in its own session (application_name = the attack's
# name); it must be refused with the documented SQLSTATE, change nothing, and
# afterwards be visible to the auditor in fintx.access_log as a denial, with
# the attacking role, the operation and the application name. Also: parallel
# sessions racing against one daily limit never exceed it; signed requests
# (Ed25519 keys made with the openssl CLI) are accepted when genuine and
# refused when forged, signed by another service's key, replayed after a key
# rotation or reused for a different request. A summary table of the matrix is
# printed with diag().

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('attacks', "fintx.expire_interval = '1h'");
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

# keys for the two services, and a key nobody registered
for my $k (qw(pay risk rogue newpay))
{
	system('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', "$tmp/$k.pem") == 0
	  or die "openssl genpkey failed";
	system("openssl pkey -in $tmp/$k.pem -pubout -out $tmp/$k.pub") == 0
	  or die "openssl pkey failed";
}
my %pub = map { $_ => slurp_file("$tmp/$_.pub") } qw(pay risk rogue newpay);

$node->safe_psql('postgres', qq{
	CREATE ROLE pay LOGIN;
	CREATE ROLE risk LOGIN;
	CREATE ROLE mallory LOGIN;
	CREATE ROLE audit LOGIN IN ROLE fintx_auditor;
	SELECT fintx.open_account('pay:ops', 'EUR', true);
	SELECT fintx.open_account('pay:cust', 'EUR');
	SELECT fintx.open_account('risk:pool', 'EUR', true);
	SELECT fintx.open_account('risk:res', 'EUR');
	SELECT fintx.register_service('pay', 'pay', '$pub{pay}');
	SELECT fintx.register_service('risk', 'risk', '$pub{risk}');
	SELECT fintx.grant_permission('pay', 'transfer', 'pay:%', 1000, 5000, 'EUR', 800);
	SELECT fintx.grant_permission('pay', 'transfer.approve', 'pay:%');
	SELECT fintx.grant_permission('risk', 'transfer', 'risk:%', NULL, 2000);
	SELECT fintx.grant_permission('risk', 'transfer.approve', 'pay:%');
	SELECT fintx.transfer('seed', 'risk:pool', 'risk:res', 10);
});

# Runs $sql as $role (a login role) with application_name $app; returns (sqlstate or '', stdout).
sub run_as
{
	my ($role, $app, $sql) = @_;
	local $ENV{PGAPPNAME} = $app;
	my ($rc, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-U', $role, '-v', 'VERBOSITY=sqlstate', '-v', 'ON_ERROR_STOP=1' ]);
	return (first_sqlstate($err) // ($rc == 0 ? '' : "rc=$rc"), $out);
}

# The ledger as a string, to show an attack changed nothing.
sub ledger
{
	return $node->safe_psql('postgres',
		q{SELECT string_agg(code || '=' || debits_posted || '/' || credits_posted || '/' || debits_pending
		                    || '/' || credits_pending, ',' ORDER BY code) || ' t=' || (SELECT count(*) FROM fintx.transfers)
		    FROM fintx.accounts});
}

# Denials the auditor sees for an application name. Denials that PostgreSQL
# itself raised are queued without waiting: give the worker up to 10 s.
sub denials_seen
{
	my ($app) = @_;
	my $out = 0;
	for (1 .. 500)
	{
		(undef, $out) = $node->psql('postgres',
			"SELECT count(*) FROM fintx.access_log WHERE NOT allowed AND application_name = '$app'",
			extra_params => [ '-U', 'audit' ]);
		last if $out > 0;
		select(undef, undef, undef, 0.02);
	}
	return $out;
}

my @matrix;

sub attack
{
	my (%a) = @_;
	my $before = ledger();
	my ($state) = run_as($a{role}, $a{name}, $a{sql});
	my $after = ledger();
	my $seen = denials_seen($a{name});
	my $logged = $a{logged} // 1;
	is($state, $a{expect}, "$a{name}: refused with $a{expect}");
	is($after, $before, "$a{name}: the ledger is unchanged");
	ok($seen >= 1, "$a{name}: the auditor sees the denial in fintx.access_log") if $logged;
	push @matrix, sprintf('%-38s %-8s %-6s %s', $a{name}, $a{role}, $state, $logged ? "logged=$seen" : 'n/a');
}

attack(name => 'debit-other-service-account', role => 'pay', expect => '42501',
	sql => q{SELECT * FROM fintx.transfer('a1', 'risk:pool', 'pay:cust', 5)});
attack(name => 'exceed-per-transfer-limit', role => 'pay', expect => '42501',
	sql => q{SELECT * FROM fintx.transfer('a2', 'pay:ops', 'pay:cust', 1001)});
attack(name => 'exceed-daily-by-splitting', role => 'risk', expect => '42501',
	sql => q{SELECT count(*) FROM generate_series(1, 21) g, LATERAL fintx.transfer('split-' || g, 'risk:pool', 'risk:res', 100)});
attack(name => 'write-accounts-directly', role => 'pay', expect => '42501',
	sql => q{UPDATE fintx.accounts SET credits_posted = credits_posted + 1000000 WHERE code = 'pay:cust'});
attack(name => 'insert-transfer-directly', role => 'pay', expect => '42501',
	sql => q{INSERT INTO fintx.transfers (id, status, from_account, to_account, amount, metadata, from_balance, to_balance, principal, created_at) VALUES (999999, 'posted', 1, 2, 5, '{}', 0, 0, 'pay', now())});
attack(name => 'grant-self-permission', role => 'pay', expect => '42501',
	sql => q{SELECT fintx.grant_permission('pay', 'transfer', '%')});
attack(name => 'write-grant-table', role => 'pay', expect => '42501',
	sql => q{INSERT INTO fintx.permissions (service, operation, account_pattern, granted_by) VALUES ('pay', 'transfer', '%', 'pay')});
attack(name => 'erase-access-log', role => 'pay', expect => '42501',
	sql => q{DELETE FROM fintx.access_log_entries});
attack(name => 'read-access-log', role => 'pay', expect => '42501',
	sql => q{SELECT count(*) FROM fintx.access_log});
attack(name => 'set-role-not-held', role => 'pay', expect => '42501',
	sql => q{SET ROLE risk; SELECT * FROM fintx.transfer('a3', 'risk:pool', 'pay:cust', 5)});
attack(name => 'set-role-admin', role => 'mallory', expect => '42501',
	sql => q{SET ROLE fintx_admin});
attack(name => 'unregistered-role', role => 'mallory', expect => '42501',
	sql => q{SELECT * FROM fintx.transfer('a4', 'pay:ops', 'pay:cust', 5)});
attack(name => 'create-in-fintx-schema', role => 'pay', expect => '42501',
	sql => q{CREATE FUNCTION fintx.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'});

# hijack search_path: shadowing objects in the caller's schema change nothing
$node->safe_psql('postgres', 'CREATE SCHEMA hijack AUTHORIZATION pay');
my ($st, $out) = run_as('pay', 'hijack-search-path', q{
	CREATE TABLE hijack.permissions (service text, operation text, account_pattern text);
	INSERT INTO hijack.permissions VALUES ('pay', 'transfer', '%');
	CREATE TABLE hijack.accounts (code text);
	CREATE FUNCTION hijack.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
	CREATE FUNCTION hijack.like_matches(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
	CREATE OPERATOR hijack.~~ (LEFTARG = text, RIGHTARG = text, FUNCTION = hijack.like_matches);
	SET search_path = hijack, public;
	SELECT * FROM fintx.transfer('a5', 'risk:pool', 'pay:cust', 5);
});
is($st, '42501', 'hijack-search-path: shadowing grants, tables, functions and LIKE changes nothing');
push @matrix, sprintf('%-38s %-8s %-6s %s', 'hijack-search-path', 'pay', $st, 'logged=' . denials_seen('hijack-search-path'));
ok(denials_seen('hijack-search-path') >= 1, 'hijack-search-path: the auditor sees the denial');

# reading other services' rows: no error, no rows
($st, $out) = run_as('pay', 'read-other-rows',
	q{SELECT count(*) FROM fintx.account_balances WHERE code LIKE 'risk:%'});
is("$st|$out", '|0', 'read-other-rows: another service\'s balances are invisible');
($st, $out) = run_as('pay', 'read-other-rows2',
	q{SELECT count(*) FROM fintx.transfers t JOIN fintx.accounts a ON a.id = t.from_account WHERE a.code LIKE 'risk:%'});
is("$st|$out", '|0', 'read-other-rows: another service\'s transfers are invisible, also in the tables');
push @matrix, sprintf('%-38s %-8s %-6s %s', 'read-other-services-rows', 'pay', 'rows=0', 'RLS');

# maker-checker: approving one's own transfer
($st, $out) = run_as('pay', 'maker', q{SELECT transfer_id || '|' || status FROM fintx.transfer('big-1', 'pay:ops', 'pay:cust', 900)});
my ($big_id, $big_status) = split /\|/, $out;
is("$st|$big_status", '|awaiting_approval', 'a transfer above the threshold awaits approval');
attack(name => 'approve-own-transfer', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.approve_transfer($big_id)");
($st, $out) = run_as('risk', 'checker', "SELECT status FROM fintx.approve_transfer($big_id)");
is("$st|$out", '|posted', 'a different service approves it');

# two checkers race to decide one transfer: one approval applies it, the other gets 55000
$node->safe_psql('postgres', q{
	CREATE ROLE risk2 LOGIN;
	SELECT fintx.register_service('risk2', 'risk2');
	SELECT fintx.grant_permission('risk2', 'transfer.approve', 'pay:%');
});
($st, $out) = run_as('pay', 'maker2', q{SELECT transfer_id FROM fintx.transfer('big-2', 'pay:ops', 'pay:cust', 850)});
my $big2 = $out;
my $cust_before = $node->safe_psql('postgres', q{SELECT posted FROM fintx.account_balances WHERE code = 'pay:cust'});
my $ctl = quiet_session($node);
my $race = barrier_race($node, $ctl, name => 'approve-race', n => 2,
	stmt => sub { my $role = $_[0] ? 'risk2' : 'risk'; "SET ROLE $role; SELECT 'R', status FROM fintx.approve_transfer($big2);" });
my @won = map { scalar @{ psql_result_rows($_->{out}, 'R') } } @{ $race->{sessions} };
my @lost = map { first_sqlstate($_->{err}) // '' } @{ $race->{sessions} };
is($won[0] + $won[1], 1, 'approval race: exactly one checker\'s approval applies');
is(join(',', sort grep { $_ ne '' } @lost), '55000', 'approval race: the other checker gets 55000');
is($node->safe_psql('postgres', q{SELECT posted FROM fintx.account_balances WHERE code = 'pay:cust'}),
	$cust_before + 850, 'approval race: the money moved once');
$ctl->quit;

# signed requests
sub sign_request
{
	my ($service, $key, $req) = @_;
	my $hex = $node->safe_psql('postgres',
		"SELECT encode(fintx.signing_message('$service', '$req'), 'hex')");
	open my $fh, '>:raw', "$tmp/msg.bin" or die;
	print $fh pack('H*', $hex);
	close $fh;
	system('openssl', 'pkeyutl', '-sign', '-inkey', "$tmp/$key.pem", '-rawin',
		'-in', "$tmp/msg.bin", '-out', "$tmp/sig.bin") == 0
	  or die 'openssl pkeyutl failed';
	return unpack('H*', slurp_file("$tmp/sig.bin"));
}
my $req = '{"idempotency_key": "sig-1", "from_account": "pay:ops", "to_account": "pay:cust", "amount": 25}';
my $sig = sign_request('pay', 'pay', $req);
($st, $out) = run_as('pay', 'signed-ok', "SELECT status FROM fintx.transfer_signed('$req', '\\x$sig')");
is("$st|$out", '|posted', 'a genuine signed request is applied');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM fintx.signed_requests s JOIN fintx.transfers t ON t.id = ANY (s.transfer_ids) WHERE s.service = 'pay' AND s.signature = '\\x$sig'"),
	'1', 'the signature is stored with the transfer');
($st, $out) = run_as('pay', 'signed-retry', "SELECT status || '|' || replayed FROM fintx.transfer_signed('$req', '\\x$sig')");
is("$st|$out", '|posted|true', 'a retried signed request replays');

my $batch = '[{"idempotency_key": "sb-1", "from_account": "pay:ops", "to_account": "pay:cust", "amount": 3},'
  . ' {"idempotency_key": "sb-2", "from_account": "pay:ops", "to_account": "pay:cust", "amount": 4}]';
my $bsig = sign_request('pay', 'pay', $batch);
($st, $out) = run_as('pay', 'signed-batch', "SELECT string_agg(status, ',') FROM fintx.transfer_batch_signed('$batch', '\\x$bsig')");
is("$st|$out", '|posted,posted', 'a genuine signed batch is applied');

my $req2 = '{"idempotency_key": "sig-2", "from_account": "pay:ops", "to_account": "pay:cust", "amount": 999}';
attack(name => 'reuse-signature-other-request', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req2', '\\x$sig')");
my $forged = '00' x 64;
attack(name => 'forge-signature', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req2', '\\x$forged')");
my $rogue = sign_request('pay', 'rogue', $req2);
attack(name => 'sign-with-unregistered-key', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req2', '\\x$rogue')");
my $riskkey = sign_request('pay', 'risk', $req2);
attack(name => 'sign-with-other-service-key', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req2', '\\x$riskkey')");
attack(name => 'replay-signed-request-as-other-service', role => 'risk', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req2', '\\x" . sign_request('pay', 'pay', $req2) . "')");
my $req3 = '{"idempotency_key": "sig-3", "from_account": "pay:ops", "to_account": "pay:cust", "amount": 7}';
my $old = sign_request('pay', 'pay', $req3);
$node->safe_psql('postgres', "SELECT fintx.set_service_key('pay', '$pub{newpay}')");
attack(name => 'replay-signed-under-new-key', role => 'pay', expect => '42501',
	sql => "SELECT * FROM fintx.transfer_signed('$req3', '\\x$old')");
my $new = sign_request('pay', 'newpay', $req3);
($st, $out) = run_as('pay', 'signed-new-key', "SELECT status FROM fintx.transfer_signed('$req3', '\\x$new')");
is("$st|$out", '|posted', 'after rotation the new key signs');
($st) = run_as('postgres', 'bad-key', "SELECT fintx.set_service_key('pay', 'AAAA')");
is($st, '22023', 'a malformed key is refused with 22023');

# parallel sessions racing against one daily limit (risk: 2000 a day, 2100 used above? no: split attack rolled back)
my $used = $node->safe_psql('postgres',
	q{SELECT coalesce(sum(used), 0) FROM fintx.limit_usage WHERE service = 'risk'});
my @p;
for my $i (1 .. 8)
{
	my $script = join('', map { "SELECT 'R', status FROM fintx.transfer('race-$i-$_', 'risk:pool', 'risk:res', 50);\n" } 1 .. 10);
	local $ENV{PGUSER} = 'risk';
	push @p, psql_start($node, "race$i", $script);
}
my ($ok, $denied) = (0, 0);
for my $p (@p)
{
	my $r = psql_finish($p);
	$ok += scalar @{ psql_result_rows($r->{out}, 'R') };
	$denied += scalar grep { $_ eq '42501' } @{ all_sqlstates($r->{err}) };
}
my $posted = $node->safe_psql('postgres',
	q{SELECT coalesce(sum(amount), 0) FROM fintx.transfers t JOIN fintx.idempotency_keys j ON j.transfer_id = t.id
	   WHERE j.principal = 'risk' AND j.idempotency_key LIKE 'race-%'});
is($ok + $denied, 80, 'race: every one of the 80 racing transfers was either applied or refused');
is($posted + $used, 2000, "race: the racers used exactly the daily limit ($ok applied, $denied refused)");
push @matrix, sprintf('%-38s %-8s %-6s %s', 'race-daily-limit (8 sessions x 10)', 'risk', '42501', "applied=$ok refused=$denied total=" . ($posted + $used) . "/2000");
# events: emitting needs event.emit on the aggregate type, consuming event.consume on the
# consumer's name; a service's consumer sees only the ledger events of its own accounts
$node->safe_psql('postgres', q{
	SELECT fintx.grant_permission('pay', 'event.emit', 'payments.%');
	SELECT fintx.grant_permission('pay', 'event.consume', 'pay-%');
	SELECT fintx.create_consumer('all-events');
});
attack(name => 'emit-without-grant', role => 'pay', expect => '42501',
	sql => q{SELECT fintx.emit('orders', 'o-1', 'created', '{}')});
($st, $out) = run_as('pay', 'emit-ok', q{SELECT fintx.emit('payments.order', 'o-1', 'created', '{"n": 1}') IS NOT NULL});
is("$st|$out", '|t', 'a service emits events of an aggregate type its grant covers');
# a forged ledger event type under a granted aggregate type, refused and caught: still recorded
($st, $out) = run_as('pay', 'emit-forged-caught', q{
	DO $d$ BEGIN PERFORM fintx.emit('payments.order', 'o-2', 'transfer.posted', '{}');
	EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'caught'; END $d$});
is($st, '', 'a reserved event type refused and caught: the transaction goes on');
is(denials_seen('emit-forged-caught'), 1, 'the refusal is in the access log all the same');
is($node->safe_psql('postgres', q{SELECT operation || ' | ' || reason FROM fintx.access_log WHERE application_name = 'emit-forged-caught'}),
	'event.emit | aggregate type "payments.order" or event type "transfer.posted" is reserved for fintx\'s own events',
	'named as an event.emit refusal');
attack(name => 'consume-other-services-consumer', role => 'pay', expect => '42501',
	sql => q{SELECT fintx.create_consumer('risk-feed')});
attack(name => 'poll-consumer-not-granted', role => 'pay', expect => '42501',
	sql => q{SELECT count(*) FROM fintx.poll('all-events', 10)});
($st, $out) = run_as('pay', 'consumer-ok', q{SELECT fintx.create_consumer('pay-feed')});
is($st, '', 'a service creates a consumer its grant covers');
# everything so far is sequenced once the admin's consumer sees the emitted event
my $admin_poll = quiet_session($node);
my ($seen_all) = poll_until($admin_poll,
	q{SELECT count(*) > 0 FROM fintx.poll('all-events', 10000) WHERE aggregatetype = 'payments.order'}, 't', 30);
ok($seen_all, 'the events are sequenced');
my $risk_events = $node->safe_psql('postgres',
	q{SELECT count(*) FROM fintx.poll('all-events', 10000)
	   WHERE (aggregatetype = 'transfer' AND (payload->>'from_account' LIKE 'risk:%' AND payload->>'to_account' LIKE 'risk:%'))
	      OR (aggregatetype = 'account' AND aggregateid LIKE 'risk:%')});
ok($risk_events > 0, "the outbox holds events of risk's accounts ($risk_events)");
($st, $out) = run_as('pay', 'poll-own', q{
	SELECT count(*) FILTER (WHERE (aggregatetype = 'transfer' AND payload->>'from_account' NOT LIKE 'pay:%'
	                                                          AND payload->>'to_account' NOT LIKE 'pay:%')
	                            OR (aggregatetype = 'account' AND aggregateid NOT LIKE 'pay:%'))
	       || '|' || count(*) FILTER (WHERE aggregatetype IN ('transfer', 'account'))
	       || '|' || count(*) FILTER (WHERE aggregatetype = 'payments.order')
	  FROM fintx.poll('pay-feed', 10000)});
my ($foreign, $ledger_events, $app_events) = split /\|/, $out;
is("$st|$foreign", '|0', 'a service\'s consumer receives no event of another service\'s accounts');
ok($ledger_events > 0, "it receives the ledger events of its own accounts ($ledger_events)");
is($app_events, '1', 'and the application events');
push @matrix, sprintf('%-38s %-8s %-6s %s', 'poll-other-services-events', 'pay', 'rows=0', "own ledger events=$ledger_events");
$admin_poll->quit;

# code a service owns, run on its behalf by an administrator or autovacuum: an expression
# index that calls fintx (ANALYZE runs it as the table's owner) and a SECURITY DEFINER function
($st) = run_as('pay', 'plant', q{
	CREATE FUNCTION hijack.steal(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$
	BEGIN
		IF session_user <> 'pay' THEN
			PERFORM fintx.transfer('steal-' || x, 'risk:pool', 'pay:cust', 1000000);
		END IF;
		RETURN x;
	END $f$;
	CREATE TABLE hijack.t (x int);
	INSERT INTO hijack.t SELECT g FROM generate_series(1, 5) g;
	CREATE INDEX ON hijack.t (hijack.steal(x));
	CREATE FUNCTION hijack.definer() RETURNS text LANGUAGE sql SECURITY DEFINER AS
	  $f$ SELECT status FROM fintx.transfer('steal-def', 'risk:pool', 'pay:cust', 1000000) $f$;
});
is($st, '', 'a service plants fintx calls in an index expression and a SECURITY DEFINER function');
my ($arc, $aout, $aerr) = $node->psql('postgres', 'ANALYZE hijack.t');
like($aerr, qr/fintx cannot be called within a security-restricted operation/,
	'an administrator\'s ANALYZE does not run fintx as the table\'s owner');
($arc, $aout, $aerr) = $node->psql('postgres', 'SELECT hijack.definer()');
like($aerr, qr/permission denied for transfer on "risk:pool"/,
	'an administrator calling the service\'s SECURITY DEFINER function acts as the service (refused)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.idempotency_keys WHERE idempotency_key LIKE 'steal-%'}),
	'0', 'no money moved on the service\'s behalf');
push @matrix, sprintf('%-38s %-8s %-6s %s', 'run-fintx-via-analyze-or-definer', 'pay', 'refused', 'no transfer');

# a materialized view a service owns, refreshed by an administrator, sees no more than the service
($st) = run_as('pay', 'plant-mv', q{
	CREATE MATERIALIZED VIEW hijack.mv_bal AS SELECT code FROM fintx.account_balances;
	CREATE MATERIALIZED VIEW hijack.mv_hist AS SELECT transfer_id FROM fintx.transfer_history;
});
is($st, '', 'a service creates materialized views over fintx views');
$node->safe_psql('postgres', 'REFRESH MATERIALIZED VIEW hijack.mv_bal; REFRESH MATERIALIZED VIEW hijack.mv_hist');
is($node->safe_psql('postgres', 'SELECT (SELECT count(*) FROM hijack.mv_bal) + (SELECT count(*) FROM hijack.mv_hist)'),
	'0', 'refreshed by an administrator (a security-restricted operation) they see nothing');

# SECURITY DEFINER functions nested deeper than fintx tracks: refused, not guessed
($st) = run_as('pay', 'plant-deep', q{
	CREATE FUNCTION hijack.deep(n int) RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $f$
	BEGIN
		IF n = 0 THEN RETURN (SELECT status FROM fintx.transfer('deep-1', 'pay:ops', 'pay:cust', 1)); END IF;
		RETURN hijack.deep(n - 1);
	END $f$;
});
($arc, $aout, $aerr) = $node->psql('postgres', 'SELECT hijack.deep(70)');
like($aerr, qr/SECURITY DEFINER functions are nested too deeply to identify the caller of fintx/,
	'70 nested SECURITY DEFINER functions: the caller cannot be identified, the call is refused');
($arc, $aout, $aerr) = $node->psql('postgres', 'SELECT hijack.deep(3)');
is($aout, 'posted', 'a few nested levels identify the service (its grant covers pay:ops)');

# a revoked grant takes effect for a session that was in a REPEATABLE READ transaction
my $rr = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'risk' ]);
$rr->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$rr->query_safe('SELECT count(*) FROM pg_class');
$node->safe_psql('postgres', q{SELECT fintx.revoke_permission('risk', 'transfer', 'risk:%')});
$rr->query_safe('SELECT count(*) FROM fintx.account_balances');
$rr->query_safe('COMMIT');
$rr->query(q{SELECT status FROM fintx.transfer('after-revoke', 'risk:pool', 'risk:res', 1)});
like($rr->{stderr}, qr/permission denied for transfer on "risk:pool"/,
	'after the revoke commits, the session is refused (no stale grant cache)');
$rr->quit;

# a fintx denial caught in an EXCEPTION block does not hide the next PostgreSQL refusal
($st) = run_as('pay', 'caught-then-write', q{
	DO $d$ BEGIN PERFORM fintx.transfer('c-1', 'risk:pool', 'pay:cust', 1);
	EXCEPTION WHEN insufficient_privilege THEN NULL; END $d$;
	UPDATE fintx.accounts SET credits_posted = 0;
});
is($st, '42501', 'the direct write after a caught denial is refused');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.access_log
	WHERE application_name = 'caught-then-write' AND object = 'permission denied for table accounts'}) > 0 ? 't' : 'f',
	't', 'and it is in the access log');

# a refusal fintx recorded, caught and re-raised by user code (a bare RAISE; re-throws the
# error it caught): recorded once, not a second time as a "sql" refusal
($st) = run_as('pay', 'reraised', q{
	DO $d$ BEGIN PERFORM fintx.transfer('rr-1', 'risk:pool', 'pay:cust', 1);
	EXCEPTION WHEN insufficient_privilege THEN RAISE; END $d$});
is($st, '42501', 'a transfer refusal caught and re-raised reaches the client');
($st) = run_as('pay', 'reraised', q{
	DO $d$ BEGIN PERFORM fintx.emit('payments.order', 'o-3', 'transfer.posted', '{}');
	EXCEPTION WHEN insufficient_privilege THEN RAISE; END $d$});
is($st, '42501', 'a reserved event type refused, caught and re-raised');
($st) = run_as('postgres', 'reraised', q{
	DO $d$ BEGIN DELETE FROM fintx.access_log_entries;
	EXCEPTION WHEN insufficient_privilege THEN RAISE; END $d$});
is($st, '42501', 'an append-only refusal caught and re-raised');
# the queue is written in order: once a later refusal is in, so is everything queued before it
run_as('pay', 'reraised-after', q{UPDATE fintx.accounts SET credits_posted = 0});
is(denials_seen('reraised-after'), 1, 'a later refusal is in the access log');
is($node->safe_psql('postgres', q{SELECT string_agg(operation || ' | ' || coalesce(rule, '-'), ', ' ORDER BY at, operation)
	FROM fintx.access_log WHERE application_name = 'reraised'}),
	'transfer | -, event.emit | fintx, sql | append-only table',
	'each re-raised refusal is in the access log once, as what fintx decided');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.audit_log WHERE action = 'access.denied'
	AND details->>'application_name' = 'reraised'}), '3', 'and in the audit log once each');

# a 42501 that user code raises is not a refusal of PostgreSQL's: any role could otherwise
# write text of its choice into the access log and, for ever, into the audit log
($st) = run_as('pay', 'forged-raise', q{
	DO $d$ BEGIN RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'permission denied for table transfers (forged)'; END $d$});
is($st, '42501', 'a role raises 42501 itself');
($st) = run_as('pay', 'forged-raise', q{UPDATE fintx.accounts SET credits_posted = 0});
is($st, '42501', 'then PostgreSQL refuses it something');
is(denials_seen('forged-raise'), 1, 'only PostgreSQL\'s refusal is in the access log');
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.access_log WHERE object LIKE '%(forged)%'}) . '/'
	  . $node->safe_psql('postgres', q{SELECT count(*) FROM fintx.audit_log WHERE details::text LIKE '%(forged)%'}),
	'0/0', 'the raised text is in neither the access log nor the audit log');

is(reconcile_rows($node), '', 'the ledger reconciles after the attacks');

# every denial also entered the audit log
is($node->safe_psql('postgres',
	q{SELECT count(*) >= (SELECT count(*) FROM fintx.access_log_entries WHERE NOT allowed) FROM fintx.audit_log WHERE action = 'access.denied'}),
	't', 'every denial has an access.denied audit entry');
is($node->safe_psql('postgres', 'SELECT ok FROM fintx.verify_audit()'), 't', 'the audit log verifies');

# a superuser's change of an append-only table is refused by fintx's trigger; the denial says so
{
	local $ENV{PGAPPNAME} = 'su-erase';
	my ($rc2, $out2, $err2) = $node->psql('postgres', 'DELETE FROM fintx.access_log_entries',
		extra_params => [ '-v', 'VERBOSITY=sqlstate' ]);
	is(first_sqlstate($err2), '42501', 'a superuser cannot delete access-log rows');
}
is(denials_seen('su-erase'), 1, 'the refusal is in the access log');
is($node->safe_psql('postgres', q{SELECT rule || ' | ' || reason FROM fintx.access_log WHERE application_name = 'su-erase'}),
	'append-only table | refused by fintx: DELETE on table "access_log_entries" is not allowed',
	'named as fintx\'s append-only refusal, not as a PostgreSQL privilege check');

# A database owner (not a superuser) puts its own text = operator in front of
# pg_catalog's for every new session of the database. The worker, which writes
# the denial queue's rows as the bootstrap superuser, must not run it.
my $watch = quiet_session($node);	# connected before: the default search_path
$node->safe_psql('postgres', q{
	CREATE ROLE dbowner LOGIN;
	ALTER DATABASE postgres OWNER TO dbowner;
	CREATE TABLE public.pwned (run_as text, session_as text);
	GRANT INSERT ON public.pwned TO PUBLIC;
});
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.evil_eq(a text, b text) RETURNS boolean LANGUAGE sql AS $f$
		INSERT INTO public.pwned VALUES (current_user, session_user);
		SELECT a OPERATOR(pg_catalog.=) b;
	$f$;
	CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
	ALTER DATABASE postgres SET search_path = public, pg_catalog;
}, extra_params => [ '-U', 'dbowner' ]);
# a new worker session picks up the database's setting (the test's own queries
# from here on spell out pg_catalog's operator)
my $old_worker = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type OPERATOR(pg_catalog.=) 'fintx worker'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_worker)");
ok((poll_until($watch, qq{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type OPERATOR(pg_catalog.=) 'fintx worker' AND pid <> $old_worker}, 't'))[0],
	'the worker is back');
# a denial PostgreSQL decides: the worker looks the service up by role name
($st) = run_as('pay', 'owner-operator', q{UPDATE fintx.accounts SET credits_posted = 0});
is($st, '42501', 'a denial while the database sets an owner-made search_path');
ok((poll_until($watch, q{SELECT count(*) > 0 FROM fintx.access_log
	WHERE application_name OPERATOR(pg_catalog.=) 'owner-operator' AND NOT allowed}, 't'))[0],
	'the worker recorded the denial');
is($node->safe_psql('postgres', q{SELECT coalesce(string_agg(run_as || '/' || session_as, ','), '') FROM public.pwned}), '',
	'the worker did not run the database owner\'s operator');
$node->safe_psql('postgres', q{
	ALTER DATABASE postgres RESET search_path;
	DROP OPERATOR public.= (text, text);
	DROP FUNCTION public.evil_eq(text, text);
});
$watch->quit;

diag("attack matrix (attack, role, SQLSTATE, auditor view):\n" . join("\n", @matrix));
$node->stop;
done_testing();

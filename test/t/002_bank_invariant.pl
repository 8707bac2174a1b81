
# Copyright fintx contributors
#
# 002_bank_invariant.pl — money is conserved under concurrent writers.
#
# Two pgbench runs write at the same time:
#   * "bank": 4 clients move random amounts between 20 funded accounts (amounts
#     that can never overdraw), plus a script that always tries to overdraw and
#     must get FX001 (caught in a PL/pgSQL wrapper so the client goes on);
#   * "pingpong": 16 clients move money back and forth between the same two
#     accounts, as single transfers in both directions and as batches holding
#     both directions in either order — lock ordering must prevent deadlocks.
# Meanwhile a reader checks in every snapshot that the sums of posted balances
# are the constants they started at. At the end the transfer counts must match
# what pgbench reports, balances must match the transfer rows, reconcile() must
# be clean and the server log must hold no "deadlock detected".

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IPC::Run;
use FintxTest;

my $NACCT = 20;
my $INITIAL = 1_000_000;          # per account; bank moves at most 100 x 6000
my $BANK_CLIENTS = 4;
my $BANK_TX = 1500;               # per client
my $PP_CLIENTS = 16;
my $PP_TX = 300;                  # per client; at most 2 x 50 x 4800 < INITIAL
my $BANK_TOTAL = $NACCT * $INITIAL;
my $PP_TOTAL = 2 * $INITIAL;

my $node = fintx_node('bank');
my $setup = "SELECT fintx.open_account('mint', 'EUR', allow_negative => true);\n"
  . "SELECT fintx.open_account('pp-a', 'EUR'), fintx.open_account('pp-b', 'EUR');\n"
  . "SELECT fintx.transfer('fund-pp-a', 'mint', 'pp-a', $INITIAL), fintx.transfer('fund-pp-b', 'mint', 'pp-b', $INITIAL);\n";
$setup .= "SELECT fintx.open_account('acct-$_', 'EUR');\n"
  . "SELECT fintx.transfer('fund-$_', 'mint', 'acct-$_', $INITIAL);\n"
  for 1 .. $NACCT;
# Each refused overdraw is recorded in the client's transaction, so the number of bank
# transfers that must be in the ledger is known exactly from outside fintx (pgbench's own
# per-script counts can be off by one).
$setup .= q{
CREATE TABLE public.overdraw_attempts (k text PRIMARY KEY);
CREATE FUNCTION public.try_overdraw(k text, f text, t text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM fintx.transfer(k, f, t, 1000000000000);
	RAISE EXCEPTION 'overdraw from % was accepted', f;
EXCEPTION WHEN SQLSTATE 'FX001' THEN
	INSERT INTO public.overdraw_attempts VALUES (k);
	RETURN 'FX001';
END
$$;
};
$node->safe_psql('postgres', $setup);

my $invariant_sql = q{SELECT sum(posted) || '|' || sum(posted) FILTER (WHERE code LIKE 'acct-%')
	|| '|' || sum(posted) FILTER (WHERE code LIKE 'pp-%')
	|| '|' || bool_and(available >= 0) FILTER (WHERE code <> 'mint')
	|| '|' || (SELECT count(*) FROM fintx.transfers)
	FROM fintx.account_balances};
my $expected_state = "0|$BANK_TOTAL|$PP_TOTAL|true";
my $start_count = 2 + $NACCT;
is($node->safe_psql('postgres', $invariant_sql), "$expected_state|$start_count",
	'setup: 22 funded accounts, posted balances sum to zero');

# --- pgbench scripts --------------------------------------------------------
my $dir = $PostgreSQL::Test::Utils::tmp_check;
append_to_file("$dir/bank_transfer.sql", <<"EOS");
\\set n :n + 1
\\set f random(1, $NACCT)
\\set t 1 + (:f + random(0, $NACCT - 2)) % $NACCT
\\set a random(1, 100)
SELECT fintx.transfer('r-' || :client_id || '-' || :n, 'acct-' || :f, 'acct-' || :t, :a);
EOS
append_to_file("$dir/bank_overdraw.sql", <<"EOS");
\\set n :n + 1
\\set f random(1, $NACCT)
\\set t 1 + (:f + random(0, $NACCT - 2)) % $NACCT
SELECT public.try_overdraw('o-' || :client_id || '-' || :n, 'acct-' || :f, 'acct-' || :t);
EOS
append_to_file("$dir/pp_single.sql", <<'EOS');
\set n :n + 1
\set d random(0, 1)
\set a random(1, 50)
SELECT fintx.transfer('p-' || :client_id || '-' || :n,
	CASE WHEN :d = 0 THEN 'pp-a' ELSE 'pp-b' END,
	CASE WHEN :d = 0 THEN 'pp-b' ELSE 'pp-a' END, :a);
EOS
append_to_file("$dir/pp_batch.sql", <<'EOS');
\set n :n + 1
\set d random(0, 1)
\set a random(1, 50)
\set b random(1, 50)
SELECT count(*) FROM fintx.transfer_batch(jsonb_build_array(
	jsonb_build_object('idempotency_key', 'q-' || :client_id || '-' || :n || '-1',
		'from_account', CASE WHEN :d = 0 THEN 'pp-a' ELSE 'pp-b' END,
		'to_account', CASE WHEN :d = 0 THEN 'pp-b' ELSE 'pp-a' END, 'amount', :a),
	jsonb_build_object('idempotency_key', 'q-' || :client_id || '-' || :n || '-2',
		'from_account', CASE WHEN :d = 0 THEN 'pp-b' ELSE 'pp-a' END,
		'to_account', CASE WHEN :d = 0 THEN 'pp-a' ELSE 'pp-b' END, 'amount', :b)));
EOS

sub start_pgbench
{
	my ($clients, $tx, @scripts) = @_;
	my ($out, $err) = ('', '');
	my @cmd = ('pgbench', '-n', '-h', $node->host, '-p', $node->port,
		'-c', $clients, '-j', 2, '-t', $tx, '-D', 'n=0',
		(map { ('-f', "$dir/$_") } @scripts), 'postgres');
	my $h = IPC::Run::start(\@cmd, '<', '/dev/null', '>', \$out, '2>', \$err,
		IPC::Run::timeout(120));
	return { h => $h, out => \$out, err => \$err };
}

# Per-script transaction counts from pgbench's report, in script order.
sub script_counts
{
	my ($out) = @_;
	return [ $out =~ /^ - (\d+) transactions \(/mg ];
}

my $t0 = time;
my $bank = start_pgbench($BANK_CLIENTS, $BANK_TX, 'bank_transfer.sql@9', 'bank_overdraw.sql@1');
my $pp = start_pgbench($PP_CLIENTS, $PP_TX, 'pp_single.sql@1', 'pp_batch.sql@1');

# --- concurrent reader ------------------------------------------------------
my $reader = quiet_session($node);
my ($checks, $violations, %counts_seen) = (0, 0);
my @bad_snapshots;
while ((time - $t0) < 90)
{
	my $running = 0;
	for my $b ($bank, $pp)
	{
		$b->{h}->pump_nb if $b->{h}->pumpable;
		$running++ if $b->{h}->pumpable;
	}
	last unless $running;
	my $row = quiet_query($reader, $invariant_sql);
	my ($state, $count) = $row =~ /^(.*)\|(\d+)$/ ? ($1, $2) : ($row, -1);
	$checks++;
	$counts_seen{$count} = 1;
	if ($state ne $expected_state)
	{
		$violations++;
		push @bad_snapshots, $row if @bad_snapshots < 5;
	}
}
$reader->quit;
my %res;
for my $b ([ bank => $bank ], [ pp => $pp ])
{
	my ($name, $r) = @$b;
	eval { $r->{h}->finish; };
	$res{$name} = { rc => ($@ ? -1 : $r->{h}->result(0)), out => ${ $r->{out} },
		err => ${ $r->{err} } . $@ };
}
my $elapsed = time - $t0;
diag(sprintf('writers ran %.1f s; reader checked %d snapshots (%d distinct transfer counts)',
	$elapsed, $checks, scalar(keys %counts_seen)));

for my $name (qw(bank pp))
{
	is($res{$name}{rc}, 0, "pgbench $name exited with status 0")
	  or diag("stdout:\n$res{$name}{out}\nstderr:\n$res{$name}{err}");
	unlike($res{$name}{err}, qr/aborted|ERROR/, "pgbench $name: no client aborted, no error");
	like($res{$name}{out}, qr/number of failed transactions: 0 /,
		"pgbench $name: no failed transaction (no deadlock or serialization failure)");
}
is($violations, 0, 'reader: every snapshot had sum(posted) = 0, the bank total, the ping-pong total and no negative available balance')
  or diag(join("\n", @bad_snapshots));
cmp_ok($checks, '>=', 20, 'reader: checked at least 20 snapshots while the writers ran');
cmp_ok(scalar(keys %counts_seen), '>=', 10,
	'reader: saw at least 10 different transfer counts, so its snapshots interleaved with writes');

# --- exact end state ---------------------------------------------------------
my $bank_counts = script_counts($res{bank}{out});
my $pp_counts = script_counts($res{pp}{out});
is(scalar(@$bank_counts), 2, 'pgbench bank reported two scripts');
cmp_ok($bank_counts->[1] // 0, '>', 0, 'pgbench bank: overdraw attempts ran (each got FX001)');
# pgbench's per-script counts can be off by one under -j 2 (its per-thread
# statistics are merged racily), so totals come from "actually processed"
# and the per-kind counts from the ledger itself.
like($res{bank}{out}, qr{number of transactions actually processed: (\d+)/\1\b},
	'pgbench bank: all ' . ($BANK_CLIENTS * $BANK_TX) . ' transactions ran');
like($res{pp}{out}, qr{number of transactions actually processed: (\d+)/\1\b},
	'pgbench pingpong: all ' . ($PP_CLIENTS * $PP_TX) . ' transactions ran');

my %by_prefix = map { split /=/ } split / /, $node->safe_psql('postgres', q{
	SELECT string_agg(p || '=' || n, ' ' ORDER BY p) FROM (
	  SELECT left(j.idempotency_key, 2) AS p, count(*) AS n
	    FROM fintx.idempotency_keys j JOIN fintx.transfers t ON t.id = j.transfer_id
	   GROUP BY 1) s});
is($by_prefix{'o-'} // 0, 0, 'no overdraw attempt left a transfer or a journal row');
is($by_prefix{'fu'}, $NACCT + 2, 'funding transfers intact');
my $attempts = $node->safe_psql('postgres', 'SELECT count(*) FROM public.overdraw_attempts');
cmp_ok($attempts, '>', 0, 'the clients recorded their refused overdraw attempts');
my $bank_transfers = $BANK_CLIENTS * $BANK_TX - $attempts;
is($by_prefix{'r-'} // 0, $bank_transfers,
	"bank: exactly one transfer in the ledger per bank transaction that was not an overdraw attempt ($bank_transfers)");
is(($by_prefix{'q-'} // 0) % 2, 0, 'every ping-pong batch applied both of its transfers');
is(($by_prefix{'p-'} // 0) + ($by_prefix{'q-'} // 0) / 2, $PP_CLIENTS * $PP_TX,
	'ping-pong: one single transfer or one batch of two per pgbench transaction');

# transfers = funding + one per bank transfer + one per ping-pong single transfer and two per
# ping-pong batch (p + q/2 = the ping-pong transactions pgbench ran, checked above)
is($node->safe_psql('postgres', $invariant_sql), "$expected_state|"
	  . ($start_count + $bank_transfers + $PP_CLIENTS * $PP_TX + ($by_prefix{'q-'} // 0) / 2),
	'end: sums unchanged and transfer count exact');

# every account's posted balance equals its initial funds plus its transfers
is( $node->safe_psql('postgres', q{
	SELECT count(*) FROM fintx.account_balances b
	 WHERE b.code <> 'mint'
	   AND b.posted <> (SELECT coalesce(sum(CASE WHEN h.to_account = b.code THEN h.amount ELSE -h.amount END), 0)
	                      FROM fintx.transfer_history h
	                     WHERE h.status = 'posted' AND b.code IN (h.from_account, h.to_account))}),
	0,
	'end: every account balance equals the sum of its transfer rows');
my $pp_moves = $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE from_account = 'pp-a') || '/' || count(*) FILTER (WHERE from_account = 'pp-b')
	  FROM fintx.transfer_history WHERE from_account IN ('pp-a', 'pp-b')});
my ($ab, $ba) = split m{/}, $pp_moves;
diag("ping-pong: $ab transfers went pp-a -> pp-b, $ba went pp-b -> pp-a");
cmp_ok($ab, '>', 100, 'ping-pong: more than 100 transfers went pp-a -> pp-b');
cmp_ok($ba, '>', 100, 'ping-pong: more than 100 transfers went pp-b -> pp-a');
is(reconcile_rows($node), '', 'end: reconcile() reports no discrepancy');
ok(!$node->log_contains('deadlock detected'), 'server log: no "deadlock detected"');
unlike(slurp_file($node->logfile), qr/ERROR:/, 'server log: no ERROR at all (overdraw attempts were caught by the wrapper)')
  or diag(join("\n", (grep { /ERROR/ } split /\n/, slurp_file($node->logfile))[0 .. 4]));

$node->stop;
done_testing();

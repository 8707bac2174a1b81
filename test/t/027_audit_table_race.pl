# Copyright fintx contributors
#
# 027_audit_table_race.pl — audit_table() and append_only() attach their triggers to the
# table whose owner they checked, even when its name is pointed at another table meanwhile.
#
# They run as the extension's owner and create the triggers with CREATE TRIGGER, which
# finds the table by name. A caller who owns a schema can rename schemas between the
# ownership check and CREATE TRIGGER: the name then leads to a table of another role in it,
# whose rows the caller would read in the audit log (or which would refuse its owner's
# UPDATEs). fintx locks the checked table first (so the check and the triggers see the same
# table) and verifies afterwards that the triggers are on it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('race');
$node->safe_psql('postgres', q{
	CREATE ROLE mallory; GRANT fintx_admin TO mallory; GRANT CREATE ON DATABASE postgres TO mallory;
	CREATE ROLE victim;
	CREATE SCHEMA s AUTHORIZATION mallory;
	GRANT USAGE, CREATE ON SCHEMA s TO victim;
	SET ROLE victim; CREATE TABLE s.vt (id int, card text); RESET ROLE;
	CREATE SCHEMA m AUTHORIZATION mallory;
	SET ROLE mallory; CREATE TABLE m.vt (id int, card text); RESET ROLE;
});

my $poll = quiet_session($node);
for my $fn ('audit_table', 'append_only')
{
	# A (mallory) holds her table; B (mallory) asks for triggers on it and waits; A then
	# renames the schemas so that m.vt names the victim's table, and commits
	my $a = quiet_session($node);
	quiet_safe($a, 'BEGIN');
	quiet_safe($a, 'SET LOCAL ROLE mallory');
	quiet_safe($a, 'LOCK TABLE m.vt IN ACCESS EXCLUSIVE MODE');
	my $b = psql_start($node, "race-$fn", "SET ROLE mallory;\nSELECT fintx.$fn('m.vt');\n");
	my ($ok) = poll_until($poll,
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = 'race-$fn' AND wait_event_type = 'Lock'", '1', 20);
	ok($ok, "$fn: the call waits for the table");
	quiet_safe($a, 'ALTER SCHEMA m RENAME TO m_old');
	quiet_safe($a, 'ALTER SCHEMA s RENAME TO m');
	quiet_safe($a, 'COMMIT');
	my $r = psql_finish($b);
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	                                   WHERE c.relowner = 'victim'::regrole AND t.tgname LIKE 'fintx%'}),
		'0', "$fn: no trigger on the victim's table") or diag($r->{err});
	like($node->safe_psql('postgres', q{SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger
	                                     WHERE tgrelid = 'm_old.vt'::regclass}),
		qr/fintx/, "$fn: the triggers are on the table whose owner was checked");
	# back to the start for the next function
	$node->safe_psql('postgres', q{ALTER SCHEMA m RENAME TO s; ALTER SCHEMA m_old RENAME TO m;
	                               DROP TRIGGER IF EXISTS fintx_audit ON m.vt; DROP TRIGGER IF EXISTS fintx_audit_truncate ON m.vt;
	                               DROP TRIGGER IF EXISTS fintx_append_only ON m.vt; DROP TRIGGER IF EXISTS fintx_append_only_truncate ON m.vt});
	$a->quit;
}
$node->safe_psql('postgres', q{SET ROLE victim; INSERT INTO s.vt VALUES (1, '4111 1111 1111 1111')});
is($node->safe_psql('postgres', q{SELECT count(*) FROM fintx.audit_entries WHERE details::text LIKE '%4111%'}),
	'0', "the victim's rows are not in the audit log");

$poll->quit;
$node->stop;
done_testing();


# Copyright fintx contributors

=pod

=head1 NAME

FintxTest - helpers shared by the fintx TAP tests in test/t

=head1 SYNOPSIS

  use FintxTest;
  my $node = fintx_node('main', "fintx.expire_interval = '100ms'");
  my $ctl  = quiet_session($node);
  my $res  = barrier_race($node, $ctl, name => 'race', n => 16,
                          stmt => sub { "SELECT 'R', t.* FROM fintx.transfer(...) t;" });

=head1 DESCRIPTION

Node setup with fintx preloaded, psql clients that run a script in the
background (files in, files out, so nothing has to be pumped), polling with a
deadline, and a two-barrier race driver that makes N sessions hit the same
object while a winner's transaction is provably still open.

=cut

package FintxTest;

use strict;
use warnings;

use Exporter 'import';
use File::Path qw(make_path);

# PostgreSQL::Test::Utils creates $TESTDIR/tmp_check in an INIT block but not
# $TESTDIR itself; create it in case the runner did not (this BEGIN block runs
# at compile time, before any INIT block).
BEGIN
{
	make_path($ENV{TESTDIR}) if $ENV{TESTDIR} && !-d $ENV{TESTDIR};
}
use IPC::Run;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(fintx_node psql_start psql_finish psql_result_rows first_sqlstate
  all_sqlstates poll_until barrier_race reconcile_rows quiet_query quiet_safe quiet_session
  remap_leaves_sql seal_lock_key);

my $file_seq = 0;

# The advisory lock key of fintx's sealing lock (src/sequencer.c, SEAL_LOCK_KEY), for tests
# that hold it the way a session sealing in its own transaction does.
sub seal_lock_key
{
	return hex('66696E7478736C');
}

# Creates, configures and starts a node with fintx preloaded, and installs
# the extension in database "postgres" (where the worker runs). Extra
# postgresql.conf lines come last so they win; a leading hashref holds
# parameters for PostgreSQL::Test::Cluster::init.
sub fintx_node
{
	my ($name, @conf) = @_;
	my %init = ref $conf[0] eq 'HASH' ? %{ shift @conf } : ();
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf('postgresql.conf',
		join("\n",
			"shared_preload_libraries = 'fintx'",
			"fintx.database = 'postgres'",
			"max_connections = 60",
			"shared_buffers = 64MB",
			"log_statement = 'none'",
			"log_lock_waits = off",
			@conf)
		  . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION fintx');
	return $node;
}

# BackgroundPsql::query without its per-query note() output, for loops that
# poll many times (the notes would flood the TAP output).
sub quiet_query
{
	my ($session, $sql) = @_;
	no warnings 'redefine';
	local *PostgreSQL::Test::BackgroundPsql::note = sub { };
	return $session->query($sql);
}

# quiet_query that dies if the session has reported an error.
sub quiet_safe
{
	my ($session, $sql) = @_;
	my $out = quiet_query($session, $sql);
	die "query failed: $session->{stderr}" if $session->{stderr} ne '';
	return $out;
}

# $node->background_psql('postgres', %params) without the connect note().
sub quiet_session
{
	my ($node, %params) = @_;
	no warnings 'redefine';
	local *PostgreSQL::Test::BackgroundPsql::note = sub { };
	return $node->background_psql('postgres', %params);
}

# Starts psql in the background on $script (written to a file), with
# ON_ERROR_STOP off and terse errors ("ERROR:  23505"). stdout and stderr go
# to files, so the caller need not pump anything. application_name is $app.
sub psql_start
{
	my ($node, $app, $script, %opts) = @_;
	my $dir = $PostgreSQL::Test::Utils::tmp_check;
	my $base = sprintf('%s/psql-%s-%d-%d', $dir, $app, $$, ++$file_seq);
	PostgreSQL::Test::Utils::append_to_file("$base.sql", $script);
	my @cmd = (
		$node->installed_command('psql'), '-XAtq',
		'-v', 'ON_ERROR_STOP=' . ($opts{on_error_stop} ? 1 : 0),
		'-v', 'VERBOSITY=sqlstate',
		'-d', $node->connstr('postgres') . " application_name=$app",
		'-f', "$base.sql");
	my $h = IPC::Run::start(\@cmd, '<', '/dev/null', '>', "$base.out", '2>', "$base.err",
		IPC::Run::timeout($opts{timeout} // 120));
	return { h => $h, base => $base, app => $app };
}

# Waits for a psql started by psql_start; returns { out, err, rc }.
sub psql_finish
{
	my ($p) = @_;
	eval { $p->{h}->finish; };
	my $died = $@;
	my $rc = $died ? -1 : $p->{h}->full_result(0);
	$p->{h}->kill_kill if $died;
	my $out = -e "$p->{base}.out" ? slurp_file("$p->{base}.out") : '';
	my $err = -e "$p->{base}.err" ? slurp_file("$p->{base}.err") : '';
	$err .= "\n(psql harness: $died)" if $died;
	return { out => $out, err => $err, rc => $rc, app => $p->{app} };
}

# Rows of psql -At output whose first field is $tag, split on '|'.
sub psql_result_rows
{
	my ($out, $tag) = @_;
	return [ map { [ split /\|/, $_, -1 ] } grep { /^\Q$tag\E\|/ } split /\n/, $out ];
}

# SQLSTATE of the first error in psql's stderr (VERBOSITY=sqlstate), or undef.
sub first_sqlstate
{
	my ($err) = @_;
	return $err =~ /ERROR:\s+([0-9A-Z]{5})/ ? $1 : undef;
}

# Every SQLSTATE reported in psql's stderr, in order.
sub all_sqlstates
{
	my ($err) = @_;
	return [ $err =~ /ERROR:\s+([0-9A-Z]{5})/g ];
}

# Runs $sql on $session (a BackgroundPsql) until it returns $expected or
# $timeout seconds pass. Returns (true, seconds) or (false, last output).
sub poll_until
{
	my ($session, $sql, $expected, $timeout) = @_;
	$timeout //= 30;
	my $start = time;
	my $last;
	while (1)
	{
		$last = quiet_query($session, $sql);
		return (1, time - $start) if defined $last && $last eq $expected;
		return (0, $last) if time - $start > $timeout;
		usleep(20_000);
	}
}

# Rows returned by fintx.reconcile(), one string each ('' when consistent).
sub reconcile_rows
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		q{SELECT check_name || ' ' || object || ' expected=' || expected || ' actual=' || actual
		    FROM fintx.reconcile()});
}

=pod

=head2 barrier_race($node, $ctl, %opts)

Starts C<n> psql sessions (application_name "<name>-<i>") that each run

  SELECT pg_advisory_lock_shared(B1);   -- start barrier, held by $ctl
  BEGIN;
  <stmt(i)>
  SELECT pg_advisory_xact_lock_shared(B2);   -- end barrier, held by $ctl
  COMMIT;

Once all n wait on B1, C<before_release> runs (if given), B1 is released and
all sessions run their statement at once. The first to get through parks on
B2 with its transaction open; the test then waits until the n-1 others are
blocked on it (wait events in C<lock_events>, default transactionid/tuple),
which proves they really raced against an uncommitted winner, and releases B2.
C<after_release> (if given) runs between releasing B1 and that check, with a
monitoring session (outside any transaction, so pg_stat_activity is fresh) as
argument: it may end a transaction of $ctl that every session waits for.

Returns a hashref: sessions => [ {out, err, rc, app} ... ] in session order,
raced => whether the n-1 waiters were observed.

=cut

sub barrier_race
{
	my ($node, $ctl, %o) = @_;
	my $n = $o{n};
	my $name = $o{name};
	my ($b1, $b2) = (7001, 7002);
	my $events = $o{lock_events} // "'transactionid','tuple'";
	my $mon = quiet_session($node);
	my %res;

	quiet_safe($ctl, "SELECT pg_advisory_lock($b1), pg_advisory_lock($b2)");
	my @ps;
	for my $i (0 .. $n - 1)
	{
		my $script = "SELECT pg_advisory_lock_shared($b1);\n"
		  . "BEGIN;\n"
		  . $o{stmt}->($i) . "\n"
		  . "SELECT pg_advisory_xact_lock_shared($b2);\n"
		  . "COMMIT;\n";
		push @ps, psql_start($node, "$name-$i", $script);
	}

	my $waiting = sub {
		my ($ev) = @_;
		return "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '$name-%'"
		  . " AND wait_event_type = 'Lock' AND wait_event IN ($ev)";
	};

	my ($ok, $info) = poll_until($mon, $waiting->("'advisory'"), $n, 30);
	ok($ok, "$name: all $n sessions are parked at the start barrier")
	  or diag("waiting sessions: $info");

	$o{before_release}->() if $o{before_release};
	quiet_safe($ctl, "SELECT pg_advisory_unlock($b1)");
	$o{after_release}->($mon) if $o{after_release};

	# the winner is parked at the end barrier, everybody else blocked on it
	my $both = "SELECT (" . $waiting->("'advisory'") . ") || '/' || (" . $waiting->($events) . ")";
	($ok, $info) = poll_until($mon, $both, "1/" . ($n - 1), 30);
	$res{raced} = $ok;
	ok($ok, "$name: one session holds an open transaction and the other "
		  . ($n - 1) . " are blocked on it")
	  or diag("advisory/lock waiters: $info\n"
		  . quiet_query($mon, "SELECT application_name, state, wait_event, left(query, 80)"
			  . " FROM pg_stat_activity WHERE application_name LIKE '$name-%'"));

	quiet_safe($ctl, "SELECT pg_advisory_unlock($b2)");
	$res{sessions} = [ map { psql_finish($_) } @ps ];
	$mon->quit;
	return \%res;
}

=pod

=head2 FintxTest::Client

An asynchronous psql client for load generators: C<send> appends SQL to
psql's stdin and returns at once; C<lines> returns the complete stdout lines
that arrived since the last call. psql runs with ON_ERROR_STOP off and terse
errors; when the server goes away it exits and C<alive> turns false.

=cut

# SQL (to run as a superuser with triggers off) that rewrites fintx.audit_leaf_runs from the
# leaf -> entry map after $change, SQL that edits the temporary table m (leaf_index,
# entry_id, block_id) copied from fintx.audit_leaves: one run per stretch of consecutive
# leaves with consecutive entries in one block, as fintx writes them. For tamper tests.
sub remap_leaves_sql
{
	my ($change) = @_;
	return qq{
		CREATE TEMP TABLE m AS SELECT leaf_index, entry_id, block_id FROM fintx.audit_leaves;
		$change;
		DELETE FROM fintx.audit_leaf_runs;
		INSERT INTO fintx.audit_leaf_runs (first_leaf, first_entry, leaf_count, block_id)
		SELECT min(leaf_index), min(entry_id), count(*), min(block_id)
		  FROM (SELECT *, sum(brk) OVER (ORDER BY leaf_index) AS island
		          FROM (SELECT *, CASE WHEN leaf_index = lag(leaf_index) OVER w + 1 AND entry_id = lag(entry_id) OVER w + 1
		                                AND block_id = lag(block_id) OVER w THEN 0 ELSE 1 END AS brk
		                  FROM m WINDOW w AS (ORDER BY leaf_index)) a) b
		 GROUP BY island;
		DROP TABLE m;
	};
}

package FintxTest::Client;

use strict;
use warnings;

use IPC::Run;

# Starts psql reading SQL from a pipe.
sub new
{
	my ($class, $node, $app, $timeout) = @_;
	my $self = bless { in => '', out => '', err => '', pos => 0 }, $class;
	my @cmd = (
		$node->installed_command('psql'), '-XAtq',
		'-v', 'ON_ERROR_STOP=0', '-v', 'VERBOSITY=sqlstate',
		'-d', $node->connstr('postgres') . " application_name=$app",
		'-f', '-');
	$self->{h} = IPC::Run::start(\@cmd, '<', \$self->{in}, '>', \$self->{out},
		'2>', \$self->{err}, IPC::Run::timeout($timeout // 120));
	return $self;
}

# Queues SQL (and psql meta-commands) for psql; does not wait.
sub send
{
	my ($self, $text) = @_;
	$self->{in} .= $text;
	$self->_pump;
	return;
}

# Moves data to and from psql without blocking; tolerates psql having exited.
sub _pump
{
	my ($self) = @_;
	eval { $self->{h}->pump_nb if $self->{h}->pumpable; };
	return;
}

# Complete stdout lines received since the previous call.
sub lines
{
	my ($self) = @_;
	my @l;
	$self->_pump;
	while ((my $nl = index($self->{out}, "\n", $self->{pos})) >= 0)
	{
		push @l, substr($self->{out}, $self->{pos}, $nl - $self->{pos});
		$self->{pos} = $nl + 1;
	}
	return @l;
}

# True while psql is still running.
sub alive
{
	my ($self) = @_;
	$self->_pump;
	return $self->{h}->pumpable;
}

# Everything psql wrote to stderr so far.
sub stderr
{
	my ($self) = @_;
	return $self->{err};
}

# Ends psql (\q if it still runs) and waits for it; returns its stderr.
sub finish
{
	my ($self) = @_;
	$self->{in} .= "\\q\n" if $self->alive;
	eval { $self->{h}->finish; };
	eval { $self->{h}->kill_kill; } if $@;
	return $self->{err};
}

1;

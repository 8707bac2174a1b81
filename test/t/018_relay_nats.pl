# fintx-relay against a real nats-server with JetStream (file store in a temporary directory,
# loopback, a free port). While producers commit (and roll back) events, the relay is killed
# with SIGKILL again and again, some restarts only after the stream's duplicate window (500 ms)
# has passed, NATS is stopped for a while and brought back (the relay backs off and
# reconciles), and NATS is restarted with its store. At the end the stream holds exactly the
# outbox: message i has sequence i, Fintx-Position i and Nats-Msg-Id = id of the event at
# position i, no duplicates, none missing, none from rolled-back transactions.
use strict;
use warnings;
use FintxTest;
use File::Path qw(make_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $nats_bin = (grep { -x $_ } ('/usr/sbin/nats-server', '/usr/bin/nats-server',
		map { "$_/nats-server" } split /:/, $ENV{PATH}))[0];
plan skip_all => 'nats-server is not installed (apt-get install nats-server)' unless $nats_bin;

my $node = fintx_node('relay', "fintx.seal_interval = '20ms'", "fintx.expire_interval = '1h'");
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $relay_bin = $node->installed_command('fintx-relay');
ok(IPC::Run::run([ $relay_bin, '--help' ], '>', \my $help_out, '2>', \my $help_err), 'fintx-relay is installed beside the server programs');

my $tmp = PostgreSQL::Test::Utils::tempdir();
my $store = "$tmp/nats-store";
make_path($store);
my $nats_port = PostgreSQL::Test::Cluster::get_free_port();
my $nats_url = "nats://127.0.0.1:$nats_port";
my $nats;
my $nats_runs = 0;

# Starts nats-server with JetStream on loopback ($port, file store $dir, log $log, extra
# arguments after) and waits until it is ready; returns its IPC::Run harness.
sub nats_server
{
	my ($port, $dir, $log, @extra) = @_;
	my $h = IPC::Run::start([ $nats_bin, @extra, '-a', '127.0.0.1', '-p', $port, '-js', '-sd', $dir ],
		'<', '/dev/null', '>', $log, '2>&1');
	my $deadline = time + 20;
	until (slurp_file($log) =~ /Server is ready/)
	{
		die 'nats-server did not start: ' . slurp_file($log) if time > $deadline;
		usleep(50_000);
	}
	return $h;
}

sub nats_start
{
	$nats_runs++;
	$nats = nats_server($nats_port, $store, "$tmp/nats-$nats_runs.log");
}

sub nats_stop
{
	$nats->signal('TERM');
	eval { $nats->finish; };
}

my $relay_runs = 0;
my @relay_logs;
sub relay_cmd
{
	return [ $relay_bin, '-d', $node->connstr('postgres'), '-s', $nats_url, '-S', 'FINTX', '-p', 'fx',
		'-b', '50', '--duplicate-window=500', '--health-interval=1', @_ ];
}
sub relay_start
{
	$relay_runs++;
	my $log = "$tmp/relay-$relay_runs.log";
	push @relay_logs, $log;
	return IPC::Run::start(relay_cmd(), '<', '/dev/null', '>', '/dev/null', '2>', $log);
}
sub relay_kill9
{
	my ($h) = @_;
	$h->signal('KILL');
	eval { $h->finish; };
}

nats_start();

# producers: committed and rolled-back batches of application events and transfers
sql(q{
	SELECT fintx.open_account('r:bank', 'EUR', allow_negative => true);
	SELECT fintx.open_account('r:a', 'EUR');
});
my @producers;
for my $w (1 .. 2)
{
	my $script = '';
	for my $k (1 .. 150)
	{
		my $end = $k % 5 == 0 ? 'ROLLBACK' : 'COMMIT';
		$script .= "BEGIN;\n"
		  . "SELECT count(fintx.emit('job', 'w$w-$k-' || g, 'job.created', jsonb_build_object('g', g))) FROM generate_series(1, 40) g;\n"
		  . "SELECT status FROM fintx.transfer('r-$w-$k', 'r:bank', 'r:a', $k);\n"
		  . "$end;\nSELECT pg_sleep(0.05);\n";
	}
	push @producers, psql_start($node, "producer$w", $script);
}

# 1. SIGKILL the relay mid-stream, again and again; every other restart after the duplicate
# window. FINTX_RELAY_TEST_ACK_PAUSE_MS widens the window between the PubAcks of a batch and
# its checkpoint in PostgreSQL, so that most kills land there: the stream is then ahead of
# PostgreSQL and the next relay must reconcile instead of publishing the batch again.
$ENV{FINTX_RELAY_TEST_ACK_PAUSE_MS} = 150;
for my $i (1 .. 10)
{
	my $h = relay_start();
	usleep(200_000 + int(rand(600_000)));
	relay_kill9($h);
	usleep(700_000) if $i % 2 == 0;
}
delete $ENV{FINTX_RELAY_TEST_ACK_PAUSE_MS};
my $mid = sql("SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')");
my ($mid_pos, $mid_seq) = split / /, $mid;
cmp_ok($mid_pos, '>', 0, "the killed relays made progress (position $mid_pos)");

# 2. NATS goes away for a while and comes back
my $h = relay_start();
usleep(500_000);
nats_stop();
sleep(3);
nats_start();
my ($ok) = (0);
my $deadline = time + 30;
while (time < $deadline)
{
	last if slurp_file($relay_logs[-1]) =~ /reconciled|health state=running.*nats=up/s
	  && slurp_file($relay_logs[-1]) =~ /state=backing-off/;
	usleep(100_000);
}
like(slurp_file($relay_logs[-1]), qr/health state=backing-off/, 'the relay backs off while NATS is down');
usleep(1_500_000);

# 3. NATS restarts with its store while the relay runs; then the relay is killed once more
nats_stop();
nats_start();
usleep(1_500_000);
relay_kill9($h);

# the producers finish; a last relay with --once publishes the rest and exits 0
for my $p (@producers)
{
	my $r = psql_finish($p);
	is(first_sqlstate($r->{err}), undef, "$r->{app} ran without errors");
}
sql('SELECT fintx.seal()');
my ($out, $err) = ('', '');
my $once = IPC::Run::run(relay_cmd('--once'), '<', '/dev/null', '>', \$out, '2>', \$err, IPC::Run::timeout(120));
ok($once, 'fintx-relay --once exits 0') or diag($err);
like($err, qr/health state=done .* lag=0 pg=up nats=up/, 'the --once run ends with a health line showing no lag');

# compare the stream with the outbox
my $tail = sql('SELECT fintx.outbox_tail()');
cmp_ok($tail, '>', 3000, "the outbox holds $tail sequenced events");
my $stream = '';
IPC::Run::run(relay_cmd('--dump-stream'), '<', '/dev/null', '>', \$stream, '2>', \$err, IPC::Run::timeout(120))
  or die "dump failed: $err";
my @msgs = map { [ split /\t/ ] } split /\n/, $stream;
my %outbox = map { split /\|/ } split /\n/,
  sql('SELECT p.position || \'|\' || o.id FROM fintx.outbox_positions p JOIN fintx.outbox o USING (event_no)');
is(scalar(@msgs), $tail, 'the stream holds as many messages as the outbox has events');
my %ids;
my ($bad_order, $bad_id, $dups) = (0, 0, 0);
for my $i (0 .. $#msgs)
{
	my ($seq, $id, $pos, $subject) = @{ $msgs[$i] };
	$bad_order++ unless $seq == $i + 1 && $pos == $i + 1;
	$bad_id++ unless defined $outbox{$pos} && $outbox{$pos} eq $id;
	$dups++ if $ids{$id}++;
}
is($bad_order, 0, 'message i has stream sequence i and Fintx-Position i (order kept, no gap)');
is($bad_id, 0, 'each message carries the id of the outbox event at its position');
is($dups, 0, 'no event is in the stream twice');
is(sql("SELECT count(*) FROM fintx.outbox WHERE aggregateid ~ '^w[12]-[0-9]*[05]-'"), '0',
	'nothing of the rolled-back producer transactions reached the outbox');
like($msgs[-1][3], qr/^fx\.(job\.job\.created|transfer\.transfer\.posted)$/, 'subjects are <prefix>.<aggregatetype>.<type>');
is(sql("SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')"), "$tail $tail",
	'PostgreSQL stores the last position and stream sequence');
my $all_logs = join '', map { slurp_file($_) } @relay_logs;
like($all_logs, qr/reconciled: stream FINTX is at sequence/, 'a killed relay\'s successor reconciled from the stream');
note("relay runs: $relay_runs, NATS runs: $nats_runs");

# ---------------------------------------------------------------------------
# Refusals: conditions retrying cannot fix end the relay with exit status 1,
# daemon mode included, before anything is skipped or published twice.
# ---------------------------------------------------------------------------
# Runs the relay (no --once unless given) with @args for at most 30 s; returns (exit status, stderr).
sub relay_run
{
	my ($cmd) = @_;
	my ($o, $e) = ('', '');
	my $h = IPC::Run::start($cmd, '<', '/dev/null', '>', \$o, '2>', \$e, IPC::Run::timeout(30));
	eval { $h->finish; };
	if ($@)
	{
		$h->kill_kill;
		return ('timeout', $e);
	}
	return ($h->result(0), $e);
}

# another database's outbox, as long as this one, relayed into the same stream: the stream's
# last message carries a position this outbox has too, but not this outbox's event there
sql('CREATE DATABASE other_outbox');
$node->safe_psql('other_outbox', qq{CREATE EXTENSION fintx;
	SELECT count(fintx.emit('job', 'o-' || g, 'job.created', '{}')) FROM generate_series(1, $tail + 10) g;
	SELECT fintx.seal();
	SELECT fintx.create_consumer('fintx-relay');
	SELECT fintx.relay_checkpoint('fintx-relay', $tail - 5, $tail - 5);});
my ($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('other_outbox'), '-s', $nats_url, '-S', 'FINTX',
	'-p', 'fx', '--health-interval=1' ]);
is($rc, 1, 'a relay of another outbox into the same stream stops with exit status 1');
like($rerr, qr/carries position $tail with Nats-Msg-Id "[0-9a-f-]+", but the outbox's event at that position is "[0-9a-f-]+": the stream belongs to another outbox/,
	'it names the position whose event differs');
is($node->safe_psql('other_outbox', q{SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')}),
	($tail - 5) . ' ' . ($tail - 5), 'and it adopted nothing');

# a database whose default isolation is REPEATABLE READ, without a worker: the relay works in
# READ COMMITTED and --once publishes what is committed (it published nothing, silently)
sql('CREATE DATABASE rr_outbox');
$node->safe_psql('rr_outbox', q{CREATE EXTENSION fintx;
	ALTER DATABASE rr_outbox SET default_transaction_isolation = 'repeatable read';});
$node->safe_psql('rr_outbox', q{SELECT count(fintx.emit('job', 'rr-' || g, 'job.created', '{}')) FROM generate_series(1, 3) g});
($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('rr_outbox'), '-s', $nats_url, '-S', 'FINTXRR',
	'-p', 'rrx', '--once', '--health-interval=1' ]);
is($rc, 0, 'a REPEATABLE READ database without a worker: --once exits 0') or diag($rerr);
is($node->safe_psql('rr_outbox', q{SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')}),
	'3 3', 'and published its three events');

# a consumer with a filter, and a service that does not see every account
sql(q{SELECT fintx.create_consumer('jobs-only', 1, 0, aggregatetypes => '{job}')});
($rc, $rerr) = relay_run(relay_cmd('-c', 'jobs-only'));
is($rc, 1, 'a relay on a filtered consumer stops with exit status 1');
like($rerr, qr/consumer "jobs-only" does not receive every event/, 'it says the consumer is filtered');
sql(q{CREATE ROLE relaysvc LOGIN;
	SELECT fintx.register_service('svc-relay', 'relaysvc');
	SELECT fintx.grant_permission('svc-relay', 'event.consume', 'svc-relay');
	SELECT fintx.grant_permission('svc-relay', 'audit.read', 'r:a');});
($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('postgres') . ' user=relaysvc', '-s', $nats_url,
	'-S', 'FINTX', '-p', 'fx', '-c', 'svc-relay', '--health-interval=1' ]);
is($rc, 1, 'a relay whose service sees only some accounts stops with exit status 1');
like($rerr, qr/role "relaysvc" does not see every event of the outbox/, 'it says the role does not see every event');
is(sql(q{SELECT committed_position FROM fintx.consumer_state('svc-relay')}), '0', 'its consumer did not move');

# a dead letter someone else recorded for the relay's consumer (poll() skips it) is refused
# before anything is published, not checkpointed past
sql(q{SELECT fintx.emit('job', 'gap-1', 'job.created', '{}'); SELECT fintx.emit('job', 'gap-2', 'job.created', '{}');
	SELECT fintx.seal();});
my $gap_pos = sql(q{SELECT fintx.outbox_tail() - 1});
sql(join '', map { "SELECT fintx.reject('fintx-relay', $gap_pos, 'test');\n" } 1 .. 5);	# max_retries 5: a dead letter
is(sql(qq{SELECT count(*) FROM fintx.outbox_dead_letters WHERE consumer = 'fintx-relay' AND position = $gap_pos}), '1',
	'the event is a dead letter of the relay\'s consumer');
my $before = sql(q{SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')});
($rc, $rerr) = relay_run(relay_cmd());
is($rc, 1, 'a dead letter in the relay\'s way stops it with exit status 1');
like($rerr, qr/consumer "fintx-relay" has dead letters/, 'it says why, before publishing anything');
is(sql(q{SELECT committed_position || ' ' || stream_sequence FROM fintx.consumer_state('fintx-relay')}), $before,
	'and checkpointed nothing past it');

# a dead letter recorded while the relay runs, at the tail: poll() moves the offset past it
# without returning anything; the relay must notice that, not carry on
{
	sql('CREATE DATABASE idle_dead');
	$node->safe_psql('idle_dead', q{CREATE EXTENSION fintx; SELECT fintx.emit('job', 'i1', 'job.created', '{}'); SELECT fintx.seal();});
	my ($ro, $re) = ('', '');
	my $h = IPC::Run::start([ $relay_bin, '-d', $node->connstr('idle_dead'), '-s', $nats_url, '-S', 'IDLE', '-p', 'idle',
			'--health-interval=1' ], '<', '/dev/null', '>', \$ro, '2>', \$re, IPC::Run::timeout(60));
	my $deadline = time + 20;
	# (the relay creates its consumer when it connects: until then there is no row)
	usleep(50_000) until time > $deadline
	  || $node->safe_psql('idle_dead',
		q{SELECT coalesce((SELECT committed_position FROM fintx.outbox_consumers WHERE name = 'fintx-relay'), 0)}) eq '1';
	my $pid = $h->{KIDS}[0]{PID};
	kill 'STOP', $pid;
	$node->safe_psql('idle_dead', q{SELECT fintx.emit('job', 'i2', 'job.created', '{}'); SELECT fintx.seal();}
		. join('', map { "SELECT fintx.reject('fintx-relay', 2, 'test');" } 1 .. 5));
	kill 'CONT', $pid;
	eval { $h->finish; };
	is($@ ? 'timeout' : $h->result(0), 1, 'a dead letter recorded at the tail while the relay runs stops it');
	like($re, qr/the offset of consumer "fintx-relay" moved from 1 to 2 without a publish/, 'it says the offset moved');
	my (undef, undef, $cerr) = $node->psql('idle_dead', q{SELECT fintx.relay_checkpoint('fintx-relay', 2, 1)});
	like($cerr, qr/consumer "fintx-relay" has dead letters/, 'and a restart is refused until an operator decides');
}

# --no-create-stream without the stream, in daemon mode
($rc, $rerr) = relay_run(relay_cmd('--no-create-stream', '-S', 'NO_SUCH_STREAM', '-c', 'no-stream'));
is($rc, 1, '--no-create-stream and no stream: exit status 1, also without --once');
like($rerr, qr/stream NO_SUCH_STREAM does not exist and --no-create-stream was given/, 'it names the stream');

# credentials in the NATS URL stay out of the log
my $closed = PostgreSQL::Test::Cluster::get_free_port();
($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('postgres'), '-s', "nats://alice:s3cret\@127.0.0.1:$closed",
	'-c', 'no-nats', '--once' ]);
is($rc, 1, 'no NATS server: --once exits 1');
like($rerr, qr{could not connect to NATS at nats://\*\*\*\@127\.0\.0\.1:$closed}, 'the log names the server');
unlike($rerr, qr/s3cret|alice/, 'but not the user or the password');
($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('postgres'),
	'-s', "nats://127.0.0.1:$closed,bob:pw\@x\@127.0.0.1:$closed,carol:t0ken\@localhost:$closed,dave:zq://wx\@localhost:$closed",
	'-c', 'no-nats', '--once' ]);
like($rerr, qr{could not connect to NATS at nats://127\.0\.0\.1:$closed,\*\*\*\@127\.0\.0\.1:$closed,\*\*\*\@localhost:$closed,\*\*\*\@localhost:$closed},
	'in a list of servers, with and without a scheme, every entry loses its credentials');
unlike($rerr, qr/bob|pw|carol|t0ken|dave|zq|wx/, 'up to the last @ of each entry, also with "://" in a password');

# an event larger than the NATS server's max_payload: stop and say so, not retry forever
{
	my $small_port = PostgreSQL::Test::Cluster::get_free_port();
	make_path("$tmp/small-store");
	PostgreSQL::Test::Utils::append_to_file("$tmp/small.conf", "max_payload: 4096\n");
	my $small = nats_server($small_port, "$tmp/small-store", "$tmp/nats-small.log", '-c', "$tmp/small.conf");
	sql('CREATE DATABASE big_events');
	$node->safe_psql('big_events', q{CREATE EXTENSION fintx;
		SELECT fintx.emit('doc', 'd1', 'doc.small', '{"n": 1}');
		SELECT fintx.emit('doc', 'd2', 'doc.large', jsonb_build_object('text', repeat('x', 8000)));
		SELECT fintx.emit('doc', 'd3', 'doc.small', '{"n": 3}');
		SELECT fintx.seal();});
	($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('big_events'), '-s', "nats://127.0.0.1:$small_port",
		'-S', 'BIG', '-p', 'big', '--health-interval=1' ]);
	is($rc, 1, 'an event over max_payload stops the relay with exit status 1, also without --once');
	like($rerr, qr/the event at position 2 \(id [0-9a-f-]+, 80\d\d bytes of payload, about \d+ bytes with its headers\) is larger than the NATS server's max_payload of 4096 bytes/,
		'it names the event and the limit');
	is($node->safe_psql('big_events', q{SELECT committed_position < 2 FROM fintx.consumer_state('fintx-relay')}), 't',
		'the offset stays before the large event: it was not skipped');
	# a small payload whose headers make the message too large: NATS counts both
	sql('CREATE DATABASE big_headers');
	$node->safe_psql('big_headers', q{CREATE EXTENSION fintx;
		SELECT fintx.emit('doc', 'h1', 'doc.small', '{"n": 1}', jsonb_build_object('note', repeat('h', 6000)));
		SELECT fintx.seal();});
	($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('big_headers'), '-s', "nats://127.0.0.1:$small_port",
		'-S', 'BIGH', '-p', 'bigh', '--health-interval=1' ]);
	is($rc, 1, 'an event whose headers take it over max_payload stops the relay too');
	like($rerr, qr/the event at position 1 \(id [0-9a-f-]+, \d+ bytes of payload, about 6\d\d\d bytes with its headers\) is larger than the NATS server's max_payload of 4096 bytes/,
		'it counts the headers');
	$small->signal('TERM');
	eval { $small->finish; };
}


# numbers on the command line are whole numbers: "2min" is not 2 ms, "5x" not 5 (exit 2)
for my $bad ([ '-b', '5x' ], [ '--duplicate-window=2min' ], [ '--health-interval=0' ])
{
	($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('postgres'), '-s', $nats_url, '--once', @$bad ]);
	is($rc, 2, "fintx-relay @$bad exits 2");
	like($rerr, qr/invalid arguments/, 'and says the arguments are invalid');
}

# --dump-stream reads and creates nothing: of a missing stream it says so (exit 1)
($rc, $rerr) = relay_run([ $relay_bin, '-s', $nats_url, '-S', 'NOSUCH', '--dump-stream' ]);
is($rc, 1, '--dump-stream of a missing stream exits 1');
like($rerr, qr/JetStream stream NOSUCH does not exist/, 'and says it does not exist');
($rc, $rerr) = relay_run([ $relay_bin, '-s', $nats_url, '-S', 'NOSUCH', '--dump-stream' ]);
like($rerr, qr/JetStream stream NOSUCH does not exist/, 'it did not create it (it caught the relay\'s subjects)');

# Deletes message $seq of stream $stream through the JetStream API (the NATS protocol over
# TCP: no NATS client program is needed); returns the API's answer.
sub js_delete_msg
{
	my ($stream, $seq) = @_;
	require IO::Socket::INET;
	require IO::Select;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $nats_port, Proto => 'tcp')
	  or die "cannot connect to nats-server: $!";
	my $body = qq({"seq":$seq});
	print $sock "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.fxdel 1\r\n"
	  . "PUB \$JS.API.STREAM.MSG.DELETE.$stream _INBOX.fxdel " . length($body) . "\r\n$body\r\n";
	my ($answer, $sel) = ('', IO::Select->new($sock));
	while ($answer !~ /"success"|"error"/ && $sel->can_read(10))
	{
		my $n = sysread($sock, my $chunk, 4096);
		last unless $n;
		$answer .= $chunk;
	}
	close $sock;
	return $answer;
}

# the stream's last message gone (deleted, or removed by the stream's limits) while the stream
# is ahead of PostgreSQL: which position it held cannot be known, so the relay stops (it
# retried forever) instead of guessing
sql(q{SELECT fintx.create_consumer('gone-relay')});
{
	local $ENV{FINTX_RELAY_TEST_ACK_PAUSE_MS} = 8000;
	my $g = IPC::Run::start([ $relay_bin, '-d', $node->connstr('postgres'), '-s', $nats_url, '-S', 'GONE', '-p', 'gone',
		'-c', 'gone-relay', '-b', '5', '--health-interval=1' ], '<', '/dev/null', '>', '/dev/null', '2>', "$tmp/gone.log");
	my $published = 0;
	for (1 .. 100)
	{
		my $dump = '';
		IPC::Run::run([ $relay_bin, '-s', $nats_url, '-S', 'GONE', '--dump-stream' ], '<', '/dev/null', '>', \$dump,
			'2>', \my $ignored, IPC::Run::timeout(30));
		$published = () = $dump =~ /\n/g;
		last if $published >= 5;
		usleep(100_000);
	}
	relay_kill9($g);
	is($published, 5, 'a relay published a batch of 5 and was killed before its checkpoint');
}
is(sql(q{SELECT stream_sequence FROM fintx.consumer_state('gone-relay')}), '0', 'PostgreSQL stores none of it');
like(js_delete_msg('GONE', 5), qr/"success":true/, 'the stream\'s last message is deleted');
($rc, $rerr) = relay_run([ $relay_bin, '-d', $node->connstr('postgres'), '-s', $nats_url, '-S', 'GONE', '-p', 'gone',
	'-c', 'gone-relay', '--health-interval=1' ]);
is($rc, 1, 'the next relay stops with exit status 1, also without --once');
like($rerr, qr/message 5 of stream GONE, the last one, is gone \(deleted, or removed by the stream's limits\)/,
	'it says the last message is gone');

nats_stop();
done_testing();

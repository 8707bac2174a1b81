# Copyright fintx contributors
#
# 014_cert_auth.pl — the certificate authentication setup of
# docs/authorization.md, end to end: a CA, a server certificate, a client
# certificate with CN "payments-prod-01", pg_hba "cert map=fintx" and a
# pg_ident map to the role "pay". The service connects over TLS with its
# certificate (no password), is the role "pay", and fintx authorizes it by its
# grants. Without a certificate, or with a certificate the map does not name,
# the connection is refused.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;

my $node = fintx_node('certs', "fintx.expire_interval = '1h'");
my $data = $node->data_dir;
my $tmp = $PostgreSQL::Test::Utils::tmp_check;

sub run
{
	my (@cmd) = @_;
	my $out = `@cmd 2>&1`;
	die "failed: @cmd\n$out" if $? != 0;
}

# the CA, the server's certificate (in the data directory) and two client certificates
run("openssl req -new -x509 -days 2 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
	  . " -subj '/CN=fintx test CA' -keyout $tmp/ca.key -out $tmp/ca.crt");
for my $c ([ 'server', '127.0.0.1', $data ], [ 'client', 'payments-prod-01', $tmp ], [ 'stranger', 'someone-else', $tmp ])
{
	my ($name, $cn, $dir) = @$c;
	run("openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
		  . " -subj '/CN=$cn' -keyout $dir/$name.key -out $tmp/$name.csr");
	run("openssl x509 -req -days 2 -in $tmp/$name.csr -CA $tmp/ca.crt -CAkey $tmp/ca.key"
		  . " -CAcreateserial -out $dir/$name.crt");
	chmod 0600, "$dir/$name.key";
}
run("cp $tmp/ca.crt $data/root.crt");

$node->append_conf('postgresql.conf', qq{
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'root.crt'
listen_addresses = '127.0.0.1'
});
# services authenticate with a client certificate mapped to their role; nothing else over TCP
my $hba = slurp_file("$data/pg_hba.conf");
open my $fh, '>', "$data/pg_hba.conf" or die;
print $fh "hostssl postgres pay 127.0.0.1/32 cert map=fintx\n";
print $fh "host    all      all 127.0.0.1/32 reject\n";
print $fh $hba;
close $fh;
$node->append_conf('pg_ident.conf', "fintx  payments-prod-01  pay\n");
$node->restart;

$node->safe_psql('postgres', q{
	CREATE ROLE pay LOGIN;
	SELECT fintx.open_account('pay:ops', 'EUR', true);
	SELECT fintx.open_account('pay:cust', 'EUR');
	SELECT fintx.register_service('payments', 'pay');
	SELECT fintx.grant_permission('payments', 'transfer', 'pay:%', 1000);
});

my $port = $node->port;
my $base = "host=127.0.0.1 port=$port dbname=postgres user=pay sslmode=verify-full sslrootcert=$tmp/ca.crt";

sub connect_as
{
	my ($conninfo, $sql) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $node->installed_command('psql'), '-XAtq', '-d', $conninfo, '-c', $sql ],
		'<', '/dev/null', '>', \$out, '2>', \$err);
	chomp $out;
	return ($out, $err);
}

my ($out, $err) = connect_as("$base sslcert=$tmp/client.crt sslkey=$tmp/client.key",
	q{SELECT current_user || '|' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())
	         || '|' || (fintx.transfer('cert-1', 'pay:ops', 'pay:cust', 10)).status});
is($out, 'pay|true|posted', 'the service connects with its certificate as role "pay" over TLS and moves money')
  or diag($err);
($out, $err) = connect_as("$base sslcert=$tmp/client.crt sslkey=$tmp/client.key",
	q{SELECT (fintx.transfer('cert-2', 'pay:ops', 'pay:cust', 5000)).status});
like($err, qr/permission denied for transfer on "pay:ops"/, 'its grants still limit it (5000 > max_amount 1000)');
# a certificate file that does not exist: libpq then connects without one (/dev/null would
# make libpq itself fail, and the server would never be asked)
($out, $err) = connect_as("$base sslcert=$tmp/none.crt sslkey=$tmp/none.key", 'SELECT 1');
like($err, qr/certificate authentication failed|requires a valid client certificate|no client certificate/i,
	'without a client certificate the connection is refused') or diag($err);
isnt($out, '1', 'no session without a certificate');
($out, $err) = connect_as("$base sslcert=$tmp/stranger.crt sslkey=$tmp/stranger.key", 'SELECT 1');
like($err, qr/certificate authentication failed|no match in usermap|authentication failed/i,
	'a certificate whose CN the map does not name is refused');
is($node->safe_psql('postgres',
	q{SELECT string_agg(operation || ':' || allowed, ',' ORDER BY at) FROM fintx.access_log WHERE role = 'pay'}),
	'transfer:true,transfer:false', 'both decisions are in the access log');
$node->stop;
done_testing();

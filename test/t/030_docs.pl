# Copyright fintx contributors
#
# 030_docs.pl — the examples in docs/ are what fintx answers today.
#   - docs/ledger.md and docs/idempotency.md are one psql session: every
#     transcript on the two pages is replayed in order on a new database (fintx preloaded, the worker serving
#     another database, as the page says), and each block's answer must be the
#     one the page shows: results, errors with their SQLSTATE, DETAIL and HINT,
#     transfer ids, balances; timestamps, hashes and column widths may differ
#     (test/perl/DocTest.pm);
#   - the replay really compares: a page block with one figure changed, or
#     with a line of the answer missing, is reported as different.
# To bring a page up to date after a deliberate change, replay it on a
# cluster of your own with test/scripts/docs_replay.pl --update and read the
# diff.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FintxTest;
use DocTest;

# the pages: a copy make check makes (FINTX_DOCS), or the source tree's
my $docs = $ENV{FINTX_DOCS} // ($ENV{FINTX_ROOT} ? "$ENV{FINTX_ROOT}/docs" : undef)
  or plan skip_all => 'neither FINTX_DOCS nor FINTX_ROOT is set';
my $node = fintx_node('docs');
$node->safe_psql('postgres', 'CREATE DATABASE docs');

my @pages = ("$docs/ledger.md", "$docs/idempotency.md");
my ($blocks, $actual) = doc_replay([ '-d', $node->connstr('docs') ], @pages);
my @run = grep { $blocks->[$_]{run} } 0 .. $#$blocks;
cmp_ok(scalar @run, '>=', 40, 'ledger.md and idempotency.md: their transcripts are found (' . scalar(@run) . ' blocks)');

for my $n (@run)
{
	my $b = $blocks->[$n];
	(my $page = $b->{file}) =~ s{.*/}{};
	my $name = "$page, example at line " . ($b->{first} + 1) . ": the answer shown is today's";
	ok(defined $actual->[$n], "$page, example at line " . ($b->{first} + 1) . ': replayed') or next;
	is(doc_normalize($actual->[$n]), doc_normalize($b->{lines}), $name);
}

# The comparison must see a changed figure and a missing line. The first
# transfer of the page (fund-alice-1, 100000 into customer:alice) is changed.
my ($fund) = grep { join("\n", @{ $blocks->[$_]{lines} }) =~ /fund-alice-1/ } @run;
ok(defined $fund, 'the funding example is on the page');
my @changed = map { s/\b100000\b/100001/r } @{ $blocks->[$fund]{lines} };
isnt(doc_normalize($actual->[$fund]), doc_normalize(\@changed), 'a changed balance is reported');
my @short = grep { !/^\(1 row\)$/ } @{ $blocks->[$fund]{lines} };
isnt(doc_normalize($actual->[$fund]), doc_normalize(\@short), 'a missing line is reported');
# and an error example: the SQLSTATE is part of what is compared
my ($dup) = grep { join("\n", @{ $blocks->[$_]{lines} }) =~ /ERROR:  23505: account "customer:bob" already exists/ } @run;
ok(defined $dup, 'the duplicate-account error is on the page');
my @other = map { s/ERROR:  23505:/ERROR:  22023:/r } @{ $blocks->[$dup]{lines} };
isnt(doc_normalize($actual->[$dup]), doc_normalize(\@other), 'a different SQLSTATE is reported');

done_testing();

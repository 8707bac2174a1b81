#!/usr/bin/perl
# Replays the psql transcripts of pages in docs/ (test/perl/DocTest.pm) on a
# database of your own and reports the blocks whose answers differ; with
# --update it writes the actual answers into the pages (check the diff).
# The pages of one session go together, in order:
#   createdb docs && PGTZ=UTC test/scripts/docs_replay.pl [--update] docs docs/ledger.md
# (PGHOST, PGPORT and PGUSER select the server; fintx must be installed there.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../perl";
use DocTest;

my $update = @ARGV && $ARGV[0] eq '--update' ? shift @ARGV : undef;
my ($db, @files) = @ARGV;
die "usage: $0 [--update] DATABASE PAGE.md...\n" unless $db && @files;
my ($blocks, $actual) = doc_replay([ '-d', $db ], @files);
my ($run, $bad) = (0, 0);
for my $n (0 .. $#$blocks)
{
	my $b = $blocks->[$n];
	next unless $b->{run};
	$run++;
	my ($want, $got) = (doc_normalize($b->{lines}), doc_normalize($actual->[$n] // []));
	next if $want eq $got;
	$bad++;
	print "=== $b->{file}, block at line ", $b->{first} + 1, "\n--- recorded\n$want--- now\n$got";
}
print "$run blocks replayed, $bad differ\n";
if ($update)
{
	for my $f (@files)
	{
		my @idx = grep { $blocks->[$_]{file} eq $f } 0 .. $#$blocks;
		doc_rewrite($f, [ @$blocks[@idx] ], [ @$actual[@idx] ]);
	}
}
exit($bad ? 1 : 0);

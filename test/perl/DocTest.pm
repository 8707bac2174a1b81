
# Copyright fintx contributors

=pod

=head1 NAME

DocTest - replays the psql transcripts of a page in docs/ and compares them

=head1 SYNOPSIS

  use DocTest;
  # the pages of one session, replayed through psql -X -a (the connection
  # options follow); returns the blocks and the actual transcript of each
  my ($blocks, $actual) = doc_replay(['-d', $connstr], "$root/docs/ledger.md");
  # or step by step:
  my @blocks = doc_blocks("$root/docs/ledger.md");
  my $script = doc_script(\@blocks, "\\set VERBOSITY verbose");
  # run $script through "psql -X -a" (stdout and stderr together), then
  my @actual = doc_split_output($output, scalar @blocks);
  doc_normalize($blocks[0]{lines}) eq doc_normalize($actual[0]) or ...;

=head1 DESCRIPTION

A page's examples are code blocks that read like a psql session run with
C<-a> (every input line echoed, then what the server answered). A block is a
transcript when its first line starts an SQL statement or is a psql
backslash command; other blocks (signatures, shell commands, file formats)
are not run. A block right after the line C<< <!-- doctest: skip --> >> is
not run either (examples of two sessions at once).

The inputs of a transcript are its statements (from a line that starts one
to the line that ends with a semicolon) and its backslash commands; every
other line is output. A line that looks like a command tag (C<BEGIN>,
C<UPDATE 1>, C<CREATE EXTENSION>) right after a statement is output.

The comparison ignores what differs between two honest runs: timestamps,
SHA-256 hashes, column widths (runs of spaces and dashes), trailing blanks
and PostgreSQL's C<LOCATION> lines.

=cut

package DocTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;

our @EXPORT = qw(doc_blocks doc_script doc_split_output doc_normalize doc_rewrite doc_replay doc_find);

my $STMT = qr/^(?:SELECT|WITH|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|GRANT|REVOKE|BEGIN|START|COMMIT|ROLLBACK|END|SAVEPOINT|RELEASE|SET|RESET|SHOW|DO|CALL|TABLE|VALUES|EXPLAIN|COPY|TRUNCATE|COMMENT|ANALYZE|VACUUM|LOCK|REFRESH|REASSIGN)\b/;
my $TAG = qr/^[A-Z]+(?: [A-Z]+)*(?: \d+)*$/;

# The code blocks of a markdown file: { first => line index of the first line
# inside the fence, lines => [...], run => transcript or not }.
sub doc_blocks
{
	my ($file) = @_;
	open my $fh, '<', $file or die "cannot read $file: $!";
	my @lines = <$fh>;
	close $fh;
	chomp @lines;
	my (@blocks, $skip);
	for (my $i = 0; $i < @lines; $i++)
	{
		if ($lines[$i] =~ /^<!-- doctest: skip -->\s*$/)
		{
			$skip = 1;
			next;
		}
		next unless $lines[$i] =~ /^```/;
		my $first = $i + 1;
		my $j = $first;
		$j++ while $j < @lines && $lines[$j] !~ /^```\s*$/;
		die "$file: code block at line $i is not closed" if $j >= @lines;
		my @body = @lines[ $first .. $j - 1 ];
		my ($head) = grep { /\S/ } @body;
		my $run = !$skip && defined $head && ($head =~ $STMT || $head =~ /^\\/);
		push @blocks, { file => $file, first => $first, lines => \@body, run => $run ? 1 : 0 };
		$skip = 0;
		$i = $j;
	}
	return @blocks;
}

# The text of the one code block of $file whose text matches $re (dies
# unless exactly one does), with a final newline.
sub doc_find
{
	my ($file, $re) = @_;
	my @hits = grep { join("\n", @{ $_->{lines} }) =~ $re } doc_blocks($file);
	die "$file: " . scalar(@hits) . " code blocks match $re, not one" unless @hits == 1;
	return join("\n", @{ $hits[0]{lines} }) . "\n";
}

# The input lines of a transcript.
sub doc_inputs
{
	my ($lines) = @_;
	my (@in, $open, $after);
	for my $l (@$lines)
	{
		if ($open)
		{
			push @in, $l;
			if ($l =~ /;\s*$/) { $open = 0; $after = 1; }
			next;
		}
		if ($l =~ /^\\/)
		{
			push @in, $l;
			$after = 0;
			next;
		}
		if ($l =~ $STMT && !($after && $l =~ $TAG))
		{
			push @in, $l;
			$open = $l !~ /;\s*$/;
			$after = !$open;
			next;
		}
		# output; a blank line or a table ends what a tag may follow
		$after = 0 if $l =~ /^\s*$/ || $l =~ /^\(\d+ rows?\)$/;
	}
	die "a statement is not terminated: " . join("\n", @in) if $open;
	return @in;
}

# One psql script for the transcripts (blocks not run are left out), each
# preceded by a marker line; $preamble runs first and is not compared.
sub doc_script
{
	my ($blocks, $preamble) = @_;
	my $s = defined $preamble ? "$preamble\n" : '';
	for my $n (0 .. $#$blocks)
	{
		next unless $blocks->[$n]{run};
		$s .= "\\echo \@\@\@block $n\@\@\@\n";
		$s .= "$_\n" for doc_inputs($blocks->[$n]{lines});
	}
	return $s;
}

# Splits the output of "psql -X -a" on the script into one array of lines per
# block (undef for blocks not run), without the LOCATION lines, the marker
# commands and the trailing blank lines.
sub doc_split_output
{
	my ($out, $nblocks) = @_;
	my @res = (undef) x $nblocks;
	my $cur;
	for my $l (split /\n/, $out)
	{
		next if $l =~ /^\\echo \@\@\@block \d+\@\@\@$/;
		if ($l =~ /^\@\@\@block (\d+)\@\@\@$/)
		{
			$cur = $1;
			$res[$cur] = [];
			next;
		}
		next unless defined $cur;
		next if $l =~ /^LOCATION:  /;
		push @{ $res[$cur] }, $l;
	}
	for my $r (@res)
	{
		next unless $r;
		pop @$r while @$r && $r->[-1] =~ /^\s*$/;
	}
	return @res;
}

# A transcript as the comparison sees it.
sub doc_normalize
{
	my ($lines) = @_;
	my @n;
	for my $l (@$lines)
	{
		my $x = $l;
		$x =~ s/\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d(?::\d\d)?|Z)?/<timestamp>/g;
		$x =~ s/\\x[0-9a-f]{64}/<hash>/g;
		$x =~ s/-{2,}/--/g;
		$x =~ s/ {2,}/ /g;
		$x =~ s/\s+$//;
		push @n, $x;
	}
	pop @n while @n && $n[-1] eq '';
	return join("\n", @n) . "\n";
}

# Rewrites the file of the blocks with the actual transcripts in place of the
# recorded ones (the blocks that were run and differ).
sub doc_rewrite
{
	my ($file, $blocks, $actual) = @_;
	open my $fh, '<', $file or die "cannot read $file: $!";
	my @lines = <$fh>;
	close $fh;
	chomp @lines;
	# from the last block up, so that earlier line numbers stay valid
	for my $n (reverse 0 .. $#$blocks)
	{
		my $b = $blocks->[$n];
		next unless $b->{run} && $actual->[$n];
		splice @lines, $b->{first}, scalar @{ $b->{lines} }, @{ $actual->[$n] };
	}
	open $fh, '>', $file or die "cannot write $file: $!";
	print $fh "$_\n" for @lines;
	close $fh;
	return;
}

# Replays the transcripts of the files, in order, in one psql session
# (psql -X -a, with $psql_args appended; psql from PATH) after
# "\set VERBOSITY verbose". Returns the blocks of all files and the actual
# transcript of each block (undef for blocks not run).
sub doc_replay
{
	my ($psql_args, @files) = @_;
	my @blocks = map { doc_blocks($_) } @files;
	my $script = doc_script(\@blocks, "\\set VERBOSITY verbose");
	my $out = '';
	IPC::Run::run([ 'psql', '-X', '-a', @$psql_args ], '<', \$script, '>&', \$out);
	my @actual = doc_split_output($out, scalar @blocks);
	return (\@blocks, \@actual);
}

1;

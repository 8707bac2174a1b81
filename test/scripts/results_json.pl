#!/usr/bin/perl
# Turns the logs listed in results/index.tsv into pytest-json-report JSON on stdout:
# {"created", "duration", "exitcode", "summary": {passed, failed, skipped, total}, "tests": [...]}
use strict;
use warnings;
use JSON::PP;

my ($index) = @ARGV;
open my $ix, '<', $index or die "cannot open $index: $!";
my @tests;
my $total_ms = 0;

sub add {
    my ($nodeid, $outcome, $ms, $longrepr) = @_;
    my %t = (nodeid => $nodeid, outcome => $outcome, duration => $ms / 1000.0,
             call => { outcome => $outcome, duration => $ms / 1000.0 });
    $t{call}{longrepr} = $longrepr if defined $longrepr && $outcome eq 'failed';
    push @tests, \%t;
}

while (my $line = <$ix>) {
    chomp $line;
    my ($suite, $name, $rc, $ms, $log) = split /\t/, $line;
    $total_ms += $ms;
    open my $fh, '<', $log or do { add("$suite/$name", 'failed', $ms, "no log"); next };
    my @lines = <$fh>;
    close $fh;
    if ($suite eq 'regress') {
        my $n = 0;
        for (@lines) {
            # "FAILED (test process exited with exit code 2)" when a test's backend crashed
            if (/^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))(?:\s+\(.*?\))?\s+(\d+) ms/) {
                add("sql/$1.sql", $2 eq 'ok' ? 'passed' : 'failed', $3,
                    $2 eq 'ok' ? undef : "see results/regress/regression.diffs");
                $n++;
            }
        }
        add("pg_regress", 'failed', $ms, join('', @lines)) if $n == 0 || ($rc && !grep { $_->{outcome} eq 'failed' } @tests);
        next;
    }
    if ($suite eq 'valgrind') {
        add($name, $rc == 0 ? 'passed' : 'failed', $ms, $rc == 0 ? undef : join('', @lines));
        next;
    }
    # TAP output from pg_prove -v / prove -v
    my ($count, $pending_diag) = (0, undef);
    my $last;
    for (@lines) {
        # "ok 7 - name", "ok 7 name", "ok 7 # skip why", "not ok 8 # TODO"
        if (/^(not )?ok (\d+)\b\s*(?:-\s*)?(.*?)\s*$/) {
            my ($not, $num, $desc) = ($1, $2, $3 // '');
            my $outcome = $not ? 'failed' : 'passed';
            # a directive is an unescaped '#' (Test::More writes a '#' in a name as '\#')
            $outcome = 'skipped' if $desc =~ /(?<!\\)#\s*SKIP/i;
            $outcome = 'passed' if $not && $desc =~ /(?<!\\)#\s*TODO/i;   # expected failure
            (my $clean = $desc) =~ s/\s+/ /g;
            add(sprintf("%s::%03d %s", $name, $num, $clean), $outcome, 0);
            $last = $tests[-1];
            $count++;
        } elsif (/^#\s?(.*)$/ && $last && $last->{outcome} eq 'failed') {
            $last->{call}{longrepr} .= "$1\n";
        }
    }
    # the file itself: plan respected, exit status zero; a whole file skipped ("1..0 # SKIP")
    # is reported as skipped, not passed
    my $skipped_all = grep { /^1\.\.0\s*#\s*skip/i || /\.\. skipped:/ } @lines;
    add("${name}::plan", $rc != 0 ? 'failed' : $skipped_all ? 'skipped' : 'passed', $ms,
        $rc == 0 ? undef : join("", grep { !/^ok / } (@lines > 40 ? @lines[-40 .. -1] : @lines)));
}

my %sum = (passed => 0, failed => 0, skipped => 0);
$sum{$_->{outcome}}++ for @tests;
$sum{total} = scalar @tests;
$sum{collected} = scalar @tests;
print JSON::PP->new->canonical->pretty->encode({
    created  => time,
    duration => $total_ms / 1000.0,
    exitcode => $sum{failed} ? 1 : 0,
    root     => '.',
    summary  => \%sum,
    tests    => \@tests,
});

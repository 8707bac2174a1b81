#!/usr/bin/env python3
"""Instructions per transaction, per function, from two callgrind runs of one workload.

callgrind.sh KEEP=1 leaves callgrind.WORKLOAD.N and callgrind.WORKLOAD.5N; start-up and
loading are in both, so (large - small) / (4 N) per function is what one transaction costs
there. Usage: callgrind_diff.py SMALL_FILE LARGE_FILE [TOP] [--exclusive]
"""
import re
import subprocess
import sys


def profile(path, inclusive):
    out = subprocess.run(["callgrind_annotate", "--inclusive=" + ("yes" if inclusive else "no"),
                          "--threshold=100", path],
                         check=True, capture_output=True, text=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*?)( \[.*\])?$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2)
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) < 2:
        sys.exit(__doc__)
    small, large = args[0], args[1]
    top = int(args[2]) if len(args) > 2 else 60
    n = int(small.rsplit(".", 1)[1])
    per = 4 * n
    inclusive = "--exclusive" not in sys.argv
    a, b = profile(small, inclusive), profile(large, inclusive)
    rows = sorted(((b[k] - a.get(k, 0)) / per, k) for k in b)
    rows.reverse()
    for cost, name in rows[:top]:
        print(f"{cost:12,.0f}  {name}")


if __name__ == "__main__":
    main()

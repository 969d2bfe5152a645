"""This tree's ``serve`` beside another tree's, on the all-different load: one change's worth.

``python -m benchmarks.compare TREE`` (TREE: e.g. ``git worktree add /tmp/before HEAD~1``)
starts each tree's real ``serve`` in turn, ``--rounds`` times alternately, and measures the
server's CPU per answered review and its throughput as ``benchmarks.accounting`` does. The
other tree runs with this tree's interpreter and packages; only ``webhook`` is its own.
Prints one Markdown table (nothing is written: a change's figure goes into its commit
message and benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.accounting import measure_server, prepare


def serve_command(port: int, tls: Path) -> list[str]:
    return [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port",
            str(port), "--tls-cert", str(tls / "tls.crt"), "--tls-key", str(tls / "tls.key")]


def describe(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                          capture_output=True, text=True, check=False).stdout.strip()[:72]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path, help="the other tree (its webhook/ is served)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    other = args.tree.resolve()
    if not (other / "webhook" / "__main__.py").is_file():
        parser.error(f"{args.tree}: no webhook/__main__.py there")
    here = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": str(other)}
    figures: dict[str, tuple[list[float], list[float]]] = {"this tree": ([], []),
                                                          "other tree": ([], [])}
    with tempfile.TemporaryDirectory(prefix="backend-injector-compare-") as scratch:
        work = Path(scratch)
        requests = prepare(work)
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", file=sys.stderr)
            for name, directory, env in (("this tree", here, None),
                                         ("other tree", other, environment)):
                cpu, throughput = measure_server(lambda port: serve_command(port, work / "tls"),
                                                 requests, args.seconds, work, directory, env)
                figures[name][0].append(cpu * 1e6)
                figures[name][1].append(throughput)
    mine, theirs = figures["this tree"], figures["other tree"]
    print(f"| serve, all-different pods, {args.rounds} alternations of {args.seconds:g} s "
          "| this tree | other tree | this / other |")
    print("| --- | ---: | ---: | ---: |")
    for label, index in (("server CPU µs/review", 0), ("reviews/s", 1)):
        a, b = statistics.median(mine[index]), statistics.median(theirs[index])
        print(f"| {label} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
    print(f"\nother tree: {describe(other)}")


if __name__ == "__main__":
    main()

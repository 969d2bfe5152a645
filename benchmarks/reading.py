"""The rules' CPU per review when no program was seen before: this tree beside another.

``python -m benchmarks.reading TREE`` builds reviews whose init-container programs all differ
(the waiters of the test fixtures, each made unique by a comment of its own, so that no reading
is remembered), then runs ``Rules.mutate_pod`` on all of them in this tree and in TREE, in
alternating rounds of fresh processes, and prints the CPU per review of each (medians) as one
Markdown table. It measures the reading of programs itself, which the serve benchmarks hide:
there, every pod of a workload carries the same programs and the readings are remembered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# Run in a fresh interpreter with the tree's `webhook` first on the path; prints CPU seconds
# per review. Reads the pods from the file given as its argument.
_MEASURE = """
import json, sys, time
from webhook.rules.mutate import Rules
from webhook.settings import load_settings
pods = json.load(open(sys.argv[1]))
rules = Rules(load_settings(environ={}))
start = time.process_time()
for pod in pods:
    rules.mutate_pod(pod)
print((time.process_time() - start) / len(pods))
"""


def unique_pods(count: int) -> list[dict[str, Any]]:
    """Pods carrying the fixtures' shell init containers, each program made unique."""
    from webhook.rules.mutate import PodShapeError, Rules
    from webhook.settings import load_settings

    rules = Rules(load_settings(environ={}))
    templates = []
    for request in sorted(FIXTURES.glob("*/request.json")):
        pod = (json.loads(request.read_text()).get("request") or {}).get("object")
        if isinstance(pod, dict) and pod.get("kind") == "Pod" and any(
            (c.get("command") or [])[:1] and "-c" in " ".join(c.get("command") or [])
            for c in pod.get("spec", {}).get("initContainers") or []
        ):
            try:
                rules.mutate_pod(pod)  # the fixtures of pods the rules refuse are left out
            except PodShapeError:
                continue
            templates.append(pod)
    pods = []
    for number in range(count):
        pod = json.loads(json.dumps(templates[number % len(templates)]))
        for container in pod["spec"]["initContainers"]:
            program = container.get("args") or container.get("command")
            if program:
                program[-1] = f"{program[-1]}\n# {number}"
        pods.append(pod)
    return pods


def measure(tree: Path, pods_file: Path) -> float:
    environment = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(pods_file)], env=environment,
                            capture_output=True, text=True, check=False, cwd=tree)
    if result.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{result.stderr}")
    return float(result.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", type=Path, help="the other tree (its webhook/ is measured)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pods", type=int, default=2000)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    pods_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"reading-pods-{os.getpid()}.json"
    pods_file.write_text(json.dumps(unique_pods(args.pods)))
    try:
        mine, theirs = [], []
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}/{args.rounds}", file=sys.stderr)
            mine.append(measure(here, pods_file))
            theirs.append(measure(args.tree, pods_file))
    finally:
        pods_file.unlink()
    this, other = statistics.median(mine), statistics.median(theirs)
    print(f"| rules, {args.pods} pods whose programs were never seen, {args.rounds} alternations"
          " | this tree | other tree | this / other |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| CPU µs/review | {this * 1e6:,.0f} | {other * 1e6:,.0f} | {this / other:.2f} |")


if __name__ == "__main__":
    main()
